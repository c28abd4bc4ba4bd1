"""Every bad input, through the script a user runs: one line on stderr naming the flag,
file or line and the fix; exit status 2; no traceback; nothing half-made in the run folder."""
import json
import os
import zipfile

import pytest

from common import config
from tests.conftest import run_script

GOOD_LINES = ([f"Profits rose {i} percent in quarter {i} .@positive" for i in range(12)]
              + [f"Sales fell {i} percent in quarter {i} .@negative" for i in range(12)]
              + [f"The company has {i} offices in region {i} .@neutral" for i in range(12)])


def _folder(tmp_path, lines=None, raw: bytes = None, name="Sentences_AllAgree.txt"):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(raw if raw is not None else "\r\n".join(lines).encode("latin-1"))
    return str(folder)


def _fake_run(tmp_path, **flags):
    run = tmp_path / "earlier"
    (run / "model").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"script": "full_finetune.py", "flags": {**config.Config().to_dict(),
                                                                                          **flags}}))
    return str(run)


def _run_of_another_shape(tmp_path, tiny):
    """A finished-looking run whose model/ config says 64 wide while its weights are 32 wide."""
    import shutil
    run = _fake_run(tmp_path)
    shutil.rmtree(os.path.join(run, "model"))
    shutil.copytree(tiny, os.path.join(run, "model"))
    cfg_path = os.path.join(run, "model", "config.json")
    cfg = json.load(open(cfg_path))
    cfg.update(dim=64, hidden_dim=128)
    json.dump(cfg, open(cfg_path, "w"))
    return run


def _zip_without_release(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("README.txt", "not the release")
    return str(path)


def _existing_run_with_other_flags(tmp_path, tiny, data_dir):
    run = tmp_path / "run"
    run.mkdir()
    flags = {**config.Config().to_dict(), "model": tiny, "data": data_dir, "run_dir": str(run), "lr": 0.003, "epochs": 1}
    (run / "config.json").write_text(json.dumps({"script": "full_finetune.py", "flags": flags}))
    return str(run)


# (id, script, args(tmp_path, tiny, data_dir) -> list, what the one line must say)
CASES = [
    ("malformed-line", "train/full_finetune.py",
     lambda t, m, d: ["--data", _folder(t, GOOD_LINES + ["a line without a label"])],
     "Sentences_AllAgree.txt:37: expected 'sentence@label'"),
    ("unknown-label", "train/full_finetune.py",
     lambda t, m, d: ["--data", _folder(t, GOOD_LINES[:5] + ["Shares jumped .@bullish"])],
     ":6: unknown label 'bullish'; expected one of negative, neutral, positive"),
    ("empty-file", "train/full_finetune.py", lambda t, m, d: ["--data", _folder(t, raw=b"\r\n\r\n")],
     "Sentences_AllAgree.txt: no sentences found"),
    ("binary-garbage", "train/full_finetune.py",
     lambda t, m, d: ["--data", _folder(t, raw="Profit rose .@positive".encode("utf-16"))],
     "binary data (a NUL byte at byte 3); expected latin-1 text lines"),
    ("zip-without-release", "train/full_finetune.py", lambda t, m, d: ["--data", _zip_without_release(t)],
     "no Sentences_*Agree.txt files in it"),
    ("missing-data", "train/full_finetune.py", lambda t, m, d: ["--data", str(t / "nowhere")],
     "no such file or folder; pass the release folder, its zip, or 'hub'"),
    ("missing-model", "train/full_finetune.py", lambda t, m, d: ["--model", str(t / "no-model")],
     "not found offline (HFValidationError); pass --model PATH to a local model folder"),
    ("init-from-not-a-run", "train/full_finetune.py", lambda t, m, d: ["--init-from", str(t)],
     "--init-from " + "{tmp}: not a run folder (no config.json)"),
    ("init-from-other-architecture", "train/full_finetune.py",
     lambda t, m, d: ["--init-from", _fake_run(t, head="custom")],
     "that run has a custom head, and --head is library; pass --head custom"),
    ("init-from-weights-do-not-load", "train/full_finetune.py",
     lambda t, m, d: ["--init-from", _run_of_another_shape(t, m), "--train-examples", "64"],
     "its weights do not load as a sequence classifier (ValueError: cannot reshape array"),
    ("batch-not-divisible", "train/full_finetune.py", lambda t, m, d: ["--cpu-replicas", "2", "--batch-size", "33"],
     "--batch-size 33: must be a positive multiple of the 2 replicas"),
    ("bad-head-hidden", "train/custom_head.py", lambda t, m, d: ["--head-hidden", "256,abc"],
     "--head-hidden '256,abc': expected comma-separated layer sizes"),
    ("inverted-lr-range", "tune/lr_search.py", lambda t, m, d: ["--lr-range", "1e-3,1e-5"],
     "--lr-range '1e-3,1e-5': expected LOW,HIGH with 0 < LOW < HIGH"),
    ("unknown-experiment", "eval/reproduce_study.py", lambda t, m, d: ["--experiments", "head,bogus"],
     "--experiments: unknown ['bogus']"),
    ("unknown-recipe", "eval/benchmark.py", lambda t, m, d: ["--recipes", "notebook,fast"],
     "--recipes: unknown ['fast']"),
    ("unwritable-run-dir", "train/full_finetune.py",
     lambda t, m, d: ["--run-dir", str(t / "a-file" / "run")],
     "a-file is a file, not a folder); pass a folder you can write to"),
    ("too-many-gpus", "train/full_finetune.py", lambda t, m, d: ["--gpus", "2"],
     "--gpus 2: this machine has 0 GPU(s) visible to TensorFlow"),
    ("class-missing", "train/full_finetune.py",
     lambda t, m, d: ["--data", _folder(t, [l for l in GOOD_LINES if not l.endswith("negative")])],
     "the training split has no negative sentences"),
    ("run-dir-of-another-run", "train/full_finetune.py",
     lambda t, m, d: ["--run-dir", _existing_run_with_other_flags(t, m, d)],
     "holds a run made with other flags (--lr 0.003 -> 0.0001); rerun its own command to resume it"),
    ("evaluate-not-a-run", "eval/evaluate.py", lambda t, m, d: [str(t)],
     "run folder {tmp}: not a run folder (no config.json)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tiny_distilbert, data_dir, tmp_path):
    name, script, make_args, message = case
    (tmp_path / "a-file").write_text("a file, not a folder")
    args = make_args(tmp_path, tiny_distilbert, data_dir)
    defaults = {"--model": tiny_distilbert, "--data": data_dir, "--run-dir": str(tmp_path / "run")}
    if script.startswith(("train/", "tune/")):  # the rest of a valid command
        args = args + [x for k, v in defaults.items() if k not in args for x in (k, v)] + ["--epochs", "1"]
    elif script == "eval/reproduce_study.py":
        args = args + ["--model", tiny_distilbert, "--data", data_dir, "--out", str(tmp_path / "run")]
    p = run_script(script, *args, check=False, timeout=300, env_extra={"HF_HUB_OFFLINE": "1"}, user_env=True)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{os.path.basename(script)}: error: "), lines[0]
    assert message.format(tmp=tmp_path) in lines[0], lines[0]
    run = tmp_path / "run"
    if name != "run-dir-of-another-run":  # refused before anything is written: not even the folder
        assert not run.exists(), sorted(os.listdir(run))
    else:  # the other run's folder is as it was
        assert sorted(os.listdir(run)) == ["config.json"]
