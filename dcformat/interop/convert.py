"""Whole conversions, one call per command: `compress` (tensor files and model folders to .dcf) and
`decompress` (.dcf files and folders back to .safetensors, .npz, .pt or a model folder).

Both work one tensor at a time (inputs memory-mapped, sections spilled as they are coded, outputs
written as tensors are decoded), so memory stays near a few tensors whatever the model's size.
A model folder is written the way transformers writes one: every non-weight file copied as is, the
weights as one `model.dcf` or as shards `model-00001-of-00003.dcf` with `model.dcf.index.json`.
A folder is assembled in a hidden staging folder beside the output and renamed into place, so a
failure leaves no half-written output; a single file is written atomically.

The per-shard work is `compress_shard(task)`, a plain function of a picklable `ShardTask`, so any
`concurrent.futures.Executor` can map it (a dask.distributed client's `get_executor()`, a process pool).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .. import shards
from ..container import atomic_write
from ..encoder import ENCODER_METADATA_KEY, TensorResult
from ..errors import DCFError, EncodeError, OutputExistsError, SameFileError
from ..policy import Policy
from ..progress import ProgressEvent
from .formats import TensorSource, extension, open_source

Progress = Callable[[ProgressEvent], None]

DEFAULT_MAX_SHARD_SIZE = 5_000_000_000  # transformers' default max_shard_size ("5GB")
SAFETENSORS_INDEX = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes of a size given as transformers takes max_shard_size: an int, or "500MB", "5GB", "2GiB"."""
    if isinstance(size, bool):
        raise DCFError(f"a size must be a number of bytes or a string such as '5GB', not {size!r}")
    if isinstance(size, int):
        value = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
        if not m or m.group(2).upper() not in _UNITS:
            raise DCFError(f"a size must be a number of bytes or a string such as '500MB', '5GB', '2GiB'; not {size!r}")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value < 1:
        raise DCFError(f"a size must be positive, not {size!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Reports


@dataclass
class Report:
    """What a conversion read and wrote."""

    source: str
    destination: str
    read: list[str] = field(default_factory=list)  # weight files read
    written: list[str] = field(default_factory=list)  # weight files (and index) written
    copied: list[str] = field(default_factory=list)  # other files of a model folder, copied as they are
    tensors: list[dict[str, Any]] = field(default_factory=list)  # per tensor: name, encoding, bytes, error...
    input_bytes: int = 0  # dense bytes of the tensors
    output_bytes: int = 0  # bytes of the weight files written
    dropped: dict[str, str] = field(default_factory=dict)  # what was not kept, and why
    checkpoint_key: str | None = None  # the checkpoint entry that held the state dict
    error: float | None = None  # relative RMS error of all lossy tensors together (compress)
    policy: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tensor_row(r: TensorResult, shard: str) -> dict[str, Any]:
    row = {"name": r.name, "dtype": r.dtype, "shape": list(r.shape), "encoding": r.encoding,
           "dense_bytes": r.dense_bytes, "bytes": r.stored_bytes, "error": r.error, "shard": shard}
    if r.step is not None:
        row["step"] = r.step
    if r.bits is not None:
        row["bits"] = r.bits
    return row


def _model_error(results: Iterable[TensorResult]) -> float | None:
    lossy = [r for r in results if r.lossy]
    if not lossy:
        return None
    norm = sum(r.squared_norm for r in lossy)
    return float(np.sqrt(sum(r.squared_error for r in lossy) / norm)) if norm else float("inf")


# ---------------------------------------------------------------------------------------------
# Paths: never onto the input, never over an existing output unless asked

TENSOR_FILE_EXTENSIONS = (".safetensors", ".npz", ".pt", ".pth")  # what decompress writes as one file


def compress_writes_folder(src: str, dst: str) -> bool:
    """compress writes a model folder from a folder, or to any path that is not a .dcf file."""
    return os.path.isdir(src) or extension(dst) != ".dcf"


def decompress_writes_folder(src: str, dst: str) -> bool:
    """decompress writes a model folder from a folder, or to any path that is not a tensor file."""
    return os.path.isdir(src) or extension(dst) not in TENSOR_FILE_EXTENSIONS


def check_paths(src: str, dst: str, overwrite: bool) -> None:
    """Refuse an output that is the input, lies inside the input folder or holds the input (whatever
    `overwrite` says), and an existing output unless `overwrite`."""
    s, d = os.path.realpath(src), os.path.realpath(dst)
    if s == d or (os.path.exists(dst) and os.path.samefile(src, dst)):
        raise SameFileError(f"{dst}: the output is the input; choose another output")
    if os.path.isdir(src) and d.startswith(s.rstrip(os.sep) + os.sep):
        raise SameFileError(f"{dst}: the output lies inside the input folder {src}; choose another output")
    if os.path.isdir(d) and s.startswith(d.rstrip(os.sep) + os.sep):
        raise SameFileError(f"{dst}: the output folder holds the input {src}; replacing it would delete the input")
    if os.path.lexists(dst) and not overwrite:
        raise OutputExistsError(f"{dst}: already exists (overwrite=True, or --force, replaces it)")


class _Staging:
    """A hidden folder beside `dst`, renamed onto it by `commit` (replacing what was there)."""

    def __init__(self, dst: str):
        self.dst = os.path.abspath(dst)
        parent = os.path.dirname(self.dst)
        os.makedirs(parent, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix="." + os.path.basename(self.dst) + ".", suffix=".tmp", dir=parent)

    def commit(self) -> None:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp made it private; the output is an ordinary folder
        old = None
        if os.path.lexists(self.dst):
            old = tempfile.mkdtemp(prefix="." + os.path.basename(self.dst) + ".", suffix=".old",
                                   dir=os.path.dirname(self.dst))
            os.rename(self.dst, os.path.join(old, "x"))
        os.rename(self.path, self.dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Model folders


@dataclass
class ModelFiles:
    """The weight files of a model folder (in order), the index that lists them, and the other files."""

    folder: str
    weights: list[str]  # file names in the folder
    index: str | None
    others: list[str]  # relative paths of every other file, copied as they are


def model_files(folder: str) -> ModelFiles:
    """Find a folder's weights the way transformers does: an index of safetensors shards,
    model.safetensors, an index of pytorch_model shards, pytorch_model.bin (or a single .safetensors)."""
    names = set(os.listdir(folder))
    if shards.INDEX_NAME in names or shards.SINGLE_NAME in names:
        raise DCFError(f"{folder}: already a dcformat model folder (decompress it instead)")
    weights: list[str] = []
    index = None
    for idx, single in ((SAFETENSORS_INDEX, "model.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if idx in names:
            weight_map, _ = shards.read_index(os.path.join(folder, idx))
            weights, index = sorted(set(weight_map.values())), idx
            missing = [w for w in weights if w not in names]
            if missing:
                raise DCFError(f"{folder}: {idx} lists {missing[0]}, which is not in the folder")
            break
        if single in names:
            weights = [single]
            break
    if not weights:
        found = sorted(n for n in names if n.endswith(".safetensors"))
        if len(found) == 1:
            weights = found
        else:
            raise DCFError(f"{folder}: no model weights found (expected {SAFETENSORS_INDEX}, model.safetensors, "
                           f"pytorch_model.bin{' or one .safetensors file' if not found else ''})")
    skip = set(weights) | ({index} if index else set())
    others = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (d.startswith(".") and d.endswith((".tmp", ".old"))))
        for n in sorted(files):
            rel = os.path.relpath(os.path.join(root, n), folder)
            if rel not in skip:
                others.append(rel)
    return ModelFiles(folder, weights, index, others)


def _copy_others(src: str, others: list[str], dst: str) -> None:
    for rel in others:
        target = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), target)  # follows symlinks, as a hub cache folder has


# ---------------------------------------------------------------------------------------------
# Compress


@dataclass(frozen=True)
class ShardTask:
    """One output .dcf file to write: which tensors of which input files, under what policy."""

    inputs: tuple[tuple[str, tuple[str, ...]], ...]  # (input file, tensor names in order)
    output: str  # the file to write (atomically)
    policy: Policy
    metadata: tuple[tuple[str, str], ...] = ()
    threads: int | None = None
    record: bool = True  # store the `dcformat.encoder` record in the file's metadata
    shard: str = ""  # the shard's name, for progress


@dataclass
class ShardResult:
    """What `compress_shard` wrote."""

    output: str
    shard: str
    bytes: int
    results: list[TensorResult]
    seconds: float


def compress_shard(task: ShardTask, progress: Progress | None = None) -> ShardResult:
    """Write one .dcf file from its task, reading one tensor at a time: a plain function that any
    `concurrent.futures.Executor` can map (its argument and result pickle)."""
    from .. import encoder

    start = time.perf_counter()
    opened: list[TensorSource] = []
    try:
        sources, sizes = [], {}
        for path, names in task.inputs:
            src = open_source(path)
            opened.append(src)
            for name in names:
                sizes[name] = src.specs[name].nbytes
                sources.append((name, src.lazy(name)))
        meta = dict(task.metadata)
        encoder.check_inputs({n: None for n, _ in sources}, meta)
        directory = os.path.dirname(os.path.abspath(task.output))
        holder: dict[str, list[TensorResult]] = {}

        def write(f: Any) -> None:
            holder["results"] = encoder.write_file(
                f, sources, task.policy, meta, directory=directory, threads=task.threads, progress=progress,
                record=task.record, shard=task.shard, sizes=sizes)

        try:
            atomic_write(task.output, write)
        except EncodeError as e:
            raise EncodeError(f"{task.inputs[0][0]}: {e}") from None
        return ShardResult(task.output, task.shard, os.path.getsize(task.output), holder["results"],
                           time.perf_counter() - start)
    finally:
        for src in opened:
            src.close()


def _plan(items: list[tuple[str, str, int]], max_bytes: int) -> list[list[tuple[str, str, int]]]:
    """Group (file, name, dense bytes) in order into shards of at most `max_bytes` dense bytes each
    (a larger tensor alone), as transformers' max_shard_size does."""
    groups: list[list[tuple[str, str, int]]] = []
    size = 0
    for item in items:
        if not groups or (size + item[2] > max_bytes and groups[-1]):
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item[2]
    return groups or [[]]


def _inputs_of(group: list[tuple[str, str, int]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out: list[tuple[str, list[str]]] = []
    for path, name, _ in group:
        if not out or out[-1][0] != path:
            out.append((path, []))
        out[-1][1].append(name)
    return tuple((p, tuple(n)) for p, n in out)


def _scan(paths: list[str], report: Report) -> tuple[list[tuple[str, str, int]], dict[str, str]]:
    """(file, name, dense bytes) of every tensor of the input files, in order, and the first file's
    metadata; fills the report's read / dropped / checkpoint key. Only headers are read."""
    items: list[tuple[str, str, int]] = []
    metadata: dict[str, str] = {}
    seen: dict[str, str] = {}
    for i, path in enumerate(paths):
        with open_source(path) as src:
            if i == 0:
                metadata = dict(src.metadata)
            report.read.append(path)
            report.dropped.update({(f"{os.path.basename(path)}:{k}" if len(paths) > 1 else k): v
                                   for k, v in src.dropped.items()})
            report.checkpoint_key = report.checkpoint_key or src.key
            for name, spec in src.specs.items():
                if name in seen:
                    raise DCFError(f"{path}: tensor {name!r} is also in {seen[name]}")
                seen[name] = path
                items.append((path, name, spec.nbytes))
    if not items:
        raise DCFError(f"{paths[0] if paths else '?'}: holds no tensors: nothing to compress "
                       "(dcformat never writes an empty file)")
    return items, metadata


def _resolve_target(policy: Policy, items: list[tuple[str, str, int]], metadata: Mapping[str, str],
                    progress: Progress | None = None) -> Policy:
    """A target size becomes a step over the whole model (allocation.fit_size), on memory-mapped inputs."""
    if policy.target_size is None:
        return policy
    from ..allocation import fit_size

    opened: dict[str, TensorSource] = {}
    try:
        tensors = {}
        for path, name, _ in items:
            if path not in opened:
                opened[path] = open_source(path)
            tensors[name] = opened[path].get(name)
        return fit_size(tensors, policy, metadata=metadata, progress=progress, record=True)
    finally:
        for s in opened.values():
            s.close()


def compress(src: str | os.PathLike, dst: str | os.PathLike, *, policy: Policy | None = None,
             metadata: Mapping[str, str] | None = None, max_shard_size: int | str | None = None,
             threads: int | None = None, executor: Any = None, progress: Progress | None = None,
             overwrite: bool = False) -> Report:
    """Compress a tensor file (.safetensors, .pt/.pth/.bin, .npz) or a model folder into `dst`.

    - A file becomes one .dcf file; a folder becomes a folder (other files copied, weights as
      `model.dcf`, or shards + `model.dcf.index.json` when they exceed `max_shard_size` dense bytes,
      default 5 GB as transformers'). A file with `max_shard_size` that needs several shards must be
      given a folder `dst` (no .dcf extension).
    - The input's metadata (safetensors' __metadata__) is kept, `metadata` added; every file records
      its encoding under "dcformat.encoder".
    - `threads`: tensors encoded side by side (default one per CPU). `executor`: a
      concurrent.futures.Executor that maps `compress_shard` over the shards instead (each shard then
      encodes on one thread unless `threads` is given).
    - Refuses to write onto the input (SameFileError) and over an existing output without `overwrite`
      (OutputExistsError).
    """
    start = time.perf_counter()
    src, dst = os.fspath(src), os.fspath(dst)
    policy = policy or Policy()
    if not os.path.exists(src):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src)
    check_paths(src, dst, overwrite)
    report = Report(src, dst)
    folder_in = os.path.isdir(src)
    files = model_files(src) if folder_in else None
    paths = [os.path.join(src, w) for w in files.weights] if files else [src]
    items, in_meta = _scan(paths, report)
    meta = {**in_meta, **dict(metadata or {})}
    meta.pop(ENCODER_METADATA_KEY, None)
    policy = _resolve_target(policy, items, meta, progress)
    report.policy = policy.to_dict()
    limit = parse_size(max_shard_size) if max_shard_size is not None else DEFAULT_MAX_SHARD_SIZE
    groups = _plan(items, limit)
    folder_out = compress_writes_folder(src, dst)
    if not folder_out and len(groups) > 1:
        raise DCFError(f"{dst}: the model needs {len(groups)} shards of at most {limit} bytes: give a folder as output")
    staging = _Staging(dst) if folder_out else None
    try:
        if folder_out:
            names = [shards.SINGLE_NAME] if len(groups) == 1 else \
                [shards.shard_name(i + 1, len(groups)) for i in range(len(groups))]
            outputs = [os.path.join(staging.path, n) for n in names]
        else:
            names, outputs = [os.path.basename(dst)], [dst]
        tasks = [ShardTask(_inputs_of(g), out, policy, tuple(meta.items()),
                           threads if executor is None or threads is not None else 1, True, name)
                 for g, out, name in zip(groups, outputs, names)]
        total = sum(n for _, _, n in items)
        results = _run_tasks(tasks, executor, progress, total)
        weight_map = {}
        for res in results:
            for r in res.results:
                report.tensors.append(_tensor_row(r, res.shard))
                weight_map[r.name] = res.shard
            report.output_bytes += res.bytes
            report.written.append(os.path.join(dst, res.shard) if folder_out else dst)
        report.input_bytes = total
        if folder_out:
            if len(groups) > 1:
                shards.write_index(os.path.join(staging.path, shards.INDEX_NAME), weight_map, total)
                report.written.append(os.path.join(dst, shards.INDEX_NAME))
            if files is not None:
                _copy_others(src, files.others, staging.path)
                report.copied = [os.path.join(dst, rel) for rel in files.others]
            staging.commit()
    except BaseException:
        if staging is not None:
            staging.abort()
        raise
    report.error = _model_error(r for res in results for r in res.results)
    report.seconds = time.perf_counter() - start
    return report


def _run_tasks(tasks: list[ShardTask], executor: Any, progress: Progress | None, total: int) -> list[ShardResult]:
    """Run the shard tasks here in order (tensors side by side inside each), or map them on `executor`."""
    if executor is not None:
        results = []
        done = 0
        for res in executor.map(compress_shard, tasks):
            done += sum(r.dense_bytes for r in res.results)
            if progress is not None:
                progress(ProgressEvent("compress", done, total, shard=res.shard))
            results.append(res)
        return results
    results = []
    base = 0
    for task in tasks:
        def shifted(e: ProgressEvent, base: int = base) -> None:
            progress(ProgressEvent(e.stage, base + e.done_bytes, total, e.tensor, e.shard, e.message))

        res = compress_shard(task, shifted if progress is not None else None)
        base += sum(r.dense_bytes for r in res.results)
        results.append(res)
    return results


# ---------------------------------------------------------------------------------------------
# Decompress


def decompress(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
               progress: Progress | None = None, threads: int | None = None) -> Report:
    """Decompress a .dcf file, index or dcformat model folder into `dst`: a .safetensors, .npz or .pt
    file, or (from a folder, or to a path without one of those extensions) a model folder with
    safetensors shards named like the .dcf ones, `model.safetensors.index.json` and the other files.

    Tensors are decoded one at a time into the output as it is written. The file metadata is kept as
    the safetensors __metadata__ (without the "dcformat.encoder" record). Refuses to write onto the
    input and over an existing output without `overwrite`.
    """
    from ..api import open as dcf_open

    start = time.perf_counter()
    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.exists(src):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src)
    check_paths(src, dst, overwrite)
    report = Report(src, dst)
    ext = extension(dst)
    folder_out = decompress_writes_folder(src, dst)
    if folder_out and ext in (".dcf",):
        raise DCFError(f"{dst}: decompress writes .safetensors, .npz, .pt or a folder, not .dcf")
    with dcf_open(src) as model:
        sharded = isinstance(model, shards.ShardedOpen)
        groups: list[tuple[str, list[str]]]
        if sharded:
            groups = [(s, model.shard_names(s)) for s in model.shards]
            report.read = [os.path.join(model.folder, s) for s in model.shards]
        else:
            groups = [(shards.SINGLE_NAME, model.keys())]
            report.read = [shards.resolve(src)[1]]
        meta = {k: v for k, v in model.metadata.items() if k != ENCODER_METADATA_KEY}
        total = sum(model.layout(n).nbytes for n in model.keys())
        report.input_bytes = total
        counter = _Counter(progress, total)
        if not folder_out:
            _write_file(model, model.keys(), dst, meta, counter, threads)
            report.written = [dst]
            report.output_bytes = os.path.getsize(dst)
        else:
            staging = _Staging(dst)
            try:
                weight_map = {}
                for shard, names in groups:
                    out_name = shard[: -len(".dcf")] + ".safetensors" if shard.endswith(".dcf") else shard + ".safetensors"
                    if len(groups) == 1:
                        out_name = "model.safetensors"
                    out = os.path.join(staging.path, out_name)
                    counter.shard = out_name
                    _write_file(model, names, out, meta, counter, threads)
                    weight_map.update({n: out_name for n in names})
                    report.written.append(os.path.join(dst, out_name))
                    report.output_bytes += os.path.getsize(out)
                if len(groups) > 1:
                    shards.write_index(os.path.join(staging.path, SAFETENSORS_INDEX), weight_map, total)
                    report.written.append(os.path.join(dst, SAFETENSORS_INDEX))
                if os.path.isdir(src):
                    others = _dcf_others(src)
                    _copy_others(src, others, staging.path)
                    report.copied = [os.path.join(dst, rel) for rel in others]
                staging.commit()
            except BaseException:
                staging.abort()
                raise
        for n in model.keys():
            info = model.layout(n)
            report.tensors.append({"name": n, "dtype": info.dtype, "shape": list(info.shape),
                                   "encoding": info.encoding, "bytes": info.stored_bytes, "dense_bytes": info.nbytes})
    report.seconds = time.perf_counter() - start
    return report


def _dcf_others(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (d.startswith(".") and d.endswith((".tmp", ".old"))))
        for n in sorted(files):
            rel = os.path.relpath(os.path.join(root, n), folder)
            if not (root == folder and (n.endswith(".dcf") or n == shards.INDEX_NAME)):
                out.append(rel)
    return out


class _Counter:
    """Progress of a decompress in dense bytes."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done, self.shard = progress, total, 0, None

    def emit(self, tensor: str | None) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent("decompress", self.done, self.total, tensor=tensor, shard=self.shard))


def _write_file(model: Any, names: list[str], path: str, meta: dict[str, str], counter: _Counter,
                threads: int | None) -> None:
    """Write `names` of an open model to one .safetensors / .npz / .pt file, decoding one at a time
    into a scratch buffer reused for every tensor (no page zeroing per tensor)."""
    from ..api import _budget
    from .formats import TensorSpec, _check_npz_dtype, _write_npz
    from .safetensors import Spec, write_stream

    ext = extension(path)
    budget = _budget(threads)
    infos = {n: model.layout(n) for n in names}
    scratch = np.empty(max([i.nbytes for i in infos.values()] + [0]), np.uint8)

    def decode(name: str) -> np.ndarray:
        info = infos[name]
        counter.emit(name)
        bits = np.dtype(f"<u{info.itemsize}") if info.itemsize > 1 else np.dtype(np.uint8)
        out = scratch[: info.nbytes].view(bits)
        if info.numel:
            model._decode(name, budget, out=out, bits=True)
            model.release(name)
        counter.done += info.nbytes
        return out

    if ext == ".safetensors" or ext == "":
        specs = [Spec(n, i.dtype, tuple(i.shape)) for n, i in infos.items()]
        atomic_write(path, lambda f: write_stream(f, specs, lambda s: decode(s.name), meta or None))
    elif ext == ".npz":
        for n, i in infos.items():
            _check_npz_dtype(path, n, i.dtype)
        from ..codec import numpy_dtype

        specs = [TensorSpec(n, i.dtype, tuple(i.shape), i.nbytes) for n, i in infos.items()]
        atomic_write(path, lambda f: _write_npz(
            f, None, specs, lambda s: decode(s.name).view(numpy_dtype(s.dtype)).reshape(s.shape)))
    else:  # .pt: torch.save needs the whole state dict at once
        from .torch import _torch, bits_view, torch_dtype

        torch = _torch("writing .pt")
        sd = {}
        for n, i in infos.items():
            counter.emit(n)
            t = torch.empty(tuple(i.shape), dtype=torch_dtype(i.dtype))
            if t.numel():
                model._decode(n, budget, out=bits_view(t), bits=True)
                model.release(n)
            counter.done += i.nbytes
            sd[n] = t
        atomic_write(path, lambda f: torch.save(sd, f))
    counter.emit(None)
