"""What a file holds, in words: per-tensor layout rows, the compact table and the paper's table.

Everything here works from the header alone (and the `dcformat.encoder` metadata record when a
file has one), so `dcformat inspect` never imports numba and answers instantly.
"""

from __future__ import annotations

import fnmatch
import json
import math
from typing import Any, Mapping

from . import constants as K
from .container import Header, TensorInfo

ENCODER_KEY = "dcformat.encoder"  # metadata: {"policy": {...}, "error": e, "tensors": {name: {...}}}


# ---------------------------------------------------------------------------------------------
# Rows


def tensor_row(t: TensorInfo) -> dict[str, Any]:
    """One tensor's layout in the paper's terms: kept share, bits per stored weight and index."""
    numel = t.numel
    row: dict[str, Any] = {
        "name": t.name, "shape": list(t.shape), "dtype": t.dtype, "weights": numel,
        "encoding": t.encoding, "layout": t.layout or "-", "kept": 1.0, "entries": numel,
        "fillers": 0, "weight_bits": None, "weight_bits_coded": None, "index_bits": None,
        "index_bits_coded": None, "bytes": t.stored_bytes, "dense_bytes": t.nbytes,
        "codebook": t.codebook_size, "weight_coding": "raw", "index_coding": "-",
        "scales": t.scales_count,  # row scales (§5.2, format 1.3): m, 0 without
    }
    item_bits = 8 * t.itemsize
    if t.encoding == K.RAW:
        row.update(weight_bits=item_bits, weight_bits_coded=item_bits)
    elif t.encoding == K.FIELDS:  # exact values, coded field by field (§5.4)
        huffman = any(s.coding == K.HUFFMAN for c in t.chunks for s in c)
        row.update(weight_bits=item_bits, weight_bits_coded=_per(t.stored_bytes * 8, numel),
                   weight_coding=K.HUFFMAN if huffman else K.FIXED)
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


def encoder_record(metadata: Mapping[str, str]) -> dict[str, Any] | None:
    """The `dcformat.encoder` metadata record (policy, errors, steps), or None when absent or malformed.

    A stranger's file may hold anything there: only the expected shapes are kept, numbers must be
    finite, and nothing in it is trusted beyond display.
    """
    text = metadata.get(ENCODER_KEY)
    if not isinstance(text, str) or len(text) > 10_000_000:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    policy = doc.get("policy") if isinstance(doc.get("policy"), dict) else {}
    tensors = {}
    if isinstance(doc.get("tensors"), dict):
        for name, entry in doc["tensors"].items():
            if isinstance(entry, dict):
                tensors[name] = {k: entry.get(k) if _number(entry.get(k)) else None for k in ("error", "step", "bits")}
    return {"policy": policy, "error": doc.get("error") if _number(doc.get("error")) else None, "tensors": tensors}


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _quantizer(policy: Mapping[str, Any], name: str) -> str:
    """The quantizer a recorded policy gave tensor `name` (the first matching rule wins, as in Policy.plan)."""
    quantizer = policy.get("quantizer", "kmeans")
    rules = policy.get("rules")
    if isinstance(rules, dict):
        for pattern, rule in rules.items():
            if isinstance(pattern, str) and fnmatch.fnmatchcase(name, pattern):
                if isinstance(rule, dict) and isinstance(rule.get("quantizer"), str):
                    quantizer = rule["quantizer"]
                break
    return str(quantizer)


def layout_report(header: Header, errors: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """The per-tensor rows and totals of a file; `errors` (relative RMS per tensor) as measured by the caller,
    else as the file's encoder record says."""
    record = encoder_record(header.metadata)
    rows = []
    for t in header.tensors:
        row = tensor_row(t)
        entry = record["tensors"].get(t.name, {}) if record else {}
        row["step"] = entry.get("step")
        row["quantizer"] = None
        if record and t.codebook_size:
            row["quantizer"] = "uniform" if row["step"] is not None else _quantizer(record["policy"], t.name)
        if errors is not None:
            row["error"] = errors.get(t.name)
        else:
            row["error"] = entry.get("error") if record else None
            if record and row["error"] is None and t.encoding in (K.RAW, K.FIELDS):
                row["error"] = 0.0
        rows.append(row)
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
        "error": record["error"] if record else None,
    }
    return {
        "version": f"{header.version[0]}.{header.version[1]}", "metadata": header.metadata,
        "encoder": record, "tables": len(header.tables), "tensors": rows, "totals": totals,
    }


# ---------------------------------------------------------------------------------------------
# Words


def printable(text: str) -> str:
    """Text from a file, safe for a terminal: control characters (escape sequences, newlines) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def ratio_words(before: int, after: int) -> str:
    """'7.0x smaller', '1.25x larger' or 'the same size': never '0.6x smaller'."""
    if before <= 0 or after <= 0:
        return "no size to compare"
    if after == before:
        return "the same size"
    r = before / after if after < before else after / before
    text = f"{r:.1f}x" if r >= 2 else f"{r:.2f}x"
    return f"{text} smaller" if after < before else f"{text} larger"


def percent(x: float | None) -> str:
    """A relative error in percent, with enough digits to tell small errors apart; '-' if unknown."""
    if x is None:
        return "-"
    if x == 0:
        return "exact"
    if not math.isfinite(x):
        return "inf"
    p = 100 * x
    return f"{p:.2f}%" if p >= 0.1 else f"{p:.2g}%"


def shorten(text: str, width: int) -> str:
    """`text` cut in the middle to at most `width` characters ('encoder.lay...query.weight')."""
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    keep = width - 3
    return text[: (keep + 1) // 2] + "..." + text[len(text) - keep // 2:]


QUANTIZER_WORDS = {"kmeans": "k-means", "optimal": "optimal", "ecsq": "ecsq", "uniform": "uniform"}


def _stored_as(r: dict[str, Any]) -> str:
    """How a tensor's values are kept, in a few words: 'exact', 'k-means, 32 values', 'step 0.01, 230 values'."""
    if r["encoding"] in (K.RAW, K.FIELDS):
        return "exact"
    if not r["codebook"]:
        return "exact values"
    values = f"{r['codebook']:,} values"
    if r.get("scales"):
        values += f", {r['scales']:,} {'scale' if r['scales'] == 1 else 'scales'}"
    if r["step"] is not None:
        return f"step {r['step']:.3g}, {values}"
    if r["quantizer"]:
        return f"{QUANTIZER_WORDS.get(r['quantizer'], r['quantizer'])}, {values}"
    return values


def _table(header: list[str], rows: list[list[str]], right: set[int], name_width: int | None) -> list[str]:
    """Aligned columns; column 0 (the tensor name) is cut to `name_width` when given."""
    if name_width is not None:
        rows = [[shorten(r[0], name_width)] + r[1:] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = ["-" * w for w in widths]
    return [fmt(header), fmt(rule)] + [fmt(r) for r in rows]


NAME_MIN = 24  # a narrower tensor-name column drops the bytes column, then the shape, to make room


def compact_table(report: dict[str, Any], width: int | None = None) -> list[str]:
    """The per-tensor table in plain words, fitted to `width` columns (None: no limit).

    Columns: tensor, shape, kept (only when something was pruned), stored as, bits per weight
    (everything the tensor costs in the file, per weight), bytes, error (when known). On a narrow
    terminal names are cut in the middle, and the bytes and shape columns give way first.
    """
    rows = report["tensors"]
    pruned = any(r["kept"] is not None and r["kept"] < 1.0 for r in rows)
    with_error = any(r.get("error") is not None for r in rows)
    columns: dict[str, list[str]] = {"tensor": [], "shape": []}
    if pruned:
        columns["kept"] = []
    columns.update({"stored as": [], "bits/weight": [], "bytes": []})
    if with_error:
        columns["error"] = []
    for r in rows:
        columns["tensor"].append(printable(r["name"]))
        columns["shape"].append("x".join(map(str, r["shape"])) or "scalar")
        if pruned:
            columns["kept"].append(f"{100 * r['kept']:.1f}%" if r["kept"] is not None else "-")
        bits = _per(8 * r["bytes"], r["weights"])
        columns["stored as"].append(_stored_as(r))
        columns["bits/weight"].append(f"{bits:.2f}" if bits is not None else "-")
        columns["bytes"].append(f"{r['bytes']:,}")
        if with_error:
            columns["error"].append(percent(r.get("error")))

    def others() -> int:
        return sum(max(len(h), *map(len, c)) + 2 for h, c in columns.items() if h != "tensor") if rows else 0

    name_width = None
    if width is not None and rows:
        longest = max(len(n) for n in columns["tensor"])
        for optional in ("bytes", "shape"):
            if longest + others() <= width or width - others() >= NAME_MIN:
                break
            del columns[optional]
        name_width = max(12, width - others())
    header = list(columns)
    cells = [[columns[h][i] for h in header] for i in range(len(rows))]
    right = {i for i, h in enumerate(header) if h in ("kept", "bits/weight", "bytes", "error")}
    return _table(header, cells, right, name_width)


def _fmt_bits(a: float | None, b: float | None) -> str:
    if a is None:
        return "-"
    return f"{a:g} / {b:.2f}" if b is not None else f"{a:g} / -"


PAPER_LEGEND = (
    "kept: share of the weights stored (the rest pruned). w bits / idx bits: bits per stored weight and per\n"
    "relative index, as fixed-width codes (P+Q) and after entropy coding (+H: Huffman, or rANS where smaller),\n"
    "the columns of the Deep Compression paper's Table 4. fillers: zero entries added where a gap exceeds the index width.\n"
    "rate: the tensor's bytes in the file as a share of its dense bytes."
)


def paper_table(report: dict[str, Any]) -> list[str]:
    """The per-tensor table in the paper's Table 4 columns, with a total row (no width limit)."""
    with_record = report.get("encoder") is not None
    header = ["name", "shape", "weights", "kept", "encoding", "layout", "w bits P+Q / +H", "idx bits P+Q / +H",
              "fillers", "bytes", "rate"] + (["quantizer", "step", "error"] if with_record else [])
    cells = []
    for r in report["tensors"]:
        line = [
            printable(r["name"]), "x".join(map(str, r["shape"])) or "scalar", f"{r['weights']:,}",
            f"{100 * r['kept']:.1f}%" if r["kept"] is not None else "-", r["encoding"], r["layout"],
            _fmt_bits(r["weight_bits"], r["weight_bits_coded"]), _fmt_bits(r["index_bits"], r["index_bits_coded"]),
            f"{r['fillers']:,}", f"{r['bytes']:,}", f"{100 * r['rate']:.2f}%" if r["rate"] is not None else "-",
        ]
        if with_record:
            line += [r["quantizer"] or "-", f"{r['step']:.4g}" if r["step"] is not None else "-", percent(r["error"])]
        cells.append(line)
    t = report["totals"]
    total = ["total (file)", "", f"{t['weights']:,}", f"{100 * t['kept']:.1f}%" if t["kept"] is not None else "-",
             "", "", "", "", f"{t['fillers']:,}", f"{t['file_bytes']:,}",
             f"{100 * t['rate']:.2f}%" if t["rate"] is not None else "-"] + (["", "", percent(t["error"])] if with_record else [])
    lines = _table(header, cells + [total], {2, 3, 8, 9, 10} | ({13} if with_record else set()), None)
    return lines[:-1] + [lines[1], lines[-1]]  # a rule above the total row


def file_lines(report: dict[str, Any]) -> list[str]:
    """The file as a whole: sizes, the ratio in words, the format and header."""
    t = report["totals"]
    lines = [f"{t['tensors']:,} tensors, {t['weights']:,} weights: {t['dense_bytes']:,} B dense -> "
             f"{t['file_bytes']:,} B file, {ratio_words(t['dense_bytes'], t['file_bytes'])}"]
    lines.append(f"dcformat {report['version']}, {t['tensors']} tensors, {report['tables']} Huffman tables, "
                 f"header {t['header_bytes']:,} B ({_header_text(t)})")
    return lines


def encoder_lines(report: dict[str, Any]) -> list[str]:
    """What the file's encoder record says of its policy and error, if it has one."""
    record = report.get("encoder")
    if record is None:
        return []
    settings = ", ".join(f"{k}={printable(json.dumps(v))}" for k, v in record["policy"].items()) or "the defaults"
    line = f"encoded with: {settings}"
    if record["error"] is not None:
        line += f"; relative RMS error of the lossy tensors {percent(record['error'])}"
    return [line]


def metadata_lines(report: dict[str, Any], width: int | None = None) -> list[str]:
    """The user's metadata, one line a key (escaped; cut to `width`); the encoder record is shown apart."""
    items = [(k, v) for k, v in report["metadata"].items() if k != ENCODER_KEY]
    if not items:
        return []
    lines = ["metadata:"]
    for k, v in items:
        line = f"  {printable(k)}: {printable(v)}"
        lines.append(line if width is None or len(line) <= width else line[: max(width - 3, 8)] + "...")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The paper's table and the file lines (what `inspect --wide` prints)."""
    return "\n".join(paper_table(report) + file_lines(report))


def _header_text(totals: dict[str, Any]) -> str:
    """How the header is stored: JSON text, or zlib with its stored and decompressed sizes (§2.2)."""
    if totals["header_coding"] == K.HEADER_ZLIB:
        return f"zlib: {totals['header_stored_bytes']:,} B stored, {totals['header_json_bytes']:,} B of JSON"
    return f"JSON: {totals['header_json_bytes']:,} B of text"
