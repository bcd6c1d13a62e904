"""Magnitude pruning (Deep Compression §2): the weights of smallest magnitude become zero.

Pruned weights become +0.0 (all bits zero), so the sparse encoding (§5.3) does not store them.
NaN has no magnitude order; it counts as larger than every number: a threshold never prunes it and
a sparsity prunes it last.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import EncodeError

__all__ = ["magnitude_mask", "prune"]

_FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")


def _magnitudes(x: np.ndarray) -> np.ndarray:
    """|x| flattened in C order, in a dtype where comparisons are exact (float32 for 16-bit floats)."""
    if x.dtype.name not in _FLOAT_NAMES:
        raise EncodeError(f"pruning needs a float tensor ({', '.join(_FLOAT_NAMES)}), not {x.dtype}")
    flat = np.ascontiguousarray(x).reshape(-1)
    if x.dtype.itemsize < 4:
        flat = flat.astype(np.float32)  # exact; numpy sorts and partitions float32 natively
    return np.abs(flat)


def _is_real(v: object) -> bool:
    """True for an int or float (numpy scalars included), not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _keep_by_sparsity(magnitudes: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask zeroing exactly round(sparsity·n) smallest magnitudes, ties pruned in C order."""
    n = magnitudes.size
    n_pruned = round(sparsity * n)  # Python round: half to even
    keep = np.ones(n, dtype=bool)
    if n_pruned == 0:
        return keep
    if n_pruned == n:
        return ~keep
    # O(n) selection instead of a full sort: everything below the n_pruned-th smallest magnitude goes,
    # then as many elements equal to it as still needed, lowest C-order position first.
    cutoff = np.partition(magnitudes, n_pruned - 1)[n_pruned - 1]  # NaN sorts last
    if np.isnan(cutoff):
        below, ties = ~np.isnan(magnitudes), np.flatnonzero(np.isnan(magnitudes))
    else:
        below, ties = magnitudes < cutoff, np.flatnonzero(magnitudes == cutoff)
    keep[below] = False
    keep[ties[: n_pruned - np.count_nonzero(below)]] = False
    return keep


def _keep_by_threshold(magnitudes: np.ndarray, threshold: float) -> np.ndarray:
    """Keep-mask zeroing every magnitude strictly below threshold (compared exactly, not rounded)."""
    with np.errstate(over="ignore"):
        t = magnitudes.dtype.type(threshold)  # beyond the dtype's range: inf, which is still >= threshold
    # Rounding the threshold to the magnitudes' dtype must not move an element across it: use the
    # smallest representable value >= threshold, for which |x| < t holds exactly when |x| < threshold.
    if float(t) < threshold:
        t = np.nextafter(t, magnitudes.dtype.type(np.inf))
    return ~(magnitudes < t)


def magnitude_mask(x: np.ndarray, *, sparsity: float | None = None,
                   threshold: float | None = None) -> np.ndarray:
    """Bool keep-mask of x's shape: False where magnitude pruning sets the weight to zero.

    Exactly one of ``sparsity`` (fraction in [0, 1]: the round(sparsity·size) smallest |x| are pruned,
    ties broken by C-order position, lower first) or ``threshold`` (|x| < threshold is pruned).
    """
    x = np.asarray(x)
    if (sparsity is None) == (threshold is None):
        raise EncodeError("give exactly one of sparsity or threshold")
    magnitudes = _magnitudes(x)
    if sparsity is not None:
        if not _is_real(sparsity) or not 0.0 <= float(sparsity) <= 1.0:
            raise EncodeError(f"sparsity must be a number in [0, 1], not {sparsity!r}")
        keep = _keep_by_sparsity(magnitudes, float(sparsity))
    else:
        if not _is_real(threshold) or math.isnan(float(threshold)) or float(threshold) < 0:
            raise EncodeError(f"threshold must be a non-negative number, not {threshold!r}")
        keep = _keep_by_threshold(magnitudes, float(threshold))
    return keep.reshape(x.shape)


def prune(x: np.ndarray, *, sparsity: float | None = None, threshold: float | None = None) -> np.ndarray:
    """A copy of x with the small-magnitude weights set to +0.0 (see magnitude_mask for the rule)."""
    x = np.asarray(x)
    keep = magnitude_mask(x, sparsity=sparsity, threshold=threshold)
    return np.where(keep, x, np.zeros((), dtype=x.dtype))
