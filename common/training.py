"""The steps every train script shares: data -> compile -> fit -> export -> report.

Plain functions over Keras' own fit(), so each script reads top to bottom and
changes only what makes it different (which weights train, which head).
"""
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from common import callbacks as cb
from common import data, metrics, runs
from common.env import REPO_ROOT, keras, tf


# ----------------------------------------------------------------------------- run metadata

def versions() -> dict:
    """Installed versions of the stack (read from metadata: importing them costs seconds)."""
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "transformers", "huggingface-hub", "datasets", "tokenizers",
                "keras-tuner", "tensorflow-addons", "scikit-learn", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("+dirty" if dirty and head else "") if head else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def strategy_name(strategy) -> str:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"  # its class is CollectiveAllReduceStrategy
    return type(strategy).__name__


def write_config(run_dir: str, cfg, harness, script: str, extra: dict = None) -> None:
    runs.write_json(os.path.join(run_dir, runs.CONFIG), {
        "script": script, "argv": sys.argv[1:], "flags": cfg.to_dict(),
        "resolved": {"precision": harness.precision, "xla": harness.xla, "replicas": harness.replicas,
                     "strategy": strategy_name(harness.strategy), "notes": harness.notes, **(extra or {})},
        "devices": harness.devices, "versions": versions(), "git_commit": git_commit(),
    })


# ----------------------------------------------------------------------------- data

@dataclass
class Splits:
    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    val_order: np.ndarray      # row i of val predictions is example val_order[i]
    test_order: np.ndarray
    rows: dict                 # split -> [(sentence, label)]
    train_stats: dict          # steps, examples, real tokens, real-token share, pipeline rate

    @property
    def val_labels(self) -> np.ndarray:
        """Validation labels in the order the val dataset yields its examples."""
        return np.asarray([l for _, l in self.rows["validation"]])[self.val_order]


def load_data(cfg, tokenizer, replicas: int) -> Splits:
    if cfg.batch_size % replicas:
        raise SystemExit(f"--batch-size {cfg.batch_size}: must be a multiple of the {replicas} replicas")
    rows, ids = data.encoded_splits(cfg.data, cfg.agreement, cfg.split, tokenizer, cfg.max_length)
    y = {k: [l for _, l in v] for k, v in rows.items()}
    global_batch, pad = cfg.batch_size, tokenizer.pad_token_id
    if cfg.padding == "fixed":
        train = data.fixed_dataset(ids["train"], y["train"], global_batch, cfg.max_length, pad, seed=cfg.seed)
        val, test = (data.fixed_dataset(ids[k], y[k], global_batch, cfg.max_length, pad, shuffle=False)
                     for k in ("validation", "test"))
        val_order, test_order = np.arange(len(ids["validation"])), np.arange(len(ids["test"]))
    else:
        train = data.bucketed_dataset(ids["train"], y["train"], global_batch, cfg.max_length, pad,
                                      shuffle=True, seed=cfg.seed)
        val, val_order = data.sorted_dataset(ids["validation"], y["validation"], 2 * global_batch,
                                             cfg.max_length, pad)
        test, test_order = data.sorted_dataset(ids["test"], y["test"], 2 * global_batch, cfg.max_length, pad)
    stats = data.batch_stats(train)
    # Bucketing hides the epoch length from Keras; it is fixed (bucket membership does not
    # depend on the shuffle), and Keras needs it to resume mid-epoch from BackupAndRestore.
    train = train.apply(tf.data.experimental.assert_cardinality(stats["steps"]))
    return Splits(train, val, test, val_order, test_order, rows, stats)


def class_weights(labels) -> dict:
    """sklearn's 'balanced' weights: n_samples / (n_classes * count(class))."""
    from sklearn.utils.class_weight import compute_class_weight
    classes = np.arange(len(data.LABELS))
    return dict(zip(classes.tolist(), compute_class_weight("balanced", classes=classes, y=np.asarray(labels))))


# ----------------------------------------------------------------------------- model

def uses_layer_schedule(cfg) -> bool:
    return (cfg.layer_lr_decay != 1.0 or cfg.head_warmup_epochs > 0 or cfg.unfreeze_every > 0
            or cfg.train_top_blocks >= 0)


def layer_schedule(cfg) -> dict:
    return dict(decay=cfg.layer_lr_decay, head_warmup_epochs=cfg.head_warmup_epochs,
                unfreeze_every=cfg.unfreeze_every, train_top_blocks=cfg.train_top_blocks)


def make_optimizer(cfg, steps_per_epoch: int, lr: float = None, model=None):
    """AdamW, linear warm-up to the peak rate then linear decay to 0, global-norm clipping;
    with layer-wise rates / gradual unfreezing flags, optim.LayerwiseAdamW over `model`."""
    from transformers.optimization_tf import WarmUp
    lr = cfg.lr if lr is None else lr
    total = max(1, steps_per_epoch * cfg.epochs)
    warmup = int(round(cfg.warmup * total))
    if cfg.lr_schedule == "constant":
        schedule = keras.optimizers.schedules.PolynomialDecay(lr, total, end_learning_rate=lr)  # flat, still logged
    else:
        schedule = keras.optimizers.schedules.PolynomialDecay(lr, max(1, total - warmup), end_learning_rate=0.0)
    if warmup:
        schedule = WarmUp(lr, schedule, warmup)
    kwargs = dict(learning_rate=schedule, weight_decay=cfg.weight_decay, global_clipnorm=cfg.clipnorm or None,
                  epsilon=1e-6)
    if uses_layer_schedule(cfg):
        from common import models, optim
        groups, n_blocks = optim.variable_groups(model, models.encoder_of(model))
        opt = optim.LayerwiseAdamW(groups, n_blocks + 2, **kwargs)
        opt.n_blocks = n_blocks
    else:
        opt = keras.optimizers.AdamW(**kwargs)
    opt.exclude_from_weight_decay(var_names=["LayerNorm", "layer_norm", "bias"])
    return opt


def make_loss(cfg):
    """Per-example loss on integer labels and logits, in float32 under mixed precision.
    A plain function: compile() wraps it with the reduction that is right under any strategy."""
    n = len(data.LABELS)
    if cfg.loss == "focal":
        def focal_loss(y, logits):
            y = tf.one_hot(tf.reshape(tf.cast(y, tf.int32), [-1]), n)
            return keras.losses.categorical_focal_crossentropy(y, tf.cast(logits, tf.float32), from_logits=True)
        return focal_loss

    def cross_entropy(y, logits):
        return keras.losses.sparse_categorical_crossentropy(y, tf.cast(logits, tf.float32), from_logits=True)
    return cross_entropy


def compile_classifier(model, cfg, optimizer, xla: bool) -> None:
    """compile(), plus two start-up savings measured in README "Performance" (first step
    16.1 s -> 9.4 s, first validation 13.5 s -> 4.0 s on MiniLM):
    - no AutoGraph for the train/test/predict steps: transformers' TF models and our heads
      are graph-safe (no Python control flow on tensors; they are written for XLA), and
      AutoGraph spends ~9 s converting ~170 of their functions in every process;
    - optimizer slots built now: a tf.function that creates variables on its first call is
      traced twice (Keras builds them lazily in the first train step)."""
    model.compile(optimizer=optimizer, loss=make_loss(cfg), jit_compile=xla,
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), metrics.SparseMacroF1()])
    for step in ("train_step", "test_step", "predict_step"):
        setattr(model, step, tf.autograph.experimental.do_not_convert(getattr(model, step)))
    optimizer.build(model.trainable_variables)


# ----------------------------------------------------------------------------- fit

MAX_WORKER_RESTARTS = 10
RESTARTS_VAR = "FINSENT_WORKER_RESTARTS"


def restart_after_peer_failure(error) -> None:
    """A peer worker died. TF 2.15 aborts this process's collectives for good ("Restart your
    program to reset"), so restart this program, the same command: MultiWorkerMirroredStrategy
    then waits for the restarted peer to rejoin, and BackupAndRestore puts every worker back
    at the chief's last backup. Bounded by MAX_WORKER_RESTARTS."""
    n = int(os.environ.get(RESTARTS_VAR, "0")) + 1
    if n > MAX_WORKER_RESTARTS:
        raise SystemExit(f"a peer worker failed {n - 1} times; giving up") from error
    print(f"a peer worker failed ({str(error).splitlines()[0][:100]}...); restarting this worker "
          f"({n}/{MAX_WORKER_RESTARTS}) to rejoin the job from the last backup", flush=True)
    os.environ[RESTARTS_VAR] = str(n)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable] + sys.argv)


def fit(model, cfg, run_dir: str, splits: Splits, hparams: dict, is_chief: bool = True, extra_callbacks=()):
    """Keras fit with the run folder's callbacks, then the best epoch's weights.
    Returns (history, throughput, optimizer steps taken in all).
    Exits non-zero, keeping the best checkpoint, if the loss turns NaN."""
    from tensorboard.plugins.hparams import api as hp
    tb_dir = os.path.join(run_dir, runs.TB)
    best_path = os.path.join(run_dir, runs.BEST, "weights")
    throughput = cb.Throughput(splits.train_stats["examples"], splits.train_stats["real_tokens"])
    nan_guard = cb.StopOnNaN()
    # Keras' own callbacks are multi-worker aware (non-chief workers write to temporary
    # places and restore from the chief's backup); ours write only on the chief, and are
    # not even built elsewhere (building a summary writer creates its file).
    validation = cb.Validation(splits.val, splits.val_labels, os.path.join(tb_dir, "validation") if is_chief else None)
    hparams_cb = [hp.KerasCallback(os.path.join(tb_dir, "hparams"), hparams,
                                   trial_id=os.path.basename(run_dir))] if is_chief else []
    callbacks = [
        nan_guard,
        throughput,  # before TensorBoard: it adds the throughput keys to the logs
        validation,  # before ModelCheckpoint and TensorBoard: it adds the val_ keys
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, runs.BACKUP),
                                         save_freq=cfg.backup_every_steps or "epoch"),
        keras.callbacks.ModelCheckpoint(best_path, monitor="val_macro_f1", mode="max", save_best_only=True,
                                        save_weights_only=True),
        keras.callbacks.TensorBoard(tb_dir, update_freq=cfg.log_every_steps or "epoch", write_graph=False,
                                    profile_batch=0),
        *hparams_cb,
        *extra_callbacks,
    ]
    if uses_layer_schedule(cfg):  # before TensorBoard: it logs trainable_groups
        from common import optim
        callbacks.insert(2, optim.UnfreezeSchedule(model.optimizer.n_blocks, **layer_schedule(cfg)))
    cw = class_weights([l for _, l in splits.rows["train"]]) if cfg.class_weight == "balanced" else None
    try:
        history = model.fit(splits.train, epochs=cfg.epochs, callbacks=callbacks,
                            class_weight=cw, verbose=1 if sys.stdout.isatty() else 2)
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as e:  # a peer died, or died and restarted
        if not os.environ.get("TF_CONFIG"):
            raise
        restart_after_peer_failure(e)
    steps_done = int(model.optimizer.iterations.numpy())  # before load_weights, which restores it too
    try:  # Keras deletes its checkpoints after a finished fit() but leaves the folder
        os.rmdir(os.path.join(run_dir, runs.BACKUP))
    except OSError:
        pass
    if nan_guard.fired:
        raise SystemExit(f"loss became NaN; stopped. The best weights so far are in {best_path}* "
                         f"(try a lower --lr or --precision fp32)")
    if os.path.exists(best_path + ".index"):
        model.load_weights(best_path)
    return history, throughput, steps_done


def hparams_of(cfg, harness) -> dict:
    """The flags worth comparing across runs in TensorBoard's HParams dashboard."""
    keys = ("model", "agreement", "split", "max_length", "padding", "batch_size", "epochs", "lr", "lr_schedule",
            "warmup", "weight_decay", "class_weight", "loss", "freeze", "train_embeddings", "head", "pooling",
            "layer_lr_decay", "head_warmup_epochs", "unfreeze_every", "train_top_blocks", "seed")
    out = {k: getattr(cfg, k) for k in keys}
    out.update(precision=harness.precision, replicas=harness.replicas)
    return out


# ----------------------------------------------------------------------------- a whole run

@dataclass
class Run:
    cfg: object
    harness: object
    run_dir: str
    source: str           # where the weights come from: --model, or --init-from's model/
    tokenizer: object
    splits: Splits
    script: str
    wall_start: float


def start(cfg, script: str) -> Run:
    """Flags -> strategy, precision, seed, run folder, tokenizer, data. Prints what it chose."""
    from common import distribute, models
    wall_start = time.time()
    harness = distribute.setup(cfg)  # before any model: strategy + dtype policy
    for note in harness.notes:
        print("note:", note)
    from common.env import set_seed
    set_seed(cfg.seed, cfg.deterministic)
    if harness.multi_worker and not cfg.run_dir:
        raise SystemExit("TF_CONFIG is set: pass --run-dir, the same folder on every worker (shared storage; "
                         "workers restore from the chief's backup there)")
    run_dir = cfg.run_dir or runs.default_run_dir(script)
    if cfg.init_from:
        runs.load_run(cfg.init_from)  # a clear error if it is not a finished run
    source = os.path.join(cfg.init_from, runs.MODEL) if cfg.init_from else cfg.model
    tokenizer = models.load_tokenizer(source)
    splits = load_data(cfg, tokenizer, harness.replicas)
    st = splits.train_stats
    print(f"data: {data.level_name(cfg.agreement)}, split={cfg.split}: "
          + ", ".join(f"{k} {len(v)}" for k, v in splits.rows.items())
          + f" | {st['steps']} steps/epoch, widths {st['widths']}, real-token share {st['real_token_share']:.3f}")
    return Run(cfg, harness, run_dir, source, tokenizer, splits, script, wall_start)


def build_model(run: Run):
    """The classifier the flags describe (--head, --freeze, --init-from), compiled.
    Call inside run.harness.strategy.scope()."""
    from common import models
    cfg = run.cfg
    if cfg.head == "custom" and not cfg.init_from:
        model = models.CustomHeadClassifier.create(run.source, cfg.pooling, models.parse_hidden(cfg.head_hidden),
                                                  cfg.head_dropout, cfg.head_activation)
    else:
        model = models.build_classifier(run.source, cfg.dropout)
    models.freeze(model, cfg.freeze, cfg.train_embeddings)
    compile_classifier(model, cfg, make_optimizer(cfg, run.splits.train_stats["steps"], model=model),
                       run.harness.xla)
    return model


def weights_digest(model) -> str:
    """A short hash of every weight: equal on all workers of a synchronous job."""
    import hashlib
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()[:16]


def finish(run: Run, model) -> dict:
    """Fit -> restore best -> evaluate -> export -> metrics.json. Returns the metrics.
    Under TF_CONFIG every worker trains; only the chief writes the run folder."""
    from common import models
    cfg, harness = run.cfg, run.harness
    trainable = models.count_params(model.trainable_weights)
    extra = {"model_source": run.source, "params": model.count_params(), "trainable_params": trainable}
    if cfg.class_weight == "balanced":
        extra["class_weight"] = class_weights([l for _, l in run.splits.rows["train"]])
    if harness.is_chief:
        write_config(run.run_dir, cfg, harness, f"{run.script}.py", extra)
    print(f"model: {run.source} ({model.count_params() / 1e6:.1f}M params, {trainable / 1e6:.2f}M trainable) on "
          f"{harness.replicas} replica(s) {harness.devices}, precision {harness.precision}, xla {harness.xla} "
          f"-> {run.run_dir}{'' if harness.is_chief else ' (written by the chief)'}")
    if tf.train.latest_checkpoint(os.path.join(run.run_dir, runs.BACKUP, "chief")):
        print(f"resuming from {os.path.join(run.run_dir, runs.BACKUP)} (model, optimizer, epoch and step)")
    _, throughput, steps_done = fit(model, cfg, run.run_dir, run.splits, hparams_of(cfg, harness), harness.is_chief)
    results = evaluate_splits(model, run.splits)
    print(f"weights digest {weights_digest(model)}")
    if not harness.is_chief:
        return {k: {kk: vv for kk, vv in v.items() if kk != "logits"} for k, v in results.items()}
    export(model, run.tokenizer, run.run_dir)
    m = write_metrics(run.run_dir, results, run.splits, throughput, run.wall_start,
                      steps_done, run.splits.train_stats["steps"] * cfg.epochs)
    print(summary_line(m))
    return m


# ----------------------------------------------------------------------------- report

def evaluate_splits(model, splits: Splits) -> dict:
    from common import models
    out = {}
    for name, ds, order in (("validation", splits.val, splits.val_order), ("test", splits.test, splits.test_order)):
        logits = models.predict_logits(model, ds, order)
        out[name] = metrics.classification_metrics([l for _, l in splits.rows[name]], logits)
        out[name]["logits"] = logits
    return out


def export(model, tokenizer, run_dir: str) -> None:
    """save_pretrained() model + tokenizer into run_dir/model, atomically."""
    tmp = os.path.join(run_dir, runs.MODEL + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    runs.publish_dir(tmp, os.path.join(run_dir, runs.MODEL))


def write_metrics(run_dir: str, results: dict, splits: Splits, throughput, wall_start: float,
                  optimizer_steps: int, planned_steps: int) -> dict:
    per_epoch = throughput.history
    steady = per_epoch[1:] or per_epoch  # the first epoch includes tracing
    m = {split: {k: v for k, v in results[split].items() if k != "logits"} for split in ("validation", "test")}
    m.update({
        "optimizer_steps": int(optimizer_steps),
        "planned_steps": int(planned_steps),
        "train_seconds": throughput.train_seconds,
        "wall_seconds": time.time() - wall_start,
        "examples_per_sec": float(np.median([r["examples_per_sec"] for r in steady])),
        "real_tokens_per_sec": float(np.median([r["real_tokens_per_sec"] for r in steady])),
        "real_token_share": splits.train_stats["real_token_share"],
        "pipeline_examples_per_sec": splits.train_stats["pipeline_examples_per_sec"],
        "batch_widths": splits.train_stats["widths"],
        "sizes": {k: len(v) for k, v in splits.rows.items()},
    })
    runs.write_json(os.path.join(run_dir, runs.METRICS), m)
    return m


def summary_line(m: dict) -> str:
    t, v = m["test"], m["validation"]
    return (f"val acc {v['accuracy']:.4f} macro-F1 {v['macro_f1']:.4f} | test acc {t['accuracy']:.4f} "
            f"macro-F1 {t['macro_f1']:.4f} | train {m['train_seconds']:.0f}s, {m['examples_per_sec']:.1f} ex/s, "
            f"real-token share {m['real_token_share']:.3f}")
