"""The tf.data side of a run's data: tokenising (cached across runs: common/token_cache.py), length-bucketed
training batches, length-ordered evaluation and inference batches, and `load_data`, which
decides a run's splits, subsets and loss weights once for every user. The PhraseBank
itself (labels, parsing, splits) is common/phrasebank.py.
"""
from collections import Counter
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from common import phrasebank, sources
from common.token_cache import encode, encoded_splits
from common.errors import DataError, FlagError
from common.phrasebank import LEVELS

# Padded widths a batch may have. Steps of 4 where sentences are (mean 30, p95 58 tokens):
# more real tokens per batch than steps of 8 (docs/performance.md#the-default-recipe-choice-by-choice);
# a bounded set of shapes keeps oneDNN primitive builds (and XLA compiles on GPU) few.
WIDTHS = tuple(range(8, 65, 4)) + (72, 80, 96, 112, 128, 160, 192, 256, 320, 384, 448, 512)


# ----------------------------------------------------------------------------- tf.data

def widths_for(max_length: int):
    return tuple(w for w in WIDTHS if w < max_length) + (max_length,)


def _examples(ids, labels, weights=None):
    """A function order -> dataset of (1-D token ids, label[, loss weight]) for the example
    indices in `order` (None: all, in input order): slices of one flat tensor (tf.data cannot
    padded_batch ragged elements)."""
    flat = tf.constant(np.concatenate([np.asarray(x, np.int32) for x in ids]) if ids else
                       np.zeros([0], np.int32))
    ends = np.cumsum([len(x) for x in ids]).astype(np.int64)
    starts, ends = tf.constant(ends - np.array([len(x) for x in ids], np.int64)), tf.constant(ends)
    y = tf.constant(np.asarray(labels, np.int32))
    w = None if weights is None else tf.constant(np.asarray(weights, np.float32))

    def example(i):
        x = flat[starts[i]:ends[i]]
        return (x, y[i]) if w is None else (x, y[i], w[i])

    def dataset(order=None):
        return tf.data.Dataset.from_tensor_slices(tf.range(len(ids), dtype=tf.int64) if order is None else order) \
            .map(example)
    return dataset


def _features(ids, pad_id):
    return {"input_ids": ids, "attention_mask": tf.cast(tf.not_equal(ids, pad_id), tf.int32)}


def _distributable(ds):
    opts = tf.data.Options()
    # In-memory data: shard by element under MultiWorkerMirroredStrategy (no files to shard).
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No autotuning: on TF 2.15 deleting an iterator waits for the autotune thread's sleep
    # to end, and Keras deletes the training iterator at every epoch's end: seconds of pause
    # per epoch (docs/results.md#what-stands-in-the-way-of-time). These pipelines run far
    # faster than training, so there is nothing for it to tune.
    opts.autotune.enabled = False
    return ds.with_options(opts)


def epochs_of(examples, n: int, batches, seed: int, epochs=(0, 1), skip: int = 0):
    """Training batches of epochs epochs[0] .. epochs[1] - 1, the first `skip` left out.
    Epoch e's order is a stateless shuffle keyed by (seed, e) alone, so a run resumed from a
    backup at any step draws the batches the uninterrupted run drew from there on. (TF's own
    reshuffle_each_iteration draws from how many times this process has iterated the
    dataset, which a restarted process does not know.) `examples(order)`: the examples in
    that order (_examples); `batches` turns one epoch's examples into its batches."""
    first, last = epochs

    @tf.autograph.experimental.do_not_convert  # plain tf.data calls: nothing for AutoGraph to convert
    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                         seed=tf.stack([tf.constant(seed, tf.int64), e]))
        return batches(examples(order))
    return tf.data.Dataset.range(first, last).flat_map(epoch).skip(skip)


def bucketed_dataset(ids, labels, batch_size: int, max_length: int, pad_id: int = 0,
                     shuffle: bool = True, seed: int = 0, weights=None, epochs=(0, 1), skip: int = 0):
    """Training batches padded only to the next fixed width (see WIDTHS); with `weights`,
    (features, label, loss weight) batches (Keras multiplies them by the class weights).
    shuffle: epochs `epochs`, less `skip` batches, as epochs_of draws them."""
    widths = widths_for(max_length)
    extra = () if weights is None else ([],)
    examples = _examples(ids, labels, weights)

    def batches(ds):
        return ds.bucket_by_sequence_length(
            element_length_func=lambda x, *_: tf.shape(x)[0],
            bucket_boundaries=[w + 1 for w in widths],  # bucket i holds lengths <= widths[i]
            bucket_batch_sizes=[batch_size] * (len(widths) + 1),
            padded_shapes=([None], [], *extra), padding_values=(pad_id, 0, *(0.0 for _ in extra)),
            pad_to_bucket_boundary=True)
    ds = epochs_of(examples, len(ids), batches, seed, epochs, skip) if shuffle else batches(examples())
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
                  weights=None, longest: bool = False, epochs=(0, 1), skip: int = 0):
    """Every example truncated/padded to `width` (--padding fixed: the notebook's and HF
    examples' way), kept as the baseline that eval/benchmark.py measures bucketing against.
    longest=True (--padding longest): the same batches in the same order, each padded only to
    the next bucket width above its longest sentence. The attention mask hides padding from
    the model, so this trains as `fixed` does at a fraction of the work.
    shuffle: epochs `epochs`, less `skip` batches, as epochs_of draws them."""
    extra = () if weights is None else ([],)
    examples = _examples([x[:width] for x in ids], labels, weights)

    def batches(ds):
        return ds.padded_batch(batch_size, padded_shapes=([None if longest else width], [], *extra),
                               padding_values=(pad_id, 0, *(0.0 for _ in extra)))
    ds = epochs_of(examples, len(ids), batches, seed, epochs, skip) if shuffle else batches(examples())
    pad = _to_next_width(widths_for(width)) if longest else (lambda x, _: x)
    ds = ds.map(lambda x, *rest: (_features(pad(x, pad_id), pad_id), *rest))
    return _distributable(ds.prefetch(tf.data.AUTOTUNE))


def length_order(lengths) -> np.ndarray:
    """Indices that sort examples by length (stable: equal lengths keep input order)."""
    return np.argsort(np.asarray(lengths), kind="stable")


def length_batches(ids, batch_size: int, max_length: int, pad_id: int):
    """(indices, features) batches in NumPy: sorted by length, each padded to the next of
    the fixed widths (little padding, few shapes). The one length-ordered batching that
    evaluation (sorted_dataset), inference (common/finished_run.py) and the benchmarks share.
    NumPy, not tf.data: a 1-sentence request through a new tf.data pipeline cost far more
    set-up than model (docs/performance.md#inference-speed)."""
    order = length_order([len(x) for x in ids])
    widths = widths_for(max_length)
    for i in range(0, len(ids), batch_size):
        idx = order[i:i + batch_size]
        width = next(w for w in widths if w >= max(len(ids[j]) for j in idx))
        x = np.full((len(idx), width), pad_id, np.int32)
        mask = np.zeros((len(idx), width), np.int32)
        for row, j in enumerate(idx):
            x[row, :len(ids[j])] = ids[j]
            mask[row, :len(ids[j])] = 1
        yield idx, {"input_ids": x, "attention_mask": mask}


def sorted_dataset(ids, labels, batch_size: int, max_length: int, pad_id: int = 0):
    """Evaluation batches (features, labels): length_batches as a tf.data.Dataset.
    Returns (dataset, order): row i of the dataset's output is example order[i]."""
    labels = np.asarray(labels, np.int32)
    batches = list(length_batches(ids, batch_size, max_length, pad_id))
    order = np.concatenate([idx for idx, _ in batches]) if batches else np.zeros([0], np.int64)
    spec = ({k: tf.TensorSpec([None, None], tf.int32) for k in ("input_ids", "attention_mask")},
            tf.TensorSpec([None], tf.int32))
    ds = tf.data.Dataset.from_generator(lambda: ((x, labels[idx]) for idx, x in batches), output_signature=spec)
    return _distributable(ds.cache().prefetch(tf.data.AUTOTUNE)), order


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
    train: tf.data.Dataset     # epoch 1's batches (benchmarks, checks); fit draws from train_from
    val: tf.data.Dataset
    test: tf.data.Dataset
    val_order: np.ndarray      # row i of val predictions is example val_order[i]
    test_order: np.ndarray
    rows: dict                 # split -> [(sentence, label)]
    train_stats: dict          # steps, examples, real tokens, real-token share, pipeline rate
    labels: tuple = None       # the class names in id order (--labels), the run's data source's
    class_weights: dict = None  # what the training loss is weighted by, per class (--class-weight)
    weights_in_dataset: bool = False  # the training batches carry them as per-example weights
    train_from: object = None  # (step, epochs) -> the training batches from that optimizer step on (fit)

    @property
    def fit_class_weight(self) -> dict:
        """Keras fit()'s class_weight: None where the dataset's per-example weights hold them."""
        return None if self.weights_in_dataset else self.class_weights

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


def looser_training_sentences(cfg, tokenizer, strict_train, cache_dir: str = None):
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
    rows, ids = encoded_splits(cfg.data, cfg.extra_agreement, "hash", tokenizer, cfg.max_length,
                                           cache_dir)
    have = {phrasebank.normalise(s) for s, _ in strict_train}
    keep = [i for i, (s, _) in enumerate(rows["train"]) if phrasebank.normalise(s) not in have]
    return [rows["train"][i] for i in keep], [ids["train"][i] for i in keep]


def class_weights(labels, kind: str, n_classes: int) -> dict | None:
    """Per-class loss weights for --class-weight: None for 'none'; 'balanced' = scikit-learn's
    n_samples / (n_classes * count(class)); 'sqrt' = their square roots, scaled so the mean
    weight per training example stays 1 (the learning rate means the same). scikit-learn
    has no softened variant, hence the two lines here."""
    if kind == "none":
        return None
    from sklearn.utils.class_weight import compute_class_weight
    classes, y = np.arange(n_classes), np.asarray(labels)
    w = compute_class_weight("balanced", classes=classes, y=y)
    if kind == "sqrt":
        w = np.sqrt(w)
        w = w / (np.bincount(y, minlength=n_classes) * w).sum() * len(y)
    return dict(zip(classes.tolist(), w.tolist()))


def training_rows(cfg, source, tokenizer, rows, ids, cache_dir: str = None):
    """The training split as the flags shape it: --train-examples' subset, then
    --extra-agreement's added sentences. Returns (rows, ids, per-example loss weights or
    None, class weights, number of added sentences); class weights are decided here, once."""
    extra_rows, extra_ids = looser_training_sentences(cfg, tokenizer, rows, cache_dir)
    rows, ids = subset(rows, ids, cfg.train_examples, cfg.seed)
    rows, ids = rows + extra_rows, ids + extra_ids
    counts = Counter(y for _, y in rows)
    labels = source.labels
    missing = [labels[c] for c in range(len(labels)) if not counts[c]]
    if missing:
        raise DataError(f"--data {cfg.data}{'' if source.own else ' --agreement ' + cfg.agreement}: "
                        f"the training split has no {' or '.join(missing)} sentences ({len(rows)} in all); the "
                        f"classifier and its class weights need all of {', '.join(labels)}: check the file's labels")
    cw = class_weights([y for _, y in rows], cfg.class_weight, len(labels))
    weights = None
    if extra_rows:  # --extra-agreement: the looser level's added sentences, at --extra-weight; the class
        # weights folded in here: Keras' class_weight cannot combine with a dataset's own sample weights
        weights = [1.0] * (len(rows) - len(extra_rows)) + [cfg.extra_weight] * len(extra_rows)
        if cw:
            weights = [w * cw[y] for w, (_, y) in zip(weights, rows)]
    return rows, ids, weights, cw, len(extra_rows)


def run_encoded(cfg, source, tokenizer, cache_dir: str = None, split_path: str = None):
    """(rows, ids) of the run's data (`source`, sources.resolve's): the PhraseBank through the
    token cache, own data read and tokenised afresh (a user's file is small; its split is the
    run folder's, split_path)."""
    if not source.own:
        return encoded_splits(cfg.data, cfg.agreement, cfg.split, tokenizer, cfg.max_length, cache_dir)
    rows = sources.own_splits(cfg, source, split_path)
    return rows, {k: encode(tokenizer, [s for s, _ in v], cfg.max_length) for k, v in rows.items()}


def load_data(cfg, source, tokenizer, replicas: int, cache_dir: str = None, split_path: str = None) -> Splits:
    """The run's splits as tf.data pipelines: bucketed (or fixed-width) training batches of
    the global --batch-size, length-sorted evaluation batches, and the pipeline's figures.
    cache_dir: the token cache (token_cache.cache_dir_for(run folder)); None: no cache. split_path: where
    own data's drawn split is kept (sources.SPLIT_FILE in the run folder). source: the run's
    sources.DataSource, resolved once by the caller."""
    if cfg.batch_size < 1 or cfg.batch_size % replicas:
        raise FlagError(f"--batch-size {cfg.batch_size}: must be a positive multiple of the {replicas} replicas "
                        f"(it is the global batch; each replica gets batch-size / {replicas})")
    rows, ids = run_encoded(cfg, source, tokenizer, cache_dir, split_path)
    rows, ids = dict(rows), dict(ids)
    rows["train"], ids["train"], weights, cw, extra = training_rows(cfg, source, tokenizer, rows["train"],
                                                                    ids["train"], cache_dir)
    y = {k: [l for _, l in v] for k, v in rows.items()}
    global_batch, pad = cfg.batch_size, tokenizer.pad_token_id

    def train_batches(epochs=(0, 1), skip=0):
        if cfg.padding == "buckets":
            return bucketed_dataset(ids["train"], y["train"], global_batch, cfg.max_length, pad, seed=cfg.seed,
                                    weights=weights, epochs=epochs, skip=skip)
        return fixed_dataset(ids["train"], y["train"], global_batch, cfg.max_length, pad, seed=cfg.seed,
                             weights=weights, longest=cfg.padding == "longest", epochs=epochs, skip=skip)
    train = train_batches()
    if cfg.padding == "fixed":
        val, test = (fixed_dataset(ids[k], y[k], global_batch, cfg.max_length, pad, shuffle=False)
                     for k in ("validation", "test"))
        val_order, test_order = np.arange(len(ids["validation"])), np.arange(len(ids["test"]))
    else:  # evaluation does not depend on padding: length-sorted batches are the fastest
        val, val_order = sorted_dataset(ids["validation"], y["validation"], 2 * global_batch, cfg.max_length, pad)
        test, test_order = sorted_dataset(ids["test"], y["test"], 2 * global_batch, cfg.max_length, pad)
    stats = batch_stats(train)
    steps = stats["steps"]

    def train_from(step: int, epochs: int):
        """The training batches from optimizer step `step` to the end of epoch `epochs`."""
        first, skip = divmod(step, steps)
        # Bucketing hides the length from Keras; it is fixed (bucket membership does not depend
        # on the shuffle), and Keras needs it to resume mid-epoch from BackupAndRestore.
        return train_batches((first, epochs), skip).apply(
            tf.data.experimental.assert_cardinality(max(0, (epochs - first) * steps - skip)))
    stats["extra_examples"] = extra
    return Splits(train.apply(tf.data.experimental.assert_cardinality(steps)), val, test, val_order, test_order,
                  rows, stats, source.labels, cw, weights is not None, train_from)


