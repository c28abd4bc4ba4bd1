#!/usr/bin/env python
"""Keras Tuner search over how to unfreeze the encoder: head-only warm-up epochs, how
many top blocks train, gradual unfreezing (one more block every k epochs, ULMFiT-style),
layer-wise learning-rate decay (block i trains at lr * decay^(depth - i)), and the peak
learning rate. Objective: validation macro-F1. Works under every strategy (one AdamW
with per-block rate multipliers: see common/optim.py).

    python tune/unfreeze_search.py --max-trials 8 --epochs 3
    python tune/unfreeze_search.py --run-dir runs/unfreeze --train-best

The winner is a set of train flags (--head-warmup-epochs, --unfreeze-every,
--train-top-blocks, --layer-lr-decay, --lr) that every train script accepts. Outputs
and resuming as in tune/lr_search.py.
"""
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, errors, training, tuning  # noqa: E402

SCRIPT = "unfreeze_search"


def main(argv=None):
    p = config.build_parser(__doc__, epochs=3)
    tuning.add_search_flags(p)
    args = p.parse_args(argv)
    run = training.start(config.from_args(args), SCRIPT, run_folder="search")
    epochs = run.cfg.epochs

    def space(hp, cfg):
        return dataclasses.replace(
            cfg,
            head_warmup_epochs=hp.Int("head_warmup_epochs", 0, max(0, min(1, epochs - 1))),
            unfreeze_every=hp.Choice("unfreeze_every", [0, 1]),
            train_top_blocks=hp.Choice("train_top_blocks", [-1, 2, 4]),
            layer_lr_decay=hp.Choice("layer_lr_decay", [1.0, 0.9, 0.8, 0.65]),
            lr=hp.Float("lr", 3e-5, 3e-4, sampling="log"))

    return tuning.search(run, space, args, argv)


if __name__ == "__main__":
    errors.run(main)
