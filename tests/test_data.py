"""Parser, split invariants, bucketing, the token cache: on the real release files."""
import json
import os
import random
import zipfile
from collections import Counter

import numpy as np
import pytest

from common import data, phrasebank
from tests.conftest import DATA_ZIP

COUNTS = {"50": (4846, 604, 2879, 1363), "66": (4217, 514, 2535, 1168),
          "75": (3453, 420, 2146, 887), "all": (2264, 303, 1391, 570)}  # ../shared/data/README.md


# ----------------------------------------------------------------------------- parser

def test_release_folder_parses_with_published_counts(data_dir):
    levels = phrasebank.load_levels(data_dir)
    for level, (n, neg, neu, pos) in COUNTS.items():
        rows = levels[level]
        assert len(rows) == n
        assert Counter(y for _, y in rows) == {0: neg, 1: neu, 2: pos}


def test_zip_equals_folder_and_skips_macos_entries(data_dir):
    with zipfile.ZipFile(DATA_ZIP) as z:
        assert any("__MACOSX" in m for m in z.namelist())  # the trap is really there
    assert phrasebank.load_levels(DATA_ZIP) == phrasebank.load_levels(data_dir)


def test_folder_may_be_the_parent_of_the_release(data_dir):
    assert phrasebank.load_levels(os.path.dirname(data_dir))["all"] == phrasebank.load_levels(data_dir)["all"]


def _write(tmp_path, raw: bytes, name="Sentences_AllAgree.txt"):
    (tmp_path / name).write_bytes(raw)
    return str(tmp_path)


def test_malformed_line_names_file_and_line(tmp_path):
    folder = _write(tmp_path, b"Profit rose .@positive\r\nno label on this line\r\n")
    with pytest.raises(phrasebank.DataError, match=r"Sentences_AllAgree\.txt:2: expected 'sentence@label'"):
        phrasebank.load_levels(folder)


def test_unknown_label_names_file_line_and_choices(tmp_path):
    folder = _write(tmp_path, b"Profit rose .@positive\r\n\r\nSales fell .@bearish\r\n")
    with pytest.raises(phrasebank.DataError, match=r":3: unknown label 'bearish'; expected one of negative, neutral"):
        phrasebank.load_levels(folder)


def test_empty_file_is_an_error(tmp_path):
    folder = _write(tmp_path, b"\r\n\r\n")
    with pytest.raises(phrasebank.DataError, match="no sentences found"):
        phrasebank.load_levels(folder)


def test_latin1_text_and_last_at_sign(tmp_path):
    folder = _write(tmp_path, b"Lemmink\xe4inen : mail ir@example.com@neutral\r\n")
    assert phrasebank.load_levels(folder)["all"] == [("Lemminkäinen : mail ir@example.com", 1)]


def test_missing_source_and_wrong_level_are_clear(tmp_path):
    with pytest.raises(phrasebank.DataError, match="no such file or folder"):
        phrasebank.load_levels(str(tmp_path / "nope"))
    folder = _write(tmp_path, b"Profit rose .@positive\r\n")
    with pytest.raises(phrasebank.DataError, match="--agreement 50"):
        phrasebank.load_splits(folder, "50")


# ----------------------------------------------------------------------------- split

@pytest.fixture(scope="module")
def levels(data_dir):
    return phrasebank.load_levels(data_dir)


@pytest.fixture(scope="module")
def splits(data_dir):
    return {lv: phrasebank.load_splits(data_dir, lv) for lv in phrasebank.LEVELS}


def _norms(rows):
    return {phrasebank.normalise(s) for s, _ in rows}


def test_hash_split_no_overlap_and_all_sentences_used(splits, levels):
    for lv, sp in splits.items():
        sets = [_norms(sp[k]) for k in phrasebank.SPLITS]
        for i in range(3):
            for j in range(i + 1, 3):
                assert not sets[i] & sets[j], (lv, i, j)
        # every unique, consistently-labelled sentence is in exactly one split
        assert sum(len(s) for s in sets) == len(_norms(levels[lv]))


def test_duplicates_never_straddle_splits(levels):
    assigned = phrasebank.hash_split(levels)
    raw50 = levels["50"]
    dupes = [n for n, c in Counter(phrasebank.normalise(s) for s, _ in raw50).items() if c > 1]
    assert len(dupes) == 8  # the README's count
    conflicting = [n for n in dupes if len({y for s, y in raw50 if phrasebank.normalise(s) == n}) > 1]
    assert len(conflicting) == 2
    # each duplicate is kept once (so it has one split); a conflict takes the stricter level's label
    deduped = phrasebank.deduped_levels(levels)
    kept50 = Counter(phrasebank.normalise(s) for s, _ in deduped["50"])
    assert all(kept50[n] == 1 and n in assigned for n in dupes)
    label66 = {phrasebank.normalise(s): y for s, y in deduped["66"]}
    for n in conflicting:
        assert [y for s, y in deduped["50"] if phrasebank.normalise(s) == n] == [label66[n]]


def test_splits_nest_across_agreement_levels(splits):
    for part in phrasebank.SPLITS:
        for strict, loose in zip(phrasebank.LEVELS, phrasebank.LEVELS[1:]):
            assert _norms(splits[strict][part]) <= _norms(splits[loose][part]), (part, strict, loose)


def test_split_is_deterministic_and_independent_of_row_order(levels, data_dir):
    a = phrasebank.hash_split(levels)
    shuffled = {lv: random.Random(1).sample(rows, len(rows)) for lv, rows in levels.items()}
    assert phrasebank.hash_split(shuffled) == a == phrasebank.hash_split(phrasebank.load_levels(data_dir))


def test_split_shares_and_class_ratios_within_a_point(splits):
    for lv, sp in splits.items():
        total = sum(len(v) for v in sp.values())
        ratio = lambda rows: np.bincount([y for _, y in rows], minlength=3) / len(rows)  # noqa: E731
        whole = ratio([r for v in sp.values() for r in v])
        for part, share in zip(phrasebank.SPLITS, phrasebank.SPLIT_SHARES):
            assert abs(len(sp[part]) / total - share) < 0.01, (lv, part)
            assert np.abs(ratio(sp[part]) - whole).max() < 0.01, (lv, part, ratio(sp[part]), whole)


def test_seed_split_reproduces_the_notebook_sizes(data_dir):
    sp = phrasebank.load_splits(data_dir, "all", "seed")
    assert [len(sp[k]) for k in phrasebank.SPLITS] == [1811, 226, 227]
    assert sp == phrasebank.load_splits(data_dir, "all", "seed")


def test_notebook_split_is_the_notebooks_own(data_dir, levels):
    """The notebook's cells, as written there: datasets' train_test_split on the level's rows
    in file order, twice. The support of its classification reports (30/142/55) and its
    per-level test sizes (227/346/422/485, ../shared/notebook-figures.md) confirm it."""
    from collections import Counter
    from datasets import Dataset
    rows = levels["all"]
    ds = Dataset.from_dict({"sentence": [s for s, _ in rows], "label": [y for _, y in rows]})
    held_out = ds.train_test_split(test_size=0.2, seed=42)["test"].train_test_split(test_size=0.5, seed=42)
    sp = phrasebank.load_splits(data_dir, "all", "notebook")
    assert [s for s, _ in sp["test"]] == held_out["test"]["sentence"]
    assert [s for s, _ in sp["validation"]] == held_out["train"]["sentence"]
    assert [len(sp[k]) for k in phrasebank.SPLITS] == [1811, 226, 227]
    assert Counter(y for _, y in sp["test"]) == {0: 30, 1: 142, 2: 55}
    assert [len(phrasebank.load_splits(data_dir, lv, "notebook")["test"]) for lv in ("all", "75", "66", "50")] == \
        [227, 346, 422, 485]
    # not scikit-learn's: same sizes, other sentences
    seed = {s for s, _ in phrasebank.load_splits(data_dir, "all", "seed")["test"]}
    assert len(seed & {s for s, _ in sp["test"]}) == 23


# ----------------------------------------------------------------------------- tf.data

@pytest.fixture(scope="module")
def encoded(splits, minilm):
    from common import models
    tok = models.load_tokenizer(minilm)
    rows = splits["all"]["train"]
    return data.encode(tok, [s for s, _ in rows], 128), [y for _, y in rows], tok.pad_token_id


def test_bucketing_uses_only_fixed_widths_and_keeps_every_example(encoded):
    ids, y, pad = encoded
    ds = data.bucketed_dataset(ids, y, 32, 128, pad, seed=3)
    seen, real, padded = Counter(), 0, 0
    for x, labels in ds:
        assert x["input_ids"].shape[1] in data.widths_for(128)
        assert x["input_ids"].shape[0] <= 32
        seen.update(labels.numpy().tolist())
        mask = x["attention_mask"].numpy()
        real, padded = real + mask.sum(), padded + mask.size
        # the mask marks exactly the real tokens
        assert ((x["input_ids"].numpy() != pad) == mask.astype(bool)).all()
    assert seen == Counter(y)
    assert real == sum(len(i) for i in ids)
    stats = data.batch_stats(ds)
    assert stats["real_token_share"] == pytest.approx(real / padded)
    assert stats["real_token_share"] >= 0.9
    assert set(stats["widths"]) <= set(data.widths_for(128))


def test_sorted_dataset_order_maps_back_to_examples(encoded):
    ids, y, pad = encoded
    ds, order = data.sorted_dataset(ids[:300], y[:300], 64, 128, pad)
    got = np.concatenate([labels.numpy() for _, labels in ds])
    back = np.empty_like(got)
    back[order] = got
    assert back.tolist() == y[:300]
    for x, _ in ds:
        assert x["input_ids"].shape[1] in data.widths_for(128)


def test_sorted_dataset_is_length_batches_as_a_dataset(encoded):
    """The one length-ordered batching: evaluation's tf.data batches are exactly inference's
    NumPy ones (data.length_batches), in the same order, with the same features."""
    ids, y, pad = encoded
    ids, y = ids[:300], y[:300]
    ds, order = data.sorted_dataset(ids, y, 64, 128, pad)
    batches = list(data.length_batches(ids, 64, 128, pad))
    assert len(batches) == 5
    for (x, labels), (idx, ref) in zip(ds, batches, strict=True):
        for k in ("input_ids", "attention_mask"):
            np.testing.assert_array_equal(x[k].numpy(), ref[k])
        assert labels.numpy().tolist() == [y[i] for i in idx]
    np.testing.assert_array_equal(order, np.concatenate([idx for idx, _ in batches]))
    lengths = [len(ids[i]) for i in order]
    assert lengths == sorted(lengths)  # shortest first, so each batch pads little


def test_fixed_padding_pads_every_example_to_the_width(encoded):
    ids, y, pad = encoded
    ds = data.fixed_dataset(ids[:100], y[:100], 8, 512, pad, shuffle=False)
    got = []
    for x, labels in ds:
        assert x["input_ids"].shape[1] == 512
        got += labels.numpy().tolist()
    assert got == y[:100]
    assert data.batch_stats(ds)["real_token_share"] < 0.1


def test_longest_padding_is_fixed_padding_without_the_pad(encoded, tiny_distilbert):
    """--padding longest (what makes --recipe notebook affordable): fixed's batches in fixed's
    order, epoch after epoch, each cut to the next width above its longest sentence; the
    model's logits on a batch are those of the same batch padded to 512."""
    from common import models
    ids, y, pad = encoded
    fixed = data.fixed_dataset(ids[:120], y[:120], 8, 512, pad, seed=5)
    longest = data.fixed_dataset(ids[:120], y[:120], 8, 512, pad, seed=5, longest=True)
    widths = set()
    for _ in range(2):  # reshuffled each epoch, the same way
        for (xf, yf), (xl, yl) in zip(fixed, longest, strict=True):
            assert yf.numpy().tolist() == yl.numpy().tolist()
            width = xl["input_ids"].shape[1]
            assert width == min(w for w in data.widths_for(512) if w >= xl["attention_mask"].numpy().sum(1).max())
            np.testing.assert_array_equal(xf["input_ids"].numpy()[:, :width], xl["input_ids"].numpy())
            assert not xf["attention_mask"].numpy()[:, width:].any()
            widths.add(width)
    assert len(widths) > 3 and max(widths) < 128
    model = models.build_classifier(tiny_distilbert, phrasebank.LABELS)
    np.testing.assert_allclose(model(xf, training=False), model(xl, training=False), atol=1e-5)


def test_encoded_splits_are_cached_by_everything_that_decides_them(data_dir, minilm, tmp_path):
    from common import models
    tok = models.load_tokenizer(minilm)
    cache = tmp_path / "cache"
    rows, ids = data.encoded_splits(data_dir, "all", "hash", tok, 128, str(cache))
    assert rows == phrasebank.load_splits(data_dir, "all", "hash")
    assert ids["test"] == data.encode(tok, [s for s, _ in rows["test"]], 128)
    entry, = cache.iterdir()
    # a hit is read from the file: mark the entry and see the mark come back
    cached = json.loads(entry.read_text())
    cached["ids"]["test"][0] = [101, 7, 102]
    entry.write_text(json.dumps(cached))
    _, hit = data.encoded_splits(data_dir, "all", "hash", tok, 128, str(cache))
    assert hit["test"][0] == [101, 7, 102] and hit["train"] == ids["train"]
    # another max_length, level or split rule is another entry
    data.encoded_splits(data_dir, "all", "hash", tok, 16, str(cache))
    data.encoded_splits(data_dir, "50", "hash", tok, 128, str(cache))
    data.encoded_splits(data_dir, "all", "seed", tok, 128, str(cache))
    assert len(list(cache.iterdir())) == 4
    # an unreadable entry (a crash mid-write cannot make one: writes are atomic) is rebuilt
    entry.write_text("{truncated")
    again_rows, again = data.encoded_splits(data_dir, "all", "hash", tok, 128, str(cache))
    assert again == ids and again_rows == rows
    assert json.loads(entry.read_text())["ids"] == ids
