"""Callbacks that Keras lacks: throughput, one validation pass with a confusion-matrix image, a NaN guard.

Order matters: these add keys to `logs` at epoch end, so they go before Keras'
TensorBoard / ModelCheckpoint in the callback list (those read the keys).
"""
import time

import numpy as np

from common import metrics, models
from common.phrasebank import LABELS
from common.env import keras, tf


class Throughput(keras.callbacks.Callback):
    """Adds examples_per_sec and real_tokens_per_sec (non-pad tokens) to each epoch's logs.

    Counts the steps this process really ran: an epoch resumed mid-way from a backup runs
    only its remaining steps, and is credited with that share of the epoch's examples
    and tokens (batches of one epoch differ in size, so the share is an average)."""

    def __init__(self, steps_per_epoch: int, examples_per_epoch: int, real_tokens_per_epoch: int):
        super().__init__()
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.examples, self.tokens = examples_per_epoch, real_tokens_per_epoch
        self.train_seconds = 0.0
        self.steps = 0          # optimizer steps run by this process
        self.history = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._t_train_end = None
        self._epoch_steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._epoch_steps += 1
        self._t_train_end = time.perf_counter()  # validation time is not training throughput

    def on_epoch_end(self, epoch, logs=None):
        if not self._epoch_steps:  # an epoch that a resume found already done
            return
        secs = self._t_train_end - self._t0
        self.train_seconds += secs
        self.steps += self._epoch_steps
        share = self._epoch_steps / self.steps_per_epoch
        rate = {"examples_per_sec": share * self.examples / secs, "real_tokens_per_sec": share * self.tokens / secs}
        self.history.append(rate)
        if logs is not None:
            logs.update(rate)


class Validation(keras.callbacks.Callback):
    """Scores the validation split once per epoch: adds val_loss (mean cross-entropy),
    val_accuracy and val_macro_f1 to the logs, where ModelCheckpoint, TensorBoard and
    keras-tuner read them; with `tb_dir`, also puts the confusion matrix in TensorBoard.

    Used instead of fit(validation_data=...): Keras' pass and a second one for the
    confusion matrix cost ~10% of a MiniLM run (docs/performance.md#the-default-recipe-choice-by-choice). Runs on every
    worker: dataset_logits is local, and the weights are the same on all of them."""

    def __init__(self, dataset, labels_in_dataset_order, tb_dir: str = None, names=LABELS):
        super().__init__()
        self.dataset, self.y = dataset, np.asarray(labels_in_dataset_order)
        self.names = names  # the class names in id order
        self.writer = tf.summary.create_file_writer(tb_dir) if tb_dir else None

    def on_epoch_end(self, epoch, logs=None):
        m = metrics.classification_metrics(self.y, models.dataset_logits(self.model, self.dataset), self.names)
        if logs is not None:
            logs.update(val_loss=m["loss"], val_accuracy=m["accuracy"], val_macro_f1=m["macro_f1"])
        if self.writer is not None:
            png = metrics.figure_png(metrics.confusion_figure(m["confusion_matrix"], f"validation, epoch {epoch + 1}",
                                                              self.names))
            metrics.log_png(self.writer, "validation/confusion_matrix", png, epoch)


class LearningRate(keras.callbacks.Callback):
    """Adds the learning rate at the epoch's end to the logs. Keras' TensorBoard callback
    logs it only for a plain optimizer: under mixed_float16 compile() wraps ours in a
    LossScaleOptimizer, and the scalar silently disappears (the GPU default)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            from common.optim import base_optimizer
            lr = base_optimizer(self.model.optimizer).learning_rate
            logs.setdefault("learning_rate", float(tf.convert_to_tensor(lr).numpy()))


class StopOnNaN(keras.callbacks.TerminateOnNaN):
    """Keras' TerminateOnNaN, remembering that it fired so the script can say so and exit non-zero."""

    fired = False

    def on_batch_end(self, batch, logs=None):
        super().on_batch_end(batch, logs)
        if self.model.stop_training and logs and not np.isfinite(logs.get("loss", 0.0)):
            self.fired = True
