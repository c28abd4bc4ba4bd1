"""eval/benchmark.py measures the three recipes for real (tiny model, few steps / one epoch)."""
import json
import os

import pytest

from tests.conftest import call_main, run_script


def test_one_recipes_steady_state_measured_in_this_process(tiny_distilbert, data_dir, tmp_path, monkeypatch, capsys):
    """What each recipe's own process runs (--one), here, for the project recipe: the quick
    tier's part of the benchmark below."""
    monkeypatch.chdir(tmp_path)  # nothing to write but the token cache, beside the default run folder (runs/)
    call_main("eval/benchmark.py", "--one", "project", "--model", tiny_distilbert, "--data", data_dir, "--steps", 2,
              "--warmup-steps", 1, "--peak-tflops", 1.0)
    result, = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RESULT ")]
    r = json.loads(result[len("RESULT "):])
    assert r["recipe"] == "project" and r["padding"] == "buckets" and r["batch"] == 16  # the default
    assert r["real_token_share"] >= 0.9 and r["examples_per_sec"] > 0 and r["first_step_seconds"] > 0
    assert 0 < r["mfu"] < 1


@pytest.mark.slow
def test_benchmark_measures_three_recipes(tiny_distilbert, data_dir, tmp_path):
    # the steady-state measure has no output folder, but training.start writes the token cache
    # beside its default run folder (runs/ in the working directory): a working directory of its own
    p = run_script("eval/benchmark.py", "--model", tiny_distilbert, "--data", data_dir, "--steps", 2,
                   "--warmup-steps", 1, "--peak-tflops", 1.0, cwd=tmp_path)
    results = json.loads(p.stdout.strip().splitlines()[-1])["benchmark"]
    by = {r["recipe"]: r for r in results}
    assert list(by) == ["notebook", "hf", "project"]
    # padding to 512 / 128 wastes most of each batch; buckets keep it small
    assert by["notebook"]["real_token_share"] < by["hf"]["real_token_share"] < 0.5 < 0.9 <= by["project"]["real_token_share"]
    for r in results:
        assert r["examples_per_sec"] > 0 and r["pipeline_examples_per_sec"] > 0 and r["first_step_seconds"] > 0
        assert r["peak_rss_mb"] > 100 and 0 < r["mfu"] < 1
    assert "| notebook | 512 | 8 | fp32 |" in p.stdout


@pytest.mark.slow
def test_time_to_accuracy_trains_each_recipe_to_the_end_with_its_flags(tiny_distilbert, data_dir, tmp_path):
    out = tmp_path / "bench"
    p = run_script("eval/benchmark.py", "--to-accuracy", "--model", tiny_distilbert, "--data", data_dir,
                   "--recipes", "notebook,project", "--epochs", 1, "--train-examples", 160, "--out", out, timeout=900)
    results = json.loads(p.stdout.strip().splitlines()[-1])["to_accuracy"]
    assert [r["recipe"] for r in results] == ["notebook", "project"]
    for r in results:
        run = out / r["recipe"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert r["test_accuracy"] == metrics["test"]["accuracy"] and metrics["test"]["n"] == 226
        assert metrics["optimizer_steps"] == metrics["planned_steps"]  # trained to the end
        assert metrics["sizes"]["train"] == 160
        assert 0 < r["train_seconds"] < r["wall_seconds"] <= r["process_seconds"]
    flags = {r: json.loads((out / r / "config.json").read_text())["flags"] for r in ("notebook", "project")}
    nb = flags["notebook"]
    assert (nb["padding"], nb["max_length"], nb["batch_size"], nb["precision"]) == ("fixed", 512, 8, "fp32")
    assert nb["recipe"] == "notebook" and flags["project"]["recipe"] == "project"  # common/recipes.py, by name
    assert (nb["lr"], nb["lr_schedule"], nb["decay_steps"], nb["adam_epsilon"], nb["weight_decay"], nb["clipnorm"],
            nb["train_embeddings"]) == (5e-5, "linear", 10000, 1e-7, 0.0, 0.0, True)
    assert nb["class_weight"] == "none" and flags["project"]["class_weight"] == "sqrt"
    assert flags["project"]["padding"] == "buckets" and flags["project"]["batch_size"] == 16
    assert results[0]["real_token_share"] < 0.1 < 0.9 <= results[1]["real_token_share"]
    assert results[1]["speedup_vs_notebook"] == results[0]["wall_seconds"] / results[1]["wall_seconds"]
    table = (out / "benchmark.md").read_text()
    assert "| notebook |" in table and "| project |" in table and os.path.exists(out / "benchmark.json")


@pytest.mark.slow
def test_gpu_check_on_a_cpu_trains_fp32_and_bf16_into_one_table(tiny_distilbert, data_dir, tmp_path):
    """eval/gpu_check.py's CPU path: one full_finetune.py process per precision, each row
    the figures of its own run (precision as asked, float32 evaluation), peak memory from the
    process; a rerun reuses the finished runs."""
    out = tmp_path / "check"
    p = run_script("eval/gpu_check.py", "--model", tiny_distilbert, "--data", data_dir, "--out", out,
                   "--", "--train-examples", 64, "--epochs", 2, timeout=900)
    rows = [line for line in p.stdout.splitlines() if line.startswith("| fp32 |") or line.startswith("| bf16 |")]
    assert [r.split("|")[1:3] for r in rows] == [[" fp32 ", " off "], [" bf16 ", " off "]], p.stdout
    for row, precision in zip(rows, ("fp32", "bf16")):
        run = out / f"{precision}-xla-off"
        m = json.loads((run / "metrics.json").read_text())
        c = json.loads((run / "config.json").read_text())
        assert c["resolved"]["precision"] == precision and c["flags"]["agreement"] == "all"
        assert m["precision"]["policy"] == {"fp32": "float32", "bf16": "mixed_bfloat16"}[precision]
        cells = [x.strip() for x in row.split("|")[1:-1]]
        assert cells[2:6] == [f"{m['examples_per_sec']:.1f}", f"{m['wall_seconds']:.0f}",
                              f"{m['test']['accuracy']:.4f}", f"{m['test']['macro_f1']:.4f}"]
        assert float(cells[6]) > 100  # MB: a process that imported TensorFlow and trained
    assert (out / "gpu_check.md").read_text().splitlines()[0] == "device: CPU"
    again = run_script("eval/gpu_check.py", "--model", tiny_distilbert, "--data", data_dir, "--out", out,
                       "--", "--train-examples", 64, "--epochs", 2)
    assert again.stdout.count("reused run") == 2
