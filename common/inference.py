"""A finished run as a classifier of new text: its model, tokenizer, max_length and
calibration temperature; texts in, calibrated probabilities out, in input order.

Batched like evaluation (sorted by length, each batch padded to the next fixed width),
in mixed precision where the device has it: the choices eval/benchmark.py --predict
measures against transformers' pipeline.
"""
import os
from dataclasses import dataclass

import numpy as np

from common import calibration, data, models, runs


@dataclass
class Classifier:
    model: object
    tokenizer: object
    max_length: int
    temperature: float
    precision: str
    run_dir: str


def load(run_dir: str, precision: str = "auto") -> Classifier:
    from common import distribute
    flags = runs.load_run(run_dir)["flags"]
    precision = distribute.set_precision(precision)
    model_dir = os.path.join(run_dir, runs.MODEL)
    tokenizer = models.load_tokenizer(model_dir)
    model = models.build_classifier(model_dir)
    return Classifier(model, tokenizer, int(flags["max_length"]), calibration.temperature_of(run_dir), precision,
                      run_dir)


def encode(clf: Classifier, texts):
    """Token ids per text, truncated to the run's max_length; and how many were truncated."""
    ids = data.encode(clf.tokenizer, texts, clf.max_length + 1)  # one more: longer ones show as such
    long = [i for i, x in enumerate(ids) if len(x) > clf.max_length]
    if long:
        for i, x in zip(long, data.encode(clf.tokenizer, [texts[i] for i in long], clf.max_length)):
            ids[i] = x
    return ids, len(long)


def length_batches(ids, batch_size: int, max_length: int, pad_id: int):
    """(indices, features) batches: sorted by length, each padded to the next fixed width
    (data.WIDTHS, as evaluation), built in NumPy. Not tf.data here: a 1-sentence request
    through a new tf.data pipeline cost ~90 ms of set-up for ~10 ms of model."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    widths = data.widths_for(max_length)
    for i in range(0, len(ids), batch_size):
        idx = order[i:i + batch_size]
        width = next(w for w in widths if w >= max(len(ids[j]) for j in idx))
        x = np.full((len(idx), width), pad_id, np.int32)
        mask = np.zeros((len(idx), width), np.int32)
        for row, j in enumerate(idx):
            x[row, :len(ids[j])] = ids[j]
            mask[row, :len(ids[j])] = 1
        yield idx, {"input_ids": x, "attention_mask": mask}


def logits(clf: Classifier, ids, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Uncalibrated logits, float32, in input order."""
    step = models.logits_step(clf.model)
    out = np.zeros((len(ids), len(data.LABELS)), np.float32)
    batches = length_batches(ids, batch_size, clf.max_length, clf.tokenizer.pad_token_id)
    if progress:  # a bar on stderr for long inputs
        from tqdm import tqdm
        batches = tqdm(batches, total=-(-len(ids) // batch_size), unit="batch", desc="predicting", leave=False)
    for idx, x in batches:
        out[idx] = step(x).numpy()
    return out


def probabilities(clf: Classifier, texts, batch_size: int = 64, progress: bool = False):
    """(calibrated probabilities [n, classes], uncalibrated logits, texts truncated)."""
    ids, truncated = encode(clf, list(texts))
    raw = logits(clf, ids, batch_size, progress)
    return calibration.probabilities(raw, clf.temperature), raw, truncated
