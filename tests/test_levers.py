"""The levers of the default recipe (docs/results.md#the-levers-over-5-seeds): agreement-aware
training, label smoothing, a moving average of the weights; measured on real runs of the
tiny DistilBERT and the real release."""
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from common import config, data, errors, phrasebank, training
from common import REPO_ROOT
from common.env import keras, tf


@pytest.fixture
def _run(tiny_distilbert, data_dir, runs_root):
    """(cfg, run) of training.start for these flags: nothing written but the token cache,
    beside the run folder under runs_root (not in the working directory)."""
    def start(**flags):
        keras.backend.clear_session()
        cfg = config.Config(model=tiny_distilbert, data=data_dir, precision="fp32", run_dir=str(runs_root / "levers"),
                            **flags)
        return cfg, training.start(cfg, "test", run_folder=None)
    return start


def test_extra_agreement_adds_only_looser_training_sentences_at_their_weight(_run, data_dir):
    cfg, run = _run(extra_agreement="50", extra_weight=0.25, class_weight="balanced")
    strict = phrasebank.load_splits(data_dir, "all")
    loose = phrasebank.load_splits(data_dir, "50")
    rows = run.splits.rows["train"]
    n_strict = len(strict["train"])
    assert rows[:n_strict] == strict["train"]
    added = rows[n_strict:]
    # exactly the sentences 50Agree's training split adds; none in any level's validation or test split
    norm = phrasebank.normalise
    assert {norm(s) for s, _ in added} == {norm(s) for s, _ in loose["train"]} - {norm(s) for s, _ in strict["train"]}
    assert len(added) > 1500
    held_out = {norm(s) for lv in phrasebank.LEVELS for part in ("validation", "test")
                for s, _ in phrasebank.load_splits(data_dir, lv)[part]}
    assert not held_out & {norm(s) for s, _ in added}
    assert run.splits.val_labels.size == len(strict["validation"])  # validation and test stay AllAgree's
    assert len(run.splits.rows["test"]) == len(strict["test"])
    # each example's loss weight: the balanced class weight of the combined split, times 0.25 if added
    labels = np.array([y for _, y in rows])
    cw = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    by_sentence = {s: cw[y] * (0.25 if i >= n_strict else 1.0) for i, (s, y) in enumerate(rows)}
    ids = data.encode(run.tokenizer, [s for s, _ in rows], cfg.max_length)
    key = {tuple(x): s for x, (s, _) in zip(ids, rows)}
    seen = 0
    for x, y, w in run.splits.train:
        for ids_, label, weight in zip(x["input_ids"].numpy(), y.numpy(), w.numpy()):
            sentence = key[tuple(t for t in ids_ if t != run.tokenizer.pad_token_id)]
            assert weight == pytest.approx(by_sentence[sentence], rel=1e-5)
            seen += 1
    assert seen == len(rows)


@pytest.mark.parametrize("flags, message", [
    (dict(extra_agreement="50", split="notebook"), "only the hash split keeps"),
    (dict(agreement="75", extra_agreement="75"), "must be a looser level than --agreement 75"),
    (dict(extra_agreement="66", extra_weight=0.0), "--extra-weight 0.0: must be positive"),
    (dict(label_smoothing=1.0), "--label-smoothing 1.0: must be in"),
    (dict(ema=1.5), "--ema 1.5: must be in"),
])
def test_lever_flags_refuse_what_cannot_work(_run, flags, message):
    with pytest.raises(errors.FlagError, match=message):
        _run(**flags)


@pytest.mark.slow
def test_extra_agreement_run_trains_and_reports_the_added_sentences(tiny_distilbert, data_dir, tmp_path):
    """As a user runs it: the class weights ride on the examples' weights (Keras refuses
    class_weight on a dataset that has sample weights)."""
    run_dir = tmp_path / "run"
    subprocess.run([sys.executable, "train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir,
                    "--precision", "fp32", "--epochs", "1", "--train-examples", "64", "--extra-agreement", "75",
                    "--run-dir", str(run_dir)], cwd=REPO_ROOT, check=True, capture_output=True, timeout=600)
    m = json.loads((run_dir / "metrics.json").read_text())
    resolved = json.loads((run_dir / "config.json").read_text())["resolved"]
    added = len(phrasebank.load_splits(data_dir, "75")["train"]) - len(phrasebank.load_splits(data_dir, "all")["train"])
    assert resolved["extra_examples"] == added and m["sizes"]["train"] == 64 + added
    assert m["test"]["n"] == len(phrasebank.load_splits(data_dir, "all")["test"])


def test_sqrt_class_weights_halve_balanced_in_log_space_at_mean_one(_run):
    """--class-weight sqrt as a run resolves it (config.json's "resolved"): between no weights
    and balanced ones, as a softening should be (each class's weight ratio to another is the
    square root of balanced's), and the mean weight over the training examples is 1, so the
    learning rate means what it means without weights."""
    _, run = _run(class_weight="sqrt")
    sqrt = training.resolved_settings(run)["class_weight"]
    labels = np.array(run.splits.train_labels)
    balanced = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    w = np.array([sqrt[c] for c in range(3)])
    assert np.mean(w[labels]) == pytest.approx(1.0)
    np.testing.assert_allclose(np.log(w[:, None] / w[None, :]), 0.5 * np.log(balanced[:, None] / balanced[None, :]),
                               atol=1e-9)
    assert w[0] > w[2] > 1 > w[1] > balanced[1]  # negatives (13%) up, neutrals (61%) down, less than balanced


def test_label_smoothing_moves_the_loss_minimum_off_one_hot():
    y = tf.constant([1, 1])
    probs = {"smoothed": [0.1 / 3, 1 - 0.2 / 3, 0.1 / 3], "confident": [0.001, 0.998, 0.001]}
    logits = {k: tf.math.log(tf.constant([p, p])) for k, p in probs.items()}
    for loss_name in ("ce", "focal"):
        plain = training.make_loss(config.Config(loss=loss_name), 3)
        smooth = training.make_loss(config.Config(loss=loss_name, label_smoothing=0.1), 3)
        assert tf.reduce_mean(plain(y, logits["confident"])) < tf.reduce_mean(plain(y, logits["smoothed"]))
        assert tf.reduce_mean(smooth(y, logits["smoothed"])) < tf.reduce_mean(smooth(y, logits["confident"]))


def test_ema_run_ends_with_the_moving_average_not_the_last_step(_run, tmp_path):
    cfg, run = _run(ema=0.9, epochs=2, restore_prior="off", train_examples=64, lr=1e-3,
                    warmup=0.0)
    with run.harness.strategy.scope():
        model = training.build_model(run)
    last = {}

    class LastStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            last["weights"] = [v.numpy() for v in model.trainable_variables]

    training.fit(model, cfg, str(tmp_path / "run"), run.splits, {}, extra_callbacks=[LastStep()])
    opt = model.optimizer
    averages = [opt._model_variables_moving_average[opt._get_variable_index(v)].numpy()
                for v in model.trainable_variables]
    final = [v.numpy() for v in model.trainable_variables]
    assert all(np.allclose(f, a) for f, a in zip(final, averages))
    assert max(np.abs(f - w).max() for f, w in zip(final, last["weights"])) > 1e-4  # not the last step's


@pytest.mark.slow
def test_restore_prior_puts_the_class_frequencies_back_into_predictions(tiny_distilbert, data_dir, tmp_path):
    """Balanced class weights train a model toward equal class rates; --restore-prior (the
    default) moves its mean predicted class probabilities back toward the training data's
    class shares (61% neutral): on the test split, through the finished run's model/."""
    import importlib
    from common.finished_run import FinishedRun
    shares = np.bincount([y for _, y in phrasebank.load_splits(data_dir, "all")["train"]], minlength=3) / 1807
    # (--train-examples keeps the shares: the subset is class-stratified)
    sentences = [s for s, _ in phrasebank.load_splits(data_dir, "all")["test"]]
    mean_probs = {}
    for flag in ("--restore-prior", "--no-restore-prior"):
        keras.backend.clear_session()
        run_dir = tmp_path / flag
        importlib.import_module("train.full_finetune").main(
            ["--model", tiny_distilbert, "--data", data_dir, "--precision", "fp32", "--epochs", "1", "--lr", "3e-3",
             "--train-examples", "400", "--class-weight", "balanced", flag, "--no-serving", "--run-dir", str(run_dir)])
        probs, _, _ = FinishedRun.open(str(run_dir)).probabilities(sentences)
        mean_probs[flag] = probs.mean(0)
    weighted, restored = mean_probs["--no-restore-prior"], mean_probs["--restore-prior"]
    assert np.abs(restored - shares).max() < np.abs(weighted - shares).max() / 2, (restored, weighted, shares)
    assert restored.argmax() == 1  # neutral, the majority, again the most probable on average
