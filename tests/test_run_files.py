"""A finished run folder's files edited or broken by hand, as a user might: config.json,
calibration.json and metrics.json are checked when read (common/runs.py load_run,
common/calibration.py temperature_of, common/summary.py read_metrics, FinishedRun.open's
labels check) and each fault is one line `<file>: <what is wrong>; <the fix>`, exit status
2. One tiny random DistilBERT run per module; each case breaks a copy of it."""
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from common import REPO_ROOT, errors
from tests.conftest import assert_one_line_error, call_main, folder_listing, run_script

RESTORE_CONFIG = "restore the config.json its train script wrote (e.g. from a copy of the run folder)"


@pytest.fixture(scope="module")
def finished(tiny_distilbert, data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    call_main("train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--train-examples", 96,
              "--epochs", 1, "--run-dir", run)
    return run


def copy_of(finished, tmp_path, name="run"):
    dst = tmp_path / name
    shutil.copytree(finished, dst, ignore=shutil.ignore_patterns("tb", "best", "serving"))
    return dst


def edit(path, change):
    """Rewrite a JSON file with change(its content) as a user's editor would save it."""
    path.write_text(json.dumps(change(json.loads(path.read_text())), indent=2))


def with_flags(**flags):
    return lambda cfg: {**cfg, "flags": {**cfg["flags"], **flags}}


def cut_short(path, keep=50):
    """The file as a copy that stopped part-way leaves it; returns json's complaint about it."""
    text = path.read_text()[:keep]
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        json.loads(text)
    return str(e.value)


def refused(script, *args) -> str:
    """The message of the RunDirError a script's main() refuses with (in this process)."""
    with pytest.raises(errors.RunDirError) as e:
        call_main(script, *args)
    return str(e.value)


def help_flags(script, capsys) -> set:
    """The flags a script's --help lists."""
    with pytest.raises(SystemExit):
        call_main(script, "--help")
    return set(re.findall(r"--[a-z][a-z-]*", capsys.readouterr().out))


def texts_file(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("Quarterly profit beat forecasts .\n")
    return path


# ----------------------------------------------------------------------------- config.json's labels against model/'s

def labels_message(run, labels):
    return (f"{run}/config.json: flags.labels is \"{labels}\", but {run}/model/head.json is a classifier for 3 "
            f"classes (negative,neutral,positive); set flags.labels to \"negative,neutral,positive\" (the model's "
            f"classes in id order), or restore the run's own model/ folder")


def test_predict_refuses_labels_that_are_not_the_models(finished, tmp_path):
    """Other names for the same number of classes: loaded, the model would get a new random head."""
    run = copy_of(finished, tmp_path)
    edit(run / "config.json", with_flags(labels="bad,neutral,good"))
    p = run_script("eval/predict.py", run, "--input", texts_file(tmp_path), check=False)
    assert_one_line_error(p, "eval/predict.py", labels_message(run, "bad,neutral,good"))
    assert p.stdout == ""


def test_evaluate_refuses_more_labels_than_the_model_has(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    edit(run / "config.json", with_flags(labels="a,b,c,d"))
    assert refused("eval/evaluate.py", run) == labels_message(run, "a,b,c,d")


# ----------------------------------------------------------------------------- model/ of the Keras 2 version

# config.json's "versions" as the TensorFlow 2.15 / Keras 2 / transformers version recorded them
# (runs.versions at commit dd16d3e), and a commit of that version.
KERAS2_VERSIONS = {"python": "3.10.12", "tensorflow": "2.15.1", "keras": "2.15.0", "transformers": "4.57.6",
                   "huggingface-hub": "0.36.2", "datasets": "5.0.1", "tokenizers": "0.22.2", "keras-tuner": "1.4.8",
                   "tensorflow-text": "2.15.0", "scikit-learn": "1.7.2", "numpy": "1.26.4"}
KERAS2_COMMIT = "cf308c01293835a18023f9ef12f2b8ff0bfdbe1b"


def keras2_run(tmp_path, data_dir, head):
    """A finished run folder as the Keras 2 version wrote it, made by hand: its config.json,
    metrics.json and calibration.json, and model/ as transformers' save_pretrained (TF) left
    it: config.json (a Hugging Face one), tf_model.h5 (HDF5, the layers by name) and the
    tokenizer files; head "custom" adds that version's head.json (no "architecture") and
    head.weights.h5."""
    import h5py
    import numpy as np
    from common import phrasebank
    from tests import tiny_models
    run = tmp_path / f"keras2-{head}"
    model = run / "model"
    tiny_models.write_hf_folder(str(model), "distilbert", labels=phrasebank.LABELS)
    (model / "model.safetensors").unlink()  # the TF version saved tf_model.h5 instead
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["TFDistilBertForSequenceClassification" if head == "library" else "TFDistilBertModel"]
    (model / "config.json").write_text(json.dumps(config, indent=2))
    with h5py.File(model / "tf_model.h5", "w") as f:
        layer = f.create_group("distilbert").create_group("tf_distil_bert_for_sequence_classification")
        layer.create_dataset("embeddings/word_embeddings/weight:0", data=np.zeros((4, 2), np.float32))
        f.attrs["layer_names"] = [b"distilbert"]
    if head == "custom":
        (model / "head.json").write_text(json.dumps({"kind": "custom", "pooling": "mean", "hidden": [256],
                                                     "dropout": 0.1, "activation": "gelu",
                                                     "labels": list(phrasebank.LABELS)}, indent=2))
        with h5py.File(model / "head.weights.h5", "w") as f:
            f.create_dataset("logits/kernel:0", data=np.zeros((256, 3), np.float32))
    flags = {"model": "distilbert-base-uncased", "data": data_dir, "agreement": "all", "split": "hash",
             "max_length": 128, "epochs": 3, "head": head}
    (run / "config.json").write_text(json.dumps({
        "script": "full_finetune", "argv": ["--data", data_dir], "flags": flags, "resolved": {"precision": "fp32"},
        "devices": ["/physical_device:CPU:0"], "versions": KERAS2_VERSIONS, "git_commit": KERAS2_COMMIT}, indent=2))
    accuracy = {"accuracy": 0.9, "macro_f1": 0.88, "n": 226}
    (run / "metrics.json").write_text(json.dumps({"validation": accuracy, "test": accuracy}, indent=2))
    (run / "calibration.json").write_text(json.dumps({"temperature": 1.2}))
    return run


def keras2_message(run):
    return (f"{run}/model: written by the TensorFlow 2.15 / Keras 2 / transformers version of this project "
            f"(tensorflow 2.15.1, keras 2.15.0, transformers 4.57.6, commit cf308c012938), which this version "
            f"(Keras 3, KerasHub) cannot load; train it again with this version, or use the release/commit before the "
            f"Keras 3 move (git checkout dd16d3e)")


def test_predict_refuses_a_model_the_keras2_version_wrote_in_one_line(data_dir, tmp_path):
    """As a user meets it: exit 2, one line naming the versions that wrote it and what to do."""
    run = keras2_run(tmp_path, data_dir, "library")
    p = run_script("eval/predict.py", run, "--input", texts_file(tmp_path), check=False)
    assert_one_line_error(p, "eval/predict.py", keras2_message(run))
    assert p.stdout == ""


@pytest.mark.parametrize("head, script", [("library", "eval/evaluate.py"), ("library", "eval/export.py"),
                                          ("custom", "eval/calibrate.py"), ("custom", "eval/agreement_matrix.py"),
                                          ("custom", "eval/predict.py")])
def test_every_reader_refuses_a_model_the_keras2_version_wrote(data_dir, tmp_path, head, script):
    """The library head's model/ (tf_model.h5 beside transformers' config.json) and the custom
    head's (its head.json has no "architecture"): one check, in FinishedRun.open, for all."""
    run = keras2_run(tmp_path, data_dir, head)
    args = {"eval/predict.py": ["--input", texts_file(tmp_path)],
            "eval/agreement_matrix.py": ["--out", tmp_path / "matrix"]}.get(script, [])
    assert refused(script, run, *args) == keras2_message(run)
    assert not (run / "serving").exists() and not (run / "eval").exists()


def test_init_from_a_run_the_keras2_version_wrote_is_refused_in_one_line(data_dir, tmp_path):
    run = keras2_run(tmp_path, data_dir, "library")
    p = run_script("train/body_finetune.py", "--init-from", run, "--data", data_dir, "--run-dir", tmp_path / "next",
                   check=False)
    assert_one_line_error(p, "train/body_finetune.py", keras2_message(run))
    assert not (tmp_path / "next").exists()


# ----------------------------------------------------------------------------- calibration.json

@pytest.mark.parametrize("temperature, shown, script", [
    (-1.0, "-1.0", "eval/predict.py"),
    (0, "0", "eval/evaluate.py"),
    (float("nan"), "NaN", "eval/agreement_matrix.py"),
    ("hot", '"hot"', "eval/export.py"),
], ids=["negative-predict", "zero-evaluate", "nan-agreement-matrix", "text-export"])
def test_a_temperature_that_is_not_positive_is_refused(finished, tmp_path, temperature, shown, script):
    run = copy_of(finished, tmp_path)
    edit(run / "calibration.json", lambda c: {**c, "temperature": temperature})
    args = {"eval/predict.py": ["--input", texts_file(tmp_path)],
            "eval/agreement_matrix.py": ["--out", tmp_path / "matrix"]}.get(script, [])
    assert refused(script, run, *args) == (
        f"{run}/calibration.json: temperature is {shown}, expected a positive number (the logits are divided by it); "
        f"run python eval/calibrate.py {run} to fit it again")


def test_calibrate_fits_a_broken_calibration_json_again(finished, tmp_path):
    """The fix the line names works: eval/calibrate.py does not read the old calibration.json."""
    run = copy_of(finished, tmp_path)
    cut_short(run / "calibration.json")
    out = call_main("eval/calibrate.py", run)
    assert out["temperature"] > 0 and json.loads((run / "calibration.json").read_text())["temperature"] > 0
    rows = call_main("eval/predict.py", run, "--input", texts_file(tmp_path), "--output", tmp_path / "out.csv")
    assert len(rows) == 1 and rows[0]["label"] != "abstain"


def test_model_and_serving_folders_are_replaced_whole_or_not_at_all(finished, tmp_path):
    """runs.publish_dir moves the earlier folder aside until the new one is in place: a rename
    that fails puts it back, and what a kill between the two renames leaves (the earlier
    folder at .<name>.old, the next one half-written at <name>.tmp) is put back by the next
    export (runs.staging_dir), which then replaces it whole."""
    from common import runs
    run = copy_of(finished, tmp_path)
    model = folder_listing(run / "model")
    with pytest.raises(FileNotFoundError):
        runs.publish_dir(str(run / "gone.tmp"), str(run / "model"))
    assert folder_listing(run / "model") == model and not (run / ".model.old").exists()

    call_main("eval/export.py", run)
    serving = folder_listing(run / "serving")
    (run / "serving").rename(run / ".serving.old")  # the state a kill between the renames leaves
    (run / "serving.old").mkdir()  # the user's own: not taken for it
    (run / "serving.tmp").mkdir()
    (run / "serving.tmp" / "saved_model.pb").write_bytes(b"half")
    assert runs.staging_dir(str(run / "serving")) == str(run / "serving.tmp")
    assert folder_listing(run / "serving") == serving
    assert not (run / ".serving.old").exists() and not (run / "serving.tmp").exists()
    call_main("eval/export.py", run)
    assert sorted(folder_listing(run / "serving")) == sorted(serving)
    assert [p.name for p in run.iterdir() if p.name.endswith((".old", ".tmp"))] == ["serving.old"]


def test_evaluate_refuses_a_calibration_json_cut_short(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    why = cut_short(run / "calibration.json")
    assert refused("eval/evaluate.py", run) == (
        f"{run}/calibration.json: not valid JSON, cut short or edited ({why}); run python eval/calibrate.py {run} "
        f"to fit it again")


# ----------------------------------------------------------------------------- config.json

def test_evaluate_refuses_a_config_json_that_is_a_list(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    edit(run / "config.json", lambda cfg: [cfg])
    p = run_script("eval/evaluate.py", run, check=False)
    assert_one_line_error(p, "eval/evaluate.py",
                          f"{run}/config.json: a JSON list, expected an object; {RESTORE_CONFIG}")
    assert not (run / "eval").exists()


@pytest.mark.parametrize("value, shown, script", [
    (12.5, "12.5", "eval/predict.py"), ("long", '"long"', "eval/export.py"), (0, "0", "eval/evaluate.py")],
    ids=["fraction-predict", "text-export", "zero-evaluate"])
def test_a_max_length_that_is_not_a_whole_number_of_tokens_is_refused(finished, tmp_path, value, shown, script):
    run = copy_of(finished, tmp_path)
    edit(run / "config.json", with_flags(max_length=value))
    args = ["--input", texts_file(tmp_path)] if script == "eval/predict.py" else []
    expected = "a number of tokens, at least 1" if value == 0 else "a whole number"
    assert refused(script, run, *args) == f"{run}/config.json: flags.max_length is {shown}, expected {expected}; " \
                                          f"{RESTORE_CONFIG}"


# ----------------------------------------------------------------------------- metrics.json, and summarize over a tree

def test_summarize_names_each_bad_folder_and_summarizes_the_rest(finished, tmp_path):
    tree = tmp_path / "runs"
    good = copy_of(finished, tree, "good")
    cut = copy_of(finished, tree, "metrics-cut-short")
    why = cut_short(cut / "metrics.json")
    edit(copy_of(finished, tree, "metrics-no-accuracy") / "metrics.json",
         lambda m: {**m, "test": {**m["test"], "accuracy": "high"}})
    edit(copy_of(finished, tree, "config-list") / "config.json", lambda cfg: [cfg])
    p = run_script("eval/summarize.py", tree, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    restore = "restore the metrics.json its run wrote (e.g. from a copy of the run folder), or leave the run out"
    assert [l for l in p.stderr.splitlines() if l.strip()] == [
        f"skipped: {tree}/config-list/config.json: a JSON list, expected an object; {RESTORE_CONFIG}",
        f"skipped: {cut}/metrics.json: not valid JSON, cut short or edited ({why}); {restore}",
        f"skipped: {tree}/metrics-no-accuracy/metrics.json: test.accuracy is \"high\", expected a number in [0, 1]; "
        f"{restore}"]
    test = json.loads((good / "metrics.json").read_text())["test"]
    assert f"| full_finetune | 1 | {test['macro_f1']:.4f} ± 0.0000 |" in p.stdout  # --select-metric's first
    assert f"| {test['accuracy']:.4f} ± 0.0000 |" in p.stdout


def test_summarize_with_no_readable_run_is_refused(finished, tmp_path, capsys):
    tree = tmp_path / "runs"
    edit(copy_of(finished, tree, "config-list") / "config.json", lambda cfg: [cfg])
    message = refused("eval/summarize.py", tree)
    assert message.startswith(f"none of the 1 run folder(s) found under {tree} could be read")
    assert capsys.readouterr().err.startswith(f"skipped: {tree}/config-list/config.json: a JSON list")


def test_summarize_reads_a_folder_name_as_it_is_not_as_a_pattern(finished, tmp_path, capsys):
    """'runs/lr[2]' is that folder, not runs/lr2 (glob's pattern for it)."""
    tree = tmp_path / "runs"
    named = copy_of(finished, tree, "lr[2]")
    edit(copy_of(finished, tree, "lr2") / "metrics.json", lambda m: {**m, "test": {**m["test"], "accuracy": 0.125}})
    call_main("eval/summarize.py", named)
    out = capsys.readouterr().out
    test = json.loads((named / "metrics.json").read_text())["test"]
    assert f"| {test['accuracy']:.4f} ± 0.0000 |" in out and "0.1250" not in out, out


def test_a_study_skips_only_a_run_its_own_command_finished_on_the_same_data(finished, tmp_path):
    """runs.finished_by, which a study (eval/seeds.py, the own-data benchmark, ...) asks before
    it skips a step: the same script and flags, and the data files the run trained on
    unchanged; model/ may be gone (a table needs only the figures). Anything else runs the
    train script, which resumes it or refuses it in one line."""
    from common import runs
    run = copy_of(finished, tmp_path)
    data = tmp_path / "own.csv"
    data.write_text("text,label\nProfit rose .,positive\n")
    config = json.loads((run / "config.json").read_text())
    argv, script = config["argv"], config["script"]
    edit(run / "config.json", lambda cfg: {**cfg, "resolved": {
        **cfg["resolved"], "data_files": {str(data): hashlib.sha256(data.read_bytes()).hexdigest()}}})
    command = [sys.executable, os.path.join(REPO_ROOT, "train", script), *argv]
    assert script == "full_finetune.py" and runs.finished_by(run, command)
    shutil.rmtree(run / "model")
    assert runs.finished_by(run, command)
    assert not runs.finished_by(run, command[:2] + argv + ["--epochs", "2"])  # other flags
    assert not runs.finished_by(run, [sys.executable, os.path.join(REPO_ROOT, "train", "head_only.py"), *argv])
    trained_on = data.read_text()
    data.write_text("text,label\nProfit fell .,negative\n")  # the file it trained on, changed
    assert not runs.finished_by(run, command)
    data.write_text(trained_on)
    assert runs.finished_by(run, command)
    cut_short(run / "config.json")
    assert not runs.finished_by(run, command)
    (run / "metrics.json").unlink()
    assert not runs.finished_by(tmp_path / "no-such-run", command) and not runs.finished_by(run, command)


@pytest.mark.parametrize("script, args", [("eval/export.py", []), ("eval/publish.py", ["--to", "published"])],
                         ids=["export", "publish"])
def test_a_run_stopped_before_metrics_json_is_refused_before_anything_is_written(finished, tmp_path, script, args):
    """A run killed after model/ and before metrics.json (written last) has no figures for its
    card: one line saying how to finish it, and serving/ and the published folder not written."""
    run = copy_of(finished, tmp_path)  # (without serving/)
    (run / "metrics.json").unlink()
    before = folder_listing(run)
    message = refused(script, run, *[str(tmp_path / a) if a == "published" else a for a in args])
    assert message == (f"run folder {run}: the run did not finish (no metrics.json, which is written last); rerun its "
                       f"command (config.json 'argv') to finish it")
    assert folder_listing(run) == before and not (tmp_path / "published").exists()


def test_export_refuses_a_metrics_json_edited_by_hand_before_serving_is_written(finished, tmp_path):
    run = copy_of(finished, tmp_path)  # (without serving/)
    edit(run / "metrics.json", lambda m: {**m, "test": {**m["test"], "accuracy": "high"}})
    message = refused("eval/export.py", run)
    assert message.startswith(f"{run}/metrics.json: test.accuracy is \"high\", expected a number in [0, 1]")
    assert not (run / "serving").exists()


@pytest.mark.parametrize("front, why", [
    ("license: [mit\n", "its front matter is not a card's YAML (while parsing a flow sequence)"),
    ("- a list, not a mapping\n", "its front matter is not a card's YAML (repo card metadata block should be a dict)"),
    ("1: a number as a key\n", "its front matter is not a card's YAML"),
    ("license: other\nlicense_name: 123\n", "its license is 123, not a name")],
    ids=["not-yaml", "list", "number-key", "number-license"])
def test_a_model_card_broken_by_hand_is_refused_in_one_line(finished, tmp_path, front, why):
    run = copy_of(finished, tmp_path)
    card = run / "README.md"
    card.write_text(f"---\n{front}---\n\n# A card edited by hand\n")
    message = refused("eval/publish.py", run, "--to", tmp_path / "published")
    assert message.startswith(f"{card}: {why}") and message.endswith(
        f"or delete the file and write it again: python eval/export.py {run} (own data: with --license ID)"), message
    assert not (tmp_path / "published").exists()


@pytest.mark.parametrize("code", ["EACCES", "EROFS"])
def test_a_run_folder_where_the_lock_cannot_be_written_is_one_line(finished, tmp_path, monkeypatch, code):
    """A folder the user may read but not write (another user's runs/: EACCES; a read-only
    mount: EROFS). Tests run as root, whom no folder's mode refuses: the kernel's answer is
    stood in for."""
    import errno
    from common import run_lock
    number = getattr(errno, code)

    def refused_by_the_file_system(self):
        raise OSError(number, os.strerror(number), self.path)
    monkeypatch.setattr(run_lock.Lock, "_acquire", refused_by_the_file_system)
    message = refused("eval/publish.py", copy_of(finished, tmp_path), "--to", tmp_path / "published")
    assert message == (f"run folder {tmp_path / 'run'}: cannot write run.lock there ({os.strerror(number)}): the one "
                       f"writer's lock; copy the folder to one you can write (cp -r) and pass that")


# ----------------------------------------------------------------------------- own data changed since the run

@pytest.fixture
def own_data_run(finished, tmp_path):
    """The run as if trained on a CSV file, whose content then changed (config.json keeps
    the sha256 it trained on: all zeros here)."""
    run = copy_of(finished, tmp_path)
    data = tmp_path / "desk.csv"
    data.write_text("headline,label\nProfit rose .,positive\n")
    edit(run / "config.json", lambda cfg: {**with_flags(data=str(data))(cfg),
                                           "resolved": {**cfg["resolved"], "data_files": {str(data): "0" * 64}}})
    return run, data, hashlib.sha256(data.read_bytes()).hexdigest()[:12]


@pytest.mark.parametrize("script, fix", [
    ("eval/evaluate.py", "restore the file to evaluate the run on its own split, or evaluate it on a labelled file "
                         "with --csv FILE"),
    ("eval/calibrate.py", "restore the file: the temperature is fitted on the run's own validation split")],
    ids=["evaluate", "calibrate"])
def test_changed_data_is_refused_with_a_fix_the_script_offers(own_data_run, script, fix, capsys):
    run, data, now = own_data_run
    message = refused(script, run)
    assert message == (f"run folder {run}: its run began on other data ({data} changed: sha256 000000000000 -> "
                       f"{now}); {fix}")
    assert set(re.findall(r"--[a-z][a-z-]*", message)) <= help_flags(script, capsys)  # no flag it does not have


@pytest.mark.parametrize("script", ["train/full_finetune.py", "tune/lr_search.py"])
def test_a_folder_of_the_users_own_files_is_refused_and_left_as_it_was(tiny_distilbert, data_dir, tmp_path, script):
    """--run-dir at a folder that holds no run (no config.json; for a search, no trials/) but
    files of the user's: the run would have replaced its README.md with the model card, its
    model/ and serving/ with the run's, and removed its backup/. One line, nothing changed
    (the lock taken before the check is gone again). A folder holding only what a run killed
    early left is resumed: test_resume's lock take-over test."""
    mine = tmp_path / "my project"
    (mine / "model").mkdir(parents=True)
    (mine / "README.md").write_text("# my notes\n")
    (mine / ".DS_Store").write_bytes(b"\x00")  # hidden: not named in the refusal (a run writes no such name)
    (mine / "model" / "weights.bin").write_bytes(b"\x00\x01 mine")
    (mine / "backup").mkdir()
    (mine / "backup" / "data.csv").write_text("text,label\nup,positive\n")
    before = folder_listing(mine)
    p = run_script(script, "--model", tiny_distilbert, "--data", data_dir, "--run-dir", mine, "--epochs", 1,
                   "--train-examples", 64, check=False)
    assert_one_line_error(p, os.path.basename(script),
                          f"--run-dir {mine}: holds files that are not a run's (README.md, backup, model); a run "
                          f"writes its README.md, model/, serving/ and backup/ there: pass a new or empty folder")
    assert folder_listing(mine) == before and sorted(os.listdir(mine)) == [".DS_Store", "README.md", "backup", "model"]


def test_a_cloud_jobs_run_folder_with_its_staged_data_trains(tiny_distilbert, data_dir, tmp_path):
    """launch/gcp_vm.sh and vertex_job.sh copy a local --data into <run>/data/ before the job
    starts: that folder is the job's, not a user's."""
    run = tmp_path / "job1"
    shutil.copytree(data_dir, run / "data")
    p = run_script("train/full_finetune.py", "--model", tiny_distilbert, "--data", run / "data", "--run-dir", run,
                   "--epochs", 1, "--train-examples", 64, "--precision", "fp32")
    assert (run / "metrics.json").exists() and "data:" in p.stdout


def words_in_bash(command: str, cwd) -> list:
    """The words bash reads from `command` pasted into it (what a user's shell does with a
    printed command), as the arguments of `set --` instead of a command to run: anything in
    it that would run (an unquoted `$()`) runs here too, in `cwd`."""
    p = subprocess.run(["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "bash", command], cwd=cwd,
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode().split("\0")[:-1]  # bytes: text mode would turn a \r into \n


def test_the_commands_a_run_prints_work_when_pasted_whatever_its_folder_is_called(tiny_distilbert, data_dir,
                                                                                   tmp_path):
    """The `next:` commands a finished run prints, and the one a rerun prints, are for pasting
    into a shell: a folder named with spaces, quotes, $() and a newline comes back as itself,
    and nothing in its name runs."""
    run = tmp_path / "my run $(touch PWNED) 'q' \"d\"\nline2"
    train = ("train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", run,
             "--epochs", 1, "--train-examples", 64, "--precision", "fp32")
    printed = run_script(*train).stdout.split("\nnext: ", 1)[1].rstrip("\n").split("   |   ")
    assert "\n" not in "".join(printed)  # one line, as the rerun's message below must be
    assert [words_in_bash(c, tmp_path) for c in printed] == [["python", "eval/evaluate.py", str(run)],
                                                             ["python", "eval/predict.py", str(run), "--input", "FILE"],
                                                             ["tensorboard", "--logdir", str(run)]]
    again = run_script(*train).stdout
    assert len(again.strip().splitlines()) == 1, again
    assert words_in_bash(again.split("Next: ", 1)[1].split("; to train again")[0], tmp_path) == \
        ["python", "eval/evaluate.py", str(run)]
    # pasted as printed (with this venv's python, from another folder): it evaluates the run
    evaluate = printed[0].replace("python eval/", f"{shlex.quote(sys.executable)} {shlex.quote(REPO_ROOT)}/eval/", 1)
    p = subprocess.run(["bash", "-c", evaluate], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (run / "eval").is_dir() and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("where", ["calibration", "summary"])
def test_a_fix_named_in_an_error_is_a_command_that_pastes(tmp_path, where):
    """The commands the one-line errors give as their fix quote the run folder too, on the
    line errors.run prints (a line break in the name pastes back as itself)."""
    from common import calibration, summary
    run = tmp_path / "run $(touch PWNED) 'q'\nline2"
    run.mkdir()
    if where == "calibration":
        (run / "calibration.json").write_text('{"temperature": 0}')
        with pytest.raises(errors.RunDirError) as e:
            calibration.temperature_of(str(run))
        command = errors.one_line(e.value).split("; run ", 1)[1].split(" to fit it again")[0]
        assert words_in_bash(command, tmp_path) == ["python", "eval/calibrate.py", str(run)]
    else:
        with pytest.raises(errors.RunDirError) as e:
            summary.shared_errors([{"dir": str(run), "flags": {"data": "hub", "agreement": "all"}}])
        command = errors.one_line(e.value).split("; run ", 1)[1].split(" first")[0]
        assert words_in_bash(command, tmp_path) == ["python", "eval/evaluate.py", str(run)]
