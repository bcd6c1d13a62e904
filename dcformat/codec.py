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

from . import bitpack, huffman, prune as pruning, quantize, relindex
from . import constants as K
from .container import EncodedTensor, Stream, TensorInfo, check_section
from .errors import CorruptDataError, DCFError, EncodeError
from .policy import AUTO, TensorPlan, dtype_name

INDEX_BITS_CANDIDATES = tuple(range(1, 13))  # tried by index_bits="auto"


def numpy_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype of a spec dtype name (§3.2)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
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
        self.counts = np.bincount(self.symbols, minlength=1).astype(np.int64)

    @property
    def fixed_bytes(self) -> int:
        return bitpack.packed_size(len(self.symbols), self.width)


def estimate_stream_bytes(draft: StreamDraft, header_cost: int = K.HUFFMAN_ZLIB_COST) -> int:
    """Bytes the stream will take, coded the cheaper way (table text and, for Huffman, the `header_cost`
    bytes its stream object adds to the header counted)."""
    best = draft.fixed_bytes
    if len(draft.symbols) == 0 or np.count_nonzero(draft.counts) > (1 << K.MAX_CODE_LENGTH):
        return best
    lengths = huffman.code_lengths(draft.counts)
    payload = -(-huffman.encoded_bits(draft.counts, lengths) // 8)
    return min(best, payload + len(huffman.lengths_to_hex(lengths)) + 8 + header_cost)


def code_stream(draft: StreamDraft, mode: str, block_size: int, shared_lengths: np.ndarray | None = None,
                header_cost: int = K.HUFFMAN_ZLIB_COST) -> tuple[dict, bytes, str | None]:
    """Code a stream: (stream object with "table" as hex text, payload, table text or None).

    Huffman is chosen only when its payload, table text, 4 bytes per block and `header_cost` (the
    header bytes a Huffman stream object adds over a fixed one: K.HUFFMAN_JSON_COST for a JSON
    header, K.HUFFMAN_ZLIB_COST for a compressed one) come to fewer bytes than fixed width.
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
        extra = (0 if lengths is shared_lengths else len(text)) + header_cost
        if -(-huffman.encoded_bits(draft.counts, lengths) // 8) + extra >= best_size:
            continue
        payload, block_bytes = huffman.encode(draft.symbols, lengths, block_size)
        size = len(payload) + extra + 4 * len(block_bytes)
        if size < best_size:
            obj = {"coding": K.HUFFMAN, "section": None, "table": text, "block_size": block_size, "block_bytes": block_bytes}
            best, best_size = (obj, payload, text), size
    return best


def decode_stream(buf: Any, stream: Stream, tables: "TableCache", tensor: str, key: str) -> np.ndarray:
    """Decode a stream's symbols (uint16), checking its CRC first."""
    data = check_section(buf, stream.section, key, tensor)
    try:
        if stream.coding == K.FIXED:
            return bitpack.unpack(data, stream.count, stream.width, stream.alphabet)
        lengths = tables.get(stream.table)
        # A block_size beyond the count means one block (§6.3); clamping keeps a hostile 2**64 out of
        # the int64 arithmetic of the decoder without changing the meaning.
        block_size = min(stream.block_size, max(1, stream.count))
        return huffman.decode(data, stream.count, lengths, block_size, list(stream.block_bytes))
    except DCFError as e:
        raise CorruptDataError(f"stream {key!r}: {e}", tensor=tensor, offset=stream.section.offset) from None


class TableCache:
    """The file's Huffman tables, parsed once each on first use."""

    def __init__(self, tables: list[str]):
        self._text = tables
        self._parsed: dict[int, np.ndarray] = {}

    def get(self, index: int) -> np.ndarray:
        if index not in self._parsed:
            self._parsed[index] = huffman.lengths_from_hex(self._text[index])
        return self._parsed[index]


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

    def estimate(self) -> int:
        raw = sum(memoryview(p).nbytes for p in self.payloads if p is not None)
        return raw + sum(estimate_stream_bytes(s) for s in self.streams.values())


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
        return TensorDraft(name, {**base, "encoding": K.RAW, "data": 0}, [a.reshape(-1).view(np.uint8)], {})
    x = a
    if plan.prune or plan.threshold is not None:
        x = pruning.prune(a, sparsity=plan.prune if plan.prune else None, threshold=plan.threshold)
    zero = _bits_view(x.reshape(-1)) == 0
    has_zeros = bool(zero.any())
    candidates: list[TensorDraft] = []
    bits = plan.bits
    if bits is not None and x.size and not np.isfinite(x.astype(np.float32, copy=False)).all():
        # A codebook cannot stand for NaN or inf: keep such a tensor's values exact instead.
        warnings.warn(f"tensor {name!r} has non-finite values: stored without weight sharing", stacklevel=3)
        bits = None
    if plan.step is not None and x.size and not np.isfinite(x.astype(np.float32, copy=False)).all():
        warnings.warn(f"tensor {name!r} has non-finite values: stored without quantization", stacklevel=3)
    elif plan.step is not None:
        return _uniform_draft(base, a, x, plan)
    if bits is not None:
        codebook, indices = _quantize_for(a, x, bits, has_zeros, plan)
        bits = max(1, int(len(codebook) - 1).bit_length())
        decoded = codebook[indices].reshape(a.shape)
        candidates.append(_shared_draft(base, codebook, indices, bits))
        if has_zeros:
            candidates += _sparse_drafts(base, decoded, plan, codebook=codebook, indices=indices, bits=bits)
    else:
        decoded = x
        candidates.append(TensorDraft(name, {**base, "encoding": K.RAW, "data": 0}, [x.reshape(-1).view(np.uint8)], {}))
        if has_zeros:
            candidates += _sparse_drafts(base, x, plan)
    return _smallest(candidates, decoded, a, base)


# Bytes a section costs beyond its payload: on average half the 64-byte alignment, plus its JSON keys.
SECTION_OVERHEAD = 64


def _smallest(candidates: list[TensorDraft], decoded: np.ndarray, original: np.ndarray, base: dict) -> TensorDraft:
    """The smallest candidate; a vector or scalar stays raw (exact) when coding it would not save bytes."""
    def cost(d: TensorDraft) -> int:
        return d.estimate() + SECTION_OVERHEAD * (len(d.payloads) + len(d.streams))

    best = min(candidates, key=lambda d: d.estimate())
    if original.ndim > 1:  # matrices take the form the plan asks for, even when raw would be as small
        best.decoded = decoded
        return best
    raw = TensorDraft(base["name"], {**base, "encoding": K.RAW, "data": 0}, [original.reshape(-1).view(np.uint8)], {})
    if cost(raw) <= cost(best):
        raw.decoded = original
        return raw
    best.decoded = decoded
    return best


def draft_explicit(name: str, value: Any, encoding: str, *, codebook: Any = None, indices: Any = None,
                   layout: str = K.CSR, index_bits: int = 5) -> TensorDraft:
    """A tensor in exactly the form asked for, with no lossy step (for test vectors and tools).

    - "raw": the array as it is.
    - "shared": `codebook` (values of the array's dtype) and `indices` (one per element, C order);
      with neither given, the codebook is the array's distinct bit patterns, sorted by value.
    - "sparse": with a `codebook` (codebook[0] must be all zero bits) and `indices` (one per element,
      0 where the element is zero), or without (values stored raw). `layout` and `index_bits` as given.
    The decoded tensor equals codebook[indices] (or the array) and is kept in `decoded`.
    """
    a = _as_array(name, value)
    dtype = dtype_name(a.dtype)
    base = {"name": name, "dtype": dtype, "shape": list(a.shape)}
    if encoding == K.RAW:
        return TensorDraft(name, {**base, "encoding": K.RAW, "data": 0}, [a.reshape(-1).view(np.uint8)], {}, a)
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
    """Codebook and indices at `bits`, or, with a max_error target, at the fewest bits that meet it."""
    def at(b: int) -> tuple[np.ndarray, np.ndarray]:
        return quantize.quantize(x, b, sparse=sparse, method=plan.quantizer, init=plan.init, lam=plan.lam)

    if plan.max_error is None:
        return at(bits)
    reference = original.astype(np.float64).reshape(-1)
    norm = float(np.sqrt(np.sum(reference * reference)))
    if not np.isfinite(norm):  # values near the float64 limit: no meaningful error to aim at
        return at(bits)
    for b in range(1, bits):
        codebook, indices = at(b)
        error = float(np.sqrt(np.sum((codebook[indices].astype(np.float64) - reference) ** 2)))
        if error <= plan.max_error * norm:
            return codebook, indices
    return at(bits)


# A uniform quantizer's zero level is usually a small share of the weights. Huffman codes a symbol in
# no less than one bit, so the sparse form (gaps between non-zeros) only wins where zeros are common;
# below this share its candidates are not worth building (on an 11.7 M-weight tensor they cost seconds).
SPARSE_MIN_ZERO_SHARE = 0.4


def _uniform_draft(base: dict, original: np.ndarray, x: np.ndarray, plan: TensorPlan) -> TensorDraft:
    """Uniform quantization with the plan's step, stored shared or (mostly zeros) sparse."""
    try:
        codebook, indices = quantize.quantize_uniform(x, plan.step)
    except EncodeError as e:
        raise EncodeError(str(e), tensor=base["name"]) from None
    bits = max(1, int(len(codebook) - 1).bit_length())
    decoded = codebook[indices].reshape(original.shape)
    candidates = [_shared_draft(base, codebook, indices, bits)]
    if x.size and codebook[0] == 0 and np.count_nonzero(indices == 0) >= SPARSE_MIN_ZERO_SHARE * x.size:
        candidates += _sparse_drafts(base, decoded, plan, codebook=codebook, indices=indices, bits=bits)
    return _smallest(candidates, decoded, original, base)


def _shared_draft(base: dict, codebook: np.ndarray, indices: np.ndarray, bits: int) -> TensorDraft:
    header = {**base, "encoding": K.SHARED, "bits": bits, "codebook": 0, "indices": "indices"}
    stream = StreamDraft("indices", indices.astype(np.uint16, copy=False), len(codebook), bits)
    return TensorDraft(base["name"], header, [codebook.view(np.uint8)], {"indices": stream})


def _sparse_drafts(base: dict, x: np.ndarray, plan: TensorPlan, *, codebook=None, indices=None, bits=None) -> list[TensorDraft]:
    """Sparse candidates for every layout and index width the plan allows."""
    rows, cols = relindex.matrix_shape(tuple(x.shape))
    layouts = (K.CSR, K.CSC) if plan.layout == AUTO else (plan.layout,)
    widths = INDEX_BITS_CANDIDATES if plan.index_bits == AUTO else (plan.index_bits,)
    flat = x.reshape(-1)
    out = []
    for layout in layouts:
        positions = relindex.nonzero_positions(x, layout)
        order = relindex.scan_to_flat(positions, rows, cols, layout)
        for b in widths:
            try:
                gaps, real = relindex.encode_gaps(positions, b, max_entries=max(1, x.size))
            except EncodeError:
                continue
            entries = len(gaps)
            header = {**base, "encoding": K.SPARSE, "layout": layout, "index_bits": b, "entries": entries, "fillers": entries - len(positions)}
            streams = {"gaps": StreamDraft("gaps", gaps, 1 << b, b)}
            if codebook is not None:
                codes = np.zeros(entries, np.uint16)
                codes[real] = indices[order]
                header.update({"bits": bits, "codebook": 0, "gaps": "gaps", "indices": "indices"})
                streams["indices"] = StreamDraft("indices", codes, len(codebook), bits)
                payloads = [codebook.view(np.uint8)]
            else:
                values = np.zeros(entries, flat.dtype)
                values[real] = flat[order]
                header.update({"gaps": "gaps", "values": 0})
                payloads = [values.view(np.uint8)]
            out.append(TensorDraft(base["name"], header, payloads, streams))
    return out


# ---------------------------------------------------------------------------------------------
# Assembling coded tensors


def assemble(drafts: list[TensorDraft], mode: str = "auto", block_size: int = K.DEFAULT_BLOCK_SIZE,
             progress: Callable[[str], None] | None = None, *,
             header_cost: int = K.HUFFMAN_ZLIB_COST) -> tuple[list[str], list[EncodedTensor]]:
    """Code every stream and lay out each tensor's payloads in file order (§5): (tables, tensors).

    `header_cost`: the header bytes a Huffman stream adds (see code_stream).
    """
    shared: dict[str, np.ndarray] = {}
    if mode == "shared":
        for kind in ("indices", "gaps"):
            streams = [d.streams[kind] for d in drafts if kind in d.streams and len(d.streams[kind].symbols)]
            if streams:
                size = max(len(s.counts) for s in streams)
                total = np.zeros(size, np.int64)
                for s in streams:
                    total[: len(s.counts)] += s.counts
                if np.count_nonzero(total) <= (1 << K.MAX_CODE_LENGTH):
                    shared[kind] = huffman.code_lengths(total)
    tables: list[str] = []
    table_index: dict[str, int] = {}
    out = []
    for d in drafts:
        header = dict(d.header)
        payloads: list[Any] = []
        for key in ("data", "codebook", "gaps", "indices", "values"):
            if key not in header:
                continue
            if key in d.streams:
                obj, payload, text = code_stream(d.streams[key], "auto" if mode == "shared" else mode, block_size,
                                                 shared.get(key), header_cost)
                if text is not None:
                    if text not in table_index:
                        table_index[text] = len(tables)
                        tables.append(text)
                    obj["table"] = table_index[text]
                header[key] = obj
                payloads.append(payload)
            else:
                payloads.append(d.payloads[header[key]])
        out.append(EncodedTensor(header, payloads))
        if progress is not None:
            progress(d.name)
    _number_sections(out)
    return tables, out


def _number_sections(tensors: list[EncodedTensor]) -> None:
    for t in tensors:
        i = 0
        for key in ("data", "codebook", "gaps", "indices", "values"):
            if key not in t.header:
                continue
            if isinstance(t.header[key], dict):
                t.header[key]["section"] = i
            else:
                t.header[key] = i
            i += 1


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_tensor(buf: Any, info: TensorInfo, tables: TableCache, *, copy: bool = True) -> np.ndarray:
    """Decode one tensor to a dense numpy array of its dtype and shape (spec §5)."""
    dtype = numpy_dtype(info.dtype)
    if info.encoding == K.RAW:
        data = check_section(buf, info.data, "data", info.name)
        a = np.frombuffer(data, dtype=dtype, count=info.numel).reshape(info.shape)
        if info.dtype == "bool":
            _check_bool(a, info, info.data.offset)
        return a.copy() if copy else a
    if info.encoding == K.SHARED:
        codebook = np.frombuffer(check_section(buf, info.codebook, "codebook", info.name), dtype=dtype)
        indices = decode_stream(buf, info.indices, tables, info.name, "indices")
        return np.take(codebook, indices).reshape(info.shape)
    rows, cols = relindex.matrix_shape(info.shape)
    gaps = decode_stream(buf, info.gaps, tables, info.name, "gaps")
    try:
        if info.codebook is not None:
            codebook = _sparse_codebook(buf, info, dtype)
            indices = decode_stream(buf, info.indices, tables, info.name, "indices")
            flat = relindex.decode_dense_codebook(gaps, indices, codebook, rows, cols, info.layout)
        else:
            values = np.frombuffer(check_section(buf, info.values, "values", info.name), dtype=dtype)
            if info.dtype == "bool":
                _check_bool(values, info, info.values.offset)
            flat = relindex.decode_dense(gaps, values, rows, cols, info.layout)
    except CorruptDataError as e:
        if e.tensor is None:
            raise CorruptDataError(str(e), tensor=info.name, offset=info.gaps.section.offset) from None
        raise
    return flat.reshape(info.shape)


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
