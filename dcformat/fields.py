"""The `fields` encoding (spec §5.4): each element's bits cut into fields, each field a symbol stream.

An element of `itemsize` bytes is read as an unsigned integer and cut, from its least significant bit
up, into fields of the widths the tensor lists (each 1..16 bits, together 8 × itemsize). The elements
are grouped into chunks of `chunk_size`; every chunk codes each field as its own stream (§6), so each
chunk has its own Huffman tables (local statistics) and chunks decode independently, on any thread.
Exact for every bit pattern: NaN payloads, infinities, -0.0, subnormals.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numba
import numpy as np

from . import constants as K
from .errors import CorruptDataError

# The split and chunk size per dtype, chosen by measurement on all-MiniLM-L6-v2 (notes/fields.md):
# the skewed bits (sign and exponent, or the byte holding them) get a field of their own, the
# near-uniform low mantissa bits fields that are stored fixed width.
SPLITS: dict[str, tuple[int, ...]] = {
    "float64": (16, 16, 16, 4, 12),  # 52 mantissa bits; sign + 11-bit exponent on top
    "float32": (8, 8, 4, 12),  # two low mantissa bytes, 4 mantissa bits, sign + exponent + 3 mantissa bits
    "bfloat16": (4, 12),  # 4 low mantissa bits, sign + exponent + 3 mantissa bits
    "float16": (6, 10),  # 6 low mantissa bits, sign + exponent + 4 mantissa bits
    "float8_e4m3fn": (8,),
    "float8_e5m2": (8,),
    "int8": (8,), "uint8": (8,),
    "int16": (8, 8), "uint16": (8, 8),
    "int32": (8, 8, 8, 8), "uint32": (8, 8, 8, 8),
    "int64": (8,) * 8, "uint64": (8,) * 8,
}
CHUNK_SIZES: dict[str, int] = {"float32": 1 << 17, "bfloat16": 1 << 18, "float16": 1 << 18}
# Small tensors (biases, norms) also try splits with fewer streams or a narrower skewed field: their
# tables and sections weigh more than the bits a finer split saves. The smallest coded form wins.
SMALL_SPLITS: dict[str, tuple[tuple[int, ...], ...]] = {
    "float32": ((16, 7, 8, 1), (16, 8, 8), (16, 16)),
    "bfloat16": ((7, 8, 1), (8, 8), (16,)),
    "float16": ((10, 5, 1), (16,), (8, 7, 1)),
    "float64": ((16, 16, 16, 4, 11, 1),),
}
SMALL_NUMEL = 1 << 16  # tensors up to this many elements try SMALL_SPLITS too
DEFAULT_CHUNK_SIZE = 1 << 16
BLOCK_SIZE = 1 << 15  # symbols per Huffman block: a stream's blocks decode interleaved (a block alone is a
# chain of dependent table look-ups), for about 4 bytes of block_bytes each
SECTION_JSON_COST = 20  # header bytes of a section object (offset, length, CRC-32: digits zlib cannot shrink)


def section_cost(length: int) -> int:
    """Bytes a section of `length` payload bytes costs in the file: itself padded to 64 (§4), and its JSON
    (exact padding, not an average: a tensor of a few hundred bytes in several sections pays ~60 B each)."""
    return length + (-length) % 64 + SECTION_JSON_COST
TENSOR_COST = 32  # header bytes a fields tensor object costs beyond a raw one ("fields", "chunk_size", ...)


def split_for(dtype: str) -> tuple[int, ...] | None:
    """The field widths dcformat writes for `dtype` (None: the dtype has no fields form, bool)."""
    return SPLITS.get(dtype)


def candidates_for(dtype: str, numel: int) -> list[tuple[int, ...]]:
    """The splits to try for a tensor of `numel` elements: dcformat's split, and for small tensors others."""
    first = SPLITS.get(dtype)
    if first is None:
        return []
    return [first, *(SMALL_SPLITS.get(dtype, ()) if numel <= SMALL_NUMEL else ())]


def chunk_size_for(dtype: str) -> int:
    """Elements per chunk that dcformat writes for `dtype`."""
    return CHUNK_SIZES.get(dtype, DEFAULT_CHUNK_SIZE)


def shifts(widths: tuple[int, ...] | list[int]) -> list[int]:
    """The bit position of each field's least significant bit."""
    out, lo = [], 0
    for w in widths:
        out.append(lo)
        lo += w
    return out


def extract(bits: np.ndarray, lo: int, width: int) -> np.ndarray:
    """The field of `width` bits at bit `lo` of every element (unsigned integers), as uint16 symbols."""
    out = np.empty(bits.size, dtype=np.uint16)
    _extract_kernel(bits.reshape(-1), np.uint32(lo), np.uint32(width), out)
    return out


def merge(out: np.ndarray, symbols: np.ndarray, lo: int, first: bool) -> None:
    """out |= symbols << lo (out = ... for the first field): put one field back into the elements."""
    if out.ndim != 1 or symbols.shape != out.shape or symbols.dtype != np.uint16 \
            or not 0 <= lo < 8 * out.dtype.itemsize or out.dtype.kind != "u":
        raise CorruptDataError(f"fields: a field of {symbols.size} symbols at bit {lo} does not fit "
                               f"{out.size} elements of {out.dtype}")
    _merge_kernel(out, symbols, np.uint32(lo), first)


def merge_fixed(out: np.ndarray, data: np.ndarray, width: int, lo: int, first: bool) -> bool:
    """A fixed-width field (§6.1) unpacked straight into the elements: out |= symbol << lo (out = ... for the
    first field). False if a padding bit of the last byte is set. Every `width`-bit value is below the
    field's alphabet 2^width, so there is no symbol to reject."""
    if out.ndim != 1 or out.dtype.kind != "u" or data.dtype != np.uint8 or data.ndim != 1 \
            or not 1 <= width <= 16 or not 0 <= lo or lo + width > 8 * out.dtype.itemsize \
            or data.size != -(-out.size * width // 8):
        raise CorruptDataError(f"fields: {data.size} bytes of {width}-bit values at bit {lo} do not fit "
                               f"{out.size} elements of {out.dtype}")
    return _fixed_merge_kernel(data, np.int64(width), np.uint32(lo), out, first)


@numba.njit(cache=True, nogil=True)
def _fixed_merge_kernel(data, width, lo, out, first):  # pragma: no cover - compiled
    t = out.dtype.type
    shift = t(lo)
    n = out.size
    if width == 8:
        if first:
            for i in range(n):
                out[i] = t(data[i]) << shift
        else:
            for i in range(n):
                out[i] |= t(data[i]) << shift
    elif width == 16:
        if first:
            for i in range(n):
                out[i] = t(np.uint32(data[2 * i]) | (np.uint32(data[2 * i + 1]) << 8)) << shift
        else:
            for i in range(n):
                out[i] |= t(np.uint32(data[2 * i]) | (np.uint32(data[2 * i + 1]) << 8)) << shift
    elif width == 4:  # two symbols a byte, low nibble first
        for k in range(n // 2):
            b = data[k]
            lo_v, hi_v = t(b & 15) << shift, t(b >> 4) << shift
            if first:
                out[2 * k], out[2 * k + 1] = lo_v, hi_v
            else:
                out[2 * k] |= lo_v
                out[2 * k + 1] |= hi_v
        if n & 1:
            v = t(data[n // 2] & 15) << shift
            if first:
                out[n - 1] = v
            else:
                out[n - 1] |= v
    else:  # a bit buffer refilled a byte at a time: never reads past the n * width bits the length check allows
        mask = np.uint64((1 << width) - 1)
        w = np.uint64(width)
        acc = np.uint64(0)
        have = np.uint64(0)
        p = 0
        for i in range(n):
            while have < w:
                acc |= np.uint64(data[p]) << have
                p += 1
                have += np.uint64(8)
            v = t(acc & mask) << shift
            acc >>= w
            have -= w
            if first:
                out[i] = v
            else:
                out[i] |= v
    used = n * width
    if used & 7:
        return (data[data.size - 1] >> (used & 7)) == 0
    return True


@numba.njit(cache=True, nogil=True)
def _extract_kernel(bits, lo, width, out):  # pragma: no cover - compiled
    mask = (1 << width) - 1
    for i in range(bits.size):
        out[i] = np.uint16((np.uint64(bits[i]) >> np.uint64(lo)) & np.uint64(mask))


@numba.njit(cache=True, nogil=True)
def _merge_kernel(out, symbols, lo, first):  # pragma: no cover - compiled
    t = out.dtype.type
    shift = t(lo)
    if first:
        for i in range(out.size):
            out[i] = t(symbols[i]) << shift
    else:
        for i in range(out.size):
            out[i] |= t(symbols[i]) << shift


def chunk_count(numel: int, chunk_size: int) -> int:
    """ceil(numel / chunk_size): how many chunks a tensor has (0 for an empty tensor)."""
    return -(-numel // chunk_size)


def chunk_bounds(numel: int, chunk_size: int, c: int) -> tuple[int, int]:
    """Element range of chunk c."""
    return c * chunk_size, min((c + 1) * chunk_size, numel)


@functools.lru_cache(maxsize=1024)
def zlib_table_cost(text: str) -> int:
    """What a table's text costs in a zlib-compressed header: its zlib size alone (an upper bound of what
    it adds beside the other tables; a table of a 12-bit field is mostly runs of 0 digits)."""
    import zlib

    return len(zlib.compress(text.encode("ascii"), 1))


def code_fields(bits: np.ndarray, widths: tuple[int, ...], chunk_size: int, mode: str,
                header_cost: int, table_cost: Callable[[str], int] = len
                ) -> tuple[list[list[dict]], list[bytes], list[str | None], int]:
    """Code every chunk's fields: (chunk stream objects, payloads in file order, table texts, coded bytes).

    Each stream is coded the cheaper way (`codec.code_stream`: Huffman with a table of its own, or fixed
    width), one Huffman block per stream; the byte count includes tables and each section's `section_cost`.
    """
    from .codec import StreamDraft, code_stream

    flat = bits.reshape(-1)
    chunks: list[list[dict]] = []
    payloads: list[bytes] = []
    texts: list[str | None] = []
    total = TENSOR_COST
    seen: set[str] = set()
    for c in range(chunk_count(flat.size, chunk_size)):
        c0, c1 = chunk_bounds(flat.size, chunk_size, c)
        part = flat[c0:c1]
        streams = []
        for lo, w in zip(shifts(widths), widths):
            draft = StreamDraft("fields", extract(part, lo, w), 1 << w, w)
            obj, payload, text = code_stream(draft, mode, min(BLOCK_SIZE, max(1, c1 - c0)), None, header_cost,
                                             table_cost)
            if text is not None:
                obj["table"] = text
                if text not in seen:  # identical tables are stored once (codec.Tables)
                    seen.add(text)
                    total += table_cost(text)
            obj["section"] = len(payloads)
            streams.append(obj)
            payloads.append(payload)
            texts.append(text)
            total += section_cost(len(payload)) + (header_cost + 4 if text is not None else 0)
        chunks.append(streams)
    return chunks, payloads, texts, total


def fields_header(base: dict[str, Any], widths: tuple[int, ...], chunk_size: int, chunks: list[list[dict]]) -> dict:
    """The tensor object of a fields tensor (§5.4), stream sections still payload indices."""
    return {**base, "encoding": K.FIELDS, "fields": list(widths), "chunk_size": chunk_size, "chunks": chunks}
