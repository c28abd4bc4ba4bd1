#!/usr/bin/env python
"""Training speed of three recipes side by side, same machine, same model, one invocation.

    python eval/benchmark.py --model PATH --data ../shared/data/FinancialPhraseBank-v1.0

Recipes:
  notebook  every sentence padded to 512, batch 8, fp32, Adam 5e-5 constant
  hf        every sentence padded to 128, batch 8, fp32, AdamW 5e-5 linear decay (HF example defaults)
  project   this project's defaults: length buckets, batch 32, --precision auto, AdamW 1e-4 warm-up + decay

Per recipe, in its own process (so peak RSS and compile time are its own): steady-state
examples/s and real (non-pad) tokens/s = median over --steps timed steps after
--warmup-steps; real-token share; the tf.data pipeline's rate with no model; first step
(trace/compile) time; peak RSS; and an MFU estimate = 6 x non-embedding parameters x real
tokens/s / peak FLOP/s (give --peak-tflops; the device's peak is not measured here).
Prints a table and one JSON line. Time-to-accuracy mode: not written yet (issue 6).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RECIPES = {  # name: (padding width or 0 for buckets, batch, precision, optimizer)
    "notebook": (512, 8, "fp32", "adam-constant"),
    "hf": (128, 8, "fp32", "adamw-linear"),
    "project": (0, 32, "auto", "project"),
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="distilbert-base-uncased")
    p.add_argument("--data", default="hub")
    p.add_argument("--agreement", default="all", choices=["50", "66", "75", "all"])
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--steps", type=int, default=20, help="timed steps per recipe")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first (tracing, caches)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak TFLOP/s, for MFU")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one recipe in this process
    args = p.parse_args(argv)
    unknown = set(args.recipes.split(",")) - set(RECIPES)
    if unknown:
        p.error(f"--recipes: unknown {sorted(unknown)}; choose from {','.join(RECIPES)}")
    return args


def measure(args) -> dict:
    from common import env  # noqa: F401  (first)
    import numpy as np
    from common import config, data, distribute, models, training
    from common.env import keras, tf
    width, batch, precision, opt_name = RECIPES[args.one]
    cfg = config.Config(model=args.model, data=args.data, agreement=args.agreement, batch_size=batch,
                        precision=precision, epochs=1)
    harness = distribute.setup(cfg)
    tokenizer = models.load_tokenizer(cfg.model)
    rows = data.load_splits(cfg.data, cfg.agreement)["train"]
    ids = data.encode(tokenizer, [s for s, _ in rows], 512 if width == 512 else cfg.max_length)
    y = [l for _, l in rows]
    if width:
        ds = data.fixed_dataset(ids, y, batch, width, tokenizer.pad_token_id)
    else:
        ds = data.bucketed_dataset(ids, y, batch, cfg.max_length, tokenizer.pad_token_id)
    stats = data.batch_stats(ds)  # one epoch through tf.data alone: share and pipeline rate
    batches = list(ds.repeat().take(args.warmup_steps + args.steps))

    model = models.build_classifier(cfg.model)
    if opt_name == "adam-constant":
        opt = keras.optimizers.Adam(5e-5)
    else:
        opt = training.make_optimizer(cfg if opt_name == "project" else
                                      config.Config(**{**cfg.to_dict(), "lr": 5e-5, "warmup": 0.0}),
                                      stats["steps"])
    training.compile_classifier(model, cfg, opt, xla=False)
    times = []
    for x, labels in batches:
        t0 = time.perf_counter()
        model.train_on_batch(x, labels)
        times.append(time.perf_counter() - t0)
    timed = list(zip(batches, times))[args.warmup_steps:]
    ex_rate = [int(x["attention_mask"].shape[0]) / t for (x, _), t in timed]
    tok_rate = [int(tf.reduce_sum(x["attention_mask"])) / t for (x, _), t in timed]
    enc = models.encoder_of(model)
    emb = sum(int(np.prod(w.shape)) for w in enc.weights if "embeddings" in w.name)
    non_embedding = model.count_params() - emb
    real_tok_s = float(np.median(tok_rate))
    return {"recipe": args.one, "padding": width or "buckets", "batch": batch, "precision": harness.precision,
            "optimizer": opt_name, "examples_per_sec": float(np.median(ex_rate)), "real_tokens_per_sec": real_tok_s,
            "real_token_share": stats["real_token_share"], "pipeline_examples_per_sec": stats["pipeline_examples_per_sec"],
            "first_step_seconds": times[0], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "train_flops_per_sec": 6 * non_embedding * real_tok_s,
            "mfu": 6 * non_embedding * real_tok_s / (args.peak_tflops * 1e12) if args.peak_tflops else None}


def main(argv=None):
    args = parse(argv)
    if args.one:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return None
    results = []
    for name in args.recipes.split(","):
        print(f"benchmarking {name} ...", flush=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--model", args.model, "--data", args.data,
               "--agreement", args.agreement, "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
               "--peak-tflops", str(args.peak_tflops)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
        if p.returncode or not line:
            raise SystemExit(f"benchmark of {name} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
        results.append(json.loads(line[0][len("RESULT "):]))
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


if __name__ == "__main__":
    main()
