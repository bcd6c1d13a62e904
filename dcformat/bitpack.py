"""Fixed-width packing of symbol streams (spec §6.1): each symbol is a w-bit value, LSB first (§1)."""

from __future__ import annotations

import numba
import numpy as np

from .constants import MAX_ALPHABET, MAX_BITS, MIN_BITS
from .errors import CorruptDataError, EncodeError

__all__ = ["pack", "unpack", "packed_size", "check_length", "unpack_range", "gather_range"]


def packed_size(count: int, width: int) -> int:
    """Byte length of `count` symbols of `width` bits: ceil(count * width / 8) (§6.1)."""
    _check_width(width)
    if count < 0:
        raise EncodeError(f"symbol count {count} is negative")
    return (count * width + 7) // 8


def pack(symbols: np.ndarray, width: int) -> bytes:
    """Pack symbols as `width`-bit values, LSB first, into bytes whose last one is zero-padded."""
    _check_width(width)
    syms = as_symbols(symbols)
    if syms.size and width < 16 and int(syms.max()) >> width:  # width 16 never overflows (no full-size temporary)
        i = int(np.argmax(syms >> width != 0))
        raise EncodeError(f"symbol {int(syms[i])} at index {i} does not fit in {width} bits")
    out = np.zeros(packed_size(syms.size, width), dtype=np.uint8)
    _pack_kernel(syms, width, out)
    return out.tobytes()


def unpack(buf, count: int, width: int, alphabet: int) -> np.ndarray:
    """Unpack `count` `width`-bit symbols, rejecting wrong length, non-zero padding and symbols >= alphabet."""
    data = check_length(buf, count, width, alphabet)
    out = np.empty(count, dtype=np.uint16)
    if _unpack_fast(data, width, alphabet, out):
        return out
    # a symbol is too large or the padding is not zero: the exact kernel finds the first problem
    status, index, value = _unpack_kernel(data, width, alphabet, out)
    if status == _BAD_SYMBOL:
        raise CorruptDataError(f"fixed-width stream: symbol {index} has value {value}, not below the alphabet size {alphabet}")
    if status == _BAD_PADDING:
        raise CorruptDataError(f"fixed-width stream: padding bits of the last byte (byte {data.size - 1}) are not zero")
    if status != _OK:  # the length check above makes this unreachable; never trust it silently
        raise CorruptDataError(f"fixed-width stream: ran out of bytes at symbol {index}")
    return out


def check_length(buf, count: int, width: int, alphabet: int) -> np.ndarray:
    """The stream's bytes as uint8, after the checks `unpack` makes before decoding (same errors)."""
    _check_width(width)
    if not 1 <= alphabet <= MAX_ALPHABET:
        raise CorruptDataError(f"alphabet size {alphabet} is not in 1..{MAX_ALPHABET}")
    if count < 0:
        raise CorruptDataError(f"symbol count {count} is negative")
    data = as_byte_array(buf)
    expected = packed_size(count, width)
    if data.size != expected:
        raise CorruptDataError(
            f"fixed-width stream of {count} symbols of {width} bits needs {expected} bytes, got {data.size}"
        )
    return data


def _range_bytes(data: np.ndarray, count: int, width: int, s0: int, s1: int) -> np.ndarray:
    """The bytes of symbols s0..s1: whole bytes, since s0 and s1 (unless s1 = count) are multiples of 8."""
    if not (0 <= s0 <= s1 <= count and s0 % 8 == 0 and (s1 % 8 == 0 or s1 == count)
            and data.size == packed_size(count, width)):
        raise CorruptDataError(f"fixed-width stream: symbols {s0}..{s1} of {count} do not start on byte boundaries")
    return data[s0 * width // 8 : packed_size(s1, width)]


def unpack_range(data: np.ndarray, count: int, width: int, alphabet: int, s0: int, s1: int, out: np.ndarray) -> bool:
    """Unpack symbols s0..s1 (s0, s1 multiples of 8, or s1 = count) of a stream checked by
    `check_length` into out[s0:s1]; True if all are below `alphabet` (and, for the last range, the
    padding is zero). Ranges are independent, so they can be unpacked on different threads."""
    part = _range_bytes(data, count, width, s0, s1)
    if out.dtype != np.uint16 or out.shape != (count,):
        raise CorruptDataError(f"fixed-width stream: the output must hold {count} uint16 symbols")
    return _unpack_fast(part, width, alphabet, out[s0:s1])


def gather_range(data: np.ndarray, count: int, width: int, alphabet: int, s0: int, s1: int,
                 codebook: np.ndarray, out: np.ndarray) -> bool:
    """out[i] = codebook[symbol i] for symbols s0..s1, as `unpack_range` without an array of symbols;
    True if every symbol is below `alphabet` and codebook.size (and the last range's padding is zero)."""
    part = _range_bytes(data, count, width, s0, s1)
    if not (out.ndim == 1 and out.size == count and codebook.ndim == 1 and codebook.size >= 1
            and codebook.dtype == out.dtype):
        raise CorruptDataError("fixed-width stream: wrong codebook or output for a gather")
    return _unpack_gather(part, width, min(alphabet, codebook.size), codebook, out[s0:s1])


def as_symbols(symbols) -> np.ndarray:
    """Return the symbols as a contiguous 1-D uint16 array, rejecting values outside 0..65535."""
    arr = np.asarray(symbols)
    if arr.ndim != 1:
        raise EncodeError(f"symbols must be a 1-D array, got {arr.ndim} dimensions")
    if arr.dtype == np.uint16:
        return np.ascontiguousarray(arr)
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint16)
    if arr.dtype.kind not in "iu":
        raise EncodeError(f"symbols must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= MAX_ALPHABET:
        bad = int(np.argmax((arr < 0) | (arr >= MAX_ALPHABET)))
        raise EncodeError(f"symbol {int(arr[bad])} at index {bad} is not in 0..{MAX_ALPHABET - 1}")
    return arr.astype(np.uint16)


def as_byte_array(buf) -> np.ndarray:
    """View a bytes-like object or uint8 array as a contiguous 1-D uint8 array (no copy when possible)."""
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8:
            raise CorruptDataError(f"buffer must hold uint8, got dtype {buf.dtype}")
        return np.ascontiguousarray(buf.reshape(-1))
    return np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8)


def _check_width(width: int) -> None:
    """Reject widths outside 1..16 (§5.2, §5.3) before they reach a kernel."""
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not MIN_BITS <= width <= MAX_BITS:
        raise EncodeError(f"width {width!r} is not an integer in {MIN_BITS}..{MAX_BITS}")


_OK, _BAD_SYMBOL, _BAD_PADDING, _OVERRUN = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True)
def _pack_kernel(syms, width, out):
    """Write each symbol's `width` bits LSB first into `out` (pre-zeroed, exactly sized)."""
    # int64 accumulator: width <= 16 so at most 7 + 16 = 23 bits are ever pending
    acc = 0
    nbits = 0
    pos = 0
    n = out.size
    for i in range(syms.size):
        acc |= np.int64(syms[i]) << nbits
        nbits += width
        while nbits >= 8:
            if pos < n:  # exact sizing makes this always true; it keeps the write in bounds regardless
                out[pos] = acc & 0xFF
            pos += 1
            acc >>= 8
            nbits -= 8
    if nbits > 0 and pos < n:
        out[pos] = acc & 0xFF


@numba.njit(cache=True, nogil=True)
def _unpack_kernel(data, width, alphabet, out):
    """Read out.size `width`-bit symbols; return (status, symbol index, value) on the first problem."""
    acc = 0
    nbits = 0
    pos = 0
    n = data.size
    mask = (1 << width) - 1
    for i in range(out.size):
        while nbits < width:
            if pos >= n:  # cannot happen after the length check, but the kernel never reads past the end
                return _OVERRUN, i, 0
            acc |= np.int64(data[pos]) << nbits
            pos += 1
            nbits += 8
        v = acc & mask
        acc >>= width
        nbits -= width
        if v >= alphabet:
            return _BAD_SYMBOL, i, v
        out[i] = v
    # what is left in the accumulator is the last byte's padding (fewer than 8 bits): it must be zero
    if acc != 0 or pos != n:
        return _BAD_PADDING, out.size, 0
    return _OK, 0, 0


_U64 = numba.uint64


@numba.njit(cache=True, nogil=True, inline="always")
def _load_u64(data, p):
    """Little-endian u64 from data[p:p+8], p a uint64 (caller guarantees p + 8 <= data.size)."""
    return (
        _U64(data[p])
        | (_U64(data[p + _U64(1)]) << _U64(8))
        | (_U64(data[p + _U64(2)]) << _U64(16))
        | (_U64(data[p + _U64(3)]) << _U64(24))
        | (_U64(data[p + _U64(4)]) << _U64(32))
        | (_U64(data[p + _U64(5)]) << _U64(40))
        | (_U64(data[p + _U64(6)]) << _U64(48))
        | (_U64(data[p + _U64(7)]) << _U64(56))
    )


@numba.njit(cache=True, nogil=True)
def _unpack_fast(data, width, alphabet, out):
    """Unpack data (exactly ceil(out.size * width / 8) bytes) into out; True if every symbol is below
    `alphabet` and the padding is zero. Each symbol is read from its own 8-byte window, so there is no
    chain from one symbol to the next (~2x the exact kernel); uint64 indices skip wraparound checks."""
    n = _U64(out.size)
    w = _U64(width)
    mask = (_U64(1) << w) - _U64(1)
    limit = _U64(alphabet)
    nbytes = _U64(data.size)
    # symbols whose 8-byte window data[bit // 8 : bit // 8 + 8] lies inside the data (bit = i * w)
    safe = _U64(0)
    if nbytes >= _U64(8):
        safe = min(n, (nbytes - _U64(8)) * _U64(8) // w + _U64(1))
    bad = False
    for i in range(safe):
        bit = _U64(i) * w
        v = (_load_u64(data, bit >> _U64(3)) >> (bit & _U64(7))) & mask
        bad |= v >= limit
        out[i] = np.uint16(v)
    for i in range(safe, n):  # the last few symbols: gather their (at most 3) bytes one by one
        bit = _U64(i) * w
        byte = bit >> _U64(3)
        v = _U64(0)
        for k in range(3):
            if byte + _U64(k) < nbytes:
                v |= _U64(data[byte + _U64(k)]) << _U64(8 * k)
        v = (v >> (bit & _U64(7))) & mask
        bad |= v >= limit
        out[i] = np.uint16(v)
    used = n * w
    if used & _U64(7) and nbytes:
        bad |= (_U64(data[nbytes - _U64(1)]) >> (used & _U64(7))) != _U64(0)  # padding bits of the last byte
    return not bad


@numba.njit(cache=True, nogil=True)
def _unpack_gather(data, width, alphabet, codebook, out):
    """out[i] = codebook[symbol i], the symbols unpacked as by _unpack_fast (same windows, same checks);
    True if every symbol is below `alphabet` (<= codebook.size) and the padding is zero."""
    n = _U64(out.size)
    w = _U64(width)
    mask = (_U64(1) << w) - _U64(1)
    limit = _U64(alphabet)
    nbytes = _U64(data.size)
    safe = _U64(0)
    if nbytes >= _U64(8):
        safe = min(n, (nbytes - _U64(8)) * _U64(8) // w + _U64(1))
    bad = False
    for i in range(safe):
        bit = _U64(i) * w
        v = (_load_u64(data, bit >> _U64(3)) >> (bit & _U64(7))) & mask
        ok = v < limit
        bad |= not ok
        out[i] = codebook[v if ok else _U64(0)]
    for i in range(safe, n):
        bit = _U64(i) * w
        byte = bit >> _U64(3)
        v = _U64(0)
        for k in range(3):
            if byte + _U64(k) < nbytes:
                v |= _U64(data[byte + _U64(k)]) << _U64(8 * k)
        v = (v >> (bit & _U64(7))) & mask
        ok = v < limit
        bad |= not ok
        out[i] = codebook[v if ok else _U64(0)]
    used = n * w
    if used & _U64(7) and nbytes:
        bad |= (_U64(data[nbytes - _U64(1)]) >> (used & _U64(7))) != _U64(0)
    return not bad
