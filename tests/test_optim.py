"""Layer-wise learning rates and gradual unfreezing, measured on real training steps."""
import re

import numpy as np
import pytest

from common import config, models, optim, training
from common.env import keras


def _setup(runs_root, tiny, data_dir, **flags):
    """The run and its compiled model; the run folder (under runs_root) is never written,
    the token cache beside it is."""
    keras.backend.clear_session()
    flags.setdefault("train_embeddings", True)  # the embeddings are a group of their own
    cfg = config.Config(model=tiny, data=data_dir, precision="fp32", warmup=0.0, weight_decay=0.0,
                        run_dir=str(runs_root / "optim"), **flags)
    run = training.start(cfg, "test")
    with run.harness.strategy.scope():
        model = training.build_model(run)
    return run, model


# KerasHub DistilBERT's embedding layers (BERT's: token_embedding, position_embedding, segment_embedding)
EMBEDDINGS = ("token_and_position_embedding", "embeddings_layer_norm")


def _by_group(model):
    """{variable path: group}, the number of blocks; every trainable variable in one group,
    the one its Keras 3 path names: the embedding layers 0, transformer_layer_<i> 1 + i,
    the rest (the head) n + 1."""
    groups, n = optim.variable_groups(model, models.encoder_of(model))
    group = {v.path: g for v, g in groups}
    assert len(group) == len(groups) == len(model.trainable_weights)  # paths tell variables apart

    def named(path):
        block = re.match(r"transformer_layer_(\d+)/", path)
        return 0 if path.split("/")[0] in EMBEDDINGS else 1 + int(block.group(1)) if block else n + 1
    assert group == {p: named(p) for p in group}
    assert {p for p, g in group.items() if g == n + 1} == {v.path for v in model.head.trainable_weights}
    return group, n


@pytest.mark.parametrize("replicas", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_each_block_steps_at_its_layer_wise_rate(tiny_distilbert, data_dir, runs_root, replicas):
    lr, decay = 1e-3, 0.5
    run, model = _setup(runs_root, tiny_distilbert, data_dir, lr=lr, layer_lr_decay=decay, cpu_replicas=replicas,
                        epochs=1)
    assert isinstance(model.optimizer, optim.LayerwiseAdamW) and run.harness.replicas == max(replicas, 1)
    group, n = _by_group(model)
    assert n == 2
    model.optimizer.lr_multipliers.assign(optim.multipliers(n, 0, decay=decay))
    before = {v.path: v.numpy() for v in model.trainable_weights}
    model.fit(run.splits.train.take(1), epochs=1, verbose=0)
    # Adam's first step moves each weight by lr_eff * g / (|g| + eps): its largest move is lr_eff
    step = {}
    for v in model.trainable_weights:
        d = np.abs(v.numpy() - before[v.path]).max()
        step[group[v.path]] = max(step.get(group[v.path], 0.0), d)
    expected = {g: lr * decay ** (n + 1 - g) for g in range(n + 2)}  # embeddings d^3, blocks d^2, d^1, head 1
    for g in range(n + 2):
        assert step[g] == pytest.approx(expected[g], rel=0.02), (g, step, expected)


@pytest.mark.slow
def test_gradual_unfreezing_changes_weights_in_the_scheduled_order(tiny_distilbert, data_dir, runs_root, tmp_path):
    run, model = _setup(runs_root, tiny_distilbert, data_dir, lr=1e-3, head_warmup_epochs=1, unfreeze_every=1, epochs=4)
    group, n = _by_group(model)
    snaps = [{v.path: v.numpy() for v in model.trainable_weights}]

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snaps.append({v.path: v.numpy() for v in model.trainable_weights})

    training.fit(model, run.cfg, str(tmp_path / "run"), run.splits, {}, extra_callbacks=[Snapshot()])

    def moved(epoch):
        return {group[k] for k in snaps[epoch] if not np.array_equal(snaps[epoch][k], snaps[epoch + 1][k])}

    head, top, bottom, emb = n + 1, n, 1, 0
    assert moved(0) == {head}                       # head warm-up
    assert moved(1) == {head, top}                  # + the top block
    assert moved(2) == {head, top, bottom}          # + the next block down
    assert moved(3) == {head, top, bottom, emb}     # + the embeddings, last


def test_train_top_blocks_keeps_lower_blocks_fixed(tiny_distilbert, data_dir, runs_root, tmp_path):
    run, model = _setup(runs_root, tiny_distilbert, data_dir, lr=1e-3, train_top_blocks=1, epochs=1)
    group, n = _by_group(model)
    before = {v.path: v.numpy() for v in model.trainable_weights}
    training.fit(model, run.cfg, str(tmp_path / "run"), run.splits, {})
    moved = {group[v.path] for v in model.trainable_weights if not np.array_equal(v.numpy(), before[v.path])}
    assert moved == {n + 1, n}  # head and top block only


def test_notebook_recipe_builds_the_notebooks_optimizer_and_flags_override_it(tiny_distilbert, data_dir, runs_root):
    """--recipe notebook, as a user types it, with one flag overridden: the run gets the
    notebook's Adam (epsilon 1e-7, no decay, no clipping) on PolynomialDecay(5e-5, 10000),
    fp32, batch 8, fixed padding, embeddings training, no class weights."""
    from common import models
    argv = ["--recipe", "notebook", "--model", tiny_distilbert, "--data", data_dir, "--max-length", "32",
            "--train-examples", "16", "--run-dir", str(runs_root / "optim")]
    cfg = config.from_args(config.build_parser("").parse_args(argv))
    run = training.start(cfg, "test", run_folder=None)
    with run.harness.strategy.scope():
        model = training.build_model(run)
    opt = model.optimizer
    assert run.harness.precision == "fp32" and cfg.class_weight == "none" and cfg.max_length == 32
    assert opt.epsilon == pytest.approx(1e-7) and float(opt.weight_decay) == 0 and opt.global_clipnorm is None
    notebook = keras.optimizers.schedules.PolynomialDecay(5e-5, decay_steps=10000, end_learning_rate=0.0, power=1.0)
    for step in (0, 1, 681, 9999, 12000):
        assert float(opt._learning_rate(step)) == pytest.approx(float(notebook(step)), abs=1e-12)
    backbone = models.encoder_of(model)
    embeddings = [backbone.embeddings, backbone.embeddings_layer_norm]  # KerasHub DistilBERT's: token + position
    assert [l.name for l in embeddings] == list(EMBEDDINGS)
    assert all(l.trainable for l in embeddings) and all(any(w is v for v in model.trainable_weights)
                                                        for l in embeddings for w in l.weights)
    x, _ = next(iter(run.splits.train))
    assert tuple(x["input_ids"].shape) == (8, 32)  # every batch padded to --max-length, batch 8


@pytest.mark.parametrize("replicas", [1, 2])
def test_fused_adamw_trains_as_keras_adamw_does(replicas):
    """optim.FusedAdamW (TensorFlow's fused Adam kernel) leaves the weights, m and v where
    Keras's AdamW leaves them after six steps with a decaying rate, weight decay and
    global-norm clipping, on one device and mirrored over two; and its step runs the fused
    kernel, one per variable."""
    from common.env import tf
    from common import distribute
    # the process's one strategy over these devices: a second one reuses collective instance keys
    strategy = distribute._mirrored(["/cpu:0", "/cpu:1"]) if replicas > 1 else tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 6)).astype("float32"), rng.integers(0, 3, 8)
    state = {}
    for kind in (keras.optimizers.AdamW, optim.FusedAdamW):
        with strategy.scope():
            keras.utils.set_random_seed(1)
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                                      keras.layers.Dense(3)])
            optimizer = kind(learning_rate=keras.optimizers.schedules.PolynomialDecay(1e-2, 10, 0.0),
                             weight_decay=0.1, global_clipnorm=0.5)
            optimizer.exclude_from_weight_decay(var_names=["bias"])
            model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
        state[kind] = [v.numpy() for v in model.weights + optimizer.variables]
        if kind is optim.FusedAdamW and replicas == 1:
            specs = [tf.TensorSpec(v.shape) for v in model.trainable_variables]
            step = tf.function(lambda grads: optimizer.apply(grads, model.trainable_variables))
            graph = step.get_concrete_function(specs).graph  # traced, not run
            assert sum(op.type == "ResourceApplyAdam" for op in graph.get_operations()) == len(specs)
    assert int(state[optim.FusedAdamW][len(model.weights)]) == 6  # the iterations: six steps taken
    for fused, plain in zip(state[optim.FusedAdamW], state[keras.optimizers.AdamW]):
        np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6)  # summed in another order
