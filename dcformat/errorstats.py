"""How far a decoded tensor is from its original: sums of squares in float64, in one compiled pass.

Used by the encoder to record each tensor's relative RMS error ||decoded - original|| / ||original||
without float64 copies of the tensor.
"""

from __future__ import annotations

import numba
import numpy as np

_CHUNK = 1 << 20  # elements per float32 chunk for dtypes the kernel does not take (float16, bfloat16)


@numba.njit(cache=True, nogil=True)
def _sums(original, decoded):  # pragma: no cover - compiled
    err = 0.0
    norm = 0.0
    for i in range(original.size):
        x = np.float64(original[i])
        d = np.float64(decoded[i]) - x
        err += d * d
        norm += x * x
    return err, norm


def squared_error(original: np.ndarray, decoded: np.ndarray) -> tuple[float, float]:
    """(||decoded - original||^2, ||original||^2) of two float arrays of the same size, in float64."""
    a, b = np.asarray(original).reshape(-1), np.asarray(decoded).reshape(-1)
    if a.size != b.size:
        raise ValueError(f"squared_error: {a.size} elements against {b.size}")
    if a.dtype == b.dtype and a.dtype.name in ("float32", "float64"):
        err, norm = _sums(a, b)
        return float(err), float(norm)
    err = norm = 0.0
    for i in range(0, a.size, _CHUNK):
        e, n = _sums(a[i: i + _CHUNK].astype(np.float32), b[i: i + _CHUNK].astype(np.float32))
        err += e
        norm += n
    return float(err), float(norm)


@numba.njit(cache=True, nogil=True)
def _sums_coded(original, codebook, indices):  # pragma: no cover - compiled
    err = 0.0
    norm = 0.0
    for i in range(original.size):
        x = np.float64(original[i])
        d = np.float64(codebook[indices[i]]) - x
        err += d * d
        norm += x * x
    return err, norm


def squared_error_coded(original: np.ndarray, codebook: np.ndarray, indices: np.ndarray) -> tuple[float, float]:
    """`squared_error` of original against codebook[indices], without building the decoded tensor."""
    a, idx = np.asarray(original).reshape(-1), np.asarray(indices).reshape(-1)
    if a.size != idx.size:
        raise ValueError(f"squared_error_coded: {a.size} elements against {idx.size} indices")
    if a.dtype.name in ("float32", "float64") and codebook.dtype == a.dtype:
        err, norm = _sums_coded(a, codebook, idx)
        return float(err), float(norm)
    book = codebook.astype(np.float32)
    err = norm = 0.0
    for i in range(0, a.size, _CHUNK):
        e, n = _sums_coded(a[i: i + _CHUNK].astype(np.float32), book, idx[i: i + _CHUNK])
        err += e
        norm += n
    return float(err), float(norm)


@numba.njit(cache=True, nogil=True)
def _sums_rows(original, codebook, indices, scales, classes):  # pragma: no cover - compiled
    err = 0.0
    norm = 0.0
    rows = classes.size
    cols = original.size // rows if rows else 0
    for r in range(rows):
        s = scales[classes[r]]
        base = r * cols
        for c in range(cols):
            x = np.float64(original[base + c])
            d = np.float64(codebook[indices[base + c]] * s) - x  # the product rounded to the dtype (§5.2)
            err += d * d
            norm += x * x
    return err, norm


def squared_error_rows(original: np.ndarray, codebook: np.ndarray, indices: np.ndarray, scales: np.ndarray,
                       classes: np.ndarray) -> tuple[float, float]:
    """`squared_error` of original against a shared tensor with row scales (§5.2), without decoding it."""
    a, idx = np.asarray(original).reshape(-1), np.asarray(indices).reshape(-1)
    if a.size != idx.size or not (a.dtype == codebook.dtype == scales.dtype) or a.dtype.name not in ("float32", "float64"):
        raise ValueError("squared_error_rows: one index per element and float32/float64 arrays of one dtype")
    err, norm = _sums_rows(a, codebook, idx, scales, np.asarray(classes).reshape(-1))
    return float(err), float(norm)
