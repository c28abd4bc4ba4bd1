"""The cloud launchers carry the job's command as a list: every argument reaches the training
script on the cloud machine exactly as given, and none becomes code; a value the provider
would refuse (a name, bucket, project, ...) stops the launcher in one line before anything
is created. Run as a user runs the scripts (subprocesses), each machine's side played by
the launcher's own output read back the way that machine reads it:

- Vertex: the job spec (--config, as the dry run prints it and as the stand-in gcloud
  received it), parsed as YAML, and its containerSpec's command + args started as Vertex
  starts a container: one argv, no shell (a stand-in `python` records what it got);
- GCE: the instance metadata the stand-in gcloud received, handed to launch/gce_startup.sh
  (FINSENT_* variables, as in tests/test_launch.py) with a folder for the bucket, cloning a
  stand-in repository whose training script records its sys.argv;
- SkyPilot: the YAML's own run: section with ARGS set as `sky ... --env ARGS=...` sets it.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from common import REPO_ROOT

LAUNCH = os.path.join(REPO_ROOT, "launch")
SCRIPT = "train/full_finetune.py"
# What a shell must not make of an argument: each list is one job's arguments after the script
CASES = {
    "spaces-and-empty": ["--data", "gs://b/desk data/my data.csv", "--notes", "", "--text-column", "  two  spaces "],
    "quotes": ["--text-column", "desk's \"headline\"", "--label-column", "'", "--labels", '"', "--x", "\\"],
    "command-substitution": ["--text-column", "$(touch pwned)", "--labels", "`touch pwned`", "--x", "${HOME}"],
    "separators": ["--label-column", "x;echo INJECTED", "--x", "a && touch pwned", "--y", "> pwned", "--z", "a|b"],
    "newline": ["--label-map", "a=b\n  imageUri: evil.example/x", "--x", "line1\nline2"],
    "glob": ["--x", "*.md", "--y", "[a-z]*", "--z", "?"],
    "non-ascii": ["--labels", "Überschuss €,Verlust,neutral", "--x", "日本語 😀", "--y", "tab\there"],
    "yaml-and-json": ["--x", "yes", "--y", "null", "--z", "1:20", "--w", "# not a comment", "--v", "{a: [1, 2]}",
                      "--u", "\u0085\u2028\x7f"],
}
CASE_IDS = list(CASES)


def _stand_in(path, record):
    """An executable that records its argv (after argv[0]) to `record` as JSON, and succeeds."""
    path.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(record)!r}, 'w', encoding='utf-8').write(json.dumps(sys.argv[1:]))\n")
    path.chmod(0o755)


@pytest.fixture
def gcloud(tmp_path):
    """run(script, *args, env=None, dry=False) -> (CompletedProcess, gcloud calls, metadata): the
    launcher from tmp_path, with tests/gcloud_standin.py as gcloud behind a wrapper that keeps
    what `compute instances create` was given as instance metadata, files read as the real CLI
    reads them (the launcher removes its temporary files when it ends), and that records the
    upload of a local --data (`storage cp --recursive`) as done."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls, metadata = tmp_path / "gcloud-calls", tmp_path / "metadata.json"
    (bin_dir / "gcloud").write_text(f"""#!{sys.executable}
import json, os, subprocess, sys
args = sys.argv[1:]
def items(value):  # gcloud's dict flags: KEY=VALUE items split at ',' or at ^DELIM^'s delimiter
    delim = ","
    if value.startswith("^") and "^" in value[1:]:
        delim, value = value[1:].split("^", 1)
    return [item.split("=", 1) for item in value.split(delim)]
if args[:3] == ["compute", "instances", "create"]:
    md = {{}}
    for i, a in enumerate(args):
        if a == "--metadata":
            md.update(items(args[i + 1]))
        elif a == "--metadata-from-file":
            md.update((k, open(v, encoding="utf-8").read()) for k, v in items(args[i + 1]))
    json.dump(md, open({str(metadata)!r}, "w", encoding="utf-8"))
if args[:3] == ["storage", "cp", "--recursive"]:  # the upload of --data (the stand-in knows only the probe)
    open(os.environ["GCLOUD_CALLS"], "a").write(json.dumps(args) + "\\n")
    sys.exit(0)
sys.exit(subprocess.call([sys.executable, {os.path.join(REPO_ROOT, 'tests', 'gcloud_standin.py')!r}, *args]))
""")
    (bin_dir / "gcloud").chmod(0o755)

    def run(script, *args, env=None):
        calls.write_text("")
        if metadata.exists():
            metadata.unlink()
        p = subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120,
                           env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                                "GCLOUD_CALLS": str(calls), "TMPDIR": str(tmp_path), **(env or {})})
        made = [json.loads(l) for l in calls.read_text().splitlines()]
        return p, made, json.loads(metadata.read_text()) if metadata.exists() else None
    return run


def _spec_args(spec_text, image):
    """Each worker pool's container argv, read from the job spec as Vertex reads it (YAML)."""
    spec = yaml.safe_load(spec_text)
    argvs = []
    for pool in spec["workerPoolSpecs"]:
        container = pool["containerSpec"]
        assert set(container) == {"imageUri", "command", "args"} and container["imageUri"] == image, container
        argvs.append(container["command"] + container["args"])
    return argvs


def _run_container(argv, tmp_path):
    """Start the container's argv as Vertex does (exec, no shell) in an empty /app stand-in, with
    a `python` that records its arguments; returns them, and asserts nothing else ran."""
    app, record, bin_dir = tmp_path / "app", tmp_path / "container-argv.json", tmp_path / "container-bin"
    app.mkdir(exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    (app / "README.md").write_text("a file for a glob to find\n")
    _stand_in(bin_dir / "python", record)
    if record.exists():
        record.unlink()
    p = subprocess.run(argv, cwd=app, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert p.returncode == 0 and not p.stdout, (p.stdout, p.stderr)
    assert sorted(os.listdir(app)) == ["README.md"], "the job's command ran something: " + str(os.listdir(app))
    return json.loads(record.read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASE_IDS)
def test_vertex_job_gets_every_argument_as_given(case, remote, gcloud, tmp_path):
    args = CASES[case]
    image = "us-docker.pkg.dev/p/finsent/finsent:abc"
    p, calls, _ = gcloud("vertex_job.sh", "--dry-run", "--repo", remote, "--name", "job-1", "--bucket", "gs://b",
                         "--workers", "1", "--image", image, SCRIPT, *args)
    assert p.returncode == 0, p.stderr
    assert not calls  # a dry run calls nothing
    printed = p.stdout.split("# job spec (--config):\n", 1)[1]
    expected = [SCRIPT, *args, "--gpus", "1", "--run-dir", "/gcs/b/runs/job-1", "--tb-staging", "/tmp/finsent-tb"]
    argvs = _spec_args(printed, image)
    assert len(argvs) == 2  # the chief's pool and the workers'
    for argv in argvs:
        assert _run_container(argv, tmp_path) == expected
    assert not list(tmp_path.rglob("pwned"))


def test_vertex_spec_gcloud_receives_holds_every_argument(remote, gcloud, tmp_path):
    """The real path: the spec file gcloud ai custom-jobs create --config reads."""
    args = [a for case in CASE_IDS for a in CASES[case]]
    p, calls, _ = gcloud("vertex_job.sh", "--repo", remote, "--name", "job-1", "--project", "p", "--bucket", "gs://b",
                         SCRIPT, *args)
    assert p.returncode == 0, p.stderr
    spec = next(c[1] for c in calls if c[0] == "spec")
    image = f"us-central1-docker.pkg.dev/p/finsent/finsent:{_head()}"
    (argv,) = _spec_args(spec, image)
    assert argv == ["python", SCRIPT, *args, "--gpus", "1", "--run-dir", "/gcs/b/runs/job-1",
                    "--tb-staging", "/tmp/finsent-tb"]
    assert not list(tmp_path.rglob("pwned"))


def _head():
    from tests.conftest import head_commit
    return head_commit()


@pytest.fixture(scope="module")
def vm_repo(tmp_path_factory):
    """The repository a stand-in VM clones: an install path that installs nothing, a training
    script that records its sys.argv (to $ARGV_RECORD), and files for a glob to match."""
    repo = tmp_path_factory.mktemp("vm-repo")
    (repo / "launch").mkdir()
    (repo / "train").mkdir()
    (repo / "launch" / "install.sh").write_text("exit 0\n")
    (repo / "train" / "full_finetune.py").write_text(
        "import json, os, sys\nopen(os.environ['ARGV_RECORD'], 'w', encoding='utf-8').write(json.dumps(sys.argv))\n")
    (repo / "README.md").write_text("x\n")
    (repo / "notes.md").write_text("x\n")
    who = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    for cmd in (["init", "--quiet"], ["add", "-A"], ["commit", "--quiet", "-m", "stand-in"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, env={**os.environ, **who})
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return str(repo), head


def _boot_vm(metadata, vm_repo, tmp_path):
    """launch/gce_startup.sh with the instance's metadata (finsent-KEY -> FINSENT_KEY), a folder
    for the bucket and touch-a-file for deleting the VM; returns the training script's argv."""
    repo, head = vm_repo
    venv = tmp_path / "vm-venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    (tmp_path / "vm-bucket").mkdir()
    record = tmp_path / "vm-argv.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    env.update({"FINSENT_" + k[len("finsent-"):].upper().replace("-", "_"): v for k, v in metadata.items()
                if k.startswith("finsent-")})
    env.update({"FINSENT_REPO": repo, "FINSENT_REF": head, "FINSENT_BUCKET": str(tmp_path / "vm-bucket"),
                "FINSENT_WORKDIR": str(tmp_path / "vm-disk"), "FINSENT_VENV": str(venv),
                "FINSENT_SYNC": f"{sys.executable} {os.path.join(REPO_ROOT, 'tests', 'folder_bucket_sync.py')}",
                "FINSENT_SYNC_EVERY": "1", "FINSENT_DELETE_VM": f"touch {tmp_path / 'vm-deleted'}",
                "FINSENT_STOP_VM": "false", "FINSENT_SHUTDOWN": "true", "ARGV_RECORD": str(record)})
    log = tmp_path / "vm.log"
    with open(log, "w") as out:  # a file, not a pipe: the syncer's last sleep may outlive the script
        code = subprocess.run(["bash", os.path.join(LAUNCH, "gce_startup.sh")], stdout=out, stderr=subprocess.STDOUT,
                              env=env, timeout=120).returncode
    assert code == 0 and (tmp_path / "vm-deleted").exists(), log.read_text()[-3000:]
    assert not list(tmp_path.rglob("pwned"))
    return json.loads(record.read_text(encoding="utf-8")), tmp_path / "vm-disk"


@pytest.mark.parametrize("case", CASE_IDS)
def test_gce_vm_runs_every_argument_as_given(case, remote, gcloud, vm_repo, tmp_path):
    args = CASES[case]
    p, calls, metadata = gcloud("gcp_vm.sh", "--repo", remote, "--name", "job-1", "--bucket", "gs://b", SCRIPT, *args)
    assert p.returncode == 0, p.stderr
    assert [c[:3] for c in calls].count(["compute", "instances", "create"]) == 1
    argv, disk = _boot_vm(metadata, vm_repo, tmp_path)
    assert argv == [SCRIPT, *args, "--gpus", "1", "--run-dir", "runs/job-1", "--tb-staging", f"{disk}/tb-staging"]


def _skypilot_run(tmp_path, args_env):
    """The YAML's run: section on a stand-in node: the venv's activation skipped, a `python`
    that records its argv first on the PATH, SkyPilot's variables set, ARGS as given."""
    spec = yaml.safe_load(open(os.path.join(LAUNCH, "skypilot.yaml")))
    workdir, bin_dir, record = tmp_path / "workdir", tmp_path / "node-bin", tmp_path / "node-argv.json"
    (workdir / "launch").mkdir(parents=True)
    bin_dir.mkdir()
    for f in os.listdir(LAUNCH):  # SkyPilot's workdir: this checkout's files (launch/ is what run: reads)
        if f.endswith(".sh"):
            shutil.copy(os.path.join(LAUNCH, f), workdir / "launch" / f)
    (workdir / "README.md").write_text("x\n")
    _stand_in(bin_dir / "python", record)
    run = spec["run"].replace(". ~/finsent-venv/bin/activate", "true")
    env = {**os.environ, **{k: str(v) for k, v in spec["envs"].items()}, "ARGS": args_env, "HOME": str(tmp_path),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SKYPILOT_NUM_NODES": "1",
           "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NUM_GPUS_PER_NODE": "4", "SKYPILOT_TASK_ID": "job1"}
    p = subprocess.run(["bash", "-c", run], cwd=workdir, capture_output=True, text=True, env=env, timeout=60)
    assert not list(tmp_path.rglob("pwned"))
    return p, (json.loads(record.read_text(encoding="utf-8")) if record.exists() else None)


@pytest.mark.parametrize("case", CASE_IDS)
def test_skypilot_run_gets_every_argument_as_given(case, tmp_path):
    args = CASES[case]
    p, argv = _skypilot_run(tmp_path, json.dumps(args))  # sky jobs launch ... --env ARGS='[...]'
    assert p.returncode == 0, p.stderr
    assert argv == [SCRIPT, *args, "--gpus", "4", "--run-dir", "/runs/job1", "--tb-staging", f"{tmp_path}/finsent-tb"]


def test_skypilot_refuses_args_that_are_not_a_json_array(tmp_path):
    p, argv = _skypilot_run(tmp_path, "--epochs 3")
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and argv is None and len(lines) == 1, (p.returncode, p.stderr)
    assert "ARGS is not a JSON array of strings: '--epochs 3'" in lines[0] and '["--epochs", "3"]' in lines[0]


def test_a_local_data_file_named_with_a_quote_and_spaces_reaches_the_job(remote, gcloud, vm_repo, tmp_path):
    """desk's data.csv goes to the bucket and the job reads it there, as one argument."""
    (tmp_path / "desk's data.csv").write_text("text,label\nProfit rose .,positive\n")
    common = ["--repo", remote, "--name", "job-1", "--bucket", "gs://b"]
    p, calls, _ = gcloud("vertex_job.sh", *common, "--project", "p", SCRIPT, "--data", "desk's data.csv")
    assert p.returncode == 0, p.stderr
    assert ["storage", "cp", "--recursive", "desk's data.csv", "gs://b/runs/job-1/data/"] in calls
    argv = _spec_args(next(c[1] for c in calls if c[0] == "spec"),
                      f"us-central1-docker.pkg.dev/p/finsent/finsent:{_head()}")[0]
    assert _run_container(argv, tmp_path)[:3] == [SCRIPT, "--data", "/gcs/b/runs/job-1/data/desk's data.csv"]
    p, calls, metadata = gcloud("gcp_vm.sh", *common, SCRIPT, "--data", "desk's data.csv")
    assert p.returncode == 0, p.stderr
    assert ["storage", "cp", "--recursive", "desk's data.csv", "gs://b/runs/job-1/data/"] in calls
    assert _boot_vm(metadata, vm_repo, tmp_path)[0][:3] == [SCRIPT, "--data", "gs://b/runs/job-1/data/desk's data.csv"]


BAD = [  # (launcher, flag, value, what the line says): each refused before anything is created
    ("gcp_vm.sh", "--name", "job;echo X", "Compute Engine instance name"),
    ("vertex_job.sh", "--name", "job;echo X", "Vertex display name and its run folder"),
    ("gcp_vm.sh", "--name", "Finsent_Run", "Compute Engine instance name"),
    ("gcp_vm.sh", "--name", "a" * 64, "1-63"),
    ("vertex_job.sh", "--name", "../x", "run folder"),
    ("gcp_vm.sh", "--bucket", "gs://my bucket", "a bucket is gs://NAME"),
    ("vertex_job.sh", "--bucket", "gs://b\n  imageUri: evil", "a bucket is gs://NAME"),
    ("gcp_vm.sh", "--bucket", "my-bucket", "a bucket is gs://NAME"),
    ("gcp_vm.sh", "--bucket", "gs://google-runs", "google"),
    ("gcp_vm.sh", "--project", "p;touch pwned", "project ID"),
    ("vertex_job.sh", "--region", "us-central1;echo X", "a region is named like us-central1"),
    ("gcp_vm.sh", "--zone", "us-central1", "a zone is named like us-central1-a"),
    ("gcp_vm.sh", "--gpu-type", "NVIDIA_TESLA_T4", "accelerator-types"),
    ("vertex_job.sh", "--gpu-type", "nvidia-tesla-t4", "NVIDIA_TESLA_T4"),
    ("gcp_vm.sh", "--gpus", "BASH_VERSINFO[$(touch pwned)]", "a whole number"),  # bash arithmetic runs $(...)
    ("vertex_job.sh", "--gpus", "0", "a whole number from 1"),
    ("vertex_job.sh", "--workers", "1\n  imageUri: evil", "a whole number from 0"),
    ("gcp_vm.sh", "--machine-type", "n1-standard-8 --metadata=x", "machine-types"),
    ("vertex_job.sh", "--registry", "us-docker.pkg.dev/p/r;echo X", "HOST/PROJECT/REPOSITORY"),
    ("vertex_job.sh", "--image", "us-docker.pkg.dev/p/r/finsent:$(touch pwned)", "a container image"),
    ("gcp_vm.sh", "--image-family", "Common CU", "images list"),
    ("gcp_vm.sh", "--disk", "100GB##finsent-run=x", "disk size"),
    ("gcp_vm.sh", "--service-account", "me", "email address"),
    ("gcp_vm.sh", "--on-failure", "never", "delete, stop or keep"),
    ("gcp_vm.sh", "--max-run-duration", "1 week", "duration"),
    ("gcp_vm.sh", "--ref", "--output=x", "not starting with '-'"),
    ("gcp_vm.sh", "--repo", "--upload-pack=touch pwned", "not a repository URL"),
    ("vertex_job.sh", "--repo", "https://example.invalid/r.git##finsent-run=x", "not a repository URL"),
]


@pytest.mark.parametrize("script, flag, value, says", BAD, ids=[f"{b[0]}{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_a_bad_value_is_one_line_before_anything_is_created(script, flag, value, says, remote, gcloud, tmp_path):
    repo = [] if flag == "--repo" else ["--repo", remote]
    p, calls, _ = gcloud(script, *repo, "--bucket", "gs://b", "--project", "my-project", flag, value, SCRIPT)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr)
    assert lines[0].startswith(f"{script}: {flag} ") and says in lines[0] and "; use " in lines[0], lines[0]
    assert not calls and not p.stdout  # nothing asked of the cloud, nothing created
    assert not list(tmp_path.rglob("pwned"))


def test_a_bad_value_from_the_environment_names_its_variable(gcloud, remote):
    p, calls, _ = gcloud("gcp_vm.sh", "--repo", remote, "--bucket", "gs://b", SCRIPT,
                         env={"CLOUDSDK_COMPUTE_ZONE": "us central1-a"})
    assert p.returncode == 2 and not calls
    assert p.stderr.strip() == ("gcp_vm.sh: --zone 'us central1-a' (from CLOUDSDK_COMPUTE_ZONE): a zone is named like "
                                "us-central1-a; use one that gcloud compute zones list shows")


@pytest.mark.parametrize("script", ["gcp_vm.sh", "vertex_job.sh"])
def test_a_flag_without_its_value_is_one_line(script, gcloud):
    p, calls, _ = gcloud(script, "--bucket", "gs://b", "--name")
    assert p.returncode == 2 and p.stderr.strip() == f"{script}: --name needs a value; see {script} --help"
    assert not calls


def test_a_local_data_file_is_staged_exactly_when_the_training_scripts_read_it_as_own_data(remote, gcloud, tmp_path):
    """One list of formats: launch/stage_data.sh asks common/sources.py (common/texts.py's
    EXTENSIONS), so a file the scripts read as own data (any case of its extension) goes to
    the bucket, and a PhraseBank text file is refused in one line."""
    from common import sources
    for ext in [*sources.EXTENSIONS, ".CSV", ".JsonL"]:
        (tmp_path / f"desk{ext}").write_text("text,label\nProfit rose .,positive\n")
        p, _, _ = gcloud("gcp_vm.sh", "--dry-run", "--repo", remote, "--name", "job-1", SCRIPT, "--data", f"desk{ext}")
        assert p.returncode == 0 and f"gcloud storage cp --recursive desk{ext} gs://YOUR-BUCKET/runs/job-1/data/" \
            in p.stdout, (ext, p.stderr)
    (tmp_path / "Sentences_AllAgree.txt").write_text("Profit rose .@positive\n")
    p, _, _ = gcloud("gcp_vm.sh", "--dry-run", "--repo", remote, SCRIPT, "--data", "Sentences_AllAgree.txt")
    assert p.returncode == 2 and not p.stdout and "not your own labelled data" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
