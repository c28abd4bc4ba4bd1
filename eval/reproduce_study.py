#!/usr/bin/env python
"""Rerun the whole notebook study, at a chosen scale, with several seeds.

    python eval/reproduce_study.py                                  # DistilBERT, 3 seeds, AllAgree + 50Agree
    python eval/reproduce_study.py --recipe notebook --split notebook   # the notebook's settings and test sentences
    python eval/reproduce_study.py --model PATH --data PATH --epochs 2 --seeds 3 --levels all,50
    python eval/reproduce_study.py --models distilbert-base-uncased,bert-base-cased --experiments head  # Exp 6

Experiments (--experiments, in this order; body starts from the same seed's head run):
  head           train/head_only.py        encoder frozen                       (notebook Basic 1)
  body           train/body_finetune.py    from the head run, head frozen       (Basic 2)
  full           train/full_finetune.py    everything trains                    (Basic 3)
  head-balanced  head + --class-weight balanced                                 (Exp 3, as the notebook ran it)
  balanced       full + --class-weight balanced                                 (Exp 3)
  focal          full + --loss focal                                            (Exp 3)
  custom-head    train/custom_head.py --freeze encoder, the notebook's head     (Exp 5a)
  custom         train/custom_head.py, the notebook's head, everything trains   (Exp 5b)
(the notebook's head: [CLS] -> Dense 512 relu -> Dense 3, dropout 0.1; under --recipe
notebook at a constant 3e-5, as the notebook trained it)
then the agreement matrix of the full runs (Exp 4; --split hash only: the notebook's split
draws each level on its own, so its per-level figures are the table's rows). Error analysis
(Exp 2): the table's per-class F1 and confusion matrix (summed over seeds); eval/evaluate.py
on a run lists its wrong sentences. Every run gets --recipe (common/recipes.py; default
notebook: the notebook's settings) and --split; --models runs everything per encoder and
puts them side by side (Exp 6). Finished runs are kept, so an interrupted study resumes
where it stopped. Writes --out/study.md (and .csv) with mean +- std over seeds.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # common.data imports TensorFlow: keep its C++ notices quiet
from common import REPO_ROOT, config, errors, runs, summary  # noqa: E402  (no TensorFlow in this process: each run is its own)
from common.phrasebank import LABELS, level_name  # noqa: E402

from common.recipes import RECIPES, describe  # noqa: E402

# The notebook's custom head (Exp 5): [CLS] -> Dense 512 relu -> Dense 3, dropout 0.1.
NOTEBOOK_HEAD = ["--head", "custom", "--pooling", "cls", "--head-hidden", "512", "--head-activation", "relu",
                 "--head-dropout", "0.1"]
# The recipe (the notebook's by default) comes first; an experiment's own flags after it.
EXPERIMENTS = {  # name: (script, extra flags, notebook name)
    "head": ("train/head_only.py", [], "Basic 1: head only"),
    "body": ("train/body_finetune.py", [], "Basic 2: body only, from the head"),
    "full": ("train/full_finetune.py", [], "Basic 3: full fine-tuning"),
    "head-balanced": ("train/head_only.py", ["--class-weight", "balanced"], "Exp 3: head only + class weights"),
    "balanced": ("train/full_finetune.py", ["--class-weight", "balanced"], "Exp 3: full + balanced class weights"),
    "focal": ("train/full_finetune.py", ["--loss", "focal"], "Exp 3: full + focal loss"),
    "custom-head": ("train/custom_head.py", [*NOTEBOOK_HEAD, "--freeze", "encoder"], "Exp 5a: custom head only"),
    "custom": ("train/custom_head.py", NOTEBOOK_HEAD, "Exp 5b: full + custom head"),
}
# The notebook's own figures (../shared/notebook-figures.md: DistilBERT, one run each, a Colab GPU, its split
# of each level), test accuracy and macro-F1 where it printed one. Shown beside ours only under
# --split notebook, where the test sentences are the same.
NOTEBOOK_FIGURES = {("all", "head"): "0.802", ("all", "body"): "0.952", ("all", "full"): "0.952",
                    ("all", "head-balanced"): "0.767 (F1 0.67)", ("all", "custom-head"): "0.802",
                    ("all", "custom"): "0.938", ("75", "head"): "0.740 (F1 0.52)", ("66", "head"): "0.763 (F1 0.65)",
                    ("50", "head"): "0.695 (F1 0.54)"}
# The notebook trained its custom head at a constant 3e-5 instead of its usual schedule, so under its
# recipe the custom-head experiments do too (flags after -- still override it).
RECIPE_EXTRA = {("notebook", exp): ["--lr", "3e-5", "--lr-schedule", "constant"] for exp in ("custom-head", "custom")}


def model_slug(model: str) -> str:
    """A folder and table name for an encoder: the Hub id's last part, or the folder's name."""
    path = model.rstrip("/")
    name = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if name == "model" else name


def parse(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="distilbert-base-uncased")
    p.add_argument("--models", default="", help="comma-separated encoders to run every experiment on, side by side "
                                                "(Exp 6); default: --model")
    p.add_argument("--recipe", default="notebook", choices=list(RECIPES), help="flag preset for every run")
    p.add_argument("--split", default="hash", choices=["hash", "notebook"],
                   help="hash: leak-free, nested; notebook: the notebook's own split (its 227 test sentences)")
    p.add_argument("--data", default="hub")
    p.add_argument("--levels", default="all,50", help="agreement levels to train on")
    p.add_argument("--experiments", default="head,body,full,balanced,custom",
                   help=f"comma-separated, from {','.join(EXPERIMENTS)}")
    p.add_argument("--seeds", type=int, default=3, help="seeds 1..N per experiment and level")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default="", help="study folder (default runs/study-<time>)")
    p.add_argument("extra", nargs="*", help="after --: more flags for every train script (e.g. --precision fp32)")
    args = p.parse_args(argv)
    unknown = set(args.experiments.split(",")) - set(EXPERIMENTS)
    if unknown:
        p.error(f"--experiments: unknown {sorted(unknown)}; choose from {','.join(EXPERIMENTS)}")
    if "body" in args.experiments.split(",") and "head" not in args.experiments.split(","):
        p.error("--experiments: body starts from the head run; include head")
    return args


def study_steps(args, out, models, exps):
    """(steps for runs.run_study_steps, {(model, level, experiment, seed): run folder})."""
    slug = {m: model_slug(m) for m in models}
    run_dirs, steps = {}, []
    for model, level, exp, seed in ((m, lv, e, s) for m in models for lv in args.levels.split(",")
                                    for s in range(1, args.seeds + 1) for e in exps):
        run_dir = run_dirs[(model, level, exp, seed)] = os.path.join(
            out, *([slug[model]] if len(models) > 1 else []), level, exp, f"seed{seed}")
        script, extra, _ = EXPERIMENTS[exp]
        source = ["--init-from", run_dirs[(model, level, "head", seed)]] if exp == "body" else ["--model", model]
        cmd = [sys.executable, os.path.join(REPO_ROOT, script), *source, "--data", args.data, "--agreement", level,
               "--epochs", str(args.epochs), "--seed", str(seed), "--run-dir", run_dir, "--recipe", args.recipe,
               "--split", args.split, *extra, *RECIPE_EXTRA.get((args.recipe, exp), []),
               "--no-serving", *args.extra]  # measured, not served (eval/export.py serves one)
        steps.append((f"{slug[model] + ' ' if len(models) > 1 else ''}{level_name(level)} {exp} seed {seed}",
                      run_dir, cmd))
    return steps, run_dirs


def agreement_matrix(args, out, run_dirs) -> str:
    """Exp 4: the agreement matrix of the full fine-tuning runs, as markdown (or why there is none)."""
    full = [d for (m, lv, e, s), d in run_dirs.items() if e == "full"]
    if full and args.split != "hash":
        return (f"(No agreement matrix: --split {args.split} draws each level's split on its own, so a model "
                f"would be tested on sentences it trained on; each level's row above is the notebook's Exp 4.)\n")
    if not full:
        return ""
    errors.run_child([sys.executable, os.path.join(REPO_ROOT, "eval", "agreement_matrix.py"), *full,
                      "--out", os.path.join(out, "agreement_matrix")])
    with open(os.path.join(out, "agreement_matrix", "matrix.md")) as f:
        return f.read().replace("# Agreement matrix", "## Agreement matrix (full fine-tuning, Exp 4)")


def study_rows(args, run_dirs, models, exps):
    """The table, comparable to the notebook's: per level, experiment and encoder, accuracy,
    macro-F1, per-class F1 and the confusion matrix summed over seeds (Exp 2's error analysis;
    eval/evaluate.py lists a run's wrong sentences)."""
    rows = []
    for level, exp, model in ((lv, e, m) for lv in args.levels.split(",") for e in exps for m in models):
        ms = [summary.load(run_dirs[(model, level, exp, s)])["metrics"] for s in range(1, args.seeds + 1)]
        t = [m["test"] for m in ms]
        rows.append([model_slug(model), EXPERIMENTS[exp][2], level_name(level), f"{level_name(level)} test (n={t[0]['n']})",
                     NOTEBOOK_FIGURES.get((level, exp), "-") if args.split == "notebook" else "-", len(ms),
                     summary.mean_std([x["accuracy"] for x in t]), summary.mean_std([x["macro_f1"] for x in t]),
                     *[summary.mean_std([x["per_class"][l]["f1"] for x in t]) for l in LABELS],
                     str(np.sum([x["confusion_matrix"] for x in t], axis=0).tolist()).replace(" ", ""),
                     f"{sum(m['train_seconds'] for m in ms) / len(ms):.0f}"])
    return rows


def main(argv=None):
    args = parse(argv)
    out = args.out or runs.default_run_dir("study")
    os.makedirs(out, exist_ok=True)
    exps = args.experiments.split(",")
    models = [m for m in (args.models or args.model).split(",") if m]
    t_start = time.time()
    steps, run_dirs = study_steps(args, out, models, exps)
    runs.run_study_steps(steps)
    matrix = agreement_matrix(args, out, run_dirs)
    rows = study_rows(args, run_dirs, models, exps)
    header = ("| encoder | experiment | trained on | test split | notebook: accuracy | seeds | accuracy | macro-F1 | "
              + " | ".join(f"F1 {l}" for l in LABELS) + " | confusion, all seeds (rows: true "
              + "/".join(l[:3] for l in LABELS) + ") | train s/run |")
    lines = [header, "|---|---|---|---|---|---|---|---|" + "---|" * len(LABELS) + "---|---|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    wall = time.time() - t_start
    text = (f"# Study: the notebook's experiments, {args.seeds} seed{'s' if args.seeds > 1 else ''} each\n\n"
            f"Encoder(s) {', '.join(f'`{m}`' for m in models)}, {args.epochs} epochs, --split {args.split}, "
            f"--recipe {args.recipe} (`{describe(args.recipe)}`), more flags: "
            f"`{errors.shell_join(args.extra) or '(none)'}`. Mean ± sample std over seeds. \"notebook\": the notebook's "
            f"own figure (DistilBERT, one run, a Colab GPU; ../shared/notebook-figures.md), shown only under "
            f"--split notebook, where its test sentences are ours. Wall time of this "
            f"invocation: {wall / 60:.1f} min (runs already done before it are not counted).\n\n"
            + "\n".join(lines) + "\n\n" + matrix)
    runs.write_text(os.path.join(out, "study.md"), text)
    runs.write_csv(os.path.join(out, "study.csv"), ["encoder", "experiment", "trained_on", "test_split",
                                                   "notebook_accuracy", "seeds", "accuracy", "macro_f1",
                                                   *[f"f1_{l}" for l in LABELS], "confusion", "train_seconds"], rows)
    print(text)
    print(f"wrote {out}/study.md")
    return text


if __name__ == "__main__":
    errors.run(main)
