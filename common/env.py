"""Imported first by every script and test: Keras 3 on TensorFlow, quiet logs, seeds,
and the two repairs multi-worker training needs in Keras 3.15 (below)."""
import gc
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide C++ log spam (CUDA plugin notices on CPU-only machines); errors still raise in Python
os.environ["KERAS_BACKEND"] = "tensorflow"  # Keras 3 runs on several backends: this project is TensorFlow's
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Progress lines reach a pipe or a log file as they are printed (`| tee run.log`, nohup, a
# VM's startup log, a test that waits for a stage), not in 8 KB blocks at the end: Python
# line-buffers stdout only on a terminal, unless PYTHONUNBUFFERED is set.
if hasattr(sys.stdout, "reconfigure"):
    sys.stdout.reconfigure(line_buffering=True)

def _flag_value(argv, flag):
    for i, a in enumerate(argv):
        if a == flag:
            return argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "on"
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


# --xla auto: TensorFlow's auto-clustering. On CPUs it also needs --tf_xla_cpu_global_jit,
# which TensorFlow reads once, when it starts: so here, before it is imported.
if _flag_value(sys.argv, "--xla") == "auto":
    _xla_flags = os.environ.get("TF_XLA_FLAGS", "")
    for _f in ("--tf_xla_auto_jit=2", "--tf_xla_cpu_global_jit"):
        if _f.split("=")[0] not in _xla_flags:
            _xla_flags = (_xla_flags + " " + _f).strip()
    os.environ["TF_XLA_FLAGS"] = _xla_flags



def _import_tensorflow():
    """import tensorflow, with its C++ start-up lines (oneDNN's notice, "Could not find cuda
    drivers", "All log messages before absl::InitializeLog()...") kept off stderr: TF 2.21
    writes them through absl before TF_CPP_MIN_LOG_LEVEL applies (abseil/abseil-cpp#1957, open),
    so every script's one-line error came after three lines of noise. Only while importing,
    and only at our default level 3: a user who sets TF_CPP_MIN_LOG_LEVEL lower sees them.
    A failed import still raises its Python exception."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "3":
        import tensorflow
        return tensorflow
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        import tensorflow
        return tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


tf = _import_tensorflow()
import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise RuntimeError(f"Keras runs on {keras.backend.backend()}; this project needs KERAS_BACKEND=tensorflow")
tf.get_logger().setLevel("ERROR")
import absl.logging  # noqa: E402

absl.logging.set_verbosity(absl.logging.ERROR)


def _repair_multi_worker_keras() -> None:
    """Two Keras 3.15 bugs stop fit() under MultiWorkerMirroredStrategy; both are repaired
    here, in this process, where Keras has no setting for them:
    - fit() builds the model from a first batch it averages across workers with
      strategy.reduce, which MultiWorkerMirroredStrategy cannot do for a dict of inputs
      ("Attempt to convert a value ({'input_ids': PerReplica...}) with an unsupported type";
      keras-team/keras#20329): the build needs one replica's batch, not a mean;
    - each step's logs are reduced with strategy.reduce("MEAN", v, axis=0), which fails on
      scalars ("Invalid reduction dimension 0 for input with 0 dimensions";
      keras-team/keras#20585): scalars are reduced with axis=None.
    tests/test_multiworker.py trains two loopback workers through both."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    def symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    keras_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None if v.shape.rank == 0 else 0), values)
        return keras_reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = symbolic_build
    trainer.reduce_per_replica = reduce_per_replica


_repair_multi_worker_keras()

# TensorFlow and Keras leave a few hundred thousand Python objects that live as long as the
# process. gc.freeze moves them out of the collector's generations: its full collections stop
# walking them, and the interpreter's exit no longer spends a second on them (a script's
# last line to its exit: docs/performance.md). errors.run freezes what a run made, at its end.
gc.freeze()


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and TF; optionally make TF ops deterministic (slower)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
