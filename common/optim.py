"""Discriminative (layer-wise) learning rates and gradual unfreezing, under any strategy.

Why not tfa's MultiOptimizer or one optimizer per layer group: MultiOptimizer fails
under MirroredStrategy on this stack (IndexError in the all-reduce), and swapping
trainable flags mid-training forces recompiles and optimizer rebuilds. Instead, ONE
AdamW scales its learning rate per variable by a multiplier held in a (mirrored)
variable: layer-wise decay is a fixed multiplier per block, and a frozen block is a
block whose multiplier is 0 until the schedule unfreezes it. Keras has no per-variable
learning rate, hence this subclass.

Groups, bottom to top: embeddings, block 0 .. block L-1, head (everything above the
blocks: pooler, classifier). With decay d, block i's rate is lr * d^(L - i), the
embeddings' lr * d^(L + 1), the head's lr.
"""
import re

import numpy as np

from common.env import keras, tf

BLOCK = re.compile(r"(?:^|/)transformer_layer_(\d+)/")  # KerasHub names an encoder's blocks transformer_layer_<i>


def variable_groups(model, encoder) -> tuple:
    """([(variable, group index)], number of blocks). Group 0 is the embeddings,
    1..L the blocks, L+1 the head."""
    from common.models import embedding_layers
    embedding_ids = {id(v) for layer in embedding_layers(encoder) for v in layer.weights}
    blocks = {int(m.group(1)) for v in encoder.weights for m in [BLOCK.search(v.path)] if m}
    n = max(blocks) + 1 if blocks else 0
    groups = []
    for v in model.trainable_weights:
        m = BLOCK.search(v.path)
        if m:
            g = 1 + int(m.group(1))
        elif id(v) in embedding_ids:
            g = 0
        else:
            g = n + 1  # head, and encoder parts above the blocks (e.g. BERT's pooler)
        groups.append((v, g))
    return groups, n


def multipliers(n_blocks: int, epoch: int, decay: float = 1.0, head_warmup_epochs: int = 0,
                unfreeze_every: int = 0, train_top_blocks: int = -1) -> np.ndarray:
    """Learning-rate multiplier of each group (embeddings, blocks..., head) at `epoch`.

    head_warmup_epochs: only the head trains for this many epochs.
    unfreeze_every: after that, one more block (from the top) every this many epochs;
        0 unfreezes all at once. The embeddings come last, after the bottom block.
    train_top_blocks: at most this many top blocks ever train (-1: all, embeddings too).
    """
    depth = np.arange(n_blocks + 2)  # 0 embeddings, 1..L blocks, L+1 head
    mult = decay ** (n_blocks + 1 - depth).astype(float)
    rank = n_blocks + 1 - depth  # 0 head, 1 top block, ..., L bottom block, L+1 embeddings
    if epoch < head_warmup_epochs:
        open_ranks = 0
    elif unfreeze_every <= 0:
        open_ranks = n_blocks + 1
    else:
        open_ranks = 1 + (epoch - head_warmup_epochs) // unfreeze_every
    if train_top_blocks >= 0:
        open_ranks = min(open_ranks, train_top_blocks)
    return np.where(rank <= open_ranks, mult, 0.0).astype(np.float32)


@keras.saving.register_keras_serializable(package="finsent")
class FusedAdamW(keras.optimizers.AdamW):
    """Keras's AdamW with its dense update as one TensorFlow kernel, `ResourceApplyAdam`: the
    same formula (Keras's Adam is TensorFlow's: the bias correction in the rate, epsilon added
    to sqrt(v)), read and written in one pass over the variable, m and v. Keras 3's own update
    (element-wise ops a variable, applied through its clipping and update machinery) took
    about 65 ms a step for MiniLM's trainable weights on a 2-core CPU, this one about 37, the
    old stack's Keras 2 AdamW about 40 (docs/results.md, "Where the time goes"). Weight decay,
    clipping, EMA and loss scaling stay Keras's; a sparse gradient (the embeddings' when they
    train) and AMSGrad take Keras's update.

    Args:
        **kwargs: keras.optimizers.AdamW's.

    Example:
    ```python
    optimizer = FusedAdamW(learning_rate=2e-5, weight_decay=0.01, global_clipnorm=1.0)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    ```
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        # under tf.distribute this runs per device (an update() call, or replica context where Keras
        # skips the merge call): a mirrored slot's handle there is this device's copy
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].value.handle, v=self._velocities[index].value.handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step), beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype), beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


class LayerwiseAdamW(FusedAdamW):
    """AdamW with a learning-rate multiplier per variable group (weight decay scales too).

    Args:
        groups: [(variable, group index)] (variable_groups()).
        n_groups: the number of groups.
        **kwargs: FusedAdamW's (keras.optimizers.AdamW's).
    """

    def __init__(self, groups, n_groups: int, **kwargs):
        super().__init__(**kwargs)
        # keys, not the variables: a list of variables held here would be tracked (and saved) as the optimizer's
        self._group_of = {self._var_key(v): g for v, g in groups}
        self.n_groups = n_groups
        self._current = None

    def build(self, variables):
        super().build(variables)
        # held by the optimizer (so in its checkpoints); set by UnfreezeSchedule between epochs
        self.lr_multipliers = self.add_variable((self.n_groups,), initializer="ones", name="lr_multipliers",
                                                aggregation="only_first_replica")

    def _multiplier(self, variable):
        g = self._group_of.get(self._var_key(variable))
        return None if g is None else tf.gather(self.lr_multipliers.value, g)

    def update_step(self, gradient, variable, learning_rate):
        m = self._multiplier(variable)
        return super().update_step(gradient, variable, learning_rate if m is None else learning_rate * m)

    # Keras' weight decay reads self.learning_rate once per variable, right after this call.
    @property
    def learning_rate(self):
        lr = keras.optimizers.AdamW.learning_rate.fget(self)
        return lr if self._current is None else lr * tf.cast(self._current, lr.dtype)

    @learning_rate.setter
    def learning_rate(self, value):
        keras.optimizers.AdamW.learning_rate.fset(self, value)

    def _use_weight_decay(self, variable):
        self._current = self._multiplier(variable)
        return super()._use_weight_decay(variable)

    def _apply_weight_decay(self, variables):
        try:
            return super()._apply_weight_decay(variables)
        finally:
            self._current = None


@keras.saving.register_keras_serializable(package="finsent")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' LossScaleOptimizer (mixed_float16), deciding whether a step is finite from every
    replica's gradients. Keras 3.15's looks at the first replica's alone, before the
    all-reduce (its merge_call path under MirroredStrategy): a step that overflowed on another
    replica only wrote inf into the weights. Here every replica learns whether all were finite
    (one scalar all-reduce), so such a step is skipped and the scale halves, as in Keras 2.
    tests/test_xla.py overflows one replica's half of a batch, with and without --xla."""

    def check_finite(self, grads):
        finite = super().check_finite(grads)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return finite
        return context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32)) == 0


def base_optimizer(optimizer):
    """The optimizer under Keras' LossScaleOptimizer: compile() wraps ours in one under
    mixed_float16, and the wrapper does not forward our attributes (n_blocks, lr_multipliers)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


class UnfreezeSchedule(keras.callbacks.Callback):
    """Sets the optimizer's multipliers at the start of each epoch; logs how many groups train.
    Keras passes the true epoch index, so a fit that starts at initial_epoch > 0 (a resumed
    run, a Hyperband trial promoted to more epochs) continues the schedule where it was."""

    def __init__(self, **schedule):
        super().__init__()
        self.schedule = schedule
        self.history = []

    def on_epoch_begin(self, epoch, logs=None):
        opt = base_optimizer(self.model.optimizer)
        m = multipliers(opt.n_blocks, epoch, **self.schedule)
        opt.lr_multipliers.assign(m)
        self.history.append(m)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["trainable_groups"] = float((self.history[-1] > 0).sum())


# ----------------------------------------------------------------------------- the run's optimizer

def uses_layer_schedule(cfg) -> bool:
    return (cfg.layer_lr_decay != 1.0 or cfg.head_warmup_epochs > 0 or cfg.unfreeze_every > 0
            or cfg.train_top_blocks >= 0)


def layer_schedule(cfg) -> dict:
    return dict(decay=cfg.layer_lr_decay, head_warmup_epochs=cfg.head_warmup_epochs,
                unfreeze_every=cfg.unfreeze_every, train_top_blocks=cfg.train_top_blocks)


@keras.saving.register_keras_serializable(package="finsent")
class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then `after` (a schedule that
    starts at step 0 where the warm-up ends). Keras has warm-up only in CosineDecay.

    Args:
        peak: the rate at the warm-up's end.
        after: the schedule from there on.
        warmup_steps: how many steps the warm-up takes.
    """

    def __init__(self, peak, after, warmup_steps):
        self.peak, self.after, self.warmup_steps = peak, after, warmup_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * step / float(self.warmup_steps)
        return tf.where(step < self.warmup_steps, warm, tf.cast(self.after(step - self.warmup_steps), tf.float32))

    def get_config(self):
        return {"peak": self.peak, "after": keras.saving.serialize_keras_object(self.after),
                "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        return cls(config["peak"], keras.saving.deserialize_keras_object(config["after"]), config["warmup_steps"])


def learning_rate_schedule(cfg, steps_per_epoch: int, lr: float = None):
    """Linear warm-up to the peak rate, then linear decay to 0 (or flat: --lr-schedule constant)."""
    lr = cfg.lr if lr is None else lr
    total = max(1, steps_per_epoch * cfg.epochs)
    warmup = int(round(cfg.warmup * total))
    if cfg.lr_schedule == "constant":
        schedule = keras.optimizers.schedules.PolynomialDecay(lr, total, end_learning_rate=lr)  # flat, still logged
    else:  # --decay-steps: a fixed horizon, as the notebook's PolynomialDecay(5e-5, 10000)
        decay = cfg.decay_steps or max(1, total - warmup)
        schedule = keras.optimizers.schedules.PolynomialDecay(lr, decay, end_learning_rate=0.0)
    return WarmUp(lr, schedule, warmup) if warmup else schedule


def make_optimizer(cfg, steps_per_epoch: int, model=None, lr: float = None):
    """AdamW on the run's schedule with global-norm clipping; with layer-wise rates or
    gradual unfreezing flags, a LayerwiseAdamW over `model`'s variable groups."""
    kwargs = dict(learning_rate=learning_rate_schedule(cfg, steps_per_epoch, lr), weight_decay=cfg.weight_decay,
                  global_clipnorm=cfg.clipnorm or None, epsilon=cfg.adam_epsilon)
    if cfg.ema:
        kwargs.update(use_ema=True, ema_momentum=cfg.ema)
    if uses_layer_schedule(cfg):
        from common import models
        groups, n_blocks = variable_groups(model, models.encoder_of(model))
        opt = LayerwiseAdamW(groups, n_blocks + 2, **kwargs)
        opt.n_blocks = n_blocks
    else:
        opt = FusedAdamW(**kwargs)
    # Keras 3 names a variable by its last part: LayerNorm's are gamma and beta
    opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt
