"""Relative indices with filler entries, scan order and CSR/CSC views of a sparse tensor (spec §5.3).

A sparse tensor is viewed as an R×C matrix and scanned row by row (``csr``) or column by column
(``csc``). Each stored entry keeps ``g``, the number of positions skipped since the previous entry;
when more than ``2^b − 1`` zeros must be skipped the encoder inserts *filler* entries (value zero) with
``g = 2^b − 1``. The loops over entries run in a few numba kernels; kernels never index out of bounds:
arguments are validated in Python first, and what only the data can tell (a position past the end,
a codebook index too large) is returned as an error code and raised here as ``CorruptDataError``.
"""

from __future__ import annotations

import numba
import numpy as np

from .constants import CSC, LAYOUTS, MAX_BITS, MIN_BITS
from .container import matrix_view
from .errors import CorruptDataError, DCFError, EncodeError

__all__ = [
    "matrix_shape",
    "nonzero_positions",
    "scan_to_flat",
    "encode_gaps",
    "decode_positions",
    "decode_dense",
    "decode_dense_codebook",
    "to_compressed",
]

_INT64_MAX = np.iinfo(np.int64).max
# Unsigned integer of each itemsize: values are moved as bit patterns so every dtype (bool, float16,
# bfloat16, -0.0, NaN) is copied exactly and one compiled kernel serves all dtypes of a width.
_UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

# Error codes returned by the decode kernels.
_OK, _PAST_END, _BAD_INDEX = 0, 1, 2


# --------------------------------------------------------------------------------------------------
# Kernels


@numba.njit(cache=True, nogil=True)
def _count_entries(positions, index_bits):
    """Entries (fillers included) needed for sorted positions; (count, -1) or (-1, bad input index)."""
    count = 0
    previous = -1
    for i in range(positions.shape[0]):
        p = positions[i]
        if p <= previous:  # also rejects a negative first position
            return -1, i
        zeros = p - previous - 1
        count += (zeros >> index_bits) + 1  # one filler per 2^b zeros, then the entry itself
        previous = p
    return count, -1


@numba.njit(cache=True, nogil=True)
def _fill_gaps(positions, index_bits, gaps, real):
    """Write the gaps of all entries and the entry index of each position (sizes from _count_entries)."""
    filler_gap = (1 << index_bits) - 1
    j = 0
    previous = -1
    for i in range(positions.shape[0]):
        p = positions[i]
        zeros = p - previous - 1
        for _ in range(zeros >> index_bits):
            gaps[j] = filler_gap
            j += 1
        gaps[j] = zeros & filler_gap
        real[i] = j
        j += 1
        previous = p


@numba.njit(cache=True, nogil=True)
def _csc_nonzero_positions(bits):
    """Column-major scan positions of the non-zero elements of a C-order R×C matrix of bit patterns.

    Two row-major sweeps (count per column, then fill per column) instead of a transpose: the reads
    stay sequential, and each column's positions come out increasing because rows are swept in order.
    """
    rows, cols = bits.shape
    starts = np.zeros(cols + 1, dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            if bits[r, c] != 0:
                starts[c + 1] += 1
    for c in range(cols):
        starts[c + 1] += starts[c]
    out = np.empty(starts[cols], dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            if bits[r, c] != 0:
                out[starts[c]] = c * rows + r
                starts[c] += 1  # the next free slot of column c
    return out


@numba.njit(cache=True, nogil=True)
def _positions_kernel(gaps, total, out):
    """Scan positions of all entries into out; (_OK, 0, 0) or (_PAST_END, entry, position)."""
    p = -1
    for j in range(gaps.shape[0]):
        p += np.int64(gaps[j]) + 1
        if p >= total:
            return _PAST_END, j, p
        out[j] = p
    return _OK, 0, 0


@numba.njit(cache=True, nogil=True)
def _scatter_values(gaps, values, rows, cols, csc, out):
    """out[flat(p_j)] = values[j]; (_OK, 0, 0) or (_PAST_END, entry, position)."""
    total = rows * cols
    p = -1
    r = -1  # csc: row and column of p, kept incrementally to avoid a division per entry
    c = 0
    for j in range(gaps.shape[0]):
        step = np.int64(gaps[j]) + 1
        p += step
        if p >= total:
            return _PAST_END, j, p
        if csc:
            r += step
            if r >= rows:  # total > 0 here, so rows > 0
                c += r // rows
                r = r % rows
            out[r * cols + c] = values[j]
        else:
            out[p] = values[j]
    return _OK, 0, 0


@numba.njit(cache=True, nogil=True)
def _scatter_codebook(gaps, indices, codebook, rows, cols, csc, out):
    """out[flat(p_j)] = codebook[indices[j]]; _OK, (_PAST_END, entry, position) or (_BAD_INDEX, entry, index)."""
    total = rows * cols
    k = codebook.shape[0]
    p = -1
    r = -1
    c = 0
    for j in range(gaps.shape[0]):
        step = np.int64(gaps[j]) + 1
        p += step
        if p >= total:
            return _PAST_END, j, p
        index = indices[j]
        if index >= k:
            return _BAD_INDEX, j, np.int64(index)
        if csc:
            r += step
            if r >= rows:
                c += r // rows
                r = r % rows
            out[r * cols + c] = codebook[index]
        else:
            out[p] = codebook[index]
    return _OK, 0, 0


# --------------------------------------------------------------------------------------------------
# Argument checks


def _check_layout(layout: str, error: type[DCFError]) -> bool:
    """True for csc, False for csr; anything else is an error."""
    if layout not in LAYOUTS:
        raise error(f"layout must be one of {LAYOUTS}, not {layout!r}")
    return layout == CSC


def _check_dims(rows: int, cols: int, error: type[DCFError]) -> int:
    """rows*cols as a Python int, after checking both are non-negative integers."""
    for name, v in (("rows", rows), ("cols", cols)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0:
            raise error(f"{name} must be a non-negative integer, not {v!r}")
    return int(rows) * int(cols)


def _bits_view(a: np.ndarray) -> np.ndarray:
    """The contiguous 1-D array a as unsigned ints of its itemsize (bit patterns, no copy if possible)."""
    a = np.ascontiguousarray(a).reshape(-1)
    uint = _UINT_OF_SIZE.get(a.dtype.itemsize)
    if uint is None or a.dtype.hasobject:
        raise DCFError(f"dtype {a.dtype} is not a 1-, 2-, 4- or 8-byte scalar type")
    return a.view(uint)


def _symbols(a: np.ndarray, name: str) -> np.ndarray:
    """a as a contiguous 1-D uint16 array (symbols of a stream), rejecting values that do not fit."""
    a = np.asarray(a)
    if a.dtype != np.uint16:
        if a.dtype.kind not in "iu":
            raise DCFError(f"{name} must be an integer array, not {a.dtype}")
        if a.size and (a.min() < 0 or a.max() > 0xFFFF):
            raise DCFError(f"{name} must lie in 0..65535")
    return np.ascontiguousarray(a, dtype=np.uint16).reshape(-1)


def _kernel_total(total: int) -> int:
    """total clamped to int64: positions reachable by int64 arithmetic are far below the clamp."""
    return min(int(total), _INT64_MAX)


def _raise_decode_error(code: int, entry: int, detail: int, total: int, k: int | None = None) -> None:
    """Turn a kernel's error code into a CorruptDataError naming the entry."""
    if code == _PAST_END:
        raise CorruptDataError(
            f"relative index of entry {entry} puts position {detail} past the end ({total} positions)")
    if code == _BAD_INDEX:
        raise CorruptDataError(
            f"value index {detail} of entry {entry} is not below the codebook size {k}")


def _output(out: np.ndarray | None, dtype: np.dtype, size: int) -> np.ndarray:
    """A zeroed flat output of dtype and size: out itself (cleared) or a new array."""
    if out is None:
        return np.zeros(size, dtype=dtype)
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.ndim != 1 or out.size != size:
        raise DCFError(f"out must be a 1-D array of {dtype} and length {size}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise DCFError("out must be contiguous and writeable")
    out.view(_UINT_OF_SIZE[dtype.itemsize])[:] = 0  # "zeros elsewhere" is part of the contract
    return out


# --------------------------------------------------------------------------------------------------
# Public functions


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (R, C) matrix view of a tensor shape (§5.3)."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise DCFError(f"shape {shape} has a negative dimension")
    return matrix_view(shape)


def nonzero_positions(x: np.ndarray, layout: str) -> np.ndarray:
    """Sorted scan positions (int64) of the elements whose bit pattern is not all zeros (§5.3)."""
    csc = _check_layout(layout, EncodeError)
    x = np.asarray(x)
    rows, cols = matrix_shape(x.shape)
    try:
        bits = _bits_view(x).reshape(rows, cols)
    except DCFError as e:
        raise EncodeError(str(e)) from None
    # Testing the bits, not the value, keeps -0.0 and NaN (stored exactly) and drops only +0.0.
    if csc:
        return _csc_nonzero_positions(bits)
    return np.flatnonzero(bits).astype(np.int64, copy=False)


def scan_to_flat(positions: np.ndarray, rows: int, cols: int, layout: str) -> np.ndarray:
    """C-order flat index (int64) of each scan position of an R×C matrix."""
    csc = _check_layout(layout, DCFError)
    total = _check_dims(rows, cols, DCFError)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if positions.size and (positions.min() < 0 or positions.max() >= total):
        raise DCFError(f"positions must lie in 0..{total - 1}")
    if not csc:
        return positions.copy()
    r = positions % rows  # rows > 0 whenever a position exists
    c = positions // rows
    return r * cols + c


def encode_gaps(positions: np.ndarray, index_bits: int, *,
                max_entries: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Relative indices (uint16, fillers included) of sorted positions, and each position's entry index.

    ``max_entries`` bounds the number of entries before anything is allocated: a few far-apart
    positions with a small ``index_bits`` can need an astronomical number of fillers.
    """
    if isinstance(index_bits, (bool, np.bool_)) or not isinstance(index_bits, (int, np.integer)) \
            or not MIN_BITS <= index_bits <= MAX_BITS:
        raise EncodeError(f"index_bits must be an integer in {MIN_BITS}..{MAX_BITS}, not {index_bits!r}")
    positions = np.asarray(positions)
    if positions.dtype.kind not in "iu":
        raise EncodeError(f"positions must be integers, not {positions.dtype}")
    if positions.dtype.kind == "u" and positions.size and positions.max() > _INT64_MAX:
        raise EncodeError("positions must fit in int64")
    positions = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
    count, bad = _count_entries(positions, int(index_bits))
    if bad >= 0:
        raise EncodeError(f"positions must be non-negative and strictly increasing (position index {bad})")
    if max_entries is not None and count > max_entries:
        raise EncodeError(f"{count} entries (fillers included) exceed the limit of {max_entries}; "
                          f"use more index bits")
    try:
        gaps = np.empty(count, dtype=np.uint16)
    except MemoryError:
        raise EncodeError(f"{count} entries (fillers included) do not fit in memory") from None
    real = np.empty(positions.size, dtype=np.int64)
    _fill_gaps(positions, int(index_bits), gaps, real)
    return gaps, real


def decode_positions(gaps: np.ndarray, total: int) -> np.ndarray:
    """Scan positions (int64) of all entries; CorruptDataError if one lies at or past total (§5.3)."""
    gaps = _symbols(gaps, "gaps")
    total = _check_dims(total, 1, DCFError)
    out = np.empty(gaps.size, dtype=np.int64)
    code, entry, detail = _positions_kernel(gaps, _kernel_total(total), out)
    _raise_decode_error(code, entry, detail, total)
    return out


def decode_dense(gaps: np.ndarray, values: np.ndarray, rows: int, cols: int, layout: str,
                 out: np.ndarray | None = None) -> np.ndarray:
    """The flat C-order tensor (values.dtype, rows*cols) with values[j] at each entry's position."""
    csc = _check_layout(layout, DCFError)
    total = _check_dims(rows, cols, DCFError)
    gaps = _symbols(gaps, "gaps")
    values = np.asarray(values)
    if values.ndim != 1 or values.size != gaps.size:
        raise DCFError(f"values must be 1-D with one value per entry ({gaps.size}), not shape {values.shape}")
    values_bits = _bits_view(values)
    out = _output(out, values.dtype, total)
    code, entry, detail = _scatter_values(
        gaps, values_bits, int(rows), int(cols), csc, out.view(values_bits.dtype))
    _raise_decode_error(code, entry, detail, total)
    return out


def decode_dense_codebook(gaps: np.ndarray, indices: np.ndarray, codebook: np.ndarray, rows: int,
                          cols: int, layout: str, out: np.ndarray | None = None) -> np.ndarray:
    """The flat C-order tensor (codebook.dtype, rows*cols) with codebook[indices[j]] at each entry's position.

    The hot decode path: one pass over the entries, no intermediate arrays.
    """
    csc = _check_layout(layout, DCFError)
    total = _check_dims(rows, cols, DCFError)
    gaps = _symbols(gaps, "gaps")
    indices = _symbols(indices, "indices")
    if indices.size != gaps.size:
        raise DCFError(f"indices must hold one index per entry ({gaps.size}), not {indices.size}")
    codebook = np.asarray(codebook)
    if codebook.ndim != 1:
        raise DCFError(f"codebook must be 1-D, not shape {codebook.shape}")
    codebook_bits = _bits_view(codebook)
    out = _output(out, codebook.dtype, total)
    code, entry, detail = _scatter_codebook(
        gaps, indices, codebook_bits, int(rows), int(cols), csc, out.view(codebook_bits.dtype))
    _raise_decode_error(code, entry, detail, total, codebook.size)
    return out


def to_compressed(positions: np.ndarray, rows: int, cols: int, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, minor indices), both int64, of the CSR (rows major) or CSC (columns major) structure."""
    csc = _check_layout(layout, DCFError)
    total = _check_dims(rows, cols, DCFError)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if positions.size and (positions[0] < 0 or positions[-1] >= total or np.any(np.diff(positions) <= 0)):
        raise DCFError(f"positions must be strictly increasing and lie in 0..{total - 1}")
    n_major, n_minor = (int(cols), int(rows)) if csc else (int(rows), int(cols))
    indptr = np.zeros(n_major + 1, dtype=np.int64)
    if positions.size == 0:
        return indptr, np.empty(0, dtype=np.int64)
    major, minor = np.divmod(positions, n_minor)
    # Scan order is major-then-minor, so counting entries per major line and summing gives indptr.
    np.cumsum(np.bincount(major, minlength=n_major), out=indptr[1:])
    return indptr, minor
