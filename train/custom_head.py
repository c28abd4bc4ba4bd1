#!/usr/bin/env python
"""Custom head (the notebook's "Exp 5"): encoder -> pooling -> Dense layers -> logits.

    python train/custom_head.py --pooling mean --head-hidden 256,64 --head-dropout 0.2
    python train/custom_head.py --freeze encoder --lr 1e-3        # head only

Logits stay float32 under mixed precision. The run's model/ folder holds the encoder and
its tokenizer (a KerasHub preset) plus head.json and head.weights.h5; eval/evaluate.py and
--init-from load it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, errors, training  # noqa: E402

SCRIPT = "custom_head"


def main(argv=None):
    parser = config.build_parser(__doc__, head="custom")
    cfg = config.from_args(parser.parse_args(argv))
    if cfg.head != "custom":
        parser.error("--head: custom_head.py builds the custom head; use full_finetune.py for the library head")
    run = training.start(cfg, SCRIPT)
    with run.harness.strategy.scope():
        model = training.build_model(run)  # models.Classifier, head.kind == "custom"
    return training.fit_and_report(run, model)


if __name__ == "__main__":
    errors.run(main)
