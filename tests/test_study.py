"""The notebook's experiments as scripts, on tiny random DistilBERT configs: which weights
change, --init-from, the custom head, class weights, focal loss."""
import importlib
import json
import os

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from common import errors, models, phrasebank
from common.env import keras, tf
from tests.conftest import run_script


def _main(script, *args):
    keras.backend.clear_session()
    return importlib.import_module(f"train.{script}").main([str(a) for a in args])


def _weights(folder):
    m = models.build_classifier(str(folder))
    key = lambda w: w.name.split("/", 1)[1]  # noqa: E731  (drop the model instance's name)
    enc = {key(w): w.numpy() for w in models.encoder_of(m).weights}
    head = {key(w): w.numpy() for l in models.head_layers(m) for w in l.weights}
    assert enc and head
    return enc, head


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _none_same(a, b):
    return a.keys() == b.keys() and not any(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def head_run(tiny_distilbert, data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("study") / "head"
    m = _main("head_only", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", run, "--epochs", 1)
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
    _main("body_finetune", "--init-from", head_dir, "--data", data_dir, "--run-dir", tmp_path / "body",
          "--epochs", 1, "--lr", 1e-3, "--train-embeddings")  # as eval/reproduce_study.py runs it
    enc0, head0 = _weights(head_dir / "model")
    enc1, head1 = _weights(tmp_path / "body" / "model")
    assert _same(head0, head1)  # restored exactly from the head-only run, then frozen
    changed = [k for k in enc0 if not np.array_equal(enc0[k], enc1[k])]
    assert len(changed) >= len(enc0) - 2  # every encoder weight that gets a gradient moved


def test_init_from_restores_the_earlier_run_exactly(head_run, data_dir):
    from transformers import TFAutoModelForSequenceClassification
    from common import config, training
    head_dir, _ = head_run
    cfg = config.Config(init_from=str(head_dir), data=data_dir, precision="fp32")
    run = training.start(cfg, "test")
    with run.harness.strategy.scope():
        model = training.build_model(run)
    ref = TFAutoModelForSequenceClassification.from_pretrained(str(head_dir / "model"))
    mine = {w.name.split("/", 1)[1]: w.numpy() for w in model.weights}  # by name: frozen weights list last
    theirs = {w.name.split("/", 1)[1]: w.numpy() for w in ref.weights}
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)


def test_body_finetune_requires_init_from(data_dir):
    p = run_script("train/body_finetune.py", "--data", data_dir, check=False)
    assert p.returncode == 2 and "--init-from is required" in p.stderr


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_custom_head_trains_under_two_replicas_and_bf16_and_reloads(pooling, tiny_distilbert, data_dir, tmp_path):
    run = tmp_path / pooling
    m = _main("custom_head", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", run, "--epochs", 1,
              "--pooling", pooling, "--head-hidden", "16,8", "--cpu-replicas", 2, "--precision", "bf16")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["resolved"]["replicas"] == 2 and cfg["resolved"]["precision"] == "bf16"
    model = models.build_classifier(str(run / "model"))
    assert isinstance(model, models.CustomHeadClassifier) and model.head_config["pooling"] == pooling
    assert [l.units for l in model.hidden_layers] == [16, 8]
    logits = model(model.dummy_inputs)
    assert logits.dtype.name == "float32" and logits.shape == (1, 3)
    keras.mixed_precision.set_global_policy("float32")
    run_script("eval/evaluate.py", run)  # the eval script loads custom heads too
    ev = json.loads((run / "eval" / "AllAgree-test" / "metrics.json").read_text())
    assert ev["n"] == m["test"]["n"]


def test_custom_head_logits_are_float32_under_mixed_precision(tiny_distilbert):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        m = models.CustomHeadClassifier.create(tiny_distilbert, "mean", (8,), 0.1, "relu")
        assert m.hidden_layers[0].compute_dtype == "bfloat16"
        assert m(m.dummy_inputs).dtype.name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_balanced_class_weights_match_sklearn_and_are_logged(tiny_distilbert, data_dir, tmp_path):
    _main("full_finetune", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", tmp_path / "cw",
          "--epochs", 1, "--class-weight", "balanced", "--loss", "focal")
    cfg = json.loads((tmp_path / "cw" / "config.json").read_text())
    y = [l for _, l in phrasebank.load_splits(data_dir, "all")["train"]]
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    got = [cfg["resolved"]["class_weight"][str(i)] for i in range(3)]
    assert np.allclose(got, expected)
    counts = np.bincount(y)
    assert np.allclose(got, len(y) / (3 * counts))  # the definition, independently
    assert cfg["flags"]["loss"] == "focal"


@pytest.fixture(scope="module")
def level_runs(tiny_distilbert, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("levels")
    out = {}
    for level, split in (("all", "hash"), ("50", "hash"), ("all", "seed"), ("all", "notebook")):
        run = root / f"{level}-{split}"
        _main("full_finetune", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", run, "--epochs", 1,
              "--agreement", level, "--split", split, "--precision", "fp32")
        out[(level, split)] = run
    return out


def test_agreement_matrix_never_evaluates_a_training_sentence(level_runs, data_dir, tmp_path):
    am = importlib.import_module("eval.agreement_matrix")
    rows = am.main([str(level_runs[("all", "hash")]), str(level_runs[("50", "hash")]), "--out", str(tmp_path / "m")])
    assert len(rows) == 8 and all(r[-1] == 0 for r in rows)  # 2 runs x 4 levels, no overlap
    # independently: every evaluated sentence (errors.csv lists the mistakes; the split gives all)
    for (level, _), run in [(k, v) for k, v in level_runs.items() if k[1] == "hash"]:
        trained = {phrasebank.normalise(s) for part in ("train", "validation")
                   for s, _ in phrasebank.load_splits(data_dir, level)[part]}
        for ev in ("all", "75", "66", "50"):
            tested = {phrasebank.normalise(s) for s, _ in phrasebank.load_splits(data_dir, ev)["test"]}
            assert not trained & tested, (level, ev)
            n = json.loads((run / "eval" / f"{phrasebank.level_name(ev)}-test" / "metrics.json").read_text())["n"]
            assert n == len(tested)
    text = (tmp_path / "m" / "matrix.md").read_text()
    assert "| AllAgree |" in text and "| 50Agree |" in text
    assert (tmp_path / "m" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_agreement_matrix_refuses_a_seed_split_run(level_runs, tmp_path):
    am = importlib.import_module("eval.agreement_matrix")
    with pytest.raises(errors.RunDirError, match="--split seed, whose splits are not nested"):
        am.main([str(level_runs[("all", "seed")]), "--out", str(tmp_path / "m")])
    # and the leak it guards against is real: the seed split of AllAgree tests sentences 50Agree trains on
    flags = json.loads((level_runs[("all", "seed")] / "config.json").read_text())["flags"]
    seen = phrasebank.seen_sentences({**flags, "agreement": "50"})
    assert sum(phrasebank.normalise(s) in seen for s, _ in phrasebank.load_splits(flags["data"], "all", "seed")["test"]) > 0


def test_summarize_groups_by_configuration_with_mean_and_std(level_runs):
    from eval import summarize
    text = summarize.main([str(v) for v in level_runs.values()])
    rows = [l for l in text.splitlines() if l.startswith("| full_finetune")]
    assert len(rows) == 4  # (all, hash), (50, hash), (all, seed), (all, notebook) differ in flags
    m = json.loads((level_runs[("50", "hash")] / "metrics.json").read_text())["test"]
    row50 = [r for r in rows if "agreement=50Agree" in r and "split=hash" in r][0]
    assert f"| 1 | {m['accuracy']:.4f} ± 0.0000 |" in row50


def test_evaluate_refuses_a_notebook_split_run_on_another_level(level_runs, data_dir):
    """The notebook splits each level on its own, so 50Agree's test split holds sentences an
    AllAgree run trained on: refused. On its own level the split is scored as drawn (the
    notebook's 227) and without the one test sentence that repeats a training one."""
    from eval.evaluate import evaluate_run
    run = str(level_runs[("all", "notebook")])
    trained = {phrasebank.normalise(s) for part in ("train", "validation")
               for s, _ in phrasebank.load_splits(data_dir, "all", "notebook")[part]}
    test50 = phrasebank.load_splits(data_dir, "50", "notebook")["test"]
    leaked = sum(phrasebank.normalise(s) in trained for s, _ in test50)
    assert leaked > 100  # the leak is real
    with pytest.raises(errors.RunDirError, match=rf"{leaked} sentences of 50Agree's test split were in this run's"):
        evaluate_run(run, "50")
    m, *_ = evaluate_run(run)
    own = phrasebank.load_splits(data_dir, "all", "notebook")["test"]
    assert m["n"] == 227 and m["train_overlap"] == sum(phrasebank.normalise(s) in trained for s, _ in own) == 1
    assert m["leak_free"]["n"] == 226


def test_error_analysis_report(level_runs):
    from eval.evaluate import evaluate_run
    evaluate_run(str(level_runs[("all", "hash")]), "50")
    md = (level_runs[("all", "hash")] / "eval" / "50Agree-test" / "error_analysis.md").read_text()
    for section in ("## Confusion pairs", "## Mistakes by length", "## Mistakes by agreement", "most confident mistakes"):
        assert section in md
    # 50Agree's test split holds sentences of every agreement level
    assert all(f"| {lv} |" in md for lv in ("AllAgree", "75Agree", "66Agree", "50Agree"))


def test_evaluate_never_scores_sentences_the_model_trained_on(level_runs, data_dir):
    from eval.evaluate import evaluate_run
    seed_run = str(level_runs[("all", "seed")])
    flags = json.loads((level_runs[("all", "seed")] / "config.json").read_text())["flags"]
    trained = {phrasebank.normalise(s) for part in ("train", "validation")
               for s, _ in phrasebank.load_splits(data_dir, "all", "seed")[part]}
    test50 = phrasebank.load_splits(data_dir, "50", "seed")["test"]
    assert sum(phrasebank.normalise(s) in trained for s, _ in test50) > 0  # the leak is real under --split seed
    with pytest.raises(errors.RunDirError, match=r"sentences of 50Agree's test split were in this run's training"):
        evaluate_run(seed_run, "50")
    # its own level: the split as trained (duplicates and all), plus the figures without the
    # repeats. 50Agree's seed split repeats 2 training sentences in its test split: a run folder
    # that says it trained there (the same weights, its config.json edited) shows the treatment.
    import shutil
    run50 = level_runs[("all", "seed")].parent / "50-seed-copy"
    shutil.copytree(seed_run, run50, ignore=shutil.ignore_patterns("eval"))
    cfg = json.loads((run50 / "config.json").read_text())
    cfg["flags"]["agreement"] = "50"
    (run50 / "config.json").write_text(json.dumps(cfg))
    trained50 = {phrasebank.normalise(s) for part in ("train", "validation")
                 for s, _ in phrasebank.load_splits(data_dir, "50", "seed")[part]}
    repeats = [i for i, (s, _) in enumerate(test50) if phrasebank.normalise(s) in trained50]
    m, *_ = evaluate_run(str(run50))
    assert m["train_overlap"] == len(repeats) == 2 and m["n"] == len(test50)
    assert m["leak_free"]["n"] == len(test50) - 2
    assert not evaluate_run(seed_run)[0]["train_overlap"]  # AllAgree's seed split repeats none
    # the hash split is nested: cross-level evaluation goes ahead, with nothing seen in training
    m50, *_ = evaluate_run(str(level_runs[("all", "hash")]), "50")
    assert m50["train_overlap"] == 0 and "leak_free" not in m50 and flags["split"] == "seed"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A second tiny random encoder (BERT, 2 layers, 32 wide) for the side-by-side study."""
    from transformers import AutoTokenizer, BertConfig, TFBertForSequenceClassification
    from tests.conftest import minilm_dir
    path = tmp_path_factory.mktemp("tiny-bert") / "tiny-bert"
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    tf.keras.utils.set_random_seed(1)
    model = TFBertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=64, num_labels=3))
    model(model.dummy_inputs)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def test_reproduce_study_notebook_recipe_and_split_per_encoder_and_resumes(tiny_distilbert, tiny_bert, data_dir,
                                                                          tmp_path):
    """The README's study command, small: two encoders side by side, the notebook's recipe
    and split (its 227 test sentences), one seed, one epoch; a rerun resumes (trains nothing)."""
    out = tmp_path / "study"
    args = ["--models", f"{tiny_distilbert},{tiny_bert}", "--data", data_dir, "--levels", "all", "--experiments",
            "head,full", "--seeds", 1, "--epochs", 1, "--recipe", "notebook", "--split", "notebook",
            "--out", out, "--", "--max-length", 64, "--train-examples", 48]
    p = run_script("eval/reproduce_study.py", *args, timeout=1200)
    table = (out / "study.md").read_text()
    rows = [l for l in table.splitlines() if l.startswith("| tiny-")]
    assert len(rows) == 4 and all("AllAgree test (n=227)" in r for r in rows), table
    names = [os.path.basename(tiny_distilbert), os.path.basename(tiny_bert)]
    assert [r.split(" | ")[0][2:] for r in rows] == names * 2  # side by side, per experiment
    assert "No agreement matrix" in table
    cfg = json.loads((out / "tiny-bert" / "all" / "full" / "seed1" / "config.json").read_text())
    assert cfg["flags"]["recipe"] == "notebook" and cfg["flags"]["split"] == "notebook"
    assert cfg["flags"]["batch_size"] == 8 and cfg["flags"]["decay_steps"] == 10000
    assert cfg["resolved"]["recipe"]["overridden"] == {"max_length": 64}
    test = json.loads((out / "tiny-bert" / "all" / "full" / "seed1" / "metrics.json").read_text())["test"]
    assert test["per_class"]["negative"]["support"] == 30 and test["n"] == 227  # the notebook's test split
    full_row = next(r for r in rows if r.startswith("| tiny-bert |") and "Basic 3" in r)
    assert f"| {test['confusion_matrix']} |".replace(" ", "") in full_row.replace(" ", "")  # Exp 2, one seed
    assert "| AllAgree test (n=227) | 0.952 | 1 |" in full_row  # the notebook's own figure beside ours
    again = run_script("eval/reproduce_study.py", *args, timeout=600)
    assert again.stdout.count("done already") == 4 and "Epoch" not in again.stdout
    assert (out / "study.md").read_text().split("Wall time")[0] == table.split("Wall time")[0]


def test_learning_curve_trains_each_size_on_the_same_test_split_and_resumes(tiny_distilbert, data_dir, tmp_path):
    """Experiments 7 and 8, small: two sizes (the few-shot 90 among them), one seed."""
    out = tmp_path / "curve"
    args = ["--model", tiny_distilbert, "--data", data_dir, "--sizes", "0.1,90", "--seeds", 1, "--epochs", 1,
            "--out", out, "--", "--precision", "fp32"]
    run_script("eval/learning_curve.py", *args, timeout=900)
    points = json.loads((out / "learning_curve.json").read_text())
    full = len(phrasebank.load_splits(data_dir, "all")["train"])
    tenth = json.loads((out / "size-0.1" / "seed1" / "metrics.json").read_text())["sizes"]["train"]
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
    model = models.build_classifier(tiny_distilbert)
    tok = models.load_tokenizer(tiny_distilbert)
    sentences = [s for s, _ in phrasebank.load_splits(data_dir, "all")["test"][:40]]
    batched = probe_features.features(model, tok, sentences, batch_size=16)
    for i in (0, 7, 39):
        ids = tf.constant([tok(sentences[i])["input_ids"]])
        h = models.encoder_of(model)(input_ids=ids, training=False).last_hidden_state.numpy()[0]
        np.testing.assert_allclose(batched["mean"][i], h.mean(0), atol=1e-5)
        np.testing.assert_allclose(batched["cls"][i], h[0], atol=1e-5)
    results = probe_features.main(["--model", tiny_distilbert, "--data", data_dir])
    assert set(results) == {"pooler", "cls", "mean"}
    assert all(0 <= r["probe_accuracy"] <= 1 and -1 <= r["mean_cosine"] <= 1 for r in results.values())


def test_summarize_errors_lists_each_seeds_mistakes(level_runs, tmp_path):
    """--errors on one-run configurations: every mistake of the run's own test split, once."""
    from eval import summarize
    from eval.evaluate import evaluate_run
    runs_ = [level_runs[("all", "hash")], level_runs[("50", "hash")]]
    for run in runs_:
        evaluate_run(str(run))
    text = summarize.main([str(r) for r in runs_] + ["--errors"])
    sections = text.split("\n## ")[1:]
    assert len(sections) == 2
    for section in sections:
        level = "50" if "agreement=50" in section.splitlines()[0] else "all"
        m = json.loads((level_runs[(level, "hash")] / "metrics.json").read_text())["test"]
        rows = [l for l in section.splitlines() if l.startswith("| 1/1 |")]
        assert len(rows) == round((1 - m["accuracy"]) * m["n"]) > 0
    import shutil
    unevaluated = tmp_path / "unevaluated"  # a finished run that eval/evaluate.py has not seen
    unevaluated.mkdir()
    for name in ("config.json", "metrics.json"):
        shutil.copy(level_runs[("all", "hash")] / name, unevaluated / name)
    with pytest.raises(errors.RunDirError, match="run python eval/evaluate.py"):
        summarize.main([str(unevaluated), "--errors"])


def test_seeds_runs_one_configuration_per_seed_reports_the_worst_and_resumes(tiny_distilbert, data_dir, tmp_path):
    out = tmp_path / "seeds"
    cmd = ["--seeds", 2, "--out", out, "--", "train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir,
           "--epochs", 1, "--train-examples", 48, "--precision", "fp32", "--custom-flag-check"]
    bad = run_script("eval/seeds.py", *cmd, check=False)
    assert bad.returncode == 2 and "seed 1" in bad.stdout  # the train script's own flag error stops the study
    cmd = cmd[:-1]
    run_script("eval/seeds.py", *cmd)
    metrics = {k: json.loads((out / f"seed{k}" / "metrics.json").read_text())["test"] for k in (1, 2)}
    assert [json.loads((out / f"seed{k}" / "config.json").read_text())["flags"]["seed"] for k in (1, 2)] == [1, 2]
    worst = min((1, 2), key=lambda k: metrics[k]["accuracy"])
    table = (out / "seeds.md").read_text()
    assert f"| 2 | " in table and f"{metrics[worst]['accuracy']:.4f} (seed {worst})" in table
    again = run_script("eval/seeds.py", *cmd)
    assert again.stdout.count("done already") == 2
    refused = run_script("eval/seeds.py", "--out", out, "--", "train/full_finetune.py", "--seed", 3, check=False)
    assert refused.returncode == 2 and "--seed is set per seed" in refused.stderr


def test_summarize_counts_a_flag_an_older_run_lacks_as_its_default(level_runs, tmp_path):
    """A run made before a flag existed ran with its default: it groups with today's runs."""
    import shutil
    from eval import summarize
    src = level_runs[("all", "hash")]
    for name, drop in (("old", ("ema", "label_smoothing", "extra_agreement")), ("new", ())):
        (tmp_path / name).mkdir()
        shutil.copy(src / "metrics.json", tmp_path / name / "metrics.json")
        cfg = json.loads((src / "config.json").read_text())
        cfg["flags"] = {k: v for k, v in cfg["flags"].items() if k not in drop}
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    rows = [l for l in summarize.main([str(tmp_path)]).splitlines() if l.startswith("| full_finetune")]
    assert len(rows) == 1 and "| full_finetune | 2 |" in rows[0]
