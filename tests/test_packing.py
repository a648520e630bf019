"""Packed-tensor primitives: exact k-th largest, segment sums, Gram matrices and the counter-based noise.

Every reference here is computed independently in numpy (float64 where a sum is involved).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search.merge.packing import Packing, kth_largest, radix_select, tensor_key

# kth_largest picks a CPU or GPU algorithm by device; radix_select (the GPU one) runs on CPU too, so test both here.
SELECTORS = pytest.mark.parametrize("select", [kth_largest, radix_select], ids=["kth_largest", "radix_select"])


def slices(lengths):
    start = 0
    for length in lengths:
        yield slice(start, start + length)
        start += length


def kth_largest_reference(scores: np.ndarray, k: np.ndarray, lengths) -> np.ndarray:
    out = np.empty((scores.shape[0], len(lengths)), dtype=np.float32)
    for s, sl in enumerate(slices(lengths)):
        descending = -np.sort(-scores[:, sl], axis=1)
        for i in range(scores.shape[0]):
            out[i, s] = descending[i, k[i, s] - 1]
    return out


def check_kth_largest(select, scores: np.ndarray, k: np.ndarray, lengths) -> None:
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    packing = Packing(tuple(lengths), tuple(range(len(lengths))))
    found = select(torch.from_numpy(scores), torch.from_numpy(np.asarray(k, dtype=np.int64)), packing)
    assert found.dtype == torch.float32
    assert tuple(found.shape) == (scores.shape[0], len(lengths))
    expected = kth_largest_reference(scores, np.asarray(k), lengths)
    # Bit-exact: a threshold one ulp off changes which entries TIES keeps.
    np.testing.assert_array_equal(found.numpy().view(np.int32), expected.view(np.int32))


def random_k(rng, rows, lengths):
    return np.stack([[rng.integers(1, n + 1) for n in lengths] for _ in range(rows)])


def all_k(value, rows, lengths):
    if value == "first":
        return np.ones((rows, len(lengths)), dtype=np.int64)
    return np.tile(np.asarray(lengths, dtype=np.int64), (rows, 1))


# ---------------------------------------------------------------- kth_largest


@SELECTORS
@pytest.mark.parametrize("which", ["random", "first", "last"])
def test_kth_largest_random_data_single_segment(select, which):
    rng = np.random.default_rng(1)
    lengths = (1000,)
    scores = np.abs(rng.normal(size=(3, 1000)))
    k = random_k(rng, 3, lengths) if which == "random" else all_k(which, 3, lengths)
    check_kth_largest(select, scores, k, lengths)


@SELECTORS
@pytest.mark.parametrize("which", ["random", "first", "last"])
def test_kth_largest_many_ties_several_segments(select, which):
    rng = np.random.default_rng(2)
    lengths = (100, 7, 1, 393, 2)
    scores = rng.integers(0, 5, size=(2, sum(lengths))).astype(np.float32)
    k = random_k(rng, 2, lengths) if which == "random" else all_k(which, 2, lengths)
    check_kth_largest(select, scores, k, lengths)


@SELECTORS
def test_kth_largest_every_k_with_ties(select):
    rng = np.random.default_rng(3)
    lengths = (40,)
    scores = rng.integers(0, 6, size=(1, 40)).astype(np.float32) * 0.25
    for k in range(1, 41):
        check_kth_largest(select, scores, np.array([[k]]), lengths)


@SELECTORS
def test_kth_largest_zeros(select):
    lengths = (50, 13)
    check_kth_largest(select, np.zeros((2, 63)), random_k(np.random.default_rng(4), 2, lengths), lengths)
    mostly_zero = np.zeros((2, 63), dtype=np.float32)
    mostly_zero[0, [3, 17, 55]] = [0.5, 2.0, 1e-3]
    mostly_zero[1, 60] = 7.0
    for k in ([1, 1], [2, 1], [3, 2], [4, 13], [50, 13]):
        check_kth_largest(select, mostly_zero, np.array([k, k]), lengths)


@SELECTORS
@pytest.mark.parametrize("which", ["random", "first", "last"])
def test_kth_largest_values_spanning_all_magnitudes(select, which):
    rng = np.random.default_rng(5)
    lengths = (500, 250, 31)
    # 1e-44 .. 1e38: subnormals to near the float32 maximum.
    scores = (10.0 ** rng.uniform(-44, 38, size=(3, sum(lengths)))).astype(np.float32)
    scores[:, ::17] = 0.0
    k = random_k(rng, 3, lengths) if which == "random" else all_k(which, 3, lengths)
    check_kth_largest(select, scores, k, lengths)


@SELECTORS
def test_kth_largest_values_sharing_high_bits(select):
    # All values in [1, 1.0078): the same upper 16 bits, so the answer is decided by the low 16 bits alone.
    rng = np.random.default_rng(6)
    lengths = (300, 200)
    scores = (1.0 + rng.integers(0, 1 << 16, size=(2, 500)) * 2.0**-23).astype(np.float32)
    check_kth_largest(select, scores, random_k(rng, 2, lengths), lengths)
    check_kth_largest(select, scores, all_k("first", 2, lengths), lengths)
    check_kth_largest(select, scores, all_k("last", 2, lengths), lengths)


@SELECTORS
def test_kth_largest_k_differs_per_row_and_segment(select):
    rng = np.random.default_rng(7)
    lengths = (64, 64, 64)
    scores = np.abs(rng.normal(size=(4, 192)))
    k = np.array([[1, 64, 32], [64, 1, 2], [5, 6, 7], [33, 33, 33]])
    check_kth_largest(select, scores, k, lengths)


# ---------------------------------------------------------------- segment reductions


@pytest.mark.parametrize("lengths", [(257,), (10, 1, 300, 45)])
def test_segment_sum_matches_numpy(lengths):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, sum(lengths))) * rng.uniform(0.1, 10, size=(3, 1))
    packing = Packing(lengths, tuple(range(len(lengths))))
    for dtype in (torch.float32, torch.float64):
        values = torch.tensor(x, dtype=dtype)
        found = packing.segment_sum(values)
        assert found.dtype == torch.float64
        assert tuple(found.shape) == (3, len(lengths))
        exact = values.to(torch.float64).numpy()
        expected = np.stack([exact[:, sl].sum(1) for sl in slices(lengths)], axis=1)
        np.testing.assert_allclose(found.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lengths", [(500,), (100, 3, 250, 1)])
def test_gram_matches_numpy(lengths):
    rng = np.random.default_rng(9)
    rows = torch.tensor(rng.normal(size=(4, sum(lengths))), dtype=torch.float32)
    packing = Packing(lengths, tuple(range(len(lengths))))
    found = packing.gram(rows)
    assert found.dtype == torch.float64
    assert tuple(found.shape) == (len(lengths), 4, 4)
    exact = rows.to(torch.float64).numpy()
    for s, sl in enumerate(slices(lengths)):
        np.testing.assert_allclose(found[s].numpy(), exact[:, sl] @ exact[:, sl].T, rtol=1e-12, atol=1e-12)


def test_gram_resolves_near_parallel_rows():
    # Rows that differ in the 8th digit: their Gram entries must still be exact to float64 precision,
    # since SLERP and Model Stock read angles from them.
    rng = np.random.default_rng(10)
    base = rng.normal(size=1000)
    rows = torch.tensor(np.stack([base, base * (1 + 1e-8), base + 1e-8 * rng.normal(size=1000)]))
    packing = Packing((600, 400), (0, 1))
    found = packing.gram(rows)
    exact = rows.numpy()
    for s, sl in enumerate(slices((600, 400))):
        np.testing.assert_allclose(found[s].numpy(), exact[:, sl] @ exact[:, sl].T, rtol=1e-14)


def test_expand_repeats_each_segment_value():
    packing = Packing((2, 3, 1), (0, 0, 0))
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(packing.expand(values).numpy(), [[1, 1, 2, 2, 2, 3], [4, 4, 5, 5, 5, 6]])
    single = Packing.single(4)
    np.testing.assert_array_equal(single.expand(torch.tensor([[7.0]])).numpy(), [[7, 7, 7, 7]])


# ---------------------------------------------------------------- noise and keys


def test_uniform_range_shape_and_distribution():
    packing = Packing.single(100_000, tensor_key(0, "layer.weight"))
    u = packing.uniform(2, torch.device("cpu"))
    assert u.dtype == torch.float32
    assert tuple(u.shape) == (2, 100_000)
    values = u.numpy()
    assert values.min() >= 0.0 and values.max() < 1.0
    counts, _ = np.histogram(values[0], bins=10, range=(0.0, 1.0))
    np.testing.assert_allclose(counts / 100_000, 0.1, atol=0.005)
    # Rows are independent streams.
    assert abs(np.corrcoef(values[0], values[1])[0, 1]) < 0.02


def test_uniform_is_deterministic():
    key = tensor_key(3, "mask_decoder.x")
    a = Packing.single(5000, key).uniform(3, torch.device("cpu"))
    b = Packing.single(5000, key).uniform(3, torch.device("cpu"))
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_uniform_depends_on_key_and_row():
    cpu = torch.device("cpu")
    a = Packing.single(5000, tensor_key(0, "a")).uniform(2, cpu).numpy()
    b = Packing.single(5000, tensor_key(0, "b")).uniform(2, cpu).numpy()
    c = Packing.single(5000, tensor_key(1, "a")).uniform(2, cpu).numpy()
    for other in (b, c):
        assert np.mean(a == other) < 0.01
    assert np.mean(a[0] == a[1]) < 0.01


def test_uniform_is_independent_of_packing():
    # The draw for an element depends on its tensor's key and its index within that tensor only.
    cpu = torch.device("cpu")
    k1, k2, k3 = tensor_key(0, "x"), tensor_key(0, "y"), tensor_key(0, "z")
    packed = Packing((300, 5, 700), (k1, k2, k3)).uniform(2, cpu).numpy()
    alone = [Packing.single(n, k).uniform(2, cpu).numpy() for n, k in ((300, k1), (5, k2), (700, k3))]
    np.testing.assert_array_equal(packed, np.concatenate(alone, axis=1))
    # A prefix of a longer tensor draws the same numbers.
    longer = Packing.single(1000, k1).uniform(2, cpu).numpy()
    np.testing.assert_array_equal(longer[:, :300], alone[0])


def test_tensor_key_is_stable_and_distinguishes_seed_and_name():
    assert tensor_key(0, "a.weight") == tensor_key(0, "a.weight")
    keys = {tensor_key(seed, name) for seed in (0, 1, 2) for name in ("a.weight", "a.bias", "b.weight")}
    assert len(keys) == 9
    assert all(0 <= key < 1 << 63 for key in keys)
