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
from dcformat import bitpack, codec, container, huffman, rans

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


def test_rans_example_of_spec_6_4():
    """§6.4's worked example: the table, the block's 12 bytes from the reference encoder, and back."""
    freqs = ref.parse_frequencies("7fe000100010")
    assert freqs == [32736, 16, 16]
    block = bytes.fromhex("e67f800001000000" "70000206")
    assert ref.rans_encode([1, 0, 2, 0, 1], freqs, 5) == (block, [12])
    assert ref.read_rans(block, 5, freqs, 5, [12], "x") == [1, 0, 2, 0, 1]
    assert int.from_bytes(block[:8], "little") == 0x100807FE6
    # a one-symbol table codes any count in the 8 bytes of the state 2^31, which no step changes
    assert ref.rans_encode([0] * 1000, [32768], 1000) == ((1 << 31).to_bytes(8, "little"), [8])
    assert ref.read_rans((1 << 31).to_bytes(8, "little"), 1000, [32768], 1000, [8], "x") == [0] * 1000


@pytest.mark.parametrize("table, ok", [
    ("8000", True), ("00008000", True), ("7fe000100010", True), ("0001" * 32768, True),
    pytest.param("8000" + "0000" * 65535, True, id="65536-groups"),
    pytest.param("8000" + "0000" * 65536, False, id="65537-groups"),
    ("", False), ("800", False), ("80000", False), ("8001", False), ("7fff", False), ("0000", False),
    ("ffff", False), ("7FE000100010", False), ("7fe00010001g", False), (" 8000", False), ("8000 ", False),
    ("4000" "c000", False),  # 0xc000 = 49152: the sum 65536 is 2^16, not 2^15
])
def test_frequency_table_rules_of_spec_6_4(table, ok):
    if ok:
        assert sum(ref.parse_frequencies(table)) == 1 << 15
    else:
        with pytest.raises(dcformat.errors.FrequencyTableError):
            ref.parse_frequencies(table)


def test_frequency_table_error_is_a_table_error():
    assert issubclass(dcformat.errors.FrequencyTableError, dcformat.errors.TableError)
    assert issubclass(dcformat.errors.HuffmanTableError, dcformat.errors.TableError)
    assert issubclass(dcformat.errors.TableError, dcformat.DCFError)


@st.composite
def rans_cases(draw) -> tuple[list[int], list[int], int]:
    """(symbols, frequencies, block size): skewed, uniform, one-symbol and tiny-frequency tables."""
    kind = draw(st.sampled_from(["counts", "one", "tiny", "uniform"]))
    n = draw(st.integers(0, 400))
    if kind == "one":
        s = draw(st.integers(0, 5))
        freqs = [0] * s + [1 << 15] + [0] * draw(st.integers(0, 2))
        symbols = [s] * n
    elif kind == "tiny":  # frequencies of 1: 15 bits a symbol, a word every two or three symbols
        k = draw(st.integers(1, 40))
        freqs = [1] * k
        freqs[draw(st.integers(0, k - 1))] += (1 << 15) - k
        symbols = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    elif kind == "uniform":
        k = draw(st.sampled_from([1, 2, 4, 8, 256, 4096]))
        freqs = [(1 << 15) // k] * k
        symbols = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    else:
        symbols = draw(st.lists(st.integers(0, 30), min_size=max(1, n), max_size=max(1, n)))
        symbols = [x >> draw(st.integers(0, 4)) for x in symbols]
        freqs = ref.rans_frequencies(np.bincount(symbols).tolist())
    return symbols, freqs, draw(st.sampled_from([1, 2, 3, 7, 64, 1000, 1 << 20]))


def _state_bound_decode(raw: bytes, count: int, freqs: list[int], block_size: int, sizes: list[int]) -> int:
    """The largest state the decoding loop of §6.4 reaches (it must stay below 2^63)."""
    cum = np.concatenate([[0], np.cumsum(freqs)]).tolist()
    high, start = 0, 0
    for i, size in enumerate(sizes):
        x, pos = int.from_bytes(raw[start : start + 8], "little"), 8
        high = max(high, x)
        for _ in range(min(block_size, count - i * block_size)):
            slot = x % (1 << 15)
            s = next(t for t in range(len(freqs)) if cum[t] <= slot < cum[t + 1])
            x = freqs[s] * (x >> 15) + slot - cum[s]
            assert x < 1 << 63 and x >= 1 << 16
            if x < 1 << 31:
                x = (x << 32) | int.from_bytes(raw[start + pos : start + pos + 4], "little")
                pos += 4
            high = max(high, x)
        start += size
    return high


@FAST
@given(rans_cases())
def test_rans_round_trips_through_the_reference_encoder(case):
    symbols, freqs, block_size = case
    raw, sizes = ref.rans_encode(symbols, freqs, block_size)
    assert len(sizes) == -(-len(symbols) // block_size) and sum(sizes) == len(raw)
    assert all(b >= 8 and b % 4 == 0 for b in sizes)
    assert ref.read_rans(raw, len(symbols), freqs, block_size, sizes, "s") == symbols
    assert _state_bound_decode(raw, len(symbols), freqs, block_size, sizes) < 1 << 63


@FAST
@given(rans_cases())
def test_dcformat_rans_writes_the_reference_encoders_bytes(case):
    """dcformat's numba encoder and decoder against the spec's loop: the same bytes, the same symbols."""
    symbols, freqs, block_size = case
    raw, sizes = ref.rans_encode(symbols, freqs, block_size)
    f = np.array(freqs, dtype=np.int64)
    assert rans.encode(np.array(symbols, dtype=np.uint16), f, block_size) == (raw, sizes)
    assert rans.decode(raw, len(symbols), f, block_size, sizes).tolist() == symbols
    assert rans.frequencies_to_hex(f) == ref.frequencies_hex(freqs)
    assert rans.frequencies_from_hex(ref.frequencies_hex(freqs)).tolist() == freqs


@FAST
@given(st.lists(st.integers(0, 300), min_size=1, max_size=500).map(np.bincount))
def test_dcformat_normalized_tables_are_valid_for_the_reference(counts):
    freqs = rans.normalize(counts)
    assert ref.parse_frequencies(rans.frequencies_to_hex(freqs)) == freqs.tolist()
    assert len(freqs) == np.nonzero(counts)[0][-1] + 1
    assert all((freqs > 0) == (counts[: len(freqs)] > 0))


def _rans_verdict(decode, *args) -> str:
    try:
        return str(list(decode(*args)))
    except dcformat.DCFError as e:
        return type(e).__name__


@FAST
@given(rans_cases(), st.data())
def test_same_verdict_on_damaged_rans_blocks(case, data):
    """Damage a block's state or words (the table stays valid): the reference and dcformat decode the
    same symbols or both raise CorruptDataError."""
    symbols, freqs, block_size = case
    raw, sizes = ref.rans_encode(symbols, freqs, block_size)
    if not raw:
        return
    body = bytearray(raw)
    for at in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=3)):
        body[at] = data.draw(st.sampled_from([0x00, 0x80, 0xFF, body[at] ^ 1, body[at] ^ 0x80]))
    count = len(symbols)
    expected = _rans_verdict(ref.read_rans, bytes(body), count, freqs, block_size, sizes, "s")
    got = _rans_verdict(lambda *a: rans.decode(*a).tolist(), bytes(body), count, np.array(freqs), block_size, sizes)
    assert expected == got and (expected == "CorruptDataError" or expected.startswith("["))


def test_rans_rejections_of_spec_6_4():
    """Each rejection of the decoding loop, from the worked example's block."""
    freqs, block = [32736, 16, 16], bytes.fromhex("e67f800001000000" "70000206")
    cases = {
        "initial state out of range": ((2**31 - 1).to_bytes(8, "little") + block[8:], [12]),
        "initial state of 2^63": (block[:7] + b"\x80" + block[8:], [12]),
        "ran out of words": (block[:8], [8]),
        "words left over": (block + bytes(4), [16]),
        "final state": (block[:8] + b"\x71" + block[9:], [12]),
    }
    for what, (raw, sizes) in cases.items():
        with pytest.raises(dcformat.CorruptDataError):
            ref.read_rans(raw, 5, freqs, 5, sizes, what)
        with pytest.raises(dcformat.CorruptDataError):
            rans.decode(raw, 5, np.array(freqs), 5, sizes)


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


@FAST
@given(layers(), st.sampled_from([2, 3, 4]), st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([2, 3, 4]),
       st.sampled_from([1, 64, 200, 1 << 16]), st.sampled_from(["auto", "shared"]))
def test_reference_and_dcformat_agree_on_rans_coded_layers(a, bits, prune, index_bits, block_size, mode):
    """Layers written with rANS wherever it is smaller (coder "rans"), in blocks of every size."""
    policy = dcformat.Policy(bits=bits, prune=prune, index_bits=index_bits, huffman=mode, block_size=block_size,
                             coder="rans")
    _assert_agree(dcformat.save({"a": a}, policy=policy))


def test_a_skewed_layer_is_rans_coded_and_both_readers_agree():
    rng = np.random.default_rng(14)
    a = rng.laplace(0, 0.05, (64, 96)).astype(np.float32)
    for coder in ("auto", "huffman"):  # level 0 (|w| < 0.075) holds 78 % of the weights
        data = dcformat.save({"w": a}, policy=dcformat.Policy(step=0.15, coder=coder, block_size=1000))
        codings = {s.coding for t in container.parse_header(data).tensors for s in (t.indices, t.gaps) if s}
        assert ("rans" in codings) == (coder == "auto") == (data[10] == 4), (coder, codings, data[10])
        _assert_agree(data)


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
    "17-huffman-blocks", "20-huffman-spec-table", "24-extra-fillers", "25-odd-streams", "38-rans-spec-example",
    "40-rans-blocks", "41-rans-one-symbol", "44-rans-reader-latitude", "45-rans-fields")]


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
                     "uint64", "sparse+codebook", "1", "11", "0", "1332", "ffedcba987654321", "rans", "8000",
                     "00008000", "7fe000100010", "7FE000100010", "800"]),
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
    sections += [s["section"] for t in doc["tensors"] for c in t.get("chunks", []) for s in c if s["section"]["length"]]
    s = data.draw(st.sampled_from(sections))
    body = bytearray(original)
    for bit in data.draw(st.lists(st.integers(0, 8 * s["length"] - 1), min_size=1, max_size=4)):
        body[s["offset"] + bit // 8] ^= 1 << (bit % 8)
    s["crc32"] = zlib.crc32(bytes(body[s["offset"] : s["offset"] + s["length"]]))
    damaged = _rebuilt(bytes(body), doc)
    assert _verdict(_decode_reference, damaged) == _verdict(_decode_dcformat, damaged)
