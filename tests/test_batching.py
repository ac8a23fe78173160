"""batching: the one length-sorted batch plan and padding that tag, eval and finetune share (issue 13).

The pinned values were taken from the code before the module existed (Labeler._plan and its padding,
train._batches): a change here changes which rows share a batch, and so tag's numbers and a seeded
finetune's weights.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emolabel import batching
from emolabel.inference import Labeler


def naive_pad(ids: list[list[int]], rows: list[int], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(ids[r]) for r in rows)
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        out[j, : len(ids[r])] = ids[r]
        mask[j, : len(ids[r])] = 1
    return out, mask


def test_tokens_lay_rows_end_to_end():
    t = batching.Tokens.from_ids([[2, 7, 3], [2, 3], [2, 9, 9, 9, 3]])
    assert t.flat.tolist() == [2, 7, 3, 2, 3, 2, 9, 9, 9, 3] and t.flat.dtype == np.int64
    assert t.lengths.tolist() == [3, 2, 5] and t.starts.tolist() == [0, 3, 5] and len(t) == 3
    empty = batching.Tokens.from_ids([])
    assert len(empty) == 0 and empty.flat.shape == (0,)


def test_pad_to_the_batch_longest_row():
    ids = [[2, 7, 3], [2, 3], [2, 9, 9, 9, 3], [2, 5, 5, 3]]
    got_ids, got_mask = batching.pad(batching.Tokens.from_ids(ids), np.array([3, 1, 0]), pad_id=0)
    assert got_ids.tolist() == [[2, 5, 5, 3], [2, 3, 0, 0], [2, 7, 3, 0]]  # width 4: not row 2's 5
    assert got_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert got_ids.dtype == got_mask.dtype == np.int64


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(1, 500), min_size=1, max_size=20), min_size=1, max_size=40), st.data())
def test_pad_matches_a_row_by_row_copy(ids, data):
    rows = data.draw(st.lists(st.integers(0, len(ids) - 1), min_size=1, max_size=len(ids), unique=True))
    got = batching.pad(batching.Tokens.from_ids(ids), np.array(rows), pad_id=0)
    want = naive_pad(ids, rows, 0)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 80), max_size=200), st.integers(1, 20), st.integers(80, 400))
def test_plan_cuts_greedily_within_both_limits(lengths, batch_size, max_tokens):
    sorted_lengths = np.sort(np.array(lengths, dtype=np.int64))
    plan = batching.plan(sorted_lengths, batch_size, max_tokens)
    assert [i for s in plan for i in range(s.start, s.stop)] == list(range(len(lengths)))  # in order, each once
    for s in plan:
        rows = s.stop - s.start
        assert rows <= batch_size and rows * sorted_lengths[s.stop - 1] <= max_tokens
        if s.stop < len(lengths):  # greedy: the next row would break a limit
            assert rows == batch_size or (rows + 1) * sorted_lengths[s.stop] > max_tokens


def test_plan_without_a_token_budget_counts_rows():
    assert batching.plan(np.arange(1, 8), 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert batching.plan(np.array([], dtype=np.int64), 3) == []
    assert batching.plan(np.array([100]), 3, max_tokens=64) == [slice(0, 1)]  # over the budget: alone


def test_labeler_batches_are_the_ones_they_were(tiny_model):
    """tag's batches: which rows and how wide, pinned from Labeler._plan before this module."""
    lb = Labeler(tiny_model, device="cpu", batch_size=100, max_tokens=64)
    prep = lb.prepare(pa.array(["happy " * k for k in range(1, 60)]))
    shapes = [b[0].shape for b in prep.batches]
    assert shapes[:10] == [(7, 9), (4, 13), (3, 16), (3, 19), (2, 21), (2, 23), (2, 25), (2, 27), (2, 29), (2, 31)]
    assert shapes[10:] == [(1, w) for w in range(32, 62)]
    lb = Labeler(tiny_model, device="cpu", batch_size=3, max_tokens=4096)
    prep = lb.prepare(pa.array(["i feel " + "happy " * (k % 7) for k in range(20)] + [None, "sad"]))
    assert prep.rows.tolist() == [21, 0, 7, 14, 1, 8, 15, 2, 9, 16, 3, 10, 17, 4, 11, 18, 5, 12, 19, 6, 13]
    assert [b[0].shape for b in prep.batches] == [(3, w) for w in range(4, 11)]


def test_shuffled_batches_are_the_ones_they_were():
    """finetune's batches for a seed, pinned from train._batches before this module."""
    lengths = np.array([5, 3, 9, 3, 7, 2, 8, 4, 6, 1])
    got = batching.shuffled(lengths, 2, np.random.default_rng(0))
    assert [b.tolist() for b in got] == [[9, 5], [7, 0], [8, 4], [6, 2], [3, 1]]


@pytest.mark.parametrize("n,batch_size", [(300, 2), (1000, 7), (5, 8)])
def test_shuffled_batches_cover_the_epoch_once_and_group_lengths(n, batch_size):
    lengths = np.random.default_rng(1).integers(1, 50, n)
    got = batching.shuffled(lengths, batch_size, np.random.default_rng(5), window=4)
    assert sorted(np.concatenate(got).tolist()) == list(range(n))
    assert all(1 <= len(b) <= batch_size for b in got)
    again = batching.shuffled(lengths, batch_size, np.random.default_rng(5), window=4)
    assert all(np.array_equal(a, b) for a, b in zip(got, again))  # the seed decides
    for b in got:  # sorted within a window: a batch's lengths ascend
        assert (np.diff(lengths[b]) >= 0).all()
