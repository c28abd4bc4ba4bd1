#!/usr/bin/env python
"""Body only (the notebook's "Basic 2"): start from a trained head, freeze it, fine-tune
the encoder under it.

    python train/body_finetune.py --init-from runs/<head_only run>
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, errors, training  # noqa: E402

SCRIPT = "body_finetune"


def main(argv=None):
    parser = config.build_parser(__doc__, freeze="head")
    cfg = config.from_args(parser.parse_args(argv))
    if not cfg.init_from:
        parser.error("--init-from is required: the run whose trained head to keep (e.g. runs/head_only-...)")
    if cfg.freeze != "head":
        parser.error("--freeze: body_finetune.py trains the encoder only; use full_finetune.py for other choices")
    run = training.start(cfg, SCRIPT)
    with run.harness.strategy.scope():
        model = training.build_model(run)  # model.head.trainable = False
    return training.fit_and_report(run, model)


if __name__ == "__main__":
    errors.run(main)
