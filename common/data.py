"""Financial PhraseBank: parse the original release, split it without leaks, feed tf.data.

Source formats (one parser for all): the release folder, the release zip, or the same
zip from the Hugging Face Hub (`datasets.load_dataset("financial_phrasebank")` is
broken on datasets >= 4, so we read the release itself).
"""
import hashlib
import json
import os
import re
import unicodedata
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

LABELS = ("negative", "neutral", "positive")
LEVELS = ("all", "75", "66", "50")  # strictest first; each file is a subset of the next
FILES = {"50": "Sentences_50Agree.txt", "66": "Sentences_66Agree.txt",
         "75": "Sentences_75Agree.txt", "all": "Sentences_AllAgree.txt"}
HUB_REPO = "takala/financial_phrasebank"
HUB_FILE = "data/FinancialPhraseBank-v1.0.zip"
SPLITS = ("train", "validation", "test")
SPLIT_SHARES = (0.8, 0.1, 0.1)
# Padded widths a batch may have. Steps of 4 where sentences are (mean 30, p95 58 tokens):
# real-token share 0.951 on AllAgree vs 0.893 with steps of 8 (README "Performance");
# a bounded set of shapes keeps oneDNN primitive builds (and XLA compiles on GPU) few.
WIDTHS = tuple(range(8, 65, 4)) + (72, 80, 96, 112, 128, 160, 192, 256, 320, 384, 448, 512)


def level_name(agreement: str) -> str:
    return "AllAgree" if agreement == "all" else f"{agreement}Agree"


from common.errors import DataError, FlagError  # noqa: E402,F401  (DataError is raised here, re-exported)


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


def _release_files(source: str) -> dict:
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
                        f"folder FinancialPhraseBank-v1.0/, its zip, or 'hub'")
    else:
        raise DataError(f"--data {source}: no such file or folder; pass the release folder, its zip, or 'hub'")
    if not found:
        raise DataError(f"--data {source}: no Sentences_*Agree.txt files in it; pass the "
                        f"FinancialPhraseBank-v1.0 folder or zip")
    return found


def download_release() -> str:
    """The release zip from the Hub (cached; honours HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME)."""
    from huggingface_hub import hf_hub_download
    try:
        return hf_hub_download(HUB_REPO, HUB_FILE, repo_type="dataset")
    except Exception as e:  # offline, no cache, proxy...: one sentence with the fix
        raise DataError(f"could not get {HUB_FILE} of dataset {HUB_REPO} from the Hub ({type(e).__name__}); "
                        f"pass --data PATH to a local FinancialPhraseBank-v1.0 folder or zip") from e


def load_levels(source: str) -> dict:
    """{level: rows} for each agreement level present in the source."""
    return {level: parse_release(raw, name) for level, (name, raw) in _release_files(source).items()}


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


# ----------------------------------------------------------------------------- tf.data

def encode(tokenizer, sentences, max_length: int):
    """Token ids per sentence, unpadded (tokenised once, by the fast tokenizer)."""
    return tokenizer(list(sentences), truncation=True, max_length=max_length)["input_ids"]


CACHE_DIR = os.path.join("runs", ".cache", "encoded")
CACHE_VERSION = 1


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides the ids: the fast tokenizer's whole definition (vocab, normaliser...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the truncation/padding state that each call sets
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    else:
        spec = tokenizer.get_vocab()
    text = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{text}".encode("utf-8")).hexdigest()


def encoded_splits(source: str, agreement: str, split: str, tokenizer, max_length: int,
                   cache_dir: str = CACHE_DIR):
    """(rows, ids): {split: [(sentence, label)]} and {split: [token ids]}, cached across runs.

    Reading, de-duplicating, splitting and tokenising cost 0.9 s on AllAgree and 1.6 s on
    50Agree per run (README "Performance"); a cache hit costs a hash of the release bytes
    and one JSON read. The key covers every release file (the split depends on all levels),
    the level, the split rule, the tokenizer's definition and max_length. cache_dir=None: no cache."""
    key = None
    if cache_dir:
        h = hashlib.sha256(f"v{CACHE_VERSION} {agreement} {split} {max_length} "
                           f"{tokenizer_fingerprint(tokenizer)}".encode())
        for level, (_, raw) in sorted(_release_files(source).items()):
            h.update(level.encode() + hashlib.sha256(raw).digest())
        key = os.path.join(cache_dir, h.hexdigest()[:32] + ".json")
        try:
            with open(key, encoding="utf-8") as f:
                cached = json.load(f)
            rows = {k: [tuple(r) for r in v] for k, v in cached["rows"].items()}
            return rows, cached["ids"]
        except (OSError, ValueError, KeyError):
            pass  # a miss (or an unreadable entry): rebuild and rewrite it
    rows = load_splits(source, agreement, split)
    ids = {k: encode(tokenizer, [s for s, _ in v], max_length) for k, v in rows.items()}
    if key:
        from common import runs
        runs.write_json(key, {"rows": rows, "ids": ids})
    return rows, ids


def widths_for(max_length: int):
    return tuple(w for w in WIDTHS if w < max_length) + (max_length,)


def _examples(ids, labels, weights=None):
    """Dataset of (1-D token ids, label[, loss weight]): slices of one flat tensor (tf.data
    cannot padded_batch ragged elements)."""
    flat = tf.constant(np.concatenate([np.asarray(x, np.int32) for x in ids]) if ids else
                       np.zeros([0], np.int32))
    ends = np.cumsum([len(x) for x in ids]).astype(np.int64)
    starts = ends - np.array([len(x) for x in ids], np.int64)
    if weights is None:
        ds = tf.data.Dataset.from_tensor_slices((starts, ends, np.asarray(labels, np.int32)))
        return ds.map(lambda a, b, y: (flat[a:b], y))
    ds = tf.data.Dataset.from_tensor_slices((starts, ends, np.asarray(labels, np.int32),
                                             np.asarray(weights, np.float32)))
    return ds.map(lambda a, b, y, w: (flat[a:b], y, w))


def _features(ids, pad_id):
    return {"input_ids": ids, "attention_mask": tf.cast(tf.not_equal(ids, pad_id), tf.int32)}


def _distributable(ds):
    opts = tf.data.Options()
    # In-memory data: shard by element under MultiWorkerMirroredStrategy (no files to shard).
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No autotuning: on TF 2.15 deleting an iterator waits for the autotune thread's sleep
    # to end, and Keras deletes the training iterator at every epoch's end (up to 14 s each;
    # 33 s of pauses in a 3-epoch MiniLM run, README "Performance"). These pipelines run
    # 100x faster than training, so there is nothing for it to tune.
    opts.autotune.enabled = False
    return ds.with_options(opts)


def bucketed_dataset(ids, labels, batch_size: int, max_length: int, pad_id: int = 0,
                     shuffle: bool = True, seed: int = 0, weights=None):
    """Training batches padded only to the next fixed width (see WIDTHS); with `weights`,
    (features, label, loss weight) batches (Keras multiplies them by the class weights)."""
    widths = widths_for(max_length)
    extra = () if weights is None else ([],)
    ds = _examples(ids, labels, weights).cache()
    if shuffle:
        ds = ds.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True)
    ds = ds.bucket_by_sequence_length(
        element_length_func=lambda x, *_: tf.shape(x)[0],
        bucket_boundaries=[w + 1 for w in widths],  # bucket i holds lengths <= widths[i]
        bucket_batch_sizes=[batch_size] * (len(widths) + 1),
        padded_shapes=([None], [], *extra), padding_values=(pad_id, 0, *(0.0 for _ in extra)),
        pad_to_bucket_boundary=True)
    ds = ds.map(lambda x, *rest: (_features(x, pad_id), *rest), num_parallel_calls=tf.data.AUTOTUNE)
    return _distributable(ds.prefetch(tf.data.AUTOTUNE))


def _to_next_width(widths):
    """Pad a batch of token ids on the right to the next of `widths` (one trace per width)."""
    widths = tf.constant(widths, tf.int32)

    def pad(x, pad_id):
        longest = tf.shape(x)[1]
        width = tf.gather(widths, tf.searchsorted(widths, [longest])[0])
        return tf.pad(x, [[0, 0], [0, width - longest]], constant_values=pad_id)
    return pad


def fixed_dataset(ids, labels, batch_size: int, width: int, pad_id: int = 0, shuffle: bool = True, seed: int = 0,
                  weights=None, longest: bool = False):
    """Every example truncated/padded to `width` (--padding fixed: the notebook's and HF
    examples' way), kept as the baseline that eval/benchmark.py measures bucketing against.
    longest=True (--padding longest): the same batches in the same order, each padded only to
    the next bucket width above its longest sentence. The attention mask hides padding from
    the model, so this trains as `fixed` does at a fraction of the work."""
    extra = () if weights is None else ([],)
    ds = _examples([x[:width] for x in ids], labels, weights).cache()
    if shuffle:
        ds = ds.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True)
    ds = ds.padded_batch(batch_size, padded_shapes=([None if longest else width], [], *extra),
                         padding_values=(pad_id, 0, *(0.0 for _ in extra)))
    pad = _to_next_width(widths_for(width)) if longest else (lambda x, _: x)
    ds = ds.map(lambda x, *rest: (_features(pad(x, pad_id), pad_id), *rest))
    return _distributable(ds.prefetch(tf.data.AUTOTUNE))


def sorted_dataset(ids, labels, batch_size: int, max_length: int, pad_id: int = 0):
    """Evaluation batches: sorted by length (little padding), each padded to a fixed width.
    Returns (dataset, order): row i of the dataset's output is example order[i]."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    pad = _to_next_width(widths_for(max_length))
    ds = _examples([ids[i] for i in order], np.asarray(labels, np.int32)[order])
    ds = ds.padded_batch(batch_size, padded_shapes=([None], []), padding_values=(pad_id, 0))
    ds = ds.map(lambda x, y: (_features(pad(x, pad_id), pad_id), y)).cache()
    return _distributable(ds.prefetch(tf.data.AUTOTUNE)), order


def batch_stats(ds) -> dict:
    """Walk one epoch of a dataset without a model: steps, examples, real and padded
    tokens, distinct widths, and the pipeline's own rate (examples/s)."""
    import time
    steps = examples = real = padded = 0
    widths = set()
    t0 = time.perf_counter()
    for x, *_ in ds:
        mask = x["attention_mask"].numpy()
        steps += 1
        examples += mask.shape[0]
        real += int(mask.sum())
        padded += mask.size
        widths.add(mask.shape[1])
    secs = time.perf_counter() - t0
    return {"steps": steps, "examples": examples, "real_tokens": real, "padded_tokens": padded,
            "real_token_share": real / max(padded, 1), "widths": sorted(widths),
            "pipeline_examples_per_sec": examples / max(secs, 1e-9)}


# ----------------------------------------------------------------------------- a run's data

@dataclass
class Splits:
    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    val_order: np.ndarray      # row i of val predictions is example val_order[i]
    test_order: np.ndarray
    rows: dict                 # split -> [(sentence, label)]
    train_stats: dict          # steps, examples, real tokens, real-token share, pipeline rate

    @property
    def val_labels(self) -> np.ndarray:
        """Validation labels in the order the val dataset yields its examples."""
        return np.asarray([l for _, l in self.rows["validation"]])[self.val_order]

    @property
    def train_labels(self) -> list:
        return [l for _, l in self.rows["train"]]


def subset(rows, ids, n: float, seed: int):
    """(rows, ids) of a class-stratified, seeded subset of a split: n >= 1 examples, or the
    share n < 1 (scikit-learn's stratified train_test_split). n = 0: all of them."""
    if not n:
        return rows, ids
    if n < 0 or (n >= 1 and n != int(n)):
        raise FlagError(f"--train-examples {n:g}: expected a whole number of examples (>= 3) or a share in (0, 1)")
    size = int(n) if n >= 1 else n
    if size >= len(rows):
        return rows, ids
    from sklearn.model_selection import train_test_split
    try:
        keep, _ = train_test_split(np.arange(len(rows)), train_size=size, random_state=seed,
                                   stratify=[y for _, y in rows])
    except ValueError as e:  # fewer examples than classes, or a class with one example
        raise FlagError(f"--train-examples {n:g}: cannot draw a class-stratified subset of {len(rows)} training "
                        f"sentences ({e}); ask for more examples") from e
    keep = np.sort(keep)  # the split's own order
    return [rows[i] for i in keep], [ids[i] for i in keep]


def looser_training_sentences(cfg, tokenizer, strict_train):
    """(rows, ids) of the training sentences --extra-agreement's level adds to --agreement's:
    agreement-aware training. With the hash split they are leak-free by construction: a
    sentence keeps the split its strictest level gave it, so the added sentences are in no
    level's validation or test split. Labels are the looser level's (conflicts resolve to the
    stricter label, see dedupe)."""
    if cfg.extra_agreement == "none":
        return [], []
    if cfg.split != "hash":
        raise FlagError(f"--extra-agreement {cfg.extra_agreement} --split {cfg.split}: only the hash split keeps a "
                        f"looser level's training sentences out of --agreement {cfg.agreement}'s validation and test "
                        f"splits; pass --split hash")
    if LEVELS.index(cfg.extra_agreement) <= LEVELS.index(cfg.agreement):
        raise FlagError(f"--extra-agreement {cfg.extra_agreement}: must be a looser level than --agreement "
                        f"{cfg.agreement} (one of {', '.join(LEVELS[LEVELS.index(cfg.agreement) + 1:]) or 'none'})")
    rows, ids = encoded_splits(cfg.data, cfg.extra_agreement, "hash", tokenizer, cfg.max_length)
    have = {normalise(s) for s, _ in strict_train}
    keep = [i for i, (s, _) in enumerate(rows["train"]) if normalise(s) not in have]
    return [rows["train"][i] for i in keep], [ids["train"][i] for i in keep]


def class_weights(labels, kind: str = "balanced") -> dict | None:
    """Per-class loss weights for --class-weight: None for 'none'; 'balanced' = scikit-learn's
    n_samples / (n_classes * count(class)); 'sqrt' = their square roots, scaled so the mean
    weight per training example stays 1 (the learning rate means the same). scikit-learn
    has no softened variant, hence the two lines here."""
    if kind == "none":
        return None
    from sklearn.utils.class_weight import compute_class_weight
    classes, y = np.arange(len(LABELS)), np.asarray(labels)
    w = compute_class_weight("balanced", classes=classes, y=y)
    if kind == "sqrt":
        w = np.sqrt(w)
        w = w / (np.bincount(y, minlength=len(LABELS)) * w).sum() * len(y)
    return dict(zip(classes.tolist(), w.tolist()))


def load_data(cfg, tokenizer, replicas: int) -> Splits:
    """The run's splits as tf.data pipelines: bucketed (or fixed-width) training batches of
    the global --batch-size, length-sorted evaluation batches, and the pipeline's figures."""
    if cfg.batch_size < 1 or cfg.batch_size % replicas:
        raise FlagError(f"--batch-size {cfg.batch_size}: must be a positive multiple of the {replicas} replicas "
                        f"(it is the global batch; each replica gets batch-size / {replicas})")
    rows, ids = encoded_splits(cfg.data, cfg.agreement, cfg.split, tokenizer, cfg.max_length)
    rows, ids = dict(rows), dict(ids)
    extra_rows, extra_ids = looser_training_sentences(cfg, tokenizer, rows["train"])
    rows["train"], ids["train"] = subset(rows["train"], ids["train"], cfg.train_examples, cfg.seed)
    weights = None
    if extra_rows:  # --extra-agreement: the looser level's added sentences, at --extra-weight
        weights = [1.0] * len(rows["train"]) + [cfg.extra_weight] * len(extra_rows)
        rows["train"], ids["train"] = rows["train"] + extra_rows, ids["train"] + extra_ids
        cw = class_weights([y for _, y in rows["train"]], cfg.class_weight)  # folded in here: Keras 2.15's
        if cw:  # class_weight fails on datasets that carry sample weights (reshape to (None,))
            weights = [w * cw[y] for w, (_, y) in zip(weights, rows["train"])]
    counts = Counter(y for _, y in rows["train"])
    missing = [LABELS[c] for c in range(len(LABELS)) if not counts[c]]
    if missing:
        raise DataError(f"--data {cfg.data} --agreement {cfg.agreement}: the training split has no "
                        f"{' or '.join(missing)} sentences ({len(rows['train'])} in all); the classifier and its class "
                        f"weights need all of {', '.join(LABELS)}: check the file's labels")
    y = {k: [l for _, l in v] for k, v in rows.items()}
    global_batch, pad = cfg.batch_size, tokenizer.pad_token_id
    if cfg.padding == "buckets":
        train = bucketed_dataset(ids["train"], y["train"], global_batch, cfg.max_length, pad,
                                 shuffle=True, seed=cfg.seed, weights=weights)
    else:
        train = fixed_dataset(ids["train"], y["train"], global_batch, cfg.max_length, pad, seed=cfg.seed,
                              weights=weights, longest=cfg.padding == "longest")
    if cfg.padding == "fixed":
        val, test = (fixed_dataset(ids[k], y[k], global_batch, cfg.max_length, pad, shuffle=False)
                     for k in ("validation", "test"))
        val_order, test_order = np.arange(len(ids["validation"])), np.arange(len(ids["test"]))
    else:  # evaluation does not depend on padding: length-sorted batches are the fastest
        val, val_order = sorted_dataset(ids["validation"], y["validation"], 2 * global_batch, cfg.max_length, pad)
        test, test_order = sorted_dataset(ids["test"], y["test"], 2 * global_batch, cfg.max_length, pad)
    stats = batch_stats(train)
    # Bucketing hides the epoch length from Keras; it is fixed (bucket membership does not
    # depend on the shuffle), and Keras needs it to resume mid-epoch from BackupAndRestore.
    train = train.apply(tf.data.experimental.assert_cardinality(stats["steps"]))
    stats["extra_examples"] = len(extra_rows)
    return Splits(train, val, test, val_order, test_order, rows, stats)


def seen_sentences(run_flags: dict, part: str = "test") -> set:
    """Normalised sentences a run (its config.json flags) trained on, and validated on
    when `part` is the test split."""
    mine = load_splits(run_flags["data"], run_flags["agreement"], run_flags["split"])
    return {normalise(s) for p in (("train", "validation") if part == "test" else ("train",)) for s, _ in mine[p]}

