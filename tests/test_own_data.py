"""Training on your own labelled files (--data FILE or FOLDER), through the scripts as a
user runs them. The files are written at test time from the PhraseBank (its license keeps
it out of the repository) with other label names, two and five classes."""
import csv
import json
import os
import re

import numpy as np
import pytest

from common import errors, models, phrasebank, sources
from tests.conftest import assert_one_line_error, call_main, run_script

NAMES = {0: "bearish", 1: "neutral", 2: "bullish"}


def write_csv(path, rows, header=("headline", "tone")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def allagree(data_dir):
    return phrasebank.load_splits(data_dir, "all")


@pytest.fixture(scope="module")
def desk_csv(allagree, tmp_path_factory):
    """AllAgree's sentences in one file, labels renamed: bearish / neutral / bullish."""
    rows = [(s, NAMES[y]) for part in phrasebank.SPLITS for s, y in allagree[part]]
    return write_csv(tmp_path_factory.mktemp("desk") / "desk.csv", rows)


DESK = ["--text-column", "headline", "--label-column", "tone", "--labels", "bearish,neutral,bullish"]


@pytest.fixture(scope="module")
def desk_run(desk_csv, tiny_distilbert, tmp_path_factory):
    run = tmp_path_factory.mktemp("desk-run") / "run"
    p = run_script("train/full_finetune.py", "--model", tiny_distilbert, "--data", desk_csv, *DESK, "--epochs", 1,
                   "--precision", "fp32", "--run-dir", run)
    return run, p


def test_a_csv_with_its_own_label_names_trains_evaluates_predicts_and_serves_with_them(desk_run, desk_csv, tmp_path):
    run, p = desk_run
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["resolved"]["labels"] == ["bearish", "neutral", "bullish"]
    with open(desk_csv, "rb") as f:
        import hashlib
        assert cfg["resolved"]["data_files"] == {os.path.abspath(desk_csv): hashlib.sha256(f.read()).hexdigest()}
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["test"]["per_class"]) == {"bearish", "neutral", "bullish"}
    drawn = json.loads((run / sources.SPLIT_FILE).read_text())["lines"]
    assert [len(drawn[k]) for k in sources.PARTS] == [m["sizes"]["train"], m["sizes"]["validation"], m["sizes"]["test"]]
    assert not set(drawn["train"]) & set(drawn["test"])  # line numbers of one file, each in one part
    head_cfg = json.loads((run / "model" / models.HEAD_CONFIG).read_text())  # model/ keeps the class names
    assert head_cfg["labels"] == ["bearish", "neutral", "bullish"]
    # evaluate on its own (recorded) test split: the same figures as the run's own
    ev = run_script("eval/evaluate.py", run)
    em = json.loads((run / "eval" / "own-test" / "metrics.json").read_text())
    assert em["accuracy"] == m["test"]["accuracy"] and em["n"] == m["test"]["n"]
    assert "bearish" in (run / "eval" / "own-test" / "report.txt").read_text() and "wrote" in ev.stdout
    # predict: probability columns named after the run's classes
    src = write_csv(tmp_path / "in.csv", [("Profit rose sharply .",), ("The bank failed .",)], header=("text",))
    run_script("eval/predict.py", run, "--input", src, "--output", tmp_path / "out.csv", "--precision", "fp32")
    with open(tmp_path / "out.csv", newline="") as f:
        out = list(csv.DictReader(f))
    assert list(out[0]) == ["text", "label", "confidence", "p_bearish", "p_neutral", "p_bullish"]
    assert {r["label"] for r in out} <= set(NAMES.values())
    # serving: the signature's label names are the run's
    code = ("import sys, tensorflow as tf, tensorflow_text; f = tf.saved_model.load(sys.argv[1]).signatures["
            "'serving_default']; o = f(text=tf.constant(['Profit rose sharply .'])); "
            "print(o['label'].numpy()[0].decode(), o['probabilities'].shape[1])")
    import subprocess
    import sys
    s = subprocess.run([sys.executable, "-c", code, str(run / "serving")], capture_output=True, text=True, timeout=300)
    label, width = s.stdout.split()[-2:]
    assert label in NAMES.values() and width == "3", s.stderr[-2000:]


def test_an_own_data_cards_license_is_unknown_until_given(desk_run, desk_csv):
    """Own data: the card names the file by its sha256 and states no license until --license
    gives one (here through eval/export.py, which writes the card again)."""
    import yaml
    run, _ = desk_run
    card = run / "README.md"
    meta = yaml.safe_load(card.read_text().split("---\n")[1])
    digest = json.loads((run / "config.json").read_text())["resolved"]["data_files"][os.path.abspath(desk_csv)]
    assert (meta["license"], meta["license_name"]) == ("other", "unknown") and "datasets" not in meta
    assert f"`{digest}`" in card.read_text() and "state them with `--license`" in card.read_text()
    # a license that is not an id (a newline, quotes, $()): one line, and the card stays as it was
    before = card.read_text()
    p = run_script("eval/export.py", run, "--license", 'mine\n"$(touch pwned)"', check=False)
    assert_one_line_error(p, "eval/export.py", "argument --license: 'mine\\n\"$(touch pwned)\"': give a license id")
    assert card.read_text() == before
    run_script("eval/export.py", run, "--license", "cc-by-4.0")
    meta = yaml.safe_load(card.read_text().split("---\n")[1])
    assert meta["license"] == "cc-by-4.0" and "license_name" not in meta


@pytest.mark.slow
def test_a_resume_refuses_a_changed_file_and_other_flags(desk_run, desk_csv, tiny_distilbert, tmp_path):
    run, _ = desk_run
    changed = tmp_path / "desk.csv"
    text = open(desk_csv, encoding="utf-8").read()
    changed.write_text(text + "One more line .,neutral\n")
    # the same run folder under another data file: refused (the flag differs)
    p = run_script("train/full_finetune.py", "--model", tiny_distilbert, "--data", changed, *DESK, "--epochs", 1,
                   "--precision", "fp32", "--run-dir", run, check=False)
    assert p.returncode == 2 and "holds a run made with other flags (--data" in p.stderr.strip().splitlines()[-1]
    # the same path, its content changed: refused by its sha256
    copy = tmp_path / "copy"
    import shutil
    shutil.copytree(run, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["resolved"]["data_files"] = {os.path.abspath(desk_csv): "0" * 64}
    (copy / "config.json").write_text(json.dumps(cfg))
    p = run_script("train/full_finetune.py", "--model", tiny_distilbert, "--data", desk_csv, *DESK, "--epochs", 1,
                   "--precision", "fp32", "--run-dir", copy, check=False)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "its run began on other data" in last and "000000000000 ->" in last


@pytest.mark.parametrize("classes", [2, pytest.param(5, marks=pytest.mark.slow)])
def test_two_and_five_classes_train_end_to_end(classes, allagree, tiny_distilbert, tmp_path):
    """Any label set: head size, class weights, metrics, predict's columns, serving's width."""
    if classes == 2:
        names = ["down", "up"]
        rows = [(s, names[y // 2]) for part in phrasebank.SPLITS for s, y in allagree[part] if y != 1]
    else:
        names = ["strong_sell", "sell", "hold", "buy", "strong_buy"]
        rows = [(s, names[(len(s) + y) % 5]) for part in phrasebank.SPLITS for s, y in allagree[part]]
    data = write_csv(tmp_path / "d.csv", rows, header=("text", "label"))
    run = tmp_path / "run"
    run_script("train/full_finetune.py", "--model", tiny_distilbert, "--data", data, "--labels", ",".join(names),
               "--epochs", 1, "--precision", "fp32", "--run-dir", run)
    m = json.loads((run / "metrics.json").read_text())
    assert list(m["test"]["per_class"]) == sorted(names) and np.asarray(m["test"]["confusion_matrix"]).shape == \
        (classes, classes)
    cfg = json.loads((run / "config.json").read_text())
    assert len(cfg["resolved"]["class_weight"]) == classes
    assert json.loads((run / "model" / models.HEAD_CONFIG).read_text())["labels"] == names
    src = write_csv(tmp_path / "in.csv", [("Profit rose .",)], header=("text",))
    run_script("eval/predict.py", run, "--input", src, "--output", tmp_path / "out.csv", "--precision", "fp32")
    header = open(tmp_path / "out.csv").readline().strip().split(",")
    assert header[3:] == [f"p_{n}" for n in names]
    cal = json.loads((run / "calibration.json").read_text())
    assert cal["test"]["after"]["accuracy"] == m["test"]["accuracy"]


@pytest.mark.slow
def test_the_phrasebank_split_as_three_csv_files_trains_to_the_phrasebank_paths_figures(allagree, data_dir,
                                                                                        tiny_distilbert, tmp_path,
                                                                                        capsys):
    folder = tmp_path / "pb"
    folder.mkdir()
    for part in phrasebank.SPLITS:
        write_csv(folder / f"{part}.csv", [(s, phrasebank.LABELS[y]) for s, y in allagree[part]],
                  header=("sentence", "label"))
    common = ["--model", tiny_distilbert, "--epochs", 1, "--precision", "fp32", "--seed", 3, "--no-serving"]
    printed = []
    for data, run in ((data_dir, "pb-run"), (folder, "own-run")):
        call_main("train/full_finetune.py", *common, "--data", data, "--run-dir", tmp_path / run)
        printed.append(capsys.readouterr().out)
    ma, mb = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("pb-run", "own-run"))
    for part in ("validation", "test"):
        assert ma[part] == mb[part]
    digest = [re.search(r"weights digest (\w+)", out).group(1) for out in printed]
    assert digest[0] == digest[1]
    assert not (tmp_path / "own-run" / sources.SPLIT_FILE).exists()  # given splits: nothing drawn


def _refused(capsys, script_main, argv):
    """Run a script's entry point as `python script.py argv` would (errors.run), in-process."""
    with pytest.raises(SystemExit) as e:
        errors.run(lambda: script_main(argv))
    lines = capsys.readouterr().err.strip().splitlines()
    return e.value.code, lines


BAD = {
    "outside the map": (["text,label", "Profit rose .,up", "Loss widened .,sideways"], ["--label-map", "up=positive"],
                        r"d.csv line 3: label 'sideways' is not in --label-map \(up\); add sideways="),
    "empty text": (["text,label", "Profit rose .,positive", ",negative"], [], r"d.csv line 3: empty text; remove the line$"),
    "empty label": (["text,label", "Profit rose .,positive", "Loss widened .,"], [], r"d.csv line 3: empty label"),
    "two labels": (["text,label", "Profit rose .,positive", "Loss widened .,negative", "profit  ROSE .,negative"], [],
                   r"d.csv lines 2 and 4: the same text with two labels"),
    "one class": (["text,label", "Profit rose .,positive", "Sales rose .,positive"], [],
                  r"d.csv: every row is positive; a classifier needs two or more classes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_own_data_is_one_line_naming_file_line_and_fix(case, tiny_distilbert, tmp_path, capsys):
    from train import full_finetune
    lines, flags, message = BAD[case]
    data = tmp_path / "d.csv"
    data.write_text("\n".join(lines) + "\n")
    code, err = _refused(capsys, full_finetune.main, ["--model", tiny_distilbert, "--data", str(data), *flags,
                                                      "--run-dir", str(tmp_path / "run")])
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "run").exists()


def test_given_parts_are_checked_and_a_small_class_is_not_split(allagree, tiny_distilbert, tmp_path, capsys):
    from train import full_finetune
    train = [(s, phrasebank.LABELS[y]) for s, y in allagree["train"]]
    folder = tmp_path / "f"
    folder.mkdir()
    write_csv(folder / "train.csv", train, ("text", "label"))
    write_csv(folder / "validation.csv", [r for r in train[:50] if r[1] != "negative"], ("text", "label"))
    write_csv(folder / "test.csv", [(s, phrasebank.LABELS[y]) for s, y in allagree["test"]], ("text", "label"))
    argv = ["--model", tiny_distilbert, "--data", str(folder), "--run-dir", str(tmp_path / "run")]
    code, err = _refused(capsys, full_finetune.main, argv)
    assert code == 2 and len(err) == 1 and "validation.csv: no negative rows" in err[0]
    write_csv(folder / "validation.csv", [(s, phrasebank.LABELS[y]) for s, y in allagree["validation"]] + train[:1],
              ("text", "label"))
    code, err = _refused(capsys, full_finetune.main, argv)
    assert code == 2 and re.search(r"train.csv line 2 and .*validation.csv line \d+: the same text in train and "
                                   r"validation", err[0])
    few = tmp_path / "few.csv"
    write_csv(few, train[:300] + [(f"rare {i} .", "rare") for i in range(5)],
              ("text", "label"))
    code, err = _refused(capsys, full_finetune.main, ["--model", tiny_distilbert, "--data", str(few), "--labels",
                                                      "negative,neutral,positive,rare", "--run-dir", str(tmp_path / "r")])
    assert code == 2 and "too few distinct texts to split 80/10/10 by class: rare (5)" in err[0]


def test_phrasebank_only_flags_are_refused_with_own_data_in_one_line(desk_csv, tiny_distilbert):
    p = run_script("train/full_finetune.py", "--model", tiny_distilbert, "--data", desk_csv, *DESK, "--split",
                   "notebook", "--extra-agreement", "50", check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith(
        "--extra-agreement 50, --split notebook: PhraseBank-only (its agreement levels and splits); --data "
        f"{desk_csv} is your own data: drop them")


def test_init_from_keeps_the_encoder_and_the_head_only_for_the_same_classes(desk_run, tmp_path):
    run, _ = desk_run
    model_dir = str(run / "model")
    base = models.build_classifier(model_dir, labels=("bearish", "neutral", "bullish"))
    enc = [w.numpy() for w in models.encoder_of(base).weights]
    head = [w.numpy() for w in models.logits_layer(base).weights]
    for labels, same_head in ((("bearish", "neutral", "bullish"), True), (("a", "b", "c"), False), (("down", "up"),
                                                                                                      False)):
        m = models.build_classifier(model_dir, labels=labels)
        assert all(np.array_equal(a, w.numpy()) for a, w in zip(enc, models.encoder_of(m).weights))
        out = models.logits_layer(m)
        assert out.kernel.shape[-1] == len(labels)
        assert same_head == all(a.shape == w.shape and np.array_equal(a, w.numpy()) for a, w in zip(head, out.weights))


@pytest.mark.slow
def test_tuning_and_seeds_work_on_own_data(desk_csv, tiny_distilbert, tmp_path):
    search = tmp_path / "search"
    call_main("tune/lr_search.py", "--model", tiny_distilbert, "--data", desk_csv, *DESK, "--max-trials", 1,
              "--epochs", 1, "--precision", "fp32", "--run-dir", search)
    assert json.loads((search / "best_hparams.json").read_text())["val_macro_f1"] is not None
    assert (search / sources.SPLIT_FILE).exists()
    out = tmp_path / "seeds"
    p = run_script("eval/seeds.py", "--seeds", 2, "--out", out, "--", "train/full_finetune.py", "--model",
                   tiny_distilbert, "--data", desk_csv, *DESK, "--epochs", 1, "--precision", "fp32", "--no-serving")
    assert "F1 bearish" in p.stdout
    splits = [json.loads((out / f"seed{k}" / sources.SPLIT_FILE).read_text())["lines"] for k in (1, 2)]
    assert splits[0] == splits[1]  # --split-seed, not --seed: the test set stays put across seeds


@pytest.mark.slow
def test_every_train_script_the_other_tuner_and_the_learning_curve_run_on_own_data(allagree, tiny_distilbert,
                                                                                   data_dir, tmp_path):
    rows = [(s, NAMES[y]) for part in phrasebank.SPLITS for s, y in allagree[part]][::4]
    small = write_csv(tmp_path / "small.csv", rows)
    own = ["--data", small, *DESK, "--epochs", 1, "--precision", "fp32", "--no-serving"]
    call_main("train/head_only.py", "--model", tiny_distilbert, *own, "--run-dir", tmp_path / "head")
    call_main("train/body_finetune.py", "--init-from", tmp_path / "head", *own, "--run-dir", tmp_path / "body")
    call_main("train/custom_head.py", "--model", tiny_distilbert, *own, "--run-dir", tmp_path / "custom")
    for run in ("head", "body", "custom"):
        assert set(json.loads((tmp_path / run / "metrics.json").read_text())["test"]["per_class"]) == set(NAMES.values())
    call_main("tune/unfreeze_search.py", "--model", tiny_distilbert, *own, "--max-trials", 1,
              "--run-dir", tmp_path / "unfreeze")
    assert (tmp_path / "unfreeze" / "best_hparams.json").exists()
    p = run_script("eval/learning_curve.py", "--model", tiny_distilbert, "--data", small, "--sizes", "90,1", "--seeds",
                   1, "--epochs", 1, "--out", tmp_path / "curve", "--", *DESK, "--precision", "fp32")
    assert "| 90 | 90 |" in p.stdout
    # two stages: a PhraseBank run, then own data with two classes from it (--init-from keeps the encoder)
    pb = tmp_path / "pb"
    call_main("train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--epochs", 1,
              "--precision", "fp32", "--no-serving", "--run-dir", pb)
    two = write_csv(tmp_path / "two.csv", [(s, "up" if t == "bullish" else "down") for s, t in rows if t != "neutral"],
                    ("text", "label"))
    call_main("train/full_finetune.py", "--init-from", pb, "--data", two, "--labels", "down,up", "--epochs", 1,
              "--precision", "fp32", "--no-serving", "--run-dir", tmp_path / "stage2")
    m = json.loads((tmp_path / "stage2" / "metrics.json").read_text())
    assert list(m["test"]["per_class"]) == ["down", "up"]


def test_launchers_put_a_local_data_file_in_the_bucket_beside_the_run(desk_csv, data_dir, tmp_path, remote):
    from tests.test_launch import _launch
    args = ["--dry-run", "--repo", remote, "--bucket", "gs://b", "--name", "job1", "train/full_finetune.py"]
    vm = _launch("gcp_vm.sh", *args, "--data", desk_csv, "--epochs", "1")
    assert vm.returncode == 0, vm.stderr
    preflight, first, second = vm.stdout.splitlines()[:3]  # the checks, the upload, the VM
    assert preflight.startswith("bash ") and first == f"gcloud storage cp --recursive {desk_csv} gs://b/runs/job1/data/ "
    from tests.test_launch import _argv_line
    assert _argv_line(vm.stdout) == ["train/full_finetune.py", "--data", "gs://b/runs/job1/data/desk.csv", "--epochs",
                                     "1", "--gpus", "1"], vm.stdout
    job = _launch("vertex_job.sh", *args, f"--data={desk_csv}")
    assert job.returncode == 0 and '"--data", "/gcs/b/runs/job1/data/desk.csv"' in job.stdout, job.stdout + job.stderr
    url = _launch("gcp_vm.sh", *args, "--data", "gs://mine/desk.csv")
    assert "gcloud storage cp" not in url.stdout and '"--data", "gs://mine/desk.csv"' in url.stdout, url.stdout
    for bad, message in ((data_dir, "not your own labelled data"), (str(tmp_path / "nope.csv"), "no such file")):
        p = _launch("gcp_vm.sh", *args, "--data", bad)
        assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1 and not p.stdout


def test_own_data_is_read_from_a_bucket_url_through_tf_io_gfile():
    """gs:// on a cloud VM; TensorFlow's in-memory ram:// file system stands in for the bucket."""
    import tensorflow as tf
    with tf.io.gfile.GFile("ram://bucket/own/train.csv", "w") as f:
        f.write("text,label\n" + "".join(f"good {i} .,up\nbad {i} .,down\n" for i in range(20)))
    from common.config import Config
    flags = Config(data="ram://bucket/own", labels="down,up")
    assert sources.is_own("ram://bucket/own") and sources.files("ram://bucket/own") == {
        "train": "ram://bucket/own/train.csv"}
    rows = sources.own_splits(flags, sources.resolve(flags))
    assert [len(rows[k]) for k in sources.PARTS] == [32, 4, 4]
    assert {y for _, y in rows["test"]} == {0, 1}
    assert list(sources.digests("ram://bucket/own")) == ["ram://bucket/own/train.csv"]


def test_a_kept_split_is_reused_only_for_the_same_file_and_seed(tmp_path):
    """data_split.json is the run's draw; a first attempt that stopped before training leaves
    one behind, and a rerun on an edited file (or another --split-seed) draws again."""
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"good {i} .,up\nbad {i} .,down\n" for i in range(20)))
    keep = str(tmp_path / "run" / sources.SPLIT_FILE)
    from common.config import Config
    flags = Config(data=str(data), labels="down,up", split_seed=42)
    first = sources.own_splits(flags, sources.resolve(flags), keep)
    assert sources.own_splits(flags, sources.resolve(flags), keep) == first
    data.write_text(data.read_text() + "".join(f"fine {i} .,up\n" for i in range(10)))
    edited = sources.own_splits(flags, sources.resolve(flags), keep)  # (a new run resolves its source anew)
    assert sum(len(v) for v in edited.values()) == 50  # the added rows are in the new draw
    assert json.loads(open(keep).read())["sha256"] == sources.digests(str(data))[str(data)]
    seven = Config(data=str(data), labels="down,up", split_seed=7)
    other_seed = sources.own_splits(seven, sources.resolve(seven), keep)
    assert other_seed["test"] != edited["test"]


def test_a_kept_split_edited_by_hand_is_refused_in_one_line(tmp_path):
    """data_split.json decides every figure of an own-data run: cut short, reshaped, or with a
    line in two parts (or in none), it is refused naming the file; deleted, the same draw."""
    from common.config import Config
    from common.errors import RunDirError
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"good {i} .,up\nbad {i} .,down\n" for i in range(20)))
    keep = tmp_path / "run" / sources.SPLIT_FILE
    flags = Config(data=str(data), labels="down,up", split_seed=42)
    first = sources.own_splits(flags, sources.resolve(flags), str(keep))
    kept = json.loads(keep.read_text())
    lines = kept["lines"]
    edits = {
        "cut short": keep.read_text()[:40],
        "a list": json.dumps([kept]),
        "lines a list": json.dumps({**kept, "lines": [lines["train"], lines["validation"], lines["test"]]}),
        "numbers as text": json.dumps({**kept, "lines": {**lines, "test": [str(n) for n in lines["test"]]}}),
        "a line in two parts": json.dumps({**kept, "lines": {**lines, "test": lines["test"] + lines["train"][:1]}}),
        "a line in none": json.dumps({**kept, "lines": {**lines, "test": lines["test"][1:]}}),
        "a line not in the file": json.dumps({**kept, "lines": {**lines, "test": lines["test"] + [999]}}),
    }
    for what, text in edits.items():
        keep.write_text(text)
        with pytest.raises(RunDirError) as e:
            sources.own_splits(flags, sources.resolve(flags), str(keep))
        assert str(e.value).startswith(f"{keep}: ") and str(e.value).endswith(
            "delete it, and the split is drawn again from the file and --split-seed"), (what, str(e.value))
    keep.unlink()
    assert sources.own_splits(flags, sources.resolve(flags), str(keep)) == first


def test_evaluate_refuses_a_data_file_that_changed_since_the_run(desk_run, desk_csv, tmp_path, capsys):
    import shutil
    from eval import evaluate
    run, _ = desk_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    moved = tmp_path / "desk.csv"
    shutil.copy(desk_csv, moved)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["flags"]["data"] = str(moved)
    cfg["resolved"]["data_files"] = {str(moved): cfg["resolved"]["data_files"][os.path.abspath(desk_csv)]}
    (copy / "config.json").write_text(json.dumps(cfg))
    evaluate.main([str(copy)])  # the same bytes: evaluated
    moved.write_text(moved.read_text() + "One more line .,neutral\n")
    code, err = _refused(capsys, evaluate.main, [str(copy)])
    assert code == 2 and len(err) == 1 and "its run began on other data" in err[0] and str(moved) in err[0]
