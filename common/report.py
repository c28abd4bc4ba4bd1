"""What a finished run reports: validation/test figures, the exported model, metrics.json."""
import hashlib
import os
import time

import numpy as np

from common import calibration, metrics, models, runs
from common.env import keras, tf


def evaluate_splits(model, splits) -> dict:
    """{validation|test: classification figures + logits in example order}."""
    out = {}
    for name, ds, order in (("validation", splits.val, splits.val_order), ("test", splits.test, splits.test_order)):
        logits = models.predict_logits(model, ds, order)
        out[name] = metrics.classification_metrics([l for _, l in splits.rows[name]], logits, splits.labels)
        out[name]["logits"] = logits
    return out


def export(model, tokenizer, run_dir: str) -> None:
    """The model and its tokenizer into run_dir/model, atomically: model.save_to_folder (a
    KerasHub preset of the encoder and tokenizer, head.json and head.weights.h5 beside it)."""
    tmp = runs.staging_dir(os.path.join(run_dir, runs.MODEL))
    model.save_to_folder(tmp, tokenizer)
    runs.publish_dir(tmp, os.path.join(run_dir, runs.MODEL))


def calibrate_run(run_dir: str, results: dict, splits) -> dict:
    """Fit the temperature on the validation logits; ECE / NLL / Brier before and after on
    validation and test (calibration.json, reliability.png, TensorBoard)."""
    labels = {k: [l for _, l in splits.rows[k]] for k in ("validation", "test")}
    writer = tf.summary.create_file_writer(os.path.join(run_dir, runs.TB, "calibration"))
    out = calibration.calibrate(run_dir, {k: results[k]["logits"] for k in labels}, labels, writer)
    print(calibration.summary(out))
    return out


def export_serving(run_dir: str) -> dict:
    """serving/ (raw strings in, calibrated probabilities out), or why not (a tokenizer the
    graph cannot reproduce is refused rather than exported wrong)."""
    from common import serving
    from common.errors import ModelError
    start = time.time()
    try:
        path = serving.export_serving(run_dir)
    except ModelError as e:
        print(f"note: no {runs.SERVING}/ export: {e}")
        return {"exported": False, "why": str(e)}
    print(f"serving SavedModel -> {path} ({time.time() - start:.1f} s)")
    return {"exported": True, "seconds": time.time() - start}


def weights_digest(model) -> str:
    """A short hash of every weight: equal on all workers of a synchronous job."""
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()[:16]


def precision_audit(model) -> dict:
    """What mixed precision really did: the policy, the loss scale at the end (fp16 only:
    a scale that collapsed towards 0 means overflowing gradients), the logits' dtype."""
    opt = model.optimizer
    scale = None
    if isinstance(opt, keras.mixed_precision.LossScaleOptimizer):
        scale = float(opt.dynamic_scale.numpy())
    return {"policy": keras.mixed_precision.global_policy().name, "loss_scale_optimizer": scale is not None,
            "loss_scale": scale, "logits_dtype": models.logits_dtype(model)}


def write_metrics(run_dir: str, results: dict, splits, throughput, wall_start: float,
                  optimizer_steps: int, planned_steps: int, extra: dict = None, per_epoch: list = None) -> dict:
    """metrics.json. per_epoch: the epochs' throughput (epochs.json: every process's), else
    what this process ran (throughput.history)."""
    per_epoch = per_epoch or throughput.history
    steady = per_epoch[1:] or per_epoch  # the first epoch includes tracing
    m = {split: {k: v for k, v in results[split].items() if k != "logits"} for split in ("validation", "test")}
    m.update({
        "optimizer_steps": int(optimizer_steps),
        "planned_steps": int(planned_steps),
        "steps_this_process": throughput.steps,  # a resumed run times only what it ran
        "train_seconds": throughput.train_seconds,
        "wall_seconds": time.time() - wall_start,
        "examples_per_sec": float(np.median([r["examples_per_sec"] for r in steady])) if steady else None,
        "real_tokens_per_sec": float(np.median([r["real_tokens_per_sec"] for r in steady])) if steady else None,
        "real_token_share": splits.train_stats["real_token_share"],
        "pipeline_examples_per_sec": splits.train_stats["pipeline_examples_per_sec"],
        "batch_widths": splits.train_stats["widths"],
        "sizes": {k: len(v) for k, v in splits.rows.items()},
        **(extra or {}),
    })
    runs.write_json(os.path.join(run_dir, runs.METRICS), m)
    return m


def summary_line(m: dict) -> str:
    t, v = m["test"], m["validation"]
    rate = f"{m['examples_per_sec']:.1f} ex/s" if m.get("examples_per_sec") else "no steps run here"
    return (f"val acc {v['accuracy']:.4f} macro-F1 {v['macro_f1']:.4f} | test acc {t['accuracy']:.4f} "
            f"macro-F1 {t['macro_f1']:.4f} | train {m['train_seconds']:.0f}s, {rate}, "
            f"real-token share {m['real_token_share']:.3f}")
