"""The public API, shaped like safetensors: save/load, save_file/load_file and a lazy `open`."""

from __future__ import annotations

import builtins
import io
import mmap
import os
from typing import Any, Iterator, Mapping

import numpy as np

from . import constants as K
from .container import DEFAULT_LIMITS, Header, Limits, TensorInfo, atomic_write, parse_header, write_stream
from .errors import DCFError, TruncatedError
from .policy import Policy
from .progress import Progress, ProgressEvent

EventCallback = Progress


def _arrays(tensors: Mapping[str, Any]) -> Mapping[str, Any]:
    """The tensors as numpy arrays: torch tensors (any device, bfloat16 included) are converted."""
    if not isinstance(tensors, Mapping):
        return tensors  # encoder.check_inputs names the problem
    if not any(type(v).__module__.startswith("torch") for v in tensors.values()):
        return tensors
    from .interop.torch import to_numpy

    return {name: to_numpy(value) for name, value in tensors.items()}


def _encode(tensors: Mapping[str, Any], policy: Policy | None, metadata: Mapping[str, str] | None,
            progress: Progress | None = None):
    from . import encoder

    tensors = _arrays(tensors)
    encoder.check_inputs(tensors, metadata)
    return encoder.encode(tensors, _resolve(tensors, policy, metadata, progress), metadata, progress)


def _resolve(tensors: Mapping[str, Any], policy: Policy | None, metadata: Mapping[str, str] | None,
             progress: Progress | None = None) -> Policy:
    """The policy to encode with: a target size becomes the step that meets it (allocation.fit_size)."""
    policy = policy or Policy()
    if policy.target_size is None:
        return policy
    from .allocation import fit_size

    return fit_size(tensors, policy, metadata=metadata, progress=progress)


def save(tensors: Mapping[str, Any], *, policy: Policy | None = None, metadata: Mapping[str, str] | None = None) -> bytes:
    """Encode `tensors` (name -> array) into the bytes of a dcformat file."""
    meta, tables, encoded = _encode(tensors, policy, metadata)
    out = io.BytesIO()
    write_stream(out, meta, tables, encoded, compact_header=(policy or Policy()).compact_header)
    return out.getvalue()


def save_file(tensors: Mapping[str, Any], path: str | os.PathLike, *, policy: Policy | None = None,
              metadata: Mapping[str, str] | None = None, progress: EventCallback | None = None,
              threads: int | None = None) -> None:
    """Encode `tensors` into a dcformat file at `path`, atomically (a failed write leaves `path` as it was).

    Tensors are encoded one at a time (`threads` side by side: default one per CPU) and their sections
    written to a spill beside `path` as they are coded, so memory stays near a few tensors; `progress`
    receives `ProgressEvent`s. Example:
    ``dcformat.save_file({"fc1.weight": w}, "model.dcf", policy=dcformat.Policy(prune=0.9))``
    """
    from . import encoder

    tensors = _arrays(tensors)
    meta = encoder.check_inputs(tensors, metadata)
    policy = _resolve(tensors, policy, metadata, progress)
    sources = [(name, (lambda v=value: v)) for name, value in tensors.items()]
    sizes = {name: int(getattr(value, "nbytes", 0)) for name, value in tensors.items()}
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    atomic_write(path, lambda f: encoder.write_file(f, sources, policy, meta, directory=directory, threads=threads,
                                                    progress=progress, sizes=sizes))


def load(data: bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS,
         threads: int | None = None) -> dict[str, np.ndarray]:
    """Decode every tensor of a dcformat file held in memory (`threads` as in `load_file`)."""
    with SafeOpen(data, limits=limits) as f:
        return _decode_all(f, threads)


def load_file(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS,
              threads: int | None = None) -> dict[str, np.ndarray]:
    """Decode every tensor of the dcformat file at `path` (name -> numpy array).

    Decoding runs on `threads` threads (default: one per CPU; 1 decodes on the calling thread only):
    tensors side by side, largest first, and a large tensor in pieces on the threads left idle.
    """
    from .shards import ShardedOpen, resolve

    kind, target = resolve(path)
    if kind == "index":
        with ShardedOpen(target, limits=limits) as model:
            out: dict[str, np.ndarray] = {}
            try:
                for shard in model.shards:
                    out.update(_decode_all(model.shard(shard), threads))
            except BaseException:
                out.clear()  # a failed load keeps no shard's tensors alive through the traceback
                raise
            return {name: out[name] for name in model.keys()}
    with SafeOpen(target, limits=limits) as f:
        return _decode_all(f, threads)


def load_into(source: Any, arrays: Mapping[str, np.ndarray], *, strict: bool = True,
              threads: int | None = None, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Decode tensors into arrays the caller owns: arrays[name] is filled in place for each name.

    `source`: a path (.dcf, index file or folder) or an open reader. Each array must be writable,
    C-contiguous, of the tensor's dtype and size. With `strict`, the names must match the file's
    exactly; otherwise only the common names are filled. Returns the names filled. If decoding a
    tensor fails its array's contents are unspecified (the file is untouched; the error is raised).
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, limits=limits) as f:
            return load_into(f, arrays, strict=strict, threads=threads)
    names = [n for n in source.keys() if n in arrays]
    if strict:
        missing = [n for n in source.keys() if n not in arrays]
        unexpected = [n for n in arrays if n not in source]
        if missing or unexpected:
            raise DCFError(f"load_into: names differ: {len(missing)} tensors of the file have no array "
                           f"({missing[:3]}), {len(unexpected)} arrays have no tensor ({unexpected[:3]})")
    budget = _budget(threads)
    for name in names:
        source._decode(name, budget, out=arrays[name])
        release = getattr(source, "release", None)
        if release is not None:
            release(name)
    return names


def _decode_all(f: "SafeOpen", threads: int | None) -> dict[str, np.ndarray]:
    from .pool import run

    from .codec import PIECE_BYTES

    budget = _budget(threads)
    names = f.keys()
    sizes = {name: f.layout(name).nbytes for name in names}
    total = sum(sizes.values())
    if total <= PIECE_BYTES:  # a model smaller than one piece decodes faster on this thread alone
        budget = _budget(1)
    if not budget.parallel or len(names) <= 1:
        return {name: f._decode(name, budget) for name in names}
    f._table_cache()  # create the one table cache before the threads share it
    whole = _budget(1)

    def decode(name: str) -> np.ndarray | DCFError:
        # Tensors run side by side; one that is more than half a thread's share of the work is also
        # cut into pieces, so that it does not keep one thread busy after the others are done.
        # (Pieces cost a little: smaller tensors are decoded whole, each on one thread. Also cutting
        # the last tensors to start, so that the threads finish together, measured no faster.)
        split = sizes[name] * 2 * budget.threads > total
        try:
            return f._decode(name, budget if split else whole)
        except DCFError as e:  # raised below for the first bad tensor in file order, as one thread would
            return e

    # Largest first, so that a big tensor does not start last while the other threads sit idle.
    order = sorted(names, key=lambda n: -sizes[n])
    decoded = dict(zip(order, run([lambda n=n: decode(n) for n in order], budget)))
    error = next((decoded[name] for name in names if isinstance(decoded[name], DCFError)), None)
    if error is not None:
        # The error's traceback will hold this frame: drop what was decoded, or it would live as long
        # as the error (and, through the cycle error -> frame -> decoded -> error, until a gc pass).
        decoded.clear()
        try:
            raise error
        finally:
            error = None
    return {name: decoded[name] for name in names}


def _budget(threads: int | None):
    """The thread budget of one call: `threads` threads (None: one per CPU), the caller included."""
    from .pool import Budget

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise DCFError(f"threads must be a positive integer or None, not {threads!r}")
    return Budget(threads)


class SafeOpen:
    """A lazy reader over a memory-mapped dcformat file; use as a context manager.

    The header is validated on open; a tensor is decoded (and its sections' CRCs checked) only when
    asked for. The map stays valid even if the file is replaced on disk while open.

    >>> with dcformat.open("model.dcf") as f:          # doctest: +SKIP
    ...     w = f.get_tensor("fc1.weight")
    """

    def __init__(self, source: str | os.PathLike | bytes | bytearray | memoryview, *, limits: Limits = DEFAULT_LIMITS):
        self._file = None
        self._map = None
        self._closed = False
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._buf: Any = memoryview(source).cast("B")
        else:
            self._file = builtins.open(source, "rb")
            try:
                size = os.fstat(self._file.fileno()).st_size
                if size:
                    self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
                    self._buf = memoryview(self._map)
                else:
                    self._buf = memoryview(b"")
            except BaseException:
                self._file.close()
                raise
        try:
            self.header: Header = parse_header(self._buf, len(self._buf), limits)
        except BaseException:
            self.close()
            raise
        self._tables = None

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> "SafeOpen":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the file. Arrays returned with copy=False must not be used afterwards."""
        self._closed = True
        buf, self._buf = getattr(self, "_buf", None), memoryview(b"")
        if isinstance(buf, memoryview):
            buf.release()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # zero-copy arrays still reference the map; it closes when they are freed
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- the header ------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return [t.name for t in self.header.tensors]

    def __contains__(self, name: object) -> bool:
        return name in self.header.by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.header.tensors)

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.header.metadata)

    def layout(self, name: str) -> TensorInfo:
        """The stored layout of one tensor: encoding, sections, streams, widths (see `inspect`)."""
        return self._info(name)

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.header.by_name[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in this file") from None

    def _table_cache(self):
        from .codec import TableCache

        if self._tables is None:
            self._tables = TableCache(self.header.tables)
        return self._tables

    # -- decoding --------------------------------------------------------------------------
    def get_tensor(self, name: str, *, copy: bool = True, threads: int | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
        """Decode one tensor to a numpy array. copy=False returns raw tensors as read-only views of the map.

        A large tensor is decoded in pieces on `threads` threads (default: one per CPU; 1: on the
        calling thread only). `out`: a writable C-contiguous array of the tensor's dtype and size to
        decode into (and return) instead of a new one; if decoding fails, its contents are
        unspecified (the file is untouched and the error is raised).
        """
        return self._decode(name, _budget(threads), copy=copy, out=out)

    def _decode(self, name: str, budget, *, copy: bool = True, out: np.ndarray | None = None,
                bits: bool = False) -> np.ndarray:
        from .codec import check_out, decode_tensor

        info = self._info(name)
        self._check_readable(name)
        if out is not None:  # with `bits`, a view of other memory (a torch bfloat16 tensor as int16)
            check_out(out, info, bits=bits)
        return decode_tensor(self._buf, info, self._table_cache(), copy=copy, budget=budget, out=out)

    def release(self, name: str) -> None:
        """Drop a tensor's mapped pages from this process's memory after use (see safetensors.release_range)."""
        if self._map is None or self._closed:
            return
        from .interop.safetensors import release_range

        sections = self._info(name).sections()
        if sections:
            lo = min(s.offset for _, s in sections)
            hi = max(s.end for _, s in sections)
            release_range(self._map, lo, hi - lo)

    def get_sparse(self, name: str):
        """A sparse tensor's CSR/CSC arrays, codes and codebook, without densifying (a `SparseTensor`)."""
        from .codec import decode_sparse

        info = self._info(name)
        if info.encoding != K.SPARSE:
            raise DCFError(f"tensor {name!r} is stored {info.encoding}, not sparse", tensor=name)
        self._check_readable(name)
        return decode_sparse(self._buf, info, self._table_cache())

    def _check_readable(self, name: str) -> None:
        """Refuse to read after close, or from the map of a file another program truncated in place.

        Reading mapped pages past the new end of a file kills the process with SIGBUS; a file replaced
        by a rename (as dcformat writes) keeps its old length here and is never affected.
        """
        if self._closed:
            raise DCFError("the file is closed", tensor=name)
        if self._map is None:  # bytes in memory, or an empty file: nothing can shrink under us
            return
        size = os.fstat(self._file.fileno()).st_size
        if size < self.header.file_length:
            raise TruncatedError(f"the file shrank to {size} bytes since it was opened ({self.header.file_length}): "
                                 "another program overwrote it in place", tensor=name)


def open(source: str | os.PathLike | bytes, *, limits: Limits = DEFAULT_LIMITS):  # noqa: A001
    """Open a model for lazy reading: a .dcf file (a path, or the file's bytes), an index file
    (`model.dcf.index.json`) or a model folder; tensors are decoded one at a time when asked for."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return SafeOpen(source, limits=limits)
    from .shards import ShardedOpen, resolve

    kind, target = resolve(source)
    return ShardedOpen(target, limits=limits) if kind == "index" else SafeOpen(target, limits=limits)


def compress(tensors: Mapping[str, Any], *, policy: Policy | None = None) -> dict[str, np.ndarray]:
    """The tensors exactly as a file saved with `policy` decodes them (pruned, quantized), without writing.

    Useful to measure the accuracy cost of a policy before saving.
    """
    from . import encoder

    tensors = _arrays(tensors)
    encoder.check_inputs(tensors, None)
    return encoder.decoded(tensors, _resolve(tensors, policy, None))
