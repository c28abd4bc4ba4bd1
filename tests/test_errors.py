"""Every bad input: refused with the FinsentError that names the flag, file or line and the
fix (exit status 2), nothing half-made in the run folder. Each case is the script's main()
in this process; once per script, the real command shows what a user sees: one line on
stderr, exit status 2, no traceback."""
import json
import os
import zipfile

import pytest

from common import config, errors, hub
from tests.conftest import assert_one_line_error, call_main, run_script

GOOD_LINES = ([f"Profits rose {i} percent in quarter {i} .@positive" for i in range(12)]
              + [f"Sales fell {i} percent in quarter {i} .@negative" for i in range(12)]
              + [f"The company has {i} offices in region {i} .@neutral" for i in range(12)])


def _folder(tmp_path, lines=None, raw: bytes = None, name="Sentences_AllAgree.txt"):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(raw if raw is not None else "\r\n".join(lines).encode("latin-1"))
    return str(folder)


def _own_file(tmp_path):
    path = tmp_path / "own.csv"
    path.write_text("text,label\n" + "\n".join(l.replace("@", ",") for l in GOOD_LINES) + "\n", encoding="utf-8")
    return str(path)


def _fake_run(tmp_path, **flags):
    run = tmp_path / "earlier"
    (run / "model").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"script": "full_finetune.py", "flags": {**config.Config().to_dict(),
                                                                                          **flags}}))
    return str(run)


def _run_of_another_shape(tmp_path, tiny):
    """A finished-looking run whose model/ (a KerasHub preset, as a run writes it) says 64
    wide in its config.json while its weights are 32 wide."""
    from common import models, phrasebank
    run = _fake_run(tmp_path)
    model_dir = os.path.join(run, "model")
    models.build_classifier(tiny, phrasebank.LABELS).save_to_folder(model_dir, models.load_tokenizer(tiny))
    cfg_path = os.path.join(model_dir, "config.json")
    cfg = json.load(open(cfg_path))
    assert cfg["config"]["hidden_dim"] == 32
    cfg["config"].update(hidden_dim=64, intermediate_dim=128)
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


USAGE = SystemExit  # argparse's own refusals (config.ArgumentParser.error): one line, exit status 2

# (id, script, args(tmp_path, tiny, data_dir) -> list, what is raised, what its one line must say)
CASES = [
    ("malformed-line", "train/full_finetune.py",
     lambda t, m, d: ["--data", _folder(t, GOOD_LINES + ["a line without a label"])], errors.DataError,
     "Sentences_AllAgree.txt:37: expected 'sentence@label'"),
    ("unknown-label", "train/full_finetune.py",
     lambda t, m, d: ["--data", _folder(t, GOOD_LINES[:5] + ["Shares jumped .@bullish"])], errors.DataError,
     ":6: unknown label 'bullish'; expected one of negative, neutral, positive"),
    ("empty-file", "train/full_finetune.py", lambda t, m, d: ["--data", _folder(t, raw=b"\r\n\r\n")], errors.DataError,
     "Sentences_AllAgree.txt: no sentences found"),
    ("binary-garbage", "train/full_finetune.py",
     lambda t, m, d: ["--data", _folder(t, raw="Profit rose .@positive".encode("utf-16"))], errors.DataError,
     "binary data (a NUL byte at byte 3); expected latin-1 text lines"),
    ("zip-without-release", "train/full_finetune.py", lambda t, m, d: ["--data", _zip_without_release(t)],
     errors.DataError, "no Sentences_*Agree.txt files in it"),
    ("missing-data", "train/full_finetune.py", lambda t, m, d: ["--data", str(t / "nowhere")], errors.DataError,
     "no such file or folder; pass the release folder, its zip, or 'hub'"),
    ("missing-model", "train/full_finetune.py", lambda t, m, d: ["--model", str(t / "no-model")], errors.ModelError,
     "--model {tmp}/no-model: no such folder; pass a model folder (config.json, model.safetensors, vocab.txt, "
     "tokenizer_config.json), a run's model/ folder, or a Hub id"),
    ("init-from-not-a-run", "train/full_finetune.py", lambda t, m, d: ["--init-from", str(t)], errors.RunDirError,
     "--init-from {tmp}: not a run folder (no config.json)"),
    ("init-from-other-architecture", "train/full_finetune.py",
     lambda t, m, d: ["--init-from", _fake_run(t, head="custom")], errors.ModelError,
     "that run has a custom head, and --head is library; pass --head custom"),
    ("init-from-weights-do-not-load", "train/full_finetune.py",
     lambda t, m, d: ["--init-from", _run_of_another_shape(t, m), "--train-examples", "64"], errors.ModelError,
     "its weights do not load as a sequence classifier (ValueError: A total of"),
    ("tb-staging-in-the-run-folder", "tune/lr_search.py", lambda t, m, d: ["--tb-staging", str(t / "run" / "tb")],
     errors.FlagError, "--tb-staging {tmp}/run/tb: give a local folder outside the run folder"),
    ("batch-not-divisible", "train/full_finetune.py", lambda t, m, d: ["--cpu-replicas", "2", "--batch-size", "33"],
     errors.FlagError, "--batch-size 33: must be a positive multiple of the 2 replicas"),
    ("eval-every-in-a-search", "tune/lr_search.py",  # refused before the data is read: --data is missing
     lambda t, m, d: ["--eval-every", "5", "--data", str(t / "nowhere")], errors.FlagError,
     "--eval-every: the tuners validate once per epoch; leave it out of the search, and add it to the "
     "train/full_finetune.py command"),
    ("bad-head-hidden", "train/custom_head.py", lambda t, m, d: ["--head-hidden", "256,abc"], errors.FlagError,
     "--head-hidden '256,abc': expected comma-separated layer sizes"),
    ("inverted-lr-range", "tune/lr_search.py", lambda t, m, d: ["--lr-range", "1e-3,1e-5"], USAGE,
     "--lr-range '1e-3,1e-5': expected LOW,HIGH with 0 < LOW < HIGH"),
    ("unknown-experiment", "eval/reproduce_study.py", lambda t, m, d: ["--experiments", "head,bogus"], USAGE,
     "--experiments: unknown ['bogus']"),
    ("unknown-recipe", "eval/benchmark.py", lambda t, m, d: ["--recipes", "notebook,fast"], USAGE,
     "--recipes: unknown ['fast']"),
    ("empty-label-column", "train/full_finetune.py",  # every row would have read as unlabelled
     lambda t, m, d: ["--data", _own_file(t), "--label-column", ""], errors.FlagError,
     "--label-column '': name the column / field holding each row's label (default: label)"),
    ("unwritable-run-dir", "train/full_finetune.py",
     lambda t, m, d: ["--run-dir", str(t / "a-file" / "run")], errors.RunDirError,
     "a-file is a file, not a folder); pass a folder you can write to"),
    ("too-many-gpus", "train/full_finetune.py", lambda t, m, d: ["--gpus", "2"], errors.FlagError,
     "--gpus 2: this machine has 0 GPU(s) visible to TensorFlow"),
    ("class-missing", "train/full_finetune.py",
     lambda t, m, d: ["--data", _folder(t, [l for l in GOOD_LINES if not l.endswith("negative")])], errors.DataError,
     "the training split has no negative sentences"),
    ("run-dir-of-another-run", "train/full_finetune.py",
     lambda t, m, d: ["--run-dir", _existing_run_with_other_flags(t, m, d)], errors.RunDirError,
     "holds a run made with other flags (--lr 0.003 -> 0.0001); rerun its own command to resume it"),
    ("evaluate-not-a-run", "eval/evaluate.py", lambda t, m, d: [str(t)], errors.RunDirError,
     "run folder {tmp}: not a run folder (no config.json)"),
    ("evaluate-missing-folder", "eval/evaluate.py", lambda t, m, d: [str(t / "no-such-run")], errors.RunDirError,
     "run folder {tmp}/no-such-run: no such folder; pass a run folder"),
]
# the one case per script run as a user runs it (a fresh interpreter each: seconds apiece)
AS_A_USER = ["malformed-line", "bad-head-hidden", "inverted-lr-range", "unknown-experiment", "unknown-recipe",
             "evaluate-missing-folder"]
assert sorted({c[1] for c in CASES}) == sorted({c[1] for c in CASES if c[0] in AS_A_USER})  # every script, once
assert len(AS_A_USER) == len({c[1] for c in CASES})


def _command(case, tiny, data_dir, tmp_path):
    """The case's arguments completed into a valid command (the run folder under tmp_path)."""
    name, script, make_args, *_ = case
    (tmp_path / "a-file").write_text("a file, not a folder")
    args = make_args(tmp_path, tiny, data_dir)
    defaults = {"--model": tiny, "--data": data_dir, "--run-dir": str(tmp_path / "run")}
    if script.startswith(("train/", "tune/")):  # the rest of a valid command
        args = args + [x for k, v in defaults.items() if k not in args for x in (k, v)] + ["--epochs", "1"]
    elif script in ("eval/reproduce_study.py", "eval/benchmark.py"):
        args = args + ["--model", tiny, "--data", data_dir, "--out", str(tmp_path / "run")]
    return args


def _left_nothing(name, tmp_path):
    run = tmp_path / "run"
    if name != "run-dir-of-another-run":  # refused before anything is written: not even the folder
        assert not run.exists(), sorted(os.listdir(run))
    else:  # the other run's folder is as it was
        assert sorted(os.listdir(run)) == ["config.json"]


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, as common/hub.py reads it (its reachability probe is cached per process)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.reachable.cache_clear()
    yield
    monkeypatch.undo()
    hub.reachable.cache_clear()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_its_error_naming_the_fix_and_leaves_nothing(case, tiny_distilbert, data_dir, tmp_path,
                                                                       offline, capsys):
    name, script, _, raised, message = case
    args = _command(case, tiny_distilbert, data_dir, tmp_path)
    with pytest.raises(raised) as e:
        call_main(script, *args)
    if raised is USAGE:  # argparse printed the one line itself
        assert e.value.code == 2
        lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
        assert len(lines) == 1 and ": error: " in lines[0] and message in lines[0], lines
    else:
        assert e.value.exit_code == 2
        assert message.format(tmp=tmp_path) in str(e.value), str(e.value)
        assert "\n" not in str(e.value)  # errors.run prints it as one line
    _left_nothing(name, tmp_path)


# seconds apiece (TensorFlow starts): the quick tier keeps full_finetune's and evaluate's
SLOW_AS_A_USER = ("bad-head-hidden", "inverted-lr-range")


@pytest.mark.parametrize("case", [pytest.param(c, id=c[1], marks=[pytest.mark.slow] if c[0] in SLOW_AS_A_USER else [])
                                  for c in CASES if c[0] in AS_A_USER])
def test_a_user_sees_one_line_exit_2_and_no_traceback(case, tiny_distilbert, data_dir, tmp_path):
    name, script, _, _, message = case
    args = _command(case, tiny_distilbert, data_dir, tmp_path)
    p = run_script(script, *args, check=False, timeout=300, env_extra={"HF_HUB_OFFLINE": "1"}, user_env=True)
    assert_one_line_error(p, script, message.format(tmp=tmp_path))
    _left_nothing(name, tmp_path)


def test_a_name_with_a_line_break_stays_in_the_one_line(tmp_path):
    """What a user passed is quoted in the error as given, a line break in it shown as \\n:
    the error stays one line (eval/predict.py refuses a missing run folder before TensorFlow
    starts; every script prints its errors through errors.run)."""
    name = tmp_path / 'no\nsuch "$(touch pwned)"\r'
    p = run_script("eval/predict.py", name, "--input", "-", check=False, cwd=tmp_path)
    assert_one_line_error(p, "eval/predict.py", str(name).replace("\n", "\\n").replace("\r", "\\r") + ": no such folder")
    assert not (tmp_path / "pwned").exists()


def test_a_full_disk_naming_a_file_with_a_line_break_is_one_line(capsys):
    """errors.run's full-disk line names the file being written as given, its line break
    shown as \\n (the other error lines do the same: the test above)."""
    import errno

    def main():
        raise OSError(errno.ENOSPC, "No space left on device", "runs/a\nb/model.weights.h5")
    with pytest.raises(SystemExit) as e:
        errors.run(main)
    lines = capsys.readouterr().err.splitlines()
    assert e.value.code == 1 and len(lines) == 1, lines
    assert "the disk is full writing runs/a\\nb/model.weights.h5 (" in lines[0], lines[0]
