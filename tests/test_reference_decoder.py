"""The reference decoder (written from the spec alone) against dcformat: same tensors from every file
dcformat writes, the same verdict on damaged files, and the spec's worked examples."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcformat
from dcformat import bitpack, codec, container, huffman

from . import reference_decoder as ref
from .strategies import assert_same as assert_same_bits
from .strategies import finite_float_tensors, names, tensors

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------------------
# The spec's worked examples, decoded by the reference pieces


def test_bits_are_read_least_significant_first():
    r = ref.BitReader(bytes([0b0000_0110, 0x01]))
    assert [r.bit() for _ in range(4)] == [0, 1, 1, 0]
    assert r.value(5) == 0b10000  # bits 4..7 of byte 0 (0000), then bit 0 of byte 1 (1) as bit 4
    assert r.rest_is_padding()


def test_fixed_width_example_of_spec_5_3():
    gaps = ref.BitReader(b"\xfb\x00")
    assert [gaps.value(2) for _ in range(5)] == [3, 2, 3, 3, 0] and gaps.rest_is_padding()
    indices = ref.BitReader(b"\x08\x01")
    assert [indices.value(2) for _ in range(5)] == [0, 2, 0, 0, 1] and indices.rest_is_padding()


def test_shared_example_of_spec_5_2():
    r = ref.BitReader(b"\x85\x01")
    assert [r.value(2) for _ in range(6)] == [1, 1, 0, 2, 1, 0] and r.rest_is_padding()


def test_csc_example_of_spec_5_3():
    gaps, indices = ref.BitReader(b"\xdf\x01"), ref.BitReader(b"\x20\x01")
    assert [gaps.value(2) for _ in range(5)] == [3, 3, 1, 3, 1]
    assert [indices.value(2) for _ in range(5)] == [0, 0, 2, 0, 1]
    a = np.zeros((4, 4), np.float32)
    a[1, 2], a[3, 3] = 1.5, -2
    cb = np.array([0, -2, 1.5], np.float32)
    draft = codec.draft_explicit("w", a, "sparse", codebook=cb, indices=[0] * 6 + [2] + [0] * 8 + [1], layout="csc", index_bits=2)
    tables, encoded = codec.assemble([draft], "off")
    out = io.BytesIO()
    container.write_stream(out, {}, tables, encoded)
    data = out.getvalue()
    with dcformat.open(data) as f:
        info = f.layout("w")
        assert (info.entries, info.fillers) == (5, 3)
        assert bytes(data[info.gaps.section.offset : info.gaps.section.end]) == b"\xdf\x01"
    assert_same_bits(ref.decode(data)["w"], a)


def test_canonical_code_example_of_spec_6_2():
    assert ref.parse_table("1332") == [1, 3, 3, 2]
    assert ref.canonical_codes([1, 3, 3, 2]) == {(1, 0b0): 0, (2, 0b10): 3, (3, 0b110): 1, (3, 0b111): 2}
    assert ref.read_huffman(b"\x9a\x03", 5, [1, 3, 3, 2], 5, [2], "x") == [0, 3, 1, 0, 2]


def test_canonical_codes_depend_only_on_lengths():
    # DEFLATE's own example (RFC 1951 §3.2.2): lengths (3, 3, 3, 3, 3, 2, 4, 4) for A..H
    codes = ref.canonical_codes([3, 3, 3, 3, 3, 2, 4, 4])
    assert {s: format(c, f"0{n}b") for (n, c), s in codes.items()} == {
        0: "010", 1: "011", 2: "100", 3: "101", 4: "110", 5: "00", 6: "1110", 7: "1111"}


@pytest.mark.parametrize("table, ok", [
    ("1", True), ("01", True), ("2", False), ("0", False), ("11", True), ("1331", False), ("1333", False),
    ("f" * 2 + "edcba987654321", True), ("1A", False), ("", False),
    pytest.param("1" + "0" * 65535, True, id="65536-digits"), pytest.param("1" + "0" * 65536, False, id="65537-digits"),
])
def test_table_rules_of_spec_6_2(table, ok):
    if ok:
        ref.parse_table(table)
    else:
        with pytest.raises(dcformat.HuffmanTableError):
            ref.parse_table(table)


def test_matrix_view_rules_of_spec_5_3():
    assert [ref.matrix_view(s) for s in [(), (0,), (7,), (0, 5), (5, 0), (3, 0, 2), (2, 3, 4)]] == [
        (1, 1), (1, 0), (1, 7), (0, 0), (5, 0), (3, 0), (2, 12)]


def test_reference_limits_apply():
    data = dcformat.save({"a": np.zeros(3, np.float32), "b": np.zeros((2, 2), np.int8)})
    with pytest.raises(dcformat.LimitError):
        ref.read_file(data, ref.Limits(max_tensors=1))
    with pytest.raises(dcformat.LimitError):
        ref.read_file(data, ref.Limits(max_rank=1))
    with pytest.raises(dcformat.LimitError):
        ref.read_file(data, ref.Limits(min_decoded_bytes=12, max_expansion=0))


# ------------------------------------------------------------------------------------------------
# Agreement on everything dcformat writes


@st.composite
def layers(draw) -> np.ndarray:
    """A layer big enough for Huffman coding to pay (Laplace weights: skewed codebook indices and gaps)."""
    shape = (draw(st.integers(20, 48)), draw(st.integers(20, 48)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.laplace(0, 0.05, shape).astype(draw(st.sampled_from([np.float32, np.float16])))
    a[rng.random(shape) < draw(st.sampled_from([0.0, 0.5, 0.9]))] = 0
    return a


@st.composite
def models(draw) -> dict[str, np.ndarray]:
    n = draw(st.integers(0, 3))
    out = {}
    for i in range(n):
        out[f"t{i}.{draw(names)}"] = draw(st.one_of(tensors(), finite_float_tensors(max_side=24), layers()))
    return out


def _policy(lossless: bool, **settings) -> dcformat.Policy:
    """A policy; a lossless one keeps only the settings that do not change values (Policy refuses the rest)."""
    if lossless:
        return dcformat.Policy(lossless=True, **{k: settings[k] for k in ("index_bits", "layout", "huffman", "block_size")})
    return dcformat.Policy(**settings)


policies = st.builds(
    _policy,
    prune=st.sampled_from([0.0, 0.5, 0.9]),
    conv_bits=st.sampled_from([None, 1, 3, 8]),
    fc_bits=st.sampled_from([None, 1, 2, 4, 5]),
    index_bits=st.sampled_from([1, 2, 3, 5, 8, 16, "auto"]),
    layout=st.sampled_from(["auto", "csr", "csc"]),
    huffman=st.sampled_from(["auto", "shared", "off"]),
    block_size=st.sampled_from([1, 3, 16, 200, 1 << 16]),
    lossless=st.sampled_from([False, False, False, True]),
)


def _assert_agree(data: bytes) -> None:
    """The reference decoder (strict) and dcformat decode `data` to the same tensors."""
    expected = ref.read_file(data, strict=True)
    with dcformat.open(data) as f:
        assert f.metadata == expected.metadata
        assert f.keys() == [t.name for t in expected.tensors]
        for t in expected.tensors:
            got = f.get_tensor(t.name)
            name = "bfloat16" if got.dtype.name == "bfloat16" else got.dtype.name
            assert (name, got.shape) == (t.dtype, t.shape)
            assert np.ascontiguousarray(got).tobytes() == t.data, t.name


@FAST
@given(models(), policies, st.dictionaries(names, names, max_size=3))
def test_reference_and_dcformat_agree_on_saved_files(model, policy, metadata):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-finite tensors fall back to exact values, with a warning
        data = dcformat.save(model, policy=policy, metadata=metadata)
    _assert_agree(data)


@FAST
@given(layers(), st.sampled_from([2, 3, 4, 5, 6]), st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([2, 3, 4, 5]),
       st.sampled_from(["auto", "shared"]), st.sampled_from([64, 200, 1 << 16]), layers())
def test_reference_and_dcformat_agree_on_huffman_coded_layers(a, bits, prune, index_bits, mode, block_size, b):
    """Layers where Huffman coding pays, often in several blocks and with a table shared by two layers."""
    policy = dcformat.Policy(bits=bits, prune=prune, index_bits=index_bits, huffman=mode, block_size=block_size)
    _assert_agree(dcformat.save({"a": a, "b": b}, policy=policy))


# ------------------------------------------------------------------------------------------------
# Streams: dcformat's encoders against the reference's readers


@FAST
@given(st.integers(1, 16).flatmap(lambda w: st.tuples(st.just(w), st.lists(st.integers(0, (1 << w) - 1), max_size=70))))
def test_fixed_width_streams_read_back(case):
    width, symbols = case
    r = ref.BitReader(bitpack.pack(np.array(symbols, dtype=np.uint16), width))
    assert [r.value(width) for _ in symbols] == symbols and r.rest_is_padding()


@FAST
@given(st.lists(st.integers(0, 40), min_size=1, max_size=300), st.integers(1, 80), st.integers(0, 3))
def test_huffman_streams_read_back(symbols, block_size, skew):
    """dcformat's canonical Huffman encoder, read back by the reference decoder (any block size)."""
    symbols = [s >> skew for s in symbols]  # fewer distinct symbols: one-symbol streams occur
    counts = np.bincount(np.array(symbols), minlength=1)
    lengths = huffman.code_lengths(counts)
    table = huffman.lengths_to_hex(lengths)
    payload, block_bytes = huffman.encode(np.array(symbols, dtype=np.uint16), lengths, block_size)
    parsed = ref.parse_table(table)
    assert ref.read_huffman(payload, len(symbols), parsed, block_size, block_bytes, "s") == symbols


def test_huffman_stream_with_15_bit_codes_reads_back():
    counts = np.array([1, 1] + [2**i for i in range(1, 15)], dtype=np.int64)  # lengths up to 15
    symbols = np.repeat(np.arange(16), counts).astype(np.uint16)[::-1].copy()
    lengths = huffman.code_lengths(counts)
    assert lengths.max() == 15
    payload, block_bytes = huffman.encode(symbols, lengths, 1000)
    got = ref.read_huffman(payload, len(symbols), ref.parse_table(huffman.lengths_to_hex(lengths)), 1000, block_bytes, "s")
    assert got == symbols.tolist()


# ------------------------------------------------------------------------------------------------
# The same verdict on damaged files (differential fuzzing against the spec's reading)


def _verdict(read, data: bytes):
    try:
        return read(data)
    except dcformat.DCFError as e:
        return type(e).__name__


def _decode_dcformat(data: bytes):
    with dcformat.open(data) as f:
        return [(t, np.ascontiguousarray(f.get_tensor(t)).tobytes()) for t in f.keys()]


def _decode_reference(data: bytes):
    return [(t.name, t.data) for t in ref.read_file(data).tensors]


_VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
_BASES = [(_VECTORS / f"{name}.dcf").read_bytes() for name in (
    "01-spec-example", "06-scalars", "07-empty-tensors", "11-filler-boundaries", "13-sparse-values-special",
    "17-huffman-blocks", "20-huffman-spec-table", "24-extra-fillers", "25-odd-streams")]


def _rebuilt(data: bytes, doc: dict) -> bytes:
    """`data` with header document `doc` (offsets as given), padded to the old header length when it fits."""
    n = int.from_bytes(data[16:24], "little")
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:
        return data
    header = text + b" " * (n - len(text))
    return data[:12] + struct.pack("<I", zlib.crc32(header)) + data[16:32] + header + data[32 + n :]


def _leaves(v, path=()):
    """(path, value) of every value below `v` in a JSON document."""
    if isinstance(v, dict):
        items = v.items()
    elif isinstance(v, list):
        items = enumerate(v)
    else:
        return
    for k, x in items:
        yield path + (k,), x
        yield from _leaves(x, path + (k,))


_REPLACEMENTS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 7, 8, 15, 16, 17, 64, 2**16, 2**32, 2**64, -1, 1.5, True, None, "x", [], {}, [1]]),
    st.sampled_from(["raw", "shared", "sparse", "csr", "csc", "fixed", "huffman", "bool", "int8", "float16",
                     "uint64", "sparse+codebook", "1", "11", "0", "1332", "ffedcba987654321"]),
)


@FAST
@given(st.sampled_from(range(len(_BASES))), st.data())
def test_same_verdict_on_header_changes(base, data):
    """Change, retype or delete one value of the header (keeping its CRC right): both readers accept
    with the same tensors, or both reject with the same error kind."""
    original = _BASES[base]
    n = int.from_bytes(original[16:24], "little")
    doc = json.loads(original[32 : 32 + n])
    path, value = data.draw(st.sampled_from(list(_leaves(doc))))
    holder = doc
    for p in path[:-1]:
        holder = holder[p]
    if isinstance(holder, dict) and data.draw(st.integers(0, 5)) == 0:
        del holder[path[-1]]
    elif isinstance(value, int) and not isinstance(value, bool) and data.draw(st.booleans()):
        holder[path[-1]] = max(0, value + data.draw(st.sampled_from([-64, -8, -1, 1, 8, 64])))
    else:
        holder[path[-1]] = data.draw(_REPLACEMENTS)
    damaged = _rebuilt(original, doc)
    assert _verdict(_decode_reference, damaged) == _verdict(_decode_dcformat, damaged)


@FAST
@given(st.sampled_from(range(len(_BASES))), st.data())
def test_same_verdict_on_section_bit_flips(base, data):
    """Flip data bits and fix the section's CRC: both readers agree on the outcome."""
    original = _BASES[base]
    n = int.from_bytes(original[16:24], "little")
    doc = json.loads(original[32 : 32 + n])
    sections = [s for t in doc["tensors"] for k in ("data", "codebook", "gaps", "indices", "values") if k in t
                for s in [t[k]["section"] if k in ("gaps", "indices") else t[k]] if s["length"]]
    s = data.draw(st.sampled_from(sections))
    body = bytearray(original)
    for bit in data.draw(st.lists(st.integers(0, 8 * s["length"] - 1), min_size=1, max_size=4)):
        body[s["offset"] + bit // 8] ^= 1 << (bit % 8)
    s["crc32"] = zlib.crc32(bytes(body[s["offset"] : s["offset"] + s["length"]]))
    damaged = _rebuilt(bytes(body), doc)
    assert _verdict(_decode_reference, damaged) == _verdict(_decode_dcformat, damaged)
