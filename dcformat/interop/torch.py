"""PyTorch: tensors to numpy and back (bfloat16 kept as its bit pattern), state dicts to and from files."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ..container import DEFAULT_LIMITS, Limits
from ..errors import DCFError
from ..policy import Policy


def to_numpy(value: Any) -> Any:
    """Convert a torch tensor to numpy (bfloat16 kept as its bit pattern); leave others as they are."""
    if type(value).__module__.startswith("torch"):
        import torch

        t = value.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return value


def to_torch(a: np.ndarray) -> Any:
    """A torch tensor holding a copy of the numpy array `a`."""
    import torch

    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    if a.dtype in (np.uint16, np.uint32, np.uint64) and not hasattr(torch, "uint16"):
        raise DCFError(f"torch has no dtype for {a.dtype}")
    return torch.from_numpy(np.array(a, order="C", copy=True))


def save_torch(state_dict: Mapping[str, Any], path: str | os.PathLike, *, policy: Policy | None = None,
               metadata: Mapping[str, str] | None = None) -> None:
    """Save a PyTorch state dict (tensors on any device) as a dcformat file."""
    from ..api import save_file

    save_file({k: to_numpy(v) for k, v in state_dict.items()}, path, policy=policy, metadata=metadata)


def load_torch(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Load a dcformat file as a dict of torch tensors (requires torch)."""
    from ..api import load_file

    return {k: to_torch(v) for k, v in load_file(path, limits=limits).items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a .pt/.pth/.bin file, read with weights_only=True."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise DCFError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    return {k: to_numpy(v) for k, v in obj.items() if hasattr(v, "dtype")}
