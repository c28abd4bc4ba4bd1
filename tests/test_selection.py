"""Issue 33: the decisions a run makes on its own validation split: --select-metric (the best
epoch), --restore-prior auto, --patience (and where a resumed run stops).

The per-epoch validation figures are scripted (callbacks.Validation's scoring replaced by a
table) so that accuracy and macro-F1 disagree on purpose; everything else is the real fit:
a tiny DistilBERT trained on PhraseBank sentences, BestCheckpoint, the backup, EarlyStop."""
import json
import os

import numpy as np
import pytest

from common import callbacks as cb
from common import config, models, runs, training
from common.env import keras


@pytest.fixture
def start(tiny_distilbert, data_dir, runs_root):
    def start(**flags):
        keras.backend.clear_session()
        cfg = config.Config(model=tiny_distilbert, data=data_dir, precision="fp32", train_examples=64, batch_size=16,
                            lr=1e-3, warmup=0.0, run_dir=str(runs_root / "selection"), **flags)
        run = training.start(cfg, "test", run_folder=None)
        with run.harness.strategy.scope():
            model = training.build_model(run)
        return cfg, run, model
    return start


@pytest.fixture
def scripted(monkeypatch):
    """Validation's figures per epoch from a table: {epoch (1-based): {name: value}}; the
    weights at each epoch's end are kept, to see which epoch the run ended with."""
    table, weights = {}, {}
    real = cb.Validation.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        real(self, epoch, logs)
        logs.update({"val_" + k: v for k, v in table[epoch + 1].items()})
        weights[epoch + 1] = [w.numpy().copy() for w in self.model.weights]

    monkeypatch.setattr(cb.Validation, "on_epoch_end", on_epoch_end)
    return table, weights


# epoch 2 has the best accuracy, epoch 3 the best macro-F1, epoch 1 the lowest loss
FIGURES = {1: dict(accuracy=0.60, macro_f1=0.40, loss=0.50), 2: dict(accuracy=0.80, macro_f1=0.50, loss=0.70),
           3: dict(accuracy=0.70, macro_f1=0.65, loss=0.60)}


@pytest.mark.parametrize("metric, epoch", [("accuracy", 2), ("macro_f1", 3), ("loss", 1)])
def test_select_metric_chooses_the_epoch_the_run_ends_with(start, scripted, tmp_path, metric, epoch):
    table, weights = scripted
    table.update(FIGURES)
    cfg, run, model = start(epochs=3, select_metric=metric)
    fitted = training.fit(model, cfg, str(tmp_path / "run"), run.splits, {})
    assert fitted.best_epoch == epoch
    best = json.loads((tmp_path / "run" / runs.BEST / "best.json").read_text())
    assert best == {"epoch": epoch, "monitor": "val_" + metric, "value": FIGURES[epoch][metric]}
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(weights[epoch], model.weights))


def _decide(start, mode, shift_sign):
    """put_back_prior on constructed validation logits: the true class's one-hot, shifted by
    +log(class weight) (what a class-weighted model leans toward: the prior helps), or not
    shifted (every sentence right already: the prior moves the rare classes' to neutral)."""
    cfg, run, model = start(epochs=1, restore_prior=mode)
    splits = run.splits
    n = len(splits.labels)
    log_w = np.log([splits.class_weights[c] for c in range(n)])
    y = np.array([label for _, label in splits.rows["validation"]])
    logits = np.eye(n)[y] * 0.5 + shift_sign * log_w
    results = {"validation": {**models_metrics(y, logits, splits.labels), "logits": logits}}
    bias = models.logits_layer(model).bias.numpy().copy()
    out, decision = training.put_back_prior(model, cfg, splits, results)
    return out, decision, models.logits_layer(model).bias.numpy() - bias, log_w, logits


def models_metrics(y, logits, labels):
    from common import metrics
    return metrics.classification_metrics(y, logits, labels)


def test_restore_prior_auto_puts_the_prior_back_where_validation_gains(start):
    out, decision, moved, log_w, logits = _decide(start, "auto", +1)
    assert decision["restored"] and decision["with_prior"] > decision["without_prior"], decision
    assert decision["with_prior"] == 1.0  # shifting by -log w undoes the lean exactly
    np.testing.assert_allclose(moved, -log_w, atol=1e-6)  # the bias moved: every later path sees it
    # and the figures returned are the model's after it: its logits moved as the bias did
    np.testing.assert_allclose(out["validation"]["logits"], logits - log_w, atol=1e-6)
    assert out["validation"]["macro_f1"] == 1.0


def test_restore_prior_auto_keeps_the_weighted_model_where_validation_loses(start):
    out, decision, moved, _, logits = _decide(start, "auto", 0)
    assert not decision["restored"] and decision["with_prior"] < decision["without_prior"], decision
    assert np.all(moved == 0) and out["validation"]["macro_f1"] == decision["without_prior"]
    assert np.array_equal(out["validation"]["logits"], logits)


def test_restore_prior_on_puts_it_back_even_where_validation_loses(start):
    _, decision, moved, log_w, _ = _decide(start, "on", 0)
    assert decision["restored"] and decision["with_prior"] < decision["without_prior"]
    np.testing.assert_allclose(moved, -log_w, atol=1e-6)


def test_restore_prior_flag_spellings_and_old_runs():
    parse = lambda *a: config.from_args(config.build_parser("t").parse_args(list(a))).restore_prior  # noqa: E731
    assert (parse(), parse("--restore-prior"), parse("--no-restore-prior"), parse("--restore-prior", "off")) == \
        ("auto", "on", "off", "off")
    assert parse("--recipe", "hf") == "off" and parse("--recipe", "hf", "--restore-prior", "auto") == "auto"
    # config.json of runs made when it was a bool, and of runs made before it existed
    assert config.Config.from_dict({"restore_prior": True}).restore_prior == "on"
    assert runs.run_flags({"flags": {}}).restore_prior == "off"


STALLING = {1: dict(macro_f1=0.50), 2: dict(macro_f1=0.60), 3: dict(macro_f1=0.58), 4: dict(macro_f1=0.59),
            5: dict(macro_f1=0.70), 6: dict(macro_f1=0.71)}  # best at 2, then 2 epochs without: stop after 4


def _epochs_run(run_dir) -> list:
    return [e["epoch"] for e in json.loads((run_dir / runs.EPOCHS).read_text())]


@pytest.mark.slow
def test_patience_stops_a_run_whose_metric_stopped_improving(start, scripted, tmp_path):
    table, _ = scripted
    table.update(STALLING)
    cfg, run, model = start(epochs=6, patience=2)
    fitted = training.fit(model, cfg, str(tmp_path / "run"), run.splits, {})
    assert (fitted.stopped_after, fitted.best_epoch, _epochs_run(tmp_path / "run")) == (4, 2, [1, 2, 3, 4])
    assert fitted.steps_done == 4 * run.splits.train_stats["steps"]
    # patience 3 lets it reach the better epoch 5, and run to the ceiling
    cfg, run, model = start(epochs=6, patience=3)
    fitted = training.fit(model, cfg, str(tmp_path / "run3"), run.splits, {})
    assert (fitted.stopped_after, fitted.best_epoch, _epochs_run(tmp_path / "run3")) == (None, 6, [1, 2, 3, 4, 5, 6])


class Killed(Exception):
    pass


@pytest.mark.slow
def test_a_resumed_run_stops_where_the_uninterrupted_one_did(start, scripted, tmp_path):
    """Interrupted after epoch 3 (its backup taken), the run is started again in a new model:
    it counts epoch 3 as one without gain, and stops after epoch 4 as the uninterrupted run
    did; started once more after that, it trains no further."""
    table, _ = scripted
    table.update(STALLING)
    run_dir = tmp_path / "run"

    class KillAfter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 3:
                raise Killed()

    cfg, run, model = start(epochs=6, patience=2)
    with pytest.raises(Killed):
        training.fit(model, cfg, str(run_dir), run.splits, {}, extra_callbacks=[KillAfter()])
    assert _epochs_run(run_dir) == [1, 2, 3]
    cfg, run, model = start(epochs=6, patience=2)
    fitted = training.fit(model, cfg, str(run_dir), run.splits, {})
    steps = run.splits.train_stats["steps"]
    assert (fitted.stopped_after, fitted.best_epoch, _epochs_run(run_dir)) == (4, 2, [1, 2, 3, 4])
    assert fitted.steps_done == 4 * steps
    # killed after it stopped (while it evaluated): the backup of epoch 4 is there, and no epoch follows
    assert cb.resume_step(os.path.join(run_dir, runs.BACKUP), steps) == 4 * steps
    cfg, run, model = start(epochs=6, patience=2)
    fitted = training.fit(model, cfg, str(run_dir), run.splits, {})
    assert (fitted.stopped_after, _epochs_run(run_dir), fitted.steps_done) == (4, [1, 2, 3, 4], 4 * steps)


@pytest.mark.slow
def test_eval_every_validates_between_epochs_and_a_resumed_run_is_the_uninterrupted_one(start, tmp_path):
    """--eval-every 5 over 2 epochs of 14 steps (length buckets of 64 sentences): validations
    after steps 5, 10, ..., 25 and 28 (the last part shorter), across the epochs' boundary.
    Killed at step 17 (backups every step: it resumes at 16, mid-part), the run started again ends with the
    uninterrupted run's weights and validation figures."""
    from common import report
    cfg, run, model = start(epochs=2, eval_every=5, backup_every_steps=1)
    total = 2 * run.splits.train_stats["steps"]
    assert total == 28
    whole = training.fit(model, cfg, str(tmp_path / "whole"), run.splits, {})
    logged = json.loads((tmp_path / "whole" / runs.EPOCHS).read_text())
    assert [e["epoch"] for e in logged] == [1, 2, 3, 4, 5, 6] and whole.steps_done == total
    digest = report.weights_digest(model)

    class KillAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 17:
                raise Killed()

    cfg, run, model = start(epochs=2, eval_every=5, backup_every_steps=1)
    with pytest.raises(Killed):
        training.fit(model, cfg, str(tmp_path / "cut"), run.splits, {}, extra_callbacks=[KillAt()])
    assert cb.resume_step(os.path.join(tmp_path / "cut", runs.BACKUP), 5) == 16  # (the kill came before its backup)
    cfg, run, model = start(epochs=2, eval_every=5, backup_every_steps=1)
    resumed = training.fit(model, cfg, str(tmp_path / "cut"), run.splits, {})
    again = json.loads((tmp_path / "cut" / runs.EPOCHS).read_text())
    assert [e["val_loss"] for e in again] == [e["val_loss"] for e in logged]
    assert resumed.steps_done == total and resumed.best_epoch == whole.best_epoch
    assert report.weights_digest(model) == digest
