"""The notebook's experiments as scripts, on tiny random DistilBERT configs: which weights
change, --init-from, the custom head, class weights, focal loss; the study scripts that run
them (reproduce_study, learning_curve, seeds) and the frozen-feature probe. The agreement
levels' experiment is tests/test_agreement_matrix.py."""
import json
import os
import re

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from common import errors, models, phrasebank
from common.env import keras
from tests.conftest import assert_one_line_error, call_main, run_script


def _key(variable) -> str:
    """A variable's Keras 3 path without the model instance's name (classifier, classifier_1...)."""
    return re.sub(r"^classifier(_\d+)?/", "", variable.path)


def _weights(folder):
    m = models.build_classifier(str(folder), phrasebank.LABELS)
    enc = {_key(w): w.numpy() for w in models.encoder_of(m).weights}
    head = {_key(w): w.numpy() for w in m.head.weights}
    assert enc and head and not enc.keys() & head.keys()
    return enc, head


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _none_same(a, b):
    return a.keys() == b.keys() and not any(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def head_run(tiny_distilbert, data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("study") / "head"
    m = call_main("train/head_only.py", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", run, "--epochs", 1,
                  "--no-serving")
    return run, m


def test_head_only_changes_the_head_and_no_encoder_weight(head_run, tiny_distilbert):
    run, _ = head_run
    enc0, head0 = _weights(tiny_distilbert)
    enc1, head1 = _weights(run / "model")
    assert _same(enc0, enc1)
    assert _none_same(head0, head1)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["flags"]["freeze"] == "encoder" and cfg["flags"]["lr"] == 1e-3
    assert cfg["resolved"]["trainable_params"] < cfg["resolved"]["params"] / 10


def test_body_only_keeps_the_trained_head_and_changes_the_encoder(head_run, data_dir, tmp_path):
    head_dir, _ = head_run
    call_main("train/body_finetune.py", "--init-from", head_dir, "--data", data_dir, "--run-dir", tmp_path / "body",
          "--epochs", 1, "--lr", 1e-3, "--train-embeddings", "--no-serving")  # as eval/reproduce_study.py runs it
    enc0, head0 = _weights(head_dir / "model")
    enc1, head1 = _weights(tmp_path / "body" / "model")
    assert _same(head0, head1)  # restored exactly from the head-only run, then frozen
    changed = [k for k in enc0 if not np.array_equal(enc0[k], enc1[k])]
    assert len(changed) >= len(enc0) - 2  # every encoder weight that gets a gradient moved


def _saved_head(path, head) -> dict:
    """head.weights.h5 read with h5py, not through Keras' loading: {variable path: array}.
    Keras saves each Dense as a group <list>/<layer>/vars holding 0 (kernel) and 1 (bias):
    the hidden layers under hidden_layers/ in order, the output layer as the one other."""
    import h5py
    groups = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: groups.append((name, {k: obj[k][()] for k in obj}))
                     if isinstance(obj, h5py.Group) and name.endswith("/vars") and len(obj) else None)
    order = lambda g: int(re.search(r"(?:_(\d+))?/vars$", g[0]).group(1) or 0)  # noqa: E731  (dense, dense_1, ...)
    hidden = sorted((g for g in groups if g[0].startswith("hidden_layers/")), key=order)
    rest = [g for g in groups if not g[0].startswith("hidden_layers/")]
    assert len(hidden) == len(head.hidden_layers) and len(rest) == 1, groups
    out = {}
    for dense, (_, arrays) in zip([*head.hidden_layers, head.logits], hidden + rest):
        assert sorted(arrays) == ["0", "1"]
        out[_key(dense.kernel)], out[_key(dense.bias)] = arrays["0"], arrays["1"]
    return out


def test_init_from_restores_the_earlier_run_exactly(head_run, data_dir, tmp_path):
    """Every weight of the model --init-from builds equals the earlier run's model/, read apart
    from the project's loading: the encoder by KerasHub's own Backbone.from_preset, the head's
    file by h5py; compared by variable path."""
    import keras_hub
    from common import config, training
    head_dir, _ = head_run
    cfg = config.Config(init_from=str(head_dir), data=data_dir, precision="fp32", run_dir=str(tmp_path / "run"))
    run = training.start(cfg, "test")
    with run.harness.strategy.scope():
        model = training.build_model(run)
    backbone = keras_hub.models.Backbone.from_preset(str(head_dir / "model"))
    theirs = {_key(w): w.numpy() for w in backbone.weights}
    theirs.update(_saved_head(str(head_dir / "model" / models.HEAD_WEIGHTS), model.head))
    mine = {_key(w): w.numpy() for w in model.weights}  # by path: frozen weights list last
    assert len(mine) == len(model.weights) and mine.keys() == theirs.keys()
    assert all(mine[k].shape == theirs[k].shape and np.array_equal(mine[k], theirs[k]) for k in mine)


def test_body_finetune_requires_init_from(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        call_main("train/body_finetune.py", "--data", data_dir, "--run-dir", tmp_path / "run")
    assert e.value.code == 2 and "--init-from is required" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_custom_head_trains_under_two_replicas_and_bf16_and_reloads(pooling, tiny_distilbert, data_dir, tmp_path):
    run = tmp_path / pooling
    m = call_main("train/custom_head.py", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", run,
                  "--epochs", 1, "--pooling", pooling, "--head-hidden", "16,8", "--cpu-replicas", 2,
                  "--precision", "bf16")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["resolved"]["replicas"] == 2 and cfg["resolved"]["precision"] == "bf16"
    model = models.build_classifier(str(run / "model"), phrasebank.LABELS)
    assert model.head.kind == "custom" and model.head_config["pooling"] == pooling
    assert [l.units for l in model.head.hidden_layers] == [16, 8]
    logits = model(models.dummy_inputs())
    assert logits.dtype.name == "float32" and logits.shape == (1, 3)
    keras.mixed_precision.set_global_policy("float32")
    call_main("eval/evaluate.py", run)  # the eval script loads custom heads too
    ev = json.loads((run / "eval" / "AllAgree-test" / "metrics.json").read_text())
    assert ev["n"] == m["test"]["n"]


def test_custom_head_logits_are_float32_under_mixed_precision(tiny_distilbert):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        m = models.build_classifier(tiny_distilbert, phrasebank.LABELS, 0.1, "custom", "mean", (8,), "relu")
        assert m.head.kind == "custom" and [l.units for l in m.head.hidden_layers] == [8]
        assert m.head.hidden_layers[0].compute_dtype == "bfloat16"
        assert m(models.dummy_inputs()).dtype.name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_balanced_class_weights_match_sklearn_and_are_logged(tiny_distilbert, data_dir, tmp_path):
    call_main("train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", tmp_path / "cw",
          "--epochs", 1, "--class-weight", "balanced", "--loss", "focal", "--no-serving")
    cfg = json.loads((tmp_path / "cw" / "config.json").read_text())
    y = [l for _, l in phrasebank.load_splits(data_dir, "all")["train"]]
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    got = [cfg["resolved"]["class_weight"][str(i)] for i in range(3)]
    assert np.allclose(got, expected)
    counts = np.bincount(y)
    assert np.allclose(got, len(y) / (3 * counts))  # the definition, independently
    assert cfg["flags"]["loss"] == "focal"


@pytest.mark.slow
def test_reproduce_study_notebook_recipe_and_split_per_encoder_and_resumes(tiny_distilbert, tiny_bert, data_dir,
                                                                          tmp_path):
    """The README's study command, small: two encoders side by side, the notebook's recipe
    and split (its 227 test sentences), one seed, one epoch; a rerun resumes (trains nothing)."""
    out = tmp_path / "study"
    args = ["--models", f"{tiny_distilbert},{tiny_bert}", "--data", data_dir, "--levels", "all", "--experiments",
            "head,full", "--seeds", 1, "--epochs", 1, "--recipe", "notebook", "--split", "notebook",
            "--out", out, "--", "--max-length", 64, "--train-examples", 48]
    run_script("eval/reproduce_study.py", *args, timeout=1200)
    table = (out / "study.md").read_text()
    rows = [l for l in table.splitlines() if l.startswith("| tiny-")]
    assert len(rows) == 4 and all("AllAgree test (n=227)" in r for r in rows), table
    names = [os.path.basename(tiny_distilbert), bert := os.path.basename(tiny_bert)]
    assert [r.split(" | ")[0][2:] for r in rows] == names * 2  # side by side, per experiment
    assert "No agreement matrix" in table
    cfg = json.loads((out / bert / "all" / "full" / "seed1" / "config.json").read_text())
    assert cfg["flags"]["recipe"] == "notebook" and cfg["flags"]["split"] == "notebook"
    assert cfg["flags"]["batch_size"] == 8 and cfg["flags"]["decay_steps"] == 10000
    assert cfg["resolved"]["recipe"]["overridden"] == {"max_length": 64}
    test = json.loads((out / bert / "all" / "full" / "seed1" / "metrics.json").read_text())["test"]
    assert test["per_class"]["negative"]["support"] == 30 and test["n"] == 227  # the notebook's test split
    full_row = next(r for r in rows if r.startswith(f"| {bert} |") and "Basic 3" in r)
    assert f"| {test['confusion_matrix']} |".replace(" ", "") in full_row.replace(" ", "")  # Exp 2, one seed
    assert "| AllAgree test (n=227) | 0.952 | 1 |" in full_row  # the notebook's own figure beside ours
    again = run_script("eval/reproduce_study.py", *args, timeout=600)
    assert again.stdout.count("done already") == 4 and "Epoch" not in again.stdout
    assert (out / "study.md").read_text().split("Wall time")[0] == table.split("Wall time")[0]


@pytest.mark.slow
def test_learning_curve_trains_each_size_on_the_same_test_split_and_resumes(tiny_distilbert, data_dir, tmp_path):
    """Experiments 7 and 8, small: two sizes (the few-shot 90 among them), one seed."""
    out = tmp_path / "curve"
    args = ["--model", tiny_distilbert, "--data", data_dir, "--sizes", "0.1,90", "--seeds", 1, "--epochs", 1,
            "--out", out, "--", "--precision", "fp32"]
    run_script("eval/learning_curve.py", *args, timeout=900)
    points = json.loads((out / "learning_curve.json").read_text())
    full = len(phrasebank.load_splits(data_dir, "all")["train"])
    tenth = json.loads((out / "size-0.1" / "seed1" / "metrics.json").read_text())["sizes"]["train"]
    assert not (out / "size-0.1" / "seed1" / "serving").exists()  # measured, not served: --no-serving
    assert abs(tenth - 0.1 * full) <= 2  # class-stratified: a share per class, rounded
    assert [p["train_size"] for p in points] == [90, tenth]  # sorted by size (given as 0.1,90)
    for p in points:  # each point's own run: that many training sentences, the whole test split
        run = out / f"size-{'90' if p['size'] == 90 else '0.1'}" / "seed1"
        m = json.loads((run / "metrics.json").read_text())
        assert m["sizes"]["train"] == p["train_size"] and m["sizes"]["test"] == p["test_n"] == 226
        assert p["accuracy"]["mean"] == m["test"]["accuracy"]
    md = (out / "learning_curve.md").read_text()
    assert "| 90 | 90 |" in md
    from PIL import Image
    assert Image.open(out / "learning_curve.png").size == (600, 400)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tb")).Reload()
    steps = [e.step for e in acc.Tensors("learning_curve/test_accuracy_mean")]
    assert steps == [p["train_size"] for p in points] and "learning_curve" in acc.Tags()["tensors"]
    again = run_script("eval/learning_curve.py", *args, timeout=600)
    assert again.stdout.count("done already") == 2


def test_probe_features_batches_like_one_sentence_at_a_time_and_reads_labels(tiny_distilbert, data_dir):
    """eval/probe_features.py: the batched, padded features equal each sentence's own
    (mean pooling counts real tokens only); the probe table covers the three features."""
    from common import models
    from common.env import tf
    from eval import probe_features
    from tests.conftest import reference_ids
    model = models.build_classifier(tiny_distilbert, phrasebank.LABELS)
    tok = models.load_tokenizer(tiny_distilbert)
    sentences = [s for s, _ in phrasebank.load_splits(data_dir, "all")["test"][:40]]
    batched = probe_features.features(model, tok, sentences, batch_size=16)
    for i in (0, 7, 39):  # the sentence alone, unpadded, its ids from the Hugging Face tokenizer
        ids = tf.constant(reference_ids([sentences[i]], 128), tf.int32)
        h = models.encoder_of(model)({"token_ids": ids, "padding_mask": tf.ones_like(ids)}, training=False)
        h = h.numpy()[0]  # DistilBERT's backbone returns the last hidden states
        np.testing.assert_allclose(batched["mean"][i], h.mean(0), atol=1e-5)
        np.testing.assert_allclose(batched["cls"][i], h[0], atol=1e-5)
    results = probe_features.main(["--model", tiny_distilbert, "--data", data_dir])
    assert set(results) == {"pooler", "cls", "mean"}
    assert all(0 <= r["probe_accuracy"] <= 1 and -1 <= r["mean_cosine"] <= 1 for r in results.values())


@pytest.mark.slow
def test_seeds_runs_one_configuration_per_seed_reports_the_worst_and_resumes(tiny_distilbert, data_dir, tmp_path,
                                                                            capfd):
    out = tmp_path / "seeds"
    cmd = ["--seeds", 2, "--out", out, "--", "train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir,
           "--epochs", 1, "--train-examples", 48, "--precision", "fp32", "--no-serving", "--custom-flag-check"]
    from eval import seeds
    with pytest.raises(errors.TrainingFailed) as bad:  # the train script's own flag error stops the study
        seeds.main([str(a) for a in cmd])
    assert bad.value.exit_code == 2 and "exit status 2" in str(bad.value)
    assert "seed 1" in capfd.readouterr().out and not (out / "seed2").exists()
    cmd = cmd[:-1]
    run_script("eval/seeds.py", *cmd)
    metrics = {k: json.loads((out / f"seed{k}" / "metrics.json").read_text())["test"] for k in (1, 2)}
    assert [json.loads((out / f"seed{k}" / "config.json").read_text())["flags"]["seed"] for k in (1, 2)] == [1, 2]
    worst = min((1, 2), key=lambda k: metrics[k]["accuracy"])
    table = (out / "seeds.md").read_text()
    assert "| 2 | " in table and f"{metrics[worst]['accuracy']:.4f} (seed {worst})" in table
    again = run_script("eval/seeds.py", *cmd)
    assert again.stdout.count("done already") == 2
    # the same --out with other flags: the finished runs are not reported under the new command;
    # the train script refuses them in its own line, and seeds.md stays the first command's
    other = [str(a) for a in cmd]
    other[other.index("--epochs") + 1] = "2"
    proc = run_script("eval/seeds.py", *other, check=False)
    assert proc.returncode == 2 and "done already" not in proc.stdout, proc.stdout
    assert "holds a run made with other flags (--epochs 1 -> 2)" in proc.stderr, proc.stderr[-2000:]
    assert (out / "seeds.md").read_text() == table
    for word in ("--seed", "--see=3", "--run-d"):  # whole, with =, or shortened as argparse takes it
        with pytest.raises(SystemExit) as refused:
            seeds.main(["--out", str(out), "--", "train/full_finetune.py", word, *(["3"] if "=" not in word else [])])
        assert refused.value.code == 2 and "is set per seed" in capfd.readouterr().err


@pytest.mark.slow
def test_own_data_benchmark_writes_its_files_and_tables_each_recipe(tiny_distilbert, data_dir, tmp_path):
    """eval/own_data_benchmark.py: the four files written from the release (their shapes),
    then each recipe trains on a file through the train script, and the table's figures are
    the runs' own metrics.json's; rerunning resumes."""
    import csv
    from collections import Counter
    out = tmp_path / "bench"
    args = ["--model", tiny_distilbert, "--release", data_dir, "--files", "two_class", "--phrasebank", "",
            "--seeds", 1, "--out", out, "--", "--epochs", 1, "--train-examples", 64, "--precision", "fp32"]
    run_script("eval/own_data_benchmark.py", *args)
    counts = {}
    for name in ("50agree", "disputed", "two_class", "imbalanced"):
        with open(out / "data" / f"{name}.csv", newline="", encoding="utf-8") as f:
            counts[name] = Counter(row["label"] for row in csv.DictReader(f))
    levels = phrasebank.deduped_levels(phrasebank.load_levels(data_dir))
    assert sum(counts["50agree"].values()) == len(levels["50"])
    assert sum(counts["disputed"].values()) == len(levels["50"]) - len(levels["all"])
    assert set(counts["two_class"]) == {"negative", "positive"}
    rare = counts["imbalanced"]
    assert rare["neutral"] >= 10 * rare["positive"] and rare["neutral"] >= 20 * rare["negative"] > 0
    table = (out / "own-data.md").read_text()
    for recipe in ("project", "hf"):
        m = json.loads((out / "two_class" / recipe / "seed1" / "metrics.json").read_text())["test"]
        assert f"| two_class | {recipe} | 1 | {m['n']} | {m['accuracy']:.4f} ± 0.0000 | {m['accuracy']:.4f} | " \
               f"{m['macro_f1']:.4f} ± 0.0000 | {m['macro_f1']:.4f} |" in table
    config = json.loads((out / "two_class" / "hf" / "seed1" / "config.json").read_text())
    assert config["flags"]["recipe"] == "hf" and config["flags"]["lr"] == 5e-5
    assert "## Post-training decisions" in table
    assert run_script("eval/own_data_benchmark.py", *args).stdout.count("done already") == 2
    from eval import own_data_benchmark
    with pytest.raises(SystemExit) as refused:  # a flag it sets per run, shortened as argparse takes it
        own_data_benchmark.main([str(a) for a in args] + ["--mod", "other-model"])
    assert refused.value.code == 2
    # a file the finished runs trained on, changed (another release, or edited): refused, not rewritten
    changed = out / "data" / "two_class.csv"
    changed.write_bytes(changed.read_bytes() + b"An added sentence .,positive\r\n")
    before = changed.read_bytes()
    proc = run_script("eval/own_data_benchmark.py", *args, check=False)
    assert_one_line_error(proc, "eval/own_data_benchmark.py", f"{changed}: holds other rows than --release")
    assert changed.read_bytes() == before and "done already" not in proc.stdout
