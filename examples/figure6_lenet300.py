"""Accuracy against file size for LeNet-300-100 on 8x8 digits: pruning, quantization, both (the paper's Fig. 6).

    python examples/figure6_lenet300.py        # about two minutes on 2 cores; needs matplotlib for the PNG

One dense model is trained, then compressed from scratch at each point: pruning only (sparsity s on ip1
and ip2, min(s, 80%) on the 1,000-weight ip3; rounds of pruning and retraining; kept values stored as raw
float32 in the sparse encoding), quantization only (b-bit codebooks with centroid fine-tuning, no
pruning) and pruning + 4-bit quantization, the combination of compress_lenet300.py.
Sizes are whole .dcf files (header, biases, Huffman coding included), as a share of the dense float32
model. Writes examples/figure6_lenet300.png (if matplotlib is installed) and a table in RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import tempfile
import time

import torch

import dcformat
from compress_lenet300 import LeNet300
from digits_common import HERE, Config, accuracy, digits, prune_stage, quantize_stage, store, train_dense, write_section

LAYERS = ("ip1.weight", "ip2.weight", "ip3.weight")
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97)
BITS = (2, 3, 4, 5, 6, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md or the PNG")
    args = parser.parse_args()
    t0 = time.perf_counter()
    base = Config(sparsity={}, bits={}, dense_epochs=60, rounds=4, retrain_epochs=20, finetune_epochs=10, batch=64)
    data = digits(base.seed, base.test_size)
    dense = train_dense(LeNet300, base, data)
    dense_acc = accuracy(dense, data[2], data[3])
    print(f"dense accuracy {dense_acc:.4f}")
    curves: dict[str, list[tuple[float, float, str]]] = {"pruning only": [], "quantization only": [],
                                                         "pruning + quantization (4 bits)": []}
    quiet = lambda s: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.dcf")

        def point(curve: str, label: str, model: torch.nn.Module, policy: dcformat.Policy) -> None:
            report, acc, _ = store(model, LeNet300, policy, path, data)
            rate = report["totals"]["rate"]
            curves[curve].append((rate, acc - dense_acc, label))
            print(f"{curve:32s} {label:6s} size {100 * rate:6.2f}% ({1 / rate:5.1f}x)  accuracy {acc:.4f} "
                  f"({100 * (acc - dense_acc):+.2f})  [{time.perf_counter() - t0:.0f}s]")

        for s in SPARSITIES:
            model = copy.deepcopy(dense)
            cfg = dataclasses.replace(base, sparsity={"ip1.weight": s, "ip2.weight": s, "ip3.weight": min(s, 0.8)})
            prune_stage(model, cfg, data, quiet)
            # bits 0: no codebook, the kept values stay float32; threshold 0 asks for the sparse form.
            point("pruning only", f"{s:.0%}", model, dcformat.Policy(bits=0, threshold=0.0, index_bits="auto"))
            trainer, _ = quantize_stage(model, dataclasses.replace(cfg, bits={n: 5 for n in LAYERS}), data)
            point("pruning + quantization (4 bits)", f"{s:.0%}", model, trainer.policy(index_bits="auto"))
        for b in BITS:
            model = copy.deepcopy(dense)
            trainer, _ = quantize_stage(model, dataclasses.replace(base, bits={n: b for n in LAYERS}), data)
            point("quantization only", f"{b} bits", model, trainer.policy())
    seconds = time.perf_counter() - t0

    lines = ["## Accuracy against size: LeNet-300-100 on 8x8 digits (cf. the paper's Figure 6)", "",
             f"`python examples/figure6_lenet300.py` — one dense model ({100 * dense_acc:.2f}% on "
             f"{base.test_size} test digits), each point compressed from it; sizes are whole .dcf files as a "
             f"share of the dense float32 model; {seconds:.0f} s.",
             "", "| Method | Setting | Size | Ratio | Accuracy change (points) |", "|---|---|---|---|---|"]
    for curve, pts in curves.items():
        for rate, delta, label in pts:
            lines.append(f"| {curve} | {label} | {100 * rate:.2f}% | {1 / rate:.1f}x | {100 * delta:+.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.no_write:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install matplotlib)")
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        for (curve, pts), marker in zip(curves.items(), "osd"):
            pts = sorted(pts)
            ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], marker=marker, label=curve)
        ax.set_xscale("log")
        ticks = [t for t in (2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 70) if
                 min(100 * p[0] for pts in curves.values() for p in pts) / 1.2 <= t
                 <= max(100 * p[0] for pts in curves.values() for p in pts) * 1.2]
        ax.set_xticks(ticks, [f"{t}%" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("file size as a share of the dense float32 model (log scale)")
        ax.set_ylabel("accuracy change (points)")
        ax.set_title("LeNet-300-100 on 8x8 digits")
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(HERE, "figure6_lenet300.png"), dpi=80)
        text += "\n\n![accuracy against size](figure6_lenet300.png)"
    write_section("figure6", text)


if __name__ == "__main__":
    main()
