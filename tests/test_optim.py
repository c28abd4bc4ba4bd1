"""Layer-wise learning rates and gradual unfreezing, measured on real training steps."""
import numpy as np
import pytest

from common import config, optim, training
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


def _by_group(model):
    groups, n = optim.variable_groups(model, model.distilbert)
    return {v.name: g for v, g in groups}, n


@pytest.mark.parametrize("replicas", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_each_block_steps_at_its_layer_wise_rate(tiny_distilbert, data_dir, runs_root, replicas):
    lr, decay = 1e-3, 0.5
    run, model = _setup(runs_root, tiny_distilbert, data_dir, lr=lr, layer_lr_decay=decay, cpu_replicas=replicas,
                        epochs=1)
    assert isinstance(model.optimizer, optim.LayerwiseAdamW) and run.harness.replicas == max(replicas, 1)
    group, n = _by_group(model)
    assert n == 2
    model.optimizer.lr_multipliers.assign(optim.multipliers(n, 0, decay=decay))
    before = {v.name: v.numpy() for v in model.trainable_weights}
    model.fit(run.splits.train.take(1), epochs=1, verbose=0)
    # Adam's first step moves each weight by lr_eff * g / (|g| + eps): its largest move is lr_eff
    step = {}
    for v in model.trainable_weights:
        d = np.abs(v.numpy() - before[v.name]).max()
        step[group[v.name]] = max(step.get(group[v.name], 0.0), d)
    expected = {g: lr * decay ** (n + 1 - g) for g in range(n + 2)}  # embeddings d^3, blocks d^2, d^1, head 1
    for g in range(n + 2):
        assert step[g] == pytest.approx(expected[g], rel=0.02), (g, step, expected)


@pytest.mark.slow
def test_gradual_unfreezing_changes_weights_in_the_scheduled_order(tiny_distilbert, data_dir, runs_root, tmp_path):
    run, model = _setup(runs_root, tiny_distilbert, data_dir, lr=1e-3, head_warmup_epochs=1, unfreeze_every=1, epochs=4)
    group, n = _by_group(model)
    snaps = [{v.name: v.numpy() for v in model.trainable_weights}]

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snaps.append({v.name: v.numpy() for v in model.trainable_weights})

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
    before = {v.name: v.numpy() for v in model.trainable_weights}
    training.fit(model, run.cfg, str(tmp_path / "run"), run.splits, {})
    moved = {group[v.name] for v in model.trainable_weights if not np.array_equal(v.numpy(), before[v.name])}
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
    embeddings = models.encoder_of(model).embeddings
    assert embeddings.trainable and all(any(w is v for v in model.trainable_weights) for w in embeddings.weights)
    x, _ = next(iter(run.splits.train))
    assert tuple(x["input_ids"].shape) == (8, 32)  # every batch padded to --max-length, batch 8
