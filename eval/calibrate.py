#!/usr/bin/env python
"""Fit a run's calibration temperature on its validation split (runs made before
calibration was part of training; newer runs are calibrated when they finish).

    python eval/calibrate.py runs/<run>

Writes runs/<run>/calibration.json (the temperature; ECE, NLL, Brier before and after on
validation and test), reliability.png and a TensorBoard image; then rewrites serving/ so
it applies the new temperature (eval/export.py does that alone). A --no-serving run stays
without serving/: eval/export.py writes it when you want it.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import calibration, config, errors, report, run_lock, runs  # noqa: E402
from common.finished_run import FinishedRun  # noqa: E402
from common.env import tf  # noqa: E402


def parse(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run folder (runs/<name>)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32",
                   help="fp32, as every run's own figures and serving/ (docs/precision.md, \"Evaluation\")")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    run = FinishedRun.open(args.run_dir, calibrated=False)  # its calibration.json is what this writes again
    # data: the run's own validation and test splits (the temperature is fitted on validation only)
    rows = run.split_rows(if_changed="restore the file: the temperature is fitted on the run's own validation split")
    # model
    run.load_model(args.precision)
    split_logits, split_labels = {}, {}
    for part in ("validation", "test"):
        ids, _ = run.encode([s for s, _ in rows[part]])
        split_logits[part] = run.logits(ids, args.batch_size)
        split_labels[part] = [l for _, l in rows[part]]
    # calibrate, then re-export serving/ with the temperature (not while another process writes the folder);
    # a run made without serving/ (--no-serving) is not given one
    with run_lock.held(args.run_dir):
        writer = tf.summary.create_file_writer(os.path.join(args.run_dir, runs.TB, "calibration"))
        out = calibration.calibrate(args.run_dir, split_logits, split_labels, writer)
        print(calibration.summary(out))
        if os.path.isdir(os.path.join(args.run_dir, runs.SERVING)):
            report.export_serving(args.run_dir)
        else:
            print(f"no {runs.SERVING}/ in this run (made with --no-serving, or removed): python eval/export.py "
                  f"{errors.shell_quote(args.run_dir)} writes one with this temperature")
    return out


if __name__ == "__main__":
    errors.run(main)
