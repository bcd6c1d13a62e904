"""Choosing quantization steps: a file-size target, a quality target, and steps by measured sensitivity.

With uniform quantization (`Policy(step=...)`) one number sets how small a file gets, so a target is
a one-dimensional search over it:

- `fit_size`: the largest file of at most `target_size` bytes (what `Policy(target_size=...)` does).
- `fit_quality`: the smallest file whose quality, measured by the caller's function on the decoded
  tensors (accuracy, embedding similarity, ...), is at least a given level.

One absolute step for every tensor minimises the total squared error for a file size, but tensors
differ in how much their error costs the model (in all-MiniLM-L6-v2 by a factor of 400 per unit of
squared error). `sensitivity` measures that cost per tensor with the caller's quality function, and
`scales_from_sensitivity` turns it into per-tensor step factors: at high rate the size-optimal step of
a tensor whose squared error costs s per unit is proportional to 1/sqrt(s).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from .errors import EncodeError
from .policy import Policy
from .progress import Progress as EventProgress, ProgressEvent

__all__ = ["fit_size", "file_size", "lossless_policy", "fit_quality", "sensitivity", "scales_from_sensitivity"]

Quality = Callable[[dict[str, np.ndarray]], float]
Progress = Callable[[str], None]

_SEARCH_STEPS = 40  # bisection halvings of log(step): ample for a ratio of 1.0005 over any bracket
_RATIO = 1.0005  # the search stops when the bracket's ends are this close


def _arrays(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value) for name, value in tensors.items()}


def _scaled_names(arrays: Mapping[str, np.ndarray], policy: Policy) -> list[str]:
    """The tensors whose step follows the policy's global step (not raw, not fixed by a rule)."""
    if policy.lossless:
        return []
    probe, other = policy.with_(step=1.0, target_size=None), policy.with_(step=2.0, target_size=None)
    return [name for name, a in arrays.items()
            if (p := probe.plan(name, a)).step is not None and p.step != other.plan(name, a).step]


def _start_step(arrays: Mapping[str, np.ndarray], names: list[str], policy: Policy) -> float:
    """The policy's step, or a tenth of the quantized tensors' RMS (about 5 bits per weight)."""
    if policy.step is not None:
        return float(policy.step)
    total = sum(float(np.sum(arrays[n].astype(np.float64) ** 2)) for n in names)
    count = sum(arrays[n].size for n in names)
    rms = math.sqrt(total / count) if count and math.isfinite(total) else 0.0
    return 0.1 * rms if rms > 0 else 1e-3


def _top(arrays: Mapping[str, np.ndarray], names: list[str], policy: Policy) -> float:
    """A step at which every scaled tensor is all level 0: past it the file cannot shrink further."""
    biggest = 0.0
    for n in names:
        a = arrays[n]
        if a.size:
            scale = policy.step_scales.get(n, 1.0)
            if n in policy.row_scales and policy.row_scales[n].size:  # the finest row's step (§5.2 row scales)
                scale *= float(np.min(policy.row_scales[n]))
            biggest = max(biggest, float(np.max(np.abs(a.astype(np.float32)))) / scale)
    return 4.0 * biggest if biggest > 0 and math.isfinite(biggest) else 1.0


class _ByteCounter:
    """A write-only sink that counts bytes: a file's size without holding the file in memory."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n


def file_size(tensors: Mapping[str, np.ndarray], policy: Policy, metadata: Mapping[str, str] | None = None,
              record: bool = False) -> int:
    """The exact size in bytes of the file `tensors` make under `policy` (no target size), without writing
    it; with `record`, of the file that also records its encoding (as model folders and the CLI write)."""
    from . import encoder
    from .container import write_stream

    if record:
        sink = _ByteCounter()
        sources = [(name, (lambda a=a: a)) for name, a in tensors.items()]
        encoder.write_file(sink, sources, policy, metadata, threads=1, record=True)
        return sink.size
    meta, tables, encoded = encoder.encode(tensors, policy, metadata)
    sink = _ByteCounter()
    write_stream(sink, meta, tables, encoded, compact_header=policy.compact_header)
    return sink.size


def lossless_policy(policy: Policy) -> Policy:
    """The policy that stores every tensor exactly, keeping the settings that do not change values."""
    return Policy(lossless=True, huffman=policy.huffman, block_size=policy.block_size,
                  compact_header=policy.compact_header, zero_copy=policy.zero_copy)


# The search's budget, so that it ends in bounded time on any model: each estimate drafts the
# quantized tensors once, each exact size also codes them (about one encode of the model).
_ESTIMATES = 48  # size estimates: geometric growth from the start step, then bisection to _ESTIMATE_RATIO
_ESTIMATE_RATIO = 1.01
_EXACT = 16  # exact sizes: three corrections of the estimates' overhead, then bracketing and bisection
_EXACT_RATIO = 1.002  # a step 0.2% apart changes the size by well under 0.1% at a few bits a weight


def fit_size(tensors: Mapping[str, Any], policy: Policy | None = None, target_size: int | None = None, *,
             metadata: Mapping[str, str] | None = None, progress: EventProgress | None = None,
             record: bool = False) -> Policy:
    """A policy with the largest step-scaled file of at most `target_size` bytes (default: policy.target_size).

    The policy's step (times its step_scales) is what is searched; tensors the policy keeps raw or
    gives a fixed step in a rule stay as they are. A target at or above the size of the exact
    (lossless) file gives the lossless policy. Raises EncodeError when even the coarsest step (every
    quantized weight 0) gives a larger file. The search is bounded: at most _ESTIMATES drafts and
    _EXACT encodes of the model. `progress` receives a ProgressEvent (stage "search") per size tried.
    The result has the step set (or lossless) and no target. `record`: sizes of files that record
    their encoding (`file_size`).
    """
    from . import codec

    policy = policy or Policy()
    target = policy.target_size if target_size is None else target_size
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise EncodeError(f"target_size must be a positive number of bytes, not {target!r}")
    arrays = _arrays(tensors)
    base = policy.with_(target_size=None)
    tries = [0]

    def report(step: float | None, size: float, kind: str) -> None:
        tries[0] += 1
        if progress is not None:
            what = "lossless" if step is None else f"step {step:.4g}"
            progress(ProgressEvent("search", 0, 0, message=f"{what}: {kind} {size:,.0f} B "
                                   f"(target {target:,} B, try {tries[0]})"))

    lossless = lossless_policy(base)
    size = file_size(arrays, lossless, metadata, record)
    report(None, size, "")
    if size <= target:
        return lossless
    names = _scaled_names(arrays, base)

    def exact(step: float) -> int:
        size = file_size(arrays, base.with_(step=step), metadata, record)
        report(step, size, "")
        return size

    if not names:
        step = policy.step if policy.step is not None else 1.0
        size = exact(step)
        if size > target:
            raise EncodeError(f"target size {target:,} B is unreachable: no tensor is quantized and the "
                              f"file takes {size:,} B")
        return base.with_(step=step)

    def estimate(step: float) -> float:
        """Sum of the scaled tensors' estimated sizes (inf if the step leaves too many levels)."""
        p = base.with_(step=step)
        total = 0
        for n in names:
            try:
                total += codec.draft_tensor(n, arrays[n], p.plan(n, arrays[n]), p.block_size).estimate(p.rans_gain)
            except EncodeError:
                return math.inf
        report(step, total, "about")
        return total

    top = _top(arrays, names, base)
    start = min(_start_step(arrays, names, base), top)
    # What the estimates leave out (header, raw tensors, fixed-step tensors, alignment), measured at
    # the coarsest step first and then again where the search lands, since it varies a little.
    smallest = exact(top)
    if smallest > target:
        raise EncodeError(f"target size {target:,} B is unreachable: with every quantized weight at 0 the "
                          f"file still takes {smallest:,} B")
    budget = _Budget(_ESTIMATES)
    overhead = smallest - estimate(top)
    step, exact_sizes = top, {top: smallest}
    for _ in range(3):
        step = _bisect_log(lambda s: overhead + estimate(s) <= target, start, top, 4.0, _ESTIMATE_RATIO, budget)
        if step in exact_sizes or len(exact_sizes) >= _EXACT:
            break
        size = exact_sizes[step] = _exact_or_inf(exact, step)
        if not math.isfinite(size) or abs(size - target) <= 0.002 * target:
            break
        overhead = size - estimate(step)

    # Exact sizes from here: bracket the step between one that does not fit and one that does.
    def fits(s: float) -> bool:
        if s not in exact_sizes:
            exact_sizes[s] = _exact_or_inf(exact, s)
        return exact_sizes[s] <= target

    found = _bisect_log(fits, step, top, 1.02, _EXACT_RATIO, _Budget(_EXACT - len(exact_sizes)))
    return base.with_(step=found if fits(found) else top)


def _exact_or_inf(exact: Callable[[float], int], step: float) -> float:
    try:
        return exact(step)
    except EncodeError:  # a step so fine that some tensor needs more than 2^16 levels
        return math.inf


class _Budget:
    """How many more evaluations a search may make."""

    def __init__(self, left: int):
        self.left = left

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


def _bisect_log(fits: Callable[[float], bool], start: float, top: float, factor: float, ratio: float,
                budget: _Budget) -> float:
    """About the smallest step that fits, searching geometrically from `start` (fits(top) is assumed).

    Grows (or shrinks) from `start` by `factor`, squaring the factor at each move so that any bracket
    is reached in few tries, then bisects log(step) until the ends are within `ratio`. Returns the
    smallest step seen to fit (or top), after at most budget.left calls of fits.
    """
    lo = hi = min(start, top)
    if not budget.take():
        return top
    if fits(hi):  # shrink until it does not fit
        while True:
            if hi < top * 2.0 ** -60 or not budget.take():
                return hi
            lo = hi / factor
            factor *= factor
            if not fits(lo):
                break
            hi = lo
    else:  # grow until it fits; top is assumed to
        while True:
            lo, hi = hi, min(hi * factor, top)
            factor *= factor
            if hi >= top:
                break
            if not budget.take():
                return top
            if fits(hi):
                break
    while hi / lo > ratio and budget.take():
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def fit_quality(tensors: Mapping[str, Any], quality: Quality, min_quality: float, policy: Policy | None = None, *,
                tolerance: float = 1.01, progress: Progress | None = None) -> Policy:
    """A policy with the largest step whose decoded tensors still score quality(...) >= min_quality.

    `quality` gets the tensors as the file will decode them (dcformat.compress) and returns a number,
    higher is better. The search assumes quality falls as the step grows and stops when the bracket's
    ends are within a factor `tolerance`. Raises EncodeError when even a step of 1/1000 of the
    starting one misses the target.
    """
    from .encoder import decoded

    policy = (policy or Policy()).with_(target_size=None)
    arrays = _arrays(tensors)
    names = _scaled_names(arrays, policy)
    if not names:
        raise EncodeError("no tensor is quantized with a step under this policy: nothing to fit")
    if not (isinstance(tolerance, (int, float)) and tolerance > 1.0):
        raise EncodeError(f"tolerance must be a number above 1, not {tolerance!r}")

    def score(step: float) -> float:
        try:
            value = float(quality(decoded(arrays, policy.with_(step=step))))
        except EncodeError:
            return -math.inf
        if progress is not None:
            progress(f"step {step:.6g}: quality {value:.6g}")
        return value

    start = _start_step(arrays, names, policy)
    top = _top(arrays, names, policy)
    lo = hi = min(start, top)
    if score(lo) >= min_quality:  # grow until it fails
        while hi < top and score(hi := min(hi * 2.0, top)) >= min_quality:
            lo = hi
        if lo >= top:
            return policy.with_(step=top)
    else:  # shrink until it holds
        while True:
            hi, lo = lo, lo / 2.0
            if lo < start * 1e-3:
                raise EncodeError(f"quality {min_quality} not reached even with step {lo:.3g}")
            if score(lo) >= min_quality:
                break
    while hi / lo > tolerance:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if score(mid) >= min_quality else (lo, mid)
    return policy.with_(step=lo)


def sensitivity(tensors: Mapping[str, Any], quality: Quality, policy: Policy | None = None, *,
                probe: float = 0.5, progress: Progress | None = None) -> dict[str, float]:
    """Quality lost per unit of squared error, for each tensor the policy quantizes with a step.

    Each tensor in turn is quantized alone with step = probe × its RMS (the rest exact), and
    (quality(original) − quality(perturbed)) / squared error is its sensitivity (0 if quality did
    not fall). Use a quality set apart from the one you report, as with any tuning.
    """
    from . import quantize

    policy = (policy or Policy()).with_(target_size=None)
    arrays = _arrays(tensors)
    names = _scaled_names(arrays, policy)
    if not (isinstance(probe, (int, float)) and 0 < probe < math.inf):
        raise EncodeError(f"probe must be a positive number, not {probe!r}")
    reference = float(quality(dict(arrays)))
    out: dict[str, float] = {}
    for name in names:
        a = arrays[name]
        values = a.astype(np.float64)
        rms = float(np.sqrt(np.mean(values * values))) if a.size else 0.0
        if rms == 0.0 or not math.isfinite(rms):
            out[name] = 0.0
            continue
        codebook, indices = quantize.quantize_uniform(a, probe * rms)
        decoded = codebook[indices].reshape(a.shape)
        sse = float(np.sum((decoded.astype(np.float64) - values) ** 2))
        drop = reference - float(quality({**arrays, name: decoded}))
        out[name] = max(drop, 0.0) / sse if sse > 0 else 0.0
        if progress is not None:
            progress(name)
    return out


def scales_from_sensitivity(sensitivities: Mapping[str, float], *, spread: float = 4.0) -> dict[str, float]:
    """Step factors 1/sqrt(s / median s), clipped to [1/spread, spread], for Policy(step_scales=...).

    A tensor whose error costs nothing (s = 0) gets the largest factor, `spread`, rather than an
    unbounded step: a quality measure rarely sees every use of a tensor.
    """
    if not (isinstance(spread, (int, float)) and 1.0 <= spread < math.inf):
        raise EncodeError(f"spread must be a finite number >= 1, not {spread!r}")
    values = {n: float(s) for n, s in sensitivities.items()}
    if any(not math.isfinite(s) or s < 0 for s in values.values()):
        raise EncodeError("sensitivities must be finite and non-negative")
    positive = [s for s in values.values() if s > 0]
    if not positive:
        return {n: 1.0 for n in values}
    median = float(np.median(positive))
    return {n: float(min(spread, max(1.0 / spread, math.sqrt(median / s)))) if s > 0 else float(spread)
            for n, s in values.items()}
