"""The token cache: a PhraseBank split's rows and token ids, kept across runs beside the run
folders (runs/.cache/encoded), keyed by everything that decides them."""
import hashlib
import json
import os
import weakref

from common import phrasebank


ENCODE_CHUNK = 4096  # sentences per tokenizer call: bounded memory for any input size
_TRACED = weakref.WeakKeyDictionary()  # tokenizer -> its tokenize, traced once


def _traced_tokenize(tokenizer):
    """tokenizer.tokenize as one traced function for any number of strings: called eagerly it
    runs its string ops one by one, 18 ms for a single sentence against 1 ms traced, which
    doubled a 1-sentence predict request's latency
    (docs/performance.md#inference-on-tensorflow-221-keras-3-and-kerashub-beside-the-old-stack)."""
    import tensorflow as tf
    if tokenizer not in _TRACED:
        ref = weakref.ref(tokenizer)  # not the tokenizer itself: the entry must not keep its key alive
        _TRACED[tokenizer] = tf.function(lambda texts: ref().tokenize(texts),
                                         input_signature=[tf.TensorSpec([None], tf.string)])
    return _TRACED[tokenizer]


def encode(tokenizer, sentences, max_length: int):
    """Token ids per sentence, unpadded: [CLS] + the first max_length - 2 pieces + [SEP], as
    the Hugging Face tokenizer's truncation=True gives (KerasHub's WordPiece tokenizer,
    tensorflow-text, tokenises each chunk in one call)."""
    import tensorflow as tf
    sentences = list(sentences)
    cls, sep, keep = tokenizer.cls_token_id, tokenizer.sep_token_id, max(0, max_length - 2)
    tokenize = _traced_tokenize(tokenizer)
    out = []
    for i in range(0, len(sentences), ENCODE_CHUNK):
        pieces = tokenize(tf.constant(sentences[i:i + ENCODE_CHUNK], tf.string))  # a RaggedTensor
        out.extend([cls, *row[:keep], sep] for row in pieces.to_list())
    return out


CACHE_VERSION = 3  # 3: KerasHub's tokenizer, normalised as Hugging Face's (models.WordPieceTokenizer)


def cache_dir_for(run_dir: str) -> str:
    """The token cache sits beside the run folder (runs/<run> -> runs/.cache/encoded), so a
    --run-dir elsewhere writes nothing into the working directory."""
    return os.path.join(os.path.dirname(os.path.abspath(run_dir)), ".cache", "encoded")


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides the ids: the tokenizer's settings (lower case, accents, splitting...)
    and its vocabulary."""
    settings = {k: v for k, v in tokenizer.get_config().items() if k not in ("name", "trainable", "dtype")}
    text = json.dumps([settings, tokenizer.get_vocabulary()], sort_keys=True, default=str)
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{text}".encode("utf-8")).hexdigest()


def encoded_splits(source: str, agreement: str, split: str, tokenizer, max_length: int, cache_dir: str = None):
    """(rows, ids): {split: [(sentence, label)]} and {split: [token ids]}, cached across runs.

    Reading, de-duplicating, splitting and tokenising cost about a second per run
    (docs/performance.md#the-default-recipe-choice-by-choice); a cache hit costs a hash of the release bytes
    and one JSON read. The key covers every release file (the split depends on all levels),
    the level, the split rule, the tokenizer's definition and max_length. cache_dir=None: no cache."""
    key = None
    if cache_dir:
        h = hashlib.sha256(f"v{CACHE_VERSION} {agreement} {split} {max_length} "
                           f"{tokenizer_fingerprint(tokenizer)}".encode())
        for level, (_, raw) in sorted(phrasebank.release_files(source).items()):
            h.update(level.encode() + hashlib.sha256(raw).digest())
        key = os.path.join(cache_dir, h.hexdigest()[:32] + ".json")
        try:
            with open(key, encoding="utf-8") as f:
                cached = json.load(f)
            rows = {k: [tuple(r) for r in v] for k, v in cached["rows"].items()}
            return rows, cached["ids"]
        except (OSError, ValueError, KeyError):
            pass  # a miss (or an unreadable entry): rebuild and rewrite it
    rows = phrasebank.load_splits(source, agreement, split)
    ids = {k: encode(tokenizer, [s for s, _ in v], max_length) for k, v in rows.items()}
    if key:
        from common import runs
        runs.write_json(key, {"rows": rows, "ids": ids})
    return rows, ids
