"""Magnitude pruning (Deep Compression §2): the weights of smallest magnitude become zero.

Three rules per layer: a target ``sparsity`` (fraction pruned), an absolute ``threshold``, or a
``quality`` parameter times the standard deviation of the layer's weights (Han et al. 2015, "Learning
both weights and connections"). A previous keep-mask can be passed so that pruning only ever removes
more weights (iterative prune-and-retrain), and ``gradual_schedule`` gives the rising sparsities of such
a schedule.

Pruned weights become +0.0 (all bits zero), so the sparse encoding (§5.3) does not store them.
NaN has no magnitude order; it counts as larger than every number: a threshold never prunes it and
a sparsity prunes it last.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Mapping

import numpy as np

from .errors import EncodeError

__all__ = ["magnitude_mask", "prune", "std_threshold", "gradual_schedule", "prune_tensors"]

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


def std_threshold(x: np.ndarray, quality: float) -> float:
    """quality × the standard deviation of x's elements (zeros included): Han et al.'s per-layer threshold.

    Zeros count, so pruning a layer barely moves its threshold and repeating a rule converges.
    """
    if not _is_real(quality) or not math.isfinite(float(quality)) or float(quality) < 0:
        raise EncodeError(f"quality must be a finite non-negative number, not {quality!r}")
    x = np.asarray(x)
    magnitudes = _magnitudes(x).astype(np.float64)
    if magnitudes.size == 0:
        return 0.0
    if not np.all(np.isfinite(magnitudes)):
        raise EncodeError("a standard-deviation threshold needs finite weights")
    values = np.ascontiguousarray(x).reshape(-1).astype(np.float64)
    top = float(magnitudes.max())
    if top == 0.0:
        return 0.0
    scale = math.ldexp(1.0, -math.frexp(top)[1])  # a power of two: exact, and the squares cannot overflow
    return float(quality) * float(np.std(values * scale)) / scale


def magnitude_mask(x: np.ndarray, *, sparsity: float | None = None, threshold: float | None = None,
                   quality: float | None = None, keep: np.ndarray | None = None) -> np.ndarray:
    """Bool keep-mask of x's shape: False where magnitude pruning sets the weight to zero.

    Exactly one of ``sparsity`` (fraction in [0, 1]: the round(sparsity·size) smallest |x| are pruned,
    ties broken by C-order position, lower first), ``threshold`` (|x| < threshold is pruned) or
    ``quality`` (threshold = quality × std of x, see std_threshold). With ``keep``, a previous mask of
    x's shape, elements outside it stay pruned (and count toward the sparsity, pruned first).
    """
    x = np.asarray(x)
    if sum(rule is not None for rule in (sparsity, threshold, quality)) != 1:
        raise EncodeError("give exactly one of sparsity, threshold or quality")
    magnitudes = _magnitudes(x)
    previous = None
    if keep is not None:
        previous = np.asarray(keep)
        if previous.dtype != np.bool_ or previous.shape != x.shape:
            raise EncodeError(f"keep must be a bool mask of shape {x.shape}, not {previous.dtype} {previous.shape}")
        previous = previous.reshape(-1)
        magnitudes = np.where(previous, magnitudes, magnitudes.dtype.type(-1))  # below every magnitude
    if quality is not None:
        threshold = std_threshold(x, quality)
    if sparsity is not None:
        if not _is_real(sparsity) or not 0.0 <= float(sparsity) <= 1.0:
            raise EncodeError(f"sparsity must be a number in [0, 1], not {sparsity!r}")
        mask = _keep_by_sparsity(magnitudes, float(sparsity))
    else:
        if not _is_real(threshold) or math.isnan(float(threshold)) or float(threshold) < 0:
            raise EncodeError(f"threshold must be a non-negative number, not {threshold!r}")
        mask = _keep_by_threshold(magnitudes, float(threshold))
    if previous is not None:
        mask &= previous  # a sparsity below the share already pruned would keep some sentinels
    return mask.reshape(x.shape)


def prune(x: np.ndarray, *, sparsity: float | None = None, threshold: float | None = None,
          quality: float | None = None, keep: np.ndarray | None = None) -> np.ndarray:
    """A copy of x with the small-magnitude weights set to +0.0 (see magnitude_mask for the rules)."""
    x = np.asarray(x)
    mask = magnitude_mask(x, sparsity=sparsity, threshold=threshold, quality=quality, keep=keep)
    return np.where(mask, x, np.zeros((), dtype=x.dtype))


def gradual_schedule(final: float, steps: int, *, initial: float = 0.0, power: float = 3.0) -> list[float]:
    """Sparsities for `steps` prune-and-retrain rounds rising from `initial` to `final`.

    s_t = final + (initial − final)·(1 − t/steps)^power for t = 1..steps (Zhu & Gupta 2017): large
    steps first, while many redundant weights remain, then small ones; power = 1 is a linear ramp.
    """
    for name, value in (("final", final), ("initial", initial)):
        if not _is_real(value) or not 0.0 <= float(value) <= 1.0:
            raise EncodeError(f"{name} sparsity must be a number in [0, 1], not {value!r}")
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise EncodeError(f"steps must be a positive integer, not {steps!r}")
    if not _is_real(power) or not math.isfinite(float(power)) or float(power) <= 0:
        raise EncodeError(f"power must be a finite positive number, not {power!r}")
    final, initial, power = float(final), float(initial), float(power)
    out = [final + (initial - final) * (1.0 - t / steps) ** power for t in range(1, steps + 1)]
    out[-1] = final  # exact, whatever the rounding above
    return out


def prune_tensors(tensors: Mapping[str, np.ndarray], rules: Mapping[str, Mapping[str, float]] | None = None,
                  *, default: Mapping[str, float] | None = None,
                  keep: Mapping[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Prune a state dict layer by layer: (pruned tensors, keep-masks of the pruned ones).

    ``rules`` maps a name pattern (fnmatch; the first match wins) to one rule, e.g.
    ``{"fc1.*": {"sparsity": 0.92}, "conv*": {"quality": 0.7}}``; ``default`` applies to the others.
    Only tensors of rank >= 2 are pruned (never 1-D biases and norms); the rest are returned as they are.
    ``keep`` holds previous masks by name (see magnitude_mask).
    """
    rules = dict(rules or {})
    keep = dict(keep or {})
    out: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        x = np.asarray(value)
        rule = next((r for pattern, r in rules.items() if fnmatch.fnmatchcase(name, pattern)), default)
        if not rule or x.ndim < 2:
            out[name] = x
            continue
        unknown = set(rule) - {"sparsity", "threshold", "quality"}
        if unknown:
            raise EncodeError(f"tensor {name!r}: unknown pruning rule(s) {sorted(unknown)}", tensor=name)
        try:
            masks[name] = magnitude_mask(x, keep=keep.get(name), **rule)
        except EncodeError as e:
            raise EncodeError(str(e), tensor=name) from None
        out[name] = np.where(masks[name], x, np.zeros((), dtype=x.dtype))
    return out, masks
