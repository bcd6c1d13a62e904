"""A reference decoder of dcformat files, written from spec/format.md alone.

Plain Python: `struct`, `json` and `zlib` (CRC-32, and the compressed header of format 1.1, §2.2)
do the work, numpy only wraps the decoded bytes into arrays at the very end. It reads one bit at a time and is meant for tests, not for speed. It makes
every check the spec asks of a reader (§8), raising the error kinds of §8.1 (dcformat's error classes,
the only thing imported from dcformat), and with `strict=True` also checks what the spec asks of a
writer but leaves optional for readers (the `fillers` count, §5.3). rANS streams (§6.4, format 1.4) are
decoded by the spec's loop on Python integers; `rans_encode` is the spec's informative encoder, for tests
and spec/make_vectors.py (it is not dcformat's).

    tensors = decode(data)                    # name -> numpy array
    f = read_file(data)                       # File(version, metadata, tables, tensors=[Tensor(...)])
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from dcformat.errors import (
    ChecksumError,
    CorruptDataError,
    FormatError,
    FrequencyTableError,
    HeaderError,
    HuffmanTableError,
    LimitError,
    TruncatedError,
    VersionError,
)

# §2 File layout
MAGIC = b"\x89DCF\r\n\x1a\n"
PREAMBLE = struct.Struct("<8sHHIQQ")  # magic, version_major, version_minor, header_crc32, header_length, file_length
ALIGNMENT = 64
VERSION_MAJOR = 1
VERSION_MINOR = 4  # the newest minor version this reader knows (§2.3): unknown content in a newer one is a VersionError

# §3.2 Dtypes: name -> (bytes per element, numpy dtype used only to build the result)
DTYPES = {
    "float64": (8, "<f8"), "float32": (4, "<f4"), "float16": (2, "<f2"), "bfloat16": (2, "<u2"),
    "int8": (1, "i1"), "int16": (2, "<i2"), "int32": (4, "<i4"), "int64": (8, "<i8"),
    "uint8": (1, "u1"), "uint16": (2, "<u2"), "uint32": (4, "<u4"), "uint64": (8, "<u8"),
    "bool": (1, "?"),
    "float8_e4m3fn": (1, "u1"), "float8_e5m2": (1, "u1"),  # since 1.2
}
NEW_IN_1_2 = {"fields", "float8_e4m3fn", "float8_e5m2"}  # the encoding and dtypes a file must be 1.2 to use

# §3, §5, §6 keys of each JSON object
TOP_KEYS = {"metadata", "tables", "tensors"}
SECTION_KEYS = {"offset", "length", "crc32"}
COMMON_KEYS = {"name", "dtype", "shape", "encoding"}
ENCODING_KEYS = {
    "raw": {"data"},
    "shared": {"bits", "codebook", "indices"},
    "sparse+codebook": {"layout", "index_bits", "entries", "fillers", "gaps", "bits", "codebook", "indices"},
    "sparse+values": {"layout", "index_bits", "entries", "fillers", "gaps", "values"},
    "fields": {"fields", "chunk_size", "chunks"},  # §5.4
}
FIXED_KEYS = {"coding", "section"}
HUFFMAN_KEYS = {"coding", "section", "table", "block_size", "block_bytes"}
RANS_KEYS = {"coding", "section", "frequencies", "block_size", "block_bytes"}  # §6.4, since 1.4
RANS_MINOR = 4  # §2.3: a rans stream needs version 1.4
ROW_SCALE_KEYS = {"scale_bits", "scales", "row_scales"}  # §5.2, since 1.3: a shared tensor has all or none
SECTION_ORDER = ("data", "codebook", "scales", "row_scales", "gaps", "indices", "values")  # §4, §5 file order
STREAM_KEYS = ("row_scales", "gaps", "indices")  # the keys that hold a stream (the others a section)

MAX_NAME_BYTES = 65_535  # §3.1
MAX_BITS = 16  # §5.2, §5.3
MAX_CODE_LENGTH = 15  # §6.2
MAX_ALPHABET = 1 << 16  # §6.2
RANS_PRECISION = 15  # §6.4: the frequencies add up to M = 2^15
RANS_DECODE_TABLE_BYTES = 10 << 15  # §7: the decoding table of one distinct class table, as dcformat counts it
RANS_TOTAL = 1 << RANS_PRECISION
RANS_LOWER = 1 << 31  # §6.4: L, the lower end of the state interval [L, 2^63); also the final state
RANS_STATE_BYTES, RANS_WORD_BYTES = 8, 4


@dataclass(frozen=True)
class Limits:
    """The implementation limits of §7 (the same defaults as dcformat)."""

    max_header_bytes: int = 100_000_000
    max_header_values: int = 1 << 23
    max_tensors: int = 1_000_000
    max_rank: int = 32
    min_decoded_bytes: int = 1 << 30
    max_expansion: int = 10_000


@dataclass
class Tensor:
    """One decoded tensor: its spec dtype name, shape and the little-endian bytes of its elements in C order."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def array(self) -> np.ndarray:
        """The tensor as a numpy array (bfloat16 through ml_dtypes, the one non-numpy dtype)."""
        dtype = np.dtype(DTYPES[self.dtype][1])
        if self.dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
            import ml_dtypes

            dtype = np.dtype(getattr(ml_dtypes, self.dtype))
        return np.frombuffer(self.data, dtype=dtype).reshape(self.shape).copy()


@dataclass
class File:
    """A decoded file."""

    version: tuple[int, int]
    metadata: dict[str, str]
    tables: list[list[int]]
    tensors: list[Tensor] = field(default_factory=list)


def decode(data: bytes, limits: Limits = Limits(), *, strict: bool = False) -> dict[str, np.ndarray]:
    """Decode every tensor of a file: name -> numpy array."""
    return {t.name: t.array() for t in read_file(data, limits, strict=strict).tensors}


def read_file(data: bytes, limits: Limits = Limits(), *, strict: bool = False) -> File:
    """Check and decode a whole file (§2-§6), raising the §8.1 error kind of the first broken rule."""
    data = bytes(data)
    version, header_crc, header_length = read_preamble(data, limits)
    doc = read_header_json(data[32 : 32 + header_length], header_crc, version, limits)
    tables = check_document(doc, limits, data_start=32 + header_length, file_length=len(data), version=version)
    check_padding(data, doc, data_start=32 + header_length)
    out = File(version, dict(doc["metadata"]), tables)
    for t in doc["tensors"]:
        out.tensors.append(decode_tensor(data, t, tables, strict))
    return out


# ------------------------------------------------------------------------------------------------
# §2 Preamble


def read_preamble(data: bytes, limits: Limits) -> tuple[tuple[int, int], int, int]:
    """Check the 32-byte preamble; return (version, header_crc32, header_length)."""
    if len(data) < PREAMBLE.size:
        if data[:8] != MAGIC[: len(data[:8])]:
            raise FormatError("bad magic")
        raise TruncatedError(f"{len(data)} bytes: shorter than the preamble")
    magic, major, minor, header_crc, header_length, file_length = PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise FormatError("bad magic")
    if major != VERSION_MAJOR:
        raise VersionError(f"version {major}.{minor}")
    if file_length != len(data):
        if len(data) < file_length:
            raise TruncatedError(f"file is {len(data)} bytes, preamble says {file_length}")
        raise FormatError(f"trailing data: file is {len(data)} bytes, preamble says {file_length}")
    if header_length == 0:
        raise FormatError("header_length is 0")
    if header_length > limits.max_header_bytes:
        raise LimitError(f"header of {header_length} bytes")
    if 32 + header_length > len(data):
        raise TruncatedError("header runs past the end of the file")
    if (32 + header_length) % ALIGNMENT:
        raise FormatError("data_start is not a multiple of 64")
    return (major, minor), header_crc, header_length


# ------------------------------------------------------------------------------------------------
# §3 Header JSON


def read_header_json(raw: bytes, crc: int, version: tuple[int, int] = (1, 0), limits: Limits = Limits()) -> dict:
    """The header document, after the CRC, the header form of §2.2 (JSON text or a zlib stream) and the
    JSON rules of §3 (UTF-8, no BOM, unique keys)."""
    if zlib.crc32(raw) != crc:
        raise ChecksumError("header CRC-32 mismatch")
    if raw[0] == 0x78:  # §2.2: a zlib stream (only from version 1.1 on)
        if version[1] < 1:
            raise HeaderError("a compressed header in a version 1.0 file")
        raw = inflate(raw, limits.max_header_bytes)
    elif raw[0] != 0x7B and raw[0] not in b" \t\n\r":
        if raw.startswith(b"\xef\xbb\xbf"):
            raise HeaderError("header starts with a byte-order mark")
        raise HeaderError(f"the header's first byte {raw[0]:#04x} is neither JSON nor zlib")
    if len(raw) > limits.max_header_values:  # §7: shorter texts cannot hold more values
        outside_strings = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", raw)
        if sum(outside_strings.count(c) for c in (b"[", b"{", b",", b":")) > limits.max_header_values:
            raise LimitError("the header holds more JSON values than the limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HeaderError("header is not UTF-8") from None
    if text.startswith("\ufeff"):
        raise HeaderError("header starts with a byte-order mark")

    def unique(pairs: list[tuple[str, Any]]) -> dict:
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise HeaderError(f"duplicate key {key!r}")
            obj[key] = value
        return obj

    def no_constants(name: str) -> None:
        raise HeaderError(f"{name} is not JSON")

    try:
        doc = json.loads(text, object_pairs_hook=unique, parse_constant=no_constants)
    except HeaderError:
        raise
    except (ValueError, RecursionError):
        raise HeaderError("header is not a JSON text") from None
    check_strings(doc)
    return doc


def inflate(raw: bytes, limit: int) -> bytes:
    """§2.2: the JSON text of a zlib header (RFC 1950, no preset dictionary), at most `limit` bytes,
    then nothing but spaces."""
    if len(raw) > 1 and raw[1] & 0x20:
        raise HeaderError("the header's zlib stream uses a preset dictionary")
    d = zlib.decompressobj(15)
    out = b""
    data = raw
    try:
        while True:  # in pieces of at most limit + 1 bytes: never inflate past what the limit allows
            out += d.decompress(data, limit + 1 - len(out))
            data = d.unconsumed_tail
            if len(out) > limit:
                raise LimitError(f"the header decompresses to more than {limit} bytes")
            if d.eof or not data:
                break
    except zlib.error:
        raise HeaderError("the header's zlib stream is corrupt") from None
    if not d.eof:
        raise HeaderError("the header's zlib stream is truncated")
    if d.unused_data.strip(b" "):
        raise HeaderError("bytes other than spaces follow the header's zlib stream")
    return out


def check_strings(value: Any) -> None:
    """Every string (keys included) must be Unicode scalar values: no unpaired surrogate escape (§3)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise HeaderError("a string holds an unpaired surrogate") from None


def is_int(v: Any) -> bool:
    """A JSON integer: no fraction, no exponent (json gives those as float), and not true/false."""
    return isinstance(v, int) and not isinstance(v, bool)


def need_int(v: Any, what: str, lo: int = 0, hi: int | None = None) -> int:
    if not is_int(v):
        raise HeaderError(f"{what} is not a JSON integer")
    if v < lo or (hi is not None and v > hi):
        raise HeaderError(f"{what} = {v} is out of range")
    return v


def need_keys(obj: Any, allowed: set[str], what: str) -> dict:
    """A JSON object with exactly the `allowed` keys (unknown ones fail closed, §3.4)."""
    if not isinstance(obj, dict):
        raise HeaderError(f"{what} is not an object")
    if set(obj) - allowed:
        raise HeaderError(f"{what} has unknown keys {sorted(set(obj) - allowed)}")
    if allowed - set(obj):
        raise HeaderError(f"{what} lacks keys {sorted(allowed - set(obj))}")
    return obj


def align64(x: int) -> int:
    return (x + 63) // 64 * 64


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def matrix_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """(R, C) of §5.3, by the first rule that applies."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    if shape[0] == 0:
        return 0, 0
    numel = 1
    for d in shape[1:]:
        numel *= d
    return shape[0], numel


def check_document(doc: Any, limits: Limits, data_start: int, file_length: int,
                   version: tuple[int, int] = (1, VERSION_MINOR)) -> list[list[int]]:
    """Check the whole header against §3-§6 and the file; return the tables as lists of code lengths.

    Adds to each tensor object the derived values used by decoding (`_numel`, `_itemsize`, `_k`).
    """
    need_keys(doc, TOP_KEYS, "header")
    metadata = doc["metadata"]
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError("metadata is not an object of strings")
    if not isinstance(doc["tables"], list):
        raise HeaderError("tables is not an array")
    tables = []
    for t in doc["tables"]:
        if not isinstance(t, str):
            raise HeaderError("a table is not a string")
        tables.append(parse_table(t))
    tensors = doc["tensors"]
    if not isinstance(tensors, list):
        raise HeaderError("tensors is not an array")
    if len(tensors) > limits.max_tensors:
        raise LimitError(f"{len(tensors)} tensors")
    budget = max(limits.min_decoded_bytes, limits.max_expansion * file_length)
    total = 0
    names = set()
    end = data_start  # §4: where the previous section ended
    for t in tensors:
        check_tensor(t, tables, limits, budget, version)
        if t["name"] in names:
            raise HeaderError(f"duplicate tensor name {t['name']!r}")
        names.add(t["name"])
        total += t["_numel"] * t["_itemsize"]
        if total > budget:
            raise LimitError("the tensors decode to more bytes than the limit")
        for section in sections_of(t):
            if section["offset"] != align64(end):
                raise FormatError(f"section at {section['offset']}, expected {align64(end)} (§4)")
            end = section["offset"] + section["length"]
            if end > file_length:
                raise TruncatedError("a section runs past the end of the file")
    if end != file_length:
        raise FormatError("bytes follow the last section")
    return tables


def sections_of(t: dict) -> list[dict]:
    """The tensor's section objects in file order (§4, §5)."""
    if t.get("encoding") == "fields":  # §5.4: chunk by chunk, within a chunk field by field
        return [s["section"] for chunk in t["chunks"] for s in chunk]
    out = []
    for key in SECTION_ORDER:
        if key in t:
            out.append(t[key]["section"] if key in STREAM_KEYS else t[key])
    return out


def unknown(what: str, version: tuple[int, int]) -> HeaderError:
    """§2.3: unknown content is a VersionError in a file of a newer minor version, else a HeaderError."""
    if version[1] > VERSION_MINOR:
        return VersionError(f"{what} in a version {version[0]}.{version[1]} file")
    return HeaderError(what)


def check_tensor(t: Any, tables: list[list[int]], limits: Limits, budget: int,
                 version: tuple[int, int] = (1, VERSION_MINOR)) -> None:
    """§3.1-§3.4 and the header rules of the tensor's encoding (§5) and streams (§6)."""
    if not isinstance(t, dict):
        raise HeaderError("a tensor is not an object")
    name = t.get("name")
    if not isinstance(name, str) or not 1 <= len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        raise HeaderError("name is not a string of 1..65535 UTF-8 bytes")
    encoding = t.get("encoding")
    if not isinstance(encoding, str) or encoding not in ("raw", "shared", "sparse", "fields"):
        raise unknown(f"unknown encoding {encoding!r}", version) if isinstance(encoding, str) else \
            HeaderError("encoding is not a string")
    if encoding in NEW_IN_1_2 and version[1] < 2:
        raise HeaderError("the fields encoding needs version 1.2")
    if encoding == "sparse":  # the form follows from the presence of a codebook (§5.3)
        encoding = "sparse+codebook" if "codebook" in t else "sparse+values"
    allowed = COMMON_KEYS | ENCODING_KEYS[encoding]
    scaled = encoding == "shared" and bool(ROW_SCALE_KEYS & set(t))
    if scaled and version[1] >= 3:  # §5.2: row scales, all three keys or none
        if not ROW_SCALE_KEYS <= set(t):
            raise HeaderError("row scales need scale_bits, scales and row_scales together")
        allowed = allowed | ROW_SCALE_KEYS
    if set(t) - allowed:
        raise unknown(f"tensor {name!r} has unknown keys {sorted(set(t) - allowed)}", version)
    need_keys(t, allowed, f"tensor {name!r}")
    if not isinstance(t["dtype"], str):
        raise HeaderError("dtype is not a string")
    if t["dtype"] not in DTYPES:
        raise unknown(f"unknown dtype {t['dtype']!r}", version)
    if t["dtype"] in NEW_IN_1_2 and version[1] < 2:
        raise HeaderError(f"dtype {t['dtype']} needs version 1.2")
    if not isinstance(t["shape"], list):
        raise HeaderError("shape is not an array")
    if len(t["shape"]) > limits.max_rank:
        raise LimitError(f"rank {len(t['shape'])}")
    shape = tuple(need_int(d, "a dimension") for d in t["shape"])
    numel = 1
    for d in shape:
        numel *= d
    itemsize = DTYPES[t["dtype"]][0]
    if numel * itemsize > budget:
        raise LimitError(f"tensor {name!r} would decode to {numel * itemsize} bytes")
    extent = 1  # §7: dcformat also bounds the product of the non-zero dimensions (numpy must hold the shape)
    for d in shape:
        extent *= d or 1
    if extent * itemsize > budget:
        raise LimitError(f"tensor {name!r} has dimensions too large")
    t["_numel"], t["_itemsize"], t["_shape"] = numel, itemsize, shape

    if encoding == "raw":
        check_section(t["data"])
        if t["data"]["length"] != numel * itemsize:
            raise FormatError("data length is not numel x itemsize")
        return
    if encoding == "fields":  # §5.4
        if t["dtype"] == "bool":
            raise HeaderError("a bool tensor cannot use the fields encoding")
        if not isinstance(t["fields"], list) or not t["fields"]:
            raise HeaderError("fields is not a non-empty array")
        widths = [need_int(w, "a field width", 1, MAX_BITS) for w in t["fields"]]
        if sum(widths) != 8 * itemsize:
            raise HeaderError("the field widths do not add up to the element's bits")
        chunk_size = need_int(t["chunk_size"], "chunk_size", 1)
        if not isinstance(t["chunks"], list):
            raise HeaderError("chunks is not an array")
        if len(t["chunks"]) != ceil_div(numel, chunk_size):
            raise FormatError("chunks does not list ceil(numel / chunk_size) chunks")
        for c, chunk in enumerate(t["chunks"]):
            if not isinstance(chunk, list):
                raise HeaderError("a chunk is not an array")
            if len(chunk) != len(widths):
                raise FormatError("a chunk does not have one stream per field")
            count = min(chunk_size, numel - c * chunk_size)
            for s, w in zip(chunk, widths):
                check_stream(s, count, 1 << w, w, tables, version)
        return
    if scaled and t["dtype"] not in ("float32", "float64"):  # §5.2
        raise HeaderError("row scales are only for float32 and float64 tensors")
    if "codebook" in t:
        if t["dtype"] == "bool":
            raise HeaderError("a bool tensor cannot have a codebook")
        bits = need_int(t["bits"], "bits", 1, MAX_BITS)
        check_section(t["codebook"])
        k, rest = divmod(t["codebook"]["length"], itemsize)
        if rest or not 1 <= k <= 1 << bits:
            raise FormatError("codebook length is not 1..2^bits values")
        t["_k"] = k
    if encoding == "shared":
        if scaled:  # §5.2: m scales; one scale index per row of the matrix view
            scale_bits = need_int(t["scale_bits"], "scale_bits", 1, MAX_BITS)
            check_section(t["scales"])
            m, rest = divmod(t["scales"]["length"], itemsize)
            if rest or not 1 <= m <= 1 << scale_bits:
                raise FormatError("scales length is not 1..2^scale_bits values")
            t["_m"] = m
            check_stream(t["row_scales"], matrix_view(shape)[0], m, scale_bits, tables, version)
            check_stream(t["indices"], numel, t["_k"], t["bits"], tables, version, classes=m)
            freqs = t["indices"].get("frequencies")
            if isinstance(freqs, list) and len(set(freqs)) * RANS_DECODE_TABLE_BYTES > budget:
                raise LimitError("the distinct frequency tables need more decoding-table bytes than the limit")
            return
        check_stream(t["indices"], numel, t["_k"], t["bits"], tables, version)
        return
    if not isinstance(t["layout"], str) or t["layout"] not in ("csr", "csc"):
        raise HeaderError(f"unknown layout {t['layout']!r}")
    rows, cols = matrix_view(shape)
    if 8 * ((cols if t["layout"] == "csc" else rows) + 1) > budget:  # §7: dcformat's CSR/CSC pointer array
        raise LimitError(f"tensor {name!r}: too many rows or columns for a {t['layout']} view")
    b = need_int(t["index_bits"], "index_bits", 1, MAX_BITS)
    n = need_int(t["entries"], "entries")
    if n > numel:
        raise FormatError(f"{n} entries in a tensor of {numel} elements")
    need_int(t["fillers"], "fillers", 0, n)
    check_stream(t["gaps"], n, 1 << b, b, tables, version)
    if "codebook" in t:
        check_stream(t["indices"], n, t["_k"], t["bits"], tables, version)
    else:
        check_section(t["values"])
        if t["values"]["length"] != n * itemsize:
            raise FormatError("values length is not entries x itemsize")


def check_section(s: Any) -> None:
    """§3.3: three non-negative integers, crc32 below 2^32."""
    need_keys(s, SECTION_KEYS, "section")
    need_int(s["offset"], "offset")
    need_int(s["length"], "length")
    need_int(s["crc32"], "crc32", 0, 0xFFFFFFFF)


def check_stream(s: Any, count: int, alphabet: int, width: int, tables: list[list[int]],
                 version: tuple[int, int] = (1, VERSION_MINOR), classes: int | None = None) -> None:
    """§6 stream object, and its section length against what its coding implies (§6.1, §6.3, §6.4).
    `classes`: m, for the indices of a shared tensor with row scales (a rans stream may then list m tables)."""
    if not isinstance(s, dict):
        raise HeaderError("a stream is not an object")
    coding = s.get("coding")
    if coding == "fixed":
        need_keys(s, FIXED_KEYS, "stream")
        check_section(s["section"])
        if s["section"]["length"] != ceil_div(count * width, 8):
            raise FormatError("fixed-width section length is not ceil(count x width / 8)")
        return
    if coding == "rans":
        if version[1] < RANS_MINOR:  # §2.3: to an older reader an unknown coding value
            raise HeaderError(f"the rans coding needs version 1.{RANS_MINOR}, the file is {version[0]}.{version[1]}")
        check_rans_stream(s, count, alphabet, classes)
        return
    if coding != "huffman":
        raise HeaderError(f"unknown coding {coding!r}")
    need_keys(s, HUFFMAN_KEYS, "stream")
    check_section(s["section"])
    if not tables:
        raise HeaderError("a stream refers to a table, the file has none")
    table = need_int(s["table"], "table", 0, len(tables) - 1)
    if len(tables[table]) > alphabet:
        raise HuffmanTableError("the table has more symbols than the stream's alphabet")
    block_size = need_int(s["block_size"], "block_size", 1)
    if not isinstance(s["block_bytes"], list):
        raise HeaderError("block_bytes is not an array")
    nblocks = ceil_div(count, block_size)
    if len(s["block_bytes"]) != nblocks:
        raise FormatError("block_bytes does not list one length per block")
    sizes = [need_int(b, "a block length") for b in s["block_bytes"]]
    if sum(sizes) != s["section"]["length"]:
        raise FormatError("block lengths do not add up to the section length")
    for i, size in enumerate(sizes):
        if min(block_size, count - i * block_size) > 8 * size:  # every codeword has at least one bit
            raise FormatError(f"block {i} is too short for its symbols")


def check_rans_stream(s: dict, count: int, alphabet: int, classes: int | None = None) -> None:
    """§6.4 from the header: the keys, the frequency table (or, for the indices of a tensor with row
    scales, one per scale class), then the block list (count, sum, each block a state and whole words).
    Keeps the parsed tables as `_freqs` (a list of them for class tables)."""
    need_keys(s, RANS_KEYS, "stream")
    check_section(s["section"])
    texts = s["frequencies"]
    if isinstance(texts, list):
        if classes is None:
            raise HeaderError("an array of frequency tables outside the indices of a tensor with row scales")
        if len(texts) != classes:
            raise HeaderError(f"{len(texts)} frequency tables for {classes} row scales")
        if not all(isinstance(t, str) for t in texts):
            raise HeaderError("a frequency table is not a string")
    elif not isinstance(texts, str):
        raise HeaderError("frequencies is not a string")
    parsed = [parse_frequencies(t) for t in (texts if isinstance(texts, list) else [texts])]
    for freqs in parsed:
        if len(freqs) > alphabet:
            raise FrequencyTableError(f"the frequency table has {len(freqs)} symbols, the stream's alphabet {alphabet}")
    freqs = parsed if isinstance(texts, list) else parsed[0]
    block_size = need_int(s["block_size"], "block_size", 1)
    if not isinstance(s["block_bytes"], list):
        raise HeaderError("block_bytes is not an array")
    if len(s["block_bytes"]) != ceil_div(count, block_size):
        raise FormatError("block_bytes does not list one length per block")
    sizes = [need_int(b, "a block length") for b in s["block_bytes"]]
    if sum(sizes) != s["section"]["length"]:
        raise FormatError("block lengths do not add up to the section length")
    for i, size in enumerate(sizes):
        if size < RANS_STATE_BYTES or size % RANS_WORD_BYTES:
            raise FormatError(f"rans block {i} is {size} bytes: not at least 8 and a multiple of 4")
    s["_freqs"] = freqs


def check_padding(data: bytes, doc: dict, data_start: int) -> None:
    """§4: the bytes between sections are zero."""
    end = data_start
    for t in doc["tensors"]:
        for s in sections_of(t):
            if any(data[end : s["offset"]]):
                raise FormatError("non-zero padding between sections")
            end = s["offset"] + s["length"]


# ------------------------------------------------------------------------------------------------
# §6.2 Huffman tables


def parse_table(text: str) -> list[int]:
    """A table string -> code lengths, checked against §6.2."""
    if not 1 <= len(text) <= MAX_ALPHABET or any(ch not in "0123456789abcdef" for ch in text):
        raise HuffmanTableError("a table must be 1..65536 lowercase hex digits")
    lengths = [int(ch, 16) for ch in text]
    used = [L for L in lengths if L]
    if not used:
        raise HuffmanTableError("no symbol has a code")
    if len(used) == 1:
        if used[0] != 1:
            raise HuffmanTableError("a lone symbol must have code length 1")
        return lengths
    kraft = sum(1 << (MAX_CODE_LENGTH - L) for L in used)  # the Kraft sum in units of 2^-15
    if kraft != 1 << MAX_CODE_LENGTH:
        raise HuffmanTableError("the Kraft sum is not 1")
    return lengths


# ------------------------------------------------------------------------------------------------
# §6.4 rANS frequency tables


def parse_frequencies(text: str) -> list[int]:
    """A frequency table string -> the frequencies f_s, checked against §6.4."""
    if not 4 <= len(text) <= 4 * MAX_ALPHABET or len(text) % 4:
        raise FrequencyTableError("a frequency table must be 4..262144 hex digits, a multiple of 4")
    if any(ch not in "0123456789abcdef" for ch in text):
        raise FrequencyTableError("a frequency table must be lowercase hex digits")
    freqs = [int(text[i : i + 4], 16) for i in range(0, len(text), 4)]
    if sum(freqs) != RANS_TOTAL:
        raise FrequencyTableError(f"the frequencies add up to {sum(freqs)}, not 2^15")
    return freqs


def canonical_codes(lengths: list[int]) -> dict[tuple[int, int], int]:
    """(length, codeword) -> symbol: DEFLATE's canonical code, symbols sorted by (length, symbol)."""
    out = {}
    code = 0
    previous = 0
    for length, symbol in sorted((L, s) for s, L in enumerate(lengths) if L):
        if previous:
            code = (code + 1) << (length - previous)
        previous = length
        out[(length, code)] = symbol
    return out


# ------------------------------------------------------------------------------------------------
# §1 Bit streams and §6 stream decoding


class BitReader:
    """Reads bytes as a bit stream, least significant bit of each byte first (§1)."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0  # in bits

    def bit(self) -> int | None:
        """The next bit, or None at the end."""
        if self.pos >= 8 * len(self.data):
            return None
        b = (self.data[self.pos // 8] >> (self.pos % 8)) & 1
        self.pos += 1
        return b

    def value(self, width: int) -> int | None:
        """A width-bit value: its bits 0, 1, ..., width-1 in stream order."""
        v = 0
        for i in range(width):
            b = self.bit()
            if b is None:
                return None
            v |= b << i
        return v

    def rest_is_padding(self) -> bool:
        """True when fewer than 8 bits are left and all of them are zero (§1)."""
        left = 8 * len(self.data) - self.pos
        return left < 8 and self.value(left) == 0


def section_bytes(data: bytes, s: dict, what: str) -> bytes:
    """A section's bytes after its CRC-32 check (§3.3)."""
    raw = data[s["offset"] : s["offset"] + s["length"]]
    if zlib.crc32(raw) != s["crc32"]:
        raise ChecksumError(f"CRC-32 mismatch in section {what!r}")
    return raw


def read_stream(data: bytes, s: dict, count: int, alphabet: int, width: int, tables: list[list[int]], what: str,
                row_classes: tuple[list[int], int] | None = None) -> list[int]:
    """The `count` symbols of a stream (§6.1, §6.3, §6.4), each checked to be below `alphabet`.
    `row_classes` = (each row's scale index, symbols per row): which class table codes each symbol."""
    raw = section_bytes(data, s["section"], what)
    if s["coding"] == "fixed":
        r = BitReader(raw)
        symbols = [r.value(width) for _ in range(count)]
        if not r.rest_is_padding():
            raise CorruptDataError(f"{what}: non-zero padding bits")
    elif s["coding"] == "rans":
        freqs = s["_freqs"]
        if isinstance(s["frequencies"], list):  # §6.4: symbol i uses the table of its row's class
            classes, cols = row_classes
            freqs = [freqs[classes[i // cols]] for i in range(count)]
        symbols = read_rans(raw, count, freqs, s["block_size"], s["block_bytes"], what)
    else:
        symbols = read_huffman(raw, count, tables[s["table"]], s["block_size"], s["block_bytes"], what)
    for j, v in enumerate(symbols):
        if v >= alphabet:
            raise CorruptDataError(f"{what}: symbol {j} is {v}, not below {alphabet}")
    return symbols


def read_huffman(raw: bytes, count: int, lengths: list[int], block_size: int, block_bytes: list[int], what: str) -> list[int]:
    """Decode Huffman blocks (§6.3): each codeword is read most significant code bit first."""
    codes = canonical_codes(lengths)
    longest = max(lengths)
    symbols: list[int] = []
    start = 0
    for i, size in enumerate(block_bytes):
        r = BitReader(raw[start : start + size])
        start += size
        for _ in range(min(block_size, count - i * block_size)):
            code, length = 0, 0
            while (length, code) not in codes:
                if length == longest:
                    raise CorruptDataError(f"{what}: invalid codeword in block {i}")
                b = r.bit()
                if b is None:
                    raise CorruptDataError(f"{what}: block {i} ran out of bits")
                code, length = code << 1 | b, length + 1
            symbols.append(codes[(length, code)])
        if not r.rest_is_padding():
            raise CorruptDataError(f"{what}: block {i} has 8 or more bits left over, or non-zero padding")
    return symbols


def read_rans(raw: bytes, count: int, freqs: list, block_size: int, block_bytes: list[int], what: str) -> list[int]:
    """Decode rANS blocks (§6.4), exactly the spec's loop, on Python integers. `freqs` is the table, or a
    list of `count` tables, one for each symbol (a tensor's class tables, row by row)."""
    per_symbol = bool(freqs) and isinstance(freqs[0], list)
    prepared: dict[int, tuple[list[int], list[int], list[int]]] = {}

    def table(i: int) -> tuple[list[int], list[int], list[int]]:
        f = freqs[i] if per_symbol else freqs
        if id(f) not in prepared:
            cum = [0]
            for v in f:
                cum.append(cum[-1] + v)
            prepared[id(f)] = (f, cum, [s for s, v in enumerate(f) for _ in range(v)])  # slot -> s
        return prepared[id(f)]

    symbols: list[int] = []
    start = 0
    for i, size in enumerate(block_bytes):
        block = raw[start : start + size]
        start += size
        x = int.from_bytes(block[:RANS_STATE_BYTES], "little")
        pos = RANS_STATE_BYTES
        if not RANS_LOWER <= x < 1 << 63:
            raise CorruptDataError(f"{what}: rans block {i}: initial state out of range")
        for j in range(i * block_size, min((i + 1) * block_size, count)):
            f, cum, symbol_of = table(j)
            slot = x % RANS_TOTAL
            s = symbol_of[slot]
            symbols.append(s)
            x = f[s] * (x >> RANS_PRECISION) + slot - cum[s]
            if x < RANS_LOWER:
                if pos == size:
                    raise CorruptDataError(f"{what}: rans block {i} ran out of words")
                x = (x << 32) | int.from_bytes(block[pos : pos + RANS_WORD_BYTES], "little")
                pos += RANS_WORD_BYTES
        if pos != size:
            raise CorruptDataError(f"{what}: rans block {i} has words left over")
        if x != RANS_LOWER:
            raise CorruptDataError(f"{what}: rans block {i}: final state is not 2^31")
    return symbols


def rans_encode(symbols: list[int], freqs: list[int], block_size: int) -> tuple[bytes, list[int]]:
    """The informative encoder of §6.4 (for hand-made streams and vectors in the tests): the blocks'
    bytes and their lengths. Every symbol must have a frequency."""
    cum = [0]
    for f in freqs:
        cum.append(cum[-1] + f)
    out, sizes = b"", []
    for b0 in range(0, len(symbols), block_size):
        x, words = RANS_LOWER, []
        for s in reversed(symbols[b0 : b0 + block_size]):
            f = freqs[s]
            if f == 0:
                raise ValueError(f"symbol {s} has no frequency")
            if x >= f << 48:
                words.append(x % (1 << 32))
                x >>= 32
            x = (x // f << RANS_PRECISION) + x % f + cum[s]
        block = x.to_bytes(RANS_STATE_BYTES, "little") + b"".join(w.to_bytes(4, "little") for w in reversed(words))
        out += block
        sizes.append(len(block))
    return out, sizes


def rans_frequencies(counts: list[int]) -> list[int]:
    """A valid table for symbol counts (any valid one decodes; this is not dcformat's rule): each used
    symbol max(1, floor(c·M/n)), the rest of M to the most frequent symbol, trailing zeros dropped.
    Needs 1..2^15 used symbols, the most frequent able to give what the floors of 1 take."""
    n = sum(counts)
    freqs = [max(1, c * RANS_TOTAL // n) if c else 0 for c in counts]
    top = max(range(len(counts)), key=lambda s: (counts[s], -s))
    freqs[top] += RANS_TOTAL - sum(freqs)
    assert freqs[top] >= 1
    while freqs[-1] == 0:
        freqs.pop()
    return freqs


def frequencies_hex(freqs: list[int]) -> str:
    """A table's text (§6.4): 4 lowercase hex digits per symbol."""
    return "".join(f"{f:04x}" for f in freqs)


# ------------------------------------------------------------------------------------------------
# §5 Encodings


def items(raw: bytes, itemsize: int) -> list[bytes]:
    return [raw[i : i + itemsize] for i in range(0, len(raw), itemsize)]


def check_bools(values: list[bytes], what: str) -> None:
    """§3.2: a bool element is the byte 0x00 or 0x01."""
    for j, v in enumerate(values):
        if v not in (b"\x00", b"\x01"):
            raise CorruptDataError(f"{what}: bool element {j} is byte {v[0]}")


def rounded_product(a: float, b: float, size: int) -> bytes:
    """§5.2: the exact product of two finite values of a float dtype, rounded once to nearest-even in
    that dtype (4: binary32, 8: binary64), as little-endian bytes. Exact arithmetic on Fractions; the
    one rounding is Python's correctly rounded int / int, then (binary32) an exact binary64 → binary32
    rounding, which is correct because the exact product of two binary32 values fits binary64."""
    if size == 4:  # 24 + 24 significant bits: the binary64 product is exact, one rounding to binary32
        exact = a * b
        try:
            return struct.pack("<f", exact)
        except OverflowError:  # beyond the binary32 range after rounding: infinity (IEEE 754 §7.4)
            return struct.pack("<f", math.copysign(math.inf, exact))
    q = Fraction(a) * Fraction(b)
    try:
        value = q.numerator / q.denominator  # correctly rounded (nearest-even), also into subnormals
    except OverflowError:
        value = math.copysign(math.inf, q)
    if value == 0:
        value = math.copysign(0.0, a) * math.copysign(1.0, b)  # the sign of an exact zero product
    return struct.pack("<d", value)


def decode_tensor(data: bytes, t: dict, tables: list[list[int]], strict: bool) -> Tensor:
    """Decode one checked tensor object to its dense bytes (§5)."""
    name, dtype, shape, numel, size = t["name"], t["dtype"], t["_shape"], t["_numel"], t["_itemsize"]
    if t["encoding"] == "fields":  # §5.4: element = the sum of field_f << (the widths of the fields before f)
        values = []
        for c, chunk in enumerate(t["chunks"]):
            count = min(t["chunk_size"], numel - c * t["chunk_size"])
            elements = [0] * count
            shift = 0
            for f, (s, w) in enumerate(zip(chunk, t["fields"])):
                for i, v in enumerate(read_stream(data, s, count, 1 << w, w, tables, f"chunks[{c}][{f}]")):
                    elements[i] |= v << shift
                shift += w
            values += [e.to_bytes(size, "little") for e in elements]
        return Tensor(name, dtype, shape, b"".join(values))
    if t["encoding"] == "raw":
        raw = section_bytes(data, t["data"], "data")
        if dtype == "bool":
            check_bools(items(raw, 1), name)
        return Tensor(name, dtype, shape, raw)

    codebook = None
    if "codebook" in t:
        codebook = items(section_bytes(data, t["codebook"], "codebook"), size)
    if t["encoding"] == "shared" and "scales" in t:  # §5.2 with row scales
        scales = items(section_bytes(data, t["scales"], "scales"), size)
        code = "<f" if size == 4 else "<d"
        book = [struct.unpack(code, v)[0] for v in codebook]
        factors = [struct.unpack(code, v)[0] for v in scales]
        if not all(math.isfinite(v) for v in book + factors):
            raise CorruptDataError(f"{name}: a codebook value or a row scale is not finite")
        rows, cols = matrix_view(shape)
        row_scales = read_stream(data, t["row_scales"], rows, t["_m"], t["scale_bits"], tables, "row_scales")
        indices = read_stream(data, t["indices"], numel, t["_k"], t["bits"], tables, "indices",
                              row_classes=(row_scales, cols))
        out = []
        for i, k in enumerate(indices):
            out.append(rounded_product(book[k], factors[row_scales[i // cols]], size))
        return Tensor(name, dtype, shape, b"".join(out))
    if t["encoding"] == "shared":
        indices = read_stream(data, t["indices"], numel, t["_k"], t["bits"], tables, "indices")
        return Tensor(name, dtype, shape, b"".join(codebook[i] for i in indices))

    # sparse (§5.3)
    n = t["entries"]
    gaps = read_stream(data, t["gaps"], n, 1 << t["index_bits"], t["index_bits"], tables, "gaps")
    zero = bytes(size)
    if codebook is not None:
        if codebook[0] != zero:
            raise CorruptDataError(f"{name}: codebook[0] of a sparse tensor is not all zero bits")
        indices = read_stream(data, t["indices"], n, t["_k"], t["bits"], tables, "indices")
        values = [codebook[i] for i in indices]
    else:
        values = items(section_bytes(data, t["values"], "values"), size)
        if dtype == "bool":
            check_bools(values, name)
    rows, cols = matrix_view(shape)
    out = [zero] * numel
    p = -1
    for j in range(n):
        p += gaps[j] + 1
        if p >= rows * cols:
            raise CorruptDataError(f"{name}: entry {j} is at position {p}, past the end ({rows * cols})")
        r, c = divmod(p, cols) if t["layout"] == "csr" else (p % rows, p // rows)
        out[r * cols + c] = values[j]
    if strict:
        zeros = sum(v == zero for v in values)
        if zeros != t["fillers"]:
            raise CorruptDataError(f"{name}: fillers is {t['fillers']}, {zeros} entries are zero")
    return Tensor(name, dtype, shape, b"".join(out))
