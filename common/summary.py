"""Group finished runs by configuration and report mean +- std over seeds."""
import csv
import glob
import os
from collections import Counter

import numpy as np

from common import errors, runs
from common.config import SELECT_MODE
from common.errors import RunDirError
from common.phrasebank import level_name

# flags that do not tell configurations apart: seeds, inputs, and what a rerun may change (runs.RESUMABLE_CHANGES)
IGNORED = {"seed", "init_from", "data", "deterministic", "backup_every_steps", *runs.RESUMABLE_CHANGES}


def find_runs(paths) -> list:
    """Finished run folders (with metrics.json) under the given folders, recursively."""
    found = []
    for p in paths:
        # the folder as named, not as a pattern ('runs/lr[2]' is not runs/lr2; the shell expands the user's patterns)
        for m in sorted(glob.glob(os.path.join(glob.escape(p), "**", runs.METRICS), recursive=True)):
            d = os.path.dirname(m)
            if os.path.exists(os.path.join(d, runs.CONFIG)):
                found.append(d)
    if not found:
        raise RunDirError(f"no finished runs (folders with {runs.METRICS} and {runs.CONFIG}) under {' '.join(paths)}")
    return found


def load(run_dir: str) -> dict:
    """A finished run's config.json and metrics.json, checked (runs.load_run, read_metrics);
    its model/ is not needed."""
    cfg = runs.load_run(run_dir, need_model=False)
    return {"dir": run_dir, "script": os.path.basename(cfg["script"]).removesuffix(".py"), "flags": runs.run_flags(cfg).to_dict(),
            "metrics": read_metrics(run_dir)}


def read_metrics(run_dir: str) -> dict:
    """metrics.json, with the figures a summary reads: per split accuracy and macro_f1 in
    [0, 1] and per_class {name: {f1}}; wall_seconds, if there, a number."""
    path = os.path.join(run_dir, runs.METRICS)
    fix = f"restore the {runs.METRICS} its run wrote (e.g. from a copy of the run folder), or leave the run out"
    m = runs.read_run_json(path, fix)

    def fraction(x):
        return type(x) in (int, float) and 0 <= x <= 1

    for part in ("validation", "test"):
        figures = m.get(part)
        if not isinstance(figures, dict):
            raise runs.bad_field(path, part, figures, "an object of the split's figures", fix)
        for key in ("accuracy", "macro_f1"):
            if not fraction(figures.get(key)):
                raise runs.bad_field(path, f"{part}.{key}", figures.get(key), "a number in [0, 1]", fix)
        per_class = figures.get("per_class")
        if not isinstance(per_class, dict) or not per_class or not all(
                isinstance(c, dict) and fraction(c.get("f1")) for c in per_class.values()):
            raise runs.bad_field(path, f"{part}.per_class", per_class, "{class: {f1: a number in [0, 1]}}", fix)
    if type(m.get("wall_seconds", 0)) not in (int, float):
        raise runs.bad_field(path, "wall_seconds", m["wall_seconds"], "a number", fix)
    return m


def group(loaded: list) -> dict:
    """{(script, ((flag, value), ...)): [runs]}: the flags named are those that differ between runs."""
    keys = sorted({k for r in loaded for k in r["flags"]} - IGNORED)
    varying = [k for k in keys if len({repr(r["flags"].get(k)) for r in loaded}) > 1]
    groups = {}
    for r in loaded:
        key = (r["script"], tuple((k, r["flags"].get(k)) for k in varying))
        groups.setdefault(key, []).append(r)
    return groups


def mean_std(values) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}"


FIGURE_NAME = {"macro_f1": "macro-F1", "accuracy": "accuracy", "loss": "loss"}


def worst(runs_: list, part: str, key: str) -> str:
    """The worst seed's figure (the lowest; the highest loss) and its seed: one user runs one seed."""
    pick = min if SELECT_MODE.get(key, "max") == "max" else max
    r = pick(runs_, key=lambda r: r["metrics"][part].get(key, float("nan")))
    return f"{r['metrics'][part].get(key, float('nan')):.4f} (seed {r['flags'].get('seed')})"


def figures_first(loaded: list) -> list:
    """The figures a table shows, the runs' --select-metric first (macro-F1 for runs made
    before it existed): what chose their checkpoints is what a reader compares first."""
    chosen = [r["flags"].get("select_metric") or "macro_f1" for r in loaded]
    first = max(sorted(set(chosen)), key=chosen.count)  # (sorted: a tie goes the same way every time)
    return [first] + [k for k in ("macro_f1", "accuracy") if k != first]


def table(groups: dict, part: str = "test") -> str:
    """Markdown: one row per configuration; mean ± sample std over its runs and the worst seed
    of each figure (the runs' --select-metric first), F1 per class, and the median run's wall
    time (start to metrics.json; the median, as one run slowed by other work on the machine
    would otherwise decide it)."""
    every = [r for rs in groups.values() for r in rs]
    keys = figures_first(every)
    names = list(dict.fromkeys(c for r in every for c in r["metrics"][part]["per_class"]))
    lines = ["| configuration | n | " + " | ".join(f"{part} {FIGURE_NAME[k]} | worst" for k in keys) + " | "
             + " | ".join(f"F1 {l}" for l in names) + " | wall s/run (median) |",
             "|---|---|" + "---|---|" * len(keys) + "---|" * len(names) + "---|"]
    for (script, flags), rs in groups.items():
        name = script + "".join(f" {k}={level_name(v) if k in ('agreement', 'extra_agreement') and v != 'none' else v}"
                                for k, v in flags)
        ms = [r["metrics"][part] for r in rs]
        wall = float(np.median([r["metrics"].get("wall_seconds", float("nan")) for r in rs]))
        lines.append(f"| {name} | {len(rs)} | "
                     + " | ".join(f"{mean_std([m.get(k, float('nan')) for m in ms])} | {worst(rs, part, k)}"
                                  for k in keys) + " | "
                     + " | ".join(mean_std([m["per_class"][l]["f1"] for m in ms if l in m["per_class"]]) if
                                  any(l in m["per_class"] for m in ms) else "-" for l in names)
                     + f" | {wall:.0f} |")
    return "\n".join(lines) + "\n"


def shared_errors(runs_: list, min_share: float = 0.5) -> str:
    """Markdown: the test sentences at least `min_share` of the runs got wrong, most often
    first, from each run's eval/<level>-test/errors.csv (written by eval/evaluate.py)."""
    counts, true, predicted = Counter(), {}, {}
    for r in runs_:
        from common import sources
        own = sources.is_own(r["flags"].get("data", "hub"))
        path = os.path.join(r["dir"], "eval", "own-test" if own else f"{level_name(r['flags']['agreement'])}-test",
                            runs.ERRORS)
        if not os.path.exists(path):
            raise RunDirError(f"{r['dir']}: no {os.path.relpath(path, r['dir'])}; run python eval/evaluate.py "
                              f"{errors.shell_quote(r['dir'])} first")
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                counts[row["sentence"]] += 1
                true[row["sentence"]] = row["true"]
                predicted.setdefault(row["sentence"], Counter())[row["predicted"]] += 1
    lines = ["| wrong in | true | predicted | sentence |", "|---|---|---|---|"]
    for sentence, n in counts.most_common():
        if n < min_share * len(runs_):
            break
        shown = ", ".join(f"{k} ({v})" for k, v in predicted[sentence].most_common())
        lines.append(f"| {n}/{len(runs_)} | {true[sentence]} | {shown} | {sentence.replace('|', '/')} |")
    total = sum(counts.values())
    return (f"{len(counts)} distinct test sentences wrong in any run ({total / len(runs_):.1f} per run); "
            f"those wrong in at least {min_share:.0%} of the runs:\n\n" + "\n".join(lines) + "\n")
