"""Kernel-level measurements: entropy coders on the synthetic streams, the load pipeline, k-means, CLI start-up."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical order-0 entropy in bits per symbol."""
    counts = np.bincount(symbols)
    p = counts[counts > 0] / symbols.size
    return float(-(p * np.log2(p)).sum())


def synthetic_streams(path: Path) -> dict:
    """The gaps and indices streams of the synthetic file as stored: symbols, coded bytes, table."""
    import dcformat
    from dcformat import codec, container

    with dcformat.open(path) as f:
        info = f.layout("weight")
        tables = codec.TableCache(f.header.tables)
        out = {"entries": info.entries, "fillers": info.fillers, "index_bits": info.index_bits, "streams": {}}
        for key in ("indices", "gaps"):
            stream = getattr(info, key)
            payload = bytes(container.check_section(f._buf, stream.section, key, "weight"))
            symbols = codec.decode_stream(f._buf, stream, tables, "weight", key)
            table = f.header.tables[stream.table] if stream.coding == "huffman" else ""
            out["streams"][key] = {
                "symbols": symbols, "payload": payload, "coding": stream.coding, "table_text": table,
                "lengths": tables.get(stream.table) if stream.coding == "huffman" else None,
                "block_size": getattr(stream, "block_size", None), "block_bytes": list(getattr(stream, "block_bytes", []) or []),
            }
    return out


def entropy_coders(streams: dict, repeats: int, notes: list[str]) -> list[dict]:
    """dcformat's Huffman (1 and all threads) and rANS (format 1.4), bitarray's canonical Huffman and zstd
    on each stream."""
    from dcformat import huffman, rans

    rows = []
    for key, s in streams["streams"].items():
        symbols = s["symbols"]
        n = symbols.size
        h = entropy_bits(symbols)
        bound = h * n / 8

        def row(method: str, nbytes: int | None, enc: float | None, dec: float | None, note: str = "") -> None:
            rows.append({
                "stream": key, "method": method, "symbols": n, "entropy_bits": h, "entropy_bytes": bound,
                "bytes": nbytes, "over_entropy": None if nbytes is None else nbytes / bound - 1,
                "enc_msym_s": None if enc is None else n / enc / 1e6,
                "dec_msym_s": None if dec is None else n / dec / 1e6, "note": note,
            })

        if s["coding"] == "huffman":
            lengths, bs, bb = s["lengths"], s["block_size"], s["block_bytes"]
            payload, got_bb = huffman.encode(symbols, lengths, bs)
            assert payload == s["payload"] and got_bb == bb, "re-encoding changed the stream"
            for parallel in (False, True):
                out = huffman.decode(payload, n, lengths, bs, bb, parallel=parallel)
                assert np.array_equal(out, symbols)
            enc = median_time(lambda: huffman.encode(symbols, lengths, bs), repeats)
            size = len(payload) + len(s["table_text"]) + 4 * len(bb)
            for parallel, label in ((False, "1 thread"), (True, f"{os.cpu_count()} threads")):
                dec = median_time(lambda: huffman.decode(payload, n, lengths, bs, bb, parallel=parallel), repeats)
                row(f"dcformat Huffman, {label}", size, enc if not parallel else None, dec,
                    "payload + table text + 4 B per block")
        freqs = rans.normalize(np.bincount(symbols))
        bs = 1 << 16
        payload, bb = rans.encode(symbols, freqs, bs)
        assert np.array_equal(rans.decode(payload, n, freqs, bs, bb), symbols)
        enc = median_time(lambda: rans.encode(symbols, freqs, bs), repeats)
        dec = median_time(lambda: rans.decode(payload, n, freqs, bs, bb), repeats)
        row("dcformat rANS, 1 thread", len(payload) + len(rans.frequencies_to_hex(freqs)) + 4 * len(bb), enc, dec,
            "payload + table text + 4 B per block (Policy(coder='rans'))")
        try:
            from bitarray import bitarray, decodetree
            from bitarray.util import canonical_huffman

            values, counts = np.unique(symbols, return_counts=True)
            codedict, _, _ = canonical_huffman({int(v): int(c) for v, c in zip(values, counts)})
            as_list = symbols.tolist()
            bits = bitarray(endian="little")
            bits.encode(codedict, as_list)
            tree = decodetree(codedict)
            assert list(bits.decode(tree)) == as_list

            def bit_encode():
                b = bitarray(endian="little")
                b.encode(codedict, as_list)

            enc = median_time(bit_encode, repeats)
            dec = median_time(lambda: list(bits.decode(tree)), repeats)
            row("bitarray canonical Huffman", (len(bits) + 7) // 8, enc, dec, "from/to a Python list; no table counted")
        except ImportError:
            notes.append("bitarray not installed: its Huffman coder was skipped")
        try:
            import zstandard

            raw = symbols.astype(np.uint8).tobytes() if int(symbols.max()) < 256 else symbols.tobytes()
            dctx = zstandard.ZstdDecompressor()
            for level in (1, 3, 19):
                cctx = zstandard.ZstdCompressor(level=level)
                comp = cctx.compress(raw)
                assert dctx.decompress(comp) == raw
                enc = median_time(lambda: cctx.compress(raw), repeats)
                dec = median_time(lambda: dctx.decompress(comp), repeats)
                row(f"zstd {level} (byte per symbol)", len(comp), enc, dec)
        except ImportError:
            notes.append("zstandard not installed: zstd on the streams was skipped")
    return rows


def load_pipeline(path: Path, dense: np.ndarray, repeats: int, threads: int) -> list[dict]:
    """dcformat.load_file of the synthetic file, its stages, and zstd-19 decompression of the raw float32."""
    import dcformat
    from dcformat import codec, container, huffman, relindex

    rows = []
    nbytes = dense.nbytes
    got = dcformat.load_file(path)["weight"]
    assert np.array_equal(got.view(np.uint32), dense.view(np.uint32))

    def add(name: str, seconds: float, note: str = "") -> None:
        rows.append({"step": name, "ms": seconds * 1e3, "out_mb_s": nbytes / seconds / 1e6, "note": note})

    for n in sorted({1, threads}):
        add(f"dcformat.load_file (whole pipeline), threads={n}",
            median_time(lambda: dcformat.load_file(path, threads=n), repeats), "file in the page cache")
    with dcformat.open(path) as f:
        info = f.layout("weight")
        tables = codec.TableCache(f.header.tables)
        buf = f._buf
        for key in ("gaps", "indices"):
            stream = getattr(info, key)
            add(f"  CRC-32 of the {key} section", median_time(
                lambda: container.check_section(buf, stream.section, key, "weight"), repeats))
            data = bytes(container.check_section(buf, stream.section, key, "weight"))
            lengths = tables.get(stream.table)
            for parallel in (False, True):
                add(f"  Huffman decode of {key}, {'all threads' if parallel else '1 thread'}", median_time(
                    lambda: huffman.decode(data, info.entries, lengths, stream.block_size, list(stream.block_bytes),
                                           parallel=parallel), repeats))
        gaps = codec.decode_stream(buf, info.gaps, tables, "weight", "gaps")
        indices = codec.decode_stream(buf, info.indices, tables, "weight", "indices")
        codebook = np.frombuffer(container.check_section(buf, info.codebook, "codebook", "weight"), np.float32).copy()
        rows_, cols_ = dense.shape
        add("  relindex.decode_dense_codebook (new output)", median_time(
            lambda: relindex.decode_dense_codebook(gaps, indices, codebook, rows_, cols_, info.layout), repeats),
            "includes first-touch page faults of the 64 MB output")
    add("  np.zeros + first touch of 64 MB (reference)", median_time(
        lambda: np.zeros(dense.size, np.float32)[:: 1024].fill(1), repeats))
    try:
        import zstandard

        raw = dense.tobytes()
        comp = zstandard.ZstdCompressor(level=19).compress(raw)
        dctx = zstandard.ZstdDecompressor()
        assert dctx.decompress(comp) == raw
        add(f"zstd 19 decompression of the raw float32 ({len(comp):,} B)", median_time(
            lambda: np.frombuffer(dctx.decompress(comp), np.float32), repeats), "1 thread")
    except ImportError:
        pass
    return rows


def thread_cases(seed: int = 0) -> dict[str, tuple[dict[str, np.ndarray], object]]:
    """The files of the threads=1 vs threads=N comparison: (tensors, policy) by name."""
    import data
    from dcformat import Policy

    rng = np.random.default_rng(seed)
    model = {f"layer{i}.weight": rng.laplace(0.0, 0.02, (1024, 4096)).astype(np.float32) for i in range(8)}
    synthetic = data.synthetic().tensors
    dense = {"weight": rng.laplace(0.0, 0.02, (4096, 4096)).astype(np.float32)}
    return {
        "8 x 1024x4096, 10% kept, 5-bit codebook, 5-bit indices": (model, Policy(prune=0.9, fc_bits=5, index_bits=5)),
        "synthetic 4096x4096 CSR, 6-bit codebook, 5-bit indices": (synthetic, Policy(fc_bits=6, index_bits=5, layout="csr")),
        "synthetic 4096x4096 CSC, 6-bit codebook, 5-bit indices": (synthetic, Policy(fc_bits=6, index_bits=5, layout="csc")),
        "dense 4096x4096 shared, 5-bit codebook (Huffman)": (dense, Policy(fc_bits=5)),
    }


def thread_scaling(work: Path, repeats: int = 11, threads: tuple[int, ...] = (1, 2)) -> list[dict]:
    """dcformat.load_file of each `thread_cases` file at each thread count: medians of `repeats` runs,
    the thread counts taking turns run by run (so a change in the machine's load hits all alike),
    after checking that every thread count decodes the same bits."""
    import dcformat

    rows = []
    for name, (tensors, policy) in thread_cases().items():
        path = work / f"threads-{len(rows)}.dcf"
        dcformat.save_file(tensors, path, policy=policy)
        nbytes = sum(a.nbytes for a in tensors.values())
        with dcformat.open(path) as f:
            layout = sorted({f"{i.encoding}" + (f" {i.layout}" if i.layout else "") for i in map(f.layout, f.keys())})
        reference = dcformat.load_file(path, threads=1)
        for n in threads:
            got = dcformat.load_file(path, threads=n)
            assert all(np.array_equal(got[k].view(np.uint8), reference[k].view(np.uint8)) for k in reference)
        del reference, got
        times: dict[int, list[float]] = {n: [] for n in threads}
        load_start = os.getloadavg()[0]
        for _ in range(repeats):
            for n in threads:
                start = time.perf_counter()
                dcformat.load_file(path, threads=n)
                times[n].append(time.perf_counter() - start)
        base = statistics.median(times[threads[0]])
        for n in threads:
            seconds = statistics.median(times[n])
            rows.append({"file": name, "stored": ", ".join(layout), "file_bytes": path.stat().st_size,
                         "threads": n, "ms": seconds * 1e3, "out_mb_s": nbytes / seconds / 1e6,
                         "speedup": base / seconds, "load_average": (load_start, os.getloadavg()[0])})
        path.unlink()
    rows += fresh_memory_scaling(repeats, threads)
    return rows


def fresh_memory_scaling(repeats: int, threads: tuple[int, ...], nbytes: int = 64 << 20) -> list[dict]:
    """The ceiling under every decoder's output: a new 64 MB array (np.zeros) whose pages are first
    touched on 1 and on N threads. The kernel zeroes each page on its first touch, and on a VM that
    scales with the memory bandwidth, not the cores: part of every decode above is this."""
    import threading

    import numba

    @numba.njit(nogil=True)
    def touch(a, lo, hi):  # one write per 4 KB page
        for i in range(lo, hi, 4096):
            a[i] = 1

    def run(n: int) -> None:
        a = np.zeros(nbytes, np.uint8)
        cuts = [nbytes * k // n // 4096 * 4096 for k in range(n)] + [nbytes]
        helpers = [threading.Thread(target=touch, args=(a, cuts[k], cuts[k + 1])) for k in range(1, n)]
        for t in helpers:
            t.start()
        touch(a, cuts[0], cuts[1])
        for t in helpers:
            t.join()

    for n in threads:
        run(n)  # compiles, and warms the allocator
    times: dict[int, list[float]] = {n: [] for n in threads}
    load_start = os.getloadavg()[0]
    for _ in range(repeats):
        for n in threads:
            start = time.perf_counter()
            run(n)
            times[n].append(time.perf_counter() - start)
    base = statistics.median(times[threads[0]])
    return [{"file": "reference: first touch of a new 64 MB array (page zeroing, no decoding)", "stored": "-",
             "file_bytes": 0, "threads": n, "ms": statistics.median(times[n]) * 1e3,
             "out_mb_s": nbytes / statistics.median(times[n]) / 1e6, "speedup": base / statistics.median(times[n]),
             "load_average": (load_start, os.getloadavg()[0])} for n in threads]


def kmeans_comparison(repeats: int, notes: list[str], seed: int = 1) -> list[dict]:
    """dcformat's 1-D k-means vs scikit-learn KMeans, same linear init, on a 4096x9216 layer at 9% kept."""
    from dcformat import quantize

    rng = np.random.default_rng(seed)
    w = rng.laplace(0.0, 0.02, size=(4096, 9216)).astype(np.float32)
    flat = w.reshape(-1)
    k_keep = int(flat.size * 0.09)
    threshold = np.partition(np.abs(flat), flat.size - k_keep)[flat.size - k_keep]
    w[np.abs(w) < threshold] = 0
    nonzeros = flat[flat != 0].astype(np.float64)
    rows = []

    def sse(values: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
        return float(np.sum((values - centroids[labels]) ** 2))

    codebook, indices = quantize.quantize(w, 5, sparse=True)
    kept = flat != 0
    codes = indices.reshape(-1)[kept]
    t = median_time(lambda: quantize.quantize(w, 5, sparse=True), repeats)
    rows.append({"method": "dcformat quantize.quantize(bits=5, sparse=True)", "seconds": t,
                 "sse": sse(nonzeros, codebook.astype(np.float64), codes), "k": len(codebook) - 1,
                 "note": "whole step: finds the non-zeros, k-means, float32 codebook, indices"})
    k = 31  # 2**5 - 1 centroids for the non-zeros; index 0 is the zero
    centroids, labels = quantize.kmeans_1d(nonzeros, k)
    t = median_time(lambda: quantize.kmeans_1d(nonzeros, k), repeats)
    rows.append({"method": "dcformat quantize.kmeans_1d(k=31)", "seconds": t,
                 "sse": sse(nonzeros, centroids, labels), "k": len(centroids), "note": "float64 centroids"})
    try:
        from sklearn.cluster import KMeans

        init = np.linspace(nonzeros.min(), nonzeros.max(), k).reshape(-1, 1)
        x = nonzeros.reshape(-1, 1)
        model = KMeans(n_clusters=k, init=init, n_init=1, max_iter=300, random_state=0)
        sk_repeats = max(1, min(repeats, 3))
        t = median_time(lambda: model.fit(x), sk_repeats)
        rows.append({"method": "scikit-learn KMeans (lloyd, same linear init)", "seconds": t,
                     "sse": float(model.inertia_), "k": k, "note": f"median of {sk_repeats}; n_iter {model.n_iter_}"})
    except ImportError:
        notes.append("scikit-learn not installed: the k-means comparison has no reference")
    for r in rows:
        r["nonzeros"] = int(nonzeros.size)
    return rows


def cli_timings(work: Path, sparse_file: Path, repeats: int) -> list[dict]:
    """Wall time of `dcformat --help`, `inspect` of a 100 MB file, and two `decompress` runs (cache reuse)."""
    import dcformat

    exe = shutil.which("dcformat")
    base = [exe] if exe else [sys.executable, "-m", "dcformat.cli"]
    big = work / "big-100mb.dcf"
    if not big.exists():
        dcformat.save_file({"w": np.ones(25_000_000, np.float32)}, big, policy=dcformat.Policy(lossless=True))
    rows = []
    for label, args in (("dcformat --help", ["--help"]),
                        (f"dcformat inspect ({big.stat().st_size / 1e6:.0f} MB file)", ["inspect", str(big)])):
        times = []
        for _ in range(repeats):
            seconds, proc = run_cli(base + args)
            if proc.returncode != 0:
                raise RuntimeError(f"{label} failed: {proc.stderr[-500:]}")
            times.append(seconds)
        rows.append({"command": label, "seconds": statistics.median(times), "note": f"median of {repeats}"})
    # A fresh numba cache folder, so the first run compiles and stores every kernel it uses and the
    # second must load them all; NUMBA_DEBUG_CACHE prints "[cache] data saved" for each one stored.
    env = dict(os.environ, NUMBA_DEBUG_CACHE="1", NUMBA_CACHE_DIR=str(work / "numba-cache"))
    out = work / "decompressed.npz"
    for run in ("first (empty cache)", "second"):
        seconds, proc = run_cli(base + ["decompress", str(sparse_file), "-o", str(out), "--force"], env)
        if proc.returncode != 0:
            raise RuntimeError(f"decompress failed: {proc.stderr[-500:]}")
        saved = len(re.findall(r"data saved", proc.stdout + proc.stderr))
        rows.append({"command": f"dcformat decompress (synthetic file), {run} run", "seconds": seconds,
                     "note": f"{saved} kernels compiled and cached in this run"})
    return rows


def run_cli(args: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Run a command; (wall seconds, completed process)."""
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    return time.perf_counter() - start, proc


def main(argv: list[str] | None = None) -> int:
    """`python benchmarks/kernels.py threads`: the threads=1 vs threads=N load_file comparison alone."""
    import argparse
    import json
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("what", choices=["threads"])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="comma-separated thread counts")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    counts = tuple(sorted({int(t) for t in args.threads.split(",")}))
    with tempfile.TemporaryDirectory(prefix="dcformat-threads-") as work:
        rows = thread_scaling(Path(work), args.repeats, counts)
    print("| file | stored | threads | ms | MB/s of output | speedup | load average (start, end) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['file']} | {r['stored']} | {r['threads']} | {r['ms']:.1f} | {r['out_mb_s']:,.0f} | "
              f"{r['speedup']:.2f}x | {r['load_average'][0]:.2f}, {r['load_average'][1]:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
