"""Compression policy: what to do with each tensor, by name pattern or by kind (conv, fc, other)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

import numpy as np

from . import constants as K
from .errors import EncodeError

AUTO = "auto"
HUFFMAN_MODES = ("auto", "shared", "off")
CODERS = ("auto", "rans", "huffman")  # Policy.coder
# coder "auto": rANS only where it saves at least this share of a stream's bytes. It decodes at about
# 3 ns a symbol where Huffman's multi-symbol tables take 0.6, and on k-means or uniform indices it
# saves 0.5% (MiniLM, default policy: 0.54%, load time x2.2); skewed streams (row-scaled embeddings,
# coarse steps, mostly-zero indices) save 5-10%.
RANS_MIN_GAIN = 0.02
QUANTIZERS = ("kmeans", "optimal", "ecsq")  # dcformat.quantize.METHODS
INITS = ("linear", "density", "random", "kmeans++")  # dcformat.quantize.INITS
RULE_KEYS = ("prune", "threshold", "bits", "index_bits", "layout", "raw", "quantizer", "init", "lam", "max_error", "step")
# Settings that change values (everything but the choice of exact form): what `lossless` contradicts.
LOSSY_RULE_KEYS = ("prune", "threshold", "bits", "quantizer", "init", "lam", "max_error", "step")


@dataclass(frozen=True)
class TensorPlan:
    """The settings chosen for one tensor."""

    encoding: str  # "raw", or "coded" (shared or sparse, whichever is smaller)
    prune: float = 0.0
    threshold: float | None = None
    bits: int | None = None  # None: no weight sharing (pruned values stored raw)
    index_bits: int | str = 5
    layout: str = AUTO
    quantizer: str = "kmeans"
    init: str = "linear"
    lam: float = 0.0
    max_error: float | None = None  # relative RMS error target: the fewest bits (up to `bits`) meeting it
    step: float | None = None  # uniform quantization with this step instead of a 2^bits codebook
    zero_copy: bool = False  # values kept exact are stored raw (memory-mappable), never in fields (§5.4)
    compact_header: bool = True  # the header will be zlib-compressed: fields count tables as zlib makes them
    rans: float | None = None  # rANS (§6.4, 1.4) where it saves this share of a stream; estimates count it
    # a step per row (§5.2 row scales, format 1.3): one float64 multiplier per row of the matrix view
    row_scales: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Policy:
    """Per-tensor compression settings (the paper's defaults: 8-bit conv, 5-bit fc, 5-bit indices).

    - `prune`: fraction of the smallest-magnitude weights set to zero in conv and fc tensors
      (0 = none: pruning without retraining costs accuracy, so it is asked for explicitly);
      `threshold` prunes weights of magnitude below it instead.
    - `conv_bits` / `fc_bits`: codebook index width for 4-D (and 3-D, 5-D) / 2-D tensors;
      None or 0 keeps values exact (a pruned tensor is then stored sparse with raw values);
      `bits` sets both.
    - `index_bits`: width b of the relative indices of sparse tensors (1..16, or "auto" to pick the
      smallest file); `layout`: "csr", "csc" or "auto" (whichever is smaller).
    - `raw`: name patterns (fnmatch) kept raw; non-float tensors are always raw, and so are 1-D
      tensors (biases, norms) and scalars unless `vector_bits` gives them a codebook of that many
      bits (not pruned by `prune`/`threshold`; rules apply to them as to other tensors).
    - `rules`: {pattern: {setting: value}} overrides for matching names, e.g.
      {"fc8.*": {"bits": 4, "prune": 0.75}}; the first matching pattern wins.
    - `huffman`: "auto" (a table per stream, fixed width when smaller), "shared" (one table per
      stream kind for the whole model) or "off".
    - `coder`: the entropy coder of the coded tensors' streams (codebook indices, gaps, row scales).
      rANS (§6.4, format 1.4) comes within a few thousandths of a bit of the entropy, where Huffman
      spends at least one bit per symbol, but decodes about 5x slower. "auto" uses it for a stream
      only where it saves at least RANS_MIN_GAIN (2%) of its bytes (skewed streams: row-scaled
      embeddings, coarse steps; a 5-bit k-means file keeps Huffman and its load speed); "rans" wherever
      it is smaller at all; "huffman" never, so files stay readable by format 1.3 readers, as the
      paper's Deep Compression codes them. The fields encoding (lossless) is Huffman-coded either way.
    - `lossless`: store every tensor exactly; contradicts any setting that changes values (prune,
      threshold, step, target_size, max_error, vector_bits, lossy rule settings), which is refused.
    - `quantizer`: how codebooks are chosen — "kmeans" (the paper's Lloyd, empty clusters re-seeded),
      "optimal" (least squares by dynamic programming) or "ecsq" (entropy-constrained: squared error +
      `lam`·σ²·bits, for Huffman-coded indices); `init`: k-means initialisation ("linear", "density",
      "random", "kmeans++"). All three may also be set per rule.
    - `max_error`: a quality target instead of a fixed width: each tensor gets the fewest codebook
      bits (1..16, whatever conv_bits / fc_bits say) whose relative RMS error
      ||decoded − original|| / ||original||, pruning included, is at most this (e.g. 0.03); 16 bits
      where none is (pruning alone may cost more than the target).
    - `step`: uniform quantization instead of k-means: every weight of a conv/fc tensor goes to the
      nearest multiple of `step` (the codebook holds each level's mean; as many levels as the weights
      span, so conv_bits / fc_bits do not apply) and Huffman codes the skewed indices. One absolute
      step for all tensors minimises the total squared error for the size; `step_scales`
      ({tensor name: factor}) gives a tensor step × factor instead, e.g. from
      `dcformat.allocation.scales_from_sensitivity`. A rule may set its own absolute "step".
    - `target_size`: the file size in bytes to aim at: saving searches the one step (times
      `step_scales`) that gives the largest file of at most this size (see dcformat.allocation.fit_size).
    - `row_scales`: {tensor name: 1-D float64 array of R multipliers, one per row of the tensor's
      matrix view (§5.3: d0 rows, one for a 1-D tensor or a scalar)}: a tensor the policy quantizes with
      a step gets row r's step as step × step_scales × multiplier r, stored as a shared tensor with row
      scales (format 1.3, §5.2; never sparse). Float32 and float64 tensors only. Multipliers must be
      finite and positive, at most 2^16 distinct, as many as the tensor has rows (EncodeError otherwise,
      when the tensor is planned). Tensors kept exact or coded without a step ignore them.
    - `compact_header`: store the header zlib-compressed (format 1.1) when that makes the file smaller;
      False always writes a JSON header (format 1.0, readable by 1.0 readers).
    - `zero_copy`: name patterns (fnmatch; "*" for all) of tensors kept exact that are stored raw, so
      that a reader can memory-map them and use them in place. Every other tensor kept exact (lossless,
      `raw` patterns, 1-D tensors, non-float and non-finite tensors) is stored in the fields encoding
      (format 1.2, §5.4) whenever that is smaller than raw (with huffman="off", always raw).
    """

    prune: float = 0.0
    conv_bits: int | None = 8
    fc_bits: int | None = 5
    index_bits: int | str = 5
    layout: str = AUTO
    raw: tuple[str, ...] = ()
    bits: int | None = field(default=None, repr=False)
    threshold: float | None = None
    rules: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    huffman: str = "auto"
    coder: str = "auto"
    lossless: bool = False
    block_size: int = K.DEFAULT_BLOCK_SIZE
    quantizer: str = "kmeans"
    init: str = "linear"
    lam: float = 0.0
    max_error: float | None = None
    step: float | None = None
    step_scales: Mapping[str, float] = field(default_factory=dict)
    target_size: int | None = None
    vector_bits: int | None = None
    compact_header: bool = True
    zero_copy: tuple[str, ...] = ()
    row_scales: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.bits is not None:
            object.__setattr__(self, "conv_bits", self.bits)
            object.__setattr__(self, "fc_bits", self.bits)
            object.__setattr__(self, "bits", None)
        if isinstance(self.raw, str):
            object.__setattr__(self, "raw", (self.raw,))
        object.__setattr__(self, "raw", tuple(self.raw))
        if isinstance(self.zero_copy, str):
            object.__setattr__(self, "zero_copy", (self.zero_copy,))
        object.__setattr__(self, "zero_copy", tuple(self.zero_copy))
        if not all(isinstance(p, str) for p in self.zero_copy):
            raise EncodeError(f"policy: zero_copy must be name patterns (strings), not {self.zero_copy!r}")
        object.__setattr__(self, "rules", dict(self.rules))
        _check_settings(self.prune, self.threshold, self.conv_bits, self.index_bits, self.layout, "policy")
        _check_settings(self.prune, self.threshold, self.fc_bits, self.index_bits, self.layout, "policy")
        if self.huffman not in HUFFMAN_MODES:
            raise EncodeError(f"policy: huffman must be one of {HUFFMAN_MODES}, not {self.huffman!r}")
        if self.coder not in CODERS:
            raise EncodeError(f"policy: coder must be one of {CODERS}, not {self.coder!r}")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise EncodeError(f"policy: block_size must be a positive integer, not {self.block_size!r}")
        _check_quantizer(self.quantizer, self.init, self.lam, "policy")
        _check_max_error(self.max_error, "policy")
        object.__setattr__(self, "step_scales", dict(self.step_scales))
        if self.vector_bits is not None and self.vector_bits != 0 and (
                isinstance(self.vector_bits, bool) or not isinstance(self.vector_bits, int)
                or not K.MIN_BITS <= self.vector_bits <= K.MAX_BITS):
            raise EncodeError(f"policy: vector_bits must be 1..16 (or 0/None: 1-D tensors raw), not {self.vector_bits!r}")
        _check_step(self.step, self.max_error, "policy")
        if not isinstance(self.compact_header, bool):
            raise EncodeError(f"policy: compact_header must be True or False, not {self.compact_header!r}")
        for name, scale in self.step_scales.items():
            if not isinstance(name, str) or isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                    or not 0.0 < scale < float("inf"):
                raise EncodeError(f"policy: step_scales must map tensor names to finite positive factors, "
                                  f"not {name!r}: {scale!r}")
        if not isinstance(self.row_scales, Mapping):
            raise EncodeError(f"policy: row_scales must map tensor names to arrays of row multipliers, "
                              f"not {type(self.row_scales).__name__}")
        checked = {}
        for name, multipliers in self.row_scales.items():
            if not isinstance(name, str):
                raise EncodeError(f"policy: row_scales must map tensor names (strings) to arrays, not {name!r}")
            checked[name] = _check_row_multipliers(multipliers, name)
        object.__setattr__(self, "row_scales", checked)
        if self.target_size is not None and (isinstance(self.target_size, bool) or not isinstance(self.target_size, int)
                                             or self.target_size < 1):
            raise EncodeError(f"policy: target_size must be a positive number of bytes, not {self.target_size!r}")
        for pattern, settings in self.rules.items():
            if not isinstance(settings, Mapping):
                raise EncodeError(f"policy rule {pattern!r}: settings must be a mapping, not {settings!r}")
            unknown = set(settings) - set(RULE_KEYS)
            if unknown:
                raise EncodeError(f"policy rule {pattern!r}: unknown setting(s) {sorted(unknown)} "
                                  f"(known: {', '.join(RULE_KEYS)})")
            _check_settings(
                settings.get("prune", 0.0), settings.get("threshold"), settings.get("bits"),
                settings.get("index_bits", 5), settings.get("layout", AUTO), f"policy rule {pattern!r}",
            )
            _check_quantizer(settings.get("quantizer", "kmeans"), settings.get("init", "linear"),
                             settings.get("lam", 0.0), f"policy rule {pattern!r}")
            _check_max_error(settings.get("max_error"), f"policy rule {pattern!r}")
            _check_step(settings.get("step"), settings.get("max_error"), f"policy rule {pattern!r}")
            if settings.get("max_error") is not None and settings.get("bits") is not None:
                raise EncodeError(f"policy rule {pattern!r}: give bits or a max_error, not both "
                                  "(max_error chooses the width)")
        self._check_contradictions()

    def _check_contradictions(self) -> None:
        """Refuse settings that cannot all hold, naming both (each alone was checked above)."""
        if self.lossless:
            lossy = [f"{k}={getattr(self, k)!r}" for k in ("prune", "threshold", "step", "target_size", "max_error",
                                                          "vector_bits") if getattr(self, k)]
            lossy += [f"rule {p!r} sets {k}" for p, r in self.rules.items() for k in LOSSY_RULE_KEYS if k in r]
            if lossy:
                raise EncodeError(f"policy: lossless=True stores every tensor exactly, which contradicts {lossy[0]}")
        if self.target_size is not None and self.step is not None:
            raise EncodeError("policy: give a step or a target_size, not both (the target size chooses the step)")
        if self.target_size is not None and self.max_error is not None:
            raise EncodeError("policy: give a target_size or a max_error, not both (one fixes the size, the other "
                              "the error)")

    def plan(self, name: str, array: np.ndarray) -> TensorPlan:
        """Decide how to store the tensor `name`."""
        try:
            dtype = dtype_name(array.dtype)
        except EncodeError as e:
            raise EncodeError(str(e), tensor=name) from None
        multipliers = self.row_scales.get(name)
        if multipliers is not None:
            shape = tuple(array.shape)
            rows = 1 if len(shape) <= 1 else (0 if shape[0] == 0 else shape[0])
            if multipliers.size != rows:
                raise EncodeError(f"policy: row_scales gives {multipliers.size} multipliers for tensor {name!r}, "
                                  f"whose shape {list(shape)} has {rows} rows", tensor=name)
        plan = self._plan(name, array, dtype)
        if multipliers is None or plan.step is None:
            return plan
        if dtype not in K.ROW_SCALE_DTYPES:
            raise EncodeError(f"policy: row_scales for tensor {name!r}: row scales are only for float32 and float64 "
                              f"tensors, not {dtype} (§5.2)", tensor=name)
        return replace(plan, row_scales=multipliers)

    def _plan(self, name: str, array: np.ndarray, dtype: str) -> TensorPlan:
        """`plan` without row scales."""
        zero_copy = self.huffman == "off" or any(fnmatch.fnmatchcase(name, p) for p in self.zero_copy)
        exact = TensorPlan(K.RAW, zero_copy=zero_copy, compact_header=self.compact_header)  # raw or fields
        if self.lossless or dtype not in K.FLOAT_DTYPES:
            return exact
        if any(fnmatch.fnmatchcase(name, p) for p in self.raw):
            return exact
        if array.ndim <= 1:
            if not self.vector_bits:
                return exact  # biases and norms stay exact unless vector_bits is set
            # a codebook only: the model-wide pruning and step are meant for weight matrices
            settings: dict[str, Any] = dict(
                prune=0.0, threshold=None, bits=self.vector_bits, index_bits=self.index_bits, layout=self.layout,
                quantizer=self.quantizer, init=self.init, lam=self.lam, max_error=None, step=None)
        else:
            settings = dict(
                prune=self.prune, threshold=self.threshold, bits=self.fc_bits if array.ndim == 2 else self.conv_bits,
                index_bits=self.index_bits, layout=self.layout, quantizer=self.quantizer, init=self.init,
                lam=self.lam, max_error=self.max_error,
                step=None if self.step is None else self.step * self.step_scales.get(name, 1.0),
            )
        rule = next((r for pattern, r in self.rules.items() if fnmatch.fnmatchcase(name, pattern)), {})
        if rule.get("raw"):
            return exact
        settings.update({k: v for k, v in rule.items() if k != "raw"})
        bits = settings["bits"] or None
        if settings["max_error"] is not None and settings["step"] is None and "bits" not in rule:
            bits = K.MAX_BITS  # the target, not a default width, decides: as far as it must go
        if settings["step"] is not None:
            if settings["max_error"] is not None:
                raise EncodeError(f"tensor {name!r}: give a step or a max_error, not both")
            bits = None  # the step, not a width, sets the levels
        elif bits is None and not settings["prune"] and settings["threshold"] is None:
            return exact
        return TensorPlan(
            "coded", prune=float(settings["prune"]), threshold=settings["threshold"], bits=bits,
            index_bits=settings["index_bits"], layout=settings["layout"], quantizer=settings["quantizer"],
            init=settings["init"], lam=float(settings["lam"]), max_error=settings["max_error"],
            step=None if settings["step"] is None else float(settings["step"]), zero_copy=zero_copy,
            rans=self.rans_gain,
        )

    @property
    def rans_gain(self) -> float | None:
        """The share of a stream's bytes rANS must save to be used (coder "auto": RANS_MIN_GAIN, "rans":
        any), or None: never (coder "huffman", or huffman="off")."""
        if self.coder == "huffman" or self.huffman == "off":
            return None
        return RANS_MIN_GAIN if self.coder == "auto" else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The settings that differ from the defaults, JSON-safe (what a file records of its policy)."""
        default = Policy()
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "bits":
                continue
            value = getattr(self, f.name)
            if f.name == "row_scales":  # a summary, not the arrays: distinct multipliers per tensor
                if value:
                    out[f.name] = {name: int(np.unique(m).size) for name, m in value.items()}
                continue
            if value != getattr(default, f.name):
                out[f.name] = list(value) if isinstance(value, tuple) else (dict(value) if isinstance(value, Mapping) else value)
        return out

    def with_(self, **changes: Any) -> "Policy":
        """A copy with some settings changed."""
        return replace(self, **changes)


def _check_settings(prune: Any, threshold: Any, bits: Any, index_bits: Any, layout: Any, what: str) -> None:
    if not isinstance(prune, (int, float)) or not 0.0 <= prune <= 1.0:
        raise EncodeError(f"{what}: prune must be a fraction in [0, 1], not {prune!r}")
    if threshold is not None and (not isinstance(threshold, (int, float)) or not threshold >= 0):
        raise EncodeError(f"{what}: threshold must be a non-negative number, not {threshold!r}")
    if prune and threshold is not None:
        raise EncodeError(f"{what}: give prune or threshold, not both")
    if bits is not None and bits != 0 and (not isinstance(bits, int) or not K.MIN_BITS <= bits <= K.MAX_BITS):
        raise EncodeError(f"{what}: bits must be 1..16 (or 0/None for no weight sharing), not {bits!r}")
    if index_bits != AUTO and (not isinstance(index_bits, int) or not K.MIN_BITS <= index_bits <= K.MAX_BITS):
        raise EncodeError(f"{what}: index_bits must be 1..16 or 'auto', not {index_bits!r}")
    if layout not in (AUTO, K.CSR, K.CSC):
        raise EncodeError(f"{what}: layout must be 'csr', 'csc' or 'auto', not {layout!r}")


def _check_row_multipliers(multipliers: Any, name: str) -> np.ndarray:
    """A tensor's row multipliers as a read-only 1-D float64 array: finite, positive, at most 2^16 distinct."""
    if isinstance(multipliers, (str, bytes, bool)) or multipliers is None:
        raise EncodeError(f"policy: row_scales for tensor {name!r} must be a 1-D array of multipliers, "
                          f"not {multipliers!r}", tensor=name)
    try:
        m = np.array(multipliers, dtype=np.float64)
    except (TypeError, ValueError):
        raise EncodeError(f"policy: row_scales for tensor {name!r} must be a 1-D array of numbers", tensor=name) from None
    if m.ndim != 1:
        raise EncodeError(f"policy: row_scales for tensor {name!r} must be 1-D, not shape {list(m.shape)}", tensor=name)
    if not (np.isfinite(m).all() and (m > 0).all()):
        raise EncodeError(f"policy: row_scales for tensor {name!r} must be finite and positive", tensor=name)
    if np.unique(m).size > K.MAX_ALPHABET:
        raise EncodeError(f"policy: row_scales for tensor {name!r} has more than {K.MAX_ALPHABET} distinct "
                          "multipliers", tensor=name)
    m.flags.writeable = False
    return m


def _check_max_error(max_error: Any, what: str) -> None:
    if max_error is not None and (isinstance(max_error, bool) or not isinstance(max_error, (int, float))
                                  or not 0.0 <= max_error < float("inf")):
        raise EncodeError(f"{what}: max_error must be a finite non-negative number or None, not {max_error!r}")


def _check_step(step: Any, max_error: Any, what: str) -> None:
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float))
                             or not 0.0 < step < float("inf")):
        raise EncodeError(f"{what}: step must be a finite positive number or None, not {step!r}")
    if step is not None and max_error is not None:
        raise EncodeError(f"{what}: give a step or a max_error, not both")


def _check_quantizer(quantizer: Any, init: Any, lam: Any, what: str) -> None:
    if quantizer not in QUANTIZERS:
        raise EncodeError(f"{what}: quantizer must be one of {QUANTIZERS}, not {quantizer!r}")
    if init not in INITS:
        raise EncodeError(f"{what}: init must be one of {INITS}, not {init!r}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam < float("inf"):
        raise EncodeError(f"{what}: lam must be a finite non-negative number, not {lam!r}")


def dtype_name(dtype: np.dtype) -> str:
    """The spec's name (§3.2) of a numpy dtype; raise EncodeError for unsupported ones."""
    dtype = np.dtype(dtype)
    name = "bfloat16" if dtype.name == "bfloat16" else dtype.name
    if name not in K.DTYPE_SIZES:
        raise EncodeError(f"dtype {dtype} is not supported (supported: {', '.join(K.DTYPE_SIZES)})")
    return name
