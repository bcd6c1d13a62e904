"""The codecs compared: dcformat at several policies and the peers, each as encode/decode of a tensor dict.

Every method turns a dict of float32 arrays into bytes and back, in memory. NNCodec lives in its own
virtual environment (its pins clash with ours) and is run through `nncodec_worker.py`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Callable

import numpy as np

Tensors = dict[str, np.ndarray]


@dataclass
class Method:
    """One codec at one setting. `expected(tensors)` is what decoding must give (None: the input)."""

    name: str
    setting: str
    encode: Callable[[Tensors], bytes]
    decode: Callable[[bytes], Tensors]
    lossless: bool
    expected: Callable[[Tensors], Tensors] | None = None


# ---------------------------------------------------------------------------------------------
# Peers


def safetensors_method() -> Method:
    from safetensors.numpy import load, save

    return Method("safetensors", "raw", lambda t: save(t), lambda b: load(b), True)


def npz_method() -> Method:
    def encode(t: Tensors) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, **t)
        return buf.getvalue()

    def decode(b: bytes) -> Tensors:
        with np.load(io.BytesIO(b)) as z:
            return {k: z[k] for k in z.files}

    return Method("np.savez_compressed", "zlib", encode, decode, True)


def zstd_method(level: int) -> Method:
    """zstd over the safetensors file (header included), single-threaded."""
    import zstandard
    from safetensors.numpy import load, save

    cctx = zstandard.ZstdCompressor(level=level)
    dctx = zstandard.ZstdDecompressor()
    return Method("zstd", f"level {level}", lambda t: cctx.compress(save(t)), lambda b: load(dctx.decompress(b)), True)


def zipnn_method() -> Method:
    """zipnn (byte grouping + Huffman/zstd) over the tensors' float32 bytes, with a JSON index in front."""
    from zipnn import ZipNN

    zpn = ZipNN(input_format="byte", bytearray_dtype="float32")

    def encode(t: Tensors) -> bytes:
        index = json.dumps([[k, list(a.shape)] for k, a in t.items()]).encode()
        raw = b"".join(np.ascontiguousarray(a, dtype=np.float32).tobytes() for a in t.values())
        return len(index).to_bytes(8, "little") + index + bytes(zpn.compress(raw))

    def decode(b: bytes) -> Tensors:
        n = int.from_bytes(b[:8], "little")
        index = json.loads(b[8 : 8 + n])
        flat = np.frombuffer(bytes(zpn.decompress(b[8 + n :])), dtype=np.float32)
        out, pos = {}, 0
        for name, shape in index:
            size = int(np.prod(shape))
            out[name] = flat[pos : pos + size].reshape(shape)
            pos += size
        return out

    return Method("zipnn", "float32", encode, decode, True)


# ---------------------------------------------------------------------------------------------
# dcformat


def _synthetic_policy():
    from dcformat import Policy

    return Policy(fc_bits=6, index_bits="auto")


SYNTHETIC_POLICY = _synthetic_policy()


def dcformat_method(setting: str, policy, lossless: bool) -> Method:
    """dcformat.save / dcformat.load in memory; a lossy policy must decode to dcformat.compress's result."""
    import dcformat

    return Method(
        "dcformat", setting,
        lambda t: dcformat.save(t, policy=policy),
        lambda b: dcformat.load(b),
        lossless,
        None if lossless else (lambda t: dcformat.compress(t, policy=policy)),
    )


def dcformat_methods(dataset: str, quick: bool) -> list[Method]:
    """The dcformat policies benchmarked on each data set."""
    from dcformat import Policy

    if dataset == "synthetic":
        # already pruned and quantized: a 6-bit codebook holds its 32 levels and the zero exactly
        rows = [("6-bit codebook, index bits auto", SYNTHETIC_POLICY)]
        if not quick:
            rows.append(("6-bit codebook, 5-bit indices (paper)", Policy(fc_bits=6, index_bits=5)))
        return [dcformat_method(s, p, True) for s, p in rows]
    if dataset == "lenet300":
        # already pruned (about 91% zeros): sparse with exact values is lossless, codebooks are not
        out = [dcformat_method("sparse, exact values", Policy(fc_bits=0, threshold=0.0, index_bits="auto"), True)]
        for bits in (6, 5, 4, 3) if not quick else (5,):
            out.append(dcformat_method(f"{bits}-bit codebooks", Policy(fc_bits=bits, index_bits="auto"), False))
        return out
    if dataset == "minilm":
        out = [dcformat_method("lossless (raw)", Policy(lossless=True), True)]
        settings = [(8, 0.0), (6, 0.0), (5, 0.0), (4, 0.0), (6, 0.25), (5, 0.5)]
        if quick:
            settings = [(8, 0.0), (5, 0.0)]
        for bits, prune in settings:
            name = f"{bits}-bit" + (f", {prune:.0%} pruned" if prune else "")
            out.append(dcformat_method(name, Policy(bits=bits, prune=prune, index_bits="auto"), False))
        return out
    raise ValueError(dataset)


def peer_methods(notes: list[str]) -> list[Method]:
    """The lossless peers that run in this process; a missing optional one is skipped with a note."""
    out = [safetensors_method(), npz_method()]
    try:
        out += [zstd_method(3), zstd_method(19)]
    except ImportError:
        notes.append("zstd skipped: `pip install zstandard` to include it")
    try:
        out.append(zipnn_method())
    except ImportError:
        notes.append("zipnn skipped: `pip install zipnn` to include it")
    return out
