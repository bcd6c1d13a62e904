"""Canonical, length-limited Huffman coding of symbol streams (spec §6.2 tables, §6.3 blocks).

Code lengths come from package-merge (optimal under a maximum length); codewords are canonical as in
DEFLATE and written most significant code bit first into an LSB-first bit stream (§1), so the writer
emits each codeword bit-reversed and the reader indexes a 2**L lookup table by the next L stream bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from . import pool
from .bitpack import _load_u64, as_byte_array, as_symbols
from .constants import MAX_ALPHABET, MAX_CODE_LENGTH
from .errors import CorruptDataError, EncodeError, HuffmanTableError

__all__ = [
    "code_lengths",
    "validate_lengths",
    "canonical_codes",
    "lengths_to_hex",
    "lengths_from_hex",
    "encoded_bits",
    "encode",
    "decode",
    "BlockStream",
    "prepare",
    "decode_units",
    "gather_units",
    "decode_exact",
]

_HEX_DIGITS = "0123456789abcdef"
# ASCII byte -> hex digit value, 255 for anything that is not a lowercase hex digit
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(_HEX_DIGITS):
    _HEX_VALUE[ord(_c)] = _i


# ---------------------------------------------------------------------------------------------------
# Code lengths (encoder side; not part of the format, but deterministic so files are reproducible)
# ---------------------------------------------------------------------------------------------------


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal code lengths of at most `max_length` bits for symbol `counts`, by package-merge."""
    c = np.asarray(counts)
    if c.ndim != 1:
        raise EncodeError(f"symbol counts must be a 1-D array, got {c.ndim} dimensions")
    if c.size and c.dtype.kind not in "iu":
        raise EncodeError(f"symbol counts must be integers, got dtype {c.dtype}")
    if c.size > MAX_ALPHABET:
        raise EncodeError(f"{c.size} symbol counts exceed the maximum alphabet of {MAX_ALPHABET}")
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or not (
        1 <= max_length <= MAX_CODE_LENGTH
    ):
        raise EncodeError(f"maximum code length {max_length!r} is not an integer in 1..{MAX_CODE_LENGTH}")
    if c.size and int(c.min()) < 0:
        bad = int(np.argmax(c < 0))
        raise EncodeError(f"count {int(c[bad])} of symbol {bad} is negative")
    used = np.flatnonzero(c)
    n = used.size
    if n == 0:
        raise EncodeError("cannot build a Huffman code: no symbol has a non-zero count")
    if n > 1 << max_length:
        raise EncodeError(f"{n} used symbols cannot all have codes of at most {max_length} bits")
    out = np.zeros(c.size, dtype=np.uint8)
    if n == 1:
        out[used[0]] = 1  # §6.2: a lone symbol gets the one-bit codeword 0
        return out
    weights = c[used]
    # package sums at any level stay below max_length * total; keep them inside int64
    if int(weights.astype(np.uint64).sum(dtype=np.uint64)) >= (1 << 62) // (max_length + 1) or int(
        weights.max()
    ) >= (1 << 62) // (max_length + 1):
        raise EncodeError("symbol counts are too large to build a Huffman code")
    weights = weights.astype(np.int64)
    order = np.lexsort((used, weights))  # by (count, symbol): ties broken by symbol value
    depth = np.zeros(n, dtype=np.uint8)
    if not _package_merge_kernel(np.ascontiguousarray(weights[order]), max_length, depth):
        raise EncodeError("package-merge ran out of items (internal error)")  # cannot happen when n <= 2**max_length
    out[used[order]] = depth
    return out


@numba.njit(cache=True, nogil=True)
def _package_merge_kernel(weights, max_length, depth):  # pragma: no cover - compiled
    """`_package_merge` in one compiled pass: the same merge order (a leaf before a package of equal
    weight), so the same lengths; False if the items run out (impossible when n <= 2**max_length)."""
    n = weights.size
    prefix = np.zeros((max_length, 2 * n + 1), dtype=np.int64)  # row `level`: leaves among the first k items
    sizes = np.zeros(max_length, dtype=np.int64)  # items in each level's merged list
    items = np.empty(2 * n, dtype=np.int64)
    merged = np.empty(2 * n, dtype=np.int64)
    items[:n] = weights
    m = n
    for level in range(max_length - 1, 0, -1):
        npk = m // 2
        i = 0
        k = 0
        out = 0
        while i < n or k < npk:
            if k < npk:
                package = items[2 * k] + items[2 * k + 1]
            if k >= npk or (i < n and weights[i] <= package):
                merged[out] = weights[i]
                i += 1
                prefix[level, out + 1] = prefix[level, out] + 1
            else:
                merged[out] = package
                k += 1
                prefix[level, out + 1] = prefix[level, out]
            out += 1
        items[:out] = merged[:out]
        sizes[level] = out
        m = out
    take = 2 * n - 2
    for level in range(1, max_length):
        if take > sizes[level]:
            return False
        leaves = prefix[level, take]
        for j in range(leaves):
            depth[j] += 1
        take = 2 * (take - leaves)
    if take > n:
        return False
    for j in range(take):
        depth[j] += 1
    return True


def _package_merge(weights: np.ndarray, max_length: int) -> np.ndarray:
    """Code lengths (uint8) of ascending `weights` (n >= 2, n <= 2**max_length) by plain package-merge
    (the numpy form of `_package_merge_kernel`, kept as its reference in the tests)."""
    n = weights.size
    # leaf_prefix[level][k]: how many of the first k items of that level's merged list are leaves
    leaf_prefix: dict[int, np.ndarray] = {}
    items = weights  # the deepest level (max_length) holds only leaves
    for level in range(max_length - 1, 0, -1):
        npk = items.size // 2
        packages = items[0 : 2 * npk : 2] + items[1 : 2 * npk : 2]
        # merge leaves and packages; on equal weight a leaf comes first (a fixed, deterministic rule)
        pkg_pos = np.arange(npk) + np.searchsorted(weights, packages, side="right")
        is_leaf = np.ones(n + npk, dtype=bool)
        is_leaf[pkg_pos] = False
        merged = np.empty(n + npk, dtype=np.int64)
        merged[is_leaf] = weights
        merged[pkg_pos] = packages
        prefix = np.zeros(n + npk + 1, dtype=np.int64)
        np.cumsum(is_leaf, out=prefix[1:])
        leaf_prefix[level] = prefix
        items = merged
    # select the 2n-2 cheapest items of the top level; each chosen package pulls in the first 2b items
    # of the level below, so at every level the chosen leaves are a prefix of the sorted leaves
    take = 2 * n - 2
    depth = np.zeros(n, dtype=np.uint8)
    for level in range(1, max_length):
        prefix = leaf_prefix[level]
        if take > prefix.size - 1:  # cannot happen when n <= 2**max_length
            raise EncodeError("package-merge ran out of items (internal error)")
        leaves = int(prefix[take])
        depth[:leaves] += 1
        take = 2 * (take - leaves)
    if take > n:  # cannot happen when n <= 2**max_length
        raise EncodeError("package-merge ran out of leaves (internal error)")
    depth[:take] += 1
    return depth


# ---------------------------------------------------------------------------------------------------
# Tables (§6.2)
# ---------------------------------------------------------------------------------------------------


def validate_lengths(lengths: np.ndarray) -> None:
    """Raise HuffmanTableError unless `lengths` is a valid §6.2 table (one 1-bit code, or Kraft sum 1)."""
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise HuffmanTableError(f"Huffman table: code lengths must be a 1-D array, got {arr.ndim} dimensions")
    if arr.size == 0:
        raise HuffmanTableError("Huffman table: no symbol has a code (the table is empty)")
    if arr.dtype.kind not in "iu":
        raise HuffmanTableError(f"Huffman table: code lengths must be integers, got dtype {arr.dtype}")
    if arr.size > MAX_ALPHABET:
        raise HuffmanTableError(f"Huffman table: {arr.size} symbols exceed the maximum {MAX_ALPHABET}")
    bad = (arr < 0) | (arr > MAX_CODE_LENGTH)
    if bad.any():
        s = int(np.argmax(bad))
        if int(arr[s]) < 0:
            raise HuffmanTableError(f"Huffman table: code length {int(arr[s])} of symbol {s} is negative")
        raise HuffmanTableError(
            f"Huffman table: code length {int(arr[s])} of symbol {s} exceeds the maximum {MAX_CODE_LENGTH}"
        )
    used = np.flatnonzero(arr)
    if used.size == 0:
        raise HuffmanTableError("Huffman table: no symbol has a code")
    if used.size == 1:
        s = int(used[0])
        if int(arr[s]) != 1:
            raise HuffmanTableError(
                f"Huffman table: the only used symbol {s} has code length {int(arr[s])}, not 1"
            )
        return
    # Kraft sum in units of 2**-15: at most 65,536 * 2**14, exact in int64
    kraft = int(np.sum(np.left_shift(1, MAX_CODE_LENGTH - arr[used].astype(np.int64))))
    if kraft != 1 << MAX_CODE_LENGTH:
        frac = Fraction(kraft, 1 << MAX_CODE_LENGTH)
        kind = "incomplete" if kraft < 1 << MAX_CODE_LENGTH else "over-subscribed"
        raise HuffmanTableError(
            f"Huffman table: Kraft sum {frac.numerator}/{frac.denominator} is not 1 ({kind} prefix code)"
        )


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codewords (uint32, 0 where unused) of a valid table: DEFLATE order by (length, symbol)."""
    validate_lengths(lengths)
    lens = np.asarray(lengths).astype(np.int64)
    bl_count = np.bincount(lens, minlength=MAX_CODE_LENGTH + 1)
    bl_count[0] = 0
    # first codeword of each length: next_code[L] = (next_code[L-1] + bl_count[L-1]) << 1
    next_code = np.zeros(MAX_CODE_LENGTH + 1, dtype=np.int64)
    code = 0
    for length in range(1, MAX_CODE_LENGTH + 1):
        code = (code + int(bl_count[length - 1])) << 1
        next_code[length] = code
    used = np.flatnonzero(lens)
    by_length = used[np.argsort(lens[used], kind="stable")]  # stable keeps symbol order within a length
    sorted_lens = lens[by_length]
    first_of_length = np.searchsorted(sorted_lens, sorted_lens, side="left")
    rank = np.arange(by_length.size) - first_of_length
    codes = np.zeros(lens.size, dtype=np.uint32)
    codes[by_length] = (next_code[sorted_lens] + rank).astype(np.uint32)
    return codes


def lengths_to_hex(lengths: np.ndarray) -> str:
    """The §6.2 table string of a valid table: one lowercase hex digit per symbol, trailing zeros trimmed."""
    validate_lengths(lengths)
    lens = np.asarray(lengths)
    last = int(np.flatnonzero(lens)[-1])
    digits = lens[: last + 1].astype(np.uint8)
    return (digits + np.where(digits > 9, 87, 48).astype(np.uint8)).tobytes().decode("ascii")  # 0-9: '0'.., 10-15: 'a'..


def lengths_from_hex(text: str) -> np.ndarray:
    """Parse and validate a §6.2 table string into code lengths (uint8)."""
    if not isinstance(text, str):
        raise HuffmanTableError(f"Huffman table: expected a string, got {type(text).__name__}")
    if not text:
        raise HuffmanTableError("Huffman table: the table string is empty")
    if len(text) > MAX_ALPHABET:
        raise HuffmanTableError(f"Huffman table: {len(text)} digits exceed the maximum {MAX_ALPHABET}")
    try:
        raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        raw = None
    if raw is None or (values := _HEX_VALUE[raw]).max() == 255:
        pos = next(i for i, ch in enumerate(text) if ch not in _HEX_DIGITS)
        raise HuffmanTableError(
            f"Huffman table: character {text[pos]!r} at position {pos} is not a lowercase hex digit (0-9a-f)"
        )
    lengths = values.copy()
    validate_lengths(lengths)
    return lengths


def encoded_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Exact number of codeword bits (before per-block padding) for symbols with these `counts`."""
    c = np.asarray(counts)
    lens = np.asarray(lengths)
    if c.size > lens.size and np.any(c[lens.size :]):
        s = lens.size + int(np.flatnonzero(c[lens.size :])[0])
        raise EncodeError(f"symbol {s} occurs but is beyond the Huffman table of {lens.size} symbols")
    c = c[: lens.size]
    missing = (c > 0) & (lens[: c.size] == 0)
    if missing.any():
        raise EncodeError(f"symbol {int(np.argmax(missing))} occurs but has no Huffman code")
    total = 0
    for length in range(1, MAX_CODE_LENGTH + 1):
        total += length * int(c[lens[: c.size] == length].sum(dtype=np.uint64))
    return total


# ---------------------------------------------------------------------------------------------------
# Encoding and decoding (§6.3)
# ---------------------------------------------------------------------------------------------------


def encode(symbols: np.ndarray, lengths: np.ndarray, block_size: int) -> tuple[bytes, list[int]]:
    """Huffman-code `symbols` in byte-aligned blocks of `block_size`; return the bytes and each block's size."""
    block_size = _check_block_size(block_size, EncodeError)
    validate_lengths(lengths)
    syms = as_symbols(symbols)
    count = syms.size
    if count == 0:
        return b"", []
    lens = np.asarray(lengths).astype(np.uint32)
    rev = _canonical_reversed(lens)
    table = (rev << np.uint32(4)) | lens  # one gather per symbol: bit-reversed code above a 4-bit length
    nblocks = -(-count // block_size)
    max_len = int(lens.max())
    capacity = -(-count * max_len // 8) + nblocks  # every block pads by less than one byte
    out = np.empty(capacity, dtype=np.uint8)
    block_bytes = np.zeros(nblocks, dtype=np.int64)
    status, where = _encode_kernel(syms, table, block_size, out, block_bytes)
    if status == _NO_SYMBOL:
        s = int(syms[where])
        if s >= lens.size:
            raise EncodeError(f"symbol {s} at index {where} is beyond the Huffman table of {lens.size} symbols")
        raise EncodeError(f"symbol {s} at index {where} has no Huffman code (code length 0)")
    if status != _OK:
        raise EncodeError(f"Huffman encoder overran its buffer at symbol {where} (internal error)")
    return out[:where].tobytes(), block_bytes.tolist()


def decode(
    buf, count: int, lengths: np.ndarray, block_size: int, block_bytes: list[int], *, parallel: bool = False
) -> np.ndarray:
    """Decode `count` Huffman-coded symbols (uint16) from §6.3 blocks, rejecting every malformed stream.

    `parallel=True` decodes the blocks in one share per CPU (~1.6x on 2 idle cores; none when the
    cores are busy with other work, so it is not the default).
    """
    stream = prepare(buf, count, lengths, block_size, block_bytes)
    out = np.empty(stream.count, dtype=np.uint16)
    if stream.count == 0:
        return out
    fast = _decode_fast_parallel if parallel else _decode_fast
    if fast(stream.data, stream.starts, stream.ends, stream.multi, stream.table, stream.max_len,
            stream.block_size, out):
        return out
    # Some block is malformed: the exact one-symbol-at-a-time decoder finds the first bad block and
    # says what is wrong with it (the fast decoder only knows that something is).
    return decode_exact(stream, out)


@dataclass(frozen=True)
class BlockStream:
    """A Huffman stream whose table and block list passed every check of `decode`, with its decoding
    tables: ready to be decoded in pieces of whole units (a unit is two blocks, the last maybe one),
    on any threads (§6.3: blocks are independent)."""

    data: np.ndarray
    count: int
    block_size: int
    starts: np.ndarray
    ends: np.ndarray
    table: np.ndarray
    max_len: int
    multi: np.ndarray

    @property
    def units(self) -> int:
        """Units of the stream: pairs of blocks, the unit of work handed to a thread (the fast decoder
        interleaves _INTERLEAVE blocks of the units it is given, whatever the unit boundaries)."""
        return (self.starts.size + 1) // 2

    def unit_start(self, u: int) -> int:
        """Index of the first symbol of unit u (count for u = units)."""
        return min(2 * u * self.block_size, self.count)


def prepare(buf, count: int, lengths: np.ndarray, block_size: int, block_bytes: list[int]) -> BlockStream:
    """Check a Huffman stream's table and blocks as `decode` does (same errors) and build its tables."""
    block_size = _check_block_size(block_size, CorruptDataError)
    validate_lengths(lengths)
    data = as_byte_array(buf)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise CorruptDataError(f"Huffman stream: symbol count {count!r} is not a non-negative integer")
    count = int(count)
    starts, ends = _check_blocks(data.size, count, lengths, block_size, block_bytes)
    if count == 0:
        return BlockStream(data, 0, block_size, starts, ends, np.zeros(1, np.uint32), 1, np.zeros(1, np.uint64))
    table, max_len, multi = _decode_tables(lengths)
    return BlockStream(data, count, block_size, starts, ends, table, max_len, multi)


def decode_units(stream: BlockStream, out: np.ndarray, u0: int, u1: int) -> bool:
    """Decode the symbols of units u0..u1 into out (uint16, all `count` symbols); True if all are valid.

    The fast decoder only knows that a block is bad; `decode_exact` says which and why."""
    if not (0 <= u0 <= u1 <= stream.units and out.dtype == np.uint16 and out.shape == (stream.count,)):
        raise CorruptDataError(f"Huffman stream: units {u0}..{u1} of {stream.units}, or a wrong output")
    return _decode_units(stream.data, stream.starts, stream.ends, stream.multi, stream.table, stream.max_len,
                         stream.block_size, out, u0, u1)


def gather_units(stream: BlockStream, u0: int, u1: int, codebook: np.ndarray, out: np.ndarray) -> bool:
    """out[i] = codebook[symbol i] for the symbols of units u0..u1, without an array of all the symbols;
    True if all units are valid and every symbol is below codebook.size."""
    if not (0 <= u0 <= u1 <= stream.units and out.ndim == 1 and out.size == stream.count
            and codebook.ndim == 1 and codebook.size >= 1 and codebook.dtype == out.dtype):
        raise CorruptDataError(f"Huffman stream: units {u0}..{u1} of {stream.units}, or a wrong codebook or output")
    if u0 == u1:
        return True
    scratch = np.empty(min(_INTERLEAVE * stream.block_size, stream.count), dtype=np.uint16)
    return _decode_units_gather(stream.data, stream.starts, stream.ends, stream.multi, stream.table,
                                stream.max_len, stream.block_size, stream.count, u0, u1, codebook, scratch, out)


def decode_exact(stream: BlockStream, out: np.ndarray | None = None) -> np.ndarray:
    """Decode every block one symbol at a time into out (uint16, made if None), raising the
    CorruptDataError of the first malformed block: what to call once the fast decoder has failed."""
    if out is None:
        out = np.empty(stream.count, dtype=np.uint16)
    if out.dtype != np.uint16 or out.shape != (stream.count,):
        raise CorruptDataError(f"Huffman stream: the output must hold {stream.count} uint16 symbols")
    code, b, detail = _decode_blocks(stream.data, stream.starts, stream.ends, stream.table, stream.max_len,
                                     stream.block_size, out)
    if code != _OK:
        _raise_block_error(code, b, detail, int(stream.starts[b]), int(stream.ends[b]))
    return out


def _decode_tables(lengths: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """(one-symbol table, max code length, multi-symbol table of 2**_MULTI_BITS entries) of a valid table."""
    lens = np.asarray(lengths).astype(np.uint32)
    max_len = int(lens.max())
    # symbol << 4 | length fits 16 bits for up to 4096 symbols: a half-size table stays in cache
    # better (~30% faster at L=15)
    table = np.zeros(1 << max_len, dtype=np.uint16 if lens.size <= _NARROW_TABLE_MAX_SYMBOLS else np.uint32)
    _fill_decode_table(lens, _canonical_reversed(lens), table)
    # an entry holds at most _MULTI_SYMBOLS codewords, so with short codes the entries repeat every
    # 2**(that many longest codes) values: build one period, copy it (the lookup mask stays constant)
    bits = min(_MULTI_BITS, _MULTI_SYMBOLS * max_len)
    multi = _build_multi_table(table, max_len, bits)
    return table, max_len, np.tile(multi, 1 << (_MULTI_BITS - bits))


def _check_block_size(block_size, error: type) -> int:
    """Return block_size as an int >= 1, or raise `error`."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise error(f"Huffman stream: block size {block_size!r} is not an integer >= 1")
    return int(block_size)


def _check_blocks(nbytes: int, count: int, lengths, block_size: int, block_bytes) -> tuple[np.ndarray, np.ndarray]:
    """Check block_bytes against the section and the symbol count (§6.3, §8); return block byte ranges."""
    nblocks = -(-count // block_size)
    try:
        bb = np.asarray(block_bytes)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptDataError(f"Huffman stream: block_bytes is not a list of integers ({exc})") from None
    if bb.ndim != 1 or (bb.size and bb.dtype.kind not in "iu"):
        raise CorruptDataError("Huffman stream: block_bytes is not a list of integers")
    if bb.size != nblocks:
        raise CorruptDataError(
            f"Huffman stream: {bb.size} block sizes given, but {count} symbols in blocks of {block_size} "
            f"make {nblocks} blocks"
        )
    if nblocks == 0:
        if nbytes != 0:
            raise CorruptDataError(f"Huffman stream: no symbols, but the section holds {nbytes} bytes")
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if int(bb.min()) < 0:
        b = int(np.argmax(bb < 0))
        raise CorruptDataError(f"Huffman stream: block {b} has a negative byte length {int(bb[b])}")
    if int(bb.max()) > nbytes:  # also keeps the sum below inside int64
        b = int(np.argmax(bb > nbytes))
        raise CorruptDataError(
            f"Huffman stream: block {b} claims {int(bb[b])} bytes, more than the section's {nbytes}"
        )
    bb = bb.astype(np.int64)
    ends = np.cumsum(bb)
    if int(ends[-1]) != nbytes:
        raise CorruptDataError(
            f"Huffman stream: block sizes sum to {int(ends[-1])} bytes, but the section holds {nbytes}"
        )
    starts = ends - bb
    per_block = np.full(nblocks, block_size, dtype=np.int64)
    per_block[-1] = count - block_size * (nblocks - 1)
    lens = np.asarray(lengths)
    min_len = int(lens[lens > 0].min())
    # each symbol takes at least min_len bits: a block of B bytes holds at most 8*B // min_len symbols
    short = per_block * min_len > 8 * bb
    if short.any():
        b = int(np.argmax(short))
        raise CorruptDataError(
            f"Huffman block {b} (section bytes {int(starts[b])}..{int(ends[b])}): {int(per_block[b])} symbols "
            f"of at least {min_len} bits cannot fit in {int(bb[b])} bytes"
        )
    return starts, ends


def _raise_block_error(code: int, block: int, detail: int, start: int, end: int) -> None:
    """Turn a kernel status into a CorruptDataError naming the block and its byte range."""
    where = f"Huffman block {block} (section bytes {start}..{end})"
    if code == _OUT_OF_BITS:
        raise CorruptDataError(f"{where}: ran out of bits at symbol {detail}")
    if code == _INVALID_CODE:
        raise CorruptDataError(f"{where}: invalid codeword at symbol {detail}")
    if code == _LEFTOVER:
        raise CorruptDataError(f"{where}: {detail} bits left over after the last symbol (at most 7 allowed)")
    if code == _PADDING:
        raise CorruptDataError(f"{where}: non-zero padding bits after the last symbol")
    raise CorruptDataError(f"{where}: block lies outside the section (internal error)")


@numba.njit(cache=True, nogil=True)
def _count_kernel(symbols, counts):  # pragma: no cover - compiled
    for i in range(symbols.size):
        counts[symbols[i]] += 1


def symbol_counts(symbols: np.ndarray) -> np.ndarray:
    """How often each symbol occurs (int64, length max + 1, at least 1): np.bincount for uint16
    streams without its int64 copy of the symbols (~8x faster on millions of symbols)."""
    symbols = np.ascontiguousarray(symbols, dtype=np.uint16).reshape(-1)
    counts = np.zeros(int(symbols.max()) + 1 if symbols.size else 1, dtype=np.int64)
    _count_kernel(symbols, counts)
    return counts


@numba.njit(cache=True, nogil=True)
def _canonical_reversed(lens):  # pragma: no cover - compiled
    """`canonical_codes` of a valid table, each codeword bit-reversed within its length, in one pass:
    symbols in order take the next code of their length (DEFLATE order). About 1 us where the numpy
    version plus the reversal took ~30 us, a large part of a small stream's setup."""
    first = np.zeros(MAX_CODE_LENGTH + 2, dtype=np.int64)  # codes per length, then first code of each
    for s in range(lens.size):
        first[lens[s]] += 1
    first[0] = 0
    code = 0
    previous = 0
    for length in range(1, MAX_CODE_LENGTH + 1):
        code = (code + previous) << 1
        previous = first[length]
        first[length] = code
    rev = np.zeros(lens.size, dtype=np.uint32)
    for s in range(lens.size):
        length = lens[s]
        if length == 0:
            continue
        c = first[length]
        first[length] = c + 1
        r = 0
        for b in range(length):  # bit b moves to position length - 1 - b
            r = (r << 1) | ((c >> b) & 1)
        rev[s] = r
    return rev


# tables of at most this many symbols are decoded through uint16 entries (12-bit symbol, 4-bit length)
_NARROW_TABLE_MAX_SYMBOLS = 1 << 12
# The fast decoder looks up the next _MULTI_BITS stream bits in a table of 2**12 uint64 entries (32 KB,
# L1-resident) that yields up to _MULTI_SYMBOLS whole codewords at once; codes longer than that take
# the one-symbol table. Measured on 5-bit-ish streams: 12 bits beat 10, 11 and 13 (64 KB spills L1).
_MULTI_BITS = 12
_MULTI_SYMBOLS = 3
# Blocks decoded side by side in one loop (their dependency chains overlap in the CPU). Measured on the
# synthetic streams: 3 beat 2 by ~20%; 4 gained nothing more (3%, within the noise).
_INTERLEAVE = 3

_OK, _OUT_OF_BITS, _INVALID_CODE, _LEFTOVER, _PADDING, _OUT_OF_RANGE, _NO_SYMBOL = 0, 1, 2, 3, 4, 5, 6


@numba.njit(cache=True, nogil=True)
def _encode_kernel(syms, table, block_size, out, block_bytes):
    """Write each block's codewords LSB first, zero-pad it to a byte; return (status, bytes or bad index)."""
    n = syms.size
    nsym = table.size
    cap = out.size
    pos = 0
    for b in range(block_bytes.size):
        start = b * block_size
        stop = min(start + block_size, n)
        block_start = pos
        # int64 accumulator: flushing at 32 bits leaves at most 31 + 15 = 46 pending bits
        acc = 0
        nbits = 0
        for i in range(start, stop):
            s = np.int64(syms[i])
            if s >= nsym:
                return _NO_SYMBOL, i
            e = np.int64(table[s])
            length = e & 15
            if length == 0:
                return _NO_SYMBOL, i
            acc |= (e >> 4) << nbits
            nbits += length
            if nbits >= 32:
                if pos + 4 > cap:
                    return _OUT_OF_RANGE, i
                out[pos] = acc & 0xFF
                out[pos + 1] = (acc >> 8) & 0xFF
                out[pos + 2] = (acc >> 16) & 0xFF
                out[pos + 3] = (acc >> 24) & 0xFF
                pos += 4
                acc >>= 32
                nbits -= 32
        while nbits > 0:  # flush the tail; the zero bits above it are the block's padding
            if pos >= cap:
                return _OUT_OF_RANGE, stop
            out[pos] = acc & 0xFF
            pos += 1
            acc >>= 8
            nbits -= 8
        block_bytes[b] = pos - block_start
    return _OK, pos


@numba.njit(cache=True, nogil=True)
def _fill_decode_table(lens, rev, table):
    """Fill a zeroed table of 2**max_len entries (uint16 or uint32): next max_len stream bits (LSB
    first) -> symbol << 4 | length; 0 = invalid."""
    size = table.size
    for s in range(lens.size):
        length = np.int64(lens[s])
        if length == 0:
            continue
        entry = (s << 4) | length
        step = 1 << length
        j = np.int64(rev[s])
        while j < size:  # every completion of the codeword's bits maps to it
            table[j] = entry
            j += step


@numba.njit(cache=True, nogil=True, inline="always")
def _load64(data, p):
    """Little-endian u64 from data[p:p+8] (caller guarantees p + 8 <= data.size); LLVM fuses the loads."""
    return (
        np.uint64(data[p])
        | (np.uint64(data[p + 1]) << np.uint64(8))
        | (np.uint64(data[p + 2]) << np.uint64(16))
        | (np.uint64(data[p + 3]) << np.uint64(24))
        | (np.uint64(data[p + 4]) << np.uint64(32))
        | (np.uint64(data[p + 5]) << np.uint64(40))
        | (np.uint64(data[p + 6]) << np.uint64(48))
        | (np.uint64(data[p + 7]) << np.uint64(56))
    )


@numba.njit(cache=True, nogil=True, inline="always")
def _decode_block(data, start, end, table, max_len, out, i0, i1):
    """Decode symbols i0..i1 from data[start:end]; return (status, symbol index or leftover bit count)."""
    if start < 0 or end > data.size or start > end or i0 < 0 or i1 > out.size:
        return _OUT_OF_RANGE, i0
    mask = np.uint64((1 << max_len) - 1)
    bitbuf = np.uint64(0)  # buffered stream bits, next bit in bit 0; bits above bitcnt are zero or
    bitcnt = 0  # copies of the bytes at pos.., which the next refill ORs in again unchanged
    pos = start
    i = i0
    while i < i1:
        if pos + 8 <= end:
            # branchless refill: load 8 bytes, keep whole bytes only, top up to 56..63 bits
            bitbuf |= _load64(data, pos) << np.uint64(bitcnt)
            pos += (63 - bitcnt) >> 3
            bitcnt |= 56
            # decode while a longest codeword surely fits: short codes give many symbols per refill
            while bitcnt >= max_len and i < i1:
                e = table[bitbuf & mask]
                length = e & 15
                if length == 0:
                    return _INVALID_CODE, i
                out[i] = e >> 4
                bitbuf >>= np.uint64(length)
                bitcnt -= length
                i += 1
        else:
            # near the end of the block: one byte at a time, never past `end`
            while bitcnt <= 56 and pos < end:
                bitbuf |= np.uint64(data[pos]) << np.uint64(bitcnt)
                pos += 1
                bitcnt += 8
            if bitcnt >= max_len:
                m = min(bitcnt // max_len, i1 - i)
                for _ in range(m):
                    e = table[bitbuf & mask]
                    length = e & 15
                    if length == 0:
                        return _INVALID_CODE, i
                    out[i] = e >> 4
                    bitbuf >>= np.uint64(length)
                    bitcnt -= length
                    i += 1
            else:
                # every byte is buffered and fewer than max_len bits remain; the bits above bitcnt
                # are zero, so a lookup still finds the codeword, and its length says if it fits
                e = table[bitbuf & mask]
                length = e & 15
                if length == 0:
                    return _INVALID_CODE, i
                if length > bitcnt:
                    return _OUT_OF_BITS, i
                out[i] = e >> 4
                bitbuf >>= np.uint64(length)
                bitcnt -= length
                i += 1
    left = bitcnt + 8 * (end - pos)
    if left > 7:
        return _LEFTOVER, left
    if bitbuf & ((np.uint64(1) << np.uint64(bitcnt)) - np.uint64(1)) != 0:
        return _PADDING, i1
    return _OK, 0


@numba.njit(cache=True, nogil=True)
def _decode_blocks(data, starts, ends, table, max_len, block_size, out):
    """Decode every block in order; stop at the first bad one and return (status, block, detail)."""
    count = out.size
    for b in range(starts.size):
        i0 = b * block_size
        i1 = min(i0 + block_size, count)
        status, detail = _decode_block(data, starts[b], ends[b], table, max_len, out, i0, i1)
        if status != _OK:
            return status, b, detail
    return _OK, 0, 0


# ---------------------------------------------------------------------------------------------------
# The fast decoder. Its state is all uint64 (numba then skips negative-index wraparound, and LLVM
# merges _load_u64's byte loads into one): a 64-bit bit buffer refilled without branches, a lookup
# that yields up to three symbols stored with one 64-bit write, and three blocks decoded in one loop
# so that the CPU overlaps their dependency chains (each lookup waits for the previous one's length).
# Bounds are checked once per batch of rounds, not per round: each round reads at most 7 bytes and
# writes at most 3 * lookups symbols (+ 1 slot), so the batch size that stays inside every block is
# known in advance. It only says whether every block was well formed; on False the exact decoder
# above says what is wrong. The helpers are left to LLVM to inline: numba's own inline="always"
# made the kernels compile ~3x slower (7 s vs 2.5 s), for no speed. Measured on the synthetic
# streams, 1 core: 1.6x (indices) and 1.3x (gaps) the previous decoder, which interleaved two
# blocks, stored three 16-bit slots per lookup and checked the bounds every round.
# ---------------------------------------------------------------------------------------------------

_U64 = numba.uint64
_MULTI_MASK = (1 << _MULTI_BITS) - 1


@intrinsic
def _store_u64_unchecked(typingctx, out, i, value):
    """out[i:i+4] (uint16) = the four 16-bit slots of value, low first, in one unaligned 64-bit store."""

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        slot = builder.gep(array.data, [args[1]], inbounds=True)
        builder.store(args[2], builder.bitcast(slot, ir.IntType(64).as_pointer()), align=1)
        return context.get_dummy_value()

    return types.void(out, i, value), codegen


@numba.njit(cache=True, nogil=True)
def _store_u64_checked(out, i, value):  # pragma: no cover - compiled
    """The same four stores one by one: what NUMBA_BOUNDSCHECK=1 builds use, so that they check them."""
    out[i] = np.uint16(value & _U64(0xFFFF))
    out[i + _U64(1)] = np.uint16((value >> _U64(16)) & _U64(0xFFFF))
    out[i + _U64(2)] = np.uint16((value >> _U64(32)) & _U64(0xFFFF))
    out[i + _U64(3)] = np.uint16(value >> _U64(48))


# caller guarantees i + 4 <= out.size
_store_u64 = _store_u64_checked if numba.config.BOUNDSCHECK else _store_u64_unchecked


@numba.njit(cache=True, nogil=True)
def _build_multi_table(table, max_len, bits):
    """2**bits entries: the whole codewords (up to 3) that the next `bits` stream bits begin with.

    Entry: their total code length in bits 0..5 (so a shift by the entry is a shift by it), their
    count in bits 6..7, the symbols in bits 16..31, 32..47, 48..63. Count 0 means the first codeword
    is longer than `bits` (or invalid): slow path.
    """
    size = 1 << bits
    mask = (1 << max_len) - 1
    multi = np.zeros(size, dtype=np.uint64)
    for v in range(size):
        used = 0
        n = 0
        entry = np.uint64(0)
        while n < 3:
            e = np.int64(table[(v >> used) & mask])  # bits above `bits` read as zero: check the length
            length = e & 15
            if length == 0 or length > bits - used:
                break
            entry |= np.uint64(e >> 4) << np.uint64(16 + 16 * n)
            used += length
            n += 1
        if n:
            entry |= np.uint64(used | (n << 6))
        multi[v] = entry
    return multi


@numba.njit(cache=True, nogil=True)
def _refill(data, pos, bitbuf, bitcnt):
    """Top the bit buffer up to 56..63 bits from data[pos:pos+8] (caller: pos + 8 <= end), no branch."""
    bitbuf |= _load_u64(data, pos) << bitcnt
    return pos + ((_U64(63) - bitcnt) >> _U64(3)), bitbuf, bitcnt | _U64(56)


@numba.njit(cache=True, nogil=True)
def _step(multi, table, max_len, out, bitbuf, used, i, long_codes):
    """Decode 1..3 symbols at out[i:] (caller: i + 4 <= block end, enough bits buffered); return the
    bit buffer, `used` plus the bits taken (in its low 6 bits), and the next i.

    Without long codes (max_len <= 12) every valid lookup finds a codeword, so there is no branch.
    An invalid codeword (only the one-codeword table has any) takes no bits, so the block stalls on
    it: the callers check that each batch of rounds moved every block on."""
    e = multi[bitbuf & _U64(_MULTI_MASK)]
    if long_codes and not (e & _U64(0xC0)):
        f = _U64(table[bitbuf & ((_U64(1) << _U64(max_len)) - _U64(1))])  # a long or invalid codeword
        length = f & _U64(15)  # 0 if invalid: the block stalls the same way
        out[i] = np.uint16(f >> _U64(4))
        return bitbuf >> length, used + length, i + _U64(1)
    # the fourth slot written is beyond the entry's symbols: the next lookup overwrites it; the shift
    # takes the entry's low 6 bits; `used` sums whole entries, whose low 6 bits add up without carry
    _store_u64(out, i, e >> _U64(16))
    return bitbuf >> (e & _U64(63)), used + e, i + ((e >> _U64(6)) & _U64(3))


@numba.njit(cache=True, nogil=True)
def _rounds(pos, end, i, i1, per):
    """How many rounds (a refill, then lookups writing at most `per` symbols and one slot more) surely
    stay inside data[:end] and out[:i1]."""
    if pos + _U64(8) > end or i + per + _U64(1) > i1:
        return _U64(0)
    return _U64(1) + min((end - pos - _U64(8)) // _U64(7), (i1 - i - per - _U64(1)) // per)


@numba.njit(cache=True, nogil=True)
def _finish_block(data, pos, end, bitbuf, bitcnt, multi, table, max_len, out, i, i1):
    """Decode out[i:i1] from the buffered bits and data[pos:end], then check the padding; True if valid."""
    need = _U64(max(_MULTI_BITS, max_len))
    mask = (_U64(1) << _U64(max_len)) - _U64(1)
    while pos + _U64(8) <= end and i + _U64(4) <= i1:
        pos, bitbuf, bitcnt = _refill(data, pos, bitbuf, bitcnt)
        while bitcnt >= need and i + _U64(4) <= i1:
            bitbuf, used, i = _step(multi, table, max_len, out, bitbuf, _U64(0), i, True)
            used &= _U64(63)
            if used == _U64(0):
                return False  # an invalid codeword
            bitcnt -= used
    while i < i1:  # the last few symbols or bytes: one symbol and one byte at a time
        while bitcnt <= _U64(56) and pos < end:
            bitbuf |= _U64(data[pos]) << bitcnt
            pos += _U64(1)
            bitcnt += _U64(8)
        f = _U64(table[bitbuf & mask])  # bits above bitcnt are zero here: the length says if it fits
        length = f & _U64(15)
        if length == _U64(0) or length > bitcnt:
            return False
        out[i] = np.uint16(f >> _U64(4))
        bitbuf >>= length
        bitcnt -= length
        i += _U64(1)
    if pos != end or bitcnt > _U64(7):
        return False  # more than 7 bits left over
    return bitbuf & ((_U64(1) << bitcnt) - _U64(1)) == _U64(0)  # zero padding


@numba.njit(cache=True, nogil=True)
def _block_span(starts, ends, block_size, count, b, base):
    """Block b's byte range and its symbols' range in an output whose element 0 is symbol `base`."""
    i0 = min(_U64(b) * _U64(block_size), _U64(count))
    i1 = min(i0 + _U64(block_size), _U64(count))
    return _U64(starts[b]), _U64(ends[b]), i0 - _U64(base), i1 - _U64(base)


@numba.njit(cache=True, nogil=True)
def _decode_three(data, starts, ends, multi, table, max_len, block_size, count, out, b0, b1, b2, base, long_codes):
    """Decode blocks b0, b1 and b2 interleaved into out (element 0 is symbol `base`); True if all are
    valid. A block given twice is decoded twice in lockstep, each copy storing the same symbols."""
    # lookups per refill: each takes at most `need` = max(12, max_len) bits and must find them
    # buffered, and all of them together at most the 56 that a refill guarantees: 4 for short codes,
    # 3 for long ones (a constant per compiled version, like `long_codes`)
    four = not long_codes
    per = _U64(12) if four else _U64(9)  # symbols they write at most
    p0, e0, i0, j0 = _block_span(starts, ends, block_size, count, b0, base)
    p1, e1, i1, j1 = _block_span(starts, ends, block_size, count, b1, base)
    p2, e2, i2, j2 = _block_span(starts, ends, block_size, count, b2, base)
    bb0 = bc0 = bb1 = bc1 = bb2 = bc2 = _U64(0)
    while True:
        r = min(_rounds(p0, e0, i0, j0, per), _rounds(p1, e1, i1, j1, per), _rounds(p2, e2, i2, j2, per))
        if r == _U64(0):
            break
        s0, s1, s2 = i0, i1, i2
        for _ in range(r):
            p0, bb0, bc0 = _refill(data, p0, bb0, bc0)
            p1, bb1, bc1 = _refill(data, p1, bb1, bc1)
            p2, bb2, bc2 = _refill(data, p2, bb2, bc2)
            u0 = u1 = u2 = _U64(0)
            bb0, u0, i0 = _step(multi, table, max_len, out, bb0, u0, i0, long_codes)
            bb1, u1, i1 = _step(multi, table, max_len, out, bb1, u1, i1, long_codes)
            bb2, u2, i2 = _step(multi, table, max_len, out, bb2, u2, i2, long_codes)
            bb0, u0, i0 = _step(multi, table, max_len, out, bb0, u0, i0, long_codes)
            bb1, u1, i1 = _step(multi, table, max_len, out, bb1, u1, i1, long_codes)
            bb2, u2, i2 = _step(multi, table, max_len, out, bb2, u2, i2, long_codes)
            bb0, u0, i0 = _step(multi, table, max_len, out, bb0, u0, i0, long_codes)
            bb1, u1, i1 = _step(multi, table, max_len, out, bb1, u1, i1, long_codes)
            bb2, u2, i2 = _step(multi, table, max_len, out, bb2, u2, i2, long_codes)
            if four:
                bb0, u0, i0 = _step(multi, table, max_len, out, bb0, u0, i0, long_codes)
                bb1, u1, i1 = _step(multi, table, max_len, out, bb1, u1, i1, long_codes)
                bb2, u2, i2 = _step(multi, table, max_len, out, bb2, u2, i2, long_codes)
            bc0 -= u0 & _U64(63)
            bc1 -= u1 & _U64(63)
            bc2 -= u2 & _U64(63)
        if i0 == s0 or i1 == s1 or i2 == s2:
            return False  # a block stalled on an invalid codeword (and would loop forever)
    return (_finish_block(data, p0, e0, bb0, bc0, multi, table, max_len, out, i0, j0)
            and _finish_block(data, p1, e1, bb1, bc1, multi, table, max_len, out, i1, j1)
            and _finish_block(data, p2, e2, bb2, bc2, multi, table, max_len, out, i2, j2))


@numba.njit(cache=True, nogil=True)
def _decode_block_range(data, starts, ends, multi, table, max_len, block_size, count, out, b, b1, base):
    """Decode blocks b..b1 into out (element 0 is symbol `base`) three at a time; True if all are valid
    (stops at the first bad group). A last group of one or two blocks repeats its last block: the
    loop is bound by the latency of each block's lookups, so a copy costs little, and one kernel
    (compiled twice, not four or six times) serves all groups. The branch-free lookups (`long_codes`
    False, a compile-time constant: ~25% faster) serve tables whose codes all fit the multi lookup."""
    long_codes = max_len > _MULTI_BITS
    while b < b1:
        n = min(b1 - b, _INTERLEAVE)
        last = b + n - 1
        if long_codes:
            ok = _decode_three(data, starts, ends, multi, table, max_len, block_size, count, out,
                               b, min(b + 1, last), last, base, True)
        else:
            ok = _decode_three(data, starts, ends, multi, table, max_len, block_size, count, out,
                               b, min(b + 1, last), last, base, False)
        if not ok:
            return False
        b += n
    return True


@numba.njit(cache=True, nogil=True)
def _decode_units(data, starts, ends, multi, table, max_len, block_size, out, u0, u1):
    """Decode units u0..u1 (pairs of blocks) on this thread; True if all are valid (stops at the first bad)."""
    return _decode_block_range(data, starts, ends, multi, table, max_len, block_size, out.size, out,
                               2 * u0, min(2 * u1, starts.size), 0)


@numba.njit(cache=True, nogil=True)
def _decode_units_gather(data, starts, ends, multi, table, max_len, block_size, count, u0, u1, codebook,
                         scratch, out):
    """out[i] = codebook[symbol i] for the symbols of units u0..u1: each group of _INTERLEAVE blocks is
    decoded into `scratch` (cache-resident) and gathered from there. True if all units are valid and
    every symbol is below codebook.size."""
    k = codebook.size
    b = 2 * u0
    b1 = min(2 * u1, starts.size)
    while b < b1:
        n = min(b1 - b, _INTERLEAVE)
        i0 = b * block_size
        i1 = min(i0 + n * block_size, count)
        if not _decode_block_range(data, starts, ends, multi, table, max_len, block_size, count, scratch,
                                   b, b + n, i0):
            return False
        bad = False
        for i in range(i1 - i0):
            s = np.int64(scratch[i])
            bad |= s >= k
            out[i0 + i] = codebook[s if s < k else 0]
        if bad:
            return False
        b += n
    return True


def _decode_fast(data, starts, ends, multi, table, max_len, block_size, out) -> bool:
    """Decode every block on this thread; True if all are valid."""
    units = (starts.size + 1) // 2
    return _decode_units(data, starts, ends, multi, table, max_len, block_size, out, 0, units)


def _decode_fast_parallel(data, starts, ends, multi, table, max_len, block_size, out) -> bool:
    """Decode the pairs of blocks in one contiguous share per CPU, on Python threads (the kernel drops
    the GIL); True if all are valid. Plain threads wait by blocking, where numba's OpenMP pool spins:
    measured on 2 busy cores, prange was 10x slower than one thread, threads were not."""
    units = (starts.size + 1) // 2
    budget = pool.Budget()
    shares = min(units, budget.threads)
    if shares <= 1:
        return _decode_fast(data, starts, ends, multi, table, max_len, block_size, out)
    bounds = [units * k // shares for k in range(shares + 1)]
    args = (data, starts, ends, multi, table, max_len, block_size, out)
    return all(pool.run([lambda k=k: _decode_units(*args, bounds[k], bounds[k + 1]) for k in range(shares)], budget))
