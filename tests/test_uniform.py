"""Uniform quantization (a step instead of 2^bits levels), its policy settings, and the size/quality targets."""

from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dcformat
from dcformat import Policy, allocation
from dcformat.errors import EncodeError
from dcformat.quantize import MAX_LEVELS, quantize_uniform

from .strategies import FLOAT_DTYPES, assert_same, bits_of, np_dtype


def _eps(dtype: np.dtype) -> float:
    return float(ml_dtypes.finfo(dtype).eps)


def _levels(x: np.ndarray, step: float) -> np.ndarray:
    """The spec of a level, in plain numpy: floor(x / step + 0.5) in float64."""
    return np.floor(x.astype(np.float64).reshape(-1) / step + 0.5).astype(np.int64)


@st.composite
def finite_tensors(draw) -> np.ndarray:
    dtype = np_dtype(draw(st.sampled_from(FLOAT_DTYPES)))
    shape = draw(st.sampled_from([(), (0,), (1,), (1, 1), (0, 4), (7, 3), (2, 3, 5), (40, 33)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 0.05, 1.0, 300.0]))
    a = (rng.laplace(0.0, scale, size=shape) if shape else np.float64(rng.laplace(0.0, scale))).astype(dtype)
    a = np.asarray(a)
    kind = draw(st.sampled_from(["plain", "zeros", "all zero", "one value", "negative zero"]))
    if kind == "zeros":
        a[rng.random(a.shape) < 0.7] = 0
    elif kind == "all zero":
        a[...] = 0
    elif kind == "one value":
        a[...] = a.reshape(-1)[0] if a.size else 0
    elif kind == "negative zero":
        a[...] = np.asarray(-0.0, dtype=dtype)
    return a


@settings(max_examples=300, deadline=None)
@given(finite_tensors(), st.sampled_from([1e-4, 0.01, 0.3, 1.0, 7.5, 1e4]))
def test_uniform_levels_codebook_and_error(x, step):
    codebook, indices = quantize_uniform(x, step)
    assert codebook.dtype == x.dtype and indices.dtype == np.uint16 and indices.shape == (x.size,)
    assert 1 <= len(codebook) <= MAX_LEVELS
    if x.size == 0:
        assert_same(codebook, np.zeros(1, x.dtype))
        return
    assert int(indices.max()) < len(codebook)
    levels = _levels(x, step)
    # one codebook entry per level in use, and elements share an entry exactly when they share a level
    distinct = np.unique(levels)
    assert len(codebook) == len(distinct)
    pairs = np.unique(np.stack([levels, indices.astype(np.int64)]), axis=1)
    assert pairs.shape[1] == len(distinct)
    # level 0 is codebook[0] and exactly +0.0 (so the sparse form can share the codebook)
    if (levels == 0).any():
        assert bits_of(codebook[:1])[0] == 0
        assert np.all(indices[levels == 0] == 0)
    else:
        assert np.all(indices != 0) or bits_of(codebook[:1])[0] != 0
    # each entry is its level's mean (cast to the dtype): within one step of every element it stands for
    values = x.astype(np.float64).reshape(-1)
    decoded = codebook[indices].astype(np.float64)
    for level in distinct[:50]:
        members = levels == level
        expected = 0.0 if level == 0 else values[members].mean()
        # the mean cast to the dtype: equal up to the cast's rounding (and float64 summation order)
        eps = 2 * _eps(x.dtype)
        assert np.all(decoded[members] == decoded[members][0])
        summation = _eps(x.dtype) * float(np.sum(np.abs(values[members])))  # float64 rounding of the running sum
        assert abs(decoded[members][0] - expected) <= eps * abs(expected) + summation
    slack = _eps(x.dtype) * np.abs(values)
    assert np.all(np.abs(decoded - values) <= step + slack)
    assert np.all(np.abs(decoded[levels == 0]) == 0)


def test_uniform_sorted_entries_and_outlier_path():
    x = np.array([0.3, -0.8, 0.0, 0.2, -0.3, 0.8, 0.25, -0.25, 1e9], np.float64)
    expected_codebook = [0.0, -0.8, -0.3, 0.275, 0.8]  # level 0 first, then levels -2, -1, 1, 2
    expected = [0.275, -0.8, 0.0, 0.0, -0.3, 0.8, 0.275, 0.0]  # ties (±0.25 = ±0.5 step) go up
    codebook, indices = quantize_uniform(x[:-1], 0.5)  # levels counted in a dense table
    assert codebook.tolist() == pytest.approx(expected_codebook, abs=1e-15)
    assert codebook[indices].tolist() == pytest.approx(expected, abs=1e-15)
    codebook, indices = quantize_uniform(x, 0.5)  # a span of 2e9 levels: counted by sorting instead
    assert codebook.tolist() == pytest.approx(expected_codebook + [1e9], abs=1e-15)
    assert codebook[indices].tolist() == pytest.approx(expected + [1e9], abs=1e-15)


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True, "0.1", None])
def test_uniform_step_must_be_positive_and_finite(bad):
    with pytest.raises(EncodeError, match="step"):
        quantize_uniform(np.ones(4, np.float32), bad)


def test_uniform_rejects_what_it_cannot_quantize():
    with pytest.raises(EncodeError, match="finite"):
        quantize_uniform(np.array([1.0, np.nan], np.float32), 0.1)
    with pytest.raises(EncodeError, match="float"):
        quantize_uniform(np.arange(4, dtype=np.int32), 0.1)
    many = np.arange(MAX_LEVELS + 1, dtype=np.float64)
    with pytest.raises(EncodeError, match=f"{MAX_LEVELS + 1} levels"):
        quantize_uniform(many, 1.0)
    assert len(quantize_uniform(many[:-1], 1.0)[0]) == MAX_LEVELS  # exactly 2^16 levels fit
    with pytest.raises(EncodeError, match="too small"):
        quantize_uniform(np.array([1e300], np.float64), 1e-300)


# ------------------------------------------------------------------------------------------------
# Policy(step=...)


def _model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sparse = np.where(rng.random((120, 80)) < 0.9, 0.0, rng.normal(0, 0.1, (120, 80))).astype(np.float32)
    return {"conv.weight": rng.laplace(0, 0.03, (16, 8, 3, 3)).astype(np.float32),
            "fc1.weight": rng.laplace(0, 0.05, (200, 64)).astype(np.float32), "fc1.bias": rng.normal(size=200).astype(np.float32),
            "fc2.weight": sparse, "fc2.bias": np.zeros(120, np.float16)}


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([0.001, 0.02, 0.2, 5.0]), st.sampled_from([0.0, 0.5]),
       st.sampled_from(FLOAT_DTYPES))
def test_policy_step_round_trip(seed, step, prune, dtype):
    tensors = {k: v.astype(np_dtype(dtype)) for k, v in _model(seed).items()}
    policy = Policy(step=step, prune=prune, index_bits="auto")
    data = dcformat.save(tensors, policy=policy)
    decoded, expected = dcformat.load(data), dcformat.compress(tensors, policy=policy)
    for name, x in tensors.items():
        assert_same(decoded[name], expected[name])
        if x.ndim <= 1:
            assert_same(decoded[name], x)  # vectors stay raw
        else:
            assert len(np.unique(decoded[name])) <= MAX_LEVELS
            err = np.abs(decoded[name].astype(np.float64) - x.astype(np.float64))
            kept = x != 0 if not prune else decoded[name] != 0
            tol = step * (1 + 2 * _eps(x.dtype)) + _eps(x.dtype) * np.abs(x.astype(np.float64))
            assert np.all(err[kept] <= tol[kept])
    huffman_only = dcformat.save(tensors, policy=Policy(step=step, prune=prune, index_bits="auto", coder="huffman"))
    with dcformat.open(huffman_only) as f:
        assert f.layout("fc2.weight").encoding == "sparse"  # 90% zeros: with Huffman the sparse form wins


def test_policy_step_scales_and_rules():
    tensors = _model()
    scales = {"fc1.weight": 4.0}
    policy = Policy(step=0.01, step_scales=scales, rules={"conv.*": {"step": None, "bits": 3}, "fc2.*": {"step": 0.05}})
    assert policy.plan("fc1.weight", tensors["fc1.weight"]).step == pytest.approx(0.04)
    assert policy.plan("conv.weight", tensors["conv.weight"]).step is None  # the rule turns it back to k-means
    assert policy.plan("conv.weight", tensors["conv.weight"]).bits == 3
    assert policy.plan("fc2.weight", tensors["fc2.weight"]).step == 0.05
    assert policy.plan("fc1.bias", tensors["fc1.bias"]).encoding == "raw"
    out = dcformat.compress(tensors, policy=policy)
    assert len(np.unique(out["conv.weight"])) <= 8
    coarse = dcformat.compress(tensors, policy=Policy(step=0.04))["fc1.weight"]
    assert_same(out["fc1.weight"], coarse)


@pytest.mark.parametrize("kwargs, match", [
    (dict(step=0.0), "step"), (dict(step=-1.0), "step"), (dict(step=math.inf), "step"), (dict(step=True), "step"),
    (dict(step=0.1, max_error=0.01), "step or a max_error"), (dict(step_scales={"a": 0.0}), "step_scales"),
    (dict(step_scales={"a": math.nan}), "step_scales"), (dict(step_scales={1: 2.0}), "step_scales"),
    (dict(target_size=0), "target_size"), (dict(target_size=1.5), "target_size"), (dict(target_size=True), "target_size"),
    (dict(rules={"a": {"step": 0}}), "step"), (dict(rules={"a": {"step": 0.1, "max_error": 0.1}}), "step or a max_error"),
])
def test_policy_step_validation(kwargs, match):
    with pytest.raises(EncodeError, match=match):
        Policy(**kwargs)


def test_step_with_non_finite_values_is_stored_exactly():
    x = np.linspace(-1, 1, 60, dtype=np.float32).reshape(6, 10)
    x[2, 3] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        data = dcformat.save({"w": x}, policy=Policy(step=0.1))
    assert_same(dcformat.load(data)["w"], x)


# ------------------------------------------------------------------------------------------------
# Targets and sensitivity


def test_fit_size_is_the_largest_file_that_fits():
    tensors = _model()
    for target in (6_000, 20_000, 40_000):  # the lossless file (fields) is about 57 kB
        policy = allocation.fit_size(tensors, Policy(), target)
        size = len(dcformat.save(tensors, policy=policy))
        assert size <= target
        assert size >= 0.97 * target  # the search stops within 0.05% of the step
        assert policy.target_size is None and policy.step > 0
        bigger = len(dcformat.save(tensors, policy=policy.with_(step=policy.step * 0.9)))
        assert bigger > target  # a 10% finer step no longer fits
    # Policy(target_size=...) does the same search when saving
    data = dcformat.save(tensors, policy=Policy(target_size=20_000))
    assert data == dcformat.save(tensors, policy=allocation.fit_size(tensors, Policy(), 20_000))
    assert_same(dcformat.load(data)["fc1.weight"], dcformat.compress(tensors, policy=Policy(target_size=20_000))["fc1.weight"])


def test_fit_size_errors():
    tensors = _model()
    with pytest.raises(EncodeError, match="unreachable"):
        allocation.fit_size(tensors, Policy(), 500)
    with pytest.raises(EncodeError, match="unreachable"):
        allocation.fit_size({"b": np.random.default_rng(0).standard_normal(600).astype(np.float32)}, Policy(), 1000)
    with pytest.raises(EncodeError, match="target_size"):
        allocation.fit_size(tensors, Policy(), None)
    # nothing to quantize but it fits: the file as it is, which is the lossless file
    assert allocation.fit_size({"b": np.ones(3, np.float32)}, Policy(), 10_000).lossless


def test_fit_size_keeps_fixed_steps_and_scales():
    tensors = _model()
    policy = allocation.fit_size(tensors, Policy(step_scales={"fc1.weight": 2.0}, rules={"fc2.*": {"step": 0.05}}), 15_000)
    assert policy.plan("fc2.weight", tensors["fc2.weight"]).step == 0.05
    assert policy.plan("fc1.weight", tensors["fc1.weight"]).step == pytest.approx(2 * policy.step)


def _rel_quality(original):
    def quality(t):
        num = sum(float(np.sum((t[k].astype(np.float64) - original[k]) ** 2)) for k in original)
        den = sum(float(np.sum(original[k].astype(np.float64) ** 2)) for k in original)
        return 1.0 - math.sqrt(num / den)
    return quality


def test_fit_quality_meets_the_target_with_the_largest_step():
    tensors = _model()
    quality = _rel_quality(tensors)
    for target in (0.99, 0.95):
        policy = allocation.fit_quality(tensors, quality, target, tolerance=1.01)
        assert quality(dcformat.compress(tensors, policy=policy)) >= target
        assert quality(dcformat.compress(tensors, policy=policy.with_(step=policy.step * 1.05))) < target
    with pytest.raises(EncodeError, match="not reached"):
        allocation.fit_quality(tensors, quality, 1.5)
    with pytest.raises(EncodeError, match="nothing to fit"):
        allocation.fit_quality(tensors, quality, 0.9, Policy(lossless=True))


def test_sensitivity_and_scales():
    tensors = _model()
    seen = []

    def quality(t):  # only fc1.weight matters
        seen.append(1)
        return -float(np.sum((t["fc1.weight"].astype(np.float64) - tensors["fc1.weight"]) ** 2))

    sens = allocation.sensitivity(tensors, quality)
    assert set(sens) == {"conv.weight", "fc1.weight", "fc2.weight"}  # what a step would quantize
    assert sens["fc1.weight"] == pytest.approx(1.0)  # quality falls by exactly its squared error
    assert sens["conv.weight"] == 0.0 and sens["fc2.weight"] == 0.0
    assert len(seen) == 4  # the reference, then one evaluation per tensor
    scales = allocation.scales_from_sensitivity({"a": 4.0, "b": 1.0, "c": 0.25, "d": 0.0}, spread=4.0)
    assert scales == {"a": 0.5, "b": 1.0, "c": 2.0, "d": 4.0}  # 1/sqrt(s / median); no loss: the largest
    assert allocation.scales_from_sensitivity({"a": 1.0, "e": 1e-9, "f": 1e9}, spread=3.0) == {"a": 1.0, "e": 3.0, "f": 1 / 3}
    assert allocation.scales_from_sensitivity({"a": 0.0}) == {"a": 1.0}
    with pytest.raises(EncodeError):
        allocation.scales_from_sensitivity({"a": -1.0})
    with pytest.raises(EncodeError):
        allocation.scales_from_sensitivity({"a": 1.0}, spread=0.5)


def test_cli_step_and_target(tmp_path):
    from dcformat.cli import _size, main

    src = tmp_path / "m.npz"
    np.savez(src, **_model())
    out = tmp_path / "m.dcf"
    scales = tmp_path / "scales.json"
    scales.write_text(json.dumps({"fc1.weight": 2.0}))
    assert main(["compress", str(src), "-o", str(out), "--step", "0.01", "--step-scales", str(scales),
                 "--rule", "conv.*:step=none,bits=4", "--json"]) == 0
    expected = dcformat.compress(_model(), policy=Policy(step=0.01, step_scales={"fc1.weight": 2.0},
                                                         rules={"conv.*": {"step": None, "bits": 4}}))
    for name, value in dcformat.load_file(out).items():
        assert_same(value, expected[name])
    assert main(["compress", str(src), "-o", str(out), "--target-size", "15kB", "--force"]) == 0
    assert 14_000 < out.stat().st_size <= 15_000
    assert _size("1.5MB") == 1_500_000 and _size("800KiB") == 819_200 and _size("12") == 12 and _size("2M") == 2_000_000
    for bad in ("ten", "1.5XB", "-3", "0"):
        with pytest.raises(Exception, match="not a size"):
            _size(bad)
    scales.write_text("[1, 2]")
    assert main(["compress", str(src), "-o", str(out), "--step", "0.01", "--step-scales", str(scales), "-f"]) == 1


# ------------------------------------------------------------------------------------------------
# vector_bits: codebooks for biases and norms


def test_vector_bits_codes_vectors_and_keeps_tiny_ones_raw():
    rng = np.random.default_rng(3)
    tensors = {"w": rng.normal(0, 0.1, (40, 30)).astype(np.float32), "bias": rng.normal(size=300).astype(np.float32),
               "norm": rng.normal(size=200).astype(np.float16), "scalar": np.float32(2.5), "tiny": np.ones(3, np.float64),
               "empty": np.zeros(0, np.float32), "count": np.arange(50, dtype=np.int64)}
    policy = Policy(vector_bits=4, step=0.01, prune=0.5, rules={"norm": {"bits": 2}})
    data = dcformat.save(tensors, policy=policy)
    decoded, expected = dcformat.load(data), dcformat.compress(tensors, policy=policy)
    with dcformat.open(data) as f:
        encodings = {k: f.layout(k).encoding for k in f.keys()}
    assert encodings["bias"] == "shared" and encodings["norm"] == "shared"
    assert encodings["scalar"] == encodings["tiny"] == encodings["empty"] == encodings["count"] == "raw"
    for name, x in tensors.items():
        assert_same(decoded[name], expected[name])
    assert len(np.unique(decoded["bias"])) <= 16 and np.count_nonzero(decoded["bias"]) == 300  # not pruned
    assert len(np.unique(decoded["norm"])) <= 4  # the rule's bits
    for name in ("scalar", "tiny", "empty", "count"):
        assert_same(decoded[name], np.asarray(tensors[name]))  # smaller raw, or not float: exact
    err = np.abs(decoded["bias"] - tensors["bias"])
    assert 0 < err.max() < 0.5
    # without vector_bits, vectors are exact
    plain = dcformat.load(dcformat.save(tensors, policy=Policy(step=0.01)))
    assert_same(plain["bias"], tensors["bias"])
    for bad in (17, -1, 2.5, True):
        with pytest.raises(EncodeError, match="vector_bits"):
            Policy(vector_bits=bad)
