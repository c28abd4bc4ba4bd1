#!/usr/bin/env python
"""Head only (the notebook's "Basic 1"): the encoder is frozen, only the classifier trains.

    python train/head_only.py                      # lr 1e-3, as the notebook's first run
    python train/head_only.py --lr 5e-5            # its second
    python train/body_finetune.py --init-from runs/<this run>   # then "Basic 2"

A frozen encoder needs no backward pass through it, so an epoch costs about a third of
full fine-tuning; the head alone reaches far less (docs/study.md). Its class weights are
balanced (the other train scripts' default is square-root weights): docs/study.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, errors, training  # noqa: E402

SCRIPT = "head_only"


def main(argv=None):
    # balanced class weights, not the default square-root ones: a head on a frozen encoder
    # with sqrt weights keeps to the majority class (macro-F1 0.25-0.32 on AllAgree, docs/study.md)
    parser = config.build_parser(__doc__, freeze="encoder", lr=1e-3, epochs=3, class_weight="balanced")
    cfg = config.from_args(parser.parse_args(argv))
    if cfg.freeze != "encoder":
        parser.error("--freeze: head_only.py trains the head only; use full_finetune.py for other choices")
    run = training.start(cfg, SCRIPT)
    with run.harness.strategy.scope():
        model = training.build_model(run)  # model.backbone.trainable = False
    return training.fit_and_report(run, model)


if __name__ == "__main__":
    errors.run(main)
