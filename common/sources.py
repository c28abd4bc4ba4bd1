"""Where a run's sentences come from: the Financial PhraseBank release, or a user's own
labelled files. Decided once per run (`resolve` -> a DataSource, which the run passes on),
read through one entry point, `splits(cfg, source)`, for training, evaluation and resume;
no TensorFlow here.

Own data (`--data` a CSV / TSV / JSONL file, or a folder holding train / validation / test
files) is read by the same reader as eval/evaluate.py --csv and predict (common/texts.py).
Given only a training file, validation and test are drawn from it: stratified 80/10/10
with --split-seed, identical texts (after the normalisation the PhraseBank's hash split
uses) kept in one split. The drawn split is written into the run folder (SPLIT_FILE), and
every later use of the run reads it from there.
"""
import hashlib
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from common import phrasebank, storage, texts
from common.errors import DataError, FlagError

PARTS = phrasebank.SPLITS  # train, validation, test
EXTENSIONS = tuple(e for e, fmt in texts.EXTENSIONS.items() if fmt != "text")  # the labelled formats texts.py reads
SPLIT_FILE = "data_split.json"  # in the run folder: the own-data split drawn for the run
# Flags that only mean something for the PhraseBank release, and their defaults
PHRASEBANK_ONLY = {"agreement": "all", "extra_agreement": "none", "split": "hash"}


def is_own(source: str) -> bool:
    """A labelled file, or a folder with a train file: not the PhraseBank release."""
    if source.lower().endswith(EXTENSIONS):
        return True
    return storage.isdir(source) and any(storage.exists(storage.join(source, "train" + e)) for e in EXTENSIONS)


def labels_of(cfg) -> tuple:
    """The run's class names in id order (--labels; runs made before the flag get the
    PhraseBank's through runs.run_flags)."""
    return tuple(x.strip() for x in cfg.labels.split(",") if x.strip())


@dataclass(frozen=True)
class DataSource:
    """Where a run's sentences come from, decided once (`resolve`) and passed on.

    Args:
        data: --data as given.
        own: a user's labelled files (not the PhraseBank release).
        labels: the class names in id order.
        files: own data: {part: path} (files()); {} for the PhraseBank.
        digests: own data: {absolute path: sha256} of those files, read once; {} otherwise.
    """
    data: str
    own: bool
    labels: tuple
    files: dict = field(default_factory=dict)
    digests: dict = field(default_factory=dict)


def resolve(cfg) -> DataSource:
    """The run's data source: one look at --data, one read of each own file's bytes."""
    if is_own(cfg.data):
        return DataSource(cfg.data, True, labels_of(cfg), files(cfg.data), digests(cfg.data))
    return DataSource(cfg.data, False, labels_of(cfg))


def files(source: str) -> dict:
    """{part: path} of own data: one file is the training file; a folder gives each part it has."""
    if not storage.exists(source):
        raise DataError(f"--data {source}: no such file or folder; pass a CSV / TSV / JSONL file, a folder with "
                        f"train / validation / test files, a FinancialPhraseBank-v1.0 folder or zip, or 'hub'")
    if not storage.isdir(source):
        return {"train": source}
    out = {}
    for part in PARTS:
        found = [storage.join(source, part + e) for e in EXTENSIONS if storage.exists(storage.join(source, part + e))]
        if len(found) > 1:
            raise DataError(f"--data {source}: {' and '.join(found)} are both a {part} file; keep one")
        if found:
            out[part] = found[0]
    if "validation" in out and "test" not in out or "test" in out and "validation" not in out:
        raise DataError(f"--data {source}: has a {'validation' if 'validation' in out else 'test'} file but no "
                        f"{'test' if 'validation' in out else 'validation'} file; give both, or neither (then they "
                        f"are drawn from train, 80/10/10)")
    return out


def file_sha256(path: str) -> str:
    """The digest config.json keeps of each own data file (resolved.data_files)."""
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()


def digests(source: str) -> dict:
    """{path: sha256} of own data's files (config.json keeps them: a resume refuses a changed file)."""
    out = {}
    for path in files(source).values():
        try:
            out[storage.absolute(path)] = file_sha256(path)
        except OSError as e:
            raise DataError(f"--data {path}: cannot read it ({e.strerror or e}); check the path and its "
                            f"permissions") from None
    return out


def check_flags(cfg) -> None:
    """Own-data flags with the PhraseBank, PhraseBank flags with own data: one line each."""
    labels = labels_of(cfg)
    if len(labels) < 2 or len(set(l.lower() for l in labels)) != len(labels):
        raise FlagError(f"--labels {cfg.labels!r}: name two or more different classes, comma-separated")
    if is_own(cfg.data):
        given = [f"--{k.replace('_', '-')} {getattr(cfg, k)}" for k, default in PHRASEBANK_ONLY.items()
                 if getattr(cfg, k) != default]
        if given:
            raise FlagError(f"{', '.join(given)}: PhraseBank-only (its agreement levels and splits); --data "
                            f"{cfg.data} is your own data: drop {'them' if len(given) > 1 else 'it'}")
        return
    if labels != phrasebank.LABELS or cfg.label_map:
        raise FlagError(f"--labels / --label-map: the Financial PhraseBank's classes are "
                        f"{','.join(phrasebank.LABELS)}; these flags are for your own data (--data FILE)")


def read(path: str, cfg, labels: tuple):
    """(rows [(text, label id)], line numbers) of one labelled file."""
    label_map = texts.parse_label_map(cfg.label_map, labels)
    table = texts.read_texts(path, None, cfg.text_column or None, None, cfg.label_column, label_map, labels=labels,
                             flag="--data")
    return list(zip(table.texts, table.labels)), table.lines


def one_label_per_text(path: str, rows, lines) -> None:
    """The same text (normalised) given two labels: refused, both lines named."""
    seen = {}
    for (text, y), line in zip(rows, lines):
        first = seen.setdefault(phrasebank.normalise(text), (y, line))
        if first[0] != y:
            raise DataError(f"{path} lines {first[1]} and {line}: the same text with two labels; keep one label "
                            f"for it (or drop one of the lines)")


def draw(rows, lines, seed: int, path: str, labels: tuple) -> dict:
    """{part: [line numbers]}: stratified 80/10/10 of the distinct texts (scikit-learn's
    train_test_split, twice), each text's every line in one part."""
    from sklearn.model_selection import train_test_split
    groups = defaultdict(list)  # normalised text -> its lines (one label each: checked)
    label = {}
    for (text, y), line in zip(rows, lines):
        key = phrasebank.normalise(text)
        groups[key].append(line)
        label[key] = y
    keys = sorted(groups)
    counts = Counter(label.values())
    few = [f"{labels[y]} ({n})" for y, n in sorted(counts.items()) if n < 10]
    if few:
        raise DataError(f"{path}: too few distinct texts to split 80/10/10 by class: {', '.join(few)}; a class needs "
                        f"at least 10, or give validation and test files (--data FOLDER with train/validation/test)")
    try:
        train, rest = train_test_split(keys, test_size=0.2, random_state=seed, stratify=[label[k] for k in keys])
        validation, test = train_test_split(rest, test_size=0.5, random_state=seed, stratify=[label[k] for k in rest])
    except ValueError as e:  # scikit-learn's own limit on a stratified split
        raise DataError(f"{path}: cannot split it 80/10/10 by class ({e}); give validation and test files") from e
    return {part: sorted(line for k in chosen for line in groups[k])
            for part, chosen in (("train", train), ("validation", validation), ("test", test))}


def kept_draw(path: str, drawn, lines, fix: str) -> dict:
    """A run's recorded draw ({part: [line numbers]}), checked against its file's lines: every
    line in exactly one part (a hand-edited draw would change the figures without a word)."""
    from common.errors import RunDirError
    parts = drawn if isinstance(drawn, dict) else {}
    if set(parts) != set(PARTS) or not all(isinstance(v, list) and all(type(n) is int for n in v)
                                           for v in parts.values()):
        raise RunDirError(f"{path}: 'lines' is not {{{', '.join(PARTS)}: [line numbers]}}; {fix}")
    given = [n for part in PARTS for n in parts[part]]
    if len(given) != len(set(given)) or set(given) != set(lines):
        raise RunDirError(f"{path}: its line numbers are not the file's lines, each in one part (a line in two "
                          f"parts, or missing, or not in the file); {fix}")
    return parts


def own_splits(cfg, source: DataSource, split_path: str = None, record: bool = True) -> dict:
    """{part: [(text, label id)]} of own data, each part in its file's order. split_path: the
    run folder's SPLIT_FILE, read if it holds a draw of this very file and --split-seed (the
    run's own), else drawn and (record) written there."""
    labels, paths = source.labels, source.files
    read_parts = {part: read(path, cfg, labels) for part, path in paths.items()}
    for part, (rows, lines) in read_parts.items():
        one_label_per_text(paths[part], rows, lines)
        present = {y for _, y in rows}
        if part == "train" and len(present) < 2:
            raise DataError(f"{paths[part]}: every row is {labels[next(iter(present))]}; a classifier needs two or "
                            f"more classes")
    if "validation" not in paths:
        rows, lines = read_parts["train"]
        seed = int(cfg.split_seed)
        this = {"file": storage.absolute(paths["train"]), "sha256": source.digests[storage.absolute(paths["train"])],
                "split_seed": seed}
        kept = None
        fix = "delete it, and the split is drawn again from the file and --split-seed"
        if split_path and os.path.exists(split_path):
            from common import runs
            kept = runs.read_run_json(split_path, fix)
        if kept and {k: kept.get(k) for k in this} == this:
            drawn = kept_draw(split_path, kept.get("lines"), lines, fix)
        else:  # none yet, or one of another file or seed (a first attempt that stopped before training)
            drawn = draw(rows, lines, seed, paths["train"], labels)
            if split_path and record:
                from common import runs
                runs.write_json(split_path, {**this, "lines": drawn})
        at = dict(zip(lines, rows))
        return {part: [at[line] for line in drawn[part]] for part in PARTS}
    given_parts(paths, read_parts, labels)
    return {part: read_parts[part][0] for part in PARTS}


def given_parts(paths: dict, read_parts: dict, labels: tuple) -> None:
    """Given validation and test files: every training class in each, no text in two parts."""
    train_classes = {y for _, y in read_parts["train"][0]}
    where = {}
    for part in PARTS:
        rows, lines = read_parts[part]
        missing = sorted(train_classes - {y for _, y in rows})
        if missing and part != "train":
            raise DataError(f"{paths[part]}: no {', '.join(labels[y] for y in missing)} rows; the {part} file needs "
                            f"every class the training file has")
        for (text, _), line in zip(rows, lines):
            other = where.setdefault(phrasebank.normalise(text), (part, line))
            if other[0] != part:
                raise DataError(f"{paths[other[0]]} line {other[1]} and {paths[part]} line {line}: the same text in "
                                f"{other[0]} and {part}; a text belongs to one part (remove one)")


def splits(cfg, source: DataSource, split_path: str = None, record: bool = True) -> dict:
    """{train|validation|test: [(sentence, label id)]} of a run's data (its flags, its source)."""
    if source.own:
        return own_splits(cfg, source, split_path, record)
    return phrasebank.load_splits(cfg.data, cfg.agreement, cfg.split)
