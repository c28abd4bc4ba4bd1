"""The Financial PhraseBank itself: labels, agreement levels, parsing, splits. No TensorFlow
here: scripts that only need label names or splits (eval/reproduce_study.py, the summaries)
import this alone. The tf.data pipelines are in common/data.py.

Source formats (one parser for all): the release folder, the release zip, or the same
zip from the Hugging Face Hub (`datasets.load_dataset("financial_phrasebank")` is
broken on datasets >= 4, so we read the release itself).
"""
import hashlib
import os
import re
import unicodedata
import zipfile
from collections import Counter, defaultdict

from common.errors import DataError

LABELS = ("negative", "neutral", "positive")
LEVELS = ("all", "75", "66", "50")  # strictest first; each file is a subset of the next
LEVEL_CHOICES = tuple(reversed(LEVELS))  # loosest first, as flags list them: 50 66 75 all
FILES = {"50": "Sentences_50Agree.txt", "66": "Sentences_66Agree.txt",
         "75": "Sentences_75Agree.txt", "all": "Sentences_AllAgree.txt"}
HUB_REPO = "takala/financial_phrasebank"
HUB_FILE = "data/FinancialPhraseBank-v1.0.zip"
SPLITS = ("train", "validation", "test")
SPLIT_SHARES = (0.8, 0.1, 0.1)
OWN_DATA = "; or your own labelled data: a .csv / .tsv / .jsonl file, or a folder with train.csv (docs/own-data.md)"


def level_name(agreement: str) -> str:
    return "AllAgree" if agreement == "all" else f"{agreement}Agree"


# ----------------------------------------------------------------------------- parsing

def parse_release(raw: bytes, name: str):
    """Rows (sentence, label index) of one `sentence@label` file (latin-1, CRLF)."""
    if b"\x00" in raw:  # latin-1 decodes any byte, so catch binary files (a UTF-16 export, an archive) here
        at = raw.index(b"\x00")
        raise DataError(f"{name}: binary data (a NUL byte at byte {at}); expected latin-1 text lines "
                        f"'sentence@label' as in the release's Sentences_*Agree.txt")
    text = raw.decode("latin-1")  # the release's encoding
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        sentence, at, label = line.rpartition("@")  # sentences may contain '@': split on the LAST one
        sentence, label = sentence.strip(), label.strip()
        if not at or not sentence:
            raise DataError(f"{name}:{lineno}: expected 'sentence@label', got {line[:60]!r}")
        if label not in LABELS:
            raise DataError(f"{name}:{lineno}: unknown label {label!r}; expected one of {', '.join(LABELS)}")
        rows.append((sentence, LABELS.index(label)))
    if not rows:
        raise DataError(f"{name}: no sentences found; expected lines of 'sentence@label'")
    return rows


def release_files(source: str) -> dict:
    """{level: (display name, raw bytes)} for every agreement file found in `source`."""
    if source == "hub":
        source = download_release()
    if os.path.isdir(source):
        folder = source
        if not os.path.exists(os.path.join(folder, FILES["50"])):
            nested = os.path.join(folder, "FinancialPhraseBank-v1.0")
            folder = nested if os.path.isdir(nested) else folder
        found = {}
        for level, fname in FILES.items():
            path = os.path.join(folder, fname)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    found[level] = (path, f.read())
    elif zipfile.is_zipfile(source):
        found = {}
        with zipfile.ZipFile(source) as z:
            for member in z.namelist():
                base = os.path.basename(member)
                if "__MACOSX" in member or base.startswith("._"):
                    continue  # macOS resource forks that sit beside the real members
                for level, fname in FILES.items():
                    if base == fname:
                        found[level] = (f"{source}:{member}", z.read(member))
    elif os.path.exists(source):
        raise DataError(f"--data {source}: neither a folder nor a zip archive; pass the release "
                        f"folder FinancialPhraseBank-v1.0/, its zip, or 'hub'{OWN_DATA}")
    else:
        raise DataError(f"--data {source}: no such file or folder; pass the release folder, its zip, or 'hub'"
                        f"{OWN_DATA}")
    if not found:
        raise DataError(f"--data {source}: no Sentences_*Agree.txt files in it; pass the "
                        f"FinancialPhraseBank-v1.0 folder or zip{OWN_DATA}")
    return found


def download_release() -> str:
    """The release zip from the Hub (cached; honours HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME)."""
    from huggingface_hub import hf_hub_download
    from common import hub
    try:
        return hf_hub_download(HUB_REPO, HUB_FILE, repo_type="dataset", **hub.call_kwargs())
    except Exception as e:  # offline, no cache, proxy...: one sentence with the fix
        where = hub.unreachable_note()
        raise DataError(f"could not get {HUB_FILE} of dataset {HUB_REPO} from the Hub{' (' + where + ')' if where else ''} "
                        f"({type(e).__name__}); "
                        f"pass --data PATH to a local FinancialPhraseBank-v1.0 folder or zip") from e


def load_levels(source: str) -> dict:
    """{level: rows} for each agreement level present in the source."""
    return {level: parse_release(raw, name) for level, (name, raw) in release_files(source).items()}


# ----------------------------------------------------------------------------- splitting

def normalise(sentence: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", sentence).lower()).strip()


def _stable_key(norm: str) -> str:
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


def dedupe(rows, known: dict = None):
    """One row per normalised sentence. A sentence given conflicting labels (50Agree has
    two such pairs) takes the label a stricter level gave it (`known`: normalised ->
    label), and is dropped if there is none: then no label is right for it."""
    labels = defaultdict(set)
    first = {}
    for s, y in rows:
        n = normalise(s)
        labels[n].add(y)
        first.setdefault(n, (s, y))
    known = known or {}
    out = []
    for n, (s, y) in first.items():
        if len(labels[n]) == 1:
            out.append((s, y))
        elif known.get(n) in labels[n]:
            out.append((s, known[n]))
    return out


def deduped_levels(levels: dict) -> dict:
    """dedupe() each level, strictest first, so conflicts resolve to the stricter label."""
    known, out = {}, {}
    for level in LEVELS:
        if level in levels:
            out[level] = dedupe(levels[level], known)
            known.update((normalise(s), y) for s, y in out[level])
    return out


def hash_split(levels: dict) -> dict:
    """{normalised sentence: split} for every sentence of every level.

    Levels are split strictest first. A sentence keeps the split it got at a stricter
    level; the sentences a looser level adds fill, class by class and in stable-hash
    order, whatever each split lacks of its 80/10/10 share. So: duplicates share one
    split; the test split of a stricter level is inside every looser level's test
    split; each level's class ratios hold in each split; nothing depends on a seed.
    """
    assigned = {}
    for level, rows in deduped_levels(levels).items():
        by_class = defaultdict(list)
        for s, y in rows:
            by_class[y].append(normalise(s))
        for y, norms in by_class.items():
            n = len(norms)
            target = {"test": round(n * SPLIT_SHARES[2]), "validation": round(n * SPLIT_SHARES[1])}
            have = Counter(assigned[x] for x in norms if x in assigned)
            need = {k: max(0, target[k] - have[k]) for k in target}
            for x in sorted((x for x in norms if x not in assigned), key=_stable_key):
                split = next((k for k in ("test", "validation") if need[k] > 0), "train")
                if split != "train":
                    need[split] -= 1
                assigned[x] = split
    return assigned


def seed_split(rows, seed: int = 42) -> dict:
    """scikit-learn's train_test_split(test_size=0.2, random_state=seed), then the held-out
    20% halved: the notebook's sizes but not its sentences (see notebook_split). Kept so
    runs made with --split seed are evaluated on exactly their own split. Keeps duplicates."""
    from sklearn.model_selection import train_test_split
    train, rest = train_test_split(rows, test_size=0.2, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, random_state=seed)
    return {"train": train, "validation": val, "test": test}


def notebook_split(rows, seed: int = 42) -> dict:
    """The notebook's own split, drawn by Hugging Face `datasets` itself (it permutes with
    numpy's default_rng, unlike scikit-learn): Dataset.train_test_split(test_size=0.2,
    seed=42) on the level's rows in file order (duplicates kept), then the held-out part
    again with (0.5, 42): its "train" half is validation, its "test" half is test
    (AllAgree: 1811 / 226 / 227, test support 30 / 142 / 55 as in every report of the
    notebook). In memory: nothing is cached on disk."""
    from datasets import Dataset, disable_progress_bars
    disable_progress_bars()
    ds = Dataset.from_dict({"sentence": [s for s, _ in rows], "label": [y for _, y in rows]})
    first = ds.train_test_split(test_size=0.2, seed=seed)
    second = first["test"].train_test_split(test_size=0.5, seed=seed)

    def as_rows(d):
        return list(zip(d["sentence"], d["label"]))
    return {"train": as_rows(first["train"]), "validation": as_rows(second["train"]), "test": as_rows(second["test"])}


def strictest_levels(source: str) -> dict:
    """{normalised sentence: name of the strictest level whose file holds it}."""
    out = {}
    for level, rows in sorted(load_levels(source).items(), key=lambda kv: -LEVELS.index(kv[0])):
        out.update((normalise(s), level_name(level)) for s, _ in rows)  # stricter levels overwrite
    return out


def load_splits(source: str, agreement: str, split: str = "hash") -> dict:
    """{"train"|"validation"|"test": [(sentence, label), ...]} for one agreement level."""
    levels = load_levels(source)
    if agreement not in levels:
        raise DataError(f"--data {source}: has no {FILES[agreement]} for --agreement {agreement}")
    if split == "seed":
        return seed_split(levels[agreement])
    if split == "notebook":
        return notebook_split(levels[agreement])
    assigned = hash_split(levels)
    out = {k: [] for k in SPLITS}
    for s, y in deduped_levels(levels)[agreement]:
        out[assigned[normalise(s)]].append((s, y))
    return out


def seen_sentences(source: str, agreement: str, split: str, part: str = "test") -> set:
    """Normalised sentences a run on (source, agreement, split) trained on, and validated on
    when `part` is the test split."""
    mine = load_splits(source, agreement, split)
    return {normalise(s) for p in (("train", "validation") if part == "test" else ("train",)) for s, _ in mine[p]}

