"""The macro-F1 Keras metric agrees with sklearn, on one device and under MirroredStrategy."""
import numpy as np
from sklearn.metrics import f1_score

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
    m = metrics.SparseMacroF1()
    for i in range(0, len(y), 64):  # streaming over batches
        m.update_state(y[i:i + 64], logits[i:i + 64])
    assert float(m.result()) == np.float32(f1_score(y, logits.argmax(1), average="macro"))


def test_macro_f1_under_mirrored_strategy():
    y, logits = _labels_and_logits(seed=1)
    strategy = distribute._mirrored(["/cpu:0", "/cpu:1"])  # the one the train scripts use
    with strategy.scope():
        m = metrics.SparseMacroF1()
    ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((y, logits)).batch(50))
    for yb, lb in ds:
        strategy.run(m.update_state, (yb, lb))
    assert abs(float(m.result()) - f1_score(y, logits.argmax(1), average="macro")) < 1e-6


def test_classification_metrics_figures():
    y, logits = _labels_and_logits(seed=2)
    r = metrics.classification_metrics(y, logits)
    assert r["accuracy"] == np.mean(y == logits.argmax(1))
    assert np.asarray(r["confusion_matrix"]).sum() == len(y)
    p = metrics.softmax(logits)
    assert r["loss"] == np.float64(-np.log(p[np.arange(len(y)), y]).mean())
