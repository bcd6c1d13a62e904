"""The tensor files users have, by extension (.safetensors, .pt/.pth/.bin, .npz, .dcf), read lazily
one tensor at a time as a `TensorSource`, and written tensor by tensor.

Each source reads its format the way its own ecosystem does: safetensors memory-mapped (our own
reader: no package, no torch), torch checkpoints with weights_only=True and mmap=True, npz member by
member with allow_pickle=False, dcformat files lazily. Errors name the file.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..container import atomic_write
from ..errors import DCFError
from .torch import to_numpy

READABLE = (".safetensors", ".pt", ".pth", ".bin", ".npz", ".dcf")
WRITABLE = (".safetensors", ".npz", ".pt", ".pth", ".dcf")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor known before it is read: name, numpy dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass
class TensorSource:
    """The tensors of one input file, read one at a time: `get(name)` returns a numpy array (a view
    of a memory map where the format allows). `dropped` says what was left out and why; `key` which
    checkpoint entry held the state dict."""

    path: str
    specs: dict[str, TensorSpec]
    getter: Callable[[str], np.ndarray]
    metadata: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    key: str | None = None
    closer: Callable[[], None] | None = None
    releaser: Callable[[str], None] | None = None

    def keys(self) -> list[str]:
        return list(self.specs)

    def get(self, name: str) -> np.ndarray:
        return self.getter(name)

    def release(self, name: str) -> None:
        """Tell the source a tensor has been used (a memory-mapped one drops its pages)."""
        if self.releaser is not None:
            self.releaser(name)

    def lazy(self, name: str) -> "LazyTensor":
        return LazyTensor(self, name)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs.values())

    def close(self) -> None:
        if self.closer is not None:
            self.closer()
            self.closer = None

    def __enter__(self) -> "TensorSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LazyTensor:
    """One tensor of a source, read when called; `release()` once it has been used (encoder.Source)."""

    def __init__(self, source: TensorSource, name: str):
        self.source, self.name = source, name

    def __call__(self) -> np.ndarray:
        return self.source.get(self.name)

    def release(self) -> None:
        self.source.release(self.name)


def extension(path: str | os.PathLike) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()


def open_source(path: str | os.PathLike) -> TensorSource:
    """A lazy source over the tensors of one file, chosen by its extension."""
    path = os.fspath(path)
    ext = extension(path)
    if not os.path.exists(path):  # the OSError every tool gives, which the CLI prints as one line
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    if ext == ".safetensors":
        return _safetensors_source(path)
    if ext in (".pt", ".pth", ".bin"):
        return _torch_source(path)
    if ext == ".npz":
        return _npz_source(path)
    if ext == ".dcf" or os.path.isdir(path) or ext == ".json":
        return _dcf_source(path)
    raise DCFError(f"{path}: unknown input type {ext!r} (expected {', '.join(READABLE)} or a model folder)")


def _safetensors_source(path: str) -> TensorSource:
    from .safetensors import SafetensorsReader

    r = SafetensorsReader(path)
    specs = {n: TensorSpec(n, r.entries[n].dtype, r.entries[n].shape, r.entries[n].nbytes) for n in r.keys()}
    return TensorSource(path, specs, r.get, dict(r.metadata), closer=r.close, releaser=r.release)


def _torch_source(path: str) -> TensorSource:
    from .torch import read_checkpoint

    ck = read_checkpoint(path)
    specs = {}
    for name, t in ck.tensors.items():
        dtype = str(t.dtype).removeprefix("torch.")
        specs[name] = TensorSpec(name, dtype, tuple(t.shape), t.numel() * t.element_size())
    tensors = ck.tensors

    def get(name: str) -> np.ndarray:
        return to_numpy(tensors[name])

    return TensorSource(path, specs, get, {}, dict(ck.dropped), ck.key, closer=tensors.clear)


def _npz_source(path: str) -> TensorSource:
    import zipfile

    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DCFError(f"{path}: not a readable .npz file: {e}") from None
    if not hasattr(z, "files"):  # np.load of a .npy renamed .npz
        raise DCFError(f"{path}: not an .npz archive (a single array?)")
    specs = {}
    try:
        for name in z.files:
            member = z.zip.open(name + ".npy") if name + ".npy" in z.zip.namelist() else z.zip.open(name)
            with member:
                version = np.lib.format.read_magic(member)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(member)
            if dtype.hasobject:
                raise DCFError(f"{path}: Object arrays cannot be loaded when allow_pickle=False (array {name!r} "
                               "holds Python objects, which dcformat never unpickles)")
            specs[name] = TensorSpec(name, dtype.name, tuple(shape), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    except DCFError:
        z.close()
        raise
    except Exception as e:  # noqa: BLE001 - a damaged member
        z.close()
        raise DCFError(f"{path}: not a readable .npz file: {e}") from None

    def get(name: str) -> np.ndarray:
        try:
            return z[name]
        except ValueError as e:
            raise DCFError(f"{path}: array {name!r}: {e}") from None

    return TensorSource(path, specs, get, {}, closer=z.close)


def _dcf_source(path: str) -> TensorSource:
    from ..api import open as dcf_open

    f = dcf_open(path)
    specs = {}
    for name in f.keys():
        info = f.layout(name)
        specs[name] = TensorSpec(name, info.dtype, tuple(info.shape), info.nbytes)
    return TensorSource(path, specs, f.get_tensor, dict(f.metadata), closer=f.close, releaser=f.release)


# ---------------------------------------------------------------------------------------------
# Whole files, as before (the CLI's and users' simple path)


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a .npz, .safetensors, .pt/.pth/.bin or .dcf file (or model folder) into memory."""
    with open_source(path) as src:
        return {name: np.array(src.get(name), copy=True) for name in src.keys()}


def _write_npz(f: Any, tensors: Mapping[str, Any] | None, specs: list[TensorSpec] | None = None,
               fill: Callable[[TensorSpec], np.ndarray] | None = None) -> None:
    """An uncompressed .npz, like np.savez, but any tensor name works (np.savez reserves 'file');
    tensors given as arrays, or as specs and a `fill(spec)` called one at a time."""
    import zipfile

    if specs is None:
        arrays = {k: np.asarray(v) for k, v in tensors.items()}
        specs = [TensorSpec(k, a.dtype.name, a.shape, a.nbytes) for k, a in arrays.items()]
        fill = lambda s: arrays[s.name]  # noqa: E731
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for spec in specs:
            a = fill(spec)
            with z.open(spec.name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(a), allow_pickle=False)
            del a


def _check_npz_dtype(path: str, name: str, dtype: str) -> None:
    if dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        raise DCFError(f"{path}: .npz cannot hold {dtype} (tensor {name!r}); write .safetensors instead")


def write_tensors(tensors: Mapping[str, np.ndarray], path: str | os.PathLike,
                  metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors to a .npz, .safetensors or .pt file, atomically (.dcf: use dcformat.save_file)."""
    path = os.fspath(path)
    ext = extension(path)
    if ext == ".npz":
        for k, a in tensors.items():
            _check_npz_dtype(path, k, np.asarray(a).dtype.name)
        atomic_write(path, lambda f: _write_npz(f, tensors))
    elif ext == ".safetensors":
        from .safetensors import save_file

        save_file(tensors, path, metadata)
    elif ext in (".pt", ".pth"):
        from .torch import save_checkpoint

        save_checkpoint(tensors, path)
    else:
        raise DCFError(f"{path}: unknown output type {ext!r} (expected .safetensors, .npz or .pt)")
