#!/usr/bin/env python
"""Label new text with a finished run: the label and every class's calibrated probability.

    python eval/predict.py runs/<run> --input headlines.csv --output scored.csv
    python eval/predict.py runs/<run> --input news.jsonl --text-column title --id-column url
    echo "Quarterly profit beat forecasts ." | python eval/predict.py runs/<run> --input -
    python eval/predict.py runs/<run> --input headlines.txt --min-confidence 0.9
    python eval/predict.py hf://OWNER/NAME --input headlines.csv   # published with eval/publish.py

Input: CSV / TSV (header row), JSONL (one object per line) or plain text (one text per
line; also stdin, --input -). The format follows the extension, or --format. Output:
CSV or JSONL (by --output's extension, or --output-format), one row per input text in
input order, with the id column if the input has one: id, text, label, confidence,
p_<class> for each of the run's classes (p_negative, p_neutral, p_positive for the
PhraseBank's). Probabilities are calibrated with the run's
temperature (calibration.json; eval/calibrate.py for runs older than it).
--min-confidence p labels rows whose top probability is below p `abstain` (docs/using-the-model.md
shows the accuracy / coverage trade-off).

The user's files are safe: --output may not be --input, replaces an existing file only with
--overwrite, and is checked writable before any model loads. One rule with serving/: an
input without texts gives zero rows; a text with no tokens (empty, blank) is refused (or
dropped with --skip-empty); texts are truncated to the run's max length, never refused.
"""
import argparse
import csv
import io
import json
import os
import stat
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# No TensorFlow yet: the flags, the output place and the whole input are checked first, so a
# mistake in them is one line at once, not after TensorFlow's ~7 s start (main imports it).
from common import config, errors, runs, texts  # noqa: E402
import numpy as np  # noqa: E402

ABSTAIN = "abstain"


def parse(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run folder (runs/<name>), a folder eval/publish.py wrote, or "
                                    "hf://OWNER/NAME (a model published to the Hugging Face Hub)")
    p.add_argument("--input", required=True, help="CSV / TSV / JSONL / text file, or - for stdin")
    p.add_argument("--format", choices=texts.FORMATS, help="input format (default: from the extension; stdin: text)")
    p.add_argument("--text-column", help=f"column / field with the text (default: {', '.join(texts.TEXT_COLUMNS)} "
                                         f"or the only column)")
    p.add_argument("--id-column", help="column / field copied to the output to identify rows (default: 'id' if "
                                       "there is one)")
    p.add_argument("--output", default="-", help="CSV or JSONL file to write (default: - = stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--output-format", choices=["csv", "jsonl"], help="default: from --output's extension, else csv")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help=f"label rows whose calibrated top probability is below this '{ABSTAIN}'")
    p.add_argument("--skip-empty", action="store_true", help="drop empty texts (no tokens) instead of refusing the "
                                                              "input")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: fp16 on a GPU, bf16 on a CPU with bf16 units, else fp32")
    return p.parse_args(argv)


def check(args) -> None:
    if not 0 <= args.min_confidence <= 1:
        raise errors.FlagError(f"--min-confidence {args.min_confidence}: a probability in [0, 1]")
    if args.batch_size < 1:
        raise errors.FlagError(f"--batch-size {args.batch_size}: must be at least 1")


def is_stream(path: str) -> bool:
    """A device or a pipe (/dev/stdout, bash's >(...)): written as a stream, not replaced."""
    return os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode)


def check_output(args) -> None:
    """Refuse an --output that would replace the user's data or cannot be written: before
    the input is read and any model loads (a write failing after inference wastes it)."""
    out, flag = args.output, f"--output {args.output}"
    if out == "-":
        if sys.stdout is None:  # fd 1 closed (>&-)
            raise errors.FlagError("--output -: stdout is closed; pass --output FILE")
        return
    if not out:
        raise errors.FlagError("--output '': pass a file name, or - for stdout")
    if "://" in out:
        raise errors.FlagError(f"{flag}: predict writes a local file (or stdout); write one here, then copy it "
                               f"(e.g. gcloud storage cp scored.csv {errors.shell_quote(out)})")
    if os.path.isdir(out):
        raise errors.FlagError(f"{flag}: is a folder; pass a file name, e.g. {os.path.join(out, 'scored.csv')}")
    if os.path.exists(out):
        if args.input != "-" and os.path.exists(args.input) and os.path.samefile(out, args.input):
            raise errors.FlagError(f"{flag}: is the --input file; writing there would replace your texts. Pass "
                                   f"another --output")
        if is_stream(out):
            return
        if not args.overwrite:
            raise errors.FlagError(f"{flag}: exists; pass --overwrite to replace it, or another --output")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise errors.FlagError(f"{flag}: " + (f"{folder} is not a folder" if os.path.exists(folder) else
                                              f"no folder {folder}; create it first (mkdir -p)")
                               + ", or pass a file in an existing folder")
    try:  # what writing will do (runs.atomic_write): make a file in that folder; this one vanishes on close
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise errors.FlagError(f"{flag}: cannot write in {folder} ({e.strerror}); pass a file in a folder you "
                               f"can write to") from None


def columns(table, labels) -> list:
    """The output's columns: the id column if the input has one, text, label, confidence, p_<class>."""
    return ([table.id_column] if table.id_column else []) + ["text", "label", "confidence"] + \
        [f"p_{name}" for name in labels]


def output_rows(table, probs, min_confidence: float, labels):
    """One dict per input text, in input order; labels: the run's class names in id order."""
    for i, (text, p) in enumerate(zip(table.texts, probs)):
        top = int(p.argmax())
        row = {table.id_column: table.ids[i]} if table.id_column else {}
        row.update(text=text, label=labels[top] if p[top] >= min_confidence else ABSTAIN,
                   confidence=round(float(p[top]), 6))
        row.update({f"p_{name}": round(float(p[k]), 6) for k, name in enumerate(labels)})
        yield row


def write_rows(rows, fieldnames, path: str, fmt: str) -> None:
    """CSV (header row even without rows) or JSONL to a file (atomically: a killed run
    leaves no half file; runs.atomic_write keeps a replaced file's mode), a device or pipe,
    or stdout."""
    rows = list(rows)

    def write(f):
        if fmt == "jsonl":
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            w = csv.DictWriter(f, fieldnames=fieldnames)
            w.writeheader()
            w.writerows(rows)

    if path == "-":
        buf = io.StringIO(newline="")
        write(buf)
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()
    elif is_stream(path):
        with open(path, "w", newline="", encoding="utf-8") as f:
            write(f)
    else:
        runs.atomic_write(path, write)


def drop_tokenless(table, ids, tokenizer, name: str, skip: bool):
    """Refuse (or with skip, drop) texts the tokenizer makes nothing of: blank ones are refused
    while reading, this catches the rest (only control or zero-width characters). The rule
    serving/ follows too: a text without tokens has no label to give."""
    from common.models import SPECIAL_TOKENS as specials  # [CLS], [SEP]
    empty = [i for i, x in enumerate(ids) if len(x) <= specials]
    if not empty:
        return ids
    if not skip:
        raise errors.DataError(f"{name} line {table.lines[empty[0]]}: empty text (no tokens: only characters the "
                               f"tokenizer drops, e.g. control or zero-width ones); remove the line or pass "
                               f"--skip-empty")
    table.skipped_empty += len(empty)
    keep = sorted(set(range(len(ids))) - set(empty))
    for attr in ("texts", "lines", "ids"):
        if getattr(table, attr) is not None:
            setattr(table, attr, [getattr(table, attr)[i] for i in keep])
    return [ids[i] for i in keep]


def main(argv=None):
    args = parse(argv)
    check(args)
    check_output(args)
    out_fmt = args.output_format or ("jsonl" if args.output.endswith((".jsonl", ".json")) else "csv")
    if not args.run_dir.startswith("hf://") and not os.path.isdir(args.run_dir):
        runs.load_run(args.run_dir)  # its one line for a folder that is not there, before reading (maybe stdin)
    # data: read and check the whole input before loading TensorFlow and any model
    table = texts.read_texts(args.input, args.format, args.text_column, args.id_column, skip_empty=args.skip_empty,
                             allow_none=True)
    from common import env  # noqa: F401  (first of what imports TensorFlow: Keras 3 on TensorFlow, quiet logs)
    from common import calibration
    from common import finished_run
    run = finished_run.open_trained(args.run_dir)
    ours = columns(table, run.labels)[1 if table.id_column else 0:]
    if table.id_column in ours:  # the row's own value would be overwritten by the prediction's, silently
        raise errors.FlagError(f"--id-column {table.id_column}: the output has a '{table.id_column}' column of its "
                               f"own ({', '.join(ours)}); pass another id column, or rename that one in your input")
    probs, truncated = np.zeros((0, len(run.labels)), np.float32), 0
    if table.texts:
        ids, truncated = run.encode(table.texts)  # the tokenizer only: to the run's max length, as training did
        name = "<stdin>" if args.input == "-" else args.input
        ids = drop_tokenless(table, ids, run.tokenizer, name, args.skip_empty)
    if table.texts:
        # model: the run's classifier and temperature
        run.load_model(args.precision)
        logits = run.logits(ids, args.batch_size, progress=len(table.texts) >= 20 * args.batch_size)
        probs = calibration.probabilities(logits, run.temperature)
    # report
    rows = list(output_rows(table, probs, args.min_confidence, run.labels))
    write_rows(rows, columns(table, run.labels), args.output, out_fmt)
    folded = getattr(run, "info", {}).get("temperature")  # a published model: T is in its logits
    notes = [f"{len(rows)} texts labelled ({run.precision or 'no model loaded'}, "
             + (f"T={folded:.3f} in the logits)" if folded else f"T={run.temperature:.3f})")]
    if truncated:
        notes.append(f"{truncated} longer than {run.max_length} tokens were truncated to it")
    if table.skipped_empty:
        notes.append(f"{table.skipped_empty} empty skipped")
    spanning = [line for text, line in zip(table.texts, table.lines) if "\n" in text] if table.fmt == "csv" else []
    if spanning:
        notes.append(f"{len(spanning)} span several lines (quoted fields holding line breaks, the first from line "
                     f"{spanning[0]}; a stray quote there if not meant)")
    if args.min_confidence:
        notes.append(f"{sum(r['label'] == ABSTAIN for r in rows)} below --min-confidence {args.min_confidence} "
                     f"labelled {ABSTAIN}")
    print("predict: " + "; ".join(notes) + ("" if args.output == "-" else f" -> {args.output}"), file=sys.stderr)
    return rows


if __name__ == "__main__":
    errors.run(main)
