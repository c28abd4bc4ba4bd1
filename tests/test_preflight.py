"""launch/preflight.sh and the launchers' real (non-dry) path against a stand-in `gcloud`
(tests/gcloud_standin.py) that answers as the real CLI does: each thing the cloud would
refuse ends in one line, with gcloud's own, before anything is created."""
import json
import os
import subprocess
import sys

import pytest

from common import REPO_ROOT
from tests.conftest import head_commit

LAUNCH = os.path.join(REPO_ROOT, "launch")
ALL_CHECKS = ["--bucket", "gs://b", "--zone", "us-central1-a", "--gpu-type", "nvidia-tesla-t4", "--gpus", "4",
              "--image-family", "common-cu129-ubuntu-2204-nvidia-580", "--image-project", "deeplearning-platform-release",
              "--image", "us-docker.pkg.dev/p/finsent/finsent:abc", "--repository", "us-central1-docker.pkg.dev/p/finsent"]


@pytest.fixture
def cloud(tmp_path):
    """run(script, *args, fail=..., quota=...) -> (CompletedProcess, gcloud calls) with the stand-in first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(f"#!/bin/sh\nexec {sys.executable} "
                                    f"{os.path.join(REPO_ROOT, 'tests', 'gcloud_standin.py')} \"$@\"\n")
    (bin_dir / "gcloud").chmod(0o755)
    calls = tmp_path / "calls"

    def run(script, *args, fail="", **quotas):
        calls.write_text("")
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GCLOUD_CALLS": str(calls),
               "GCLOUD_FAIL": fail, "TMPDIR": str(tmp_path), **{f"GCLOUD_{k.upper()}": v for k, v in quotas.items()}}
        p = subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True, text=True, env=env,
                           cwd=REPO_ROOT, timeout=120)
        return p, [json.loads(l) for l in calls.read_text().splitlines()]
    return run


def _one_line(p, script="preflight.sh"):
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stdout, p.stderr)
    assert lines[0].startswith(f"{script}: "), lines
    return lines[0]


def test_preflight_passes_when_the_cloud_has_it_all(cloud):
    p, calls = cloud("preflight.sh", *ALL_CHECKS, "--machine-type", "n1-standard-16", "--spot")
    assert p.returncode == 0, p.stderr
    assert [l.split(":")[1].strip() for l in p.stdout.splitlines()] == ["ok"] * 8
    assert "quota PREEMPTIBLE_NVIDIA_T4_GPUS in region us-central1: 8 free, 4 asked" in p.stdout
    assert "quota CPUS in region us-central1: 22 free, 16 asked" in p.stdout
    assert "quota GPUS_ALL_REGIONS in project: 8 free, 4 asked" in p.stdout
    assert [c[:2] for c in calls] == [["compute", "images"], ["storage", "cp"], ["storage", "rm"],
                                      ["compute", "accelerator-types"], ["compute", "regions"],
                                      ["compute", "machine-types"], ["compute", "project-info"],
                                      ["artifacts", "repositories"], ["artifacts", "docker"]]
    assert calls[1][3].startswith("gs://b/runs/.preflight-") and calls[2][2] == calls[1][3]  # probe written, removed


@pytest.mark.parametrize("fail, ours, theirs", [
    ("family", "image family common-cu129-ubuntu-2204-nvidia-580 in project deeplearning-platform-release does not "
               "resolve", "ERROR: (gcloud.compute.images.describe-from-family) Could not fetch resource: The resource "
                          "'projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580'"
                          " was not found"),
    ("bucket", "cannot write to gs://b", "ERROR: (gcloud.storage.cp) gs://b not found: 404."),
    ("gpu-type", "GPU type nvidia-tesla-t4 is not offered in zone us-central1-a",
     "acceleratorTypes/nvidia-tesla-t4' was not found"),
    ("quota-read", "cannot read the quotas of region us-central1", "Required 'compute.regions.get' permission"),
    ("image", "container image us-docker.pkg.dev/p/finsent/finsent:abc is not in the registry",
     "ERROR: (gcloud.artifacts.docker.images.describe) Image not found.)"),
    ("repository", "Artifact Registry repository us-central1-docker.pkg.dev/p/finsent is not there",
     "NOT_FOUND: Requested entity was not found.); create it: gcloud artifacts repositories create finsent "
     "--repository-format docker --location us-central1 --project p"),
])
def test_preflight_says_what_the_cloud_refused_in_one_line(cloud, fail, ours, theirs):
    line = _one_line(cloud("preflight.sh", *ALL_CHECKS, fail=fail)[0])
    assert ours in line and "(gcloud: " in line and theirs in line, line


def test_preflight_refuses_a_request_beyond_a_quota(cloud):
    line = _one_line(cloud("preflight.sh", *ALL_CHECKS, gpu_quota="2")[0])
    assert "quota NVIDIA_T4_GPUS in region us-central1: 2.0 GPUs, 0.0 in use, 4 asked; request more" in line, line
    line = _one_line(cloud("preflight.sh", *ALL_CHECKS, all_regions_gpus="0")[0])  # a new project's
    assert "quota GPUS_ALL_REGIONS in project: 0.0 GPUs, 0.0 in use, 4 asked" in line, line
    line = _one_line(cloud("preflight.sh", *ALL_CHECKS, "--machine-type", "n1-standard-32")[0])
    assert "quota CPUS in region us-central1: 24.0 vCPUs, 2.0 in use, 32 asked" in line, line
    # a Spot VM without preemptible quota uses the standard one
    p, _ = cloud("preflight.sh", *ALL_CHECKS, "--spot", preemptible_gpu_quota="0")
    assert p.returncode == 0 and "quota NVIDIA_T4_GPUS in region us-central1: 8 free, 4 asked" in p.stdout, p.stderr
    p, _ = cloud("preflight.sh", "--zone", "us-central1-a", "--gpu-type", "nvidia-h100-80gb", "--gpus", "8")
    assert p.returncode == 0 and "lists no NVIDIA_H100_GPUS quota; not checked" in p.stdout  # unknown is not zero


def test_gcp_vm_creates_nothing_when_preflight_fails(cloud, remote):
    p, calls = cloud("gcp_vm.sh", "--repo", remote, "--bucket", "gs://b", "train/full_finetune.py", fail="bucket")
    assert "gcloud: ERROR: (gcloud.storage.cp) gs://b not found: 404." in _one_line(p)
    assert not [c for c in calls if c[:3] == ["compute", "instances", "create"]]
    p, calls = cloud("gcp_vm.sh", "--repo", remote, "--bucket", "gs://b", "train/full_finetune.py")
    assert p.returncode == 0, p.stderr
    create = [c for c in calls if c[:3] == ["compute", "instances", "create"]]
    assert len(create) == 1 and "common-cu129-ubuntu-2204-nvidia-580" in create[0] and "24h" in create[0]


def test_vertex_needs_the_commits_image_or_builds_it(cloud, remote):
    head = head_commit()
    image = f"us-central1-docker.pkg.dev/p/finsent/finsent:{head}"
    args = ["--repo", remote, "--project", "p", "--bucket", "gs://b", "train/full_finetune.py", "--epochs", "1"]
    p, calls = cloud("vertex_job.sh", *args, fail="image")
    line = _one_line(p)
    assert f"container image {image} is not in the registry" in line and "Image not found." in line
    assert "launch/vertex_job.sh --build" in line and not [c for c in calls if c[:2] == ["ai", "custom-jobs"]]
    p, calls = cloud("vertex_job.sh", "--build", *args, fail="image")  # --build: no such check, the image is made
    assert p.returncode == 0, p.stderr
    order = [c[0] + " " + c[1] for c in calls if c[0] != "spec"]
    assert order == ["storage cp", "storage rm", "artifacts repositories", "builds submit", "ai custom-jobs"]
    build = next(c for c in calls if c[0] == "builds")
    assert build[build.index("--substitutions") + 1] == f"_IMAGE={image},_COMMIT={head}"
    spec = next(c[1] for c in calls if c[0] == "spec")
    assert f"imageUri: {image}" in spec and "pip install" not in spec
