"""Imported first by every script and test: quiet logs, one Keras (2.15), seeds.

Why this file exists: transformers sets TF_USE_LEGACY_KERAS=1 when it is imported,
and after that the *first* touch of `tf.keras` in TF 2.15 looks for the separate
`tf_keras` package. Resolving `tf.keras` here, before transformers is imported,
pins the model and keras-tuner to the same Keras 2.15.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide C++ log spam (CUDA plugin notices on CPU-only machines); errors still raise in Python
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we tokenize once, before tf.data forks threads
# A parent process that imported transformers passes TF_USE_LEGACY_KERAS=1 down to us;
# with it, tf.keras would demand tf_keras. Keras 2.15 is the one we want, so say so.
os.environ["TF_USE_LEGACY_KERAS"] = "0"

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

import tensorflow as tf  # noqa: E402

keras = tf.keras  # the touch that resolves Keras 2.15 (see module docstring)
_ = keras.layers.Layer
if not keras.__name__.startswith("keras"):
    raise RuntimeError(f"tf.keras resolved to {keras.__name__}; uninstall tf_keras (docs/install.md)")

tf.get_logger().setLevel("ERROR")

import transformers  # noqa: E402  (after the Keras touch, on purpose)

transformers.logging.set_verbosity_error()

# Dropout (and every Keras random layer) draws from a tf.random.Generator, whose state is a
# variable that checkpoints hold: a run resumed from its backup draws the masks the
# uninterrupted run drew from there on. Keras 2.15's default (TF1 stateful random ops)
# restarts its streams in every process, so a resumed run trained on other masks.
keras.backend.experimental.enable_tf_random_generator()



def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and TF; optionally make TF ops deterministic (slower)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
