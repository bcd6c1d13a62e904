"""The smallest file whose model output stays similar: a search over per-tensor steps, framework-free.

A caller gives the tensors, a similarity function (1.0 = the original model's outputs; higher is
better) measured on search inputs, optionally a second one on held-out inputs, and a target. Every
method is a family of files indexed by one number θ (larger θ: finer steps, bigger file, higher
similarity); the search bisects log θ for the smallest file meeting the target on the search inputs,
then steps back until the held-out similarity meets it too. Methods (policies a user can name):

- ``uniform``: one step for every weight matrix (`Policy(step=...)`).
- ``sensitivity``: steps scaled by 1/sqrt(measured sensitivity) (`allocation.scales_from_sensitivity`).
- ``rd``: rate-distortion allocation: for each tensor, bytes (Huffman size from level counts) and
  squared error at ~30 steps; output loss modelled as sensitivity × squared error; each tensor takes
  the step minimising bytes + θ·loss (a Lagrangian over the measured curves).
- ``gptq``: ``rd``'s steps, with weight matrices whose input Hessian X^T X is given rounded onto the
  same uniform grid with error feedback (GPTQ/OBQ, columns in descending Hessian-diagonal order)
  instead of to the nearest level.
- ``fisher``: ``gptq``, and each row of a tensor given row weights (a token-embedding matrix and how
  often the calibration text looks each token up: the rows' Fisher information, up to the gradient
  scale) gets its own step, tensor step × (weight + 1)^-1/2 normalised to geometric mean 1, clipped
  to [1/8, 8] and rounded to quarter octaves: frequent tokens fine, unseen ones coarse. Stored as
  per-row scales of the `shared` encoding (format 1.3, spec §5.2). Text unlike the calibration text
  (other words) loses more than with ``gptq``; the benchmark quotes both kinds of text.

A tensor rounded by ``gptq`` lies on its step's grid, so the encoder's uniform quantizer maps it to
the same levels and its codebook holds those exact values; only ``fisher``'s row scales are a field
on disk.
"""

from __future__ import annotations

import json
import math
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numba
import numpy as np

from .errors import EncodeError
from .policy import Policy
from .progress import Progress, ProgressEvent

__all__ = ["METHODS", "FitResult", "Family", "family", "fit_tensors", "gptq_round", "row_multipliers", "GPTQ_METHODS"]

METHODS = ("uniform", "sensitivity", "rd", "gptq", "fisher")
Similarity = Callable[[dict[str, np.ndarray]], float]

_RD_METHODS = ("rd", "gptq", "fisher")  # steps from measured rate-distortion curves
GPTQ_METHODS = ("gptq", "fisher")  # matrices with a Hessian rounded with error feedback
_RELATIVE_STEPS = 2.0 ** (np.arange(-48, 21) / 8.0)  # candidate steps, times the tensor's RMS: 1/64 .. 5.7
_MIN_SENSITIVITY = 0.01  # a tensor whose probe showed no loss still weighs this share of the median
_SEARCH_TRIES = 14  # similarity evaluations of the bisection (each: one decode and one model run)
_HELD_OUT_TRIES = 6  # finer settings tried when the held-out similarity misses the target
# fisher: a row's step factor is ((w + 1) / geometric mean)^-ROW_EXPONENT, w its weight (look-ups), the
# rate-distortion optimum for squared error weighted by w; within [1/ROW_SPREAD, ROW_SPREAD], in steps
# of 2^(1/ROW_RESOLUTION) so a few distinct scales serve every row. On MiniLM (9.6 MB gptq file at
# held-out prose 0.99071): exponent 0.4 / 0.5 / 0.6 (spread 16) at ~7.5 MB give 0.9898 / 0.9903 / 0.9907.
ROW_EXPONENT = 0.5
ROW_SPREAD = 8.0
ROW_RESOLUTION = 4


@dataclass
class FitResult:
    """The smallest file found: its tensors (as to be saved), its policy and what it reached."""

    tensors: dict[str, np.ndarray]
    policy: Policy
    method: str
    theta: float
    size: int  # exact bytes of the file (tensors, policy, metadata)
    similarity: float  # on the search inputs
    held_out: float | None  # on the held-out inputs (None: none given)
    metadata: dict[str, str]
    tries: list[dict] = field(default_factory=list)  # every setting tried: theta, estimated bytes, similarities
    seconds: float = 0.0


@numba.njit(cache=True, nogil=True)
def _level_stats(values, step, lo, counts, sums, squares):  # pragma: no cover - compiled
    """Count, sum and sum of squares (float64) of the values of each level floor(v / step + 0.5) - lo."""
    for i in range(values.size):
        v = np.float64(values[i])
        k = np.int64(math.floor(v / step + 0.5)) - lo
        counts[k] += 1
        sums[k] += v
        squares[k] += v * v


@numba.njit(cache=True, nogil=True)
def _gptq_block(w, hinv, step, q, err):  # pragma: no cover - compiled
    """GPTQ inside one block of columns: round column i, spread its error over the block's later columns."""
    rows, cols = w.shape
    for i in range(cols):
        d = hinv[i, i]
        for r in range(rows):
            v = w[r, i]
            level = math.floor(v / step + 0.5) * step
            q[r, i] = level
            e = (v - level) / d
            err[r, i] = e
            for j in range(i + 1, cols):
                w[r, j] -= e * hinv[i, j]


def gptq_round(weight: np.ndarray, hessian: np.ndarray, step: float, *, damp: float = 0.1,
               block: int = 128, act_order: bool = True) -> np.ndarray:
    """`weight` (out × in) rounded onto multiples of `step` with GPTQ error feedback under H = X^T X (in × in).

    Minimises ||(W - Q) X^T||² column by column (Frantar et al. 2022) rather than ||W - Q||²; `damp`
    times the mean diagonal is added to H so that it inverts, and so that the rounding does not fit the
    calibration text too closely (MiniLM at 9.7 MB: damp 0.01 / 0.1 / 1 give held-out prose 0.9901 /
    0.9906 / 0.9898 and everyday sentences 0.9868 / 0.9883 / 0.9885). `act_order`: the columns with the
    largest input energy go first, while the most later columns can absorb their error (MiniLM at
    9.6 MB: held-out 0.99071 -> 0.99117, everyday 0.98843 -> 0.98901). Returns float32 values k·step.
    """
    w = np.asarray(weight, dtype=np.float64)
    h = np.array(hessian, dtype=np.float64)
    if w.ndim != 2 or h.shape != (w.shape[1], w.shape[1]):
        raise EncodeError(f"gptq: a weight of shape {w.shape} needs a Hessian of shape ({w.shape[-1]}, {w.shape[-1]}), "
                          f"not {h.shape}")
    if not (math.isfinite(step) and step > 0) or not np.isfinite(h).all() or not np.isfinite(w).all():
        raise EncodeError("gptq: step, weight and Hessian must be finite (step positive)")
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(w.shape[1])
    w = w[:, order]  # a copy
    h = h[np.ix_(order, order)]
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    try:
        upper = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U
    except np.linalg.LinAlgError:
        raise EncodeError("gptq: the Hessian is not positive definite even after damping") from None
    q = np.zeros_like(w)
    n = w.shape[1]
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = np.ascontiguousarray(w[:, i1:i2])
        q1 = np.zeros_like(w1)
        e1 = np.zeros_like(w1)
        _gptq_block(w1, np.ascontiguousarray(upper[i1:i2, i1:i2]), float(step), q1, e1)
        q[:, i1:i2] = q1
        if i2 < n:
            w[:, i2:] -= e1 @ upper[i1:i2, i2:]
    out = np.empty_like(q, dtype=np.float32)
    out[:, order] = q
    return out


def row_multipliers(weights: np.ndarray) -> np.ndarray:
    """fisher's per-row step factors from row weights (e.g. token look-up counts): see ROW_EXPONENT."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size == 0 or not np.isfinite(w).all() or (w < 0).any():
        raise EncodeError("fit: row weights must be finite and non-negative, one per row")
    logs = -ROW_EXPONENT * (np.log(w + 1.0) - float(np.mean(np.log(w + 1.0))))
    limit = math.log(ROW_SPREAD)
    octaves = np.round(np.clip(logs, -limit, limit) / math.log(2.0) * ROW_RESOLUTION) / ROW_RESOLUTION
    return np.exp2(octaves)


@dataclass
class _Curve:
    """One tensor's rate-distortion curve over candidate steps."""

    steps: np.ndarray
    nbytes: np.ndarray
    sse: np.ndarray


def _curve(a: np.ndarray, rans: float | None = None) -> _Curve:
    """Estimated coded bytes and squared error of `a` at each candidate step (level-mean codebook);
    `rans`: the indices may be rANS-coded (Policy.rans_gain)."""
    from . import codec

    values = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    rms = float(np.sqrt(np.mean(values.astype(np.float64) ** 2)))
    steps, nbytes, sse = [], [], []
    top = float(np.max(np.abs(values)))
    for r in _RELATIVE_STEPS:
        step = float(r * rms)
        lo, hi = math.floor(-top / step + 0.5), math.floor(top / step + 0.5)
        if hi - lo + 1 > 1 << 16:
            continue
        counts = np.zeros(hi - lo + 1, np.int64)
        sums = np.zeros(hi - lo + 1, np.float64)
        squares = np.zeros(hi - lo + 1, np.float64)
        _level_stats(values, step, lo, counts, sums, squares)
        used = counts > 0
        c, s, s2 = counts[used], sums[used], squares[used]
        zero = (np.flatnonzero(used) + lo) == 0
        err = float(np.sum(s2 - np.where(zero, 0.0, s * s / c)))  # level 0 decodes to exactly 0
        width = max(1, int(len(c) - 1).bit_length())
        nbytes.append(codec.estimate_coded_bytes(np.sort(c)[::-1].copy(), values.size, width, rans=rans)
                      + 4 * len(c))
        steps.append(step)
        sse.append(max(err, 0.0))
    return _Curve(np.array(steps), np.array(nbytes, np.float64), np.array(sse))


class Family:
    """One method's files, indexed by θ: `steps(θ)`, `tensors(θ)` (what to save) and the decoded tensors."""

    def __init__(self, arrays: dict[str, np.ndarray], names: list[str], method: str, *,
                 sensitivities: Mapping[str, float] | None = None,
                 hessians: Mapping[str, np.ndarray] | None = None, base: Policy | None = None,
                 row_weights: Mapping[str, np.ndarray] | None = None, progress: Progress | None = None):
        if method not in METHODS:
            raise EncodeError(f"fit: method must be one of {METHODS}, not {method!r}")
        self.arrays, self.names, self.method = arrays, names, method
        self.base = (base or Policy()).with_(target_size=None, step=None, step_scales={})
        self.hessians = dict(hessians or {})
        self.rms = {n: float(np.sqrt(np.mean(arrays[n].astype(np.float64) ** 2))) or 1e-12 for n in names}
        self.sens = dict(sensitivities or {})
        self.multipliers: dict[str, np.ndarray] = {}  # fisher: per-row step factors of the weighted tensors
        if method == "fisher":
            for n, w in (row_weights or {}).items():
                if n in names and arrays[n].ndim == 2 and np.asarray(w).size == arrays[n].shape[0]:
                    self.multipliers[n] = row_multipliers(w)
        self._row_bytes: dict[tuple[str, float], float] = {}
        self.curves: dict[str, _Curve] = {}
        if method in _RD_METHODS:
            positive = [s for s in self.sens.values() if s > 0]
            floor = _MIN_SENSITIVITY * (float(np.median(positive)) if positive else 1.0)
            self.sens = {n: max(self.sens.get(n, 0.0), floor) for n in names}
            for i, n in enumerate(names):
                self.curves[n] = _curve(arrays[n], self.base.rans_gain)
                if progress is not None:
                    progress(ProgressEvent("fit", i + 1, len(names), tensor=n, message=f"rate-distortion curve of {n}"))
        if method == "sensitivity":
            from .allocation import scales_from_sensitivity

            self.scales = scales_from_sensitivity({n: self.sens.get(n, 0.0) for n in names})

    def start(self, min_similarity: float) -> float:
        """A θ to start from: the one whose modelled loss is the target's (rd), or a step of 1/4 of the RMS."""
        if self.method in _RD_METHODS:
            goal = max(1.0 - min_similarity, 1e-6)
            lo, hi = 1e-3, 1e15
            for _ in range(60):
                mid = math.sqrt(lo * hi)
                lo, hi = (mid, hi) if self.predicted_loss(mid) > goal else (lo, mid)
            return hi
        return 4.0

    def steps(self, theta: float) -> dict[str, float]:
        """The step of every quantized tensor at θ."""
        if self.method in _RD_METHODS:
            out = {}
            for n in self.names:
                c = self.curves[n]
                out[n] = float(c.steps[int(np.argmin(c.nbytes + theta * self.sens[n] * c.sse))])
            return out
        rms = float(np.sqrt(np.mean([self.rms[n] ** 2 for n in self.names])))
        scales = getattr(self, "scales", {})
        return {n: rms / theta * scales.get(n, 1.0) for n in self.names}

    def predicted_loss(self, theta: float) -> float:
        """The modelled similarity loss at θ (rd and gptq): sum of sensitivity × squared error."""
        total = 0.0
        for n in self.names:
            c = self.curves[n]
            total += self.sens[n] * float(c.sse[int(np.argmin(c.nbytes + theta * self.sens[n] * c.sse))])
        return total

    def estimated_bytes(self, theta: float) -> float:
        """The modelled bytes of the quantized tensors at θ (rd and gptq; NaN otherwise)."""
        if not self.curves:
            return math.nan
        total = 0.0
        for n, step in self.steps(theta).items():
            if n in self.multipliers:
                total += self._scaled_bytes(n, step)
                continue
            c = self.curves[n]
            total += float(c.nbytes[int(np.argmin(np.abs(c.steps - step)))])
        return total

    def _scaled_bytes(self, name: str, step: float) -> float:
        """Estimated coded bytes of a row-scaled tensor at `step` (its levels counted; cached)."""
        from . import codec

        key = (name, step)
        if key not in self._row_bytes:
            multipliers = self.multipliers[name]
            levels = np.floor(self.arrays[name] / (step * multipliers[:, None]) + 0.5).astype(np.int64).reshape(-1)
            symbols = levels - levels.min()
            counts = np.bincount(symbols)
            used = int(np.count_nonzero(counts))
            width = max(1, int(used - 1).bit_length())
            values, classes = np.unique(multipliers, return_inverse=True)
            indices = codec.estimate_coded_bytes(np.sort(counts[counts > 0])[::-1].copy(), levels.size, width,
                                                 rans=self.base.rans_gain)
            if self.base.rans_gain is not None and len(values) > 1 and used <= 1 << 16 and symbols.max() < 1 << 16:
                # rANS may give each scale class its own table
                per_class = codec.estimate_class_tables_bytes(symbols, classes, len(values))
                if per_class < (1 - self.base.rans_gain) * indices:
                    indices = per_class
            # codebook, scales, row_scales (~2 bits a row), indices
            self._row_bytes[key] = float(4 * used + 4 * len(values) + self.arrays[name].shape[0] // 4 + indices)
        return self._row_bytes[key]

    def policy(self, theta: float) -> Policy:
        """The policy that writes the file at θ: step 1 scaled per tensor to its step (fisher: and per row)."""
        return self.base.with_(step=1.0, step_scales=self.steps(theta), row_scales=dict(self.multipliers))

    def tensors(self, theta: float) -> dict[str, np.ndarray]:
        """The tensors to save at θ (gptq: Hessian-rounded matrices on their grid; otherwise the originals)."""
        if self.method not in GPTQ_METHODS:
            return self.arrays
        out = dict(self.arrays)
        for n, step in self.steps(theta).items():
            if n in self.hessians:
                out[n] = gptq_round(self.arrays[n], self.hessians[n], step).reshape(self.arrays[n].shape)
        return out

    def decoded(self, theta: float) -> dict[str, np.ndarray]:
        """The tensors exactly as the file at θ decodes them."""
        from . import quantize

        tensors = self.tensors(theta)
        out = dict(tensors)
        for n, step in self.steps(theta).items():
            if n in self.multipliers:
                codebook, indices, scales, classes = quantize.quantize_uniform_rows(tensors[n], step, self.multipliers[n])
                flat = codebook[indices]
                quantize.apply_row_scales(flat, scales, classes)  # as the reader decodes it (§5.2)
            else:
                codebook, indices = quantize.quantize_uniform(tensors[n], step)
                flat = codebook[indices]
            out[n] = flat.reshape(tensors[n].shape)
        return out


def _quantized_names(arrays: Mapping[str, np.ndarray], policy: Policy) -> list[str]:
    """The tensors a step quantizes under `policy` (weight matrices and conv kernels, not raw ones)."""
    probe = policy.with_(step=1.0, target_size=None, step_scales={})
    return [n for n, a in arrays.items() if a.size and (p := probe.plan(n, a)).step is not None
            and np.isfinite(a.astype(np.float32)).all()]


def family(tensors: Mapping[str, np.ndarray], similarity: Similarity, method: str = "gptq", *,
           hessians: Mapping[str, np.ndarray] | None = None, policy: Policy | None = None,
           row_weights: Mapping[str, np.ndarray] | None = None, progress: Progress | None = None) -> Family:
    """The family of files of one method (sensitivities measured with `similarity` when it needs them)."""
    from .allocation import sensitivity

    arrays = {n: np.asarray(v) for n, v in tensors.items()}
    base = (policy or Policy()).with_(target_size=None, step=None, step_scales={})
    names = _quantized_names(arrays, base)
    if not names:
        raise EncodeError("fit: no tensor is quantized under this policy (no float matrix): nothing to fit")
    sens = None
    if method != "uniform":
        done = [0]

        def tick(name: str) -> None:
            done[0] += 1
            if progress is not None:
                progress(ProgressEvent("fit", done[0], len(names), tensor=name, message=f"sensitivity of {name}"))

        sens = sensitivity(arrays, similarity, base.with_(step=1.0), progress=tick)
    return Family(arrays, names, method, sensitivities=sens, hessians=hessians, base=base, row_weights=row_weights,
                  progress=progress)


def fit_tensors(tensors: Mapping[str, np.ndarray], similarity: Similarity, min_similarity: float, *,
                held_out: Similarity | None = None, method: str = "gptq",
                hessians: Mapping[str, np.ndarray] | None = None, policy: Policy | None = None,
                row_weights: Mapping[str, np.ndarray] | None = None, data: str = "",
                progress: Progress | None = None) -> FitResult:
    """The smallest file of `method` whose similarity is >= min_similarity on the search and held-out inputs.

    `similarity(decoded tensors)` is measured on the search inputs, `held_out` (if given) on inputs
    the search did not see; the result records both, the policy and `data` (what the inputs were)
    in its metadata. `hessians` ({name: X^T X}) serve gptq and fisher, `row_weights` ({name: one
    non-negative weight per row, e.g. token look-up counts}) fisher. Raises EncodeError when even the finest setting misses the target.
    """
    if isinstance(min_similarity, bool) or not isinstance(min_similarity, (int, float)) \
            or not -1.0 <= min_similarity < 1.0:
        raise EncodeError(f"min_similarity must be a number in [-1, 1), not {min_similarity!r}")
    from .allocation import file_size

    clock = time.perf_counter()
    fam = family(tensors, similarity, method, hessians=hessians, policy=policy, row_weights=row_weights,
                 progress=progress)
    tries: list[dict] = []
    scores: dict[float, float] = {}

    def say(text: str) -> None:
        if progress is not None:
            progress(ProgressEvent("fit", 0, 0, message=text))

    def score(theta: float) -> float:
        if theta not in scores:
            try:
                scores[theta] = float(similarity(fam.decoded(theta)))
            except EncodeError:  # a step so fine that a tensor needs more than 2^16 levels
                scores[theta] = -math.inf
            tries.append({"theta": theta, "estimated_bytes": fam.estimated_bytes(theta), "similarity": scores[theta]})
            est = tries[-1]["estimated_bytes"]
            say(f"{method} θ={theta:.4g}: similarity {scores[theta]:.5f}"
                + (f", about {est:,.0f} B of quantized tensors" if math.isfinite(est) else "")
                + f" (try {len(tries)})")
        return scores[theta]

    # Bracket θ: lo misses the target, hi meets it.
    theta = fam.start(min_similarity)
    factor = 2.0
    if score(theta) >= min_similarity:
        hi = theta
        lo = theta / factor
        while score(lo) >= min_similarity:
            hi, lo = lo, lo / factor
            factor *= 2.0
            if lo < 1e-12:
                break
    else:
        lo = theta
        hi = theta * factor
        while score(hi) < min_similarity:
            lo, hi = hi, hi * factor
            factor *= 2.0
            if hi > 1e30 or len(tries) > _SEARCH_TRIES + 6:
                raise EncodeError(f"fit: similarity {min_similarity} is not reached by {method} even at its finest "
                                  f"setting (best {max(scores.values()):.5f} in {len(tries)} tries)")
    while len(tries) < _SEARCH_TRIES and hi / lo > 1.03:
        mid = math.sqrt(lo * hi)
        if fam.method in _RD_METHODS and fam.steps(mid) in (fam.steps(lo), fam.steps(hi)):
            break  # no tensor changes step between the ends: nothing left to find
        lo, hi = (lo, mid) if score(mid) >= min_similarity else (mid, hi)
    theta = hi
    kept = None
    if held_out is not None:
        held: dict[float, float] = {}

        def holds(t: float) -> bool:
            if t not in held:
                try:
                    held[t] = float(held_out(fam.decoded(t)))
                except EncodeError:
                    held[t] = -math.inf
                say(f"{method} θ={t:.4g}: held-out similarity {held[t]:.5f}")
            return held[t] >= min_similarity and score(t) >= min_similarity

        if not holds(theta):  # finer until both hold, then bisect between the two
            lo, hi = theta, theta * 1.25
            for _ in range(_HELD_OUT_TRIES):
                if holds(hi):
                    break
                lo, hi = hi, hi * 1.25
            else:
                raise EncodeError(f"fit: held-out similarity {max(held.values()):.5f} stays below {min_similarity} at "
                                  f"{_HELD_OUT_TRIES} finer settings: use more (or more varied) calibration inputs")
            for _ in range(3):
                mid = math.sqrt(lo * hi)
                lo, hi = (lo, mid) if holds(mid) else (mid, hi)
            theta = hi
        kept = held[theta]
    out_policy = fam.policy(theta)
    out_tensors = fam.tensors(theta)
    reached = score(theta)
    record = {"method": method, "min_similarity": min_similarity, "similarity": round(reached, 6),
              "held_out_similarity": None if kept is None else round(kept, 6), "data": data}
    metadata = {"dcformat.fit": json.dumps(record, sort_keys=True)}
    size = file_size(out_tensors, out_policy, metadata)
    say(f"{method}: {size:,} B at similarity {reached:.5f}" + ("" if kept is None else f", held out {kept:.5f}"))
    return FitResult(out_tensors, out_policy, method, theta, size, reached, kept, metadata, tries,
                     time.perf_counter() - clock)


class _CallableModule(types.ModuleType):
    """This module, callable: `dcformat.fit(model, inputs, min_similarity=...)` is interop.transformers_fit.fit."""

    def __call__(self, model, inputs, min_similarity: float = 0.99, **kwargs) -> FitResult:
        """The smallest file of a torch model's weights keeping held-out output similarity (see transformers_fit.fit)."""
        from .interop.transformers_fit import fit

        return fit(model, inputs, min_similarity, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
