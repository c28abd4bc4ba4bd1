"""Cloud launchers: --dry-run output, and the GCE startup script run for real with a
local folder standing in for the bucket (rsync in place of gcloud storage rsync)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest


from common.env import REPO_ROOT
from tests.conftest import planned_steps

LAUNCH = os.path.join(REPO_ROOT, "launch")


def _dry(script, *args):
    p = subprocess.run(["bash", os.path.join(LAUNCH, script), "--dry-run", "--repo", "https://example.invalid/f.git",
                        *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_gcp_vm_dry_run_has_gpus_spot_image_and_command():
    out = _dry("gcp_vm.sh", "--gpus", "4", "--gpu-type", "nvidia-l4", "--spot", "--bucket", "gs://b",
               "train/full_finetune.py", "--epochs", "3", "--head-hidden", "256,64")
    assert out.startswith("gcloud compute instances create ")
    assert "--accelerator type=nvidia-l4\\,count=4" in out
    assert "--provisioning-model SPOT --instance-termination-action STOP" in out
    assert "--image-family common-cu121-debian-11-py310 --image-project deeplearning-platform-release" in out
    assert "startup-script=" + os.path.join(LAUNCH, "gce_startup.sh") in out
    assert "finsent-command=train/full_finetune.py\\ --epochs\\ 3\\ --head-hidden\\ 256\\,64\\ --gpus\\ 4" in out
    assert "finsent-bucket=gs://b" in out
    no_spot = _dry("gcp_vm.sh", "--gpus", "1", "train/full_finetune.py")
    assert "SPOT" not in no_spot and "count=1" in no_spot


def test_vertex_dry_run_has_pools_gpus_spot_image_and_command():
    out = _dry("vertex_job.sh", "--gpus", "2", "--workers", "3", "--spot", "--bucket", "gs://b",
               "train/full_finetune.py", "--epochs", "1")
    assert out.startswith("gcloud ai custom-jobs create --region us-central1")
    assert out.count("acceleratorCount: 2") == 2 and "replicaCount: 3" in out
    assert "strategy: SPOT" in out and "imageUri: us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-15.py310" in out
    assert "python train/full_finetune.py --epochs 1 --gpus 2 --run-dir /gcs/b/runs/" in out
    assert "SPOT" not in _dry("vertex_job.sh", "train/full_finetune.py")


def test_launchers_refuse_unknown_scripts():
    for script in ("gcp_vm.sh", "vertex_job.sh"):
        p = subprocess.run(["bash", os.path.join(LAUNCH, script), "--dry-run", "train/nope.py"],
                           capture_output=True, text=True, cwd=REPO_ROOT)
        assert p.returncode == 2 and "no script train/nope.py" in p.stderr


def test_skypilot_yaml_builds_tf_config_from_node_variables(tmp_path):
    import yaml  # keras-tuner/tensorboard bring PyYAML? fall back to a plain parse if not
    spec = yaml.safe_load(open(os.path.join(LAUNCH, "skypilot.yaml")))
    assert spec["resources"]["use_spot"] is True and spec["file_mounts"]["/runs"]["mode"] == "MOUNT"
    # run the YAML's own run: section for node 1 of 2, with the training command replaced by printing TF_CONFIG
    run = spec["run"].replace(". ~/finsent-venv/bin/activate", "true").replace(
        "python ${SCRIPT} ${ARGS} --gpus ${SKYPILOT_NUM_GPUS_PER_NODE} --run-dir /runs/${RUN}",
        'echo "$TF_CONFIG"; echo "${SCRIPT} ${ARGS} --gpus ${SKYPILOT_NUM_GPUS_PER_NODE} --run-dir /runs/${RUN}"')
    env = {**os.environ, **{k: str(v) for k, v in spec["envs"].items()}, "SKYPILOT_NUM_NODES": "2",
           "SKYPILOT_NODE_IPS": "10.0.0.5\n10.0.0.6", "SKYPILOT_NODE_RANK": "1", "SKYPILOT_NUM_GPUS_PER_NODE": "8"}
    p = subprocess.run(["bash", "-c", run], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    tf_config, command = p.stdout.strip().splitlines()
    assert json.loads(tf_config) == {"cluster": {"worker": ["10.0.0.5:12345", "10.0.0.6:12345"]},
                                     "task": {"type": "worker", "index": 1}}
    assert command == "train/full_finetune.py  --gpus 8 --run-dir /runs/finsent-sky"


def _startup(env, log):
    return subprocess.Popen(["bash", os.path.join(LAUNCH, "gce_startup.sh")], stdout=open(log, "a"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def test_gce_startup_script_installs_runs_syncs_and_resumes_after_reboot(tiny_distilbert, data_dir, tmp_path):
    bucket, work = tmp_path / "bucket", tmp_path / "vm-disk"
    bucket.mkdir()
    head = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    env = {**os.environ,
           "FINSENT_REPO": REPO_ROOT, "FINSENT_REF": head, "FINSENT_BUCKET": str(bucket), "FINSENT_RUN": "job1",
           "FINSENT_COMMAND": f"train/full_finetune.py --model {tiny_distilbert} --data {data_dir} --epochs 3 "
                              f"--precision fp32 --backup-every-steps 10",
           "FINSENT_WORKDIR": str(work), "FINSENT_VENV": sys.prefix,  # the test's environment stands in for the VM's
           "FINSENT_SYNC": f"{sys.executable} {os.path.join(REPO_ROOT, 'tests', 'folder_bucket_sync.py')}",
           "FINSENT_SYNC_EVERY": "2",
           "FINSENT_DELETE_VM": f"touch {tmp_path / 'vm-deleted'}"}
    log = tmp_path / "startup.log"
    first = _startup(env, log)
    deadline = time.time() + 400
    while not list((bucket / "runs" / "job1").glob("backup/chief/ckpt-*.index")) if (bucket / "runs").exists() else True:
        assert time.time() < deadline and first.poll() is None, log.read_text()[-3000:]
        time.sleep(1)
    time.sleep(2)
    os.killpg(first.pid, signal.SIGKILL)  # the VM is preempted: every process dies at once
    first.wait()
    assert not (bucket / "runs" / "job1" / "metrics.json").exists()
    shutil.rmtree(work / "repo" / "runs")  # and say its local copy of the run is gone too
    second = _startup(env, log)  # the VM boots again: same startup script
    assert second.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "restored runs/job1" in text and "resuming from" in text
    done = bucket / "runs" / "job1"
    m = json.loads((done / "metrics.json").read_text())
    assert m["optimizer_steps"] == m["planned_steps"] == planned_steps(data_dir)
    assert (done / "DONE").exists() and (done / "model" / "tf_model.h5").exists()
    assert (tmp_path / "vm-deleted").exists()
    # a further boot of a DONE run only deletes the VM
    (tmp_path / "vm-deleted").unlink()
    assert _startup(env, log).wait(timeout=120) == 0
    assert (tmp_path / "vm-deleted").exists() and "is DONE" in log.read_text()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM], ids=["HUP", "INT", "TERM"])
def test_local_cluster_stops_every_worker_on_hup_int_term(sig, tiny_distilbert, data_dir, tmp_path):
    run = tmp_path / f"sig-{sig.name}"
    log = tmp_path / "cluster.log"
    p = subprocess.Popen(["bash", os.path.join(LAUNCH, "local_cluster.sh"), "2", "train/full_finetune.py",
                          "--model", tiny_distilbert, "--data", data_dir, "--run-dir", str(run), "--epochs", "200",
                          "--precision", "fp32"], stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                         env={**os.environ, "PYTHON": sys.executable})
    deadline = time.time() + 300
    while log.read_text().count("] Epoch 1/200") < 2:  # both workers are training
        assert time.time() < deadline and p.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    p.send_signal(sig)
    assert p.wait(timeout=60) == 128 + sig, log.read_text()[-2000:]
    left = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True).stdout.split()
    assert not left, left  # no worker outlives the launcher
