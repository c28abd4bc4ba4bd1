#!/usr/bin/env python
"""Agreement levels (the notebook's "Exp 4"): evaluate models trained on each level on
every level's test split.

    python eval/agreement_matrix.py runs/full-all runs/full-50          # given runs
    python eval/agreement_matrix.py --train all,50 -- --model PATH --epochs 2   # train one per level first

With the default hash split the test split of a stricter level is inside every looser
level's, so no model is ever evaluated on a sentence it trained on; the script checks
this for every cell (and refuses runs made with --split seed, which are not nested).
Writes --out: matrix.md, matrix.csv, heatmap.png.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import REPO_ROOT, config, errors, metrics, phrasebank, runs, summary  # noqa: E402
from common.env import keras  # noqa: E402
from common.phrasebank import LEVELS  # noqa: E402


def parse(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="finished run folders (any agreement level; several seeds per level average)")
    p.add_argument("--train", default="", help="comma-separated levels to train a full_finetune run for first")
    p.add_argument("--levels", default=",".join(LEVELS), help="levels to evaluate on")
    p.add_argument("--out", default="", help="output folder (default runs/agreement_matrix-<time>)")
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # after --: flags for train/full_finetune.py
    args = p.parse_args(argv[:cut])
    args.train_args = argv[cut + 1:]
    if not args.runs and not args.train:
        p.error("give run folders, or --train LEVELS to make them")
    return args


def main(argv=None):
    args = parse(argv)
    out = args.out or runs.default_run_dir("agreement_matrix")
    run_dirs = list(args.runs)
    for level in filter(None, args.train.split(",")):
        run_dir = os.path.join(out, f"train-{level}")
        if not os.path.exists(os.path.join(run_dir, runs.METRICS)):
            errors.run_child([sys.executable, os.path.join(REPO_ROOT, "train", "full_finetune.py"), "--agreement",
                              level, "--run-dir", run_dir, *args.train_args])
        run_dirs.append(run_dir)

    from common.finished_run import FinishedRun
    from eval.evaluate import evaluate_run
    rows = []
    for run_dir in run_dirs:
        run = FinishedRun.open(run_dir)
        flags = run.flags
        if run.own_data:
            raise errors.RunDirError(f"{run_dir}: trained on your own data ({flags.data}); the agreement matrix "
                                     f"compares the PhraseBank's agreement levels: evaluate it with eval/evaluate.py")
        if flags.split != "hash":
            raise errors.RunDirError(f"{run_dir}: trained with --split {flags.split}, whose splits are not nested "
                                     f"across levels; the matrix would test it on sentences it trained on. "
                                     f"Use runs made with --split hash")
        keras.backend.clear_session()
        for level in args.levels.split(","):
            m, *_ = evaluate_run(run, level)  # refuses a cell that repeats training sentences
            rows.append((phrasebank.level_name(flags.agreement), run_dir, phrasebank.level_name(level), m["n"],
                         m["accuracy"], m["macro_f1"], m["train_overlap"]))

    # tables: rows = trained on, columns = evaluated on; several runs per level -> mean +- std
    trained = sorted({r[0] for r in rows}, key=lambda x: [phrasebank.level_name(l) for l in LEVELS].index(x))
    evaluated = [phrasebank.level_name(l) for l in args.levels.split(",")]
    cell = {(t, e): [r for r in rows if r[0] == t and r[2] == e] for t in trained for e in evaluated}
    md = [f"# Agreement matrix\n\nRows: the level a model trained on; columns: the level whose test split it was "
          f"evaluated on (mean ± std over {max(len(v) for v in cell.values())} run(s)). No cell contains a "
          f"sentence its model trained on (checked).\n"]
    for name, col in (("accuracy", 4), ("macro-F1", 5)):
        md.append(f"## Test {name}\n\n| trained on \\ tested on | " + " | ".join(evaluated) + " |\n|---|"
                  + "---|" * len(evaluated))
        for t in trained:
            md.append(f"| {t} | " + " | ".join(summary.mean_std([r[col] for r in cell[(t, e)]]) for e in evaluated) + " |")
        md.append("")
    os.makedirs(out, exist_ok=True)
    runs.write_text(os.path.join(out, "matrix.md"), "\n".join(md))
    runs.write_csv(os.path.join(out, "matrix.csv"),
                   ["trained_on", "run", "evaluated_on", "n", "accuracy", "macro_f1", "train_overlap"], rows)
    import numpy as np
    grids = [np.array([[np.mean([r[c] for r in cell[(t, e)]]) for e in evaluated] for t in trained]) for c in (4, 5)]
    runs.write_bytes(os.path.join(out, "heatmap.png"),
                     metrics.figure_png(metrics.heatmaps(grids, ["test accuracy", "test macro-F1"], trained, evaluated)))
    print("\n".join(md))
    print(f"wrote {out}/ (matrix.md, matrix.csv, heatmap.png)")
    return rows


if __name__ == "__main__":
    errors.run(main)
