"""A fuzzer for the dcformat reader: hostile files must give a result or a DCFError, never anything else.

    python tests/fuzz.py --cases 5000 --seed 1 --workers 2 --out fuzz-out   # or benchmarks/fuzz_long.py

It starts from small valid files of every encoding (`seed_files`), mutates them (`Mutator`: bit flips,
byte sets, integer-boundary values in the preamble and in the header's JSON numbers, JSON-aware edits of
strings, keys, lists and types, swapped sections, hostile section payloads, truncation, extension,
splicing, and for format 1.1's zlib headers edited-then-recompressed JSON and damaged zlib streams:
bits, truncation, Adler-32, flags, trailing bytes, bombs), and usually repairs the CRCs and the layout afterwards so that the mutation reaches the
decoders instead of stopping at the checksum check. Each case is run by `exercise` (open, keys,
layout, get_tensor, get_sparse, load, read_header, verify, inspect, plus cross-checks between them) in
a persistent worker process, so a segmentation fault, an abort, a hang or a huge allocation is caught,
reported and its input saved; the worker is restarted after each crash.

Acceptable outcomes are success or a `dcformat.DCFError`; anything else is a bug. This module lives in
tests/ rather than in the package: it is test tooling that needs the repository, and users of an
installed dcformat never run it.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import selectors
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
PREAMBLE = struct.Struct("<8sHHIQQ")  # §2, as constants.PREAMBLE_FORMAT: the file tools below stand alone
MAGIC = b"\x89DCF\r\n\x1a\n"
SECTION_KEYS = {"offset", "length", "crc32"}
TENSOR_SECTION_ORDER = ("data", "codebook", "scales", "row_scales", "gaps", "indices", "values")  # §4, §5 file order
FUZZ_LIMIT_BYTES = 64 << 20  # decoded-bytes floor inside the worker (see exercise); files are tiny
# A case that grows the worker's peak RSS by more than this is a bug: its file is at most a few MB, it may
# decode FUZZ_LIMIT_BYTES and hold a header of up to the 100 MB limit as bytes and as text; measured per
# case (the peak is reset before each), the largest growth seen in 6,000 cases was 232 MB, such a header.
RSS_GROWTH_LIMIT = 512 << 20
MAX_CASE_BYTES = 16 << 20  # seeds are a few KB; a mutant this large means a mutator went wrong
REFERENCE_MAX_BYTES = 4 << 20  # files decoding to more are not compared with the (slow) reference decoder
SEED_TIMEOUT = 600.0  # seconds a new worker may take over the seeds (numba may compile its kernels)


# =============================================================================================
# Seeds: small valid files of every encoding


def seed_files() -> dict[str, bytes]:
    """Small valid files covering every encoding, coding, layout, dtype and awkward shape."""
    import numpy as np

    from dcformat import codec
    from dcformat import constants as K
    from dcformat.container import write_stream

    rng = np.random.default_rng(20261129)
    out: dict[str, bytes] = {}

    def build(drafts, mode="auto", block_size=K.DEFAULT_BLOCK_SIZE, metadata=None, compact=False, rans=False) -> bytes:
        """A file from dcformat's writer; with a JSON header unless `compact` (zlib when it pays); with
        `rans`, rANS offered where it pays (format 1.4)."""
        import io

        # header_cost 0: Huffman wherever its payload and table pay, so that these tiny files have some
        kwargs = {"rans": True} if rans else {}  # the 1.0-1.3 seeds call assemble as they always did
        tables, encoded = codec.assemble(drafts, mode, block_size, header_cost=0, **kwargs)
        buf = io.BytesIO()
        write_stream(buf, metadata or {}, tables, encoded, compact_header=compact)
        return buf.getvalue()

    def build_coded(drafts, code, tables: list[str]) -> bytes:
        """The drafts as a file whose every non-empty stream is coded by `code(key, stream, section)` ->
        (stream object, payload); empty streams fixed; `tables`: the Huffman tables `code` filled."""
        import io

        from dcformat.container import EncodedTensor

        encoded = []
        for d in drafts:
            header, payloads, i = dict(d.header), [], 0
            for key in TENSOR_SECTION_ORDER:
                if key not in header:
                    continue
                stream = d.streams.get(key)
                if stream is None:
                    header[key] = i
                    payloads.append(d.payloads[d.header[key]])
                elif len(stream.symbols) == 0:
                    header[key] = {"coding": "fixed", "section": i}
                    payloads.append(b"")
                else:
                    header[key], payload = code(key, stream, i)
                    payloads.append(payload)
                i += 1
            encoded.append(EncodedTensor(header, payloads))
        buf = io.BytesIO()
        write_stream(buf, {}, tables, encoded, compact_header=False)
        return buf.getvalue()

    def build_rans(drafts, block_size=K.DEFAULT_BLOCK_SIZE) -> bytes:
        """Every non-empty stream rANS-coded (§6.4) with dcformat's table of its counts, whatever it saves."""
        from dcformat import rans

        def code(key, stream, i):
            freqs = rans.normalize(stream.counts)
            payload, block_bytes = rans.encode(stream.symbols, freqs, block_size)
            return {"coding": "rans", "section": i, "frequencies": rans.frequencies_to_hex(freqs),
                    "block_size": block_size, "block_bytes": block_bytes}, payload

        return build_coded(drafts, code, [])

    def fields_as_rans(data: bytes, block_size: int = 100) -> bytes:
        """A file whose fields tensors' fixed-width streams are recoded as rans streams (§5.4, §6.4)."""
        from dcformat import bitpack, rans

        doc, sections = parse(data)
        payloads = []
        for path, payload in sections:
            t = get_path(doc, path[:2])
            if t.get("encoding") == "fields":
                c, f = path[3], path[4]
                stream, width = t["chunks"][c][f], t["fields"][f]
                numel = int(np.prod(t["shape"], dtype=np.int64))
                count = min(t["chunk_size"], numel - c * t["chunk_size"])
                symbols = bitpack.unpack(payload, count, width, 1 << width)
                freqs = rans.normalize(np.bincount(symbols))
                payload, block_bytes = rans.encode(symbols, freqs, block_size)
                stream.update(coding="rans", frequencies=rans.frequencies_to_hex(freqs), block_size=block_size,
                              block_bytes=block_bytes)
            payloads.append(payload)
        return serialize(doc, payloads)

    def build_huffman(drafts, block_size=K.DEFAULT_BLOCK_SIZE, share=False) -> bytes:
        """Like build, but every non-empty stream Huffman-coded (assemble only does it when it pays)."""
        from dcformat import huffman

        shared: dict[str, np.ndarray] = {}
        if share:
            for kind in ("gaps", "indices"):
                counts = [d.streams[kind].counts for d in drafts if kind in d.streams and len(d.streams[kind].symbols)]
                if counts:
                    total = np.zeros(max(len(c) for c in counts), np.int64)
                    for c in counts:
                        total[: len(c)] += c
                    shared[kind] = huffman.code_lengths(total)
        tables: list[str] = []

        def code(key, stream, i):
            lengths = shared.get(key, huffman.code_lengths(stream.counts))
            text = huffman.lengths_to_hex(lengths)
            if text not in tables:
                tables.append(text)
            payload, block_bytes = huffman.encode(stream.symbols, lengths, block_size)
            return {"coding": "huffman", "section": i, "table": tables.index(text), "block_size": block_size,
                    "block_bytes": block_bytes}, payload

        return build_coded(drafts, code, tables)

    def bits(dtype: str, shape, density=1.0):
        dt = codec.numpy_dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        if dtype == "bool":
            a = rng.integers(0, 2, n).astype(np.bool_)
        else:
            a = rng.integers(0, 256, n * dt.itemsize, dtype=np.uint8).view(dt).copy()
        keep = rng.random(n) < density
        a.view(np.dtype(f"u{dt.itemsize}"))[~keep] = 0
        return a.reshape(shape)

    def skewed(k: int, shape, zero_share=0.0):
        """Codebook indices with a skewed distribution (so Huffman wins), 0 where zero."""
        n = int(np.prod(shape, dtype=np.int64))
        p = 1.0 / (np.arange(1, k + 1) ** 1.5)
        idx = rng.choice(k, n, p=p / p.sum()).astype(np.int64)
        if zero_share:
            idx[rng.random(n) < zero_share] = 0
        return idx.reshape(shape)

    out["empty"] = build([])
    out["metadata-only"] = build([], metadata={"arch": "lenet", "ünïcode": "✓ \u0000 \"quoted\""})
    for dtype in K.DTYPE_SIZES:
        out[f"raw-{dtype}"] = build([codec.draft_explicit("t", bits(dtype, (3, 5)), "raw")])
    out["raw-mixed"] = build([
        codec.draft_explicit("scalar", bits("float32", ()), "raw"),
        codec.draft_explicit("empty0", bits("float16", (0,)), "raw"),
        codec.draft_explicit("empty30", bits("int8", (3, 0)), "raw"),
        codec.draft_explicit("vec", bits("bool", (7,)), "raw"),
        codec.draft_explicit("conv", bits("bfloat16", (2, 3, 2, 2)), "raw"),
    ])
    for dtype in ("float32", "float16", "bfloat16", "float64", "int16", "uint8"):
        cb = bits(dtype, (5,))
        out[f"shared-fixed-{dtype}"] = build(
            [codec.draft_explicit("s", cb[:1].repeat(12).reshape(3, 4), "shared", codebook=cb,
                                  indices=rng.integers(0, 5, 12))], mode="off")
    cb = np.linspace(-1, 1, 16).astype(np.float32)
    out["shared-huffman"] = build([codec.draft_explicit("h", np.zeros((20, 30), np.float32), "shared",
                                                        codebook=cb, indices=skewed(16, (20, 30)))])
    out["shared-huffman-multiblock"] = build(
        [codec.draft_explicit("h", np.zeros((16, 40), np.float32), "shared", codebook=cb, indices=skewed(16, (16, 40)))],
        block_size=37)
    out["shared-scalar"] = build([codec.draft_explicit("s", np.float32(2.5), "shared")], mode="off")
    out["shared-one-symbol-huffman"] = build(
        [codec.draft_explicit("o", np.zeros((8, 8), np.float32), "shared", codebook=cb[:2],
                              indices=np.zeros(64, np.int64))])
    sparse_cb = np.concatenate([[0.0], np.linspace(-1, 1, 7)]).astype(np.float32)
    for layout in ("csr", "csc"):
        for b in (1, 2, 3, 5, 8, 12, 16):
            idx = skewed(8, (12, 10), zero_share=0.85)
            out[f"sparse-cb-{layout}-b{b}"] = build(
                [codec.draft_explicit("w", np.zeros((12, 10), np.float32), "sparse", codebook=sparse_cb,
                                      indices=idx, layout=layout, index_bits=b)], mode="off" if b % 2 else "auto")
        for dtype in ("float32", "float64", "bfloat16", "int8", "uint64", "bool"):
            out[f"sparse-values-{layout}-{dtype}"] = build(
                [codec.draft_explicit("v", bits(dtype, (6, 7), 0.2), "sparse", layout=layout, index_bits=2)])
        out[f"sparse-conv-{layout}"] = build(
            [codec.draft_explicit("c", np.zeros((4, 3, 3, 3), np.float16), "sparse",
                                  codebook=sparse_cb.astype(np.float16), indices=skewed(8, (4, 3, 3, 3), 0.7),
                                  layout=layout, index_bits=3)])
    for layout in ("csr", "csc"):
        for b in (1, 3, 8):
            out[f"sparse-cb-huffman-{layout}-b{b}"] = build_huffman(
                [codec.draft_explicit("w", np.zeros((12, 10), np.float32), "sparse", codebook=sparse_cb,
                                      indices=skewed(8, (12, 10), zero_share=0.8), layout=layout, index_bits=b)])
        out[f"sparse-values-huffman-{layout}"] = build_huffman(
            [codec.draft_explicit("v", bits("float16", (9, 7), 0.3), "sparse", layout=layout, index_bits=4)], block_size=9)
    out["sparse-fillers-huffman-multiblock"] = build_huffman(
        [codec.draft_explicit("f", np.zeros((30, 30), np.float32), "sparse", codebook=sparse_cb,
                              indices=skewed(8, (30, 30), 0.95), index_bits=2)], block_size=16)
    out["shared-huffman-block1"] = build_huffman(
        [codec.draft_explicit("h", np.zeros((3, 5), np.float32), "shared", codebook=cb, indices=skewed(16, (3, 5)))],
        block_size=1)
    out["shared-huffman-long-codes"] = build_huffman(  # a code with 15-bit codewords (Fibonacci-like counts)
        [codec.draft_explicit("l", np.zeros((1, 2583), np.float32), "shared", codebook=np.arange(17, dtype=np.float32),
                              indices=np.repeat(np.arange(17), [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233,
                                                                377, 610, 987, 0][:17]).reshape(1, -1))], block_size=500)
    out["sparse-1d"] = build([codec.draft_explicit("d", bits("float32", (40,), 0.1), "sparse", index_bits=3)])
    out["sparse-scalar"] = build([codec.draft_explicit("s", np.float32(1.0), "sparse", index_bits=1)])
    out["sparse-zero-scalar"] = build([codec.draft_explicit("z", np.float32(0.0), "sparse", index_bits=1)])
    out["sparse-empty"] = build([
        codec.draft_explicit("e0", np.zeros((0,), np.float32), "sparse"),
        codec.draft_explicit("e1", np.zeros((0, 5), np.float32), "sparse", layout="csc"),
        codec.draft_explicit("e2", np.zeros((5, 0), np.int32), "sparse"),
        codec.draft_explicit("e3", np.zeros((4, 4), np.float32), "sparse"),
    ])
    shared_tables = [
        codec.draft_explicit(f"t{i}", np.zeros((10, 12), np.float32), "sparse", codebook=sparse_cb,
                             indices=skewed(8, (10, 12), 0.6), layout=("csr", "csc")[i % 2], index_bits=4)
        for i in range(3)
    ]
    out["huffman-shared-tables"] = build_huffman(shared_tables, block_size=50, share=True)
    out["model-mixed"] = build([
        codec.draft_explicit("bias", bits("float32", (6,)), "raw"),
        codec.draft_explicit("fc", np.zeros((6, 9), np.float32), "shared", codebook=cb, indices=skewed(16, (6, 9))),
        codec.draft_explicit("sp", np.zeros((9, 9), np.float32), "sparse", codebook=sparse_cb,
                             indices=skewed(8, (9, 9), 0.8), layout="csc", index_bits=3),
        codec.draft_explicit("vals", bits("float16", (5, 8), 0.3), "sparse", index_bits=4),
    ], metadata={"model": "mixed"})
    # Compressed headers (§2.2, format 1.1): the writer's own choice on a model where zlib pays, and
    # seeds above with their header zlib-compressed whatever it saves
    out["zlib-writer-model"] = build([
        codec.draft_explicit(f"layer{i}.weight", np.zeros((9, 9), np.float32), "sparse", codebook=sparse_cb,
                             indices=skewed(8, (9, 9), 0.8), layout=("csr", "csc")[i % 2], index_bits=3 + i % 3)
        for i in range(6)] + [codec.draft_explicit(f"layer{i}.bias", bits("float32", (9,)), "raw") for i in range(6)],
        metadata={"model": "zlib"}, compact=True)
    # The fields encoding (§5.4, format 1.2): dcformat's split of every dtype, odd splits, several chunks,
    # Huffman and fixed fields, awkward values (random bit patterns: NaN payloads, subnormals, -0.0)
    def weights(dtype: str, shape, scale=0.05):
        a = (rng.standard_normal(int(np.prod(shape, dtype=np.int64))) * scale).astype(codec.numpy_dtype(dtype))
        return a.reshape(shape)

    for dtype in [d for d in K.DTYPE_SIZES if d != "bool"]:
        a = weights(dtype, (40, 30)) if dtype in K.FLOAT_DTYPES or dtype in K.FLOAT8_DTYPES else \
            rng.integers(0, 50, (40, 30)).astype(codec.numpy_dtype(dtype))
        out[f"fields-{dtype}"] = build([codec.draft_explicit("f", a, "fields", chunk_size=500, header_cost=0)])
    out["fields-odd"] = build([
        codec.draft_explicit("bits", bits("float32", (9, 11)), "fields", fields=(1, 3, 16, 12), chunk_size=7,
                             header_cost=0),
        codec.draft_explicit("scalar", bits("float64", ()), "fields", header_cost=0),
        codec.draft_explicit("empty", bits("bfloat16", (0, 4)), "fields", header_cost=0),
        codec.draft_explicit("one", bits("float16", (1,)), "fields", fields=(16,), header_cost=0),
        codec.draft_explicit("same", np.full((20, 20), np.nan, np.float32), "fields", chunk_size=64, header_cost=0),
    ])
    # Row scales of shared tensors (§5.2, format 1.3): fixed and Huffman row_scales, float64, every matrix view
    def rows_draft(name: str, shape, dtype="float32", m=4, skew=True):
        dt = codec.numpy_dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        rows = 1 if len(shape) <= 1 else shape[0]
        classes = skewed(m, (rows,)) if skew else rng.integers(0, m, rows)
        scales = np.array([0.5, 1.0, 2.0, -3.0, 1e-30, 7.25, 1e30, 0.1][:m] * (1 + m // 8), np.float64)[:m]
        return codec.draft_explicit(name, np.zeros(shape, dt), "shared", codebook=cb.astype(dt),
                                    indices=skewed(16, (n,)), scales=scales.astype(dt), row_scales=classes)

    out["shared-rows-fixed"] = build([rows_draft("r", (6, 5), skew=False)], mode="off")
    out["shared-rows-huffman"] = build_huffman([rows_draft("r", (64, 8), m=5)])
    out["shared-rows-huffman-multiblock"] = build_huffman([rows_draft("r", (40, 3), m=3)], block_size=7)
    out["shared-rows-float64"] = build([rows_draft("d", (9, 4), "float64", m=8)])
    out["shared-rows-shapes"] = build([
        rows_draft("v", (7,), m=1), rows_draft("s", (), "float64", m=1), rows_draft("e", (0, 3), m=2),
        rows_draft("z", (4, 0), m=2), rows_draft("c", (3, 2, 2), "float64", m=3)])
    out["fields-huffman-16"] = build([codec.draft_explicit("h", weights("bfloat16", (50, 40)), "fields", fields=(16,),
                                                           chunk_size=1000, header_cost=0)])
    # rANS streams (§6.4, format 1.4): every stream rans-coded (one-symbol tables of 8-byte blocks, blocks of
    # one symbol, row scales), and the writer's own choice where rANS pays (skewed indices, fields streams)
    out["shared-rans"] = build_rans([codec.draft_explicit("h", np.zeros((20, 30), np.float32), "shared", codebook=cb,
                                                          indices=skewed(16, (20, 30)))])
    out["shared-rans-multiblock"] = build_rans(
        [codec.draft_explicit("h", np.zeros((16, 40), np.float32), "shared", codebook=cb, indices=skewed(16, (16, 40)))],
        block_size=37)
    out["shared-rans-block1"] = build_rans(
        [codec.draft_explicit("h", np.zeros((3, 5), np.float32), "shared", codebook=cb, indices=skewed(16, (3, 5)))],
        block_size=1)
    out["shared-rans-one-symbol"] = build_rans(
        [codec.draft_explicit("o", np.zeros((8, 8), np.float32), "shared", codebook=cb[:2],
                              indices=np.zeros(64, np.int64))], block_size=20)
    for layout, b in (("csr", 3), ("csc", 8)):
        out[f"sparse-rans-{layout}-b{b}"] = build_rans(
            [codec.draft_explicit("w", np.zeros((12, 10), np.float32), "sparse", codebook=sparse_cb,
                                  indices=skewed(8, (12, 10), zero_share=0.8), layout=layout, index_bits=b)], block_size=30)
    out["sparse-values-rans"] = build_rans(
        [codec.draft_explicit("v", bits("float16", (9, 7), 0.3), "sparse", layout="csc", index_bits=4)])
    out["shared-rows-rans"] = build_rans([rows_draft("r", (64, 8), m=5), rows_draft("s", (0, 3), m=2)], block_size=50)
    out["rans-writer-model"] = build([
        codec.draft_explicit("fc", np.zeros((40, 50), np.float32), "shared", codebook=cb,
                             indices=skewed(16, (40, 50), zero_share=0.85)),
        codec.draft_explicit("sp", np.zeros((30, 40), np.float32), "sparse", codebook=sparse_cb,
                             indices=skewed(8, (30, 40), 0.7), index_bits=3),
        codec.draft_explicit("bias", bits("float32", (6,)), "raw"),
    ], block_size=500, rans=True)
    out["fields-rans"] = fields_as_rans(build([
        codec.draft_explicit("f", weights("float16", (30, 20)), "fields", fields=(6, 10), chunk_size=256, huffman="off"),
        codec.draft_explicit("same", np.full((9,), 1.5, np.float32), "fields", fields=(16, 16), huffman="off")],
        mode="off"))
    for name in ("shared-rans-multiblock", "shared-rows-rans"):
        doc, sections = parse(out[name])
        out["zlib-" + name] = serialize(doc, [b for _, b in sections], compress=True)
    for name in ("empty", "metadata-only", "model-mixed", "sparse-cb-huffman-csr-b3", "huffman-shared-tables",
                 "shared-huffman-multiblock", "sparse-empty", "raw-mixed", "sparse-values-csc-bool", "fields-odd",
                 "shared-rows-huffman", "shared-rows-shapes"):
        doc, sections = parse(out[name])
        out["zlib-" + name] = serialize(doc, [b for _, b in sections], compress=True)
    out.update(spec_vectors())
    return out


def spec_vectors(limit: int = 64 << 10) -> dict[str, bytes]:
    """The valid test vectors of spec/vectors/ (small files written once, reviewed by hand), as seeds."""
    folder = os.path.join(os.path.dirname(HERE), "spec", "vectors")
    try:
        with open(os.path.join(folder, "index.json")) as fh:
            valid = json.load(fh)["valid"]
    except (OSError, ValueError, KeyError):
        return {}
    out = {}
    for v in valid:
        path = os.path.join(folder, v["file"])
        if os.path.getsize(path) <= limit:
            with open(path, "rb") as fh:
                out["vector-" + v["name"]] = fh.read()
    return out


# =============================================================================================
# Taking files apart and putting them back together


PARSE_MAX_TEXT = 64 << 20  # the file tools decompress no header to more than this


def header_text(data: bytes) -> tuple[bytes, bool] | None:
    """The JSON text of a file's header region (§2.2) and whether it was a zlib stream; None when the
    region runs past the file or its zlib stream does not decompress."""
    try:
        hlen = PREAMBLE.unpack_from(data, 0)[4]
    except struct.error:
        return None
    if hlen > len(data) - PREAMBLE.size:  # a mutated length: rebuilding it could ask for gigabytes
        return None
    raw = data[PREAMBLE.size : PREAMBLE.size + hlen]
    if raw[:1] != b"\x78":
        return raw, False
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(raw, PARSE_MAX_TEXT)
    except zlib.error:
        return None
    return (text, True) if inflater.eof else None


def is_zlib(data: bytes) -> bool:
    """Whether the file's header region holds a zlib stream (its first byte is 0x78, §2.2)."""
    return data[PREAMBLE.size : PREAMBLE.size + 1] == b"\x78"


def parse(data: bytes) -> tuple[dict, list[tuple[tuple, bytes]]] | None:
    """The header document and each section's (path, bytes) of a well-formed file, or None."""
    got = header_text(data)
    if got is None:
        return None
    try:
        doc = json.loads(got[0])
    except (ValueError, RecursionError):
        return None
    sections = []
    for path, sec in section_slots(doc):
        try:
            start, length = int(sec["offset"]), int(sec["length"])
        except (KeyError, TypeError, ValueError, OverflowError):
            sections.append((path, b""))
            continue
        sections.append((path, data[start : start + length] if 0 <= start <= len(data) and length >= 0 else b""))
    return doc, sections


def section_slots(doc: Any) -> Iterator[tuple[tuple, dict]]:
    """(path, section object) of every section in the document, in §5 file order."""
    tensors = doc.get("tensors") if isinstance(doc, dict) else None
    if not isinstance(tensors, list):
        return
    for i, t in enumerate(tensors):
        if not isinstance(t, dict):
            continue
        chunks = t.get("chunks")
        if isinstance(chunks, list):  # fields (§5.4, format 1.2): chunk by chunk, field by field
            for c, streams in enumerate(chunks):
                for f, v in enumerate(streams if isinstance(streams, list) else []):
                    if isinstance(v, dict) and isinstance(v.get("section"), dict):
                        yield ("tensors", i, "chunks", c, f, "section"), v["section"]
        for key in TENSOR_SECTION_ORDER:
            v = t.get(key)
            if isinstance(v, dict) and "section" in v and isinstance(v["section"], dict):
                yield ("tensors", i, key, "section"), v["section"]
            elif isinstance(v, dict) and SECTION_KEYS & set(v):
                yield ("tensors", i, key), v


def get_path(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def serialize(doc: Any, payloads: list[bytes], *, keep_lengths: bool = False, compress: bool = False,
              level: int = 9) -> bytes:
    """A file with this header and payloads, offsets laid out by §4 and every CRC correct.

    keep_lengths: sections keep the length their object states (payload cut or zero-padded to it,
    when the length is a sane integer); otherwise each length becomes its payload's size.
    compress: the header as a zlib stream (at `level`) in a version 1.1 file, laid out as dcformat's
    writer does (the data start never moves back while iterating, then the fewest spaces that hold).
    """
    slots = list(section_slots(doc))
    fixed = []
    for (path, sec), payload in zip(slots, payloads):
        length = sec.get("length")
        if keep_lengths and isinstance(length, int) and not isinstance(length, bool) and 0 <= length <= 1 << 20:
            payload = payload[:length] + b"\0" * (length - len(payload))
        elif not keep_lengths:
            sec["length"] = len(payload)
        fixed.append(payload)

    def stored(start: int) -> bytes:
        end = start
        for (path, sec), payload in zip(slots, fixed):
            sec["offset"] = align64(end)
            sec["crc32"] = zlib.crc32(payload)
            end = sec["offset"] + len(payload)
        text = _dump(doc)
        return zlib.compress(text, level) if compress else text

    start = 0
    for _ in range(16):  # offsets depend on the header length and vice versa; converges in 2-3 passes
        header = stored(start)
        needed = align64(PREAMBLE.size + len(header))
        if needed <= start:
            if needed < start and align64(PREAMBLE.size + len(stored(needed))) <= needed:
                start = needed
            header = stored(start)
            break
        start = needed
    header = header + b" " * (start - PREAMBLE.size - len(header))
    body = bytearray()
    pos = start
    for (path, sec), payload in zip(slots, fixed):
        off = sec["offset"]
        body += b"\0" * (off - pos) + payload
        pos = off + len(payload)
    minor = 4 if needs_1_4(doc) else 3 if needs_1_3(doc) else 2 if needs_1_2(doc) else int(compress)
    return PREAMBLE.pack(MAGIC, 1, minor, zlib.crc32(header), len(header), start + len(body)) + header + bytes(body)


def needs_1_2(doc: Any) -> bool:
    """Whether a document uses a format 1.2 feature (a fields tensor, a float8 dtype): its file says 1.2."""
    tensors = doc.get("tensors") if isinstance(doc, dict) else None
    return any(isinstance(t, dict) and (t.get("encoding") == "fields" or t.get("dtype") in ("float8_e4m3fn", "float8_e5m2"))
               for t in (tensors if isinstance(tensors, list) else []))


def needs_1_3(doc: Any) -> bool:
    """Whether a document has a tensor with row scales (§5.2, format 1.3): its file says 1.3."""
    tensors = doc.get("tensors") if isinstance(doc, dict) else None
    return any(isinstance(t, dict) and "scales" in t for t in (tensors if isinstance(tensors, list) else []))


def needs_1_4(doc: Any) -> bool:
    """Whether a document has a rans stream (§6.4, format 1.4): its file says 1.4."""
    for path, _ in section_slots(doc):
        stream = get_path(doc, path[:-1]) if path[-1] == "section" else None
        if isinstance(stream, dict) and stream.get("coding") == "rans":
            return True
    return False


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def align64(x: int) -> int:
    return -(-x // 64) * 64


def fix_checksums(data: bytes) -> bytes:
    """The same file with the section CRCs (where in range), header CRC and file length made correct.

    Offsets and lengths are left as they are, so layout mutations survive. When the header does not
    parse as JSON, only the preamble is fixed. A zlib header is recompressed when a CRC changed.
    """
    if len(data) < PREAMBLE.size:
        return data
    magic, major, minor, _, hlen, _ = PREAMBLE.unpack_from(data, 0)
    header = data[PREAMBLE.size : PREAMBLE.size + hlen]
    got = header_text(data)
    try:
        doc = json.loads(got[0]) if got is not None else None
    except (ValueError, RecursionError):
        doc = None
    if doc is not None:
        changed = False
        for _, sec in section_slots(doc):
            try:
                start, length = sec["offset"], sec["length"]
                if isinstance(start, int) and isinstance(length, int) and 0 <= start and start + length <= len(data):
                    crc = zlib.crc32(data[start : start + length])
                    changed |= sec.get("crc32") != crc
                    sec["crc32"] = crc
            except (KeyError, TypeError):
                continue
        text = zlib.compress(_dump(doc), 9) if got[1] else _dump(doc)
        if changed and len(text) <= len(header):
            header = text + b" " * (len(header) - len(text))
            data = data[: PREAMBLE.size] + header + data[PREAMBLE.size + len(header) :]
    return PREAMBLE.pack(magic, major, minor, zlib.crc32(header), hlen, len(data)) + data[PREAMBLE.size :]


def with_header_region(data: bytes, stored: bytes, *, minor: int | None = None, fix_crc: bool = True) -> bytes:
    """The file with new header-region bytes (a JSON text or a zlib stream), padded with spaces to the old
    header length when they fit (so the stated offsets stay right) or grown by 64-byte steps (zeros
    inserted before the data: the offsets are then wrong), the preamble made to match."""
    magic, major, old_minor, crc, hlen, _ = PREAMBLE.unpack_from(data, 0)
    hlen = min(hlen, len(data) - PREAMBLE.size)  # a mutated length past the file: no gigabytes of padding
    body = data[PREAMBLE.size + hlen :]
    n = hlen if len(stored) <= hlen else align64(PREAMBLE.size + len(stored)) - PREAMBLE.size
    if n != hlen:
        body = b"\0" * (n - hlen) + body
    region = stored + b" " * (n - len(stored))
    crc = zlib.crc32(region) if fix_crc else crc
    minor = old_minor if minor is None else minor
    return PREAMBLE.pack(magic, major, minor, crc, n, PREAMBLE.size + n + len(body)) + region + body


# =============================================================================================
# Mutations

INTERESTING_INTS = [
    0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 63, 64, 65, 127, 128, 255, 256, 1023, 1024, 4095, 4096,
    65535, 65536, 65537, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**53, 2**53 + 1, 2**62,
    2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, 2**100, 10**30, -1, -2, -(2**31), -(2**63), -(2**64),
]
INTERESTING_VALUES: list[Any] = [None, True, False, 0.5, 1.0, -0.0, 1e308, "", "0", [], {}, [0], {"a": 1}]
VOCABULARY = [
    "raw", "shared", "sparse", "csr", "csc", "fixed", "huffman", "float32", "float16", "bfloat16", "float64",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool", "float8", "complex64",
    "float8_e4m3fn", "float8_e5m2", "fields", "chunk_size", "chunks", "scale_bits", "scales", "row_scales",
    "data", "codebook", "gaps", "indices", "values", "section", "offset", "length", "crc32", "table",
    "block_size", "block_bytes", "rans", "frequencies", "8000", "00008000", "7fe000100010", "name", "dtype", "shape", "encoding", "layout", "bits", "index_bits",
    "entries", "fillers", "metadata", "tables", "tensors", "1", "2", "f", "0", "11", "12", "1221", "fff",
    "x" * 300, "é", "\ud800", "\u0000", "t", "w",
]
INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, 0x20, 0x22, 0x5C, 0x7B, 0x7D]


def random_table(r: random.Random) -> str:
    """A valid §6.2 table: the code lengths of a random full binary tree (Kraft sum exactly 1)."""
    n = r.choice([1, 2, 3, 4, 5, 8, 16, 17, 64, 256])
    if n == 1:
        return "0" * r.randint(0, 3) + "1"
    lengths = [1, 1]
    while len(lengths) < n:
        i = r.randrange(len(lengths))
        if lengths[i] >= 15:
            if all(x >= 15 for x in lengths):
                break
            continue
        lengths[i] += 1
        lengths.insert(i + 1, lengths[i])
    r.shuffle(lengths)
    zeros = r.choice([0, 0, 1, 3])
    for _ in range(zeros):
        lengths.insert(r.randrange(len(lengths) + 1), 0)
    return "".join("0123456789abcdef"[x] for x in lengths)


def random_frequencies(r: random.Random, n: int | None = None) -> str:
    """A valid §6.4 frequency table of n groups (random n if None): one symbol, uniform, skewed, or
    frequencies of 1 (15-bit symbols, a word every two), zero groups anywhere."""
    n = n or r.choice([1, 2, 3, 4, 5, 8, 16, 17, 256])
    shape = r.randrange(4)
    if shape == 0 or n == 1:
        f = [0] * n
        f[r.randrange(n)] = 1 << 15
    elif shape == 1:
        f = [(1 << 15) // n] * n
        f[0] += (1 << 15) - sum(f)
    elif shape == 2:
        f = [max(1, (1 << 15) >> min(15, 1 + i)) if r.random() < 0.8 else 0 for i in range(n)]
        f[0] += (1 << 15) - sum(f)
    else:
        f = [1] * n
        f[r.randrange(n)] += (1 << 15) - n
    if f[0] <= 0:  # the skewed shape gave more than 2^15 away: one symbol instead
        f = [1 << 15] + [0] * (n - 1)
    return "".join(f"{x:04x}" for x in f)


def _rans_streams(doc: Any) -> list[tuple[tuple, dict]]:
    """(section path, stream object) of every rans stream of a document."""
    out = []
    for path, _ in section_slots(doc):
        stream = get_path(doc, path[:-1]) if path[-1] == "section" else None
        if isinstance(stream, dict) and stream.get("coding") == "rans":
            out.append((path, stream))
    return out


def _leaves(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every (path, value) of the JSON tree, containers included (the root excluded)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield path + (k,), v
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield path + (i,), v
            yield from _leaves(v, path + (i,))


def _set(doc: Any, path: tuple, value: Any) -> None:
    get_path(doc, path[:-1])[path[-1]] = value


@dataclass
class Mutator:
    """Turns seed files into hostile ones; each mutation is named so results can be counted by kind."""

    seeds: dict[str, bytes]
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.names = sorted(self.seeds)
        self.kinds: list[tuple[str, Callable[[bytes, str], bytes], float]] = [
            ("payload", self.payload, 8),          # hostile section bytes, CRC fixed: the decoders' diet
            ("json_number", self.json_number, 6),
            ("json_string", self.json_string, 3),
            ("json_structure", self.json_structure, 3),
            ("json_text", self.json_text, 2),       # duplicate keys, raw text edits
            ("table", self.table, 3),
            ("consistent_sparse", self.consistent_sparse, 4),
            ("consistent_fields", self.consistent_fields, 3),  # format 1.2: any split, sizes that match
            ("consistent_row_scales", self.consistent_row_scales, 3),  # format 1.3: row scales, sizes that match
            ("rans_blocks", self.rans_blocks, 4),  # format 1.4: valid tables and block lists, damaged states and words
            ("reshape", self.reshape, 3),
            ("recode", self.recode, 2),
            ("swap_sections", self.swap_sections, 2),
            ("bit_flip", self.bit_flip, 4),
            ("byte_set", self.byte_set, 3),
            ("preamble", self.preamble, 2),
            ("truncate", self.truncate, 2),
            ("extend", self.extend, 1),
            ("splice", self.splice, 2),
            ("zlib_json", self.zlib_json, 3),      # header JSON edited, then zlib-compressed (§2.2)
            ("zlib_bytes", self.zlib_bytes, 3),    # the zlib stream itself damaged, CRC repaired
        ]
        self._zlib = False  # whether the file _doc last took apart had a zlib header
        self.rans_seeds = [n for n in self.names if (p := parse(self.seeds[n])) is not None and _rans_streams(p[0])]
        self.total_weight = sum(w for _, _, w in self.kinds)
        self.mutator_errors = 0

    def case(self) -> tuple[str, str, bytes]:
        """(seed name, mutation kind, mutated bytes); sometimes two mutations are stacked."""
        r = self.rng
        seed = r.choice(self.names)
        data = self.seeds[seed]
        kind = self._pick()
        data = self._apply(kind, data, seed)
        if r.random() < 0.15:
            second = self._pick()
            data = self._apply(second, data, seed)
            kind = f"{kind}+{second}"
        if len(data) > MAX_CASE_BYTES:  # a mutator bug, not a test case: keep the run going
            self.mutator_errors += 1
            data = self.bit_flip(self.seeds[seed], seed)
        return seed, kind, data

    def _pick(self) -> str:
        x = self.rng.random() * self.total_weight
        for name, _, w in self.kinds:
            x -= w
            if x < 0:
                return name
        return self.kinds[-1][0]

    def _apply(self, kind: str, data: bytes, seed: str) -> bytes:
        fn = next(f for n, f, _ in self.kinds if n == kind)
        try:
            return fn(data, seed)
        except Exception:  # noqa: BLE001 - a stacked mutation can leave a document no mutator expects
            self.mutator_errors += 1
            return self.bit_flip(data, seed)

    # -- helpers ---------------------------------------------------------------------------------

    def _doc(self, data: bytes) -> tuple[dict, list[bytes]] | None:
        p = parse(data)
        if p is None:
            return None
        self._zlib = is_zlib(data)
        doc, sections = p
        return doc, [b for _, b in sections]

    def _compress(self) -> bool:
        """Whether a rebuilt header is zlib-compressed: as the file was, mostly."""
        return self._zlib != (self.rng.random() < 0.1)

    def _finish(self, doc: Any, payloads: list[bytes], original: bytes) -> bytes:
        """Serialise a mutated document: usually with a correct layout and CRCs, sometimes not."""
        r = self.rng.random()
        if r < 0.55:
            return serialize(doc, payloads, keep_lengths=True, compress=self._compress())
        if r < 0.85:
            return serialize(doc, payloads, keep_lengths=False, compress=self._compress())
        return self._finish_stated(doc, original, fix=self.rng.random() < 0.8)

    def _finish_stated(self, doc: Any, original: bytes, fix: bool) -> bytes:
        """Keep the offsets the document states (layout mutations survive); fix the CRCs if asked."""
        text = _dump(doc)
        if self._zlib:
            text = zlib.compress(text, 9)
        magic, major, minor, _, hlen, _ = PREAMBLE.unpack_from(original, 0)
        n = max(hlen, align64(PREAMBLE.size + len(text)) - PREAMBLE.size)
        body = original[PREAMBLE.size + hlen :]
        if n != hlen:  # the header grew: keep the data where the stated offsets expect it less often
            body = b"\0" * (n - hlen) + body
        text += b" " * (n - len(text))
        out = PREAMBLE.pack(magic, major, minor, zlib.crc32(text), n, PREAMBLE.size + n + len(body)) + text + body
        return fix_checksums(out) if fix else out

    def _maybe_fix(self, data: bytes) -> bytes:
        return fix_checksums(data) if self.rng.random() < 0.7 else data

    # -- structure-aware mutations ----------------------------------------------------------------

    def payload(self, data: bytes, seed: str) -> bytes:
        """Replace or damage one section's bytes, then fix the CRCs (so the decoder sees them)."""
        d = self._doc(data)
        if d is None or not d[1]:
            return self.bit_flip(data, seed)
        doc, payloads = d
        r = self.rng
        i = r.randrange(len(payloads))
        p = bytearray(payloads[i])
        how = r.randrange(7)
        if how == 0 and p:  # a few bit flips
            for _ in range(r.randint(1, 4)):
                j = r.randrange(len(p))
                p[j] ^= 1 << r.randrange(8)
        elif how == 1:
            p = bytearray(r.getrandbits(8) for _ in range(len(p)))
        elif how == 2:
            p = bytearray([r.choice(INTERESTING_BYTES)] * len(p))
        elif how == 3 and p:  # damage the tail (padding bits, last codewords)
            p[-1] = r.choice([0xFF, 0x80, 0x01, p[-1] ^ (1 << r.randrange(8))])
        elif how == 4 and p:
            for _ in range(r.randint(1, 8)):
                p[r.randrange(len(p))] = r.choice(INTERESTING_BYTES)
        elif how == 5:  # another section's bytes
            other = payloads[r.randrange(len(payloads))]
            p = bytearray((other * (len(p) // max(1, len(other)) + 1))[: len(p)]) if other else p
        else:  # change the length too
            p = p[: r.randrange(len(p) + 1)] if r.random() < 0.5 else p + bytes(r.getrandbits(8) for _ in range(r.randint(1, 70)))
            return serialize(doc, [bytes(x) if k != i else bytes(p) for k, x in enumerate(payloads)],
                             keep_lengths=r.random() < 0.3)
        payloads[i] = bytes(p)
        return serialize(doc, payloads, keep_lengths=True)

    def json_number(self, data: bytes, seed: str) -> bytes:
        """Set a number of the header (size, offset, count, shape, crc, table index) to a boundary value."""
        d = self._doc(data)
        if d is None:
            return self.preamble(data, seed)
        doc, payloads = d
        r = self.rng
        numbers = [(p, v) for p, v in _leaves(doc) if isinstance(v, int) and not isinstance(v, bool)]
        if not numbers:
            return self.json_structure(data, seed)
        path, v = r.choice(numbers)
        choice = r.random()
        if choice < 0.5:
            new = r.choice(INTERESTING_INTS)
        elif choice < 0.8:
            new = v + r.choice([-65, -64, -8, -2, -1, 1, 2, 8, 63, 64, 65])
        elif choice < 0.9:
            new = v * r.choice([2, 8, 1000, 2**20])
        else:
            new = r.choice([float(v), str(v), None, True, [v], -v])
        _set(doc, path, new)
        if path[-1] in ("offset", "crc32"):  # a relayout would overwrite exactly this number
            return self._finish_stated(doc, data, fix=path[-1] == "offset")
        return self._finish(doc, payloads, data)

    def json_string(self, data: bytes, seed: str) -> bytes:
        """Replace a string of the header (dtype, encoding, layout, coding, name, table) by another."""
        d = self._doc(data)
        if d is None:
            return self.bit_flip(data, seed)
        doc, payloads = d
        r = self.rng
        strings = [(p, v) for p, v in _leaves(doc) if isinstance(v, str)]
        if not strings:
            return self.json_structure(data, seed)
        path, v = r.choice(strings)
        x = r.random()
        if x < 0.6:
            new = r.choice(VOCABULARY)
        elif x < 0.8:
            new = r.choice(strings)[1]  # another string of the same file (e.g. a duplicate name)
        elif x < 0.9 and v:
            new = v[:-1] if r.random() < 0.5 else v + v[-1]
        else:
            new = r.choice(INTERESTING_VALUES + INTERESTING_INTS[:5])
        _set(doc, path, new)
        return self._finish(doc, payloads, data)

    def json_structure(self, data: bytes, seed: str) -> bytes:
        """Drop, add, rename or retype keys; grow, shrink or reorder lists; nest deeply."""
        d = self._doc(data)
        if d is None:
            return self.bit_flip(data, seed)
        doc, payloads = d
        r = self.rng
        nodes = list(_leaves(doc))
        how = r.randrange(9)
        containers = [(p, v) for p, v in nodes if isinstance(v, (dict, list))] + [((), doc)]
        path, node = r.choice(containers)
        if how == 0 and isinstance(node, dict) and node:  # drop a key
            del node[r.choice(list(node))]
        elif how == 1 and isinstance(node, dict):  # add a key
            node[r.choice(VOCABULARY)] = r.choice(INTERESTING_VALUES + INTERESTING_INTS[:8] + [copy.deepcopy(node)])
        elif how == 2 and isinstance(node, dict) and node:  # rename a key
            k = r.choice(list(node))
            node[r.choice(VOCABULARY)] = node.pop(k)
        elif how == 3 and isinstance(node, list) and node:  # duplicate or drop an element
            i = r.randrange(len(node))
            if r.random() < 0.5:
                node.insert(i, copy.deepcopy(node[i]))
            else:
                del node[i]
                if path[:1] == ("tensors",) or path == ("tensors",):
                    payloads = None  # the sections no longer line up: keep the stated layout
        elif how == 4 and isinstance(node, list):
            node.append(r.choice(INTERESTING_INTS + INTERESTING_VALUES))
        elif how == 5 and isinstance(node, list) and len(node) > 1:
            r.shuffle(node)
        elif how == 6 and nodes:  # retype any node
            p, _ = r.choice(nodes)
            _set(doc, p, r.choice(INTERESTING_VALUES + INTERESTING_INTS[:6]))
        elif how == 7:  # very deep nesting (recursion limits)
            deep: Any = 0
            for _ in range(r.choice([100, 2000, 100000])):
                deep = [deep]
            if isinstance(node, dict):
                node[r.choice(VOCABULARY)] = deep
            elif isinstance(node, list):
                node.append(deep)
        else:  # copy one tensor's stream or section object into another slot
            slots = list(section_slots(doc))
            if len(slots) >= 2:
                (pa, _), (pb, sb) = r.sample(slots, 2)
                _set(doc, pa, copy.deepcopy(sb))
        if payloads is None or len(list(section_slots(doc))) != len(payloads):
            return self._finish_text(doc, data)
        return self._finish(doc, payloads, data)

    def _finish_text(self, doc: Any, original: bytes) -> bytes:
        """Write the document over the old header, keeping the old data bytes (layout likely broken)."""
        try:
            text = _dump(doc)
            if self._zlib:
                text = zlib.compress(text, 9)
        except (ValueError, RecursionError):
            return original
        magic, major, minor, _, hlen, _ = PREAMBLE.unpack_from(original, 0)
        n = align64(PREAMBLE.size + len(text)) - PREAMBLE.size
        body = original[PREAMBLE.size + hlen :]
        text += b" " * (n - len(text))
        out = PREAMBLE.pack(magic, major, minor, zlib.crc32(text), n, PREAMBLE.size + n + len(body)) + text + body
        return self._maybe_fix(out)

    def json_text(self, data: bytes, seed: str) -> bytes:
        """Raw text edits the JSON model cannot express: duplicate keys, bad escapes, numbers as 1e3
        (a zlib header is decompressed, edited and compressed again)."""
        if len(data) < PREAMBLE.size or PREAMBLE.unpack_from(data, 0)[4] > len(data) - PREAMBLE.size:
            return self.extend(data, seed)
        got = header_text(data)
        if got is None:
            return self.zlib_bytes(data, seed)
        text, compressed = got
        text = self._edit_text(text.rstrip(b" "))
        return self._maybe_fix(with_header_region(data, zlib.compress(text, 9) if compressed else text))

    def _edit_text(self, text: bytes) -> bytes:
        r = self.rng
        how = r.randrange(8)
        if how == 0 and b'"name":' in text:  # a duplicated key inside a tensor
            i = text.index(b'"name":')
            text = text[:i] + b'"name":"dup",' + text[i:]
        elif how == 1:
            text = text.replace(b'{"metadata":', b'{"metadata":{},"metadata":', 1)
        elif how == 2:  # a number in another JSON spelling
            import re

            nums = list(re.finditer(rb"(?<=[:\[,])\d+", text))
            if nums:
                m = r.choice(nums)
                alt = r.choice([m.group() + b".0", m.group() + b"e0", b"-" + m.group(), b"0" + m.group(),
                                m.group() + b"e400", b"1" * 5000, b"Infinity", b"NaN"])
                text = text[: m.start()] + alt + text[m.end() :]
        elif how == 3:
            text = text + r.choice([b"x", b"}", b"\x00", b"\xff", b" \n\t"])
        elif how == 4:
            text = r.choice([b"\xef\xbb\xbf", b" ", b"\n"]) + text
        elif how == 5 and b'"' in text:  # a bad escape or an invalid UTF-8 byte inside a string
            i = text.index(b'"', r.randrange(len(text)) if r.random() < 0.5 else 0)
            text = text[: i + 1] + r.choice([b"\\x", b"\\ud800", b"\xc3", b"\xed\xa0\x80", b"\\u0000"]) + text[i + 1 :]
        elif how == 6:
            cut = r.randrange(len(text) + 1)
            text = text[:cut]
        elif how == 7 and r.random() < 0.5:  # deep nesting or an escaped lone surrogate in a string
            if r.random() < 0.5 and text.startswith(b"{"):
                depth = r.choice([50, 1000, 100000])
                text = b'{"deep":' + b"[" * depth + b"]" * depth + b"," + text[1:]
            else:
                key = r.choice([b'"name":"', b'{"metadata":{"', b'"metadata":{"k":"'])
                if key in text:
                    j = text.index(key) + len(key)
                    text = text[:j] + r.choice([b"\\ud800", b"\\udfff", b"\\u0000", b"\\ud83d\\ude00"]) + text[j:]
        else:
            i = r.randrange(len(text) + 1)
            text = text[:i] + bytes([r.choice(b'{}[]:,"0123456789-.eE ')]) + text[i:]
        return text

    def table(self, data: bytes, seed: str) -> bytes:
        """Replace a Huffman table: another valid code (wrong for the data) or an invalid one."""
        d = self._doc(data)
        if d is None:
            return self.bit_flip(data, seed)
        doc, payloads = d
        r = self.rng
        streams = _rans_streams(doc)
        if streams and r.random() < 0.5:  # a rans frequency table (§6.4): another valid one, or a broken one
            _, stream = r.choice(streams)
            old = stream["frequencies"] if isinstance(stream.get("frequencies"), str) else "8000"
            x = r.random()
            if x < 0.5:
                stream["frequencies"] = random_frequencies(r, max(1, len(old) // 4))
            elif x < 0.75 and old:
                j = r.randrange(len(old))
                stream["frequencies"] = old[:j] + r.choice("0123456789abcdefgA ") + old[j + 1 :]
            else:
                stream["frequencies"] = r.choice(["", "800", "80000", "8001", "7fff", "0000", "FFFF", old + "0000",
                                                  old + "0", "8000" + "0000" * 65536, old.upper()])
            return self._finish(doc, payloads, data)
        tables = doc.get("tables") if isinstance(doc, dict) else None
        if not isinstance(tables, list):
            return self.json_structure(data, seed)
        if not tables or r.random() < 0.2:
            tables.append(random_table(r))
        i = r.randrange(len(tables))
        old = tables[i] if isinstance(tables[i], str) else "1"
        x = r.random()
        if x < 0.5:
            tables[i] = random_table(r)
        elif x < 0.7 and old:  # permute the lengths: still a valid code, different symbols
            digits = list(old)
            r.shuffle(digits)
            tables[i] = "".join(digits)
        elif x < 0.85 and old:
            j = r.randrange(len(old))
            tables[i] = old[:j] + r.choice("0123456789abcdefgA") + old[j + 1 :]
        else:
            tables[i] = r.choice(["", "0", "2", "11", "111", "12", "1" + "f" * 40000, "f" * 65537, "1" * 70000])
        return self._finish(doc, payloads, data)

    def consistent_sparse(self, data: bytes, seed: str) -> bytes:
        """Change entries, bits or index_bits and resize the streams to match, filled with hostile bits.

        The header then passes every size check, so the relative-index and codebook kernels are hit.
        """
        d = self._doc(data)
        if d is None:
            return self.bit_flip(data, seed)
        doc, payloads = d
        r = self.rng
        tensors = [t for t in doc.get("tensors", []) if isinstance(t, dict) and t.get("encoding") in ("sparse", "shared")]
        if not tensors:
            return self.payload(data, seed)
        t = r.choice(tensors)
        numel = 1
        for dim in t.get("shape", []):
            numel *= dim if isinstance(dim, int) else 1
        if not 0 <= numel <= 1 << 16:  # a shape grown by an earlier mutation: streams that size are no use
            return self.payload(data, seed)
        if t["encoding"] == "sparse":
            t["entries"] = r.choice([0, 1, numel, max(0, numel - 1), r.randint(0, max(0, numel)), t.get("entries", 0)])
            t["fillers"] = r.randint(0, t["entries"])
            if r.random() < 0.5:
                t["index_bits"] = r.randint(1, 16)
        count = t["entries"] if t["encoding"] == "sparse" else numel
        if "bits" in t and r.random() < 0.5:
            t["bits"] = r.randint(1, 16)
        fill = r.choice(["zero", "ones", "random", "max"])
        slots = list(section_slots(doc))
        itemsize = {"float64": 8, "int64": 8, "uint64": 8, "float32": 4, "int32": 4, "uint32": 4}.get(t.get("dtype"), 2)
        itemsize = 1 if t.get("dtype") in ("int8", "uint8", "bool") else itemsize
        for k, (path, sec) in enumerate(slots):
            if get_path(doc, path[:2]) is not t:
                continue
            key = path[2]
            stream = t[key] if len(path) == 4 else None
            if key == "values":
                payloads[k] = self._fill(count * itemsize, fill)
            elif stream is not None:
                width = t["index_bits"] if key == "gaps" else t.get("bits", 8)
                if stream.get("coding") == "huffman":
                    bs = stream.get("block_size") if isinstance(stream.get("block_size"), int) and stream.get("block_size", 0) > 0 else 64
                    nblocks = -(-count // bs)
                    sizes = [max(1, -(-min(bs, count - b * bs) * r.randint(1, 15) // 8)) for b in range(nblocks)]
                    stream["block_bytes"] = sizes
                    payloads[k] = self._fill(sum(sizes), fill)
                else:
                    payloads[k] = self._fill(-(-count * width // 8), fill)
        return serialize(doc, payloads, keep_lengths=False)

    def consistent_fields(self, data: bytes, seed: str) -> bytes:
        """Give a fields tensor another split and chunk size, its streams sized to match and filled with
        hostile bits (fixed width or Huffman with an existing table), so the header passes and the
        decoders' kernels (§5.4, §6) get the bits."""
        d = self._doc(data)
        if d is None:
            return self.bit_flip(data, seed)
        doc, payloads = d
        r = self.rng
        tensors = [t for t in doc.get("tensors", []) if isinstance(t, dict) and t.get("encoding") == "fields"
                   and isinstance(t.get("shape"), list) and all(isinstance(x, int) for x in t["shape"])]
        if not tensors:
            return self.payload(data, seed)
        t = r.choice(tensors)
        numel = 1
        for dim in t["shape"]:
            numel *= dim
        itembits = 8 * {"float64": 8, "int64": 8, "uint64": 8, "float32": 4, "int32": 4, "uint32": 4,
                        "float16": 2, "bfloat16": 2, "int16": 2, "uint16": 2}.get(t.get("dtype"), 1)
        if not 0 <= numel <= 1 << 16:
            return self.payload(data, seed)
        if r.random() < 0.6:
            widths, left = [], itembits
            while left:
                widths.append(r.randint(1, min(16, left)))
                left -= widths[-1]
            t["fields"] = widths
        widths = [w for w in t["fields"] if isinstance(w, int) and 1 <= w <= 16] or [8]
        if r.random() < 0.6:
            t["chunk_size"] = r.choice([1, 2, 7, 64, max(1, numel), max(1, numel // 2), 1 << 40])
        size = t["chunk_size"] if isinstance(t.get("chunk_size"), int) and t["chunk_size"] > 0 else 1
        tables = doc.get("tables") if isinstance(doc.get("tables"), list) else []
        fill = r.choice(["zero", "ones", "random", "max"])
        others = [(path, p) for (path, _), p in zip(section_slots(doc), payloads) if get_path(doc, path[:2]) is not t]
        chunks, mine = [], []
        for c in range(min(-(-numel // size), 64)):
            count = min(size, numel - c * size)
            streams = []
            for w in widths:
                usable = [i for i, text in enumerate(tables) if isinstance(text, str) and len(text) <= 1 << w]
                if usable and r.random() < 0.5:
                    sizes = [max(1, -(-count * r.randint(1, 15) // 8))]
                    streams.append({"coding": "huffman", "section": {}, "table": r.choice(usable),
                                    "block_size": max(1, count), "block_bytes": sizes})
                    mine.append(self._fill(sizes[0], fill))
                else:
                    streams.append({"coding": "fixed", "section": {}})
                    mine.append(self._fill(-(-count * w // 8), fill))
            chunks.append(streams)
        t["chunks"] = chunks
        new_payloads = []
        it_others = iter(others)
        for path, _ in section_slots(doc):
            new_payloads.append(mine.pop(0) if get_path(doc, path[:2]) is t else next(it_others)[1])
        return serialize(doc, new_payloads, keep_lengths=False)

    def consistent_row_scales(self, data: bytes, seed: str) -> bytes:
        """Give a shared tensor (new or other) row scales (§5.2, format 1.3): a scale width, m scale values
        (finite, NaN, inf, random bits), and a row_scales stream sized to match, filled with hostile bits
        (fixed width, or Huffman with an existing table), so the header passes and the decoders get them."""
        d = self._doc(data)
        if d is None:
            return self.bit_flip(data, seed)
        doc, payloads = d
        r = self.rng
        before = {path: p for (path, _), p in zip(section_slots(doc), payloads)}
        tensors = [t for t in doc.get("tensors", []) if isinstance(t, dict) and t.get("encoding") == "shared"
                   and isinstance(t.get("shape"), list) and all(type(x) is int for x in t["shape"])]
        if not tensors:
            return self.payload(data, seed)
        t = r.choice(tensors)
        shape = t["shape"]
        rows = 1 if len(shape) <= 1 else (0 if shape[0] == 0 else shape[0])
        if not 0 <= rows <= 1 << 16:
            return self.payload(data, seed)
        itemsize = {"float64": 8, "float32": 4}.get(t.get("dtype"), r.choice([2, 4, 8]))
        width = r.choice([1, 2, 3, 8, 16, r.randint(1, 16)])
        m = r.choice([1, 2, min(1 << width, 300), r.randint(1, min(1 << width, 64))])
        if r.random() < 0.05:
            m = (1 << width) + 1  # one past what the width can index
        code = "<d" if itemsize == 8 else "<f" if itemsize == 4 else "<e"
        values = []
        for _ in range(m):
            kind = r.random()
            if kind < 0.05:
                values.append(struct.pack(code, float("nan")))
            elif kind < 0.1:
                values.append(struct.pack(code, r.choice([float("inf"), float("-inf")])))
            elif kind < 0.2:
                values.append(bytes(r.getrandbits(8) for _ in range(itemsize)))
            else:
                values.append(struct.pack(code, r.choice([1.0, -2.0, 0.0, -0.0, 1e-3, 1e3, 0.5]) * r.random()))
        scales = b"".join(values)
        fill = r.choice(["zero", "ones", "random", "max"])
        tables = doc.get("tables") if isinstance(doc.get("tables"), list) else []
        usable = [i for i, text in enumerate(tables) if isinstance(text, str) and len(text) <= m]
        if usable and rows and r.random() < 0.4:
            size = max(1, -(-rows * r.randint(1, 15) // 8))
            stream = {"coding": "huffman", "section": {}, "table": r.choice(usable), "block_size": max(1, rows),
                      "block_bytes": [size]}
        else:
            size = -(-rows * width // 8)
            stream = {"coding": "fixed", "section": {}}
        t["scale_bits"], t["scales"], t["row_scales"] = width, {}, stream
        index = doc["tensors"].index(t)
        mine = {("tensors", index, "scales"): scales, ("tensors", index, "row_scales", "section"): self._fill(size, fill)}
        new_payloads = [mine.get(path, before.get(path, b"")) for path, _ in section_slots(doc)]
        return serialize(doc, new_payloads, keep_lengths=False)

    def rans_blocks(self, data: bytes, seed: str) -> bytes:
        """Damage a rans stream (§6.4) where only the decoding loop can tell: its table stays valid (or
        becomes another valid one), its block list stays consistent (one size per block, each at least 8
        and a multiple of 4, adding up to the section), while initial states go to the bounds of
        [2^31, 2^63), words are flipped, dropped or added, and blocks are re-cut. A file without a rans
        stream is swapped for a seed with one (most seeds have none)."""
        r = self.rng
        d = self._doc(data)
        if (d is None or not _rans_streams(d[0])) and self.rans_seeds:
            d = self._doc(self.seeds[r.choice(self.rans_seeds)])
        if d is None:
            return self.bit_flip(data, seed)
        doc, payloads = d
        slots = [path for path, _ in section_slots(doc)]
        streams = [(slots.index(path), stream) for path, stream in _rans_streams(doc)
                   if isinstance(stream.get("block_bytes"), list)
                   and all(type(b) is int and b >= 8 and b % 4 == 0 for b in stream["block_bytes"])]
        if not streams:
            return self.recode(data, seed)
        k, stream = r.choice(streams)
        sizes = list(stream["block_bytes"])
        p = payloads[k]
        if not sizes or sum(sizes) != len(p):
            return self.payload(data, seed)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        blocks = [bytearray(p[a : a + n]) for a, n in zip(starts, sizes)]
        b = r.randrange(len(blocks))
        block = blocks[b]
        words = (len(block) - 8) // 4
        how = r.randrange(6)
        if how == 0:  # the initial state at or past a bound
            x = int.from_bytes(block[:8], "little")
            x = r.choice([2**31 - 1, 2**31, 2**31 + 1, 2**48, 2**63 - 1, 2**63, 2**64 - 1, 0,
                          x ^ (1 << r.randrange(64)), x + r.choice([-1, 1]), r.randrange(2**31, 2**63)]) % 2**64
            block[:8] = x.to_bytes(8, "little")
        elif how == 1 and words:  # bits of a word flipped, or a word set to a boundary
            j = 8 + 4 * r.randrange(words)
            if r.random() < 0.5:
                block[j + r.randrange(4)] ^= 1 << r.randrange(8)
            else:
                block[j : j + 4] = r.choice([0, 1, 2**31, 2**32 - 1, r.getrandbits(32)]).to_bytes(4, "little")
        elif how == 2 and words:  # a word dropped: the block runs out, or ends elsewhere
            j = 8 + 4 * r.randrange(words)
            del block[j : j + 4]
        elif how == 3:  # a word added
            j = 8 + 4 * r.randrange(words + 1)
            block[j:j] = r.getrandbits(32).to_bytes(4, "little") if r.random() < 0.5 else bytes(4)
        elif how == 4 and len(blocks) > 1:  # re-cut two neighbours (same bytes, other boundary)
            c = b + 1 if b + 1 < len(blocks) else b - 1
            first, second = sorted((b, c))
            joined = blocks[first] + blocks[second]
            cut = 8 + 4 * r.randrange((len(joined) - 16) // 4 + 1)
            blocks[first], blocks[second] = joined[:cut], joined[cut:]
        else:  # another valid table (no longer than this one, so it fits the alphabet): wrong for the data
            old = stream.get("frequencies")
            n = len(old) // 4 if isinstance(old, str) and len(old) % 4 == 0 and old else 1
            stream["frequencies"] = random_frequencies(r, r.randint(1, n))
        stream["block_bytes"] = [len(x) for x in blocks]
        payloads[k] = b"".join(bytes(x) for x in blocks)
        return serialize(doc, payloads, keep_lengths=False)

    def _fill(self, n: int, how: str) -> bytes:
        n = min(n, 1 << 20)
        if how == "zero":
            return b"\0" * n
        if how == "ones":
            return b"\xff" * n
        if how == "max":
            return bytes([0xFF if i % 2 else 0xFE for i in range(n)])
        return bytes(self.rng.getrandbits(8) for _ in range(n))

    def reshape(self, data: bytes, seed: str) -> bytes:
        """Give a tensor another shape (same element count or not), rank, or flip csr/csc."""
        d = self._doc(data)
        if d is None:
            return self.bit_flip(data, seed)
        doc, payloads = d
        r = self.rng
        tensors = [t for t in doc.get("tensors", []) if isinstance(t, dict) and isinstance(t.get("shape"), list)]
        if not tensors:
            return self.json_structure(data, seed)
        t = r.choice(tensors)
        shape = [x for x in t["shape"] if isinstance(x, int)]
        numel = 1
        for x in shape:
            numel *= x
        how = r.randrange(6)
        if how == 0:
            t["shape"] = list(reversed(shape))
        elif how == 1 and numel > 0:
            t["shape"] = [numel]
        elif how == 2:
            t["shape"] = [1] * r.choice([0, 1, 31, 32, 33, 64, 65, 200]) + shape
        elif how == 3:
            t["shape"] = [r.choice([0, 1, 2**31, 2**40, 2**62, 2**63, 2**64, 10**30]), 0] + shape[:1]
        elif how == 4:
            t["shape"] = [numel, 1] if r.random() < 0.5 else [1, numel]
        if "layout" in t and (how == 5 or r.random() < 0.3):
            t["layout"] = "csc" if t["layout"] == "csr" else "csr"
        return self._finish(doc, payloads, data)

    def recode(self, data: bytes, seed: str) -> bytes:
        """Turn a fixed stream into a Huffman one or back, with plausible but wrong fields."""
        d = self._doc(data)
        if d is None:
            return self.bit_flip(data, seed)
        doc, payloads = d
        r = self.rng
        streams = [(p[:-1], get_path(doc, p[:-1])) for p, _ in section_slots(doc) if len(p) == 4]
        if not streams:
            return self.payload(data, seed)
        path, s = r.choice(streams)
        if s.get("coding") == "fixed" and r.random() < 0.3:  # rans (§6.4): a valid table, plausible blocks
            length = s["section"].get("length", 0) if isinstance(s.get("section"), dict) else 0
            length = length if isinstance(length, int) and length >= 0 else 0
            s.update(coding="rans", frequencies=random_frequencies(r, r.choice([1, 2, 3, 4])),
                     block_size=r.choice([1, 7, 64, 65536, 2**63 - 1]), block_bytes=[max(8, length // 4 * 4)])
        elif s.get("coding") == "fixed":
            tables = doc.setdefault("tables", [])
            if not tables or r.random() < 0.5:
                tables.append(random_table(r))
            s.update(coding="huffman", table=r.randrange(len(tables)), block_size=r.choice([1, 7, 64, 65536, 2**63 - 1]),
                     block_bytes=[s["section"].get("length", 0)])
        else:
            s["coding"] = "fixed"
            for k in ("table", "frequencies", "block_size", "block_bytes"):
                if r.random() < 0.9:
                    s.pop(k, None)
        return self._finish(doc, payloads, data)

    def swap_sections(self, data: bytes, seed: str) -> bytes:
        """Swap two sections' bytes, or two tensors, or two section objects (offsets overlap/misorder)."""
        d = self._doc(data)
        if d is None or len(d[1]) < 2:
            return self.payload(data, seed)
        doc, payloads = d
        r = self.rng
        i, j = r.sample(range(len(payloads)), 2)
        how = r.randrange(3)
        if how == 0:
            payloads[i], payloads[j] = payloads[j], payloads[i]
            return serialize(doc, payloads, keep_lengths=r.random() < 0.5)
        if how == 1 and len(doc["tensors"]) >= 2:
            a, b = r.sample(range(len(doc["tensors"])), 2)
            doc["tensors"][a], doc["tensors"][b] = doc["tensors"][b], doc["tensors"][a]
            return self._maybe_fix(self._finish_text(doc, data))
        slots = list(section_slots(doc))
        (pa, sa), (pb, sb) = slots[i], slots[j]
        _set(doc, pa, dict(sb))
        _set(doc, pb, dict(sa))
        return self._finish_text(doc, data)

    # -- byte-level mutations ---------------------------------------------------------------------

    def bit_flip(self, data: bytes, seed: str) -> bytes:
        if not data:
            return data
        r = self.rng
        out = bytearray(data)
        # flips in the header are more interesting than flips deep in a long payload
        for _ in range(r.choice([1, 1, 2, 3, 8])):
            hi = min(len(out), 32 + 2048) if r.random() < 0.6 else len(out)
            j = r.randrange(hi)
            out[j] ^= 1 << r.randrange(8)
        return self._maybe_fix(bytes(out))

    def byte_set(self, data: bytes, seed: str) -> bytes:
        if not data:
            return data
        r = self.rng
        out = bytearray(data)
        for _ in range(r.randint(1, 6)):
            j = r.randrange(len(out))
            out[j] = r.choice(INTERESTING_BYTES) if r.random() < 0.7 else r.getrandbits(8)
        return self._maybe_fix(bytes(out))

    def preamble(self, data: bytes, seed: str) -> bytes:
        """Set a preamble field (version, header CRC, header length, file length) to a boundary value."""
        if len(data) < PREAMBLE.size:
            return data
        r = self.rng
        fields = list(PREAMBLE.unpack_from(data, 0))
        i = r.randrange(1, 6)
        widths = {1: 16, 2: 16, 3: 32, 4: 64, 5: 64}
        candidates = [v for v in INTERESTING_INTS if 0 <= v < 1 << widths[i]]
        if i == 4:
            candidates += [fields[4] + d for d in (-64, -1, 1, 32, 64) if fields[4] + d >= 0]
        if i == 5:
            candidates += [len(data) + d for d in (-1, 1, 64) if len(data) + d >= 0]
        fields[i] = r.choice(candidates)
        out = PREAMBLE.pack(*fields) + data[PREAMBLE.size :]
        if i == 4 and r.random() < 0.5:  # keep the header CRC in step with the new length
            text = out[PREAMBLE.size : PREAMBLE.size + fields[4]]
            fields[3] = zlib.crc32(text)
            out = PREAMBLE.pack(*fields) + data[PREAMBLE.size :]
        return out

    def truncate(self, data: bytes, seed: str) -> bytes:
        r = self.rng
        cut = r.choice([r.randrange(len(data) + 1), len(data) - 1, len(data) - 64, 32, 31, 8, 0])
        out = data[: max(0, cut)]
        return fix_checksums(out) if r.random() < 0.5 else out

    def extend(self, data: bytes, seed: str) -> bytes:
        r = self.rng
        n = r.choice([1, 7, 63, 64, 65, 128, 1000])
        tail = bytes(n) if r.random() < 0.5 else bytes(r.getrandbits(8) for _ in range(n))
        return self._maybe_fix(data + tail)

    def splice(self, data: bytes, seed: str) -> bytes:
        """Glue the start of this file to the end of another, or graft another file's section bytes."""
        r = self.rng
        other = self.seeds[r.choice(self.names)]
        if r.random() < 0.5:
            a = r.randrange(len(data) + 1)
            b = r.randrange(len(other) + 1)
            return self._maybe_fix(data[:a] + other[b:])
        d, e = self._doc(data), self._doc(other)
        if d is None or e is None or not d[1] or not e[1]:
            return self._maybe_fix(data[: len(data) // 2] + other[len(other) // 2 :])
        doc, payloads = d
        payloads[r.randrange(len(payloads))] = r.choice(e[1])
        return serialize(doc, payloads, keep_lengths=r.random() < 0.5)


    # -- compressed headers (§2.2) -----------------------------------------------------------------

    def zlib_json(self, data: bytes, seed: str) -> bytes:
        """Edit the header's JSON (decompressed if need be: as text or as a document), then store it as a
        zlib stream at some level, in a version 1.1 file (sometimes 1.0: a reader must refuse that)."""
        r = self.rng
        if len(data) < PREAMBLE.size:
            return self.extend(data, seed)
        got = header_text(data)
        if got is None:
            return self.zlib_bytes(data, seed)
        how = r.randrange(5)
        if how == 0:  # a document-level mutation, laid out afresh with a compressed header
            d = self._doc(data)
            if d is None:
                return self.zlib_bytes(data, seed)
            kind = r.choice(["json_number", "json_string", "json_structure", "table", "reshape", "recode"])
            mutated = self._apply(kind, serialize(d[0], d[1], compress=True), seed)
            return mutated
        text = _shrunk(got[0])
        if how == 1:
            text = self._edit_text(text)
        elif how == 2:  # valid JSON whitespace around the object, sometimes megabytes of it
            size = r.choice([1, 100, 70_000, 1 << 20, 5 << 20])
            text = r.choice([b" ", b"\n", b"\r\n", b"\t"]) * size + text + b" " * r.choice([0, 1, 1000])
        elif how == 3:  # the stored text is itself a zlib stream (never decompressed twice)
            text = zlib.compress(text, 9)
        level = r.choice([0, 1, 6, 9, 9, 9]) if len(text) < 1 << 16 else 9  # stored blocks only for small texts
        minor = 1 if r.random() < 0.9 else r.choice([0, 2, 65535])
        return with_header_region(data, zlib.compress(text, level), minor=minor)

    def zlib_bytes(self, data: bytes, seed: str) -> bytes:
        """Damage the header's zlib stream (bits, truncation, checksum, flags, what follows it), or make
        it a small decompression bomb; the header CRC is repaired so the stream is what gets checked."""
        r = self.rng
        if len(data) < PREAMBLE.size:
            return self.extend(data, seed)
        got = header_text(data)
        text = _shrunk(got[0]) if got is not None else data[PREAMBLE.size : PREAMBLE.size + 256]
        z = bytearray(zlib.compress(text, r.choice([1, 9])))
        how = r.randrange(11)
        if how == 0:  # bit flips in the deflate data or the checksum
            for _ in range(r.randint(1, 3)):
                j = r.randrange(2, len(z))
                z[j] ^= 1 << r.randrange(8)
        elif how == 1:  # cut short
            z = z[: r.randrange(len(z))]
        elif how == 2:  # not only spaces after the stream
            z += bytes([r.choice([0x00, 0x7B, 0x78, 0x0A, 0x09, 0xFF])]) + b" " * r.randrange(3)
        elif how == 3:  # a wrong Adler-32
            z[-1 - r.randrange(4)] ^= 1 << r.randrange(8)
        elif how == 4:  # FDICT set (FCHECK kept right): a preset dictionary the header cannot name
            flg = (z[1] | 0x20) & 0xE0
            z[1] = flg | (31 - (z[0] * 256 + flg) % 31) % 31
        elif how == 5:  # another first byte: a smaller window, gzip, raw deflate, a BOM
            z[0:1] = r.choice([b"\x58", b"\x68", b"\x08", b"\x1f\x8b", b"\xef\xbb\xbf", b"\x79"])
        elif how == 6:  # two streams back to back
            z += zlib.compress(b" ", 9)
        elif how == 7:  # a bomb: whitespace before the object (valid below the header limit, refused above)
            size = r.choice([1 << 20, 8 << 20, 32 << 20]) if r.random() < 0.9 else 100_000_001
            inflater = zlib.compressobj(9)
            z = bytearray(inflater.compress(b" " * size) + inflater.compress(text) + inflater.flush())
        elif how == 8:  # stored blocks, and a stream split into several deflate blocks
            inflater = zlib.compressobj(r.choice([0, 9]) if len(text) < 1 << 16 else 9)
            z = bytearray(b"".join(inflater.compress(text[i : i + 7]) + inflater.flush(zlib.Z_FULL_FLUSH)
                                   for i in range(0, len(text), 7)) + inflater.flush())
        elif how == 9:  # a valid stream whose JSON is cut short: a HeaderError after decompression
            z = bytearray(zlib.compress(text[: r.randrange(len(text) + 1)], 9))
        else:  # bytes spliced from another seed's header
            other = self.seeds[r.choice(self.names)]
            j = r.randrange(2, max(3, len(z)))
            z = z[:j] + other[PREAMBLE.size : PREAMBLE.size + r.randint(1, 64)] + z[j:]
        minor = 1 if r.random() < 0.95 else 0
        return with_header_region(data, bytes(z), minor=minor)


def _shrunk(text: bytes) -> bytes:
    """A header text without its trailing padding, and without the megabytes of whitespace an earlier
    bomb mutation may have put around it (so that stacked mutations stay small)."""
    text = text.rstrip(b" ")
    return text.strip(b" \t\r\n") if len(text) > 1 << 16 else text


# =============================================================================================
# The target: everything a user can do with a file, with cross-checks


class OracleError(AssertionError):
    """Two ways of reading the same file disagree (a bug even though nothing crashed)."""


def exercise(data: bytes, path: str, limits: Any = None) -> dict[str, Any]:
    """Read `data` (also written at `path`) every way the API allows; return a summary.

    Raises only for bugs: a non-DCFError exception, or an OracleError when two readings disagree.
    A DCFError from the reader is an acceptable outcome and is returned as {"error": class name}.
    """
    import numpy as np

    import dcformat
    from dcformat.cli import format_report, layout_report, verify_file
    from dcformat.container import read_header

    if limits is None:
        limits = dcformat.Limits(min_decoded_bytes=FUZZ_LIMIT_BYTES)
    with open(path, "wb") as f:
        f.write(data)
    result: dict[str, Any] = {"error": None, "decoded": 0}

    def attempt(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
        try:
            return fn(), None
        except dcformat.DCFError as e:
            return None, e

    header, err_file = attempt(lambda: read_header(path, limits))
    reader, err_buf = attempt(lambda: dcformat.open(data, limits=limits))
    if type(err_file) is not type(err_buf):
        raise OracleError(f"read_header says {err_file!r}, open(bytes) says {err_buf!r}")
    if reader is None:
        result["error"] = type(err_buf).__name__
        # verify_file reads with the default limits: a file refused only by the fuzzer's lower limit
        # may be fine there (and large to decode), so it is skipped for LimitError
        if not isinstance(err_buf, dcformat.LimitError) and verify_file(path)["ok"]:
            raise OracleError("verify says OK for a file open() rejects")
        _compare_with_reference(data, None, err_buf)
        return result
    report = layout_report(header)  # what `dcformat inspect` prints must be printable
    format_report(report).encode("utf-8")
    json.dumps(report, ensure_ascii=False).encode("utf-8")
    decoded: dict[str, Any] = {}
    first_error: BaseException | None = None
    with reader as f:
        assert f.keys() == [t.name for t in header.tensors]
        for name in f.keys():
            info = f.layout(name)
            a, err = attempt(lambda: f.get_tensor(name))
            if err is not None:
                _check_names(err, name)
                first_error = first_error or err
                if info.encoding == "sparse":  # the other decoder must refuse the tensor too
                    sp, err2 = attempt(lambda: f.get_sparse(name))
                    if err2 is None:
                        raise OracleError(f"{name}: get_tensor raises {err!r}, get_sparse succeeds")
                    _check_names(err2, name)
                continue
            if a.shape != tuple(info.shape) or a.dtype != _np_dtype(info.dtype):
                raise OracleError(f"{name}: decoded {a.dtype}{a.shape}, header says {info.dtype}{list(info.shape)}")
            decoded[name] = a
            if info.encoding == "sparse":
                sp, err = attempt(lambda: f.get_sparse(name))
                if err is not None:
                    _check_names(err, name)
                    raise OracleError(f"{name}: get_tensor works, get_sparse raises {err!r}")
                if not np.array_equal(_bits(sp.todense()), _bits(a)):
                    raise OracleError(f"{name}: get_sparse().todense() differs from get_tensor()")
            elif info.encoding == "raw":
                view = f.get_tensor(name, copy=False)
                if not np.array_equal(_bits(view), _bits(a)):
                    raise OracleError(f"{name}: copy=False differs from copy=True")
                del view
    result["decoded"] = len(decoded)
    if first_error is not None:
        result["error"] = type(first_error).__name__
    loaded, err = attempt(lambda: dcformat.load(data, limits=limits))
    if (err is None) != (first_error is None) or (err is not None and type(err) is not type(first_error)):
        raise OracleError(f"load() says {err!r}, get_tensor says {first_error!r}")
    # the reference decodes a symbol at a time: bounded by the output bytes and, since a rans stream of
    # row scales can hold R symbols in 8 bytes for a [R, 0] tensor of no elements (§7), by the rows too
    rows = sum(t.shape[0] if len(t.shape) >= 2 else 1 for t in header.tensors)
    if sum(t.nbytes for t in header.tensors) + rows <= REFERENCE_MAX_BYTES:
        _compare_with_reference(data, loaded, err)
    with dcformat.open(path, limits=limits) as f:  # the memory-mapped path gives the same answers
        for name, a in decoded.items():
            if not np.array_equal(_bits(f.get_tensor(name)), _bits(a)):
                raise OracleError(f"{name}: mmap reader differs from bytes reader")
    # The file passed open() under limits at most the defaults, so verify (default limits) reads it too.
    verdict = verify_file(path)
    if first_error is not None and verdict["ok"]:
        raise OracleError(f"verify says OK, get_tensor raised {first_error!r}")
    if first_error is None and any("fillers" not in p["message"] for p in verdict["problems"]):
        raise OracleError(f"verify reports problems in a file every tensor of which decodes: {verdict['problems']}")
    return result


def selftest_target(data: bytes, path: str) -> dict[str, Any]:
    """A stand-in for `exercise` that misbehaves on command, to test that the harness notices."""
    import dcformat

    if data == b"segfault":
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
    if data == b"abort":
        os.abort()
    if data == b"hang":
        time.sleep(3600)
    if data.startswith(b"hang-once:"):  # slow the first time only (as on a loaded machine)
        marker = data[len(b"hang-once:") :].decode()
        if not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(3600)
    if data == b"index":
        return [][1]
    if data == b"memory":
        block = bytearray(400 << 20)  # zeroed, so touched: it counts in the peak RSS
        return {"error": None, "size": len(block)}
    if data == b"dcf":
        raise dcformat.HeaderError("a named error is an acceptable outcome")
    if data == b"dcf-result":
        return {"error": "HeaderError"}
    return {"error": None}


def _compare_with_reference(data: bytes, loaded: dict | None, error: BaseException | None) -> None:
    """Differential check against tests/reference_decoder.py, written from the spec alone: both
    readers accept the file and decode the same bits, or both reject it. (Which error comes first may
    differ when a file breaks several rules: the two check in different orders.)"""
    import dcformat

    ref = _reference_decoder()
    if ref is None:
        return
    try:
        theirs = ref.decode(data, ref.Limits(min_decoded_bytes=FUZZ_LIMIT_BYTES))
    except dcformat.DCFError as e:
        if loaded is not None:
            raise OracleError(f"dcformat decodes the file, the reference decoder raises {e!r}") from None
        return
    except Exception as e:  # noqa: BLE001 - a bug of the reference decoder is worth a report too
        raise OracleError(f"the reference decoder raised {type(e).__name__}: {e}") from e
    if loaded is None:
        raise OracleError(f"dcformat raises {error!r}, the reference decoder decodes the file")
    if list(theirs) != list(loaded):
        raise OracleError(f"tensor names differ: reference {list(theirs)}, dcformat {list(loaded)}")
    for name, a in loaded.items():
        b = theirs[name]
        if a.shape != b.shape or _bits(a).tobytes() != _bits(b).tobytes():
            raise OracleError(f"{name}: dcformat and the reference decoder decode different values")


def _reference_decoder():
    """tests/reference_decoder.py, however this module was imported; None if it is not there."""
    try:
        from . import reference_decoder  # as tests.fuzz (pytest)
    except ImportError:
        try:
            import reference_decoder  # as a script or the worker: tests/ is on sys.path
        except ImportError:
            return None
    return reference_decoder


def _check_names(err: BaseException, name: str) -> None:
    """A decoding error names its tensor, and data errors their byte offset (errors.py contract)."""
    if getattr(err, "tensor", None) != name:
        raise OracleError(f"{type(err).__name__} while decoding {name!r} names tensor {err.tensor!r}: {err}")
    if type(err).__name__ in ("ChecksumError", "CorruptDataError") and getattr(err, "offset", None) is None:
        raise OracleError(f"{type(err).__name__} while decoding {name!r} has no byte offset: {err}")


def _np_dtype(name: str):
    from dcformat.codec import numpy_dtype

    return numpy_dtype(name)


def _bits(a):
    import numpy as np

    a = np.ascontiguousarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}")) if a.size else a.reshape(-1).view(np.uint8)


# =============================================================================================
# The worker process: a loop over length-prefixed inputs on stdin, one JSON line per result


def _peak_rss() -> int:
    """This process's peak RSS in bytes since it was exec'd (VmHWM). ru_maxrss would do only on a cold
    start: Linux carries it over fork and exec, so a worker forked from a large parent (a pytest
    process that compiled many kernels) would start at the parent's size and hide a case's growth."""
    import resource

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status_bytes(key: str) -> int | None:
    """A "VmXXX:" line of /proc/self/status in bytes (None where there is no such file)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> int | None:
    """Reset this process's peak RSS to its current RSS (Linux: '5' to /proc/self/clear_refs) and
    return that RSS, so that the next peak is one case's own; None where the kernel cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _status_bytes("VmRSS:")


def worker_main(target: str, scratch: str) -> None:
    """Run cases from stdin until EOF. Each reply reports the outcome and the case's peak-RSS growth."""
    import importlib

    from dcformat.errors import DCFError

    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    path = os.path.join(scratch, "case.dcf")  # the parent owns the folder and removes it
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # stdout carries the protocol; anything the library prints goes to stderr instead
    sys.stdout = sys.stderr
    try:
        while True:
            head = stdin.read(4)
            if len(head) < 4:
                break
            (n,) = struct.unpack("<I", head)
            data = stdin.read(n)
            # Each case's own peak: with the high-water mark reset, a case that needs as much as an
            # earlier one is still seen (a monotonic peak would hide it behind the earlier case).
            before = _reset_peak_rss()
            if before is None:
                before = _peak_rss()
            try:
                summary = fn(data, path)
                reply = {"status": "ok", **(summary or {})}
            except SystemExit:
                raise
            except DCFError as e:  # a named error is an acceptable outcome, wherever it is raised
                reply = {"status": "ok", "error": type(e).__name__}
            except BaseException as e:  # noqa: BLE001 - everything but a DCFError is a finding
                # (the target reports DCFErrors as results; OracleError may come from another module copy)
                reply = {"status": "bug", "type": type(e).__name__, "message": str(e)[:500], "where": _where(e),
                         "traceback": traceback.format_exc(limit=-12)}
            growth = _peak_rss() - before
            reply["rss_growth"] = growth
            stdout.write(json.dumps(reply).encode() + b"\n")
            stdout.flush()
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def _where(e: BaseException) -> str:
    """The innermost frame of the project's code where the exception passed: a stable signature."""
    tb = traceback.extract_tb(e.__traceback__)
    ours = [f for f in tb if "dcformat" in f.filename or f.filename.endswith("fuzz.py")]
    frame = (ours or tb or [None])[-1]
    if frame is None:
        return "?"
    return f"{os.path.basename(frame.filename)}:{frame.lineno}:{frame.name}"


# =============================================================================================
# The parent: dispatch cases to workers, catch crashes and hangs, save what broke us


@dataclass
class Finding:
    """A case that broke the reader."""

    kind: str  # "exception", "oracle", "crash", "hang", "memory"
    signature: str
    message: str
    seed: str
    mutation: str
    data: bytes
    detail: str = ""


@dataclass
class Stats:
    """What a run did: cases by mutation kind and outcome, and the findings (first of each signature)."""

    cases: int = 0
    seconds: float = 0.0
    by_kind: Counter = field(default_factory=Counter)
    by_outcome: Counter = field(default_factory=Counter)
    by_kind_outcome: dict[str, Counter] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)
    finding_counts: Counter = field(default_factory=Counter)
    worker_restarts: int = 0
    slow: int = 0  # cases that timed out once, then finished when run again
    max_rss_growth: int = 0  # the largest peak-RSS growth of one case, in bytes
    max_rss_case: str = ""  # which case that was (seed, mutation, outcome)
    on_result: Callable[[tuple[str, str, bytes], str], None] | None = field(default=None, repr=False)

    def record(self, case: tuple[str, str, bytes], outcome: str) -> None:
        if self.on_result is not None:
            self.on_result(case, outcome)
        mutation = case[1]
        self.cases += 1
        base = mutation.split("+")[0]
        self.by_kind[base] += 1
        self.by_outcome[outcome] += 1
        self.by_kind_outcome.setdefault(base, Counter())[outcome] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases, "seconds": round(self.seconds, 1), "worker_restarts": self.worker_restarts,
            "slow_then_fine": self.slow, "max_rss_growth_mib": round(self.max_rss_growth / 2**20, 1),
            "max_rss_case": self.max_rss_case,
            "by_kind": dict(sorted(self.by_kind.items())), "by_outcome": dict(self.by_outcome.most_common()),
            "by_kind_outcome": {k: dict(v.most_common()) for k, v in sorted(self.by_kind_outcome.items())},
            "findings": [
                {"kind": f.kind, "signature": s, "count": self.finding_counts[s], "message": f.message[:300],
                 "seed": f.seed, "mutation": f.mutation}
                for s, f in self.findings.items()
            ],
        }


class Worker:
    """One persistent child process running `worker_main`."""

    def __init__(self, target: str, memory_limit: int | None):
        env = dict(os.environ)
        env.setdefault("NUMBA_NUM_THREADS", "1")
        self.scratch = tempfile.mkdtemp(prefix="dcf-fuzz-")  # here, so that it goes even if the worker is killed
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--target", target, "--scratch", self.scratch],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            preexec_fn=(lambda: _limit_memory(memory_limit)) if memory_limit else None,
        )
        self.pending: tuple[str, str, bytes] | None = None
        self.retrying = False  # the pending case timed out once already, in another worker
        self.todo: list[tuple[tuple[str, str, bytes], bool]] = []  # (case, retry) to run before new cases
        self.started = 0.0
        self.buffer = b""

    def send(self, case: tuple[str, str, bytes], retry: bool = False) -> None:
        self.pending, self.retrying = case, retry
        self.started = time.monotonic()
        data = case[2]
        self.proc.stdin.write(struct.pack("<I", len(data)) + data)
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    def stop(self) -> None:
        """Wait for the process (after EOF on its stdin, or a kill) and remove its scratch folder."""
        for s in (self.proc.stdin, self.proc.stdout):
            try:
                s.close()
            except OSError:
                pass
        self.proc.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _limit_memory(limit: int) -> None:
    """In the child, before exec: cap the address space so a runaway allocation fails, not the machine."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run(
    cases: int,
    seed: int = 0,
    workers: int = 2,
    timeout: float = 10.0,
    out_dir: str | None = None,
    target: str = "fuzz:exercise",
    inputs: Iterator[tuple[str, str, bytes]] | None = None,
    memory_limit: int | None = 4 << 30,
    progress: Callable[[Stats], None] | None = None,
    warmup: bool = True,
    on_result: Callable[[tuple[str, str, bytes], str], None] | None = None,
    rss_limit: int = RSS_GROWTH_LIMIT,
) -> Stats:
    """Fuzz `cases` cases (or run the given `inputs`) on `workers` processes; return the statistics.

    Each finding's input is written to out_dir (when given) as <kind>-<signature-hash>.dcf with a .json
    note. on_result(case, outcome) is called for every case: "ok", an error class name, "bug:<type>",
    "crash:<signal>" or "hang".
    """
    if inputs is None:
        mutator = Mutator(seed_files(), random.Random(seed))
        inputs = (mutator.case() for _ in range(cases))
        warm = [(name, "seed", data) for name, data in mutator.seeds.items()] if warmup else []
    else:
        warm = [(name, "seed", data) for name, data in seed_files().items()] if warmup else []
    stats = Stats()
    if on_result is not None:
        stats.on_result = on_result
    start = time.monotonic()
    sel = selectors.DefaultSelector()
    pool: list[Worker] = []
    exhausted = False

    def spawn() -> Worker:
        # Every new worker first decodes the seeds, unscored and without the timeout: numba loads (or
        # compiles) its kernels before the clock runs, and a seed that fails means the harness or the
        # reader is broken, not that a mutation found a bug.
        w = Worker(target, memory_limit)
        w.todo = [(case, False) for case in warm]
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        pool.append(w)
        return w

    def feed(w: Worker) -> None:
        nonlocal exhausted
        if w.todo:
            w.send(*w.todo.pop(0))
            return
        case = next(inputs, None) if not exhausted else None
        if case is None:
            exhausted = True
            return
        w.send(case)

    def replace(w: Worker) -> Worker:
        sel.unregister(w.proc.stdout)
        w.kill()
        pool.remove(w)
        stats.worker_restarts += 1
        return spawn()

    def find(kind: str, signature: str, message: str, case: tuple[str, str, bytes], detail: str = "") -> None:
        stats.finding_counts[signature] += 1
        known = stats.findings.get(signature)
        if known is None or len(case[2]) < len(known.data):  # keep the smallest input of each kind
            stats.findings[signature] = Finding(kind, signature, message, case[0], case[1], case[2], detail)
            if out_dir:
                save_finding(out_dir, stats.findings[signature])

    for _ in range(max(1, workers)):
        feed(spawn())
    while any(w.pending for w in pool):
        events = sel.select(timeout=0.5)
        for key, _ in events:
            w: Worker = key.data
            chunk = os.read(w.proc.stdout.fileno(), 1 << 16)
            if not chunk:  # the worker died: a segfault, an abort, or the OS killed it
                case = w.pending
                code = w.proc.wait()
                if case is not None and case[1] == "seed":
                    raise RuntimeError(f"a valid seed file {case[0]!r} crashed the worker ({_signal_name(code)})")
                if case is not None:
                    name = _signal_name(code)
                    stats.record(case, f"crash:{name}")
                    find("crash", f"crash:{name}", f"worker died with {name} (exit status {code})", case)
                w.pending = None
                feed(replace(w))
                continue
            w.buffer += chunk
            while b"\n" in w.buffer and w.pending is not None:
                line, w.buffer = w.buffer.split(b"\n", 1)
                reply = json.loads(line)
                case, w.pending = w.pending, None
                if case[1] == "seed":
                    if reply["status"] != "ok" or reply.get("error"):
                        raise RuntimeError(f"a valid seed file {case[0]!r} fails: {reply}")
                else:
                    stats.slow += w.retrying
                    _score(stats, reply, case, find, rss_limit)
                feed(w)
        now = time.monotonic()
        for w in list(pool):
            if w.pending is None:
                continue
            case = w.pending
            if case[1] == "seed" and now - w.started > SEED_TIMEOUT:
                raise RuntimeError(f"a valid seed file {case[0]!r} took more than {SEED_TIMEOUT} s")
            if case[1] != "seed" and now - w.started > timeout:
                # Once is not proof: a loaded machine or a kernel recompiled after a source change can
                # stall a worker. The case runs again in a fresh worker; a second timeout is a hang.
                retried = w.retrying
                w.pending = None
                fresh = replace(w)
                if retried:
                    stats.record(case, "hang")
                    find("hang", "hang", f"no answer after {timeout:.0f} s, twice", case)
                else:
                    fresh.todo.append((case, True))
                feed(fresh)
        if progress is not None:
            progress(stats)
    for w in pool:
        sel.unregister(w.proc.stdout)
        w.stop()
    stats.seconds = time.monotonic() - start
    return stats


def _score(stats: Stats, reply: dict, case: tuple[str, str, bytes], find: Callable, rss_limit: int) -> None:
    if reply["status"] == "ok":
        outcome = reply.get("error") or "ok"
        stats.record(case, outcome)
        if reply.get("rss_growth", 0) > stats.max_rss_growth:
            stats.max_rss_growth, stats.max_rss_case = reply["rss_growth"], f"{case[0]} {case[1]} -> {outcome}"
        if reply.get("rss_growth", 0) > rss_limit:
            find("memory", f"memory:{outcome}", f"peak RSS grew by {reply['rss_growth'] >> 20} MiB", case)
        return
    kind = "oracle" if reply["type"] == "OracleError" else "exception"
    stats.record(case, f"bug:{reply['type']}")
    find(kind, f"{reply['type']}@{reply['where']}", f"{reply['type']}: {reply['message']}", case, reply.get("traceback", ""))


def _signal_name(code: int) -> str:
    import signal

    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def save_finding(out_dir: str, f: Finding) -> str:
    """Write the finding's input and a note beside it; return the input's path."""
    os.makedirs(out_dir, exist_ok=True)
    stem = hashlib.sha256(f.signature.encode()).hexdigest()[:12]
    path = os.path.join(out_dir, f"{f.kind}-{stem}.dcf")
    with open(path, "wb") as fh:
        fh.write(f.data)
    with open(path[:-4] + ".json", "w") as fh:
        json.dump({"kind": f.kind, "signature": f.signature, "message": f.message, "seed": f.seed,
                   "mutation": f.mutation, "traceback": f.detail}, fh, indent=2)
    return path


# =============================================================================================
# Regressions: every input that ever broke us, with the outcome it must have now

REGRESSIONS = os.path.join(HERE, "regressions")
MANIFEST = os.path.join(REGRESSIONS, "manifest.json")


def load_manifest() -> list[dict[str, str]]:
    """The regression cases: file, expected outcome ("ok" or a DCFError class name), the bug it was."""
    with open(MANIFEST) as fh:
        return json.load(fh)["cases"]


def replay(cases: list[dict[str, str]] | None = None, workers: int = 2) -> tuple[dict[str, str], Stats]:
    """Run the regression inputs through `exercise` in workers: (file -> outcome, statistics)."""
    cases = load_manifest() if cases is None else cases
    inputs = []
    for c in cases:
        with open(os.path.join(REGRESSIONS, c["file"]), "rb") as fh:
            inputs.append((c["file"], "regression", fh.read()))
    outcomes: dict[str, str] = {}
    stats = run(0, workers=workers, inputs=iter(inputs), warmup=False,
                on_result=lambda case, outcome: outcomes.__setitem__(case[0], outcome))
    return outcomes, stats


def add_regression(source: str, name: str, bug: str) -> dict[str, str]:
    """Copy a finding into tests/regressions/ with the outcome it has now (which must not be a bug)."""
    with open(source, "rb") as fh:
        data = fh.read()
    file = name if name.endswith(".dcf") else name + ".dcf"
    entry = {"file": file, "expect": "", "bug": bug}
    outcomes: dict[str, str] = {}
    run(0, workers=1, inputs=iter([(file, "regression", data)]), warmup=False,
        on_result=lambda case, outcome: outcomes.__setitem__(case[0], outcome))
    outcome = outcomes[file]
    if ":" in outcome or outcome == "hang":
        raise SystemExit(f"{source} still breaks the reader ({outcome}): fix it before adding it")
    entry["expect"] = outcome
    with open(os.path.join(REGRESSIONS, file), "wb") as fh:
        fh.write(data)
    cases = [c for c in load_manifest() if c["file"] != file] + [entry]
    with open(MANIFEST, "w") as fh:
        json.dump({"cases": cases}, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    p.add_argument("--out", default="fuzz-findings", help="directory for the inputs that broke us")
    p.add_argument("--report", help="write the statistics as JSON here")
    p.add_argument("--add-regression", metavar="FILE", help="copy FILE into tests/regressions/ (with --name, --bug)")
    p.add_argument("--name", help="file name for --add-regression")
    p.add_argument("--bug", default="", help="what FILE used to break, for --add-regression")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--target", default="fuzz:exercise", help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        sys.path.insert(0, HERE)
        worker_main(args.target, args.scratch)
        return 0
    if args.add_regression:
        print(json.dumps(add_regression(args.add_regression, args.name or os.path.basename(args.add_regression), args.bug)))
        return 0
    last = [0.0]

    def show(s: Stats) -> None:
        if time.monotonic() - last[0] > 10:
            last[0] = time.monotonic()
            print(f"{s.cases} cases, {len(s.findings)} findings, {s.worker_restarts} restarts", file=sys.stderr, flush=True)

    stats = run(args.cases, args.seed, args.workers, args.timeout, args.out, args.target, progress=show)
    summary = stats.to_json()
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(summary, fh, indent=2)
    print(json.dumps(summary, indent=2))
    return 1 if stats.findings else 0


if __name__ == "__main__":
    sys.exit(main())
