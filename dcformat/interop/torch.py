"""PyTorch: tensors to numpy and back (bfloat16 and float8 kept as their bit patterns), checkpoints read
the way torch reads them (weights_only=True, memory-mapped), models filled in place from a .dcf.

torch is imported only when one of these functions needs it; without it they raise a one-line
MissingExtraError naming the extra to install.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..container import DEFAULT_LIMITS, Limits
from ..errors import DCFError, needs
from ..policy import Policy

# Keys under which training scripts put the state dict of a checkpoint, most common first.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params",
                   "model_ema", "ema", "params_ema", "generator")
_ML_DTYPE_OF_TORCH = {"bfloat16": "bfloat16", "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2"}


def _torch(what: str = "this") -> Any:
    return needs("torch", "torch", what)


def is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "dtype") and hasattr(value, "shape")


def to_numpy(value: Any) -> Any:
    """A torch tensor as a numpy array, sharing memory where it can (CPU, contiguous); bfloat16 and
    float8 become ml_dtypes' types with the same bits. Other values are returned as they are."""
    if not is_torch_tensor(value):
        return value
    torch = _torch()
    t = value.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    name = str(t.dtype).removeprefix("torch.")
    if name in _ML_DTYPE_OF_TORCH:
        import ml_dtypes

        bits = torch.int16 if t.element_size() == 2 else torch.uint8
        return t.view(bits).numpy().view(getattr(ml_dtypes, _ML_DTYPE_OF_TORCH[name]))
    return t.numpy()


def torch_dtype(numpy_name: str) -> Any:
    """The torch dtype of a numpy / spec dtype name."""
    torch = _torch()
    dtype = getattr(torch, numpy_name, None)
    if not isinstance(dtype, torch.dtype):
        raise DCFError(f"torch has no dtype for {numpy_name}")
    return dtype


def bits_view(t: Any) -> np.ndarray:
    """A CPU contiguous torch tensor's memory as a numpy array of unsigned integers of its item size."""
    torch = _torch()
    size = t.element_size()
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
    return t.view(bits).numpy().view(np.dtype(f"<u{size}") if size > 1 else np.uint8)


def to_torch(a: np.ndarray) -> Any:
    """A torch tensor holding a copy of the numpy array `a`."""
    torch = _torch()
    t = torch.empty(tuple(a.shape), dtype=torch_dtype(np.dtype(a.dtype).name))
    if a.size:
        bits_view(t).reshape(-1)[:] = np.ascontiguousarray(a).reshape(-1).view(bits_view(t).dtype)
    return t


def state_dict_of(obj: Any) -> Mapping[str, Any]:
    """A module's state dict, or the mapping itself."""
    if isinstance(obj, Mapping):
        return obj
    if callable(getattr(obj, "state_dict", None)):
        return obj.state_dict()
    raise DCFError(f"expected a torch module or a state dict (a mapping of names to tensors), not {type(obj).__name__}")


def save_torch(model: Any, path: str | os.PathLike, *, policy: Policy | None = None,
               metadata: Mapping[str, str] | None = None, threads: int | None = None) -> None:
    """Save a torch module (its state dict) or a state dict (tensors on any device) as a dcformat file."""
    from ..api import save_file

    sd = state_dict_of(model)
    save_file({k: to_numpy(v) for k, v in sd.items() if is_torch_tensor(v)}, path, policy=policy, metadata=metadata,
              threads=threads)


def load_torch(path: str | os.PathLike, *, device: Any = None, map_location: Any = None,
               limits: Limits = DEFAULT_LIMITS, threads: int | None = None) -> dict[str, Any]:
    """Load a .dcf file, index or folder as a dict of torch tensors on `device` (or `map_location`, as
    torch.load names it; default CPU). Each tensor is decoded straight into its torch tensor."""
    from ..api import open as dcf_open

    torch = _torch("load_torch")
    device = device if device is not None else map_location
    out = {}
    with dcf_open(path, limits=limits) as f:
        for name in f.keys():
            info = f.layout(name)
            t = torch.empty(tuple(info.shape), dtype=torch_dtype(info.dtype))
            if t.numel():
                f._decode(name, _budget(threads), out=bits_view(t), bits=True)
                f.release(name)
            out[name] = t if device is None else t.to(device)
    return out


def _budget(threads: int | None):
    from ..api import _budget as budget

    return budget(threads)


@dataclass
class LoadResult:
    """What `load_into` filled, and the names that did not match."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model


def load_into(model: Any, path: Any, *, strict: bool = True, threads: int | None = None,
              limits: Limits = DEFAULT_LIMITS) -> LoadResult:
    """Fill a torch module (or a state dict of tensors) in place from a .dcf file, index or folder,
    one tensor at a time: one copy of the model in memory, not two.

    A CPU tensor of the file's dtype is decoded straight into its memory; any other (another device,
    dtype, or a non-contiguous view) through one temporary tensor and `copy_`. With `strict` the names
    must match exactly (as `load_state_dict`). On a decoding error the tensor being filled holds
    unspecified values; the file is untouched and the error is raised.
    """
    from ..api import open as dcf_open

    torch = _torch("load_into")
    targets = state_dict_of(model)
    own = not isinstance(path, (str, os.PathLike))
    f = path if own else dcf_open(path, limits=limits)
    try:
        names = f.keys()
        result = LoadResult(missing=[n for n in targets if n not in f], unexpected=[n for n in names if n not in targets])
        if strict and (result.missing or result.unexpected):
            raise DCFError(f"load_into: names differ: missing from the file {result.missing[:5]} "
                           f"({len(result.missing)}), not in the model {result.unexpected[:5]} ({len(result.unexpected)})")
        budget = _budget(threads)
        with torch.no_grad():
            for name in names:
                if name not in targets:
                    continue
                target, info = targets[name], f.layout(name)
                if tuple(target.shape) != tuple(info.shape):
                    raise DCFError(f"load_into: the model's tensor is {list(target.shape)}, the file's "
                                   f"{list(info.shape)}", tensor=name)
                direct = (target.device.type == "cpu" and target.is_contiguous() and
                          str(target.dtype).removeprefix("torch.") == info.dtype)
                if direct:
                    if target.numel():
                        f._decode(name, budget, out=bits_view(target), bits=True)
                else:
                    tmp = torch.empty(tuple(info.shape), dtype=torch_dtype(info.dtype))
                    if tmp.numel():
                        f._decode(name, budget, out=bits_view(tmp), bits=True)
                    target.copy_(tmp)
                    del tmp
                f.release(name)  # the file's pages of this tensor are no longer needed in memory
                result.loaded.append(name)
    finally:
        if not own:
            f.close()
    return result


# ---------------------------------------------------------------------------------------------
# Reading checkpoints (.pt, .pth, .bin)


@dataclass
class Checkpoint:
    """The tensors of a torch checkpoint file, with what was left out and where they were found."""

    tensors: dict[str, Any]  # name -> torch tensor (memory-mapped where torch allows)
    key: str | None = None  # the checkpoint key holding the state dict, None for a bare state dict
    dropped: dict[str, str] = field(default_factory=dict)  # name -> why it was not kept


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a .pt/.pth/.bin file as torch does for weights: weights_only=True, mmap=True where the file
    allows, then find the state dict (a bare one, or under a key such as "model" or "state_dict")."""
    path = os.fspath(path)
    torch = needs("torch", "torch", f"reading {os.path.splitext(path)[1] or 'a torch file'}")
    obj = None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types; each becomes one line below
        error = e
        if "mmap" in str(e).lower() or "zipfile" in str(e).lower() or "legacy" in str(e).lower():
            try:  # the legacy (non-zip) format cannot be memory-mapped
                obj, error = torch.load(path, map_location="cpu", weights_only=True), None
            except Exception as e2:  # noqa: BLE001
                error = e2
        if error is not None:
            raise _checkpoint_error(path, error) from None
    return find_state_dict(obj, path)


def _checkpoint_error(path: str, e: Exception) -> DCFError:
    text = str(e)
    if "Unsupported global: GLOBAL " in text:
        cls = text.split("Unsupported global: GLOBAL ", 1)[1].split()[0]
        return DCFError(f"{path}: holds a pickled {cls} object, not a state dict (PyTorch files are read with "
                        "weights_only=True): save model.state_dict() instead")
    if "Unsupported global" in text or "GLOBAL" in text:
        return DCFError(f"{path}: holds pickled Python objects, not just tensors (PyTorch files are read with "
                        "weights_only=True): save model.state_dict() instead")
    detail = next((line.strip() for line in text.splitlines() if line.strip().startswith(("Unsupported", "invalid"))),
                  text.strip().splitlines()[0] if text.strip() else type(e).__name__)
    return DCFError(f"{path}: not a readable torch file: {detail[:200]}")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(is_torch_tensor(v) for v in obj.values())


def find_state_dict(obj: Any, path: str) -> Checkpoint:
    """The state dict inside a loaded checkpoint: the object itself when its values are tensors,
    else the first of STATE_DICT_KEYS holding one (or the only key that does)."""
    if is_torch_tensor(obj):
        raise DCFError(f"{path}: holds a single tensor, not a state dict; save it as {{'name': tensor}}")
    if not isinstance(obj, Mapping):
        raise DCFError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    key = None
    top_tensors = [k for k, v in obj.items() if is_torch_tensor(v)]
    candidates = [k for k, v in obj.items() if isinstance(k, str) and _is_state_dict(v)]
    dropped: dict[str, str] = {}
    if len(top_tensors) * 2 >= len(obj) or not candidates:
        sd = obj
    else:
        key = next((k for k in STATE_DICT_KEYS if k in candidates), candidates[0] if len(candidates) == 1 else None)
        if key is None:
            raise DCFError(f"{path}: several entries hold tensors ({', '.join(map(repr, candidates[:5]))}) and none "
                           f"is a usual state dict key ({', '.join(STATE_DICT_KEYS[:4])}, ...)")
        sd = obj[key]
        for k, v in obj.items():
            if k != key:
                dropped[str(k)] = "not part of the state dict" if not is_torch_tensor(v) else "tensor outside the state dict"
    tensors = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            dropped[str(k)] = "name is not a string"
        elif is_torch_tensor(v):
            tensors[k] = v
        else:
            dropped[k] = f"not a tensor ({type(v).__name__})"
    if not tensors:
        raise DCFError(f"{path}: no tensors found" + (f" under {key!r}" if key else "")
                       + (f" ({len(dropped)} non-tensor entries)" if dropped else ""))
    return Checkpoint(tensors, key, dropped)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a .pt/.pth/.bin file as numpy arrays (see `read_checkpoint`)."""
    return {k: to_numpy(v) for k, v in read_checkpoint(path).tensors.items()}


def save_checkpoint(tensors: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write numpy arrays as a torch state dict file (.pt), atomically."""
    from ..container import atomic_write

    torch = _torch("writing .pt")
    sd = {k: to_torch(np.asarray(v)) for k, v in tensors.items()}
    atomic_write(path, lambda f: torch.save(sd, f))
