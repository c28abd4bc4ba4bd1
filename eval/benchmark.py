#!/usr/bin/env python
"""Three training recipes side by side: same machine, same model, one invocation.

    python eval/benchmark.py --model PATH --data ../shared/data/FinancialPhraseBank-v1.0
    python eval/benchmark.py --to-accuracy --model PATH --data ../shared/data/FinancialPhraseBank-v1.0

Recipes: the train scripts' --recipe presets (common/recipes.py):
  notebook  every sentence padded to 512, batch 8, fp32, Adam 5e-5 PolynomialDecay over 10000
            steps, all weights train, no class weights
  hf        every sentence padded to 128, batch 8, fp32, AdamW 5e-5 linear decay (HF example defaults)
  project   this project's defaults: length buckets, batch 16, --precision auto,
            AdamW 1e-4 warm-up + decay, embeddings frozen, square-root class weights

Steady state (default): per recipe, in its own process (so peak RSS and compile time are
its own), examples/s and real (non-pad) tokens/s = median over --steps timed steps after
--warmup-steps; real-token share; the tf.data pipeline's rate with no model; first step
(trace/compile) time; peak RSS; and an MFU estimate = 6 x non-embedding parameters x real
tokens/s / peak FLOP/s (give --peak-tflops; the device's peak is not measured here).

--to-accuracy: per recipe, train/full_finetune.py trains to the end (--epochs) in its own
process; wall time is the whole process, from its start to its metrics.json; with the
test split's accuracy and macro-F1. Runs go to runs/benchmark-<time>/<recipe>/.

--predict RUN: inference on a finished run, each way in its own process, on the same
--sentences texts (PhraseBank's 50Agree sentences, repeated): eval/predict.py's path
(sorted by length, batched, --precision auto) and the serving SavedModel (tokenizer in the
graph). Sentences/s over all texts, p50 / p99 latency of --requests 1-sentence requests,
load time, peak RSS. (Earlier versions also timed transformers' TF
pipeline("text-classification"): transformers removed its TensorFlow classes after 4.57,
and this project left transformers for KerasHub, so that comparison is gone;
docs/performance.md keeps its last figures.)

Every mode prints a Markdown table and one JSON line.
"""
import argparse
import datetime
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import REPO_ROOT, config, errors, phrasebank, runs  # noqa: E402  (no TensorFlow: the recipes run in their own processes)

# The recipes: common/recipes.py (the train scripts' --recipe), so the benchmark measures
# exactly what `train/full_finetune.py --recipe NAME` runs.
from common.recipes import RECIPES, describe  # noqa: E402
PREDICT_WAYS = ("predict.py", runs.SERVING)
TRAIN_SCRIPT = os.path.join(REPO_ROOT, "train", "full_finetune.py")


def parse(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="distilbert-base-uncased", help="Hub id or local folder, as for the train scripts")
    p.add_argument("--data", default="hub", help="release folder, zip or 'hub', as for the train scripts")
    p.add_argument("--agreement", default="all", choices=phrasebank.LEVEL_CHOICES)
    p.add_argument("--recipes", default="notebook,hf,project", help="comma-separated, the first is the baseline")
    p.add_argument("--steps", type=int, default=20, help="steady state: timed steps per recipe")
    p.add_argument("--warmup-steps", type=int, default=3, help="steady state: untimed steps first (tracing, caches)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak TFLOP/s, for MFU")
    p.add_argument("--to-accuracy", action="store_true", help="train each recipe to the end instead (slow: the "
                   "notebook recipe takes tens of minutes on a 2-core CPU with MiniLM: docs/performance.md)")
    p.add_argument("--epochs", type=int, default=3, help="--to-accuracy: epochs for every recipe")
    p.add_argument("--seed", type=int, default=42, help="--to-accuracy: seed for every recipe")
    p.add_argument("--train-examples", type=float, default=0, help="--to-accuracy: train every recipe on this "
                   "class-stratified subset of the training split (N sentences or a share; a quick check); 0 = all")
    p.add_argument("--out", default="", help="--to-accuracy: folder for the runs (default runs/benchmark-<time>)")
    p.add_argument("--predict", metavar="RUN", help="benchmark inference on this finished run instead")
    p.add_argument("--sentences", type=int, default=5000, help="--predict: texts to label")
    p.add_argument("--requests", type=int, default=200, help="--predict: 1-sentence requests timed for latency")
    p.add_argument("--batch-size", type=int, default=64, help="--predict: batch size (predict.py, serving)")
    p.add_argument("--ways", default=",".join(PREDICT_WAYS), help="--predict: comma-separated, of "
                   + ", ".join(PREDICT_WAYS))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one recipe in this process
    p.add_argument("--predict-one", help=argparse.SUPPRESS)  # internal: measure one inference way
    args = p.parse_args(argv)
    unknown = set(args.recipes.split(",")) - set(RECIPES)
    if unknown:
        p.error(f"--recipes: unknown {sorted(unknown)}; choose from {','.join(RECIPES)}")
    return args


def recipe_config(args, name: str):
    from common import config
    flags = ["--recipe", name, "--model", args.model, "--data", args.data, "--agreement", args.agreement]
    return config.from_args(config.build_parser("").parse_args(flags))


# ----------------------------------------------------------------------------- steady state

def measure(args) -> dict:
    from common import env  # noqa: F401  (first)
    import numpy as np
    from common import models, training
    from common.env import tf
    # The train scripts' own start and model for these flags (nothing is written: no fit/finish)
    run = training.start(recipe_config(args, args.one), "benchmark", run_folder=None)
    cfg, harness, stats = run.cfg, run.harness, run.splits.train_stats
    batches = list(run.splits.train.repeat().take(args.warmup_steps + args.steps))
    with harness.strategy.scope():
        model = training.build_model(run)
    times = []
    for x, labels in batches:
        t0 = time.perf_counter()
        model.train_on_batch(x, labels)
        times.append(time.perf_counter() - t0)
    timed = list(zip(batches, times))[args.warmup_steps:]
    ex_rate = [int(x["attention_mask"].shape[0]) / t for (x, _), t in timed]
    tok_rate = [int(tf.reduce_sum(x["attention_mask"])) / t for (x, _), t in timed]
    emb = sum(layer.count_params() for layer in models.embedding_layers(models.encoder_of(model)))
    non_embedding = model.count_params() - emb
    real_tok_s = float(np.median(tok_rate))
    return {"recipe": args.one, "padding": cfg.max_length if cfg.padding == "fixed" else cfg.padding,
            "batch": cfg.batch_size, "precision": harness.precision, "flags": describe(args.one),
            "examples_per_sec": float(np.median(ex_rate)), "real_tokens_per_sec": real_tok_s,
            "real_token_share": stats["real_token_share"], "pipeline_examples_per_sec": stats["pipeline_examples_per_sec"],
            "first_step_seconds": times[0], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "train_flops_per_sec": 6 * non_embedding * real_tok_s,
            "mfu": 6 * non_embedding * real_tok_s / (args.peak_tflops * 1e12) if args.peak_tflops else None}


def measure_in_own_process(name: str, flags) -> dict:
    """Run this file with `flags` in a new process (its own peak RSS, its own traces) and
    return the JSON of its RESULT line."""
    lines = []
    errors.run_child([sys.executable, os.path.abspath(__file__), *flags], on_line=lines.append)
    line = [l for l in lines if l.startswith("RESULT ")]
    if not line:
        raise errors.TrainingFailed(f"benchmark of {name} printed no RESULT line: {(lines or ['no output'])[-1][:300]}")
    return json.loads(line[0][len("RESULT "):])


def steady_state(args) -> list:
    results = []
    for name in args.recipes.split(","):
        print(f"benchmarking {name} ...", flush=True)
        results.append(measure_in_own_process(name, [
            "--one", name, "--model", args.model, "--data", args.data, "--agreement", args.agreement,
            "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps), "--peak-tflops", str(args.peak_tflops)]))
    base = results[0]["examples_per_sec"]
    print(f"\n| recipe | padding | batch | precision | examples/s | real tokens/s | real-token share | tf.data ex/s "
          f"| first step s | peak RSS MB | train GFLOP/s | MFU | speed vs {results[0]['recipe']} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "n/a"
        print(f"| {r['recipe']} | {r['padding']} | {r['batch']} | {r['precision']} | {r['examples_per_sec']:.1f} | "
              f"{r['real_tokens_per_sec']:.0f} | {r['real_token_share']:.3f} | {r['pipeline_examples_per_sec']:.0f} | "
              f"{r['first_step_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['train_flops_per_sec'] / 1e9:.1f} | {mfu} | "
              f"{r['examples_per_sec'] / base:.1f}x |")
    print(json.dumps({"benchmark": results}))
    return results


# ----------------------------------------------------------------------------- time to accuracy

def train_to_end(args, name: str, run_dir: str) -> dict:
    """One recipe through train/full_finetune.py in a new process; its output streams
    through with a [recipe] prefix. Wall time: process start -> metrics.json written."""
    cmd = [sys.executable, TRAIN_SCRIPT, "--recipe", name, "--model", args.model, "--data", args.data,
           "--agreement", args.agreement, "--epochs", str(args.epochs), "--seed", str(args.seed), "--run-dir", run_dir]
    if args.train_examples:
        cmd += ["--train-examples", f"{args.train_examples:g}"]
    print(f"[{name}] {errors.shell_join(cmd[1:])}", flush=True)
    t0 = time.time()

    def show(line):
        if not line.startswith(("WARNING", "Warning", "  ")):
            print(f"[{name}] {line.rstrip()[:160]}", flush=True)
    errors.run_child(cmd, on_line=show)
    metrics_path = os.path.join(run_dir, runs.METRICS)
    m = runs.read_json(metrics_path)
    return {"recipe": name, "flags": describe(name), "run_dir": run_dir,
            "wall_seconds": os.path.getmtime(metrics_path) - t0, "process_seconds": time.time() - t0,
            "train_seconds": m["train_seconds"], "examples_per_sec": m["examples_per_sec"],
            "real_token_share": m["real_token_share"], "test_accuracy": m["test"]["accuracy"],
            "test_macro_f1": m["test"]["macro_f1"], "val_macro_f1": m["validation"]["macro_f1"]}


def to_accuracy(args) -> list:
    out = args.out or os.path.join("runs", "benchmark-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    names = args.recipes.split(",")
    results = [train_to_end(args, name, os.path.join(out, name)) for name in names]
    base = results[0]
    for r in results:
        r["speedup_vs_" + base["recipe"]] = base["wall_seconds"] / r["wall_seconds"]
    subset = f", {args.train_examples:g} training sentences" if args.train_examples else ""
    lines = [f"Time to accuracy: {args.model}, {args.agreement} agreement, {args.epochs} epochs, seed {args.seed}{subset}",
             "", f"| recipe | flags | wall s (start -> metrics.json) | train s | examples/s | real-token share "
             f"| test accuracy | test macro-F1 | sooner than {base['recipe']} |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['recipe']} | `{r['flags']}` | {r['wall_seconds']:.0f} | {r['train_seconds']:.0f} | "
                     f"{r['examples_per_sec']:.1f} | {r['real_token_share']:.3f} | {r['test_accuracy']:.4f} | "
                     f"{r['test_macro_f1']:.4f} | {r['speedup_vs_' + base['recipe']]:.1f}x |")
    table = "\n".join(lines) + "\n"
    runs.write_text(os.path.join(out, "benchmark.md"), table)
    runs.write_json(os.path.join(out, "benchmark.json"), {"to_accuracy": results})
    print("\n" + table)
    print(json.dumps({"to_accuracy": results}))
    return results


# ----------------------------------------------------------------------------- inference

def predict_texts(args):
    from common import phrasebank, runs
    source = args.data if args.data != "hub" or not args.predict else runs.load_run(args.predict)["flags"]["data"]
    pool = [s for s, _ in phrasebank.load_levels(source)["50"]]
    return [pool[i % len(pool)] for i in range(args.sentences)]


def measure_prediction(args) -> dict:
    """One way of labelling texts with the run, in this process: load, all texts, then
    1-sentence requests one after another. (The ways' set-up sits beside the one timing loop
    they share, so each is timed by the same code.)"""
    import numpy as np
    way, run_dir = args.predict_one, args.predict
    texts = predict_texts(args)
    t0 = time.perf_counter()
    if way == "predict.py":
        from common import env  # noqa: F401  (first)
        from common.finished_run import FinishedRun
        run = FinishedRun.open(run_dir)
        run.load_model("auto")
        precision = run.precision

        def label(batch, batch_size):
            return run.probabilities(batch, batch_size)[0].argmax(1)
    else:
        import tensorflow as tf  # only TensorFlow and tensorflow-text, as a serving process would
        import tensorflow_text  # noqa: F401
        fn = tf.saved_model.load(os.path.join(run_dir, runs.SERVING)).signatures["serving_default"]
        precision = "fp32"

        from common.data import length_order  # NumPy only: no model, no KerasHub

        def label(batch, batch_size):  # sorted by length, as predict.py batches
            order = length_order([len(t) for t in batch])
            out = np.zeros(len(batch), np.int64)
            for i in range(0, len(batch), batch_size):
                idx = order[i:i + batch_size]
                out[idx] = fn(text=tf.constant([batch[j] for j in idx]))["label_id"].numpy()
            return out
    load_seconds = time.perf_counter() - t0
    label(texts[:args.batch_size], args.batch_size)  # warm-up: traces, caches
    t0 = time.perf_counter()
    labels = label(texts, args.batch_size)
    seconds = time.perf_counter() - t0
    lat = []
    for text in texts[:args.requests]:
        t = time.perf_counter()
        label([text], 1)
        lat.append(time.perf_counter() - t)
    return {"way": way, "precision": precision, "sentences": len(texts), "seconds": seconds,
            "sentences_per_sec": len(texts) / seconds, "load_seconds": load_seconds,
            "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "label_counts": np.bincount(labels, minlength=3).tolist(),
            "labels_sha256": __import__("hashlib").sha256(np.asarray(labels, np.int64).tobytes()).hexdigest()[:16]}


def predict_benchmark(args) -> list:
    runs.load_run(args.predict, "--predict")
    ways = args.ways.split(",")
    unknown = set(ways) - set(PREDICT_WAYS)
    if unknown:
        gone = " (transformers' pipeline left with transformers, whose TensorFlow classes ended with 4.57)" \
            if "pipeline" in unknown else ""
        raise errors.FlagError(f"--ways: unknown {sorted(unknown)}{gone}; choose from {','.join(PREDICT_WAYS)}")
    if runs.SERVING in ways and not os.path.isdir(os.path.join(args.predict, runs.SERVING)):  # a --no-serving run
        raise errors.FlagError(f"--predict {args.predict}: no serving/ to benchmark (a --no-serving run); write it "
                               f"with python eval/export.py {errors.shell_quote(args.predict)}, or pass --ways predict.py")
    results = []
    for way in ways:
        print(f"benchmarking {way} ...", flush=True)
        results.append(measure_in_own_process(way, [
            "--predict", args.predict, "--predict-one", way, "--data", args.data, "--sentences", str(args.sentences),
            "--requests", str(args.requests), "--batch-size", str(args.batch_size)]))
    base = results[0]
    print(f"\nInference: {args.predict}, {args.sentences} sentences, batch {args.batch_size}\n")
    print(f"| way | precision | sentences/s | x {base['way']} | 1-sentence p50 ms | p99 ms | load s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['way']} | {r['precision']} | {r['sentences_per_sec']:.1f} | "
              f"{r['sentences_per_sec'] / base['sentences_per_sec']:.1f}x | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['load_seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
    print(json.dumps({"predict": results}))
    return results


def main(argv=None):
    args = parse(argv)
    if args.one:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return None
    if args.predict_one:
        print("RESULT " + json.dumps(measure_prediction(args)), flush=True)
        return None
    if args.predict:
        return predict_benchmark(args)
    return to_accuracy(args) if args.to_accuracy else steady_state(args)


if __name__ == "__main__":
    errors.run(main)
