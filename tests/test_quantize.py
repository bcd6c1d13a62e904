"""Weight sharing: 1-D k-means against a slow reference Lloyd, assignment, codebooks of every float dtype."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import strategies
from dcformat.errors import EncodeError
from dcformat.quantize import (
    assign, ecsq_1d, initial_centroids, kmeans_1d, linear_init, optimal_1d, quantization_error, quantization_report,
    quantize, quantize_tensors,
)

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOATS = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16]
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits_of(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(UINT[a.dtype.itemsize])


def ref_lloyd(x: np.ndarray, k: int, max_iter: int = 300, empty: str = "split") -> tuple[np.ndarray, np.ndarray]:
    """Textbook Lloyd: linear init, argmin-distance assignment (ties to the lower); empty clusters dropped,
    then (empty="split") the cluster of largest SSE cut at its best 2-means split until k are used."""
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
        if empty == "split" and centroids.size < k:
            members = [np.sort(x[labels == i]) for i in range(centroids.size)]
            while len(members) < k:
                errors = [np.sum((m - m.mean()) ** 2) for m in members]
                i = int(np.argmax(errors))
                m = members[i]
                cuts = [p for p in range(1, m.size) if m[p - 1] < m[p]]
                cost = [np.sum((m[:p] - m[:p].mean()) ** 2) + np.sum((m[p:] - m[p:].mean()) ** 2) for p in cuts]
                p = cuts[int(np.argmin(cost))]
                members[i:i + 1] = [m[:p], m[p:]]
            centroids = np.array([m.mean() for m in members])
            labels = None  # iterate again from the cut clusters
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
    assert centroids.size == min(k, np.unique(x).size)  # every cluster used
    assert labels.dtype == np.int64 and centroids.dtype == np.float64
    assert labels.tolist() == ref_labels.tolist()
    np.testing.assert_allclose(centroids, ref_centroids, rtol=1e-12, atol=1e-12)


@given(continuous_samples())
@SETTINGS
def test_kmeans_drop_equals_reference_lloyd(case):
    x, k = case
    centroids, labels = kmeans_1d(x, k, empty="drop")
    ref_centroids, ref_labels = ref_lloyd(x, k, empty="drop")
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


# ------------------------------------------------------------------------------------------------
# Initialisations and re-seeding of empty clusters


def pruned_normal(n: int, seed: int = 0, cut: float = 1.0) -> np.ndarray:
    """Non-zero weights after magnitude pruning: a normal sample with the band |x| < cut removed."""
    x = np.random.default_rng(seed).standard_normal(4 * n)
    return x[np.abs(x) >= cut][:n]


@pytest.mark.parametrize("init", ["linear", "density", "random", "kmeans++"])
def test_each_init_is_deterministic_for_a_seed(init):
    x = np.random.default_rng(1).standard_t(3, 2000)
    a = initial_centroids(x, 16, init, seed=7)
    b = initial_centroids(x, 16, init, seed=7)
    assert a.tobytes() == b.tobytes()
    assert 1 <= a.size <= 16 and np.all(np.diff(a) > 0)
    assert a.min() >= x.min() and a.max() <= x.max()
    ca, la = kmeans_1d(x, 16, init=init, seed=7)
    cb, lb = kmeans_1d(x, 16, init=init, seed=7)
    assert ca.tobytes() == cb.tobytes() and la.tobytes() == lb.tobytes()
    if init in ("random", "kmeans++"):  # drawn from the data; another seed draws others
        assert np.all(np.isin(a, x))
        assert initial_centroids(x, 16, init, seed=8).tobytes() != a.tobytes()
    else:  # no randomness: the seed does not matter
        assert initial_centroids(x, 16, init, seed=8).tobytes() == a.tobytes()


def test_linear_and_density_init_values():
    x = np.arange(11.0)
    assert initial_centroids(x, 3, "linear").tolist() == [0.0, 5.0, 10.0]
    assert initial_centroids(x, 3, "density").tolist() == [0.0, 5.0, 10.0]
    skewed = np.array([0.0] * 8 + [1.0, 100.0])
    assert initial_centroids(skewed, 3, "linear").tolist() == [0.0, 50.0, 100.0]
    assert initial_centroids(skewed, 3, "density").tolist() == [0.0, 100.0]  # the CDF sits at 0
    assert initial_centroids(np.array([]), 3).size == 0
    with pytest.raises(EncodeError):
        initial_centroids(x, 3, "forgy")
    with pytest.raises(EncodeError):
        initial_centroids(x, 3, "random", seed=-1)


def test_kmeanspp_spreads_over_far_groups():
    # Three tight groups far apart: D² sampling picks one centre in each, whatever the seed.
    x = np.concatenate((np.full(500, -100.0), np.full(500, 0.0), np.full(5, 100.0)))
    x = x + np.random.default_rng(0).uniform(-1e-3, 1e-3, x.size)
    for seed in range(5):
        c = initial_centroids(x, 3, "kmeans++", seed=seed)
        assert np.round(c, -1).tolist() == [-100.0, 0.0, 100.0]


def test_linear_init_on_pruned_weights_uses_every_cluster():
    """The known issue: linear centroids in the empty band around zero. Dropping them wastes codes."""
    x = pruned_normal(3000)
    dropped, _ = kmeans_1d(x, 31, empty="drop")
    assert dropped.size < 31  # the band |x| < 1 swallows several initial centroids
    centroids, labels = kmeans_1d(x, 31)
    assert centroids.size == 31 and np.unique(labels).size == 31
    assert sse(x, centroids, labels) < sse(x, dropped, assign(x, dropped))


@given(continuous_samples(), st.sampled_from(["linear", "density", "random", "kmeans++"]),
       st.integers(0, 3))
@SETTINGS
def test_reseeding_uses_all_k_clusters(case, init, seed):
    x, k = case
    centroids, labels = kmeans_1d(x, k, init=init, seed=seed)
    assert centroids.size == min(k, np.unique(x).size)
    assert np.unique(labels).size == centroids.size  # each centroid has values
    assert np.all(np.diff(centroids) > 0)
    assert labels.tolist() == assign(x, centroids).tolist()


def test_reseeding_with_heavy_ties():
    # 40 distinct values, most of the mass on two of them: every init still ends with k clusters.
    x = np.concatenate((np.zeros(1000), np.ones(1000), np.arange(2.0, 40.0)))
    for init in ("linear", "density", "random", "kmeans++"):
        centroids, labels = kmeans_1d(x, 12, init=init, seed=3)
        assert centroids.size == 12 and np.unique(labels).size == 12


# ------------------------------------------------------------------------------------------------
# Optimal clustering (dynamic programming)


def brute_force_sse(x: np.ndarray, k: int) -> float:
    """Least SSE over every assignment of the values to k labels (not only contiguous runs)."""
    labels = np.array(list(itertools.product(range(k), repeat=x.size)))  # (k^n, n)
    total = np.zeros(labels.shape[0])
    for j in range(k):
        member = (labels == j).astype(np.float64)
        count, s, q = member.sum(1), member @ x, member @ (x * x)
        total += np.where(count > 0, q - s * s / np.maximum(count, 1), 0.0)
    return float(total.min())


@given(st.lists(st.integers(-50, 50), min_size=2, max_size=7), st.integers(1, 3))
@settings(max_examples=60, deadline=None)
def test_optimal_equals_brute_force(values, k):
    x = np.array(values, dtype=np.float64) / 4  # repeated values included
    centroids, labels = optimal_1d(x, k)
    assert centroids.size == min(k, np.unique(x).size)
    assert sse(x, centroids, labels) == pytest.approx(brute_force_sse(x, k), rel=1e-9, abs=1e-12)
    assert labels.tolist() == assign(x, centroids).tolist()


@given(continuous_samples(), st.sampled_from(["linear", "density", "random", "kmeans++"]))
@SETTINGS
def test_optimal_is_no_worse_than_kmeans(case, init):
    x, k = case
    centroids, labels = optimal_1d(x, k)
    assert centroids.size == min(k, np.unique(x).size) and np.all(np.diff(centroids) > 0)
    assert labels.tolist() == assign(x, centroids).tolist()
    best = sse(x, centroids, labels)
    kc, kl = kmeans_1d(x, k, init=init, seed=1)
    assert best <= sse(x, kc, kl) * (1 + 1e-9) + 1e-12
    # The optimum is a fixed point of Lloyd: each centroid is the mean of its values.
    means = np.array([x[labels == j].mean() for j in range(centroids.size)])
    np.testing.assert_allclose(centroids, means, rtol=1e-9, atol=1e-12)


def test_optimal_counts_repeated_values_as_weights():
    # Weight matters: 0 repeated 100 times pulls the left cluster's mean towards 0.
    x = np.concatenate((np.zeros(100), [1.0, 10.0, 11.0]))
    centroids, labels = optimal_1d(x, 2)
    assert centroids.tolist() == [pytest.approx(1 / 101), 10.5]
    centroids, labels = optimal_1d(np.array([5.0, 5.0, 5.0, 7.0]), 3)  # fewer distinct values than k
    assert centroids.tolist() == [5.0, 7.0] and labels.tolist() == [0, 0, 0, 1]


def test_optimal_grouped_is_near_optimal_and_valid():
    x = np.random.default_rng(3).laplace(0, 1, 20000)
    exact, exact_labels = optimal_1d(x, 32, max_points=None)
    grouped, grouped_labels = optimal_1d(x, 32, max_points=2000)  # 20000 distinct values -> groups
    assert grouped.size == 32 and np.all(np.diff(grouped) > 0)
    km, km_labels = kmeans_1d(x, 32)
    e, g, m = sse(x, exact, exact_labels), sse(x, grouped, grouped_labels), sse(x, km, km_labels)
    assert e <= g <= e * 1.01  # within 1% of the optimum
    assert e <= m


def test_optimal_rejects_bad_arguments():
    x = np.arange(10.0)
    for bad in ({"max_points": 0}, {"max_points": 2.5}, {"max_iter": -1}):
        with pytest.raises(EncodeError):
            optimal_1d(x, 3, **bad)
    with pytest.raises(EncodeError, match="finite"):
        optimal_1d(np.array([1.0, np.nan, 3.0]), 2)
    with pytest.raises(EncodeError, match="kmeans"):  # the DP table would not fit
        optimal_1d(np.arange(20000.0), 10000)
    assert optimal_1d(np.array([]), 3)[0].size == 0


# ------------------------------------------------------------------------------------------------
# Entropy-constrained scalar quantization


def brute_penalised(x, centroids, penalties):
    cost = (x[:, None] - centroids[None, :]) ** 2 + penalties[None, :]
    return np.argmin(cost, axis=1)  # the first minimum: ties to the lower index


@given(st.lists(st.integers(-2**10, 2**10), min_size=1, max_size=12, unique=True),
       st.lists(st.integers(0, 64), min_size=12, max_size=12),
       st.lists(st.integers(-2**12, 2**12), max_size=40))
@SETTINGS
def test_assign_with_penalties_is_brute_force(centroids, penalties, values):
    """Multiples of 2^-4 and integer penalties: thresholds and costs are exact, ties included."""
    c = np.sort(np.array(centroids, dtype=np.float64)) / 16
    b = np.array(penalties[: c.size], dtype=np.float64) / 256
    v = np.concatenate((np.array(values, dtype=np.float64) / 64, c, (c[:-1] + c[1:]) / 2))
    assert assign(v, c, b).tolist() == brute_penalised(v, c, b).tolist()
    assert assign(v, c, np.zeros(c.size)).tolist() == assign(v, c).tolist()


def test_assign_penalty_errors():
    with pytest.raises(EncodeError):
        assign(np.array([1.0]), np.array([0.0, 2.0]), np.array([1.0]))
    with pytest.raises(EncodeError):
        assign(np.array([1.0]), np.array([0.0, 2.0]), np.array([1.0, np.inf]))


@given(continuous_samples())
@SETTINGS
def test_ecsq_with_lam_zero_is_kmeans(case):
    x, k = case
    centroids, labels, lengths = ecsq_1d(x, k, 0.0)
    kc, kl = kmeans_1d(x, k)
    assert labels.tolist() == kl.tolist()
    np.testing.assert_allclose(centroids, kc, rtol=1e-12, atol=1e-12)
    assert sse(x, centroids, labels) == pytest.approx(sse(x, kc, kl), rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(np.exp2(-lengths).sum(), 1.0)


@given(continuous_samples(), st.sampled_from([1e-4, 1e-3, 1e-2, 0.1]))
@SETTINGS
def test_ecsq_invariants(case, lam):
    x, k = case
    centroids, labels, lengths = ecsq_1d(x, k, lam)
    assert 1 <= centroids.size <= k and np.all(np.diff(centroids) > 0)
    assert lengths.shape == centroids.shape and np.all(lengths >= 0)
    assert np.exp2(-lengths).sum() == pytest.approx(1.0)  # the shares of a partition
    if np.unique(x).size > k:
        # Labels minimise squared error + lam·σ²·length (brute force over the centroids).
        penalties = lam * np.var(x) * lengths
        cost = (x[:, None] - centroids[None, :]) ** 2 + penalties[None, :]
        chosen = cost[np.arange(x.size), labels]
        assert np.all(chosen <= cost.min(axis=1) * (1 + 1e-9) + 1e-15)


def test_ecsq_trades_error_for_entropy():
    x = np.random.default_rng(0).laplace(0, 1, 20000)
    rows = []
    for lam in (0.0, 1e-3, 1e-2, 1e-1):
        centroids, labels, _ = ecsq_1d(x, 64, lam)
        p = np.bincount(labels) / labels.size
        p = p[p > 0]
        rows.append((centroids.size, float(-(p * np.log2(p)).sum()), sse(x, centroids, labels)))
    sizes, entropies, errors = zip(*rows)
    assert sizes[0] == 64 and list(sizes) == sorted(sizes, reverse=True) and sizes[-1] < 32
    assert list(entropies) == sorted(entropies, reverse=True) and entropies[-1] < entropies[0] - 2
    assert list(errors) == sorted(errors)
    # At equal entropy ECSQ beats fixed-rate k-means: 16-level k-means vs ECSQ at no more bits.
    kc, kl = kmeans_1d(x, 16)
    p = np.bincount(kl) / kl.size
    h16 = float(-(p * np.log2(p)).sum())
    for lam in (1e-2, 2e-2, 4e-2):
        c, l, _ = ecsq_1d(x, 64, lam)
        q = np.bincount(l) / l.size
        q = q[q > 0]
        if -(q * np.log2(q)).sum() <= h16:
            assert sse(x, c, l) < sse(x, kc, kl)
            break
    else:
        pytest.fail("no lam gave an entropy at or below 16-level k-means'")


def test_ecsq_rejects_bad_arguments():
    x = np.arange(10.0)
    for lam in (-1.0, np.nan, np.inf, True, "0.1"):
        with pytest.raises(EncodeError):
            ecsq_1d(x, 3, lam)
    with pytest.raises(EncodeError):
        ecsq_1d(x, 3, 0.1, init="forgy")
    c, l, lengths = ecsq_1d(np.array([2.0, 2.0, 3.0]), 4, 0.5)  # few distinct values: exact
    assert c.tolist() == [2.0, 3.0] and l.tolist() == [0, 0, 1]
    np.testing.assert_allclose(lengths, [np.log2(1.5), np.log2(3)])
    c, l, lengths = ecsq_1d(np.array([]), 4, 0.5)
    assert c.size == l.size == lengths.size == 0


# ------------------------------------------------------------------------------------------------
# quantize() with each method, quantize_tensors, quantization_report


@pytest.mark.parametrize("method", ["kmeans", "optimal", "ecsq"])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_quantize_each_method(method, sparse, dtype):
    rng = np.random.default_rng(11)
    x = rng.laplace(0, 1, (60, 50)).astype(dtype)
    if sparse:
        x[np.abs(x.astype(np.float64)) < 0.8] = 0
    codebook, indices = quantize(x, 5, sparse=sparse, method=method, lam=0.01)
    assert codebook.dtype == x.dtype and indices.dtype == np.uint16 and indices.shape == (x.size,)
    assert 1 <= codebook.size <= 32 and indices.max() < codebook.size
    body = codebook[1:] if sparse else codebook
    assert np.all(np.diff(body.astype(np.float64)) > 0)
    if sparse:
        assert bits_of(codebook)[0] == 0 and np.all(bits_of(codebook)[1:] != 0)
        assert np.all(indices[bits_of(x) == 0] == 0) and np.all(indices[bits_of(x) != 0] != 0)
    if method == "ecsq":
        assert np.unique(indices[indices != 0] if sparse else indices).size == body.size  # all used
    else:
        check_nearest(x, codebook, indices, sparse)
    # Deterministic, and exact again once quantized (what a trained codebook relies on).
    again = quantize(x, 5, sparse=sparse, method=method, lam=0.01)
    assert again[0].tobytes() == codebook.tobytes() and again[1].tobytes() == indices.tobytes()
    decoded = codebook[indices].reshape(x.shape)
    cb2, idx2 = quantize(decoded, 5, sparse=sparse, method=method, lam=0.01)
    assert bits_of(cb2[idx2]).tolist() == bits_of(decoded).tolist()


def test_quantize_methods_rank_as_expected():
    x = np.random.default_rng(5).standard_normal(5000)
    x = x[np.abs(x) > 0.5]
    err = {}
    for method in ("kmeans", "optimal"):
        cb, idx = quantize(x, 4, sparse=False, method=method)
        err[method] = quantization_error(x, cb, idx)
    cb, idx = quantize(x, 4, sparse=False, method="kmeans", init="linear")
    assert err["optimal"] <= err["kmeans"]
    # ECSQ with lam = 0 is the k-means codebook; with lam > 0 fewer bits per index.
    k_report = quantization_report(x, *quantize(x, 4, sparse=False))
    e0 = quantize(x, 4, sparse=False, method="ecsq", lam=0.0)
    assert quantization_report(x, *e0)["mse"] == pytest.approx(k_report["mse"], rel=1e-9)
    e1 = quantization_report(x, *quantize(x, 4, sparse=False, method="ecsq", lam=0.05))
    assert e1["entropy_bits"] < k_report["entropy_bits"] - 0.3 and e1["mse"] > k_report["mse"]


def test_quantize_ecsq_all_centroids_round_to_zero():
    tiny = float(ml_dtypes.finfo(np.float16).smallest_subnormal)
    x = np.array([tiny, -tiny, 0.0, tiny, 2 * tiny, -2 * tiny] * 3, dtype=np.float64).astype(np.float16)
    codebook, indices = quantize(x, 1, sparse=True, method="ecsq", lam=0.5)
    check = codebook[indices]
    assert codebook.size >= 1 and bits_of(codebook)[0] == 0 and check.shape == (x.size,)


@pytest.mark.parametrize("kwargs", [{"method": "fast"}, {"init": "forgy"}, {"lam": -0.1}, {"seed": -1},
                                    {"seed": 1.5}, {"max_iter": -1}])
def test_quantize_rejects_bad_options(kwargs):
    with pytest.raises(EncodeError):
        quantize(np.arange(40, dtype=np.float32), 3, sparse=False, **kwargs)


def test_quantize_tensors():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((40, 30)).astype(np.float32)
    w[np.abs(w) < 1] = 0
    tensors = {"fc.weight": w, "fc.bias": rng.standard_normal(40).astype(np.float32),
               "emb": rng.standard_normal((20, 8)), "steps": np.arange(6).reshape(2, 3)}
    out, reports = quantize_tensors(tensors, 3)
    assert set(reports) == {"fc.weight", "emb"}
    assert out["fc.bias"] is tensors["fc.bias"] and out["steps"] is tensors["steps"]
    assert out["fc.weight"].dtype == np.float32 and out["emb"].dtype == np.float64
    assert np.unique(out["fc.weight"]).size <= 8 and np.unique(out["emb"]).size <= 8
    assert np.all((out["fc.weight"] == 0) == (w == 0))  # sparse: zeros stay, nothing else becomes zero
    assert reports["fc.weight"]["sparse"] and not reports["emb"]["sparse"]
    assert reports["fc.weight"]["mse"] == pytest.approx(float(np.mean((out["fc.weight"] - w) ** 2.0)))
    out, reports = quantize_tensors(tensors, {"fc.*": 2}, method="optimal")
    assert set(reports) == {"fc.weight", "fc.bias"} and np.unique(out["fc.bias"]).size <= 4
    with pytest.raises(EncodeError, match="steps"):
        quantize_tensors(tensors, {"steps": 2})


def test_quantization_report_values():
    x = np.array([0.0, 1.0, 2.0, 4.0])
    report = quantization_report(x, np.array([0.0, 1.5, 4.0]), np.array([0, 1, 1, 2]))
    assert report["coded"] == 3  # codebook[0] == 0: sparse by default, index 0 not counted
    assert report["mse"] == pytest.approx(0.125) and report["max_abs"] == 0.5
    assert report["relative_mse"] == pytest.approx(0.125 / 5.25)
    assert report["sqnr_db"] == pytest.approx(-10 * np.log10(0.125 / 5.25))
    assert report["entropy_bits"] == pytest.approx(-(2 / 3) * np.log2(2 / 3) - (1 / 3) * np.log2(1 / 3))
    assert report["used"] == 3 and report["codebook"] == 3
    dense = quantization_report(x, np.array([0.0, 1.5, 4.0]), np.array([0, 1, 1, 2]), sparse=False)
    assert dense["coded"] == 4 and dense["entropy_bits"] == pytest.approx(1.5)
    exact = quantization_report(x, x, np.arange(4), sparse=False)
    assert exact["mse"] == 0 and exact["sqnr_db"] == np.inf
    with pytest.raises(EncodeError):
        quantization_report(x, np.array([0.0]), np.array([0, 0, 0, 1]))
    with pytest.raises(EncodeError):
        quantization_report(x, np.array([0.0, 1.0]), np.array([0, 0, 0]))


def test_quantize_optimal_limits_the_codebook_size():
    x = np.random.default_rng(0).standard_normal(20000)
    with pytest.raises(EncodeError, match="kmeans"):
        quantize(x, 14, sparse=False, method="optimal")
    codebook, indices = quantize(x, 14, sparse=False)  # k-means has no such limit
    assert codebook.size <= 2**14 and quantization_error(x, codebook, indices) < 1e-6


@given(strategies.tensors(dtypes=strategies.FLOAT_DTYPES), st.integers(1, 8), st.booleans(),
       st.sampled_from(["kmeans", "optimal", "ecsq"]), st.sampled_from(["linear", "density", "random", "kmeans++"]),
       st.sampled_from([0.0, 1e-3, 0.1]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_quantize_awkward_tensors(x, bits, sparse, method, init, lam):
    """Random bit patterns (subnormals, huge values, ±0, NaN, inf) of every float dtype, every option."""
    kwargs = dict(method=method, init=init, lam=lam, seed=3)
    stored = bits_of(x) != 0 if sparse else np.ones(x.size, bool)
    if not np.all(np.isfinite(x.reshape(-1)[stored].astype(np.float64))):
        with pytest.raises(EncodeError, match="finite"):
            quantize(x, bits, sparse=sparse, **kwargs)
        return
    codebook, indices = quantize(x, bits, sparse=sparse, **kwargs)
    assert codebook.dtype == x.dtype and indices.dtype == np.uint16 and indices.shape == (x.size,)
    assert 1 <= codebook.size <= 2**bits and int(indices.max(initial=0)) < codebook.size
    decoded = codebook[indices]
    assert np.all(np.isfinite(decoded.astype(np.float64)))
    if sparse:
        assert bits_of(codebook)[0] == 0 and np.all(indices[~stored] == 0)
        assert np.all(np.diff(codebook[1:].astype(np.float64)) > 0)
    if method != "ecsq":
        check_nearest(x, codebook, indices, sparse)
    # Deterministic, and a fixed point: the decoded tensor quantizes to itself, bit for bit.
    again = quantize(x, bits, sparse=sparse, **kwargs)
    assert again[0].tobytes() == codebook.tobytes() and again[1].tobytes() == indices.tobytes()
    cb2, idx2 = quantize(decoded.reshape(x.shape), bits, sparse=sparse, **kwargs)
    assert bits_of(cb2[idx2]).tolist() == bits_of(decoded).tolist()


def test_ecsq_on_values_near_the_float64_limit():
    """σ² of such values overflows float64: the penalties are capped, not a crash (found by hypothesis)."""
    x = np.array([0.0, -3.07448744e247, 6.66223290e-131])
    codebook, indices = quantize(x, 1, sparse=False, method="ecsq", lam=0.001)
    assert np.all(np.isfinite(codebook)) and len(codebook) <= 2
    assert codebook[indices[1]] == x[1]


def test_ecsq_on_values_spanning_the_float64_range():
    """Found by hypothesis: values from 1e-305 to 1e228 made σ² overflow and the scale's square
    underflow, so one centroid's penalty was 0·inf = NaN and quantize refused the tensor."""
    x = np.array([-8.4e-140, 0.0, 3.8e-258, 2.8e-288, -2.1e78, -1.0e201, -3.2e228, 2.8e-305, 4.2e61,
                  -1.9e173, 8.8e88, 0.0, -1.7e102])
    codebook, indices = quantize(x, 1, sparse=True, method="ecsq", lam=1e-3, seed=3)
    assert codebook[0] == 0 and codebook.size == 2 and np.all(np.isfinite(codebook))
    assert np.all(indices[x == 0] == 0)
    assert codebook[indices].dtype == x.dtype
