"""requirements.txt installs on every Python the README names (the launchers' images run
3.10): pip's own resolver, asked for binary wheels of each Python version on the Linux
platform tags the wheels use. Metadata only (PyPI serves it beside each wheel), so no
wheel is downloaded; it needs the package index, as the install itself does."""
import os
import re
import subprocess
import sys

import pytest

from common import REPO_ROOT

PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64"]


def supported_pythons():
    """The range README.md states, e.g. 'Python 3.10-3.11' -> ['3.10', '3.11']."""
    text = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    lo, hi = re.search(r"Supported: Python 3\.(\d+)-3\.(\d+)", text).groups()
    return [f"3.{m}" for m in range(int(lo), int(hi) + 1)]


def test_readme_names_a_python_range():
    assert supported_pythons() == ["3.10", "3.11"]


@pytest.mark.slow
def test_requirements_resolve_for_every_supported_python(tmp_path):
    """pip's resolver for each supported Python (the versions resolve at once: pip mostly waits
    on the index), plus the CUDA libraries the GPU launchers add on top (tensorflow[and-cuda])."""
    import json
    procs = {}
    for version in supported_pythons():
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--only-binary=:all:", "--python-version", version, "--implementation", "cp",
               "--abi", "cp" + version.replace(".", ""), "--target", str(tmp_path / version / "t"),
               *[x for p in PLATFORMS for x in ("--platform", p)],
               "-r", os.path.join(REPO_ROOT, "requirements.txt"), "tensorflow[and-cuda]==2.15.1",
               "--report", str(tmp_path / f"report-{version}.json")]
        procs[version] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for version, p in procs.items():
        _, stderr = p.communicate(timeout=600)
        errors = [l for l in stderr.splitlines() if l.startswith("ERROR")]
        assert p.returncode == 0 and not errors, f"Python {version}:\n" + "\n".join(errors)[-3000:]
        # The Keras trap (common/env.py): with tf_keras installed, transformers builds its models in
        # tf_keras and compile() rejects our Keras 2.15 optimizer. No requirement may pull it in
        # (tensorflow-hub >= 0.16, a tensorflow-text dependency, does).
        resolved = {i["metadata"]["name"].lower().replace("_", "-")
                    for i in json.loads((tmp_path / f"report-{version}.json").read_text())["install"]}
        assert "tf-keras" not in resolved, f"Python {version}"
        assert {"tensorflow-text", "datasets"} <= resolved and "tensorflow-addons" not in resolved
