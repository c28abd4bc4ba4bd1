"""Models trained on one agreement level, evaluated on every level's test split (the
notebook's "Exp 4"): the agreement matrix, eval/evaluate.py's refusal of any split that
repeats training sentences, the error analysis, and eval/summarize.py over such runs.
Tiny random DistilBERT runs, one per (level, split rule)."""
import importlib
import json
from pathlib import Path

import pytest

from common import errors, phrasebank
from common.finished_run import FinishedRun
from common.phrasebank import LEVELS
from tests.conftest import call_main


@pytest.fixture(scope="module")
def level_runs(tiny_distilbert, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("levels")
    out = {}
    for level, split in (("all", "hash"), ("50", "hash"), ("all", "seed"), ("all", "notebook")):
        run = root / f"{level}-{split}"
        call_main("train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--run-dir", run,
                  "--epochs", 1, "--agreement", level, "--split", split, "--precision", "fp32", "--no-serving")
        out[(level, split)] = run
    return out


@pytest.mark.slow
def test_agreement_matrix_cells_are_evaluate_on_each_levels_whole_test_split(level_runs, data_dir, tmp_path):
    am = importlib.import_module("eval.agreement_matrix")
    runs_ = [level_runs[("all", "hash")], level_runs[("50", "hash")]]
    rows = am.main([str(r) for r in runs_] + ["--out", str(tmp_path / "m")])
    names = [phrasebank.level_name(lv) for lv in LEVELS]
    # one row per run and level, each the level's whole test split, with the figures
    # eval/evaluate.py wrote for that run and level
    assert [(r[0], r[1], r[2]) for r in rows] == [(phrasebank.level_name(level), str(level_runs[(level, "hash")]), ev)
                                                  for level in ("all", "50") for ev in names]
    accuracy = {}
    for trained_on, run, tested_on, n, acc, f1, _ in rows:
        level = LEVELS[names.index(tested_on)]
        ev = json.loads((Path(run) / "eval" / f"{tested_on}-test" / "metrics.json").read_text())
        assert n == ev["n"] == len(phrasebank.load_splits(data_dir, level)["test"]), (trained_on, tested_on)
        assert (acc, f1) == (ev["accuracy"], ev["macro_f1"]), (trained_on, tested_on)
        accuracy[(trained_on, tested_on)] = acc
    # the table shows those figures, trained-on level by row, tested-on level by column
    table = (tmp_path / "m" / "matrix.md").read_text().split("## Test accuracy")[1].split("## Test macro-F1")[0]
    for trained_on in ("AllAgree", "50Agree"):
        line = next(l for l in table.splitlines() if l.startswith(f"| {trained_on} |"))
        cells = [f"{accuracy[(trained_on, e)]:.4f} ± 0.0000" for e in names]  # one run per level: std 0
        assert line == f"| {trained_on} | " + " | ".join(cells) + " |"
    assert (tmp_path / "m" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    # and no cell holds a sentence its run trained or validated on (the splits, independently)
    for level in ("all", "50"):
        trained = {phrasebank.normalise(s) for part in ("train", "validation")
                   for s, _ in phrasebank.load_splits(data_dir, level)[part]}
        for ev in LEVELS:
            assert not trained & {phrasebank.normalise(s) for s, _ in phrasebank.load_splits(data_dir, ev)["test"]}


def test_agreement_matrix_refuses_a_seed_split_run(level_runs, tmp_path):
    am = importlib.import_module("eval.agreement_matrix")
    with pytest.raises(errors.RunDirError, match="--split seed, whose splits are not nested"):
        am.main([str(level_runs[("all", "seed")]), "--out", str(tmp_path / "m")])
    # and the leak it guards against is real: the seed split of AllAgree tests sentences 50Agree trains on
    flags = json.loads((level_runs[("all", "seed")] / "config.json").read_text())["flags"]
    seen = phrasebank.seen_sentences(flags["data"], "50", flags["split"])
    assert sum(phrasebank.normalise(s) in seen for s, _ in phrasebank.load_splits(flags["data"], "all", "seed")["test"]) > 0


def test_summarize_groups_by_configuration_with_mean_and_std(level_runs):
    from eval import summarize
    text = summarize.main([str(v) for v in level_runs.values()])
    rows = [l for l in text.splitlines() if l.startswith("| full_finetune")]
    assert len(rows) == 4  # (all, hash), (50, hash), (all, seed), (all, notebook) differ in flags
    m = json.loads((level_runs[("50", "hash")] / "metrics.json").read_text())["test"]
    row50 = [r for r in rows if "agreement=50Agree" in r and "split=hash" in r][0]
    assert f"| 1 | {m['macro_f1']:.4f} ± 0.0000 |" in row50  # --select-metric's figure first (macro-F1)
    assert f"| {m['accuracy']:.4f} ± 0.0000 |" in row50


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
        evaluate_run(FinishedRun.open(run), "50")
    m, *_ = evaluate_run(FinishedRun.open(run))
    own = phrasebank.load_splits(data_dir, "all", "notebook")["test"]
    assert m["n"] == 227 and m["train_overlap"] == sum(phrasebank.normalise(s) in trained for s, _ in own) == 1
    assert m["leak_free"]["n"] == 226


def test_error_analysis_report(level_runs):
    from eval.evaluate import evaluate_run
    evaluate_run(FinishedRun.open(str(level_runs[("all", "hash")])), "50")
    md = (level_runs[("all", "hash")] / "eval" / "50Agree-test" / "error_analysis.md").read_text()
    for section in ("## Confusion pairs", "## Mistakes by length", "## Mistakes by agreement", "most confident mistakes"):
        assert section in md
    # 50Agree's test split holds sentences of every agreement level
    assert all(f"| {lv} |" in md for lv in ("AllAgree", "75Agree", "66Agree", "50Agree"))


def test_evaluate_never_scores_sentences_the_model_trained_on(level_runs, data_dir):
    from eval.evaluate import evaluate_run
    seed_run = str(level_runs[("all", "seed")])
    trained = {phrasebank.normalise(s) for part in ("train", "validation")
               for s, _ in phrasebank.load_splits(data_dir, "all", "seed")[part]}
    test50 = phrasebank.load_splits(data_dir, "50", "seed")["test"]
    assert sum(phrasebank.normalise(s) in trained for s, _ in test50) > 0  # the leak is real under --split seed
    with pytest.raises(errors.RunDirError, match=r"sentences of 50Agree's test split were in this run's training"):
        evaluate_run(FinishedRun.open(seed_run), "50")
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
    m, *_ = evaluate_run(FinishedRun.open(str(run50)))
    assert m["train_overlap"] == len(repeats) == 2 and m["n"] == len(test50)
    assert m["leak_free"]["n"] == len(test50) - 2
    assert not evaluate_run(FinishedRun.open(seed_run))[0]["train_overlap"]  # AllAgree's seed split repeats none
    # the hash split is nested: cross-level evaluation goes ahead, on 50Agree's whole test split
    m50, *_ = evaluate_run(FinishedRun.open(str(level_runs[("all", "hash")])), "50")
    assert m50["n"] == len(phrasebank.load_splits(data_dir, "50")["test"]) and "leak_free" not in m50


def test_summarize_errors_lists_each_seeds_mistakes(level_runs, tmp_path):
    """--errors on one-run configurations: every mistake of the run's own test split, once."""
    from eval import summarize
    from eval.evaluate import evaluate_run
    runs_ = [level_runs[("all", "hash")], level_runs[("50", "hash")]]
    for run in runs_:
        evaluate_run(FinishedRun.open(str(run)))
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
