"""The digits split and the resumable ArrayDataLoader."""

from __future__ import annotations

import numpy as np
import pytest

from artifex_rl.data import MASK_KEY, ArrayDataLoader, load_digits_split

# --------------------------------------------------------------------------- #
# The digits split
# --------------------------------------------------------------------------- #


def test_split_sizes_dtypes_and_range():
    s = load_digits_split()
    assert s.train_images.shape == (1297, 8, 8, 1) and s.heldout_images.shape == (500, 8, 8, 1)
    assert s.train_labels.shape == (1297,) and s.heldout_labels.shape == (500,)
    assert s.train_images.dtype == np.float32 and s.heldout_images.dtype == np.float32
    assert s.train_labels.dtype == np.int32 and s.heldout_labels.dtype == np.int32
    for images in (s.train_images, s.heldout_images):
        assert images.min() == -1.0 and images.max() == 1.0
        # 17 grey levels 0..16 -> k / 8 - 1: a grid of step 1/8
        np.testing.assert_array_equal((images + 1.0) * 8.0, np.round((images + 1.0) * 8.0))


def test_split_is_the_raw_data_rescaled_and_partitioned():
    from sklearn.datasets import load_digits

    raw = load_digits()
    s = load_digits_split()
    # Rows (label, 64 pixels) of the raw data and of train + held-out are the same multiset.
    want = np.concatenate([raw.target[:, None], raw.images.reshape(-1, 64) / 8.0 - 1.0], axis=1)
    got = np.concatenate(
        [
            np.concatenate([s.train_labels, s.heldout_labels])[:, None],
            np.concatenate([s.train_images, s.heldout_images]).reshape(-1, 64),
        ],
        axis=1,
    )
    assert got.shape == want.shape == (1797, 65)
    np.testing.assert_array_equal(got[np.lexsort(got.T)], want[np.lexsort(want.T)])


def test_split_is_stratified_and_fixed():
    s = load_digits_split()
    from sklearn.datasets import load_digits

    total = np.bincount(load_digits().target, minlength=10)
    held = np.bincount(s.heldout_labels, minlength=10)
    # Each class keeps its share: within one image of 500/1797 of its count.
    assert np.all(np.abs(held - total * 500 / 1797) <= 1.0)
    assert np.all(np.bincount(s.train_labels, minlength=10) == total - held)
    load_digits_split.cache_clear()
    again = load_digits_split()
    np.testing.assert_array_equal(again.heldout_labels, s.heldout_labels)
    np.testing.assert_array_equal(again.train_images, s.train_images)
    assert not again.train_images.flags.writeable


# --------------------------------------------------------------------------- #
# ArrayDataLoader
# --------------------------------------------------------------------------- #


def _data(n=23):
    return {"x": np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32), "i": np.arange(n)}


def _epoch_rows(loader):
    return np.concatenate([b["i"] for b in loader])


def test_each_epoch_is_a_permutation_that_changes_across_epochs_and_repeats_for_a_seed():
    loader = ArrayDataLoader(_data(), 5, seed=3, drop_last=False)
    epochs = [_epoch_rows(loader) for _ in range(3)]
    for rows, batches in zip(epochs, [len(loader)] * 3, strict=True):
        assert batches == 5
        # 25 rows served: the 23 real ones (a permutation) + 2 masked fillers
        assert sorted(rows[:23]) == list(range(23))
    assert not np.array_equal(epochs[0][:23], epochs[1][:23])
    assert not np.array_equal(epochs[1][:23], epochs[2][:23])
    other = ArrayDataLoader(_data(), 5, seed=3, drop_last=False)
    for rows in epochs:
        np.testing.assert_array_equal(_epoch_rows(other), rows)
    different_seed = ArrayDataLoader(_data(), 5, seed=4, drop_last=False)
    assert not np.array_equal(_epoch_rows(different_seed), epochs[0])
    assert loader.state_dict() == {"epoch": 3, "position": 0}


def test_batches_keep_rows_aligned_across_arrays():
    for batch in ArrayDataLoader(_data(), 4, seed=1):
        np.testing.assert_array_equal(batch["x"][:, 0], batch["i"].astype(np.float32))
        assert batch["x"].shape == (4, 3) and batch["i"].shape == (4,)


def test_drop_last_versus_pad():
    drop = ArrayDataLoader(_data(23), 5, seed=0)
    assert len(drop) == 4
    batches = list(drop)
    assert len(batches) == 4 and all(b["i"].shape == (5,) and MASK_KEY not in b for b in batches)
    rows = np.concatenate([b["i"] for b in batches])
    assert len(set(rows.tolist())) == 20  # the 3 left-over rows are dropped, nothing repeats

    pad = ArrayDataLoader(_data(23), 5, seed=0, drop_last=False)
    batches = list(pad)
    assert len(pad) == 5 and len(batches) == 5
    masks = np.stack([b[MASK_KEY] for b in batches])
    assert masks.dtype == np.float32 and masks.shape == (5, 5)
    np.testing.assert_array_equal(masks[:4], 1.0)
    np.testing.assert_array_equal(masks[4], [1, 1, 1, 0, 0])
    real = np.concatenate([b["i"][b[MASK_KEY] > 0] for b in batches])
    assert sorted(real.tolist()) == list(range(23))  # every row exactly once among the real ones
    # Fillers are valid rows of the data (here: the epoch's first ones).
    np.testing.assert_array_equal(batches[4]["i"][3:], batches[0]["i"][:2])


def test_no_shuffle_keeps_the_order():
    loader = ArrayDataLoader(_data(10), 5, shuffle=False)
    np.testing.assert_array_equal(_epoch_rows(loader), np.arange(10))
    np.testing.assert_array_equal(_epoch_rows(loader), np.arange(10))


@pytest.mark.parametrize("drop_last", [True, False])
def test_resume_mid_epoch_is_exact(drop_last):
    straight = ArrayDataLoader(_data(), 4, seed=7, drop_last=drop_last)
    want = []
    for _ in range(3):
        want.extend(b["i"] for b in straight)

    first = ArrayDataLoader(_data(), 4, seed=7, drop_last=drop_last)
    got = []
    for b in first:  # one full epoch
        got.append(b["i"])
    iterator = iter(first)
    for _ in range(2):  # two batches into the second epoch, then "checkpoint"
        got.append(next(iterator)["i"])
    state = first.state_dict()
    assert state == {"epoch": 1, "position": 2}

    resumed = ArrayDataLoader(_data(), 4, seed=7, drop_last=drop_last)
    resumed.load_state_dict(state)
    for _ in range(2):  # rest of epoch 1, then epoch 2
        got.extend(b["i"] for b in resumed)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_saved_after_an_epochs_last_batch_ends_that_epoch_first():
    # What a trainer sees when it checkpoints right after the last batch of epoch 0: the next
    # iter() must finish epoch 0 (no batch), and the one after must be epoch 1, as in the straight run.
    loader = ArrayDataLoader(_data(8), 4, seed=0)
    iterator = iter(loader)
    next(iterator), next(iterator)
    state = loader.state_dict()
    assert state == {"epoch": 0, "position": 2}
    resumed = ArrayDataLoader(_data(8), 4, seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == []
    np.testing.assert_array_equal(_epoch_rows(resumed), resumed.epoch_order(1))


def test_bad_input_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"leading size.*'a': 3.*'b': 4"):
        ArrayDataLoader({"a": np.zeros(3), "b": np.zeros(4)}, 2)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        ArrayDataLoader(_data(), 0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ArrayDataLoader(_data(), 2.5)
    with pytest.raises(ValueError, match="batch_size=30 exceeds the 23 rows"):
        ArrayDataLoader(_data(), 30)
    assert len(ArrayDataLoader(_data(), 30, drop_last=False)) == 1
    with pytest.raises(ValueError, match="non-empty dict"):
        ArrayDataLoader({}, 2)
    with pytest.raises(ValueError, match=r"arrays\['s'\] is a scalar"):
        ArrayDataLoader({"s": np.float32(1.0)}, 2)
    with pytest.raises(ValueError, match="already has a 'mask'"):
        ArrayDataLoader({"mask": np.ones(4)}, 2, drop_last=False)
    with pytest.raises(ValueError, match="seed must be"):
        ArrayDataLoader(_data(), 2, seed=-1)
    loader = ArrayDataLoader(_data(), 4)
    with pytest.raises(ValueError, match=r"'position' must be in \[0, 5\].*got 9"):
        loader.load_state_dict({"epoch": 0, "position": 9})
    with pytest.raises(ValueError, match=r"missing \['position'\]"):
        loader.load_state_dict({"epoch": 0})
