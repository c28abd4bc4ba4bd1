#!/usr/bin/env python
"""Full fine-tuning: the encoder and its classification head train; the embedding layer
too with --train-embeddings (off by default: same accuracy, faster steps; docs/performance.md).

    python train/full_finetune.py --gpus 2
    python train/full_finetune.py --model PATH --data ../shared/data/FinancialPhraseBank-v1.0
    python train/full_finetune.py --init-from runs/<earlier run>

Writes runs/<name>/ (config.json, tb/, model/, metrics.json); see docs/run-folder.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first: Keras 3 on TensorFlow, quiet logs)
from common import config, errors, training  # noqa: E402

SCRIPT = "full_finetune"


def main(argv=None):
    # flags -> strategy, precision, data
    cfg = config.from_args(config.build_parser(__doc__).parse_args(argv))
    run = training.start(cfg, SCRIPT)
    # model: every block and the head train (unless --freeze / --train-embeddings say otherwise)
    with run.harness.strategy.scope():
        model = training.build_model(run)
    # fit -> best weights -> evaluate -> export -> metrics.json
    return training.fit_and_report(run, model)


if __name__ == "__main__":
    errors.run(main)
