"""Magnitude pruning: exact counts, C-order ties, strict thresholds, every float dtype, bad arguments."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcformat.errors import EncodeError
from dcformat.prune import gradual_schedule, magnitude_mask, prune, prune_tensors, std_threshold

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


# ------------------------------------------------------------------------------------------------
# quality × std rule, previous masks, schedules, whole state dicts


def test_std_threshold():
    x = np.array([[1.0, -1.0], [3.0, -3.0]], dtype=np.float32)  # mean 0, std sqrt(5)
    assert std_threshold(x, 1.0) == pytest.approx(np.sqrt(5.0))
    assert std_threshold(x, 0.5) == pytest.approx(0.5 * np.sqrt(5.0))
    assert std_threshold(np.zeros((2, 2)), 3.0) == 0.0 and std_threshold(np.zeros(0), 1.0) == 0.0
    huge = np.array([1e308, -1e308, 0.0])  # the squares overflow float64 unless scaled
    assert std_threshold(huge, 1.0) == pytest.approx(np.sqrt(2 / 3) * 1e308)
    for q in (-1.0, np.nan, np.inf, True, "1"):
        with pytest.raises(EncodeError):
            std_threshold(x, q)
    with pytest.raises(EncodeError):
        std_threshold(np.array([1.0, np.nan]), 1.0)


@given(tensors(), st.sampled_from([0.0, 0.25, 0.7, 1.0, 2.0]))
@SETTINGS
def test_quality_is_threshold_times_std(x, quality):
    if not np.all(np.isfinite(x.astype(np.float64))):
        return
    keep = magnitude_mask(x, quality=quality)
    assert keep.tolist() == magnitude_mask(x, threshold=std_threshold(x, quality)).tolist()
    pruned = prune(x, quality=quality)
    assert np.all(bits_of(pruned)[~keep.reshape(-1)] == 0)


def test_quality_rule_on_a_normal_layer():
    # |w| < 0.7 std of a normal sample: about erf(0.7 / sqrt 2) = 51.6% pruned.
    w = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)
    share = 1 - magnitude_mask(w, quality=0.7).mean()
    assert abs(share - 0.516) < 0.01


@given(tensors(), st.floats(0, 1), st.floats(0, 1))
@SETTINGS
def test_keep_mask_only_prunes_more(x, first, second):
    keep1 = magnitude_mask(x, sparsity=first)
    keep2 = magnitude_mask(x, sparsity=second, keep=keep1)
    assert np.all(keep2 <= keep1)  # once pruned, always pruned
    assert np.count_nonzero(~keep2) == max(np.count_nonzero(~keep1), round(second * x.size))
    # Pruning the pruned tensor again gives the same result as passing the mask (zeros go first).
    if second * x.size >= np.count_nonzero(~keep1):
        again = magnitude_mask(prune(x, sparsity=first), sparsity=second)
        assert np.count_nonzero(~again) == np.count_nonzero(~keep2)
    keep3 = magnitude_mask(x, threshold=0.0, keep=keep1)
    assert keep3.tolist() == keep1.tolist()


def test_keep_mask_is_checked():
    x = np.ones((2, 3), np.float32)
    for bad in (np.ones((3, 2), bool), np.ones((2, 3), np.int8), np.ones(6, bool)):
        with pytest.raises(EncodeError, match="keep"):
            magnitude_mask(x, sparsity=0.5, keep=bad)
    with pytest.raises(EncodeError):
        magnitude_mask(x, sparsity=0.5, quality=1.0)


def test_gradual_schedule():
    s = gradual_schedule(0.9, 4)
    assert s[-1] == 0.9 and len(s) == 4
    expected = [0.9 - 0.9 * (1 - t / 4) ** 3 for t in range(1, 5)]
    assert s == pytest.approx(expected)
    assert all(a < b for a, b in zip(s, s[1:]))
    assert all(a - b >= c - d for (a, b), (c, d) in zip(zip(s[1:], s), zip(s[2:], s[1:])))  # steps shrink
    assert gradual_schedule(0.8, 4, initial=0.4, power=1) == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert gradual_schedule(0.5, 1) == [0.5]
    for kwargs in ({"final": 1.5, "steps": 3}, {"final": 0.5, "steps": 0}, {"final": 0.5, "steps": 2.0},
                   {"final": 0.5, "steps": 2, "power": 0}, {"final": 0.5, "steps": 2, "initial": -0.1}):
        with pytest.raises(EncodeError):
            gradual_schedule(**kwargs)


def test_prune_tensors():
    rng = np.random.default_rng(4)
    tensors = {"fc1.weight": rng.standard_normal((50, 20)).astype(np.float32),
               "fc1.bias": rng.standard_normal(50).astype(np.float32),
               "conv.weight": rng.standard_normal((4, 3, 3, 3)),
               "fc2.weight": rng.standard_normal((10, 50)).astype(np.float32)}
    out, masks = prune_tensors(tensors, {"fc1.*": {"sparsity": 0.9}, "conv*": {"quality": 1.0}},
                               default={"threshold": 0.5})
    assert set(masks) == {"fc1.weight", "conv.weight", "fc2.weight"}
    assert out["fc1.bias"] is tensors["fc1.bias"]  # 1-D: never pruned, even when a pattern matches
    assert np.count_nonzero(out["fc1.weight"]) == 100
    assert masks["conv.weight"].tolist() == magnitude_mask(tensors["conv.weight"], quality=1.0).tolist()
    assert np.all((out["fc2.weight"] == 0) == (np.abs(tensors["fc2.weight"]) < 0.5))
    out2, masks2 = prune_tensors(out, {"fc1.*": {"sparsity": 0.5}}, keep=masks)
    assert np.count_nonzero(out2["fc1.weight"]) == 100  # already 90% pruned: a lower target prunes nothing more
    untouched, none = prune_tensors(tensors)
    assert none == {} and all(untouched[k] is tensors[k] for k in tensors)
    with pytest.raises(EncodeError, match="fc2.weight"):
        prune_tensors(tensors, {"fc2.weight": {"fraction": 0.5}})
    with pytest.raises(EncodeError, match="fc2.weight"):
        prune_tensors(tensors, {"fc2.weight": {"sparsity": 2.0}})
