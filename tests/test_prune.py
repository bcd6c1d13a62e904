"""Magnitude pruning: exact counts, C-order ties, strict thresholds, every float dtype, bad arguments."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcformat.errors import EncodeError
from dcformat.prune import magnitude_mask, prune

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOATS = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16]
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def ref_mask_sparsity(x: np.ndarray, sparsity: float) -> np.ndarray:
    """The round(s*n) smallest |x| pruned, ties by C-order position: a stable sort on |x|."""
    flat = np.abs(np.ascontiguousarray(x).reshape(-1).astype(np.float64))
    order = np.argsort(flat, kind="stable")  # NaN sorts last
    keep = np.ones(flat.size, dtype=bool)
    keep[order[: round(sparsity * flat.size)]] = False
    return keep.reshape(x.shape)


def bits_of(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(UINT[a.dtype.itemsize])


@st.composite
def tensors(draw):
    """Small float tensors with many repeated magnitudes (ties), signed zeros and a shape."""
    dtype = draw(st.sampled_from(FLOATS))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    n = int(np.prod(shape))
    pool = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, 3.25, -3.25, 1e-3]
    values = draw(st.lists(st.one_of(st.sampled_from(pool), st.floats(-10, 10, width=16)),
                           min_size=n, max_size=n))
    return np.array(values, dtype=np.float64).astype(dtype).reshape(shape)


@given(tensors(), st.floats(0, 1))
@SETTINGS
def test_sparsity_matches_stable_sort_reference(x, sparsity):
    keep = magnitude_mask(x, sparsity=sparsity)
    assert keep.dtype == np.bool_ and keep.shape == x.shape
    assert keep.tolist() == ref_mask_sparsity(x, sparsity).tolist()
    assert np.count_nonzero(~keep) == round(sparsity * x.size)
    pruned = prune(x, sparsity=sparsity)
    assert pruned.dtype == x.dtype and pruned.shape == x.shape
    assert np.all(bits_of(pruned)[~keep.reshape(-1)] == 0)  # +0.0: not stored by the sparse encoding
    assert bits_of(pruned)[keep.reshape(-1)].tolist() == bits_of(x)[keep.reshape(-1)].tolist()


@given(tensors(), st.sampled_from([0.0, 1e-3, 0.5, 1.0, 1.5, 3.25, 10.0, float("inf")]))
@SETTINGS
def test_threshold_is_strict(x, threshold):
    keep = magnitude_mask(x, threshold=threshold)
    magnitudes = np.abs(x.astype(np.float64))
    assert keep.tolist() == (~(magnitudes < threshold)).tolist()


def test_ties_are_broken_by_c_order():
    x = np.array([[1.0, -1.0, 2.0], [1.0, -2.0, 1.0]], dtype=np.float32)
    # Two of the four magnitude-1 elements go: the first two in C order.
    assert prune(x, sparsity=2 / 6).tolist() == [[0.0, 0.0, 2.0], [1.0, -2.0, 1.0]]
    assert prune(x, sparsity=3 / 6).tolist() == [[0.0, 0.0, 2.0], [0.0, -2.0, 1.0]]
    # 5 of 6: all four ones, then the first magnitude-2 element in C order ([0, 2] before [1, 1]).
    assert prune(x, sparsity=5 / 6).tolist() == [[0.0, 0.0, 0.0], [0.0, -2.0, 0.0]]


def test_exact_counts_and_rounding():
    x = np.arange(1, 11, dtype=np.float64)
    for sparsity, pruned in [(0.0, 0), (0.04, 0), (0.06, 1), (0.5, 5), (0.91, 9), (1.0, 10)]:
        assert np.count_nonzero(~magnitude_mask(x, sparsity=sparsity)) == pruned
    # Python's round: half to even (0.25 * 10 = 2.5 -> 2, 0.35 * 10 = 3.5 -> 4).
    assert np.count_nonzero(~magnitude_mask(x, sparsity=0.25)) == 2
    assert np.count_nonzero(~magnitude_mask(x, sparsity=0.35)) == 4
    assert prune(x, sparsity=0.3).tolist() == [0, 0, 0, 4, 5, 6, 7, 8, 9, 10]


def test_signed_zero_is_pruned_to_positive_zero():
    x = np.array([-0.0, 3.0, -0.0, -1.0], dtype=np.float32)
    out = prune(x, sparsity=0.5)
    assert bits_of(out).tolist() == [0, bits_of(x)[1], 0, bits_of(x)[3]]
    assert bits_of(prune(x, threshold=0.5)).tolist() == [0, bits_of(x)[1], 0, bits_of(x)[3]]
    assert bits_of(prune(x, sparsity=0.0)).tolist() == bits_of(x).tolist()  # nothing touched


def test_threshold_is_compared_exactly_not_rounded_to_the_dtype():
    t = float(np.float32(0.1))  # 0.100000001490116...
    x = np.array([np.float32(0.1), np.nextafter(np.float32(0.1), np.float32(0))], dtype=np.float32)
    assert magnitude_mask(x, threshold=t).tolist() == [True, False]
    # A threshold just above a float32 value, which rounds down to it in float32: the value is pruned.
    assert magnitude_mask(x, threshold=t + 1e-12).tolist() == [False, False]
    # One just below it, which rounds up to it: kept.
    assert magnitude_mask(x, threshold=t - 1e-12).tolist() == [True, False]
    h = np.array([1.0, 0.99951172], dtype=np.float16)  # 1 and its float16 predecessor
    assert magnitude_mask(h, threshold=0.9999).tolist() == [True, False]
    assert magnitude_mask(h, threshold=1e10).tolist() == [False, False]  # beyond float16: prunes all


def test_nan_is_largest():
    x = np.array([np.nan, 1.0, -np.nan, 0.5], dtype=np.float32)
    assert magnitude_mask(x, threshold=1e30).tolist() == [True, False, True, False]
    assert magnitude_mask(x, sparsity=0.5).tolist() == [True, False, True, False]
    assert magnitude_mask(x, sparsity=0.75).tolist() == [False, False, True, False]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_every_float_dtype(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 33)).astype(dtype)
    before = x.copy()
    out = prune(x, sparsity=0.9)
    assert bits_of(x).tolist() == bits_of(before).tolist()  # the input is untouched: prune copies
    assert out.dtype == x.dtype and out.shape == x.shape
    assert np.count_nonzero(bits_of(out) == 0) == round(0.9 * x.size)
    kept = np.abs(out[out != 0].astype(np.float64))
    dropped = np.abs(x[out == 0].astype(np.float64))
    assert kept.min() >= dropped.max()


def test_empty_and_scalar():
    assert prune(np.zeros((0, 3), np.float32), sparsity=0.5).shape == (0, 3)
    assert prune(np.zeros((0, 3), np.float32), threshold=1.0).shape == (0, 3)
    assert prune(np.float32(0.25), sparsity=1.0).tolist() == 0.0
    assert prune(np.array(0.25), threshold=0.25).tolist() == 0.25
    assert magnitude_mask(np.array(0.25), sparsity=0.4).shape == ()


@pytest.mark.parametrize("kwargs", [
    {}, {"sparsity": 0.5, "threshold": 0.1}, {"sparsity": -0.1}, {"sparsity": 1.01},
    {"sparsity": float("nan")},
    {"sparsity": True}, {"sparsity": "0.5"}, {"threshold": -1.0}, {"threshold": float("nan")},
    {"threshold": None, "sparsity": None}, {"threshold": [0.1]},
])
def test_bad_arguments(kwargs):
    with pytest.raises(EncodeError):
        prune(np.ones(4, np.float32), **kwargs)


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint8, np.bool_])
def test_non_float_dtype_is_rejected(dtype):
    with pytest.raises(EncodeError):
        magnitude_mask(np.ones(4, dtype), sparsity=0.5)
