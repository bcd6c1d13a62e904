"""Size against held-out similarity on all-MiniLM-L6-v2, for each fit method and NNCodec, in one run.

    python benchmarks/quality.py [--out benchmarks/results] [--no-nncodec] [--no-cli]

Similarity: mean cosine of the sentence embeddings (mean-pooled, L2-normalised) of the decoded
model against the original's, on two kinds of text neither the search nor any tuning saw:
- "held-out prose": the half of the pydoc_data.topics passages set apart by the CLI's split;
- "everyday": the 100 short everyday sentences of benchmarks/data.py (SENTENCES + CALIBRATION).
Every dcformat point is a real file (its exact size from the encoder; its tensors as it decodes them).
The CLI row runs `dcformat compress MODEL_DIR --min-similarity 0.99` as a user would, timed whole.
NNCodec runs in its own venv (see run.py) at a few qp; skipped with a note when it is not built.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402

from dcformat import fit as F  # noqa: E402
from dcformat.allocation import file_size  # noqa: E402
from dcformat.interop import transformers_fit as tf  # noqa: E402

DENSE = None  # float32 bytes of the model's float tensors, set in main
THETA_FACTORS = {  # around each method's θ for cosine 0.99 on the search passages
    "uniform": (0.5, 0.7, 1.0, 1.4, 2.0),
    "sensitivity": (0.5, 0.7, 1.0, 1.4, 2.0),
    "rd": (0.35, 0.5, 0.7, 1.0, 1.4, 2.0),
    "gptq": (0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 4.0),
    # wide, to meet every NNCodec point, and in steps of about 2^(1/4) from 1 to 2.8 (qp -32's 0.994
    # and -29's 0.981 lie there), then √2 up to the highest (qp -38's 0.999): a point "at or above"
    # a fidelity is then never far past it
    "fisher": (0.15, 0.25, 0.35, 0.5, 0.7, 1.0, 1.2, 1.4, 1.7, 2.0, 2.4, 2.8, 4.0, 5.6, 8.0, 11.3, 16.0),
}
NNCODEC_QPS = (-38, -32, -29, -26)


def point(fam: F.Family, theta: float, sims: dict) -> dict:
    """One file of the family: exact bytes, ratio, similarity on each kind of text."""
    tensors = fam.tensors(theta)
    policy = fam.policy(theta)
    size = file_size(tensors, policy)
    decoded = fam.decoded(theta)
    row = {"method": fam.method, "theta": theta, "bytes": size, "ratio": DENSE / size}
    row.update({k: s(decoded) for k, s in sims.items()})
    return row


def theta_for(fam: F.Family, sim, target: float = 0.99) -> float:
    """θ of the smallest file at `target` on the search passages (the search fit_tensors runs)."""
    scores = {}

    def ok(t: float) -> bool:
        if t not in scores:
            scores[t] = sim(fam.decoded(t)) >= target
        return scores[t]

    lo = hi = fam.start(target)
    if ok(hi):
        while ok(lo):
            hi, lo = lo, lo / 2
    else:
        while not ok(hi):
            lo, hi = hi, hi * 2
    for _ in range(6):
        mid = (lo * hi) ** 0.5
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def run_cli(folder: Path, work: Path) -> dict:
    """The one command, timed whole in a fresh process: its summary (--json)."""
    out = work / "minilm-cli.dcf"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dcformat.cli", "compress", str(folder), "-o", str(out), "-f",
                           "--min-similarity", "0.99", "--json"], capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-300:]}
    summary = json.loads(proc.stdout)["summary"]
    summary["wall_seconds"] = seconds
    summary["path"] = str(out)
    return summary


def main(argv: list[str] | None = None) -> int:
    global DENSE
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--no-nncodec", action="store_true")
    p.add_argument("--no-cli", action="store_true")
    p.add_argument("--methods", default=",".join(F.METHODS))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    folder = data.minilm_folder()
    model, tok, kind = tf.load_folder(folder)
    texts = tf.calibration_texts()
    search_texts, held_texts = tf.split_texts(texts)
    everyday = data.SENTENCES + data.CALIBRATION
    search = tf.OutputSimilarity(model, tf._batches_of(tok, search_texts), kind)
    sims = {"held_out": tf.OutputSimilarity(model, tf._batches_of(tok, held_texts), kind),
            "everyday": tf.OutputSimilarity(model, tf._batches_of(tok, everyday), kind)}
    tensors = {n: v.numpy().copy() for n, v in model.state_dict().items() if v.dtype.is_floating_point}
    DENSE = sum(v.nbytes for v in tensors.values())
    rows: list[dict] = []
    clock = time.perf_counter()
    extra = tf.hessian_texts(texts, search_texts, held_texts)  # as the CLI does
    hessians = tf.linear_hessians(model, search.batches + tf._batches_of(tok, extra))
    base = F.family(tensors, search, "uniform")
    row_weights = tf.text_row_weights(model, tok, texts, held_texts)  # fisher's, as the CLI counts them
    from dcformat.allocation import sensitivity

    sens = sensitivity(tensors, search, base.base.with_(step=1.0))
    notes.append(f"sensitivities of {len(base.names)} tensors measured once on the {len(search_texts)} search "
                 f"passages, input Hessians on those and {len(extra)} more (never held-out ones), in "
                 f"{time.perf_counter() - clock:.0f} s")
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        fam = F.Family(tensors, base.names, method, sensitivities=sens, hessians=hessians, row_weights=row_weights)
        theta = theta_for(fam, search)
        for factor in THETA_FACTORS[method]:
            row = point(fam, theta * factor, sims)
            row["search"] = search(fam.decoded(theta * factor))
            rows.append(row)
            print(json.dumps(row), flush=True)
        notes.append(f"{method}: {len(THETA_FACTORS[method])} files around θ={theta:.4g} in "
                     f"{time.perf_counter() - t0:.0f} s")
    work = Path(tempfile.mkdtemp(prefix="dcf-quality-"))
    if not args.no_nncodec:
        import run

        python = run.nncodec_python(build=False, notes=notes)
        if python is not None:
            ds = data.minilm()

            def quality(decoded: dict) -> dict:
                return {k: s(decoded) for k, s in sims.items()}

            for r in run.nncodec_rows(python, ds, list(NNCODEC_QPS), 1, quality, work, notes):
                row = {"method": "NNCodec", "setting": r["setting"], "bytes": r["bytes"], "ratio": DENSE / r["bytes"],
                       "held_out": r.get("held_out"), "everyday": r.get("everyday")}
                rows.append(row)
                print(json.dumps(row), flush=True)
    cli = None if args.no_cli else run_cli(folder, work)
    if cli and "error" not in cli:
        from dcformat import load_file

        decoded = load_file(cli["path"])
        cli["everyday"] = sims["everyday"](decoded)
        cli["held_out_remeasured"] = sims["held_out"](decoded)
    results = {"dense_bytes": DENSE, "kind": kind, "rows": rows, "cli": cli, "notes": notes,
               "texts": {"search": len(search_texts), "held_out": len(held_texts), "everyday": len(everyday)}}
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, out / "quality.md")
    plot(results, out / "quality.png")
    print((out / "quality.md").read_text())
    return 0


def best_at(rows: list[dict], method: str, key: str, target: float = 0.99) -> dict | None:
    """The smallest file of `method` whose `key` similarity is >= target."""
    ok = [r for r in rows if r["method"] == method and r.get(key) is not None and r[key] >= target]
    return max(ok, key=lambda r: r["ratio"]) if ok else None


def write_markdown(results: dict, path: Path) -> None:
    rows = results["rows"]
    lines = ["# Size against held-out similarity: all-MiniLM-L6-v2", "",
             f"Sentence-embedding cosine against the original on {results['texts']['held_out']} held-out prose "
             f"passages (pydoc_data.topics) and {results['texts']['everyday']} everyday sentences; the search saw "
             f"{results['texts']['search']} other passages. Ratio: float32 bytes / file bytes.", "",
             "| method | setting | bytes | ratio | held-out prose | everyday |", "|---|---|---|---|---|---|"]
    for r in rows:
        setting = r.get("setting") or f"θ={r['theta']:.3g}"
        lines.append(f"| {r['method']} | {setting} | {r['bytes']:,} | {r['ratio']:.2f} | {r['held_out']:.5f} | "
                     f"{r['everyday']:.5f} |")
    lines += ["", "Smallest file at cosine >= 0.99 (of the points above):", "",
              "| method | on held-out prose | on everyday sentences |", "|---|---|---|"]
    for m in sorted({r["method"] for r in rows}, key=str):
        a, b = best_at(rows, m, "held_out"), best_at(rows, m, "everyday")
        cells = ["-" if r is None else f"{r['ratio']:.2f}x" for r in (a, b)]
        lines.append(f"| {m} | {cells[0]} | {cells[1]} |")
    nncodec = [r for r in rows if r["method"] == "NNCodec"]
    if nncodec:
        lines += ["", "Against NNCodec at equal or better fidelity (smallest point at or above its similarity; "
                  "bytes / NNCodec's bytes):", "", "| NNCodec | text | " + " | ".join(
                      m for m in F.METHODS if any(r["method"] == m for r in rows)) + " |",
                  "|---|---|" + "---|" * sum(any(r["method"] == m for r in rows) for m in F.METHODS)]
        for n in nncodec:
            for key in ("held_out", "everyday"):
                cells = []
                for m in F.METHODS:
                    mine = [r for r in rows if r["method"] == m]
                    if not mine:
                        continue
                    ok = [r for r in mine if r[key] >= n[key]]
                    cells.append(f"{min(r['bytes'] for r in ok) / n['bytes']:.3f}" if ok else "-")
                lines.append(f"| {n['setting']} ({n['bytes']:,} B, {n[key]:.5f}) | {key} | " + " | ".join(cells) + " |")
    cli = results.get("cli")
    if cli:
        if "error" in cli:
            lines += ["", f"CLI: failed: {cli['error']}"]
        else:
            lines += ["", f"CLI `dcformat compress MODEL_DIR -o OUT --min-similarity 0.99`: {cli['file_bytes']:,} B, "
                      f"{cli['ratio']:.2f}x, held-out cosine {cli['held_out_similarity']:.5f} (search "
                      f"{cli['search_similarity']:.5f}), everyday {cli['everyday']:.5f}, {cli['wall_seconds']:.0f} s "
                      f"wall in a fresh process, method {cli['method']}"]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]]
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True, dpi=80)
    for ax, key, title in ((axes[0], "held_out", "held-out prose"), (axes[1], "everyday", "everyday sentences")):
        for m in sorted({r["method"] for r in results["rows"]}, key=str):
            pts = sorted((r["ratio"], r[key]) for r in results["rows"] if r["method"] == m and r.get(key) is not None)
            ax.plot([1 - s for _, s in pts], [x for x, _ in pts], "o-" if m != "NNCodec" else "s--", label=m, ms=4)
        cli = results.get("cli")
        if cli and "error" not in cli:
            ax.plot([1 - cli["held_out_similarity" if key == "held_out" else "everyday"]], [cli["ratio"]], "k*",
                    ms=12, label="CLI --min-similarity 0.99")
        ax.axvline(0.01, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel(f"1 - cosine ({title})")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ratio (float32 / file)")
    axes[1].legend(fontsize=7)
    fig.suptitle("all-MiniLM-L6-v2: file size against output similarity", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
