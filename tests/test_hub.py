"""The Hub code paths (the data zip; a model by Hub id: its safetensors folder fetched with
snapshot_download, then converted by KerasHub) against a local stand-in that speaks the
Hub's protocol (repository info, file listing, files, LFS redirects: tests/hub_standin.py);
the offline errors; and an unreachable Hub failing at once (common/hub.py). In fresh
processes: huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported."""
import os
import subprocess
import sys

import pytest

from common import REPO_ROOT
from tests.conftest import DATA_ZIP, assert_one_line_error, free_port, run_script
from tests.hub_standin import HubStandIn


@pytest.fixture()
def hub(tmp_path):
    h = HubStandIn()
    yield h, {"HF_ENDPOINT": h.endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0",
              "HF_HUB_DISABLE_TELEMETRY": "1"}
    h.close()


def _py(code, env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, **env}, timeout=300)


def test_data_from_hub_is_the_release_zip_and_is_cached(hub, data_dir):
    h, env = hub
    h.add("takala/financial_phrasebank", "data/FinancialPhraseBank-v1.0.zip", DATA_ZIP, "dataset")
    code = "from common import phrasebank; print({k: len(v) for k, v in sorted(phrasebank.load_levels('hub').items())})"
    first = _py(code, env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.strip().splitlines()[-1] == "{'50': 4846, '66': 4217, '75': 3453, 'all': 2264}"
    assert any("/datasets/takala/financial_phrasebank/resolve/" in p for _, p in h.requests)
    # second time: from the cache, with the Hub declared offline
    again = _py(code, {**env, "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr[-2000:]


def test_data_offline_without_cache_is_one_clear_error(hub):
    _, env = hub
    p = _py("from common import phrasebank; phrasebank.load_levels('hub')", {**env, "HF_HUB_OFFLINE": "1"})
    assert p.returncode != 0
    assert "pass --data PATH to a local FinancialPhraseBank-v1.0 folder or zip" in p.stderr


DECOYS = {"tf_model.h5", "pytorch_model.bin", "README.md"}  # in a Hub repository; KerasHub reads none of them


def _with_decoys(tmp_path, folder) -> str:
    """`folder` plus what a Hub repository also holds that KerasHub does not read (the other
    frameworks' weights, a model card): a copy under tmp_path."""
    import shutil
    repo = tmp_path / "repo"
    shutil.copytree(folder, repo)
    for name in DECOYS:
        (repo / name).write_bytes(b"not for KerasHub: " + name.encode())
    return str(repo)


@pytest.mark.slow
def test_train_with_model_and_data_from_hub(hub, tiny_distilbert, tmp_path):
    """--model <Hub id>: the repository's files listed at its commit, and only what KerasHub
    reads downloaded (the weights through the Hub's LFS redirect); the data zip too."""
    h, env = hub
    h.add("takala/financial_phrasebank", "data/FinancialPhraseBank-v1.0.zip", DATA_ZIP, "dataset")
    h.add_folder("standin/tiny-distilbert", _with_decoys(tmp_path, tiny_distilbert))
    run = tmp_path / "run"
    run_script("train/full_finetune.py", "--model", "standin/tiny-distilbert", "--epochs", 1,
               "--run-dir", run, env_extra=env)
    assert (run / "metrics.json").exists()
    assert ("GET", "/api/models/standin/tiny-distilbert/revision/main") in h.requests
    assert any(p.startswith("/api/models/standin/tiny-distilbert/tree/") for _, p in h.requests)
    assert h.fetched("standin/tiny-distilbert") == set(os.listdir(tiny_distilbert))  # config, weights, tokenizer
    assert not h.requested("standin/tiny-distilbert") & DECOYS
    assert "model.safetensors" in h.fetched("standin/tiny-distilbert") and h.cdn_requests
    assert h.fetched("takala/financial_phrasebank", "dataset") == {"data/FinancialPhraseBank-v1.0.zip"}


@pytest.mark.slow
def test_hub_model_loads_its_safetensors_weights_without_torch(hub, minilm, tmp_path):
    """A Hub id's PyTorch safetensors weights, as the classifier holds them (MiniLM, a BERT:
    the word embeddings are KerasHub's token_embedding), with no torch imported; its
    tokenizer loads from the same download, and the second load is from the cache offline."""
    h, env = hub
    h.add_folder("standin/minilm", _with_decoys(tmp_path, minilm))  # config, tokenizer, model.safetensors
    code = ("from common import env, models, phrasebank; import sys; "
            "m = models.build_classifier('standin/minilm', phrasebank.LABELS); "
            "t = models.load_tokenizer('standin/minilm'); "
            "import numpy as np; from safetensors.numpy import load_file; from huggingface_hub import hf_hub_download; "
            "w = load_file(hf_hub_download('standin/minilm', 'model.safetensors'))['embeddings.word_embeddings.weight']; "
            "v, = [x.numpy() for x in m.weights if x.path == 'token_embedding/embeddings']; "
            "print(np.array_equal(w, v), len(t.get_vocabulary()), 'torch' in sys.modules)")
    p = _py(code, env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "True 30522 False"
    assert "model.safetensors" in h.fetched("standin/minilm") and not h.requested("standin/minilm") & DECOYS
    again = _py(code, {**env, "HF_HUB_OFFLINE": "1"})  # from the cache
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == "True 30522 False", again.stderr[-3000:]


@pytest.mark.slow
def test_model_offline_without_local_copy_says_what_to_pass(tmp_path, data_dir):
    p = run_script("train/full_finetune.py", "--model", "distilbert-base-uncased", "--data", data_dir,
                   "--run-dir", tmp_path / "run", check=False,
                   env_extra={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")})
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("full_finetune.py: error: --model distilbert-base-uncased: not found offline")
    assert "pass --model PATH" in last and p.returncode == 2
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "run").exists()


def _unreachable_hub(tmp_path) -> dict:
    """A Hub endpoint nothing listens on (a closed port on this machine), an empty cache, the
    Hub not declared offline, and no proxy that would carry the connection instead."""
    return {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "empty-hf-home"),
            **{k: "" for k in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")}}


def test_unreachable_hub_fails_the_run_at_once_in_one_line(tmp_path, data_dir):
    """No retries with back-off and no screen of warnings from huggingface_hub: one line that
    says the Hub is unreachable and how to skip the check."""
    p = run_script("train/full_finetune.py", "--model", "some/id", "--data", data_dir, "--run-dir", tmp_path / "run",
                   check=False, user_env=True, env_extra=_unreachable_hub(tmp_path))
    assert_one_line_error(p, "train/full_finetune.py", "--model some/id: not found offline")
    assert "unreachable" in p.stderr and "HF_HUB_OFFLINE=1" in p.stderr, p.stderr
    assert not (tmp_path / "run").exists()


def test_unreachable_hub_fails_the_data_download_at_once(tmp_path):
    code = ("from common import errors, phrasebank\n"
            "try:\n    phrasebank.load_levels('hub')\n"
            "except errors.DataError as e:\n    print('DataError:', e)\n")
    p = _py(code, _unreachable_hub(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    line = p.stdout.strip().splitlines()[-1]
    assert line.startswith("DataError: ") and "unreachable" in line and "HF_HUB_OFFLINE=1" in line, line
    assert "pass --data PATH to a local FinancialPhraseBank-v1.0 folder or zip" in line
    assert p.stderr == "", p.stderr  # nothing from huggingface_hub: no retry, no warning
