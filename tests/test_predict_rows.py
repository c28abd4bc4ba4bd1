"""eval/predict.py keeps the user's rows and files, and the length limits (issue 31, items 4
and 5): one output row per input record, in input order, whatever characters the texts
hold; one quoting rule per format that a stray quote cannot silently break; the user's
input and an existing output left as they were; one rule for long texts, empty texts and
empty inputs shared by predict, evaluate and the serving SavedModel. Run as a user runs
it (predict.py in its own process) where the behaviour is a process's: stdin, exit
status, files left untouched. The tiny run is test_predict.py's."""
import csv
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from common import REPO_ROOT, phrasebank, runs
from tests.conftest import USER_ENV, assert_one_line_error, reference_ids
from tests.test_predict import one_at_a_time, read_csv, test_sentences, tiny_run  # noqa: F401  (the fixtures)

PREDICT = "eval/predict.py"
# Characters str.splitlines breaks on that are text inside a line: U+2028, U+2029, NEL,
# form feed, vertical tab, \x1c-\x1e.
INSIDE_A_LINE = ["Sales\u2028fell .", "Net\x85loss .", "Page\x0cbreak .", "A\x1cB\x1dC\x1eD .", "Tab\x0bbed .",
                 "Para\u2029graph ."]
TRICKY = INSIDE_A_LINE + ['He said "profit" rose .', '"Quoted at the start', "Comma, then more .",
                          'Ends with a quote"']


def predict(*args):
    from eval import predict as script
    return script.main([str(a) for a in args])


def user_run(*args, input=None, cwd=REPO_ROOT):
    """predict.py as a user runs it from a shell (conftest.run_script, with stdin)."""
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, PREDICT), *map(str, args)], input=input,
                          capture_output=True, text=True, timeout=600, env=USER_ENV, cwd=str(cwd))


def snapshot(path):
    """What a user would notice changed: the bytes and the mode."""
    return open(path, "rb").read(), stat.S_IMODE(os.stat(path).st_mode)


def jsonl_rows(text):
    """predict's JSONL output: split on \\n only, as the texts may hold U+2028 and the like."""
    return [json.loads(line) for line in text.split("\n") if line]


def probs_of(rows, labels=phrasebank.LABELS):
    return np.array([[float(r[f"p_{c}"]) for c in labels] for r in rows])


def write_input(path, fmt, texts):
    """texts as a user's tools write them: csv.writer (RFC 4180 quoting), json.dumps, one per line."""
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["text"]] + [[t] for t in texts])
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    else:  # text and TSV: the texts as they are, one per line (TSV: under a header)
        path.write_bytes((("text\n" if fmt == "tsv" else "") + "\n".join(texts) + "\n").encode("utf-8"))


# ----------------------------------------------------------------------------- one row per record, in order

@pytest.mark.parametrize("fmt", ["text", "tsv", "csv", "jsonl"])
def test_one_output_row_per_input_record_in_order(tiny_run, tmp_path, fmt):  # noqa: F811
    """No id column, so nothing but the row count and order ties output to input: each
    record is one row, its text as written, whatever characters it holds."""
    src, out = tmp_path / f"in.{'txt' if fmt == 'text' else fmt}", tmp_path / "out.jsonl"
    write_input(src, fmt, TRICKY)
    predict(tiny_run, "--input", src, "--output", out, "--precision", "fp32")
    rows = jsonl_rows(out.read_text(encoding="utf-8"))
    assert [r["text"] for r in rows] == TRICKY
    np.testing.assert_allclose(probs_of(rows), one_at_a_time(tiny_run, TRICKY), atol=2e-5)
    # the ids too: a tiny random model's probabilities move by less than that tolerance when
    # a few ids change, so the tokens are checked against the Hugging Face tokenizer's directly
    from common.finished_run import FinishedRun
    assert FinishedRun.open(tiny_run).encode(TRICKY)[0] == reference_ids(TRICKY, 128)


def test_text_on_stdin_splits_on_newlines_only(tiny_run):  # noqa: F811
    """Four lines in (one ending \\r\\n), four rows out."""
    lines = ["Profit rose .", INSIDE_A_LINE[0], INSIDE_A_LINE[1], INSIDE_A_LINE[3]]
    p = user_run(tiny_run, "--input", "-", "--output-format", "jsonl", "--precision", "fp32",
                 input="\r\n".join(lines[:2]) + "\n" + "\n".join(lines[2:]) + "\n")
    assert p.returncode == 0, p.stderr[-2000:]
    assert [r["text"] for r in jsonl_rows(p.stdout)] == lines
    assert "predict: 4 texts labelled" in p.stderr


def test_jsonl_with_raw_line_separators_in_strings_for_training_and_evaluate_too(tiny_run, tmp_path):  # noqa: F811
    """JSON allows U+2028 and NEL raw inside a string: the shared reader reads such a line for
    own-data training (sources.read) and evaluate --csv as it does for predict."""
    from common import sources
    from common.finished_run import FinishedRun
    from eval import evaluate
    texts = [f"{t} {i}" for i in range(4) for t in INSIDE_A_LINE[:2]]
    src = tmp_path / "desk.jsonl"
    src.write_text("".join(json.dumps({"text": t, "label": phrasebank.LABELS[i % 3]}, ensure_ascii=False) + "\n"
                           for i, t in enumerate(texts)), encoding="utf-8")
    from common.config import Config
    rows, lines = sources.read(str(src), Config(label_column="label"), phrasebank.LABELS)
    assert [t for t, _ in rows] == texts and lines == list(range(1, len(texts) + 1))
    m, *_ = evaluate.evaluate_file(FinishedRun.open(tiny_run), str(src))
    assert m["n"] == len(texts)


def test_tsv_has_no_quoting_so_a_stray_quote_is_text(tiny_run, tmp_path):  # noqa: F811
    """IANA text/tab-separated-values: a quote opens nothing; 5 records stay 5 rows, ids in order."""
    texts = ['"Profit rose .', "Sales fell .", "Net loss .", 'A quote" here', "End ."]
    src, out = tmp_path / "in.tsv", tmp_path / "out.csv"
    src.write_text("id\ttext\n" + "".join(f"n{i}\t{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    predict(tiny_run, "--input", src, "--output", out)
    rows = read_csv(out)
    assert [(r["id"], r["text"]) for r in rows] == [(f"n{i}", t) for i, t in enumerate(texts)]


@pytest.mark.parametrize("content,message", [
    # an unquoted field's text after a quoted start: the lines it would swallow are named
    (b'text\n"Profit rose .\nSales fell .\nNet loss .\nA quote" here\nEnd .\n',
     'in.csv lines 2-5: a stray quote: a field that starts with " runs to the next " (here on line 5)'),
    (b'text\nProfit rose .\n"Sales fell .\nNet loss .\n', "in.csv line 3: a quote opens a field that never closes"),
    (b'text\n"Profit" rose .\n', 'in.csv line 2: a stray quote'),
])
def test_csv_stray_quote_is_one_line_naming_it_not_merged_rows(tiny_run, tmp_path, content, message):  # noqa: F811
    src = tmp_path / "in.csv"
    src.write_bytes(content)
    p = user_run(tiny_run, "--input", src, cwd=tmp_path)
    assert_one_line_error(p, PREDICT, message)
    assert 'write a " inside a field as ""' in p.stderr and p.stdout == ""


def test_a_bad_input_and_help_need_no_tensorflow(tmp_path):
    """predict checks its flags, output place and whole input before TensorFlow starts (~7 s):
    here `import tensorflow` fails, yet a stray quote is its one line (before the folder,
    which holds no run, is looked into) and --help prints."""
    fake = tmp_path / "no-tf" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('TensorFlow was imported')\n")
    src = tmp_path / "in.csv"
    src.write_bytes(b'text\nProfit rose .\n"Sales fell .\nNet loss .\n')
    env = {**USER_ENV, "PYTHONPATH": str(tmp_path / "no-tf")}
    (tmp_path / "no-run").mkdir()
    p = subprocess.run([sys.executable, os.path.join(REPO_ROOT, PREDICT), str(tmp_path / "no-run"), "--input", str(src)],
                       capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert_one_line_error(p, PREDICT, "in.csv line 3: a quote opens a field that never closes")
    p = subprocess.run([sys.executable, os.path.join(REPO_ROOT, PREDICT), "--help"], capture_output=True, text=True,
                       timeout=120, env=env, cwd=str(tmp_path))
    assert p.returncode == 0 and "--min-confidence" in p.stdout, p.stderr[-2000:]


def test_csv_quoted_field_with_line_breaks_is_one_row_and_counted(tiny_run, tmp_path, capsys):  # noqa: F811
    """RFC 4180 allows line breaks in a quoted field: one record, one row; stderr counts such
    rows (what a stray quote that happens to close would look like)."""
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text('id,text\na,Profit rose .\nb,"Sales fell\non weak demand ."\nc,End .\n', encoding="utf-8")
    predict(tiny_run, "--input", src, "--output", out)
    assert [r["text"] for r in read_csv(out)] == ["Profit rose .", "Sales fell\non weak demand .", "End ."]
    assert "1 span several lines (quoted fields holding line breaks, the first from line 3" in capsys.readouterr().err


# ----------------------------------------------------------------------------- what a bad input says

@pytest.mark.parametrize("name,content,message", [
    ("empty.csv", b"", "empty.csv: the file is empty; a CSV file starts with a header row"),
    ("dup.csv", b"text,id,text\nProfit rose .,1,Sales fell .\n",
     "dup.csv line 1: the header names 'text' 2 times; rename the others"),
    ("dup.jsonl", b'{"text": "Profit rose ."}\n{"text": "a", "id": 1, "text": "b"}\n',
     "dup.jsonl line 2: the object has 'text' twice; keep one"),
    ("cr.tsv", b"text\nProfit\rrose .\n", "cr.tsv line 2: a carriage return (\\r) inside a line"),
])
def test_misleading_lines_say_what_is_wrong(tiny_run, tmp_path, name, content, message):  # noqa: F811
    src = tmp_path / name
    src.write_bytes(content)
    from common.errors import DataError
    with pytest.raises(DataError) as e:
        predict(tiny_run, "--input", src)
    assert message in str(e.value)


def test_a_field_longer_than_csvs_default_limit_is_read(tiny_run, tmp_path):  # noqa: F811
    """csv refuses fields over 131072 characters by default; the file is in memory already,
    so its limit guards nothing: the field is read, and truncated to tokens as any text."""
    long = ("Operating profit rose . " * 9000).strip()  # 215,999 characters
    src, out = tmp_path / "in.csv", tmp_path / "out.jsonl"  # (csv would refuse to read it back)
    src.write_text(f"text\nShort .\n{long}\n", encoding="utf-8")
    predict(tiny_run, "--input", src, "--output", out, "--precision", "fp32")
    rows = jsonl_rows(out.read_text(encoding="utf-8"))
    assert [r["text"] for r in rows] == ["Short .", long]
    np.testing.assert_allclose(probs_of(rows)[1], one_at_a_time(tiny_run, [long])[0], atol=2e-5)


def test_closed_stdin_is_one_line(tiny_run):  # noqa: F811
    p = subprocess.run(["bash", "-c", f'exec "{sys.executable}" {PREDICT} "$0" --input - <&-', tiny_run],
                       capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=USER_ENV)
    assert_one_line_error(p, PREDICT, "--input -: stdin is closed")


# ----------------------------------------------------------------------------- the user's files

def test_output_that_is_the_input_is_refused_and_the_input_untouched(tiny_run, tmp_path):  # noqa: F811
    src = tmp_path / "headlines.csv"
    src.write_text("text\nProfit rose .\n", encoding="utf-8")
    os.chmod(src, 0o640)
    (tmp_path / "link.csv").symlink_to(src)
    before = snapshot(src)
    for output, *flags in ((src,), (tmp_path / "link.csv",), ("./headlines.csv", "--overwrite")):  # any name
        p = user_run(tiny_run, "--input", src, "--output", output, *flags, cwd=tmp_path)
        assert_one_line_error(p, PREDICT, "is the --input file; writing there would replace your texts")
        assert snapshot(src) == before


def test_existing_output_needs_overwrite(tiny_run, tmp_path):  # noqa: F811
    src, out = tmp_path / "in.txt", tmp_path / "scored.csv"
    src.write_text("Profit rose .\n", encoding="utf-8")
    out.write_text("yesterday's scores\n", encoding="utf-8")
    os.chmod(out, 0o640)
    before = snapshot(out)
    p = user_run(tiny_run, "--input", src, "--output", out, cwd=tmp_path)
    assert_one_line_error(p, PREDICT, f"--output {out}: exists; pass --overwrite to replace it")
    assert snapshot(out) == before
    p = user_run(tiny_run, "--input", src, "--output", out, "--overwrite", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert [r["text"] for r in read_csv(out)] == ["Profit rose ."]
    assert snapshot(out)[1] == 0o640  # replaced, with the mode it had


def unwritable_folder(tmp_path):
    """A folder no file can be made in: read-only for a user; as root, where even root cannot."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    os.chmod(folder, 0o555)
    try:
        (folder / "probe").write_text("")
    except OSError:
        return folder
    (folder / "probe").unlink()
    return "/sys"  # root writes anywhere chmod allows; not in sysfs


@pytest.mark.parametrize("where,message", [
    ("folder", "is a folder; pass a file name"),
    ("missing", "no folder "),
    ("read-only", "cannot write in"),
])
def test_unwritable_output_is_refused_before_any_model_loads(tiny_run, tmp_path, where, message):  # noqa: F811
    src = tmp_path / "in.txt"
    src.write_text("Profit rose .\n", encoding="utf-8")
    output = {"folder": tmp_path, "missing": tmp_path / "no" / "scored.csv",
              "read-only": os.path.join(unwritable_folder(tmp_path), "scored.csv")}[where]
    p = user_run(tiny_run, "--input", src, "--output", output, cwd=tmp_path)
    assert_one_line_error(p, PREDICT, message)
    assert "labelled" not in p.stderr  # refused before inference, not after it


# ----------------------------------------------------------------------------- length, empty texts, empty inputs

SERVE_EACH = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
loaded = tf.saved_model.load(sys.argv[1])
fn = loaded.signatures["serving_default"]
out = []
for batch in json.load(open(sys.argv[2])):
    try:
        r = fn(text=tf.constant(batch, tf.string))
        out.append({"probabilities": r["probabilities"].numpy().tolist(),
                    "label": [x.decode() for x in r["label"].numpy()]})
        if batch and sys.argv[4:] == ["ids"]:  # the ids the model was given, unpadded
            x = loaded.token_ids(text=tf.constant(batch, tf.string))
            out[-1]["ids"] = [row[m == 1].tolist() for row, m in zip(x["input_ids"].numpy(),
                                                                     x["attention_mask"].numpy())]
    except tf.errors.InvalidArgumentError as e:
        out.append({"error": e.message})
json.dump(out, open(sys.argv[3], "w"))
"""


def serve_batches(serving_dir, batches, tmp_path, ids=False):
    """Each batch through the serving SavedModel in a fresh process: its rows (ids: with the
    token ids the model was given), or its error."""
    src, dst = tmp_path / "batches.json", tmp_path / "served.json"
    src.write_text(json.dumps(batches))
    subprocess.run([sys.executable, "-c", SERVE_EACH, str(serving_dir), str(src), str(dst), *(["ids"] if ids else [])],
                   check=True, capture_output=True, timeout=300, cwd=str(tmp_path),
                   env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    return json.loads(dst.read_text())


@pytest.fixture(scope="module")
def old_long_run(tiny_run, tmp_path_factory):  # noqa: F811
    """The tiny run as if made with --max-length 100000 before training refused it (the
    encoder has 512 positions), serving/ exported from it; and the same run at 512, whose
    truncation is the reference."""
    from common import serving
    made = {}
    for max_length in (100000, 512):
        run = tmp_path_factory.mktemp("long") / f"run-{max_length}"
        shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("best", "tb", "serving", "backup"))
        config = runs.read_json(str(run / "config.json"))
        config["flags"]["max_length"] = max_length
        runs.write_json(str(run / "config.json"), config)
        made[max_length] = str(run)
    serving.export_serving(made[100000])
    return made


def test_long_texts_are_truncated_at_the_encoders_positions_by_predict_evaluate_and_serving(
        old_long_run, test_sentences, tmp_path, capsys):  # noqa: F811
    from common.finished_run import FinishedRun
    from eval import evaluate
    run, ref_run = old_long_run[100000], old_long_run[512]
    long = " ".join(test_sentences[:40])  # ~1,200 tokens
    assert len(reference_ids([long], 10 ** 6)[0]) > 1000
    texts = [test_sentences[0], long]
    ref = one_at_a_time(ref_run, texts)
    src, out = tmp_path / "in.txt", tmp_path / "out.csv"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    predict(run, "--input", src, "--output", out, "--precision", "fp32")
    assert "1 longer than 512 tokens were truncated to it" in capsys.readouterr().err
    np.testing.assert_allclose(probs_of(read_csv(out)), ref, atol=2e-5)
    desk = tmp_path / "desk.csv"
    with open(desk, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), (test_sentences[0], "neutral"), (long, "positive")])
    m, *_ = evaluate.evaluate_file(FinishedRun.open(run), str(desk))
    assert m["n"] == 2 and m["truncated"] == 1
    served = serve_batches(os.path.join(run, "serving"), [texts], tmp_path, ids=True)[0]
    assert "error" not in served, served
    np.testing.assert_allclose(served["probabilities"], ref, atol=1e-4)
    # the first 510 pieces between [CLS] and [SEP], as predict and the Hugging Face tokenizer cut it
    assert served["ids"] == FinishedRun.open(run).encode(texts)[0] == reference_ids(texts, 512)
    assert len(served["ids"][1]) == 512


EMPTY = ["", "   ", "\t\u3000", "\u2028", "\u200b", "\x00\x00"]  # blank, or only characters the tokenizer drops


def test_one_rule_for_empty_texts_and_empty_inputs_in_predict_and_serving(tiny_run, tmp_path):  # noqa: F811
    """An empty input (batch) gives zero rows; a text with no tokens is refused by both."""
    from common.errors import DataError
    # serving: an empty batch is zero rows; each empty text fails its batch with a message
    served = serve_batches(os.path.join(tiny_run, "serving"), [[]] + [["Profit rose .", t] for t in EMPTY], tmp_path)
    assert served[0] == {"probabilities": [], "label": []}
    for t, r in zip(EMPTY, served[1:]):
        assert "no tokens (an empty or blank text) in the texts at batch index" in r.get("error", ""), (t, r)
        assert "[1]" in r["error"], r["error"]  # the index of the empty one
    # predict: each is refused (line named), or dropped with --skip-empty
    for t in EMPTY:
        src = tmp_path / "in.jsonl"
        src.write_text(json.dumps({"text": "Profit rose ."}) + "\n" + json.dumps({"text": t}) + "\n")
        with pytest.raises(DataError, match="in.jsonl line 2: empty text"):
            predict(tiny_run, "--input", src)
    out = tmp_path / "out.csv"
    predict(tiny_run, "--input", src, "--skip-empty", "--output", out)
    assert [r["text"] for r in read_csv(out)] == ["Profit rose ."]
    # predict: no records in, zero rows out (a CSV header, or nothing), exit 0
    for fmt, expect in (("csv", "text,label,confidence,p_negative,p_neutral,p_positive\n"), ("jsonl", "")):
        p = user_run(tiny_run, "--input", "-", "--output-format", fmt, input="")
        assert p.returncode == 0 and p.stdout.replace("\r\n", "\n") == expect, p.stderr[-2000:]
        assert "predict: 0 texts labelled" in p.stderr

