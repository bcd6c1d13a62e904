"""Hypothesis strategies for dcformat tests: awkward tensors of every supported dtype (spec §3.2)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import strategies as st

from dcformat import constants as K

FLOAT_DTYPES = ["float64", "float32", "float16", "bfloat16"]
ALL_DTYPES = list(K.DTYPE_SIZES)


def np_dtype(name: str) -> np.dtype:
    if name == "bfloat16" or name in K.FLOAT8_DTYPES:
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def bits_of(a: np.ndarray) -> np.ndarray:
    """Bit patterns of an array's elements (to compare floats exactly, NaN and -0.0 included)."""
    return np.ascontiguousarray(a).view(np.dtype(f"u{a.dtype.itemsize}"))


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    """Same dtype, shape and bit patterns."""
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.array_equal(bits_of(a), bits_of(b))


# Shapes: scalars, 0-size dimensions, one element, odd sizes.
shapes = st.one_of(
    st.just(()),
    st.lists(st.integers(0, 7), min_size=1, max_size=4).map(tuple),
    st.sampled_from([(1,), (1, 1), (0, 5), (5, 0), (3, 0, 2), (1, 1, 1, 1), (17, 3), (2, 3, 5, 7), (64, 33)]),
)


@st.composite
def tensors(draw, dtypes=ALL_DTYPES, shape=shapes, density=None) -> np.ndarray:
    """A tensor whose elements are random bit patterns (so NaN, inf, -0.0 and subnormals occur),
    with a random share of exact zeros (all zeros and no zeros included)."""
    dtype = np_dtype(draw(st.sampled_from(dtypes)))
    shp = draw(shape)
    n = int(np.prod(shp, dtype=np.int64))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        a = rng.integers(0, 2, n).astype(np.bool_)
    else:
        raw = rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8)
        a = raw.view(dtype).copy()
        if draw(st.booleans()) and dtype.kind == "f":
            # mostly ordinary values: a few distinct levels, as a quantized layer has
            levels = rng.standard_normal(draw(st.integers(1, 40))).astype(np.float64)
            a = levels[rng.integers(0, len(levels), n)].astype(dtype)
            special = rng.random(n) < 0.05
            a[special] = np.array([-0.0, np.nan, np.inf, -np.inf], dtype)[rng.integers(0, 4, int(special.sum()))]
    d = draw(st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0])) if density is None else density
    keep = rng.random(n) < d
    if dtype == np.bool_:
        a = a & keep
    else:
        bits = a.view(np.dtype(f"u{dtype.itemsize}"))
        bits[~keep] = 0
    return a.reshape(shp)


@st.composite
def finite_float_tensors(draw, min_dims=2, max_side=40, zero_share=None) -> np.ndarray:
    """Finite float tensors of rank >= min_dims (what a policy quantizes), with some exact zeros."""
    dtype = np_dtype(draw(st.sampled_from(FLOAT_DTYPES)))
    rank = draw(st.integers(min_dims, 4))
    shp = tuple(draw(st.lists(st.integers(1, max_side if rank == 2 else 6), min_size=rank, max_size=rank)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = (rng.laplace(0, 0.05, int(np.prod(shp))) * draw(st.sampled_from([1.0, 1e-3, 100.0]))).astype(dtype)
    z = draw(st.sampled_from([0.0, 0.3, 0.9, 1.0])) if zero_share is None else zero_share
    a[rng.random(a.size) < z] = 0
    return a.reshape(shp)


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
