"""Weight sharing: 1-D k-means against a slow reference Lloyd, assignment, codebooks of every float dtype."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcformat.errors import EncodeError
from dcformat.quantize import assign, kmeans_1d, linear_init, quantization_error, quantize

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOATS = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16]
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits_of(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(UINT[a.dtype.itemsize])


def ref_lloyd(x: np.ndarray, k: int, max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Textbook Lloyd: linear init, argmin-distance assignment (ties to the lower), drop empty clusters."""
    x = np.asarray(x, dtype=np.float64)
    if np.unique(x).size <= k:  # kmeans_1d's rule: few distinct values are kept exactly
        return np.unique(x), np.searchsorted(np.unique(x), x)
    centroids = np.linspace(x.min(), x.max(), k)
    labels = None
    for _ in range(max_iter):
        new_labels = np.argmin(np.abs(x[:, None] - centroids[None, :]), axis=1)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        used = np.unique(labels)
        centroids = np.array([x[labels == i].mean() for i in used])
        labels = np.searchsorted(used, labels)  # renumber after dropping empty clusters
    return centroids, np.argmin(np.abs(x[:, None] - centroids[None, :]), axis=1)


def sse(x, centroids, labels) -> float:
    return float(np.sum((np.asarray(x, np.float64) - centroids[labels]) ** 2))


@st.composite
def continuous_samples(draw):
    """Random continuous data (no exact ties at midpoints), several shapes of distribution."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(2, 300))
    kind = draw(st.sampled_from(["normal", "uniform", "bimodal", "pruned", "heavy"]))
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "uniform":
        x = rng.uniform(-3, 5, n)
    elif kind == "bimodal":
        x = np.concatenate((rng.normal(-2, 0.3, n // 2), rng.normal(1, 0.1, n - n // 2)))
    elif kind == "pruned":  # a gap around zero, as after magnitude pruning
        x = rng.standard_normal(4 * n)
        x = x[np.abs(x) > 1.0][:n]
        if x.size == 0:
            x = np.array([1.5])
    else:
        x = rng.standard_t(1.5, n)
    return x, draw(st.integers(1, 20))


# ------------------------------------------------------------------------------------------------
# linear_init, assign


def test_linear_init():
    assert linear_init(-1.0, 1.0, 5).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert linear_init(2.0, 3.0, 1).tolist() == [2.0]
    assert linear_init(0, 1, 2).dtype == np.float64
    for k in (0, -3, 2.5, True):
        with pytest.raises(EncodeError):
            linear_init(0.0, 1.0, k)


@given(st.lists(st.integers(-2**24, 2**24), min_size=1, max_size=60, unique=True),
       st.lists(st.integers(-2**24, 2**24), max_size=60))
@SETTINGS
def test_assign_is_nearest_with_ties_low(centroids, values):
    """Against brute force on multiples of 2^-8 below 2^16, where distances and midpoints are exact."""
    c = np.sort(np.array(centroids, dtype=np.float64)) / 256
    v = np.array(values, dtype=np.float64) / 256
    v = np.concatenate((v, c, (c[:-1] + c[1:]) / 2))  # include exact midpoints (ties)
    got = assign(v, c)
    assert got.dtype == np.int64
    expected = np.argmin(np.abs(v[:, None] - c[None, :]), axis=1)  # argmin takes the first of ties
    assert got.tolist() == expected.tolist()


def test_assign_ties_and_errors():
    assert assign(np.array([1.0, 0.5, 1.5, 2.0]), np.array([0.0, 2.0])).tolist() == [0, 0, 1, 1]
    assert assign(np.array([-1e308, 1e308, 0.0]), np.array([-1.7e308, 1.7e308])).tolist() == [0, 1, 0]
    assert assign(np.array([]), np.array([])).size == 0
    with pytest.raises(EncodeError):
        assign(np.array([1.0]), np.array([2.0, 1.0]))
    with pytest.raises(EncodeError):
        assign(np.array([1.0]), np.array([]))


# ------------------------------------------------------------------------------------------------
# kmeans_1d


@given(continuous_samples())
@SETTINGS
def test_kmeans_equals_reference_lloyd(case):
    x, k = case
    centroids, labels = kmeans_1d(x, k)
    ref_centroids, ref_labels = ref_lloyd(x, k)
    assert labels.dtype == np.int64 and centroids.dtype == np.float64
    assert labels.tolist() == ref_labels.tolist()
    np.testing.assert_allclose(centroids, ref_centroids, rtol=1e-12, atol=1e-12)


@given(continuous_samples())
@SETTINGS
def test_kmeans_invariants(case):
    x, k = case
    centroids, labels = kmeans_1d(x, k)
    assert 1 <= centroids.size <= k
    assert np.all(np.diff(centroids) > 0)  # sorted, no duplicates
    assert labels.min() >= 0 and labels.max() < centroids.size
    assert np.unique(labels).size == centroids.size  # no empty cluster survives
    assert labels.tolist() == assign(x, centroids).tolist()  # labels are the nearest centroids
    # Lloyd never increases the within-cluster sum of squares from the linear initialisation.
    init = np.unique(linear_init(x.min(), x.max(), k))
    assert sse(x, centroids, labels) <= sse(x, init, assign(x, init)) * (1 + 1e-12)
    # Deterministic.
    again = kmeans_1d(x, k)
    assert again[0].tobytes() == centroids.tobytes() and again[1].tobytes() == labels.tobytes()


def test_kmeans_integer_data_with_midpoint_ties():
    # [0, 1, 2], k=2: linear init [0, 2]; 1 is at the midpoint and goes to the lower cluster.
    centroids, labels = kmeans_1d(np.array([0.0, 1.0, 2.0, 2.0]), 2)
    assert centroids.tolist() == [0.5, 2.0] and labels.tolist() == [0, 0, 1, 1]
    x = np.repeat(np.arange(10.0), 3)
    centroids, labels = kmeans_1d(x, 3)
    ref_centroids, ref_labels = ref_lloyd(x, 3)
    assert centroids.tolist() == ref_centroids.tolist() and labels.tolist() == ref_labels.tolist()


def test_kmeans_lossless_when_few_distinct():
    x = np.array([3.0, -1.0, 3.0, 0.25, -1.0, 7.0])
    centroids, labels = kmeans_1d(x, 4)
    assert centroids.tolist() == [-1.0, 0.25, 3.0, 7.0]
    assert centroids[labels].tolist() == x.tolist()
    centroids, labels = kmeans_1d(x, 3)  # one too many distinct: a real clustering
    assert centroids.size <= 3 and centroids[labels].tolist() != x.tolist()


def test_kmeans_small_and_degenerate():
    c, l = kmeans_1d(np.array([]), 4)
    assert c.size == 0 and l.size == 0 and c.dtype == np.float64 and l.dtype == np.int64
    c, l = kmeans_1d(np.array([2.5]), 4)
    assert c.tolist() == [2.5] and l.tolist() == [0]
    c, l = kmeans_1d(np.full(100, -3.0, dtype=np.float32), 1)
    assert c.tolist() == [-3.0] and l.tolist() == [0] * 100
    c, l = kmeans_1d(np.arange(100.0), 1)
    assert c.tolist() == [49.5] and l.tolist() == [0] * 100
    c, l = kmeans_1d(np.array([1.0, 2.0, 3.0]), 2, max_iter=0)  # the linear init itself
    assert c.tolist() == [1.0, 3.0] and l.tolist() == [0, 0, 1]


def test_kmeans_density_init():
    x = np.random.default_rng(5).standard_normal(1000)
    c, l = kmeans_1d(x, 8, init="density")
    assert c.size == 8 and l.tolist() == assign(x, c).tolist()


def test_kmeans_huge_magnitudes_do_not_overflow():
    x = np.array([-1.7e308, -1.6e308, 1.5e308, 1.7e308, 0.0])
    c, l = kmeans_1d(x, 2)
    assert np.all(np.isfinite(c)) and c.size == 2
    assert l.tolist() == [0, 0, 1, 1, 0] or l.tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_kmeans_rejects_non_finite(bad):
    with pytest.raises(EncodeError, match="finite"):
        kmeans_1d(np.array([1.0, bad, 2.0]), 2)


def test_kmeans_rejects_bad_arguments():
    for k in (0, -1, 1.5, True):
        with pytest.raises(EncodeError):
            kmeans_1d(np.array([1.0, 2.0]), k)
    with pytest.raises(EncodeError):
        kmeans_1d(np.array([1.0, 2.0, 3.0]), 2, init="forgy")
    with pytest.raises(EncodeError):
        kmeans_1d(np.array(["a"]), 2)


# ------------------------------------------------------------------------------------------------
# quantize


def check_nearest(x: np.ndarray, codebook: np.ndarray, indices: np.ndarray, sparse: bool) -> None:
    """Each element decodes to a nearest codebook entry (zero-bit elements to codebook[0] if sparse)."""
    values = x.reshape(-1).astype(np.float64)
    cb = codebook.astype(np.float64)
    dist = np.abs(values[:, None] - cb[None, :])
    chosen = dist[np.arange(values.size), indices.astype(np.int64)]
    assert np.all(chosen <= dist.min(axis=1))
    if sparse:
        zero_bits = bits_of(x) == 0
        assert np.all(indices[zero_bits] == 0)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("bits", [1, 2, 5, 8])
def test_quantize_every_dtype(dtype, sparse, bits):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal((37, 23)).astype(dtype)
    if sparse:
        x[rng.random(x.shape) < 0.6] = 0
    codebook, indices = quantize(x, bits, sparse=sparse)
    assert codebook.dtype == x.dtype and indices.dtype == np.uint16 and indices.shape == (x.size,)
    assert 1 <= codebook.size <= 2**bits
    assert indices.max() < codebook.size
    body = codebook[1:] if sparse else codebook
    assert np.all(np.diff(body.astype(np.float64)) > 0)  # sorted, no duplicates after the cast
    if sparse:
        assert bits_of(codebook)[0] == 0
        assert np.all(bits_of(codebook)[1:] != 0)
    check_nearest(x, codebook, indices, sparse)
    # Better than the trivial codebook: the mean (shared) or zero alone (sparse).
    err = quantization_error(x, codebook, indices)
    values = x.astype(np.float64)
    assert err <= float(np.mean(values**2) if sparse else np.var(values))
    k = 2**bits - (1 if sparse else 0)
    distinct = np.unique(bits_of(x)[bits_of(x) != 0] if sparse else bits_of(x)).size
    assert (err == 0) == (distinct <= k)  # exact exactly when the distinct values fit


@given(continuous_samples(), st.integers(1, 6), st.booleans())
@SETTINGS
def test_quantize_is_kmeans_rounded(case, bits, sparse):
    x, _ = case
    x = x.astype(np.float32)
    codebook, indices = quantize(x, bits, sparse=sparse)
    check_nearest(x, codebook, indices, sparse)
    k = 2**bits - (1 if sparse else 0)
    centroids, _ = kmeans_1d(x[x != 0], k)
    expected = np.unique(centroids.astype(np.float32))
    if sparse:
        assert codebook[1:].tolist() == expected[expected != 0].tolist()
    else:
        assert codebook.tolist() == expected.tolist()


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_quantize_already_quantized_is_bit_exact(dtype):
    values = np.array([-0.0, 0.5, -1.25, 3.0], dtype=dtype)
    x = values[np.random.default_rng(0).integers(0, 4, size=(9, 11))]
    x[0, :3] = 0.0
    # sparse: three non-zero-bit values plus -0.0 = 4 <= 2^3 - 1 distinct patterns besides +0.0.
    codebook, indices = quantize(x, 3, sparse=True)
    assert bits_of(codebook[indices]).tolist() == bits_of(x).tolist()
    assert bits_of(codebook)[0] == 0
    assert codebook.size == 5  # 0 plus -0.0, 0.5, -1.25, 3.0
    # shared: +0.0 and -0.0 are two distinct patterns: 5 <= 8.
    codebook, indices = quantize(x, 3, sparse=False)
    assert bits_of(codebook[indices]).tolist() == bits_of(x).tolist()
    assert codebook.size == 5
    assert np.all(np.diff(codebook.astype(np.float64)) >= 0)


def test_quantize_exact_boundary_of_k():
    x = np.arange(1, 8, dtype=np.float32)  # 7 distinct non-zero values
    codebook, indices = quantize(x, 3, sparse=True)  # 7 <= 2^3 - 1: exact
    assert codebook.tolist() == [0, 1, 2, 3, 4, 5, 6, 7] and codebook[indices].tolist() == x.tolist()
    x = np.arange(1, 9, dtype=np.float32)  # 8 distinct non-zero values: one too many for sparse
    codebook, indices = quantize(x, 3, sparse=True)
    assert codebook.size <= 8 and codebook[indices].tolist() != x.tolist()
    codebook, indices = quantize(x, 3, sparse=False)  # but fits 2^3 shared entries
    assert codebook[indices].tolist() == x.tolist()


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_quantize_sparse_zero_centroid_is_dropped(dtype):
    # The smallest subnormals ±m form one cluster whose mean, 0, is codebook[0] already.
    m = float(ml_dtypes.finfo(dtype).smallest_subnormal)
    x = np.array([-m, m, 100, 102, 200, 202, 300], dtype=np.float64).astype(dtype)
    codebook, indices = quantize(x, 2, sparse=True)
    assert codebook.astype(np.float64).tolist() == [0.0, 151.0, 300.0]
    assert bits_of(codebook)[0] == 0
    assert indices.tolist() == [0, 0, 1, 1, 1, 1, 2]
    check_nearest(x, codebook, indices, sparse=True)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=str)
def test_quantize_centroids_equal_after_the_cast_are_merged(dtype):
    # Neighbouring representable values: cluster means fall between them and round onto each other.
    step = 2.0**-7 if dtype is ml_dtypes.bfloat16 else 2.0**-10
    x = (1.0 + step * np.array([0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11, 11])).astype(dtype)
    for sparse in (False, True):
        codebook, indices = quantize(x, 3, sparse=sparse)
        body = codebook[1:] if sparse else codebook
        assert np.all(np.diff(body.astype(np.float64)) > 0)
        check_nearest(x, codebook, indices, sparse)


def test_quantize_signed_zeros_count_as_two_patterns():
    x = np.array([0.0, -0.0, 1.0], dtype=np.float32)  # three bit patterns, one too many for 1 bit
    codebook, indices = quantize(x, 1, sparse=False)
    assert codebook.size <= 2
    check_nearest(x, codebook, indices, sparse=False)
    codebook, indices = quantize(x, 2, sparse=False)  # fits: exact, both zeros kept apart
    assert codebook.size == 3 and bits_of(codebook[indices]).tolist() == bits_of(x).tolist()


def test_quantize_empty_all_zero_and_constant():
    for sparse in (False, True):
        codebook, indices = quantize(np.zeros((0, 3), np.float32), 4, sparse=sparse)
        assert codebook.tolist() == [0.0] and indices.size == 0 and indices.dtype == np.uint16
    codebook, indices = quantize(np.zeros(10, np.float32), 4, sparse=True)
    assert codebook.tolist() == [0.0] and indices.tolist() == [0] * 10
    codebook, indices = quantize(np.full((2, 3), 1.5, ml_dtypes.bfloat16), 1, sparse=False)
    assert codebook.astype(np.float32).tolist() == [1.5] and indices.tolist() == [0] * 6
    codebook, indices = quantize(np.float32(2.0), 1, sparse=True)
    assert codebook.tolist() == [0.0, 2.0] and indices.tolist() == [1]


def test_quantize_indices_are_c_order():
    x = np.asfortranarray(np.arange(1, 13, dtype=np.float64).reshape(3, 4))
    codebook, indices = quantize(x, 4, sparse=False)
    assert codebook[indices].tolist() == list(range(1, 13))


def test_quantize_sixteen_bits():
    x = np.random.default_rng(0).standard_normal(3000).astype(np.float32)
    codebook, indices = quantize(x, 16, sparse=True)
    assert codebook[indices].tobytes() == x.tobytes()
    assert int(indices.max()) < 2**16


@pytest.mark.parametrize("bits", [0, 17, -1, 2.0, True])
def test_quantize_rejects_bad_bits(bits):
    with pytest.raises(EncodeError):
        quantize(np.ones(4, np.float32), bits, sparse=False)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint16, np.bool_, np.complex64])
def test_quantize_rejects_non_float(dtype):
    with pytest.raises(EncodeError):
        quantize(np.ones(4, dtype), 4, sparse=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("sparse", [False, True])
def test_quantize_rejects_non_finite(bad, sparse):
    with pytest.raises(EncodeError, match="finite"):
        quantize(np.array([1.0, bad, 0.0], np.float32), 4, sparse=sparse)


def test_quantization_error():
    x = np.array([1.0, 2.0, 4.0])
    assert quantization_error(x, np.array([1.0, 3.0]), np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert quantization_error(np.zeros(0), np.zeros(1), np.zeros(0, np.uint16)) == 0.0
    with pytest.raises(EncodeError):
        quantization_error(x, np.array([1.0]), np.array([0, 0]))
