"""Weight sharing: a 1-D codebook per tensor (Deep Compression §3), and two better ways to choose it.

- ``kmeans``: Lloyd's algorithm, the paper's method, with its three initialisations (``linear``,
  ``density``, ``random`` = Forgy) and ``kmeans++``. In one dimension the clusters are runs of the
  sorted values split at the midpoints between adjacent centroids, so after one sort each iteration is
  a ``searchsorted`` of the k−1 midpoints plus differences of prefix sums: O(k log n), not O(n k).
  A cluster that empties (linear initialisation on pruned weights leaves centroids in the empty band
  around zero) is re-seeded by cutting the cluster of largest squared error at its best 2-means split,
  so that all k centroids are used (``empty="split"``; ``"drop"`` keeps the textbook behaviour).
- ``optimal``: the least-squares optimum, by dynamic programming over the sorted distinct values
  weighted by their counts (the recurrence of Wang & Song's Ckmeans.1d.dp; the best split points are
  monotone, so each of the k rows is filled by divide and conquer in O(n log n)).
- ``ecsq``: entropy-constrained scalar quantization (Chou, Lookabaugh & Gray 1989): Lloyd iterations
  on squared error + λ·σ²·(−log2 p), where p is the cluster's share of the values — the ideal code
  length the Huffman stage pays for. Clusters that do not pay for themselves vanish.
- ``quantize_uniform``: no fixed number of levels but a step: each weight goes to the nearest multiple
  of the step and the codebook holds the mean of each used level. With Huffman coding after it, this
  is the classic near-optimal entropy-coded scalar quantizer (what NNCodec does with arithmetic
  coding), and one absolute step for all tensors minimises total squared error for a given size.

Non-finite values are rejected: a centroid is a mean, and one inf or NaN would turn its whole cluster
into inf or NaN (and make the nearest-centroid assignment of every other value meaningless).
"""

from __future__ import annotations

import fnmatch
import heapq
import math
from typing import Any, Mapping

import numba
import numpy as np

from .constants import MAX_BITS, MIN_BITS
from .errors import EncodeError

__all__ = [
    "METHODS", "INITS", "linear_init", "initial_centroids", "kmeans_1d", "optimal_1d", "ecsq_1d",
    "assign", "quantize", "quantize_uniform", "quantize_uniform_rows", "quantize_tensors", "quantization_error", "quantization_report",
]

METHODS = ("kmeans", "optimal", "ecsq")
INITS = ("linear", "density", "random", "kmeans++")
EMPTY_RULES = ("split", "drop")
# Above this many distinct values, optimal_1d clusters equal-count groups of neighbouring values and
# refines the result with Lloyd on all of them: the DP's table holds k * points split positions.
DEFAULT_MAX_POINTS = 1 << 16
MAX_DP_CELLS = 1 << 26  # split positions the DP may store (int32): 256 MiB; caps k at 8191

_UINT_OF_SIZE = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")


# ------------------------------------------------------------------------------------------------
# Argument checks


def _check_count(value: Any, what: str, minimum: int) -> int:
    """value as an int >= minimum (bools and floats rejected)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        qualifier = "positive" if minimum == 1 else "non-negative"
        raise EncodeError(f"{what} must be a {qualifier} integer, not {value!r}")
    return int(value)


def _check_choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise EncodeError(f"{what} must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
    return value


def _check_lam(lam: Any) -> float:
    if isinstance(lam, (bool, np.bool_)) or not isinstance(lam, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(lam)) or float(lam) < 0:
        raise EncodeError(f"lam must be a finite non-negative number, not {lam!r}")
    return float(lam)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise EncodeError(f"seed must be a non-negative integer, not {seed!r}")
    return int(seed)


def _finite_float64(values: Any) -> np.ndarray:
    """values flattened to float64, rejecting non-real dtypes and non-finite values."""
    values = np.asarray(values)
    if values.dtype.kind not in "fiu" and values.dtype.name != "bfloat16":
        raise EncodeError(f"values must be real numbers, not {values.dtype}")
    values = values.astype(np.float64, copy=False).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise EncodeError("clustering needs finite values: an inf or NaN would poison its cluster's mean")
    return values


def _power_of_two_scale(sorted_values: np.ndarray) -> float:
    """A power of two taking max |value| to [0.5, 1): exact, and keeps squares and sums finite."""
    top = max(-float(sorted_values[0]), float(sorted_values[-1]))
    if top == 0.0:
        return 1.0
    return math.ldexp(1.0, -math.frexp(top)[1])


# ------------------------------------------------------------------------------------------------
# Initialisations


def linear_init(lo: float, hi: float, k: int) -> np.ndarray:
    """k centroids evenly spaced over [lo, hi]: the paper's best initialisation (keeps rare large weights)."""
    k = _check_count(k, "k", 1)
    lo, hi = float(lo), float(hi)
    if np.isfinite(hi - lo):
        return np.linspace(lo, hi, k, dtype=np.float64)
    # hi − lo overflows only when both are huge: halving them first is exact.
    return np.linspace(lo * 0.5, hi * 0.5, k, dtype=np.float64) * 2.0


def _kmeanspp(sorted_values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii): each next centre drawn with probability ∝ D(x)²."""
    distinct, counts = np.unique(sorted_values, return_counts=True)
    scaled = distinct * _power_of_two_scale(distinct)  # squared distances stay finite
    weights = counts.astype(np.float64)
    chosen = [_draw(np.cumsum(weights), rng)]
    d2 = (scaled - scaled[chosen[0]]) ** 2
    for _ in range(1, k):
        cumulative = np.cumsum(weights * d2)
        if not cumulative[-1] > 0:
            break  # every distinct value is a centre already
        i = _draw(cumulative, rng)
        chosen.append(i)
        np.minimum(d2, (scaled - scaled[i]) ** 2, out=d2)
    return np.unique(distinct[np.array(chosen)])


def _draw(cumulative: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to the increments of the cumulative weights."""
    i = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    i = min(i, cumulative.size - 1)
    while i > 0 and cumulative[i] == cumulative[i - 1]:
        i -= 1  # rounding can land on a zero-weight index (a centre already): take the one it follows
    return i


def _initial_centroids(sorted_values: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    """Sorted distinct starting centroids (at most k) of sorted finite float64 values."""
    n = sorted_values.size
    if init == "linear":  # unique: k steps over a range of a few ulps would repeat values
        return np.unique(linear_init(sorted_values[0], sorted_values[-1], k))
    if init == "density":  # even steps on the empirical CDF
        ranks = np.round(np.linspace(0, n - 1, k)).astype(np.int64)
        return np.unique(sorted_values[ranks])
    rng = np.random.default_rng(seed)
    if init == "random":  # Forgy: k of the observations, drawn without replacement
        return np.unique(sorted_values[rng.choice(n, size=min(k, n), replace=False)])
    if init == "kmeans++":
        return _kmeanspp(sorted_values, k, rng)
    raise EncodeError(f"init must be one of {', '.join(repr(i) for i in INITS)}, not {init!r}")


def initial_centroids(values: np.ndarray, k: int, init: str = "linear", *, seed: int = 0) -> np.ndarray:
    """Sorted distinct float64 starting centroids (at most k) by the paper's inits or k-means++."""
    k = _check_count(k, "k", 1)
    _check_choice(init, "init", INITS)
    values = _finite_float64(values)
    if values.size == 0:
        return np.empty(0, dtype=np.float64)
    return _initial_centroids(np.sort(values), k, init, _check_seed(seed))


# ------------------------------------------------------------------------------------------------
# Assignment


def _midpoints(centroids: np.ndarray) -> np.ndarray:
    """Decision boundaries between adjacent sorted centroids: a value at a midpoint goes to the lower one."""
    a, b = centroids[:-1], centroids[1:]
    with np.errstate(over="ignore"):
        mid = (a + b) * 0.5  # exact whenever a + b is, e.g. for codebook values of float32 or narrower
    overflow = ~np.isfinite(mid)
    if overflow.any():  # only near the float64 limits; halving first cannot overflow
        mid[overflow] = a[overflow] * 0.5 + b[overflow] * 0.5
    return mid


@numba.njit(cache=True, nogil=True)
def _envelope(centroids, penalties, active, bounds):  # pragma: no cover - compiled
    """Lower envelope of (x − c_j)² + b_j over sorted c: returns m; active[:m] win, in order, below bounds[:m-1].

    Between c_i < c_j, j wins above t = (c_i + c_j)/2 + (b_j − b_i) / (2 (c_j − c_i)); a centroid whose
    threshold against its successor is not above the one against its predecessor never wins.
    """
    m = 0
    for j in range(centroids.size):
        while m > 0:
            i = active[m - 1]
            # The callers scale centroids to |c| < 1, so the sum cannot overflow; with equal penalties
            # t is exactly the midpoint _midpoints computes.
            t = (centroids[i] + centroids[j]) * 0.5 + (penalties[j] - penalties[i]) / (
                2.0 * (centroids[j] - centroids[i]))
            if m > 1 and t <= bounds[m - 2]:
                m -= 1  # i wins nowhere: j takes over at or below where i would start
                continue
            bounds[m - 1] = t
            break
        active[m] = j
        m += 1
    return m


def _boundaries(centroids: np.ndarray, penalties: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the centroids that win somewhere, the thresholds between them)."""
    if penalties is None:
        return np.arange(centroids.size), _midpoints(centroids)
    active = np.empty(centroids.size, dtype=np.int64)
    bounds = np.empty(max(centroids.size - 1, 0), dtype=np.float64)
    m = _envelope(centroids, penalties.astype(np.float64), active, bounds)
    return active[:m], bounds[: max(m - 1, 0)]


def assign(values: np.ndarray, centroids: np.ndarray, penalties: np.ndarray | None = None) -> np.ndarray:
    """Index (int64) of the nearest sorted centroid for each value; ties go to the lower index.

    With ``penalties`` b (one per centroid, squared value units), the index minimises (x − c)² + b:
    the entropy-constrained rule, under which some centroids may win no value at all.
    """
    centroids = np.asarray(centroids, dtype=np.float64).reshape(-1)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if centroids.size == 0:
        if values.size:
            raise EncodeError("cannot assign values to an empty set of centroids")
        return np.empty(0, dtype=np.int64)
    if centroids.size > 1 and not np.all(centroids[1:] > centroids[:-1]):
        raise EncodeError("centroids must be strictly increasing")
    if penalties is not None:
        penalties = np.asarray(penalties, dtype=np.float64).reshape(-1)
        if penalties.size != centroids.size or not np.all(np.isfinite(penalties)):
            raise EncodeError(f"penalties must be {centroids.size} finite numbers, one per centroid")
        scale = _power_of_two_scale(centroids)  # thresholds computed where squares cannot overflow
        active, bounds = _boundaries(centroids * scale, penalties * scale * scale)
        # side="left": the number of thresholds strictly below a value, so a value at one stays low.
        return active[np.searchsorted(bounds, values * scale, side="left")].astype(np.int64, copy=False)
    return np.searchsorted(_midpoints(centroids), values, side="left").astype(np.int64, copy=False)


# ------------------------------------------------------------------------------------------------
# Lloyd iterations (k-means and ECSQ) on sorted data


class _Runs:
    """Sorted values scaled by a power of two, with prefix sums for O(1) cluster sums.

    With `in_place`, `sorted_values` itself is scaled (exact) and kept, saving a copy: the caller
    must not use it afterwards.
    """

    def __init__(self, sorted_values: np.ndarray, *, in_place: bool = False):
        self.scale = _power_of_two_scale(sorted_values)
        if in_place and sorted_values.dtype == np.float64 and sorted_values.flags.writeable:
            np.multiply(sorted_values, self.scale, out=sorted_values)  # exact: a power of two
            self.values = sorted_values
        else:
            self.values = sorted_values * self.scale
        # Prefix sums of the values shifted by their mean: cluster sums become two lookups, and the
        # shift keeps the prefix sums small so their differences lose little precision. Built in
        # place (the same sums as np.cumsum of the shifted values, without the temporaries).
        self.shift = self.values.mean()
        self.prefix = np.empty(self.values.size + 1)
        self.prefix[0] = 0.0
        np.subtract(self.values, self.shift, out=self.prefix[1:])
        np.cumsum(self.prefix[1:], out=self.prefix[1:])
        self._variance: float | None = None

    @property
    def variance(self) -> float:
        """Variance of the scaled values (ECSQ's rate weight), computed on first use."""
        if self._variance is None:
            self._variance = float(np.mean((self.values - self.shift) ** 2))
        return self._variance

    def means(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Means of the non-empty runs [start, end), clamped into their ranges (rounding can leave them)."""
        sums = self.prefix[ends] - self.prefix[starts]
        means = sums / (ends - starts) + self.shift
        return np.clip(means, self.values[starts], self.values[ends - 1])


def _run_sse(run: np.ndarray) -> float:
    """Sum of squared deviations of a run from its mean, computed directly for accuracy (squared in
    place: one temporary the size of the run, which can be most of a large tensor)."""
    d = run - run.mean()
    np.square(d, out=d)
    return float(np.sum(d))


_SSE_CHUNK = 1 << 20  # elements of whole runs squared at a time by _run_sses


def _run_sses(v: np.ndarray, starts: np.ndarray, ends: np.ndarray, means: np.ndarray) -> np.ndarray:
    """SSE of each contiguous run [start, end) about its mean: the same sums as one np.add.reduceat over
    the whole array (each run's elements reduced alike), computed over groups of whole runs so the
    temporaries stay near _SSE_CHUNK elements instead of three full float64 copies."""
    out = np.empty(len(starts))
    i = 0
    while i < len(starts):
        j = i + 1
        while j < len(starts) and ends[j] - starts[i] <= _SSE_CHUNK:
            j += 1
        d = v[starts[i]: ends[j - 1]] - np.repeat(means[i:j], ends[i:j] - starts[i:j])
        out[i:j] = np.add.reduceat(d ** 2, starts[i:j] - starts[i])
        i = j
    return out


def _best_cut(run: np.ndarray) -> int:
    """Position p (0 < p < len) between distinct values minimising the SSE of run[:p] and run[p:].

    Computed _SSE_CHUNK positions at a time (the running sum carried from chunk to chunk, so every
    value is the one a single cumsum gives), so a run of most of a large tensor needs no full-size
    temporaries.
    """
    mean = run.mean()
    n = run.size
    best, best_gain = 0, None
    carry = 0.0
    for c0 in range(0, n - 1, _SSE_CHUNK):
        c1 = min(n - 1, c0 + _SSE_CHUNK)
        r = run[c0:c1] - mean
        r[0] += carry
        left = np.cumsum(r)  # sum of the first p deviations, p = c0+1 .. c1; the rest sum to −left
        carry = left[-1]
        p = np.arange(c0 + 1, c1 + 1)
        # SSE(left) + SSE(right) = total − left²/p − right²/(n−p): maximise the subtracted part.
        gain = left * left / p + left * left / (n - p)
        gain[run[c0 + 1: c1 + 1] == run[c0:c1]] = -np.inf  # never split equal values
        i = int(np.argmax(gain))
        if best_gain is None or gain[i] > best_gain:  # the first maximum, as one argmax would pick
            best, best_gain = c0 + i, gain[i]
    return best + 1


def _split_largest(runs: _Runs, starts: np.ndarray, ends: np.ndarray, means: np.ndarray,
                   k: int) -> np.ndarray:
    """Means after cutting, until there are k, the cluster of largest SSE at its best 2-means split."""
    v = runs.values
    # SSE of every run at once; a heap of (−SSE, start) then yields the largest, the lowest first on ties.
    sse = _run_sses(v, starts, ends, means)
    clusters = {int(a): (int(b), float(m)) for a, b, m in zip(starts, ends, means)}  # start -> (end, mean)
    heap = [(-float(e), int(a)) for e, a in zip(sse, starts)]
    heapq.heapify(heap)
    while len(clusters) < k and heap:
        negative_sse, a = heapq.heappop(heap)
        if not negative_sse < 0:
            break  # every cluster holds one distinct value: nothing left to split
        b = clusters[a][0]
        cut = a + _best_cut(v[a:b])
        left, right = v[a:cut], v[cut:b]
        clusters[a] = (cut, min(max(left.mean(), left[0]), left[-1]))
        clusters[cut] = (b, min(max(right.mean(), right[0]), right[-1]))
        heapq.heappush(heap, (-_run_sse(left), a))
        heapq.heappush(heap, (-_run_sse(right), cut))
    return np.array([clusters[a][1] for a in sorted(clusters)])


def _lloyd(runs: _Runs, centroids: np.ndarray, max_iter: int, *, k: int, empty: str,
           lam: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, cluster sizes) after Lloyd iterations from `centroids` (in scaled units).

    lam = 0: k-means, empty clusters split (``empty="split"``) or dropped. lam > 0: ECSQ, where a value
    goes to the centroid minimising (x − c)² + lam·σ²·ℓ with ℓ = −log2(cluster share), and empty
    clusters are dropped (that is how the rate falls).
    """
    v = runs.values
    n = v.size
    lengths = np.full(centroids.size, math.log2(max(centroids.size, 1)))
    weight = lam * runs.variance if lam > 0 else 0.0
    counts = np.array([n])
    splits = None
    for _ in range(max_iter):
        _, bounds = _boundaries(centroids, weight * lengths if lam > 0 else None)  # bounds of the winners
        # Cluster i is v[bounds[i-1]:bounds[i]]; side="right" puts ties at a boundary low, as assign() does.
        inner = np.searchsorted(v, bounds, side="right")
        new_splits = np.concatenate(([0], inner, [n]))
        if splits is not None and np.array_equal(new_splits, splits):
            break  # same clusters as the last iteration: the centroids are their means already
        splits = new_splits
        counts = np.diff(splits)
        occupied = counts > 0  # empty clusters are dropped, deterministically
        starts, ends = splits[:-1][occupied], splits[1:][occupied]
        counts = counts[occupied]
        centroids = runs.means(starts, ends)
        lengths = -np.log2(counts / n)
        if lam == 0 and empty == "split" and centroids.size < k:
            centroids = _split_largest(runs, starts, ends, centroids, k)
            splits = None  # the cut clusters are not a Lloyd partition yet: iterate again
    return centroids, counts


def _prepare(values: Any, k: Any, max_iter: Any) -> tuple[np.ndarray, int, int]:
    k = _check_count(k, "k", 1)
    max_iter = _check_count(max_iter, "max_iter", 0)
    return _finite_float64(values), k, max_iter


def _few_distinct(values: np.ndarray, sorted_values: np.ndarray, k: int):
    """(centroids, labels) when at most k distinct values: each is its own centroid (lossless); else None."""
    distinct = np.concatenate(([True], sorted_values[1:] != sorted_values[:-1]))
    if np.count_nonzero(distinct) > k:
        return None
    centroids = sorted_values[distinct]
    return centroids, np.searchsorted(centroids, values).astype(np.int64)


def kmeans_1d(values: np.ndarray, k: int, *, init: str = "linear", max_iter: int = 300, seed: int = 0,
              empty: str = "split") -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-D k-means: (sorted distinct float64 centroids, at most k; int64 label of each value).

    ``init``: "linear" (the paper's default), "density", "random" (Forgy) or "kmeans++" (the last two
    draw from ``seed``). ``empty="split"`` re-seeds empty clusters so that k centroids are used whenever
    there are at least k distinct values; ``"drop"`` lets them vanish.
    """
    values, k, max_iter = _prepare(values, k, max_iter)
    _check_choice(init, "init", INITS)
    _check_choice(empty, "empty", EMPTY_RULES)
    seed = _check_seed(seed)
    if values.size == 0:
        return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64)
    sorted_values = np.sort(values)
    exact = _few_distinct(values, sorted_values, k)
    if exact is not None:
        return exact
    centroids = _kmeans_sorted(sorted_values, k, init, seed, max_iter, empty)
    return centroids, assign(values, centroids)


def _kmeans_sorted(sorted_values: np.ndarray, k: int, init: str, seed: int, max_iter: int,
                   empty: str, *, in_place: bool = False) -> np.ndarray:
    """k-means centroids of sorted values; `in_place`: the caller gives up `sorted_values` (scaled in place)."""
    initial = _initial_centroids(sorted_values, k, init, seed)
    runs = _Runs(sorted_values, in_place=in_place)
    start = initial * runs.scale
    if empty == "split" and start.size < k and max_iter > 0:
        # An init with repeated picks (Forgy, density on ties) is topped up before the first step.
        starts, ends = _split_points(runs.values, start)
        occupied = ends > starts
        start = _split_largest(runs, starts[occupied], ends[occupied], runs.means(starts[occupied], ends[occupied]), k)
    centroids, _ = _lloyd(runs, start, max_iter, k=k, empty=empty)
    return centroids / runs.scale


def _split_points(v: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the nearest-centroid runs of sorted values v."""
    inner = np.searchsorted(v, _midpoints(centroids), side="right")
    splits = np.concatenate(([0], inner, [v.size]))
    return splits[:-1], splits[1:]


def ecsq_1d(values: np.ndarray, k: int, lam: float, *, init: str = "linear", max_iter: int = 300,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entropy-constrained 1-D quantizer: (centroids, at most k; int64 labels; code length of each, bits).

    Minimises Σ (x − c)² + lam·σ²·Σ ℓ, σ² the variance of the values and ℓ = −log2 p the ideal code
    length of each value's cluster: lam is the squared error, in units of σ², that one bit must buy.
    The iterations start from kmeans_1d's codebook (``init``, ``seed``), so lam = 0 is k-means.
    Labels follow the same penalised rule.
    """
    values, k, max_iter = _prepare(values, k, max_iter)
    lam = _check_lam(lam)
    _check_choice(init, "init", INITS)
    seed = _check_seed(seed)
    if values.size == 0:
        return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    sorted_values = np.sort(values)
    exact = _few_distinct(values, sorted_values, k)
    if exact is not None:
        centroids, labels = exact
        return centroids, labels, _code_lengths(labels, centroids.size)
    centroids, lengths = _ecsq_sorted(sorted_values, k, lam, init, seed, max_iter)
    labels = assign(values, centroids, _penalties(lam, sorted_values, lengths))
    return centroids, labels, lengths


def _ecsq_sorted(sorted_values: np.ndarray, k: int, lam: float, init: str, seed: int,
                 max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, code lengths in bits) of the ECSQ iterations on sorted values."""
    runs = _Runs(sorted_values)
    # Start from the k-means codebook (all k clusters used): lam = 0 then is k-means itself.
    start = _kmeans_sorted(sorted_values, k, init, seed, max_iter, "split") * runs.scale
    centroids, counts = _lloyd(runs, start, max_iter, k=k, empty="drop", lam=lam)
    if counts.size != centroids.size:  # max_iter = 0: no clusters measured yet; use the nearest rule
        starts, ends = _split_points(runs.values, centroids)
        counts = ends - starts
        centroids = centroids[counts > 0]
        counts = counts[counts > 0]
    return centroids / runs.scale, -np.log2(counts / sorted_values.size)


def _penalties(lam: float, sorted_values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """lam·σ²·ℓ per centroid, in the values' own (squared) units."""
    if lam == 0:
        return np.zeros(lengths.size)
    scale = _power_of_two_scale(sorted_values)
    scaled = sorted_values * scale
    variance = float(np.mean((scaled - scaled.mean()) ** 2))
    # For values near the float64 limit σ² itself overflows; cap the penalties so they stay finite
    # (assign rescales them again): only such absurd ranges see the cap.
    # Divided by the scale twice (its square can underflow to 0), and a zero length costs nothing
    # (0 times an overflowed σ² would be NaN).
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        penalties = np.minimum(lam * variance * lengths / scale / scale, np.finfo(np.float64).max)
    return np.where(lengths > 0, penalties, 0.0)


def _code_lengths(labels: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=k)
    with np.errstate(divide="ignore"):
        return -np.log2(counts / max(labels.size, 1))


# ------------------------------------------------------------------------------------------------
# Optimal clustering by dynamic programming


@numba.njit(cache=True, nogil=True)
def _optimal_kernel(x, w, k, opt):  # pragma: no cover - compiled
    """Fill opt[m, j] (first point of the last of m+1 clusters of points [0, j)); return the least SSE.

    D[m][j] = min over i of D[m−1][i] + cost(i, j), cost the weighted SSE of points [i, j) from prefix
    sums. The minimising i is non-decreasing in j (the cost is Monge), so each row is filled by divide
    and conquer: solve the middle j, then the left half searches i only up to its argmin, the right half
    only from it.
    """
    n = x.size
    cw = np.zeros(n + 1)
    cs = np.zeros(n + 1)
    cq = np.zeros(n + 1)
    for i in range(n):
        cw[i + 1] = cw[i] + w[i]
        cs[i + 1] = cs[i] + w[i] * x[i]
        cq[i + 1] = cq[i] + w[i] * x[i] * x[i]
    prev = np.empty(n + 1)
    cur = np.empty(n + 1)
    prev[0] = 0.0
    for j in range(1, n + 1):
        s = cs[j]
        prev[j] = max(cq[j] - s * s / cw[j], 0.0)
        opt[0, j] = 0
    stack = np.empty((n + 2, 4), dtype=np.int64)  # pending (j_lo, j_hi, i_lo, i_hi); depth <= log2 n + 1
    for m in range(1, k):
        top = 0
        stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = m + 1, n, m, n - 1
        top = 1
        while top > 0:
            top -= 1
            jlo, jhi, ilo, ihi = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
            if jlo > jhi:
                continue
            j = (jlo + jhi) // 2
            best = np.inf
            besti = ilo
            for i in range(ilo, min(ihi, j - 1) + 1):
                ww = cw[j] - cw[i]
                s = cs[j] - cs[i]
                c = cq[j] - cq[i] - s * s / ww
                if c < 0.0:
                    c = 0.0
                c += prev[i]
                if c < best:
                    best = c
                    besti = i
            cur[j] = best
            opt[m, j] = besti
            stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = jlo, j - 1, ilo, besti
            stack[top + 1, 0], stack[top + 1, 1], stack[top + 1, 2], stack[top + 1, 3] = j + 1, jhi, besti, ihi
            top += 2
        prev, cur = cur, prev
    return prev[n]


def _optimal_weighted(points: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Start index of each of the k clusters of the optimal partition of sorted weighted points (n > k)."""
    scale = _power_of_two_scale(points)
    x = points * scale
    x = x - np.sum(x * weights) / np.sum(weights)  # centred: prefix sums of squares lose less
    opt = np.empty((k, points.size + 1), dtype=np.int32)
    _optimal_kernel(x, weights.astype(np.float64), k, opt)
    starts = np.empty(k, dtype=np.int64)
    j = points.size
    for m in range(k - 1, -1, -1):
        j = int(opt[m, j])
        starts[m] = j
    return starts


def _group(distinct: np.ndarray, counts: np.ndarray, max_points: int) -> np.ndarray:
    """Index of the first distinct value of each group of neighbours (at most about max_points groups).

    Group boundaries are the union of max_points/2 equal-count and max_points/2 equal-width cuts: the
    first keep groups narrow where values are dense, the second where they are sparse — in the tails,
    where optimal clusters are few values wide and equal-count groups would be far too coarse.
    """
    half = max_points // 2
    below = np.cumsum(counts) - counts  # values before each distinct value
    by_count = below * half // int(counts.sum())
    lo, hi = float(distinct[0]), float(distinct[-1])
    by_width = np.floor((distinct - lo) / (hi - lo) * half) if hi > lo else np.zeros(distinct.size)
    new = np.concatenate(([True], (by_count[1:] != by_count[:-1]) | (by_width[1:] != by_width[:-1])))
    return np.flatnonzero(new)


def optimal_1d(values: np.ndarray, k: int, *, max_points: int | None = DEFAULT_MAX_POINTS,
               max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares optimal 1-D clustering: (sorted distinct float64 centroids, int64 labels).

    Solved exactly on the sorted distinct values weighted by their counts when there are at most
    ``max_points`` of them (None: as many as the DP table allows, MAX_DP_CELLS / k). Beyond that,
    neighbouring values are grouped (see _group), the groups are clustered optimally, and Lloyd (at
    most ``max_iter`` steps) refines the result on all values: near-optimal, never worse than its start.
    k is limited to MAX_DP_CELLS // (k + 2) > k, i.e. k <= 8191.
    """
    values, k, max_iter = _prepare(values, k, max_iter)
    if max_points is not None:
        max_points = _check_count(max_points, "max_points", 1)
    if values.size == 0:
        return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64)
    sorted_values = np.sort(values)
    exact = _few_distinct(values, sorted_values, k)
    if exact is not None:
        return exact
    centroids = _optimal_sorted(sorted_values, k, max_points, max_iter)
    return centroids, assign(values, centroids)


def _optimal_sorted(sorted_values: np.ndarray, k: int, max_points: int | None, max_iter: int) -> np.ndarray:
    """Optimal (or, beyond the point budget, grouped and refined) centroids of > k distinct sorted values."""
    budget = MAX_DP_CELLS // k - 1
    if budget <= k:
        raise EncodeError(f"optimal clustering into {k} clusters needs a table of more than {MAX_DP_CELLS} "
                          f"entries; use method='kmeans' for more than {_max_optimal_k()} clusters")
    limit = budget if max_points is None else min(max(max_points, 2 * k + 2), budget)
    distinct, first = np.unique(sorted_values, return_index=True)
    counts = np.diff(np.append(first, sorted_values.size))
    grouped = distinct.size > limit
    if grouped:
        heads = _group(distinct, counts, limit)
        sums = np.add.reduceat(distinct * counts, heads)  # exact enough: only a starting point
        weights = np.add.reduceat(counts, heads)
        points = np.clip(sums / weights, distinct[heads], distinct[np.append(heads[1:], distinct.size) - 1])
        if points.size <= k:  # a few values repeated very often: too few groups to hold k clusters
            if distinct.size > budget:
                return _kmeans_sorted(sorted_values, k, "linear", 0, max_iter, "split")
            grouped = False  # solve exactly instead
    if not grouped:
        heads = np.arange(distinct.size)
        points, weights = distinct, counts
    starts = _optimal_weighted(points, weights.astype(np.float64), k)
    # Cluster means over the original values: the runs [first[heads[start]], next start).
    value_starts = first[heads[starts]]
    value_ends = np.append(value_starts[1:], sorted_values.size)
    runs = _Runs(sorted_values)
    centroids = runs.means(value_starts, value_ends)
    if grouped:
        centroids, _ = _lloyd(runs, centroids, max_iter, k=k, empty="split")
    return centroids / runs.scale


def _max_optimal_k() -> int:
    """The largest k whose DP table fits MAX_DP_CELLS with more points than clusters."""
    k = int(math.isqrt(MAX_DP_CELLS))
    while MAX_DP_CELLS // k - 1 <= k:
        k -= 1
    return k


# ------------------------------------------------------------------------------------------------
# Codebooks for tensors


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


def _stored_elements(flat_bits: np.ndarray, count: int, dtype: np.dtype) -> np.ndarray:
    """The elements whose bit pattern is not all zeros, in order, as `dtype` (count: how many there are)."""
    out = np.empty(count, dtype=flat_bits.dtype)
    _gather_stored(flat_bits, out)
    return out.view(dtype)


@numba.njit(cache=True, nogil=True)
def _gather_stored(bits, out):  # pragma: no cover - compiled
    # out holds exactly as many elements as bits has non-zero patterns (counted by the caller)
    j = 0
    for i in range(bits.size):
        if bits[i] != 0:
            out[j] = bits[i]
            j += 1


@numba.njit(cache=True, nogil=True)
def _scatter_stored(bits, element_indices, indices):  # pragma: no cover - compiled
    # element_indices holds one index per non-zero pattern of bits, indices one per element
    j = 0
    for i in range(bits.size):
        if bits[i] != 0:
            indices[i] = element_indices[j]
            j += 1


def _distinct_count(sorted_values: np.ndarray) -> int:
    """Number of distinct bit patterns among sorted finite float64 values (only ±0 share a value)."""
    if sorted_values.size == 0:
        return 0
    distinct = 1 + int(np.count_nonzero(sorted_values[1:] != sorted_values[:-1]))
    zeros = sorted_values[sorted_values == 0]
    if zeros.size and np.any(np.signbit(zeros)) and not np.all(np.signbit(zeros)):
        distinct += 1
    return distinct


def _ecsq_codebook(sorted_values: np.ndarray, k: int, lam: float, init: str, seed: int, max_iter: int,
                   dtype: np.dtype, sparse: bool) -> tuple[np.ndarray, np.ndarray]:
    """(codebook body in float64 after the cast to dtype, the penalty of each entry)."""
    centroids, lengths = _ecsq_sorted(sorted_values, k, lam, init, seed, max_iter)
    rounded = centroids.astype(dtype).astype(np.float64) + 0.0
    body, which = np.unique(rounded, return_inverse=True)
    # Centroids that round onto one value share it: their probabilities add.
    share = np.bincount(which.reshape(-1), weights=np.exp2(-lengths), minlength=body.size)
    keep = body != 0 if sparse else np.ones(body.size, dtype=bool)  # sparse: the zero is codebook[0]
    return body[keep], _penalties(lam, sorted_values, -np.log2(share[keep]))


_ASSIGN_CHUNK = 1 << 20  # elements assigned at a time (bounded float64 / int64 temporaries)


class _Widened:
    """The elements as float64, widened on demand (exact): `.size`, and the whole array via np.asarray."""

    def __init__(self, elements: np.ndarray):
        self.elements = elements
        self.size = elements.size

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.elements.astype(np.float64)


def quantize(x: np.ndarray, bits: int, *, sparse: bool, method: str = "kmeans", init: str = "linear",
             lam: float = 0.0, seed: int = 0, max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Weight sharing: (codebook of x.dtype, uint16 index of each element in C order).

    ``sparse=False`` (§5.2): up to 2^bits centroids for all elements. ``sparse=True`` (§5.3):
    ``codebook[0]`` is all zero bits, zero-bit elements get index 0 and up to 2^bits − 1 centroids
    cluster the others. A tensor with few enough distinct bit patterns is coded exactly (-0.0 too).
    Otherwise the centroids come from ``method`` — "kmeans" (``init`` and ``seed`` as in kmeans_1d,
    empty clusters re-seeded), "optimal" (optimal_1d) or "ecsq" (ecsq_1d with ``lam``) — are rounded to
    x.dtype, and each element gets the nearest entry of that final codebook (in sparse mode this may be
    codebook[0] for a tiny weight). For "ecsq" an element gets the non-zero entry of least penalised
    error (squared error + lam·σ²·code length), and entries no element chose are dropped.
    "optimal" needs a DP table of k × points entries and so supports bits <= 13 (see optimal_1d).
    """
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) \
            or not MIN_BITS <= bits <= MAX_BITS:
        raise EncodeError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, not {bits!r}")
    _check_choice(method, "method", METHODS)
    _check_choice(init, "init", INITS)
    lam = _check_lam(lam)
    seed = _check_seed(seed)
    max_iter = _check_count(max_iter, "max_iter", 0)
    x = np.asarray(x)
    dtype = _float_dtype(x)
    flat = np.ascontiguousarray(x).reshape(-1)
    k = 1 << int(bits)
    indices = np.zeros(flat.size, dtype=np.uint16)
    zero = np.zeros(1, dtype=dtype)

    if sparse:
        k -= 1  # index 0 is reserved for the zero of fillers and pruned elements
        # Stored elements: those with any bit set (-0.0 is stored), gathered by a kernel in one pass:
        # neither np.flatnonzero's int64 positions (8 bytes per element) nor a boolean mask (whose
        # indexing is 4-6x slower than a kernel's loop) is needed.
        flat_bits = flat.view(_UINT_OF_SIZE[dtype.itemsize])
        stored_count = int(np.count_nonzero(flat_bits))
        elements = _stored_elements(flat_bits, stored_count, dtype)
    else:
        elements = flat
    if not np.all(np.isfinite(elements)):
        raise EncodeError("weight sharing needs finite values: an inf or NaN would poison its cluster's mean")
    # Sorted in the tensor's own dtype, then widened: the same values as sorting the float64 copy
    # (the widening is exact and keeps order), without keeping a float64 copy of every element.
    if sparse and dtype.name != "bfloat16":
        # The stored elements are a copy of our own: sorted in place, then let go while the codebook is
        # found, and gathered again for the assignment (peak memory: one copy fewer on a large tensor).
        elements.sort()
        sorted_values = elements.astype(np.float64)
        elements = None
    else:
        sorted_values = (np.sort(elements) if dtype.name != "bfloat16" else np.sort(elements.astype(np.float32))
                         ).astype(np.float64)

    def gathered() -> np.ndarray:
        return elements if elements is not None else _stored_elements(flat_bits, stored_count, dtype)

    penalties = None
    if _distinct_count(sorted_values) <= k:
        codebook, element_indices = _exact_codebook(gathered())
    else:
        if method == "ecsq":
            body, penalties = _ecsq_codebook(sorted_values, k, lam, init, seed, max_iter, dtype, sparse)
            codebook = body.astype(dtype)
        else:
            if method == "optimal":
                centroids = _optimal_sorted(sorted_values, k, DEFAULT_MAX_POINTS, max_iter)
            else:
                centroids = _kmeans_sorted(sorted_values, k, init, seed, max_iter, "split", in_place=True)
            del sorted_values  # scaled in place by k-means: not to be used again
            codebook = _cast_centroids(centroids, dtype)
            if sparse:
                codebook = codebook[codebook != 0]  # the zero lives at index 0 only
            codebook = codebook.astype(dtype)
        element_indices = None

    if sparse:
        codebook = np.concatenate((zero, codebook))
    elif codebook.size == 0:
        codebook = zero  # an empty tensor still needs k >= 1 (§5.2)

    sorted_values = None  # free before the assignment
    if element_indices is None:
        elements = gathered()
        element_values = _Widened(elements)
        codebook_values = codebook.astype(np.float64)
        if penalties is not None and codebook.size == (1 if sparse else 0):
            element_indices = np.zeros(element_values.size, dtype=np.int64)  # every centroid rounded to 0
        elif penalties is not None:
            # ECSQ: the sorted body (and, if sparse, the zero) with its penalties; keep the used entries.
            offset = 1 if sparse else 0
            chosen = assign(element_values, codebook_values[offset:], penalties) + offset
            used = np.unique(chosen)
            keep = np.concatenate(([0], used)) if sparse else used
            remap = np.zeros(codebook.size, dtype=np.int64)
            remap[keep] = np.arange(keep.size)
            codebook, element_indices = codebook[keep], remap[chosen]
        else:
            # Nearest entry of the final codebook: search the sorted codebook, then map back to its order
            # (a chunk at a time, so no int64 index per element is held).
            order = np.argsort(codebook_values, kind="stable").astype(np.uint16)
            ordered = codebook_values[order]
            element_indices = np.empty(elements.size, dtype=np.uint16)
            for i in range(0, elements.size, _ASSIGN_CHUNK):
                part = elements[i: i + _ASSIGN_CHUNK].astype(np.float64)
                element_indices[i: i + _ASSIGN_CHUNK] = order[assign(part, ordered)]
    elif sparse:
        element_indices = element_indices + 1

    if sparse:
        if len(element_indices) != stored_count:  # pragma: no cover - one index per stored element, always
            raise EncodeError("internal: an index per stored element is missing")
        _scatter_stored(flat_bits, np.ascontiguousarray(element_indices, dtype=np.uint16), indices)
    else:
        indices[:] = element_indices
    return codebook, indices


# ------------------------------------------------------------------------------------------------
# Uniform quantization (a step instead of a number of levels)

MAX_LEVELS = 1 << MAX_BITS  # a codebook holds at most 2^16 entries (§5.2)
_MAX_SPAN = 1 << 24  # level spans up to this are counted in a dense table (64 MiB at most)


@numba.njit(cache=True, nogil=True)
def _level_range(values, step):  # pragma: no cover - compiled
    """(lowest, highest) level floor(v / step + 0.5) of non-empty float values."""
    lo = hi = np.int64(math.floor(values[0] / step + 0.5))
    for i in range(1, values.size):
        level = np.int64(math.floor(values[i] / step + 0.5))
        if level < lo:
            lo = level
        elif level > hi:
            hi = level
    return lo, hi


@numba.njit(cache=True, nogil=True)
def _level_histogram(values, step, lo, counts, sums):  # pragma: no cover - compiled
    """Count and sum the values of each level (level − lo indexes counts and sums)."""
    for i in range(values.size):
        k = np.int64(math.floor(values[i] / step + 0.5)) - lo
        counts[k] += 1
        sums[k] += values[i]


@numba.njit(cache=True, nogil=True)
def _level_indices(values, step, lo, remap, out):  # pragma: no cover - compiled
    """out[i] = remap[level of values[i] − lo]: the codebook index of each value."""
    for i in range(values.size):
        out[i] = remap[np.int64(math.floor(values[i] / step + 0.5)) - lo]


def _check_step(step: Any) -> float:
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(step)) or float(step) <= 0:
        raise EncodeError(f"step must be a finite positive number, not {step!r}")
    return float(step)


def quantize_uniform(x: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Uniform quantization: (codebook of x.dtype, uint16 index of each element in C order).

    Each element goes to its level round(x / step) (ties upward); the codebook holds, for each level
    in use, the mean of its elements — except level 0, which is exactly 0 and comes first, so the
    same codebook and indices also serve the sparse form (§5.3, codebook[0] = 0). Every element ends
    within one step of its value (within step/2 at level 0). Raises EncodeError for non-finite
    values, non-float tensors, or a step so small that more than 2^16 levels are in use.
    """
    step = _check_step(step)
    x = np.asarray(x)
    dtype = _float_dtype(x)
    flat = np.ascontiguousarray(x).reshape(-1)
    # float16/bfloat16 widen exactly to float32; the kernels compute levels in float64 from there
    values = flat if dtype.name in ("float32", "float64") else flat.astype(np.float32)
    if values.size == 0:
        return np.zeros(1, dtype=dtype), np.zeros(0, dtype=np.uint16)
    top = float(np.max(np.abs(values)))
    if not math.isfinite(top):
        raise EncodeError("uniform quantization needs finite values, and this tensor has inf or NaN")
    if top / step >= 2.0 ** 52:  # levels must stay exact integers in float64 (and fit int64)
        raise EncodeError(f"step {step!r} is too small for values up to {top!r}: more than 2^16 levels")
    lo, hi = (int(v) for v in _level_range(values, step))
    span = hi - lo + 1
    if span <= _MAX_SPAN:
        counts = np.zeros(span, dtype=np.int64)
        sums = np.zeros(span, dtype=np.float64)
        _level_histogram(values, step, lo, counts, sums)
        used = np.flatnonzero(counts)
        counts, sums = counts[used], sums[used]
        levels = used + lo
    else:  # a few far outliers: count the levels in use by sorting
        all_levels = np.floor(values.astype(np.float64) / step + 0.5).astype(np.int64)
        levels, inverse = np.unique(all_levels, return_inverse=True)
        counts = np.bincount(inverse.reshape(-1))
        sums = np.bincount(inverse.reshape(-1), weights=values.astype(np.float64))
    if levels.size > MAX_LEVELS:
        raise EncodeError(f"step {step!r} leaves {levels.size} levels in use; a codebook holds at most "
                          f"{MAX_LEVELS}: use a larger step")
    means = sums / counts
    zero = levels == 0
    means[zero] = 0.0
    order = np.concatenate((np.flatnonzero(zero), np.flatnonzero(~zero)))  # level 0 first, then ascending
    codebook = (means[order].astype(dtype).astype(np.float64) + 0.0).astype(dtype)  # -0.0 becomes +0.0
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    if span <= _MAX_SPAN:
        remap = np.zeros(span, dtype=np.uint16)
        remap[levels - lo] = rank
        indices = np.empty(values.size, dtype=np.uint16)
        _level_indices(values, step, lo, remap, indices)
    else:
        indices = rank[inverse.reshape(-1)].astype(np.uint16)
    return codebook, indices


# ------------------------------------------------------------------------------------------------
# Uniform quantization with a step per row (row scales, §5.2, format 1.3)

_LEVEL_LIMIT = 2.0 ** 52  # |x / step| below this keeps levels exact integers in float64 (and int64)


@numba.njit(cache=True, nogil=True)
def _row_level_range(values, cols, classes, qsteps):  # pragma: no cover - compiled
    """(ok, lowest, highest) level floor(v / q_r + 0.5) over rows r of `cols` values, q_r =
    qsteps[classes[r]]; ok is False when some |v / q_r| is not below 2^52 (or is NaN)."""
    lo = np.int64(0)
    hi = np.int64(0)
    first = True
    for r in range(classes.size):
        q = qsteps[classes[r]]
        base = r * cols
        for c in range(cols):
            t = values[base + c] / q
            if not abs(t) < 4503599627370496.0:
                return False, lo, hi
            level = np.int64(math.floor(t + 0.5))
            if first:
                lo = hi = level
                first = False
            elif level < lo:
                lo = level
            elif level > hi:
                hi = level
    return True, lo, hi


@numba.njit(cache=True, nogil=True)
def _row_level_histogram(values, cols, classes, qsteps, scales, lo, counts, sums):  # pragma: no cover - compiled
    """Count each level's elements and sum their v / s_r (level − lo indexes counts and sums)."""
    for r in range(classes.size):
        q = qsteps[classes[r]]
        s = scales[classes[r]]
        base = r * cols
        for c in range(cols):
            v = np.float64(values[base + c])
            k = np.int64(math.floor(v / q + 0.5)) - lo
            counts[k] += 1
            sums[k] += v / s


@numba.njit(cache=True, nogil=True)
def _row_level_indices(values, cols, classes, qsteps, lo, remap, out):  # pragma: no cover - compiled
    """out[i] = remap[level of values[i] − lo], each row at its own step."""
    for r in range(classes.size):
        q = qsteps[classes[r]]
        base = r * cols
        for c in range(cols):
            out[base + c] = remap[np.int64(math.floor(values[base + c] / q + 0.5)) - lo]


@numba.njit(cache=True, nogil=True)
def _row_level_table(values, cols, classes, qsteps, scales, limit, table, counts, sums):  # pragma: no cover - compiled
    """Levels in use when their span is too wide for a dense table: a hash map from level to slot,
    with counts and sums (v / s_r) per slot; stops (returning -1) once more than `limit` are in use."""
    used = 0
    for r in range(classes.size):
        q = qsteps[classes[r]]
        s = scales[classes[r]]
        base = r * cols
        for c in range(cols):
            v = np.float64(values[base + c])
            level = np.int64(math.floor(v / q + 0.5))
            if level in table:
                slot = table[level]
            else:
                if used == limit:
                    return -1
                slot = used
                table[level] = slot
                used += 1
            counts[slot] += 1
            sums[slot] += v / s
    return used


@numba.njit(cache=True, nogil=True)
def _row_table_indices(values, cols, classes, qsteps, table, remap, out):  # pragma: no cover - compiled
    """out[i] = remap[slot of the level of values[i]] (the hash-map twin of _row_level_indices)."""
    for r in range(classes.size):
        q = qsteps[classes[r]]
        base = r * cols
        for c in range(cols):
            out[base + c] = remap[table[np.int64(math.floor(values[base + c] / q + 0.5))]]


def row_count(shape: tuple[int, ...]) -> int:
    """R of the matrix view of §5.3 (scalar 1, 1-D 1, first dimension 0: 0, else d0): rows that get a scale."""
    if len(shape) <= 1:
        return 1
    return 0 if shape[0] == 0 else int(shape[0])


def row_scale_classes(row_multipliers: Any, rows: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(scales: the distinct multipliers rounded to dtype, ascending; uint16 class of each row).

    EncodeError unless the multipliers are `rows` finite positive numbers that stay finite and
    positive in dtype, with at most 2^16 distinct values. No rows: one scale, 1.0 (m ≥ 1, §5.2).
    """
    if isinstance(row_multipliers, (bool, str, bytes)) or row_multipliers is None:
        raise EncodeError(f"row multipliers must be an array of {rows} finite positive numbers, not {row_multipliers!r}")
    try:
        m = np.asarray(row_multipliers, dtype=np.float64)
    except (TypeError, ValueError):
        raise EncodeError(f"row multipliers must be an array of {rows} finite positive numbers") from None
    if m.ndim != 1 or m.size != rows:
        raise EncodeError(f"row multipliers must be a 1-D array of {rows} values (one per row), not shape {list(m.shape)}")
    if rows == 0:
        return np.ones(1, dtype=dtype), np.zeros(0, dtype=np.uint16)
    if not (np.isfinite(m).all() and (m > 0).all()):
        raise EncodeError("row multipliers must be finite and positive")
    with np.errstate(over="ignore", under="ignore"):  # checked just below
        rounded = m.astype(dtype)
    if not (np.isfinite(rounded).all() and (rounded > 0).all()):
        raise EncodeError(f"row multipliers must stay finite and positive as {dtype} (some overflow or underflow)")
    scales, classes = np.unique(rounded, return_inverse=True)
    if scales.size > MAX_LEVELS:
        raise EncodeError(f"row multipliers take {scales.size} distinct values as {dtype}; row scales hold at most "
                          f"{MAX_LEVELS}")
    return scales, classes.reshape(-1).astype(np.uint16)


def quantize_uniform_rows(x: np.ndarray, step: float, row_multipliers: Any
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Uniform quantization with a step per row: (codebook, uint16 indices, scales, uint16 row_classes).

    Rows are those of the matrix view of §5.3. Row r's scale s_r is its multiplier rounded to x.dtype
    (`scales` holds the distinct ones, ascending; `row_classes[r]` indexes it); each element goes to
    level floor(x / (step·s_r) + 0.5) and the codebook holds, per level in use, the mean of x / s_r
    over its elements (level 0 exactly 0, first), so that decoded = dtype(codebook[indices] ×
    s_r) (§5.2) lies within about step·s_r of x. With every multiplier 1 this is `quantize_uniform`.
    Only float32 and float64 tensors (the dtypes row scales allow); EncodeError otherwise, for
    non-finite values, bad multipliers (see `row_scale_classes`), or more than 2^16 levels.
    """
    step = _check_step(step)
    x = np.asarray(x)
    dtype = _float_dtype(x)
    if dtype.name not in ("float32", "float64"):
        raise EncodeError(f"row scales are only for float32 and float64 tensors, not {dtype} (§5.2)")
    rows = row_count(x.shape)
    scales, classes = row_scale_classes(row_multipliers, rows, dtype)
    values = np.ascontiguousarray(x).reshape(-1)
    if values.size == 0:
        return np.zeros(1, dtype=dtype), np.zeros(0, dtype=np.uint16), scales, classes
    cols = values.size // rows
    if not np.isfinite(values).all():
        raise EncodeError("uniform quantization needs finite values, and this tensor has inf or NaN")
    scales64 = scales.astype(np.float64)
    qsteps = step * scales64
    if not (np.all(qsteps > 0) and np.all(np.isfinite(qsteps))):
        raise EncodeError(f"step {step!r} times a row multiplier leaves float64's range (0 or inf)")
    ok, lo, hi = _row_level_range(values, cols, classes, qsteps)
    if not ok:
        raise EncodeError(f"step {step!r} times the row multipliers is too small for the values: more than 2^16 levels")
    lo, hi = int(lo), int(hi)
    span = hi - lo + 1
    dense = span <= _MAX_SPAN
    if dense:
        counts = np.zeros(span, dtype=np.int64)
        sums = np.zeros(span, dtype=np.float64)
        _row_level_histogram(values, cols, classes, qsteps, scales64, lo, counts, sums)
        used = np.flatnonzero(counts)
        counts, sums = counts[used], sums[used]
        levels = used + lo
    else:  # a few far outliers: a hash map of the levels in use
        from numba import typed, types

        table = typed.Dict.empty(types.int64, types.int64)
        counts = np.zeros(MAX_LEVELS, dtype=np.int64)
        sums = np.zeros(MAX_LEVELS, dtype=np.float64)
        n = _row_level_table(values, cols, classes, qsteps, scales64, MAX_LEVELS, table, counts, sums)
        if n < 0:
            raise EncodeError(f"step {step!r} leaves more than {MAX_LEVELS} levels in use; a codebook holds at most "
                              f"{MAX_LEVELS}: use a larger step")
        slot_levels = np.empty(n, dtype=np.int64)
        for level, slot in table.items():
            slot_levels[slot] = level
        by_level = np.argsort(slot_levels)
        levels, counts, sums = slot_levels[by_level], counts[:n][by_level], sums[:n][by_level]
    if levels.size > MAX_LEVELS:
        raise EncodeError(f"step {step!r} leaves {levels.size} levels in use; a codebook holds at most "
                          f"{MAX_LEVELS}: use a larger step")
    means = sums / counts
    zero = levels == 0
    means[zero] = 0.0
    order = np.concatenate((np.flatnonzero(zero), np.flatnonzero(~zero)))  # level 0 first, then ascending
    with np.errstate(over="ignore"):  # checked just below
        codebook = (means[order].astype(dtype).astype(np.float64) + 0.0).astype(dtype)  # -0.0 becomes +0.0
    if not np.isfinite(codebook).all():
        raise EncodeError(f"values divided by their row scales overflow {dtype}: the row multipliers are too small")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    indices = np.empty(values.size, dtype=np.uint16)
    if dense:
        remap = np.zeros(span, dtype=np.uint16)
        remap[levels - lo] = rank
        _row_level_indices(values, cols, classes, qsteps, lo, remap, indices)
    else:
        remap = np.empty(levels.size, dtype=np.uint16)
        remap[by_level] = rank  # slot -> codebook index
        _row_table_indices(values, cols, classes, qsteps, table, remap, indices)
    return codebook, indices, scales, classes


def apply_row_scales(flat: np.ndarray, scales: np.ndarray, classes: np.ndarray, r0: int = 0, r1: int | None = None
                     ) -> None:
    """flat (C order, float32 or float64) *= scales[classes[row]] in place for rows r0..r1 of the
    matrix view: each product rounded once to the dtype, as §5.2 decodes a scaled tensor."""
    rows = classes.size
    r1 = rows if r1 is None else r1
    if rows == 0 or flat.size == 0 or r1 <= r0:
        return
    cols = flat.size // rows
    block = flat[r0 * cols: r1 * cols].reshape(r1 - r0, cols)
    with np.errstate(over="ignore", under="ignore"):  # a product past the dtype's range is inf (§5.2)
        np.multiply(block, scales[classes[r0:r1]][:, None], out=block)


def quantization_error(x: np.ndarray, codebook: np.ndarray, indices: np.ndarray) -> float:
    """Mean squared error between x and its weight-shared version codebook[indices]."""
    values, decoded = _decoded_pair(x, codebook, indices)
    if values.size == 0:
        return 0.0
    return float(np.mean((values - decoded) ** 2))


def _decoded_pair(x: np.ndarray, codebook: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(x).astype(np.float64).reshape(-1)
    codebook = np.asarray(codebook).astype(np.float64).reshape(-1)
    indices = np.asarray(indices).reshape(-1)
    if indices.size != values.size:
        raise EncodeError(f"indices must hold one index per element ({values.size}), not {indices.size}")
    if indices.size and (indices.dtype.kind not in "iu" or int(indices.min()) < 0
                         or int(indices.max()) >= codebook.size):
        raise EncodeError(f"indices must be integers in 0..{codebook.size - 1}")
    return values, codebook[indices]


def quantization_report(x: np.ndarray, codebook: np.ndarray, indices: np.ndarray, *,
                        sparse: bool | None = None) -> dict[str, Any]:
    """How well codebook[indices] stands for x: errors, signal-to-noise, entries used, index entropy.

    ``mse``, ``rmse``, ``max_abs`` are over all elements; ``relative_mse`` is mse / mean(x²) and
    ``sqnr_db`` its −10·log10. ``entropy_bits`` is the empirical entropy of the indices of the coded
    elements — all of them, or with ``sparse`` (default: codebook[0] is zero) those not at index 0 —
    which is about what a Huffman-coded index costs per element.
    """
    values, decoded = _decoded_pair(x, codebook, indices)
    idx = np.asarray(indices).reshape(-1).astype(np.int64)
    codebook = np.asarray(codebook)
    if sparse is None:
        sparse = codebook.size > 0 and float(codebook.astype(np.float64).reshape(-1)[0]) == 0.0
    coded = idx[idx != 0] if sparse else idx
    counts = np.bincount(coded, minlength=codebook.size)
    p = counts[counts > 0] / max(coded.size, 1)
    err = values - decoded
    mse = float(np.mean(err ** 2)) if values.size else 0.0
    power = float(np.mean(values ** 2)) if values.size else 0.0
    relative = mse / power if power > 0 else (0.0 if mse == 0 else math.inf)
    return {
        "elements": int(values.size), "coded": int(coded.size), "codebook": int(codebook.size),
        "used": int(np.unique(idx).size),
        "mse": mse, "rmse": math.sqrt(mse), "max_abs": float(np.max(np.abs(err))) if values.size else 0.0,
        "relative_mse": relative, "sqnr_db": (-10 * math.log10(relative) if 0 < relative < math.inf else math.inf),
        "entropy_bits": float(-np.sum(p * np.log2(p))) + 0.0,
    }


def quantize_tensors(tensors: Mapping[str, np.ndarray], bits: int | Mapping[str, int], *,
                     method: str = "kmeans", init: str = "linear", lam: float = 0.0, seed: int = 0,
                     ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Weight-share a state dict: (tensors as codebook[indices], a quantization_report per shared tensor).

    ``bits`` is one width for every float tensor of rank >= 2, or {name pattern: bits} (fnmatch, the
    first match wins; unmatched tensors are left alone). A tensor with zero elements is coded sparsely
    (its zeros stay zero). The result has at most 2^bits distinct values per tensor, so saving it with a
    Policy of the same widths stores exactly these values: this is how a codebook from any ``method``
    reaches a file.
    """
    out: dict[str, np.ndarray] = {}
    reports: dict[str, dict[str, Any]] = {}
    for name, value in tensors.items():
        x = np.asarray(value)
        if isinstance(bits, Mapping):
            b = next((v for pattern, v in bits.items() if fnmatch.fnmatchcase(name, pattern)), None)
        else:
            b = bits if x.ndim >= 2 and x.dtype.name in _FLOAT_NAMES else None
        if b is None:
            out[name] = x
            continue
        x = np.ascontiguousarray(x)
        sparse = x.dtype.name in _FLOAT_NAMES and bool(np.any(x.reshape(-1).view(_UINT_OF_SIZE[x.dtype.itemsize]) == 0))
        try:
            codebook, indices = quantize(x, b, sparse=sparse, method=method, init=init, lam=lam, seed=seed)
        except EncodeError as e:
            raise EncodeError(str(e), tensor=name) from None
        out[name] = codebook[indices].reshape(x.shape)
        reports[name] = {"bits": int(b), "sparse": sparse, "method": method,
                         **quantization_report(x, codebook, indices, sparse=sparse)}
    return out, reports
