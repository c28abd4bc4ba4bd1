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
    instance' on TF 2.15 (seen when main() runs twice in one process: tests, notebooks)."""
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


def set_precision(precision: str = "auto") -> str:
    """Set Keras' global dtype policy; 'auto' = fp16 on a GPU, bf16 on a CPU with bf16
    units, else fp32. Returns the precision chosen."""
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
