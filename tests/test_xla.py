"""--xla on every strategy, and one device vs two replicas: real steps on the tiny model.

The comparisons use plain SGD: its step is proportional to the gradient, so a gradient
summed where it should be averaged (or scaled twice) changes the loss after a few steps,
which Adam's normalised step would hide; and one SGD step at learning rate 1 moves each
weight by minus its gradient, so the first step's weight changes ARE the gradients the
two train steps computed."""
import glob
import json

import numpy as np
import pytest

from common import config, training
from common.env import keras, tf
from tests import tiny_models
from tests.conftest import run_script

K = 4          # steps compared
BATCH = 32


@pytest.fixture(scope="module")
def tiny_no_dropout(tmp_path_factory):
    """The tiny DistilBERT (the tiny_distilbert fixture's weights) with its dropout at 0,
    so two runs can agree step for step (the head's dropout: --dropout 0 below)."""
    return tiny_models.write_hf_folder(str(tmp_path_factory.mktemp("tiny-no-dropout")), "distilbert",
                                       **tiny_models.TINY_SIZES["distilbert"], dropout=0.0, attention_dropout=0.0,
                                       seq_classif_dropout=0.0)


class StepChanges(keras.callbacks.Callback):
    """Each step's change of every trainable weight (float64)."""

    def on_train_begin(self, logs=None):
        self.last, self.steps = self._now(), []

    def on_train_batch_end(self, batch, logs=None):
        now = self._now()
        self.steps.append([a - b for a, b in zip(now, self.last)])
        self.last = now

    def _now(self):
        return [v.numpy().astype(np.float64) for v in self.model.trainable_variables]


def train_steps(runs_root, model_dir, data_dir, precision="fp32", xla="off", replicas=0, sgd=0.5, tail=0,
                first_weights=None, **flags) -> dict:
    """fit() on K full batches, one step per epoch, each batch split across the replicas as
    training's are; tail > 0 adds a part-filled batch (the first batch's first `tail` rows).
    first_weights: the first batch's per-example loss weights (default 1).
    Returns {"losses": each step's loss and the loss after the last step (on the first
    batch), "steps": each step's change of every trainable weight, "compiled": XLA
    compilations, "model"}. Nothing is written but the token cache, beside the (unused)
    run folder under runs_root."""
    keras.backend.clear_session()
    # every batch 32 x 32 (fixed padding): one XLA compilation per replica, so the test is quick
    cfg = config.Config(model=model_dir, data=data_dir, precision=precision, xla=xla, cpu_replicas=replicas,
                        run_dir=str(runs_root / "xla-unused"), seed=1, class_weight="none", padding="fixed",
                        max_length=32, dropout=0.0, **{"batch_size": BATCH, **flags})
    run = training.start(cfg, "test", run_folder=None)
    batches = [(x, y, tf.ones([BATCH])) for x, y in run.splits.train.take(K)]
    assert len(batches) == K and all(int(y.shape[0]) == BATCH for _, y, _ in batches)
    if first_weights is not None:
        batches[0] = (*batches[0][:2], tf.constant(first_weights, tf.float32))
    if tail:
        batches.append(tf.nest.map_structure(lambda t: t[:tail], batches[0]))
    data = tf.data.Dataset.from_tensors(batches[0])
    for b in batches[1:]:
        data = data.concatenate(tf.data.Dataset.from_tensors(b))
    with run.harness.strategy.scope():
        model = training.build_model(run)
        if sgd:
            training.compile_classifier(model, cfg, keras.optimizers.SGD(sgd), run.harness.xla, run.harness.replicas)
    changes = StepChanges()
    history = model.fit(data, epochs=len(batches), steps_per_epoch=1, callbacks=[changes], verbose=0)
    losses = history.history["loss"] + [float(model.test_on_batch(*batches[0])[0])]
    compiled = model.xla_compilations() if xla == "on" else 0
    keras.mixed_precision.set_global_policy("float32")
    return {"losses": np.array(losses), "steps": changes.steps, "compiled": compiled, "model": model}


def relative_errors(got, ref) -> list:
    """Per weight: |got - ref| / |ref| (L2), over the weights with a gradient: not the
    attention keys' bias, whose gradient is zero but for rounding (softmax ignores a shift
    shared by a query's scores), so none in float32 and noise in float16."""
    norms = [np.linalg.norm(r) for r in ref]
    floor = 1e-4 * np.median(norms)
    return [float(np.linalg.norm(g - r) / n) for g, r, n in zip(got, ref, norms) if n > floor]


def test_one_device_and_two_replicas_take_the_same_steps(tiny_no_dropout, data_dir, runs_root):
    one = train_steps(runs_root, tiny_no_dropout, data_dir, replicas=0)
    two = train_steps(runs_root, tiny_no_dropout, data_dir, replicas=2)
    assert one["losses"][-1] < one["losses"][0] - 1e-3  # SGD really moved the model
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4)  # fp32, same global batch: equal up to
    assert max(relative_errors(two["steps"][0], one["steps"][0])) < 1e-4  # summation order, weight by weight


SLOW = pytest.mark.slow


@pytest.mark.parametrize("precision,replicas,flags,rtol,grad_tol", [
    pytest.param("fp32", 0, {}, 1e-4, 1e-4, id="one-device"),
    pytest.param("fp32", 2, {}, 1e-4, 1e-4, id="two-replicas", marks=SLOW),
    pytest.param("fp16", 2, {}, 1e-2, 0.02, id="fp16-two-replicas", marks=SLOW),
    pytest.param("bf16", 0, {}, 1e-2, 0.1, id="bf16-one-device", marks=SLOW),
    pytest.param("fp32", 2, {"layer_lr_decay": 0.5}, 1e-4, None, id="layer-lr-decay-two-replicas", marks=SLOW),
])
def test_xla_step_matches_the_keras_step(tiny_no_dropout, data_dir, runs_root, precision, replicas, flags, rtol,
                                         grad_tol):
    sgd = 0 if flags else 1.0  # layer-wise rates: the project's own LayerwiseAdamW
    ref = train_steps(runs_root, tiny_no_dropout, data_dir, precision, "off", replicas, sgd, **flags)
    got = train_steps(runs_root, tiny_no_dropout, data_dir, precision, "on", replicas, sgd, **flags)
    assert got["compiled"] >= max(replicas, 1)  # the compiled function really ran, on every replica
    assert ref["losses"][-1] < ref["losses"][0]
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=rtol)
    if grad_tol:  # SGD at rate 1: the first step's weight changes are the gradients
        errors = relative_errors(got["steps"][0], ref["steps"][0])
        assert len(errors) >= len(ref["steps"][0]) - 2 and max(errors) < grad_tol, sorted(errors)[-5:]


@SLOW
def test_xla_part_filled_batch_on_two_replicas_is_the_global_mean(tiny_no_dropout, data_dir, runs_root):
    """A batch of 31 splits 16 + 15 over two replicas; the second is padded to 16 rows of
    weight 0 (one compilation per width), and each replica's loss is over the 31 examples
    of the global batch: the step equals one device's on those 31 (Keras' own step
    averages the two replicas' means instead)."""
    one = train_steps(runs_root, tiny_no_dropout, data_dir, replicas=0, sgd=1.0, tail=BATCH - 1)
    two = train_steps(runs_root, tiny_no_dropout, data_dir, xla="on", replicas=2, sgd=1.0, tail=BATCH - 1)
    assert two["compiled"] == 2  # 16 rows, either replica: padded, no second compilation
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4)
    errors = relative_errors(two["steps"][-1], one["steps"][-1])
    assert max(errors) < 1e-4, sorted(errors)[-5:]


@SLOW
@pytest.mark.parametrize("xla", ["on", "off"])
def test_a_step_that_overflowed_on_one_replica_alone_is_skipped(tiny_no_dropout, data_dir, runs_root, xla):
    """fp16 on two replicas, the first batch's second half (the second replica's) weighted
    by inf: the step is skipped on both and the loss scale halves, as when both overflow
    (Keras 3's LossScaleOptimizer, left alone, looks at the first replica's gradients only,
    and would write inf into the weights: optim.LossScaleOptimizer)."""
    weights = np.r_[np.ones(BATCH // 2), np.full(BATCH // 2, np.inf)]
    got = train_steps(runs_root, tiny_no_dropout, data_dir, "fp16", xla, replicas=2, sgd=1.0, first_weights=weights)
    assert all(not np.any(change) for change in got["steps"][0])  # the first step moved nothing
    assert all(np.isfinite(v.numpy()).all() for v in got["model"].trainable_variables)
    optimizer = got["model"].optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(optimizer.dynamic_scale.numpy()) == optimizer.initial_scale / 2  # halved once, not grown yet
    assert any(np.any(change) for change in got["steps"][1])  # and the next step trained


@SLOW
@pytest.mark.parametrize("flags", [[], ["--cpu-replicas", "2", "--precision", "fp16", "--layer-lr-decay", "0.8"]],
                         ids=["one-device", "two-replicas-fp16-layerwise"])
def test_xla_run_compiles_each_width_once_per_replica(tiny_distilbert, data_dir, tmp_path, flags):
    run, dump = tmp_path / "run", tmp_path / "xla-dump"
    run_script("train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", run,
               "--epochs", "2", "--train-examples", "96", "--max-length", "20", "--no-serving", "--xla", *flags,
               env_extra={"XLA_FLAGS": f"--xla_dump_to={dump}"})
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["xla"] is True and resolved["xla_mode"] == "on"
    m = json.loads((run / "metrics.json").read_text())
    replicas = resolved["replicas"]
    # XLA itself says what it compiled: one HLO module per compilation of our per-replica function
    modules = glob.glob(str(dump / "*loss_and_gradients*.before_optimizations.txt"))
    assert len(modules) == m["xla_compilations"] > 0
    assert m["xla_compilations"] <= len(m["batch_widths"]) * replicas  # part-filled batches reuse their width's
    assert np.isfinite(m["train_loss_per_epoch"]).all() and np.isfinite(m["test"]["loss"])


@SLOW
def test_xla_auto_clusters_on_two_replicas(tiny_distilbert, data_dir, tmp_path):
    """--xla auto: TensorFlow's auto-clustering, switched on from the command line before
    TensorFlow starts (on CPUs it needs --tf_xla_cpu_global_jit); TensorFlow logs its first
    compiled cluster."""
    run = tmp_path / "run"
    p = run_script("train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", run,
                   "--epochs", "1", "--train-examples", "64", "--max-length", "20", "--cpu-replicas", "2", "--no-serving",
                   "--xla", "auto", env_extra={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert "Compiled cluster using XLA" in p.stderr
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["xla"] is True and resolved["xla_mode"] == "auto" and resolved["replicas"] == 2
    assert np.isfinite(json.loads((run / "metrics.json").read_text())["test"]["loss"])
