"""Markdown tables and PNG plots of a benchmark run (matplotlib is imported only here, lazily)."""

from __future__ import annotations

from pathlib import Path


def _num(x, fmt: str = ",.0f") -> str:
    return "" if x is None else format(x, fmt)


def _quality(r: dict) -> str:
    if r.get("error"):
        return f"**{r['error']}**"
    if r.get("lossless"):
        return "lossless"
    parts = []
    if "cosine" in r:
        parts.append(f"cosine {r['cosine']:.5f}")
    if "accuracy" in r:
        parts.append(f"accuracy {r['accuracy']:.4f} (orig. {r['accuracy_original']:.4f})")
    if "rel_rms_err" in r:
        parts.append(f"rel. RMS err {r['rel_rms_err']:.3g}")
    return ", ".join(parts)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(res: dict) -> str:
    env = res["environment"]
    out = [
        "# dcformat benchmarks",
        "",
        f"{env['date']}, {env.get('cpu', '')} ({env['cpus']} CPUs), Python {env['python']}, numpy {env['numpy']}, "
        f"numba {env['numba']}, dcformat {env['dcformat']}. Load average at start / end: "
        f"{env['load_average_start'][0]:.2f} / {env.get('load_average_end', [0])[0]:.2f}. "
        f"Each encode speed is the median of {res['repeats']} runs and each decode speed of "
        f"{max(res['repeats'], res.get('decode_repeats', res['repeats']))} (NNCodec: {res['repeats']}), after a "
        f"verified round trip; MB/s are of dense "
        f"float32 (in for encode, out for decode), 1 MB = 10^6 B. {'Quick run.' if res['quick'] else ''}",
        "",
    ]
    for name, info in res.get("datasets", {}).items():
        rows = [r for r in res["rows"] if r["dataset"] == name]
        out += [f"## {name}", "", f"{info['note']}: {info['params']:,} parameters, {info['bytes']:,} B as float32"
                + (f", {info['nonzeros']:,} non-zeros" if info["nonzeros"] < info["params"] else "") + ".", ""]
        sparse = info["nonzeros"] < 0.5 * info["params"]
        header = ["method", "setting", "bytes", "ratio", "bits/param"] + (["bits/nz"] if sparse else []) + [
            "enc MB/s", "dec MB/s", "quality"]
        body = []
        for r in rows:
            body.append([r["method"], r["setting"], _num(r.get("bytes")), _num(r.get("ratio"), ".2f"),
                         _num(r.get("bits_per_param"), ".3g")] + ([_num(r.get("bits_per_nonzero"), ".3g")] if sparse else [])
                        + [_num(r.get("encode_mb_s"), ".3g"), _num(r.get("decode_mb_s"), ".4g"), _quality(r)])
        out += [table(header, body), ""]
        if name == "minilm":
            out += equal_quality(rows)
        if name == "synthetic" and "synthetic_streams" in res:
            s = res["synthetic_streams"]
            out += [f"Streams of the dcformat file (index bits {s['index_bits']}, {s['entries']:,} entries, "
                    f"{s['fillers']:,} fillers) against their own order-0 entropy:", ""]
            out += [table(["stream", "coding", "bytes", "table chars", "entropy bits/symbol", "entropy bound B", "over"],
                          [[x["stream"], x["coding"], _num(x["bytes"]), _num(x["table_chars"]), f"{x['entropy_bits']:.4f}",
                            _num(x["entropy_bytes"]), f"{100 * x['over_entropy']:+.2f}%"] for x in s["streams"]]), ""]
            out += [f"Whole file: {s['file_bytes']:,} B = **{s['file_over_bound']:.4f}x** the entropy bound of its two "
                    f"streams ({s['bound_bytes']:,.0f} B).", ""]
    if res.get("entropy_coders"):
        out += ["## Entropy coders on the synthetic streams", "",
                "Symbols per second; sizes against each stream's order-0 entropy.", ""]
        out += [table(["stream", "method", "bytes", "over entropy", "enc M symbols/s", "dec M symbols/s", "note"],
                      [[r["stream"], r["method"], _num(r["bytes"]), f"{100 * r['over_entropy']:+.2f}%",
                        _num(r["enc_msym_s"], ".4g"), _num(r["dec_msym_s"], ".4g"), r["note"]]
                       for r in res["entropy_coders"]]), ""]
    if res.get("load_pipeline"):
        out += ["## Loading the synthetic matrix", "",
                "Output MB/s of the 64 MB dense float32 matrix (stages: the same output size over the stage's time).", ""]
        out += [table(["step", "ms", "MB/s of output", "note"],
                      [[r["step"], f"{r['ms']:.2f}", _num(r["out_mb_s"]), r["note"]] for r in res["load_pipeline"]]), ""]
    if res.get("threads"):
        out += ["## Decoding on all cores", "",
                "`dcformat.load_file(path, threads=n)`: tensors side by side and large ones in pieces; the thread "
                "counts take turns run by run, so a change in the machine's load hits all alike. The reference rows "
                "decode nothing: they first-touch a new 64 MB array, whose pages the kernel zeroes on that touch; "
                "every decode's output pays this, and its speed-up on N threads bounds theirs.", ""]
        out += [table(["file", "stored as", "threads", "ms", "MB/s of output", "vs 1 thread", "load avg"],
                      [[r["file"], r["stored"], str(r["threads"]), f"{r['ms']:.2f}", _num(r["out_mb_s"]),
                        f"{r['speedup']:.2f}x", f"{r['load_average'][0]:.2f}"] for r in res["threads"]]), ""]
    if res.get("kmeans"):
        k = res["kmeans"]
        out += ["## k-means: a 4096x9216 layer, 9% kept", "",
                f"{k[0]['nonzeros']:,} non-zeros, 5 bits (31 centroids + the zero), linear initialisation.", ""]
        base = k[0]["sse"]
        out += [table(["method", "seconds", "SSE", "SSE vs dcformat", "note"],
                      [[r["method"], f"{r['seconds']:.3f}", f"{r['sse']:.6g}", f"{r['sse'] / base:.6f}", r["note"]]
                       for r in k]), ""]
    if res.get("cli"):
        out += ["## Command line", "", table(["command", "seconds", "note"],
                                             [[r["command"], f"{r['seconds']:.3f}", r["note"]] for r in res["cli"]]), ""]
    if res["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(out)


def equal_quality(rows: list[dict]) -> list[str]:
    """For each NNCodec setting, the smallest dcformat file at equal or better embedding cosine."""
    peers = [r for r in rows if r["method"] == "NNCodec" and "cosine" in r and "bytes" in r]
    ours = [r for r in rows if r["method"] == "dcformat" and "cosine" in r and "bytes" in r]
    if not peers or not ours:
        return []
    body = []
    for p in sorted(peers, key=lambda r: -r["cosine"]):
        match = min((r for r in ours if r["cosine"] >= p["cosine"]), key=lambda r: r["bytes"], default=None)
        if match is None:
            body.append([p["setting"], f"{p['cosine']:.5f}", _num(p["bytes"]), "none as good", "", "", ""])
            continue
        body.append([p["setting"], f"{p['cosine']:.5f}", _num(p["bytes"]), f"{match['setting']} ({match['cosine']:.5f})",
                     _num(match["bytes"]), f"{match['bytes'] / p['bytes']:.3f}",
                     f"{match['encode_mb_s'] / p['encode_mb_s']:.1f}x / {match['decode_mb_s'] / p['decode_mb_s']:.1f}x"])
    return ["At equal quality: for each NNCodec setting, the smallest dcformat file whose embedding cosine is at "
            "least as high (both measured on the same sentences, in this run).", "",
            table(["NNCodec", "cosine", "bytes", "smallest dcformat at >= cosine", "bytes", "size vs NNCodec",
                   "encode / decode speed vs NNCodec"], body), ""]


def plots(res: dict, out: Path, notes: list[str]) -> None:
    """size vs decode speed per data set, and MiniLM's embedding cosine vs bits per parameter."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        notes.append("plots skipped: `pip install matplotlib` to draw them")
        return
    datasets = list(res.get("datasets", {}))
    if datasets:
        fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.5), squeeze=False)
        for ax, name in zip(axes[0], datasets):
            for r in res["rows"]:
                if r["dataset"] != name or "bytes" not in r:
                    continue
                marker = "o" if r["lossless"] else "^"
                color = "C3" if r["method"] == "dcformat" else "C0"
                ax.scatter(r["bits_per_param"], r["decode_mb_s"], marker=marker, color=color)
                ax.annotate(f"{r['method']} {r['setting']}"[:34], (r["bits_per_param"], r["decode_mb_s"]), fontsize=6)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("bits per parameter")
            ax.set_ylabel("decode MB/s (dense float32)")
            ax.set_title(f"{name} (o lossless, ^ lossy; red: dcformat)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "size_vs_decode_speed.png", dpi=120)
        plt.close(fig)
    rows = [r for r in res["rows"] if r["dataset"] == "minilm" and "cosine" in r]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        series = (("dcformat, steps x sensitivity", "C3", lambda r: "sensitivity" in r["setting"] or "fit" in r["setting"]),
                  ("dcformat, one step", "C1", lambda r: "one for all" in r["setting"]),
                  ("dcformat, k-means codebooks", "C2", lambda r: "k-means" in r["setting"]))
        for label, color, member in series + (("NNCodec", "C0", None),):
            method = "NNCodec" if member is None else "dcformat"
            pts = sorted((r["bits_per_param"], r["cosine"], r["setting"]) for r in rows
                         if r["method"] == method and (member is None or member(r)))
            if pts:
                ax.plot([p[0] for p in pts], [1 - p[1] for p in pts], "o-", color=color, label=label, markersize=4)
                if member is None:
                    for x, y, s in pts:
                        ax.annotate(s, (x, 1 - y), fontsize=6)
        ax.set_yscale("log")
        ax.set_xlabel("bits per parameter")
        ax.set_ylabel("1 - mean embedding cosine")
        ax.set_title("all-MiniLM-L6-v2: size vs embedding fidelity", fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "minilm_cosine.png", dpi=120)
        plt.close(fig)
