"""Callbacks that Keras lacks: throughput, confusion-matrix images, a NaN guard that says why.

Order matters: these add keys to `logs` at epoch end, so they go before Keras'
TensorBoard / ModelCheckpoint in the callback list (those read the keys).
"""
import time

import numpy as np

from common import metrics, models
from common.env import keras, tf


class Throughput(keras.callbacks.Callback):
    """Adds examples_per_sec and real_tokens_per_sec (non-pad tokens) to each epoch's logs."""

    def __init__(self, examples_per_epoch: int, real_tokens_per_epoch: int):
        super().__init__()
        self.examples, self.tokens = examples_per_epoch, real_tokens_per_epoch
        self.train_seconds = 0.0
        self.history = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._t_train_end = time.perf_counter()  # validation time is not training throughput

    def on_epoch_end(self, epoch, logs=None):
        secs = getattr(self, "_t_train_end", time.perf_counter()) - self._t0
        self.train_seconds += secs
        rate = {"examples_per_sec": self.examples / secs, "real_tokens_per_sec": self.tokens / secs}
        self.history.append(rate)
        if logs is not None:
            logs.update(rate)


class ConfusionMatrixImages(keras.callbacks.Callback):
    """Predicts the validation split each epoch and puts its confusion matrix in TensorBoard."""

    def __init__(self, dataset, labels_in_dataset_order, tb_dir: str):
        super().__init__()
        self.dataset, self.y = dataset, np.asarray(labels_in_dataset_order)
        self.writer = tf.summary.create_file_writer(tb_dir)

    def on_epoch_end(self, epoch, logs=None):
        logits = models.dataset_logits(self.model, self.dataset)
        cm = metrics.classification_metrics(self.y, logits)["confusion_matrix"]
        png = metrics.figure_png(metrics.confusion_figure(cm, f"validation, epoch {epoch + 1}"))
        metrics.log_png(self.writer, "validation/confusion_matrix", png, epoch)


class StopOnNaN(keras.callbacks.TerminateOnNaN):
    """Keras' TerminateOnNaN, remembering that it fired so the script can say so and exit non-zero."""

    fired = False

    def on_batch_end(self, batch, logs=None):
        super().on_batch_end(batch, logs)
        if self.model.stop_training and logs and not np.isfinite(logs.get("loss", 0.0)):
            self.fired = True
