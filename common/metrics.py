"""Classification figures (sklearn), a sparse-label macro-F1 for Keras, confusion-matrix pictures."""
import io

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from common.config import SELECT_MODE  # --select-metric: which way is better
from common.env import keras, tf


class SparseMacroF1(keras.metrics.Metric):
    """Macro-F1 from integer labels and logits, as a streaming confusion matrix.

    Written here because Keras' F1Score wants one-hot labels and probabilities. Same
    state pattern as keras.metrics.MeanIoU, which is distribution-safe.
    """

    def __init__(self, num_classes, name="macro_f1", **kw):
        super().__init__(name=name, **kw)
        self.num_classes = num_classes
        self.cm = self.add_variable(shape=(num_classes, num_classes), initializer="zeros", dtype="float64",
                                    name="confusion", aggregation="sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        y_pred = tf.argmax(tf.reshape(y_pred, [-1, self.num_classes]), axis=-1, output_type=tf.int32)
        w = None if sample_weight is None else tf.reshape(tf.cast(sample_weight, tf.float64), [-1])
        return self.cm.assign_add(tf.math.confusion_matrix(y_true, y_pred, self.num_classes, weights=w,
                                                           dtype=tf.float64))

    def result(self):
        cm = tf.convert_to_tensor(self.cm.value)
        tp = tf.linalg.diag_part(cm)
        f1 = tf.math.divide_no_nan(2 * tp, tf.reduce_sum(cm, 0) + tf.reduce_sum(cm, 1))
        return tf.cast(tf.reduce_mean(f1), tf.float32)

    def reset_state(self):
        self.cm.assign(tf.zeros_like(self.cm.value))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def monitor(select_metric: str) -> str:
    """The logs' key for the selection metric on validation (callbacks.Validation writes it)."""
    return "val_" + select_metric


def improves(select_metric: str, new: float, old: float) -> bool:
    """new is strictly better than old on the selection metric."""
    return new > old if SELECT_MODE[select_metric] == "max" else new < old


def softmax(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(y_true, logits, names) -> dict:
    """accuracy, macro-F1, per-class precision/recall/F1/support, mean CE loss, confusion
    matrix; names: the class names in id order (per_class's keys)."""
    y_true = np.asarray(y_true)
    probs = softmax(logits)
    y_pred = probs.argmax(axis=1)
    labels = list(range(len(names)))
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    loss = float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None)).mean())
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "loss": loss,
        "n": int(len(y_true)),
        "per_class": {names[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                  "support": int(n[i])} for i in labels},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _annotated_grid(ax, grid, rows, cols, xlabel, ylabel, title, fmt, cmap, vmin=None, vmax=None):
    ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax)
    # class names and titles are the user's strings: parse_math=False draws a '$' in them as text
    # (a label such as "up $" raised ParseException at the first confusion image, ending the run)
    ax.set_xticks(range(len(cols)), cols, parse_math=False)
    ax.set_yticks(range(len(rows)), rows, parse_math=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9, parse_math=False)
    mid = (grid.min() + grid.max()) / 2
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, fmt(grid[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cmap != "Blues" or grid[i, j] > mid else "black")


def confusion_figure(cm, title: str, names):
    size = 3.2 + 0.35 * len(names)
    fig, ax = _pyplot().subplots(figsize=(size, size * 0.9), dpi=100)
    _annotated_grid(ax, np.asarray(cm), names, names, "predicted", "true", title, lambda v: str(int(v)), "Blues")
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return buf.getvalue()


def log_png(writer, tag: str, png: bytes, step: int) -> None:
    """Put a PNG into TensorBoard's Images tab."""
    with writer.as_default():
        tf.summary.image(tag, tf.image.decode_png(png, channels=4)[None], step=step)
    writer.flush()


def error_analysis(sentences, y_true, probs, lengths, strictest_level, names, top: int = 10) -> str:
    """Markdown: the most confident mistakes, mistakes by sentence length and by the
    strictest agreement level that holds the sentence, and the confusion pairs that dominate."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    pred = probs.argmax(1)
    wrong = pred != y_true
    out = [f"# Error analysis\n\n{int(wrong.sum())} mistakes in {len(y_true)} sentences "
           f"(accuracy {1 - wrong.mean():.4f}).\n"]

    out.append("## Confusion pairs (true -> predicted)\n\n| true | predicted | mistakes | share of mistakes |\n|---|---|---|---|")
    pairs = {}
    for t, p in zip(y_true[wrong], pred[wrong]):
        pairs[(t, p)] = pairs.get((t, p), 0) + 1
    for (t, p), n in sorted(pairs.items(), key=lambda kv: -kv[1]):
        out.append(f"| {names[t]} | {names[p]} | {n} | {n / max(wrong.sum(), 1):.2f} |")

    def table(title, keys, order):
        rows = [f"\n## Mistakes by {title}\n\n| {title} | sentences | mistakes | error rate |\n|---|---|---|---|"]
        for k in order:
            sel = np.asarray([key == k for key in keys])
            if sel.any():
                rows.append(f"| {k} | {int(sel.sum())} | {int(wrong[sel].sum())} | {wrong[sel].mean():.3f} |")
        return rows

    bins = [(0, 16), (17, 32), (33, 48), (49, 64), (65, 10_000)]
    names = [f"{a}-{b}" if b < 10_000 else f">{a - 1}" for a, b in bins]
    length_bin = [next(n for (a, b), n in zip(bins, names) if a <= l <= b) for l in lengths]
    out += table("length (tokens)", length_bin, names)
    if strictest_level is not None:  # PhraseBank sentences (a user's file has no agreement levels)
        out += table("agreement (strictest level holding the sentence)", strictest_level,
                     ["AllAgree", "75Agree", "66Agree", "50Agree"])

    out.append(f"\n## The {top} most confident mistakes\n\n| confidence | true | predicted | sentence |\n|---|---|---|---|")
    idx = np.where(wrong)[0]
    for i in idx[np.argsort(-probs[idx].max(1))][:top]:
        s = sentences[i].replace("|", "\\|")
        out.append(f"| {probs[i].max():.3f} | {names[y_true[i]]} | {names[pred[i]]} | {s} |")
    return "\n".join(out) + "\n"


def heatmaps(grids, titles, row_labels, col_labels):
    """Side-by-side annotated heatmaps (rows: trained on, columns: evaluated on)."""
    fig, axes = _pyplot().subplots(1, len(grids), figsize=(4.5 * len(grids), 1.2 + 0.6 * len(row_labels)), dpi=100)
    for ax, grid, title in zip(np.atleast_1d(axes), grids, titles):
        _annotated_grid(ax, grid, row_labels, col_labels, "tested on", "trained on", title, lambda v: f"{v:.3f}",
                        "viridis", vmin=min(g.min() for g in grids), vmax=1)
    fig.tight_layout()
    return fig
