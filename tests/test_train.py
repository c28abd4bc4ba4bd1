"""End-to-end training on tiny random DistilBERT configs: run folder, TensorBoard,
strategies, atomic outputs, kill safety, --help."""
import contextlib
import glob
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from common import config, distribute, errors, runs
from common import REPO_ROOT
from common.env import keras, tf
from tests.conftest import call_main, planned_steps, run_script

def _train(tiny, data_dir, run_dir, *extra):
    return call_main("train/full_finetune.py", "--model", tiny, "--data", data_dir, "--run-dir", run_dir, "--epochs", 2,
                     *extra)


def _tags(event_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(event_dir, size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def tiny_run_elsewhere(tiny_distilbert, data_dir, tmp_path_factory):
    """A run whose --run-dir (root/a/tiny) is not under the working directory (root/other),
    as `cd other && python train/full_finetune.py --run-dir ../a/tiny` makes it; with what
    it printed. Returns (root, run folder, metrics, stdout)."""
    root = tmp_path_factory.mktemp("elsewhere")
    (root / "other").mkdir()
    out, here = io.StringIO(), os.getcwd()
    os.chdir(root / "other")
    try:
        with contextlib.redirect_stdout(out):
            m = _train(tiny_distilbert, data_dir, root / "a" / "tiny", "--lr", "1e-3", "--restore-prior", "on")
    finally:
        os.chdir(here)
    return root, root / "a" / "tiny", m, out.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tiny_run_elsewhere):
    _, run, m, _ = tiny_run_elsewhere
    return run, m


def test_run_folder_is_complete_and_self_describing(tiny_run, data_dir):
    run, m = tiny_run
    for name in ("config.json", "metrics.json", "model/model.weights.h5", "model/config.json", "model/tokenizer.json",
                 "model/head.json", "model/head.weights.h5"):
        assert (run / name).exists(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["flags"]["data"] == data_dir and cfg["flags"]["epochs"] == 2
    assert cfg["versions"]["tensorflow"] == tf.__version__ and cfg["devices"]
    assert cfg["resolved"]["precision"] in ("bf16", "fp32")
    metrics = json.loads((run / "metrics.json").read_text())
    for part in ("validation", "test"):
        for key in ("accuracy", "macro_f1", "loss", "per_class", "confusion_matrix"):
            assert key in metrics[part]
        assert set(metrics[part]["per_class"]) == {"negative", "neutral", "positive"}
        assert sum(map(sum, metrics[part]["confusion_matrix"])) == metrics["sizes"][part]
    assert metrics["real_token_share"] >= 0.85
    assert metrics["examples_per_sec"] > 0 and metrics["train_seconds"] > 0
    assert not glob.glob(str(run / "**" / "*.tmp"), recursive=True)


def test_the_token_cache_sits_beside_the_run_folder_and_nothing_lands_in_the_working_directory(tiny_run_elsewhere):
    root, run, _, _ = tiny_run_elsewhere
    assert sorted(os.listdir(root / "a")) == [".cache", "tiny"]
    cached = list((root / "a" / ".cache" / "encoded").glob("*.json"))
    assert cached and all(json.loads(f.read_text())["ids"]["train"] for f in cached)
    assert os.listdir(root / "other") == []  # the working directory: no runs/, no cache


def test_a_run_ends_naming_its_folder_and_what_to_run_next(tiny_run_elsewhere):
    _, run, _, stdout = tiny_run_elsewhere
    last = [line for line in stdout.splitlines() if line.strip()][-2:]
    assert last[0] == f"run folder: {run}"
    assert last[1].startswith("next: ")
    assert f"python eval/evaluate.py {run}" in last[1] and f"python eval/predict.py {run} --input FILE" in last[1]


def test_default_run_keeps_the_embeddings_and_trains_every_other_weight(tiny_run, tiny_distilbert):
    from common import models
    run, _ = tiny_run

    embedding_paths = set()

    def weights(folder):
        m = models.build_classifier(str(folder), ("negative", "neutral", "positive"))
        embedding_paths.update(w.path for layer in models.embedding_layers(m.backbone) for w in layer.weights)
        return {w.path: w.numpy() for w in m.weights}
    before, after = weights(tiny_distilbert), weights(run / "model")
    assert before.keys() == after.keys()
    same = {k for k in before if (before[k] == after[k]).all()}
    # --no-train-embeddings is the default: token and position embeddings and their LayerNorm stay
    assert same == embedding_paths and len(same) == 4


def test_tensorboard_has_scalars_hparams_and_confusion_image(tiny_run):
    run, _ = tiny_run
    train = _tags(str(run / "tb" / "train")).Tags()["tensors"]
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_macro_f1", "epoch_learning_rate",
                "epoch_examples_per_sec", "epoch_real_tokens_per_sec"):
        assert tag in train, (tag, train)
    val = _tags(str(run / "tb" / "validation")).Tags()
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_macro_f1"):  # one validation pass per epoch
        assert tag in val["tensors"], (tag, val)
    assert "validation/confusion_matrix" in val["tensors"]  # TF2 image summaries are tensors
    hp = _tags(str(run / "tb" / "hparams"))
    assert "_hparams_/session_start_info" in hp.Tags()["tensors"]


def test_saved_model_reloads_and_evaluate_agrees_with_training_report(tiny_run):
    run, m = tiny_run
    p = run_script("eval/evaluate.py", run)
    out = run / "eval" / "AllAgree-test"
    ev = json.loads((out / "metrics.json").read_text())
    # the run's figures were computed from its logits shifted by the prior it put back, the
    # exported model/ carries the prior in its bias: the same predictions
    assert m["restore_prior"]["restored"]
    assert ev["accuracy"] == pytest.approx(m["test"]["accuracy"], abs=1e-9)
    assert ev["macro_f1"] == pytest.approx(m["test"]["macro_f1"], abs=1e-9)
    assert ev["confusion_matrix"] == m["test"]["confusion_matrix"]
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "errors.csv").read_text().splitlines()
    assert lines[0] == "sentence,true,predicted,confidence,tokens"
    assert len(lines) - 1 == round((1 - ev["accuracy"]) * ev["n"])
    assert "accuracy" in p.stdout and "macro avg" in p.stdout


def test_evaluate_on_a_looser_level(tiny_run):
    run, _ = tiny_run
    call_main("eval/evaluate.py", run, "--agreement", "50")
    ev = json.loads((run / "eval" / "50Agree-test" / "metrics.json").read_text())
    assert ev["n"] == 483 and ev["trained_on"] == "all"


@pytest.mark.slow
def test_cpu_replicas_2_trains_with_mirrored_strategy(tiny_distilbert, data_dir, tmp_path):
    m = _train(tiny_distilbert, data_dir, tmp_path / "r2", "--cpu-replicas", 2, "--lr", "1e-3", "--no-serving")
    cfg = json.loads((tmp_path / "r2" / "config.json").read_text())
    assert cfg["resolved"]["replicas"] == 2 and cfg["resolved"]["strategy"] == "MirroredStrategy"
    assert len(cfg["devices"]) == 2
    assert m["test"]["n"] == 226 and (tmp_path / "r2" / "model" / "head.weights.h5").exists()


def test_gpus_more_than_present_is_a_clear_error():
    cfg = config.Config(gpus=2)
    with pytest.raises(errors.FlagError, match=r"--gpus 2: this machine has 0 GPU\(s\)"):
        distribute.setup(cfg)




@pytest.mark.parametrize("flag,policy", [("fp32", "float32"), ("bf16", "mixed_bfloat16"), ("fp16", "mixed_float16")])
def test_precision_flag_sets_the_keras_policy(flag, policy):
    distribute.setup(config.Config(precision=flag))
    assert keras.mixed_precision.global_policy().name == policy
    keras.mixed_precision.set_global_policy("float32")


def test_chief_selection_from_tf_config():
    assert distribute.is_chief_task({"cluster": {"worker": ["a", "b"]}, "task": {"type": "worker", "index": 0}})
    assert not distribute.is_chief_task({"cluster": {"worker": ["a", "b"]}, "task": {"type": "worker", "index": 1}})
    assert distribute.is_chief_task({"cluster": {"chief": ["c"], "worker": ["a"]}, "task": {"type": "chief"}})
    assert not distribute.is_chief_task({"cluster": {"chief": ["c"], "worker": ["a"]},
                                         "task": {"type": "worker", "index": 0}})


def test_atomic_write_never_leaves_a_half_written_file(tmp_path):
    path = str(tmp_path / "metrics.json")
    runs.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        runs.write_json(path, {"a": object.__new__(type("Unserialisable", (), {"__str__": None}))})
    with pytest.raises(ZeroDivisionError):
        runs.write_csv(str(tmp_path / "x.csv"), ["h"], ([1 / 0] for _ in range(1)))
    assert json.loads(open(path).read()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


@pytest.mark.slow
def test_kill_mid_epoch_leaves_no_metrics_and_rerun_resumes_without_losing_or_repeating_steps(
        tiny_distilbert, data_dir, tmp_path):
    run = tmp_path / "killed"
    args = [sys.executable, os.path.join(REPO_ROOT, "train/full_finetune.py"), "--model", tiny_distilbert,
            "--data", data_dir, "--run-dir", str(run), "--epochs", "3", "--precision", "fp32",
            "--backup-every-steps", "7"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
    seen = ""
    for line in proc.stdout:  # once the second epoch is under way, kill -9 mid-epoch
        seen += line
        if line.startswith("Epoch 2/3"):
            time.sleep(1.0)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, seen[-2000:]
    assert not (run / "metrics.json").exists() and not (run / "model").exists()
    assert (run / "backup").exists()
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run / "backup" / "chief")))
    restored = int(reader.get_tensor([k for k in reader.get_variable_to_shape_map() if "optimizer/_iterations" in k][0]))
    # the same command again resumes from the backup, mid-epoch, and finishes the plan exactly
    p = run_script("train/full_finetune.py", *args[2:])
    assert "resuming from" in p.stdout and "Epoch 1/3" not in p.stdout, p.stdout[-2000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["optimizer_steps"] == m["planned_steps"] == planned_steps(data_dir)
    # throughput counts only what this process ran (not the epochs' full lengths)
    assert 0 < restored < m["planned_steps"] and m["steps_this_process"] == m["planned_steps"] - restored
    assert m["test"]["n"] == 226 and (run / "model" / "head.weights.h5").exists()
    assert not (run / "backup").exists()  # removed once training completed


SCRIPTS = sorted(os.path.relpath(p, REPO_ROOT) for d in ("train", "tune", "eval")
                 for p in glob.glob(os.path.join(REPO_ROOT, d, "*.py")))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help_with_its_example_commands_line_by_line(script, capsys):
    """--help shows the flags, and the description's example commands as written, one per
    line (not reflowed into a paragraph)."""
    with pytest.raises(SystemExit) as e:
        call_main(script, "--help")
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage:") and "--help" in out
    import importlib
    doc = importlib.import_module(script[:-3].replace("/", ".")).__doc__
    examples = [line for line in doc.splitlines() if line.lstrip().startswith("python ")]
    assert examples, doc  # every script documents how it is run
    help_lines = out.splitlines()
    for line in examples:
        assert line in help_lines, (line, out[:2000])
