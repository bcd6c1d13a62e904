"""The dcformat container: preamble, JSON header, 64-byte aligned data sections (spec §2-§4, §8).

This module reads and validates headers and writes whole files. It knows the layout of each encoding
(which sections and streams a tensor has, and their sizes) but not how to decode them, so it never
imports numba: `dcformat inspect` stays instant.
"""

from __future__ import annotations

import array
import io
import json
import math
import os
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

from . import constants as K
from .errors import (
    ChecksumError,
    FormatError,
    FrequencyTableError,
    HeaderError,
    HuffmanTableError,
    LimitError,
    TruncatedError,
    VersionError,
)


# ---------------------------------------------------------------------------------------------
# Limits (§7)


@dataclass(frozen=True)
class Limits:
    """Bounds a reader enforces before trusting the file; raise them to open unusual files."""

    max_header_bytes: int = K.DEFAULT_MAX_HEADER_BYTES
    max_header_values: int = K.DEFAULT_MAX_HEADER_VALUES
    max_tensors: int = K.DEFAULT_MAX_TENSORS
    max_rank: int = K.DEFAULT_MAX_RANK
    min_decoded_bytes: int = K.DEFAULT_MIN_DECODED_BYTES
    max_expansion: int = K.DEFAULT_MAX_EXPANSION

    def max_decoded_bytes(self, file_length: int) -> int:
        """Total dense bytes a file of this length may decode to (the decompression-bomb guard)."""
        return max(self.min_decoded_bytes, self.max_expansion * file_length)


DEFAULT_LIMITS = Limits()


def _numpy_max_rank() -> int:
    """The most dimensions a numpy array can have: 64 since numpy 2.0, 32 before."""
    import numpy as np

    return 64 if int(np.__version__.split(".")[0]) >= 2 else 32


NUMPY_MAX_RANK = _numpy_max_rank()


# ---------------------------------------------------------------------------------------------
# The parsed header


@dataclass(frozen=True)
class Section:
    """A byte range of the file (§3.3)."""

    offset: int
    length: int
    crc32: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Stream:
    """A coded symbol stream (§6): its section, coding and, for Huffman, table and blocks."""

    coding: str
    section: Section
    count: int
    alphabet: int
    width: int  # fixed-width bits per symbol (§6.1); also the "before Huffman" width
    table: int | None = None
    block_size: int | None = None
    block_bytes: tuple[int, ...] = ()
    frequencies: str | tuple[str, ...] | None = None  # rans: the table text, or one per scale class (§6.4)


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table, validated."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    data: Section | None = None  # raw
    codebook: Section | None = None  # shared, sparse with codebook
    values: Section | None = None  # sparse without codebook
    indices: Stream | None = None  # shared, sparse with codebook
    gaps: Stream | None = None  # sparse
    bits: int | None = None
    index_bits: int | None = None
    layout: str | None = None
    entries: int | None = None
    fillers: int | None = None
    fields: tuple[int, ...] | None = None  # fields (§5.4): the field widths, least significant first
    chunk_size: int | None = None  # fields: elements per chunk
    chunks: tuple[tuple[Stream, ...], ...] = ()  # fields: each chunk's streams, one per field
    scale_bits: int | None = None  # shared with row scales (§5.2, format 1.3): width of a row's scale index
    scales: Section | None = None  # shared with row scales: the m scale values
    row_scales: Stream | None = None  # shared with row scales: one scale index per row of the matrix view

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return K.DTYPE_SIZES[self.dtype]

    @property
    def nbytes(self) -> int:
        """Dense size in bytes once decoded."""
        return self.numel * self.itemsize

    @property
    def codebook_size(self) -> int:
        return 0 if self.codebook is None else self.codebook.length // self.itemsize

    @property
    def scales_count(self) -> int:
        """m, the number of row scales of a scaled shared tensor (§5.2); 0 without row scales."""
        return 0 if self.scales is None else self.scales.length // self.itemsize

    def sections(self) -> list[tuple[str, Section]]:
        """The tensor's sections in file order (§5), named."""
        out: list[tuple[str, Section]] = []
        if self.encoding == K.FIELDS:
            return [(f"chunks[{c}][{f}]", s.section) for c, streams in enumerate(self.chunks)
                    for f, s in enumerate(streams)]
        for key in K.SECTION_KEYS_IN_ORDER:
            part = getattr(self, key)
            if part is None:
                continue
            out.append((key, part.section if isinstance(part, Stream) else part))
        return out

    @property
    def stored_bytes(self) -> int:
        return sum(s.length for _, s in self.sections())


@dataclass
class Header:
    """The validated header of a file, plus where its data starts."""

    version: tuple[int, int]
    metadata: dict[str, str]
    tables: list[str]
    tensors: list[TensorInfo]
    header_length: int
    data_start: int
    file_length: int
    header_coding: str = K.HEADER_JSON  # how the header region holds the JSON text (§2.2): "json" or "zlib"
    json_length: int = 0  # bytes of JSON text: the decompressed size of a zlib header
    by_name: dict[str, TensorInfo] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.by_name = {t.name: t for t in self.tensors}


# ---------------------------------------------------------------------------------------------
# Reading


def align64(x: int) -> int:
    """x rounded up to the next multiple of 64 (§1)."""
    return -(-x // K.ALIGNMENT) * K.ALIGNMENT


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise HeaderError(f"header: duplicate key {key!r}")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> None:
    raise HeaderError(f"header: {name} is not valid JSON")


def parse_preamble(buf: bytes, file_length: int, limits: Limits) -> tuple[tuple[int, int], int, int]:
    """Check the 32-byte preamble (§2); return (version, header_crc32, header_length)."""
    if file_length < K.PREAMBLE_SIZE or len(buf) < K.PREAMBLE_SIZE:
        if buf[: len(K.MAGIC)] != K.MAGIC[: len(buf[:8])]:
            raise FormatError("not a dcformat file: bad magic bytes", offset=0)
        raise TruncatedError(
            f"file is {file_length} bytes, shorter than the {K.PREAMBLE_SIZE}-byte preamble", offset=0
        )
    magic, major, minor, header_crc, header_length, stated_length = struct.unpack_from(
        K.PREAMBLE_FORMAT, buf, 0
    )
    if magic != K.MAGIC:
        raise FormatError(f"not a dcformat file: bad magic bytes {magic!r}", offset=0)
    if major != K.VERSION_MAJOR:
        raise VersionError(
            f"format version {major}.{minor} is not supported (this reader implements {K.VERSION_MAJOR}.x)",
            offset=8,
        )
    if stated_length != file_length:
        cls = TruncatedError if file_length < stated_length else FormatError
        what = "truncated" if file_length < stated_length else "has trailing data"
        raise cls(f"file is {what}: it is {file_length} bytes, its preamble says {stated_length}", offset=24)
    if header_length == 0:
        raise FormatError("header length is 0", offset=16)
    if header_length > limits.max_header_bytes:
        raise LimitError(
            f"header length {header_length} exceeds the limit of {limits.max_header_bytes} bytes", offset=16
        )
    if K.PREAMBLE_SIZE + header_length > file_length:
        raise TruncatedError(
            f"header of {header_length} bytes runs past the end of the {file_length}-byte file", offset=16
        )
    if (K.PREAMBLE_SIZE + header_length) % K.ALIGNMENT:
        raise FormatError(
            f"data start {K.PREAMBLE_SIZE + header_length} is not a multiple of {K.ALIGNMENT}", offset=16
        )
    return (major, minor), header_crc, header_length


def parse_header(buf: Any, file_length: int | None = None, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Parse and validate the preamble and header of a file held in `buf` (bytes, mmap, memoryview).

    Everything the header says is checked against the file and against itself (§8); data sections'
    CRCs are not (see `check_section`).
    """
    if file_length is None:
        file_length = len(buf)
    version, header_crc, header_length = parse_preamble(bytes(buf[: K.PREAMBLE_SIZE]), file_length, limits)
    raw = bytes(buf[K.PREAMBLE_SIZE : K.PREAMBLE_SIZE + header_length])
    return _parse_header_bytes(raw, version, header_crc, header_length, file_length, limits, buf)


def read_header(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Read and validate just the header of the file at `path`, without mapping the data."""
    with open(path, "rb") as f:
        file_length = os.fstat(f.fileno()).st_size
        pre = f.read(K.PREAMBLE_SIZE)
        version, header_crc, header_length = parse_preamble(pre, file_length, limits)
        raw = f.read(header_length)
        header = _parse_header_bytes(raw, version, header_crc, header_length, file_length, limits, None)
        _check_padding_file(f, header)
    return header


def _parse_header_bytes(
    raw: bytes,
    version: tuple[int, int],
    header_crc: int,
    header_length: int,
    file_length: int,
    limits: Limits,
    buf: Any,
) -> Header:
    if len(raw) != header_length:
        raise TruncatedError("header is cut short", offset=K.PREAMBLE_SIZE)
    if zlib.crc32(raw) != header_crc:
        raise ChecksumError(
            f"header CRC-32 mismatch: stored {header_crc:#010x}, computed {zlib.crc32(raw):#010x}",
            offset=K.PREAMBLE_SIZE,
        )
    text_bytes, coding = header_json_bytes(raw, version, limits)
    # Offsets into a decompressed text are no file offsets: errors there name the header's start.
    where = "header byte" if coding == K.HEADER_JSON else "decompressed header byte"

    def offset(i: int) -> int:
        return K.PREAMBLE_SIZE + (i if coding == K.HEADER_JSON else 0)

    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HeaderError(f"header is not valid UTF-8: {e.reason} at {where} {e.start}", offset=offset(e.start)) from None
    if text.startswith("\ufeff"):
        after = "" if coding == K.HEADER_JSON else " once decompressed"
        raise HeaderError(f"header starts with a byte-order mark{after}", offset=K.PREAMBLE_SIZE)
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except HeaderError:
        raise
    except (ValueError, RecursionError) as e:
        pos = getattr(e, "pos", None)
        at = "" if pos is None else f" at {where} {len(text[:pos].encode())}"
        raise HeaderError(
            f"header is not valid JSON: {getattr(e, 'msg', e)}{at}",
            offset=None if pos is None else offset(len(text[:pos].encode())),
        ) from None
    data_start = K.PREAMBLE_SIZE + header_length
    header = _validate_document(doc, version, header_length, data_start, file_length, limits)
    header.header_coding = coding
    header.json_length = len(text_bytes.rstrip(K.JSON_WHITESPACE)) if coding == K.HEADER_JSON else len(text_bytes)
    if buf is not None:
        _check_padding_buffer(buf, header)
    return header


def header_json_bytes(raw: bytes, version: tuple[int, int], limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, str]:
    """The JSON text a header region holds, and how it holds it (§2.2): "json" (the bytes themselves)
    or "zlib" (what its zlib stream decompresses to, never more than the header-size limit)."""
    first = raw[:1]
    if first == bytes([K.ZLIB_HEADER_CMF]):
        if version[1] < K.ZLIB_HEADER_MINOR:
            raise HeaderError(
                f"header is a zlib stream (first byte 0x78), which needs format version 1.{K.ZLIB_HEADER_MINOR} "
                f"or later; this file says {version[0]}.{version[1]} (§2.2)", offset=K.PREAMBLE_SIZE,
            )
        text = _inflate_header(raw, limits)
        if text[:1] and text[:1] != b"{" and text[:1] not in K.JSON_WHITESPACE and not text.startswith(b"\xef\xbb\xbf"):
            raise HeaderError(
                f"the decompressed header starts with the byte {text[0]:#04x}: it must be JSON text (a header is "
                f"decompressed once, §2.2)", offset=K.PREAMBLE_SIZE,
            )
        return text, K.HEADER_ZLIB
    if first == b"{" or (first and first in K.JSON_WHITESPACE):
        _check_values(count_json_values(raw, limits.max_header_values), limits)
        return raw, K.HEADER_JSON
    if raw.startswith(b"\xef\xbb\xbf"):
        raise HeaderError("header starts with a byte-order mark", offset=K.PREAMBLE_SIZE)
    raise HeaderError(
        f"header starts with the byte {raw[0]:#04x}: neither a JSON text ('{{' or whitespace) nor a zlib "
        f"stream (0x78) (§2.2)", offset=K.PREAMBLE_SIZE,
    )


class JsonValueCounter:
    """Counts the structural characters '[', '{', ',' and ':' outside strings of a JSON text fed in
    pieces (§7): about one per value. Counted before parsing, because json.loads spends ~70 bytes of
    memory per value; in pieces, so that a compressed header can be counted as it is inflated."""

    def __init__(self) -> None:
        import numpy as np

        self.total, self._in_string, self._backslashes = 0, 0, 0  # the last two carry across pieces
        self._structural = np.zeros(256, np.uint8)
        self._structural[list(b",:[{")] = 1

    def feed(self, text: Any, step: int = 1 << 20) -> None:
        """Count the next piece of the text, `step` bytes at a time (the masks stay a few MB)."""
        import numpy as np

        data = np.frombuffer(text, np.uint8)
        for start in range(0, data.size, step):
            piece = data[start : start + step]
            quotes = piece == ord('"')
            slash = piece == ord("\\")
            carry = self._backslashes
            if carry or slash.any():
                # A quote is escaped when an odd run of backslashes precedes it (the run may begin in
                # an earlier piece): last[i] is the last position <= i that is not a backslash, or -1.
                last = np.maximum.accumulate(np.where(slash, -1, np.arange(piece.size)))
                run = np.empty(piece.size, np.int64)
                run[0] = carry
                run[1:] = np.arange(piece.size - 1) - last[:-1] + np.where(last[:-1] < 0, carry, 0)
                quotes &= (run & 1) == 0
                self._backslashes = int(piece.size - 1 - last[-1] + (carry if last[-1] < 0 else 0))
            inside = np.bitwise_xor.accumulate(quotes.view(np.uint8)) ^ self._in_string
            self._in_string = int(inside[-1])
            self.total += int(np.count_nonzero(self._structural[piece] > inside))


def count_json_values(text: Any, limit: int = 0, step: int = 1 << 20) -> int:
    """The structural characters '[', '{', ',' and ':' outside strings of a JSON text (see
    `JsonValueCounter`). A text no longer than `limit` cannot exceed it: its length is returned."""
    if len(text) <= limit:
        return len(text)
    counter = JsonValueCounter()
    counter.feed(text, step)
    return counter.total


def _check_values(values: int, limits: Limits) -> None:
    if values > limits.max_header_values:
        raise LimitError(
            f"header holds more JSON values than the limit of {limits.max_header_values} ({values} '[', '{{', ',' "
            f"and ':' outside strings counted when it was refused, §7)", offset=K.PREAMBLE_SIZE,
        )


_INFLATE_STEP = 1 << 20


def _inflate_header(raw: bytes, limits: Limits) -> bytes:
    """Decompress a zlib header (RFC 1950) within the header-size and header-values limits; only spaces
    may follow the stream. A first pass inflates in 1 MB steps, keeping nothing but the length and the
    value count, so that a bomb is refused having held one step; the second inflates what passed."""
    limit = limits.max_header_bytes
    if len(raw) >= 2 and raw[1] & K.ZLIB_FDICT:
        raise HeaderError("header zlib stream asks for a preset dictionary (FDICT set), which §2.2 forbids",
                          offset=K.PREAMBLE_SIZE + 1)
    inflater = zlib.decompressobj(wbits=15)  # the zlib wrapper only: no gzip, no raw deflate
    counter = JsonValueCounter()
    length, pending = 0, raw
    try:
        while True:
            piece = inflater.decompress(pending, _INFLATE_STEP)
            length += len(piece)
            if length > limit:
                raise LimitError(
                    f"compressed header decompresses to more than the limit of {limit} bytes", offset=K.PREAMBLE_SIZE
                )
            if length > limits.max_header_values:  # a shorter text cannot hold more values than it has bytes
                counter.feed(piece)
                _check_values(counter.total, limits)
            pending = inflater.unconsumed_tail
            if inflater.eof or not (pending or piece):
                break
    except zlib.error as e:
        raise HeaderError(f"header zlib stream is corrupt: {e}", offset=K.PREAMBLE_SIZE) from None
    if not inflater.eof:
        raise HeaderError(
            f"header zlib stream is truncated: the {len(raw)}-byte header ends before its last deflate block and "
            f"Adler-32 checksum", offset=K.PREAMBLE_SIZE,
        )
    rest = inflater.unused_data
    junk = len(rest) - len(rest.lstrip(K.HEADER_PAD_BYTE))
    if junk < len(rest):
        at = K.PREAMBLE_SIZE + len(raw) - len(rest) + junk
        raise HeaderError(
            f"byte {rest[junk]:#04x} follows the header's zlib stream: only spaces may pad it (§2.2)", offset=at
        )
    # The stream is now known good and `length` bytes long: inflate it into a buffer of that size.
    return zlib.decompress(raw[: len(raw) - len(rest)], wbits=15, bufsize=max(length, 1))


# --- JSON shape helpers -----------------------------------------------------------------------


def _require_object(value: Any, what: str, keys: frozenset[str], *, required: frozenset[str] | None = None, tensor: str | None = None) -> dict:
    if not isinstance(value, dict):
        raise HeaderError(f"{what} must be a JSON object", tensor=tensor)
    unknown = set(value) - keys
    if unknown:
        raise HeaderError(f"{what} has unknown key(s) {sorted(unknown)} (fail closed, §3.4)", tensor=tensor)
    missing = (keys if required is None else required) - set(value)
    if missing:
        raise HeaderError(f"{what} lacks key(s) {sorted(missing)}", tensor=tensor)
    return value


def _require_int(value: Any, what: str, lo: int = 0, hi: int | None = None, *, tensor: str | None = None) -> int:
    # bool is an int subclass in Python but not a JSON integer
    if not isinstance(value, int) or isinstance(value, bool):
        raise HeaderError(f"{what} must be a JSON integer, not {type(value).__name__}", tensor=tensor)
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise HeaderError(f"{what} is {value}, outside {bound}", tensor=tensor)
    return value


def _is_unicode(text: str) -> bool:
    """False for a string with a lone surrogate: JSON can escape one (\\ud800), UTF-8 cannot hold it,
    and it would make every later print or encode of the name fail."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _require_str(value: Any, what: str, *, tensor: str | None = None) -> str:
    if not isinstance(value, str):
        raise HeaderError(f"{what} must be a JSON string", tensor=tensor)
    return value


def _section(value: Any, what: str, tensor: str) -> Section:
    obj = _require_object(value, what, K.SECTION_KEYS, tensor=tensor)
    return Section(
        offset=_require_int(obj["offset"], f"{what}.offset", tensor=tensor),
        length=_require_int(obj["length"], f"{what}.length", tensor=tensor),
        crc32=_require_int(obj["crc32"], f"{what}.crc32", 0, 0xFFFFFFFF, tensor=tensor),
    )


def _stream(value: Any, what: str, tensor: str, count: int, alphabet: int, width: int, tables: list[str],
            version: tuple[int, int] = (K.VERSION_MAJOR, K.VERSION_MINOR), classes: int | None = None) -> Stream:
    if not isinstance(value, dict):
        raise HeaderError(f"{what} must be a JSON object", tensor=tensor)
    coding = value.get("coding")
    if coding == K.RANS:
        return _rans_stream(value, what, tensor, count, alphabet, width, version, classes)
    if coding == K.FIXED:
        obj = _require_object(value, what, K.FIXED_STREAM_KEYS, tensor=tensor)
        section = _section(obj["section"], f"{what}.section", tensor)
        expected = -(-count * width // 8)
        if section.length != expected:
            raise FormatError(
                f"{what}: fixed-width section of {count} symbols x {width} bits must be {expected} bytes, is {section.length}",
                tensor=tensor, offset=section.offset,
            )
        return Stream(K.FIXED, section, count, alphabet, width)
    if coding == K.HUFFMAN:
        obj = _require_object(value, what, K.HUFFMAN_STREAM_KEYS, tensor=tensor)
        section = _section(obj["section"], f"{what}.section", tensor)
        table = _require_int(obj["table"], f"{what}.table", 0, len(tables) - 1, tensor=tensor) if tables else None
        if table is None:
            raise HeaderError(f"{what}.table refers to a table but the file has none", tensor=tensor)
        table_size = len(tables[table])
        if table_size > alphabet:
            raise HuffmanTableError(
                f"{what}: table {table} has {table_size} symbols, more than the stream's alphabet of {alphabet}",
                tensor=tensor,
            )
        block_size, sizes = _block_sizes(obj, what, tensor, count, section)
        nblocks = len(sizes)
        # Each symbol costs at least one bit (§6.2: minimum code length 1); every block but the last
        # holds block_size symbols.
        last = count - (nblocks - 1) * block_size
        if nblocks and (8 * min(sizes[:-1], default=block_size) < block_size or 8 * sizes[-1] < last):
            for i, size in enumerate(sizes):
                n = min(block_size, count - i * block_size)
                if n > 8 * size:
                    raise FormatError(
                        f"{what}: Huffman block {i} of {size} bytes cannot hold {n} symbols",
                        tensor=tensor, offset=section.offset,
                    )
        return Stream(K.HUFFMAN, section, count, alphabet, width, table, block_size, sizes)
    raise HeaderError(f"{what}.coding is {coding!r}, not one of {list(K.CODINGS)}", tensor=tensor)


def _block_sizes(obj: dict, what: str, tensor: str, count: int, section: Section) -> tuple[int, tuple[int, ...]]:
    """A coded stream's block_size and block_bytes, checked against its count and section (§6.3)."""
    block_size = _require_int(obj["block_size"], f"{what}.block_size", 1, tensor=tensor)
    block_bytes = obj["block_bytes"]
    if not isinstance(block_bytes, list):
        raise HeaderError(f"{what}.block_bytes must be a JSON array", tensor=tensor)
    nblocks = -(-count // block_size)
    if len(block_bytes) != nblocks:
        raise FormatError(
            f"{what}: {count} symbols in blocks of {block_size} make {nblocks} blocks, block_bytes lists {len(block_bytes)}",
            tensor=tensor, offset=section.offset,
        )
    # (checked in bulk first: a large tensor lists thousands of blocks)
    if not all(type(b) is int and b >= 0 for b in block_bytes):
        for i, b in enumerate(block_bytes):
            _require_int(b, f"{what}.block_bytes[{i}]", tensor=tensor)
    sizes = tuple(block_bytes)
    if sum(sizes) != section.length:
        raise FormatError(
            f"{what}: block_bytes add up to {sum(sizes)}, the section holds {section.length}",
            tensor=tensor, offset=section.offset,
        )
    return block_size, sizes


def _rans_stream(value: dict, what: str, tensor: str, count: int, alphabet: int, width: int,
                 version: tuple[int, int], classes: int | None = None) -> Stream:
    """A rans stream object (§6.4, format 1.4): its table parsed and checked, every block a state and
    whole words. `classes`: m, for the indices of a shared tensor with row scales, which may carry an
    array of m tables (one per scale class) instead of one."""
    if version[1] < K.RANS_MINOR:
        raise HeaderError(f"{what}.coding 'rans' needs format version 1.{K.RANS_MINOR} or later, the file is "
                          f"{version[0]}.{version[1]} (§6.4)", tensor=tensor)
    obj = _require_object(value, what, K.RANS_STREAM_KEYS, tensor=tensor)
    section = _section(obj["section"], f"{what}.section", tensor)
    text = obj["frequencies"]
    if isinstance(text, list):
        if classes is None:
            raise HeaderError(f"{what}.frequencies: an array of tables (one per scale class) is only for the "
                              "indices of a shared tensor with row scales; this stream needs a string (§6.4)",
                              tensor=tensor)
        if len(text) != classes:
            raise HeaderError(f"{what}.frequencies lists {len(text)} tables, the tensor has {classes} row scales "
                              "(§6.4)", tensor=tensor)
        texts = tuple(_require_str(t, f"{what}.frequencies[{j}]", tensor=tensor) for j, t in enumerate(text))
    else:
        texts = (_require_str(text, f"{what}.frequencies", tensor=tensor),)
    for j, t in enumerate(texts):
        where = f"{what}.frequencies" + (f"[{j}]" if isinstance(text, list) else "")
        symbols = validate_frequency_text(t, where, tensor)
        if symbols > alphabet:
            raise FrequencyTableError(f"{where}: table has {symbols} symbols, more than the stream's alphabet "
                                      f"of {alphabet}", tensor=tensor)
    block_size, sizes = _block_sizes(obj, what, tensor, count, section)
    for i, size in enumerate(sizes):
        if size < K.RANS_STATE_BYTES or size % K.RANS_WORD_BYTES:
            raise FormatError(f"{what}: rANS block {i} has {size} bytes, not an 8-byte state and whole 4-byte "
                              "words (§6.4)", tensor=tensor, offset=section.offset)
    return Stream(K.RANS, section, count, alphabet, width, None, block_size, sizes,
                  texts if isinstance(text, list) else texts[0])


def validate_frequency_text(text: str, what: str, tensor: str | None = None) -> int:
    """Check a rANS table text against §6.4 in pure Python (no numba); return its number of symbols."""
    if not 4 <= len(text) <= 4 * K.MAX_ALPHABET or len(text) % 4:
        raise FrequencyTableError(f"rANS table {what}: {len(text)} digits, not a multiple of 4 in "
                                  f"4..{4 * K.MAX_ALPHABET}", tensor=tensor)
    bad = set(text) - set("0123456789abcdef")
    if bad:
        raise FrequencyTableError(f"rANS table {what}: character(s) {sorted(bad)} are not lowercase hex digits",
                                  tensor=tensor)
    freqs = array.array("H", bytes.fromhex(text))
    if sys.byteorder == "little":
        freqs.byteswap()  # the digits are big-endian groups
    total = sum(freqs)
    if total != K.RANS_TOTAL:
        raise FrequencyTableError(f"rANS table {what}: frequencies add up to {total}, not "
                                  f"2^{K.RANS_PRECISION} = {K.RANS_TOTAL}", tensor=tensor)
    return len(freqs)


def _validate_tables(tables: Any) -> list[str]:
    if not isinstance(tables, list):
        raise HeaderError("header: 'tables' must be a JSON array")
    out = []
    for i, t in enumerate(tables):
        if not isinstance(t, str):
            raise HeaderError(f"header: tables[{i}] must be a string of hex digits")
        out.append(t)
        validate_table_text(t, f"tables[{i}]")
    return out


def validate_table_text(text: str, what: str) -> None:
    """Check a hex code-length table against §6.2 in pure Python (no numba)."""
    if not 1 <= len(text) <= K.MAX_ALPHABET:
        raise HuffmanTableError(f"Huffman table {what}: length {len(text)} outside 1..{K.MAX_ALPHABET}")
    bad = set(text) - set("0123456789abcdef")
    if bad:
        raise HuffmanTableError(f"Huffman table {what}: character(s) {sorted(bad)} are not lowercase hex digits")
    counts = [text.count(digit) for digit in "0123456789abcdef"]  # codes of each length 0..15
    used = sum(counts[1:])
    if used == 0:
        raise HuffmanTableError(f"Huffman table {what}: no symbol has a code")
    if used == 1:
        if counts[1] != 1:
            raise HuffmanTableError(f"Huffman table {what}: a single used symbol must have code length 1")
        return
    kraft = sum(counts[n] << (K.MAX_CODE_LENGTH - n) for n in range(1, 16))
    full = 1 << K.MAX_CODE_LENGTH
    if kraft != full:
        kind = "over-subscribed" if kraft > full else "incomplete prefix code"
        raise HuffmanTableError(f"Huffman table {what}: Kraft sum {kraft}/{full} is not 1 ({kind})")


def _validate_document(doc: Any, version: tuple[int, int], header_length: int, data_start: int, file_length: int, limits: Limits) -> Header:
    top = _require_object(doc, "header", K.TOP_LEVEL_KEYS)
    metadata = top["metadata"]
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError("header: 'metadata' must be an object of strings")
    for key, value in metadata.items():
        if not (_is_unicode(key) and _is_unicode(value)):
            raise HeaderError(f"header: metadata entry {key!r} holds a lone surrogate (\\uD800-\\uDFFF escape), not text")
    tables = _validate_tables(top["tables"])
    raw_tensors = top["tensors"]
    if not isinstance(raw_tensors, list):
        raise HeaderError("header: 'tensors' must be a JSON array")
    if len(raw_tensors) > limits.max_tensors:
        raise LimitError(f"file has {len(raw_tensors)} tensors, more than the limit of {limits.max_tensors}")
    tensors: list[TensorInfo] = []
    names: set[str] = set()
    total_decoded = 0
    budget = limits.max_decoded_bytes(file_length)
    end = data_start
    for i, obj in enumerate(raw_tensors):
        info = _validate_tensor(obj, i, tables, limits, budget, version)
        if info.name in names:
            raise HeaderError(f"duplicate tensor name {info.name!r}", tensor=info.name)
        names.add(info.name)
        total_decoded += info.nbytes
        if total_decoded > budget:
            raise LimitError(
                f"tensors decode to more than {budget} bytes, the limit for a {file_length}-byte file",
                tensor=info.name,
            )
        for key, section in info.sections():
            expected = align64(end)
            if section.offset != expected:
                raise FormatError(
                    f"section {key!r} starts at {section.offset}, expected {expected} (sections are contiguous, 64-byte aligned, §4)",
                    tensor=info.name, offset=section.offset,
                )
            end = section.offset + section.length
            if end > file_length:
                raise TruncatedError(
                    f"section {key!r} ends at {end}, past the end of the {file_length}-byte file",
                    tensor=info.name, offset=section.offset,
                )
        tensors.append(info)
    if end != file_length:
        raise FormatError(f"{file_length - end} bytes follow the last section (§4)", offset=end)
    return Header(version, dict(metadata), tables, tensors, header_length, data_start, file_length)


def _newer(version: tuple[int, int], what: str, tensor: str) -> None:
    """Content this reader does not know in a file of a newer minor version: VersionError (§2.3)."""
    if version[1] > K.VERSION_MINOR:
        raise VersionError(f"{what}: the file is format {version[0]}.{version[1]}, this reader implements "
                           f"{K.VERSION_MAJOR}.{K.VERSION_MINOR} and does not know it", tensor=tensor)


def _validate_tensor(obj: Any, i: int, tables: list[str], limits: Limits, budget: int,
                     version: tuple[int, int] = (K.VERSION_MAJOR, K.VERSION_MINOR)) -> TensorInfo:
    what = f"tensors[{i}]"
    if not isinstance(obj, dict):
        raise HeaderError(f"{what} must be a JSON object")
    name = _require_str(obj.get("name"), f"{what}.name")
    if not name or not _is_unicode(name) or len(name.encode("utf-8")) > K.MAX_NAME_BYTES:
        raise HeaderError(f"{what}.name must be 1..{K.MAX_NAME_BYTES} UTF-8 bytes")
    encoding = obj.get("encoding")
    # isinstance first: a dict or list here is unhashable and must not reach a set or dict lookup
    keys = {K.RAW: K.RAW_KEYS, K.SHARED: K.SHARED_KEYS, K.FIELDS: K.FIELDS_KEYS}.get(encoding) \
        if isinstance(encoding, str) and encoding in K.ENCODINGS else None
    if encoding == K.SPARSE:
        keys = K.SPARSE_CODEBOOK_KEYS if "codebook" in obj else K.SPARSE_VALUES_KEYS
    if keys is None:
        _newer(version, f"encoding {encoding!r}", name)
        raise HeaderError(f"encoding {encoding!r} is not one of {list(K.ENCODINGS)}", tensor=name)
    scaled = encoding == K.SHARED and not K.ROW_SCALE_KEYS.isdisjoint(obj)
    if scaled:
        if version[1] < K.ROW_SCALES_MINOR:
            present = sorted(K.ROW_SCALE_KEYS & set(obj))
            raise HeaderError(f"tensor has unknown key(s) {present}: row scales need format version "
                              f"1.{K.ROW_SCALES_MINOR} or later, the file is {version[0]}.{version[1]} (§5.2, §3.4)",
                              tensor=name)
        if not K.ROW_SCALE_KEYS <= set(obj):
            raise HeaderError(f"row scales need all of {sorted(K.ROW_SCALE_KEYS)}, the tensor has only "
                              f"{sorted(K.ROW_SCALE_KEYS & set(obj))} (§5.2)", tensor=name)
        keys = keys | K.ROW_SCALE_KEYS
    if encoding == K.FIELDS and version[1] < K.FIELDS_MINOR:
        raise HeaderError(f"the fields encoding needs format version 1.{K.FIELDS_MINOR} or later, the file is "
                          f"{version[0]}.{version[1]} (§5.4)", tensor=name)
    unknown = set(obj) - (K.TENSOR_COMMON_KEYS | keys)
    if unknown:
        _newer(version, f"tensor key(s) {sorted(unknown)}", name)
    _require_object(obj, "tensor", K.TENSOR_COMMON_KEYS | keys, tensor=name)
    dtype = obj["dtype"]
    if not isinstance(dtype, str) or dtype not in K.DTYPE_SIZES:
        if isinstance(dtype, str):
            _newer(version, f"dtype {dtype!r}", name)
        raise HeaderError(f"dtype {dtype!r} is not one of {sorted(K.DTYPE_SIZES)}", tensor=name)
    if dtype in K.FLOAT8_DTYPES and version[1] < K.FIELDS_MINOR:
        raise HeaderError(f"dtype {dtype!r} needs format version 1.{K.FIELDS_MINOR} or later, the file is "
                          f"{version[0]}.{version[1]} (§3.2)", tensor=name)
    shape = obj["shape"]
    if not isinstance(shape, list):
        raise HeaderError("shape must be a JSON array", tensor=name)
    if len(shape) > limits.max_rank:
        raise LimitError(f"rank {len(shape)} exceeds the limit of {limits.max_rank}", tensor=name)
    if len(shape) > NUMPY_MAX_RANK:  # even when a caller raised max_rank: numpy cannot hold the array
        raise LimitError(f"rank {len(shape)} exceeds the {NUMPY_MAX_RANK} dimensions a numpy array can have", tensor=name)
    shape_t = tuple(_require_int(d, "shape dimension", tensor=name) for d in shape)
    numel = math.prod(shape_t)
    itemsize = K.DTYPE_SIZES[dtype]
    if numel * itemsize > budget:
        raise LimitError(f"tensor of shape {list(shape_t)} would decode to {numel * itemsize} bytes, more than the "
                         f"limit of {budget} bytes for this file", tensor=name)
    # A zero dimension makes numel 0 whatever the others are, but numpy cannot even represent a shape
    # whose non-zero dimensions overflow, and a sparse view allocates one pointer per row or column:
    # so the product of the non-zero dimensions is held to the same limit.
    extent = math.prod(d for d in shape_t if d)
    if extent * itemsize > budget:
        raise LimitError(f"tensor of shape {list(shape_t)} has dimensions too large: their non-zero product "
                         f"{extent} x {itemsize} bytes exceeds the limit of {budget} bytes for this file", tensor=name)
    base = dict(name=name, dtype=dtype, shape=shape_t, encoding=encoding)

    if encoding == K.RAW:
        data = _section(obj["data"], "data", name)
        _expect_length(data, numel * itemsize, "data", name)
        return TensorInfo(**base, data=data)

    if encoding == K.FIELDS:
        return _validate_fields(obj, base, numel, itemsize, tables, version)

    if encoding == K.SHARED:
        if dtype == "bool":
            raise HeaderError("bool tensors cannot have a codebook", tensor=name)
        if scaled and dtype not in K.ROW_SCALE_DTYPES:
            raise HeaderError(f"row scales are allowed only for {sorted(K.ROW_SCALE_DTYPES)} tensors, not {dtype} "
                              "(§5.2)", tensor=name)
        bits = _require_int(obj["bits"], "bits", K.MIN_BITS, K.MAX_BITS, tensor=name)
        codebook = _section(obj["codebook"], "codebook", name)
        k = _codebook_size(codebook, itemsize, bits, name)
        if not scaled:
            indices = _stream(obj["indices"], "indices", name, numel, k, bits, tables, version)
            return TensorInfo(**base, codebook=codebook, indices=indices, bits=bits)
        scale_bits = _require_int(obj["scale_bits"], "scale_bits", K.MIN_BITS, K.MAX_BITS, tensor=name)
        scales = _section(obj["scales"], "scales", name)
        m = _scales_size(scales, itemsize, scale_bits, name)
        rows, _ = matrix_view(shape_t)
        row_scales = _stream(obj["row_scales"], "row_scales", name, rows, m, scale_bits, tables, version)
        indices = _stream(obj["indices"], "indices", name, numel, k, bits, tables, version, classes=m)
        if isinstance(indices.frequencies, tuple):
            distinct = len(set(indices.frequencies))
            if distinct * K.RANS_DECODE_TABLE_BYTES > budget:
                raise LimitError(f"indices: {distinct} distinct rANS tables need {distinct * K.RANS_DECODE_TABLE_BYTES} "
                                 f"bytes of decoding tables, more than the limit of {budget} bytes for this file (§7)",
                                 tensor=name)
        return TensorInfo(**base, codebook=codebook, indices=indices, bits=bits, scale_bits=scale_bits,
                          scales=scales, row_scales=row_scales)

    # sparse (§5.3)
    layout = obj["layout"]
    if not isinstance(layout, str) or layout not in K.LAYOUTS:
        raise HeaderError(f"layout {layout!r} is not one of {list(K.LAYOUTS)}", tensor=name)
    rows, cols = matrix_view(shape_t)
    pointers = 8 * ((cols if layout == K.CSC else rows) + 1)  # the int64 indptr of get_sparse
    if pointers > budget:
        raise LimitError(f"a {layout} view of shape {list(shape_t)} needs {pointers} bytes of row/column pointers, "
                         f"more than the limit of {budget} bytes for this file", tensor=name)
    index_bits = _require_int(obj["index_bits"], "index_bits", K.MIN_BITS, K.MAX_BITS, tensor=name)
    entries = _require_int(obj["entries"], "entries", tensor=name)
    if entries > numel:
        raise FormatError(f"{entries} entries cannot fit in a tensor of {numel} elements", tensor=name)
    fillers = _require_int(obj["fillers"], "fillers", 0, entries, tensor=name)
    extra: dict[str, Any] = dict(layout=layout, index_bits=index_bits, entries=entries, fillers=fillers)
    if "codebook" in obj:
        if dtype == "bool":
            raise HeaderError("bool tensors cannot have a codebook", tensor=name)
        bits = _require_int(obj["bits"], "bits", K.MIN_BITS, K.MAX_BITS, tensor=name)
        codebook = _section(obj["codebook"], "codebook", name)
        k = _codebook_size(codebook, itemsize, bits, name)
        gaps = _stream(obj["gaps"], "gaps", name, entries, 1 << index_bits, index_bits, tables, version)
        indices = _stream(obj["indices"], "indices", name, entries, k, bits, tables, version)
        return TensorInfo(**base, **extra, bits=bits, codebook=codebook, gaps=gaps, indices=indices)
    gaps = _stream(obj["gaps"], "gaps", name, entries, 1 << index_bits, index_bits, tables, version)
    values = _section(obj["values"], "values", name)
    _expect_length(values, entries * itemsize, "values", name)
    return TensorInfo(**base, **extra, gaps=gaps, values=values)


def _validate_fields(obj: dict, base: dict, numel: int, itemsize: int, tables: list[str],
                     version: tuple[int, int]) -> TensorInfo:
    """A fields tensor's keys (§5.4): widths, chunk size, then each chunk's streams."""
    name = base["name"]
    if base["dtype"] == "bool":
        raise HeaderError("bool tensors cannot use the fields encoding", tensor=name)
    widths = obj["fields"]
    if not isinstance(widths, list) or not widths:
        raise HeaderError("fields must be a non-empty JSON array of widths", tensor=name)
    widths_t = tuple(_require_int(w, "fields width", K.MIN_BITS, K.MAX_BITS, tensor=name) for w in widths)
    if sum(widths_t) != 8 * itemsize:
        raise HeaderError(f"field widths {list(widths_t)} add up to {sum(widths_t)} bits, a {base['dtype']} "
                          f"element has {8 * itemsize}", tensor=name)
    chunk_size = _require_int(obj["chunk_size"], "chunk_size", 1, tensor=name)
    chunks = obj["chunks"]
    if not isinstance(chunks, list):
        raise HeaderError("chunks must be a JSON array", tensor=name)
    nchunks = -(-numel // chunk_size)
    if len(chunks) != nchunks:
        raise FormatError(f"{numel} elements in chunks of {chunk_size} make {nchunks} chunks, chunks lists "
                          f"{len(chunks)}", tensor=name)
    out = []
    for c, streams in enumerate(chunks):
        if not isinstance(streams, list):
            raise HeaderError(f"chunks[{c}] must be a JSON array", tensor=name)
        if len(streams) != len(widths_t):
            raise FormatError(f"chunks[{c}] has {len(streams)} streams, the tensor has {len(widths_t)} fields",
                              tensor=name)
        count = min(chunk_size, numel - c * chunk_size)
        out.append(tuple(_stream(s, f"chunks[{c}][{f}]", name, count, 1 << w, w, tables, version)
                         for f, (s, w) in enumerate(zip(streams, widths_t))))
    return TensorInfo(**base, fields=widths_t, chunk_size=chunk_size, chunks=tuple(out))


def content_minor(headers: Any) -> int:
    """The lowest minor version a file's tensor objects need: 1.4 for a rans stream, 1.3 for row
    scales, 1.2 for fields or float8, else 0 (§2.3)."""
    minor = K.JSON_HEADER_MINOR
    for h in headers:
        if any(s.get("coding") == K.RANS for s in _stream_objects(h)):
            return K.RANS_MINOR
        if "scales" in h:
            minor = max(minor, K.ROW_SCALES_MINOR)
        if h.get("encoding") == K.FIELDS or h.get("dtype") in K.FLOAT8_DTYPES:
            minor = max(minor, K.FIELDS_MINOR)
    return minor


def _stream_objects(h: dict) -> Iterator[dict]:
    """The stream objects of a tensor object: its streams' keys, and each chunk's of a fields tensor."""
    for key in ("row_scales", "gaps", "indices"):
        if isinstance(h.get(key), dict):
            yield h[key]
    for chunk in h.get("chunks") or ():
        yield from (s for s in chunk if isinstance(s, dict))


def matrix_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (R, C) matrix view of a sparse tensor's shape (§5.3), in Python integers."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    if shape[0] == 0:
        return 0, 0
    return shape[0], math.prod(shape[1:])


def _expect_length(section: Section, expected: int, key: str, tensor: str) -> None:
    if section.length != expected:
        raise FormatError(
            f"section {key!r} must be {expected} bytes, is {section.length}", tensor=tensor, offset=section.offset
        )


def _codebook_size(codebook: Section, itemsize: int, bits: int, tensor: str) -> int:
    return _value_count(codebook, itemsize, bits, "codebook", tensor)


def _scales_size(scales: Section, itemsize: int, scale_bits: int, tensor: str) -> int:
    return _value_count(scales, itemsize, scale_bits, "scales section", tensor)


def _value_count(section: Section, itemsize: int, bits: int, what: str, tensor: str) -> int:
    """The number of values in a codebook or scales section: 1..2^bits whole values (FormatError otherwise)."""
    n, rest = divmod(section.length, itemsize)
    if rest or not 1 <= n <= (1 << bits):
        raise FormatError(f"{what} of {section.length} bytes is not 1..{1 << bits} values of {itemsize} bytes",
                          tensor=tensor, offset=section.offset)
    return n


def _padding_ranges(header: Header) -> Iterator[tuple[int, int]]:
    end = header.data_start
    for info in header.tensors:
        for _, section in info.sections():
            if section.offset > end:
                yield end, section.offset
            end = section.end


def _check_padding_buffer(buf: Any, header: Header) -> None:
    for start, stop in _padding_ranges(header):
        if any(bytes(buf[start:stop])):
            raise FormatError("non-zero padding bytes between sections (§4)", offset=start)


def _check_padding_file(f: BinaryIO, header: Header) -> None:
    for start, stop in _padding_ranges(header):
        f.seek(start)
        if any(f.read(stop - start)):
            raise FormatError("non-zero padding bytes between sections (§4)", offset=start)


def check_section(buf: Any, section: Section, key: str, tensor: str) -> memoryview:
    """Return the section's bytes as a memoryview after checking its CRC-32."""
    view = memoryview(buf)[section.offset : section.end]
    crc = zlib.crc32(view)
    if crc != section.crc32:
        raise ChecksumError(
            f"CRC-32 mismatch in section {key!r}: stored {section.crc32:#010x}, computed {crc:#010x}",
            tensor=tensor, offset=section.offset,
        )
    return view


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass
class EncodedTensor:
    """A tensor ready to be written: its header object with payloads in place of sections.

    `header` holds the tensor's JSON keys; wherever a section object belongs, it holds an integer
    index into `payloads` (for a stream, under the stream's "section" key).
    """

    header: dict[str, Any]
    payloads: list[Any]  # bytes-like, in file order


def _section_slots(header: dict[str, Any]) -> Iterator[tuple[dict, str]]:
    """The (object, key) places of the sections of a tensor object, in file order (§5)."""
    if header.get("encoding") == K.FIELDS:
        for streams in header["chunks"]:
            for stream in streams:
                yield stream, "section"
        return
    for key in K.SECTION_KEYS_IN_ORDER:
        if key not in header:
            continue
        if isinstance(header[key], dict):  # a stream
            yield header[key], "section"
        else:
            yield header, key


def _header_text(metadata: dict[str, str], tables: list[str], tensors: list[EncodedTensor], crcs: list[list[int]],
                 sizes: list[list[int]], data_start: int) -> tuple[bytes, int]:
    """The compact JSON text of the header for sections laid out from `data_start` (§4), and the file's end."""
    end = data_start
    objs = []
    for t, tcrc, tsize in zip(tensors, crcs, sizes):
        obj = json.loads(json.dumps(t.header))  # a deep copy with plain types
        for (holder, key), crc, size in zip(_section_slots(obj), tcrc, tsize):
            offset = align64(end)
            holder[key] = {"offset": offset, "length": size, "crc32": crc}
            end = offset + size
        objs.append(obj)
    doc = {"metadata": metadata, "tables": tables, "tensors": objs}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8"), end


def _layout_header(metadata: dict[str, str], tables: list[str], tensors: list[EncodedTensor], crcs: list[list[int]],
                   sizes: list[list[int]], compress: bool = False) -> tuple[bytes, int]:
    """The stored header region (JSON text, or its zlib stream, padded with spaces) and the file length.

    Offsets depend on the header's length and the length on the offsets, so this iterates from a
    data start of 0, never moving it back: the JSON text only grows with it, but a zlib stream need
    not, and a non-decreasing data start always converges.
    """
    def stored(data_start: int) -> tuple[bytes, int]:
        text, end = _header_text(metadata, tables, tensors, crcs, sizes, data_start)
        return (zlib.compress(text, K.ZLIB_LEVEL) if compress else text), end

    data_start = 0
    for _ in range(64):
        body, end = stored(data_start)
        start = align64(K.PREAMBLE_SIZE + len(body))
        if start <= data_start:
            if start < data_start:  # a zlib stream that shrank: the fewest spaces, if the smaller start holds
                smaller, smaller_end = stored(start)
                if align64(K.PREAMBLE_SIZE + len(smaller)) <= start:
                    data_start, body, end = start, smaller, smaller_end
            return body + K.HEADER_PAD_BYTE * (data_start - K.PREAMBLE_SIZE - len(body)), end
        data_start = start
    raise RuntimeError("header layout did not converge")  # pragma: no cover - the data start only grows


SPILL_MEMORY_BYTES = 16 << 20  # a file's data region is held in memory up to this size, then spilled to disk


class Spill:
    """The data region of a file being written, relative to its data start (a multiple of 64, §4), so
    sections can be written as they are coded, before the header that gives their offsets is known.

    Held in memory while small; beyond `memory_bytes` it moves to an unnamed temporary file in
    `directory` (the output's folder, so the final copy stays on one file system).
    """

    def __init__(self, directory: str | None = None, memory_bytes: int = SPILL_MEMORY_BYTES):
        self.directory, self.memory_bytes = directory, memory_bytes
        self._memory: bytearray | None = bytearray()
        self._file: BinaryIO | None = None
        self.length = 0

    def append(self, view: memoryview) -> int:
        """Write a section at the next multiple of 64; return its offset relative to the data start."""
        offset = align64(self.length)
        pad = offset - self.length
        if self._memory is not None and offset + view.nbytes > self.memory_bytes:
            self._file = tempfile.TemporaryFile(dir=self.directory)
            self._file.write(self._memory)
            self._memory = None
        if self._memory is not None:
            self._memory += bytes(pad)
            self._memory += view
        else:
            if pad:
                self._file.write(bytes(pad))
            self._file.write(view)
        self.length = offset + view.nbytes
        return offset

    def copy_to(self, f: BinaryIO) -> None:
        """Append the whole region to `f` (at its current position): a kernel-side copy where it can."""
        if self._memory is not None:
            f.write(self._memory)
            return
        self._file.flush()
        try:
            dst = f.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            dst = None
        if dst is not None:
            f.flush()
            src, done = self._file.fileno(), 0
            try:
                while done < self.length:
                    n = os.copy_file_range(src, dst, self.length - done, done)
                    if n == 0:
                        break
                    done += n
            except (AttributeError, OSError):
                pass  # no copy_file_range here (or across these files): copy what is left by hand
            if done == self.length:
                return
            self._file.seek(done)
        else:
            self._file.seek(0)
            done = 0
        while done < self.length:
            chunk = self._file.read(min(8 << 20, self.length - done))
            if not chunk:
                raise OSError("the spill file ended early")  # pragma: no cover - we wrote it
            f.write(chunk)
            done += len(chunk)

    def close(self) -> None:
        self._memory = None
        if self._file is not None:
            self._file.close()
            self._file = None


class StreamWriter:
    """Write a dcformat file tensor by tensor, holding one tensor's payloads at a time.

    Each tensor's sections go to a `Spill` as it is added (with their CRCs); `finish` writes the
    preamble and header, then copies the data region after them. The bytes are those `write_stream`
    gives for the same tensors.

        w = StreamWriter(f, metadata, directory=folder)
        for t in encoded: w.add(t)
        w.finish(tables)
    """

    def __init__(self, f: BinaryIO, metadata: dict[str, str], *, compact_header: bool = True,
                 directory: str | None = None, memory_bytes: int = SPILL_MEMORY_BYTES):
        self.f, self.metadata, self.compact_header = f, metadata, compact_header
        self.spill = Spill(directory, memory_bytes)
        self.tensors: list[EncodedTensor] = []  # headers only: payloads are dropped once spilled
        self.crcs: list[list[int]] = []
        self.sizes: list[list[int]] = []
        self.finished = False

    def add(self, t: EncodedTensor) -> None:
        if self.finished:
            raise RuntimeError("StreamWriter: add after finish")
        crcs, sizes = [], []
        for p in t.payloads:
            view = memoryview(p).cast("B")
            crcs.append(zlib.crc32(view))
            sizes.append(view.nbytes)
            self.spill.append(view)
        self.tensors.append(EncodedTensor(t.header, []))
        self.crcs.append(crcs)
        self.sizes.append(sizes)

    def finish(self, tables: list[str]) -> int:
        """Write the file; return its length."""
        if self.finished:
            raise RuntimeError("StreamWriter: finish called twice")
        self.finished = True
        try:
            args = (self.metadata, tables, self.tensors, self.crcs, self.sizes)
            header, file_length = _layout_header(*args)
            minor = K.JSON_HEADER_MINOR
            if self.compact_header:
                packed, packed_length = _layout_header(*args, compress=True)
                if packed_length < file_length:
                    header, file_length, minor = packed, packed_length, K.ZLIB_HEADER_MINOR
            minor = max(minor, content_minor(t.header for t in self.tensors))
            data_start = K.PREAMBLE_SIZE + len(header)
            if data_start + self.spill.length != file_length:  # pragma: no cover - both lay out alike
                raise RuntimeError(f"layout mismatch: {data_start} + {self.spill.length} != {file_length}")
            self.f.write(struct.pack(K.PREAMBLE_FORMAT, K.MAGIC, K.VERSION_MAJOR, minor, zlib.crc32(header),
                                     len(header), file_length))
            self.f.write(header)
            self.spill.copy_to(self.f)
            return file_length
        finally:
            self.spill.close()

    def abort(self) -> None:
        """Drop the spill without writing (the caller removes its own temporary file)."""
        self.finished = True
        self.spill.close()


def write_stream(f: BinaryIO, metadata: dict[str, str], tables: list[str], tensors: list[EncodedTensor], *,
                 compact_header: bool = True) -> int:
    """Write a whole file to the binary stream `f`; return its length.

    With `compact_header`, the header is stored zlib-compressed (version 1.1) when that makes the file
    smaller; otherwise it is JSON text and the file says version 1.0, readable by every 1.x reader.
    """
    w = StreamWriter(f, metadata, compact_header=compact_header)
    for t in tensors:
        w.add(t)
    return w.finish(tables)


def _fsync_directory(directory: str) -> None:
    """Make a rename durable: fsync the directory entry (where the platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call write(f) on a temporary file beside `path`, then rename it over `path`.

    On any failure (including KeyboardInterrupt) the temporary file is removed and an existing file
    at `path` is left untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        _fsync_directory(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
