"""The Deep Compression authors' released format (.net files of Deep-Compression-AlexNet and
SqueezeNet-Deep-Compression): reader, writer, and the bridge to and from dcformat.

Written from the format's description (/work/shared/docs/deep-compression.md). A file holds no
magic, names, shapes or bit widths; a Caffe deploy prototxt gives the layers (`prototxt.layer_shapes`):

- a header of one little-endian uint32 per weight-bearing layer, in prototxt order: the number of
  stored entries ``n`` of the layer, fillers included;
- then per layer, back to back, no padding:
  codebook (``2^bits`` float32), biases (float32, one per output; absent with ``bias_term: false``),
  codes (``n`` codebook indices: one byte each for 8 bits, two per byte for 4 bits),
  index stream (``n`` 4-bit relative indices, two per byte);
- 4-bit packing: entry ``2i`` in the low nibble, ``2i+1`` in the high nibble; an odd ``n`` leaves the
  last high nibble zero (this reader rejects a non-zero one, so every accepted file is reproducible);
- the stored index is the number of zeros skipped before the entry (0..15); entry positions over the
  whole flattened weight (C order) are ``cumsum(index + 1) - 1``; each entry writes ``codebook[code]``
  at its position, all other weights are zero; a *filler* (index 15, code 0) bridges a run of more
  than 15 zeros; ``codebook[0]`` is 0.0; zeros after the last non-zero are not stored.

Bit widths are not in the file. The released convention is 8-bit codes (256-entry codebook) for
convolution layers and 4-bit codes (16 entries) for fully-connected layers (`default_bits`); the
``bits`` argument of every function overrides it per layer (a mapping from layer name, or a function
of the `LayerSpec`, giving 4 or 8).

This entry stream is exactly a dcformat ``sparse`` tensor with a codebook, layout ``csr`` and
``index_bits = 4``: the CSR view of a weight (out, in, kh, kw) is (out, in*kh*kw), whose row-major
scan order is the flattened order. `net_to_dcformat` keeps each layer's codebook as it is (unused
entries included), Huffman-codes the streams and picks each layer's index width for the smallest
file; `dcformat_to_net` rebuilds the .net byte for byte.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import codec, relindex
from .. import constants as K
from ..container import DEFAULT_LIMITS, Limits, atomic_write, check_section, write_stream
from ..errors import CorruptDataError, DCFError, EncodeError, FormatError, LimitError, TruncatedError
from .prototxt import LayerSpec, layer_shapes

__all__ = [
    "CONV_BITS", "FC_BITS", "INDEX_BITS", "NetLayer", "default_bits", "load_prototxt", "parse_net", "decode_layer",
    "read_net", "pack_net", "encode_layer", "write_net", "net_to_dcformat", "dcformat_to_net", "cli_convert",
]

CONV_BITS = 8  # released convention: conv layers have 256-entry codebooks and one code per byte
FC_BITS = 4  # ... fully-connected layers 16-entry codebooks and two codes per byte
ALLOWED_BITS = (4, 8)  # the only code packings the format has
INDEX_BITS = 4  # the relative-index width of the format (fixed)
FILLER_INDEX = (1 << INDEX_BITS) - 1
METADATA_KEY = "deepcompression"  # dcformat metadata entry that records the layer list and bit widths

Bits = Mapping[str, int] | Callable[[LayerSpec], int] | None


# ---------------------------------------------------------------------------------------------
# Layers and bit widths


def default_bits(layer: LayerSpec) -> int:
    """The released convention: 8-bit codes for convolutions, 4-bit codes for inner products."""
    return CONV_BITS if layer.type == "Convolution" else FC_BITS


def _bits_of(layers: Sequence[LayerSpec], bits: Bits, error: type[DCFError]) -> list[int]:
    """Each layer's code width: from `bits` (mapping by layer name, or function), else `default_bits`."""
    if bits is not None and not (callable(bits) or isinstance(bits, Mapping)):
        raise error(f"bits must be a mapping of layer names to 4 or 8, or a function of the layer; not {bits!r}")
    if isinstance(bits, Mapping):
        unknown = set(bits) - {layer.name for layer in layers}
        if unknown:
            raise error(f"bits names layers that are not in the net: {sorted(unknown)}")
    out = []
    for layer in layers:
        if bits is None:
            b = default_bits(layer)
        elif isinstance(bits, Mapping):
            b = bits.get(layer.name, default_bits(layer))
        else:
            b = bits(layer)
        if isinstance(b, bool) or b not in ALLOWED_BITS:
            raise error(f"layer {layer.name!r}: code width must be 4 or 8 bits, not {b!r}")
        out.append(int(b))
    return out


def load_prototxt(path: str | os.PathLike) -> list[LayerSpec]:
    """The weight-bearing layers of the Caffe deploy prototxt at `path`."""
    with open(path, encoding="utf-8") as f:
        return layer_shapes(f.read())


def _weight_name(layer: LayerSpec) -> str:
    return f"{layer.name}.weight"


def _bias_name(layer: LayerSpec) -> str:
    return f"{layer.name}.bias"


# ---------------------------------------------------------------------------------------------
# Byte-level layout


@dataclass
class NetLayer:
    """One layer as a .net file stores it: codebook, biases and the entry stream (fillers included)."""

    spec: LayerSpec
    bits: int
    codebook: np.ndarray  # float32, 2**bits values
    bias: np.ndarray | None  # float32, or None without bias_term
    index: np.ndarray  # uint8, one relative index (0..15) per entry
    codes: np.ndarray  # uint8, one codebook index per entry

    @property
    def entries(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        return _layer_nbytes(self.entries, self.bits, 0 if self.bias is None else self.bias.size)

    def positions(self) -> np.ndarray:
        """Each entry's flat position (int64): cumsum(index + 1) - 1."""
        return np.cumsum(self.index.astype(np.int64) + 1) - 1

    def fillers(self) -> int:
        """Entries whose value is all zero bits (fillers, and any explicitly stored zero)."""
        return int(np.count_nonzero(_bits(self.codebook)[self.codes] == 0))


def _bits(a: np.ndarray) -> np.ndarray:
    """float32 values as their uint32 bit patterns (so -0.0 and NaN payloads compare and copy exactly)."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _packed_size(count: int, bits: int) -> int:
    return count if bits == 8 else (count + 1) // 2


def _layer_nbytes(entries: int, bits: int, biases: int) -> int:
    return 4 * (1 << bits) + 4 * biases + _packed_size(entries, bits) + _packed_size(entries, INDEX_BITS)


def _pack_nibbles(values: np.ndarray) -> bytes:
    """Two 4-bit values per byte: value 2i in the low nibble, 2i+1 in the high one; odd counts end with 0."""
    v = np.asarray(values, dtype=np.uint8)
    if len(v) % 2:
        v = np.append(v, np.uint8(0))
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8).tobytes()


def _unpack_nibbles(data: np.ndarray, count: int) -> np.ndarray:
    out = np.empty(2 * len(data), dtype=np.uint8)
    out[0::2] = data & 0x0F
    out[1::2] = data >> 4
    return out[:count]


def parse_net(data: bytes | bytearray | memoryview, layers: Sequence[LayerSpec], *, bits: Bits = None,
              limits: Limits = DEFAULT_LIMITS) -> list[NetLayer]:
    """Split a .net file into its layers, checking every length, padding nibble and position first."""
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    size = len(buf)
    widths = _bits_of(layers, bits, DCFError)
    header = 4 * len(layers)
    if size < header:
        raise TruncatedError(f"the header needs {header} bytes (one uint32 for each of {len(layers)} layers); "
                             f"the file has {size}", offset=size)
    counts = buf[:header].view("<u4").astype(np.int64)
    dense = sum(4 * (layer.weight_numel + (math.prod(layer.bias_shape) if layer.bias_shape else 0)) for layer in layers)
    if dense > limits.max_decoded_bytes(size):
        raise LimitError(f"the layers decode to {dense} bytes, more than the limit of {limits.max_decoded_bytes(size)} "
                         f"for a file of {size} bytes")
    out = []
    offset = header
    for layer, b, n in zip(layers, widths, counts.tolist()):
        name = _weight_name(layer)
        biases = math.prod(layer.bias_shape) if layer.bias_shape is not None else 0
        need = _layer_nbytes(n, b, biases)
        if offset + need > size:
            raise TruncatedError(f"layer {layer.name!r} ({n} entries, {b}-bit codes, {biases} biases) needs {need} bytes; "
                                 f"{size - offset} remain", tensor=name, offset=offset)
        k = 1 << b
        codebook = buf[offset: offset + 4 * k].view("<f4").astype(np.float32)
        at = offset + 4 * k
        bias = buf[at: at + 4 * biases].view("<f4").astype(np.float32) if layer.bias_shape is not None else None
        at += 4 * biases
        code_bytes = buf[at: at + _packed_size(n, b)]
        if b == 8:
            codes = code_bytes.copy()
        else:
            _check_padding(code_bytes, n, name, at, "codes")
            codes = _unpack_nibbles(code_bytes, n)
        at += _packed_size(n, b)
        index_bytes = buf[at: at + _packed_size(n, INDEX_BITS)]
        _check_padding(index_bytes, n, name, at, "index stream")
        net_layer = NetLayer(layer, b, codebook, bias, _unpack_nibbles(index_bytes, n), codes)
        _check_positions(net_layer, at)
        out.append(net_layer)
        offset = at + _packed_size(n, INDEX_BITS)
    if offset != size:
        raise FormatError(f"{size - offset} bytes follow the last layer: the prototxt's layers or the bit widths "
                          f"do not match the file", offset=offset)
    return out


def _check_padding(packed: np.ndarray, count: int, name: str, offset: int, what: str) -> None:
    if count % 2 and packed[-1] >> 4:
        raise CorruptDataError(f"{what}: the unused high nibble after the last of {count} entries is not zero",
                               tensor=name, offset=offset + len(packed) - 1)


def _check_positions(layer: NetLayer, index_offset: int) -> None:
    """CorruptDataError unless every entry's position lies inside the layer."""
    numel = layer.spec.weight_numel
    if layer.entries == 0:
        return
    # The last position is the largest: sum(index + 1) - 1.
    if int(layer.index.sum(dtype=np.int64)) + layer.entries - 1 < numel:
        return
    positions = layer.positions()
    j = int(np.searchsorted(positions, numel))
    raise CorruptDataError(f"entry {j} of {layer.entries} is at position {int(positions[j])}, past the end of the "
                           f"layer ({numel} weights)", tensor=_weight_name(layer.spec), offset=index_offset + j // 2)


def decode_layer(layer: NetLayer) -> np.ndarray:
    """The dense weight (float32, the layer's shape): codebook[code] at each entry's position, zero elsewhere."""
    out = np.zeros(layer.spec.weight_numel, dtype=np.uint32)
    out[layer.positions()] = _bits(layer.codebook)[layer.codes]
    return out.view(np.float32).reshape(layer.spec.weight_shape)


def read_net(data: bytes | bytearray | memoryview, layers: Sequence[LayerSpec], *, bits: Bits = None,
             limits: Limits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Decode a .net file: {"<layer>.weight": float32 array, "<layer>.bias": float32 array}, in layer order."""
    out: dict[str, np.ndarray] = {}
    for layer in parse_net(data, layers, bits=bits, limits=limits):
        out[_weight_name(layer.spec)] = decode_layer(layer)
        if layer.bias is not None:
            out[_bias_name(layer.spec)] = layer.bias.reshape(layer.spec.bias_shape)
    return out


def pack_net(layers: Sequence[NetLayer]) -> bytes:
    """The bytes of a .net file holding these layers, in order."""
    out = io.BytesIO()
    out.write(np.array([layer.entries for layer in layers], dtype="<u4").tobytes())
    for layer in layers:
        name = _weight_name(layer.spec)
        if layer.bits not in ALLOWED_BITS or len(layer.codebook) != 1 << layer.bits:
            raise EncodeError(f"a {layer.bits}-bit layer needs a codebook of {1 << layer.bits} values, "
                              f"not {len(layer.codebook)}", tensor=name)
        if _bits(layer.codebook[:1])[0] != 0:
            raise EncodeError(f"codebook[0] must be 0.0, not {float(layer.codebook[0])!r}", tensor=name)
        if len(layer.codes) != layer.entries:
            raise EncodeError(f"{len(layer.codes)} codes for {layer.entries} entries", tensor=name)
        if layer.entries and (int(layer.index.max()) > FILLER_INDEX or int(layer.codes.max()) >= 1 << layer.bits):
            raise EncodeError("relative indices must lie in 0..15 and codes below the codebook size", tensor=name)
        if (layer.bias is None) != (layer.spec.bias_shape is None) or (
                layer.bias is not None and layer.bias.size != math.prod(layer.spec.bias_shape)):
            raise EncodeError(f"the bias does not match the layer's bias shape {layer.spec.bias_shape}", tensor=name)
        out.write(np.asarray(layer.codebook, dtype="<f4").tobytes())
        if layer.bias is not None:
            out.write(np.asarray(layer.bias, dtype="<f4").tobytes())
        out.write(layer.codes.astype(np.uint8).tobytes() if layer.bits == 8 else _pack_nibbles(layer.codes))
        out.write(_pack_nibbles(layer.index))
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Encoding tensors


def _float32(name: str, value: Any) -> np.ndarray:
    """value as float32, provided the conversion is exact (the format holds float32 only)."""
    a = np.asarray(value)
    if a.dtype == np.float32:
        return np.ascontiguousarray(a)
    if a.dtype.kind not in "fiub":
        raise EncodeError(f"dtype {a.dtype} cannot be stored as float32", tensor=name)
    with np.errstate(all="ignore"):
        b = a.astype(np.float32)
        exact = np.array_equal(b.astype(a.dtype), a, equal_nan=a.dtype.kind == "f")
    if not exact:
        raise EncodeError(f"dtype {a.dtype} values do not all convert to float32 exactly", tensor=name)
    return b


def _layer_from_codes(spec: LayerSpec, bits: int, codebook: np.ndarray, positions: np.ndarray,
                      codes: np.ndarray, bias: np.ndarray | None) -> NetLayer:
    """A layer storing codes at the given sorted flat positions, with fillers by the format's rule."""
    name = _weight_name(spec)
    k = 1 << bits
    codebook = np.asarray(codebook, dtype=np.float32).reshape(-1)
    if len(codebook) > k:
        raise EncodeError(f"a codebook of {len(codebook)} values does not fit {bits}-bit codes", tensor=name)
    if len(codebook) == 0 or _bits(codebook[:1])[0] != 0:
        raise EncodeError("codebook[0] must be 0.0 (fillers and unwritten weights decode to it)", tensor=name)
    full = np.zeros(k, dtype=np.float32)
    full[: len(codebook)] = codebook
    index, real = relindex.encode_gaps(positions, INDEX_BITS)
    stream = np.zeros(len(index), dtype=np.uint8)
    stream[real] = codes
    return NetLayer(spec, bits, full, bias, index.astype(np.uint8), stream)


def encode_layer(spec: LayerSpec, weight: Any, bias: Any, bits: int) -> NetLayer:
    """A layer from dense tensors: codebook[0] = 0.0, then the distinct non-zero values in ascending order.

    EncodeError when the weight has more distinct non-zero values than a ``bits``-bit codebook holds
    besides 0.0, or when a shape differs from the prototxt's.
    """
    name = _weight_name(spec)
    w = _float32(name, weight)
    if tuple(w.shape) != tuple(spec.weight_shape):
        raise EncodeError(f"shape {tuple(w.shape)} differs from the prototxt's {tuple(spec.weight_shape)}", tensor=name)
    b = None
    if spec.bias_shape is not None:
        if bias is None:
            raise EncodeError(f"layer {spec.name!r} has a bias (bias_term) but no tensor {_bias_name(spec)!r} was given",
                              tensor=_bias_name(spec))
        b = _float32(_bias_name(spec), bias)
        if tuple(b.shape) != tuple(spec.bias_shape):
            raise EncodeError(f"shape {tuple(b.shape)} differs from the prototxt's {tuple(spec.bias_shape)}",
                              tensor=_bias_name(spec))
        b = b.reshape(-1)
    elif bias is not None:
        raise EncodeError(f"layer {spec.name!r} has bias_term: false, but a bias tensor was given", tensor=_bias_name(spec))
    flat = _bits(w.reshape(-1))
    positions = np.flatnonzero(flat)  # +0.0 is the only value not stored; -0.0 and NaN keep their bits
    distinct, codes = np.unique(flat[positions], return_inverse=True)
    limit = (1 << bits) - 1
    if len(distinct) > limit:
        raise EncodeError(f"layer {spec.name!r} has {len(distinct)} distinct non-zero values; a {bits}-bit codebook "
                          f"holds {limit} besides 0.0 (quantize the layer first)", tensor=name)
    # Ascending by value (ties and NaNs ordered by bit pattern) so that the codebook reads naturally.
    values = distinct.view(np.float32)
    order = np.lexsort((distinct, values))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    codebook = np.concatenate([np.zeros(1, np.float32), values[order]])
    return _layer_from_codes(spec, bits, codebook, positions, (rank[codes.reshape(-1)] + 1).astype(np.uint8), b)


def _check_names(tensors: Mapping[str, Any], layers: Sequence[LayerSpec]) -> None:
    known = {_weight_name(layer) for layer in layers} | {_bias_name(layer) for layer in layers if layer.bias_shape}
    extra = [k for k in tensors if k not in known]
    if extra:
        raise EncodeError(f"the released format has no place for tensor(s) {extra[:5]}: they are not the weight or "
                          f"bias of a Convolution/InnerProduct layer of the prototxt", tensor=extra[0])
    missing = [_weight_name(layer) for layer in layers if _weight_name(layer) not in tensors]
    if missing:
        raise EncodeError(f"missing weight tensor(s) {missing[:5]}", tensor=missing[0])


def write_net(tensors: Mapping[str, Any], layers: Sequence[LayerSpec], *, bits: Bits = None) -> bytes:
    """Encode {"<layer>.weight", "<layer>.bias"} tensors as a .net file (deterministic).

    Every weight must already be pruned and quantized: at most 2^bits - 1 distinct non-zero values
    (255 for conv, 15 for fc by default); otherwise EncodeError names the layer.
    """
    _check_names(tensors, layers)
    widths = _bits_of(layers, bits, EncodeError)
    return pack_net([encode_layer(layer, tensors[_weight_name(layer)], tensors.get(_bias_name(layer)), b)
                     for layer, b in zip(layers, widths)])


# ---------------------------------------------------------------------------------------------
# The bridge to dcformat


def _is_canonical(layer: NetLayer) -> bool:
    """True when the entry stream is exactly what the format's filler rule gives for the layer's non-zeros.

    Then any index width can stand in for it: the .net is rebuilt from positions and codes alone.
    Otherwise (extra fillers, stored zeros, trailing fillers) the stream is kept as it is.
    """
    value_bits = _bits(layer.codebook)[layer.codes]
    real = value_bits != 0
    index, where = relindex.encode_gaps(layer.positions()[real], INDEX_BITS)
    if len(index) != layer.entries or not np.array_equal(index, layer.index):
        return False
    codes = np.zeros(len(index), dtype=np.uint8)
    codes[where] = layer.codes[real]
    return bool(np.array_equal(codes, layer.codes))


def _verbatim_draft(layer: NetLayer) -> codec.TensorDraft:
    """A dcformat sparse draft holding the layer's entry stream unchanged (csr, 4-bit indices)."""
    spec = layer.spec
    name = _weight_name(spec)
    header = {"name": name, "dtype": "float32", "shape": list(spec.weight_shape), "encoding": K.SPARSE,
              "layout": K.CSR, "index_bits": INDEX_BITS, "entries": layer.entries, "fillers": layer.fillers(),
              "bits": layer.bits, "codebook": 0, "gaps": "gaps", "indices": "indices"}
    streams = {"gaps": codec.StreamDraft("gaps", layer.index.astype(np.uint16), 1 << INDEX_BITS, INDEX_BITS),
               "indices": codec.StreamDraft("indices", layer.codes.astype(np.uint16), 1 << layer.bits, layer.bits)}
    return codec.TensorDraft(name, header, [layer.codebook.view(np.uint8)], streams, decode_layer(layer))


def _weight_draft(layer: NetLayer, index_bits: int | str) -> tuple[codec.TensorDraft, bool]:
    """A layer's weight as a dcformat sparse draft, and whether its stream is canonical.

    A canonical stream is re-encoded at the index width that gives the smallest file (or the one
    asked for); any other stream is kept exactly, at 4 bits.
    """
    if _bits(layer.codebook[:1])[0] != 0:
        raise EncodeError(f"codebook[0] is {float(layer.codebook[0])!r}, not 0.0: its fillers would decode to a "
                          f"non-zero value, which dcformat's sparse encoding cannot hold", tensor=_weight_name(layer.spec))
    if not _is_canonical(layer):
        return _verbatim_draft(layer), False
    weight = decode_layer(layer)
    per_element = np.zeros(layer.spec.weight_numel, dtype=np.uint16)
    per_element[layer.positions()] = layer.codes
    width = _best_index_bits(layer) if index_bits == "auto" else index_bits
    draft = codec.draft_explicit(_weight_name(layer.spec), weight, K.SPARSE, codebook=layer.codebook,
                                 indices=per_element, layout=K.CSR, index_bits=width)
    return draft, True


def _best_index_bits(layer: NetLayer) -> int:
    """The relative-index width giving the smallest gaps + codes streams for a canonical layer.

    Priced from symbol counts (`relindex.gap_counts`), as codec prices sparse drafts, so no
    candidate stream is built. Ties keep the released 4 bits.
    """
    real = _bits(layer.codebook)[layer.codes] != 0
    positions = layer.positions()[real]
    code_counts = np.bincount(layer.codes[real], minlength=1 << layer.bits).astype(np.int64)
    widths = [INDEX_BITS] + [w for w in codec.INDEX_BITS_CANDIDATES if w != INDEX_BITS]
    best, best_size = INDEX_BITS, None
    for b, (gap_counts, fillers) in zip(widths, relindex.gap_counts(positions, tuple(widths))):
        entries = len(positions) + fillers
        if entries > max(1, layer.spec.weight_numel):  # as codec's drafts: never more entries than weights
            continue
        codes = code_counts.copy()
        codes[0] += fillers
        size = codec.estimate_coded_bytes(gap_counts, entries, b) + codec.estimate_coded_bytes(codes, entries, layer.bits)
        if best_size is None or size < best_size:
            best, best_size = b, size
    return best


def _layers_metadata(layers: Sequence[LayerSpec], widths: Sequence[int]) -> str:
    return json.dumps({"format": "deepcompression", "layers": [
        {"name": layer.name, "type": layer.type, "weight_shape": list(layer.weight_shape),
         "bias_shape": None if layer.bias_shape is None else list(layer.bias_shape), "bits": b}
        for layer, b in zip(layers, widths)]}, separators=(",", ":"))


def _convert_net(data: bytes | bytearray | memoryview, layers: Sequence[LayerSpec], bits: Bits,
                 index_bits: int | str, metadata: Mapping[str, str] | None,
                 limits: Limits) -> tuple[bytes, list[dict[str, Any]]]:
    if index_bits != "auto" and (isinstance(index_bits, bool) or index_bits not in range(K.MIN_BITS, K.MAX_BITS + 1)):
        raise EncodeError(f"index_bits must be 1..16 or 'auto', not {index_bits!r}")
    net = parse_net(data, layers, bits=bits, limits=limits)
    drafts, rows = [], []
    for layer in net:
        draft, canonical = _weight_draft(layer, index_bits)
        drafts.append(draft)
        if layer.bias is not None:
            drafts.append(codec.draft_explicit(_bias_name(layer.spec), layer.bias.reshape(layer.spec.bias_shape), K.RAW))
        rows.append({"layer": layer.spec.name, "type": layer.spec.type, "shape": list(layer.spec.weight_shape),
                     "bits": layer.bits, "entries": layer.entries, "fillers": layer.fillers(),
                     "kept": (layer.entries - layer.fillers()) / max(1, layer.spec.weight_numel),
                     "index_bits": draft.header["index_bits"], "canonical": canonical,
                     "net_bytes": layer.nbytes})
    meta = dict(metadata or {})
    meta[METADATA_KEY] = _layers_metadata(layers, [layer.bits for layer in net])
    tables, encoded = codec.assemble(drafts, "auto")
    sizes = {t.header["name"]: sum(memoryview(p).nbytes for p in t.payloads) for t in encoded}
    for row, layer in zip(rows, net):
        row["dcf_bytes"] = sizes[_weight_name(layer.spec)] + sizes.get(_bias_name(layer.spec), 0)
    out = io.BytesIO()
    write_stream(out, meta, tables, encoded)
    return out.getvalue(), rows


def net_to_dcformat(data: bytes | bytearray | memoryview, layers: Sequence[LayerSpec], *, bits: Bits = None,
                    index_bits: int | str = "auto", metadata: Mapping[str, str] | None = None,
                    limits: Limits = DEFAULT_LIMITS) -> bytes:
    """A dcformat file (bytes) whose tensors equal `read_net(data, layers)` exactly.

    Weights are stored sparse with each layer's own codebook and Huffman-coded streams; `index_bits`
    "auto" picks each layer's width for the smallest file. A layer whose entry stream departs from
    the filler rule (extra fillers, stored zeros) keeps it unchanged at 4 bits, so `dcformat_to_net`
    gives back the same bytes. The layer list and bit widths are kept in the metadata entry
    "deepcompression".
    """
    return _convert_net(data, layers, bits, index_bits, metadata, limits)[0]


def _layers_from_metadata(text: str) -> tuple[list[LayerSpec], dict[str, int]]:
    """The layer list recorded by `net_to_dcformat`; FormatError when it is malformed."""
    try:
        doc = json.loads(text)
        layers, widths = [], {}
        for item in doc["layers"]:
            bias = item["bias_shape"]
            spec = LayerSpec(str(item["name"]), str(item["type"]), tuple(int(d) for d in item["weight_shape"]),
                             None if bias is None else tuple(int(d) for d in bias))
            if spec.type not in ("Convolution", "InnerProduct") or min(spec.weight_shape, default=1) < 0:
                raise ValueError(f"layer {spec.name!r}")
            layers.append(spec)
            widths[spec.name] = int(item["bits"])
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"metadata entry {METADATA_KEY!r} is not a valid layer list ({e})") from None
    return layers, widths


def _layer_from_dcformat(f: Any, spec: LayerSpec, bits: int) -> NetLayer:
    """One layer of a .net from a dcformat tensor: its stream unchanged when stored that way, else re-encoded."""
    name = _weight_name(spec)
    if name not in f:
        raise EncodeError(f"the dcformat file has no tensor {name!r}", tensor=name)
    info = f.layout(name)
    if tuple(info.shape) != tuple(spec.weight_shape):
        raise EncodeError(f"shape {tuple(info.shape)} differs from the layer's {tuple(spec.weight_shape)}", tensor=name)
    bias = None
    if spec.bias_shape is not None:
        if _bias_name(spec) not in f:
            raise EncodeError(f"the dcformat file has no tensor {_bias_name(spec)!r}", tensor=_bias_name(spec))
        bias = f.get_tensor(_bias_name(spec))
    coded = info.encoding != K.RAW and info.codebook is not None and info.dtype == "float32"
    if coded:
        codebook = np.frombuffer(check_section(f._buf, info.codebook, "codebook", name), dtype="<f4").astype(np.float32)
        coded = len(codebook) <= 1 << bits and _bits(codebook[:1])[0] == 0
    if not coded:
        return encode_layer(spec, f.get_tensor(name), bias, bits)
    b = None if bias is None else _float32(_bias_name(spec), bias)
    if b is not None and tuple(b.shape) != tuple(spec.bias_shape):
        raise EncodeError(f"shape {tuple(b.shape)} differs from the layer's {tuple(spec.bias_shape)}", tensor=_bias_name(spec))
    b = None if b is None else b.reshape(-1)
    tables = f._table_cache()
    if info.encoding == K.SPARSE and info.layout == K.CSR and info.index_bits == INDEX_BITS:
        # The .net stream itself (as net_to_dcformat keeps it): copy it through unchanged.
        index = codec.decode_stream(f._buf, info.gaps, tables, name, "gaps")
        codes = codec.decode_stream(f._buf, info.indices, tables, name, "indices")
        try:
            relindex.decode_positions(index, spec.weight_numel)
        except CorruptDataError as e:
            raise CorruptDataError(str(e), tensor=name, offset=info.gaps.section.offset) from None
        full = np.zeros(1 << bits, dtype=np.float32)
        full[: len(codebook)] = codebook
        return NetLayer(spec, bits, full, b, index.astype(np.uint8), codes.astype(np.uint8))
    if info.encoding == K.SPARSE:
        sparse = f.get_sparse(name)  # non-zero entries with their codes
        rows, cols = sparse.matrix_shape
        major = np.repeat(np.arange(len(sparse.indptr) - 1), np.diff(sparse.indptr))
        flat = major * cols + sparse.indices if sparse.layout == K.CSR else sparse.indices * cols + major
        order = np.argsort(flat, kind="stable")
        positions, codes = flat[order], sparse.codes[order]
    else:  # shared: one code per element
        codes_all = codec.decode_stream(f._buf, info.indices, tables, name, "indices")
        positions = np.flatnonzero(_bits(codebook)[codes_all])
        codes = codes_all[positions]
    return _layer_from_codes(spec, bits, codebook, positions, codes.astype(np.uint8), b)


def _to_net(source: str | os.PathLike | bytes | bytearray | memoryview, layers: Sequence[LayerSpec] | None,
            bits: Bits) -> list[NetLayer]:
    from ..api import SafeOpen

    with SafeOpen(source) as f:
        recorded, recorded_bits = None, {}
        if METADATA_KEY in f.metadata:
            recorded, recorded_bits = _layers_from_metadata(f.metadata[METADATA_KEY])
        if layers is None:
            if recorded is None:
                raise FormatError(f"no prototxt given and the file has no {METADATA_KEY!r} metadata to say its layers")
            layers = recorded
        if bits is None:
            names = {layer.name for layer in layers}
            bits = {k: v for k, v in recorded_bits.items() if k in names}
        _check_names({k: None for k in f.keys()}, layers)
        widths = _bits_of(layers, bits, EncodeError)
        return [_layer_from_dcformat(f, layer, b) for layer, b in zip(layers, widths)]


def dcformat_to_net(source: str | os.PathLike | bytes | bytearray | memoryview,
                    layers: Sequence[LayerSpec] | None = None, *, bits: Bits = None) -> bytes:
    """A .net file from a dcformat file (a path or its bytes).

    The layers come from `layers` (a prototxt's) or else from the file's "deepcompression" metadata;
    the bit widths from `bits`, else that metadata, else `default_bits`. A file written by
    `net_to_dcformat` gives back the original .net byte for byte; any other file works when each
    weight fits its codebook (at most 2^bits - 1 distinct non-zero values). Tensors the released
    format has no place for are an EncodeError rather than silently dropped.
    """
    return pack_net(_to_net(source, layers, bits))


# ---------------------------------------------------------------------------------------------
# Command line


def cli_convert(args: Any) -> int:
    """`dcformat convert --from deepcompression X.net --prototxt P -o Y.dcf`, or `--to deepcompression Y.dcf -o X.net`."""
    start = time.perf_counter()
    layers = load_prototxt(args.prototxt) if args.prototxt else None
    if args.from_format == "deepcompression":
        if layers is None:
            raise DCFError("--from deepcompression needs --prototxt: a .net file holds no layer names or shapes")
        with open(args.input, "rb") as fh:
            data = fh.read()
        out, rows = _convert_net(data, layers, None, "auto", None, DEFAULT_LIMITS)
        direction = "deepcompression -> dcformat"
    elif args.to_format == "deepcompression":
        net = _to_net(args.input, layers, None)
        out = pack_net(net)
        rows = [{"layer": layer.spec.name, "type": layer.spec.type, "shape": list(layer.spec.weight_shape),
                 "bits": layer.bits, "entries": layer.entries, "fillers": layer.fillers(),
                 "kept": (layer.entries - layer.fillers()) / max(1, layer.spec.weight_numel),
                 "net_bytes": layer.nbytes} for layer in net]
        direction = "dcformat -> deepcompression"
    else:
        raise DCFError("give --from deepcompression or --to deepcompression")
    in_bytes = os.path.getsize(args.input)
    atomic_write(args.output, lambda fh: fh.write(out))
    summary = {"direction": direction, "input": os.fspath(args.input), "output": os.fspath(args.output),
               "layers": len(rows), "input_bytes": in_bytes, "output_bytes": len(out),
               "ratio": in_bytes / len(out) if out else None, "seconds": time.perf_counter() - start,
               "per_layer": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(_format_rows(rows))
    ratio = f"{summary['ratio']:.3f}x" if summary["ratio"] else "-"
    print(f"{direction}: {len(rows)} layers, {in_bytes:,} B -> {len(out):,} B ({ratio}), wrote {args.output}")
    return 0


def _format_rows(rows: list[dict[str, Any]]) -> str:
    """The per-layer table of the convert summary."""
    cols = ["layer", "type", "shape", "bits", "kept", "entries", "fillers", "index bits", ".net B", ".dcf B"]
    lines = [cols]
    for r in rows:
        lines.append([r["layer"], r["type"], "x".join(map(str, r["shape"])), str(r["bits"]), f"{100 * r['kept']:.1f}%",
                      f"{r['entries']:,}", f"{r['fillers']:,}",
                      str(r.get("index_bits", INDEX_BITS)) + (" (kept as is)" if r.get("canonical") is False else ""),
                      f"{r['net_bytes']:,}", f"{r['dcf_bytes']:,}" if "dcf_bytes" in r else "-"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
    right = {3, 4, 5, 6, 8, 9}
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
                     for line in lines)
