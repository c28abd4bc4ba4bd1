#!/usr/bin/env python
"""One configuration over seeds: run a train script once per seed, then the table a user
should read before trusting one run (mean ± std, the worst seed, the median run's wall time).

    python eval/seeds.py --out runs/seeds/default -- train/full_finetune.py --model PATH --data DIR
    python eval/seeds.py --seeds 5 --out runs/seeds/lr -- train/full_finetune.py --lr 2.2e-4 ...

After `--`: the train script and its flags, as you would run it; this adds `--seed k` and
`--run-dir OUT/seed<k>` for k = 1..--seeds. Finished seeds are kept, so rerunning resumes; the
same --out with other flags is refused by the train script (a new --out for a new configuration).
Writes OUT/seeds.md (the same table eval/summarize.py prints for finished runs).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from common import REPO_ROOT, config, errors, runs, summary  # noqa: E402  (each run is its own process)



def main(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="seeds 1..N")
    p.add_argument("--out", default="", help="folder of the seeds' run folders (default runs/seeds-<time>)")
    p.add_argument("--part", choices=["test", "validation"], default="test")
    p.add_argument("command", nargs=argparse.REMAINDER, help="after --: train script and its flags")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or not command[0].endswith(".py"):
        p.error("give the train script and its flags after --, e.g. -- train/full_finetune.py --model PATH")
    for flag in ("--seed", "--run-dir"):
        if any(config.sets_flag(c, flag) for c in command):  # (--mod: argparse takes a prefix)
            p.error(f"{flag} is set per seed by this script; remove it from the command")
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: at least 1")
    script = command[0] if os.path.exists(command[0]) else os.path.join(REPO_ROOT, command[0])
    out = args.out or runs.default_run_dir("seeds")
    os.makedirs(out, exist_ok=True)
    plan = [(f"seed {k}", os.path.join(out, f"seed{k}"),
             [sys.executable, script, *command[1:], "--seed", str(k), "--run-dir", os.path.join(out, f"seed{k}")])
            for k in range(1, args.seeds + 1)]
    runs.run_study_steps(plan)
    loaded = [summary.load(d) for _, d, _ in plan]
    text = (f"# {os.path.basename(script)} over {args.seeds} seed(s)\n\n`{errors.shell_join(command)}`\n\n"
            + summary.table({(loaded[0]["script"], ()): loaded}, args.part))
    runs.write_text(os.path.join(out, "seeds.md"), text)
    print(text)
    return loaded


if __name__ == "__main__":
    errors.run(main)
