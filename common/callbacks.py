"""Callbacks that Keras lacks: throughput, one validation pass with a confusion-matrix image, a NaN guard.

Order matters: these add keys to `logs` at epoch end, so they go before Keras'
TensorBoard / ModelCheckpoint in the callback list (those read the keys).
"""
import os
import time

import numpy as np

from common import metrics, models, runs
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
            self.writer.flush()  # once an epoch: CopyTensorBoard copies what is on disk


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


class CopyTensorBoard(keras.callbacks.Callback):
    """--tb-staging: TensorBoard writes its event files on the local disk, and this copies
    them into the run folder's tb/ every `every_seconds`, every `every_steps` steps (the
    backups' cadence: the logs keep up with the state a restart resumes from), at each
    epoch's end and at the end.

    Why: a bucket mount uploads a file only once it is closed (SkyPilot's MOUNT_CACHED;
    Cloud Storage FUSE, Vertex's /gcs/), and TensorBoard keeps its event files open until
    the run ends, so a preempted run would leave no logs at all. Each copy is a new,
    closed file (written, then renamed), which the mount uploads. Event files only grow:
    a file is copied again when its size changed. `writers()` returns the summary writers
    to flush first (Keras' TensorBoard callback has no public flush; see common/training.py)."""

    def __init__(self, staging: str, run_tb: str, every_seconds: float, every_steps: int = 0, writers=lambda: ()):
        super().__init__()
        self.staging, self.run_tb = staging, run_tb
        self.every_seconds, self.every_steps, self.writers = every_seconds, every_steps, writers
        self._last, self._steps = time.monotonic(), 0

    def copy(self):
        for writer in self.writers():
            writer.flush()
        for folder, _, names in os.walk(self.staging):
            for name in names:
                source = os.path.join(folder, name)
                target = os.path.join(self.run_tb, os.path.relpath(source, self.staging))
                if not os.path.exists(target) or os.path.getsize(target) != os.path.getsize(source):
                    with open(source, "rb") as f:
                        content = f.read()
                    # TensorBoard loads every file whose name holds "tfevents": a temporary copy left
                    # by a kill must not be named after its event file
                    runs.atomic_write(target, lambda out: out.write(content), binary=True, temp_prefix=".tb-copy-")
        self._last = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if (self.every_steps and self._steps % self.every_steps == 0) or \
                time.monotonic() - self._last >= self.every_seconds:
            self.copy()

    def on_epoch_end(self, epoch, logs=None):
        self.copy()

    def on_train_end(self, logs=None):
        self.copy()
