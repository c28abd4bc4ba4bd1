r"""A user's texts: CSV / TSV / JSONL / plain text (one per line), from a file or stdin,
read strictly: every problem is one error that names the file, the line and the fix.

The standard library's csv and json readers, not `datasets`: they stream, and they let
the error name the exact line (load_dataset's errors name neither, and it would write a
cache under ~/.cache). Written here because no library reads "any of these formats with
line-numbered errors".

Lines end with \n or \r\n, in every format: U+2028, NEL (U+0085), form feed and the
other characters str.splitlines also breaks on are text inside a line (JSON allows them
raw inside a string). One rule per format, so that one input record is one text, in order:
- CSV: RFC 4180, strictly: a field that starts with " is quoted and ends at the next lone ",
  which the delimiter or the line's end must follow (a " inside it is written ""); a " inside
  an unquoted field is text. A stray quote is an error naming its line, unless the lines
  it swallows happen to end in a quote before a comma or a line's end (then they are one
  text holding line breaks: predict counts such texts on stderr).
- TSV: IANA text/tab-separated-values: fields split on tabs, no quoting at all (a " is
  text); a field cannot hold a tab or a line break.
- JSONL: one JSON object per line. Text: one text per line.
"""
import csv
import io
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field

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


def parse_label_map(text: str, labels) -> dict:
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
    if not columns:
        raise DataError(f"{where}: no columns in it; give each text a name, e.g. {{\"text\": \"...\"}}")
    if wanted:
        if wanted not in columns:
            raise DataError(f"{where}: no column '{wanted}' (it has: {', '.join(map(str, columns))}); "
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
               stdin=None, labels=None, flag: str = "--input", allow_none: bool = False) -> Texts:
    """Read texts (and ids, and label ids if label_column is given: the index in `labels`, the
    class names, after label_map) from `path` ('-': stdin). allow_none: an input without
    records gives no texts (predict: zero rows) instead of an error."""
    fmt = format_of(path, fmt)
    if fmt not in FORMATS:
        raise FlagError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if labels is not None and not label_column:  # labelled data asked for, and no column named: all rows unlabelled
        raise FlagError("--label-column '': name the column / field holding each row's label (default: label)")
    name = "<stdin>" if path == "-" else path
    named_id = id_column  # given with --id-column: every JSONL line needs it (the default 'id' may be missing)
    text = _decode(_read_bytes(path, stdin, flag), name)
    if fmt == "text":
        records = [(i, {"text": line}) for i, line in _lines(text)]
        text_column, id_column = "text", None
    elif fmt in ("csv", "tsv"):
        header_line, header, records = _csv_records(text, fmt, name)
        text_column = _pick(header, text_column, "--text-column", name, TEXT_COLUMNS)
        id_column = _pick(header, id_column, "--id-column", name, ("id",))
        if label_column:
            _pick(header, label_column, "--label-column", name)
        for col in dict.fromkeys(filter(None, (text_column, id_column, label_column))):
            if header.count(col) > 1:  # csv would keep the last one silently
                raise DataError(f"{name} line {header_line}: the header names '{col}' {header.count(col)} times; "
                                f"rename the others, so that '{col}' names one column")
    else:
        records = _jsonl_records(text, name)
        first_line, first = next(((l, r) for l, r in records if r is not None), (None, None))
        if first is not None:
            text_column = _pick(list(first), text_column, "--text-column", name, TEXT_COLUMNS, line=first_line)
            id_column = _pick(list(first), id_column, "--id-column", name, ("id",))
        else:  # no objects at all: nothing to pick from (an empty file, or blank lines)
            text_column = text_column or TEXT_COLUMNS[0]
    if not records and not allow_none:
        raise DataError(f"{name}: " + (
            "a header row and no rows below it; add one row per text" if fmt in ("csv", "tsv") else
            "the file is empty; expected " + ("one JSON object per line, e.g. {\"text\": \"...\"}"
                                              if fmt == "jsonl" else "one text per line")))
    return _texts_of(records, name, fmt, text_column, id_column, label_column, label_map, skip_empty, labels,
                     allow_none, named_id)


def _lines(text: str):
    r"""[(line number, line)] of a text split on \n, a \r before it dropped. Hand-written
    (not str.splitlines) because splitlines also breaks on U+2028, NEL, \f, \v and
    \x1c-\x1e: text inside a line here, and legal raw inside a JSON string."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [(i + 1, line[:-1] if line.endswith("\r") else line) for i, line in enumerate(lines)]


def _read_bytes(path: str, stdin=None, flag: str = "--input") -> bytes:
    if path == "-":
        try:
            return (stdin or sys.stdin.buffer).read()
        except (AttributeError, OSError, ValueError):  # sys.stdin is None (fd 0 closed: <&-), or unreadable
            raise DataError(f"{flag} -: stdin is closed or unreadable; pipe the texts in "
                            f"(... | predict.py RUN {flag} -), or pass {flag} FILE") from None
    from common import storage
    try:
        return storage.read_bytes(path)
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot read it ({e.strerror}); pass a CSV, TSV, JSONL"
                        + (" or text file, or - for stdin" if flag == "--input" else " file")) from None


def _csv_records(text: str, fmt: str, name: str):
    r"""(header's line, header, [(line, {column: value})]) of a CSV / TSV file's text (the
    rules in the module's docstring). Lines end with \n or \r\n (csv itself would also end
    one at a lone \r, splitting a text in two)."""
    if not text.strip():
        raise DataError(f"{name}: the file is empty; a {fmt.upper()} file starts with a header row naming its "
                        f"columns (e.g. text), then one row per text")
    dialect = dict(delimiter=",", strict=True) if fmt == "csv" else dict(delimiter="\t", quoting=csv.QUOTE_NONE)
    reader = csv.reader(io.StringIO(text, newline="\n"), **dialect)
    header, header_line, records, line = None, None, [], 0
    limit = csv.field_size_limit()
    # The whole file is in memory already, so csv's field limit (131072 characters, a guard
    # against a runaway quoted field) guards nothing here: a field may be as long as the file.
    csv.field_size_limit(max(limit, len(text)))
    try:
        for row in reader:
            start, line = line + 1, reader.line_num
            if not row:
                continue  # csv yields [] for a blank line: not a record
            if header is None:
                header, header_line = [h.strip() for h in row], start
                continue
            if len(row) != len(header):
                raise DataError(f"{name} line {start}: {len(row)} fields, the header has {len(header)}; " + (
                    "quote fields that hold the delimiter" if fmt == "csv" else
                    "a TSV field cannot hold a tab (TSV has no quoting: save the file as CSV if a text holds tabs)"))
            records.append((start, dict(zip(header, row))))
    except csv.Error as e:
        raise DataError(_csv_error(str(e), name, fmt, line + 1, reader.line_num)) from None
    finally:
        csv.field_size_limit(limit)
    return header_line, header, records


def _csv_error(error: str, name: str, fmt: str, start: int, at: int) -> str:
    """csv's error, said as what the user has to change (start: the record's first line)."""
    quote = 'write a " inside a field as "" and quote the whole field, or remove the stray quote'
    if "expected after" in error:  # strict: more text after a quoted field's closing quote
        where = f"line {start}" if start == at else f"lines {start}-{at}"
        return (f"{name} {where}: a stray quote: a field that starts with \" runs to the next \""
                + ("" if start == at else f" (here on line {at})") + f" and must end there; {quote}")
    if "unexpected end of data" in error:
        return f"{name} line {start}: a quote opens a field that never closes (it runs to the end of the file); {quote}"
    if "new-line character" in error:  # a lone \r inside an unquoted field
        return (f"{name} line {at}: a carriage return (\\r) inside a line; lines end with \\n or \\r\\n: remove it"
                + (", or quote the field" if fmt == "csv" else ""))
    return f"{name} line {at}: {error}; is it a {fmt.upper()} file?"


def _jsonl_records(text: str, name: str):
    """[(line, object or None for a blank line)] of a JSONL file's text."""
    records = []
    for i, line in _lines(text):
        if not line.strip():
            records.append((i, None))
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_Object)
        except ValueError as e:
            raise DataError(f"{name} line {i}: not JSON ({e.msg}); one JSON object per line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{name} line {i}: a {type(obj).__name__}, not a JSON object; one object per "
                            f"line, e.g. {{\"text\": \"...\"}}")
        records.append((i, obj))
    return records


class _Object(dict):
    """A JSON object that remembers the keys it had twice (json keeps the last silently)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.twice = [k for k, n in Counter(k for k, _ in pairs).items() if n > 1]


def _texts_of(records, name, fmt, text_column, id_column, label_column, label_map, skip_empty, labels,
              allow_none=False, named_id=None) -> Texts:
    """The records' texts, ids and labels, each checked (the line named in every error)."""
    out = Texts([], [], [] if id_column else None, id_column, [] if label_column else None, fmt=fmt)
    for line, rec in records:
        if rec is not None and fmt == "jsonl":
            for col in (text_column, named_id, label_column):  # a missing --id-column would come out as null
                if col and col not in rec:
                    raise DataError(f"{name} line {line}: no field '{col}' (it has: {', '.join(rec)}); every "
                                    f"line needs it")
            twice = [c for c in (text_column, id_column, label_column) if c and c in rec.twice]
            if twice:
                raise DataError(f"{name} line {line}: the object has '{twice[0]}' twice; keep one")
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
    if not out.texts and not allow_none:
        raise DataError(f"{name}: no texts in it" + (f" ({out.skipped_empty} empty skipped)" if out.skipped_empty
                                                     else ""))
    return out


def _label(value, label_map, name, line, column, labels) -> int:
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
