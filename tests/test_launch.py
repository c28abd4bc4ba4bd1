"""Cloud launchers: --dry-run output, and the GCE startup script run for real with a
local folder standing in for the bucket (rsync in place of gcloud storage rsync)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest


from common import REPO_ROOT
from tests.conftest import head_commit, planned_steps, tb_scalars

LAUNCH = os.path.join(REPO_ROOT, "launch")


def _launch(script, *args):
    return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)


@pytest.fixture
def _dry(remote):
    def dry(script, *args):
        p = _launch(script, "--dry-run", "--repo", remote, *args)
        assert p.returncode == 0, p.stderr
        return p.stdout
    return dry


def _argv_line(out):
    """The job's command a gcp_vm.sh dry run shows, as the VM reads it back (a JSON array)."""
    line = next(l for l in out.splitlines() if l.startswith("# finsent-argv "))
    return json.loads(line.split(": ", 1)[1])


def test_gcp_vm_dry_run_has_gpus_spot_image_and_command(_dry):
    out = _dry("gcp_vm.sh", "--gpus", "4", "--gpu-type", "nvidia-l4", "--spot", "--bucket", "gs://b",
               "train/full_finetune.py", "--epochs", "3", "--head-hidden", "256,64")
    preflight, create = out.splitlines()[:2]
    assert preflight.startswith(f"bash {LAUNCH}/preflight.sh --zone us-central1-a --gpu-type nvidia-l4 --gpus 4 "
                                "--machine-type n1-standard-32 --bucket gs://b "
                                "--image-family common-cu129-ubuntu-2204-nvidia-580 ")
    assert create.startswith("gcloud compute instances create ")
    assert "--accelerator type=nvidia-l4\\,count=4" in out
    # one termination action for spot preemption and the run-time limit: STOP (the disk stays, the run resumes)
    assert "--max-run-duration 24h --instance-termination-action STOP --provisioning-model SPOT" in out
    assert "--image-family common-cu129-ubuntu-2204-nvidia-580 --image-project deeplearning-platform-release" in out
    assert "startup-script=" + os.path.join(LAUNCH, "gce_startup.sh") in out
    # the command goes as a JSON array (finsent-argv, from a file), one element per argument, --gpus added
    assert "##finsent-argv=" in out and "finsent-command" not in out
    assert _argv_line(out) == ["train/full_finetune.py", "--epochs", "3", "--head-hidden", "256,64", "--gpus", "4"]
    assert "finsent-bucket=gs://b" in out and "finsent-on-failure=delete" in out
    assert "finsent-on-failure=stop" in _dry("gcp_vm.sh", "--on-failure", "stop", "train/full_finetune.py")
    no_spot = _dry("gcp_vm.sh", "--gpus", "1", "--max-run-duration", "3h", "--service-account",
                   "finsent@p.iam.gserviceaccount.com", "train/full_finetune.py")
    assert "SPOT" not in no_spot and "count=1" in no_spot
    assert "--max-run-duration 3h --instance-termination-action STOP --service-account finsent@p" in no_spot


def test_vertex_dry_run_has_build_image_pools_gpus_spot_and_command(_dry):
    image = f"europe-west4-docker.pkg.dev/p/finsent/finsent:{head_commit()}"
    out = _dry("vertex_job.sh", "--build", "--project", "p", "--region", "europe-west4", "--gpus", "2", "--workers",
               "3", "--spot", "--bucket", "gs://b", "train/full_finetune.py", "--epochs", "1")
    assert "gcloud builds submit /" in out and f"/launch/cloudbuild.yaml --substitutions _IMAGE={image}\\,_COMMIT={head_commit()} " in out
    assert f"# image: {image}\n" in out and f"imageUri: {image}\n" in out
    assert "gcloud ai custom-jobs create --region europe-west4" in out
    assert out.count("acceleratorCount: 2") == 2 and "replicaCount: 3" in out and "strategy: SPOT" in out
    # replicas train at once (nothing installed), TensorBoard through a local folder (the mount uploads closed
    # files); the container runs python with a list of arguments, no shell in between
    import yaml
    pools = yaml.safe_load(out.split("# job spec (--config):\n", 1)[1])["workerPoolSpecs"]
    for pool in pools:
        container = pool["containerSpec"]
        assert container["command"] == ["python"]
        args = container["args"]
        assert args[:5] == ["train/full_finetune.py", "--epochs", "1", "--gpus", "2"]
        assert args[5] == "--run-dir" and args[6].startswith("/gcs/b/runs/finsent-")
        assert args[7:] == ["--tb-staging", "/tmp/finsent-tb"]
    assert "pip install" not in out
    plain = _dry("vertex_job.sh", "--registry", "us-docker.pkg.dev/p/r", "train/full_finetune.py")
    assert "SPOT" not in plain and "builds submit" not in plain  # without --build: the commit's image, checked first
    assert plain.startswith(f"bash {LAUNCH}/preflight.sh --bucket gs://YOUR-BUCKET --image "
                            f"us-docker.pkg.dev/p/r/finsent:{head_commit()}")


@pytest.mark.parametrize("script", ["gcp_vm.sh", "vertex_job.sh"])
def test_launchers_refuse_credentials_ssh_urls_and_unpushed_commits(script, remote, tmp_path):
    token = "ghp_s3cr3tT0ken"
    p = _launch(script, "--dry-run", "--repo", f"https://user:{token}@example.invalid/f.git", "train/full_finetune.py")
    assert p.returncode == 2 and "carries credentials" in p.stderr and token not in p.stdout + p.stderr
    p = _launch(script, "--dry-run", "--repo", "git@example.invalid:me/f.git", "train/full_finetune.py")
    assert p.returncode == 2 and "SSH URL" in p.stderr
    # a commit nobody pushed: made on top of the pushed HEAD in a throw-away clone of the remote
    # (never in this checkout's repository), on no branch, and never pushed back
    clone = tmp_path / "clone.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", remote, str(clone)], check=True)
    who = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # a fresh CI machine has no git identity
    unpushed = subprocess.run(["git", "-C", str(clone), "commit-tree", "refs/heads/main^{tree}",
                               "-p", "refs/heads/main", "-m", "local only"],
                              capture_output=True, text=True, check=True, env={**os.environ, **who}).stdout.strip()
    assert len(unpushed) == 40
    p = _launch(script, "--dry-run", "--repo", remote, "--ref", unpushed, "train/full_finetune.py")
    assert p.returncode == 2 and f"commit {unpushed[:12]} is not on {remote}" in p.stderr
    assert _launch(script, "--dry-run", "--repo", remote, "train/full_finetune.py").returncode == 0


def test_launchers_refuse_unknown_scripts():
    for script in ("gcp_vm.sh", "vertex_job.sh"):
        p = subprocess.run(["bash", os.path.join(LAUNCH, script), "--dry-run", "train/nope.py"],
                           capture_output=True, text=True, cwd=REPO_ROOT)
        assert p.returncode == 2 and "no script train/nope.py" in p.stderr


def test_skypilot_yaml_builds_tf_config_from_node_variables(tmp_path):
    import yaml  # keras-tuner/tensorboard bring PyYAML? fall back to a plain parse if not
    spec = yaml.safe_load(open(os.path.join(LAUNCH, "skypilot.yaml")))
    assert spec["resources"]["use_spot"] is True and spec["file_mounts"]["/runs"]["mode"] == "MOUNT_CACHED"
    # run the YAML's own run: section for node 1 of 2, with the training command replaced by printing TF_CONFIG
    run = spec["run"].replace(". ~/finsent-venv/bin/activate", "true").replace(
        'python "${SCRIPT}" "${ARGV[@]}"', 'echo "$TF_CONFIG"; echo "${SCRIPT}" "${ARGV[@]}"')
    def node(rank, task_id, code=0, **extra):
        env = {**os.environ, **{k: str(v) for k, v in spec["envs"].items()}, "SKYPILOT_NUM_NODES": "2",
               "SKYPILOT_NODE_IPS": "10.0.0.5\n10.0.0.6", "SKYPILOT_NODE_RANK": str(rank),
               "SKYPILOT_NUM_GPUS_PER_NODE": "8", "SKYPILOT_TASK_ID": task_id, **extra}
        p = subprocess.run(["bash", "-c", run], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
        assert p.returncode == code, p.stderr
        return p.stdout.strip().splitlines() if code == 0 else p

    job1 = "sky-managed-2026-11-27-10-00-00-000000_finsent_3-0"
    tf_config, command = node(1, job1)
    assert json.loads(tf_config) == {"cluster": {"worker": ["10.0.0.5:12345", "10.0.0.6:12345"]},
                                     "task": {"type": "worker", "index": 1}}
    assert command.startswith(f"train/full_finetune.py --gpus 8 --run-dir /runs/{job1} --tb-staging ")
    assert node(0, job1)[1] == command  # every node of the job, and each recovery (same task id): one folder
    assert node(1, "sky-managed-2026-11-27-11-00-00-000000_finsent_4-0")[1] != command  # another job: another
    assert "--run-dir /runs/mine " in node(1, job1, RUN="mine")[1]
    for bad in ("../tmp/x", "a/b", "..", "x y", "$(id)"):  # not one folder name (../tmp/x: off the mount)
        p = node(1, job1, code=2, RUN=bad)
        assert p.stdout == "" and p.stderr == f"skypilot.yaml: RUN='{bad}': give a folder name under the bucket's " \
                                              f"runs/ (letters, digits, '.', '_', '-')\n", p.stderr


@pytest.mark.slow
def test_skypilot_job_killed_mid_epoch_leaves_its_tensorboard_scalars_in_the_bucket(tiny_distilbert, data_dir,
                                                                                    tmp_path):
    """The YAML's run: section, its run folder on a stand-in MOUNT_CACHED bucket (a file is
    uploaded once closed). The VM dies mid-epoch: the steps logged up to the last backup
    are in the bucket, as TensorBoard reads them."""
    import yaml
    spec = yaml.safe_load(open(os.path.join(LAUNCH, "skypilot.yaml")))
    mount, bucket = tmp_path / "mount", tmp_path / "bucket"
    mount.mkdir()
    run = spec["run"].replace(". ~/finsent-venv/bin/activate", "true").replace("/runs/", f"{mount}/")
    env = {**os.environ, **{k: str(v) for k, v in spec["envs"].items()}, "HOME": str(tmp_path),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "SKYPILOT_NUM_NODES": "1", "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NUM_GPUS_PER_NODE": "0",
           "SKYPILOT_TASK_ID": "job1", "ARGS": json.dumps(["--model", tiny_distilbert, "--data", data_dir, "--epochs",
                                                           "2000", "--precision", "fp32", "--log-every-steps", "1",
                                                           "--backup-every-steps", "4"])}
    log = tmp_path / "job.log"
    job = subprocess.Popen(["bash", "-c", run], cwd=REPO_ROOT, env=env, stdout=open(log, "w"),
                           stderr=subprocess.STDOUT, start_new_session=True)
    uploads = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "tests", "mount_cached_standin.py"),
                                str(mount), str(bucket)], start_new_session=True)
    uploaded = bucket / "job1" / "tb" / "train"
    try:
        deadline = time.time() + 300
        while len(tb_scalars(uploaded, "batch_loss")) < 8:
            assert time.time() < deadline and job.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
    finally:  # the VM is preempted: the job and the mount's uploads die at once
        for p in (job, uploads):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    in_bucket = tb_scalars(uploaded, "batch_loss")
    written = tb_scalars(tmp_path / "finsent-tb" / "job1" / "train", "batch_loss")  # on the dead VM's disk
    assert len(written) < planned_steps(data_dir, epochs=1), "not killed in the first epoch"
    steps = sorted(in_bucket)
    assert len(steps) >= 8 and steps == list(range(steps[0], steps[0] + len(steps)))  # no step missing
    assert in_bucket == {s: written[s] for s in steps}


def _startup(env, log):
    return subprocess.Popen(["bash", os.path.join(LAUNCH, "gce_startup.sh")], stdout=open(log, "a"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _argv(*args):
    """finsent-argv: the command as a JSON array, one element per argument."""
    return json.dumps([str(a) for a in args])


def _startup_env(tmp_path, argv, venv, **overrides):
    """The startup script's settings for a VM whose disk, bucket and cloud commands are local
    stand-ins: a folder for the bucket, touch-a-file for deleting / stopping / shutting down
    the VM, and a venv that has the stack (launch/install.sh runs, and finds it there)."""
    (tmp_path / "bucket").mkdir(exist_ok=True)
    env = {**os.environ,
           "FINSENT_REPO": REPO_ROOT, "FINSENT_REF": head_commit(), "FINSENT_BUCKET": str(tmp_path / "bucket"),
           "FINSENT_RUN": "job1", "FINSENT_ARGV": _argv(*argv),
           "FINSENT_WORKDIR": str(tmp_path / "vm-disk"), "FINSENT_VENV": venv,
           "FINSENT_SYNC": f"{sys.executable} {os.path.join(REPO_ROOT, 'tests', 'folder_bucket_sync.py')}",
           "FINSENT_SYNC_EVERY": "2",
           "FINSENT_DELETE_VM": f"touch {tmp_path / 'vm-deleted'}", "FINSENT_STOP_VM": f"touch {tmp_path / 'vm-stopped'}",
           "FINSENT_SHUTDOWN": f"touch {tmp_path / 'vm-shut-down'}"}
    env.update(overrides)
    return env


def _fake_venv(tmp_path, pip_fails=True):
    """A venv whose pip fails (as on a VM whose index is unreachable)."""
    venv = tmp_path / "broken-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f"#!/bin/sh\n[ \"$1 $2\" = \"-m pip\" ] && exit 1\nexec {sys.executable} \"$@\"\n")
    (venv / "bin" / "python").chmod(0o755)
    return str(venv)


FAILURES = [  # (id, env overrides(tmp_path, tiny, data) -> dict, step named in EXIT, VM action)
    ("clone", lambda t, m, d: {"FINSENT_REPO": str(t / "no-such-repo")}, "step: cloning", "vm-deleted"),
    ("pip", lambda t, m, d: {"FINSENT_VENV": _fake_venv(t)}, "step: installing requirements", "vm-deleted"),
    ("no-gpu", lambda t, m, d: {"FINSENT_EXPECT_GPU": "1"}, "step: checking that TensorFlow sees the GPUs",
     "vm-deleted"),
    ("train", lambda t, m, d: {"FINSENT_ARGV": _argv("train/full_finetune.py", "--model", m, "--data", t / "nowhere")},
     "step: training: train/full_finetune.py", "vm-deleted"),
    ("sync", lambda t, m, d: {"FINSENT_ARGV": _argv("train/full_finetune.py", "--model", m, "--data", t / "nowhere"),
                              "FINSENT_SYNC": "false"}, None, "vm-stopped"),
    ("keep-on-failure", lambda t, m, d: {"FINSENT_REPO": str(t / "no-such-repo"), "FINSENT_ON_FAILURE": "keep"},
     "step: cloning", None),
]


SLOW_FAILURES = ("no-gpu", "train", "sync")  # these start TensorFlow on the "VM": seconds each


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0], marks=[pytest.mark.slow] if c[0] in SLOW_FAILURES else [])
                                  for c in FAILURES])
def test_gce_startup_every_failure_syncs_reports_and_deletes_the_vm(case, tiny_distilbert, data_dir, tmp_path,
                                                                   stack_venv):
    name, overrides, step, action = case
    env = _startup_env(tmp_path, ["train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--epochs", 1],
                       stack_venv, **overrides(tmp_path, tiny_distilbert, data_dir))
    log = tmp_path / "startup.log"
    code = _startup(env, log).wait(timeout=300)
    assert code != 0, log.read_text()[-2000:]
    for a in ("vm-deleted", "vm-stopped", "vm-shut-down"):  # exactly the expected action on the VM, or none when asked to keep it
        assert (tmp_path / a).exists() == (a == action), (a, log.read_text()[-2000:])
    if step:  # the reason is in the bucket, beside whatever of the run folder existed
        report = (tmp_path / "bucket" / "runs" / "job1" / "EXIT").read_text()
        assert "status: failed" in report and step in report, report
    else:  # the bucket is unreachable: the VM is stopped, its disk keeps the run and the reason
        report = (tmp_path / "vm-disk" / "exit-report" / "EXIT").read_text()
        assert "status: failed" in report


@pytest.mark.parametrize("refused", ["delete", "stop"])
def test_gce_startup_shuts_the_vm_down_when_it_may_not_delete_or_stop_it(refused, tmp_path, stack_venv):
    """An organisation policy can leave the VM's service account without the right to delete
    or stop the VM: the GPUs must not go on billing, so the VM shuts itself down (= stopped)."""
    env = _startup_env(tmp_path, ["train/full_finetune.py"], stack_venv, FINSENT_REPO=str(tmp_path / "no-such-repo"),
                       FINSENT_ON_FAILURE=refused,
                       **{f"FINSENT_{refused.upper()}_VM": "false"})
    log = tmp_path / "startup.log"
    assert _startup(env, log).wait(timeout=120) == 1
    assert (tmp_path / "vm-shut-down").exists(), log.read_text()[-2000:]
    assert f"could not {refused} this VM (exit 1;" in log.read_text()
    assert not (tmp_path / "vm-deleted").exists() and not (tmp_path / "vm-stopped").exists()


@pytest.mark.slow
def test_gce_startup_script_installs_runs_syncs_and_resumes_after_reboot(tiny_distilbert, data_dir, tmp_path,
                                                                         stack_venv):
    """A spot VM killed in the middle of uploading a checkpoint: the bucket still names a
    checkpoint that is all there, and a new disk resumes from it and finishes the plan."""
    bucket, work = tmp_path / "bucket", tmp_path / "vm-disk"
    mark = tmp_path / "uploading-backup"
    # 10 epochs (~1 s each): long enough for the bucket to hold one checkpoint while a later one goes up, under load
    env = _startup_env(tmp_path, ["train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--epochs", 10,
                                  "--precision", "fp32", "--backup-every-steps", 10, "--log-every-steps", 1], stack_venv,
                       FOLDER_SYNC_DELAY="0.2", FOLDER_SYNC_MARK=str(mark))
    log = tmp_path / "startup.log"
    first = _startup(env, log)
    chief = bucket / "runs" / "job1" / "backup" / "chief"
    deadline = time.time() + 400
    while not ((chief / "checkpoint").exists() and mark.exists()):  # a later checkpoint is going up
        assert time.time() < deadline and first.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the VM is preempted: every process dies at once
    first.wait()
    assert not (bucket / "runs" / "job1" / "metrics.json").exists()
    named = re.search(r'model_checkpoint_path: "(.*)"', (chief / "checkpoint").read_text()).group(1)
    assert (chief / f"{named}.index").exists() and list(chief.glob(f"{named}.data-*"))  # complete
    logged = sorted(tb_scalars(bucket / "runs" / "job1" / "tb" / "train", "batch_loss"))  # and TensorBoard's steps
    assert len(logged) >= 10 and logged == list(range(logged[0], logged[0] + len(logged)))  # up to a backup
    shutil.rmtree(work / "repo" / "runs")  # and the VM comes back with a new disk
    second = _startup({**env, "FOLDER_SYNC_DELAY": "0"}, log)  # the VM boots again: same startup script
    assert second.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "restored runs/job1" in text and "resuming from" in text
    done = bucket / "runs" / "job1"
    m = json.loads((done / "metrics.json").read_text())
    assert m["optimizer_steps"] == m["planned_steps"] == planned_steps(data_dir, epochs=10)
    assert (done / "DONE").exists() and (done / "model" / "head.weights.h5").exists()
    assert (tmp_path / "vm-deleted").exists() and "status: ok" in (done / "EXIT").read_text()
    assert not [f for f in (done / "backup").rglob("*") if f.is_file()]  # old checkpoints pruned once finished
    # a further boot of a DONE run only deletes the VM
    (tmp_path / "vm-deleted").unlink()
    assert _startup(env, log).wait(timeout=120) == 0
    assert (tmp_path / "vm-deleted").exists() and "is DONE" in log.read_text()


def _terminal_signals():
    """The launcher as started from a terminal: HUP and INT at their defaults. Under `nohup`
    or as a background job of a script (how CI may run pytest) they arrive ignored, and bash
    cannot trap a signal that was ignored when it started."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM], ids=["HUP", "INT", "TERM"])
def test_local_cluster_stops_every_worker_on_hup_int_term(sig, tiny_distilbert, data_dir, tmp_path):
    run = tmp_path / f"sig-{sig.name}"
    log = tmp_path / "cluster.log"
    p = subprocess.Popen(["bash", os.path.join(LAUNCH, "local_cluster.sh"), "2", "train/full_finetune.py",
                          "--model", tiny_distilbert, "--data", data_dir, "--run-dir", str(run), "--epochs", "200",
                          "--precision", "fp32"], stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                         env={**os.environ, "PYTHON": sys.executable}, preexec_fn=_terminal_signals)
    try:
        deadline = time.time() + 300
        while log.read_text().count("] data: ") < 2:  # both workers joined the cluster and loaded the data
            assert time.time() < deadline and p.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        p.send_signal(sig)
        assert p.wait(timeout=60) == 128 + sig, log.read_text()[-2000:]
        left = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True).stdout.split()
        assert not left, left  # no worker outlives the launcher
    finally:  # a failed test must not leave a 200-epoch job running (it slowed every later test)
        if p.poll() is None:
            p.kill()
        subprocess.run(["pkill", "-9", "-f", str(run)], capture_output=True)


@pytest.mark.slow
def test_gce_startup_restore_never_overwrites_the_newer_local_run(tiny_distilbert, tmp_path, stack_venv):
    """A spot VM stopped and started again keeps its disk: what is there is newer than the
    bucket (which only receives copies of it), so the restore leaves it alone."""
    env = _startup_env(tmp_path, ["train/full_finetune.py", "--model", tiny_distilbert, "--data", tmp_path / "nowhere"],
                       stack_venv)
    subprocess.run(["git", "clone", "--quiet", REPO_ROOT, str(tmp_path / "vm-disk" / "repo")], check=True)
    local = tmp_path / "vm-disk" / "repo" / "runs" / "job1"
    remote = tmp_path / "bucket" / "runs" / "job1"
    local.mkdir(parents=True)
    remote.mkdir(parents=True)
    (local / "notes.txt").write_text("newer, on the disk")
    (remote / "notes.txt").write_text("older, in the bucket")
    (remote / "only-in-bucket.txt").write_text("x")
    _startup(env, tmp_path / "startup.log").wait(timeout=300)
    assert (local / "notes.txt").read_text() == "newer, on the disk"
    assert (remote / "notes.txt").read_text() == "newer, on the disk"  # the final sync carried it up
    assert "keeping runs/job1 from this disk" in (tmp_path / "startup.log").read_text()
