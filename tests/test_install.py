"""requirements.txt installs on every Python the README names (3.11-3.13; the Vertex image
runs 3.12, and install.sh brings 3.12 where there is none): pip's own resolver, asked for
binary wheels of each Python version on the Linux platform tags the wheels use. It needs the
package index, as the install itself does. Where the index serves no metadata files beside
the wheels (as where this suite was measured), pip downloads each wheel whole to read its
metadata: ~0.8 GB a Python, and 2.9 GB more for the CUDA libraries, asked once."""
import os
import re
import subprocess
import sys

import pytest

from common import REPO_ROOT

# Every manylinux tag a glibc 2.17-2.35 machine installs (Ubuntu 22.04 has 2.35, Debian 12
# 2.36): pip takes --platform tags literally, and TensorFlow 2.21's wheels are manylinux_2_27.
PLATFORMS = ["manylinux2014_x86_64", *[f"manylinux_2_{m}_x86_64" for m in range(17, 36)]]


def pinned(name: str) -> str:
    """The version requirements.txt pins `name` to, e.g. pinned("tensorflow") -> "2.21.0"."""
    text = open(os.path.join(REPO_ROOT, "requirements.txt"), encoding="utf-8").read()
    return re.search(rf"^{re.escape(name)}==(\S+)", text, re.M).group(1)


TF = pinned("tensorflow")
# The Python of the GPU images (the Dockerfile's base; the DLVM's and Vertex's are the same 3.12)
GPU_IMAGE_PYTHON = re.search(r"^FROM python:(3\.\d+)", open(os.path.join(REPO_ROOT, "launch", "Dockerfile"),
                                                           encoding="utf-8").read(), re.M).group(1)
SUITE = "%d.%d" % sys.version_info[:2]  # the stand-ins' Python: this interpreter (3.12 in the README's setup)


def supported_pythons():
    """The range README.md states, e.g. 'Python 3.11-3.13' -> ['3.11', '3.12', '3.13']."""
    text = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    lo, hi = re.search(r"Supported: Python 3\.(\d+)-3\.(\d+)", text).groups()
    return [f"3.{m}" for m in range(int(lo), int(hi) + 1)]


def test_readme_names_a_python_range():
    assert supported_pythons() == ["3.11", "3.12", "3.13"]


@pytest.mark.slow
def test_requirements_resolve_for_every_supported_python(tmp_path):
    """pip's resolver for each supported Python (the versions resolve at once: pip mostly waits
    on the index), plus the CUDA libraries the GPU launchers add on top (tensorflow[and-cuda])."""
    import json
    procs = {}
    for version in supported_pythons():
        # The CUDA libraries' wheels are the same for every Python (py3-none) and TensorFlow's
        # extra names the same ones in each of its wheels: asked once, for the GPU images' 3.12.
        tensorflow = f"tensorflow[and-cuda]=={TF}" if version == GPU_IMAGE_PYTHON else f"tensorflow=={TF}"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--only-binary=:all:", "--python-version", version, "--implementation", "cp",
               "--abi", "cp" + version.replace(".", ""), "--target", str(tmp_path / version / "t"),
               *[x for p in PLATFORMS for x in ("--platform", p)],
               "-r", os.path.join(REPO_ROOT, "requirements.txt"), tensorflow,
               "--report", str(tmp_path / f"report-{version}.json")]
        procs[version] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for version, p in procs.items():
        _, stderr = p.communicate(timeout=600)
        errors = [l for l in stderr.splitlines() if l.startswith("ERROR")]
        assert p.returncode == 0 and not errors, f"Python {version}:\n" + "\n".join(errors)[-3000:]
        # One Keras, 3.x: nothing may bring back Keras 2 (tf-keras) or transformers' TF classes.
        resolved = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                    for i in json.loads((tmp_path / f"report-{version}.json").read_text())["install"]}
        assert resolved["keras"] == pinned("keras") and resolved["keras-hub"] == pinned("keras-hub"), f"Python {version}"
        assert not {"tf-keras", "transformers", "tensorflow-addons"} & resolved.keys(), f"Python {version}"
        assert {"tensorflow-text", "tensorboard", "safetensors", "datasets"} <= resolved.keys(), f"Python {version}"
        assert ("nvidia-cudnn-cu12" in resolved) == (version == GPU_IMAGE_PYTHON), f"Python {version}"


# ----------------------------------------------------------------------------- launch/install.sh
# The machine is a PATH: the system's tools minus every Python, pip, uv, apt and sudo, plus
# the stand-ins a test puts in front. The stand-ins' venvs see this suite's installed stack
# (tests/standin_venv.py): the install path runs whole, pip only finds nothing to download.
INSTALL = os.path.join(REPO_ROOT, "launch", "install.sh")
STANDIN_VENV = os.path.join(REPO_ROOT, "tests", "standin_venv.py")
NOT_ON_THE_MACHINE = re.compile(r"^(python|pip|pydoc|2to3|idle|uv|uvx|pipx|apt|sudo|nvidia-smi)")
PYTHON_310 = """#!/bin/sh
# python3.10 without venv or pip, as Ubuntu 22.04 before `apt install python3.10-venv`
case "$*" in *version_info*) echo 3.10; exit 0;; esac
echo "/usr/bin/python3.10: No module named ensurepip" >&2; exit 1
"""


def _machine(tmp_path, **standins):
    """A bin folder: links to the system's tools but the excluded ones, and `standins`
    (name -> script text)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in ("/usr/bin", "/bin"):
        for name in os.listdir(folder):
            if not NOT_ON_THE_MACHINE.match(name) and not (bin_dir / name).exists():
                os.symlink(os.path.join(folder, name), bin_dir / name)
    for name, text in standins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def _install(tmp_path, path, *args, **env):
    """launch/install.sh --venv tmp_path/venv ARGS on the machine PATH, with `env` added."""
    env = {"PATH": path, "HOME": str(tmp_path), "TMPDIR": str(tmp_path), **env}
    return subprocess.run(["bash", INSTALL, "--venv", str(tmp_path / "venv"), *args], capture_output=True,
                          text=True, env=env, timeout=600)


def _python_version_and_tensorflow(venv):
    p = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys, tensorflow as tf; "
                        "print('%d.%d' % sys.version_info[:2], tf.__version__)"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout.split()


def _uv(calls):
    """uv, as far as the install path uses it (`uv python install` cannot download here)."""
    return f"""#!/bin/sh
echo "uv $*" >> {calls}
case "$1 $2" in
    "python install") exit 0;;
    "venv --python") [ "$3" = 3.12 ] || exit 2; for last; do :; done; exec {sys.executable} {STANDIN_VENV} "$last";;
esac
exit 2
"""


@pytest.mark.slow  # makes a venv and imports the stack in it: ~20 s
def test_install_gets_python_312_with_uv_where_python3_is_310(tmp_path):
    """Ubuntu 22.04 (its python3 is 3.10, below Keras 3's Requires-Python): uv brings 3.12. The
    stand-in uv's "3.12" venv is this suite's interpreter (tests/standin_venv.py)."""
    calls = tmp_path / "uv-calls"
    path = _machine(tmp_path, python3=PYTHON_310, **{"python3.10": PYTHON_310, "uv": _uv(calls)})
    p = _install(tmp_path, path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert calls.read_text().splitlines() == ["uv python install 3.12", f"uv venv --python 3.12 --seed {tmp_path / 'venv'}"]
    assert "no usable Python 3.11-3.13 here (python3 is 3.10, python3.10 is 3.10)" in p.stdout
    assert _python_version_and_tensorflow(tmp_path / "venv") == [SUITE, TF]


@pytest.mark.slow  # two venvs and the stack imported: ~25 s
def test_install_without_uv_pip_installs_it_into_a_throw_away_venv(tmp_path):
    """A 3.10 that can make venvs (with pip) but no uv: uv is pip-installed into a throw-away
    venv, never into that Python. The package index is a folder holding a uv wheel whose
    `uv` is the stand-in."""
    import zipfile
    calls, index = tmp_path / "uv-calls", tmp_path / "index"
    index.mkdir()
    name = "uv-0.13.9"
    files = {f"{name}.data/scripts/uv": _uv(calls),
             f"{name}.dist-info/METADATA": "Metadata-Version: 2.1\nName: uv\nVersion: 0.13.9\n",
             f"{name}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(index / f"{name}-py3-none-any.whl", "w") as wheel:
        for member, text in files.items():
            info = zipfile.ZipInfo(member)
            info.external_attr = 0o100755 << 16  # a regular file, executable: pip keeps the mode
            wheel.writestr(info, text)
        wheel.writestr(f"{name}.dist-info/RECORD", "".join(f"{m},,\n" for m in [*files, f"{name}.dist-info/RECORD"]))
    python310 = f"""#!/bin/sh
# a 3.10 with venv and pip (its answers but the version are this interpreter's)
case "$*" in *version_info*) echo 3.10; exit 0;; esac
exec {sys.executable} "$@"
"""
    p = _install(tmp_path, _machine(tmp_path, python3=python310), PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "getting uv 0.13.9 (into a throw-away venv)" in p.stdout
    assert calls.read_text().splitlines()[0] == "uv python install 3.12"
    assert _python_version_and_tensorflow(tmp_path / "venv") == [SUITE, TF]
    import importlib.metadata
    assert not [d for d in importlib.metadata.distributions() if d.metadata["Name"] == "uv"]  # not in the Python
    assert not list(tmp_path.glob("finsent-install-*"))  # the throw-away venv is gone


@pytest.mark.parametrize("gpu", ["--gpu", "nvidia-smi"])
def test_install_adds_the_cuda_packages_for_a_gpu_or_when_asked(gpu, tmp_path):
    """--gpu (an image build), or nvidia-smi on the machine, even one that fails (a broken
    driver): pip is asked for tensorflow[and-cuda]. With no package index here, that ends in
    pip's own error, in one line."""
    from tests import standin_venv
    standin_venv.create(str(tmp_path / "venv"))
    broken_driver = "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'; exit 9\n"
    path = _machine(tmp_path, **({"nvidia-smi": broken_driver} if gpu == "nvidia-smi" else {}))
    p = _install(tmp_path, path, *([gpu] if gpu == "--gpu" else []), PIP_NO_INDEX="1")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert lines[0].startswith(f"install.sh: pip could not install requirements.txt and tensorflow[and-cuda]=={TF}: "
                               "ERROR: "), lines


def test_install_without_a_python_it_can_use_nor_uv_nor_pip_is_one_line(tmp_path):
    path = _machine(tmp_path, python3=PYTHON_310)
    p = _install(tmp_path, path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert lines[0].startswith("install.sh: no usable Python 3.11-3.13 here (python3 is 3.10), and no uv or pip"), lines
    assert "install uv (https://docs.astral.sh/uv/" in lines[0] and not (tmp_path / "venv").exists()


@pytest.mark.slow  # makes a venv and imports the stack in it: ~20 s
def test_install_takes_the_newest_python_whatever_its_name(tmp_path):
    """python3 newer than the python3.X beside it (a python3 linked to another install): the venv
    is made with python3, the newest, not with the older one found first by its name. Each
    stand-in reports its version; python3's venv is this suite's interpreter."""
    calls = tmp_path / "venv-calls"

    def python(version):
        return f"""#!/bin/sh
case "$*" in *version_info*) echo {version}; exit 0;; *"import venv, ensurepip"*) exit 0;; esac
[ "$1 $2" = "-m venv" ] && echo "python {version} -m venv" >> {calls} && exec {sys.executable} {STANDIN_VENV} "$3"
exit 2
"""
    path = _machine(tmp_path, python3=python("3.13"), **{"python3.11": python("3.11")})
    p = _install(tmp_path, path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"creating {tmp_path / 'venv'} with {path}/python3 (Python 3.13)" in p.stdout, p.stdout[:2000]
    assert calls.read_text().splitlines() == ["python 3.13 -m venv"]


@pytest.mark.slow  # makes a venv and imports the stack in it: ~20 s
def test_install_puts_the_missing_venv_module_in_with_apt(tmp_path):
    """Ubuntu 24.04: /usr/bin/python3 is python3.12, whose venv module is the separate
    python3.12-venv package. The stand-in is this suite's interpreter (3.12 in the README's
    setup), under its own version's name."""
    marker, calls, name = tmp_path / "venv-module-installed", tmp_path / "apt-calls", f"python{SUITE}"
    python = f"""#!/bin/sh
# the real interpreter, without ensurepip/venv until apt-get has installed {name}-venv
if [ ! -e {marker} ]; then
    case "$*" in *ensurepip*|"-m venv"*) echo "No module named ensurepip" >&2; exit 1;; esac
fi
[ "$1 $2" = "-m venv" ] && exec {sys.executable} {STANDIN_VENV} "$3"
exec {sys.executable} "$@"
"""
    apt_get = f"""#!/bin/sh
echo "apt-get $*" >> {calls}
case "$*" in *" install -y -qq {name}-venv") touch {marker};; esac
"""
    path = _machine(tmp_path, python3=python, **{name: python, "apt-get": apt_get, "sudo": '#!/bin/sh\nexec "$@"\n'})
    p = _install(tmp_path, path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert calls.read_text().splitlines() == ["apt-get -o DPkg::Lock::Timeout=600 update -qq",
                                              f"apt-get -o DPkg::Lock::Timeout=600 install -y -qq {name}-venv"]
    assert f"has no venv module: installing {name}-venv with apt-get" in p.stdout
    assert _python_version_and_tensorflow(tmp_path / "venv") == [SUITE, TF]
    again = _install(tmp_path, path)  # a second boot of the VM: the venv is reused, nothing recreated
    assert again.returncode == 0 and "reusing" in again.stdout and len(calls.read_text().splitlines()) == 2
