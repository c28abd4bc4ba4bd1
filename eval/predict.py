#!/usr/bin/env python
"""Label new text with a finished run: the label and every class's calibrated probability.

    python eval/predict.py runs/<run> --input headlines.csv --output scored.csv
    python eval/predict.py runs/<run> --input news.jsonl --text-column title --id-column url
    echo "Quarterly profit beat forecasts ." | python eval/predict.py runs/<run> --input -
    python eval/predict.py runs/<run> --input headlines.txt --min-confidence 0.9

Input: CSV / TSV (header row), JSONL (one object per line) or plain text (one text per
line; also stdin, --input -). The format follows the extension, or --format. Output:
CSV or JSONL (by --output's extension, or --output-format), one row per input text in
input order, with the id column if the input has one: id, text, label, confidence,
p_<class> for each of the run's classes (p_negative, p_neutral, p_positive for the
PhraseBank's). Probabilities are calibrated with the run's
temperature (calibration.json; eval/calibrate.py for runs older than it).
--min-confidence p labels rows whose top probability is below p `abstain` (docs/using-the-model.md
shows the accuracy / coverage trade-off).
"""
import argparse
import csv
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import config, errors, runs, texts  # noqa: E402

ABSTAIN = "abstain"


def parse(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run folder (runs/<name>)")
    p.add_argument("--input", required=True, help="CSV / TSV / JSONL / text file, or - for stdin")
    p.add_argument("--format", choices=texts.FORMATS, help="input format (default: from the extension; stdin: text)")
    p.add_argument("--text-column", help=f"column / field with the text (default: {', '.join(texts.TEXT_COLUMNS)} "
                                         f"or the only column)")
    p.add_argument("--id-column", help="column / field copied to the output to identify rows (default: 'id' if "
                                       "there is one)")
    p.add_argument("--output", default="-", help="CSV or JSONL file to write (default: - = stdout)")
    p.add_argument("--output-format", choices=["csv", "jsonl"], help="default: from --output's extension, else csv")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help=f"label rows whose calibrated top probability is below this '{ABSTAIN}'")
    p.add_argument("--skip-empty", action="store_true", help="drop empty texts instead of refusing the input")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: fp16 on a GPU, bf16 on a CPU with bf16 units, else fp32")
    return p.parse_args(argv)


def check(args) -> None:
    if not 0 <= args.min_confidence <= 1:
        raise errors.FlagError(f"--min-confidence {args.min_confidence}: a probability in [0, 1]")
    if args.batch_size < 1:
        raise errors.FlagError(f"--batch-size {args.batch_size}: must be at least 1")


def output_rows(table, probs, min_confidence: float, labels):
    """One dict per input text, in input order; labels: the run's class names in id order."""
    for i, (text, p) in enumerate(zip(table.texts, probs)):
        top = int(p.argmax())
        row = {table.id_column: table.ids[i]} if table.id_column else {}
        row.update(text=text, label=labels[top] if p[top] >= min_confidence else ABSTAIN,
                   confidence=round(float(p[top]), 6))
        row.update({f"p_{name}": round(float(p[k]), 6) for k, name in enumerate(labels)})
        yield row


def write_rows(rows, path: str, fmt: str) -> None:
    """CSV or JSONL to a file (atomically: a killed run leaves no half file) or stdout."""
    rows = list(rows)

    def write(f):
        if fmt == "jsonl":
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    if path == "-":
        buf = io.StringIO(newline="")
        write(buf)
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()
    else:
        runs.atomic_write(path, write)


def main(argv=None):
    args = parse(argv)
    check(args)
    # data: read and check the whole input before loading any model
    from common.finished_run import FinishedRun
    run = FinishedRun.open(args.run_dir)
    table = texts.read_texts(args.input, args.format, args.text_column, args.id_column, skip_empty=args.skip_empty)
    out_fmt = args.output_format or ("jsonl" if args.output.endswith((".jsonl", ".json")) else "csv")
    # model: the run's classifier and temperature
    run.load_model(args.precision)
    # predict
    probs, _, truncated = run.probabilities(table.texts, args.batch_size,
                                            progress=len(table.texts) >= 20 * args.batch_size)
    # report
    rows = list(output_rows(table, probs, args.min_confidence, run.labels))
    write_rows(rows, args.output, out_fmt)
    notes = [f"{len(rows)} texts labelled ({run.precision}, T={run.temperature:.3f})"]
    if truncated:
        notes.append(f"{truncated} longer than {run.max_length} tokens were truncated to it")
    if table.skipped_empty:
        notes.append(f"{table.skipped_empty} empty skipped")
    if args.min_confidence:
        notes.append(f"{sum(r['label'] == ABSTAIN for r in rows)} below --min-confidence {args.min_confidence} "
                     f"labelled {ABSTAIN}")
    print("predict: " + "; ".join(notes) + ("" if args.output == "-" else f" -> {args.output}"), file=sys.stderr)
    return rows


if __name__ == "__main__":
    errors.run(main)
