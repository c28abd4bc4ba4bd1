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

BLOCK = re.compile(r"/layer_\._(\d+)/")  # HF TF encoders name blocks .../layer_._<i>/...


def variable_groups(model, encoder) -> tuple:
    """([(variable, group index)], number of blocks). Group 0 is the embeddings,
    1..L the blocks, L+1 the head."""
    enc_ids = {id(v) for v in encoder.weights}
    blocks = {int(m.group(1)) for v in encoder.weights for m in [BLOCK.search(v.name)] if m}
    n = max(blocks) + 1 if blocks else 0
    groups = []
    for v in model.trainable_weights:
        m = BLOCK.search(v.name)
        if id(v) in enc_ids and m:
            g = 1 + int(m.group(1))
        elif id(v) in enc_ids and "embeddings" in v.name:
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


class LayerwiseAdamW(keras.optimizers.AdamW):
    """AdamW with a learning-rate multiplier per variable group (weight decay scales too)."""

    def __init__(self, groups, n_groups: int, **kwargs):
        super().__init__(**kwargs)
        self._group_of = {self._var_key(v): g for v, g in groups}
        self.lr_multipliers = tf.Variable(tf.ones([n_groups]), trainable=False, name="lr_multipliers",
                                          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._current = None

    def _multiplier(self, variable):
        g = self._group_of.get(self._var_key(variable))
        return None if g is None else tf.gather(self.lr_multipliers, g)

    @property
    def learning_rate(self):
        lr = keras.optimizers.AdamW.learning_rate.fget(self)
        return lr if self._current is None else lr * tf.cast(self._current, lr.dtype)

    @learning_rate.setter
    def learning_rate(self, value):
        keras.optimizers.AdamW.learning_rate.fset(self, value)

    # Keras reads self.learning_rate once per variable, right after these two calls.
    def _update_step(self, gradient, variable):
        self._current = self._multiplier(variable)
        try:
            return super()._update_step(gradient, variable)
        finally:
            self._current = None

    def _use_weight_decay(self, variable):
        self._current = self._multiplier(variable)
        return super()._use_weight_decay(variable)

    def _apply_weight_decay(self, variables):
        try:
            return super()._apply_weight_decay(variables)
        finally:
            self._current = None


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


def learning_rate_schedule(cfg, steps_per_epoch: int, lr: float = None):
    """Linear warm-up to the peak rate, then linear decay to 0 (or flat: --lr-schedule constant)."""
    from transformers.optimization_tf import WarmUp
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
        opt = keras.optimizers.AdamW(**kwargs)
    opt.exclude_from_weight_decay(var_names=["LayerNorm", "layer_norm", "bias"])
    return opt
