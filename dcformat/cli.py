"""The `dcformat` command: compress, decompress, inspect, verify and demo.

`--help` and `inspect` never import numba, so they answer instantly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

from . import constants as K
from .container import Header, TensorInfo, read_header
from .errors import DCFError

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """A one-line progress bar on stderr, shown only when stderr is a terminal (or forced)."""

    def __init__(self, total: int, label: str, enabled: bool | None = None):
        self.total, self.label, self.done = max(total, 1), label, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.perf_counter()

    def __call__(self, event: Any) -> None:
        if not isinstance(event, str):  # a ProgressEvent: one before each tensor starts, one at the end
            self.started = getattr(self, "started", 0) + (event.tensor is not None)
            self.done = self.started - 1 if event.tensor is not None else self.total - 1
            event = event.tensor or ""
        name = event
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = width * self.done // self.total
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:5.1f}s {name[:40]:<40}"
        )
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# Layout report (the paper's Table 4 columns), from the header alone


def tensor_row(t: TensorInfo) -> dict[str, Any]:
    """One tensor's layout in the paper's terms: kept share, bits per stored weight and index."""
    numel = t.numel
    row: dict[str, Any] = {
        "name": t.name, "shape": list(t.shape), "dtype": t.dtype, "weights": numel,
        "encoding": t.encoding, "layout": t.layout or "-", "kept": 1.0, "entries": numel,
        "fillers": 0, "weight_bits": None, "weight_bits_coded": None, "index_bits": None,
        "index_bits_coded": None, "bytes": t.stored_bytes, "dense_bytes": t.nbytes,
        "codebook": t.codebook_size, "weight_coding": "raw", "index_coding": "-",
    }
    item_bits = 8 * t.itemsize
    if t.encoding == K.RAW:
        row.update(weight_bits=item_bits, weight_bits_coded=item_bits)
    elif t.encoding == K.SHARED:
        row.update(weight_bits=t.bits, weight_bits_coded=_per(t.indices.section.length * 8, numel),
                   weight_coding=t.indices.coding)
    else:
        row.update(entries=t.entries, fillers=t.fillers, kept=_per(t.entries - t.fillers, numel),
                   index_bits=t.index_bits, index_bits_coded=_per(t.gaps.section.length * 8, t.entries),
                   index_coding=t.gaps.coding)
        if t.codebook is not None:
            row.update(weight_bits=t.bits, weight_bits_coded=_per(t.indices.section.length * 8, t.entries),
                       weight_coding=t.indices.coding)
        else:
            row.update(weight_bits=item_bits, weight_bits_coded=item_bits)
    row["rate"] = _per(t.stored_bytes, t.nbytes)
    return row


def _per(a: float, b: float) -> float | None:
    return a / b if b else None


def layout_report(header: Header) -> dict[str, Any]:
    """The per-tensor rows and totals of a file."""
    rows = [tensor_row(t) for t in header.tensors]
    dense = sum(r["dense_bytes"] for r in rows)
    weights = sum(r["weights"] for r in rows)
    kept = sum(r["weights"] * r["kept"] for r in rows if r["kept"] is not None)
    totals = {
        "tensors": len(rows), "weights": weights, "kept": _per(kept, weights),
        "fillers": sum(r["fillers"] for r in rows), "bytes": sum(r["bytes"] for r in rows),
        "dense_bytes": dense, "file_bytes": header.file_length,
        "header_bytes": K.PREAMBLE_SIZE + header.header_length,
        "header_coding": header.header_coding, "header_stored_bytes": header.header_length,
        "header_json_bytes": header.json_length,
        "rate": _per(header.file_length, dense), "ratio": _per(dense, header.file_length),
    }
    return {
        "version": f"{header.version[0]}.{header.version[1]}", "metadata": header.metadata,
        "tables": len(header.tables), "tensors": rows, "totals": totals,
    }


def _fmt_bits(a: float | None, b: float | None) -> str:
    if a is None:
        return "-"
    return f"{a:g} / {b:.2f}" if b is not None else f"{a:g} / -"


def printable(text: str) -> str:
    """Text from a file, safe for a terminal: control characters (escape sequences, newlines) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_report(report: dict[str, Any]) -> str:
    cols = ["name", "shape", "weights", "kept", "encoding", "layout", "w bits P+Q / +H", "idx bits P+Q / +H",
            "fillers", "bytes", "rate"]
    lines = []
    for r in report["tensors"]:
        lines.append([
            printable(r["name"]), "x".join(map(str, r["shape"])) or "scalar", f"{r['weights']:,}",
            f"{100 * r['kept']:.1f}%" if r["kept"] is not None else "-", r["encoding"], r["layout"],
            _fmt_bits(r["weight_bits"], r["weight_bits_coded"]), _fmt_bits(r["index_bits"], r["index_bits_coded"]),
            f"{r['fillers']:,}", f"{r['bytes']:,}", f"{100 * r['rate']:.2f}%" if r["rate"] is not None else "-",
        ])
    t = report["totals"]
    total = ["total (file)", "", f"{t['weights']:,}", f"{100 * t['kept']:.1f}%" if t["kept"] is not None else "-",
             "", "", "", "", f"{t['fillers']:,}", f"{t['file_bytes']:,}",
             f"{100 * t['rate']:.2f}%" if t["rate"] is not None else "-"]
    widths = [max(len(c), *(len(l[i]) for l in lines + [total])) for i, c in enumerate(cols)]
    right = {2, 3, 8, 9, 10}

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [fmt(cols), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines] + [fmt(["-" * w for w in widths]), fmt(total)]
    ratio = f"{t['ratio']:.1f}x smaller than dense" if t["ratio"] else ""
    out.append(f"dcformat {report['version']}, {t['tensors']} tensors, {report['tables']} Huffman tables, "
               f"header {t['header_bytes']:,} B ({_header_text(t)}), dense {t['dense_bytes']:,} B -> "
               f"file {t['file_bytes']:,} B {ratio}")
    return "\n".join(out)


def _header_text(totals: dict[str, Any]) -> str:
    """How the header is stored: JSON text, or zlib with its stored and decompressed sizes (§2.2)."""
    if totals["header_coding"] == K.HEADER_ZLIB:
        return f"zlib: {totals['header_stored_bytes']:,} B stored, {totals['header_json_bytes']:,} B of JSON"
    return f"JSON: {totals['header_json_bytes']:,} B of text"


# ---------------------------------------------------------------------------------------------
# Commands


def _policy_from_args(args: argparse.Namespace):
    from .policy import Policy

    rules: dict[str, dict[str, Any]] = {}
    for text in args.rule or []:
        pattern, _, settings = text.partition(":")
        rule: dict[str, Any] = {}
        for item in filter(None, settings.split(",")):
            key, _, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if key in ("bits", "index_bits") and value != "auto":
                rule[key] = int(value)
            elif key in ("prune", "threshold", "lam", "max_error", "step"):
                rule[key] = None if value.lower() == "none" else float(value)
            elif key == "raw":
                rule[key] = value.lower() in ("1", "true", "yes", "")
            else:
                rule[key] = value
        rules[pattern] = rule
    kwargs: dict[str, Any] = dict(
        prune=args.prune, threshold=args.threshold, index_bits=args.index_bits, layout=args.layout,
        raw=tuple(args.raw or ()), rules=rules, huffman=args.huffman, lossless=args.lossless,
        quantizer=args.quantizer, init=args.init, lam=args.lam, max_error=args.max_error,
        step=args.step, target_size=args.target_size, step_scales=_step_scales(args.step_scales),
        vector_bits=args.vector_bits, compact_header=not args.json_header,
    )
    kwargs["conv_bits"] = args.bits if args.bits is not None else args.conv_bits
    kwargs["fc_bits"] = args.bits if args.bits is not None else args.fc_bits
    return Policy(**kwargs)


def _step_scales(path: str | None) -> dict[str, float]:
    """{tensor name: step factor} from a JSON file, e.g. dcformat.allocation.scales_from_sensitivity's result."""
    if path is None:
        return {}
    from .errors import EncodeError

    try:
        with open(path, encoding="utf-8") as f:
            scales = json.load(f)
    except (OSError, ValueError) as e:
        raise EncodeError(f"--step-scales {path}: {e}") from None
    if not isinstance(scales, dict):
        raise EncodeError(f"--step-scales {path}: expected a JSON object {{tensor name: factor}}")
    return scales


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def _size(text: str) -> int:
    """A size in bytes: 1500000, 1.5MB, 1.5M, 800KiB (k/M/G = powers of 1000, Ki/Mi/Gi = of 1024)."""
    number = text.strip().rstrip("bB").lower()
    unit = ""
    while number and number[-1].isalpha():
        unit = number[-1] + unit
        number = number[:-1]
    unit = {"k": "kb", "m": "mb", "g": "gb", "ki": "kib", "mi": "mib", "gi": "gib"}.get(unit, unit)
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1500000, 1.5MB, 800KiB)") from None
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(value)


def _index_bits(text: str) -> int | str:
    return text if text == "auto" else int(text)


def cmd_compress(args: argparse.Namespace) -> int:
    import numpy as np

    from .api import save_file
    from .interop.formats import read_tensors

    policy = _policy_from_args(args)
    tensors = read_tensors(args.input)
    metadata = dict(kv.split("=", 1) for kv in args.metadata or [])
    progress = Progress(len(tensors), "compress", enabled=False if args.json else None)
    start = time.perf_counter()
    save_file(tensors, args.output, policy=policy, metadata=metadata, progress=progress)
    seconds = time.perf_counter() - start
    report = layout_report(read_header(args.output))
    dense = sum(np.asarray(a).nbytes for a in tensors.values())
    summary = {"input": args.input, "output": args.output, "input_bytes": os.path.getsize(args.input),
               "dense_bytes": dense, "file_bytes": report["totals"]["file_bytes"],
               "ratio": dense / report["totals"]["file_bytes"], "seconds": seconds}
    if args.json:
        print(json.dumps({"summary": summary, **report}, indent=2))
    else:
        print(format_report(report))
        print(f"wrote {args.output}: {summary['file_bytes']:,} B, {summary['ratio']:.1f}x smaller than dense float ({seconds:.2f} s)")
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from .api import SafeOpen
    from .interop.formats import write_tensors

    with SafeOpen(args.input) as f:
        progress = Progress(len(f), "decompress")
        tensors = {}
        for name in f.keys():
            tensors[name] = f.get_tensor(name)
            progress(name)
    write_tensors(tensors, args.output)
    print(f"wrote {args.output}: {len(tensors)} tensors")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    report = layout_report(read_header(args.file))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if report["metadata"]:
            print("metadata:")
            for k, v in report["metadata"].items():
                print(f"  {printable(k)}: {printable(v)}")
    return 0


def verify_file(path: str) -> dict[str, Any]:
    """Check the header, every section's CRC and every tensor's decoding; collect every problem."""
    from .api import SafeOpen
    from .container import check_section

    problems: list[dict[str, Any]] = []
    checked = 0

    def problem(tensor: str | None, error: str, message: str) -> None:
        problems.append({"tensor": tensor, "error": error, "message": message})

    try:
        f = SafeOpen(path)
    except (DCFError, OSError) as e:
        problem(None, type(e).__name__, str(e))
        return {"file": path, "ok": False, "tensors": 0, "problems": problems}
    with f:
        for info in f.header.tensors:
            intact = True
            for key, section in info.sections():
                try:
                    check_section(f._buf, section, key, info.name)
                except DCFError as e:
                    problem(info.name, type(e).__name__, str(e))
                    intact = False
            if not intact:  # decoding would only report the same checksum again
                continue
            try:
                f.get_tensor(info.name)
                if info.encoding == K.SPARSE:
                    fillers = info.entries - len(f.get_sparse(info.name).values)
                    if fillers != info.fillers:
                        problem(info.name, "FormatError",
                                f"header says {info.fillers} fillers, the data has {fillers} zero entries")
                checked += 1
            except DCFError as e:
                problem(info.name, type(e).__name__, str(e))
    return {"file": path, "ok": not problems, "tensors": checked, "problems": problems}


def cmd_verify(args: argparse.Namespace) -> int:
    result = verify_file(args.file)
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["ok"]:
        print(f"{args.file}: OK ({result['tensors']} tensors decoded, all checksums match)")
    else:
        for p in result["problems"]:
            print(f"{args.file}: {p['error']}: {printable(p['message'])}")
        print(f"{args.file}: {len(result['problems'])} problem(s)")
    return 0 if result["ok"] else 1


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np

    from .api import load_file, save_file
    from .policy import Policy

    with np.load(os.path.join(EXAMPLES, "lenet300.npz")) as z:
        model = {k: z[k] for k in z.files}
    with np.load(os.path.join(EXAMPLES, "digits_test.npz")) as z:
        x, y = z["x"], z["y"]
    policy = Policy(fc_bits=args.bits, index_bits=args.index_bits)
    out = args.output or os.path.join(tempfile.mkdtemp(prefix="dcformat-demo-"), "lenet300.dcf")
    print(f"example model: LeNet-300-100-style MLP on 8x8 digits, pruned and retrained "
          f"({sum(a.size for a in model.values()):,} parameters, {sum(a.nbytes for a in model.values()):,} B as float32)")
    print(f"policy: {args.bits}-bit weight sharing (k-means, linear init), {args.index_bits}-bit relative indices, Huffman\n")
    start = time.perf_counter()
    save_file(model, out, policy=policy, metadata={"model": "lenet-300-100 (digits)", "source": "dcformat demo"})
    t_enc = time.perf_counter() - start
    print(format_report(layout_report(read_header(out))))
    start = time.perf_counter()
    decoded = load_file(out)
    t_dec = time.perf_counter() - start
    err = max(float(np.max(np.abs(decoded[k].astype(np.float64) - model[k]))) if model[k].size else 0.0 for k in model)

    def accuracy(params: dict[str, np.ndarray]) -> float:
        h = x
        for i in (1, 2, 3):
            h = h @ params[f"fc{i}.weight"].T + params[f"fc{i}.bias"]
            h = np.maximum(h, 0) if i < 3 else h
        return float((h.argmax(1) == y).mean())

    dense = sum(a.nbytes for a in model.values())
    size = os.path.getsize(out)
    print(f"\nwrote {out}")
    print(f"compression: {dense:,} B -> {size:,} B = {dense / size:.1f}x (encode {t_enc:.2f} s, decode {t_dec * 1000:.1f} ms)")
    print(f"largest reconstruction error: {err:.3g}")
    print(f"test accuracy (360 digits): original {accuracy(model):.4f}, decoded {accuracy(decoded):.4f}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .interop.deepcompression import cli_convert

    return cli_convert(args)


# ---------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcformat", description="Compressed neural-network model files (Deep Compression): "
                                "pruned CSR/CSC layers, codebooks, Huffman-coded streams.")
    p.add_argument("--version", action="version", version=f"dcformat format {K.VERSION_MAJOR}.{K.VERSION_MINOR}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("compress", help="compress a model (.npz, .safetensors, .pt/.pth) into a .dcf file",
                       description="Compress a model. 1-D tensors (biases, norms) and non-float tensors stay raw; "
                       "2-D tensors are 'fc', 3-D and more 'conv'.")
    c.add_argument("input", help="input model: .npz, .safetensors, .pt or .pth (loaded with weights_only=True)")
    c.add_argument("-o", "--output", required=True, help="output .dcf file (written atomically)")
    c.add_argument("--prune", type=float, default=0.0, metavar="FRACTION", help="prune this fraction of each conv/fc tensor by magnitude (default 0)")
    c.add_argument("--threshold", type=float, default=None, help="prune weights of magnitude below this instead")
    c.add_argument("--bits", type=int, default=None, help="codebook bits for conv and fc tensors (0: no weight sharing)")
    c.add_argument("--conv-bits", type=int, default=8, help="codebook bits for conv tensors (default 8)")
    c.add_argument("--fc-bits", type=int, default=5, help="codebook bits for fc tensors (default 5)")
    c.add_argument("--index-bits", type=_index_bits, default=5, help="relative index width 1..16 or 'auto' (default 5)")
    c.add_argument("--layout", choices=("csr", "csc", "auto"), default="auto", help="sparse layout (default: the smaller)")
    c.add_argument("--raw", action="append", metavar="PATTERN", help="keep tensors matching this name pattern raw (repeatable)")
    c.add_argument("--rule", action="append", metavar="PATTERN:KEY=VALUE,...",
                   help="per-name settings, e.g. 'fc8.*:bits=4,prune=0.75' (keys: bits, prune, threshold, index_bits, layout, "
                   "raw, quantizer, init, lam, max_error, step)")
    c.add_argument("--huffman", choices=("auto", "shared", "off"), default="auto",
                   help="Huffman tables per stream (auto), one per stream kind for the model (shared), or none (off)")
    c.add_argument("--lossless", action="store_true", help="store every tensor raw")
    c.add_argument("--quantizer", choices=("kmeans", "optimal", "ecsq"), default="kmeans",
                   help="codebook choice: the paper's k-means (default), optimal least squares, or entropy-constrained")
    c.add_argument("--init", choices=("linear", "density", "random", "kmeans++"), default="linear",
                   help="k-means initialisation (default linear, the paper's)")
    c.add_argument("--lam", type=float, default=0.0,
                   help="ecsq: squared error (in units of the tensor's variance) one index bit must buy (e.g. 0.001)")
    c.add_argument("--max-error", type=float, default=None, metavar="REL_RMS",
                   help="quality target: per tensor, the fewest bits (up to --conv-bits/--fc-bits) whose relative "
                   "RMS error is at most this, e.g. 0.03")
    c.add_argument("--vector-bits", type=int, default=None, metavar="BITS",
                   help="codebook bits for 1-D tensors (biases, norms), which otherwise stay exact")
    c.add_argument("--step", type=float, default=None,
                   help="uniform quantization: round each conv/fc weight to a multiple of this step (Huffman-coded "
                   "levels; replaces the codebook bits), e.g. 0.005")
    c.add_argument("--step-scales", default=None, metavar="JSON",
                   help="JSON file {tensor name: factor}: that tensor's step is --step times the factor "
                   "(e.g. from dcformat.allocation.scales_from_sensitivity)")
    c.add_argument("--target-size", type=_size, default=None, metavar="SIZE",
                   help="aim at this file size (e.g. 10MB, 800KiB): searches the uniform step giving the largest "
                   "file that fits")
    c.add_argument("--json-header", action="store_true",
                   help="store the header as plain JSON (format 1.0) even where zlib would make the file smaller")
    c.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="add user metadata (repeatable)")
    c.add_argument("--json", action="store_true", help="print the summary and layout as JSON")
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", help="decode a .dcf file into .npz or .safetensors")
    d.add_argument("input", help="input .dcf file")
    d.add_argument("-o", "--output", required=True, help="output .npz or .safetensors file")
    d.set_defaults(func=cmd_decompress)

    i = sub.add_parser("inspect", help="show a file's per-tensor layout (reads only the header)",
                       description="Per-tensor layout in the terms of the Deep Compression paper's Table 4: weights, "
                       "kept share, bits per weight and per index before (P+Q) and after Huffman (+H), fillers, bytes, rate.")
    i.add_argument("file")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_inspect)

    v = sub.add_parser("verify", help="check every checksum and decode every tensor; exit 1 on any problem")
    v.add_argument("file")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.set_defaults(func=cmd_verify)

    cv = sub.add_parser("convert", help="convert between dcformat and the Deep Compression authors' released format",
                        description="Read or write the headerless format of the Deep Compression authors' released "
                        "AlexNet/SqueezeNet files (layer shapes from a Caffe deploy prototxt).")
    direction = cv.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="from_format", choices=("deepcompression",), help="input format")
    direction.add_argument("--to", dest="to_format", choices=("deepcompression",), help="output format")
    cv.add_argument("input", help="input file (.net with --from, .dcf with --to)")
    cv.add_argument("--prototxt", help="Caffe deploy prototxt giving the layers and their shapes (required with --from)")
    cv.add_argument("-o", "--output", required=True, help="output file")
    cv.add_argument("--json", action="store_true", help="machine-readable summary")
    cv.set_defaults(func=cmd_convert)

    m = sub.add_parser("demo", help="compress the bundled example model, show its layout, decode it back")
    m.add_argument("-o", "--output", default=None, help="where to write the .dcf file (default: a temporary folder)")
    m.add_argument("--bits", type=int, default=5, help="codebook bits (default 5, the paper's fc width)")
    m.add_argument("--index-bits", type=_index_bits, default=5, help="relative index width (default 5)")
    m.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DCFError as e:
        print(f"dcformat: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"dcformat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dcformat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
