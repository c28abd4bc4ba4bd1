"""--xla on every strategy, and one device vs two replicas: real steps on the tiny model.

The loss comparisons use plain SGD: its step is proportional to the gradient, so a
gradient summed where it should be averaged (or scaled twice) changes the loss after a
few steps, which Adam's normalised step would hide."""
import glob
import json

import numpy as np
import pytest

from common import config, training
from common.env import keras
from tests.conftest import run_script

K = 4          # steps compared
BATCH = 32


@pytest.fixture(scope="module")
def tiny_no_dropout(tmp_path_factory, tiny_distilbert):
    """The tiny DistilBERT with every dropout at 0, so two runs can agree step for step."""
    from transformers import TFDistilBertForSequenceClassification
    path = str(tmp_path_factory.mktemp("tiny-no-dropout"))
    model = TFDistilBertForSequenceClassification.from_pretrained(tiny_distilbert, dropout=0.0, attention_dropout=0.0,
                                                                  seq_classif_dropout=0.0)
    model.save_pretrained(path)
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(tiny_distilbert).save_pretrained(path)
    return path


def losses_after_steps(runs_root, model_dir, data_dir, precision="fp32", xla="off", replicas=0, sgd=0.5,
                       **flags):
    """Train K steps on the same K full batches; the loss of each step and after the last.
    Nothing is written but the token cache, beside the (unused) run folder under runs_root."""
    keras.backend.clear_session()
    # every batch 32 x 32 (fixed padding): one XLA compilation per replica, so the test is quick
    cfg = config.Config(model=model_dir, data=data_dir, precision=precision, xla=xla, cpu_replicas=replicas,
                        run_dir=str(runs_root / "xla-unused"), seed=1, class_weight="none", padding="fixed",
                        max_length=32, **flags)
    run = training.start(cfg, "test", run_folder=None)
    batches = [b for b in run.splits.train.take(K)]
    assert len(batches) == K and all(int(y.shape[0]) == BATCH for _, y in batches)
    with run.harness.strategy.scope():
        model = training.build_model(run)
        if sgd:
            training.compile_classifier(model, cfg, keras.optimizers.SGD(sgd), run.harness.xla, run.harness.replicas)
    out = [float(model.train_on_batch(x, y)[0]) for x, y in batches]
    out.append(float(model.test_on_batch(*batches[0])[0]))
    compiled = model.xla_compilations() if xla == "on" else 0
    return np.array(out), compiled


def test_one_device_and_two_replicas_take_the_same_steps(tiny_no_dropout, data_dir, runs_root):
    one, _ = losses_after_steps(runs_root, tiny_no_dropout, data_dir, replicas=0)
    two, _ = losses_after_steps(runs_root, tiny_no_dropout, data_dir, replicas=2)
    assert one[-1] < one[0] - 1e-3  # SGD really moved the model
    np.testing.assert_allclose(two, one, rtol=1e-4)  # fp32, same global batch: equal up to summation order


SLOW = pytest.mark.slow


@pytest.mark.parametrize("precision,replicas,flags,rtol", [
    pytest.param("fp32", 0, {}, 1e-4, id="one-device"),
    pytest.param("fp32", 2, {}, 1e-4, id="two-replicas", marks=SLOW),
    pytest.param("fp16", 2, {}, 1e-2, id="fp16-two-replicas", marks=SLOW),
    pytest.param("bf16", 0, {}, 1e-2, id="bf16-one-device", marks=SLOW),
    pytest.param("fp32", 2, {"layer_lr_decay": 0.5}, 1e-4, id="layer-lr-decay-two-replicas", marks=SLOW),
])
def test_xla_step_matches_the_keras_step(tiny_no_dropout, data_dir, runs_root, precision, replicas, flags, rtol):
    sgd = 0 if flags else 0.5  # layer-wise rates: the project's own LayerwiseAdamW
    ref, _ = losses_after_steps(runs_root, tiny_no_dropout, data_dir, precision, "off", replicas, sgd, **flags)
    got, compiled = losses_after_steps(runs_root, tiny_no_dropout, data_dir, precision, "on", replicas, sgd, **flags)
    assert compiled >= max(replicas, 1)  # the compiled function really ran, on every replica
    assert ref[-1] < ref[0]
    np.testing.assert_allclose(got, ref, rtol=rtol)


@SLOW
@pytest.mark.parametrize("flags", [[], ["--cpu-replicas", "2", "--precision", "fp16", "--layer-lr-decay", "0.8"]],
                         ids=["one-device", "two-replicas-fp16-layerwise"])
def test_xla_run_compiles_each_width_once_per_replica(tiny_distilbert, data_dir, tmp_path, flags):
    run, dump = tmp_path / "run", tmp_path / "xla-dump"
    run_script("train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", run,
               "--epochs", "2", "--train-examples", "96", "--max-length", "32", "--xla", *flags,
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
                   "--epochs", "1", "--train-examples", "64", "--max-length", "32", "--cpu-replicas", "2",
                   "--xla", "auto", env_extra={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert "Compiled cluster using XLA" in p.stderr
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["xla"] is True and resolved["xla_mode"] == "auto" and resolved["replicas"] == 2
    assert np.isfinite(json.loads((run / "metrics.json").read_text())["test"]["loss"])
