"""Using a finished run: eval/predict.py on CSV / JSONL / stdin, the serving SavedModel in a
process with TensorFlow and tensorflow-text only, calibration, evaluate.py on a user's
labelled file, and the inference benchmark. A tiny random DistilBERT run (the trained
MiniLM run is in test_minilm.py). The reference for every probability is the run's model/
read with plain KerasHub (the backbone preset, the head from head.json and
head.weights.h5) and called on one sentence at a time, with ids from the Hugging Face
`tokenizers` library (conftest.reference_ids): no tokenizer, batching, sorting or padding
of ours in it."""
import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from common import REPO_ROOT, phrasebank
from common.finished_run import FinishedRun
from tests.conftest import call_main, reference_ids, run_script

SERVE_ONLY = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the tokenizer's ops)
texts = json.load(open(sys.argv[2]))
loaded = tf.saved_model.load(sys.argv[1])
fn = loaded.signatures["serving_default"]
out = {"probabilities": [], "label": [], "label_id": [], "ids": []}
for i in range(0, len(texts), 50):
    r = fn(text=tf.constant(texts[i:i + 50]))
    out["probabilities"] += r["probabilities"].numpy().tolist()
    out["label"] += [x.decode() for x in r["label"].numpy()]
    out["label_id"] += r["label_id"].numpy().tolist()
    x = loaded.token_ids(text=tf.constant(texts[i:i + 50]))  # the ids the model was given, unpadded
    out["ids"] += [row[m == 1].tolist() for row, m in zip(x["input_ids"].numpy(), x["attention_mask"].numpy())]
out["imported"] = sorted(m for m in ("transformers", "tokenizers", "torch", "keras_hub") if m in sys.modules)
json.dump(out, open(sys.argv[3], "w"))
"""


def serve_in_fresh_process(serving_dir, texts, tmp_path) -> dict:
    """The serving SavedModel in a new Python that imports TensorFlow and tensorflow-text only."""
    src, dst = tmp_path / "texts.json", tmp_path / "served.json"
    src.write_text(json.dumps(texts))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", SERVE_ONLY, str(serving_dir), str(src), str(dst)], check=True,
                   cwd=str(tmp_path), env=env, capture_output=True, timeout=300)
    return json.loads(dst.read_text())


def one_at_a_time(run_dir, texts, temperature=None, logits=None):
    """Calibrated probabilities from the run's model/ called per sentence (the Hugging Face
    tokenizer's ids, no padding, float32); or from `logits` such a call returned (one_logits)."""
    from common import calibration
    z = one_logits(run_dir, texts) if logits is None else logits
    z = z / (calibration.temperature_of(run_dir) if temperature is None else temperature)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def one_logits(run_dir, texts):
    """Logits of the run's model/ as plain KerasHub reads it: the backbone preset
    (Backbone.from_preset), the head built from head.json with head.weights.h5 loaded; each
    sentence alone, its ids from the Hugging Face `tokenizers` library (every test run uses
    the MiniLM test model's uncased vocabulary)."""
    import keras_hub
    from common import models, runs
    from common.env import keras, tf
    keras.mixed_precision.set_global_policy("float32")
    model_dir = os.path.join(run_dir, "model")
    head_config = runs.read_json(os.path.join(model_dir, models.HEAD_CONFIG))
    backbone = keras_hub.models.Backbone.from_preset(model_dir)
    head = models.ClassificationHead(head_config["architecture"], len(head_config["labels"]), head_config["kind"],
                                     head_config["pooling"], head_config["hidden"], head_config["dropout"],
                                     head_config["activation"], hidden_dim=backbone.hidden_dim, name="head")
    bert = head_config["architecture"] == "bert"

    @tf.function(input_signature=[tf.TensorSpec([1, None], tf.int32)])  # one graph for every length (eager: 0.2 s a call)
    def call(ids):
        feed = {"token_ids": ids, "padding_mask": tf.ones_like(ids)}
        if bert:
            feed["segment_ids"] = tf.zeros_like(ids)
        out = backbone(feed, training=False)
        features = ({"sequence": out["sequence_output"], "pooled": out["pooled_output"]} if bert else
                    {"sequence": out})
        return head({**features, "mask": feed["padding_mask"]}, training=False)
    call(tf.constant([[101, 102]]))  # builds the head's layers, then its weights
    head.load_weights(os.path.join(model_dir, models.HEAD_WEIGHTS))
    max_length = runs.read_json(os.path.join(run_dir, "config.json"))["flags"]["max_length"]
    return np.array([np.asarray(call(tf.constant([ids], tf.int32)), np.float64)[0]
                     for ids in reference_ids(texts, max_length)])


@pytest.fixture(scope="module")
def tiny_run(tiny_distilbert, data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("predict") / "run"
    call_main("train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--train-examples", 96,
              "--epochs", 1, "--run-dir", run)
    return str(run)


@pytest.fixture(scope="module")
def test_sentences(data_dir):
    return [s for s, _ in phrasebank.load_splits(data_dir, "all")["test"]]


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_predict_csv_keeps_order_and_ids_and_matches_one_at_a_time(tiny_run, test_sentences, tmp_path):
    from eval import predict
    # shuffled lengths, ids not in order: the batching sorts by length inside, the output must not
    texts = test_sentences[:40][::-1]
    ids = [f"n{(7 * i) % 41}" for i in range(len(texts))]
    src = tmp_path / "in.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["source", "id", "headline"])
        w.writerows(("wire", i, t) for i, t in zip(ids, texts))
    out = tmp_path / "out.csv"
    predict.main([tiny_run, "--input", str(src), "--output", str(out), "--batch-size", "8", "--precision", "fp32"])
    rows = read_csv(out)
    assert [r["id"] for r in rows] == ids and [r["text"] for r in rows] == texts
    probs = np.array([[float(r[f"p_{c}"]) for c in phrasebank.LABELS] for r in rows])
    ref = one_at_a_time(tiny_run, texts)
    np.testing.assert_allclose(probs, ref, atol=2e-5)
    assert [r["label"] for r in rows] == [phrasebank.LABELS[i] for i in ref.argmax(1)]


def test_predict_jsonl_and_min_confidence(tiny_run, test_sentences, tmp_path):
    from eval import predict
    texts = test_sentences[40:60]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"url": f"u/{i}", "title": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out.jsonl"
    ref = one_at_a_time(tiny_run, texts)
    cut = float(np.median(ref.max(1)))  # half the rows fall below it
    predict.main([tiny_run, "--input", str(src), "--text-column", "title", "--id-column", "url",
                  "--output", str(out), "--min-confidence", str(cut), "--precision", "fp32"])
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["url"] for r in rows] == [f"u/{i}" for i in range(len(texts))]
    expect = [phrasebank.LABELS[p.argmax()] if p.max() >= cut else "abstain" for p in ref]
    assert [r["label"] for r in rows] == expect and "abstain" in expect and set(expect) != {"abstain"}


@pytest.mark.slow
def test_predict_reads_stdin_as_a_user_pipes_it(tiny_run, test_sentences):
    texts = test_sentences[:5]
    p = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "eval/predict.py"), tiny_run, "--input", "-",
                        "--output-format", "jsonl", "--precision", "fp32"], input="\n".join(texts) + "\n",
                       capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(l) for l in p.stdout.splitlines()]  # stdout holds the rows only
    assert [r["text"] for r in rows] == texts
    np.testing.assert_allclose([[r[f"p_{c}"] for c in phrasebank.LABELS] for r in rows], one_at_a_time(tiny_run, texts),
                               atol=2e-5)
    assert "5 texts labelled" in p.stderr


def test_predict_truncates_long_texts_and_says_how_many(tiny_run, test_sentences, tmp_path, capsys):
    from eval import predict
    long = " ".join(test_sentences[:12])  # far over max_length 128 tokens
    src = tmp_path / "in.txt"
    src.write_text(f"{test_sentences[0]}\n{long}\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    predict.main([tiny_run, "--input", str(src), "--output", str(out), "--precision", "fp32"])
    assert "1 longer than 128 tokens were truncated" in capsys.readouterr().err
    rows = read_csv(out)
    assert len(rows) == 2
    np.testing.assert_allclose([float(rows[1][f"p_{c}"]) for c in phrasebank.LABELS],
                               one_at_a_time(tiny_run, [long])[0], atol=2e-5)  # the first 128 tokens


@pytest.mark.parametrize("name,content,flags,message", [
    ("empty-line", b"text\nProfit rose .\n\"\"\nSales fell .\n", [], "in.csv line 3: empty text"),
    ("blank-text-line", b"Profit rose .\n   \nSales fell .\n", ["--format", "text"], "in.csv line 2: empty text"),
    ("not-utf8", b"text\nProfit rose .\nNet sales \xe9 fell .\n", [], "in.csv line 3: not UTF-8 (byte 0xe9)"),
    ("missing-column", b"id,headline\n1,Profit rose .\n", ["--text-column", "body"],
     "in.csv: no column 'body' (it has: id, headline)"),
    ("no-text-column", b"id,title,body\n1,Profit rose .,x\n", [], "pass --text-column"),
    ("ragged-row", b"id,text\n1,Profit rose .,extra\n", [], "in.csv line 2: 3 fields, the header has 2"),
    ("jsonl-without-its-id", b'{"text": "Profit rose .", "url": "a"}\n{"text": "Sales fell ."}\n',
     ["--format", "jsonl", "--id-column", "url"], "in.csv line 2: no field 'url' (it has: text); every line needs it"),
])
def test_predict_refuses_bad_input_with_one_line(tiny_run, tmp_path, name, content, flags, message):
    src = tmp_path / "in.csv"
    src.write_bytes(content)
    p = run_script("eval/predict.py", tiny_run, "--input", src, *flags, check=False, user_env=True) \
        if name == "empty-line" else None
    if p is not None:  # once as a user sees it: exit 2, one line, no traceback, nothing on stdout
        assert p.returncode == 2 and p.stdout == "", p.stderr[-2000:]
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and message in lines[0] and "--skip-empty" in lines[0], p.stderr[-2000:]
        return
    from common.errors import DataError
    from eval import predict
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        predict.main([tiny_run, "--input", str(src), *flags])


def test_skip_empty_drops_empty_rows_and_keeps_ids(tiny_run, tmp_path):
    from eval import predict
    src = tmp_path / "in.csv"
    src.write_text('id,text\na,Profit rose .\nb,""\nc,Sales fell .\n')
    out = tmp_path / "out.csv"
    predict.main([tiny_run, "--input", str(src), "--output", str(out), "--skip-empty"])
    assert [r["id"] for r in read_csv(out)] == ["a", "c"]


def test_serving_savedmodel_without_transformers_matches_python_path(tiny_run, test_sentences, tmp_path):
    served = serve_in_fresh_process(os.path.join(tiny_run, "serving"), test_sentences, tmp_path)
    assert served["imported"] == []  # neither KerasHub, transformers nor tokenizers were needed
    run = FinishedRun.open(tiny_run)
    probs, _, _ = run.probabilities(test_sentences)
    got = np.array(served["probabilities"])
    assert len(got) == len(test_sentences) == 226
    # the same ids as predict's (a tiny random model's probabilities hardly move with them), and
    # as the Hugging Face tokenizer's
    assert served["ids"] == run.encode(test_sentences)[0] == reference_ids(test_sentences, run.max_length)
    np.testing.assert_array_equal(served["label_id"], probs.argmax(1))
    assert served["label"] == [phrasebank.LABELS[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(got, probs, atol=1e-3)
    assert np.abs(got - probs).max() < 1e-5  # in fact: same ids, same float32 model


def test_finished_run_logits_are_the_evaluation_batches_logits(tiny_run, data_dir):
    """One length-ordered batching: FinishedRun.logits (predict, evaluate) and the run's own
    evaluation (models.predict_logits over data.sorted_dataset) give the same numbers."""
    from common import data, models
    run = FinishedRun.open(tiny_run)
    rows = phrasebank.load_splits(data_dir, "all")["test"]
    ids, _ = run.encode([s for s, _ in rows])
    ds, order = data.sorted_dataset(ids, [y for _, y in rows], 64, run.max_length, run.tokenizer.pad_token_id)
    np.testing.assert_array_equal(run.logits(ids, batch_size=64), models.predict_logits(run.model, ds, order))


def test_finished_run_figures_are_float32_whatever_the_global_policy(tiny_run):
    """A run's figures are computed in float32 (FinishedRun's precision rule), even in a
    process whose policy is mixed precision (a bf16 training process exporting serving/),
    and that process keeps its policy. Every layer, not only the logits layer: that one
    computes in float32 under any policy (models.float32_logits)."""
    from common.env import keras
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        run = FinishedRun.open(tiny_run)
        model = run.model
        layers = list(model._flatten_layers(include_self=False))  # every layer, nested ones too
        assert len(layers) > 10 and {l.compute_dtype for l in layers} == {"float32"} == {model.compute_dtype}
        assert run.precision == "fp32"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_calibrate_and_export_rebuild_an_older_run(tiny_run, tmp_path, test_sentences):
    """A run from before calibration: no calibration.json, serving/ at T = 1.
    eval/calibrate.py fits T on validation and re-exports serving/ with it."""
    import shutil
    from common import calibration, runs, serving
    from eval import calibrate
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old, ignore=shutil.ignore_patterns("serving", "calibration.json", "reliability.png"))
    assert calibration.temperature_of(str(old)) == 1.0
    serving.export_serving(str(old))  # its serving/ as it was: T = 1
    report = calibrate.main([str(old)])
    t = runs.read_json(str(old / "calibration.json"))["temperature"]
    assert t == report["temperature"] and t != 1.0
    served = serve_in_fresh_process(str(old / "serving"), test_sentences[:30], tmp_path)
    np.testing.assert_allclose(served["probabilities"], one_at_a_time(str(old), test_sentences[:30], t), atol=1e-4)
    assert (old / "reliability.png").stat().st_size > 1000


def test_a_no_serving_run_writes_no_serving_and_export_adds_it_later(tiny_distilbert, data_dir, tmp_path,
                                                                     test_sentences, capsys):
    """--no-serving (the study scripts' runs): the run finishes without serving/, says so in
    metrics.json, eval/calibrate.py does not add one, and eval/export.py writes it afterwards,
    serving what predict's path gives."""
    from eval import calibrate, export
    run = tmp_path / "run"
    call_main("train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--train-examples", 64,
              "--epochs", 1, "--precision", "fp32", "--no-serving", "--run-dir", run)
    assert (run / "model").is_dir() and not (run / "serving").exists()
    m = json.loads((run / "metrics.json").read_text())
    assert m["serving"] == {"exported": False, "why": "--no-serving (eval/export.py writes it)"}
    capsys.readouterr()
    calibrate.main([str(run)])
    assert not (run / "serving").exists()
    assert f"python eval/export.py {run} writes one" in capsys.readouterr().out  # what to run instead
    export.main([str(run)])
    served = serve_in_fresh_process(str(run / "serving"), test_sentences[:20], tmp_path)
    probs, _, _ = FinishedRun.open(str(run)).probabilities(test_sentences[:20])
    np.testing.assert_allclose(served["probabilities"], probs, atol=1e-3)


def test_serving_export_refuses_a_tokenizer_it_cannot_reproduce():
    """A byte-level BPE tokenizer (RoBERTa/GPT-style) has no [CLS]/[SEP] to frame its ids as
    the graph does (as eval/predict.py does for WordPiece): refused, with what to use instead."""
    import keras_hub
    from common import serving
    from common.errors import ModelError
    bpe = keras_hub.tokenizers.BytePairTokenizer(vocabulary={"a": 0, "b": 1, "ab": 2, "<unk>": 3}, merges=["a b"],
                                                 unsplittable_tokens=["<unk>"])
    with pytest.raises(ModelError, match="WordPiece .* only; this model's is BytePairTokenizer. Serve it with "
                                         "eval/predict.py"):
        serving.check_tokenizer(bpe)


def test_evaluate_on_a_users_labelled_csv_with_a_label_map(tiny_run, data_dir, tmp_path):
    from eval import evaluate
    rows = phrasebank.load_splits(data_dir, "all")["test"][:30]
    theirs = {0: "bearish", 1: "flat", 2: "bullish"}
    src = tmp_path / "desk.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["headline", "tone"])
        w.writerows((s, theirs[y]) for s, y in rows)
    m, report, out, mistakes = evaluate.evaluate_file(FinishedRun.open(tiny_run), str(src), "headline", "tone",
                                                      "bearish=negative,flat=neutral,bullish=positive")
    pred = one_at_a_time(tiny_run, [s for s, _ in rows]).argmax(1)
    truth = np.array([y for _, y in rows])
    assert m["n"] == 30 and m["accuracy"] == pytest.approx((pred == truth).mean())
    expect = np.zeros((3, 3), int)
    np.add.at(expect, (truth, pred), 1)
    assert m["confusion_matrix"] == expect.tolist()
    assert set(os.listdir(out)) >= {"report.txt", "error_analysis.md", "metrics.json", "confusion_matrix.png",
                                    "reliability.png", "errors.csv"}
    assert len(read_csv(os.path.join(out, "errors.csv"))) == mistakes == int((pred != truth).sum())
    assert m["calibration"]["after"]["accuracy"] == m["accuracy"]  # a temperature never changes a label
    # a label the map does not cover: the line and the fix
    from common.errors import DataError
    with pytest.raises(DataError, match=r"desk.csv line 2: tone '\w+' is not in --label-map .*add \w+="):
        evaluate.main([tiny_run, "--csv", str(src), "--text-column", "headline", "--label-column", "tone",
                       "--label-map", "nope=negative"])


@pytest.mark.parametrize("id_column", ["label", "p_neutral", "confidence"])
def test_an_id_column_named_as_an_output_column_is_refused(tiny_run, tmp_path, id_column):
    """--id-column label (to carry the gold label through) would have had the prediction
    overwrite it: the CSV held the predicted label twice, the JSONL no id at all."""
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text(f"text,{id_column}\nProfit rose .,gold\n", encoding="utf-8")
    from common.errors import FlagError
    from eval import predict
    with pytest.raises(FlagError, match=f"--id-column {id_column}: the output has a '{id_column}' column of its own"):
        predict.main([tiny_run, "--input", str(src), "--id-column", id_column, "--output", str(out)])
    assert not out.exists()


def test_evaluating_two_files_of_one_name_keeps_both_results(tiny_run, data_dir, tmp_path):
    """a/test.csv, then b/test.jsonl: both would have been eval/file-test/, the second replacing
    the first's figures and mistakes. The second goes beside it; each file, evaluated again,
    finds its own folder."""
    from eval import evaluate
    rows = phrasebank.load_splits(data_dir, "all")["test"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "test.csv", tmp_path / "b" / "test.jsonl"
    with open(first, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *((s, phrasebank.LABELS[y]) for s, y in rows[:12])])
    second.write_text("".join(json.dumps({"text": s, "label": phrasebank.LABELS[y]}) + "\n" for s, y in rows[12:30]),
                      encoding="utf-8")
    m1, _, out1, _ = evaluate.evaluate_file(FinishedRun.open(tiny_run), str(first))
    kept = (pathlib.Path(out1) / "metrics.json").read_bytes()
    m2, _, out2, _ = evaluate.evaluate_file(FinishedRun.open(tiny_run), str(second))
    assert (m1["n"], m2["n"]) == (12, 18) and out1 != out2
    assert (pathlib.Path(out1) / "metrics.json").read_bytes() == kept
    assert json.loads((pathlib.Path(out2) / "metrics.json").read_text())["file"] == str(second)
    assert evaluate.evaluate_file(FinishedRun.open(tiny_run), str(first))[2] == out1
    assert evaluate.evaluate_file(FinishedRun.open(tiny_run), str(second))[2] == out2


def test_the_default_id_field_may_be_missing_from_some_jsonl_lines(tiny_run, tmp_path):
    """'id' picked by default (from the first line) is copied where a line has it; only a
    field named with --id-column is required on every line."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"text": "Profit rose .", "id": "a1"}\n{"text": "Sales fell ."}\n', encoding="utf-8")
    from eval import predict
    predict.main([tiny_run, "--input", str(src), "--output", str(out)])
    assert [json.loads(line).get("id") for line in out.read_text().splitlines()] == ["a1", None]
