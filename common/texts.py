"""A user's texts: CSV / TSV / JSONL / plain text (one per line), from a file or stdin,
read strictly: every problem is one error that names the file, the line and the fix.

The standard library's csv and json readers, not `datasets`: they stream, and they let
the error name the exact line (load_dataset's errors name neither, and it would write a
cache under ~/.cache). Written here because no library reads "any of these formats with
line-numbered errors".
"""
import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field

from common.phrasebank import LABELS
from common.errors import DataError, FlagError

FORMATS = ("csv", "tsv", "jsonl", "text")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
              ".txt": "text", ".text": "text"}
TEXT_COLUMNS = ("text", "sentence", "headline")  # tried in this order when --text-column is not given


@dataclass
class Texts:
    texts: list
    lines: list                        # the line each text starts on (1-based), for messages
    ids: list = None                   # --id-column's values, if any
    id_column: str = None
    labels: list = None                # label ids (--label-column, mapped), if asked for
    skipped_empty: int = 0
    fmt: str = "text"
    extra: dict = field(default_factory=dict)


def format_of(path: str, fmt: str = None) -> str:
    if fmt:
        return fmt
    if path == "-":
        return "text"
    return EXTENSIONS.get(os.path.splitext(path)[1].lower(), "text")


def parse_label_map(text: str, labels=LABELS) -> dict:
    """'bearish=negative,bullish=positive,neutral=neutral' -> {'bearish': 0, ...}: the ids of
    `labels` (the class names in id order)."""
    out = {}
    names = [l.lower() for l in labels]
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        theirs, _, ours = part.partition("=")
        if not _ or ours.strip().lower() not in names:
            raise FlagError(f"--label-map {text!r}: '{part}' is not THEIRS=OURS with OURS one of "
                            f"{', '.join(labels)}")
        out[theirs.strip()] = names.index(ours.strip().lower())
    return out


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{name} line {line}: not UTF-8 (byte 0x{raw[e.start]:02x}); re-encode the file as UTF-8, "
                        f"e.g. iconv -f latin1 -t utf-8") from None


def _pick(columns, wanted, flag, name, defaults=(), line=None):
    where = f"{name} line {line}" if line else name
    if wanted:
        if wanted not in columns:
            raise DataError(f"{where}: no column '{wanted}' (it has: {', '.join(map(str, columns)) or 'none'}); "
                            f"pass {flag} with one of them")
        return wanted
    for c in defaults:
        if c in columns:
            return c
    if flag == "--text-column" and len(columns) == 1:
        return next(iter(columns))
    if flag == "--text-column":
        raise DataError(f"{where}: none of the columns {', '.join(map(str, columns))} is called "
                        f"{' or '.join(TEXT_COLUMNS)}; pass --text-column NAME")
    return None


def read_texts(path: str, fmt: str = None, text_column: str = None, id_column: str = None,
               label_column: str = None, label_map: dict = None, skip_empty: bool = False,
               stdin=None, labels=LABELS, flag: str = "--input") -> Texts:
    """Read texts (and ids, and label ids if label_column is given: the index in `labels`, the
    class names, after label_map) from `path` ('-': stdin)."""
    fmt = format_of(path, fmt)
    if fmt not in FORMATS:
        raise FlagError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    name = "<stdin>" if path == "-" else path
    text = _decode(_read_bytes(path, stdin, flag), name)
    if fmt == "text":
        records = [(i + 1, {"text": line}) for i, line in enumerate(text.splitlines())]
        text_column, id_column = "text", None
    elif fmt in ("csv", "tsv"):
        header, records = _csv_records(text, fmt, name)
        text_column = _pick(header, text_column, "--text-column", name, TEXT_COLUMNS)
        id_column = _pick(header, id_column, "--id-column", name, ("id",))
        if label_column:
            _pick(header, label_column, "--label-column", name)
    else:
        records = _jsonl_records(text, name)
        first_line, first = next(((l, r) for l, r in records if r is not None), (None, {}))
        text_column = _pick(list(first), text_column, "--text-column", name, TEXT_COLUMNS, line=first_line)
        id_column = _pick(list(first), id_column, "--id-column", name, ("id",))
    return _texts_of(records, name, fmt, text_column, id_column, label_column, label_map, skip_empty, labels)


def _read_bytes(path: str, stdin=None, flag: str = "--input") -> bytes:
    if path == "-":
        return (stdin or sys.stdin.buffer).read()
    from common import storage
    try:
        return storage.read_bytes(path)
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot read it ({e.strerror}); pass a CSV, TSV, JSONL"
                        + (" or text file, or - for stdin" if flag == "--input" else " file")) from None


def _csv_records(text: str, fmt: str, name: str):
    """(header, [(line, {column: value})]) of a CSV / TSV file's text."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t")
    try:
        header = next(reader)
    except StopIteration:
        header = []
    except csv.Error as e:
        raise DataError(f"{name} line 1: {e}; is it a {fmt.upper()} file?") from None
    header = [h.strip() for h in header]
    records, line = [], 1
    try:
        for row in reader:
            start = line + 1
            line = reader.line_num
            if not row:
                continue  # csv yields [] for a blank line: not a record
            if len(row) != len(header):
                raise DataError(f"{name} line {start}: {len(row)} fields, the header has {len(header)}; "
                                f"quote fields that hold the delimiter")
            records.append((start, dict(zip(header, row))))
    except csv.Error as e:
        raise DataError(f"{name} line {reader.line_num}: {e}; check the quoting") from None
    return header, records


def _jsonl_records(text: str, name: str):
    """[(line, object or None for a blank line)] of a JSONL file's text."""
    records = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            records.append((i + 1, None))
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise DataError(f"{name} line {i + 1}: not JSON ({e.msg}); one JSON object per line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{name} line {i + 1}: a {type(obj).__name__}, not a JSON object; one object per "
                            f"line, e.g. {{\"text\": \"...\"}}")
        records.append((i + 1, obj))
    return records


def _texts_of(records, name, fmt, text_column, id_column, label_column, label_map, skip_empty, labels) -> Texts:
    """The records' texts, ids and labels, each checked (the line named in every error)."""
    out = Texts([], [], [] if id_column else None, id_column, [] if label_column else None, fmt=fmt)
    for line, rec in records:
        if rec is not None and fmt == "jsonl":
            for col in (text_column, label_column):
                if col and col not in rec:
                    raise DataError(f"{name} line {line}: no field '{col}' (it has: {', '.join(rec)}); every "
                                    f"line needs it")
        value = "" if rec is None else rec.get(text_column)
        if not isinstance(value, str):
            raise DataError(f"{name} line {line}: '{text_column}' is {json.dumps(value)}, not a string")
        if not value.strip():
            if skip_empty:
                out.skipped_empty += 1
                continue
            raise DataError(f"{name} line {line}: empty text; remove the line"
                            + ("" if label_column else " or pass --skip-empty"))
        out.texts.append(value)
        out.lines.append(line)
        if id_column:
            out.ids.append(rec.get(id_column))
        if label_column:
            out.labels.append(_label(rec.get(label_column), label_map, name, line, label_column, labels))
    if not out.texts:
        raise DataError(f"{name}: no texts in it" + (f" ({out.skipped_empty} empty skipped)" if out.skipped_empty
                                                     else ""))
    return out


def _label(value, label_map, name, line, column, labels=LABELS) -> int:
    key = "" if value is None else str(value).strip()
    if not key:
        raise DataError(f"{name} line {line}: empty {column}; give every row a label, or remove the row")
    if label_map:
        if key in label_map:
            return label_map[key]
        raise DataError(f"{name} line {line}: {column} '{key}' is not in --label-map ({', '.join(label_map)}); "
                        f"add {key}={'|'.join(labels)} to it")
    names = [l.lower() for l in labels]
    if key.lower() in names:
        return names.index(key.lower())
    raise DataError(f"{name} line {line}: {column} '{key}' is not one of {', '.join(labels)}; pass --label-map "
                    f"{key}={labels[0]},... to map your labels to these, or --labels to name yours")
