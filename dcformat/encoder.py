"""Tensors to an encoded file in memory: input checks, the policy's plans, drafting and coding.

The layer under `api` and `allocation`: both encode through here, and nothing here knows about
files on disk, frameworks or size targets (a target size is resolved into a step by
`allocation.fit_size` before it reaches this module).
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np

from . import constants as K
from .container import EncodedTensor, write_stream
from .errors import EncodeError
from .policy import Policy
from .progress import Progress, ProgressEvent


def check_inputs(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Check the names and metadata a file will hold; return the metadata as a plain dict."""
    if not isinstance(tensors, Mapping):
        raise EncodeError(f"tensors must be a mapping of names to arrays, not {type(tensors).__name__}")
    for name in tensors:
        if not isinstance(name, str) or not name or len(utf8(name, "tensor name")) > K.MAX_NAME_BYTES:
            raise EncodeError(f"tensor name {name!r} must be a non-empty string of at most {K.MAX_NAME_BYTES} UTF-8 bytes")
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise EncodeError(f"metadata must map strings to strings; got {k!r}: {type(v).__name__}")
        utf8(k, "metadata key")
        utf8(v, "metadata value")
    return meta


def utf8(text: str, what: str) -> bytes:
    """The UTF-8 bytes of a header string; lone surrogates cannot be written (spec §3)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodeError(f"{what} {text!r} is not valid Unicode text (it has a lone surrogate)") from None


def encode(tensors: Mapping[str, np.ndarray], policy: Policy, metadata: Mapping[str, str] | None,
           progress: Progress | None = None) -> tuple[dict[str, str], list[str], list[EncodedTensor]]:
    """(metadata, tables, encoded tensors) of a file holding `tensors` (numpy arrays) under `policy`.

    `policy` must have no target size left (see allocation.fit_size).
    """
    from . import codec  # numba-backed; imported here so that `import dcformat` stays light

    if policy.target_size is not None:
        raise EncodeError("encoder: resolve the policy's target_size first (allocation.fit_size)")
    meta = check_inputs(tensors, metadata)
    drafts = []
    total = sum(np.asarray(value).nbytes for value in tensors.values()) if progress is not None else 0
    done = 0
    for name, value in tensors.items():
        array = np.asarray(value)
        if progress is not None:  # before, so that a bar names the tensor being coded
            progress(ProgressEvent("compress", done, total, tensor=name))
        drafts.append(codec.draft_tensor(name, value, policy.plan(name, array), policy.block_size))
        done += array.nbytes
        if progress is not None:
            progress(ProgressEvent("compress", done, total, tensor=name))
    cost = K.HUFFMAN_ZLIB_COST if policy.compact_header else K.HUFFMAN_JSON_COST
    tables, encoded = codec.assemble(drafts, policy.huffman, policy.block_size, header_cost=cost)
    return meta, tables, encoded


def encode_bytes(tensors: Mapping[str, np.ndarray], policy: Policy, metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes of the file `encode` describes."""
    meta, tables, encoded = encode(tensors, policy, metadata)
    out = io.BytesIO()
    write_stream(out, meta, tables, encoded, compact_header=policy.compact_header)
    return out.getvalue()


def decoded(tensors: Mapping[str, np.ndarray], policy: Policy) -> dict[str, np.ndarray]:
    """The tensors exactly as a file encoded with `policy` decodes them, without coding any stream."""
    from . import codec

    check_inputs(tensors, None)
    if policy.target_size is not None:
        raise EncodeError("encoder: resolve the policy's target_size first (allocation.fit_size)")
    out = {}
    for name, value in tensors.items():
        draft = codec.draft_tensor(name, value, policy.plan(name, np.asarray(value)), policy.block_size)
        out[name] = draft.decoded if draft.decoded is not None else np.array(value, copy=True)
    return out
