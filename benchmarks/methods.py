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


def dcformat_methods(ds, quick: bool, notes: list[str]) -> list[Method]:
    """The dcformat policies benchmarked on each data set."""
    from dcformat import Policy

    dataset = ds.name
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
        return minilm_methods(ds, quick, notes)
    raise ValueError(dataset)


# Global steps of the uniform quantizer on MiniLM: with sensitivity-scaled steps they span cosine
# 0.99995 to 0.96; with one step for all tensors, the two that bracket NNCodec's qp -32.
MINILM_STEPS = (0.0006, 0.0012, 0.0025, 0.0035, 0.005, 0.007, 0.01, 0.012, 0.016, 0.02)
MINILM_GLOBAL_STEPS = (0.005, 0.007)
MINILM_TARGET_COSINE = 0.99


def minilm_methods(ds, quick: bool, notes: list[str]) -> list[Method]:
    """MiniLM: k-means codebooks (the paper's recipe), uniform steps, steps scaled by sensitivity."""
    from dcformat import Policy

    out = [dcformat_method("lossless (fields)", Policy(lossless=True), True)]
    for bits in (8, 5) if not quick else (5,):
        out.append(dcformat_method(f"{bits}-bit k-means", Policy(bits=bits, index_bits="auto"), False))
    for step in MINILM_GLOBAL_STEPS[-1:] if quick else MINILM_GLOBAL_STEPS:
        out.append(dcformat_method(f"step {step}, one for all", Policy(step=step), False))
    tuned = minilm_tuning(ds, quick, notes)
    if tuned is None:
        return out
    scales, fitted = tuned
    for step in (0.007,) if quick else MINILM_STEPS:
        out.append(dcformat_method(f"step {step} x sensitivity", Policy(step=step, step_scales=scales), False))
    if fitted is not None:
        out.append(dcformat_method(f"fit cosine >= {MINILM_TARGET_COSINE} (step {fitted.step:.4g})", fitted, False))
    return out


def minilm_tuning(ds, quick: bool, notes: list[str]):
    """(step scales from sensitivity, a policy fitted to cosine 0.99), both on data.CALIBRATION sentences."""
    import time

    from data import CALIBRATION, SENTENCES, Embedder
    from dcformat import Policy, allocation

    try:
        calibration = Embedder(ds.extra["folder"], CALIBRATION)
    except ImportError as exc:
        notes.append(f"MiniLM sensitivity rows skipped: {exc} (pip install transformers)")
        return None
    started = time.perf_counter()
    sens = allocation.sensitivity(ds.tensors, calibration.cosine)
    scales = allocation.scales_from_sensitivity(sens)
    took = time.perf_counter() - started
    fitted = None
    if not quick:
        started = time.perf_counter()
        fitted = allocation.fit_quality(ds.tensors, calibration.cosine, MINILM_TARGET_COSINE,
                                        Policy(step=0.007, step_scales=scales))
        took_fit = time.perf_counter() - started
        notes.append(f"MiniLM: fit_quality to cosine {MINILM_TARGET_COSINE} on the calibration sentences took "
                     f"{took_fit:.1f} s and chose step {fitted.step:.5g}.")
    top = sorted(scales.items(), key=lambda kv: kv[1])
    notes.append(f"MiniLM: sensitivity measured on {len(CALIBRATION)} calibration sentences (none of them among the "
                 f"{len(SENTENCES)} the cosine is reported on) in {took:.1f} s; step factors "
                 f"range {top[0][1]:.2f} ({top[0][0]}) to {top[-1][1]:.2f} ({top[-1][0]}).")
    return scales, fitted


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
