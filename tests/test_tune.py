"""Keras Tuner learning-rate search on a tiny model: outputs, HParams, resume."""
import json
import os

from tests.conftest import run_script


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
    assert (run / "trials.md").read_text().startswith("| rank | trial | val_macro_f1 |")
    assert sorted(os.listdir(run / "tb")) == ["0", "1", "2"]  # one TensorBoard run per trial, with hparams
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tb" / "0" / "execution0"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.Tags()["tensors"]
    assert first.stdout.count("Trial 3 Complete") == 1
    # the same command again: the oracle is reloaded, no trial is run again
    trial_dirs = sorted(os.listdir(run / "trials"))
    again = run_script("tune/lr_search.py", *args)
    assert "Complete [" not in again.stdout and "Search: Running Trial" not in again.stdout
    assert sorted(os.listdir(run / "trials")) == trial_dirs
    assert json.loads((run / "best_hparams.json").read_text()) == best


def test_distributed_search_chief_and_two_workers_on_loopback(tiny_distilbert, data_dir, tmp_path):
    import subprocess
    import sys
    from common.env import REPO_ROOT
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


def test_unfreeze_search_runs_trials_whose_best_is_train_flags(tiny_distilbert, data_dir, tmp_path):
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
