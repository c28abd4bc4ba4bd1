"""Strategy from --gpus / --cpu-replicas / TF_CONFIG, and mixed precision from --precision."""
import json
import os
from dataclasses import dataclass

from common.env import keras, tf
from common.errors import FlagError


@dataclass
class Harness:
    strategy: tf.distribute.Strategy
    replicas: int
    is_chief: bool          # only the chief writes the run folder (Keras' callbacks redirect the rest)
    multi_worker: bool
    precision: str          # resolved: fp32 | fp16 | bf16
    xla: str                # resolved: off | on (per-replica compiled loss and gradients) | auto (auto-clustering)
    devices: list
    notes: list             # what was changed from the flags, and why

    @property
    def strategy_name(self) -> str:
        if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return "MultiWorkerMirroredStrategy"  # its class is CollectiveAllReduceStrategy
        return type(self.strategy).__name__


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def _split_cpu(n: int) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:  # runtime already started (e.g. a test process): fine if enough devices exist
        have = len(tf.config.list_logical_devices("CPU"))
        if have < n:
            raise FlagError(f"--cpu-replicas {n}: TensorFlow already started with {have} CPU device(s); "
                             f"pass --cpu-replicas before anything touches TensorFlow")


_STRATEGIES = {}


def _mirrored(devices) -> tf.distribute.MirroredStrategy:
    """One MirroredStrategy per device set per process: a second one over the same devices
    reuses collective instance keys and fails with 'Shape mismatch in the collective
    instance' (seen on TF 2.15 when main() runs twice in one process: tests, notebooks;
    still so on TF 2.21: two strategies over /cpu:0,/cpu:1, all-reduces of shapes [3] then
    [5, 2])."""
    key = tuple(devices)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = tf.distribute.MirroredStrategy(list(devices))
    return _STRATEGIES[key]


def is_chief_task(tf_config: dict) -> bool:
    task = tf_config.get("task", {})
    cluster = tf_config.get("cluster", {})
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster


# ----------------------------------------------------------------------------- the two bf16 repairs
#
# Both measured again on TensorFlow 2.21 + Keras 3.15 (docs/precision.md, "On TensorFlow
# 2.21 and Keras 3"): both faults are still there, and tests/test_precision.py's guard fails
# with either repair removed. eval/precision_check.py turns each off to show what it does.

def _bias_add_grad_accumulated_in_float32(op, grad):
    """BiasAdd's gradient with the bias part summed in float32 for bfloat16 tensors.

    Why: TensorFlow's CPU BiasAddGrad kernel sums bfloat16 in bfloat16 (float16 it sums in
    float32; TF 2.15 and 2.21 alike), so every bias that Keras adds with BiasAdd got a
    gradient far off on batch x sequence rows under mixed_bfloat16 (docs/precision.md has
    the figures). Keras 3 adds a Dense bias with `ops.add`, which on TensorFlow becomes
    tf.nn.bias_add (a BiasAdd op) wherever the bias is a vector along the last axis: the two
    feed-forward Dense layers of KerasHub's encoder blocks and our heads' Dense layers; the
    attention's projections, which common/models.py runs as 2-D MatMuls, add their biases
    with a plain add, whose gradient is a Sum that accumulates in float32 already. A cast, a float32
    Sum and a cast back cost little and give BiasAdd's the same. TF has no public way to
    replace a built-in op's gradient, hence the registry entry below."""
    data_format = None if op.type == "BiasAddV1" else op.get_attr("data_format")
    if grad.dtype != tf.bfloat16:
        if op.type == "BiasAddV1":
            return grad, tf.reduce_sum(grad, tf.range(tf.rank(grad) - 1))
        return grad, tf.raw_ops.BiasAddGrad(out_backprop=grad, data_format=data_format)
    rank = grad.shape.rank  # static in every Keras layer; static axes keep the Sum XLA-compilable
    if rank is None:
        return grad, tf.raw_ops.BiasAddGrad(out_backprop=grad, data_format=data_format or b"NHWC")
    channel = 1 if data_format == b"NCHW" else rank - 1
    axes = [i for i in range(rank) if i != channel]
    return grad, tf.cast(tf.reduce_sum(tf.cast(grad, tf.float32), axes), grad.dtype)


def _tensorflow_bias_add_grads() -> dict:
    from tensorflow.python.ops import nn_grad
    return {"BiasAdd": nn_grad._BiasAddGrad, "BiasAddV1": nn_grad._BiasAddGradV1}


def accumulate_bf16_bias_grads_in_float32(on: bool = True) -> None:
    """Install the gradient above for BiasAdd (Keras Dense) in this process (on=False: put
    TensorFlow's back). GradientTape looks gradients up by op type in this registry, eager,
    in tf.function and in XLA-compiled functions alike."""
    from tensorflow.python.framework import ops
    for op_type, tf_grad in _tensorflow_bias_add_grads().items():
        ops._gradient_registry._registry[op_type]["type"] = _bias_add_grad_accumulated_in_float32 if on else tf_grad


def bf16_bias_grads_in_float32() -> bool:
    from tensorflow.python.framework import ops
    return ops._gradient_registry._registry["BiasAdd"]["type"] is _bias_add_grad_accumulated_in_float32


KERAS_DROPOUT_CALL = keras.layers.Dropout.call


def _dropout_drawn_in_float32(self, inputs, training=False):
    """keras.layers.Dropout.call on float16 / bfloat16 inputs, with the mask and the scale
    drawn in float32, then cast back.

    Why: under a mixed policy Keras draws the dropout's uniform numbers in the compute dtype
    (Keras 3 on TensorFlow: tf.nn.experimental.stateless_dropout on the bf16 input). In
    bfloat16 (8 bits) those are multiples of 1/128, so rate 0.1 drops 13/128 = 10.16% and
    scales by 1.109375, and every dropout lowers its activations' mean by ~0.33% in
    training; and the masks are not float32's: bf16 training lost test accuracy over seeds,
    and with masks drawn in float32 it gives float32's figures (docs/precision.md has the
    figures). Keras has no setting for it. The parameter names are Keras' (Keras reads the
    call signature when a layer is made)."""
    if inputs.dtype in (tf.float16, tf.bfloat16):
        return tf.cast(KERAS_DROPOUT_CALL(self, tf.cast(inputs, tf.float32), training), inputs.dtype)
    return KERAS_DROPOUT_CALL(self, inputs, training)


def draw_dropout_in_float32(on: bool = True) -> None:
    """Every keras.layers.Dropout in this process (KerasHub's encoders' and our heads')
    draws in float32 (on=False: Keras' own draw)."""
    keras.layers.Dropout.call = _dropout_drawn_in_float32 if on else KERAS_DROPOUT_CALL


def dropout_drawn_in_float32() -> bool:
    return keras.layers.Dropout.call is _dropout_drawn_in_float32


# On import, before any model is built: mixed-precision training in this process gets both.
accumulate_bf16_bias_grads_in_float32()
draw_dropout_in_float32()


def set_precision(precision: str = "auto") -> str:
    """Set Keras' global dtype policy (keras.config.set_dtype_policy under its
    mixed-precision name); 'auto' = fp16 on a GPU, bf16 on a CPU with bf16 units, else fp32.
    Returns the precision chosen."""
    if precision == "auto":
        precision = "fp16" if tf.config.list_physical_devices("GPU") else ("bf16" if _cpu_has_bf16() else "fp32")
    keras.mixed_precision.set_global_policy(
        {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}[precision])
    return precision


def setup(cfg) -> Harness:
    """Pick the strategy and the dtype policy. Call before building any model."""
    notes = []
    gpus = tf.config.list_physical_devices("GPU")
    tf_config = json.loads(os.environ["TF_CONFIG"]) if os.environ.get("TF_CONFIG") else None
    if cfg.gpus < 0 or cfg.cpu_replicas < 0:
        raise FlagError(f"--gpus {cfg.gpus} --cpu-replicas {cfg.cpu_replicas}: device counts cannot be negative")
    if cfg.gpus > len(gpus):
        raise FlagError(f"--gpus {cfg.gpus}: this machine has {len(gpus)} GPU(s) visible to TensorFlow"
                         + ("" if gpus else "; use --gpus 0 (CPU) or --cpu-replicas N to test the multi-device path"))
    if tf_config:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        is_chief = is_chief_task(tf_config)
    elif cfg.cpu_replicas > 1:
        _split_cpu(cfg.cpu_replicas)
        strategy = _mirrored([f"/cpu:{i}" for i in range(cfg.cpu_replicas)])
        is_chief = True
    elif cfg.gpus > 1 or (cfg.gpus == 1 and len(gpus) > 1):
        strategy = _mirrored([f"/gpu:{i}" for i in range(cfg.gpus)])
        is_chief = True
    else:
        strategy = tf.distribute.get_strategy()  # default: one device (GPU:0 if present, else CPU)
        is_chief = True

    precision = set_precision(cfg.precision)

    xla = {True: "on", False: "off"}.get(cfg.xla, cfg.xla)  # config.json of older runs: a bool
    if xla == "auto":
        # TensorFlow's auto-clustering (common/env.py sets TF_XLA_FLAGS for it from the
        # command line, before TensorFlow starts; on CPUs it needs --tf_xla_cpu_global_jit).
        tf.config.optimizer.set_jit("autoclustering")
        if not gpus and "--tf_xla_cpu_global_jit" not in os.environ.get("TF_XLA_FLAGS", ""):
            notes.append("--xla auto: set TF_XLA_FLAGS='--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit' before "
                         "TensorFlow starts for auto-clustering on CPUs (the scripts do it from their command line)")
    try:
        devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: one device
        devices = [d.name for d in tf.config.list_logical_devices() if d.device_type in ("GPU", "CPU")][:1]
    return Harness(strategy, strategy.num_replicas_in_sync, is_chief, bool(tf_config), precision, xla, devices, notes)
