"""Shared by the digits examples: data, training, the three Deep Compression stages, and the report.

The stages follow the paper: train dense; prune by magnitude in rounds of rising sparsity, retraining
with the masks held after each (dcformat.pipeline.Pruner, iterative_prune, prune.gradual_schedule);
quantize each layer to a k-means codebook and fine-tune the centroids (CodebookTrainer, eq. 3); store
with Huffman-coded streams (dcformat.save_torch) and score the model decoded from the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

import dcformat
from dcformat import quantize as dc_quantize
from dcformat.cli import layout_report
from dcformat.pipeline import CodebookTrainer, Pruner, iterative_prune
from dcformat.prune import gradual_schedule

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "RESULTS.md")


@dataclass
class Config:
    """One compression run: the training budget of each stage and the per-layer settings."""

    sparsity: dict[str, float]  # final fraction pruned per layer
    bits: dict[str, int]  # codebook index width per layer
    index_bits: int | str = 5
    dense_epochs: int = 60
    rounds: int = 5  # prune-and-retrain rounds
    retrain_epochs: int = 20  # per round
    finetune_epochs: int = 20
    lr: float = 1e-3
    retrain_lr: float = 5e-4
    finetune_lr: float = 1e-4
    weight_decay: float = 1e-4
    batch: int = 32
    seed: int = 0
    test_size: int = 600
    method: str = "kmeans"
    init: str = "linear"
    vector_bits: int | None = None  # codebook bits for the biases (None: stored raw, exact)
    extra: dict[str, Any] = field(default_factory=dict)


def digits(seed: int, test_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (1,797 images), scaled to [0, 1], split by a seeded permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    test, train = order[:test_size], order[test_size:]
    return x[train], y[train], x[test], y[test]


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, params: list, lr: float,
          batch: int, seed: int, weight_decay: float = 0.0) -> None:
    """Adam on cross-entropy, shuffled mini-batches from a seeded generator."""
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), batch):
            idx = order[s:s + batch]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train_dense(make_model: Callable[[], torch.nn.Module], cfg: Config, data) -> torch.nn.Module:
    """A freshly initialised model trained with Adam (L2 weight decay) for cfg.dense_epochs."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(1)  # these models are tiny: one thread beats two (thread sync costs more)
    xtr, ytr, _, _ = data
    model = make_model()
    train(model, xtr, ytr, cfg.dense_epochs, list(model.parameters()), cfg.lr, cfg.batch, cfg.seed, cfg.weight_decay)
    return model


def prune_stage(model: torch.nn.Module, cfg: Config, data, log: Callable[[str], None] = print) -> dict[str, float]:
    """Rounds of rising sparsity (cubic ramp per layer), retraining with the masks held; returns kept shares."""
    xtr, ytr, xte, yte = data
    steps = {n: gradual_schedule(s, cfg.rounds) for n, s in cfg.sparsity.items()}
    schedule = [{n: steps[n][i] for n in steps} for i in range(cfg.rounds)]
    params = list(model.parameters())
    pruner = Pruner(model, names=list(cfg.sparsity))

    def retrain(i: int) -> None:
        train(model, xtr, ytr, cfg.retrain_epochs, params, cfg.retrain_lr, cfg.batch, cfg.seed + 1 + i,
              cfg.weight_decay)
        log(f"  round {i + 1}/{cfg.rounds}: sparsity "
            + ", ".join(f"{n} {v:.1%}" for n, v in pruner.sparsity().items())
            + f" -> accuracy {accuracy(model, xte, yte):.4f}")

    iterative_prune(model, retrain, schedule, pruner=pruner)
    pruner.remove()
    return {n: 1.0 - s for n, s in pruner.sparsity().items()}


def quantize_stage(model: torch.nn.Module, cfg: Config, data) -> tuple[CodebookTrainer, float]:
    """Per-layer codebooks, then the centroids (and biases) fine-tuned; returns the trainer, accuracy before."""
    xtr, ytr, xte, yte = data
    trainer = CodebookTrainer(model, bits=cfg.bits, method=cfg.method, init=cfg.init, seed=cfg.seed)
    before = accuracy(model, xte, yte)
    others = [p for n, p in model.named_parameters() if n not in trainer.params]
    train(model, xtr, ytr, cfg.finetune_epochs, list(trainer.parameters()) + others, cfg.finetune_lr,
          cfg.batch, cfg.seed + 100)
    trainer.remove()
    return trainer, before


def share_biases(model: torch.nn.Module, bits: int) -> None:
    """Replace each 1-D parameter by its k-means codebook values (the file then stores them exactly)."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                codebook, indices = dc_quantize.quantize(p.detach().numpy(), bits, sparse=False)
                p.copy_(torch.from_numpy(codebook[indices].reshape(p.shape)))


def store(model: torch.nn.Module, make_model: Callable[[], torch.nn.Module], policy: dcformat.Policy, path: str,
          data) -> tuple[dict[str, Any], float, bool]:
    """Save the state dict with `policy`; (layout report, accuracy of the decoded model, bit-exact?)."""
    _, _, xte, yte = data
    dcformat.save_torch(model.state_dict(), path, policy=policy)
    report = layout_report(dcformat.read_header(path))
    loaded = dcformat.load_file(path)
    decoded = make_model()
    decoded.load_state_dict({k: torch.from_numpy(v) for k, v in loaded.items()})
    exact = all(np.array_equal(v.numpy(), loaded[k]) for k, v in model.state_dict().items())
    return report, accuracy(decoded, xte, yte), exact


def run(name: str, make_model: Callable[[], torch.nn.Module], cfg: Config, out_dir: str | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, prune, quantize and store one model; return accuracies, file reports and timings."""
    t0 = time.perf_counter()
    data = digits(cfg.seed, cfg.test_size)
    xte, yte = data[2], data[3]
    model = train_dense(make_model, cfg, data)
    result: dict[str, Any] = {"name": name, "config": cfg, "params": sum(p.numel() for p in model.parameters())}
    result["dense"] = accuracy(model, xte, yte)
    log(f"[{name} seed {cfg.seed}] dense accuracy {result['dense']:.4f}  ({time.perf_counter() - t0:.0f}s)")
    result["kept"] = prune_stage(model, cfg, data, log)
    result["pruned"] = accuracy(model, xte, yte)
    trainer, result["quantized_before_finetune"] = quantize_stage(model, cfg, data)
    if cfg.vector_bits:
        share_biases(model, cfg.vector_bits)
    result["quantized"] = accuracy(model, xte, yte)
    result["quantization"] = trainer.report()
    log(f"[{name} seed {cfg.seed}] pruned {result['pruned']:.4f}, quantized {result['quantized_before_finetune']:.4f}"
        f" -> fine-tuned {result['quantized']:.4f}")
    # Storage: P+Q (fixed-width streams) and P+Q+H (Huffman where it pays), decoded and scored.
    with tempfile.TemporaryDirectory() as tmp:
        folder = out_dir or tmp
        os.makedirs(folder, exist_ok=True)
        result["files"] = {}
        for stage, huffman in (("pq", "off"), ("pqh", "auto")):
            policy = trainer.policy(index_bits=cfg.index_bits, huffman=huffman).with_(vector_bits=cfg.vector_bits)
            path = os.path.join(folder, f"{name}-seed{cfg.seed}-{stage}.dcf")
            result["files"][stage], result[f"accuracy_{stage}"], result[f"exact_{stage}"] = store(
                model, make_model, policy, path, data)
    result["seconds"] = time.perf_counter() - t0
    t = result["files"]["pqh"]["totals"]
    log(f"[{name} seed {cfg.seed}] file {t['file_bytes']:,} B, {t['ratio']:.1f}x; decoded accuracy "
        f"{result['accuracy_pqh']:.4f}, bit-exact {result['exact_pqh']}  ({result['seconds']:.0f}s)")
    return result


# ------------------------------------------------------------------------------------------------
# Markdown


def _pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def _bits(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def layer_table(result: dict[str, Any], paper: dict[str, dict[str, str]], rename: dict[str, str]) -> str:
    """Per-layer table in the paper's columns, ours next to the paper's figures ("ours / paper")."""
    pq, pqh = result["files"]["pq"], result["files"]["pqh"]
    rows_pq = {r["name"]: r for r in pq["tensors"]}
    lines = [
        "| Layer | Weights | Kept | Weight bits P+Q | Weight bits P+Q+H | Index bits P+Q | Index bits P+Q+H "
        "| Rate P+Q | Rate P+Q+H |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in pqh["tensors"]:
        if not r["name"].endswith("weight"):
            continue
        layer = rename.get(r["name"], r["name"])
        p = paper.get(layer, {})
        q = rows_pq[r["name"]]

        def cell(ours: str, key: str) -> str:
            return f"{ours} / {p[key]}" if key in p else ours

        lines.append("| " + " | ".join([
            layer, f"{r['weights']:,}", cell(_pct(r["kept"]), "kept"),
            cell(_bits(q["weight_bits"]), "wq"), cell(_bits(r["weight_bits_coded"]), "wh"),
            cell(_bits(q["index_bits"]), "iq"), cell(_bits(r["index_bits_coded"]), "ih"),
            cell(_pct(q["rate"], 2), "rq"), cell(_pct(r["rate"], 2), "rh"),
        ]) + " |")
    t, tq = pqh["totals"], pq["totals"]
    weights = [r for r in pqh["tensors"] if r["name"].endswith("weight")]
    n = sum(r["weights"] for r in weights)
    kept = sum(r["weights"] * r["kept"] for r in weights) / n
    p = paper.get("total", {})

    def cell(ours: str, key: str) -> str:
        return f"{ours} / {p[key]}" if key in p else ours

    lines.append("| " + " | ".join([
        "**total (file)**", f"{t['weights']:,}", cell(_pct(kept), "kept"), "", "", "", "",
        cell(f"{_pct(tq['rate'], 2)} ({tq['ratio']:.1f}x)", "rq"),
        cell(f"{_pct(t['rate'], 2)} ({t['ratio']:.1f}x)", "rh"),
    ]) + " |")
    return "\n".join(lines)


def size_breakdown(result: dict[str, Any]) -> str:
    """Where the bytes of the P+Q+H file go, and the ratio without the fixed costs."""
    t = result["files"]["pqh"]["totals"]
    rows = result["files"]["pqh"]["tensors"]
    weights = sum(r["bytes"] for r in rows if r["name"].endswith("weight"))
    biases = sum(r["bytes"] for r in rows if not r["name"].endswith("weight"))
    header = t["header_bytes"]
    padding = t["file_bytes"] - header - weights - biases
    dense = t["dense_bytes"]
    return (
        f"File {t['file_bytes']:,} B = header {header:,} B + coded weights {weights:,} B + "
        f"{_bias_form(result)} biases {biases:,} B + section alignment {padding:,} B. Dense float32: {dense:,} B. "
        f"Ratio of the whole file {dense / t['file_bytes']:.1f}x; without the container header "
        f"{dense / (t['file_bytes'] - header):.1f}x; weights alone (coded vs dense weights) "
        f"{sum(r['dense_bytes'] for r in rows if r['name'].endswith('weight')) / weights:.1f}x."
    )


def _bias_form(result: dict[str, Any]) -> str:
    bits = result["config"].vector_bits
    return f"{bits}-bit shared (k-means)" if bits else "raw float32"


def accuracy_table(result: dict[str, Any]) -> str:
    dense = result["dense"]
    rows = [("dense", dense), ("pruned + retrained", result["pruned"]),
            ("+ quantized (before centroid fine-tuning)", result["quantized_before_finetune"]),
            ("+ centroid fine-tuning", result["quantized"]),
            ("+ Huffman: decoded from the .dcf file", result["accuracy_pqh"])]
    out = ["| Stage | Test accuracy | Change |", "|---|---|---|"]
    for label, acc in rows:
        out.append(f"| {label} | {100 * acc:.2f}% | {100 * (acc - dense):+.2f} |")
    return "\n".join(out)


def quantization_table(result: dict[str, Any], rename: dict[str, str]) -> str:
    out = ["| Layer | Bits | Codebook | Relative MSE | SQNR | Index entropy |", "|---|---|---|---|---|---|"]
    for n, r in result["quantization"].items():
        out.append(f"| {rename.get(n, n)} | {r['bits']} | {r['codebook'] - (1 if r['sparse'] else 0)} centroids"
                   f"{' + 0' if r['sparse'] else ''} | {r['relative_mse']:.2e} | {r['sqnr_db']:.1f} dB "
                   f"| {r['entropy_bits']:.2f} bits |")
    return "\n".join(out)


def write_section(key: str, text: str, path: str = RESULTS) -> None:
    """Replace (or append) the block between <!-- key --> and <!-- /key --> in RESULTS.md."""
    block = f"<!-- {key} -->\n{text.strip()}\n<!-- /{key} -->"
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Deep Compression on 8x8 digits\n"
    pattern = re.compile(rf"<!-- {re.escape(key)} -->.*?<!-- /{re.escape(key)} -->", re.S)
    new = pattern.sub(lambda m: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)


def seeds_table(results: list[dict[str, Any]]) -> str:
    """One row per seed (its own data split and initialisation), and the mean."""
    out = ["| Seed | Dense | Pruned + retrained | + quantized, fine-tuned | Decoded from file | Change | File "
           "| Ratio |",
           "|---|---|---|---|---|---|---|---|"]
    cols = []
    for r in results:
        t = r["files"]["pqh"]["totals"]
        row = [r["dense"], r["pruned"], r["quantized"], r["accuracy_pqh"], r["accuracy_pqh"] - r["dense"],
               t["file_bytes"], t["ratio"]]
        cols.append(row)
        out.append(f"| {r['config'].seed} | " + " | ".join(f"{100 * v:.2f}%" for v in row[:4])
                   + f" | {100 * row[4]:+.2f} | {row[5]:,} B | {row[6]:.1f}x |")
    mean = np.mean(np.array(cols, dtype=np.float64), axis=0)
    out.append("| **mean** | " + " | ".join(f"{100 * v:.2f}%" for v in mean[:4])
               + f" | **{100 * mean[4]:+.2f}** | {mean[5]:,.0f} B | **{mean[6]:.1f}x** |")
    return "\n".join(out)


def settings_line(cfg: Config, rename: dict[str, str]) -> str:
    pruned = ", ".join(f"{rename.get(n, n)} {100 * s:g}%" for n, s in cfg.sparsity.items())
    bits = ", ".join(f"{rename.get(n, n)} {b}" for n, b in cfg.bits.items())
    return (f"Settings: pruned {pruned} (cubic ramp over {cfg.rounds} rounds of {cfg.retrain_epochs} epochs); "
            f"{cfg.method} codebooks ({cfg.init} init) of {bits} bits, centroids fine-tuned {cfg.finetune_epochs} "
            "epochs; relative indices "
            f"{'of the width giving the smallest file' if cfg.index_bits == 'auto' else f'of {cfg.index_bits} bits'}; "
            f"Huffman where it pays. Dense training {cfg.dense_epochs} epochs of Adam.")


def section(title: str, intro: str, results: list[dict[str, Any]], paper: dict[str, dict[str, str]],
            rename: dict[str, str], notes: str = "") -> str:
    """The RESULTS.md section of one model: every seed, then the first in the paper's columns."""
    first = results[0]
    cfg = first["config"]
    seconds = sum(r["seconds"] for r in results)
    parts = [
        f"## {title}",
        f"{intro} Test set: {cfg.test_size} held-out digits per seed (one digit = {100 / cfg.test_size:.2f} "
        f"points). {len(results)} seeds in {seconds:.0f} s.",
        settings_line(cfg, rename),
        seeds_table(results),
        f"Seed {cfg.seed} stage by stage:",
        accuracy_table(first),
        f"Seed {cfg.seed} per layer, **ours / the paper's** where the paper gives the figure (rates are shares of the "
        "dense layer; the total is the whole file: header, biases, codebooks, indices, alignment):",
        layer_table(first, paper, rename),
        size_breakdown(first),
        "Quantization error of each layer before centroid fine-tuning (dcformat.quantize.quantization_report):",
        quantization_table(first, rename),
    ]
    pq, pqh = first["files"]["pq"]["totals"], first["files"]["pqh"]["totals"]
    if pq["file_bytes"] <= pqh["file_bytes"]:
        parts.append(
            f"Huffman does not pay on this file: the streams shrink by {pq['bytes'] - pqh['bytes']:,} B but the "
            f"header grows by {pqh['header_bytes'] - pq['header_bytes']:,} B (code tables and stream "
            f"descriptions), so the fixed-width file ({pq['file_bytes']:,} B, {pq['ratio']:.1f}x) is smaller than the "
            f"Huffman-coded one ({pqh['file_bytes']:,} B). The codec's choice counts the table text but not the "
            "rest of the JSON a Huffman stream adds.")
    if notes:
        parts.append(notes)
    return "\n\n".join(parts)


def limits_note(results: list[dict[str, Any]]) -> str:
    """What bounds the ratio: the bytes that do not shrink with the weights."""
    t = results[0]["files"]["pqh"]["totals"]
    rows = results[0]["files"]["pqh"]["tensors"]
    weights = sum(r["bytes"] for r in rows if r["name"].endswith("weight"))
    biases = sum(r["bytes"] for r in rows if not r["name"].endswith("weight"))
    fixed = t["file_bytes"] - weights
    dense = t["dense_bytes"]
    no_header = np.mean([r["files"]["pqh"]["totals"]["dense_bytes"]
                         / (r["files"]["pqh"]["totals"]["file_bytes"] - r["files"]["pqh"]["totals"]["header_bytes"])
                         for r in results])
    return (
        f"What limits the ratio: {fixed:,} B of the file do not shrink with the weights — the JSON header "
        f"({t['header_bytes']:,} B, {100 * t['header_bytes'] / dense:.2f}% of the dense model), the biases, "
        f"stored {_bias_form(results[0])} ({biases:,} B) and 64-byte section "
        f"alignment. Even with weights of zero bytes the file could not be more than {dense / fixed:.0f}x "
        f"smaller than the dense model. Without the header (the paper counts weights, biases, indices and "
        f"codebooks, not a container) the mean ratio is {no_header:.1f}x."
    )


def main(key: str, make_model: Callable[[], torch.nn.Module], config: Config, title: str,
         intro: Callable[[list[dict[str, Any]]], str], paper: dict[str, dict[str, str]], layers: tuple[str, ...],
         notes: str, description: str) -> None:
    """The command line of a compress_*.py script: run every seed, print and store its RESULTS.md section."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", help="keep the .dcf files in this folder")
    parser.add_argument("--no-write", action="store_true", help="do not update examples/RESULTS.md")
    parser.add_argument("--seeds", type=int, default=3, help="runs, each with its own split and init (default 3)")
    args = parser.parse_args()
    results = [run(key, make_model, dataclasses.replace(config, seed=s), args.out) for s in range(args.seeds)]
    rename = {f"{n}.weight": n for n in layers}
    text = section(title, intro(results), results, paper, rename, notes + "\n\n" + limits_note(results))
    print(text)
    if not args.no_write:
        write_section(key, text)
