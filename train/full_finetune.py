#!/usr/bin/env python
"""Full fine-tuning: the encoder and its classification head all train.

    python train/full_finetune.py --gpus 2
    python train/full_finetune.py --model PATH --data ../shared/data/FinancialPhraseBank-v1.0

Writes runs/<name>/ (config.json, tb/, model/, metrics.json); see README.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402  (first: resolves Keras 2 before transformers)
from common import config, data, distribute, models, runs, training  # noqa: E402

SCRIPT = "full_finetune"


def main(argv=None):
    wall_start = time.time()
    # ------------------------------------------------------------------ flags
    cfg = config.from_args(config.build_parser(__doc__).parse_args(argv))
    harness = distribute.setup(cfg)  # before any model: strategy + dtype policy
    for note in harness.notes:
        print("note:", note)
    env.set_seed(cfg.seed, cfg.deterministic)
    run_dir = distribute.writable_run_dir(harness, cfg.run_dir or runs.default_run_dir(SCRIPT))

    # ------------------------------------------------------------------ data
    source = os.path.join(cfg.init_from, runs.MODEL) if cfg.init_from else cfg.model
    tokenizer = models.load_tokenizer(source)
    splits = training.load_data(cfg, tokenizer, harness.replicas)
    st = splits.train_stats
    print(f"data: {data.level_name(cfg.agreement)}, split={cfg.split}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.rows.items())
          + f" | {st['steps']} steps/epoch, widths {st['widths']}, real-token share {st['real_token_share']:.3f}")

    # ------------------------------------------------------------------ model
    with harness.strategy.scope():
        model = models.build_classifier(source, cfg.dropout)
        optimizer = training.make_optimizer(cfg, st["steps"])
        training.compile_classifier(model, cfg, optimizer, harness.xla)
    training.write_config(run_dir, cfg, harness, f"train/{SCRIPT}.py",
                          {"model_source": source, "params": model.count_params()})
    print(f"model: {source} ({model.count_params() / 1e6:.1f}M params) on {harness.replicas} replica(s) "
          f"{harness.devices}, precision {harness.precision}, xla {harness.xla} -> {run_dir}")

    # ------------------------------------------------------------------ fit
    _, throughput, _ = training.fit(model, cfg, run_dir, splits, training.hparams_of(cfg, harness))

    # ------------------------------------------------------------------ report
    results = training.evaluate_splits(model, splits)
    training.export(model, tokenizer, run_dir)
    m = training.write_metrics(run_dir, results, splits, throughput, wall_start)
    print(training.summary_line(m))
    return m


if __name__ == "__main__":
    main()
