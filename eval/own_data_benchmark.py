#!/usr/bin/env python
"""The own-data benchmark: the default recipe against the `hf` recipe, same encoder, over
seeds, on labelled files of different shapes, written at run time from the PhraseBank (its
license, CC BY-NC-SA 3.0, keeps them out of the repository).

    python eval/own_data_benchmark.py --model $MINILM --out runs/own-data-benchmark
    python eval/own_data_benchmark.py --model $MINILM --files imbalanced --seeds 1 -- --epochs 2

The files (OUT/data/, each CSV with text,label; as own data, each is drawn 80/10/10 by the
train script):
- 50agree.csv     every distinct 50Agree sentence (59% neutral): the PhraseBank's loosest level
- disputed.csv    the sentences 50Agree adds to AllAgree: those fewer annotators agreed on
- two_class.csv   50Agree's positive and negative sentences only (2 classes)
- imbalanced.csv  50Agree's neutral sentences, with positives at 1 in 10 and negatives at 1
                  in 20 of them (seeded draw): a rare-class set
Beside them, --phrasebank LEVELS runs the PhraseBank itself (its hash split) with the default
recipe. Each run is train/full_finetune.py --data FILE --recipe R --seed k (and the flags
after `--`), the default recipe's runs first; the hf recipe runs with --padding longest,
which trains as its fixed padding does (the mask hides the padding), and --precision auto,
in a fraction of the time. Finished runs are kept, so rerunning resumes (the same --out with
other flags, or with files a new --release writes differently, is refused: a new --out).
Writes OUT/own-data.md: accuracy and macro-F1 (mean ± std, worst seed) per file and recipe,
how often --restore-prior auto put the prior back, and (--decisions) the default runs' test
macro-F1 under each post-training decision: the prior always or never put back, auto, and
per-class logit offsets fitted on validation.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from common import REPO_ROOT, SHARED_DIR, config, errors, phrasebank, runs, summary  # noqa: E402

FILES = ("50agree", "disputed", "two_class", "imbalanced")
# hf: its batches (--padding longest pads each of fixed's batches only to its longest sentence: the
# mask hides padding, so it trains as fixed does) in the device's precision (bf16 where the CPU has
# it: the same test figures as fp32 per seed, docs/results.md), at a third of the time
RECIPE_FLAGS = {"project": [], "hf": ["--recipe", "hf", "--padding", "longest", "--precision", "auto"]}


def write_files(release: str, folder: str, seed: int = 0) -> dict:
    """{name: path} of the four files, written (atomically) from the PhraseBank release."""
    import numpy as np
    levels = phrasebank.deduped_levels(phrasebank.load_levels(release))
    loose = levels["50"]
    strict = {phrasebank.normalise(s) for s, _ in levels["all"]}
    names = phrasebank.LABELS
    neutral = [r for r in loose if names[r[1]] == "neutral"]
    rng = np.random.default_rng(seed)

    def some(label, n):
        rows = [r for r in loose if names[r[1]] == label]
        return [rows[i] for i in sorted(rng.choice(len(rows), n, replace=False))]

    content = {
        "50agree": loose,
        "disputed": [r for r in loose if phrasebank.normalise(r[0]) not in strict],
        "two_class": [r for r in loose if names[r[1]] != "neutral"],
        "imbalanced": neutral + some("positive", len(neutral) // 10) + some("negative", len(neutral) // 20),
    }
    import csv
    import io
    paths = {}
    for name, rows in content.items():
        path = paths[name] = os.path.join(folder, f"{name}.csv")
        text = io.StringIO(newline="")
        csv.writer(text).writerows([["text", "label"], *[[s, names[y]] for s, y in rows]])
        if os.path.exists(path):  # a rerun resumes the runs trained on it: it must be the same file
            with open(path, encoding="utf-8", newline="") as f:
                if f.read() != text.getvalue():
                    raise errors.DataError(f"{path}: holds other rows than --release {release} gives (written from "
                                           f"another release, or edited), and the runs beside it trained on it; pass "
                                           f"a new --out")
            continue
        runs.write_text(path, text.getvalue())
    return paths


def fit_offsets(log_probs, y, score, grid=None):
    """Per-class offsets added to the log-probabilities, fitted for `score` (coordinate ascent
    over a grid; scikit-learn has no such search for macro-F1). Written here, not in common/:
    it is this benchmark's experiment, not the recipe's (docs/own-data.md)."""
    import numpy as np
    grid = np.linspace(-2, 2, 41) if grid is None else grid
    offsets = np.zeros(log_probs.shape[1])
    best = score(y, (log_probs + offsets).argmax(1))
    for _ in range(3):
        for c in range(len(offsets)):
            for value in grid:
                trial = offsets.copy()
                trial[c] = value
                s = score(y, (log_probs + trial).argmax(1))
                if s > best + 1e-12:
                    best, offsets = s, trial
    return offsets


def decision_study(run_dir: str) -> dict:
    """Test macro-F1 of a finished default run under each post-training decision: the class
    prior put back always, never, or as --restore-prior auto decided (the run itself; the
    others are its logits shifted by -log(class weight) / T, as models.restore_class_prior
    shifts the bias); and item 2's 'try also', per-class offsets fitted on one half of the
    validation split, kept only where they raise macro-F1 on the other half (a guard against
    fitting the noise of a small split)."""
    import numpy as np
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split
    from common.finished_run import FinishedRun
    run = FinishedRun.open(run_dir)
    rows = run.split_rows()
    score = lambda y, p: f1_score(y, p, average="macro")  # noqa: E731
    parts = {}
    for part in ("validation", "test"):
        texts, y = zip(*rows[part])
        probs, _, _ = run.probabilities(list(texts))
        parts[part] = (np.log(np.clip(probs, 1e-12, None)), np.asarray(y))
    test_lp, test_y = parts["test"]
    out = {"test_macro_f1": score(test_y, test_lp.argmax(1))}
    m = runs.read_json(os.path.join(run_dir, runs.METRICS))
    weights = run.config["resolved"].get("class_weight")  # (JSON: the class ids are strings)
    if weights and "restored" in m.get("restore_prior", {}):
        from common import models
        shift = models.prior_shift({int(c): w for c, w in weights.items()}) / run.temperature
        restored = m["restore_prior"]["restored"]
        out["prior_on"] = score(test_y, (test_lp - (0 if restored else shift)).argmax(1))
        out["prior_off"] = score(test_y, (test_lp + (shift if restored else 0)).argmax(1))
    val_lp, val_y = parts["validation"]
    a, b = train_test_split(np.arange(len(val_y)), test_size=0.5, stratify=val_y, random_state=0)
    offsets = fit_offsets(val_lp[a], val_y[a], score)
    kept = score(val_y[b], (val_lp[b] + offsets).argmax(1)) > score(val_y[b], val_lp[b].argmax(1))
    out.update(offsets_kept=bool(kept), offsets=score(test_y, (test_lp + (offsets if kept else 0)).argmax(1)))
    return out


def labels_flag(name: str) -> list:
    return ["--labels", "negative,positive"] if name == "two_class" else []


def main(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="distilbert-base-uncased", help="the encoder every run starts from")
    p.add_argument("--release", default=os.path.join(SHARED_DIR, "data", "FinancialPhraseBank-v1.0"),
                   help="the PhraseBank release (folder or zip) the files are written from")
    p.add_argument("--files", default=",".join(FILES), help=f"which files, comma-separated, of {', '.join(FILES)}")
    p.add_argument("--phrasebank", default="all", help="PhraseBank levels to run beside the files with the default "
                   "recipe, comma-separated (all, 75, 66, 50; '' for none)")
    p.add_argument("--recipes", default="project,hf", help="comma-separated, of project (the defaults) and hf")
    p.add_argument("--seeds", type=int, default=3, help="seeds 1..N")
    p.add_argument("--out", default=os.path.join("runs", "own-data-benchmark"), help="folder of the files and runs")
    p.add_argument("--decisions", action=argparse.BooleanOptionalAction, default=True,
                   help="also score each default run's test split under the other post-training decisions: the prior "
                        "always or never put back, and per-class logit offsets (fitted on half of validation, kept "
                        "where they win on the other half)")
    p.add_argument("train_flags", nargs=argparse.REMAINDER, help="after --: more train script flags, for every run")
    args = p.parse_args(argv)
    extra = args.train_flags[1:] if args.train_flags[:1] == ["--"] else args.train_flags
    files = [f for f in args.files.split(",") if f]
    recipes = [r for r in args.recipes.split(",") if r]
    levels = [lv for lv in args.phrasebank.split(",") if lv]
    for value, allowed, flag in ((files, FILES, "--files"), (recipes, tuple(RECIPE_FLAGS), "--recipes"),
                                 (levels, phrasebank.LEVELS, "--phrasebank")):
        if any(v not in allowed for v in value):
            p.error(f"{flag} {','.join(value)}: each one of {', '.join(allowed)}")
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: at least 1")
    for flag in ("--seed", "--run-dir", "--data", "--recipe", "--model", "--labels", "--agreement"):
        if any(config.sets_flag(c, flag) for c in extra):  # (--mod: argparse takes a prefix)
            p.error(f"{flag} after --: this script sets it per run; remove it")

    paths = write_files(args.release, os.path.join(args.out, "data")) if files else {}
    script = os.path.join(REPO_ROOT, "train", "full_finetune.py")
    datasets = [(name, ["--data", paths[name], *labels_flag(name)]) for name in files]
    datasets += [(f"phrasebank-{level}", ["--data", args.release, "--agreement", level]) for level in levels]
    plan = []
    for recipe in recipes:  # the default recipe's figures first: they are the ones in question
        for name, data_flags in datasets:
            if recipe != "project" and name.startswith("phrasebank-"):
                continue
            for k in range(1, args.seeds + 1):
                run_dir = os.path.join(args.out, name, recipe, f"seed{k}")
                plan.append((f"{name}, {recipe} recipe, seed {k}", run_dir,
                             [sys.executable, script, "--model", args.model, *data_flags, *RECIPE_FLAGS[recipe],
                              "--no-serving", *extra, "--seed", str(k), "--run-dir", run_dir]))  # measured, not served
    runs.run_study_steps(plan)

    lines = ["| data | recipe | seeds | test n | test accuracy | worst | test macro-F1 | worst | prior restored |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, _ in datasets:
        for recipe in recipes:
            if recipe != "project" and name.startswith("phrasebank-"):
                continue
            loaded = [summary.load(os.path.join(args.out, name, recipe, f"seed{k}")) for k in range(1, args.seeds + 1)]
            test = [r["metrics"]["test"] for r in loaded]
            restored = [(r["metrics"].get("restore_prior") or {}).get("restored") for r in loaded]
            lines.append(f"| {name} | {recipe} | {len(loaded)} | {test[0]['n']} | "
                         f"{summary.mean_std([t['accuracy'] for t in test])} | "
                         f"{min(t['accuracy'] for t in test):.4f} | {summary.mean_std([t['macro_f1'] for t in test])} | "
                         f"{min(t['macro_f1'] for t in test):.4f} | "
                         f"{sum(bool(x) for x in restored)}/{len(restored)} |")
    text = (f"# Own-data benchmark\n\nmodel {args.model}; flags for every run: {' '.join(extra) or '(none)'}; "
            f"hf runs: {' '.join(RECIPE_FLAGS['hf'])}\n\n" + "\n".join(lines) + "\n")
    if args.decisions and "project" in recipes:
        print("the post-training decisions, on each default run's test split...", flush=True)
        lines = ["| data | prior always put back | never | --restore-prior auto (the runs) | offsets kept | "
                 "with offsets |", "|---|---|---|---|---|---|"]
        for name, _ in datasets:
            study = [decision_study(os.path.join(args.out, name, "project", f"seed{k}"))
                     for k in range(1, args.seeds + 1)]
            column = lambda key: summary.mean_std([r[key] for r in study]) if all(key in r for r in study) else "-"  # noqa: E731
            lines.append(f"| {name} | {column('prior_on')} | {column('prior_off')} | {column('test_macro_f1')} | "
                         f"{sum(r['offsets_kept'] for r in study)}/{len(study)} | {column('offsets')} |")
        text += ("\n## Post-training decisions (default recipe, test macro-F1)\n\n" + "\n".join(lines) + "\n")
    runs.write_text(os.path.join(args.out, "own-data.md"), text)
    print(text)
    return text


if __name__ == "__main__":
    errors.run(main)
