"""rANS stream coding (spec §6.4, format 1.4): tables, blocks, round trips, hostile streams, files."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcformat
from dcformat import Policy, codec, container, huffman, rans
from dcformat.errors import CorruptDataError, EncodeError, FrequencyTableError, HeaderError

TOTAL = 1 << 15


def _skewed(n: int, k: int, p: float, seed: int = 0) -> np.ndarray:
    """n symbols below k, geometric: symbol 0 has probability p."""
    rng = np.random.default_rng(seed)
    return np.minimum(rng.geometric(1.0 - p, n) - 1, k - 1).astype(np.uint16)


def _coded(symbols: np.ndarray, block_size: int) -> tuple[np.ndarray, bytes, list[int]]:
    freqs = rans.normalize(np.bincount(symbols))
    data, sizes = rans.encode(symbols, freqs, block_size)
    return freqs, data, sizes


# ---------------------------------------------------------------------------------------------------
# Tables


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=300).filter(lambda c: any(c)))
@settings(max_examples=150, deadline=None)
def test_normalize_gives_a_valid_table_that_codes_every_counted_symbol(counts):
    c = np.array(counts, np.int64)
    f = rans.normalize(c)
    assert f.sum() == TOTAL
    assert f.size == np.nonzero(c)[0][-1] + 1  # no trailing zeros
    assert np.array_equal(f > 0, c[: f.size] > 0)
    assert np.array_equal(rans.normalize(c), f)  # deterministic
    assert np.array_equal(rans.frequencies_from_hex(rans.frequencies_to_hex(f)), f)


def test_normalize_is_close_to_the_entropy_and_refuses_what_no_table_codes():
    c = np.bincount(_skewed(200_000, 300, 0.7))
    p = c[c > 0] / c.sum()
    entropy = -(c[c > 0] * np.log2(p)).sum()
    bits = rans.coded_bits(c, rans.normalize(c))
    assert entropy <= bits < entropy * 1.003
    assert np.array_equal(rans.normalize(np.ones(TOTAL, np.int64)), np.ones(TOTAL))  # every slot one symbol
    with pytest.raises(EncodeError):
        rans.normalize(np.ones(TOTAL + 1, np.int64))  # more used symbols than slots
    with pytest.raises(EncodeError):
        rans.normalize(np.zeros(4, np.int64))


@pytest.mark.parametrize("text, what", [
    ("", "4..262144"), ("800", "multiple of 4"), ("8000" * 65537, "multiple of 4 in"),
    ("8OOO", "lowercase hex"), ("8000".upper() + "0000" + "0A00", "lowercase hex"),
    ("4000", "add up to 16384"), ("80000001", "add up to 32769"), ("0000", "add up to 0"),
])
def test_invalid_tables_are_refused_by_both_checks(text, what):
    with pytest.raises(FrequencyTableError, match=what.split(" in")[0]):
        rans.frequencies_from_hex(text)
    with pytest.raises(FrequencyTableError):
        container.validate_frequency_text(text, "t")


def test_trailing_zero_groups_are_a_valid_table():
    f = rans.frequencies_from_hex("40004000" + "0000" * 3)
    assert f.tolist() == [16384, 16384, 0, 0, 0]
    assert container.validate_frequency_text("40004000" + "0000" * 3, "t") == 5


# ---------------------------------------------------------------------------------------------------
# Round trips


@st.composite
def streams(draw):
    k = draw(st.sampled_from([1, 2, 3, 17, 256, 4096, 65536]))
    n = draw(st.integers(0, 3000))
    kind = draw(st.sampled_from(["uniform", "skewed", "one", "two-rare"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        s = rng.integers(0, k, n)
    elif kind == "skewed":
        s = np.minimum(rng.geometric(0.3, n) - 1, k - 1)
    elif kind == "one":
        s = np.full(n, k - 1)
    else:  # one symbol almost always, the last of the alphabet a handful of times
        s = np.zeros(n, np.int64)
        s[rng.integers(0, max(n, 1), min(n, 3))] = k - 1
    block = draw(st.sampled_from([1, 2, 3, 7, 64, 1000, 1 << 16, 2**64]))
    return s.astype(np.uint16), block


@given(streams())
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_any_alphabet_count_and_block_size(case):
    symbols, block = case
    if symbols.size == 0:
        freqs = np.array([TOTAL])
        data, sizes = rans.encode(symbols, freqs, block)
        assert data == b"" and sizes == []
    else:
        freqs, data, sizes = _coded(symbols, block)
    assert len(sizes) == -(-symbols.size // block)
    assert sum(sizes) == len(data) and all(b >= 8 and b % 4 == 0 for b in sizes)
    assert np.array_equal(rans.decode(data, symbols.size, freqs, block, sizes), symbols)
    stream = rans.prepare(data, symbols.size, freqs, block, sizes)
    out = np.zeros(symbols.size, np.uint16)
    for b0, b1 in ((0, stream.blocks // 2), (stream.blocks // 2, stream.blocks)):  # in two pieces
        assert rans.decode_blocks(stream, out, b0, b1)
    assert np.array_equal(out, symbols)
    codebook = (np.arange(65536, dtype=np.uint32) * 2654435761) & 0xFFFFFFFF
    gathered = np.zeros(symbols.size, np.uint32)
    assert rans.gather_blocks(stream, 0, stream.blocks, codebook.astype(np.uint32), gathered)
    assert np.array_equal(gathered, codebook[symbols])


def test_one_symbol_streams_cost_only_their_states():
    symbols = np.full(10_000, 5, np.uint16)
    freqs, data, sizes = _coded(symbols, 4096)
    assert sizes == [8, 8, 8] and freqs.tolist() == [0] * 5 + [TOTAL]
    assert all(struct.unpack_from("<Q", data, 8 * i)[0] == 1 << 31 for i in range(3))
    assert np.array_equal(rans.decode(data, symbols.size, freqs, 4096, sizes), symbols)


def test_rans_beats_huffman_on_a_skewed_stream_and_is_near_the_entropy():
    # quantized weights: level 0 for 69%, then ±1, ±2, ... falling off (symbols 2|m| - (m < 0))
    rng = np.random.default_rng(3)
    m = np.where(rng.random(1_000_000) < 0.69, 0, rng.geometric(0.5, 1_000_000) * rng.choice([-1, 1], 1_000_000))
    symbols = np.minimum(2 * np.abs(m) - (m < 0), 1341).astype(np.uint16)
    counts = np.bincount(symbols)
    freqs, data, sizes = _coded(symbols, 1 << 16)
    lengths = huffman.code_lengths(counts)
    huffman_bytes = huffman.encoded_bits(counts, lengths) / 8
    p = counts[counts > 0] / symbols.size
    entropy_bytes = -(counts[counts > 0] * np.log2(p)).sum() / 8
    assert len(data) < 0.96 * huffman_bytes  # Huffman spends a whole bit on the 69% zeros
    assert len(data) < entropy_bytes * 1.003 + 12 * len(sizes)
    estimate, _ = rans.estimate_bytes(counts, symbols.size, 1 << 16)
    assert abs(estimate - len(data)) < 0.001 * len(data) + 8 * len(sizes)


def test_four_lane_decoding_matches_with_a_remainder_of_blocks():
    symbols = _skewed(7 * 1000 + 123, 40, 0.5, seed=9)  # 8 blocks: two groups of 4... and a short last
    freqs, data, sizes = _coded(symbols, 1000)
    assert len(sizes) == 8
    stream = rans.prepare(data, symbols.size, freqs, 1000, sizes)
    for b0, b1 in ((0, 8), (1, 8), (0, 5), (3, 7), (2, 3)):
        out = np.zeros(symbols.size, np.uint16)
        assert rans.decode_blocks(stream, out, b0, b1)
        lo, hi = stream.block_start(b0), stream.block_start(b1)
        assert np.array_equal(out[lo:hi], symbols[lo:hi]) and not out[hi:].any()


def test_encoder_refuses_a_symbol_without_frequency():
    with pytest.raises(EncodeError, match="symbol 2 at index 1 has no frequency"):
        rans.encode(np.array([0, 2, 1], np.uint16), np.array([TOTAL // 2, TOTAL // 2]), 10)
    with pytest.raises(EncodeError, match="block size"):
        rans.encode(np.array([0], np.uint16), np.array([TOTAL]), 0)


# ---------------------------------------------------------------------------------------------------
# Hostile streams


def _corrupt_cases():
    symbols = _skewed(5000, 20, 0.6, seed=4)
    freqs, data, sizes = _coded(symbols, 1000)
    assert len(sizes) == 5
    blocks = [bytearray(data[sum(sizes[:i]): sum(sizes[: i + 1])]) for i in range(5)]

    def join(bs):
        return bytes(b"".join(bs)), [len(b) for b in bs]

    low = [bytearray(b) for b in blocks]
    low[2][:8] = struct.pack("<Q", (1 << 31) - 1)
    high = [bytearray(b) for b in blocks]
    high[1][:8] = struct.pack("<Q", 1 << 63)
    short = [bytearray(b) for b in blocks]
    short[3] = short[3][:-4]
    extra = [bytearray(b) for b in blocks]
    extra[0] = extra[0][:8] + b"\0\0\0\0" + extra[0][8:]
    flipped = [bytearray(b) for b in blocks]
    flipped[4][-1] ^= 0x40
    return symbols, freqs, [
        (join(low), "block 2 .*initial state"),
        (join(high), "block 1 .*initial state"),
        (join(short), "block 3 .*(ran out of words|final state)"),
        (join(extra), "block 0 .*(left over|final state)"),
        (join(flipped), "block 4 .*(final state|ran out|left over)"),
    ]


def test_corrupt_blocks_are_refused_by_the_fast_and_the_exact_decoder():
    symbols, freqs, cases = _corrupt_cases()
    for (data, sizes), message in cases:
        stream = rans.prepare(data, symbols.size, freqs, 1000, sizes)
        assert not rans.decode_blocks(stream, np.zeros(symbols.size, np.uint16), 0, stream.blocks)
        assert not rans.gather_blocks(stream, 0, stream.blocks, np.zeros(20, np.uint16), np.zeros(symbols.size, np.uint16))
        with pytest.raises(CorruptDataError, match=message):
            rans.decode(data, symbols.size, freqs, 1000, sizes)


@pytest.mark.parametrize("sizes, message", [
    ([8, 8], "make 3 blocks"), ([8, 8, 8, 8], "make 3 blocks"), ([8, 8, 6], "not a state"),
    ([8, 8, 4], "not a state"), ([12, 8, 8], "sum to 28"),
])
def test_block_lists_that_do_not_fit_are_refused(sizes, message):
    with pytest.raises(CorruptDataError, match=message):
        rans.decode(b"\0" * 24, 30, np.array([TOTAL]), 10, sizes)


# ---------------------------------------------------------------------------------------------------
# Files


def _model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((300, 64)) * 0.02).astype(np.float32)
    return {"w": w, "v": (rng.standard_normal((64, 300)) * 0.05).astype(np.float32),
            "b": rng.standard_normal(64).astype(np.float32)}


def _codings(f) -> dict[str, str]:
    return {n: f.layout(n).indices.coding for n in f.keys() if f.layout(n).indices is not None}


def test_auto_coder_writes_rans_where_smaller_and_decodes_as_huffman_does():
    tensors = _model()
    with_rans = dcformat.save(tensors, policy=Policy(step=0.02))
    only_huffman = dcformat.save(tensors, policy=Policy(step=0.02, coder="huffman"))
    assert struct.unpack_from("<H", with_rans, 10)[0] == 4
    assert struct.unpack_from("<H", only_huffman, 10)[0] <= 3
    assert len(with_rans) < len(only_huffman)
    a, b = dcformat.load(with_rans), dcformat.load(only_huffman)
    for name in tensors:
        assert np.array_equal(a[name].view(np.uint32), b[name].view(np.uint32))
    assert "rans" in _codings(dcformat.open(with_rans)).values()
    assert "rans" not in _codings(dcformat.open(only_huffman)).values()
    for threads in (1, 2):
        with dcformat.open(with_rans) as f:
            assert np.array_equal(f.get_tensor("w", threads=threads), a["w"])


def test_huffman_off_writes_no_rans_and_row_scales_and_sparse_streams_may_be_rans():
    tensors = _model(1)
    off = dcformat.open(dcformat.save(tensors, policy=Policy(step=0.02, huffman="off")))
    assert set(_codings(off).values()) == {"fixed"}
    rows = np.exp2(np.round(np.random.default_rng(2).uniform(-3, 3, 300)))
    scaled = dcformat.save(tensors, policy=Policy(step=0.05, row_scales={"w": rows}))  # coarse: 0 is common
    f = dcformat.open(scaled)
    assert f.layout("w").indices.coding == "rans" and f.layout("w").scales_count > 1
    expected = dcformat.load(dcformat.save(tensors, policy=Policy(step=0.05, row_scales={"w": rows}, coder="huffman")))
    assert np.array_equal(f.get_tensor("w"), expected["w"])
    x = np.where(np.random.default_rng(3).random((200, 100)) < 0.9, 0.0,
                 np.random.default_rng(4).standard_normal((200, 100))).astype(np.float32)
    draft = codec.draft_explicit("s", x, "sparse", layout="csr", index_bits=2)
    tables, encoded = codec.assemble([draft], "auto", rans=True)
    out = io.BytesIO()
    container.write_stream(out, {}, tables, encoded)
    g = dcformat.open(out.getvalue())
    assert g.layout("s").gaps.coding == "rans"
    assert np.array_equal(g.get_tensor("s"), x)
    assert np.array_equal(g.get_tensor("s", threads=2), x)


def test_a_rans_stream_in_a_1_3_file_is_a_header_error():
    data = bytearray(dcformat.save(_model(), policy=Policy(step=0.02)))
    struct.pack_into("<H", data, 10, 3)
    with pytest.raises(HeaderError, match="rans.*1.4"):
        dcformat.load(bytes(data))


def test_policy_and_cli_refuse_an_unknown_coder():
    with pytest.raises(EncodeError, match="coder must be one of"):
        Policy(coder="arithmetic")
    assert Policy(huffman="off").rans_gain is None and Policy(coder="huffman").rans_gain is None
    assert Policy().rans_gain == 0.02 and Policy(coder="rans").rans_gain == 0.0
    assert codec.estimate_coded_bytes(np.bincount(_skewed(10**5, 50, 0.7)), 10**5, 6, rans=True) < \
        codec.estimate_coded_bytes(np.bincount(_skewed(10**5, 50, 0.7)), 10**5, 6)


# ---------------------------------------------------------------------------------------------------
# One table per row class (the indices of a shared tensor with row scales)


@given(st.integers(0, 60), st.integers(1, 40), st.integers(1, 6), st.sampled_from([1, 5, 64, 1000, 1 << 16]),
       st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_round_trip_with_one_table_per_row_class(rows, cols, m, block, seed):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, m, rows).astype(np.uint16)
    # each class its own distribution: class j uses symbols j..j+3 mostly, so the tables differ
    symbols = (np.repeat(classes, cols) + rng.integers(0, 4, rows * cols)).astype(np.uint16)
    counts = rans.row_class_counts(symbols, classes, cols, m)
    assert counts.sum() == symbols.size
    tables = [rans.normalize(c) if c.any() else np.array([TOTAL]) for c in counts]
    data, sizes = rans.encode(symbols, tables, block, rows=(classes, cols))
    assert np.array_equal(rans.decode(data, symbols.size, tables, block, sizes, rows=(classes, cols)), symbols)
    stream = rans.prepare(data, symbols.size, tables, block, sizes, rows=(classes, cols))
    out = np.zeros(symbols.size, np.uint16)
    assert rans.decode_blocks(stream, out, 0, stream.blocks) and np.array_equal(out, symbols)


def test_class_tables_must_cover_the_rows():
    with pytest.raises(CorruptDataError, match="do not cover"):
        rans.prepare(b"\0" * 8, 10, [np.array([TOTAL])] * 2, 10, [8], rows=(np.zeros(3, np.uint16), 4))
    with pytest.raises(CorruptDataError, match="not below the 2 tables"):
        rans.prepare(b"\0" * 8, 12, [np.array([TOTAL])] * 2, 12, [8], rows=(np.array([0, 2, 1], np.uint16), 4))
    with pytest.raises(EncodeError, match="no frequency in table 1"):
        rans.encode(np.array([0, 0, 1, 1], np.uint16), [np.array([TOTAL // 2] * 2), np.array([TOTAL])], 8,
                    rows=(np.array([0, 1], np.uint16), 2))


def _scaled_file(coder: str = "auto") -> bytes:
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((3000, 64)) * 0.02).astype(np.float32)
    w[:1000] *= 5  # two populations of rows: one table each beats one table for all
    rows = np.where(np.arange(3000) < 1000, 4.0, 0.5) * np.exp2(np.round(rng.uniform(-1, 1, 3000)))
    return dcformat.save({"w": w}, policy=Policy(step=0.02, row_scales={"w": rows}, coder=coder))


def test_row_scaled_indices_take_a_table_per_class_and_decode_as_huffman_does():
    data, plain = _scaled_file(), _scaled_file("huffman")
    f = dcformat.open(data)
    info = f.layout("w")
    assert info.indices.coding == "rans" and isinstance(info.indices.frequencies, tuple)
    assert len(info.indices.frequencies) == info.scales_count > 2
    assert len(data) < 0.95 * len(plain)
    expected = dcformat.load(plain)["w"]
    for threads in (1, 2):
        assert np.array_equal(f.get_tensor("w", threads=threads).view(np.uint32), expected.view(np.uint32))


def _edit_header(data: bytes, edit) -> bytes:
    """The file with its tensor object changed by `edit`, as JSON text, the sections moved after it."""
    header = dcformat.open(data).header
    doc = json.loads(container.header_json_bytes(data[32: 32 + header.header_length], header.version)[0])
    edit(doc["tensors"][0])
    body = data[header.data_start:]
    sections = list(_sections(doc))
    for _ in range(4):  # the offsets' digits change the text's length: settle the data start
        text = json.dumps(doc, separators=(",", ":")).encode()
        region = text + b" " * ((-(32 + len(text))) % 64)
        delta = 32 + len(region) - min(s["offset"] for s in sections)
        if delta == 0:
            break
        for s in sections:
            s["offset"] += delta
    pre = struct.pack("<8sHHIQQ", data[:8], 1, 4, zlib.crc32(region), len(region), 32 + len(region) + len(body))
    return pre + region + body


def _sections(obj):
    if isinstance(obj, dict):
        if set(obj) == {"offset", "length", "crc32"}:
            yield obj
        for v in obj.values():
            yield from _sections(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _sections(v)


def test_class_tables_are_checked_from_the_header():
    data = _scaled_file()

    def drop_one(t):
        t["indices"]["frequencies"] = t["indices"]["frequencies"][:-1]

    def bad_table(t):
        t["indices"]["frequencies"][1] = "4000"

    def on_row_scales(t):
        t["row_scales"] = {"coding": "rans", "section": t["row_scales"]["section"], "frequencies": ["8000"],
                           "block_size": 1, "block_bytes": []}

    with pytest.raises(HeaderError, match="lists .* tables, the tensor has .* row scales"):
        dcformat.load(_edit_header(data, drop_one))
    with pytest.raises(FrequencyTableError, match=r"frequencies\[1\].*add up to 16384"):
        dcformat.load(_edit_header(data, bad_table))
    with pytest.raises(HeaderError, match="only for the indices of a shared tensor with row scales"):
        dcformat.load(_edit_header(data, on_row_scales))
    assert np.array_equal(dcformat.load(_edit_header(data, lambda t: None))["w"], dcformat.load(data)["w"])


def test_decoding_tables_of_distinct_class_tables_are_held_to_the_decoded_bytes_limit():
    data = _scaled_file()
    f = dcformat.open(data)
    distinct = len(set(f.layout("w").indices.frequencies))
    assert distinct >= 3
    need = distinct * (10 << 15)  # 2^15 slots of 10 bytes per distinct table
    tensor_bytes = 3000 * 64 * 4
    assert tensor_bytes < need - 1
    ok = dcformat.Limits(min_decoded_bytes=need, max_expansion=1)
    tight = dcformat.Limits(min_decoded_bytes=max(tensor_bytes, need - 1), max_expansion=1)
    assert np.array_equal(dcformat.load(data, limits=ok)["w"], dcformat.load(data)["w"])
    with pytest.raises(dcformat.LimitError, match=f"{distinct} distinct rANS tables"):
        dcformat.load(data, limits=tight)
