"""Write dcformat's test vectors into spec/vectors, once: it never overwrites a vector.

    python spec/make_vectors.py            # write the vectors that are missing; refuse to change any
    python spec/make_vectors.py --check    # only compare what is on disk with what would be written

Valid vectors are `NN-name.dcf` with their expected tensors `NN-name.K.npy` (K = the tensor's place
in the file; bfloat16 is stored as its uint16 bit pattern). They are built with dcformat's own
writer (`codec.draft_explicit`, `codec.assemble`, `container.write_stream`) from the settings recorded
in `index.json`, so re-encoding the expected tensors with those settings reproduces them byte for
byte; a few ("reencode": false) are assembled by hand here to hold what a reader must accept but
dcformat never writes. Invalid vectors (`invalid/NN-name.dcf`) are valid files with exactly one
rule broken; `index.json` names the error kind (spec §8.1) a reader must raise.

Compressed headers (format 1.1, spec §2.2) are written with this script's own small deflate encoder
(`zlib_fixed`, `zlib_mixed`, `zlib_bomb`), not the zlib library, whose output differs between builds:
the vectors are the same bytes everywhere. For a writer-made vector with a compressed header,
`index.json` also records (`writer_header`) what dcformat's writer stored with the local zlib.

Arrays come from a fixed LCG, not numpy's generators, so the same script writes the same bytes on
any machine. Once written, vectors are frozen: a change to the format or the writer that would alter
one is a new vector (or a new format version), never a silent rewrite.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import ml_dtypes
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # run as a script: the checkout's dcformat and tests (the reference rANS encoder)
    sys.path.insert(0, ROOT)

from dcformat import codec, container  # noqa: E402
from tests.reference_decoder import frequencies_hex, rans_encode, rans_frequencies  # noqa: E402  # §6.4, not dcformat's

DEFAULT_OUT = os.path.join(HERE, "vectors")
BF16 = np.dtype(ml_dtypes.bfloat16)
SECTION_ORDER = ("data", "codebook", "scales", "row_scales", "gaps", "indices", "values")
STREAM_KEYS = ("row_scales", "gaps", "indices")  # the keys of SECTION_ORDER that hold a stream
DEFAULT_BLOCK = 1 << 16


# ------------------------------------------------------------------------------------------------
# Deterministic inputs


class Lcg:
    """Knuth's MMIX linear congruential generator: the same numbers on every machine, forever."""

    def __init__(self, seed: int):
        self.state = seed

    def below(self, n: int) -> int:
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return (self.state >> 33) % n

    def chance(self, numerator: int, denominator: int) -> bool:
        return self.below(denominator) < numerator


def np_dtype(name: str) -> np.dtype:
    if name in ("float8_e4m3fn", "float8_e5m2"):
        return np.dtype(getattr(ml_dtypes, name))
    return BF16 if name == "bfloat16" else np.dtype(name)


def from_bits(bits: list[int], dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """An array of `dtype` with these element bit patterns."""
    size = np_dtype(dtype).itemsize
    return np.array(bits, dtype=f"<u{size}").view(np_dtype(dtype)).reshape(shape)


def levels(k: int, dtype: str, *, zero_first: bool = False) -> np.ndarray:
    """k distinct, exactly representable values (multiples of 1/16); with zero_first, [0, ...] for sparse."""
    if zero_first:
        vals = [0.0] + [(i + 1) / 16 * (1 if i % 2 else -1) for i in range(k - 1)]
    else:
        vals = [(i - k // 2) / 16 + (1 / 32 if i >= k // 2 else 0) for i in range(k)]
    out = np.array(vals, dtype=np.float64)
    if dtype in ("int8", "int16", "int32", "int64"):
        out = out * 16
    return out.astype(np_dtype(dtype))


def pick(rng: Lcg, weights: list[int]) -> int:
    """An index drawn with the given integer weights."""
    r = rng.below(sum(weights))
    for i, w in enumerate(weights):
        if r < w:
            return i
        r -= w
    raise AssertionError


def coded(codebook: np.ndarray, indices: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """codebook[indices] in `shape`."""
    return codebook[np.array(indices, dtype=np.int64)].reshape(shape)


def uniform_indices(seed: int, n: int, k: int) -> list[int]:
    rng = Lcg(seed)
    return [rng.below(k) for _ in range(n)]


def sparse_indices(seed: int, n: int, k: int, keep: tuple[int, int], skew: bool = False) -> list[int]:
    """0 (zero) for most elements; kept ones (numerator/denominator) get 1..k-1, skewed towards 1."""
    rng = Lcg(seed)
    weights = [1 << max(0, 12 - i) for i in range(k - 1)] if skew else [1] * (k - 1)
    return [1 + pick(rng, weights) if rng.chance(*keep) else 0 for _ in range(n)]


def sparse_values(seed: int, shape: tuple[int, ...], keep: tuple[int, int], dtype: str = "float32") -> np.ndarray:
    """Mostly zeros; kept elements are small non-zero multiples of 1/8 (or integers)."""
    rng = Lcg(seed)
    n = int(np.prod(shape))
    vals = [((rng.below(15) + 1) * (1 if rng.chance(1, 2) else -1)) if rng.chance(*keep) else 0 for _ in range(n)]
    a = np.array(vals, dtype=np.float64)
    if np.dtype(np_dtype(dtype)).kind == "f":
        a = a / 8
    return a.astype(np_dtype(dtype)).reshape(shape)


# ------------------------------------------------------------------------------------------------
# Vector definitions


@dataclass
class T:
    """One tensor of a valid vector: its array and the exact form to store it in."""

    name: str
    array: np.ndarray
    encoding: str  # "raw", "shared" or "sparse"
    codebook: np.ndarray | None = None  # shared, sparse with codebook (element bit patterns must be unique)
    layout: str = "csr"
    index_bits: int = 5
    fields: tuple[int, ...] | None = None  # format 1.2, encoding "fields": the field widths ...
    chunk_size: int | None = None  # ... and elements per chunk
    scales: np.ndarray | None = None  # format 1.3, shared with row scales (§5.2): the m scales ...
    row_scales: list[int] | None = None  # ... one index into them per row ...
    indices: list[int] | None = None  # ... and the codebook index of each element (array = the decoded product)


@dataclass
class Valid:
    name: str
    description: str
    tensors: list[T]
    mode: str = "off"  # codec.assemble's Huffman mode
    block_size: int = DEFAULT_BLOCK
    metadata: dict[str, str] = field(default_factory=dict)
    expect: Callable[[dict, bytes], None] | None = None  # asserts the file exercises what it claims
    build: Callable[[], bytes] | None = None  # hand-assembled (not reproducible by the writer) ...
    expected: Callable[[], list[np.ndarray]] | None = None  # ... and the tensors it decodes to
    compact_header: bool = False  # format 1.1: the writer's compact_header (the header zlib-compressed)
    header_cost: int = 0  # codec.assemble's header_cost (0: as dcformat wrote the 1.0 vectors)
    coder: str = "huffman"  # format 1.4: "rans" offers rANS wherever smaller (Policy(coder="rans"), codec.assemble's
    # rans=True); recorded only then


def streams(doc: dict) -> list[dict]:
    return [t[k] for t in doc["tensors"] for k in STREAM_KEYS if k in t]


def expect_all(coding: str) -> Callable[[dict, bytes], None]:
    def check(doc: dict, data: bytes) -> None:
        assert all(s["coding"] == coding for s in streams(doc)), [s["coding"] for s in streams(doc)]

    return check


def spec_example() -> T:
    """The 4x4 matrix of spec §5.3's worked example."""
    cb = np.array([0.0, -2.0, 1.5], np.float32)
    idx = [0] * 16
    idx[6], idx[15] = 2, 1
    return T("w", coded(cb, idx, (4, 4)), "sparse", cb, "csr", 2)


def _expect_spec_example(doc: dict, data: bytes) -> None:
    t = doc["tensors"][0]
    assert (t["entries"], t["fillers"]) == (5, 3)
    gaps, idx = t["gaps"]["section"], t["indices"]["section"]
    assert data[gaps["offset"] : gaps["offset"] + 2] == b"\xfb\x00"
    assert data[idx["offset"] : idx["offset"] + 2] == b"\x08\x01"


def _raw_floats() -> list[T]:
    f64 = [0x7FF8000000000001, 0xFFF0000000000000, 0x8000000000000000, 0x0000000000000001,
           0x7FEFFFFFFFFFFFFF, 0x3FF0000000000000, 0x7FF0000000000001, 0x400921FB54442D18]
    f32 = [0x7FC00001, 0xFF800000, 0x80000000, 0x00000001, 0x7F7FFFFF, 0x3F800000, 0x7F800001, 0x40490FDB]
    f16 = [0x7E01, 0xFC00, 0x8000, 0x0001, 0x7BFF, 0x3C00, 0x7C01, 0x4248]
    bf16 = [0x7FC1, 0xFF80, 0x8000, 0x0001, 0x7F7F, 0x3F80, 0x7F81, 0x4049]
    return [
        T("f64", from_bits(f64, "float64", (2, 4)), "raw"),
        T("f32", from_bits(f32, "float32", (8,)), "raw"),
        T("f16", from_bits(f16, "float16", (2, 2, 2)), "raw"),
        T("bf16", from_bits(bf16, "bfloat16", (4, 2)), "raw"),
    ]


def _raw_ints() -> list[T]:
    return [
        T("i8", np.array([-128, 127, 0, -1, 1], np.int8), "raw"),
        T("i16", np.array([[-32768, 32767], [0, -1]], np.int16), "raw"),
        T("i32", np.array([-(2**31), 2**31 - 1, 0, -1, 123456789], np.int32), "raw"),
        T("i64", np.array([[-(2**63), 2**63 - 1], [0, -1]], np.int64), "raw"),
        T("u8", np.array([0, 255, 1, 128], np.uint8), "raw"),
        T("u16", np.array([0, 65535, 1, 0x8000], np.uint16), "raw"),
        T("u32", np.array([0, 2**32 - 1, 1, 2**31], np.uint32), "raw"),
        T("u64", np.array([0, 2**64 - 1, 1, 2**63], np.uint64), "raw"),
        T("bool", np.array([[True, False, True], [False, False, True]]), "raw"),
    ]


def _scalars() -> list[T]:
    return [
        T("raw", np.array(3.5, np.float32), "raw"),
        T("shared", np.array(-1.25, np.float64), "shared", np.array([-1.25])),
        T("sparse_values", np.array(7, np.int16), "sparse", None, "csr", 1),
        T("sparse_zero", np.array(0.0, np.float32), "sparse", None, "csr", 1),
        T("sparse_codebook", np.array(2.0, np.float32), "sparse", np.array([0.0, 2.0], np.float32), "csc", 3),
    ]


def _empty_tensors() -> list[T]:
    return [
        T("raw_0", np.zeros((0,), np.float32), "raw"),
        T("raw_bool_2_0", np.zeros((2, 0), np.bool_), "raw"),
        T("shared_0_5", np.zeros((0, 5), np.float32), "shared", np.array([1.0], np.float32)),
        T("sparse_5_0", np.zeros((5, 0), np.float32), "sparse", None, "csr", 5),
        T("sparse_3_0_2", np.zeros((3, 0, 2), np.float16), "sparse", np.array([0.0, 1.0], np.float16), "csc", 2),
        T("sparse_0", np.zeros((0,), np.int8), "sparse", None, "csc", 16),
    ]


def _shared_widths() -> list[T]:
    out = []
    for seed, (k, shape) in enumerate([(2, (4, 6)), (16, (8, 8)), (17, (5, 7)), (256, (16, 20))]):
        cb = levels(k, "float32")
        out.append(T(f"k{k}", coded(cb, uniform_indices(seed, int(np.prod(shape)), k), shape), "shared", cb))
    return out


def _sparse_widths() -> list[T]:
    out = []
    for seed, (k, shape, layout) in enumerate([(2, (6, 5), "csr"), (16, (8, 8), "csc"), (32, (10, 9), "csr"), (256, (20, 16), "csr")]):
        cb = levels(k, "float32", zero_first=True)
        idx = sparse_indices(100 + seed, int(np.prod(shape)), k, (1, 3))
        out.append(T(f"k{k}", coded(cb, idx, shape), "sparse", cb, layout, 4))
    return out


def _index_widths() -> list[T]:
    out = []
    for seed, (b, shape, keep) in enumerate([(1, (4, 5), (1, 3)), (2, (6, 6), (1, 4)), (4, (8, 10), (1, 6)),
                                            (5, (10, 12), (1, 10)), (8, (20, 30), (1, 40)), (16, (4, 50), (1, 20))]):
        a = sparse_values(200 + seed, shape, keep)
        if b == 8:  # one gap longer than 2^8 - 1 zeros, so that b = 8 needs a filler
            a.reshape(-1)[1:400] = 0
            a.reshape(-1)[0] = a.reshape(-1)[400] = 0.5
        out.append(T(f"b{b}", a, "sparse", None, "csr", b))
    return out


def _expect_index_widths(doc: dict, data: bytes) -> None:
    expect_all("fixed")(doc, data)
    fillers = {t["name"]: t["fillers"] for t in doc["tensors"]}
    assert fillers["b1"] > 0 and fillers["b2"] > 0 and fillers["b8"] == 1, fillers


def _gap_run(*parts: list[int] | float, dtype: str = "int8") -> np.ndarray:
    """A 1-D array from runs: `[n]` stands for n zeros, a number for itself."""
    vals: list[float] = []
    for p in parts:
        if isinstance(p, list):
            vals += [0] * p[0]
        else:
            vals.append(p)
    return np.array(vals, dtype=np_dtype(dtype))


def _filler_boundaries() -> list[T]:
    cb = np.array([0.0, 0.5], np.float32)
    with_cb = _gap_run([8], 0.5, [8], 0.5, [2], dtype="float32").reshape(1, 20)
    return [
        T("gap7", _gap_run([7], 1, [7], 2, [5]), "sparse", None, "csr", 3),
        T("gap8", _gap_run([8], 1, [8], 2), "sparse", None, "csr", 3),
        T("gap9", _gap_run([9], 1, [9], 2, [3]), "sparse", None, "csr", 3),
        T("gap16", _gap_run([16], 1, [17], 2), "sparse", None, "csr", 3),
        T("b1_gap2", _gap_run([2], 1.0, [3], dtype="float32").reshape(2, 3), "sparse", None, "csr", 1),
        T("all_zero", np.zeros((4, 4), np.float32), "sparse", None, "csr", 3),
        T("dense", np.arange(1, 7, dtype=np.float32).reshape(2, 3), "sparse", None, "csc", 1),
        T("codebook_gap8", with_cb, "sparse", cb, "csr", 3),
    ]


def _expect_fillers(doc: dict, data: bytes) -> None:
    got = {t["name"]: (t["entries"], t["fillers"]) for t in doc["tensors"]}
    assert got == {"gap7": (2, 0), "gap8": (4, 2), "gap9": (4, 2), "gap16": (6, 4), "b1_gap2": (2, 1),
                   "all_zero": (0, 0), "dense": (6, 0), "codebook_gap8": (4, 2)}, got


def _csc() -> list[T]:
    cb = levels(4, "float32", zero_first=True)
    idx = sparse_indices(300, 30, 4, (1, 3))
    m = coded(cb, idx, (5, 6))
    return [
        T("t3d_csc", sparse_values(301, (3, 4, 2), (1, 3)), "sparse", None, "csc", 2),
        T("m_csc", m, "sparse", cb, "csc", 2),
        T("m_csr", m, "sparse", cb, "csr", 2),
    ]


def _sparse_specials() -> list[T]:
    f32 = sparse_values(400, (4, 4), (1, 3))
    flat = f32.reshape(-1)
    flat[1], flat[6], flat[11] = -0.0, np.nan, np.inf
    f64 = sparse_values(401, (3, 3), (1, 2), "float64")
    f64.reshape(-1)[4] = -0.0
    bf = sparse_values(402, (4, 3), (1, 3), "bfloat16")
    bf.reshape(-1)[0] = -0.0
    u64 = np.array([[0, 2**64 - 1, 0, 0], [0, 0, 0, 2**63]], np.uint64)
    boolean = np.array([[0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]], np.bool_)
    return [
        T("f32", f32, "sparse", None, "csr", 3),
        T("f64", f64, "sparse", None, "csc", 2),
        T("i32", sparse_values(403, (3, 5), (1, 2), "int32"), "sparse", None, "csr", 4),
        T("u64", u64, "sparse", None, "csr", 2),
        T("bool", boolean, "sparse", None, "csc", 2),
        T("bf16", bf, "sparse", None, "csr", 3),
        T("f16", sparse_values(404, (2, 2, 3), (1, 2), "float16"), "sparse", None, "csc", 1),
    ]


def _coded_other_dtypes() -> list[T]:
    out = []
    for seed, (name, dtype, k, shape, enc, layout, b) in enumerate([
        ("f16_shared", "float16", 8, (6, 5), "shared", "csr", 5),
        ("bf16_shared", "bfloat16", 5, (5, 6), "shared", "csr", 5),
        ("f16_sparse", "float16", 4, (7, 4), "sparse", "csc", 3),
        ("bf16_sparse", "bfloat16", 6, (4, 7), "sparse", "csr", 2),
        ("f64_shared", "float64", 3, (3, 3), "shared", "csr", 5),
        ("i8_shared", "int8", 3, (4, 4), "shared", "csr", 5),
        ("i32_sparse", "int32", 5, (6, 6), "sparse", "csr", 3),
    ]):
        n = int(np.prod(shape))
        if enc == "shared":
            cb = levels(k, dtype)
            idx = uniform_indices(500 + seed, n, k)
        else:
            cb = levels(k, dtype, zero_first=True)
            idx = sparse_indices(500 + seed, n, k, (1, 3))
        out.append(T(name, coded(cb, idx, shape), enc, cb, layout, b))
    return out


def _one_symbol() -> list[T]:
    cb = levels(4, "float32")
    return [
        T("shared", coded(cb, [3] * 128, (8, 16)), "shared", cb),
        T("sparse", np.full((4, 32), 0.25, np.float32), "sparse", None, "csr", 5),
    ]


def _expect_one_symbol(doc: dict, data: bytes) -> None:
    assert sorted(doc["tables"]) == ["0001", "1"], doc["tables"]
    assert all(s["coding"] == "huffman" for s in streams(doc))


def _fallback() -> list[T]:
    cb = levels(16, "float32")
    return [
        T("uniform_shared", coded(cb, [i % 16 for i in range(256)], (16, 16)), "shared", cb),
        T("uniform_gaps", _gap_run(*[x for i in range(40) for x in ([i % 8], 1.0)], dtype="float32"), "sparse", None, "csr", 3),
    ]


def _expect_fallback(doc: dict, data: bytes) -> None:
    expect_all("fixed")(doc, data)
    assert doc["tables"] == []


def _blocks() -> list[T]:
    cb = levels(32, "float16")
    rng = Lcg(600)
    idx = [pick(rng, [1 << max(0, 10 - i) for i in range(32)]) for _ in range(32 * 40)]
    cb2 = levels(16, "float16", zero_first=True)
    return [
        T("shared", coded(cb, idx, (32, 40)), "shared", cb),
        T("sparse", coded(cb2, sparse_indices(601, 40 * 50, 16, (3, 10), skew=True), (40, 50)), "sparse", cb2, "csr", 5),
    ]


def _expect_blocks(doc: dict, data: bytes) -> None:
    for s in streams(doc):
        assert s["coding"] == "huffman" and len(s["block_bytes"]) > 2, s
    shared = doc["tensors"][0]["indices"]
    assert len(shared["block_bytes"]) == 13  # 1280 symbols in blocks of 100: the last holds 80


def _shared_table() -> list[T]:
    cb = levels(8, "float32")
    weights = [64, 32, 16, 8, 4, 2, 1, 1]
    rng = Lcg(700)
    a = [pick(rng, weights) for _ in range(256)]
    b = [pick(rng, weights) for _ in range(240)]
    return [T("a", coded(cb, a, (16, 16)), "shared", cb), T("b", coded(cb, b, (12, 20)), "shared", cb)]


def _expect_shared_table(doc: dict, data: bytes) -> None:
    assert len(doc["tables"]) == 1
    assert [t["indices"]["coding"] for t in doc["tensors"]] == ["huffman", "huffman"]
    assert [t["indices"]["table"] for t in doc["tensors"]] == [0, 0]


def _max_length() -> list[T]:
    fib = [1, 1]
    while len(fib) < 16:
        fib.append(fib[-1] + fib[-2])
    symbols = [s for s, c in enumerate(fib) for _ in range(c)]  # 2583 symbols, counts 1, 1, 2, 3, 5, ...
    rng = Lcg(800)
    for i in range(len(symbols) - 1, 0, -1):  # Fisher-Yates, so the stream is not sorted
        j = rng.below(i + 1)
        symbols[i], symbols[j] = symbols[j], symbols[i]
    cb = levels(16, "float16")
    return [T("fib", coded(cb, symbols, (41, 63)), "shared", cb)]


def _expect_max_length(doc: dict, data: bytes) -> None:
    assert doc["tensors"][0]["indices"]["coding"] == "huffman"
    assert max(doc["tables"][0]) == "f", doc["tables"]


def _spec_table() -> list[T]:
    cb = np.array([-1.0, -0.5, 0.5, 1.0], np.float32)
    rest = [0] * 159 + [1] * 15 + [2] * 15 + [3] * 31  # counts 161, 16, 16, 32 in all: lengths 1, 3, 3, 2
    rng = Lcg(900)
    for i in range(len(rest) - 1, 0, -1):
        j = rng.below(i + 1)
        rest[i], rest[j] = rest[j], rest[i]
    return [T("x", coded(cb, [0, 3, 1, 0, 2] + rest, (15, 15)), "shared", cb)]


def _expect_spec_table(doc: dict, data: bytes) -> None:
    assert doc["tables"] == ["1332"]
    s = doc["tensors"][0]["indices"]
    assert s["coding"] == "huffman" and data[s["section"]["offset"]] == 0x9A
    assert 161 * 1 + 16 * 3 + 16 * 3 + 32 * 2 == 8 * s["section"]["length"] - 7  # 7 padding bits in the last byte


def _paper_model() -> list[T]:
    cb = levels(32, "float32", zero_first=True)
    fc1 = coded(cb, sparse_indices(1000, 30 * 64, 32, (1, 10), skew=True), (30, 64))
    cb2 = levels(32, "float32")
    rng = Lcg(1001)
    fc2 = coded(cb2, [min(31, 12 + pick(rng, [1, 2, 4, 8, 16, 8, 4, 2, 1])) for _ in range(300)], (10, 30))
    return [
        T("fc1.weight", fc1, "sparse", cb, "csr", 5),
        T("fc1.bias", np.arange(30, dtype=np.float32) / 64 - 0.25, "raw"),
        T("fc2.weight", fc2, "shared", cb2),
        T("fc2.bias", np.arange(10, dtype=np.float32) / 32, "raw"),
    ]


def _expect_paper(doc: dict, data: bytes) -> None:
    fc1 = doc["tensors"][0]
    assert fc1["indices"]["coding"] == "huffman" and fc1["fillers"] > 0
    assert doc["tensors"][2]["indices"]["coding"] == "huffman"


# --- hand-assembled vectors (what a reader must accept, though dcformat never writes it) -----------


def _reader_latitude() -> bytes:
    """Vector 01 with keys in reverse order, whitespace everywhere, unused tables, extra header padding."""
    doc, payloads = split_file(build_valid(VALID_BY_NAME["01-spec-example"]))
    doc["tables"] = ["11", "2210"]
    doc["metadata"] = {"tensors": "a metadata key may be any string", "tables": ""}

    def reverse(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: reverse(v[k]) for k in reversed(list(v))}
        if isinstance(v, list):
            return [reverse(x) for x in v]
        return v

    return assemble_file(reverse(doc), payloads, dumps=lambda d: "\r\n" + json.dumps(d, indent="\t") + "\n",
                         pad=b"\n", extra_pad=128)


def _minor_version() -> bytes:
    return with_preamble(build_valid(VALID_BY_NAME["01-spec-example"]), minor=1)


def _extra_fillers() -> bytes:
    """Zero entries where the filler rule needs none and after the last non-zero; a 0-symbol Huffman stream."""
    doc = {"metadata": {}, "tables": ["1"], "tensors": [
        # csr, b = 2: gaps 0 0 0 3 3 0 -> positions 0 1 2 6 10 11; only position 2 is non-zero
        {"name": "values", "dtype": "float32", "shape": [1, 12], "encoding": "sparse", "layout": "csr",
         "index_bits": 2, "entries": 6, "fillers": 5, "gaps": fixed(), "values": sec()},
        # csc, R = C = 3, b = 3: gaps 0 3 0 2 -> positions 0 4 5 8 = elements (0,0) (1,1) (2,1) (2,2)
        {"name": "codebook", "dtype": "float32", "shape": [3, 3], "encoding": "sparse", "layout": "csc",
         "index_bits": 3, "entries": 4, "fillers": 2, "bits": 1, "codebook": sec(), "gaps": fixed(), "indices": fixed()},
        {"name": "empty_huffman", "dtype": "float32", "shape": [2, 2], "encoding": "sparse", "layout": "csr",
         "index_bits": 1, "entries": 0, "fillers": 0,
         "gaps": {"coding": "huffman", "section": sec(), "table": 0, "block_size": 1, "block_bytes": []}, "values": sec()},
    ]}
    payloads = [
        pack([0, 0, 0, 3, 3, 0], 2), np.array([0, 0, 5, 0, 0, 0], np.float32).tobytes(),
        np.array([0.0, 7.0], np.float32).tobytes(), pack([0, 3, 0, 2], 3), pack([0, 1, 1, 0], 1),
        b"", b"",
    ]
    return assemble_file(doc, payloads)


def _expected_extra_fillers() -> list[np.ndarray]:
    v = np.zeros((1, 12), np.float32)
    v[0, 2] = 5
    c = np.zeros((3, 3), np.float32)
    c[1, 1] = c[2, 1] = 7
    return [v, c, np.zeros((2, 2), np.float32)]


ODD_CODEBOOK = np.array([5.0, -5.0, 0.5, 0.25], np.float32)


def _odd_streams() -> bytes:
    """A one-symbol table with a trailing 0 digit, a block larger than its stream, `bits` wider than needed."""
    doc = {"metadata": {}, "tables": ["10", "1220"], "tensors": [
        {"name": "dense", "dtype": "float32", "shape": [2, 4], "encoding": "sparse", "layout": "csr",
         "index_bits": 4, "entries": 8, "fillers": 0,
         "gaps": {"coding": "huffman", "section": sec(), "table": 0, "block_size": 1000, "block_bytes": [1]},
         "values": sec()},
        {"name": "wide_bits", "dtype": "float32", "shape": [5], "encoding": "shared", "bits": 4,
         "codebook": sec(), "indices": fixed()},
        {"name": "two_blocks", "dtype": "float32", "shape": [6], "encoding": "shared", "bits": 2, "codebook": sec(),
         "indices": {"coding": "huffman", "section": sec(), "table": 1, "block_size": 4, "block_bytes": [1, 1]}},
    ]}
    # table "1220": symbol 0 -> 0, symbol 1 -> 10, symbol 2 -> 11 (symbol 3 unused; 4 digits <= k = 4)
    codes = {0: (1, 0b0), 1: (2, 0b10), 2: (2, 0b11)}
    payloads = [
        pack_codes([0] * 8, {0: (1, 0)}), np.arange(1, 9, dtype=np.float32).tobytes(),
        ODD_CODEBOOK[:3].tobytes(), pack([0, 1, 2, 1, 0], 4),
        ODD_CODEBOOK.tobytes(), pack_codes([0, 1, 2, 0], codes) + pack_codes([2, 1], codes),
    ]
    return assemble_file(doc, payloads)


def _expected_odd_streams() -> list[np.ndarray]:
    return [np.arange(1, 9, dtype=np.float32).reshape(2, 4), ODD_CODEBOOK[[0, 1, 2, 1, 0]], ODD_CODEBOOK[[0, 1, 2, 0, 2, 1]]]


def _fields_spec_example() -> bytes:
    """Spec §5.4's worked example, assembled by hand: fixed mantissas, a Huffman-coded sign + exponent."""
    table = ["0"] * 49
    table[14], table[15], table[48] = "2", "1", "2"
    doc = {"metadata": {}, "tables": ["".join(table)], "tensors": [
        {"name": "h", "dtype": "float16", "shape": [4], "encoding": "fields", "fields": [10, 6], "chunk_size": 4,
         "chunks": [[fixed(), {"coding": "huffman", "section": sec(), "table": 0, "block_size": 4,
                               "block_bytes": [1]}]]}]}
    mantissas = pack([0, 0, 0, 0x200], 10)
    assert mantissas == bytes.fromhex("0000000080")
    # sign + exponent 15, 15, 48, 14: codewords 0, 0, 11, 10 (canonical: 15 -> 0, 14 -> 10, 48 -> 11)
    high = pack_codes([15, 15, 48, 14], {15: (1, 0), 14: (2, 0b10), 48: (2, 0b11)})
    assert high == b"\x1c"
    return assemble_file(doc, [mantissas, high], minor=2)


def _expected_fields_spec_example() -> list[np.ndarray]:
    return [np.array([1.0, 1.0, -2.0, 0.75], np.float16)]


def expect_rans(*keys: str, blocks: int = 1) -> Callable[[dict, bytes], None]:
    """The file is 1.4 and the named streams ("tensor.key") are rans-coded in at least `blocks` blocks."""
    def check(doc: dict, data: bytes) -> None:
        assert data[8:12] == b"\x01\x00\x04\x00"
        by_name = {t["name"]: t for t in doc["tensors"]}
        for key in keys:
            name, stream = key.split(".")
            s = by_name[name][stream]
            assert s["coding"] == "rans" and len(s["block_bytes"]) >= blocks, (key, s)

    return check


def _rans_shared() -> list[T]:
    """A 64 x 64 shared float32 layer whose 4 levels are used 70/15/10/5 %: Huffman needs 1.45 bits a
    symbol (lengths 1, 2, 3, 3), rANS comes within a few thousandths of the entropy, 1.32."""
    cb = levels(4, "float32")
    rng = Lcg(3800)
    return [T("fc", coded(cb, [pick(rng, [70, 15, 10, 5]) for _ in range(64 * 64)], (64, 64)), "shared", cb)]


def _rans_blocks() -> list[T]:
    """rANS streams cut into blocks of 700 symbols (the last partial): shared indices, and a sparse
    tensor's gaps and indices (85 % of its elements non-zero, most of them level 1)."""
    cb = levels(8, "float32")
    rng = Lcg(3900)
    idx = [pick(rng, [90, 4, 2, 1, 1, 1, 1]) for _ in range(40 * 50)]
    cb2 = levels(8, "float32", zero_first=True)
    sparse = [1 + pick(rng, [90, 4, 2, 1, 1, 1, 1]) if rng.chance(17, 20) else 0 for _ in range(60 * 50)]
    return [
        T("shared", coded(cb, idx, (40, 50)), "shared", cb),
        T("sparse", coded(cb2, sparse, (60, 50)), "sparse", cb2, "csr", 2),
    ]


def _rans_one_symbol() -> list[T]:
    """Streams of one symbol: a shared tensor whose 3,000 indices are all 1 (table "00008000", a 1-bit
    fixed width or Huffman code would take 375 bytes) and a dense sparse tensor whose gaps are all 0:
    each block is the 8-byte state 2^31."""
    cb = np.array([0.0, 0.75], np.float32)
    dense = (np.arange(1, 1 + 20 * 30, dtype=np.float32).reshape(20, 30) / 8).astype(np.float16)
    return [T("ones", coded(cb, [1] * 3000, (60, 50)), "shared", cb), T("dense", dense, "sparse", None, "csr", 3)]


def _expect_one_symbol_rans(doc: dict, data: bytes) -> None:
    expect_rans("ones.indices", "dense.gaps")(doc, data)
    for t in doc["tensors"]:
        s = t["indices"] if "indices" in t else t["gaps"]
        assert len(s["frequencies"]) // 4 - s["frequencies"].count("0000") == 1, s
        assert all(b == 8 for b in s["block_bytes"]), s


def _rans_sparse_gaps() -> list[T]:
    """A sparse float16 tensor with raw values where 85 % of the elements are non-zero: its gaps
    (b = 4) are mostly 0, and rANS codes them in well under a bit each."""
    return [T("w", sparse_values(4200, (40, 40), (17, 20), "float16"), "sparse", None, "csr", 4)]


def _rans_row_scales() -> list[T]:
    """A 1500 x 2 float32 shared tensor with row scales (m = 4, scale 0 for 80 % of the rows): both its
    row_scales and its indices streams rANS-coded."""
    rng = Lcg(4300)
    rows = [pick(rng, [80, 10, 6, 4]) for _ in range(1500)]
    indices = [pick(rng, [75, 15, 6, 4]) for _ in range(3000)]
    return [scaled("emb", "float32", (1500, 2), levels(4, "float32"), [1.0, 0.5, 2.0, 0.25], rows, indices)]


def _rans_class_tables() -> list[T]:
    """A 600 x 4 float32 shared tensor with row scales (m = 3) whose classes use the levels differently
    (class 0 mostly level 0, class 1 level 1, class 2 level 3): its indices take one rANS table per class."""
    rng = Lcg(4600)
    rows = [pick(rng, [50, 30, 20]) for _ in range(600)]
    weights = ([80, 10, 6, 4], [10, 80, 6, 4], [4, 6, 10, 80])
    indices = [pick(rng, weights[r]) for r in rows for _ in range(4)]
    return [scaled("emb", "float32", (600, 4), levels(4, "float32"), [1.0, 0.5, 2.0], rows, indices)]


def _expect_class_tables(doc: dict, data: bytes) -> None:
    expect_rans("emb.indices")(doc, data)
    tables = doc["tensors"][0]["indices"]["frequencies"]
    assert isinstance(tables, list) and len(tables) == 3 and len(set(tables)) == 3, tables


def rans_stream(freqs: list[int], block_size: int, symbols: list[int]) -> tuple[dict, bytes]:
    """A rans stream object (format 1.4, spec §6.4) and its payload, coded by the reference encoder."""
    payload, sizes = rans_encode(symbols, freqs, block_size)
    return {"coding": "rans", "section": sec(), "frequencies": frequencies_hex(freqs), "block_size": block_size,
            "block_bytes": sizes}, payload


RANS_EXAMPLE_CODEBOOK = np.array([0.0, 0.25, -0.5], np.float32)
RANS_EXAMPLE_INDICES = [1, 0, 2, 0, 1]


def _rans_spec_example() -> bytes:
    """Spec §6.4's worked example: a shared float32 [5] whose indices 1 0 2 0 1 are rans-coded with the
    table "7fe000100010" in one block of 12 bytes (an 8-byte state and one word)."""
    stream, payload = rans_stream([32736, 16, 16], 5, RANS_EXAMPLE_INDICES)
    assert stream["frequencies"] == "7fe000100010" and payload == bytes.fromhex("e67f800001000000" "70000206")
    doc = {"metadata": {}, "tables": [], "tensors": [
        {"name": "r", "dtype": "float32", "shape": [5], "encoding": "shared", "bits": 2, "codebook": sec(),
         "indices": stream}]}
    return assemble_file(doc, [RANS_EXAMPLE_CODEBOOK.tobytes(), payload], minor=4)


def _expected_rans_spec_example() -> list[np.ndarray]:
    return [RANS_EXAMPLE_CODEBOOK[RANS_EXAMPLE_INDICES]]


LATITUDE_CODEBOOK = np.array([0.0, 1.0, -1.0, 0.5], np.float32)
LATITUDE = {  # name -> (shape, codebook size, frequencies, block size, indices)
    "trailing_zero_groups": ((6,), 4, [0x6000, 0x2000, 0, 0], 1000, [0, 1, 0, 0, 0, 1]),
    "zero_frequency_inside": ((7,), 3, [0x4000, 0, 0x4000], 3, [0, 2, 2, 0, 2, 0, 0]),
    "no_symbols": ((0,), 2, [0x8000], 1, []),
    "one_symbol_blocks": ((3, 100), 2, [0, 0x8000], 100, [1] * 300),
    "uniform_table_for_skewed_symbols": ((40,), 4, [0x2000] * 4, 16, [0] * 30 + [1, 2, 3, 1, 0, 0, 3, 0, 0, 0]),
}


def _rans_latitude() -> bytes:
    """What a reader must accept in rans streams though dcformat never writes it: trailing zero groups, a
    zero frequency inside the table, a 0-symbol stream, one-symbol blocks (8 bytes each, the state 2^31),
    a table that does not follow the counts, a block larger than its stream, keys in another order."""
    tensors, payloads = [], []
    for name, (shape, k, freqs, block_size, indices) in LATITUDE.items():
        stream, payload = rans_stream(freqs, block_size, indices)
        if name == "zero_frequency_inside":
            stream = dict(reversed(list(stream.items())))
        tensors.append({"name": name, "dtype": "float32", "shape": list(shape), "encoding": "shared", "bits": 2,
                        "codebook": sec(), "indices": stream})
        payloads += [LATITUDE_CODEBOOK[:k].tobytes(), payload]
    assert payloads[7] == bytes.fromhex("0000008000000000") * 3
    return assemble_file({"metadata": {}, "tables": [], "tensors": tensors}, payloads, minor=4)


def _expected_rans_latitude() -> list[np.ndarray]:
    return [LATITUDE_CODEBOOK[np.array(ix, dtype=np.int64)].reshape(shape) for shape, _, _, _, ix in LATITUDE.values()]


RANS_FIELDS = np.array([1, 1, -2, 1 + 2**-10, 0.5, 1, 1, 1, -0.0, 1 + 2**-9], np.float16)


def _rans_fields() -> bytes:
    """A float16 tensor in fields [10, 6] in chunks of 6 (2 chunks, the last partial), every field stream
    rans-coded in blocks of 4 with a table of its chunk's counts (dcformat codes fields streams fixed
    width or Huffman)."""
    bits = RANS_FIELDS.view("<u2").tolist()
    chunks, payloads = [], []
    for c0 in range(0, len(bits), 6):
        streams = []
        for shift, width in ((0, 10), (10, 6)):
            symbols = [(b >> shift) & ((1 << width) - 1) for b in bits[c0 : c0 + 6]]
            counts = [symbols.count(v) for v in range(max(symbols) + 1)]
            stream, payload = rans_stream(rans_frequencies(counts), 4, symbols)
            streams.append(stream)
            payloads.append(payload)
        chunks.append(streams)
    doc = {"metadata": {}, "tables": [], "tensors": [
        {"name": "h", "dtype": "float16", "shape": [10], "encoding": "fields", "fields": [10, 6], "chunk_size": 6,
         "chunks": chunks}]}
    return assemble_file(doc, payloads, minor=4)


def _weights(seed: int, n: int, dtype: str, scale: float = 0.05) -> np.ndarray:
    """Weight-like values from the LCG (a sum of uniforms: roughly normal), in `dtype`."""
    rng = Lcg(seed)
    vals = [(sum(rng.below(1 << 16) for _ in range(4)) / (1 << 16) - 2.0) * scale for _ in range(n)]
    return np.array(vals, dtype=np.float64).astype(np_dtype(dtype))


def _fields_float32() -> list[T]:
    w = _weights(300, 2500, "float32")
    specials = [0x7FC00001, 0xFFC12345, 0x7F800000, 0xFF800000, 0x80000000, 0x00000001, 0x807FFFFF, 0x7F7FFFFF]
    w.view(np.uint32)[[3, 700, 1024, 1500, 2047, 2048, 2300, 2499]] = specials
    return [
        T("w", w.reshape(50, 50), "fields", fields=(8, 8, 7, 9), chunk_size=1024),
        T("scalar", np.array(-0.0, np.float32), "fields", fields=(8, 8, 7, 9), chunk_size=1024),
        T("empty", np.zeros((0, 3), np.float32), "fields", fields=(8, 8, 7, 9), chunk_size=1024),
        T("positions", np.arange(600, dtype=np.int64).reshape(1, 600), "fields", fields=(8,) * 8, chunk_size=1024),
    ]


def _fields_dtypes() -> list[T]:
    out = []
    for i, (dtype, widths) in enumerate([("bfloat16", (4, 12)), ("float16", (8, 8)), ("float64", (16, 16, 16, 4, 12)),
                                         ("float8_e4m3fn", (8,)), ("float8_e5m2", (8,))]):
        out.append(T(dtype, _weights(310 + i, 450, dtype, 0.5), "fields", fields=widths, chunk_size=200))
    rng = Lcg(320)
    out.append(T("int8", np.array([rng.below(9) - 4 for _ in range(450)], np.int8), "fields", fields=(3, 5),
                 chunk_size=200))
    out.append(T("uint16", np.array([rng.below(40) for _ in range(450)], np.uint16), "fields", fields=(16,),
                 chunk_size=200))
    out.append(T("uint32", np.array([rng.below(1 << 20) for _ in range(450)], np.uint32), "fields",
                 fields=(1, 15, 16), chunk_size=200))
    return out


def _float8_raw() -> list[T]:
    return [T(name, np.arange(256, dtype=np.uint8).view(np_dtype(name)).reshape(16, 16), "raw")
            for name in ("float8_e4m3fn", "float8_e5m2")]


def _expect_fields(doc: dict, data: bytes) -> None:
    assert minor_of(data) == 2
    codings = {s["coding"] for t in doc["tensors"] for c in t.get("chunks", []) for s in c}
    assert codings == {"fixed", "huffman"}, codings
    assert any(len(t.get("chunks", [])) > 2 for t in doc["tensors"])


def _expected_v01() -> list[np.ndarray]:
    return [spec_example().array]


def _expect_zlib(doc: dict, data: bytes) -> None:
    """A compressed header (spec §2.2) in a version 1.1 file, decompressing to compact JSON."""
    major, minor = struct.unpack_from("<HH", data, 8)
    n = struct.unpack_from("<Q", data, 16)[0]
    assert (major, minor) == (1, 1) and data[32:34] == b"\x78\x01", data[:40]
    inflater = zlib.decompressobj()
    text = inflater.decompress(data[32 : 32 + n])
    assert inflater.eof and set(inflater.unused_data) <= {0x20} and len(inflater.unused_data) < 64
    assert text == compact(doc).encode("utf-8") and len(text) > n - len(inflater.unused_data)  # it compresses


def _expect_zlib_paper(doc: dict, data: bytes) -> None:
    _expect_zlib(doc, data)
    assert [s["coding"] for s in streams(doc)] == ["fixed", "huffman", "huffman"], [s["coding"] for s in streams(doc)]


def _zlib_latitude() -> bytes:
    """Vector 01 with its JSON (surrounded by newlines) stored as a zlib stream of a stored block and a
    fixed-Huffman block, 64 more padding spaces than needed, labelled version 1.2."""
    doc, payloads = split_file(build_valid(VALID_BY_NAME["01-spec-example"]))
    return assemble_file(doc, payloads, dumps=lambda d: "\n" + compact(d) + "\r\n", compress=zlib_mixed,
                         extra_pad=64, minor=2)



# format 1.3: shared tensors with row scales (spec §5.2)


def scaled(name: str, dtype: str, shape: tuple[int, ...], codebook: Any, scales: Any, row_scales: list[int],
           indices: list[int]) -> T:
    """A shared tensor with row scales; its array is what it decodes to: dtype(codebook[i] x scales[row])."""
    dt = np_dtype(dtype)
    cb = codebook if isinstance(codebook, np.ndarray) else np.array(codebook, dtype=np.float64).astype(dt)
    sc = scales if isinstance(scales, np.ndarray) else np.array(scales, dtype=np.float64).astype(dt)
    rows = 1 if len(shape) <= 1 else shape[0]
    flat = cb[np.array(indices, dtype=np.int64)]
    if rows and flat.size:
        with np.errstate(over="ignore", under="ignore"):  # an overflow to inf is what §5.2 decodes to
            flat = (flat.reshape(rows, -1) * sc[np.array(row_scales, dtype=np.int64)][:, None]).reshape(-1)
    return T(name, flat.reshape(shape), "shared", cb, scales=sc, row_scales=list(row_scales), indices=list(indices))


def _row_scales_example() -> list[T]:
    """The 3x2 float32 worked example of spec §5.2."""
    return [scaled("w", "float32", (3, 2), [-1.0, 0.5, 2.0], [0.25, 0.5, 3.0], [2, 0, 1], [1, 2, 0, 1, 2, 2])]


def _expect_row_scales_example(doc: dict, data: bytes) -> None:
    t = doc["tensors"][0]
    assert (t["bits"], t["scale_bits"]) == (2, 2)
    assert data[8:12] == b"\x01\x00\x03\x00"
    rows, idx = t["row_scales"]["section"], t["indices"]["section"]
    assert data[rows["offset"] : rows["offset"] + 1] == b"\x12"
    assert data[idx["offset"] : idx["offset"] + 2] == b"\x49\x0a"


def _f32(bits: int) -> float:
    return float(np.array([bits], "<u4").view(np.float32)[0])


def _row_scales_rounding() -> list[T]:
    """float32 products that round: a tie to even, subnormal results, an overflow to inf, -0.0, a
    negative scale and an unused one."""
    codebook = np.array([_f32(b) for b in (0x80000000, 0x00000000, 0x3F800001, 0x7F400000, 0x00800000,
                                           0x40400000, 0xC0E80000, 0x3DCCCCCD)], np.float32)
    scales = np.array([_f32(b) for b in (0x3FC00000, 0x3F800001, 0x40800000, 0xBF000000, 0x35800002)], np.float32)
    indices = [2, 5, 7, 6, 4, 2, 7, 0, 3, 0, 1, 6, 1, 5, 4, 3]
    return [scaled("r", "float32", (4, 4), codebook, scales, [0, 4, 2, 3], indices)]


def _expect_rounding(doc: dict, data: bytes) -> None:
    t = doc["tensors"][0]
    assert t["scale_bits"] == 3 and t["row_scales"]["coding"] == "fixed"


def _row_scales_huffman() -> list[T]:
    """256 x 2 float32 whose row scales (mostly scale 0) and indices are both Huffman-coded."""
    rng = Lcg(33)
    rows = [0 if rng.chance(7, 8) else 1 + rng.below(4) for _ in range(256)]
    indices = [pick(rng, [16, 4, 2, 1, 1, 1]) for _ in range(512)]
    return [scaled("emb", "float32", (256, 2), levels(6, "float32"), [1.0, 0.75, 1.25, 0.5, 2.0], rows, indices)]


def _expect_huffman_rows(doc: dict, data: bytes) -> None:
    t = doc["tensors"][0]
    assert t["row_scales"]["coding"] == "huffman" and t["indices"]["coding"] == "huffman", t


def _f64_bits(rng: Lcg, lo: int, hi: int) -> int:
    """A float64 bit pattern with a random sign, a biased exponent in lo..hi and a random mantissa."""
    mantissa = (rng.below(1 << 26) << 26) | rng.below(1 << 26)
    return (rng.below(2) << 63) | ((lo + rng.below(hi - lo + 1)) << 52) | mantissa


def _row_scales_float64() -> list[T]:
    """5 x 3 float64 with full-precision codebook values and scales: every product rounds."""
    rng = Lcg(64)
    codebook = np.array([_f64_bits(rng, 1013, 1033) for _ in range(7)], "<u8").view(np.float64)
    scales = np.abs(np.array([_f64_bits(rng, 1018, 1028) for _ in range(3)], "<u8").view(np.float64))
    rows = [rng.below(3) for _ in range(5)]
    indices = [rng.below(7) for _ in range(15)]
    return [scaled("d", "float64", (5, 3), codebook, scales, rows, indices)]


def _row_scales_shapes() -> list[T]:
    """Row scales of the matrix views of §5.3: a 1-D tensor (one row), a scalar (one row), a [0, 3]
    tensor (no rows: a row_scales stream of 0 symbols) and a [4, 0] tensor (4 rows of no elements)."""
    return [
        scaled("v", "float32", (5,), [0.0, 1.5, -3.0], [0.125], [0], [1, 2, 0, 1, 1]),
        scaled("s", "float64", (), [-2.5], [3.0], [0], [0]),
        scaled("e", "float32", (0, 3), [0.0], [1.0], [], []),
        scaled("z", "float32", (4, 0), [0.0], [1.0, 2.0], [1, 0, 0, 1], []),
    ]


VALID: list[Valid] = [
    Valid("01-spec-example", "The worked example of spec §5.3 (4x4 float32, sparse CSR, b = 2, 3 fillers, codebook "
          "[0, -2, 1.5]); the complete file shown in spec Appendix A.", [spec_example()], expect=_expect_spec_example),
    Valid("02-empty-file", "No tensors, no metadata, no tables: the smallest valid file (128 bytes).", []),
    Valid("03-metadata", "User metadata: non-ASCII text, JSON escapes, an empty key and an empty value; one raw "
          "float32 tensor.", [T("bias", np.array([0.5, -1.0, 2.0], np.float32), "raw")],
          metadata={"arch": "lenet-300-100", "unicode ☃": "naïve — 日本語", "escapes \"\\/": "line\nbreak\ttab\u0001",
                    "": "empty key", "empty value": ""}),
    Valid("04-raw-floats", "Raw float64/float32/float16/bfloat16 with NaN payloads (quiet, signalling, negative), "
          "±inf, -0.0, the smallest subnormal and the largest finite value.", _raw_floats()),
    Valid("05-raw-ints-bool", "Raw int8..int64, uint8..uint64 at their extremes, and bool.", _raw_ints()),
    Valid("06-scalars", "Scalar (shape []) tensors in every form: raw, shared (k = 1), sparse with values (one entry, "
          "and a zero scalar with no entries), sparse with a codebook (CSC).", _scalars()),
    Valid("07-empty-tensors", "Tensors with no elements (shapes [0], [2,0], [0,5], [5,0], [3,0,2]) raw, shared and "
          "sparse: zero-length sections and streams.", _empty_tensors()),
    Valid("08-shared-code-widths", "Shared (dense weight sharing) float32 with k = 2, 16, 17, 256: code widths 1, 4, "
          "5, 8; fixed-width streams.", _shared_widths(), expect=expect_all("fixed")),
    Valid("09-sparse-code-widths", "Sparse with codebooks of k = 2, 16, 32, 256 (code widths 1, 4, 5, 8), CSR and "
          "CSC, b = 4.", _sparse_widths(), expect=expect_all("fixed")),
    Valid("10-index-widths", "Sparse with raw values at index widths b = 1, 2, 4, 5, 8, 16 (fillers at b = 1, 2 "
          "and one long gap at b = 8).", _index_widths(), expect=_expect_index_widths),
    Valid("11-filler-boundaries", "b = 3: gaps of exactly 7, 8, 9 and 16/17 zeros (2^b - 1, 2^b, 2^b + 1, ...), "
          "trailing zeros, b = 1 with a gap of 2, an all-zero and a fully dense tensor, fillers with a codebook.",
          _filler_boundaries(), expect=_expect_fillers),
    Valid("12-csc", "CSC layout: a 3-D tensor (R = 3, C = 8) with raw values, and one matrix stored both CSC and "
          "CSR with a codebook.", _csc()),
    Valid("13-sparse-values-special", "Sparse with raw values: -0.0, NaN and inf stored as entries; float64, "
          "int32, uint64, bool, bfloat16, float16.", _sparse_specials()),
    Valid("14-coded-other-dtypes", "Codebooks of float16, bfloat16, float64, int8 and int32 values, shared and "
          "sparse.", _coded_other_dtypes()),
    Valid("15-huffman-one-symbol", "One-symbol Huffman tables (\"0001\" for shared indices, \"1\" for sparse "
          "gaps): every codeword is the single bit 0.", _one_symbol(), mode="auto", expect=_expect_one_symbol),
    Valid("16-huffman-fallback", "Huffman mode \"auto\" on uniform symbols: fixed-width coding is smaller, so "
          "every stream is fixed and the file has no tables.", _fallback(), mode="auto",
          expect=_expect_fallback),
    Valid("17-huffman-blocks", "Huffman streams cut into blocks of 100 symbols (13 blocks, the last partial), for "
          "shared indices and for sparse gaps and indices.", _blocks(), mode="auto", block_size=100,
          expect=_expect_blocks),
    Valid("18-huffman-shared-table", "Huffman mode \"shared\": two tensors' index streams use one table.",
          _shared_table(), mode="shared", expect=_expect_shared_table),
    Valid("19-huffman-max-length", "Fibonacci symbol counts: a table whose longest code has 15 bits (digit f).",
          _max_length(), mode="auto", expect=_expect_max_length),
    Valid("20-huffman-spec-table", "The table \"1332\" of the worked example of spec §6.2; the stream starts with "
          "the example's symbols 0 3 1 0 2 (first byte 0x9A).", _spec_table(), mode="auto", expect=_expect_spec_table),
    Valid("21-paper-model", "A small Deep Compression model: a pruned fc layer (5-bit codebook, b = 5 with "
          "fillers, Huffman indices; its gaps stay fixed-width, Huffman would not pay), a shared fc layer with "
          "Huffman indices, raw biases.", _paper_model(), mode="auto", expect=_expect_paper),
    Valid("22-reader-latitude", "Vector 01 as another writer might lay it out: keys in reverse order, CR LF, "
          "tabs and newlines in the JSON, newline padding, a data start 128 bytes later than needed, unused "
          "tables, metadata keys named like header keys. A reader must accept all of it.", [], build=_reader_latitude, expected=_expected_v01),
    Valid("23-minor-version", "Vector 01 labelled version 1.1: a 1.0 reader reads a newer minor version.", [],
          build=_minor_version, expected=_expected_v01),
    Valid("24-extra-fillers", "Zero entries where the filler rule needs none and after the last non-zero "
          "element (raw values, and a codebook in CSC); a Huffman stream of zero symbols.", [], build=_extra_fillers,
          expected=_expected_extra_fillers),
    Valid("25-odd-streams", "A one-symbol table with a trailing 0 digit, a Huffman block larger than its "
          "stream, shared `bits` wider than the codebook needs, a table with a trailing 0 digit used in "
          "two blocks.", [], build=_odd_streams, expected=_expected_odd_streams),
    # format 1.1: compressed headers (spec §2.2)
    Valid("26-zlib-spec-example", "Format 1.1: vector 01 with its header stored as a zlib stream (one "
          "fixed-Huffman deflate block): 450 bytes instead of 578; shown whole in spec Appendix A.2.",
          [spec_example()], expect=_expect_zlib, compact_header=True),
    Valid("27-zlib-paper-model", "Format 1.1: the model of vector 21 with a zlib-compressed header; the writer "
          "(compact_header) picks its Huffman streams counting the header bytes a Huffman stream adds "
          "(header_cost 15).", _paper_model(), mode="auto", expect=_expect_zlib_paper, compact_header=True,
          header_cost=15),
    Valid("28-zlib-reader-latitude", "Format 1.1 as another writer might store a compressed header: vector 01's "
          "JSON, with a newline before and CR LF after it, as a zlib stream of two deflate blocks (stored, then "
          "fixed Huffman), 64 more padding spaces than needed, labelled version 1.2.", [], build=_zlib_latitude,
          expected=_expected_v01),
    # format 1.2: the fields encoding and the float8 dtypes (spec §5.4, §3.2)
    Valid("29-fields-spec-example", "Format 1.2: the worked example of spec §5.4, a float16 [1, 1, -2, 0.75] in "
          "fields [10, 6], one chunk: the 10 mantissa bits fixed width (5 bytes), sign and exponent Huffman-coded "
          "(table of 49 digits: 14 -> 2, 15 -> 1, 48 -> 2; stream byte 0x1C).", [], build=_fields_spec_example,
          expected=_expected_fields_spec_example),
    Valid("30-fields-float32", "Format 1.2: float32 weights in dcformat's split [8, 8, 7, 9] in chunks of 1,024 "
          "(3 chunks, the last partial; NaN payloads, infinities, -0.0 and subnormals among them), a scalar, an "
          "empty tensor (no chunks) and int64 positions in eight 8-bit fields.", _fields_float32(), mode="auto",
          header_cost=15, expect=_expect_fields),
    Valid("31-fields-dtypes", "Format 1.2: fields of every other kind of element: bfloat16 [4, 12], float16 "
          "[8, 8], float64 [16, 16, 16, 4, 12], float8_e4m3fn and float8_e5m2 [8], int8 [3, 5], uint16 [16], "
          "uint32 [1, 15, 16], in chunks of 200 (the last partial).", _fields_dtypes(), mode="auto",
          header_cost=15, expect=_expect_fields),
    Valid("32-float8-raw", "Format 1.2: raw float8_e4m3fn and float8_e5m2 tensors holding all 256 bit "
          "patterns each (NaN, inf for e5m2, -0.0, subnormals).", _float8_raw()),
    # format 1.3: shared tensors with row scales (spec §5.2)
    Valid("33-row-scales-spec-example", "Format 1.3: the worked example of spec §5.2, a 3x2 float32 shared "
          "tensor with codebook [-1, 0.5, 2] and row scales [0.25, 0.5, 3] (rows use scales 2, 0, 1): "
          "[[1.5, 6], [-0.25, 0.125], [1, 1]].", _row_scales_example(), expect=_expect_row_scales_example),
    Valid("34-row-scales-rounding", "Format 1.3: float32 products rounded once to nearest-even: a tie "
          "((1 + 2^-23) x 1.5 -> 1.5 + 2^-22), subnormal results, 1.5 x 2^127 x 4 -> inf, -0.0 x 4 and 0 x -0.5 "
          "-> -0.0, a negative scale, an unused scale and unused codebook values.", _row_scales_rounding(),
          expect=_expect_rounding),
    Valid("35-row-scales-huffman", "Format 1.3: a 256x2 float32 tensor whose row_scales (m = 5, mostly scale "
          "0) and indices streams are Huffman-coded.", _row_scales_huffman(), mode="auto",
          expect=_expect_huffman_rows),
    Valid("36-row-scales-float64", "Format 1.3: a 5x3 float64 tensor with full-precision codebook values and "
          "scales, every product rounded to binary64.", _row_scales_float64()),
    Valid("37-row-scales-shapes", "Format 1.3: row scales of a 1-D tensor and a scalar (R = 1), a [0, 3] tensor "
          "(R = 0, an empty row_scales stream) and a [4, 0] tensor (R = 4 scale indices, no elements).",
          _row_scales_shapes()),
    # format 1.4: rans streams (spec §6.4)
    Valid("38-rans-spec-example", "Format 1.4: the worked example of spec §6.4, a float32 [5] shared tensor (codebook "
          "[0, 0.25, -0.5]) whose indices 1 0 2 0 1 are rans-coded with the table \"7fe000100010\" in one 12-byte "
          "block (the state 0x100807fe6 and one word); shown whole in spec Appendix A.4.", [],
          build=_rans_spec_example, expected=_expected_rans_spec_example),
    Valid("39-rans-shared", "Format 1.4: a 64x64 shared float32 layer whose 4 levels are used 70/15/10/5 %: its "
          "indices rANS-coded by the writer (Policy(coder=\"rans\")), smaller than Huffman (1.45 bits a symbol) "
          "and fixed width.", _rans_shared(), mode="auto", header_cost=45, coder="rans",
          expect=expect_rans("fc.indices")),
    Valid("40-rans-blocks", "Format 1.4: rANS streams in blocks of 700 symbols (the last partial): shared indices, "
          "and a sparse tensor's gaps (b = 2) and indices.", _rans_blocks(), mode="auto", block_size=700,
          header_cost=45, coder="rans", expect=expect_rans("shared.indices", "sparse.gaps", "sparse.indices", blocks=3)),
    Valid("41-rans-one-symbol", "Format 1.4: one-symbol rans streams (tables \"00008000\" and \"8000\"): 3,000 "
          "shared indices and the all-zero gaps of a dense sparse float16 tensor, every block the 8-byte state 2^31.",
          _rans_one_symbol(), mode="auto", block_size=1000, header_cost=45, coder="rans",
          expect=_expect_one_symbol_rans),
    Valid("42-rans-sparse-gaps", "Format 1.4: the gaps of a sparse float16 tensor with raw values (85 % non-zero, "
          "b = 4: mostly 0) rANS-coded.", _rans_sparse_gaps(), mode="auto", header_cost=45, coder="rans",
          expect=expect_rans("w.gaps")),
    Valid("43-rans-row-scales", "Format 1.4: a 1500x2 float32 shared tensor with row scales (m = 4, 80 % of the rows "
          "scale 0): its row_scales and indices streams rANS-coded.", _rans_row_scales(), mode="auto",
          header_cost=45, coder="rans", expect=expect_rans("emb.row_scales", "emb.indices")),
    Valid("44-rans-reader-latitude", "Format 1.4: rans streams as dcformat never writes them: a table with "
          "trailing zero groups (4 groups, 2 used), a zero frequency inside a table, a stream of 0 symbols (no "
          "blocks), three one-symbol blocks of 8 bytes (the state 2^31), a uniform table for skewed symbols in "
          "blocks of 16, a block larger than its stream, stream keys in reverse order.", [],
          build=_rans_latitude, expected=_expected_rans_latitude),
    Valid("45-rans-fields", "Format 1.4: a float16 [10] tensor in fields [10, 6] with chunks of 6 (the last "
          "partial) whose four streams are all rans-coded in blocks of 4 (dcformat codes fields streams fixed or "
          "Huffman).", [], build=_rans_fields, expected=lambda: [RANS_FIELDS]),
    Valid("46-rans-class-tables", "Format 1.4: a 600x4 float32 shared tensor with row scales (m = 3) whose rows "
          "of each scale class favour another level: its indices stream rANS-coded with one table per class "
          "(\"frequencies\" an array of 3 tables, §6.4).", _rans_class_tables(), mode="auto", header_cost=45,
          coder="rans", expect=_expect_class_tables),
]
VALID_BY_NAME = {v.name: v for v in VALID}


# ------------------------------------------------------------------------------------------------
# Building valid vectors with dcformat's writer


def lookup(array: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Each element's index in the codebook, by bit pattern (codebook bit patterns are unique)."""
    size = array.dtype.itemsize
    keys = [bytes(codebook[i : i + 1].view(np.uint8)) for i in range(len(codebook))]
    assert len(set(keys)) == len(keys), "codebook bit patterns must be unique"
    where = {k: i for i, k in enumerate(keys)}
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8).reshape(-1, size)
    return np.array([where[bytes(row)] for row in flat], dtype=np.int64)


def draft(t: T, mode: str = "off", header_cost: int = 0) -> codec.TensorDraft:
    """The draft of one tensor in exactly the recorded form (the same call the tests make)."""
    if t.encoding == "fields":
        return codec.draft_explicit(t.name, t.array, "fields", fields=t.fields, chunk_size=t.chunk_size,
                                    huffman=mode, header_cost=header_cost)
    if t.scales is not None:  # format 1.3: shared with row scales, in exactly the recorded form
        cb = np.asarray(t.codebook).astype(t.array.dtype)
        return codec.draft_explicit(t.name, t.array, "shared", codebook=cb, indices=np.array(t.indices),
                                    scales=np.asarray(t.scales).astype(t.array.dtype), row_scales=np.array(t.row_scales))
    if t.codebook is None:
        if t.encoding == "raw":
            return codec.draft_explicit(t.name, t.array, "raw")
        return codec.draft_explicit(t.name, t.array, t.encoding, layout=t.layout, index_bits=t.index_bits)
    cb = np.asarray(t.codebook).astype(t.array.dtype)
    return codec.draft_explicit(t.name, t.array, t.encoding, codebook=cb, indices=lookup(t.array, cb),
                                layout=t.layout, index_bits=t.index_bits)


_BUILT: dict[str, bytes] = {}


def build_valid(v: Valid) -> bytes:
    """The bytes of a valid vector (cached: invalid vectors are made from them)."""
    if v.name not in _BUILT:
        if v.build is not None:
            data = v.build()
        else:
            data = write_valid(v, compact_header=False)
            assert assemble_file(*split_file(data), minor=minor_of(data)) == data  # the surgery helpers agree
            if v.compact_header:
                # The writer compresses with the zlib at hand, whose output differs between builds: the
                # vector's stream comes from this script's own deflate encoder instead (same JSON text,
                # same layout rule), so the vector is the same everywhere. See writer_header().
                data = assemble_file(*split_file(data), compress=zlib_fixed, minor=1)
        if v.expect is not None:
            v.expect(header_doc(data)[0], data)
        _BUILT[v.name] = data
    return _BUILT[v.name]


def write_valid(v: Valid, compact_header: bool) -> bytes:
    """The vector's tensors in the recorded form through dcformat's writer."""
    rans = {"rans": True} if v.coder == "rans" else {}  # the 1.0-1.3 vectors are written as they always were
    tables, encoded = codec.assemble([draft(t, v.mode, v.header_cost) for t in v.tensors], v.mode, v.block_size,
                                     header_cost=v.header_cost, **rans)
    f = io.BytesIO()
    container.write_stream(f, v.metadata, tables, encoded, compact_header=compact_header)
    return f.getvalue()


def writer_header(v: Valid) -> dict[str, Any]:
    """What dcformat's writer itself stores as the compressed header of a vector (zlib level 9 of the
    local zlib): recorded with the zlib version, so that the re-encode test can compare the header
    bytes exactly where the zlib is the same (elsewhere it compares the decompressed text)."""
    data = write_valid(v, compact_header=True)
    n = struct.unpack_from("<Q", data, 16)[0]
    assert data[32] == 0x78, f"{v.name}: compression does not pay, the writer would not compress this header"
    return {"zlib": zlib.ZLIB_RUNTIME_VERSION, "header_length": n, "header_crc32": zlib.crc32(data[32 : 32 + n])}


def expected_arrays(v: Valid) -> list[np.ndarray]:
    return v.expected() if v.expected is not None else [t.array for t in v.tensors]


# ------------------------------------------------------------------------------------------------
# File surgery (pure struct/json/zlib, independent of dcformat's writer)


def align64(x: int) -> int:
    return (x + 63) // 64 * 64


def sec() -> dict:
    """A section object to be filled in by assemble_file."""
    return {"offset": 0, "length": 0, "crc32": 0}


def fixed() -> dict:
    return {"coding": "fixed", "section": sec()}


def pack(values: list[int], width: int) -> bytes:
    """Fixed-width values, each LSB first, into bytes (spec §1, §6.1)."""
    bits = [(v >> i) & 1 for v in values for i in range(width)]
    return bits_to_bytes(bits)


def pack_codes(symbols: list[int], codes: dict[int, tuple[int, int]]) -> bytes:
    """Huffman codewords (length, code), each most significant code bit first, into one block (spec §6.3)."""
    bits = [(code >> (length - 1 - i)) & 1 for s in symbols for length, code in [codes[s]] for i in range(length)]
    return bits_to_bytes(bits)


def bits_to_bytes(bits: list[int]) -> bytes:
    """Bits in stream order, packed LSB first, the last byte padded with zeros."""
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        out[i // 8] |= b << (i % 8)
    return bytes(out)


def compact(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def header_doc(data: bytes) -> tuple[dict, int]:
    """The header document (a zlib header decompressed, spec §2.2) and the header length."""
    n = struct.unpack_from("<Q", data, 16)[0]
    raw = data[32 : 32 + n]
    return json.loads(zlib.decompress(raw.rstrip(b" ")) if raw[0] == 0x78 else raw), n


def section_objects(doc: dict) -> list[dict]:
    """The section objects of a header, in file order (spec §4)."""
    out = []
    for t in doc["tensors"]:
        if "chunks" in t:  # format 1.2, fields (§5.4): chunk by chunk, field by field
            out += [s["section"] for chunk in t["chunks"] for s in chunk]
            continue
        for key in SECTION_ORDER:
            if key in t:
                out.append(t[key]["section"] if key in STREAM_KEYS else t[key])
    return out


def split_file(data: bytes) -> tuple[dict, list[bytes]]:
    """A file's header document and its sections' payloads in file order."""
    doc, _ = header_doc(data)
    return doc, [data[s["offset"] : s["offset"] + s["length"]] for s in section_objects(doc)]


def assemble_file(doc: dict, payloads: list[bytes], *, dumps: Callable[[dict], str] = compact, pad: bytes = b" ",
                  extra_pad: int = 0, place: Callable[[int, int], int] | None = None,
                  compress: Callable[[bytes], bytes] | None = None, minor: int = 0) -> bytes:
    """A file from a header document and payloads: offsets, lengths and CRCs filled in, sections placed by
    `place(i, end)` (default: the next multiple of 64), the JSON text padded with `pad`. With `compress`,
    the header region holds compress(JSON text) (spec §2.2), laid out as dcformat's writer does: the data
    start never moves back while iterating, then the smaller start is kept if the stream fits it."""
    slots = section_objects(doc)
    assert len(slots) == len(payloads)
    place = place or (lambda i, end: align64(end))

    def layout(data_start: int) -> tuple[bytes, int]:
        end = max(data_start, 0)
        for i, (s, p) in enumerate(zip(slots, payloads)):
            s["offset"], s["length"], s["crc32"] = place(i, end), len(p), zlib.crc32(p)
            end = s["offset"] + len(p)
        text = dumps(doc).encode("utf-8")
        return (compress(text) if compress else text), end

    data_start = -1
    for _ in range(32):
        text, end = layout(data_start)
        start = align64(32 + len(text)) + extra_pad
        if start == data_start or (compress and start < data_start):
            if compress and start < data_start and align64(32 + len(layout(start)[0])) + extra_pad <= start:
                data_start = start
            text, end = layout(data_start)
            break
        data_start = max(start, data_start) if compress else start
    else:
        raise AssertionError("layout did not converge")
    out = bytearray(end)
    header = text + pad * (data_start - 32 - len(text))
    out[0:32] = struct.pack("<8sHHIQQ", b"\x89DCF\r\n\x1a\n", 1, minor, zlib.crc32(header), len(header), end)
    out[32:data_start] = header
    for s, p in zip(slots, payloads):
        out[s["offset"] : s["offset"] + len(p)] = p
    return bytes(out)


# ------------------------------------------------------------------------------------------------
# zlib streams (RFC 1950, deflate RFC 1951) written here, not by the zlib library: its output differs
# between builds (zlib, zlib-ng, ...), and the vectors must be the same bytes everywhere.


class BitWriter:
    """Deflate's bit order (RFC 1951 §3.1.1): fields least significant bit first, Huffman codes most
    significant bit first, packed from the least significant bit of each byte."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.n = 0

    def bit(self, b: int) -> None:
        if self.n % 8 == 0:
            self.out.append(0)
        self.out[-1] |= b << (self.n % 8)
        self.n += 1

    def field(self, value: int, width: int) -> None:
        for i in range(width):
            self.bit((value >> i) & 1)

    def code(self, code: int, length: int) -> None:
        for i in reversed(range(length)):
            self.bit((code >> i) & 1)

    def zeros(self, count: int) -> None:
        while count and self.n % 8:
            self.bit(0)
            count -= 1
        self.out += bytes(count // 8)
        self.n += count - count % 8
        for _ in range(count % 8):
            self.bit(0)

    def align(self) -> None:
        self.n += -self.n % 8


LENGTH_BASE = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163,
               195, 227, 258]
LENGTH_EXTRA = [0] * 8 + [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
DIST_BASE = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049,
             3073, 4097, 6145, 8193, 12289, 16385, 24577]
DIST_EXTRA = [0, 0, 0, 0] + [i // 2 for i in range(2, 28)]


def fixed_literal(w: BitWriter, symbol: int) -> None:
    """A literal/length symbol in the fixed Huffman code (RFC 1951 §3.2.6)."""
    if symbol < 144:
        w.code(0x30 + symbol, 8)
    elif symbol < 256:
        w.code(0x190 + symbol - 144, 9)
    elif symbol < 280:
        w.code(symbol - 256, 7)
    else:
        w.code(0xC0 + symbol - 280, 8)


def fixed_block(w: BitWriter, data: bytes, final: bool) -> None:
    """One fixed-Huffman block: greedy LZ77 (the longest earlier match of 3..258 bytes within 32 KiB)."""
    w.field(int(final), 1)
    w.field(1, 2)
    heads: dict[bytes, list[int]] = {}
    i = 0
    while i < len(data):
        best_len, best_dist = 0, 0
        for j in reversed(heads.get(data[i : i + 3], [])[-64:]):
            if i - j > 32768:
                break
            n = 0
            while n < 258 and i + n < len(data) and data[j + n] == data[i + n]:
                n += 1
            if n > best_len:
                best_len, best_dist = n, i - j
        step = best_len if best_len >= 3 else 1
        if best_len >= 3:
            k = max(c for c in range(len(LENGTH_BASE)) if LENGTH_BASE[c] <= best_len)
            fixed_literal(w, 257 + k)
            w.field(best_len - LENGTH_BASE[k], LENGTH_EXTRA[k])
            d = max(c for c in range(len(DIST_BASE)) if DIST_BASE[c] <= best_dist)
            w.code(d, 5)
            w.field(best_dist - DIST_BASE[d], DIST_EXTRA[d])
        else:
            fixed_literal(w, data[i])
        for p in range(i, i + step):
            heads.setdefault(data[p : p + 3], []).append(p)
        i += step
    fixed_literal(w, 256)


def stored_block(w: BitWriter, data: bytes, final: bool) -> None:
    """One stored (uncompressed) block: header bits, byte alignment, LEN, NLEN, the bytes."""
    assert len(data) < 1 << 16
    w.field(int(final), 1)
    w.field(0, 2)
    w.align()
    w.out += struct.pack("<HH", len(data), len(data) ^ 0xFFFF) + data
    w.n += 32 + 8 * len(data)


def zlib_stream(data: bytes, w: BitWriter) -> bytes:
    """The zlib wrapper around a deflate stream: CMF 0x78 (deflate, 32 KiB window), FLG 0x01 (no preset
    dictionary, FCHECK making 0x7801 a multiple of 31), the deflate bytes, the Adler-32 of `data`."""
    return b"\x78\x01" + bytes(w.out) + struct.pack(">I", zlib.adler32(data))


def zlib_fixed(data: bytes) -> bytes:
    """`data` as a zlib stream of one fixed-Huffman block."""
    w = BitWriter()
    fixed_block(w, data, final=True)
    return zlib_stream(data, w)


def zlib_mixed(data: bytes, split: int = 100) -> bytes:
    """`data` as a zlib stream of two blocks: the first `split` bytes stored, the rest fixed-Huffman."""
    w = BitWriter()
    stored_block(w, data[:split], final=False)
    fixed_block(w, data[split:], final=True)
    return zlib_stream(data, w)


def zlib_bomb(spaces_matches: int, tail: bytes) -> tuple[bytes, int]:
    """A zlib stream of 1 + 258 x `spaces_matches` spaces, then `tail`; (stream, decompressed size).

    Deflate's densest form: a dynamic-Huffman block whose code gives the match (length 258, distance 1)
    one bit and its distance one bit, so every 258 bytes cost 2 bits (ratio about 1032:1). Its code
    lengths: literal/length alphabet (286 symbols) 32 (space) -> 2, 256 (end of block) -> 2, 285
    (length 258) -> 1; distance alphabet (1 symbol) 0 -> 1. They are sent with the code-length code
    18 -> 1 (a run of 11..138 zeros, 7 extra bits), 1 -> 2, 2 -> 2 (RFC 1951 §3.2.7). Then a final
    fixed-Huffman block holds `tail`.
    """
    w = BitWriter()
    w.field(0, 1)  # BFINAL 0
    w.field(2, 2)  # BTYPE 10: dynamic Huffman codes
    w.field(286 - 257, 5)  # HLIT
    w.field(1 - 1, 5)  # HDIST
    order = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]
    cl_lengths = {18: 1, 1: 2, 2: 2}
    count = order.index(1) + 1  # the last code-length symbol with a length
    w.field(count - 4, 4)  # HCLEN
    for sym in order[:count]:
        w.field(cl_lengths.get(sym, 0), 3)
    cl_code = {18: (0b0, 1), 1: (0b10, 2), 2: (0b11, 2)}  # canonical: 18 (length 1), then 1, 2 (length 2)

    def zeros(run: int) -> None:
        while run:
            n = min(run, 138)
            assert n >= 11
            w.code(*cl_code[18])
            w.field(n - 11, 7)
            run -= n

    zeros(32)  # literals 0..31
    w.code(*cl_code[2])  # 32, the space: length 2
    zeros(223)  # 33..255
    w.code(*cl_code[2])  # 256, end of block: length 2
    zeros(28)  # 257..284
    w.code(*cl_code[1])  # 285, length 258: length 1
    w.code(*cl_code[1])  # distance code 0 (distance 1): length 1
    # canonical codes: 285 -> 0, 32 -> 10, 256 -> 11; distance 0 -> 0
    w.code(0b10, 2)  # one space
    w.zeros(2 * spaces_matches)  # each match: code 0 (length 258, no extra bits) and distance code 0
    w.code(0b11, 2)  # end of block
    fixed_block(w, tail, final=True)
    size = 1 + 258 * spaces_matches + len(tail)
    adler = zlib.adler32(tail, _adler_of_spaces(size - len(tail)))
    return b"\x78\x01" + bytes(w.out) + struct.pack(">I", adler), size


def _adler_of_spaces(n: int) -> int:
    """Adler-32 (RFC 1950 §9) of n spaces, in closed form (no n-byte buffer)."""
    a = (1 + 32 * n) % 65521
    b = (n + 32 * n * (n + 1) // 2) % 65521
    return b << 16 | a


def with_preamble(data: bytes, **fields: Any) -> bytes:
    names = ["magic", "major", "minor", "header_crc", "header_length", "file_length"]
    values = dict(zip(names, struct.unpack_from("<8sHHIQQ", data)))
    values.update(fields)
    return struct.pack("<8sHHIQQ", *(values[k] for k in names)) + data[32:]


def with_header_text(data: bytes, edit: Callable[[bytes], bytes]) -> bytes:
    """The file with its JSON text edited (same header length, re-padded with spaces, CRC fixed)."""
    n = struct.unpack_from("<Q", data, 16)[0]
    text = edit(data[32 : 32 + n].rstrip(b" "))
    assert len(text) <= n, "the edited header must fit the old header length"
    header = text + b" " * (n - len(text))
    return with_preamble(data[:32] + header + data[32 + n :], header_crc=zlib.crc32(header))


def replace_once(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def edit(text: bytes) -> bytes:
        assert text.count(old) == 1, (old, text)
        return text.replace(old, new)

    return edit


def poke(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def minor_of(data: bytes) -> int:
    return struct.unpack_from("<H", data, 10)[0]


def with_doc(data: bytes, mutate: Callable[[dict], Any]) -> bytes:
    """The file re-assembled after `mutate(doc)` (payloads unchanged, CRCs and offsets recomputed; a JSON
    header, the version of `data` kept for files of 1.2 and later)."""
    doc, payloads = split_file(data)
    mutate(doc)
    return assemble_file(doc, payloads, minor=minor_of(data) if minor_of(data) >= 2 else 0)


def with_parts(data: bytes, edit: Callable[[dict, list[bytes]], Any]) -> bytes:
    """The file re-assembled after `edit(doc, payloads)` may change both (format 1.2 vectors: version kept)."""
    doc, payloads = split_file(data)
    edit(doc, payloads)
    return assemble_file(doc, payloads, minor=minor_of(data))


def with_field_payload(data: bytes, chunk: int, f: int, edit: Callable[[bytes], bytes]) -> bytes:
    """Tensor 0's stream `f` of chunk `chunk` (a fields tensor) edited, its CRC fixed, re-assembled."""
    def change(doc: dict, payloads: list[bytes]) -> None:
        slot = doc["tensors"][0]["chunks"][chunk][f]["section"]
        i = next(j for j, s in enumerate(section_objects(doc)) if s is slot)
        payloads[i] = edit(payloads[i])

    return with_parts(data, change)


def with_payload(data: bytes, tensor: int, key: str, edit: Callable[[bytes], bytes],
                 mutate: Callable[[dict], Any] | None = None) -> bytes:
    """The file with one section's payload edited (its CRC fixed), re-assembled."""
    doc, payloads = split_file(data)
    slot = doc["tensors"][tensor][key]
    slot = slot["section"] if key in ("gaps", "indices") else slot
    i = next(j for j, s in enumerate(section_objects(doc)) if s is slot)
    payloads[i] = edit(payloads[i])
    if mutate is not None:
        mutate(doc)
    return assemble_file(doc, payloads)


def set_bits(mask: int, at: int) -> Callable[[bytes], bytes]:
    """Edit: OR `mask` into byte `at` (negative: from the end)."""
    def edit(p: bytes) -> bytes:
        b = bytearray(p)
        assert b[at] & mask == 0
        b[at] |= mask
        return bytes(b)

    return edit


# ------------------------------------------------------------------------------------------------
# Invalid vectors: each a valid vector with exactly one rule broken


@dataclass
class Invalid:
    name: str
    error: str  # the error kind of spec §8.1 (a dcformat.errors class name)
    rule: str  # the spec section of the broken rule
    description: str
    make: Callable[[], bytes]


def V(name: str) -> bytes:
    return build_valid(VALID_BY_NAME[name])


def _v01() -> bytes:
    return V("01-spec-example")


def _bool_codebook() -> bytes:
    doc = {"metadata": {}, "tables": [], "tensors": [
        {"name": "b", "dtype": "bool", "shape": [3], "encoding": "shared", "bits": 1, "codebook": sec(), "indices": fixed()}]}
    return assemble_file(doc, [b"\x00\x01", pack([0, 1, 1], 1)])


def _entries_exceed_numel() -> bytes:
    doc, payloads = split_file(_v01())
    doc["tensors"][0]["entries"] = 17
    payloads[1] = pack([0] * 17, 2)
    payloads[2] = pack([0] * 17, 2)
    return assemble_file(doc, payloads)


def _set(path: list[Any], value: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        obj = doc
        for p in path[:-1]:
            obj = obj[p]
        obj[path[-1]] = value

    return mutate


def _delete(path: list[Any]) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        obj = doc
        for p in path[:-1]:
            obj = obj[p]
        del obj[path[-1]]

    return mutate


def _z01(compress: Callable[[bytes], bytes]) -> bytes:
    """Vector 01 with its JSON text stored as compress(text), in a version 1.1 file (zlib_fixed: vector 26)."""
    return assemble_file(*split_file(_v01()), compress=compress, minor=1)


def zlib_region(data: bytes) -> tuple[bytes, int]:
    """The zlib stream of a compressed header (without the padding after it) and the header length."""
    n = struct.unpack_from("<Q", data, 16)[0]
    inflater = zlib.decompressobj()
    inflater.decompress(data[32 : 32 + n])
    assert inflater.eof
    return data[32 : 32 + n - len(inflater.unused_data)], n


def with_zlib(data: bytes, edit: Callable[[bytes], bytes]) -> bytes:
    """The file with its header's zlib stream edited (same header length, re-padded, header CRC fixed)."""
    z, n = zlib_region(data)
    z = edit(z)
    assert len(z) <= n
    header = z + b" " * (n - len(z))
    return with_preamble(data[:32] + header + data[32 + n :], header_crc=zlib.crc32(header))


def _or_byte(at: int, mask: int) -> Callable[[bytes], bytes]:
    def edit(z: bytes) -> bytes:
        assert z[at] & mask == 0
        return z[:at] + bytes([z[at] | mask]) + z[at + 1 :]

    return edit


def _gzip(text: bytes) -> bytes:
    """A gzip member (RFC 1952): fixed header (no name, mtime 0, OS unknown), a fixed-Huffman block, CRC-32, size."""
    w = BitWriter()
    fixed_block(w, text, final=True)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + bytes(w.out) + struct.pack("<II", zlib.crc32(text), len(text))


def _truncated(text: bytes) -> bytes:
    """zlib_fixed(text) cut so that 32 + its length is a multiple of 64: the header ends with the cut."""
    z = zlib_fixed(text)
    keep = (32 + len(z)) // 64 * 64 - 32
    return z[: keep if keep < len(z) else keep - 64]


def _zlib_bomb() -> bytes:
    doc, payloads = split_file(V("02-empty-file"))
    tail = compact(doc).encode()  # the JSON text, behind more spaces than a reader's default limit allows
    matches = -(-(100_000_000 - len(tail)) // 258)
    return assemble_file(doc, payloads, compress=lambda t: zlib_bomb(matches, t)[0], minor=1)


def _crc_of_json() -> bytes:
    data = V("26-zlib-spec-example")
    doc, _ = header_doc(data)
    return with_preamble(data, header_crc=zlib.crc32(compact(doc).encode("utf-8")))


def _empty_v02() -> tuple[bytes, int]:
    data = V("02-empty-file")
    return data, struct.unpack_from("<Q", data, 16)[0]


def _unaligned_data_start() -> bytes:
    data, n = _empty_v02()
    header = data[32 : 32 + n - 1]
    return with_preamble(data[:32] + header, header_length=n - 1, file_length=32 + n - 1, header_crc=zlib.crc32(header))


def _header_past_end() -> bytes:
    data, n = _empty_v02()
    return with_preamble(data, header_length=n + 64)


def _huffman_block(edit: Callable[[bytes], bytes], delta: int) -> bytes:
    def fix(doc: dict) -> None:
        doc["tensors"][0]["indices"]["block_bytes"][-1] += delta

    return with_payload(V("20-huffman-spec-table"), 0, "indices", edit, fix)


def _drop_stream(doc: dict, payloads: list[bytes]) -> None:
    """Chunk 0 of tensor 0 loses its last stream (and that stream's payload)."""
    chunk = doc["tensors"][0]["chunks"][0]
    i = next(j for j, s in enumerate(section_objects(doc)) if s is chunk[-1]["section"])
    del chunk[-1], payloads[i]


def _drop_w_chunk(doc: dict, payloads: list[bytes]) -> None:
    """Tensor 0 (w) of vector 30 loses its last chunk and that chunk's payloads."""
    slots = section_objects(doc)
    gone = {id(s["section"]) for s in doc["tensors"][0]["chunks"][-1]}
    payloads[:] = [p for s, p in zip(slots, payloads) if id(s) not in gone]
    del doc["tensors"][0]["chunks"][-1]


def _flip_section(data: bytes) -> bytes:
    doc, _ = header_doc(data)
    s = doc["tensors"][0]["chunks"][0][0]["section"]
    return poke(data, s["offset"] + 4, bytes([data[s["offset"] + 4] ^ 0x01]))


def _padded_fixed_field() -> tuple[int, int]:
    """(chunk, field) of a fixed stream of vector 31's int8 tensor with padding bits in its last byte."""
    doc, _ = header_doc(V("31-fields-dtypes"))
    t = next(t for t in doc["tensors"] if t["name"] == "int8")
    assert doc["tensors"].index(t) == 5
    for c, chunk in enumerate(t["chunks"]):
        count = min(t["chunk_size"], 450 - c * t["chunk_size"])
        for f, (s, w) in enumerate(zip(chunk, t["fields"])):
            if s["coding"] == "fixed" and count * w % 8:
                return c, f
    raise AssertionError("no padded fixed stream")


def _int8_fields_only() -> bytes:
    """Vector 31 with only its int8 tensor (tensor 0 then), so that the field-stream edits below find it."""
    def keep(doc: dict, payloads: list[bytes]) -> None:
        slots = section_objects(doc)
        t = doc["tensors"][5]
        mine = {id(s["section"]) for c in t["chunks"] for s in c}
        payloads[:] = [p for s, p in zip(slots, payloads) if id(s) in mine]
        used = sorted({s["table"] for c in t["chunks"] for s in c if s["coding"] == "huffman"})
        for c in t["chunks"]:
            for s in c:
                if s["coding"] == "huffman":
                    s["table"] = used.index(s["table"])
        doc["tables"] = [doc["tables"][i] for i in used]
        doc["tensors"] = [t]

    return with_parts(V("31-fields-dtypes"), keep)


def _bool_fields() -> bytes:
    doc = {"metadata": {}, "tables": [], "tensors": [
        {"name": "b", "dtype": "bool", "shape": [3], "encoding": "fields", "fields": [8], "chunk_size": 4,
         "chunks": [[fixed()]]}]}
    return assemble_file(doc, [b"\x00\x01\x01"], minor=2)


def _short_block() -> bytes:
    """Vector 17's shared indices: block 0 listed with 12 bytes (< 100 symbols / 8), block 1 with the rest."""
    def fix(doc: dict) -> None:
        b = doc["tensors"][0]["indices"]["block_bytes"]
        moved = b[0] - 12
        assert moved > 0
        b[0], b[1] = 12, b[1] + moved

    return with_doc(V("17-huffman-blocks"), fix)


def _rans_table(text: str) -> bytes:
    """Vector 38 with its rans stream's frequency table replaced (its block and sections unchanged)."""
    return with_parts(V("38-rans-spec-example"), lambda d, p: d["tensors"][0]["indices"].update(frequencies=text))


def _rans_payload(data: bytes, tensor: int, edit: Callable[[bytes], bytes], block_bytes: list[int] | None = None) -> bytes:
    """A rans vector with tensor `tensor`'s indices payload edited (CRC fixed) and, if given, its block_bytes."""
    def change(doc: dict, payloads: list[bytes]) -> None:
        stream = doc["tensors"][tensor]["indices"]
        i = next(j for j, s in enumerate(section_objects(doc)) if s is stream["section"])
        payloads[i] = edit(payloads[i])
        if block_bytes is not None:
            stream["block_bytes"] = block_bytes

    return with_parts(data, change)


INVALID: list[Invalid] = [
    Invalid("01-bad-magic", "FormatError", "§2", "Magic \\x89dCF... (one letter changed).", lambda: poke(_v01(), 1, b"d")),
    Invalid("02-version-2", "VersionError", "§2.3", "version_major = 2.", lambda: with_preamble(_v01(), major=2)),
    Invalid("03-truncated", "TruncatedError", "§2", "The last byte of vector 01 removed (file_length says 578).",
            lambda: _v01()[:-1]),
    Invalid("04-trailing-byte", "FormatError", "§2", "One byte appended to vector 01 (file_length says 578).",
            lambda: _v01() + b"\x00"),
    Invalid("05-short-file", "TruncatedError", "§2", "The first 20 bytes of vector 01: shorter than the preamble.",
            lambda: _v01()[:20]),
    Invalid("06-header-length-zero", "FormatError", "§2", "A 32-byte file whose header_length is 0.",
            lambda: struct.pack("<8sHHIQQ", b"\x89DCF\r\n\x1a\n", 1, 0, 0, 0, 32)),
    Invalid("07-data-start-unaligned", "FormatError", "§2", "Vector 02 with one padding space removed: "
            "32 + header_length is not a multiple of 64.", _unaligned_data_start),
    Invalid("08-header-past-end", "TruncatedError", "§2", "header_length runs past the end of the file.",
            _header_past_end),
    Invalid("09-header-crc", "ChecksumError", "§2", "header_crc32 off by one bit.",
            lambda: with_preamble(_v01(), header_crc=struct.unpack_from("<I", _v01(), 12)[0] ^ 1)),
    Invalid("10-header-not-utf8", "HeaderError", "§3", "The tensor name is the byte 0xFF (not UTF-8).",
            lambda: with_header_text(_v01(), replace_once(b'"name":"w"', b'"name":"\xff"'))),
    Invalid("11-header-bom", "HeaderError", "§3", "The JSON text starts with a UTF-8 byte-order mark.",
            lambda: with_header_text(_v01(), lambda t: b"\xef\xbb\xbf" + t)),
    Invalid("12-json-nan", "HeaderError", "§3", "\"fillers\": NaN (not JSON).",
            lambda: with_header_text(_v01(), replace_once(b'"fillers":3', b'"fillers":NaN'))),
    Invalid("13-duplicate-key", "HeaderError", "§3", "The tensor object has \"dtype\" twice.",
            lambda: with_header_text(_v01(), replace_once(b'"dtype":"float32",', b'"dtype":"float32","dtype":"float32",'))),
    Invalid("14-unknown-key", "HeaderError", "§3.4", "The tensor object has an unknown key \"comment\".",
            lambda: with_doc(_v01(), _set(["tensors", 0, "comment"], "x"))),
    Invalid("15-unknown-coding", "HeaderError", "§3.4", "A stream's coding is \"rans\".",
            lambda: with_doc(_v01(), _set(["tensors", 0, "gaps", "coding"], "rans"))),
    Invalid("16-missing-key", "HeaderError", "§3.1", "The sparse tensor lacks \"fillers\".",
            lambda: with_doc(_v01(), _delete(["tensors", 0, "fillers"]))),
    Invalid("17-non-integer", "HeaderError", "§3", "\"entries\": 5.0 (a number with a fraction).",
            lambda: with_header_text(_v01(), replace_once(b'"entries":5', b'"entries":5.0'))),
    Invalid("18-duplicate-name", "HeaderError", "§3", "Two tensors named \"m_csc\" (vector 12).",
            lambda: with_doc(V("12-csc"), _set(["tensors", 2, "name"], "m_csc"))),
    Invalid("19-unpaired-surrogate", "HeaderError", "§3", "The tensor name is the escape \\ud800 (not a Unicode "
            "scalar value).", lambda: with_header_text(_v01(), replace_once(b'"name":"w"', b'"name":"\\ud800"'))),
    Invalid("20-bool-codebook", "HeaderError", "§5.2", "A shared bool tensor (codebook [0x00, 0x01]).", _bool_codebook),
    Invalid("21-misaligned-section", "FormatError", "§4", "Vector 01's gaps section starts right after the "
            "codebook (offset 460, not a multiple of 64).", lambda: assemble_file(
                *split_file(_v01()), place=lambda i, end: end if i == 1 else align64(end))),
    Invalid("22-hole", "FormatError", "§4", "Vector 01's gaps section starts 64 bytes later than it must (a hole "
            "of zeros).", lambda: assemble_file(*split_file(_v01()), place=lambda i, end: align64(end) + (64 if i == 1 else 0))),
    Invalid("23-nonzero-padding", "FormatError", "§4", "A padding byte between two sections is 0x01.",
            lambda: poke(_v01(), 460, b"\x01")),
    Invalid("24-bytes-after-sections", "FormatError", "§4", "64 zero bytes after the last section, file_length "
            "counting them.", lambda: with_preamble(_v01() + bytes(64), file_length=len(_v01()) + 64)),
    Invalid("25-raw-length", "FormatError", "§5.1", "A raw float32 tensor of shape [4] whose data is 12 bytes.",
            lambda: with_doc(V("03-metadata"), _set(["tensors", 0, "shape"], [4]))),
    Invalid("26-fixed-length", "FormatError", "§6.1", "A fixed-width gaps stream one byte longer than "
            "ceil(5 x 2 / 8).", lambda: with_payload(_v01(), 0, "gaps", lambda p: p + b"\x00")),
    Invalid("27-entries-exceed-numel", "FormatError", "§5.3", "entries = 17 in a 4x4 tensor (streams sized to "
            "match).", _entries_exceed_numel),
    Invalid("28-codebook-too-large", "FormatError", "§5.3", "A 5-value codebook with bits = 2.",
            lambda: with_payload(_v01(), 0, "codebook", lambda p: p + np.array([1, 2], np.float32).tobytes())),
    Invalid("29-block-count", "FormatError", "§6.3", "block_bytes lists one block more than the stream has.",
            lambda: with_doc(V("20-huffman-spec-table"), lambda d: d["tensors"][0]["indices"]["block_bytes"].append(0))),
    Invalid("30-section-crc", "ChecksumError", "§3.3", "One bit of vector 01's indices section flipped.",
            lambda: poke(_v01(), 576, b"\x09")),
    Invalid("31-table-oversubscribed", "HuffmanTableError", "§6.2", "Table \"1331\": Kraft sum 5/4.",
            lambda: with_doc(V("20-huffman-spec-table"), _set(["tables", 0], "1331"))),
    Invalid("32-table-incomplete", "HuffmanTableError", "§6.2", "Table \"1333\": Kraft sum 7/8.",
            lambda: with_doc(V("20-huffman-spec-table"), _set(["tables", 0], "1333"))),
    Invalid("33-table-lone-length-2", "HuffmanTableError", "§6.2", "Table \"0002\": a lone symbol with code length 2.",
            lambda: with_doc(V("15-huffman-one-symbol"), lambda d: d["tables"].__setitem__(d["tables"].index("0001"), "0002"))),
    Invalid("34-table-longer-than-alphabet", "HuffmanTableError", "§6.2", "Table \"13320\" (5 digits) used by an "
            "indices stream whose codebook holds 4 values.",
            lambda: with_doc(V("20-huffman-spec-table"), _set(["tables", 0], "13320"))),
    Invalid("35-table-uppercase", "HuffmanTableError", "§6.2", "Vector 19's table in uppercase hex.",
            lambda: with_doc(V("19-huffman-max-length"), lambda d: d["tables"].__setitem__(0, d["tables"][0].upper()))),
    Invalid("36-one-symbol-codeword-1", "CorruptDataError", "§6.2", "A one-symbol stream (table \"0001\") holding "
            "the codeword 1.", lambda: with_payload(V("15-huffman-one-symbol"), 0, "indices", set_bits(0x01, 0))),
    Invalid("37-huffman-padding", "CorruptDataError", "§6.3", "A padding bit of the last Huffman block is 1.",
            lambda: with_payload(V("20-huffman-spec-table"), 0, "indices", set_bits(0x80, -1))),
    Invalid("38-huffman-out-of-bits", "CorruptDataError", "§6.3", "The last byte of a Huffman block removed "
            "(block_bytes and the section shortened to match).", lambda: _huffman_block(lambda p: p[:-1], -1)),
    Invalid("39-huffman-leftover", "CorruptDataError", "§6.3", "A zero byte appended to a Huffman block "
            "(block_bytes and the section lengthened to match): 15 bits left over (the block's 7 padding bits "
            "and the added byte).",
            lambda: _huffman_block(lambda p: p + b"\x00", +1)),
    Invalid("40-fixed-padding", "CorruptDataError", "§6.1", "The top padding bit of vector 01's gaps stream is 1.",
            lambda: with_payload(_v01(), 0, "gaps", set_bits(0x80, 1))),
    Invalid("41-gap-past-end", "CorruptDataError", "§5.3", "Vector 01's last gap is 1, not 0: position 16 in a "
            "4x4 tensor.", lambda: with_payload(_v01(), 0, "gaps", set_bits(0x01, 1))),
    Invalid("42-codebook-index-out-of-range", "CorruptDataError", "§6.1", "Vector 01's last codebook index is 3; "
            "the codebook holds 3 values.", lambda: with_payload(_v01(), 0, "indices", set_bits(0x02, 1))),
    Invalid("43-bool-byte-2", "CorruptDataError", "§3.2", "A raw bool element stored as the byte 0x02.",
            lambda: with_payload(V("05-raw-ints-bool"), 8, "data", set_bits(0x02, 1))),
    Invalid("44-sparse-bool-byte-2", "CorruptDataError", "§3.2", "A sparse bool value stored as the byte 0x03 "
            "(not 0x02, as the file name says: bit 1 is set in a value that was 0x01).",
            lambda: with_payload(V("13-sparse-values-special"), 4, "values", set_bits(0x02, 0))),
    Invalid("45-sparse-codebook-zero", "CorruptDataError", "§5.3", "Vector 01 with codebook[0] = 7.0: a sparse "
            "codebook must start with all zero bits.",
            lambda: with_payload(_v01(), 0, "codebook", lambda p: np.float32(7).tobytes() + p[4:])),
    Invalid("46-decompression-bomb", "LimitError", "§7", "Vector 07 with its tensor sparse_5_0 (float32, "
            "sparse with raw values, no entries) given the shape [65536, 65536]: 16 GiB from a 1,536-byte file. "
            "Valid by the format; refused by the default limit (D = 1 GiB for this file), read by a reader "
            "whose limit allows 16 GiB.",
            lambda: with_doc(V("07-empty-tensors"), _set(["tensors", 3, "shape"], [65536, 65536]))),
    Invalid("47-fillers-exceed-entries", "HeaderError", "§5.3", "fillers = 6 > entries = 5.",
            lambda: with_doc(_v01(), _set(["tensors", 0, "fillers"], 6))),
    Invalid("48-table-index-out-of-range", "HeaderError", "§6", "A stream refers to table 1; the file has one "
            "table.", lambda: with_doc(V("20-huffman-spec-table"), _set(["tensors", 0, "indices", "table"], 1))),
    # format 1.1: compressed headers (spec §2.2)
    Invalid("49-header-gzip", "HeaderError", "§2.2", "Vector 01's JSON as a gzip stream (first byte 0x1F): a "
            "header starts with '{', JSON whitespace or 0x78, nothing else.", lambda: _z01(compress=_gzip)),
    Invalid("50-zlib-small-window", "HeaderError", "§2.2", "A zlib stream with an 8 KiB window (CMF 0x58, FLG "
            "0x09): valid RFC 1950, but a compressed header's first byte is 0x78.",
            lambda: _z01(compress=lambda t: b"\x58\x09" + zlib_fixed(t)[2:])),
    Invalid("51-zlib-corrupt-deflate", "HeaderError", "§2.2", "The first deflate block of vector 26's header has "
            "the reserved block type 3.", lambda: with_zlib(V("26-zlib-spec-example"), _or_byte(2, 0x04))),
    Invalid("52-zlib-truncated", "HeaderError", "§2.2", "Vector 01's header as a zlib stream cut short (its end "
            "and Adler-32 missing); header_length ends where the cut stream ends.",
            lambda: _z01(compress=_truncated)),
    Invalid("53-zlib-bad-adler", "HeaderError", "§2.2", "The Adler-32 at the end of vector 26's zlib header is "
            "off by one bit.", lambda: with_zlib(V("26-zlib-spec-example"), lambda z: z[:-1] + bytes([z[-1] ^ 1]))),
    Invalid("54-zlib-trailing-garbage", "HeaderError", "§2.2", "The bytes {} follow the zlib stream in the "
            "header region (then spaces): only spaces may.", lambda: _z01(compress=lambda t: zlib_fixed(t) + b"{}")),
    Invalid("55-zlib-bomb", "LimitError", "§7", "Vector 02 (no tensors) whose header decompresses to "
            "100,000,067 bytes (100 MB of spaces before the JSON) from 97 kB: over the default limit of "
            "100,000,000 bytes, which bounds the decompressed header.", _zlib_bomb),
    Invalid("56-zlib-in-version-1.0", "HeaderError", "§2.3", "Vector 26 labelled version 1.0: a compressed "
            "header needs 1.1.", lambda: with_preamble(V("26-zlib-spec-example"), minor=0)),
    Invalid("57-zlib-preset-dictionary", "HeaderError", "§2.2", "A zlib stream with FDICT set (FLG 0x20, "
            "dictionary id 1): a compressed header has no preset dictionary.",
            lambda: _z01(compress=lambda t: b"\x78\x20\x00\x00\x00\x01" + zlib_fixed(t)[2:])),
    Invalid("58-zlib-nested", "HeaderError", "§2.2", "The header decompresses to another zlib stream (of vector "
            "01's JSON): the decompressed header is JSON text, never decompressed again.",
            lambda: _z01(compress=lambda t: zlib_fixed(zlib_fixed(t)))),
    Invalid("59-zlib-json-bom", "HeaderError", "§3", "The decompressed header starts with a UTF-8 byte-order "
            "mark: the text inside a zlib stream follows every rule of §3.",
            lambda: _z01(compress=lambda t: zlib_fixed(b"\xef\xbb\xbf" + t))),
    Invalid("60-zlib-crc-of-json", "ChecksumError", "§2.1", "Vector 26 whose header_crc32 is the CRC-32 of the "
            "decompressed JSON text: the CRC-32 covers the stored header bytes.", _crc_of_json),
    # format 1.2: the fields encoding, the float8 dtypes (spec §5.4, §3.2) and a §6.3 check no vector covered
    Invalid("61-fields-width-sum", "HeaderError", "§5.4", "Vector 29's fields [10, 5]: 15 bits for a 16-bit "
            "element.", lambda: with_doc(V("29-fields-spec-example"), _set(["tensors", 0, "fields"], [10, 5]))),
    Invalid("62-fields-width-17", "HeaderError", "§5.4", "Vector 31's uint32 fields [1, 15, 16] as [17, 15]: "
            "a field has at most 16 bits.",
            lambda: with_doc(V("31-fields-dtypes"), _set(["tensors", 7, "fields"], [17, 15]))),
    Invalid("63-fields-width-0", "HeaderError", "§5.4", "Vector 29's fields [10, 6] as [0, 10, 6], a third "
            "stream added to its chunk.", lambda: with_parts(V("29-fields-spec-example"), lambda d, p: (
                d["tensors"][0].update(fields=[0, 10, 6]), d["tensors"][0]["chunks"][0].insert(0, fixed()),
                p.insert(0, b"")))),
    Invalid("64-fields-chunk-count", "FormatError", "§5.4", "Vector 30's tensor w lists 2 chunks (its 2,500 "
            "elements in chunks of 1,024 make 3); the last chunk's sections removed.",
            lambda: with_parts(V("30-fields-float32"), _drop_w_chunk)),
    Invalid("65-fields-stream-count", "FormatError", "§5.4", "Vector 29's chunk lists 1 stream for 2 fields.",
            lambda: with_parts(V("29-fields-spec-example"), _drop_stream)),
    Invalid("66-fields-chunk-size-0", "HeaderError", "§5.4", "Vector 29 with chunk_size 0.",
            lambda: with_doc(V("29-fields-spec-example"), _set(["tensors", 0, "chunk_size"], 0))),
    Invalid("67-fields-in-version-1.1", "HeaderError", "§2.3", "Vector 29 labelled version 1.1: the fields "
            "encoding needs 1.2.", lambda: with_preamble(V("29-fields-spec-example"), minor=1)),
    Invalid("68-float8-in-version-1.1", "HeaderError", "§2.3", "Vector 32 labelled version 1.1: the float8 dtypes "
            "need 1.2.", lambda: with_preamble(V("32-float8-raw"), minor=1)),
    Invalid("69-fields-bool", "HeaderError", "§5.4", "A bool tensor in fields [8].", _bool_fields),
    Invalid("70-fields-fixed-length", "FormatError", "§6.1", "Vector 29's fixed-width mantissa stream one byte "
            "longer than 4 symbols x 10 bits need.",
            lambda: with_field_payload(V("29-fields-spec-example"), 0, 0, lambda p: p + b"\x00")),
    Invalid("71-fields-fixed-padding", "CorruptDataError", "§6.1", "A padding bit of a fixed-width field stream "
            "(vector 31's int8 tensor alone) is 1.",
            lambda: with_field_payload(_int8_fields_only(), *_padded_fixed_field(), set_bits(0x80, -1))),
    Invalid("72-fields-table-past-alphabet", "HuffmanTableError", "§6.2", "Vector 29's table with 16 more 0 "
            "digits: 65 symbols for a 6-bit field (alphabet 64).",
            lambda: with_doc(V("29-fields-spec-example"), lambda d: d["tables"].__setitem__(0, d["tables"][0] + "0" * 16))),
    Invalid("73-fields-huffman-padding", "CorruptDataError", "§6.3", "The top padding bit of vector 29's sign + "
            "exponent stream (0x1C -> 0x9C) is 1.",
            lambda: with_field_payload(V("29-fields-spec-example"), 0, 1, set_bits(0x80, 0))),
    Invalid("74-fields-section-crc", "ChecksumError", "§3.3", "One bit of vector 29's mantissa section flipped "
            "(its CRC-32 unchanged).", lambda: _flip_section(V("29-fields-spec-example"))),
    Invalid("75-newer-minor-unknown-encoding", "HeaderError", "§2.3", "Vector 29 labelled version 1.3 with its "
            "encoding renamed \"planes\": for a 1.2 reader content it does not know in a newer minor version "
            "(VersionError, as this vector listed before format 1.3); for a 1.3 reader an unknown encoding in its "
            "own version (HeaderError, §3.4). Vector 85 is the same file labelled 1.4.",
            lambda: with_preamble(with_doc(V("29-fields-spec-example"),
                                           _set(["tensors", 0, "encoding"], "planes")), minor=3)),
    Invalid("76-huffman-block-too-short", "FormatError", "§6.3", "Vector 17's shared indices with block 0 listed "
            "as 12 bytes (96 bits for its 100 symbols) and block 1 lengthened to keep the sum.", _short_block),
    # format 1.3: row scales (spec §5.2)
    Invalid("77-row-scales-partial-keys", "HeaderError", "§5.2", "Vector 33 without its scale_bits key: the "
            "three row-scale keys come all together or not at all.",
            lambda: with_doc(V("33-row-scales-spec-example"), lambda d: d["tensors"][0].pop("scale_bits"))),
    Invalid("78-row-scales-more-than-2-bits", "FormatError", "§5.2", "Vector 33 with scale_bits 1: its 3 scales "
            "are more than 2^1.",
            lambda: with_doc(V("33-row-scales-spec-example"), _set(["tensors", 0, "scale_bits"], 1))),
    Invalid("79-row-scales-length", "FormatError", "§5.2", "Vector 33's scales section 14 bytes long: not a "
            "whole number of float32 values.",
            lambda: with_parts(V("33-row-scales-spec-example"), lambda d, p: p.__setitem__(1, p[1] + b"\x00\x00"))),
    Invalid("80-row-scales-symbol-past-m", "CorruptDataError", "§5.2", "Vector 33's row_scales byte 0x12 -> 0x13: "
            "row 0 uses scale 3 of 3 (0..2).",
            lambda: with_parts(V("33-row-scales-spec-example"), lambda d, p: p.__setitem__(2, b"\x13"))),
    Invalid("81-row-scales-infinite-scale", "CorruptDataError", "§5.2", "Vector 33's scale 2 (3.0) is +inf: with "
            "row scales every scale must be finite.",
            lambda: with_parts(V("33-row-scales-spec-example"),
                               lambda d, p: p.__setitem__(1, p[1][:8] + b"\x00\x00\x80\x7f"))),
    Invalid("82-row-scales-nan-codebook", "CorruptDataError", "§5.2", "Vector 33's codebook[0] (-1.0) is a NaN: "
            "with row scales every codebook value must be finite.",
            lambda: with_parts(V("33-row-scales-spec-example"),
                               lambda d, p: p.__setitem__(0, b"\x00\x00\xc0\x7f" + p[0][4:]))),
    Invalid("83-row-scales-float16", "HeaderError", "§5.2", "Vector 33 with dtype float16 (its sections "
            "unchanged): row scales are only for float32 and float64 tensors.",
            lambda: with_doc(V("33-row-scales-spec-example"), _set(["tensors", 0, "dtype"], "float16"))),
    Invalid("84-row-scales-bfloat16", "HeaderError", "§5.2", "Vector 33 with dtype bfloat16 (its sections "
            "unchanged): row scales are only for float32 and float64 tensors.",
            lambda: with_doc(V("33-row-scales-spec-example"), _set(["tensors", 0, "dtype"], "bfloat16"))),
    Invalid("85-newer-minor-unknown-encoding", "HeaderError", "§2.3", "Vector 75 labelled version 1.4 (vector "
            "29 with its encoding renamed \"planes\"): for a 1.3 reader content it does not know in a newer minor "
            "version (VersionError, as this vector listed before format 1.4); for a 1.4 reader an unknown encoding "
            "in its own version (HeaderError, §3.4). Vector 107 is the same file labelled 1.5.", lambda: with_preamble(with_doc(V("29-fields-spec-example"),
                                                       _set(["tensors", 0, "encoding"], "planes")), minor=4)),
    Invalid("86-row-scales-in-version-1.2", "HeaderError", "§2.3", "Vector 33 labelled version 1.2: row scales "
            "need 1.3 (to a 1.2 reader, unknown keys).",
            lambda: with_preamble(V("33-row-scales-spec-example"), minor=2)),
    Invalid("87-newer-minor-unknown-key", "HeaderError", "§2.3", "Vector 33 labelled version 1.4 with a tensor "
            "key \"row_offsets\": for a 1.3 reader unknown content in a newer minor version (VersionError, as this "
            "vector listed before format 1.4); for a 1.4 reader an unknown key in its own version (HeaderError, "
            "§3.4). Vector 108 is the same file labelled 1.5.",
            lambda: with_preamble(with_doc(V("33-row-scales-spec-example"),
                                           _set(["tensors", 0, "row_offsets"], 0)), minor=4)),
    Invalid("88-row-scales-fixed-length", "FormatError", "§6.1", "Vector 33's fixed-width row_scales section "
            "one byte longer than 3 symbols x 2 bits need.",
            lambda: with_parts(V("33-row-scales-spec-example"), lambda d, p: p.__setitem__(2, p[2] + b"\x00"))),
    # format 1.4: rans streams (spec §6.4)
    Invalid("89-rans-sum", "FrequencyTableError", "§6.4", "Vector 38's table \"7fe000100011\": the frequencies "
            "add up to 32769.", lambda: _rans_table("7fe000100011")),
    Invalid("90-rans-digits-not-multiple-of-4", "FrequencyTableError", "§6.4", "Vector 38's table with a 0 digit "
            "appended: 13 digits, not whole groups of 4.", lambda: _rans_table("7fe0001000100")),
    Invalid("91-rans-uppercase", "FrequencyTableError", "§6.4", "Vector 38's table in uppercase hex: "
            "\"7FE000100010\".", lambda: _rans_table("7FE000100010")),
    Invalid("92-rans-non-hex", "FrequencyTableError", "§6.4", "Vector 38's table with its last digit 'g': "
            "\"7fe00010001g\".", lambda: _rans_table("7fe00010001g")),
    Invalid("93-rans-empty-table", "FrequencyTableError", "§6.4", "Vector 38's table empty (0 digits).",
            lambda: _rans_table("")),
    Invalid("94-rans-table-past-alphabet", "FrequencyTableError", "§6.4", "Vector 38's table with a zero group "
            "appended: 4 groups (adding up to 2^15) for an indices stream whose codebook holds 3 values.",
            lambda: _rans_table("7fe0001000100000")),
    Invalid("95-rans-block-not-words", "FormatError", "§6.4", "Vector 38's block with a zero byte appended "
            "(block_bytes [13], the section 13 bytes): not a state and whole 4-byte words.",
            lambda: _rans_payload(V("38-rans-spec-example"), 0, lambda p: p + b"\x00", [13])),
    Invalid("96-rans-block-under-8-bytes", "FormatError", "§6.4", "Vector 44's one-symbol stream listed as "
            "blocks of 4, 12 and 8 bytes (the sum unchanged): a block is at least its 8-byte state.",
            lambda: _rans_payload(V("44-rans-reader-latitude"), 3, lambda p: p, [4, 12, 8])),
    Invalid("97-rans-block-count", "FormatError", "§6.4", "Vector 44's one-symbol stream (300 symbols in blocks "
            "of 100) listing 2 blocks of 16 and 8 bytes, not 3.",
            lambda: _rans_payload(V("44-rans-reader-latitude"), 3, lambda p: p, [16, 8])),
    Invalid("98-rans-block-sum", "FormatError", "§6.4", "Vector 38's section with a zero word appended, "
            "block_bytes still [12]: the blocks do not add up to the section.",
            lambda: _rans_payload(V("38-rans-spec-example"), 0, lambda p: p + bytes(4), [12])),
    Invalid("99-rans-state-below-2-31", "CorruptDataError", "§6.4", "Vector 38's initial state 0x7fffffff: below "
            "2^31.", lambda: _rans_payload(V("38-rans-spec-example"), 0,
                                           lambda p: (2**31 - 1).to_bytes(8, "little") + p[8:])),
    Invalid("100-rans-state-2-63", "CorruptDataError", "§6.4", "Vector 38's initial state with bit 63 set "
            "(0x80000001_00807fe6): not below 2^63.", lambda: _rans_payload(V("38-rans-spec-example"), 0,
                                                                            set_bits(0x80, 7))),
    Invalid("101-rans-out-of-words", "CorruptDataError", "§6.4", "Vector 38's block without its word (8 bytes, "
            "block_bytes and the section shortened): the first symbol needs a word the block does not have.",
            lambda: _rans_payload(V("38-rans-spec-example"), 0, lambda p: p[:8], [8])),
    Invalid("102-rans-words-left-over", "CorruptDataError", "§6.4", "Vector 38's block with a zero word appended "
            "(16 bytes, block_bytes and the section lengthened): a word is left after the last symbol.",
            lambda: _rans_payload(V("38-rans-spec-example"), 0, lambda p: p + bytes(4), [16])),
    Invalid("103-rans-final-state", "CorruptDataError", "§6.4", "Vector 38's word 0x06020070 -> 0x06020071: the "
            "block still decodes to 1 0 2 0 1 with every word read, but ends in the state 2^31 + 1.",
            lambda: _rans_payload(V("38-rans-spec-example"), 0, set_bits(0x01, 8))),
    Invalid("104-rans-missing-frequencies", "HeaderError", "§6.4", "Vector 38's rans stream without its "
            "\"frequencies\" key.", lambda: with_parts(V("38-rans-spec-example"),
                                                        lambda d, p: d["tensors"][0]["indices"].pop("frequencies"))),
    Invalid("105-rans-table-key", "HeaderError", "§6.4", "Vector 38's rans stream with a Huffman stream's "
            "\"table\": 0 key besides its own.", lambda: with_parts(V("38-rans-spec-example"),
                                                                     lambda d, p: d["tensors"][0]["indices"].update(table=0))),
    Invalid("106-rans-in-version-1.3", "HeaderError", "§2.3", "Vector 38 labelled version 1.3: the rans coding "
            "needs 1.4 (to a 1.3 reader, an unknown coding).",
            lambda: with_preamble(V("38-rans-spec-example"), minor=3)),
    Invalid("107-newer-minor-unknown-encoding", "VersionError", "§2.3", "Vector 85 labelled version 1.5 (vector 29 "
            "with its encoding renamed \"planes\"): content a 1.4 reader does not know, in a newer minor version.",
            lambda: with_preamble(with_doc(V("29-fields-spec-example"),
                                           _set(["tensors", 0, "encoding"], "planes")), minor=5)),
    Invalid("108-newer-minor-unknown-key", "VersionError", "§2.3", "Vector 87 labelled version 1.5 (vector 33 with a "
            "tensor key \"row_offsets\"): unknown content in a newer minor version.",
            lambda: with_preamble(with_doc(V("33-row-scales-spec-example"),
                                           _set(["tensors", 0, "row_offsets"], 0)), minor=5)),
    Invalid("109-rans-class-tables-count", "HeaderError", "§6.4", "Vector 46 with its last class table dropped: "
            "2 tables for 3 row scales.", lambda: with_parts(V("46-rans-class-tables"),
                                                             lambda d, p: d["tensors"][0]["indices"]["frequencies"].pop())),
    Invalid("110-rans-class-tables-elsewhere", "HeaderError", "§6.4", "Vector 39's rans indices (a shared tensor "
            "without row scales) with their table given as an array of one table.",
            lambda: with_parts(V("39-rans-shared"), lambda d, p: d["tensors"][0]["indices"].update(
                frequencies=[d["tensors"][0]["indices"]["frequencies"]]))),
    Invalid("111-rans-class-table-sum", "FrequencyTableError", "§6.4", "Vector 46 with class table 1 replaced by "
            "\"4000\": frequencies adding up to 16384.", lambda: with_parts(
                V("46-rans-class-tables"), lambda d, p: d["tensors"][0]["indices"]["frequencies"].__setitem__(1, "4000"))),
    Invalid("112-rans-class-table-too-long", "FrequencyTableError", "§6.4", "Vector 46 with class table 2 "
            "padded to 5 groups by zero frequencies: more symbols than the codebook's 4.", lambda: with_parts(
                V("46-rans-class-tables"), lambda d, p: d["tensors"][0]["indices"]["frequencies"].__setitem__(
                    2, (d["tensors"][0]["indices"]["frequencies"][2] + "0000" * 5)[:20]))),
    Invalid("113-rans-class-table-not-string", "HeaderError", "§6.4", "Vector 46 with class table 0 given as the "
            "integer 32768.", lambda: with_parts(
                V("46-rans-class-tables"), lambda d, p: d["tensors"][0]["indices"]["frequencies"].__setitem__(0, 32768))),
]


# ------------------------------------------------------------------------------------------------
# The index and the files


def hexbits(values: np.ndarray) -> list[str]:
    """Element bit patterns as big-endian hex strings (exact for every dtype)."""
    size = values.dtype.itemsize
    return [f"{int(x):0{2 * size}x}" for x in np.ascontiguousarray(values).reshape(-1).view(f"<u{size}")]


def dtype_name(a: np.ndarray) -> str:
    return "bfloat16" if a.dtype == BF16 else a.dtype.name  # ml_dtypes' float8 names are the spec's


def stored_summary(t: dict, tables: list[str]) -> str:
    """One line on how a tensor is stored, read back from its header object."""
    def stream(key: str) -> str:
        s = t[key]
        if s["coding"] == "fixed":
            return f"{key} fixed"
        if s["coding"] == "rans":
            table = s["frequencies"] if len(s["frequencies"]) <= 48 else f"{len(s['frequencies']) // 4} groups"
            return (f"{key} rans \"{table}\", {len(s['block_bytes'])} block(s) of {s['block_size']}"
                    + (f" ({', '.join(map(str, s['block_bytes'][:4]))}{', ...' if len(s['block_bytes']) > 4 else ''} bytes)"
                       if s["block_bytes"] else ""))
        return (f"{key} huffman table {s['table']} \"{tables[s['table']]}\", {len(s['block_bytes'])} block(s) "
                f"of {s['block_size']}")

    parts = [t["encoding"]]
    if t["encoding"] == "sparse":
        parts.append(f"{t['layout']} b={t['index_bits']} entries={t['entries']} fillers={t['fillers']}")
    if "codebook" in t:
        parts.append(f"codebook k={t['codebook']['length'] // np_dtype(t['dtype']).itemsize} bits={t['bits']}")
    if "scales" in t:
        parts.append(f"row scales m={t['scales']['length'] // np_dtype(t['dtype']).itemsize} "
                     f"scale_bits={t['scale_bits']}")
    parts += [stream(k) for k in STREAM_KEYS if k in t]
    if t["encoding"] == "fields":
        codings = [f"{s['coding']}" + (f" table {s['table']}" if s["coding"] == "huffman" else "")
                   for s in (t["chunks"][0] if t["chunks"] else [])]
        parts.append(f"fields {t['fields']} chunk_size={t['chunk_size']}, {len(t['chunks'])} chunk(s); chunk 0: "
                     + (", ".join(codings) or "none"))
    if "values" in t:
        parts.append("raw values")
    return "; ".join(parts)


def npy_bytes(a: np.ndarray) -> bytes:
    a = np.array(a, order="C", copy=True)  # not ascontiguousarray: it turns a scalar into shape (1,)
    if a.dtype == BF16:
        a = a.view(np.uint16)
    elif a.dtype.name in ("float8_e4m3fn", "float8_e5m2"):  # as their uint8 bit patterns, like bfloat16
        a = a.view(np.uint8)
    elif a.dtype.itemsize > 1:
        a = a.astype(a.dtype.newbyteorder("<"))
    f = io.BytesIO()
    np.save(f, a, allow_pickle=False)
    return f.getvalue()


def generate() -> tuple[dict[str, bytes], dict]:
    """Every file (path relative to the vectors directory -> bytes) and the index document."""
    files: dict[str, bytes] = {}
    valid = []
    for v in VALID:
        data = build_valid(v)
        doc, _ = header_doc(data)
        files[f"{v.name}.dcf"] = data
        arrays = expected_arrays(v)
        assert len(arrays) == len(doc["tensors"])
        entry: dict[str, Any] = {"name": v.name, "file": f"{v.name}.dcf", "description": v.description,
                                 "reencode": v.build is None, "metadata": doc["metadata"]}
        if v.build is None:
            entry["settings"] = {"huffman": v.mode, "block_size": v.block_size}
            if v.compact_header or v.header_cost:  # format 1.1 vectors (the 1.0 entries stay as they were)
                entry["settings"].update(compact_header=v.compact_header, huffman_header_cost=v.header_cost)
            if v.coder != "huffman":  # format 1.4 vectors only
                entry["settings"]["coder"] = v.coder
            if v.compact_header:
                entry["writer_header"] = writer_header(v)
        tensors = []
        for k, (obj, a) in enumerate(zip(doc["tensors"], arrays)):
            assert obj["name"] == (v.tensors[k].name if v.tensors else obj["name"])
            assert obj["dtype"] == dtype_name(a) and obj["shape"] == list(a.shape)
            files[f"{v.name}.{k}.npy"] = npy_bytes(a)
            te: dict[str, Any] = {"name": obj["name"], "dtype": obj["dtype"], "shape": obj["shape"],
                                  "expected": f"{v.name}.{k}.npy"}
            if v.build is None:
                t = v.tensors[k]
                te["encoding"] = t.encoding
                if t.encoding == "sparse":
                    te["layout"], te["index_bits"] = t.layout, t.index_bits
                if t.encoding == "fields":
                    te["fields"], te["chunk_size"] = list(obj["fields"]), obj["chunk_size"]
                te["codebook"] = None if t.codebook is None else hexbits(np.asarray(t.codebook).astype(a.dtype))
                if t.scales is not None:  # format 1.3 (§5.2): what re-encoding needs besides the codebook
                    te["scales"] = hexbits(np.asarray(t.scales).astype(a.dtype))
                    te["row_scales"], te["indices"] = list(t.row_scales), list(t.indices)
            te["stored"] = stored_summary(obj, doc["tables"])
            tensors.append(te)
        entry["tensors"] = tensors
        valid.append(entry)
    invalid = []
    for inv in INVALID:
        files[f"invalid/{inv.name}.dcf"] = inv.make()
        e = {"name": inv.name, "file": f"invalid/{inv.name}.dcf", "error": inv.error, "rule": inv.rule,
             "description": inv.description}
        invalid.append(e)
    index = {"format_version": "1.4", "valid": valid, "invalid": invalid}
    return files, index


def esc(text: str) -> str:
    """Text for a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def index_markdown(index: dict) -> str:
    """spec/vectors/index.md: the index as tables."""
    lines = ["# dcformat test vectors (format 1.4)", "",
             "Generated by `spec/make_vectors.py` from `index.json`, which is the machine-readable form of this",
             "page. Valid vectors decode to `NN-name.K.npy` (tensor K in file order; bfloat16 as its uint16 bit",
             "pattern). Vectors marked *re-encode* are reproduced byte for byte by dcformat's writer from the",
             "expected tensors and the recorded settings (Huffman mode, block size, and per tensor the encoding,",
             "layout, index width and codebook, listed in `index.json`). For a vector with a compressed header",
             "(`compact_header`), whose zlib stream was written by `make_vectors.py` itself so that it is the",
             "same on every machine, the writer reproduces the decompressed JSON and every byte after the header",
             "(offsets counted from the data start); its own header bytes are checked against `writer_header`",
             "where the zlib library is the version recorded there.", "",
             "## Valid", "", "| vector | exercises | tensors: how they are stored |", "|---|---|---|"]
    for v in index["valid"]:
        how = "<br>".join(f"`{t['name']}` {t['dtype']} {t['shape']}: {t['stored']}" for t in v["tensors"]) or "—"
        extra = "".join(f", {k}={str(x).lower() if isinstance(x, bool) else x}" for k, x in v.get("settings", {}).items()
                        if k not in ("huffman", "block_size"))
        mode = (f" *re-encode: huffman={v['settings']['huffman']}, block_size={v['settings']['block_size']}{extra}*"
                if v["reencode"] else " *hand-assembled*")
        lines.append(f"| `{v['file']}` | {esc(v['description'])}{mode} | {esc(how)} |")
    lines += ["", "## Invalid", "", "A reader must reject each file with the error kind shown (spec §8.1). Each is a",
              "valid file with exactly one rule broken (checksums and lengths fixed up to match).", "", "| vector | error | rule | what is wrong |", "|---|---|---|---|"]
    for e in index["invalid"]:
        lines.append(f"| `{e['file']}` | {e['error']} | {e['rule']} | {esc(e['description'])} |")
    return "\n".join(lines) + "\n"


def keep_foreign_zlib_records(old: dict, new: dict) -> None:
    """A `writer_header` record made with another zlib version than this one stays as it was: it says
    what the writer stored there, and this machine's zlib cannot check or remake it."""
    before = {e["name"]: e.get("writer_header") for e in old.get("valid", [])}
    for e in new["valid"]:
        record = before.get(e["name"])
        if record is not None and "writer_header" in e and record.get("zlib") != zlib.ZLIB_RUNTIME_VERSION:
            e["writer_header"] = record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the missing test vectors; never overwrite one.")
    parser.add_argument("--out", default=DEFAULT_OUT, help="the vectors directory (default: spec/vectors)")
    parser.add_argument("--check", action="store_true", help="only compare; write nothing")
    args = parser.parse_args(argv)
    files, index = generate()
    index_path = os.path.join(args.out, "index.json")
    new_index = json.dumps(index, indent=1, ensure_ascii=False) + "\n"
    problems = []
    # The index may grow (new vectors appended) but an existing entry must never change.
    if os.path.exists(index_path):
        with open(index_path, encoding="utf-8") as f:
            old = json.load(f)
        keep_foreign_zlib_records(old, index)
        new_index = json.dumps(index, indent=1, ensure_ascii=False) + "\n"
        for kind in ("valid", "invalid"):
            new_by_name = {e["name"]: e for e in index[kind]}
            for e in old[kind]:
                # a description may be corrected (format 1.2 fixed three); nothing else may change, but
                # the error kind of a vector a newer format version reclassified (RECLASSIFIED)
                new = dict(new_by_name.get(e["name"]) or {}, description=None)
                old_entry = dict(e, description=None)
                if e["name"] in RECLASSIFIED and old_entry.get("error") == RECLASSIFIED[e["name"]][0]:
                    old_entry["error"] = RECLASSIFIED[e["name"]][1]
                if new != old_entry or e["name"] not in new_by_name:
                    problems.append(f"index.json: entry {e['name']!r} would change")
    files["index.json"] = new_index.encode("utf-8")
    files["index.md"] = index_markdown(index).encode("utf-8")
    written = 0
    for rel, data in files.items():
        path = os.path.join(args.out, rel)
        if os.path.exists(path):
            with open(path, "rb") as f:
                same = f.read() == data
            if not same and rel not in ("index.json", "index.md"):
                problems.append(f"{rel}: differs from what this script writes; not overwritten")
            if same or rel not in ("index.json", "index.md"):
                continue
        if args.check:
            problems.append(f"{rel}: missing or out of date")
            continue
        if rel in ("index.json", "index.md") and any("index.json" in p for p in problems):
            continue  # never rewrite an index whose existing entries would change
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        written += 1
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(files)} files, {written} written, {len(problems)} problem(s)")
    return 1 if problems else 0


# Invalid vectors whose error kind a later format version changed: name -> (old kind, new kind). The
# file stays as it is; only what a reader of the new version reports differs (§9).
RECLASSIFIED = {
    # a "1.3" file with an unknown encoding: newer than a 1.2 reader (VersionError), a 1.3 reader's own
    # version with an unknown value (HeaderError, §3.4); vector 85 is the same in a 1.4 file
    "75-newer-minor-unknown-encoding": ("VersionError", "HeaderError"),
    # "1.4" files with an unknown encoding and an unknown tensor key: the same for a 1.4 reader (format
    # 1.4); vectors 107 and 108 are the same files labelled 1.5
    "85-newer-minor-unknown-encoding": ("VersionError", "HeaderError"),
    "87-newer-minor-unknown-key": ("VersionError", "HeaderError"),
}


if __name__ == "__main__":
    sys.exit(main())
