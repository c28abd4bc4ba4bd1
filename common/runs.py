"""Run folder layout and atomic writes: a killed run never leaves a half-written file."""
import csv
import datetime
import json
import os
import shutil
import tempfile

# runs/<name>/ layout (see README "What a run writes")
CONFIG = "config.json"
METRICS = "metrics.json"
ERRORS = "errors.csv"
MODEL = "model"
TB = "tb"
BACKUP = "backup"
BEST = "best"  # best-by-validation-macro-F1 weights (TF checkpoint)


def default_run_dir(script: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{script}-{stamp}")


def _atomic(path: str, write) -> None:
    """Write through a temporary file in the same folder, then rename over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"  # fail before touching disk
    _atomic(path, lambda f: f.write(text))


def write_text(path: str, text: str) -> None:
    _atomic(path, lambda f: f.write(text))


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_csv(path: str, header, rows) -> None:
    def write(f):
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)

    _atomic(path, write)


def publish_dir(tmp_dir: str, final_dir: str) -> None:
    """Replace `final_dir` by a fully written `tmp_dir` (rename is atomic on one filesystem)."""
    if os.path.exists(final_dir):
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)


def load_run(run_dir: str) -> dict:
    """The config of a finished run; a clear error if the folder is not one."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        raise SystemExit(f"{run_dir}: not a run folder (no {CONFIG}). Pass a folder under runs/ written by a train script.")
    if not os.path.isdir(os.path.join(run_dir, MODEL)):
        raise SystemExit(f"{run_dir}: the run has no {MODEL}/ folder; it did not finish. Rerun the same command to resume it.")
    return read_json(path)
