"""eval/benchmark.py measures the three recipes for real (tiny model, few steps)."""
import json

from tests.conftest import run_script


def test_benchmark_measures_three_recipes(tiny_distilbert, data_dir):
    p = run_script("eval/benchmark.py", "--model", tiny_distilbert, "--data", data_dir, "--steps", 2,
                   "--warmup-steps", 1, "--peak-tflops", 1.0)
    results = json.loads(p.stdout.strip().splitlines()[-1])["benchmark"]
    by = {r["recipe"]: r for r in results}
    assert list(by) == ["notebook", "hf", "project"]
    # padding to 512 / 128 wastes most of each batch; buckets keep it small
    assert by["notebook"]["real_token_share"] < by["hf"]["real_token_share"] < 0.5 < 0.85 <= by["project"]["real_token_share"]
    for r in results:
        assert r["examples_per_sec"] > 0 and r["pipeline_examples_per_sec"] > 0 and r["first_step_seconds"] > 0
        assert r["peak_rss_mb"] > 100 and 0 < r["mfu"] < 1
    assert "| notebook | 512 | 8 | fp32 |" in p.stdout
