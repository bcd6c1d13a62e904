"""The safetensors format, read and written here without the `safetensors` package (or torch).

A file is a little-endian u64 header length N, N bytes of JSON, then one byte buffer. The JSON maps
each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the buffer) and
may hold "__metadata__", a map of strings to strings. The reader checks everything before any tensor
is used, as the safetensors package does: a header size cap, known dtypes, sizes that match shapes,
and offsets that tile the buffer exactly (no holes, no overlaps). Tensors are lazy views of a
memory map. The writer sorts tensors as the package does (larger dtype first, then by name) and pads
the header with spaces to a multiple of 8, so both write the same bytes.
"""

from __future__ import annotations

import builtins
import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable, Mapping

import numpy as np

from ..errors import DCFError, FormatError, LimitError, TruncatedError

MAX_HEADER_BYTES = 100_000_000  # the safetensors package's own cap on the JSON header
HEADER_ALIGN = 8  # the writer pads the JSON header with spaces to this multiple
METADATA_KEY = "__metadata__"

# safetensors dtype name -> (numpy dtype name, itemsize). bfloat16 and float8 use ml_dtypes' types,
# imported only when a file holds such a tensor.
DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1), "U8": ("uint8", 1), "I8": ("int8", 1), "F8_E5M2": ("float8_e5m2", 1),
    "F8_E4M3": ("float8_e4m3fn", 1), "I16": ("int16", 2), "U16": ("uint16", 2), "F16": ("float16", 2),
    "BF16": ("bfloat16", 2), "I32": ("int32", 4), "U32": ("uint32", 4), "F32": ("float32", 4),
    "F64": ("float64", 8), "I64": ("int64", 8), "U64": ("uint64", 8),
}
NAMES = {numpy_name: st for st, (numpy_name, _) in DTYPES.items()}
# The package's dtype order (its Rust enum); the writer puts later dtypes first.
_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64",
          "I64", "U64"]
_ML_DTYPES = {"bfloat16", "float8_e5m2", "float8_e4m3fn"}


class SafetensorsError(FormatError):
    """A .safetensors file breaks the format (header, dtype, offsets)."""


def numpy_dtype(numpy_name: str) -> np.dtype:
    """The numpy dtype for a dtype name of `DTYPES` (ml_dtypes only for bfloat16 and float8)."""
    if numpy_name in _ML_DTYPES:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, numpy_name))
    return np.dtype(numpy_name).newbyteorder("<") if np.dtype(numpy_name).itemsize > 1 else np.dtype(numpy_name)


def bits_dtype(itemsize: int) -> np.dtype:
    """The unsigned integer dtype of `itemsize` bytes: the bit patterns of any dtype of that size."""
    return np.dtype(f"<u{itemsize}") if itemsize > 1 else np.dtype(np.uint8)


def dtype_code(dtype: np.dtype) -> str:
    """The safetensors name of a numpy dtype; DCFError if safetensors has none."""
    name = np.dtype(dtype).name
    if name not in NAMES:
        raise DCFError(f"safetensors has no dtype for {name} (it holds {', '.join(sorted(NAMES))})")
    return NAMES[name]


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors header: its dtype (numpy name), shape and byte range in the buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def itemsize(self) -> int:
        return DTYPES[NAMES[self.dtype]][1]


def parse_header(head: bytes, file_size: int, path: str) -> tuple[list[Entry], dict[str, str], int]:
    """(entries in buffer order, metadata, buffer start) of a file of `file_size` bytes starting with `head`.

    `head` must hold at least the first 8 bytes; the header text is read from it when long enough.
    """
    if file_size < 8 or len(head) < 8:
        raise TruncatedError(f"{path}: not a safetensors file: {file_size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER_BYTES:
        raise LimitError(f"{path}: safetensors header of {n} bytes is larger than the limit of {MAX_HEADER_BYTES}")
    if 8 + n > file_size:
        raise TruncatedError(f"{path}: safetensors header says {n} bytes; the file has {file_size - 8} after the length")
    if len(head) < 8 + n:
        raise ValueError("parse_header: head too short")  # pragma: no cover - callers pass enough
    text = bytes(head[8: 8 + n])
    if not text.startswith(b"{"):
        raise SafetensorsError(f"{path}: not a safetensors file: the header does not start with '{{'")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = {}
        for k, v in pairs:
            if k in out:
                raise SafetensorsError(f"{path}: safetensors header names {k!r} twice")
            out[k] = v
        return out

    try:
        doc = json.loads(text.decode("utf-8").rstrip(" "), object_pairs_hook=unique)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: safetensors header is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise SafetensorsError(f"{path}: safetensors header is not a JSON object")
    metadata = doc.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError(f"{path}: safetensors __metadata__ must map strings to strings")
    start = 8 + n
    buffer = file_size - start
    entries = []
    for name, info in doc.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{path}: tensor {name!r}: expected dtype, shape and data_offsets, got {info!r:.200}")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if code not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r}: dtype {code!r} is not supported "
                                   f"(supported: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise SafetensorsError(f"{path}: tensor {name!r}: shape must be a list of non-negative integers, not {shape!r:.200}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise SafetensorsError(f"{path}: tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end, "
                                   f"not {offsets!r:.200}")
        numpy_name, itemsize = DTYPES[code]
        need = math.prod(shape) * itemsize
        if offsets[1] - offsets[0] != need:
            raise SafetensorsError(f"{path}: tensor {name!r}: {code}{shape} needs {need} bytes, data_offsets give "
                                   f"{offsets[1] - offsets[0]}")
        entries.append(Entry(name, numpy_name, tuple(shape), offsets[0], offsets[1]))
    entries.sort(key=lambda e: (e.begin, e.end))
    at = 0
    for e in entries:  # the tensors tile the buffer: no holes, no overlaps
        if e.begin != at:
            what = "overlaps the one before" if e.begin < at else f"leaves a hole of {e.begin - at} bytes before it"
            raise SafetensorsError(f"{path}: tensor {e.name!r}: data_offsets {[e.begin, e.end]} {what}")
        at = e.end
    if at != buffer:
        if at > buffer:
            raise TruncatedError(f"{path}: the tensors need {at} bytes of data; the file has {buffer}")
        raise SafetensorsError(f"{path}: {buffer - at} bytes after the last tensor belong to none")
    return entries, dict(metadata), start


class SafetensorsReader:
    """A lazy, memory-mapped reader of one .safetensors file; use as a context manager.

    `get(name)` is a read-only numpy view of the map (no copy), valid until `close`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._file = builtins.open(self.path, "rb")
        self._map: mmap.mmap | None = None
        try:
            size = os.fstat(self._file.fileno()).st_size
            head = self._file.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if n <= MAX_HEADER_BYTES and 8 + n <= size:
                    head += self._file.read(n)
            entries, self.metadata, self._start = parse_header(head, size, self.path)
            self.entries = {e.name: e for e in entries}
            self._size = size
            if size > self._start:
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # views still in use: the map closes when they are freed
            self._map = None
        self._file.close()

    def keys(self) -> list[str]:
        """Tensor names in the order of the file's header (as the package's `keys()`, sorted)."""
        return sorted(self.entries)

    def entry(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def get(self, name: str, *, bits: bool = False) -> np.ndarray:
        """The tensor as a read-only view of the map; with `bits`, as unsigned integers of its itemsize."""
        e = self.entry(name)
        dtype = bits_dtype(e.itemsize) if bits else numpy_dtype(e.dtype)
        if e.nbytes == 0:
            return np.empty(e.shape, dtype=dtype)
        if self._map is None:
            raise DCFError(f"{self.path}: the file is closed")
        if os.fstat(self._file.fileno()).st_size < self._size:  # mapped pages past a new end kill the process
            raise TruncatedError(f"{self.path}: the file shrank since it was opened: another program overwrote it")
        a = np.frombuffer(self._map, dtype=dtype, count=e.nbytes // e.itemsize, offset=self._start + e.begin)
        return a.reshape(e.shape)


    def release(self, name: str) -> None:
        """Drop a tensor's pages from this process's memory once it has been used (they stay in the page
        cache and come back if read again), so reading a whole file does not grow the process."""
        e = self.entry(name)
        if self._map is not None and e.nbytes:
            release_range(self._map, self._start + e.begin, e.nbytes)


def release_range(m: mmap.mmap, offset: int, length: int) -> None:
    """madvise(MADV_DONTNEED) over the pages holding [offset, offset + length) of a read-only map."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:
        return
    page = mmap.PAGESIZE
    start = offset // page * page
    end = min(len(m), -(-(offset + length) // page) * page)
    try:
        m.madvise(advice, start, end - start)
    except (OSError, ValueError):
        pass  # only an optimisation


def read_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file, copied into memory (name -> numpy array)."""
    with SafetensorsReader(path) as f:
        return {name: f.get(name).copy() for name in f.keys()}


@dataclass(frozen=True)
class Spec:
    """What the writer needs to know of a tensor before its data: name, numpy dtype name, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[NAMES[self.dtype]][1]


def layout(specs: Iterable[Spec], metadata: Mapping[str, str] | None = None) -> tuple[bytes, list[tuple[Spec, int]]]:
    """The header bytes (length prefix included) and the tensors in write order with their buffer offsets."""
    specs = list(specs)
    for s in specs:
        if s.dtype not in NAMES:
            raise DCFError(f"safetensors has no dtype for {s.dtype} (tensor {s.name!r})")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DCFError("safetensors: tensor names must be unique")
    if metadata and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise DCFError("safetensors: metadata must map strings to strings")
    order = sorted(specs, key=lambda s: (-_ORDER.index(NAMES[s.dtype]), s.name))
    doc: dict[str, Any] = {}
    if metadata is not None:  # as the package: given, even empty, it is written
        doc[METADATA_KEY] = dict(metadata)
    placed, at = [], 0
    for s in order:
        doc[s.name] = {"dtype": NAMES[s.dtype], "shape": list(s.shape), "data_offsets": [at, at + s.nbytes]}
        placed.append((s, at))
        at += s.nbytes
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGN)
    return struct.pack("<Q", len(text)) + text, placed


def spec_of(name: str, a: np.ndarray) -> Spec:
    """The Spec of a numpy array (DCFError if safetensors has no such dtype)."""
    dtype_code(a.dtype)
    return Spec(name, np.dtype(a.dtype).name, tuple(a.shape))


def write_stream(f: BinaryIO, specs: Iterable[Spec], fill: Callable[[Spec], Any],
                 metadata: Mapping[str, str] | None = None,
                 done: Callable[[Spec], None] | None = None) -> int:
    """Write a whole file to `f`: the header, then each tensor's bytes as `fill(spec)` returns them
    (an array or bytes-like of exactly spec.nbytes), in write order; return the file's length.

    One tensor is held at a time, so memory stays near the largest tensor.
    """
    head, placed = layout(specs, metadata)
    f.write(head)
    total = len(head)
    for spec, _ in placed:
        data = fill(spec)
        view = _byte_view(data)
        if view.nbytes != spec.nbytes:
            raise DCFError(f"safetensors: tensor {spec.name!r} has {view.nbytes} bytes, its spec says {spec.nbytes}")
        f.write(view)
        total += view.nbytes
        del data, view
        if done is not None:
            done(spec)
    return total


def save_bytes(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a .safetensors file holding `tensors` (numpy arrays)."""
    import io

    arrays = {k: np.asarray(v) for k, v in tensors.items()}
    out = io.BytesIO()
    write_stream(out, [spec_of(k, a) for k, a in arrays.items()], lambda s: _le(arrays[s.name]), metadata)
    return out.getvalue()


def save_file(tensors: Mapping[str, Any], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` (numpy arrays) to a .safetensors file at `path`, atomically."""
    from ..container import atomic_write

    arrays = {k: np.asarray(v) for k, v in tensors.items()}
    specs = [spec_of(k, a) for k, a in arrays.items()]
    atomic_write(path, lambda f: write_stream(f, specs, lambda s: _le(arrays[s.name]), metadata))


def _byte_view(data: Any) -> memoryview:
    """The bytes of an array (any dtype, ml_dtypes' included) or bytes-like object, without a copy."""
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    return memoryview(data).cast("B")


def _le(a: np.ndarray) -> np.ndarray:
    """a, little-endian and C-contiguous."""
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)

