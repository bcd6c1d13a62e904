"""Fixed-width packing of symbol streams (spec §6.1): each symbol is a w-bit value, LSB first (§1)."""

from __future__ import annotations

import numba
import numpy as np

from .constants import MAX_ALPHABET, MAX_BITS, MIN_BITS
from .errors import CorruptDataError, EncodeError

__all__ = ["pack", "unpack", "packed_size"]


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
    if syms.size:
        too_big = syms >> width  # width 16 never overflows: uint16 >> 16 is 0 in numpy
        if width < 16 and too_big.any():
            i = int(np.argmax(too_big != 0))
            raise EncodeError(f"symbol {int(syms[i])} at index {i} does not fit in {width} bits")
    out = np.zeros(packed_size(syms.size, width), dtype=np.uint8)
    _pack_kernel(syms, width, out)
    return out.tobytes()


def unpack(buf, count: int, width: int, alphabet: int) -> np.ndarray:
    """Unpack `count` `width`-bit symbols, rejecting wrong length, non-zero padding and symbols >= alphabet."""
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
    out = np.empty(count, dtype=np.uint16)
    status, index, value = _unpack_kernel(data, width, alphabet, out)
    if status == _BAD_SYMBOL:
        raise CorruptDataError(f"fixed-width stream: symbol {index} has value {value}, not below the alphabet size {alphabet}")
    if status == _BAD_PADDING:
        raise CorruptDataError(f"fixed-width stream: padding bits of the last byte (byte {data.size - 1}) are not zero")
    if status != _OK:  # the length check above makes this unreachable; never trust it silently
        raise CorruptDataError(f"fixed-width stream: ran out of bytes at symbol {index}")
    return out


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
