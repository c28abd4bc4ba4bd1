"""Callbacks that Keras lacks: throughput, one validation pass with a confusion-matrix image, a NaN guard.

Order matters: these add keys to `logs` at epoch end, so they go before Keras'
TensorBoard / ModelCheckpoint in the callback list (those read the keys).
"""
import os
import time

import numpy as np

from common import metrics, models, runs
from common.errors import RunDirError
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

    def __init__(self, dataset, labels_in_dataset_order, names, tb_dir: str = None):
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
    """Adds the learning rate at the epoch's end to the logs, under the name Keras' TensorBoard
    callback gives it, also where compile() wraps ours in a LossScaleOptimizer (mixed_float16)."""

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
    them into the run folder's tb/ every `every_seconds`, at each epoch's end, at the end,
    and at every backup (Backup calls copy(): the logs keep up with the state a restart
    resumes from).

    Why: a bucket mount uploads a file only once it is closed (SkyPilot's MOUNT_CACHED;
    Cloud Storage FUSE, Vertex's /gcs/), and TensorBoard keeps its event files open until
    the run ends, so a preempted run would leave no logs at all. Each copy is a new,
    closed file (written, then renamed), which the mount uploads. Event files only grow:
    a file is copied again when its size changed. `writers()` returns the summary writers
    to flush first (Keras' TensorBoard callback has no public flush; see common/training.py)."""

    def __init__(self, staging: str, run_tb: str, every_seconds: float, writers=lambda: ()):
        super().__init__()
        self.staging, self.run_tb = staging, run_tb
        self.every_seconds, self.writers = every_seconds, writers
        self._last = time.monotonic()

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
        if time.monotonic() - self._last >= self.every_seconds:
            self.copy()

    def on_epoch_end(self, epoch, logs=None):
        self.copy()

    def on_train_end(self, logs=None):
        self.copy()


class BestCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ModelCheckpoint (save_best_only, weights only, mode max), whose best value and
    epoch survive a restart: they are kept in `best.json` beside the weights, written after
    them. Keras' own starts again from -inf in a restarted process, so a resumed run would
    overwrite the best epoch with a worse later one (the uninterrupted run would not).
    A kill between the weights and best.json leaves the older record: the resumed run redoes
    that epoch (its backup comes after both), draws the same batches and saves it again.
    Only the chief writes: Keras 3's ModelCheckpoint has every worker write the same file
    (Keras 2 sent the others to temporary folders), so the others keep the record only."""

    def __init__(self, path: str, monitor: str, is_chief: bool = True, mode: str = "max"):
        self.record_path = os.path.join(os.path.dirname(path), "best.json")
        record = read_best(self.record_path)
        super().__init__(path, monitor=monitor, mode=mode, save_best_only=True, save_weights_only=True,
                         initial_value_threshold=record["value"] if record else None, verbose=0)
        self.best_epoch = record["epoch"] if record else None
        self.is_chief = is_chief

    def _save_model(self, epoch, batch, logs):
        before = self.best
        if self.is_chief:  # written beside, then renamed: a kill never leaves half a weights file
            final = self.filepath
            folder, name = os.path.split(final)
            self.filepath = os.path.join(folder, ".saving." + name)
            try:
                super()._save_model(epoch, batch, logs)
            finally:
                self.filepath = final
            if os.path.exists(os.path.join(folder, ".saving." + name)):
                os.replace(os.path.join(folder, ".saving." + name), final)
        else:
            current = (logs or {}).get(self.monitor)
            if current is not None and self._is_improvement(current, self.best):
                self.best = current
        if self.best != before:
            self.best_epoch = epoch + 1
            if self.is_chief:
                runs.write_json(self.record_path, {"epoch": self.best_epoch, "monitor": self.monitor,
                                                   "value": float(self.best)})


def read_best(path: str):
    """best.json's {epoch, monitor, value}, or None where there is none (no epoch saved yet)."""
    if not os.path.exists(path):
        return None
    fix = "delete best/ to choose the best epoch again from the epochs still to run, or pass a new --run-dir"
    record = runs.read_run_json(path, fix)
    for field in ("epoch", "value"):
        if type(record.get(field)) not in (int, float):
            raise runs.bad_field(path, field, record.get(field), "a number", fix)
    return record


def seed_states(model) -> list:
    """The state variables of every Keras random layer's seed generator (dropout): where each
    stream of masks stands. Keras does not count them among a model's weights."""
    return [sg.state for layer in model._flatten_layers() for sg in getattr(layer, "_seed_generators", [])]


def _checkpoint(model, epoch, batch):
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer, seeds=seed_states(model), epoch=epoch,
                               batch=batch)


class Backup(keras.callbacks.Callback):
    """The run's backup in backup/chief: the model's weights, the optimizer (its step, moments,
    loss scale, moving averages), every dropout layer's seed state, and the epoch and batch it
    was taken at; every `every_steps` optimizer steps and at each epoch's end. A run started
    again restores it (`restore`) and goes on from the next step, drawing the batches and
    masks the uninterrupted run drew (data.epochs_of).

    Why not Keras' BackupAndRestore: in Keras 3 it restores whole epochs only (a run killed
    mid-epoch does that epoch again, on other batches), keeps no seed states, and has every
    worker write the same file. Here:
    - an epoch's last backup is taken at the epoch's end, after this epoch's best checkpoint
      and logs: put it last in the callback list;
    - the backup is kept when fit() returns: a run killed after training, while it
      evaluates, calibrates or exports, resumes there instead of training again. The run
      removes it once metrics.json is written;
    - only the chief writes; every worker restores from the chief's.
    `batch_offset`: the steps of the current epoch done before this fit() began (a resumed
    epoch's remainder is its own fit())."""

    def __init__(self, backup_dir: str, every_steps: int, steps_per_epoch: int, is_chief: bool = True, after=None):
        super().__init__()
        self.folder = os.path.join(backup_dir, "chief")
        self.every_steps, self.steps_per_epoch = every_steps, steps_per_epoch
        self.is_chief, self.after = is_chief, after
        self.batch_offset = 0
        self._manager = None

    def _save(self, epoch, batch):
        if self._manager is None:  # one checkpoint object, its epoch and batch assigned at each backup
            self._where = tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)
            self._manager = tf.train.CheckpointManager(_checkpoint(self.model, *self._where), self.folder,
                                                       max_to_keep=1)
        self._where[0].assign(epoch)
        self._where[1].assign(batch)
        # numbered by the optimizer step: each backup is a new file set, and the index file
        # ("checkpoint") names it only once it is complete; the older set is deleted after that
        self._manager.save(checkpoint_number=int(self.model.optimizer.iterations.numpy()))

    def on_train_batch_end(self, batch, logs=None):
        batch += self.batch_offset
        if (self.every_steps and batch < self.steps_per_epoch - 1  # the epoch's end backs up, after the others
                and int(self.model.optimizer.iterations.numpy()) % self.every_steps == 0):
            self._backup(self._epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:  # a NaN loss cut the epoch short: keep the last good backup
            return
        self._backup(epoch, -1)

    def _backup(self, epoch, batch):
        """batch -1: the epoch is finished."""
        if self.is_chief:
            self._save(epoch, batch)
        if self.after:  # --tb-staging: the TensorBoard copies keep up with the backups
            self.after()


def resume_step(backup_dir: str, steps_per_epoch: int) -> int:
    """The optimizer step a run resumes at from its backup (0 without one)."""
    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if not latest:
        return 0
    try:
        reader = tf.train.load_checkpoint(latest)
        epoch = int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE"))
        batch = int(reader.get_tensor("batch/.ATTRIBUTES/VARIABLE_VALUE"))
    except (ValueError, tf.errors.OpError) as e:  # damaged, or not this version's backup
        raise RunDirError(f"{backup_dir}: not a backup this version can read ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120]}); delete {backup_dir} to train this run again from its "
                          f"start, or pass a new --run-dir") from e
    return (epoch + 1) * steps_per_epoch if batch < 0 else epoch * steps_per_epoch + batch + 1


def restore(model, backup_dir: str) -> None:
    """Put the backup's weights, optimizer and seed states into `model` (built and compiled)."""
    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if not latest:
        return
    try:
        _checkpoint(model, tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)).read(latest) \
            .assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:  # another model or version, or a damaged file
        raise RunDirError(f"{backup_dir}: the backup does not fit this run's model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120]}); delete {backup_dir} to train this run again from its "
                          f"start, or pass a new --run-dir") from e


class HParams(keras.callbacks.Callback):
    """The run's hyperparameters for TensorBoard's HParams dashboard, written once, when
    training first begins. (TensorBoard's hparams KerasCallback refuses a second fit(), and a
    resumed epoch's remainder is a fit() of its own.)"""

    def __init__(self, writer, hparams: dict, trial_id: str):
        super().__init__()
        self.writer, self.hparams, self.trial_id = writer, hparams, trial_id
        self.written = False

    def on_train_begin(self, logs=None):
        if self.written:
            return
        from tensorboard.plugins.hparams import api as hp
        with self.writer.as_default():
            hp.hparams(self.hparams, trial_id=self.trial_id)
        self.writer.flush()
        self.written = True


class EarlyStop(keras.callbacks.EarlyStopping):
    """--patience: Keras' EarlyStopping (BestCheckpoint, not restore_best_weights, keeps the best
    epoch), whose count survives a restart. Keras' starts counting again in every fit(), and a
    resumed run is one or two fit() calls in a new process; this replays the selection metric
    of every epoch the run has finished (epochs.json, `finished`) before going on, so a resumed
    run stops where the uninterrupted one did. `stale()`: the finished epochs already call for
    the stop (a run killed after it stopped, while it evaluated or exported)."""

    def __init__(self, monitor: str, mode: str, patience: int, finished: list):
        super().__init__(monitor=monitor, mode=mode, patience=patience, verbose=0)
        self.seen = [e[monitor] for e in finished if monitor in e]  # this run's epochs, in order

    def _replay(self):
        if self.monitor_op is None:
            self._set_monitor_op()
        self.wait, self.best = 0, None
        for value in self.seen:  # Keras' own rule (EarlyStopping.on_epoch_end), without the side effects
            self.wait += 1
            if self._is_improvement(value, self.best):
                self.best, self.wait = value, 0

    def stale(self) -> bool:
        self._replay()
        return len(self.seen) > 1 and self.wait >= self.patience

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._replay()

    def on_epoch_end(self, epoch, logs=None):
        if (logs or {}).get(self.monitor) is not None:
            self.seen.append(float(logs[self.monitor]))
        super().on_epoch_end(epoch, logs)


def finished_epochs(path: str, first_epoch: int) -> list:
    """epochs.json's records of the epochs finished before `first_epoch` (0-based: the epoch a
    resumed run starts in); a file that is not the run's list is one line naming it."""
    try:
        old = runs.read_json(path) if os.path.exists(path) else []
    except ValueError:
        old = None
    if not isinstance(old, list) or not all(isinstance(e, dict) and type(e.get("epoch")) is int for e in old):
        raise RunDirError(f"{path}: not the list of epochs the run wrote (edited, or cut short); delete it to "
                          f"resume (metrics.json's per-epoch losses then start at the resumed epoch)")
    return [e for e in old if e["epoch"] <= first_epoch]  # 1-based: those finished before it


class EpochLog(keras.callbacks.Callback):
    """epochs.json in the run folder: each finished epoch's logs (loss, validation figures,
    throughput, learning rate), rewritten at each epoch's end before the backup. A resumed
    run keeps the epochs before the one it resumes at, so metrics.json's per-epoch figures
    cover the whole run, however often it was restarted."""

    def __init__(self, path: str, finished: list):
        super().__init__()
        self.path = path
        self.epochs = list(finished)  # finished_epochs(path, the epoch a resumed run starts in)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()
                                                   if np.ndim(v) == 0}})
        runs.write_json(self.path, self.epochs)
