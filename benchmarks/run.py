"""dcformat beside its peers, on the same data in the same run; writes Markdown, JSON and PNG plots.

    python benchmarks/run.py [--quick] [--out benchmarks/results]

Every codec's round trip is checked before anything is timed; each speed is the median of
`--repeats` runs (at least 3). Peers that are not installed are skipped with a note. NNCodec runs in
its own virtual environment under the cache folder ($DCFORMAT_BENCH_CACHE, default
~/.cache/dcformat-bench), built on first use (about 90 s) unless --no-nncodec.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402
import kernels  # noqa: E402
import methods  # noqa: E402
import report  # noqa: E402

MB = 1e6
NNCODEC_VERSION = "2.1.3"
NNCODEC_QPS = {"minilm": [-44, -38, -32, -30, -28, -26], "lenet300": [-38, -32, -26], "synthetic": [-38]}
QUICK_NNCODEC_QPS = {"minilm": [-38], "lenet300": [-38], "synthetic": [-38]}


# ---------------------------------------------------------------------------------------------
# Measuring one codec on one data set


def bits_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str | None:
    """None if both hold the same names, shapes, dtypes and bit patterns; else what differs."""
    if sorted(a) != sorted(b):
        return f"names differ: {sorted(set(a) ^ set(b))[:3]}"
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{k}: {y.dtype}{y.shape} instead of {x.dtype}{x.shape}"
        if x.tobytes() != y.tobytes():
            return f"{k}: values differ"
    return None


def errors(original: dict[str, np.ndarray], decoded: dict[str, np.ndarray]) -> dict:
    """Largest absolute error and relative RMS error over all parameters."""
    num = den = 0.0
    worst = 0.0
    for k, a in original.items():
        d = np.asarray(decoded[k], dtype=np.float64) - a
        num += float(np.sum(d * d))
        den += float(np.sum(a.astype(np.float64) ** 2))
        worst = max(worst, float(np.max(np.abs(d))) if d.size else 0.0)
    return {"max_abs_err": worst, "rel_rms_err": (num / den) ** 0.5 if den else 0.0}


DECODE_REPEATS = 7


def measure(ds: data.Dataset, m: methods.Method, repeats: int, quality) -> dict:
    """Verify one round trip, then time encode and decode; size, speed and quality of one row."""
    row = {"dataset": ds.name, "method": m.name, "setting": m.setting, "lossless": m.lossless}
    try:
        blob = m.encode(ds.tensors)
        decoded = m.decode(blob)
        expected = ds.tensors if m.expected is None else m.expected(ds.tensors)
        problem = bits_equal(expected, decoded)
        if problem:
            row["error"] = f"round trip failed: {problem}"
            return row
        row["bytes"] = len(blob)
        row["encode_s"] = kernels.median_time(lambda: m.encode(ds.tensors), repeats)
        # decoding is quick for every in-process method: more runs make its median steadier
        row["decode_s"] = kernels.median_time(lambda: m.decode(blob), max(repeats, DECODE_REPEATS))
    except Exception as exc:  # a peer's failure is reported in its row, not fatal to the run
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        return row
    if not m.lossless:
        row.update(errors(ds.tensors, decoded))
        row.update(quality(decoded))
    return row


def finish_row(row: dict, ds: data.Dataset) -> dict:
    """Derived columns: ratio, bits per parameter and per non-zero, MB/s of dense float32."""
    if "bytes" in row:
        row["ratio"] = ds.nbytes / row["bytes"]
        row["bits_per_param"] = 8 * row["bytes"] / ds.params
        row["bits_per_nonzero"] = 8 * row["bytes"] / ds.nonzeros
        row["encode_mb_s"] = ds.nbytes / MB / row["encode_s"]
        row["decode_mb_s"] = ds.nbytes / MB / row["decode_s"]
    return row


# ---------------------------------------------------------------------------------------------
# NNCodec (own virtual environment, run as a subprocess)


def nncodec_python(build: bool, notes: list[str]) -> str | None:
    """The NNCodec venv's python, built on first use; None (with a note) if it is not available."""
    venv = data.cache_dir() / "nncodec-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        if not build:
            notes.append("NNCodec skipped: its venv is not built (run without --no-nncodec / --quick to build it)")
            return None
        print(f"building NNCodec {NNCODEC_VERSION} in {venv} (about 90 s) ...", flush=True)
        constraints = data.cache_dir() / "nncodec-constraints.txt"
        # the CPU torch on this machine and numpy < 2 (NNCodec's pin); otherwise pip pulls a CUDA torch
        constraints.write_text("torch==2.13.0\nnumpy==1.26.4\n")
        log = data.cache_dir() / "nncodec-install.log"
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            with open(log, "w") as f:
                subprocess.run([str(python), "-m", "pip", "install", "-c", str(constraints), "torch==2.13.0",
                                "numpy==1.26.4", f"nncodec=={NNCODEC_VERSION}"], check=True, stdout=f,
                               stderr=subprocess.STDOUT, timeout=1800)
        except (subprocess.SubprocessError, OSError) as exc:
            notes.append(f"NNCodec skipped: building its venv failed ({exc}); see {log}")
            return None
    return str(python)


def nncodec_rows(python: str, ds: data.Dataset, qps: list[int], repeats: int, quality, work: Path,
                 notes: list[str]) -> list[dict]:
    """NNCodec at each qp (float tensors), or lossless on the synthetic matrix's level indices as int32."""
    tensors = ds.tensors
    codebook = None
    if ds.name == "synthetic":
        # signed quantization levels, 0 for the zeros: the integer form NNCodec's DeepCABAC is built for
        w = tensors["weight"]
        codebook, ranks = np.unique(w, return_inverse=True)
        zero = int(np.searchsorted(codebook, 0.0))
        tensors = {"weight": (ranks.reshape(w.shape) - zero).astype(np.int32)}
    inp = work / f"nncodec-{ds.name}.npz"
    np.savez(inp, **tensors)
    worker = Path(__file__).resolve().parent / "nncodec_worker.py"
    cmd = [python, str(worker), str(inp), str(work)] + [f"--qp={q}" for q in qps] + ["--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        notes.append(f"NNCodec failed on {ds.name}: {proc.stderr.strip()[-300:]}")
        return []
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = []
    for qp in qps:
        r = results[str(qp)]
        with np.load(work / f"decoded_{qp}.npz") as z:
            decoded = {k: z[k] for k in z.files}
        row = {"dataset": ds.name, "method": "NNCodec", "setting": f"qp {qp}", "lossless": codebook is not None,
               "bytes": r["bytes"], "encode_s": r["encode_s"], "decode_s": r["decode_s"]}
        if codebook is not None:
            row["setting"] = "signed level indices as int32 (lossless)"
            row["bytes"] += codebook.nbytes  # the 32-bit codebook travels beside the stream
            restored = {"weight": codebook[decoded["weight"].astype(np.int64) + zero].astype(np.float32)}
            if bits_equal(ds.tensors, restored):
                row["error"] = "round trip failed"
        else:
            row.update(errors(ds.tensors, decoded))
            row.update(quality(decoded))
        rows.append(finish_row(row, ds))
    return rows


# ---------------------------------------------------------------------------------------------
# The synthetic matrix's streams against their entropy


def stream_sizes(ds: data.Dataset, path: Path) -> dict:
    """Each stream of the dcformat file vs its own order-0 entropy, and the whole file vs the bound."""
    info = kernels.synthetic_streams(path)
    file_bytes = path.stat().st_size
    out = {"entries": info["entries"], "fillers": info["fillers"], "index_bits": info["index_bits"],
           "file_bytes": file_bytes, "streams": []}
    bound = 0.0
    for key, s in info["streams"].items():
        h = kernels.entropy_bits(s["symbols"])
        b = h * s["symbols"].size / 8
        bound += b
        out["streams"].append({"stream": key, "coding": s["coding"], "bytes": len(s["payload"]),
                               "table_chars": len(s["table_text"]), "entropy_bits": h, "entropy_bytes": b,
                               "over_entropy": len(s["payload"]) / b - 1})
    out["bound_bytes"] = bound
    out["file_over_bound"] = file_bytes / bound
    return out, info


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer settings; NNCodec only if already built")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output folder")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median; at least 3)")
    parser.add_argument("--datasets", default="synthetic,lenet300,minilm", help="comma-separated subset")
    parser.add_argument("--no-nncodec", action="store_true", help="skip NNCodec")
    parser.add_argument("--no-kernels", action="store_true", help="skip the kernel measurements")
    args = parser.parse_args(argv)
    repeats = max(3, args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dcformat-bench-"))
    notes: list[str] = []
    started = time.time()
    results = {"environment": environment(), "notes": notes, "rows": [], "quick": args.quick, "repeats": repeats,
               "decode_repeats": max(repeats, DECODE_REPEATS)}

    python = None if args.no_nncodec else nncodec_python(build=not args.quick, notes=notes)
    peers = methods.peer_methods(notes)
    for name in args.datasets.split(","):
        print(f"== {name}", flush=True)
        try:
            ds = {"synthetic": data.synthetic, "lenet300": data.lenet300, "minilm": data.minilm}[name]()
        except Exception as exc:  # MiniLM needs a download; skip it with a note when that fails
            notes.append(f"{name} skipped: {type(exc).__name__}: {exc}"[:300])
            continue
        results.setdefault("datasets", {})[name] = {"note": ds.note, "params": ds.params, "bytes": ds.nbytes,
                                                     "nonzeros": ds.nonzeros}
        quality = quality_function(ds, notes)
        for m in methods.dcformat_methods(ds, args.quick, notes) + peers:
            print(f"   {m.name} {m.setting}", flush=True)
            results["rows"].append(finish_row(measure(ds, m, repeats, quality), ds))
        if python:
            qps = (QUICK_NNCODEC_QPS if args.quick else NNCODEC_QPS)[name]
            print(f"   NNCodec {qps}", flush=True)
            results["rows"] += nncodec_rows(python, ds, qps, repeats, quality, work, notes)
        if name == "synthetic":
            import dcformat

            path = work / "synthetic.dcf"
            dcformat.save_file(ds.tensors, path, policy=methods.SYNTHETIC_POLICY)
            results["synthetic_streams"], streams = stream_sizes(ds, path)
            if not args.no_kernels:
                print("   kernels: entropy coders, load pipeline", flush=True)
                results["entropy_coders"] = kernels.entropy_coders(streams, max(repeats, 7), notes)
                results["load_pipeline"] = kernels.load_pipeline(path, ds.tensors["weight"], max(repeats, 7),
                                                                 os.cpu_count() or 1)
                print("   kernels: threads", flush=True)
                results["threads"] = kernels.thread_scaling(work, max(repeats, 11))
                print("   kernels: CLI", flush=True)
                results["cli"] = kernels.cli_timings(work, path, 5)
        write(results, out, started)  # after each data set, so an interrupted run still leaves results
    if not args.no_kernels:
        print("== k-means", flush=True)
        results["kmeans"] = kernels.kmeans_comparison(repeats, notes)
    write(results, out, started)
    report.plots(results, out, notes)
    write(results, out, started)  # again, with any plotting note
    print(f"wrote {out / 'results.md'}, results.json and plots in {time.time() - started:.0f} s")
    return 0


def write(results: dict, out: Path, started: float) -> None:
    """results.json and results.md as they stand."""
    results["environment"]["load_average_end"] = os.getloadavg()
    results["seconds"] = time.time() - started
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (out / "results.md").write_text(report.markdown(results))


def _json_default(x):
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(type(x))


def quality_function(ds: data.Dataset, notes: list[str]):
    """Task quality of decoded weights: test accuracy (lenet300), embedding cosine (minilm), nothing else."""
    if ds.name == "lenet300":
        test = ds.extra["test"]
        base = data.mlp_accuracy(ds.tensors, test)
        return lambda w: {"accuracy": data.mlp_accuracy(w, test), "accuracy_original": base}
    if ds.name == "minilm":
        try:
            embedder = data.Embedder(ds.extra["folder"])
        except ImportError as exc:
            notes.append(f"MiniLM embedding cosine skipped: {exc} (pip install transformers)")
            return lambda w: {}
        return lambda w: {"cosine": embedder.cosine(w)}
    return lambda w: {}


def environment() -> dict:
    """What the figures were measured on."""
    import numba

    import dcformat

    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "numpy": np.__version__, "numba": numba.__version__, "dcformat": dcformat.__version__,
           "numba_threads": numba.config.NUMBA_NUM_THREADS, "load_average_start": os.getloadavg(),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return env


if __name__ == "__main__":
    sys.exit(main())
