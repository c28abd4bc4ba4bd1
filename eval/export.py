#!/usr/bin/env python
"""Write a run's serving SavedModel (raw strings in; label ids, label names and calibrated
probabilities out, the WordPiece tokenizer inside the graph: tensorflow-text) and its model
card (README.md, with confusion_matrix.png; common/model_card.py).
Runs write both when they finish; this is for older runs, after eval/calibrate.py, or to
state the license of a model trained on your own data.

    python eval/export.py runs/<run>
    python eval/export.py runs/<run> --license cc-by-4.0
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
from common import config, errors, run_lock, runs, serving  # noqa: E402
from common.finished_run import FinishedRun  # noqa: E402


def main(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run folder (runs/<name>)")
    p.add_argument("--license", default="", type=config.license_id, help="own data: the license the card states (default: the run's "
                                                 "--license; a PhraseBank model's is the PhraseBank's)")
    args = p.parse_args(argv)
    # refused in one line: a folder that is not a finished run, a file of it not as its run wrote it
    # (FinishedRun.open), a tokenizer the graph cannot reproduce (ModelError)
    with run_lock.held(args.run_dir):  # not while another process writes the run folder
        FinishedRun.open(args.run_dir)  # its files checked (config, model/'s format, labels, temperature) first
        runs.require_finished(args.run_dir)  # the card reads metrics.json: refused before anything is written
        from common import model_card
        card = model_card.write(args.run_dir, license=args.license)  # first: a file it refuses stops the export
        path = serving.export_serving(args.run_dir)
    print(f"wrote {path}/ (signature {serving.SIGNATURE}: text -> label_id, label, probabilities) and {card}")
    return path


if __name__ == "__main__":
    errors.run(main)
