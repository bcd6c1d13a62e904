"""Tensors to an encoded file in memory: input checks, the policy's plans, drafting and coding.

The layer under `api` and `allocation`: both encode through here, and nothing here knows about
files on disk, frameworks or size targets (a target size is resolved into a step by
`allocation.fit_size` before it reaches this module).
"""

from __future__ import annotations

import io
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable, Mapping

import numpy as np

from . import constants as K
from .container import EncodedTensor, StreamWriter, write_stream
from .errors import EncodeError
from .policy import Policy
from .progress import Progress, ProgressEvent

EventCallback = Progress
Source = Callable[[], Any]  # returns a tensor's array when called: inputs are read one at a time;
# an optional `release()` attribute is called once the tensor is written (a lazy input drops its pages)

ENCODER_METADATA_KEY = "dcformat.encoder"  # the file's record of how it was encoded (see `choices`)


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
    tables, encoded = codec.assemble(drafts, policy.huffman, policy.block_size, header_cost=cost,
                                     rans=policy.rans_gain)
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
        dense = draft.dense()
        out[name] = dense if dense is not None else np.array(value, copy=True)
    return out


# ---------------------------------------------------------------------------------------------
# Tensor by tensor, into a StreamWriter (memory near one tensor; tensors side by side on threads)


@dataclass
class TensorResult:
    """What encoding one tensor did: its form, sizes, the lossy settings used and the error reached."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    dense_bytes: int
    stored_bytes: int
    squared_error: float  # ||decoded - original||^2 (0 for an exact tensor)
    squared_norm: float  # ||original||^2
    lossy: bool
    step: float | None = None
    bits: int | None = None
    seconds: float = 0.0

    @property
    def error(self) -> float:
        """Relative RMS error ||decoded - original|| / ||original|| (0 for an exact tensor)."""
        if not self.lossy or self.squared_error == 0.0:
            return 0.0
        return float(np.sqrt(self.squared_error / self.squared_norm)) if self.squared_norm else float("inf")

    def record(self) -> dict[str, Any]:
        """This tensor's entry of the `dcformat.encoder` record."""
        out: dict[str, Any] = {"error": _round(self.error)}
        if self.step is not None:
            out["step"] = self.step
        if self.bits is not None:
            out["bits"] = self.bits
        return out


def _round(x: float) -> float | None:
    """An error for the record: 6 significant digits (None if not finite: JSON has no inf)."""
    return float(f"{x:.6g}") if np.isfinite(x) else None


def encode_tensor(name: str, value: Any, policy: Policy, shared: dict[str, np.ndarray] | None = None,
                  drafted: Callable[[], None] | None = None) -> tuple[EncodedTensor, TensorResult]:
    """Encode one tensor under `policy` (no target size): the tensor ready for a writer, and its result.

    Independent of every other tensor (tables are numbered later, in file order), so tensors can be
    encoded side by side on threads. `drafted` is called once a coded tensor no longer needs `value`
    (a memory-mapped input then drops its pages before the streams are coded).
    """
    from . import codec

    start = time.perf_counter()
    a = np.asarray(value)
    plan = policy.plan(name, a)
    draft = codec.draft_tensor(name, a, plan, policy.block_size)
    lossy = draft.header["encoding"] not in (K.RAW, K.FIELDS) and a.dtype.kind == "f" and a.size > 0
    err = norm = 0.0
    if lossy:
        from .errorstats import squared_error, squared_error_coded, squared_error_rows

        if draft.decoded is not None:
            err, norm = squared_error(a, draft.decoded)
        elif "scales" in draft.header:  # row scales (§5.2): codebook[index] x its row's scale
            codebook = np.asarray(draft.payloads[draft.header["codebook"]]).view(a.dtype)
            scales = np.asarray(draft.payloads[draft.header["scales"]]).view(a.dtype)
            err, norm = squared_error_rows(a, codebook, draft.streams["indices"].symbols, scales,
                                           draft.streams["row_scales"].symbols)
        else:  # a shared tensor drafted without its dense form: measure from codebook and indices
            codebook = np.asarray(draft.payloads[draft.header["codebook"]]).view(a.dtype)
            err, norm = squared_error_coded(a, codebook, draft.streams["indices"].symbols)
    lossy = lossy and err > 0.0
    draft.decoded = None  # the dense decoded copy is no longer needed: free it before coding
    if drafted is not None and draft.header["encoding"] != K.RAW:
        drafted()  # a coded tensor no longer needs its input (a raw one is its own payload)
    cost = K.HUFFMAN_ZLIB_COST if policy.compact_header else K.HUFFMAN_JSON_COST
    encoded = codec.code_tensor(draft, policy.huffman, policy.block_size, shared, cost, rans=policy.rans_gain)
    del draft
    result = TensorResult(
        name, str(encoded.header["dtype"]), tuple(a.shape), str(encoded.header["encoding"]), a.nbytes,
        sum(memoryview(p).nbytes for p in encoded.payloads), err, norm, lossy,
        step=plan.step if lossy else None, bits=encoded.header.get("bits") if lossy else None,
        seconds=time.perf_counter() - start)
    return encoded, result


def shared_tables(sources: Iterable[tuple[str, Source]], policy: Policy) -> dict[str, np.ndarray]:
    """huffman="shared": a counting pass over every tensor (drafted, then dropped) for the shared codes."""
    from . import codec

    counts: dict[str, list[np.ndarray]] = {"indices": [], "gaps": []}
    for name, source in sources:
        a = np.asarray(source())
        draft = codec.draft_tensor(name, a, policy.plan(name, a), policy.block_size)
        for kind, found in codec.stream_counts([draft]).items():
            counts[kind] += found
        del draft, a
        release = getattr(source, "release", None)
        if release is not None:
            release()
    return codec.shared_lengths(counts)


def encode_to(writer: StreamWriter, sources: list[tuple[str, Source]], policy: Policy, *,
              threads: int | None = None, progress: EventCallback | None = None, stage: str = "compress",
              shard: str | None = None, sizes: Mapping[str, int] | None = None) -> tuple[list[str], list[TensorResult]]:
    """Encode each (name, source) in order into `writer` (not finished); return (tables, results).

    With `threads` > 1, up to that many tensors are encoded at once on threads (the numba kernels and
    numpy release the GIL); each is written as soon as those before it are, so at most `threads`
    encoded tensors wait in memory. `sizes` (name -> dense bytes) lets progress count bytes before
    a tensor is read.
    """
    from . import codec
    from .pool import default_threads

    if policy.target_size is not None:
        raise EncodeError("encoder: resolve the policy's target_size first (allocation.fit_size)")
    threads = default_threads() if threads is None else threads
    shared = shared_tables(sources, policy) if policy.huffman == "shared" else None
    tables = codec.Tables()
    results: list[TensorResult] = []
    sizes = dict(sizes or {})
    total = sum(sizes.values())
    done = 0

    def emit(tensor: str | None) -> None:
        if progress is not None:
            progress(ProgressEvent(stage, done, total, tensor=tensor, shard=shard))

    def work(name: str, source: Source) -> tuple[EncodedTensor, TensorResult]:
        return encode_tensor(name, source(), policy, shared, getattr(source, "release", None))

    def finish(encoded: EncodedTensor, result: TensorResult, source: Source) -> None:
        nonlocal done
        writer.add(tables.intern(encoded))
        release = getattr(source, "release", None)  # a lazy input's pages are no longer needed
        if release is not None:
            release()
        results.append(result)
        done += sizes.get(result.name, result.dense_bytes)
        emit(result.name)  # after, too: the bar moves as each tensor is written

    if threads <= 1 or len(sources) <= 1:
        for name, source in sources:
            emit(name)
            finish(*work(name, source), source)
        return tables.texts, results
    from concurrent.futures import ThreadPoolExecutor

    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dcformat-encode") as pool:
        try:
            for name, source in sources:
                if len(pending) >= threads:  # the oldest must be written before another starts
                    first, future, src = pending.popleft()
                    emit(first)
                    finish(*future.result(), src)
                pending.append((name, pool.submit(work, name, source), source))
            while pending:
                first, future, src = pending.popleft()
                emit(first)
                finish(*future.result(), src)
        except BaseException:
            for _, future, _ in pending:
                future.cancel()
            raise
    return tables.texts, results


def choices(policy: Policy, results: list[TensorResult]) -> str:
    """The `dcformat.encoder` record: the policy, the error of all lossy tensors together, and per tensor."""
    import json

    lossy = [r for r in results if r.lossy]
    err = sum(r.squared_error for r in lossy)
    norm = sum(r.squared_norm for r in lossy)
    doc: dict[str, Any] = {"policy": policy.to_dict()}
    if lossy:
        doc["error"] = _round(float(np.sqrt(err / norm)) if norm else float("inf"))
    doc["tensors"] = {r.name: r.record() for r in results}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def write_file(f: BinaryIO, sources: list[tuple[str, Source]], policy: Policy, metadata: Mapping[str, str] | None,
               *, directory: str | None = None, threads: int | None = None, progress: EventCallback | None = None,
               record: bool = False, stage: str = "compress", shard: str | None = None,
               sizes: Mapping[str, int] | None = None) -> list[TensorResult]:
    """Encode and write a whole file to `f`, tensor by tensor (sections spill to `directory`).

    With `record`, the file's metadata also gets the `dcformat.encoder` record (see `choices`).
    """
    meta = dict(metadata or {})
    writer = StreamWriter(f, meta, compact_header=policy.compact_header, directory=directory)
    try:
        tables, results = encode_to(writer, sources, policy, threads=threads, progress=progress, stage=stage,
                                    shard=shard, sizes=sizes)
        if record:
            meta[ENCODER_METADATA_KEY] = choices(policy, results)
        writer.finish(tables)
    except BaseException:
        writer.abort()
        raise
    return results
