"""Run folder layout and atomic writes: a killed run never leaves a half-written file."""
import csv
import datetime
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile

from common import errors
from common.errors import RunDirError

# runs/<name>/ layout (docs/run-folder.md)
CONFIG = "config.json"
METRICS = "metrics.json"
ERRORS = "errors.csv"
MODEL = "model"
SERVING = "serving"  # the serving SavedModel (common/serving.py)
TB = "tb"
BACKUP = "backup"
BEST = "best"  # the best epoch's weights by --select-metric (model.weights.h5) and best.json (its epoch and value)
EPOCHS = "epochs.json"  # each finished epoch's logs
LOCK = "run.lock"  # who writes the folder now, while it does (common/run_lock.py)
TRIALS = "trials"  # a search folder's keras-tuner project: its trials and the tuner's state (common/tuning.py)
STAGED_DATA = "data"  # a cloud job's local --data, copied into its run folder before it starts (launch/stage_data.sh)


def default_run_dir(script: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{script}-{stamp}")


def atomic_write(path: str, write, binary: bool = False, temp_prefix: str = None) -> None:
    """Call write(f) on a temporary file in the same folder, then rename it over `path`:
    a killed process leaves the old file or the new one, never half of one (the temporary
    one, named `temp_prefix`... or .<name>...tmp, may stay). The file gets the umask's mode,
    or the mode of the file it replaces."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix or "." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        # mkstemp makes it 0600: a shared folder's readers need the usual mode (a replaced file keeps its own)
        os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else 0o666 & ~UMASK)
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and not e.filename:  # a full disk's error names no file: name it
            raise OSError(e.errno, e.strerror, path) from e
        raise


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: once, at import, before any thread
    os.umask(mask)
    return mask


UMASK = _read_umask()


def write_json(path: str, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"  # fail before touching disk
    atomic_write(path, lambda f: f.write(text))


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_bytes(path: str, content: bytes) -> None:
    """E.g. a PNG from metrics.figure_png."""
    atomic_write(path, lambda f: f.write(content), binary=True)


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_csv(path: str, header, rows) -> None:
    def write(f):
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)

    atomic_write(path, write)


def aside_of(final_dir: str) -> str:
    """Where publish_dir keeps the earlier folder while the new one is renamed in: hidden, so
    that no folder of the user's (a model.old of their own) is taken for it."""
    return os.path.join(os.path.dirname(final_dir), "." + os.path.basename(final_dir) + ".old")


def staging_dir(final_dir: str) -> str:
    """An empty folder beside `final_dir` (<final>.tmp) to write it in, for publish_dir. What a
    stopped export left is tidied first: its half-written folder removed, and an earlier
    <final> that a kill between publish_dir's two renames left aside (aside_of) put back."""
    tmp, aside = final_dir + ".tmp", aside_of(final_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    if os.path.isdir(aside):
        if os.path.lexists(final_dir):
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, final_dir)
    return tmp


def publish_dir(tmp_dir: str, final_dir: str, aside: str = None) -> None:
    """Replace `final_dir` by a fully written `tmp_dir`. A folder cannot be renamed over a
    non-empty one, so the earlier one moves aside (to `aside`, default aside_of) first and
    is removed only once the new one is in place; a failed rename puts it back and raises.
    The caller keeps other writers out: a run folder's run lock; eval/publish.py, where
    several processes may publish to one folder, its lock on the parent and an aside name
    of its own (tagged with its pid, for its leftovers' cleanup)."""
    aside = aside or aside_of(final_dir)
    moved = os.path.lexists(final_dir)
    if moved:
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final_dir, aside)
    try:
        os.replace(tmp_dir, final_dir)
    except OSError:
        if moved and not os.path.lexists(final_dir):
            os.replace(aside, final_dir)
        raise
    if moved:
        shutil.rmtree(aside, ignore_errors=True)


def load_run(run_dir: str, flag: str = "run folder", need_model: bool = True) -> dict:
    """The config.json of a finished run (need_model: with its model/ folder), checked: an
    object with the run's script and flags, the flags its readers use of the right type and
    range. A clear error (one line: the file, what is wrong, the fix) if it is not one."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.isdir(run_dir):
        raise RunDirError(f"{flag} {run_dir}: no such folder; pass a run folder, e.g. one under runs/ "
                          f"(ls runs/), written by a train script")
    if not os.path.exists(path):
        raise RunDirError(f"{flag} {run_dir}: not a run folder (no {CONFIG}); pass a folder under runs/ written by a "
                          f"train script")
    if need_model and not os.path.isdir(os.path.join(run_dir, MODEL)):
        raise RunDirError(f"{flag} {run_dir}: the run has no {MODEL}/ folder, it did not finish; rerun its command "
                          f"to resume it")
    fix = f"restore the {CONFIG} its train script wrote (e.g. from a copy of the run folder)"
    config = read_run_json(path, fix)
    for key, kind in (("script", str), ("flags", dict), ("resolved", dict)):
        if not isinstance(config.get(key, {} if key == "resolved" else None), kind):  # (older runs: no 'resolved')
            raise bad_field(path, key, config.get(key), "a string" if kind is str else "an object", fix)
    import dataclasses
    from common import sources
    from common.config import Config
    flags, fields = run_flags(config), {f.name: f for f in dataclasses.fields(Config)}
    for name in ("data", "agreement", "extra_agreement", "split", "max_length", "labels", "label_map", "text_column",
                 "label_column", "head"):  # the flags eval scripts, summaries and --init-from read
        value, default, choices = getattr(flags, name), fields[name].default, fields[name].metadata.get("choices")
        if type(value) is not type(default):
            expected = "a whole number" if type(default) is int else "a string"
        elif choices and value not in choices:
            expected = f"one of {', '.join(choices)}"
        elif name == "max_length" and value < 1:
            expected = "a number of tokens, at least 1"
        elif name == "labels" and len(set(sources.labels_of(flags))) < 2:
            expected = "two or more different class names, comma-separated"
        elif name == "data" and not value:
            expected = "a file, a folder or 'hub'"
        else:
            continue
        raise bad_field(path, f"flags.{name}", value, expected, fix)
    return config


def read_run_json(path: str, fix: str) -> dict:
    """A run folder's JSON file that must hold an object (config.json, metrics.json,
    calibration.json): cut short, not JSON or not an object is one line naming it and `fix`."""
    try:
        obj = read_json(path)
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing; {fix}") from None
    except ValueError as e:  # (UnicodeDecodeError included)
        raise RunDirError(f"{path}: not valid JSON, cut short or edited ({e}); {fix}") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path}: a JSON {type(obj).__name__}, expected an object; {fix}")
    return obj


def bad_field(path: str, field: str, value, expected: str, fix: str) -> RunDirError:
    """The one line for a field of a run folder's JSON file that is not as its run wrote it."""
    return RunDirError(f"{path}: {field} is {json.dumps(value)[:60]}, expected {expected}; {fix}")


# ----------------------------------------------------------------------------- run metadata

# Flags that change neither what trains nor how: a rerun may change them and still resume.
# where logs go, what the model card says, and --restore-prior (decided once training is done): not what trains
# and --serving (an export after training: eval/export.py can add it to any finished run)
RESUMABLE_CHANGES = ("run_dir", "log_every_steps", "tb_staging", "tb_copy_every", "license", "restore_prior",
                     "serving")


# Flags added with a default that changed what runs do: runs made before them ran with this value.
BEFORE_FLAG = {"restore_prior": "off"}


def run_flags(config: dict):
    """A run's flags (a Config) from its config.json; a flag added after the run was made
    counts as its default (the run ran with it), or as BEFORE_FLAG says where the default
    changed behaviour."""
    from common.config import Config
    return Config.from_dict({**BEFORE_FLAG, **config.get("flags", {})})


def check_writable(run_dir: str) -> None:
    """Refuse a run folder that cannot be written (before anything is created)."""
    existing = os.path.abspath(run_dir)  # checked without creating anything: a refused run leaves no folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise RunDirError(f"--run-dir {run_dir}: cannot write there ({existing} is a file, not a folder); "
                          f"pass a folder you can write to")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"--run-dir {run_dir}: cannot write there (no write permission on {existing}); "
                          f"pass a folder you can write to")


def check_holds_only_ours(run_dir: str, ours, flag: str = "--run-dir") -> None:
    """Refuse a folder that holds anything but `ours` (the names a run or search writes there)
    and hidden files (a run's temporary ones, .DS_Store: a run writes no name of that kind a user
    would own): a folder of the user's own (a run would replace its README.md, model/ and
    serving/, and remove its backup/). Called where the folder holds no run or search yet; a
    run killed before config.json left only its own names, and resumes."""
    if not os.path.isdir(run_dir):
        return
    foreign = sorted(n for n in os.listdir(run_dir) if n not in ours and not n.startswith("."))
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise RunDirError(f"{flag} {run_dir}: holds files that are not a run's ({shown}); a run writes its "
                          f"README.md, model/, serving/ and backup/ there: pass a new or empty folder (rerunning "
                          f"a run's own command resumes it)")


def prepare_run_dir(run_dir: str, flags: dict = None, script: str = "") -> None:
    """Refuse a run folder that holds a run made with other flags (rerunning the same command
    resumes it; other flags would silently resume it under them)."""
    path = os.path.join(run_dir, CONFIG)
    if flags is None or not os.path.exists(path):
        return
    old = read_run_json(path, "pass a new --run-dir, or restore the file to resume the run")
    if not isinstance(old.get("flags", {}), dict):
        raise bad_field(path, "flags", old["flags"], "an object", "pass a new --run-dir")
    old_flags = run_flags(old).to_dict()  # older run folders resume
    differ = sorted(k for k in set(flags) | set(old_flags)
                    if k not in RESUMABLE_CHANGES and old_flags.get(k) != flags.get(k))
    if old.get("script") not in (None, script):
        differ.insert(0, "script")
    if differ:
        shown = ", ".join(f"--{k.replace('_', '-')} {old_flags.get(k, old.get(k))!r} -> {flags.get(k, script)!r}"
                          for k in differ[:6])
        raise RunDirError(f"--run-dir {run_dir}: holds a run made with other flags ({shown}"
                          f"{', ...' if len(differ) > 6 else ''}); rerun its own command to resume it "
                          f"(config.json 'argv'), or pass a new --run-dir to start fresh")


def finished(run_dir: str) -> bool:
    """The run in this folder finished: metrics.json, written last, is there (with model/)."""
    return os.path.exists(os.path.join(run_dir, METRICS)) and os.path.isdir(os.path.join(run_dir, MODEL))


def require_finished(run_dir: str, flag: str = "run folder") -> None:
    """One line for a run stopped after model/ but before metrics.json (written last): what
    reads its figures (the model card, a publish) needs them; its own command finishes it.
    Called after load_run, which refuses a folder without model/ in its own words."""
    if not finished(run_dir):
        raise RunDirError(f"{flag} {run_dir}: the run did not finish (no {METRICS}, which is written last); rerun "
                          f"its command (config.json 'argv') to finish it")


def check_data_files(run_dir: str, now: dict, flag: str = "--run-dir",
                     fix: str = "restore the file to resume, or pass a new --run-dir", config: dict = None) -> None:
    """A run on own data resumes, and is evaluated, only on the files it started with
    (config.json's sha256s; `config`: the run's, already read by load_run). `fix`: what the
    caller's user can do about a changed file."""
    path = os.path.join(run_dir, CONFIG)
    if config is None:
        if not os.path.exists(path):
            return
        config = read_json(path)
    before = config.get("resolved", {}).get("data_files") or {}
    if not isinstance(before, dict) or not all(isinstance(v, str) for v in before.values()):
        raise bad_field(path, "resolved.data_files", before, "an object {path: sha256}",
                        f"restore the {CONFIG} its train script wrote")
    changed = sorted(p for p in set(before) | set(now) if before.get(p) != now.get(p))
    if changed:
        raise RunDirError(f"{flag} {run_dir}: its run began on other data ({changed[0]} "
                          f"{'changed' if changed[0] in before and changed[0] in now else 'differs'}: sha256 "
                          f"{(before.get(changed[0]) or 'none')[:12]} -> {(now.get(changed[0]) or 'none')[:12]}); "
                          f"{fix}")


def versions() -> dict:
    """Installed versions of the stack (read from metadata: importing them costs seconds)."""
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "keras-hub", "keras-tuner", "tensorflow-text", "tensorboard",
                "huggingface-hub", "safetensors", "datasets", "scikit-learn", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str:
    """HEAD of this checkout (+dirty), or in the project image, which has no git history, the
    commit it was built from (launch/Dockerfile sets FINSENT_GIT_COMMIT)."""
    from common import REPO_ROOT as repo
    if not os.path.isdir(os.path.join(repo, ".git")) and os.environ.get("FINSENT_GIT_COMMIT"):
        return os.environ["FINSENT_GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
        # --no-optional-locks: reading the status must not rewrite the checkout's .git/index
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("+dirty" if dirty and head else "") if head else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def write_config(run_dir: str, flags: dict, script: str, resolved: dict, devices: list) -> None:
    """config.json: every flag, what the harness resolved, the stack's versions, the commit."""
    write_json(os.path.join(run_dir, CONFIG), {
        "script": script, "argv": sys.argv[1:], "flags": flags, "resolved": resolved,
        "devices": devices, "versions": versions(), "git_commit": git_commit(),
    })


def finished_by(run_dir: str, command) -> bool:
    """The run in run_dir finished (metrics.json: model/ may have been deleted to save space, a
    study's table needs only the figures), made by this command ([python, script, flags...]:
    config.json's script and argv) on the data files it trained on (their sha256s). A study
    skips such a step; any other step runs, so that the train script resumes it, or refuses in
    one line a run made with other flags or on a file changed since (a study rerun with other
    flags would otherwise report the old runs under the new command)."""
    if not os.path.exists(os.path.join(run_dir, METRICS)):
        return False
    from common import sources
    try:
        config = read_json(os.path.join(run_dir, CONFIG))
        if (config.get("argv") != [str(c) for c in command[2:]]
                or os.path.basename(str(config.get("script"))) != os.path.basename(str(command[1]))):
            return False
        files = (config.get("resolved") or {}).get("data_files") or {}
        return all(sources.file_sha256(path) == digest for path, digest in files.items())
    except (OSError, ValueError, AttributeError, TypeError):  # gone, or edited by hand: the train script says what
        return False


def run_study_steps(steps) -> None:
    """Run each step (description, run folder, command) of a study in order, skipping those
    whose run folder holds the run its command finished (finished_by): rerunning a study
    resumes it. The commands are project scripts; one that fails stops the study with its exit
    status (errors.run_child)."""
    import time
    t_start = time.time()
    for k, (what, run_dir, cmd) in enumerate(steps, 1):
        if finished_by(run_dir, cmd):
            print(f"[{k}/{len(steps)}] {what}: done already")
            continue
        print(f"[{k}/{len(steps)}] {what} ({time.time() - t_start:.0f}s so far): " + errors.shell_join(map(str, cmd[1:])),
              flush=True)
        errors.run_child(cmd)
