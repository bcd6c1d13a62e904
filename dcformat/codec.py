"""Tensors to sections and back: the encodings of spec §5 on top of the stream codings of §6.

Encoding goes in two steps: `draft_tensor` applies the lossy policy (pruning, weight sharing) and
picks the cheapest lossless form (raw, shared, sparse CSR/CSC), leaving its symbol streams uncoded;
`assemble` then codes every stream (Huffman or fixed width, whichever is smaller) and builds the
tensors ready for `container.write_stream`. Decoding is `decode_tensor`.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import constants as K
from . import pool
from .container import EncodedTensor, Stream, TensorInfo, check_section
from .errors import CorruptDataError, DCFError, EncodeError
from .policy import AUTO, TensorPlan, dtype_name

INDEX_BITS_CANDIDATES = tuple(range(1, 13))  # tried by index_bits="auto"


class _Kernels:
    """A module of numba kernels, imported on first use: a file of raw tensors decodes without numba
    (importing it costs ~0.3 s of a cold process). The first attribute read puts the real module in
    this module's globals, so later calls pay nothing."""

    def __init__(self, name: str, alias: str):
        self._name, self._alias = name, alias

    def __getattr__(self, attr: str) -> Any:
        import importlib

        module = importlib.import_module(f".{self._name}", __package__)
        globals()[self._alias] = module
        return getattr(module, attr)


bitpack = _Kernels("bitpack", "bitpack")
fieldcoding = _Kernels("fields", "fieldcoding")
huffman = _Kernels("huffman", "huffman")
pruning = _Kernels("prune", "pruning")
quantize = _Kernels("quantize", "quantize")
ranscoding = _Kernels("rans", "ranscoding")
relindex = _Kernels("relindex", "relindex")


def numpy_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype of a spec dtype name (§3.2)."""
    if name == "bfloat16" or name in K.FLOAT8_DTYPES:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name).newbyteorder("<") if np.dtype(name).itemsize > 1 else np.dtype(name)


def _bits_view(a: np.ndarray) -> np.ndarray:
    """The array's elements as unsigned integers of the same size (bit patterns)."""
    return a.view(np.dtype(f"<u{a.dtype.itemsize}"))


# ---------------------------------------------------------------------------------------------
# Streams


@dataclass
class StreamDraft:
    """A symbol stream before coding."""

    kind: str  # "indices" or "gaps"
    symbols: np.ndarray  # uint16
    alphabet: int
    width: int
    counts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.counts = huffman.symbol_counts(self.symbols)

    @property
    def fixed_bytes(self) -> int:
        return bitpack.packed_size(len(self.symbols), self.width)


def rans_gain(rans: float | bool | None) -> float | None:
    """The share of a stream's bytes rANS must save to be chosen (`Policy.rans_gain`), None for never;
    True means any saving, False never (for callers that only switch it on or off)."""
    if rans is None or rans is False:
        return None
    return 0.0 if rans is True else float(rans)


def estimate_stream_bytes(draft: StreamDraft, header_cost: int = K.HUFFMAN_ZLIB_COST, *,
                          rans: float | bool | None = None) -> int:
    """Bytes the stream will take, coded the cheapest way (table text and, for Huffman and rANS, the
    `header_cost` bytes its stream object adds to the header counted); rANS as `rans_gain(rans)` says."""
    return estimate_coded_bytes(draft.counts, len(draft.symbols), draft.width, header_cost, rans=rans)


def estimate_coded_bytes(counts: np.ndarray, n: int, width: int, header_cost: int = K.HUFFMAN_ZLIB_COST, *,
                         rans: float | bool | None = None) -> int:
    """`estimate_stream_bytes` of a stream known only by its symbol counts, length and fixed width."""
    best = bitpack.packed_size(n, width)
    if n == 0:
        return best
    if np.count_nonzero(counts) <= (1 << K.MAX_CODE_LENGTH):
        lengths = huffman.code_lengths(counts)
        payload = -(-huffman.encoded_bits(counts, lengths) // 8)
        best = min(best, payload + len(huffman.lengths_to_hex(lengths)) + 8 + header_cost)
    gain = rans_gain(rans)
    if gain is not None:
        coded = _rans_estimate(counts, n, K.DEFAULT_BLOCK_SIZE, header_cost)
        if coded < (1 - gain) * best:
            best = coded
    return best


def estimate_class_tables_bytes(symbols: np.ndarray, classes: np.ndarray, m: int,
                                header_cost: int = K.HUFFMAN_ZLIB_COST) -> int:
    """Bytes of a row-scaled tensor's indices rANS-coded with one table per class (§6.4): `symbols`
    flat (C order), `classes` one per row. Each class's own table counted as its text."""
    rows = np.asarray(classes).reshape(-1)
    cols = len(symbols) // max(1, rows.size)
    counts = ranscoding.row_class_counts(np.asarray(symbols, np.int64).astype(np.uint16), rows, cols, m)
    total = header_cost + (ranscoding.STATE_BYTES + 6) * -(-len(symbols) // K.DEFAULT_BLOCK_SIZE)
    for c in counts:
        if c.any():
            freqs = ranscoding.normalize(c)
            total += ranscoding.coded_bits(c, freqs) / 8 + 4 * freqs.size
    return int(total)


def _rans_estimate(counts: np.ndarray, n: int, block_size: int, header_cost: int) -> int:
    """Section, table text and header bytes of a rANS stream with these counts (a large number if none)."""
    estimate = ranscoding.estimate_bytes(counts, n, block_size)
    if estimate is None:
        return 1 << 62
    payload, freqs = estimate
    return payload + 4 * freqs.size + 4 * -(-n // block_size) + header_cost


def code_stream(draft: StreamDraft, mode: str, block_size: int, shared_lengths: np.ndarray | None = None,
                header_cost: int = K.HUFFMAN_ZLIB_COST, table_cost: Callable[[str], int] = len, *,
                rans: float | bool | None = None, rows: tuple[np.ndarray, int, int] | None = None
                ) -> tuple[dict, bytes, str | None]:
    """Code a stream: (stream object with "table" as hex text, payload, table text or None).

    Huffman is chosen only when its payload, table text, 4 bytes per block and `header_cost` (the
    header bytes a Huffman stream object adds over a fixed one: K.HUFFMAN_JSON_COST for a JSON
    header, K.HUFFMAN_ZLIB_COST for a compressed one) come to fewer bytes than fixed width.
    `table_cost(text)`: the bytes a new table is counted as (its length; the fields encoding may count
    what zlib makes of it, `fields.zlib_table_cost`). With `rans` (see `rans_gain`), rANS (§6.4, format
    1.4) is offered too, on the same terms, and kept where it saves at least that share of the bytes;
    its table is text inside the stream object (the third item stays None).
    `rows` = (class of each row, symbols per row, number of classes), for the indices of a shared
    tensor with row scales: rANS may then use one table per class (§6.4).
    """
    fixed = bitpack.pack(draft.symbols, draft.width)
    best: tuple[dict, bytes, str | None] = ({"coding": K.FIXED, "section": None}, fixed, None)
    n = len(draft.symbols)
    if mode == "off" or n == 0:
        return best
    candidates = []
    if np.count_nonzero(draft.counts) <= (1 << K.MAX_CODE_LENGTH):
        candidates.append(huffman.code_lengths(draft.counts))
    if shared_lengths is not None and len(huffman.lengths_to_hex(shared_lengths)) <= draft.alphabet:
        used = np.nonzero(draft.counts)[0]
        if used[-1] < len(shared_lengths) and np.all(shared_lengths[used] > 0):
            candidates.append(shared_lengths)
    best_size = len(fixed)
    for lengths in candidates:
        text = huffman.lengths_to_hex(lengths)
        extra = (0 if lengths is shared_lengths else table_cost(text)) + header_cost
        if -(-huffman.encoded_bits(draft.counts, lengths) // 8) + extra >= best_size:
            continue
        payload, block_bytes = huffman.encode(draft.symbols, lengths, block_size)
        size = len(payload) + extra + 4 * len(block_bytes)
        if size < best_size:
            obj = {"coding": K.HUFFMAN, "section": None, "table": text, "block_size": block_size, "block_bytes": block_bytes}
            best, best_size = (obj, payload, text), size
    gain = rans_gain(rans)
    if gain is not None:
        to_beat = int((1 - gain) * best_size)  # rANS must come to fewer bytes than this
        best, size = _rans_candidate(draft, block_size, header_cost, table_cost, best, to_beat)
        if rows is not None:
            best, size = _rans_classes_candidate(draft, block_size, header_cost, table_cost, best, min(size, to_beat),
                                                 rows)
    return best


def _rans_classes_candidate(draft: StreamDraft, block_size: int, header_cost: int,
                            table_cost: Callable[[str], int], best: tuple[dict, bytes, str | None], best_size: int,
                            rows: tuple[np.ndarray, int, int]) -> tuple[tuple[dict, bytes, str | None], int]:
    """`best`, or the stream rANS-coded with one table per row class (§6.4) if that is smaller.

    A class takes its own table where that saves more than the table's text costs, else the table of
    all rows (whose copies a compressed header stores as back-references: counted 8 bytes each)."""
    classes, cols, m = rows
    n = len(draft.symbols)
    if n == 0 or m < 2 or not ranscoding.usable(draft.counts):
        return best, best_size
    counts = ranscoding.row_class_counts(draft.symbols, classes, cols, m)
    overall = ranscoding.normalize(draft.counts)
    overall_text = ranscoding.frequencies_to_hex(overall)
    copy_cost = 8 if header_cost <= K.HUFFMAN_ZLIB_COST else len(overall_text)
    tables, texts, table_bytes, bits = [], [], table_cost(overall_text), 0.0
    for j in range(m):
        c = counts[j]
        shared_bits = ranscoding.coded_bits(c, overall)
        own = ranscoding.normalize(c) if c.any() else None
        own_text = ranscoding.frequencies_to_hex(own) if own is not None else ""
        own_bits = ranscoding.coded_bits(c, own) if own is not None else float("inf")
        if own is not None and own_bits / 8 + table_cost(own_text) < shared_bits / 8 + copy_cost:
            tables.append(own), texts.append(own_text)
            table_bytes, bits = table_bytes + table_cost(own_text), bits + own_bits
        else:
            tables.append(overall), texts.append(overall_text)
            table_bytes, bits = table_bytes + copy_cost, bits + shared_bits
    nblocks = -(-n // block_size)
    if bits / 8 + (ranscoding.STATE_BYTES + 6) * nblocks + table_bytes + header_cost >= best_size:
        return best, best_size
    payload, block_bytes = ranscoding.encode(draft.symbols, tables, block_size, rows=(classes, cols))
    size = len(payload) + 4 * len(block_bytes) + header_cost + table_bytes
    if size >= best_size:
        return best, best_size
    obj = {"coding": K.RANS, "section": None, "frequencies": texts, "block_size": block_size,
           "block_bytes": block_bytes}
    return (obj, payload, None), size


def _rans_candidate(draft: StreamDraft, block_size: int, header_cost: int, table_cost: Callable[[str], int],
                    best: tuple[dict, bytes, str | None], best_size: int
                    ) -> tuple[tuple[dict, bytes, str | None], int]:
    """`best`, or the stream rANS-coded if that is smaller all counted (payload, table text inside the
    stream object, header bytes, 4 per block): coded only when its estimate says it may win."""
    n = len(draft.symbols)
    estimate = ranscoding.estimate_bytes(draft.counts, n, block_size)
    if estimate is None:
        return best, best_size
    payload_estimate, freqs = estimate
    text = ranscoding.frequencies_to_hex(freqs)
    extra = table_cost(text) + header_cost
    if payload_estimate + extra + 4 * -(-n // block_size) >= best_size:
        return best, best_size
    payload, block_bytes = ranscoding.encode(draft.symbols, freqs, block_size)
    size = len(payload) + extra + 4 * len(block_bytes)
    if size >= best_size:
        return best, best_size
    obj = {"coding": K.RANS, "section": None, "frequencies": text, "block_size": block_size,
           "block_bytes": block_bytes}
    return (obj, payload, None), size


def decode_stream(buf: Any, stream: Stream, tables: "TableCache", tensor: str, key: str,
                  rows: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """Decode a stream's symbols (uint16), checking its CRC first. `rows` = (class of each row, symbols
    per row): the row classes a rANS stream with one table per class (§6.4) needs."""
    data = check_section(buf, stream.section, key, tensor)
    try:
        if stream.coding == K.FIXED:
            return bitpack.unpack(data, stream.count, stream.width, stream.alphabet)
        if stream.coding == K.RANS:
            freqs, rows = _rans_tables(stream, tables, rows)
            return ranscoding.decode(data, stream.count, freqs, min(stream.block_size, max(1, stream.count)),
                                     list(stream.block_bytes), rows=rows)
        lengths = tables.get(stream.table)
        # A block_size beyond the count means one block (§6.3); clamping keeps a hostile 2**64 out of
        # the int64 arithmetic of the decoder without changing the meaning.
        block_size = min(stream.block_size, max(1, stream.count))
        return huffman.decode(data, stream.count, lengths, block_size, list(stream.block_bytes))
    except DCFError as e:
        raise CorruptDataError(f"stream {key!r}: {e}", tensor=tensor, offset=stream.section.offset) from None


def _rans_tables(stream: Stream, tables: "TableCache", rows: tuple[np.ndarray, int] | None):
    """(table or tables, rows) of a rANS stream: rows only for a stream with one table per class."""
    if isinstance(stream.frequencies, str):
        return tables.frequencies(stream.frequencies), None
    if rows is None:  # pragma: no cover - the container allows class tables only where rows exist
        raise CorruptDataError("a rANS stream with one table per row class needs its rows' classes")
    # Decoding tables only for the distinct tables that rows use (a writer repeats one table for many
    # classes; the container has bounded how many distinct ones a stream may have, §7).
    classes, cols = rows
    texts = stream.frequencies
    distinct: dict[str, int] = {}
    index = np.zeros(len(texts), np.int64)
    for j in np.unique(classes).tolist():
        index[j] = distinct.setdefault(texts[j], len(distinct))
    if not distinct:  # no rows: nothing to decode
        distinct[texts[0]] = 0
    return [tables.frequencies(t) for t in distinct], (index[classes], cols)


class TableCache:
    """The file's Huffman tables, parsed once each on first use."""

    def __init__(self, tables: list[str]):
        self._text = tables
        self._parsed: dict[int, np.ndarray] = {}
        self._frequencies: dict[str, np.ndarray] = {}

    def get(self, index: int) -> np.ndarray:
        if index not in self._parsed:
            self._parsed[index] = huffman.lengths_from_hex(self._text[index])
        return self._parsed[index]

    def frequencies(self, text: str) -> np.ndarray:
        """A rANS stream's table (§6.4), parsed once per distinct text."""
        if text not in self._frequencies:
            self._frequencies[text] = ranscoding.frequencies_from_hex(text)
        return self._frequencies[text]


# ---------------------------------------------------------------------------------------------
# Drafting tensors (the lossy step and the choice of form)


@dataclass
class TensorDraft:
    """A tensor in its chosen form, streams not yet coded."""

    name: str
    header: dict[str, Any]  # tensor object; section slots hold payload indices or StreamDraft
    payloads: list[Any]
    streams: dict[str, StreamDraft]
    decoded: np.ndarray | None = None  # the dense tensor the file will decode to (lossy forms)
    coded: EncodedTensor | None = None  # a fields tensor, coded when drafted (its size is what decides)
    coded_bytes: int = 0  # fields: payloads, table text and section costs

    def dense(self) -> np.ndarray | None:
        """The dense tensor the file will decode to: `decoded`, or for a shared tensor drafted without
        it, codebook[indices] (built on demand: the encoder measures errors without it)."""
        if self.decoded is not None or self.header["encoding"] != K.SHARED:
            return self.decoded
        dtype = numpy_dtype(self.header["dtype"])
        codebook = np.asarray(self.payloads[self.header["codebook"]]).view(dtype)
        flat = codebook[self.streams["indices"].symbols]
        if "scales" in self.header:
            scales = np.asarray(self.payloads[self.header["scales"]]).view(dtype)
            quantize.apply_row_scales(flat, scales, self.streams["row_scales"].symbols)
        return flat.reshape(self.header["shape"])

    def estimate(self, rans: float | bool | None = None) -> int:
        """Bytes of the tensor's payloads and coded streams (rANS counted as `rans_gain(rans)` says)."""
        if self.coded is not None:
            return self.coded_bytes
        raw = sum(memoryview(p).nbytes for p in self.payloads if p is not None)
        return raw + sum(estimate_stream_bytes(s, rans=rans) for s in self.streams.values())


def _as_array(name: str, value: Any) -> np.ndarray:
    a = np.asarray(value)
    dtype_name(a.dtype)  # raises for unsupported dtypes
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    # np.ascontiguousarray would turn a scalar into shape (1,)
    return a if a.flags.c_contiguous else a.copy(order="C")


def draft_tensor(name: str, value: Any, plan: TensorPlan, block_size: int = K.DEFAULT_BLOCK_SIZE) -> TensorDraft:
    """Apply the plan's lossy steps and choose the smallest lossless form."""
    a = _as_array(name, value)
    dtype = dtype_name(a.dtype)
    base = {"name": name, "dtype": dtype, "shape": list(a.shape)}
    if plan.encoding == K.RAW:
        return _exact_draft(base, a, plan)
    x = a
    if plan.prune or plan.threshold is not None:
        x = pruning.prune(a, sparsity=plan.prune if plan.prune else None, threshold=plan.threshold)
    bits, step = plan.bits, plan.step
    if (bits is not None or step is not None) and x.size and not np.isfinite(x.astype(np.float32, copy=False)).all():
        # A codebook cannot stand for NaN or inf: keep such a tensor's values exact instead.
        what = "quantization" if step is not None else "weight sharing"
        warnings.warn(f"tensor {name!r} has non-finite values: stored without {what}", stacklevel=3)
        bits = step = None
    if step is not None:
        return _uniform_draft(base, a, x, plan)
    zeros = int(np.count_nonzero(_bits_view(x.reshape(-1)) == 0))
    has_zeros = zeros > 0
    candidates: list[TensorDraft] = []
    if bits is not None:
        codebook, indices = _quantize_for(a, x, bits, has_zeros, plan)
        bits = max(1, int(len(codebook) - 1).bit_length())
        decoded = None  # built only where a sparse form needs it (TensorDraft.dense otherwise)
        candidates.append(_shared_draft(base, codebook, indices, bits))
        if has_zeros and zeros >= SPARSE_MIN_ZERO_SHARE_CODED * x.size:
            decoded = codebook[indices].reshape(a.shape)
            candidates += _sparse_drafts(base, decoded, plan, codebook=codebook, indices=indices, bits=bits)
    else:
        decoded = x
        candidates.append(_exact_draft(base, x, plan))
        if has_zeros:
            candidates += _sparse_drafts(base, x, plan)
    mostly_zero = zeros >= SPARSE_SHARE_PREFERRED * x.size > 0
    return _smallest(candidates, decoded, a, base, plan.rans, prefer_sparse=mostly_zero)


# Bytes a section costs beyond its payload: on average half the 64-byte alignment, plus its JSON keys.
SECTION_OVERHEAD = 64


def _exact_draft(base: dict, a: np.ndarray, plan: TensorPlan) -> TensorDraft:
    """The array exactly: in the fields encoding (§5.4) when that is smaller than raw, else raw.

    `plan.zero_copy` asks for raw (a raw section can be memory-mapped and used in place)."""
    raw = TensorDraft(base["name"], {**base, "encoding": K.RAW, "data": 0}, [a.reshape(-1).view(np.uint8)], {})
    splits = [] if plan.zero_copy or a.size == 0 else fieldcoding.candidates_for(base["dtype"], a.size)
    chunk_size = fieldcoding.chunk_size_for(base["dtype"])
    best = None  # (size, widths, chunks, payloads)
    header_cost, table_cost = ((K.HUFFMAN_ZLIB_COST, fieldcoding.zlib_table_cost) if plan.compact_header
                               else (K.HUFFMAN_JSON_COST, len))
    for widths in splits:
        chunks, payloads, _, size = fieldcoding.code_fields(_bits_view(a.reshape(-1)), widths, chunk_size, "auto",
                                                            header_cost, table_cost)
        if best is None or size < best[0]:
            best = (size, widths, chunks, payloads)
    if best is None or best[0] >= fieldcoding.section_cost(a.nbytes):
        return raw
    size, widths, chunks, payloads = best
    header = fieldcoding.fields_header(base, widths, chunk_size, chunks)
    return TensorDraft(base["name"], header, [], {}, coded=EncodedTensor(header, payloads), coded_bytes=size)


# A mostly-zero tensor (pruned, here or in training) keeps the paper's sparse form (CSR/CSC, relative
# indices) unless the dense form is smaller by more than this share. With rANS, dense indices code
# the zeros in a fraction of a bit each and come within a few percent of it (the bundled LeNet's
# layers: 3-4%), but the sparse form decodes faster (2000x2000 at 90% zeros, 5 bits: 470 vs 460 KB,
# 5.8 vs 8.8 ms) and `get_sparse` reads it without densifying.
SPARSE_PREFERENCE = 0.05
SPARSE_SHARE_PREFERRED = 0.5  # the share of zeros that makes a tensor "mostly zero"


def _smallest(candidates: list[TensorDraft], decoded: np.ndarray, original: np.ndarray, base: dict,
              rans: float | None = None, *, prefer_sparse: bool = False) -> TensorDraft:
    """The smallest candidate (with `prefer_sparse`, a sparse one within SPARSE_PREFERENCE of it); a
    vector or scalar stays raw (exact) when coding it would not save bytes."""
    def cost(d: TensorDraft) -> int:
        return d.estimate(rans) + SECTION_OVERHEAD * (len(d.payloads) + len(d.streams))

    best = min(candidates, key=lambda d: d.estimate(rans))
    sparse = [d for d in candidates if d.header["encoding"] == K.SPARSE]
    if prefer_sparse and sparse and best.header["encoding"] != K.SPARSE:
        smallest_sparse = min(sparse, key=lambda d: d.estimate(rans))
        if smallest_sparse.estimate(rans) <= (1 + SPARSE_PREFERENCE) * best.estimate(rans):
            best = smallest_sparse
    if original.ndim <= 1:  # matrices take the form the plan asks for, even when raw would be as small
        raw = TensorDraft(base["name"], {**base, "encoding": K.RAW, "data": 0}, [original.reshape(-1).view(np.uint8)], {})
        if cost(raw) <= cost(best):
            raw.decoded = original
            return raw
    best.decoded = decoded
    return best


def draft_explicit(name: str, value: Any, encoding: str, *, codebook: Any = None, indices: Any = None,
                   layout: str = K.CSR, index_bits: int = 5, fields: tuple[int, ...] | None = None,
                   chunk_size: int | None = None, huffman: str = "auto", header_cost: int = K.HUFFMAN_ZLIB_COST,
                   scales: Any = None, row_scales: Any = None) -> TensorDraft:
    """A tensor in exactly the form asked for, with no lossy step (for test vectors and tools).

    - "raw": the array as it is.
    - "shared": `codebook` (values of the array's dtype) and `indices` (one per element, C order);
      with neither given, the codebook is the array's distinct bit patterns, sorted by value.
    - "sparse": with a `codebook` (codebook[0] must be all zero bits) and `indices` (one per element,
      0 where the element is zero), or without (values stored raw). `layout` and `index_bits` as given.
    - "fields": the `fields` widths (default: dcformat's split for the dtype) in chunks of `chunk_size`
      elements, each stream coded by `huffman` mode ("auto" or "off") counting `header_cost`.
    - "shared" with row scales (§5.2, float32/float64): also `scales` (values of the dtype) and
      `row_scales` (one index into `scales` per row of the matrix view); the array is then not used
      but for its name, dtype and shape, and `decoded` is dtype(codebook[indices] × scales[row]).
    The decoded tensor equals codebook[indices] (or the array) and is kept in `decoded`.
    """
    a = _as_array(name, value)
    dtype = dtype_name(a.dtype)
    base = {"name": name, "dtype": dtype, "shape": list(a.shape)}
    if encoding == K.RAW:
        return TensorDraft(name, {**base, "encoding": K.RAW, "data": 0}, [a.reshape(-1).view(np.uint8)], {}, a)
    if encoding == K.FIELDS:
        widths = tuple(fields) if fields is not None else fieldcoding.split_for(dtype)
        chunk_size = chunk_size or fieldcoding.chunk_size_for(dtype)
        if widths is None or sum(widths) != 8 * a.dtype.itemsize or not all(1 <= w <= 16 for w in widths) \
                or chunk_size < 1:
            raise EncodeError(f"fields {widths} in chunks of {chunk_size} cannot hold {dtype} elements", tensor=name)
        chunks, payloads, _, size = fieldcoding.code_fields(_bits_view(a.reshape(-1)), widths, chunk_size, huffman,
                                                            header_cost)
        header = fieldcoding.fields_header(base, widths, chunk_size, chunks)
        return TensorDraft(name, header, [], {}, a, coded=EncodedTensor(header, payloads), coded_bytes=size)
    if codebook is None and encoding == K.SHARED:
        codebook, inverse = np.unique(_bits_view(a.reshape(-1)), return_inverse=True)
        codebook = codebook.view(a.dtype)
        order = np.argsort(codebook.astype(np.float64), kind="stable")
        codebook, indices = codebook[order], np.argsort(order)[inverse]
    if codebook is not None:
        codebook = np.asarray(codebook, dtype=a.dtype).reshape(-1)
        indices = np.asarray(indices).reshape(-1).astype(np.int64)
        if len(indices) != a.size or (len(indices) and (indices.min() < 0 or indices.max() >= len(codebook))):
            raise EncodeError("indices must give one codebook index per element", tensor=name)
        if dtype == "bool" or not 1 <= len(codebook) <= (1 << K.MAX_BITS):
            raise EncodeError(f"a codebook of {len(codebook)} {dtype} values is not allowed", tensor=name)
        bits = max(1, int(len(codebook) - 1).bit_length())
        decoded = codebook[indices].reshape(a.shape)
        if scales is not None:
            if encoding != K.SHARED or dtype not in K.ROW_SCALE_DTYPES:
                raise EncodeError(f"row scales are only for shared float32/float64 tensors, not {encoding} {dtype}",
                                  tensor=name)
            scales = np.asarray(scales, dtype=a.dtype).reshape(-1)
            row_scales = np.asarray(row_scales).reshape(-1).astype(np.int64)
            rows = quantize.row_count(a.shape)
            if not 1 <= len(scales) <= (1 << K.MAX_BITS) or len(row_scales) != rows or (
                    rows and (row_scales.min() < 0 or row_scales.max() >= len(scales))):
                raise EncodeError(f"row scales need 1..65536 scales and one index into them per row ({rows})",
                                  tensor=name)
            draft = _shared_draft(base, codebook, indices.astype(np.uint16), bits, scales, row_scales.astype(np.uint16))
            draft.decoded = draft.dense()
            return draft
        if encoding == K.SHARED:
            draft = _shared_draft(base, codebook, indices.astype(np.uint16), bits)
        elif encoding == K.SPARSE:
            if _bits_view(codebook[:1]).any():
                raise EncodeError("a sparse codebook must have all-zero bits at index 0", tensor=name)
            plan = TensorPlan("coded", bits=bits, index_bits=index_bits, layout=layout)
            draft = _sparse_drafts(base, decoded, plan, codebook=codebook, indices=indices.astype(np.uint16), bits=bits)[0]
        else:
            raise EncodeError(f"encoding {encoding!r} cannot take a codebook", tensor=name)
        draft.decoded = decoded
        return draft
    if encoding != K.SPARSE:
        raise EncodeError(f"unknown encoding {encoding!r}", tensor=name)
    plan = TensorPlan("coded", bits=None, index_bits=index_bits, layout=layout)
    draft = _sparse_drafts(base, a, plan)[0]
    draft.decoded = a
    return draft


def _quantize_for(original: np.ndarray, x: np.ndarray, bits: int, sparse: bool, plan: TensorPlan) -> tuple[np.ndarray, np.ndarray]:
    """Codebook and indices at `bits`, or, with a max_error target, at the fewest bits up to `bits` that meet it.

    The width is bisected (the error falls as bits grow): about log2(bits) quantizations, and the
    width one below the one chosen was tried and missed the target.
    """
    def at(b: int) -> tuple[np.ndarray, np.ndarray]:
        return quantize.quantize(x, b, sparse=sparse, method=plan.quantizer, init=plan.init, lam=plan.lam)

    if plan.max_error is None:
        return at(bits)
    reference = original.astype(np.float64).reshape(-1)
    norm = float(np.sqrt(np.sum(reference * reference)))
    if not np.isfinite(norm):  # values near the float64 limit: no meaningful error to aim at
        return at(bits)
    lo, hi = 0, bits  # lo misses the target (0 bits: nothing), hi meets it or is the widest allowed
    best = None  # the quantization at hi, once tried (only that one is kept)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        codebook, indices = result = at(mid)
        error = float(np.sqrt(np.sum((codebook[indices].astype(np.float64) - reference) ** 2)))
        if error <= plan.max_error * norm:
            hi, best = mid, result
        else:
            lo = mid
        del codebook, indices, result
    return best if best is not None else at(hi)


# A uniform quantizer's zero level is usually a small share of the weights. Huffman codes a symbol in
# no less than one bit, so the sparse form (gaps between non-zeros) only wins where zeros are common;
# below this share its candidates are not worth building (on an 11.7 M-weight tensor they cost seconds).
SPARSE_MIN_ZERO_SHARE = 0.4


# The same for codebook indices: a sparse form spends at least one bit per stored entry on its gap,
# (1 - z) bits per element for a zero share z, while the shared form spends about h(z) (the binary
# entropy) telling zeros apart; below z = 0.1, 0.9 > h(0.1) = 0.47: the sparse form cannot win, and
# pricing it on a large tensor takes more memory (positions, int64) than the rest of the draft.
SPARSE_MIN_ZERO_SHARE_CODED = 0.1


def _uniform_draft(base: dict, original: np.ndarray, x: np.ndarray, plan: TensorPlan) -> TensorDraft:
    """Uniform quantization with the plan's step, stored shared or (mostly zeros) sparse; with row
    multipliers, shared with row scales (§5.2) only."""
    if plan.row_scales is not None:
        try:
            codebook, indices, scales, classes = quantize.quantize_uniform_rows(x, plan.step, plan.row_scales)
        except EncodeError as e:
            raise EncodeError(str(e), tensor=base["name"]) from None
        bits = max(1, int(len(codebook) - 1).bit_length())
        return _shared_draft(base, codebook, indices, bits, scales, classes)
    try:
        codebook, indices = quantize.quantize_uniform(x, plan.step)
    except EncodeError as e:
        raise EncodeError(str(e), tensor=base["name"]) from None
    bits = max(1, int(len(codebook) - 1).bit_length())
    candidates = [_shared_draft(base, codebook, indices, bits)]
    decoded = None  # the dense decoded tensor only where a sparse form needs it (TensorDraft.dense)
    zeros = np.count_nonzero(indices == 0) if x.size and codebook[0] == 0 else 0
    if zeros >= SPARSE_MIN_ZERO_SHARE * x.size > 0:
        decoded = codebook[indices].reshape(original.shape)
        candidates += _sparse_drafts(base, decoded, plan, codebook=codebook, indices=indices, bits=bits)
    mostly_zero = zeros >= SPARSE_SHARE_PREFERRED * x.size > 0
    return _smallest(candidates, decoded, original, base, plan.rans, prefer_sparse=mostly_zero)


def _shared_draft(base: dict, codebook: np.ndarray, indices: np.ndarray, bits: int,
                  scales: np.ndarray | None = None, row_classes: np.ndarray | None = None) -> TensorDraft:
    """A shared tensor (§5.2); with `scales` and `row_classes` (uint16, one per row), with row scales."""
    header = {**base, "encoding": K.SHARED, "bits": bits, "codebook": 0, "indices": "indices"}
    stream = StreamDraft("indices", indices.astype(np.uint16, copy=False), len(codebook), bits)
    if scales is None:
        return TensorDraft(base["name"], header, [codebook.view(np.uint8)], {"indices": stream})
    scale_bits = max(1, int(len(scales) - 1).bit_length())
    header.update({"scale_bits": scale_bits, "scales": 1, "row_scales": "row_scales"})
    rows = StreamDraft("row_scales", row_classes.astype(np.uint16, copy=False), len(scales), scale_bits)
    return TensorDraft(base["name"], header, [codebook.view(np.uint8), scales.view(np.uint8)],
                       {"row_scales": rows, "indices": stream})


def _sparse_drafts(base: dict, x: np.ndarray, plan: TensorPlan, *, codebook=None, indices=None, bits=None) -> list[TensorDraft]:
    """The smallest sparse form over every layout and index width the plan allows (a list of at most
    one): each is priced from symbol counts alone (`relindex.gap_counts`), and only the cheapest built."""
    layouts = (K.CSR, K.CSC) if plan.layout == AUTO else (plan.layout,)
    widths = INDEX_BITS_CANDIDATES if plan.index_bits == AUTO else (plan.index_bits,)
    if len(layouts) == len(widths) == 1:  # nothing to choose: build it (if its fillers fit)
        positions = relindex.nonzero_positions(x, layouts[0])
        try:
            return [_sparse_draft(base, x, layouts[0], widths[0], positions, codebook, indices, bits)]
        except EncodeError:
            return []
    fixed_bytes = 0  # bytes that do not depend on the layout or width: the codebook
    if codebook is not None:
        fixed_bytes = codebook.nbytes
        # Entries' codes: the non-zero elements' indices (an index whose codebook value has all-zero
        # bits marks a zero element), then one 0 per filler.
        code_counts = huffman.symbol_counts(indices)
        code_counts[: len(codebook)][_bits_view(codebook[: len(code_counts)]) == 0] = 0
    best = None  # (bytes, layout, width, positions)
    for layout in layouts:
        positions = relindex.nonzero_positions(x, layout)
        for b, (gap_counts, fillers) in zip(widths, relindex.gap_counts(positions, widths)):
            entries = len(positions) + fillers
            if entries > max(1, x.size):  # as encode_gaps's limit: fillers beyond the tensor's size
                continue
            size = fixed_bytes + estimate_coded_bytes(gap_counts, entries, b, rans=plan.rans)
            if codebook is None:
                size += entries * x.dtype.itemsize
            else:
                counts = code_counts.copy()
                counts[0] += fillers
                size += estimate_coded_bytes(counts, entries, bits, rans=plan.rans)  # trailing zeros cost nothing
            if best is None or size < best[0]:
                best = (size, layout, b, positions)
    if best is None:
        return []
    _, layout, b, positions = best
    return [_sparse_draft(base, x, layout, b, positions, codebook, indices, bits)]


def _sparse_draft(base: dict, x: np.ndarray, layout: str, b: int, positions: np.ndarray, codebook, indices,
                  bits) -> TensorDraft:
    """The sparse form of x in one layout and index width, `positions` its non-zeros' scan positions."""
    rows, cols = relindex.matrix_shape(tuple(x.shape))
    order = relindex.scan_to_flat(positions, rows, cols, layout)
    gaps, real = relindex.encode_gaps(positions, b, max_entries=max(1, x.size))
    entries = len(gaps)
    header = {**base, "encoding": K.SPARSE, "layout": layout, "index_bits": b, "entries": entries,
              "fillers": entries - len(positions)}
    streams = {"gaps": StreamDraft("gaps", gaps, 1 << b, b)}
    if codebook is not None:
        codes = relindex.entry_values(indices.astype(np.uint16, copy=False), order, real, entries)
        header.update({"bits": bits, "codebook": 0, "gaps": "gaps", "indices": "indices"})
        streams["indices"] = StreamDraft("indices", codes, len(codebook), bits)
        payloads = [codebook.view(np.uint8)]
    else:
        values = relindex.entry_values(x, order, real, entries)
        header.update({"gaps": "gaps", "values": 0})
        payloads = [values.view(np.uint8)]
    return TensorDraft(base["name"], header, payloads, streams)


# ---------------------------------------------------------------------------------------------
# Assembling coded tensors


def shared_lengths(counts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """huffman="shared": one code per stream kind from the symbol counts of all its streams."""
    shared: dict[str, np.ndarray] = {}
    for kind, all_counts in counts.items():
        if all_counts:
            total = np.zeros(max(len(c) for c in all_counts), np.int64)
            for c in all_counts:
                total[: len(c)] += c
            if np.count_nonzero(total) <= (1 << K.MAX_CODE_LENGTH):
                shared[kind] = huffman.code_lengths(total)
    return shared


def stream_counts(drafts: list[TensorDraft]) -> dict[str, list[np.ndarray]]:
    """The symbol counts of the drafts' non-empty streams, by kind (what `shared_lengths` needs)."""
    return {kind: [d.streams[kind].counts for d in drafts if kind in d.streams and len(d.streams[kind].symbols)]
            for kind in ("indices", "gaps")}


def code_tensor(d: TensorDraft, mode: str = "auto", block_size: int = K.DEFAULT_BLOCK_SIZE,
                shared: dict[str, np.ndarray] | None = None, header_cost: int = K.HUFFMAN_ZLIB_COST, *,
                rans: float | bool | None = None) -> EncodedTensor:
    """Code one draft's streams and lay out its payloads in file order (§5). A stream's "table" holds
    the table's text until `Tables.intern` numbers it; independent of other tensors (any thread)."""
    shared = shared or {}
    if d.coded is not None:
        return d.coded
    header = dict(d.header)
    payloads: list[Any] = []
    for key in K.SECTION_KEYS_IN_ORDER:
        if key not in header:
            continue
        if key in d.streams:
            rows = None  # the indices of a shared tensor with row scales may take a rANS table per class
            if key == "indices" and "row_scales" in d.streams:
                classes = d.streams["row_scales"].symbols
                scales = memoryview(d.payloads[d.header["scales"]]).nbytes // K.DTYPE_SIZES[d.header["dtype"]]
                rows = (classes, len(d.streams[key].symbols) // max(1, classes.size), scales)
            obj, payload, text = code_stream(d.streams[key], "auto" if mode == "shared" else mode, block_size,
                                             shared.get(key), header_cost, rans=None if mode == "off" else rans, rows=rows)
            if text is not None:
                obj["table"] = text
            header[key] = obj
            payloads.append(payload)
        else:
            payloads.append(d.payloads[header[key]])
    out = EncodedTensor(header, payloads)
    _number_sections([out])
    return out


class Tables:
    """A file's Huffman tables in first-use order: tensors coded by `code_tensor` get table numbers."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._index: dict[str, int] = {}

    def intern(self, t: EncodedTensor) -> EncodedTensor:
        objs = [t.header.get(key) for key in ("row_scales", "gaps", "indices")]
        if t.header.get("encoding") == K.FIELDS:
            objs = [s for streams in t.header["chunks"] for s in streams]
        for obj in objs:
            if isinstance(obj, dict) and isinstance(obj.get("table"), str):
                text = obj["table"]
                if text not in self._index:
                    self._index[text] = len(self.texts)
                    self.texts.append(text)
                obj["table"] = self._index[text]
        return t


def assemble(drafts: list[TensorDraft], mode: str = "auto", block_size: int = K.DEFAULT_BLOCK_SIZE,
             progress: Callable[[str], None] | None = None, *,
             header_cost: int = K.HUFFMAN_ZLIB_COST, rans: float | bool | None = None
             ) -> tuple[list[str], list[EncodedTensor]]:
    """Code every stream and lay out each tensor's payloads in file order (§5): (tables, tensors).

    `header_cost`: the header bytes a Huffman stream adds (see code_stream); `rans`: offer rANS coding
    to every stream (§6.4, format 1.4), kept where it saves that share of the bytes (True: any).
    """
    shared = shared_lengths(stream_counts(drafts)) if mode == "shared" else {}
    tables = Tables()
    out = []
    for d in drafts:
        out.append(tables.intern(code_tensor(d, mode, block_size, shared, header_cost, rans=rans)))
        if progress is not None:
            progress(d.name)
    return tables.texts, out


def _number_sections(tensors: list[EncodedTensor]) -> None:
    for t in tensors:
        i = 0
        for key in K.SECTION_KEYS_IN_ORDER:
            if key not in t.header:
                continue
            if isinstance(t.header[key], dict):
                t.header[key]["section"] = i
            else:
                t.header[key] = i
            i += 1


# ---------------------------------------------------------------------------------------------
# Decoding


# A tensor is decoded in pieces of about this much output (at most 2 per thread of the budget), each
# piece a task for the thread pool; smaller tensors are decoded whole. The CRC-32 of a section is
# computed in pieces of at least _CRC_PIECE_BYTES.
PIECE_BYTES = 4 << 20
_CRC_PIECE_BYTES = 1 << 20
_CRC_POLY = 0xEDB88320  # CRC-32 (ISO-HDLC, as zlib), bit-reversed: bit 31 holds x^0
_ONE_THREAD = pool.Budget(1)


def decode_tensor(buf: Any, info: TensorInfo, tables: TableCache, *, copy: bool = True,
                  budget: pool.Budget | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one tensor to a dense numpy array of its dtype and shape (spec §5).

    With a `budget` of several threads, a large tensor is decoded in pieces on those threads: its
    streams block range by block range, then its dense output range by range (each thread writes
    its own part of the output). Without one, everything runs on the calling thread.

    `out`: an array the caller owns to decode into (see `check_out`), returned. On a decoding error
    its contents are unspecified; the error is raised all the same.
    """
    budget = budget or _ONE_THREAD
    bits = storage_dtype(info.dtype)  # decoding works on bit patterns: no ml_dtypes unless one is returned
    target = None if out is None else check_out(out, info, bits=True)  # callers check the dtype (api)
    if info.encoding == K.RAW:
        data = _checked(buf, info.data, "data", info.name, budget)
        a = np.frombuffer(data, dtype=bits, count=info.numel)
        if info.dtype == "bool":
            _check_bool(a, info, info.data.offset)
        if target is not None:
            _copy(a, budget, target)
            return out
        a = _copy(a, budget) if copy else a
        return a.view(numpy_dtype(info.dtype)).reshape(info.shape)
    # The fast path only learns that something is wrong (a kernel's flag, a check that raised); the
    # exact path then decodes again step by step, as the spec orders the checks, and raises the
    # error that names the first problem. So both paths fail on the same files with the same errors.
    if info.encoding == K.FIELDS:
        flat = _decode_fields(buf, info, tables, bits, budget, target)
        if target is not None:
            return out
        return flat.view(numpy_dtype(info.dtype)).reshape(info.shape)
    try:
        if info.encoding == K.SHARED:
            flat = _decode_shared(buf, info, tables, bits, budget, target)
        else:
            flat = _decode_sparse(buf, info, tables, bits, budget, target)
    except DCFError:
        flat = None
    if flat is None:
        flat = _decode_exact(buf, info, tables, bits)
        if target is not None:  # only if the fast path failed where the exact one did not
            target[:] = flat
    if target is not None:
        return out
    return flat.view(numpy_dtype(info.dtype)).reshape(info.shape)


def storage_dtype(name: str) -> np.dtype:
    """The unsigned integer dtype holding the bit patterns of the spec dtype `name` (bool stays bool-sized u8)."""
    size = K.DTYPE_SIZES[name]
    return np.dtype(f"<u{size}") if size > 1 else np.dtype(np.uint8)


def check_out(out: Any, info: TensorInfo, *, bits: bool = False) -> np.ndarray:
    """The flat bit-pattern view of a caller's output array for `info`; DCFError if it cannot take it.

    `out` must be a writable, C-contiguous numpy array with the tensor's element count and dtype
    (with `bits`, any dtype of the same item size: for callers that view other types' memory).
    """
    if not isinstance(out, np.ndarray):
        raise DCFError(f"out must be a numpy array, not {type(out).__name__}", tensor=info.name)
    same = out.dtype.itemsize == info.itemsize if bits else out.dtype.name == info.dtype
    if not same or out.size != info.numel:
        raise DCFError(f"out is {out.dtype}{list(out.shape)}; the tensor is {info.dtype}{list(info.shape)}",
                       tensor=info.name)
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise DCFError("out must be a writable C-contiguous array", tensor=info.name)
    return out.reshape(-1).view(storage_dtype(info.dtype))


def _pieces(nbytes: int, budget: pool.Budget) -> int:
    """How many pieces to cut a tensor of `nbytes` of output into: 1 unless it is large."""
    if not budget.parallel:
        return 1
    return max(1, min(2 * budget.threads, nbytes // PIECE_BYTES))


def _cuts(count: int, pieces: int, step: int = 1) -> list[int]:
    """Bounds 0 = c_0 < ... < c_k = count of at most `pieces` near-equal ranges, inner bounds multiples
    of `step` ([0, 0] for count 0: one empty range)."""
    bounds = {min(count, (count * k // pieces) // step * step) for k in range(pieces + 1)} | {count}
    return sorted(bounds) if count else [0, 0]


def _copy(a: np.ndarray, budget: pool.Budget, out: np.ndarray | None = None) -> np.ndarray:
    """A copy of a (C-contiguous, into `out` if given), made in pieces on the budget's threads
    (numpy's copy drops the GIL)."""
    pieces = _pieces(a.nbytes, budget)
    if pieces == 1:
        if out is None:
            return a.copy()
        np.copyto(out.reshape(-1), a.reshape(-1))
        return out
    if out is None:
        out = np.empty_like(a)
    src, dst = a.reshape(-1), out.reshape(-1)
    cuts = _cuts(src.size, pieces, 4096)
    pool.run([lambda s0=s0, s1=s1: np.copyto(dst[s0:s1], src[s0:s1]) for s0, s1 in zip(cuts, cuts[1:])], budget)
    return out


def _checked(buf: Any, section: Any, key: str, tensor: str, budget: pool.Budget) -> memoryview:
    """check_section, with the CRC-32 of a large section computed in pieces on the budget's threads
    (zlib drops the GIL) and combined; a mismatch is raised by check_section itself."""
    pieces = min(2 * budget.threads, section.length // _CRC_PIECE_BYTES) if budget.parallel else 1
    if pieces < 2:
        return check_section(buf, section, key, tensor)
    import zlib

    view = memoryview(buf)[section.offset : section.end]
    cuts = _cuts(len(view), pieces)
    parts = pool.run([lambda a=a, b=b: zlib.crc32(view[a:b]) for a, b in zip(cuts, cuts[1:])], budget)
    crc = parts[0]
    for a, b, part in zip(cuts[1:], cuts[2:], parts[1:]):
        crc = crc32_combine(crc, part, b - a)
    return view if crc == section.crc32 else check_section(buf, section, key, tensor)


def _crc_mulmod(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial, both in the bit-reversed form."""
    p = 0
    for i in range(31, -1, -1):  # a's terms x^0, x^1, ...
        if a >> i & 1:
            p ^= b
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1  # b * x
    return p


_X_POW2 = [1 << 30]  # x^(2^k) mod the polynomial: x^1, x^2, x^4, ...
for _ in range(63):
    _X_POW2.append(_crc_mulmod(_X_POW2[-1], _X_POW2[-1]))


def crc32_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """The CRC-32 of A + B from those of A and B: crc(A) times x^(8 * len(B)), plus crc(B).

    The register's initial and final inversions cancel in the sum, so the CRC of a long section can be
    computed in pieces on several threads."""
    shift = 1 << 31  # x^0
    n = 8 * length_b
    k = 0
    while n:
        if n & 1:
            shift = _crc_mulmod(shift, _X_POW2[k])
        n >>= 1
        k += 1
    return _crc_mulmod(shift, crc_a) ^ crc_b


class _StreamPieces:
    """A stream whose section CRC and coding checks passed, ready to decode range by range on any thread:
    Huffman streams in whole units (pairs of blocks, §6.3), fixed-width ones in multiples of 8 symbols."""

    def __init__(self, buf: Any, stream: Stream, tables: TableCache, key: str, tensor: str,
                 budget: pool.Budget, rows: tuple[np.ndarray, int] | None = None):
        data = _checked(buf, stream.section, key, tensor, budget)
        self.count = stream.count
        self.fixed = stream.coding == K.FIXED
        self.rans = stream.coding == K.RANS
        if self.fixed:
            self.width, self.alphabet = stream.width, stream.alphabet
            self.data = bitpack.check_length(data, stream.count, stream.width, stream.alphabet)
        elif self.rans:
            block_size = min(stream.block_size, max(1, stream.count))  # as decode_stream
            freqs, rows = _rans_tables(stream, tables, rows)
            self.blocks = ranscoding.prepare(data, stream.count, freqs, block_size, list(stream.block_bytes),
                                             rows=rows)
            self.unit = block_size
        else:
            block_size = min(stream.block_size, max(1, stream.count))  # as decode_stream
            self.blocks = huffman.prepare(data, stream.count, tables.get(stream.table), block_size,
                                          list(stream.block_bytes))
            self.unit = 2 * block_size

    def cuts(self, pieces: int) -> list[int]:
        """Symbol bounds of at most `pieces` ranges that decode independently."""
        if self.fixed:
            return _cuts(self.count, pieces, 8)
        if self.rans:
            return [self.blocks.block_start(b) for b in _cuts(self.blocks.blocks, pieces)]
        units = _cuts(self.blocks.units, pieces)
        return [self.blocks.unit_start(u) for u in units]

    def decode(self, out: np.ndarray, s0: int, s1: int) -> bool:
        """Symbols s0..s1 (bounds from `cuts`) into out[s0:s1]; False if the data is malformed."""
        if self.fixed:
            return bitpack.unpack_range(self.data, self.count, self.width, self.alphabet, s0, s1, out)
        if self.rans:
            return ranscoding.decode_blocks(self.blocks, out, s0 // self.unit, -(-s1 // self.unit))
        return huffman.decode_units(self.blocks, out, s0 // self.unit, -(-s1 // self.unit))

    def gather(self, codebook: np.ndarray, out: np.ndarray, s0: int, s1: int) -> bool:
        """out[i] = codebook[symbol i] for symbols s0..s1; False if the data is malformed."""
        if self.fixed:
            return bitpack.gather_range(self.data, self.count, self.width, self.alphabet, s0, s1, codebook, out)
        if self.rans:
            return ranscoding.gather_blocks(self.blocks, s0 // self.unit, -(-s1 // self.unit), codebook, out)
        return huffman.gather_units(self.blocks, s0 // self.unit, -(-s1 // self.unit), codebook, out)


def _decode_fields(buf: Any, info: TensorInfo, tables: TableCache, dtype: np.dtype,
                   budget: pool.Budget, target: np.ndarray | None = None) -> np.ndarray:
    """A fields tensor, flat (§5.4): chunks decode independently, a range of chunks per task; each
    stream's CRC and coding are checked as it is decoded, and the first failure (in file order) raised."""
    out = np.empty(info.numel, dtype=dtype) if target is None else target
    lows = fieldcoding.shifts(info.fields)
    nchunks = len(info.chunks)

    def decode(c0: int, c1: int) -> DCFError | None:
        try:
            decode_chunks(c0, c1)
        except DCFError as e:  # without its frames: they hold the output (a failed load keeps nothing)
            e.__traceback__ = None
            return e
        return None

    def decode_chunks(c0: int, c1: int) -> None:
        for c in range(c0, c1):
            e0, e1 = fieldcoding.chunk_bounds(info.numel, info.chunk_size, c)
            part = out[e0:e1]
            for f, stream in enumerate(info.chunks[c]):
                key = f"chunks[{c}][{f}]"
                if stream.coding == K.FIXED:  # unpacked straight into the elements
                    data = np.frombuffer(check_section(buf, stream.section, key, info.name), dtype=np.uint8)
                    if not fieldcoding.merge_fixed(part, data, stream.width, lows[f], f == 0):
                        raise CorruptDataError(f"stream {key!r}: fixed-width stream: padding bits of the last byte "
                                               f"(byte {data.size - 1}) are not zero", tensor=info.name,
                                               offset=stream.section.offset)
                    continue
                symbols = decode_stream(buf, stream, tables, info.name, key)
                fieldcoding.merge(part, symbols, lows[f], f == 0)

    cuts = _cuts(nchunks, max(1, min(nchunks, _pieces(out.nbytes, budget))))
    errors = [e for e in pool.run([lambda c0=c0, c1=c1: decode(c0, c1) for c0, c1 in zip(cuts, cuts[1:])], budget)
              if e is not None]
    if errors:  # the first in file order; this frame's traceback must not hold the output
        out = None
        error, errors = errors[0], None
        try:
            raise error
        finally:
            error = None
    return out


def _decode_shared(buf: Any, info: TensorInfo, tables: TableCache, dtype: np.dtype,
                   budget: pool.Budget, target: np.ndarray | None = None) -> np.ndarray | None:
    """A shared tensor, flat: each piece decodes its indices and looks them up straight into the output;
    with row scales, then each range of rows is multiplied in place by its scales (§5.2)."""
    codebook = _bits_view(np.frombuffer(check_section(buf, info.codebook, "codebook", info.name), dtype=dtype))
    factors = None
    if info.scales is not None:
        factors = _row_factors(buf, info, tables, codebook)
    rows = None if factors is None else (factors[1], info.numel // max(1, factors[1].size))
    indices = _StreamPieces(buf, info.indices, tables, "indices", info.name, budget, rows)
    out = np.empty(info.numel, dtype=dtype) if target is None else target
    cuts = indices.cuts(_pieces(out.nbytes, budget))
    bits = _bits_view(out)
    tasks = [lambda s0=s0, s1=s1: indices.gather(codebook, bits, s0, s1) for s0, s1 in zip(cuts, cuts[1:])]
    if not all(pool.run(tasks, budget)):
        return None
    if factors is not None:
        _scale_rows(out, factors, budget)
    return out


def _row_factors(buf: Any, info: TensorInfo, tables: TableCache, codebook_bits: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(scales as floats, row_scales symbols) of a scaled shared tensor, checked in the order of §8
    group 7: the scales section's CRC-32, every codebook value and scale finite, then the stream."""
    fdtype = np.dtype(info.dtype).newbyteorder("<")
    scales = np.frombuffer(check_section(buf, info.scales, "scales", info.name), dtype=fdtype)
    if not np.isfinite(codebook_bits.view(fdtype)).all():
        raise CorruptDataError("a codebook value is not finite (§5.2: with row scales every codebook value must be "
                               "finite)", tensor=info.name, offset=info.codebook.offset)
    if not np.isfinite(scales).all():
        raise CorruptDataError("a row scale is not finite (§5.2)", tensor=info.name, offset=info.scales.offset)
    classes = decode_stream(buf, info.row_scales, tables, info.name, "row_scales")
    return scales, classes


def _scale_rows(flat_bits: np.ndarray, factors: tuple[np.ndarray, np.ndarray], budget: pool.Budget) -> None:
    """Multiply each row of a decoded shared tensor by its scale, in place, in row ranges on the budget's
    threads (numpy drops the GIL)."""
    scales, classes = factors
    flat = flat_bits.view(scales.dtype)
    rows = classes.size
    pieces = min(rows, _pieces(flat.nbytes, budget)) if rows else 1
    cuts = _cuts(rows, max(1, pieces))
    pool.run([lambda r0=r0, r1=r1: quantize.apply_row_scales(flat, scales, classes, r0, r1)
              for r0, r1 in zip(cuts, cuts[1:])], budget)


def _decode_sparse(buf: Any, info: TensorInfo, tables: TableCache, dtype: np.dtype,
                   budget: pool.Budget, target: np.ndarray | None = None) -> np.ndarray | None:
    """A sparse tensor, flat, in two parallel steps.

    1. The gaps and indices streams are decoded range by range; each gaps range also sums its
       g + 1, so that adding up the sums gives the scan position where each range of entries starts.
    2. The dense output is rebuilt range of entries by range of entries, each writing its own span of
       scan positions (the entries from one position after the previous range's last entry).
    """
    rows, cols = relindex.matrix_shape(info.shape)
    total, n = rows * cols, info.entries
    gaps_stream = _StreamPieces(buf, info.gaps, tables, "gaps", info.name, budget)
    if info.codebook is not None:
        source = _bits_view(_sparse_codebook(buf, info, dtype))
        indices_stream = _StreamPieces(buf, info.indices, tables, "indices", info.name, budget)
        indices = np.empty(n, dtype=np.uint16)
    else:
        values = np.frombuffer(_checked(buf, info.values, "values", info.name, budget), dtype=dtype)
        if info.dtype == "bool":
            _check_bool(values, info, info.values.offset)
        source, indices_stream, indices = _bits_view(values), None, None
    pieces = _pieces(total * dtype.itemsize, budget)
    gaps = np.empty(n, dtype=np.uint16)
    gaps_cuts = gaps_stream.cuts(pieces)
    entry_cuts = _cuts(n, pieces)  # the ranges of step 2
    points = sorted(set(gaps_cuts) | set(entry_cuts))

    def decode_gaps(s0: int, s1: int) -> tuple[bool, list[int]]:
        ok = gaps_stream.decode(gaps, s0, s1)
        inner = [x for x in points if s0 <= x <= s1]
        if not ok or len(entry_cuts) == 2:  # one range in step 2: it starts at 0 and needs no sums
            return ok, [0] * (len(inner) - 1)
        return ok, [relindex.gap_span(gaps, x, y) for x, y in zip(inner, inner[1:])]

    tasks = [lambda s0=s0, s1=s1: decode_gaps(s0, s1) for s0, s1 in zip(gaps_cuts, gaps_cuts[1:])]
    if indices_stream is not None:
        cuts = indices_stream.cuts(pieces)
        tasks += [lambda s0=s0, s1=s1: (indices_stream.decode(indices, s0, s1), [])
                  for s0, s1 in zip(cuts, cuts[1:])]
    decoded = pool.run(tasks, budget)
    if not all(ok for ok, _ in decoded):
        return None
    spans = [span for _, part in decoded for span in part]  # in order of `points`
    start = {points[0]: 0}  # entry index -> scan position one past the previous entry
    for x, y, span in zip(points, points[1:], spans):
        start[y] = start[x] + span
    if len(entry_cuts) > 2 and start[n] > total:  # positions only grow: only the last entry can be past the end
        return None
    zero = False  # a caller's array is not zero: where the rebuild only scatters, each range zeroes its span
    if target is None:
        out = relindex.dense_output(dtype, rows, cols, info.layout)
    else:
        out, zero = target, relindex.scatters(rows, cols, info.layout)
    bits = _bits_view(out)
    csc = info.layout == K.CSC
    last = len(entry_cuts) - 2

    def rebuild(k: int) -> bool:
        e0, e1 = entry_cuts[k], entry_cuts[k + 1]
        hi = total if k == last else start[e1]
        if zero:
            bits[start[e0]:hi] = 0
        code, _, _ = relindex.rebuild(gaps, indices, source, rows, cols, csc, bits, e0, e1, start[e0], hi)
        return code == 0

    return out if all(pool.run([lambda k=k: rebuild(k) for k in range(last + 1)], budget)) else None


def _decode_exact(buf: Any, info: TensorInfo, tables: TableCache, dtype: np.dtype) -> np.ndarray:
    """A shared or sparse tensor, flat, one step after another on this thread: each check in the
    order of the spec, each failure raised as the error that names it."""
    if info.encoding == K.SHARED:
        codebook = np.frombuffer(check_section(buf, info.codebook, "codebook", info.name), dtype=dtype)
        factors = None if info.scales is None else _row_factors(buf, info, tables, codebook)
        rows = None if factors is None else (factors[1], info.numel // max(1, factors[1].size))
        indices = decode_stream(buf, info.indices, tables, info.name, "indices", rows)
        flat = np.take(codebook, indices)
        if factors is not None:
            quantize.apply_row_scales(flat.view(factors[0].dtype), *factors)
        return flat
    rows, cols = relindex.matrix_shape(info.shape)
    gaps = decode_stream(buf, info.gaps, tables, info.name, "gaps")
    try:
        if info.codebook is not None:
            codebook = _sparse_codebook(buf, info, dtype)
            indices = decode_stream(buf, info.indices, tables, info.name, "indices")
            return relindex.decode_dense_codebook(gaps, indices, codebook, rows, cols, info.layout)
        values = np.frombuffer(check_section(buf, info.values, "values", info.name), dtype=dtype)
        if info.dtype == "bool":
            _check_bool(values, info, info.values.offset)
        return relindex.decode_dense(gaps, values, rows, cols, info.layout)
    except CorruptDataError as e:
        if e.tensor is None:
            raise CorruptDataError(str(e), tensor=info.name, offset=info.gaps.section.offset) from None
        raise


def _sparse_codebook(buf: Any, info: TensorInfo, dtype: np.dtype) -> np.ndarray:
    """A sparse tensor's codebook, whose entry 0 (the fillers' value) must be all zero bits (§5.3)."""
    codebook = np.frombuffer(check_section(buf, info.codebook, "codebook", info.name), dtype=dtype)
    if _bits_view(codebook[:1]).any():
        raise CorruptDataError("sparse codebook[0] is not all zero bits (§5.3: fillers must decode to zero)",
                               tensor=info.name, offset=info.codebook.offset)
    return codebook


def _check_bool(a: np.ndarray, info: TensorInfo, offset: int) -> None:
    bad = np.flatnonzero(a.view(np.uint8) > 1)
    if len(bad):
        raise CorruptDataError(f"bool element {bad[0]} has byte value {int(a.view(np.uint8).reshape(-1)[bad[0]])}, not 0 or 1",
                               tensor=info.name, offset=offset)


@dataclass
class SparseTensor:
    """A sparse tensor in compressed form, not densified (see `SafeOpen.get_sparse`).

    `indptr`, `indices` are the CSR (layout "csr": rows are major) or CSC arrays of the R x C view
    of the tensor (§5.3); `codes` are codebook indices (when `codebook` is not None) and `values`
    the decoded values, one per stored element. Fillers are dropped.
    """

    layout: str
    shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    codes: np.ndarray | None
    codebook: np.ndarray | None

    def to_scipy(self):
        """The matrix as a scipy.sparse csr_matrix / csc_matrix (scipy is imported lazily)."""
        import scipy.sparse as sp

        cls = sp.csr_matrix if self.layout == K.CSR else sp.csc_matrix
        return cls((self.values, self.indices, self.indptr), shape=self.matrix_shape)

    def todense(self) -> np.ndarray:
        """The dense tensor with the original shape."""
        rows, cols = self.matrix_shape
        out = np.zeros(rows * cols, self.values.dtype)
        major = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        flat = major * cols + self.indices if self.layout == K.CSR else self.indices * cols + major
        out[flat] = self.values
        return out.reshape(self.shape)


def decode_sparse(buf: Any, info: TensorInfo, tables: TableCache) -> SparseTensor:
    """The stored entries of a sparse tensor as CSR/CSC arrays (spec §5.3), fillers dropped."""
    dtype = numpy_dtype(info.dtype)
    rows, cols = relindex.matrix_shape(info.shape)
    gaps = decode_stream(buf, info.gaps, tables, info.name, "gaps")
    try:
        positions = relindex.decode_positions(gaps, rows * cols)
    except CorruptDataError as e:
        raise CorruptDataError(str(e), tensor=info.name, offset=info.gaps.section.offset) from None
    codes = codebook = None
    if info.codebook is not None:
        codebook = _sparse_codebook(buf, info, dtype).copy()
        codes = decode_stream(buf, info.indices, tables, info.name, "indices")
        if len(codes) and int(codes.max()) >= len(codebook):
            j = int(np.argmax(codes >= len(codebook)))
            raise CorruptDataError(f"entry {j} has codebook index {int(codes[j])}, the codebook holds {len(codebook)}",
                                   tensor=info.name, offset=info.indices.section.offset)
        values = codebook[codes]
    else:
        values = np.frombuffer(check_section(buf, info.values, "values", info.name), dtype=dtype).copy()
        if info.dtype == "bool":
            _check_bool(values, info, info.values.offset)
    keep = _bits_view(values) != 0
    positions, values = positions[keep], values[keep]
    if codes is not None:
        codes = codes[keep]
    indptr, minor = relindex.to_compressed(positions, rows, cols, info.layout)
    return SparseTensor(info.layout, info.shape, (rows, cols), indptr, minor, values, codes, codebook)
