"""Keras Tuner searches on a tiny model: outputs, HParams, resume, the train scripts' fit
path in every trial (class weights, schedules), Hyperband promotions, fp16."""
import json
import os

import numpy as np
import pytest

from common import config, data, models, optim, phrasebank, sources
from tests.conftest import run_script, tb_scalars


def _trials(run):
    out = {}
    for d in sorted((run / "trials").glob("trial_*")):
        t = json.loads((d / "trial.json").read_text())
        out[t["trial_id"]] = (t, json.loads((d / "config.json").read_text()))
    return out


@pytest.mark.slow
def test_lr_search_runs_three_trials_writes_results_and_resumes_without_redoing(tiny_distilbert, data_dir, tmp_path):
    run = tmp_path / "search"
    args = ["--model", tiny_distilbert, "--data", data_dir, "--run-dir", run, "--max-trials", 3, "--epochs", 1,
            "--precision", "fp32", "--lr-range", "1e-4,3e-3"]
    first = run_script("tune/lr_search.py", *args)
    best = json.loads((run / "best_hparams.json").read_text())
    assert set(best) == {"trial", "val_macro_f1", "lr", "warmup", "weight_decay"}
    assert 1e-4 <= best["lr"] <= 3e-3 and 0 <= best["val_macro_f1"] <= 1
    rows = (run / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 3
    scores = [float(r.split(",")[1]) for r in rows[1:]]
    assert scores == sorted(scores, reverse=True)  # ranked
    table = (run / "trials.md").read_text()
    assert table.startswith("| rank | Trial # | trial | val_macro_f1 |")
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()[2:]]
    assert sorted((c[1], c[2]) for c in cells) == [("1", "0"), ("2", "1"), ("3", "2")]  # as keras-tuner printed them
    assert "Search: Running Trial #1" in first.stdout
    train_it = [l for l in first.stdout.splitlines() if l.startswith("train it: ")]
    assert len(train_it) == 1 and "train/full_finetune.py" in train_it[0] and f"--lr {best['lr']}" in train_it[0]
    assert sorted(os.listdir(run / "tb")) == ["0", "1", "2"]  # one TensorBoard run per trial, with hparams
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tb" / "0" / "execution0"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.Tags()["tensors"]
    assert first.stdout.count("Trial 3 Complete") == 1
    # every trial trained with the class weights the train script would use, and says so
    default = config.Config().class_weight
    expected = data.class_weights([y for _, y in phrasebank.load_splits(data_dir, "all")["train"]], default, 3)
    for trial, cfg in _trials(run).values():
        assert cfg["flags"]["class_weight"] == default and cfg["script"] == "lr_search.py trial"
        assert {int(k): v for k, v in cfg["resolved"]["class_weight"].items()} == pytest.approx(expected)
        assert cfg["flags"]["lr"] == trial["hyperparameters"]["values"]["lr"]
    # the same command again: the oracle is reloaded, no trial is run again
    trial_dirs = sorted(os.listdir(run / "trials"))
    again = run_script("tune/lr_search.py", *args)
    assert "Complete [" not in again.stdout and "Search: Running Trial" not in again.stdout
    assert sorted(os.listdir(run / "trials")) == trial_dirs
    assert json.loads((run / "best_hparams.json").read_text()) == best


@pytest.mark.slow
def test_distributed_search_chief_and_two_workers_on_loopback(tiny_distilbert, data_dir, tmp_path):
    import subprocess
    import sys
    from common import REPO_ROOT
    run = tmp_path / "dsearch"
    p = subprocess.run(["bash", os.path.join(REPO_ROOT, "launch", "local_cluster.sh"), "--tuner", "2",
                        "tune/lr_search.py", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", str(run),
                        "--max-trials", "4", "--epochs", "1", "--precision", "fp32"],
                       capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert "oracle on 127.0.0.1:" in p.stderr  # loopback unless LOCAL_CLUSTER_HOST names an address
    trained = {w for w in ("[worker 0]", "[worker 1]")
               if any(l.startswith(w) and "val_macro_f1" in l for l in p.stdout.splitlines())}
    assert trained == {"[worker 0]", "[worker 1]"}  # both workers ran trials
    assert len((run / "trials.csv").read_text().splitlines()) == 1 + 4
    assert json.loads((run / "best_hparams.json").read_text())["trial"] in {"0", "1", "2", "3"}


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, tiny_distilbert):
    """The tiny DistilBERT without its classification head, as a pretrained encoder comes
    (distilbert-base-uncased: the encoder's weights only): the head is drawn at random when
    a classifier is built, so the seed decides it."""
    import shutil
    from safetensors.numpy import load_file, save_file
    path = str(tmp_path_factory.mktemp("tiny-encoder"))
    shutil.copytree(tiny_distilbert, path, dirs_exist_ok=True)
    weights = os.path.join(path, "model.safetensors")
    encoder = {k: v for k, v in load_file(weights).items() if k.startswith("distilbert.")}
    assert len(encoder) < len(load_file(weights))  # pre_classifier and classifier left out
    save_file(encoder, weights, metadata={"format": "pt"})
    return path


@pytest.mark.slow
def test_unfreeze_search_runs_trials_whose_best_is_train_flags(tiny_encoder, data_dir, tmp_path):
    tiny_distilbert = tiny_encoder
    run = tmp_path / "unfreeze"
    run_script("tune/unfreeze_search.py", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", run,
               "--max-trials", 2, "--epochs", 2, "--precision", "fp32", "--train-best")
    best = json.loads((run / "best_hparams.json").read_text())
    assert {"head_warmup_epochs", "unfreeze_every", "train_top_blocks", "layer_lr_decay", "lr"} <= set(best)
    # --train-best trained it as a normal run, with those flags
    cfg = json.loads((run / "best-run" / "config.json").read_text())["flags"]
    for k in ("head_warmup_epochs", "unfreeze_every", "train_top_blocks", "layer_lr_decay", "lr"):
        assert cfg[k] == best[k], k
    assert cfg["model"] == tiny_distilbert and cfg["epochs"] == 2
    assert (run / "best-run" / "metrics.json").exists()
    # one fit path: the trial and the train script, same flags and seed, took the same steps
    trial_loss = tb_scalars(run / "tb" / best["trial"] / "execution0" / "train", "epoch_loss")
    run_loss = tb_scalars(run / "best-run" / "tb" / "train", "epoch_loss")
    assert sorted(trial_loss) == sorted(run_loss) == [0, 1]
    for epoch in trial_loss:
        assert run_loss[epoch] == pytest.approx(trial_loss[epoch], rel=1e-4), (trial_loss, run_loss)
    run_f1 = max(tb_scalars(run / "best-run" / "tb" / "validation", "epoch_macro_f1").values())
    assert run_f1 == pytest.approx(best["val_macro_f1"], abs=1e-6)


@pytest.mark.slow
def test_hyperband_promoted_trials_continue_the_schedules(tiny_distilbert, data_dir, tmp_path):
    """A promoted trial starts at its initial_epoch: the unfreezing schedule is at that
    epoch, and the learning rate continues its decay instead of warming up again."""
    run = tmp_path / "hb"
    args = ["--model", tiny_distilbert, "--data", data_dir, "--run-dir", run, "--tuner", "hyperband", "--epochs", 3,
            "--unfreeze-every", 1, "--train-examples", 96, "--max-length", 32, "--precision", "fp32"]
    run_script("tune/lr_search.py", *args)
    trials = _trials(run)
    promoted = {i: (t, c) for i, (t, c) in trials.items() if t["hyperparameters"]["values"]["tuner/initial_epoch"] > 0}
    assert promoted, "Hyperband promoted no trial"
    any_flags = next(iter(promoted.values()))[1]["flags"]
    cfg = config.Config(**any_flags)
    steps = data.load_data(cfg, sources.resolve(cfg), models.load_tokenizer(tiny_distilbert), 1).train_stats["steps"]
    for i, (t, cfg) in promoted.items():
        hp = t["hyperparameters"]["values"]
        first = hp["tuner/initial_epoch"]
        tb = run / "tb" / i / "execution0" / "train"
        groups, lr = tb_scalars(tb, "epoch_trainable_groups"), tb_scalars(tb, "epoch_learning_rate")
        assert sorted(groups) == list(range(first, hp["tuner/epochs"]))  # epochs counted on from initial_epoch
        c = config.Config(**cfg["flags"])
        schedule = optim.learning_rate_schedule(c, steps)
        for epoch in groups:
            # head + one more block per epoch (2 blocks, then the embeddings: 4 groups at most)
            assert groups[epoch] == min(2 + epoch, 4)
            # the rate at the epoch's end is the schedule's at the run's global step, as if never paused
            assert lr[epoch] == pytest.approx(float(schedule((epoch + 1) * steps)), rel=1e-5)
        assert float(schedule((first + 1) * steps)) != pytest.approx(float(schedule(steps)), rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("script,tuner", [("tune/lr_search.py", "bayesian"), ("tune/unfreeze_search.py", "hyperband")])
def test_search_runs_in_fp16(script, tuner, tiny_distilbert, data_dir, tmp_path):
    """fp16 (the GPU default) through both tuners: the schedule's optimizer attributes sit
    under Keras' LossScaleOptimizer, and every trial still trains and scores. As the cloud
    launchers run it: TensorBoard through a local folder (--tb-staging), copied into tb/."""
    run, staging = tmp_path / "search", tmp_path / "staging"
    run_script(script, "--model", tiny_distilbert, "--data", data_dir, "--run-dir", run, "--tuner", tuner,
               "--max-trials", 1, "--epochs", 1, "--precision", "fp16", "--train-examples", 96, "--max-length", 32,
               "--layer-lr-decay", 0.8, "--tb-staging", staging)
    trials = _trials(run)
    assert trials
    for t, cfg in trials.values():
        assert cfg["resolved"]["precision"] == "fp16" and np.isfinite(t["score"])
        trial_tb = os.path.join(t["trial_id"], "execution0", "train")
        assert tb_scalars(run / "tb" / trial_tb, "epoch_learning_rate") == tb_scalars(staging / "search" / trial_tb,
                                                                                  "epoch_learning_rate") != {}


def test_a_trials_executions_train_with_successive_seeds(tiny_distilbert, data_dir, runs_root):
    """--executions-per-trial N: keras-tuner builds and fits the trial N times; fit k must be
    the train script's --seed 42+k (head, dropout, shuffle order), so the mean is over seeds."""
    import keras_tuner as kt
    from common import tuning, training
    from common.env import keras
    keras.backend.clear_session()
    cfg = config.Config(model=tiny_distilbert, data=data_dir, precision="fp32", epochs=1, train_examples=64,
                        head="custom", run_dir=str(runs_root / "trials"))  # a head of new layers: initialised from the seed (the tiny model's own is saved)
    run = training.start(cfg, "test", run_folder=None)
    hypermodel = tuning.ConfigHyperModel(run, lambda hp, c: c)
    hp = kt.HyperParameters()
    heads, batches = [], []
    for execution in range(2):  # what keras-tuner's run_trial does per execution
        model = hypermodel.build(hp)
        heads.append([w.numpy() for w in model.weights])
        hypermodel.fit(hp, model)
        trial = hypermodel.trial(hp, execution)
        x, y = next(iter(trial.splits.train))
        batches.append((trial.cfg.seed, x["input_ids"].numpy().tolist()))
    assert [b[0] for b in batches] == [42, 43]
    assert batches[0][1] != batches[1][1]  # another shuffle order
    assert not all(a.shape == b.shape and np.allclose(a, b) for a, b in zip(*heads))  # another initial head
    # the second fit trained on seed 43's data, as `--seed 43` would
    fresh = config.Config(**{**cfg.to_dict(), "seed": 43})
    ref = data.load_data(fresh, run.data_source, run.tokenizer, 1)
    assert hypermodel.trial(hp, 1).splits.rows["train"] == ref.rows["train"]


def test_a_trial_whose_hp_takes_a_freed_ones_id_still_trains_with_the_seed(tiny_distilbert, data_dir, runs_root):
    """keras-tuner builds the hypermodel once on a scratch HyperParameters object to learn the
    search space and then frees it; a distributed-tuning worker frees each trial's after the
    trial. A new trial's object can take a freed one's id (CPython reuses the memory): its
    first build is still the trial's first execution (--seed), not a second execution of the
    freed object's (--seed + 1, other data: seen on a keras-tuner worker)."""
    import gc
    import keras_tuner as kt
    from common import tuning, training
    from common.env import keras
    keras.backend.clear_session()
    cfg = config.Config(model=tiny_distilbert, data=data_dir, precision="fp32", epochs=1, train_examples=64,
                        run_dir=str(runs_root / "freed"))
    run = training.start(cfg, "test", run_folder=None)
    seeds = []

    class Recorded(tuning.ConfigHyperModel):
        def trial(self, hp, execution=0):
            t = super().trial(hp, execution)
            seeds.append(t.cfg.seed)
            return t
    hypermodel = Recorded(run, lambda hp, c: c)
    scratch = kt.HyperParameters()
    hypermodel.build(scratch)  # what keras-tuner's _populate_initial_space does
    freed = id(scratch)
    del scratch
    gc.collect()
    fresh = []  # the next trials' objects, until one takes the freed id (a few thousand on)
    while len(fresh) < 50_000 and (not fresh or id(fresh[-1]) != freed):
        fresh.append(kt.HyperParameters())
    print(f"a new HyperParameters object took the freed id: {id(fresh[-1]) == freed} (after {len(fresh)})")
    hypermodel.build(fresh[-1])
    assert seeds == [42, 42]
