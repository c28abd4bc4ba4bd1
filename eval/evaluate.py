#!/usr/bin/env python
"""Evaluate a finished run on any agreement level's test (or validation) split, or on
your own labeled text. A run trained on your own data (--data FILE) is evaluated on its
own split (eval/own-<part>/), or on a file with --csv.

    python eval/evaluate.py runs/<run>
    python eval/evaluate.py runs/<run> --agreement 50
    python eval/evaluate.py runs/<run> --csv mine.csv --text-column headline --label-column tone \
        --label-map bearish=negative,bullish=positive,neutral=neutral

Writes runs/<run>/eval/<level>-<part>/ (or eval/file-<csv name>/): report.txt (sklearn
classification report), error_analysis.md (most confident mistakes; mistakes by length,
by agreement level; dominant confusion pairs), metrics.json (with calibration: ECE, NLL,
Brier before and after the run's temperature), confusion_matrix.png, reliability.png,
errors.csv (sentence, true, predicted, confidence; most confident mistakes first), and
the images in TensorBoard (runs/<run>/tb/eval).
"""
import argparse
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import env  # noqa: E402,F401  (first)
from common import calibration, config, errors, metrics, phrasebank, run_lock, runs, texts  # noqa: E402
from common.env import tf  # noqa: E402
from common.finished_run import FinishedRun  # noqa: E402


def parse(argv=None):
    p = config.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run folder (runs/<name>)")
    p.add_argument("--agreement", choices=phrasebank.LEVEL_CHOICES, help="level to evaluate on (default: the run's)")
    p.add_argument("--data", help="Financial PhraseBank folder, zip or 'hub' (default: the run's)")
    p.add_argument("--part", choices=["test", "validation"], default="test", help="which split")
    p.add_argument("--batch-size", type=int, default=64)
    own = p.add_argument_group("your own labeled text (instead of a PhraseBank split)")
    own.add_argument("--csv", help="CSV / TSV / JSONL file with a text and a label per row")
    own.add_argument("--text-column", help=f"default: {', '.join(texts.TEXT_COLUMNS)} or the only column")
    own.add_argument("--label-column", default="label", help="the column with each row's label")
    own.add_argument("--label-map", help="YOURS=OURS,... mapping your labels to the run's class names "
                                         "(default: your labels are those names)")
    return p.parse_args(argv)


def leak_check(run, rows, agreement, source, part):
    """Indices of `rows` the run trained (or validated) on. Refused outright unless they are
    the run's own split: then they are reported beside the figures (--split seed keeps
    duplicates)."""
    flags = run.flags
    seen = phrasebank.seen_sentences(source, flags.agreement, flags.split, part)
    repeated = [i for i, (s, _) in enumerate(rows) if phrasebank.normalise(s) in seen]
    own = agreement == flags.agreement and source == flags.data
    if repeated and not own:
        raise errors.RunDirError(
            f"{run.run_dir}: {len(repeated)} sentences of {phrasebank.level_name(agreement)}'s {part} split were in "
            f"this run's training data (--split {flags.split} splits each level on its own); evaluate on its own "
            f"level, or train with --split hash, whose splits are nested across levels")
    return repeated


def evaluate_run(run, agreement=None, source=None, part="test", batch_size=64):
    """Evaluate a FinishedRun on one level's split; writes <run>/eval/<level>-<part>/. Returns
    write_report's (metrics, report text, folder, mistakes)."""
    flags = run.flags
    agreement = agreement or flags.agreement
    source = source or flags.data
    # data: the same split rule as training; never a sentence the model trained on
    rows = run.split_rows(agreement, source)[part]
    repeated = leak_check(run, rows, agreement, source, part)
    # model, in float32 (FinishedRun's precision rule)
    ids, _ = run.encode([s for s, _ in rows])
    logits = run.logits(ids, batch_size)
    y = [l for _, l in rows]
    # report
    out = os.path.join(run.run_dir, "eval", f"{phrasebank.level_name(agreement)}-{part}")
    title = f"{phrasebank.level_name(agreement)} {part} (trained on {phrasebank.level_name(flags.agreement)})"
    strictest = phrasebank.strictest_levels(source)
    extra = dict(agreement=agreement, part=part, trained_on=flags.agreement, data=source,
                 train_overlap=len(repeated))
    if repeated:  # the run's own split repeats training sentences (--split seed keeps duplicates): report both
        clean = sorted(set(range(len(rows))) - set(repeated))
        lf = metrics.classification_metrics([y[i] for i in clean], logits[clean], run.labels)
        extra["leak_free"] = {k: lf[k] for k in ("n", "accuracy", "macro_f1")}
        print(f"note: {len(repeated)} of these {len(rows)} sentences also occur in the run's training data "
              f"(--split {flags.split} keeps duplicates); without them: n={lf['n']} accuracy "
              f"{lf['accuracy']:.4f} macro-F1 {lf['macro_f1']:.4f} (metrics.json 'leak_free')")
    return write_report(run, out, title, [s for s, _ in rows], y, logits, [len(x) for x in ids],
                        [strictest[phrasebank.normalise(s)] for s, _ in rows], extra)


def evaluate_own(run, part="test", batch_size=64):
    """Evaluate a FinishedRun trained on own data on its own split (the one recorded in the
    run folder); writes <run>/eval/own-<part>/."""
    rows = run.split_rows(if_changed="restore the file to evaluate the run on its own split, or evaluate it on a "
                                     "labelled file with --csv FILE")[part]
    ids, _ = run.encode([s for s, _ in rows])
    logits = run.logits(ids, batch_size)
    out = os.path.join(run.run_dir, "eval", f"own-{part}")
    return write_report(run, out, f"{os.path.basename(run.flags.data.rstrip('/'))} {part}", [s for s, _ in rows],
                        [l for _, l in rows], logits, [len(x) for x in ids], None,
                        {"part": part, "data": run.flags.data})


def write_report(run, out, title, sentences, y, logits, lengths, strictest=None, extra=None):
    """The report files for one labelled set (see the module docstring). Returns
    (metrics, sklearn report text, folder, mistakes)."""
    from sklearn.metrics import classification_report
    t, labels = run.temperature, run.labels
    m = metrics.classification_metrics(y, logits, labels)
    m.update(extra or {})
    m["calibration"] = {"temperature": t, "before": calibration.figures(logits, y),
                        "after": calibration.figures(logits, y, t)}
    report = classification_report(y, logits.argmax(1), labels=range(len(labels)), target_names=labels, digits=4,
                                   zero_division=0)
    m["coverage"] = calibration.coverage(logits, y, t)
    report += "\nAccuracy / coverage with predict.py --min-confidence p (calibrated):\n" + "\n".join(
        f"  p={c['min_confidence']:.2f}: coverage {c['coverage']:.3f}, accuracy on covered "
        f"{'n/a' if c['accuracy'] is None else format(c['accuracy'], '.4f')}"
        for c in m["coverage"]) + "\n"
    os.makedirs(out, exist_ok=True)
    runs.write_json(os.path.join(out, "metrics.json"), m)
    runs.write_text(os.path.join(out, "report.txt"), report)
    writer = tf.summary.create_file_writer(os.path.join(run.run_dir, runs.TB, "eval"))
    tag = os.path.basename(out)
    png = metrics.figure_png(metrics.confusion_figure(m["confusion_matrix"], title, labels))
    runs.write_bytes(os.path.join(out, "confusion_matrix.png"), png)
    metrics.log_png(writer, f"eval/{tag}/confusion_matrix", png, 0)
    png = metrics.figure_png(calibration.reliability_figure(logits, y, t, tag))
    runs.write_bytes(os.path.join(out, calibration.RELIABILITY), png)
    metrics.log_png(writer, f"eval/{tag}/reliability", png, 0)
    probs = calibration.probabilities(logits, t)
    wrong = [i for i in range(len(y)) if probs[i].argmax() != y[i]]
    wrong.sort(key=lambda i: -probs[i].max())
    runs.write_csv(os.path.join(out, runs.ERRORS), ["sentence", "true", "predicted", "confidence", "tokens"],
                   [(sentences[i], labels[y[i]], labels[int(probs[i].argmax())],
                     f"{probs[i].max():.4f}", lengths[i]) for i in wrong])
    analysis = metrics.error_analysis(sentences, y, probs, lengths, strictest, names=labels)
    runs.write_text(os.path.join(out, "error_analysis.md"), analysis)
    c = m["calibration"]
    print(f"{title}: n={m['n']} accuracy {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} | ECE "
          f"{c['before']['ece']:.4f} -> {c['after']['ece']:.4f} with T={t:.3f}")
    return m, report, out, len(wrong)


def file_results_dir(run_dir: str, path: str) -> str:
    """<run>/eval/file-<name>/ for a --csv file; where that holds another file's results (a/test.csv,
    then b/test.jsonl), file-<name>-<digest of the file's path>/, so neither replaces the other's."""
    name, where = os.path.splitext(os.path.basename(path))[0], os.path.abspath(path)
    out = os.path.join(run_dir, "eval", f"file-{name}")
    try:
        with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
            earlier = json.load(f).get("file")
    except (OSError, ValueError, AttributeError):
        earlier = None  # none yet, or unreadable: this file's results replace it
    if earlier not in (None, where):
        out += "-" + hashlib.sha256(where.encode()).hexdigest()[:8]
    return out


def evaluate_file(run, path, text_column=None, label_column="label", label_map=None, batch_size=64):
    """Evaluate a FinishedRun on a user's labelled CSV / TSV / JSONL; writes <run>/eval/file-<name>/."""
    table = texts.read_texts(path, None, text_column, None, label_column, texts.parse_label_map(label_map, run.labels),
                             labels=run.labels, flag="--csv")
    ids, truncated = run.encode(table.texts)
    logits = run.logits(ids, batch_size)  # in float32 (FinishedRun's precision rule)
    if truncated:
        print(f"note: {truncated} texts longer than {run.max_length} tokens were truncated to it")
    out = file_results_dir(run.run_dir, path)
    extra = {"file": os.path.abspath(path), "label_column": label_column, "label_map": label_map,
             "truncated": truncated}
    return write_report(run, out, f"{os.path.basename(path)}", table.texts, table.labels, logits,
                        [len(x) for x in ids], None, extra)


def main(argv=None):
    args = parse(argv)
    run = FinishedRun.open(args.run_dir)
    with run_lock.held(args.run_dir):  # writes eval/ in the run folder: not while another process writes it
        if args.csv:
            if args.agreement or args.data:
                raise errors.FlagError("--csv evaluates on your file: drop --agreement/--data (they pick a PhraseBank "
                                       "split)")
            m, report, out, mistakes = evaluate_file(run, args.csv, args.text_column, args.label_column,
                                                     args.label_map, args.batch_size)
        elif run.own_data:
            if args.agreement or args.data:
                raise errors.FlagError(f"--agreement/--data: {args.run_dir} trained on your own data "
                                       f"({run.flags.data}); it is evaluated on its own split (--part), or on a "
                                       f"file with --csv")
            m, report, out, mistakes = evaluate_own(run, args.part, args.batch_size)
        else:
            m, report, out, mistakes = evaluate_run(run, args.agreement, args.data, args.part, args.batch_size)
    print(report)
    print(f"wrote {out}/ (report.txt, error_analysis.md, metrics.json, confusion_matrix.png, "
          f"errors.csv: {mistakes} mistakes)")
    return m


if __name__ == "__main__":
    errors.run(main)
