"""Calibrated confidences: one temperature fitted on the validation split (Guo et al. 2017,
"On Calibration of Modern Neural Networks"), its figures, and the reliability diagram.

A fine-tuned encoder is usually over-confident: its 0.99 is right less often than 99% of
the time. Dividing the logits by one temperature T > 1, fitted to minimise the
validation NLL, fixes most of that and never changes a label (argmax is unchanged).
The run stores T in calibration.json; predict.py and the serving SavedModel apply it.
"""
import math
import os

import numpy as np
from sklearn.metrics import brier_score_loss, log_loss

from common import errors, metrics, runs

CALIBRATION = "calibration.json"
RELIABILITY = "reliability.png"
ECE_BINS = 15


def probabilities(logits, temperature: float = 1.0) -> np.ndarray:
    return metrics.softmax(np.asarray(logits, np.float64) / temperature)


def fit_temperature(logits, labels) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) (scipy's bounded scalar search
    over log T: the NLL is smooth and unimodal in it)."""
    from scipy.optimize import minimize_scalar
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    best = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(-3.0, 3.0),
                           method="bounded", options={"xatol": 1e-5})
    return float(np.exp(best.x))


def nll(logits, labels, temperature: float = 1.0) -> float:
    return float(log_loss(labels, probabilities(logits, temperature), labels=list(range(np.shape(logits)[1]))))


def top_label(probs, labels, bins: int = ECE_BINS):
    """Per sentence: the top class's probability, whether that class is right, and its
    equal-width confidence bin."""
    conf, right = probs.max(1), probs.argmax(1) == np.asarray(labels)
    return conf, right, np.minimum((conf * bins).astype(int), bins - 1)


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """ECE over equal-width confidence bins (top-label). Written here: scikit-learn's
    calibration_curve is binary-only and has no ECE."""
    conf, right, which = top_label(probs, labels, bins)
    return float(sum(abs(right[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def figures(logits, labels, temperature: float = 1.0) -> dict:
    """ECE (15 bins), NLL and Brier score (sum over classes, mean over sentences) at T."""
    probs = probabilities(logits, temperature)
    return {"ece": expected_calibration_error(probs, labels),
            "nll": nll(logits, labels, temperature),
            "brier": float(brier_score_loss(labels, probs, labels=list(range(probs.shape[1])))),
            "accuracy": float((probs.argmax(1) == np.asarray(labels)).mean())}


def coverage(logits, labels, temperature: float, thresholds=(0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)) -> list:
    """predict.py --min-confidence p: the share of texts labelled (not abstained on) and the
    accuracy on those, per p."""
    conf, right, _ = top_label(probabilities(logits, temperature), labels)
    out = []
    for p in thresholds:
        kept = conf >= p
        out.append({"min_confidence": p, "coverage": float(kept.mean()),
                    "accuracy": float(right[kept].mean()) if kept.any() else None})
    return out


def reliability_figure(logits, labels, temperature: float, title: str = ""):
    """Accuracy against confidence per bin, before and after the temperature."""
    plt = metrics._pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8), dpi=100, sharey=True)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for ax, t, name in zip(axes, (1.0, temperature), ("before (T=1)", f"after (T={temperature:.2f})")):
        probs = probabilities(logits, t)
        _, right, which = top_label(probs, labels)
        acc = [right[which == b].mean() if (which == b).any() else 0 for b in range(ECE_BINS)]
        count = np.bincount(which, minlength=ECE_BINS)
        ax.bar(edges[:-1], acc, width=1 / ECE_BINS, align="edge", edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
        for b in np.nonzero(count)[0]:
            ax.text(edges[b] + 0.5 / ECE_BINS, 0.02, str(count[b]), ha="center", fontsize=6, rotation=90)
        ax.set_xlabel("confidence (top class)")
        ax.set_title(f"{title} {name}: ECE {expected_calibration_error(probs, labels):.4f}", fontsize=9,
                     parse_math=False)  # the title names the user's run or file
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def calibrate(run_dir: str, split_logits: dict, split_labels: dict, tb_writer=None) -> dict:
    """Fit T on split_logits['validation'], report before/after on every split given, write
    run_dir/calibration.json and reliability.png (+ TensorBoard image). Returns the report."""
    t = fit_temperature(split_logits["validation"], split_labels["validation"])
    report = {"temperature": t, "fitted_on": "validation", "ece_bins": ECE_BINS}
    for split, logits in split_logits.items():
        report[split] = {"before": figures(logits, split_labels[split]),
                         "after": figures(logits, split_labels[split], t)}
    runs.write_json(os.path.join(run_dir, CALIBRATION), report)
    shown = "test" if "test" in split_logits else "validation"
    png = metrics.figure_png(reliability_figure(split_logits[shown], split_labels[shown], t, shown))
    runs.write_bytes(os.path.join(run_dir, RELIABILITY), png)
    if tb_writer is not None:
        metrics.log_png(tb_writer, f"calibration/reliability_{shown}", png, 0)
    return report


def _fit_again(run_dir: str) -> str:
    return f"run python eval/calibrate.py {errors.shell_quote(run_dir)} to fit it again"


def read(run_dir: str) -> dict:
    """The run's calibration.json (checked as read: runs.read_run_json); {} for a run without one."""
    path = os.path.join(run_dir, CALIBRATION)
    return runs.read_run_json(path, _fit_again(run_dir)) if os.path.exists(path) else {}


def temperature_of(run_dir: str) -> float:
    """The run's fitted temperature; 1.0 (uncalibrated) for a run without calibration.json.
    One that is not a positive finite number is refused (it divides the logits: zero or
    less inverts or breaks every probability)."""
    path = os.path.join(run_dir, CALIBRATION)
    if not os.path.exists(path):
        return 1.0
    t = read(run_dir).get("temperature")
    if type(t) not in (int, float) or not math.isfinite(t) or t <= 0:
        raise runs.bad_field(path, "temperature", t, "a positive number (the logits are divided by it)",
                             _fit_again(run_dir))
    return float(t)


def summary(report: dict) -> str:
    parts = [f"T={report['temperature']:.3f}"]
    for split in ("validation", "test"):
        if split in report:
            b, a = report[split]["before"], report[split]["after"]
            parts.append(f"{split} ECE {b['ece']:.4f}->{a['ece']:.4f} NLL {b['nll']:.4f}->{a['nll']:.4f}")
    return "calibration: " + ", ".join(parts)
