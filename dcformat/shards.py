"""Models in several .dcf files: the index file (`model.dcf.index.json`, shaped like safetensors' and
transformers' `model.safetensors.index.json`) and one lazy reader over all shards.

An index is a JSON object {"metadata": {"total_size": <dense bytes of all tensors>, ...},
"weight_map": {tensor name: shard file name}}; shard names are plain file names in the index's
folder. A shard is opened only when one of its tensors is asked for, so a process that reads a few
tensors touches only their shards.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import numpy as np

from .container import DEFAULT_LIMITS, Limits, TensorInfo
from .errors import DCFError, FormatError

INDEX_NAME = "model.dcf.index.json"  # the index file of a sharded model folder
SINGLE_NAME = "model.dcf"  # the one file of an unsharded model folder
MAX_INDEX_BYTES = 100_000_000


class ShardIndexError(FormatError):
    """An index file is malformed: not JSON, wrong keys, or a shard name outside its folder."""


def shard_name(i: int, n: int, ext: str = ".dcf", prefix: str = "model") -> str:
    """The i-th (from 1) of n shard names, as transformers names them: model-00001-of-00003.dcf."""
    return f"{prefix}-{i:05d}-of-{n:05d}{ext}"


def read_index(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Any]]:
    """(weight_map, metadata) of an index file, validated: every shard a plain file name."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size > MAX_INDEX_BYTES:
        raise ShardIndexError(f"{path}: index file of {size} bytes is larger than the limit of {MAX_INDEX_BYTES}")
    with open(path, "rb") as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardIndexError(f"{path}: not a valid index file (JSON): {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise ShardIndexError(f"{path}: an index file needs a \"weight_map\" object of tensor names to shard files")
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ShardIndexError(f"{path}: \"metadata\" must be an object")
    weight_map = doc["weight_map"]
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard or shard in (".", ".."):
            raise ShardIndexError(f"{path}: tensor {name!r}: shard {shard!r} is not a file name in the index's folder")
    return weight_map, metadata


def write_index(path: str | os.PathLike, weight_map: dict[str, str], total_size: int,
                metadata: dict[str, Any] | None = None) -> None:
    """Write an index file atomically: {"metadata": {"total_size": ..., **metadata}, "weight_map": ...}."""
    from .container import atomic_write

    doc = {"metadata": {**(metadata or {}), "total_size": int(total_size)}, "weight_map": weight_map}
    text = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(text))


def resolve(path: str | os.PathLike) -> tuple[str, str | None]:
    """("file", path) for a .dcf file; ("index", index path) for an index file or a folder holding one.

    A folder without an index must hold `model.dcf` (or exactly one .dcf file).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        index = os.path.join(path, INDEX_NAME)
        if os.path.isfile(index):
            return "index", index
        single = os.path.join(path, SINGLE_NAME)
        if os.path.isfile(single):
            return "file", single
        found = sorted(n for n in os.listdir(path) if n.endswith(".dcf") and os.path.isfile(os.path.join(path, n)))
        if len(found) == 1:
            return "file", os.path.join(path, found[0])
        raise DCFError(f"{path}: a model folder needs {INDEX_NAME} or {SINGLE_NAME}"
                       + (f" (it holds {len(found)} .dcf files and no index)" if found else " (it holds no .dcf file)"))
    if path.endswith(".json"):
        return "index", path
    return "file", path


class ShardedOpen:
    """A lazy reader over the shards of an index: the same calls as `SafeOpen`, tensor by tensor."""

    def __init__(self, index_path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS):
        self.path = os.fspath(index_path)
        self.folder = os.path.dirname(os.path.abspath(self.path))
        self.weight_map, self.index_metadata = read_index(self.path)
        self.limits = limits
        self._open: dict[str, Any] = {}
        self._closed = False
        self.shards = list(dict.fromkeys(self.weight_map.values()))  # in first-use order
        for shard in self.shards:
            if not os.path.isfile(os.path.join(self.folder, shard)):
                raise DCFError(f"{self.path}: shard {shard!r} is missing from {self.folder}")

    def __enter__(self) -> "ShardedOpen":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        for f in self._open.values():
            f.close()
        self._open.clear()

    def shard(self, shard: str):
        """The open reader of one shard (opened, and its header checked, on first use)."""
        from .api import SafeOpen

        if self._closed:
            raise DCFError(f"{self.path}: the model is closed")
        if shard not in self._open:
            f = SafeOpen(os.path.join(self.folder, shard), limits=self.limits)
            missing = [n for n, s in self.weight_map.items() if s == shard and n not in f]
            if missing:
                f.close()
                raise DCFError(f"{self.path}: the index puts tensor {missing[0]!r} in {shard}, which does not hold it")
            self._open[shard] = f
        return self._open[shard]

    def _shard_of(self, name: str):
        try:
            return self.shard(self.weight_map[name])
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.path}") from None

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name: object) -> bool:
        return name in self.weight_map

    def __iter__(self) -> Iterator[str]:
        return iter(self.weight_map)

    def __len__(self) -> int:
        return len(self.weight_map)

    @property
    def metadata(self) -> dict[str, str]:
        """The file metadata of the first shard (every shard dcformat writes holds the same)."""
        return self.shard(self.shards[0]).metadata if self.shards else {}

    def layout(self, name: str) -> TensorInfo:
        return self._shard_of(name).layout(name)

    def get_tensor(self, name: str, *, copy: bool = True, threads: int | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
        return self._shard_of(name).get_tensor(name, copy=copy, threads=threads, out=out)

    def _decode(self, name: str, budget, **kwargs: Any) -> np.ndarray:
        return self._shard_of(name)._decode(name, budget, **kwargs)

    def get_sparse(self, name: str):
        return self._shard_of(name).get_sparse(name)

    def release(self, name: str) -> None:
        self._shard_of(name).release(name)

    def shard_names(self, shard: str) -> list[str]:
        """The tensors of one shard, in the index's order."""
        return [n for n, s in self.weight_map.items() if s == shard]
