#!/usr/bin/env python
"""Keras Tuner search over the learning-rate schedule: peak rate (log scale), warm-up
share, weight decay (and, with --tune-batch-size, the batch size), on the same data
pipeline, model and strategy as the train scripts. Objective: validation macro-F1.

    python tune/lr_search.py --max-trials 8 --epochs 2
    python tune/lr_search.py --tuner hyperband --epochs 3
    python tune/lr_search.py --run-dir runs/lr-search --train-best    # resume it, then train the best

Writes runs/<search>/: best_hparams.json, trials.md + trials.csv (ranked), tb/ (one
TensorBoard run per trial, compared in the HParams dashboard), trials/ (keras-tuner's
state). Rerunning with the same --run-dir resumes: finished trials are not redone.
Distributed tuning: keras-tuner's chief/worker variables (docs/tuning.md).
"""
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, errors, training, tuning  # noqa: E402

SCRIPT = "lr_search"


def parse(argv=None):
    p = config.build_parser(__doc__, epochs=2)
    g = tuning.add_search_flags(p)
    g.add_argument("--lr-range", default="1e-5,3e-4", help="peak learning rate range, searched on a log scale")
    g.add_argument("--tune-batch-size", action="store_true", help="also search the batch size (16, 32, 64)")
    args = p.parse_args(argv)
    try:
        args.lr_lo, args.lr_hi = map(float, args.lr_range.split(","))
        assert 0 < args.lr_lo < args.lr_hi
    except (ValueError, AssertionError):
        p.error(f"--lr-range {args.lr_range!r}: expected LOW,HIGH with 0 < LOW < HIGH, e.g. 1e-5,3e-4")
    return args


def main(argv=None):
    args = parse(argv)
    run = training.start(config.from_args(args), SCRIPT, run_folder="search")

    def space(hp, cfg):
        return dataclasses.replace(
            cfg,
            lr=hp.Float("lr", args.lr_lo, args.lr_hi, sampling="log"),
            warmup=hp.Float("warmup", 0.0, 0.3, step=0.05),
            weight_decay=hp.Choice("weight_decay", [0.0, 0.01, 0.1]),
            batch_size=hp.Choice("batch_size", [16, 32, 64]) if args.tune_batch_size else cfg.batch_size)

    return tuning.search(run, space, args, argv)


if __name__ == "__main__":
    errors.run(main)
