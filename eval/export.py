#!/usr/bin/env python
"""Write a run's serving SavedModel: raw strings in; label ids, label names and calibrated
probabilities out, the WordPiece tokenizer inside the graph (tensorflow-text).
Runs write serving/ when they finish; this is for older runs (or after eval/calibrate.py).

    python eval/export.py runs/<run>
    saved_model_cli show --dir runs/<run>/serving --tag_set serve --signature_def serving_default

Load it with TensorFlow and tensorflow-text only (docs/using-the-model.md):
    import tensorflow as tf, tensorflow_text  # noqa: registers the tokenizer's ops
    f = tf.saved_model.load("runs/<run>/serving").signatures["serving_default"]
    f(text=tf.constant(["Quarterly profit beat forecasts ."]))
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, errors, run_lock, serving  # noqa: E402


def main(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run folder (runs/<name>)")
    args = p.parse_args(argv)
    # refused in one line: a folder that is not a finished run, a file of it not as its run wrote it
    # (FinishedRun.open), a tokenizer the graph cannot reproduce (ModelError)
    with run_lock.held(args.run_dir):  # not while another process writes the run folder
        path = serving.export_serving(args.run_dir)
    print(f"wrote {path}/ (signature {serving.SIGNATURE}: text -> label_id, label, probabilities)")
    return path


if __name__ == "__main__":
    errors.run(main)
