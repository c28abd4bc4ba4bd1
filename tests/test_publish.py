"""Issue 34: the model card every run writes, eval/publish.py (a local preset folder, and the
Hub through tests/hub_standin.py), and predict.py / KerasHub loading a published model back.

One tiny-DistilBERT run (a real one, through the train script) serves every test here."""
import json
import os
import re

import numpy as np
import pytest
import yaml

from tests.conftest import assert_one_line_error, folder_listing, run_script

TEXTS = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .", "Sales fell 5 % .",
         "The company \u00a0 has offices in Helsinki ."]  # (a no-break space: KerasHub's own tokenizer differs there)


@pytest.fixture(scope="module")
def run(tiny_distilbert, data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("publish") / "run $(touch pwned) `x` \u00e9"  # a hostile folder name
    # its own process: the card quotes the command (config.json's argv), as a user's run has it
    run_script("train/full_finetune.py", "--model", tiny_distilbert, "--data", data_dir, "--epochs", 1,
               "--train-examples", 64, "--lr", "3e-3", "--precision", "fp32", "--no-serving", "--run-dir", run_dir)
    return run_dir


def front_matter(path) -> tuple:
    text = open(path, encoding="utf-8").read()
    m = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    assert m, text[:300]
    return yaml.safe_load(m.group(1)), m.group(2)


def predicted(source, input_csv, tmp_path, name, env_extra=None) -> list:
    out = tmp_path / f"{name}.csv"
    run_script("eval/predict.py", source, "--input", input_csv, "--output", out, "--precision", "fp32",
               env_extra=env_extra)
    import csv
    with open(out, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def probs(rows) -> np.ndarray:
    return np.array([[float(r[k]) for k in ("p_negative", "p_neutral", "p_positive")] for r in rows])


@pytest.fixture(scope="module")
def from_run(run, input_csv, tmp_path_factory) -> list:
    """predict.py's rows from the run folder itself: what every published copy must give."""
    return predicted(run, input_csv, tmp_path_factory.mktemp("from-run"), "run")


@pytest.fixture(scope="module")
def input_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "texts.csv"
    import csv
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text"], *[[t] for t in TEXTS]])
    return path


def test_the_runs_card_parses_and_its_figures_are_the_runs(run):
    meta, body = front_matter(run / "README.md")
    m = json.loads((run / "metrics.json").read_text())
    cal = json.loads((run / "calibration.json").read_text())
    assert meta["license"] == "cc-by-nc-sa-3.0" and meta["pipeline_tag"] == "text-classification"
    assert meta["datasets"] == ["takala/financial_phrasebank"] and meta["language"] == "en"
    results = meta["model-index"][0]["results"]
    figures = {x["type"]: x["value"] for r in results for x in r["metrics"]}
    assert figures == {"accuracy": m["test"]["accuracy"], "f1": m["test"]["macro_f1"]}
    assert {r["dataset"]["split"] for r in results} == {"test"}
    for name, c in m["test"]["per_class"].items():
        assert f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |" in body
    assert f"T = {cal['temperature']:.4f}" in body
    assert f"test ECE {cal['test']['before']['ece']:.4f} before, {cal['test']['after']['ece']:.4f} after" in body
    assert "(confusion_matrix.png)" in body and (run / "confusion_matrix.png").stat().st_size > 1000
    # the reproducing command, quoted: the folder's $() and backticks stay text inside one fence
    import shlex
    assert f"--run-dir {shlex.quote(str(run))}" in body and not (run.parent / "pwned").exists()


def test_publish_to_a_folder_then_predict_from_it_as_from_the_run(run, input_csv, from_run, tmp_path):
    folder = tmp_path / "published"
    run_script("eval/publish.py", run, "--to", folder)
    assert {"task.json", "finsent.json", "README.md", "confusion_matrix.png", "model.weights.h5"} <= set(
        os.listdir(folder))
    from_folder = predicted(folder, input_csv, tmp_path, "pub")
    assert [r["label"] for r in from_run] == [r["label"] for r in from_folder]
    np.testing.assert_allclose(probs(from_folder), probs(from_run), atol=1e-6)
    # KerasHub alone: the calibrated probabilities are the softmax of its logits (ordinary text;
    # its own tokenizer differs on the no-break space)
    from common.env import keras
    import keras_hub
    keras.backend.clear_session()
    classifier = keras_hub.models.TextClassifier.from_preset(str(folder))
    p = keras.ops.convert_to_numpy(keras.ops.softmax(classifier.predict(TEXTS[:2], verbose=0)))
    np.testing.assert_allclose(p, probs(from_run)[:2], atol=1e-6)
    # publishing there again replaces it whole; a folder holding anything else is refused
    run_script("eval/publish.py", run, "--to", folder)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    proc = run_script("eval/publish.py", run, "--to", other, check=False)
    assert_one_line_error(proc, "eval/publish.py", "is not a model published here")
    assert (other / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_a_killed_publish_leaves_the_earlier_model_and_two_at_once_leave_one_whole(run, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from common import REPO_ROOT
    target = tmp_path / "published"
    run_script("eval/publish.py", run, "--to", target)
    first = folder_listing(target)
    command = [sys.executable, os.path.join(REPO_ROOT, "eval", "publish.py"), str(run), "--to", str(target)]
    orphans = set()
    for files_staged in (0, 3):  # killed as staging starts, and once it has written files
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        staging = []
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            staging = [tmp_path / f for f in os.listdir(tmp_path) if f.endswith(".tmp") and f not in orphans]
            try:
                if staging and len(os.listdir(staging[0])) >= files_staged:
                    break
            except FileNotFoundError:  # renamed into place meanwhile: the publish is ending
                pass
            time.sleep(0.01)
        assert proc.poll() is None and staging, "the publish ended before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        orphans.add(staging[0].name)
        assert folder_listing(target) == first  # the earlier model, whole and unchanged
    assert len([f for f in os.listdir(tmp_path) if f.startswith(".")]) == 2  # the killed ones' staging, hidden
    # two runs published at once to the same folder (one run twice at once: its lock refuses the second):
    # both finish, one whole model is left, and no staging beside it
    import shutil
    twin = tmp_path / "twin"
    shutil.copytree(run, twin / "run")
    procs = [subprocess.Popen([*command[:2], str(r), *command[3:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in (run, twin / "run")]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    assert folder_listing(target).keys() == first.keys()
    assert sorted(os.listdir(tmp_path)) == ["published", "twin"]


def test_a_publish_tidies_only_what_a_killed_publish_of_its_target_left(tmp_path):
    """publish.staging_leftovers: an earlier model a killed publish had moved aside is put back;
    that publish's staging is removed; a live publish's staging, another target's, and a user's
    own hidden folder are not touched."""
    import subprocess
    import sys
    from eval import publish
    target = tmp_path / "published"
    tag = publish.staging_tag(str(target))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    moved_aside = tmp_path / f"{tag}{dead.pid}.ab12.old"
    moved_aside.mkdir()
    (moved_aside / "task.json").write_text("{}")
    keep = [tmp_path / f"{tag}{os.getpid()}.cd34.tmp",  # a live publish's staging
            tmp_path / f"{publish.staging_tag(str(tmp_path / 'other'))}{dead.pid}.ef56.tmp",  # another target's
            tmp_path / ".published-notes", tmp_path / f"{tag}{dead.pid}.x.tmp.mine"]  # the user's own
    for folder in keep:
        folder.mkdir()
    orphan = tmp_path / f"{tag}{dead.pid}.gh78.tmp"
    orphan.mkdir()
    publish.staging_leftovers(str(target))
    assert (target / "task.json").read_text() == "{}"  # put back
    assert not orphan.exists() and not moved_aside.exists()
    assert all(folder.exists() for folder in keep)
    # with the target in place again, a leftover moved-aside copy is removed, not put back
    moved_aside.mkdir()
    publish.staging_leftovers(str(target))
    assert not moved_aside.exists() and (target / "task.json").exists()


TOKEN = "hf_publish_test_token_0123456789"


@pytest.fixture
def hub(tmp_path):
    from tests.hub_standin import HubStandIn
    h = HubStandIn(tokens={TOKEN: ("alice",)})
    env = {"HF_ENDPOINT": h.endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": TOKEN}
    yield h, env
    h.close()


@pytest.mark.slow
def test_publish_to_the_hub_twice_then_predict_from_it(run, input_csv, from_run, tmp_path, hub):
    h, env = hub
    first = run_script("eval/publish.py", run, "--to", "hf://alice/finsent-tiny", env_extra=env)
    assert h.private("alice/finsent-tiny")  # --private is the default
    files = h.files("alice/finsent-tiny")
    assert {"task.json", "finsent.json", "README.md", "confusion_matrix.png", "task.weights.h5"} <= set(files)
    card = files["README.md"].decode()
    assert "from_preset('hf://alice/finsent-tiny')" in card and "license: cc-by-nc-sa-3.0" in card
    second = run_script("eval/publish.py", run, "--to", "hf://alice/finsent-tiny", "--message", "again",
                        env_extra=env)
    messages = [message for _, message, _ in h.commits("alice/finsent-tiny")]
    assert messages[-1] == "again" and len(messages) == len(set(c for c, _, _ in h.commits("alice/finsent-tiny"))) \
        and len(messages) >= 3  # the repository's first commit, then one per publish
    from_hub = predicted("hf://alice/finsent-tiny", input_csv, tmp_path, "hub", env_extra=env)
    np.testing.assert_allclose(probs(from_hub), probs(from_run), atol=1e-6)
    # the token reached the Hub, and nothing written or printed holds it
    assert h.authorizations and all(a == f"Bearer {TOKEN}" for a in h.authorizations)
    for proc in (first, second):
        assert TOKEN not in proc.stdout + proc.stderr
    for root, _, names in os.walk(run):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                assert TOKEN.encode() not in f.read(), os.path.join(root, name)
    assert all(TOKEN.encode() not in content for content in files.values())


@pytest.mark.slow
def test_publish_refusals_are_one_line(run, tmp_path, hub):
    h, env = hub
    no_token = {**env, "HF_TOKEN": ""}
    cases = [
        (no_token, ["--to", "hf://alice/x"], "no Hugging Face token"),
        (env, ["--to", "hf://alice/bad--name"], "not a name the Hub takes"),
        (env, ["--to", "hf://bob/theirs"], "may not write there"),
        (env, ["--to", "hf://alice/x", "--public"], None),  # the card states the PhraseBank's license: allowed
    ]
    for extra_env, args, message in cases:
        proc = run_script("eval/publish.py", run, *args, env_extra=extra_env, check=message is None)
        if message:
            assert_one_line_error(proc, "eval/publish.py", message)
    assert not h.private("alice/x")
    # private by default: an existing public repository is not published to without --public
    proc = run_script("eval/publish.py", run, "--to", "hf://alice/x", env_extra=env, check=False)
    assert_one_line_error(proc, "eval/publish.py", "that repository is public; pass --public")
    # a card edited by hand to another license: a PhraseBank model is not published --public under it
    card = run / "README.md"
    text = card.read_text()
    try:
        card.write_text(text.replace("license: cc-by-nc-sa-3.0", "license: mit"))
        proc = run_script("eval/publish.py", run, "--to", "hf://alice/y", "--public", env_extra=env, check=False)
        assert_one_line_error(proc, "eval/publish.py", "was trained on the Financial PhraseBank")
    finally:
        card.write_text(text)
    assert ("model", "alice/y") not in h.repos
