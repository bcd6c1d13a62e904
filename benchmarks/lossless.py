"""The lossless table: `dcformat --lossless` (the fields encoding, format 1.2) beside safetensors, zstd -19 and
ZipNN, on all-MiniLM-L6-v2 as shipped (float32) and cast to bfloat16 and float16, in the same run.

    python benchmarks/lossless.py [--repeats 5] [--out benchmarks/results] [--llm-mb 0]

Sizes are whole files (headers included) as a share of the safetensors file of the same tensors. Every
peer's round trip is checked bit for bit before it is timed; one that fails is reported, not timed.
Speeds are MB/s of tensor bytes (in for encode, out for decode), the median of `--repeats` runs, one
thread unless the row says 2. `--llm-mb N` adds an LLM-shaped bfloat16 check: N MB of weights drawn to
match the exponent histogram of MiniLM's weights (size and speed, dcformat and ZipNN).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402

Tensors = dict[str, np.ndarray]


def cast(tensors: Tensors, dtype: str) -> Tensors:
    """The float tensors cast to `dtype` (ml_dtypes for bfloat16), the others as they are."""
    from dcformat.codec import numpy_dtype

    dt = numpy_dtype(dtype)
    return {k: (v.astype(dt) if v.dtype.kind == "f" else v) for k, v in tensors.items()}


def safetensors_bytes(tensors: Tensors) -> bytes:
    from dcformat.interop.safetensors import save_bytes

    return save_bytes(tensors)


def safetensors_load(blob: bytes) -> Tensors:
    import tempfile

    from dcformat.interop.safetensors import read_file

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(blob)
        f.flush()
        return {k: np.array(v) for k, v in read_file(f.name).items()}


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def same(a: Tensors, b: Tensors) -> bool:
    return sorted(a) == sorted(b) and all(
        np.asarray(a[k]).dtype == np.asarray(b[k]).dtype and np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes()
        for k in a)


def dcformat_rows(tensors: Tensors, nbytes: int, base: int, repeats: int) -> list[dict]:
    import dcformat
    from dcformat import Policy

    policy = Policy(lossless=True)
    blob = dcformat.save(tensors, policy=policy)
    assert same(tensors, dcformat.load(blob, threads=1)), "dcformat does not round-trip"
    rows = []
    t_enc, _ = timed(lambda: _save_file(tensors, policy, 1), repeats)
    t_enc2, _ = timed(lambda: _save_file(tensors, policy, 2), repeats)
    t_dec1, _ = timed(lambda: dcformat.load(blob, threads=1), repeats)
    t_dec2, _ = timed(lambda: dcformat.load(blob, threads=2), repeats)
    with dcformat.open(blob) as f:
        fields = sum(1 for n in f.keys() if f.layout(n).encoding == "fields")
        version = f.header.version
    rows.append({"method": "dcformat --lossless", "bytes": len(blob), "ratio": len(blob) / base,
                 "encode_MBps": nbytes / t_enc / 1e6, "encode_MBps_2": nbytes / t_enc2 / 1e6,
                 "decode_MBps": nbytes / t_dec1 / 1e6, "decode_MBps_2": nbytes / t_dec2 / 1e6,
                 "note": f"format {version[0]}.{version[1]}, {fields} of {len(tensors)} tensors in fields"})
    return rows


def _save_file(tensors: Tensors, policy, threads: int) -> bytes:
    import tempfile

    import dcformat

    with tempfile.TemporaryDirectory(prefix="dcf-lossless-") as folder:
        path = os.path.join(folder, "m.dcf")
        dcformat.save_file(tensors, path, policy=policy, threads=threads)
        return Path(path).read_bytes()


def zstd_row(st: bytes, tensors: Tensors, nbytes: int, base: int, repeats: int) -> dict:
    import zstandard

    cctx, dctx = zstandard.ZstdCompressor(level=19), zstandard.ZstdDecompressor()
    t_enc, blob = timed(lambda: cctx.compress(st), max(1, repeats // 2))
    ok = dctx.decompress(blob) == st
    t_dec, _ = timed(lambda: safetensors_load(dctx.decompress(blob)), repeats)
    return {"method": "zstd -19 (safetensors file)", "bytes": len(blob), "ratio": len(blob) / base,
            "encode_MBps": nbytes / t_enc / 1e6, "decode_MBps": nbytes / t_dec / 1e6,
            "note": "round trip ok" if ok else "ROUND TRIP FAILED"}


def zipnn_rows(st: bytes, tensors: Tensors, dtype: str, nbytes: int, base: int, repeats: int) -> list[dict]:
    """ZipNN 0.5.4 on the safetensors file's bytes, byte mode with the file's float dtype, one thread;
    and, for float32, its numpy mode on the concatenated float32 tensors plus the file's other bytes raw."""
    from zipnn import ZipNN

    rows = []
    z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)
    t_enc, blob = timed(lambda: bytes(z.compress(st)), repeats)
    back = bytes(z.decompress(blob))
    ok = back == st
    row = {"method": f"ZipNN byte mode ({dtype})", "bytes": len(blob), "ratio": len(blob) / base,
           "encode_MBps": nbytes / t_enc / 1e6}
    if ok:
        t_dec, _ = timed(lambda: bytes(z.decompress(blob)), repeats)
        row["decode_MBps"] = nbytes / t_dec / 1e6
        row["note"] = "round trip ok"
    else:
        diff = sum(1 for a, b in zip(back, st) if a != b) if len(back) == len(st) else None
        row["note"] = f"ROUND TRIP FAILED: {diff} of {len(st)} bytes differ" if diff is not None else \
            f"ROUND TRIP FAILED: {len(back)} bytes back for {len(st)}"
        t_dec, _ = timed(lambda: bytes(z.decompress(blob)), repeats)
        row["decode_MBps_unverified"] = nbytes / t_dec / 1e6
    rows.append(row)
    if dtype == "float32":
        zn = ZipNN(input_format="numpy", threads=1)
        floats = np.concatenate([v.reshape(-1) for v in tensors.values() if v.dtype == np.float32])
        other = sum(v.nbytes for v in tensors.values() if v.dtype != np.float32) + (len(st) - nbytes)
        t_enc, blob = timed(lambda: bytes(zn.compress(floats)), repeats)
        back = zn.decompress(blob)
        ok = np.asarray(back).tobytes() == floats.tobytes()
        row = {"method": "ZipNN numpy mode (float32 tensors; header and int64 raw)", "bytes": len(blob) + other,
               "ratio": (len(blob) + other) / base, "encode_MBps": floats.nbytes / t_enc / 1e6}
        if ok:
            t_dec, _ = timed(lambda: zn.decompress(blob), repeats)
            row["decode_MBps"] = floats.nbytes / t_dec / 1e6
        row["note"] = "round trip ok" if ok else "ROUND TRIP FAILED"
        rows.append(row)
    return rows


def plane_entropy(tensors: Tensors, dtype: str) -> float:
    """Order-0 entropy of the fields as dcformat splits them, chunk by chunk, as a share of the bytes of
    the `dtype` tensors: what 'within 1% of the entropy of the planes' is measured against (no tables)."""
    from dcformat import fields as fieldcoding
    from dcformat.codec import _bits_view
    from dcformat.policy import dtype_name

    widths = fieldcoding.split_for(dtype)
    chunk = fieldcoding.chunk_size_for(dtype)
    bits = raw = 0.0
    for a in tensors.values():
        if dtype_name(a.dtype) != dtype:
            continue
        flat = _bits_view(a.reshape(-1))
        raw += a.nbytes
        for c0 in range(0, flat.size, chunk):
            part = flat[c0:c0 + chunk]
            for lo, w in zip(fieldcoding.shifts(widths), widths):
                counts = np.bincount(fieldcoding.extract(part, lo, w), minlength=1 << w)
                p = counts[counts > 0] / part.size
                bits += min(float(-(p * np.log2(p)).sum()), w) * part.size
    return bits / 8 / raw


def llm_bf16(mb: int, reference: Tensors, seed: int = 0) -> Tensors:
    """`mb` MB of bfloat16 weights in 64 MiB-ish matrices, drawn to match the exponent histogram (and sign)
    of MiniLM's float32 weights, with uniform random mantissas."""
    import ml_dtypes

    bits = np.concatenate([v.reshape(-1).view(np.uint32) for v in reference.values() if v.dtype == np.float32])
    top = (bits >> 23).astype(np.int64)  # sign and exponent
    hist = np.bincount(top, minlength=512).astype(np.float64)
    rng = np.random.default_rng(seed)
    out = {}
    n = mb * 1_000_000 // 2 // 4096 * 4096  # whole rows of 4096
    per = 4096 * 4096
    for i in range(-(-n // per)):
        m = min(per, n - i * per)
        se = rng.choice(512, size=m, p=hist / hist.sum()).astype(np.uint16)
        mant = rng.integers(0, 128, size=m, dtype=np.uint16)
        out[f"layers.{i}.weight"] = ((se << 7) | mant).view(ml_dtypes.bfloat16).reshape(-1, 4096)
    return out


def markdown(results: dict) -> str:
    lines = ["# Lossless: dcformat (fields, format 1.2) beside its peers", "",
             f"{results['environment']}", "",
             "Ratios: whole file as a share of the safetensors file of the same tensors. Speeds: MB/s of tensor "
             "bytes, median of the repeats, 1 thread (2 where marked).", ""]
    for name, block in results["datasets"].items():
        lines += [f"## {name}", "", f"{block['tensors']} tensors, {block['bytes']:,} B of tensors, safetensors "
                  f"file {block['base']:,} B; order-0 entropy of dcformat's fields (per chunk, tables not "
                  f"counted): {block.get('entropy', float('nan')):.4f} of the float bytes", "",
                  "| method | bytes | ratio | enc MB/s | enc MB/s 2 thr | dec MB/s | dec MB/s 2 thr | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in block["rows"]:
            def f(k):
                v = r.get(k)
                return f"{v:,.0f}" if isinstance(v, float) else "–"
            lines.append(f"| {r['method']} | {r['bytes']:,} | {r['ratio']:.4f} | {f('encode_MBps')} | "
                         f"{f('encode_MBps_2')} | {f('decode_MBps') if 'decode_MBps' in r else f('decode_MBps_unverified') + ' (unverified)'} | "
                         f"{f('decode_MBps_2')} | {r.get('note', '')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--llm-mb", type=int, default=0, help="MB of LLM-shaped bfloat16 weights (0: skip)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = data.minilm()
    results: dict = {"environment": {"cpus": os.cpu_count(), "load_average_start": os.getloadavg(),
                                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                     "datasets": {}}
    sets = [(f"minilm {d}", d, cast(ds.tensors, d)) for d in args.dtypes.split(",")]
    if args.llm_mb:
        sets.append((f"LLM-shaped bfloat16, {args.llm_mb} MB", "bfloat16", llm_bf16(args.llm_mb, ds.tensors)))
    for name, dtype, tensors in sets:
        print(f"== {name}", flush=True)
        st = safetensors_bytes(tensors)
        nbytes = sum(v.nbytes for v in tensors.values())
        assert same(tensors, safetensors_load(st))
        block = {"tensors": len(tensors), "bytes": nbytes, "base": len(st), "rows": []}
        t_dec, _ = timed(lambda: safetensors_load(st), args.repeats)
        block["rows"].append({"method": "safetensors", "bytes": len(st), "ratio": 1.0, "decode_MBps": nbytes / t_dec / 1e6,
                              "note": "raw"})
        block["entropy"] = plane_entropy(tensors, dtype)
        if not name.startswith("LLM"):
            block["rows"].append(zstd_row(st, tensors, nbytes, len(st), args.repeats))
        block["rows"] += zipnn_rows(st, tensors, dtype, nbytes, len(st), args.repeats)
        block["rows"] += dcformat_rows(tensors, nbytes, len(st), args.repeats)
        for r in block["rows"]:
            print("  ", json.dumps(r), flush=True)
        results["datasets"][name] = block
        results["environment"]["load_average_end"] = os.getloadavg()
        (out / "lossless.json").write_text(json.dumps(results, indent=1))
        (out / "lossless.md").write_text(markdown(results))
    print(f"wrote {out / 'lossless.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
