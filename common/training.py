"""The run, start to finish: flags -> harness + data -> model -> fit -> report.

The orchestrator every train script, tune script and benchmark shares. Each job it
orchestrates lives in the module named for it: the data in data.py, the optimizer in
optim.py, the run folder and its metadata in runs.py, the figures and the export in
report.py, the XLA step in xla.py. There is ONE fit path (`fit_model`): the train
scripts' fit() and the tuner's trials both call it, so a trial trains exactly what its
flags would train.
"""
import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

from common import callbacks as cb
from common import data, errors, metrics, optim, phrasebank, report, run_lock, runs, sources, token_cache
from common.env import keras, tf
from common.errors import FinsentError, FlagError, ModelError, NothingToDo, TrainingFailed


# ----------------------------------------------------------------------------- compile

def make_loss(cfg, n: int):
    """Per-example loss on integer labels and the logits of `n` classes, in float32 under
    mixed precision. A plain function: compile() wraps it with the reduction that is right
    under any strategy."""
    smoothing = cfg.label_smoothing
    if cfg.loss == "focal":
        def focal_loss(y, logits):
            y = tf.one_hot(tf.reshape(tf.cast(y, tf.int32), [-1]), n)
            return keras.losses.categorical_focal_crossentropy(y, tf.cast(logits, tf.float32), from_logits=True,
                                                               label_smoothing=smoothing)
        return focal_loss
    if smoothing:  # Keras' sparse cross-entropy has no label_smoothing: one-hot targets
        def smoothed_cross_entropy(y, logits):
            y = tf.one_hot(tf.reshape(tf.cast(y, tf.int32), [-1]), n)
            return keras.losses.categorical_crossentropy(y, tf.cast(logits, tf.float32), from_logits=True,
                                                         label_smoothing=smoothing)
        return smoothed_cross_entropy

    def cross_entropy(y, logits):
        return keras.losses.sparse_categorical_crossentropy(y, tf.cast(logits, tf.float32), from_logits=True)
    return cross_entropy


def compile_classifier(model, cfg, optimizer, xla: str = "off", replicas: int = 1) -> None:
    """compile(), plus two start-up savings (first step and first validation several seconds
    sooner; docs/performance.md#the-default-recipe-choice-by-choice):
    - no AutoGraph for the train/test/predict steps: KerasHub's models and our heads are
      graph-safe (no Python control flow on tensors; they are written for XLA and JAX), and
      AutoGraph spends seconds converting their functions in every process;
    - optimizer slots built now: a tf.function that creates variables on its first call is
      traced twice (Keras builds them lazily in the first train step).
    xla='on': the train step computes loss and gradients in an XLA-compiled function per
    replica, with aggregation and the update outside it (common/xla.py), on any strategy."""
    n = len(model.labels)
    if keras.mixed_precision.global_policy().name == "mixed_float16" and not isinstance(
            optimizer, keras.optimizers.LossScaleOptimizer):  # ours, not the one compile() would wrap it in
        optimizer = optim.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss=make_loss(cfg, n),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), metrics.SparseMacroF1(n)],
                  jit_compile=False)  # Keras 3 would compile the whole step with XLA where it can: a loss on CPUs
    if xla == "on":
        from common import xla as xla_step
        model.train_step = xla_step.compiled_gradients_train_step(model, make_loss(cfg, n), cfg.batch_size // replicas)
    for step in ("train_step", "test_step", "predict_step"):
        setattr(model, step, tf.autograph.experimental.do_not_convert(getattr(model, step)))
    if not model.optimizer.built:  # (under mixed_float16 a LossScaleOptimizer around ours: it builds ours)
        model.optimizer.build(model.trainable_variables)


# ----------------------------------------------------------------------------- fit

MAX_WORKER_RESTARTS = 10
RESTARTS_VAR = "FINSENT_WORKER_RESTARTS"


def restart_after_peer_failure(error) -> None:
    """A peer worker died. TensorFlow aborts this process's collectives for good ("Restart your
    program to reset"), so restart this program, the same command: MultiWorkerMirroredStrategy
    then waits for the restarted peer to rejoin, and every worker restores the chief's last
    backup (callbacks.Backup, callbacks.restore). Bounded by MAX_WORKER_RESTARTS."""
    n = int(os.environ.get(RESTARTS_VAR, "0")) + 1
    if n > MAX_WORKER_RESTARTS:
        raise TrainingFailed(f"a peer worker failed {n - 1} times; giving up (restart every worker with the same "
                             f"command to resume from the last backup)") from error
    print(f"a peer worker failed ({str(error).splitlines()[0][:100]}...); restarting this worker "
          f"({n}/{MAX_WORKER_RESTARTS}) to rejoin the job from the last backup", flush=True)
    os.environ[RESTARTS_VAR] = str(n)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable] + sys.argv)


def validation_schedule(cfg, steps_per_epoch: int, epochs: int = None) -> tuple:
    """(optimizer steps between validations, validations in all). --eval-every: validate (and
    choose, stop, log) every N optimizer steps, the last stretch maybe shorter; else once per
    epoch. One validation stretch is what Keras calls an epoch."""
    total = steps_per_epoch * (cfg.epochs if epochs is None else epochs)
    every = min(cfg.eval_every, total) if cfg.eval_every else steps_per_epoch
    return every, -(-total // every)


def fit_model(model, cfg, splits, callbacks=(), epochs: int = None, initial_epoch: int = 0, tb_dir: str = None,
              verbose=None, start_step: int = None):
    """THE fit: class weights, the unfreezing schedule, one validation pass per epoch,
    throughput, the NaN guard, then `callbacks` (which read the keys ours add to the logs).
    Train scripts and tuner trials both come through here.

    initial_epoch > 0 (a Hyperband trial promoted from an earlier one): keras-tuner restores
    that trial's TF checkpoint, which holds the optimizer too, so the step counter and with
    it the learning-rate schedule continue; the unfreezing schedule follows the epoch index
    Keras passes (tests/test_tune.py checks both).
    start_step: where a run resumed from its backup starts (callbacks.resume_step); the data
    then continues with the batches the uninterrupted run drew there (data.epochs_of).
    Returns (history, Throughput callback, NaN guard)."""
    st = splits.train_stats
    throughput = cb.Throughput(st["steps"], st["examples"], st["real_tokens"])
    nan_guard = cb.StopOnNaN()
    validation = cb.Validation(splits.val, splits.val_labels, splits.labels,
                               os.path.join(tb_dir, "validation") if tb_dir else None)
    ours = [nan_guard, throughput, validation, cb.LearningRate()]  # before the caller's: they add keys others read
    if optim.uses_layer_schedule(cfg):
        ours.insert(0, optim.UnfreezeSchedule(**optim.layer_schedule(cfg)))
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    epochs = cfg.epochs if epochs is None else epochs
    every, points = validation_schedule(cfg, st["steps"], epochs)
    total = epochs * st["steps"]
    start_step = initial_epoch * every if start_step is None else min(start_step, total)
    first, done = divmod(start_step, every)
    callbacks = [*ours, *callbacks]
    backups = [c for c in callbacks if isinstance(c, cb.Backup)]
    history = None
    # fit() ends by putting --ema's averages in place of the weights: done once, after the last fit() below
    finalize = model.optimizer.finalize_variable_values
    model.optimizer.finalize_variable_values = lambda variables: None

    def part(begin: int, end: int, epoch_steps: int, first_epoch: int, offset: int = 0):
        """fit() over steps begin..end, in Keras epochs of epoch_steps from first_epoch."""
        nonlocal history
        for backup in backups:  # this Keras epoch's length: the end-of-epoch backup is its last step's
            backup.batch_offset, backup.steps_per_epoch = offset, offset + epoch_steps
        try:
            h = model.fit(splits.train_from(begin, -(-end // st["steps"])).take(end - begin),
                          steps_per_epoch=epoch_steps, epochs=first_epoch + (end - begin) // epoch_steps,
                          initial_epoch=first_epoch, callbacks=callbacks, class_weight=splits.fit_class_weight,
                          verbose=verbose, shuffle=False)  # (each epoch's order is data.epochs_of's)
        finally:
            for backup in backups:
                backup.batch_offset = 0
        if history is None:
            history = h
        else:
            for key, values in h.history.items():
                history.history.setdefault(key, []).extend(values)

    try:
        if done and first < points:
            # The rest of the Keras epoch a backup cut, as a fit() of its own: Keras 3's fit() starts at
            # an epoch's first step. Its callbacks see that epoch end as the uninterrupted run's did.
            end = min((first + 1) * every, total)
            part(start_step, end, end - start_step, first, offset=done)
            first += 1
        whole = total // every  # the Keras epochs of `every` steps; a shorter last one after them
        if first < whole and not model.stop_training:
            # one iterator over all of them (steps_per_epoch given): each data epoch's order is fixed by the seed
            part(first * every, whole * every, every, first)
            first = whole
        if first < points and not model.stop_training:
            part(first * every, total, total - first * every, first)
    finally:
        del model.optimizer.finalize_variable_values
    finalize(model.trainable_weights)
    if history is None:  # nothing left to train (a backup taken after the last epoch)
        history = keras.callbacks.History()
        history.history = {}
    return history, throughput, nan_guard


class Fitted(NamedTuple):
    history: object
    throughput: object
    steps_done: int
    epochs: list          # every epoch's logs, this process's and the ones before a restart (chief only)
    best_epoch: int       # the epoch best/ holds (None with --ema)
    stopped_after: int = None  # --patience stopped training after this epoch (1-based); None: it ran every epoch


BEST_WEIGHTS = "model.weights.h5"


def fit(model, cfg, run_dir: str, splits, hparams: dict, is_chief: bool = True, extra_callbacks=()):
    """A train script's fit: fit_model with the run folder's callbacks (backup, best
    checkpoint, TensorBoard, HParams), then the best epoch's weights, with the training data's
    class prior put back if the loss was class-weighted (--restore-prior).
    Returns a Fitted: the history, throughput, optimizer steps taken in all, the whole run's
    epochs (epochs.json's, on the chief) and the best epoch (None with --ema)."""
    tb_dir = tb_folder(cfg, run_dir)
    best_path = os.path.join(run_dir, runs.BEST, BEST_WEIGHTS)
    # Only the chief writes the run folder: Keras 3's callbacks are not multi-worker aware
    # (every worker would write the same files), so the writers are not even built elsewhere
    # (building a summary writer creates its file).
    tensorboard = keras.callbacks.TensorBoard(tb_dir, update_freq=cfg.log_every_steps or "epoch", write_graph=False,
                                              profile_batch=0) if is_chief else None
    hparams_writer = tf.summary.create_file_writer(os.path.join(tb_dir, "hparams")) if is_chief else None
    backup_dir = os.path.join(run_dir, runs.BACKUP)
    every, points = validation_schedule(cfg, splits.train_stats["steps"])
    start_step = cb.resume_step(backup_dir, every)
    if start_step:
        cb.restore(model, backup_dir)
    if start_step >= cfg.epochs * splits.train_stats["steps"]:
        print(f"resuming from {backup_dir}: training had finished; the stages after it run again")
    elif start_step:
        print(f"resuming from {backup_dir} at step {start_step} (model, optimizer, dropout seeds, epoch and step)")
    monitor, mode = metrics.monitor(cfg.select_metric), metrics.SELECT_MODE[cfg.select_metric]
    best = None if cfg.ema else cb.BestCheckpoint(best_path, monitor, is_chief, mode)
    first_epoch = start_step // every
    # epochs.json's finished epochs, read once: the chief's log goes on from them, and under --patience
    # every worker replays them (the folder is shared): all must stop at the same epoch
    epochs_path = os.path.join(run_dir, runs.EPOCHS)
    finished = cb.finished_epochs(epochs_path, first_epoch) if is_chief or cfg.patience else []
    epoch_log = cb.EpochLog(epochs_path, finished) if is_chief else None
    stopper = cb.EarlyStop(monitor, mode, cfg.patience, finished) if cfg.patience else None
    stale = bool(stopper and stopper.stale())
    if stale:  # it had stopped early, and was killed after that: no step is left to take
        start_step = cfg.epochs * splits.train_stats["steps"]
        print(f"resuming from {backup_dir}: training had stopped early after epoch {first_epoch} (--patience "
              f"{cfg.patience}); the stages after it run again")
    callbacks = [
        # --ema: the run ends with the weights' moving average (Keras puts it in place at the end of
        # fit), not the best epoch's weights
        *([best] if best else []),
        *([tensorboard] if tensorboard else []),
        *([cb.HParams(hparams_writer, hparams, os.path.basename(run_dir))] if is_chief else []),
        *([epoch_log] if epoch_log else []),
        *extra_callbacks,
    ]
    copy_tb = None
    if cfg.tb_staging and is_chief:  # after TensorBoard, which writes the epoch's scalars first
        # Keras 3.15 (pinned) keeps its TensorBoard callback's writers in _writers, and offers no flush
        copy_tb = cb.CopyTensorBoard(tb_dir, os.path.join(run_dir, runs.TB), cfg.tb_copy_every,
                                     lambda: [*tensorboard._writers.values(), hparams_writer])
        callbacks.append(copy_tb)
    # last: an epoch's backup is taken once everything above has recorded that epoch; the
    # TensorBoard copies keep up with every backup (the state a restart resumes from)
    callbacks.append(cb.Backup(backup_dir, cfg.backup_every_steps, every, is_chief,
                               after=copy_tb.copy if copy_tb else None))
    if stopper:  # after the backup: the epoch it stops at is backed up first (Backup skips a stopped epoch)
        callbacks.append(stopper)
    if restores_prior(model, cfg, splits):
        print(f"note: the epoch lines' and TensorBoard's val_* figures are the model as trained; whether the class "
              f"prior is put back at the end is --restore-prior {cfg.restore_prior}'s, and the final figures and "
              f"metrics.json are after that")
    try:
        history, throughput, nan_guard = fit_model(model, cfg, splits, callbacks, tb_dir=tb_dir if is_chief else None,
                                                   start_step=start_step)
        if os.environ.get("TF_CONFIG"):
            # Every worker loads the chief's best weights below: none may read them before the chief's
            # last save is on disk (else a worker ends with another epoch's weights). A collective op
            # returns on no worker before every worker has reached it, the chief after its callbacks.
            strategy = model.distribute_strategy
            strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as e:  # a peer died, or died and restarted
        if not os.environ.get("TF_CONFIG"):
            raise
        # (a peer lost after the last step too: the restart resumes from the finished backup, and
        # meets it at this barrier)
        restart_after_peer_failure(e)
    steps_done = int(model.optimizer.iterations.numpy())  # before load_weights, which restores it too
    if nan_guard.fired:
        raise TrainingFailed(f"loss became NaN; stopped. The best weights so far are in {best_path}* "
                             f"(try a lower --lr or --precision fp32)")
    if os.path.exists(best_path) and not cfg.ema:
        model.load_weights(best_path)
    stopped_after = None
    if stopper and (stopper.stopped_epoch or stale) and len(stopper.seen) < points:
        stopped_after = len(stopper.seen)
        print(f"stopped early after validation {stopped_after} of {points}: no better validation {cfg.select_metric} for "
              f"{cfg.patience} validation(s) (--patience)")
    return Fitted(history, throughput, steps_done, epoch_log.epochs if epoch_log else [],
                  best.best_epoch if best else None, stopped_after)


def put_back_prior(model, cfg, splits, results: dict) -> tuple:
    """--restore-prior after a class-weighted fit: the selection metric on validation with and
    without the training data's class prior (the logits shifted by -log(class weight), as
    models.restore_class_prior shifts the bias), and the prior put back where --restore-prior
    is 'on', or 'auto' and validation says it helps. Every worker decides alike (the same
    logits). Returns (results, the model's as it now is; the decision, for metrics.json).
    Putting it back moves the logits layer's bias only, so each split's logits move by the
    same shift: the figures are computed from the shifted logits, not by running the model
    over the splits again (tests/test_train.py checks them against the exported model's)."""
    from common import models
    metric = cfg.select_metric
    decision = {"mode": cfg.restore_prior, "metric": metrics.monitor(metric), "restored": False}
    if not restores_prior(model, cfg, splits):
        return results, {**decision, "why": "no class weights, --restore-prior off, or a frozen head"}
    weights = splits.class_weights
    shift = models.prior_shift(weights)
    shifted = {name: metrics.classification_metrics([label for _, label in splits.rows[name]],
                                                    split["logits"] - shift, splits.labels)
               for name, split in results.items()}
    before_value, after_value = results["validation"][metric], shifted["validation"][metric]
    restore = cfg.restore_prior == "on" or metrics.improves(metric, after_value, before_value)
    decision.update(restored=bool(restore), without_prior=before_value, with_prior=after_value)
    print(f"class prior {'restored' if restore else 'not restored'} (--restore-prior {cfg.restore_prior}): "
          f"validation {metric} {before_value:.4f} as trained, {after_value:.4f} with the prior"
          + ("; the figures below and metrics.json are after it" if restore else ""))
    if not restore:
        return results, decision
    models.restore_class_prior(model, weights)
    return {name: {**figures, "logits": results[name]["logits"] - shift} for name, figures in shifted.items()}, decision


def tb_folder(cfg, run_dir: str) -> str:
    """Where TensorBoard writes: the run folder's tb/, or with --tb-staging a local folder
    named after the run, copied into tb/ as it grows (callbacks.CopyTensorBoard)."""
    if cfg.tb_staging:
        staging, run = os.path.abspath(cfg.tb_staging), os.path.abspath(run_dir)
        if os.path.commonpath([staging, run]) in (staging, run):  # the copies would copy themselves
            raise FlagError(f"--tb-staging {cfg.tb_staging}: give a local folder outside the run folder "
                            f"(and not holding it), e.g. /tmp/finsent-tb")
        return os.path.join(staging, os.path.basename(run))
    return os.path.join(run_dir, runs.TB)


def restores_prior(model, cfg, splits) -> bool:
    """--restore-prior is to be decided: the loss was class-weighted, the flag is not 'off', and
    the head trained (a frozen head stays as it was given)."""
    from common import models
    return bool(splits.class_weights and cfg.restore_prior != "off" and models.logits_layer(model).trainable)


def hparams_of(cfg, harness) -> dict:
    """The flags worth comparing across runs in TensorBoard's HParams dashboard."""
    keys = ("recipe", "model", "agreement", "split", "max_length", "padding", "batch_size", "epochs", "lr", "lr_schedule",
            "warmup", "weight_decay", "class_weight", "restore_prior", "select_metric", "patience", "eval_every", "loss", "freeze",
            "train_embeddings", "head",
            "pooling", "layer_lr_decay", "head_warmup_epochs", "unfreeze_every", "train_top_blocks", "train_examples",
            "extra_agreement", "extra_weight", "label_smoothing", "ema", "seed")
    from common.recipes import RECIPES  # and every flag a recipe sets (the notebook's decay_steps, adam_epsilon...)
    keys += tuple(sorted({k for preset in RECIPES.values() for k in preset} - set(keys)))
    out = {k: getattr(cfg, k) for k in keys}
    out.update(precision=harness.precision, replicas=harness.replicas, xla=harness.xla)
    return out


# ----------------------------------------------------------------------------- a whole run

@dataclass
class Run:
    cfg: object
    harness: object
    run_dir: str
    source: str           # where the weights come from: --model, or --init-from's model/
    tokenizer: object
    data_source: sources.DataSource  # where the sentences come from, resolved once
    splits: data.Splits
    script: str
    wall_start: float
    lock: object = None   # run_lock.Lock: this process writes run_dir (the chief), until the run ends


def check_flags(cfg, search: bool = False) -> None:
    """Flag values that cannot work, found before any data or model is loaded.
    search: the flags are a tuner's (tune/*.py)."""
    from common import models
    if cfg.head == "custom":
        models.parse_hidden(cfg.head_hidden)
    for name in ("epochs", "max_length"):
        if getattr(cfg, name) < 1:
            raise FlagError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if not 0 <= cfg.warmup < 1:
        raise FlagError(f"--warmup {cfg.warmup}: a share of all steps, in [0, 1)")
    if cfg.lr <= 0:
        raise FlagError(f"--lr {cfg.lr}: must be positive")
    for name, value in (("label_smoothing", cfg.label_smoothing), ("ema", cfg.ema)):
        if not 0 <= value < 1:
            raise FlagError(f"--{name.replace('_', '-')} {value}: must be in [0, 1) (0 = off)")
    if cfg.eval_every < 0:
        raise FlagError(f"--eval-every {cfg.eval_every}: a number of optimizer steps, at least 0 (0 = once per epoch)")
    if cfg.eval_every and (cfg.head_warmup_epochs or cfg.unfreeze_every):
        raise FlagError("--eval-every with --head-warmup-epochs / --unfreeze-every: the unfreezing schedule counts "
                        "epochs; use one or the other")
    if search and cfg.eval_every:  # Hyperband's budget is in epochs, and a trial reports once per epoch
        raise FlagError("--eval-every: the tuners validate once per epoch; leave it out of the search, and add it to "
                        "the train/full_finetune.py command the search prints for its best trial")
    if cfg.patience < 0:
        raise FlagError(f"--patience {cfg.patience}: a number of validations, at least 0 (0 = off)")
    if cfg.extra_weight <= 0:
        raise FlagError(f"--extra-weight {cfg.extra_weight}: must be positive")
    if cfg.decay_steps < 0 or cfg.adam_epsilon <= 0:
        raise FlagError(f"--decay-steps {cfg.decay_steps} --adam-epsilon {cfg.adam_epsilon}: need decay-steps >= 0 "
                        f"and epsilon > 0")
    sources.check_flags(cfg)


def check_max_length(cfg, source: str, tokenizer) -> None:
    """--max-length within what the encoder can read: its position embeddings, and room for
    at least one token beside the special ones."""
    from common import models
    limit, special = models.position_limit(source), models.SPECIAL_TOKENS
    if cfg.max_length > limit:
        raise FlagError(f"--max-length {cfg.max_length}: {source} reads at most {limit} tokens (its position "
                        f"embeddings); pass --max-length {limit} or less (texts longer than it are truncated)")
    if cfg.max_length <= special:
        raise FlagError(f"--max-length {cfg.max_length}: leaves no room for text beside the {special} special tokens; "
                        f"pass at least {special + 1} (the PhraseBank's sentences need about 64)")


def start(cfg, script: str, run_folder="train") -> Run:
    """Flags -> strategy, precision, seed, run folder, tokenizer, data. Prints what it chose.
    run_folder: "train" (checked: writable, and no other run's flags in it), "search"
    (keras-tuner's state: writable), None (nothing is written: a benchmark)."""
    from common import distribute
    wall_start = time.time()
    check_flags(cfg, search=run_folder == "search")
    harness = distribute.setup(cfg)  # before any model: strategy + dtype policy
    for note in harness.notes:
        print("note:", note)
    from common.env import set_seed
    set_seed(cfg.seed, cfg.deterministic)
    if harness.multi_worker and not cfg.run_dir:
        raise FlagError("TF_CONFIG is set: pass --run-dir, the same folder on every worker (shared storage; "
                        "workers restore from the chief's backup there)")
    run_dir = cfg.run_dir or runs.default_run_dir(script)
    tb_folder(cfg, run_dir)  # a --tb-staging inside the run folder is refused before anything is written
    lock = None
    if harness.is_chief and run_folder:
        runs.check_writable(run_dir)
    # one writer per folder, taken before anything in it is read: the chief (keras-tuner's workers
    # write their trials into the chief's search folder, as one job)
    if harness.is_chief and run_folder and os.environ.get("KERASTUNER_TUNER_ID", "chief") == "chief":
        lock = run_lock.hold(run_dir)
        if lock.note:
            print("note:", lock.note)
    with refused_leaves_no_folder(lock):
        data_source = sources.resolve(cfg)  # the one look at --data (own files read and hashed once)
        if harness.is_chief and run_folder:
            check_run_dir(cfg, data_source, run_dir, run_folder, script)
        if run_folder == "train":  # every worker: the folder is shared, and a lone worker would wait for peers
            check_finished(run_dir, harness.is_chief)
        source, tokenizer = open_model_source(cfg)
        # run_folder None ("nothing is written", a benchmark): no token cache, no drawn split kept
        # (other workers draw the same split in memory: the draw depends only on the file and --split-seed)
        splits = data.load_data(cfg, data_source, tokenizer, harness.replicas,
                                token_cache.cache_dir_for(run_dir) if run_folder else None,
                                os.path.join(run_dir, sources.SPLIT_FILE) if run_folder and harness.is_chief else None)
    print_data(cfg, data_source, splits)
    return Run(cfg, harness, run_dir, source, tokenizer, data_source, splits, script, wall_start, lock)


@contextlib.contextmanager
def refused_leaves_no_folder(lock):
    """Bad input found once the run folder is held: release it, and remove the folder if this
    run made it and left nothing in it."""
    try:
        yield
    except FinsentError:
        if lock:
            lock.release(remove_created=True)
        raise


def check_finished(run_dir: str, is_chief: bool = True) -> None:
    """A finished run's command, run again, does nothing (and says so)."""
    if runs.finished(run_dir):
        # a kill between metrics.json and the backup's removal left it behind, and maybe no card yet
        from common import model_card
        if is_chief and not os.path.exists(os.path.join(run_dir, model_card.CARD)):
            model_card.write_for_run(run_dir)
        shutil.rmtree(os.path.join(run_dir, runs.BACKUP), ignore_errors=True)
        serving = "" if os.path.isdir(os.path.join(run_dir, runs.SERVING)) else \
            f"; its {runs.SERVING}/ (a --no-serving run): python eval/export.py {errors.shell_quote(run_dir)}"
        raise NothingToDo(f"the run in {run_dir} has finished already ({runs.METRICS}, {runs.MODEL}/): nothing to "
                          f"do. Next: python eval/evaluate.py {errors.shell_quote(run_dir)}{serving}; to train again, pass "
                          f"a new --run-dir")


# What a run or search folder may hold before config.json (train) or trials/ (search): what a run
# killed early wrote, and a cloud job's staged data. Anything else is a folder of the user's own
BEFORE_RUN = (runs.LOCK, sources.SPLIT_FILE, runs.TB, runs.STAGED_DATA)
FIRST_WRITTEN = {"train": runs.CONFIG, "search": runs.TRIALS}


def check_run_dir(cfg, data_source, run_dir: str, run_folder: str, script: str) -> None:
    """The folder holds no other run (flags, data files), nor files of the user's own."""
    if not os.path.exists(os.path.join(run_dir, FIRST_WRITTEN[run_folder])):
        runs.check_holds_only_ours(run_dir, BEFORE_RUN)
    runs.prepare_run_dir(run_dir, cfg.to_dict() if run_folder == "train" else None, f"{script}.py")
    if data_source.own:  # a resume refuses a data file that changed since the run began
        runs.check_data_files(run_dir, data_source.digests)


def open_model_source(cfg):
    """(where the weights come from, its tokenizer): --model, or --init-from's model/."""
    from common import models
    if cfg.init_from:
        init = runs.load_run(cfg.init_from, "--init-from")  # a clear error if it is not a finished run
        from common import finished_run
        finished_run.check_model_format(cfg.init_from, init)  # a run of the Keras 2 stack: one line
        had = init.get("flags", {}).get("head", "library")
        if had != cfg.head:
            raise ModelError(f"--init-from {cfg.init_from}: that run has a {had} head, and --head is {cfg.head}; "
                             f"pass --head {had} to continue it, or train from --model instead")
    source = os.path.join(cfg.init_from, runs.MODEL) if cfg.init_from else cfg.model
    tokenizer = models.load_tokenizer(source)
    check_max_length(cfg, source, tokenizer)
    return source, tokenizer


def print_data(cfg, data_source, splits) -> None:
    st = splits.train_stats
    what = (f"{cfg.data} ({','.join(splits.labels)})" if data_source.own else
            f"{phrasebank.level_name(cfg.agreement)}, split={cfg.split}")
    print(f"data: {what}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.rows.items())
          + (f" (train includes {st['extra_examples']} sentences {phrasebank.level_name(cfg.extra_agreement)} "
             f"adds, at weight {cfg.extra_weight:g})" if st["extra_examples"] else "")
          + f" | {st['steps']} steps/epoch, widths {st['widths']}, real-token share {st['real_token_share']:.3f}")


def build_model(run: Run):
    """The classifier the flags describe (--head, --freeze, --init-from), compiled.
    Call inside run.harness.strategy.scope()."""
    with refused_leaves_no_folder(run.lock):
        return _build_model(run)


def _build_model(run: Run):
    from common import models
    cfg = run.cfg
    try:
        if cfg.head == "custom" and not cfg.init_from:
            model = models.build_classifier(run.source, run.splits.labels, cfg.head_dropout, "custom", cfg.pooling,
                                            models.parse_hidden(cfg.head_hidden), cfg.head_activation)
        else:
            model = models.build_classifier(run.source, run.splits.labels, cfg.dropout)
    except (ValueError, OSError, KeyError, tf.errors.OpError) as e:  # weights of another shape
        what = f"--init-from {cfg.init_from}" if cfg.init_from else f"--model {cfg.model}"
        raise ModelError(f"{what}: its weights do not load as a sequence classifier ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]}); pass a run folder or model of a supported "
                         f"architecture") from e
    models.freeze(model, cfg.freeze, cfg.train_embeddings)
    compile_classifier(model, cfg, optim.make_optimizer(cfg, run.splits.train_stats["steps"], model=model),
                       run.harness.xla, run.harness.replicas)
    return model


def resolved_settings(run: Run) -> dict:
    """What the flags resolved to, for config.json (a run's, or a tuner trial's)."""
    harness = run.harness
    out = {"precision": harness.precision, "xla": harness.xla != "off", "xla_mode": harness.xla,
           "replicas": harness.replicas, "strategy": harness.strategy_name, "notes": harness.notes,
           "train_size": len(run.splits.rows["train"]), "extra_examples": run.splits.train_stats["extra_examples"],
           "labels": list(run.splits.labels)}
    if run.data_source.own:
        out["data_files"] = run.data_source.digests
    if run.cfg.class_weight != "none":
        out["class_weight"] = run.splits.class_weights
    from common import recipes
    out["recipe"] = recipes.applied(run.cfg.recipe, run.cfg.to_dict())
    return out


def fit_and_report(run: Run, model) -> dict:
    """Fit -> restore best -> evaluate -> calibrate -> export (model/, serving/) -> metrics.json.
    Under TF_CONFIG every worker trains; only the chief writes the run folder. A full disk is
    one line: every stage resumes, so the same command finishes the run once there is room."""
    try:
        return _fit_and_report(run, model)
    except Exception as e:
        if not errors.disk_full(e):
            raise
        raise TrainingFailed(f"--run-dir {run.run_dir}: the disk is full ({errors.first_line(e)}); free space there "
                             f"and rerun the same command: it resumes from its last backup") from e


def _fit_and_report(run: Run, model) -> dict:
    from common import models
    cfg, harness = run.cfg, run.harness
    trainable = models.count_params(model.trainable_weights)
    resolved = {**resolved_settings(run), "model_source": run.source, "params": model.count_params(),
                "trainable_params": trainable}
    if harness.is_chief:
        runs.write_config(run.run_dir, cfg.to_dict(), f"{run.script}.py", resolved, harness.devices)
    print(f"model: {run.source} ({model.count_params() / 1e6:.1f}M params, {trainable / 1e6:.2f}M trainable) on "
          f"{harness.replicas} replica(s) {harness.devices}, precision {harness.precision}, xla {harness.xla} "
          f"-> {run.run_dir}{'' if harness.is_chief else ' (written by the chief)'}")
    fitted = fit(model, cfg, run.run_dir, run.splits, hparams_of(cfg, harness), harness.is_chief)
    # the figures in float32 whatever the training precision (docs/precision.md, "Evaluation")
    results = report.evaluate_splits(model if harness.precision == "fp32" else models.float32_copy(model), run.splits)
    results, prior = put_back_prior(model, cfg, run.splits, results)
    print(f"weights digest {report.weights_digest(model)}")
    # per epoch: the whole run's (epochs.json, however often it was restarted), else this process's
    extra = {"precision": report.precision_audit(model), "restore_prior": prior,
             "select_metric": cfg.select_metric,
             "train_loss_per_epoch": [e["loss"] for e in fitted.epochs] or fitted.history.history.get("loss", []),
             "best_epoch": fitted.best_epoch, "stopped_after_epoch": fitted.stopped_after}
    if harness.xla == "on":
        extra["xla_compilations"] = model.xla_compilations()
        print(f"xla: {extra['xla_compilations']} compilation(s) of the per-replica step over "
              f"{len(run.splits.train_stats['widths'])} batch widths and {harness.replicas} replica(s)")
    if not harness.is_chief:
        return {k: {kk: vv for kk, vv in v.items() if kk != "logits"} for k, v in results.items()}
    extra["calibration"] = report.calibrate_run(run.run_dir, results, run.splits)
    report.export(model, run.tokenizer, run.run_dir)
    extra["serving"] = report.export_serving(run.run_dir) if cfg.serving else {
        "exported": False, "why": "--no-serving (eval/export.py writes it)"}
    m = report.write_metrics(run.run_dir, results, run.splits, fitted.throughput, run.wall_start,
                             fitted.steps_done, run.splits.train_stats["steps"] * cfg.epochs, extra,
                             per_epoch=[e for e in fitted.epochs if "examples_per_sec" in e])
    from common import model_card
    model_card.write_for_run(run.run_dir)
    # the backup outlived fit() so that the stages above resume without training; the run is done now
    shutil.rmtree(os.path.join(run.run_dir, runs.BACKUP), ignore_errors=True)
    if run.lock:
        run.lock.release()
    print(report.summary_line(m))
    shown = errors.shell_quote(run.run_dir)  # commands to paste: a folder's name may hold spaces, quotes or $()
    print(f"run folder: {run.run_dir}\nnext: python eval/evaluate.py {shown}   |   "
          f"python eval/predict.py {shown} --input FILE   |   tensorboard --logdir {shown}"
          + ("" if cfg.serving else f"   |   python eval/export.py {shown}"))
    return m
