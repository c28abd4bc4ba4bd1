"""MultiWorkerMirroredStrategy with real worker processes on 127.0.0.1."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from common import REPO_ROOT
from tests.conftest import free_port, free_ports, planned_steps


def _digests(text):
    return re.findall(r"weights digest ([0-9a-f]{16})", text)


@pytest.mark.slow
def test_two_workers_train_in_lockstep_and_only_the_chief_writes(tiny_distilbert, data_dir, tmp_path):
    run = tmp_path / "mw"
    p = subprocess.run(["bash", os.path.join(REPO_ROOT, "launch", "local_cluster.sh"), "2", "train/full_finetune.py",
                        "--model", tiny_distilbert, "--data", data_dir, "--run-dir", str(run), "--epochs", "1",
                        "--precision", "fp32"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
                       env={**os.environ, "PYTHON": sys.executable})
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    w0 = [l for l in p.stdout.splitlines() if l.startswith("[worker 0]")]
    w1 = [l for l in p.stdout.splitlines() if l.startswith("[worker 1]")]
    d0, d1 = _digests("\n".join(w0)), _digests("\n".join(w1))
    assert len(d0) == len(d1) == 1 and d0 == d1  # identical weights on both workers
    assert any("(written by the chief)" in l for l in w1)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["resolved"]["strategy"] == "MultiWorkerMirroredStrategy" and cfg["resolved"]["replicas"] == 2
    assert sorted(os.listdir(run)) == ["README.md", "best", "calibration.json", "config.json", "confusion_matrix.png",
                                      "epochs.json", "metrics.json", "model", "reliability.png", "serving", "tb"]
    assert not [d for d, _, _ in os.walk(run) if "temp" in os.path.basename(d)]  # no worker leftovers
    # the same command again: every worker sees the finished run (a lone worker would wait for its peers)
    again = subprocess.run(p.args, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                           env={**os.environ, "PYTHON": sys.executable})
    assert again.returncode == 0, (again.stdout[-3000:], again.stderr[-3000:])
    for w in ("[worker 0]", "[worker 1]"):
        assert any(l.startswith(w) and "has finished already" in l for l in again.stdout.splitlines()), again.stdout
    assert "Epoch" not in again.stdout


@pytest.mark.slow
def test_two_workers_with_xla_compile_per_replica_and_stay_in_lockstep(tiny_distilbert, data_dir, tmp_path):
    run = tmp_path / "mwx"
    p = subprocess.run(["bash", os.path.join(REPO_ROOT, "launch", "local_cluster.sh"), "2", "train/full_finetune.py",
                        "--model", tiny_distilbert, "--data", data_dir, "--run-dir", str(run), "--epochs", "1",
                        "--precision", "fp32", "--xla", "--train-examples", "96", "--max-length", "20"],
                       capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
                       env={**os.environ, "PYTHON": sys.executable, "XLA_FLAGS": f"--xla_dump_to={tmp_path / 'dump'}"})
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    import glob  # XLA's own record of what it compiled, from both workers
    assert glob.glob(str(tmp_path / "dump" / "*loss_and_gradients*.before_optimizations.txt"))
    d0 = _digests("\n".join(l for l in p.stdout.splitlines() if l.startswith("[worker 0]")))
    d1 = _digests("\n".join(l for l in p.stdout.splitlines() if l.startswith("[worker 1]")))
    assert len(d0) == len(d1) == 1 and d0 == d1
    cfg = json.loads((run / "config.json").read_text())["resolved"]
    assert cfg["strategy"] == "MultiWorkerMirroredStrategy" and cfg["xla"] is True and cfg["xla_mode"] == "on"
    m = json.loads((run / "metrics.json").read_text())
    assert 0 < m["xla_compilations"] <= len(m["batch_widths"])  # the chief's one replica: once per width at most
    assert all(l >= 0 for l in m["train_loss_per_epoch"])


def test_multi_worker_needs_an_explicit_run_dir(tiny_distilbert, data_dir):
    tf_config = json.dumps({"cluster": {"worker": [f"127.0.0.1:{free_port()}"]}, "task": {"type": "worker", "index": 0}})
    p = subprocess.run([sys.executable, "train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir],
                       capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, env={**os.environ, "TF_CONFIG": tf_config})
    assert p.returncode == 2 and "pass --run-dir, the same folder on every worker" in p.stderr


@pytest.mark.slow
def test_killed_worker_restarted_rejoins_and_the_job_completes(tiny_distilbert, data_dir, tmp_path):
    run = tmp_path / "mwk"
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    # 4 epochs of ~1 s alone (several under the suite's load): the kill below lands mid-training, after a
    # step backup, with two epochs left to finish after the restart
    args = [sys.executable, "-u", "train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir,
            "--run-dir", str(run), "--epochs", "4", "--precision", "fp32", "--backup-every-steps", "10"]

    def start(i, log):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                                      "task": {"type": "worker", "index": i}})}
        return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)

    w0, w1 = start(0, tmp_path / "w0.log"), start(1, tmp_path / "w1.log")
    try:
        deadline = time.time() + 400
        while "Epoch 2/4" not in (tmp_path / "w1.log").read_text():
            assert time.time() < deadline and w1.poll() is None, (tmp_path / "w1.log").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.5)  # mid-training, after a step backup
        w1.send_signal(signal.SIGKILL)
        w1.wait(timeout=30)
        time.sleep(3)
        w1 = start(1, tmp_path / "w1-restarted.log")
        assert w0.wait(timeout=600) == 0, (tmp_path / "w0.log").read_text()[-3000:]
        assert w1.wait(timeout=120) == 0, (tmp_path / "w1-restarted.log").read_text()[-3000:]
    finally:
        for w in (w0, w1):
            if w.poll() is None:
                w.kill()
    log0, log1 = (tmp_path / "w0.log").read_text(), (tmp_path / "w1-restarted.log").read_text()
    assert "restarting this worker" in log0 and "resuming from" in log1
    assert _digests(log0)[-1:] == _digests(log1)[-1:] and _digests(log1)
    m = json.loads((run / "metrics.json").read_text())
    assert m["optimizer_steps"] == m["planned_steps"] == planned_steps(data_dir, epochs=4)


@pytest.mark.slow
def test_tune_script_under_two_workers_runs_trials_in_lockstep(tiny_distilbert, data_dir, tmp_path):
    run = tmp_path / "search"
    p = subprocess.run(["bash", os.path.join(REPO_ROOT, "launch", "local_cluster.sh"), "2", "tune/lr_search.py",
                        "--model", tiny_distilbert, "--data", data_dir, "--run-dir", str(run), "--max-trials", "2",
                        "--epochs", "1", "--precision", "fp32"], capture_output=True, text=True, cwd=REPO_ROOT,
                       timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    for w in ("[worker 0]", "[worker 1]"):
        assert sum(l.startswith(w) and "Trial 2 Complete" in l for l in p.stdout.splitlines()) == 1
    assert len((run / "trials.csv").read_text().splitlines()) == 1 + 2  # written once, by the chief
    assert sorted(d for d in os.listdir(run / "trials") if d.startswith("trial_")) == ["trial_0", "trial_1"]
