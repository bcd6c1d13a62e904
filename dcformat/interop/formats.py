"""Reading and writing the tensor files users have, by extension: .npz, .safetensors, .pt/.pth/.bin, .dcf."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ..container import atomic_write
from ..errors import DCFError
from .torch import to_numpy, to_torch


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the tensors of a .npz, .safetensors or .pt/.pth file (PyTorch files with weights_only=True)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if ext == ".safetensors":
        return _read_safetensors(path)
    if ext in (".pt", ".pth", ".bin"):
        from .torch import read_state_dict

        return read_state_dict(path)
    if ext == ".dcf":
        from ..api import load_file

        return load_file(path)
    raise DCFError(f"{path}: unknown input type {ext!r} (expected .npz, .safetensors, .pt, .pth or .dcf)")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(path, framework="numpy") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
        return out
    except (KeyError, TypeError, ValueError):  # safetensors' numpy side has no bfloat16: go through torch
        pass
    try:
        import torch  # noqa: F401
    except ImportError:
        raise DCFError(f"{path}: reading bfloat16 tensors from safetensors needs torch installed") from None
    out = {}
    with safe_open(path, framework="pt") as f:
        for k in f.keys():
            out[k] = to_numpy(f.get_tensor(k))
    return out


def _write_npz(f: Any, tensors: Mapping[str, np.ndarray]) -> None:
    """An uncompressed .npz, like np.savez, but any tensor name works (np.savez reserves 'file')."""
    import zipfile

    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, a in tensors.items():
            with z.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(a), allow_pickle=False)


def write_tensors(tensors: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write tensors to a .npz or .safetensors file, atomically."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        bf16 = [k for k, a in tensors.items() if a.dtype.name == "bfloat16"]
        if bf16:
            raise DCFError(f"{path}: .npz cannot hold bfloat16 (tensor {bf16[0]!r}); write .safetensors instead")
        atomic_write(path, lambda f: _write_npz(f, tensors))
    elif ext == ".safetensors":
        if any(a.dtype.name == "bfloat16" for a in tensors.values()):
            from safetensors.torch import save as save_pt

            data = save_pt({k: to_torch(v) for k, v in tensors.items()})
        else:
            from safetensors.numpy import save as save_np

            data = save_np({k: np.array(v, order="C") for k, v in tensors.items()})
        atomic_write(path, lambda f: f.write(data))
    else:
        raise DCFError(f"{path}: unknown output type {ext!r} (expected .npz or .safetensors)")
