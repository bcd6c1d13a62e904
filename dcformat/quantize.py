"""Weight sharing: 1-D k-means codebooks with linear initialisation (Deep Compression §3).

Lloyd's algorithm in one dimension is exact and cheap on sorted data: the clusters are runs of the
sorted values split at the midpoints between adjacent centroids, so after one sort each iteration is a
``searchsorted`` of the k−1 midpoints plus differences of prefix sums, O(k log n) instead of O(n k).

Non-finite values are rejected: a centroid is a mean, and one inf or NaN would turn its whole cluster
into inf or NaN (and make the nearest-centroid assignment of every other value meaningless).
"""

from __future__ import annotations

import numpy as np

from .constants import MAX_BITS, MIN_BITS
from .errors import EncodeError

__all__ = ["linear_init", "kmeans_1d", "assign", "quantize", "quantization_error"]

_UINT_OF_SIZE = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")


def linear_init(lo: float, hi: float, k: int) -> np.ndarray:
    """k centroids evenly spaced over [lo, hi]: the paper's best initialisation (keeps rare large weights)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise EncodeError(f"k must be a positive integer, not {k!r}")
    lo, hi = float(lo), float(hi)
    if np.isfinite(hi - lo):
        return np.linspace(lo, hi, int(k), dtype=np.float64)
    # hi − lo overflows only when both are huge: halving them first is exact.
    return np.linspace(lo * 0.5, hi * 0.5, int(k), dtype=np.float64) * 2.0


def _midpoints(centroids: np.ndarray) -> np.ndarray:
    """Decision boundaries between adjacent sorted centroids: a value at a midpoint goes to the lower one."""
    a, b = centroids[:-1], centroids[1:]
    with np.errstate(over="ignore"):
        mid = (a + b) * 0.5  # exact whenever a + b is, e.g. for codebook values of float32 or narrower
    overflow = ~np.isfinite(mid)
    if overflow.any():  # only near the float64 limits; halving first cannot overflow
        mid[overflow] = a[overflow] * 0.5 + b[overflow] * 0.5
    return mid


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (int64) of the nearest sorted centroid for each value; ties go to the lower index."""
    centroids = np.asarray(centroids, dtype=np.float64).reshape(-1)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if centroids.size == 0:
        if values.size:
            raise EncodeError("cannot assign values to an empty set of centroids")
        return np.empty(0, dtype=np.int64)
    if centroids.size > 1 and not np.all(centroids[1:] > centroids[:-1]):
        raise EncodeError("centroids must be strictly increasing")
    # side="left": the number of midpoints strictly below a value, so a value at a midpoint stays low.
    return np.searchsorted(_midpoints(centroids), values, side="left").astype(np.int64, copy=False)


def _initial_centroids(sorted_values: np.ndarray, k: int, init: str) -> np.ndarray:
    """Starting centroids: 'linear' (even steps over [min, max]) or 'density' (even steps over the CDF)."""
    if init == "linear":
        return linear_init(sorted_values[0], sorted_values[-1], k)
    if init == "density":
        n = sorted_values.size
        ranks = np.round(np.linspace(0, n - 1, k)).astype(np.int64)
        return np.unique(sorted_values[ranks])
    raise EncodeError(f"init must be 'linear' or 'density', not {init!r}")


def _lloyd_sorted(sorted_values: np.ndarray, centroids: np.ndarray, max_iter: int) -> np.ndarray:
    """Lloyd iterations on sorted float64 data until the cluster boundaries stop moving."""
    n = sorted_values.size
    # Prefix sums of the values shifted by their mean: cluster sums become two lookups, and the shift
    # keeps the prefix sums small so their differences lose little precision. Values near the float64
    # limit are scaled by a power of two first (exact) so that the sums cannot overflow.
    scale = 2.0 ** -64 if max(-sorted_values[0], sorted_values[-1]) > 2.0 ** 960 else 1.0
    shift = (sorted_values * scale).mean()
    prefix = np.concatenate(([0.0], np.cumsum(sorted_values * scale - shift)))
    splits = None
    for _ in range(max_iter):
        # Cluster i is sorted_values[bounds[i]:bounds[i+1]]; side="right" puts ties at a midpoint low,
        # as assign() does.
        inner = np.searchsorted(sorted_values, _midpoints(centroids), side="right")
        new_splits = np.concatenate(([0], inner, [n]))
        if splits is not None and np.array_equal(new_splits, splits):
            break  # same clusters as the last iteration: the centroids are their means already
        splits = new_splits
        counts = np.diff(splits)
        occupied = counts > 0  # empty clusters are dropped, deterministically
        sums = prefix[splits[1:]] - prefix[splits[:-1]]
        means = (sums[occupied] / counts[occupied] + shift) / scale
        # Rounding can push a mean a hair outside its cluster's range; clamping keeps the centroids
        # strictly increasing, since clusters are disjoint runs of the sorted values.
        lo = sorted_values[splits[:-1][occupied]]
        hi = sorted_values[splits[1:][occupied] - 1]
        centroids = np.clip(means, lo, hi)
    return centroids


def kmeans_1d(values: np.ndarray, k: int, *, init: str = "linear",
              max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-D k-means: (sorted distinct float64 centroids, at most k; int64 label of each value)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise EncodeError(f"k must be a positive integer, not {k!r}")
    if isinstance(max_iter, (bool, np.bool_)) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise EncodeError(f"max_iter must be a non-negative integer, not {max_iter!r}")
    values = np.asarray(values)
    if values.dtype.kind not in "fiu" and values.dtype.name != "bfloat16":
        raise EncodeError(f"values must be real numbers, not {values.dtype}")
    values = values.astype(np.float64, copy=False).reshape(-1)
    if values.size == 0:
        return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64)
    if not np.all(np.isfinite(values)):
        raise EncodeError("k-means needs finite values: an inf or NaN would poison its cluster's mean")
    sorted_values = np.sort(values)
    distinct = np.concatenate(([True], sorted_values[1:] != sorted_values[:-1]))
    if np.count_nonzero(distinct) <= k:
        centroids = sorted_values[distinct]  # every value is its own centroid: lossless
        return centroids, np.searchsorted(centroids, values).astype(np.int64)
    centroids = _initial_centroids(sorted_values, int(k), init)
    centroids = _lloyd_sorted(sorted_values, centroids, int(max_iter))
    return centroids, assign(values, centroids)


def _float_dtype(x: np.ndarray) -> np.dtype:
    """x's dtype, if it is one of the float dtypes a codebook can hold."""
    if x.dtype.name not in _FLOAT_NAMES:
        raise EncodeError(f"weight sharing needs a float tensor ({', '.join(_FLOAT_NAMES)}), not {x.dtype}")
    return x.dtype


def _exact_codebook(elements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codebook of the distinct bit patterns sorted by value, index of each element): lossless."""
    bits = elements.view(_UINT_OF_SIZE[elements.dtype.itemsize])
    unique_bits, inverse = np.unique(bits, return_inverse=True)
    unique_values = unique_bits.view(elements.dtype)
    # Sort by value, then by bit pattern so -0.0 and +0.0 (equal values) get a fixed order.
    order = np.lexsort((unique_bits, unique_values.astype(np.float64)))
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return unique_values[order], rank[inverse.reshape(-1)]


def _cast_centroids(centroids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Centroids rounded to dtype, back in float64, sorted and distinct; -0.0 becomes +0.0."""
    rounded = centroids.astype(dtype).astype(np.float64) + 0.0  # + 0.0 turns -0.0 into +0.0
    return np.unique(rounded)


def _distinct_count(sorted_values: np.ndarray) -> int:
    """Number of distinct bit patterns among sorted finite float64 values (only ±0 share a value)."""
    if sorted_values.size == 0:
        return 0
    distinct = 1 + int(np.count_nonzero(sorted_values[1:] != sorted_values[:-1]))
    zeros = sorted_values[sorted_values == 0]
    if zeros.size and np.any(np.signbit(zeros)) and not np.all(np.signbit(zeros)):
        distinct += 1
    return distinct


def quantize(x: np.ndarray, bits: int, *, sparse: bool) -> tuple[np.ndarray, np.ndarray]:
    """Weight sharing: (codebook of x.dtype, uint16 index of each element in C order).

    ``sparse=False`` (§5.2): up to 2^bits centroids for all elements. ``sparse=True`` (§5.3):
    ``codebook[0]`` is all zero bits, zero-bit elements get index 0 and up to 2^bits − 1 centroids
    cluster the others. A tensor with few enough distinct bit patterns is coded exactly (-0.0 too).
    Otherwise the centroids are rounded to x.dtype and each element gets the nearest entry of that
    final codebook (in sparse mode this may be codebook[0] for a tiny weight).
    """
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) \
            or not MIN_BITS <= bits <= MAX_BITS:
        raise EncodeError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, not {bits!r}")
    x = np.asarray(x)
    dtype = _float_dtype(x)
    flat = np.ascontiguousarray(x).reshape(-1)
    k = 1 << int(bits)
    indices = np.zeros(flat.size, dtype=np.uint16)
    zero = np.zeros(1, dtype=dtype)

    if sparse:
        k -= 1  # index 0 is reserved for the zero of fillers and pruned elements
        stored = np.flatnonzero(flat.view(_UINT_OF_SIZE[dtype.itemsize]))  # bit test: -0.0 is stored
        elements = flat[stored]
    else:
        elements = flat
    element_values = elements.astype(np.float64)  # exact for every supported dtype
    if not np.all(np.isfinite(element_values)):
        raise EncodeError("weight sharing needs finite values: an inf or NaN would poison its cluster's mean")

    sorted_values = np.sort(element_values)
    if _distinct_count(sorted_values) <= k:
        codebook, element_indices = _exact_codebook(elements)
    else:
        centroids = _lloyd_sorted(sorted_values, _initial_centroids(sorted_values, k, "linear"), 300)
        codebook = _cast_centroids(centroids, dtype)
        if sparse:
            codebook = codebook[codebook != 0]  # the zero lives at index 0 only
        codebook = codebook.astype(dtype)
        element_indices = None

    if sparse:
        codebook = np.concatenate((zero, codebook))
    elif codebook.size == 0:
        codebook = zero  # an empty tensor still needs k >= 1 (§5.2)

    if element_indices is None:
        # Nearest entry of the final codebook: search the sorted codebook, then map back to its order.
        codebook_values = codebook.astype(np.float64)
        order = np.argsort(codebook_values, kind="stable")
        element_indices = order[assign(element_values, codebook_values[order])]
    elif sparse:
        element_indices = element_indices + 1

    if sparse:
        indices[stored] = element_indices
    else:
        indices[:] = element_indices
    return codebook, indices


def quantization_error(x: np.ndarray, codebook: np.ndarray, indices: np.ndarray) -> float:
    """Mean squared error between x and its weight-shared version codebook[indices]."""
    values = np.asarray(x).astype(np.float64).reshape(-1)
    decoded = np.asarray(codebook).astype(np.float64)[np.asarray(indices).reshape(-1)]
    if decoded.size != values.size:
        raise EncodeError(f"indices must hold one index per element ({values.size}), not {decoded.size}")
    if values.size == 0:
        return 0.0
    return float(np.mean((values - decoded) ** 2))
