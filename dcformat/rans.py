"""rANS coding of symbol streams (spec §6.4, format 1.4): static frequencies at 15-bit precision, a 64-bit
state renormalised by 32-bit words, in independent blocks.

Huffman spends at least one bit on every symbol and at most 15 on any; an index stream whose zero
level holds 65% of the weights loses a fifth of its bytes to that. rANS codes each symbol in
-log2(f/2^15) bits, within a few thousandths of a bit of the entropy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numba
import numpy as np

from . import constants as K
from .bitpack import as_byte_array, as_symbols
from .errors import CorruptDataError, EncodeError, FrequencyTableError

PRECISION = K.RANS_PRECISION  # M = 2^15: the frequencies of a table add up to exactly this power of two
TOTAL = K.RANS_TOTAL
LOWER = 1 << 31  # the state lies in [LOWER, 2^63) between symbols
STATE_BYTES = K.RANS_STATE_BYTES  # a block starts with its final encoder state, a u64 little-endian
WORD_BYTES = K.RANS_WORD_BYTES
MAX_SYMBOLS = K.MAX_ALPHABET  # a table has at most 65,536 groups of 4 hex digits
_HEX_TABLE = re.compile(r"[0-9a-f]*")

_U15 = np.uint64(PRECISION)
_MASK = np.uint64(TOTAL - 1)
_LOWER = np.uint64(LOWER)
_HIGH = np.uint64(1 << 63)
_U32 = np.uint64(32)
_WORD_MASK = np.uint64(0xFFFFFFFF)
_RENORM_SHIFT = np.uint64(48)  # the encoder emits a word when x >= f * 2^48 = f * (LOWER / TOTAL) * 2^32

# kernel status codes
_OK, _BAD_STATE, _OUT_OF_WORDS, _LEFTOVER, _FINAL_STATE, _NO_SYMBOL = 0, 1, 2, 3, 4, 5


# ---------------------------------------------------------------------------------------------------
# Frequency tables (§6.4)
# ---------------------------------------------------------------------------------------------------


def usable(counts: np.ndarray) -> bool:
    """Whether symbols with these counts can be given a table: at least one and at most 2^15 used."""
    used = int(np.count_nonzero(counts))
    return 1 <= used <= TOTAL and np.nonzero(counts)[0][-1] < MAX_SYMBOLS


def normalize(counts: np.ndarray) -> np.ndarray:
    """Frequencies (int64, adding up to 2^15, length = last used symbol + 1) for symbol counts.

    Each used symbol gets max(1, round(c·M/n)); the excess or deficit then goes to or from the symbols
    where it costs or saves the most bits (c·log2 of the ratio), ties to the lower symbol: a
    deterministic rule, so files are reproducible. Any valid table decodes the same way (§6.4).
    """
    c = np.asarray(counts, dtype=np.int64)
    if c.ndim != 1 or (c.size and int(c.min()) < 0) or not usable(c):
        raise EncodeError(f"rANS: counts must be a 1-D array with 1..{TOTAL} used symbols")
    c = c[: int(np.nonzero(c)[0][-1]) + 1]
    used = np.nonzero(c)[0]
    n = float(c.sum())
    f = np.zeros(c.size, np.int64)
    f[used] = np.maximum(1, np.rint(c[used] * (TOTAL / n))).astype(np.int64)
    weight = c.astype(np.float64)
    excess = int(f.sum()) - TOTAL
    while excess:
        if excess > 0:  # take one from each of the `excess` symbols where it costs least
            cand = used[f[used] > 1]
            cost = weight[cand] * np.log2(f[cand] / (f[cand] - 1.0))
            pick = cand[np.argsort(cost, kind="stable")[:excess]]
            f[pick] -= 1
        else:  # give one to each of the `-excess` symbols where it saves most
            gain = weight[used] * np.log2((f[used] + 1.0) / f[used])
            pick = used[np.argsort(-gain, kind="stable")[:-excess]]
            f[pick] += 1
        excess = int(f.sum()) - TOTAL
    return f


def validate_frequencies(freqs: np.ndarray) -> None:
    """Raise FrequencyTableError unless freqs is 1..65,536 non-negative integers adding up to 2^15."""
    f = np.asarray(freqs)
    if f.ndim != 1 or not 1 <= f.size <= MAX_SYMBOLS or f.dtype.kind not in "iu":
        raise FrequencyTableError(f"rANS table: 1..{MAX_SYMBOLS} integer frequencies needed")
    if int(f.min()) < 0 or int(f.sum(dtype=np.int64)) != TOTAL:
        raise FrequencyTableError(f"rANS table: frequencies add up to {int(f.sum(dtype=np.int64))}, "
                                  f"not 2^{PRECISION} = {TOTAL}")


def frequencies_to_hex(freqs: np.ndarray) -> str:
    """The table text (§6.4): 4 lowercase hex digits per symbol, most significant first."""
    validate_frequencies(freqs)
    return "".join(f"{int(v):04x}" for v in freqs)


def frequencies_from_hex(text: str) -> np.ndarray:
    """Parse and check a table text; raise FrequencyTableError if it is not a valid table."""
    if not isinstance(text, str) or not 4 <= len(text) <= 4 * MAX_SYMBOLS or len(text) % 4:
        size = len(text) if isinstance(text, str) else type(text).__name__
        raise FrequencyTableError(f"rANS table: must be 4..{4 * MAX_SYMBOLS} hex digits, a multiple of 4; "
                                  f"has {size}")
    if not _HEX_TABLE.fullmatch(text):
        bad = next(ch for ch in text if ch not in "0123456789abcdef")
        raise FrequencyTableError(f"rANS table: {bad!r} is not a lowercase hex digit")
    freqs = np.frombuffer(bytes.fromhex(text), dtype=">u2").astype(np.int64)
    validate_frequencies(freqs)
    return freqs


def coded_bits(counts: np.ndarray, freqs: np.ndarray) -> float:
    """The payload bits of symbols with these counts under a table, to well within a bit per block:
    Σ c_s·(15 − log2 f_s). Infinite if a counted symbol has no frequency."""
    c = np.asarray(counts, dtype=np.float64)
    f = np.zeros(max(c.size, len(freqs)), np.float64)
    f[: len(freqs)] = freqs
    f = f[: c.size]
    used = c > 0
    if np.any(f[used] == 0):
        return float("inf")
    return float(np.sum(c[used] * (PRECISION - np.log2(f[used]))))


def estimate_bytes(counts: np.ndarray, n: int, block_size: int) -> tuple[int, np.ndarray] | None:
    """(section bytes, table) rANS would take for a stream with these symbol counts, or None if no table
    can code it. Each block adds its 8-byte state and about half a word of rounding."""
    if n == 0 or not usable(counts):
        return None
    freqs = normalize(counts)
    nblocks = -(-n // block_size)
    return int(coded_bits(counts, freqs) / 8) + (STATE_BYTES + 2) * nblocks, freqs


def row_class_counts(symbols: np.ndarray, row_tables: np.ndarray, cols: int, m: int) -> np.ndarray:
    """(m, alphabet) symbol counts of the rows of each class: what one table per class is made from."""
    syms = as_symbols(symbols)
    width = int(syms.max()) + 1 if syms.size else 1
    rows = np.asarray(row_tables).astype(np.int64, copy=False).reshape(-1)
    if rows.size * cols != syms.size or (rows.size and (int(rows.min()) < 0 or int(rows.max()) >= m)):
        raise EncodeError(f"rANS: {rows.size} rows of {cols} symbols, classes below {m}, do not fit "
                          f"{syms.size} symbols")
    counts = np.zeros((m, width), np.int64)
    _count_rows(syms, rows, max(1, cols), counts)
    return counts


@numba.njit(cache=True, nogil=True)
def _count_rows(syms, rows, cols, counts):  # pragma: no cover - compiled
    for i in range(syms.size):
        counts[rows[i // cols], syms[i]] += 1


# ---------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------


def _cumulative(freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(freqs, dtype=np.uint64)
    cum = np.zeros(f.size, np.uint64)
    np.cumsum(f[:-1], out=cum[1:])
    return f, cum


@dataclass(frozen=True)
class Tables:
    """The tables a stream is coded with and which one each symbol uses: one table for all, or (§6.4,
    a shared tensor's rows by scale class) table `row_tables[i // cols]` for symbol i."""

    freqs: np.ndarray  # (m, L) uint64, zero-padded
    cum: np.ndarray  # (m, L) uint64
    row_tables: np.ndarray  # int64 table index per row ([0] for one table)
    cols: int  # symbols per row (for one table: the whole stream is one row)

    @property
    def count(self) -> int:
        return len(self.freqs)


def tables_for(freqs, count: int, rows: tuple[np.ndarray, int] | None = None, error: type = EncodeError) -> Tables:
    """Check `freqs` (one table, or with `rows` = (table per row, symbols per row) a list of tables)
    against a stream of `count` symbols; raise `error` if they do not fit."""
    if rows is None:
        validate_frequencies(freqs)
        tables, row_tables, cols = [np.asarray(freqs)], np.zeros(1, np.int64), max(1, int(count))
    else:
        tables = [np.asarray(t) for t in freqs]
        for t in tables:
            validate_frequencies(t)
        row_tables = np.asarray(rows[0]).astype(np.int64, copy=False).reshape(-1)
        cols = int(rows[1])
        if not tables or (count and (cols < 1 or row_tables.size * cols != count)):
            raise error(f"rANS: {len(tables)} tables for {row_tables.size} rows of {cols} symbols do not "
                        f"cover a stream of {count} symbols")
        if row_tables.size and (int(row_tables.min()) < 0 or int(row_tables.max()) >= len(tables)):
            raise error(f"rANS: a row's table index is not below the {len(tables)} tables")
        cols = max(1, cols)  # (no symbols: nothing is looked up)
    width = max(t.size for t in tables)
    f = np.zeros((len(tables), width), np.uint64)
    cum = np.zeros((len(tables), width), np.uint64)
    for j, t in enumerate(tables):
        f[j, : t.size], cum[j, : t.size] = _cumulative(t)
    return Tables(f, cum, row_tables, cols)


def encode(symbols: np.ndarray, freqs, block_size: int, *,
           rows: tuple[np.ndarray, int] | None = None) -> tuple[bytes, list[int]]:
    """rANS-code `symbols` in blocks of `block_size` (§6.4); return the bytes and each block's size.

    `freqs` is one table, or with `rows` = (table index per row, symbols per row) one table per
    index: symbol i is coded with table rows[0][i // rows[1]] (a shared tensor's scale classes)."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise EncodeError(f"rANS: block size {block_size!r} is not an integer >= 1")
    syms = as_symbols(symbols)
    count = syms.size
    t = tables_for(freqs, count, rows)
    block_size = min(int(block_size), max(1, count))
    scratch = np.empty(block_size, dtype="<u4")
    parts: list[bytes] = []
    sizes: list[int] = []
    for s0 in range(0, count, block_size):
        s1 = min(count, s0 + block_size)
        state, words, bad = _encode_block(syms, s0, s1, t.freqs, t.cum, t.row_tables, t.cols, scratch)
        if bad >= 0:
            s = int(syms[bad])
            table = int(t.row_tables[bad // t.cols])
            raise EncodeError(f"rANS: symbol {s} at index {bad} has no frequency in table {table} of "
                              f"{t.freqs.shape[1]} symbols")
        block = int(state).to_bytes(STATE_BYTES, "little") + scratch[:words][::-1].tobytes()
        parts.append(block)
        sizes.append(len(block))
    return b"".join(parts), sizes


@numba.njit(cache=True, nogil=True)
def _encode_block(syms, s0, s1, f, cum, row_tables, cols, words):  # pragma: no cover - compiled
    """Encode syms[s0:s1] from the last symbol back: (final state, words pushed, index of a symbol
    without frequency or -1). words[j] is the j-th word pushed; the block stores them last first."""
    x = _LOWER
    n = 0
    width = f.shape[1]
    for i in range(s1 - 1, s0 - 1, -1):
        s = syms[i]
        t = row_tables[i // cols]
        if s >= width or f[t, s] == 0:
            return x, n, i
        fs = f[t, s]
        if x >= (fs << _RENORM_SHIFT):
            words[n] = np.uint32(x & _WORD_MASK)
            n += 1
            x = x >> _U32
        x = ((x // fs) << _U15) + (x % fs) + cum[t, s]
    return x, n, -1


# ---------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RansStream:
    """A rANS stream whose tables and block list passed every check from the header: ready to decode
    block by block on any threads (§6.4: blocks are independent)."""

    data: np.ndarray  # the section's bytes
    words: np.ndarray  # the same bytes as little-endian u32 words (each block is whole words)
    count: int
    block_size: int
    starts: np.ndarray  # each block's first byte
    ends: np.ndarray
    tables: Tables
    slots: np.ndarray  # (m, 2^15) uint16: the symbol of each slot of each table (64 KB a table: it stays in cache)

    @property
    def blocks(self) -> int:
        return self.starts.size

    def block_start(self, b: int) -> int:
        """Index of the first symbol of block b (count for b = blocks)."""
        return min(b * self.block_size, self.count)


def check_blocks(nbytes: int, count: int, block_size: int, block_bytes) -> tuple[np.ndarray, np.ndarray]:
    """Check a block list against the section (§6.4): the count of blocks, their sum, and each block at
    least a state and a whole number of words. Return the blocks' byte ranges."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise CorruptDataError(f"rANS stream: block size {block_size!r} is not an integer >= 1")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise CorruptDataError(f"rANS stream: symbol count {count!r} is not a non-negative integer")
    nblocks = -(-int(count) // int(block_size))
    sizes = list(block_bytes)
    if len(sizes) != nblocks or not all(type(b) is int for b in sizes):
        raise CorruptDataError(f"rANS stream: {count} symbols in blocks of {block_size} make {nblocks} blocks, "
                               f"block_bytes lists {len(sizes)} integers")
    for i, b in enumerate(sizes):
        if b < STATE_BYTES or b % WORD_BYTES:
            raise CorruptDataError(f"rANS block {i}: {b} bytes, not a state of {STATE_BYTES} bytes and "
                                   f"whole {WORD_BYTES}-byte words")
    ends = np.cumsum(np.asarray(sizes, dtype=np.int64)) if sizes else np.zeros(0, np.int64)
    total = int(ends[-1]) if sizes else 0
    if total != nbytes:
        raise CorruptDataError(f"rANS stream: block sizes sum to {total} bytes, but the section holds {nbytes}")
    return ends - np.asarray(sizes, dtype=np.int64), ends


def prepare(buf, count: int, freqs, block_size: int, block_bytes, *,
            rows: tuple[np.ndarray, int] | None = None) -> RansStream:
    """Check a rANS stream's tables and blocks as `decode` does (same errors) and build its slot tables."""
    t = tables_for(freqs, count, rows, CorruptDataError)
    data = as_byte_array(buf)
    starts, ends = check_blocks(data.size, count, block_size, block_bytes)
    block_size = min(int(block_size), max(1, int(count)))  # beyond the count: one block, same meaning
    slots = np.empty((t.count, TOTAL), np.uint16)
    for j in range(t.count):
        slots[j] = np.repeat(np.arange(t.freqs.shape[1], dtype=np.uint16), t.freqs[j].astype(np.int64))
    words = np.frombuffer(data, dtype="<u4") if data.ctypes.data % WORD_BYTES == 0 else \
        np.frombuffer(data.tobytes(), dtype="<u4")
    return RansStream(data, words, int(count), int(block_size), starts, ends, t, slots)


def decode(buf, count: int, freqs, block_size: int, block_bytes, *,
           rows: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """Decode `count` rANS-coded symbols (uint16) from §6.4 blocks, rejecting every malformed stream
    (`freqs`, `rows`: as `encode`)."""
    stream = prepare(buf, count, freqs, block_size, block_bytes, rows=rows)
    out = np.empty(stream.count, dtype=np.uint16)
    decode_blocks(stream, out, 0, stream.blocks, exact=True)
    return out


def decode_blocks(stream: RansStream, out: np.ndarray, b0: int, b1: int, *, exact: bool = False) -> bool:
    """Decode blocks b0..b1 into out (uint16, all `count` symbols). True if they are valid; with
    `exact`, a malformed block raises its CorruptDataError instead."""
    if not (0 <= b0 <= b1 <= stream.blocks and out.dtype == np.uint16 and out.shape == (stream.count,)):
        raise CorruptDataError(f"rANS stream: blocks {b0}..{b1} of {stream.blocks}, or a wrong output")
    t = stream.tables
    if _decode_fast(stream.words, stream.starts, stream.ends, stream.slots, t.freqs, t.cum, t.row_tables, t.cols,
                    stream.block_size, stream.count, b0, b1, out, out, False):
        return True
    if not exact:
        return False
    # The fast decoder only knows that some block is bad; the exact one says which and why.
    status = _decode_kernel(stream.data, stream.starts, stream.ends, t.freqs, t.cum, t.row_tables, t.cols,
                            stream.slots, stream.block_size, stream.count, b0, b1, out, out, False)
    return _result(status, stream, exact)


def gather_blocks(stream: RansStream, b0: int, b1: int, codebook: np.ndarray, out: np.ndarray) -> bool:
    """out[i] = codebook[symbol i] for the symbols of blocks b0..b1, without an array of the symbols;
    True if the blocks are valid. The table must not be longer than the codebook."""
    if not (0 <= b0 <= b1 <= stream.blocks and out.ndim == 1 and out.size == stream.count
            and codebook.ndim == 1 and codebook.size >= stream.tables.freqs.shape[1] and codebook.dtype == out.dtype):
        raise CorruptDataError(f"rANS stream: blocks {b0}..{b1} of {stream.blocks}, or a wrong codebook or output")
    t = stream.tables
    return bool(_decode_fast(stream.words, stream.starts, stream.ends, stream.slots, t.freqs, t.cum, t.row_tables,
                             t.cols, stream.block_size, stream.count, b0, b1, codebook, out, True))


def raise_first_error(stream: RansStream, b0: int = 0, b1: int | None = None) -> None:
    """Raise the CorruptDataError of the first malformed block among b0..b1 (all by default), if any."""
    out = np.empty(stream.count, dtype=np.uint16)
    b1 = stream.blocks if b1 is None else b1
    t = stream.tables
    status = _decode_kernel(stream.data, stream.starts, stream.ends, t.freqs, t.cum, t.row_tables, t.cols,
                            stream.slots, stream.block_size, stream.count, b0, b1, out, out, False)
    _result(status, stream, True)


def _result(status: np.ndarray, stream: RansStream, exact: bool) -> bool:
    code, block, symbol = (int(v) for v in status)
    if code == _OK:
        return True
    if not exact:
        return False
    where = f"rANS block {block} (section bytes {int(stream.starts[block])}..{int(stream.ends[block])})"
    if code == _BAD_STATE:
        raise CorruptDataError(f"{where}: initial state is not in [2^31, 2^63)")
    if code == _OUT_OF_WORDS:
        raise CorruptDataError(f"{where}: ran out of words at symbol {symbol}")
    if code == _LEFTOVER:
        raise CorruptDataError(f"{where}: words left over after the last symbol")
    raise CorruptDataError(f"{where}: final state is not 2^31 (the block does not decode to its symbols)")


@numba.njit(cache=True, nogil=True)
def _decode_kernel(data, starts, ends, f, cum, row_tables, cols, slots, block_size, count, b0, b1, codebook, out,
                   gather):  # pragma: no cover - compiled
    """Decode blocks b0..b1 one symbol at a time: out[i] = symbol i, or with `gather` codebook[symbol i].
    Returns [status, block, symbol]. Reads only bytes starts[b]..ends[b] of each block (checked)."""
    status = np.zeros(3, np.int64)
    for b in range(b0, b1):
        p = starts[b]
        end = ends[b]
        x = np.uint64(0)
        for j in range(STATE_BYTES - 1, -1, -1):
            x = (x << np.uint64(8)) | np.uint64(data[p + j])
        p += STATE_BYTES
        if x < _LOWER or x >= _HIGH:
            status[0], status[1] = _BAD_STATE, b
            return status
        i0 = b * block_size
        i1 = min(i0 + block_size, count)
        for i in range(i0, i1):
            t = row_tables[i // cols]
            slot = x & _MASK
            s = slots[t, slot]
            if gather:
                out[i] = codebook[s]
            else:
                out[i] = s
            x = f[t, s] * (x >> _U15) + slot - cum[t, s]
            if x < _LOWER:
                if p + WORD_BYTES > end:
                    status[0], status[1], status[2] = _OUT_OF_WORDS, b, i
                    return status
                w = (np.uint64(data[p]) | (np.uint64(data[p + 1]) << np.uint64(8))
                     | (np.uint64(data[p + 2]) << np.uint64(16)) | (np.uint64(data[p + 3]) << np.uint64(24)))
                x = (x << _U32) | w
                p += WORD_BYTES
        if p != end:
            status[0], status[1] = _LEFTOVER, b
            return status
        if x != _LOWER:
            status[0], status[1] = _FINAL_STATE, b
            return status
    return status


_LANES = 4  # blocks decoded in lockstep: each step waits on a table load, four independent states hide it


@numba.njit(cache=True, nogil=True, inline="always")
def _state(words, w):  # pragma: no cover - compiled
    return np.uint64(words[w]) | (np.uint64(words[w + 1]) << _U32)


@numba.njit(cache=True, nogil=True, inline="always")
def _row_start(i, row_tables, cols):  # pragma: no cover - compiled
    """(row, symbols left in it, its table) at symbol i."""
    row = i // cols
    return row, cols - (i - row * cols), row_tables[row]


@numba.njit(cache=True, nogil=True, inline="always")
def _next_row(row, row_tables, cols):  # pragma: no cover - compiled
    """The same for the first symbol of the row after `row` (its table only if it exists)."""
    row += 1
    return row, cols, row_tables[row] if row < row_tables.size else 0


@numba.njit(cache=True, nogil=True)
def _decode_fast(words, starts, ends, slots, f, cum, row_tables, cols, block_size, count, b0, b1, codebook, out,
                 gather):  # pragma: no cover - compiled
    """Decode blocks b0..b1 as _decode_kernel does, four full blocks at a time; True if all are valid
    (False says only that one is not). Every word read is checked to lie inside its block; each lane
    follows its rows to use their tables, in runs of symbols during which no lane changes row."""
    b = b0
    while b < b1:
        lanes = _LANES if b + _LANES <= b1 and (b + _LANES) * block_size <= count else 1
        w0 = starts[b] // WORD_BYTES
        x0 = _state(words, w0)
        x1, x2, x3 = x0, x0, x0
        p0, e0 = w0 + 2, ends[b] // WORD_BYTES
        p1 = p2 = p3 = e1 = e2 = e3 = 0
        if lanes == _LANES:
            p1, e1 = starts[b + 1] // WORD_BYTES, ends[b + 1] // WORD_BYTES
            p2, e2 = starts[b + 2] // WORD_BYTES, ends[b + 2] // WORD_BYTES
            p3, e3 = starts[b + 3] // WORD_BYTES, ends[b + 3] // WORD_BYTES
            x1, x2, x3 = _state(words, p1), _state(words, p2), _state(words, p3)
            p1, p2, p3 = p1 + 2, p2 + 2, p3 + 2
        for x in (x0, x1, x2, x3):
            if x < _LOWER or x >= _HIGH:
                return False
        o0 = b * block_size
        r0, left0, t0 = _row_start(o0, row_tables, cols)
        if lanes == 1:
            for k in range(min(block_size, count - o0)):
                q0 = x0 & _MASK
                s0 = slots[t0, q0]
                if gather:
                    out[o0 + k] = codebook[s0]
                else:
                    out[o0 + k] = s0
                x0 = f[t0, s0] * (x0 >> _U15) + q0 - cum[t0, s0]
                if x0 < _LOWER:
                    if p0 >= e0:
                        return False
                    x0 = (x0 << _U32) | np.uint64(words[p0])
                    p0 += 1
                left0 -= 1
                if left0 == 0:
                    r0, left0, t0 = _next_row(r0, row_tables, cols)
            if p0 != e0 or x0 != _LOWER:
                return False
            b += 1
            continue
        o1, o2, o3 = o0 + block_size, o0 + 2 * block_size, o0 + 3 * block_size
        r1, left1, t1 = _row_start(o1, row_tables, cols)
        r2, left2, t2 = _row_start(o2, row_tables, cols)
        r3, left3, t3 = _row_start(o3, row_tables, cols)
        k = 0
        while k < block_size:
            run = min(left0, left1, left2, left3, block_size - k)  # symbols before any lane changes row
            for k in range(k, k + run):
                q0, q1, q2, q3 = x0 & _MASK, x1 & _MASK, x2 & _MASK, x3 & _MASK
                s0, s1, s2, s3 = slots[t0, q0], slots[t1, q1], slots[t2, q2], slots[t3, q3]
                if gather:
                    out[o0 + k] = codebook[s0]
                    out[o1 + k] = codebook[s1]
                    out[o2 + k] = codebook[s2]
                    out[o3 + k] = codebook[s3]
                else:
                    out[o0 + k] = s0
                    out[o1 + k] = s1
                    out[o2 + k] = s2
                    out[o3 + k] = s3
                x0 = f[t0, s0] * (x0 >> _U15) + q0 - cum[t0, s0]
                x1 = f[t1, s1] * (x1 >> _U15) + q1 - cum[t1, s1]
                x2 = f[t2, s2] * (x2 >> _U15) + q2 - cum[t2, s2]
                x3 = f[t3, s3] * (x3 >> _U15) + q3 - cum[t3, s3]
                if x0 < _LOWER:
                    if p0 >= e0:
                        return False
                    x0 = (x0 << _U32) | np.uint64(words[p0])
                    p0 += 1
                if x1 < _LOWER:
                    if p1 >= e1:
                        return False
                    x1 = (x1 << _U32) | np.uint64(words[p1])
                    p1 += 1
                if x2 < _LOWER:
                    if p2 >= e2:
                        return False
                    x2 = (x2 << _U32) | np.uint64(words[p2])
                    p2 += 1
                if x3 < _LOWER:
                    if p3 >= e3:
                        return False
                    x3 = (x3 << _U32) | np.uint64(words[p3])
                    p3 += 1
            k += 1
            left0, left1, left2, left3 = left0 - run, left1 - run, left2 - run, left3 - run
            if left0 == 0:
                r0, left0, t0 = _next_row(r0, row_tables, cols)
            if left1 == 0:
                r1, left1, t1 = _next_row(r1, row_tables, cols)
            if left2 == 0:
                r2, left2, t2 = _next_row(r2, row_tables, cols)
            if left3 == 0:
                r3, left3, t3 = _next_row(r3, row_tables, cols)
        if p0 != e0 or p1 != e1 or p2 != e2 or p3 != e3:
            return False
        if x0 != _LOWER or x1 != _LOWER or x2 != _LOWER or x3 != _LOWER:
            return False
        b += _LANES
    return True
