"""The macro-F1 Keras metric, on one device and under MirroredStrategy, and a run's figures
(classification_metrics): all against scikit-learn."""
import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss

from common import distribute, metrics
from common.env import tf


def _labels_and_logits(n=301, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)).astype(np.float32)
    logits[np.arange(n) % 3 == 0, :] = 0
    logits[np.arange(n) % 3 == 0, y[np.arange(n) % 3 == 0]] = 5  # a third right for sure
    return y, logits


def test_macro_f1_matches_sklearn():
    y, logits = _labels_and_logits()
    m = metrics.SparseMacroF1(3)
    for i in range(0, len(y), 64):  # streaming over batches
        m.update_state(y[i:i + 64], logits[i:i + 64])
    assert float(m.result()) == np.float32(f1_score(y, logits.argmax(1), average="macro"))


def test_macro_f1_under_mirrored_strategy():
    y, logits = _labels_and_logits(seed=1)
    strategy = distribute._mirrored(["/cpu:0", "/cpu:1"])  # the one the train scripts use
    with strategy.scope():
        m = metrics.SparseMacroF1(3)
    ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((y, logits)).batch(50))
    for yb, lb in ds:
        strategy.run(m.update_state, (yb, lb))
    assert abs(float(m.result()) - f1_score(y, logits.argmax(1), average="macro")) < 1e-6


def test_classification_metrics_figures():
    """Against scikit-learn's own figures, from probabilities softmaxed by SciPy (not by the
    code under test)."""
    y, logits = _labels_and_logits(seed=2)
    r = metrics.classification_metrics(y, logits, ("negative", "neutral", "positive"))
    predicted = logits.argmax(1)
    assert r["n"] == len(y)
    assert r["accuracy"] == accuracy_score(y, predicted)
    assert r["macro_f1"] == f1_score(y, predicted, average="macro")
    assert r["confusion_matrix"] == confusion_matrix(y, predicted, labels=[0, 1, 2]).tolist()
    probabilities = softmax(logits.astype(np.float64), axis=1)
    assert r["loss"] == pytest.approx(log_loss(y, probabilities, labels=[0, 1, 2]), rel=1e-9)


def test_a_confusion_image_draws_class_names_with_dollar_signs_as_text():
    """Class names are the user's (own data's labels): 'up$ $(id)' made matplotlib parse TeX
    math and raise ParseException at the first epoch's confusion image, ending the run."""
    names = ["down $5", "flat\"q'", "up$ $(id)"]
    fig = metrics.confusion_figure([[3, 1, 0], [0, 5, 1], [1, 0, 4]], "validation, epoch 1", names)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == names
    image = tf.io.decode_png(metrics.figure_png(fig))
    assert image.shape[0] > 100 and image.shape[2] == 4
