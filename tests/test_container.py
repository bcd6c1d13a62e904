"""The container: layout rules (spec §2-§4) and a named error for every kind of malformed file."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

import dcformat
from dcformat import Policy
from dcformat import constants as K
from dcformat.container import Limits, align64, parse_header

from .filetools import file_with_header_text, poke, resection, split, with_header, with_header_text, with_preamble


def make_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    w = rng.laplace(0, 0.05, (80, 100)).astype(np.float32)
    return {
        "raw": rng.standard_normal(10).astype(np.float32),
        "shared": (rng.laplace(0, 1, (20, 30)) ** 3).astype(np.float32),  # skewed indices: Huffman pays
        "sparse": w,
        "values": np.where(rng.random((30, 30)) < 0.1, rng.standard_normal((30, 30)), 0).astype(np.float16),
    }


POLICY = Policy(prune=0.0, fc_bits=5, rules={"sparse": {"prune": 0.9, "bits": 5, "index_bits": 8}, "values": {"bits": 0, "prune": 0.0, "threshold": 0.0}},
                compact_header=False)  # a JSON header, so that the tests below can edit it in place


@pytest.fixture(scope="module")
def good() -> bytes:
    return dcformat.save(make_model(), policy=POLICY, metadata={"k": "v"})


def test_base_file_has_every_encoding(good):
    with dcformat.open(good) as f:
        kinds = {n: f.layout(n).encoding for n in f.keys()}
        assert kinds == {"raw": "raw", "shared": "shared", "sparse": "sparse", "values": "sparse"}
        assert f.layout("values").values is not None and f.layout("sparse").codebook is not None
        assert f.layout("sparse").gaps.coding == "huffman" and f.layout("shared").indices.coding == "huffman"


@pytest.mark.parametrize("compact", [False, True])
def test_layout_rules_hold(good, compact):
    """Preamble fields, 64-byte alignment, contiguity, zero padding and exact file length (§2, §4), with a
    JSON header (version 1.0) and with a zlib one (1.1)."""
    if compact:
        good = dcformat.save(make_model(), policy=POLICY.__class__(**{**POLICY.__dict__, "compact_header": True}),
                             metadata={"k": "v"})
    magic, major, minor, hcrc, hlen, flen = struct.unpack_from(K.PREAMBLE_FORMAT, good)
    assert magic == b"\x89DCF\r\n\x1a\n" and (major, minor) == (1, 1 if compact else 0)
    assert flen == len(good) and (32 + hlen) % 64 == 0
    assert zlib.crc32(good[32 : 32 + hlen]) == hcrc
    stored = good[32 : 32 + hlen].rstrip(b" ")
    assert len(good[32 : 32 + hlen]) - len(stored) < 64  # the fewest padding spaces
    text = zlib.decompress(stored) if compact else stored
    assert text.startswith(b'{"metadata":{"k":"v"},') and text.endswith(b"}")
    header = parse_header(good)
    end = header.data_start
    for t in header.tensors:
        for key, s in t.sections():
            assert s.offset == align64(end) and s.offset % 64 == 0
            assert not any(good[end : s.offset])
            assert zlib.crc32(good[s.offset : s.end]) == s.crc32
            end = s.end
    assert end == len(good)


# --- preamble --------------------------------------------------------------------------------


@pytest.mark.parametrize("mutate, error, message", [
    (lambda d: b"", dcformat.TruncatedError, "shorter than the 32-byte preamble"),
    (lambda d: d[:20], dcformat.TruncatedError, "shorter than"),
    (lambda d: b"PK\x03\x04" + d[4:], dcformat.FormatError, "bad magic"),
    (lambda d: b"\x89DCF\r\n\n\n" + d[8:], dcformat.FormatError, "bad magic"),
    (lambda d: with_preamble(d, major=2), dcformat.VersionError, "version 2.0 is not supported"),
    (lambda d: with_preamble(d, major=0), dcformat.VersionError, "not supported"),
    (lambda d: d[:-1], dcformat.TruncatedError, "file is truncated"),
    (lambda d: d + b"\0", dcformat.FormatError, "trailing data"),
    (lambda d: with_preamble(d, file_length=len(d) + 64), dcformat.TruncatedError, "truncated"),
    (lambda d: with_preamble(d, header_crc=0), dcformat.ChecksumError, "header CRC-32 mismatch"),
    (lambda d: with_preamble(d, header_length=0), dcformat.FormatError, "header length is 0"),
    (lambda d: with_preamble(d, header_length=33), dcformat.FormatError, "not a multiple of 64"),
    (lambda d: with_preamble(d, header_length=2**63), dcformat.LimitError, "exceeds the limit"),
    (lambda d: with_preamble(d, header_length=len(d)), dcformat.TruncatedError, "runs past the end"),
])
def test_bad_preamble(good, mutate, error, message):
    with pytest.raises(error, match=message):
        dcformat.load(mutate(good))


def test_newer_minor_version_is_read(good):
    out = dcformat.load(with_preamble(good, minor=7))
    assert set(out) == {"raw", "shared", "sparse", "values"}


# --- header JSON -----------------------------------------------------------------------------


@pytest.mark.parametrize("text, error, message", [
    (b"{", dcformat.HeaderError, "not valid JSON"),
    (b"[]", dcformat.HeaderError, r"starts with the byte 0x5b: neither a JSON text \('\{' or whitespace\) nor a zlib"),
    (b" []", dcformat.HeaderError, "must be a JSON object"),
    (b"\xff{}", dcformat.HeaderError, "starts with the byte 0xff"),
    (b'{"\xff":1}', dcformat.HeaderError, "not valid UTF-8: invalid start byte at header byte 2"),
    (b"\r\n\t {", dcformat.HeaderError, "not valid JSON"),
    ("\ufeff{}".encode(), dcformat.HeaderError, "byte-order mark"),
    (b'{"metadata":{},"tables":[],"tensors":[],"tensors":[]}', dcformat.HeaderError, "duplicate key 'tensors'"),
    (b'{"metadata":{},"tables":[]}', dcformat.HeaderError, "lacks key"),
    (b'{"metadata":{},"tables":[],"tensors":[],"extra":1}', dcformat.HeaderError, "unknown key"),
    (b'{"metadata":{"a":1},"tables":[],"tensors":[]}', dcformat.HeaderError, "object of strings"),
    (b'{"metadata":{},"tables":{},"tensors":[]}', dcformat.HeaderError, "'tables' must be a JSON array"),
    (b'{"metadata":{},"tables":[],"tensors":{}}', dcformat.HeaderError, "'tensors' must be a JSON array"),
    (b'{"metadata":{},"tables":[],"tensors":[NaN]}', dcformat.HeaderError, "NaN is not valid JSON"),
])
def test_bad_header_json(text, error, message):
    with pytest.raises(error, match=message):
        dcformat.load(file_with_header_text(text))


def _tensor(name):
    def get(doc):
        return next(t for t in doc["tensors"] if t["name"] == name)
    return get


def _set(name, *path, value):
    def mutate(doc):
        obj = _tensor(name)(doc)
        for p in path[:-1]:
            obj = obj[p]
        obj[path[-1]] = value
    return mutate


def _delete(name, key):
    def mutate(doc):
        del _tensor(name)(doc)[key]
    return mutate


@pytest.mark.parametrize("mutate, error, message", [
    (_set("raw", "dtype", value="float8"), dcformat.HeaderError, "dtype 'float8'"),
    (_set("raw", "encoding", value="zip"), dcformat.HeaderError, "encoding 'zip'"),
    (_set("raw", "shape", value=[5]), dcformat.FormatError, "must be 20 bytes"),
    (_set("raw", "shape", value=[10.0]), dcformat.HeaderError, "JSON integer"),
    (_set("raw", "shape", value=[-10]), dcformat.HeaderError, "outside"),
    (_set("raw", "shape", value=[True] * 10), dcformat.HeaderError, "JSON integer"),
    (_set("raw", "shape", value=[1] * 40), dcformat.LimitError, "rank 40 exceeds"),
    (_set("raw", "shape", value=[2**40, 2**40]), dcformat.LimitError, "would decode to"),
    (_set("raw", "name", value="shared"), dcformat.HeaderError, "duplicate tensor name"),
    (_set("raw", "name", value=""), dcformat.HeaderError, "name must be"),
    (_set("raw", "colour", value="red"), dcformat.HeaderError, "unknown key"),
    (_delete("raw", "data"), dcformat.HeaderError, "lacks key"),
    (_set("raw", "data", "offset", value=None), dcformat.HeaderError, "JSON integer"),
    (_set("raw", "data", "crc32", value=2**32), dcformat.HeaderError, "outside"),
    (_set("shared", "bits", value=0), dcformat.HeaderError, "bits is 0"),
    (_set("shared", "bits", value=17), dcformat.HeaderError, "bits is 17"),
    (_set("shared", "bits", value=2), dcformat.FormatError, "codebook of .* bytes is not 1..4 values"),
    (_set("shared", "indices", "coding", value="arith"), dcformat.HeaderError, "coding is 'arith'"),
    (_set("shared", "indices", "table", value=99), dcformat.HeaderError, "table is 99"),
    (_set("shared", "indices", "block_size", value=0), dcformat.HeaderError, "block_size is 0"),
    (_set("shared", "indices", "block_bytes", value=[1, 2]), dcformat.FormatError, "blocks"),
    (_set("shared", "dtype", value="bool"), dcformat.HeaderError, "bool tensors cannot have a codebook"),
    (_set("sparse", "dtype", value="bool"), dcformat.HeaderError, "bool tensors cannot have a codebook"),
    (_set("sparse", "layout", value="coo"), dcformat.HeaderError, "layout 'coo'"),
    (_set("sparse", "entries", value=10**9), dcformat.FormatError, "cannot fit"),
    (_set("sparse", "fillers", value=10**9), dcformat.HeaderError, "fillers is"),
    (_set("sparse", "index_bits", value=1), dcformat.HuffmanTableError, "more than the stream's alphabet"),
    (_set("values", "values", "length", value=3), dcformat.FormatError, "section 'values' must be"),
    (_set("values", "gaps", "section", "length", value=10**6), dcformat.FormatError, "must be .* bytes"),
    (_set("raw", "data", "offset", value=1), dcformat.FormatError, "starts at 1, expected"),
    (_set("values", "values", "offset", value=0), dcformat.FormatError, "expected"),
])
def test_bad_tensor_entries(good, mutate, error, message):
    with pytest.raises(error, match=message) as info:
        dcformat.load(with_header(good, mutate))
    assert isinstance(info.value, dcformat.DCFError)


@pytest.mark.parametrize("table, message", [
    ("", "length 0"),
    ("12G", "not lowercase hex"),
    ("12A", "not lowercase hex"),
    ("0000", "no symbol has a code"),
    ("2", "single used symbol must have code length 1"),
    ("111", "over-subscribed"),
    ("123", "incomplete"),
])
def test_bad_huffman_tables(good, table, message):
    def mutate(doc):
        doc["tables"][0] = table
    with pytest.raises(dcformat.HuffmanTableError, match=message):
        dcformat.load(with_header(good, mutate))


def test_missing_table_reference(good):
    def mutate(doc):
        doc["tables"] = []
    with pytest.raises(dcformat.HeaderError, match="table"):
        dcformat.load(with_header(good, mutate))


def test_sections_must_cover_the_file_exactly(good):
    header = parse_header(good)
    last = header.tensors[-1].sections()[-1][1]
    # a hole before the last section
    moved = with_header(good + b"\0" * 64, _set("values", "values", "offset", value=last.offset + 64))
    with pytest.raises(dcformat.FormatError, match="expected"):
        dcformat.load(moved)


def test_nonzero_padding_is_rejected(good):
    header = parse_header(good)
    end = header.tensors[0].sections()[0][1].end
    nxt = header.tensors[1].sections()[0][1].offset
    assert nxt > end
    with pytest.raises(dcformat.FormatError, match="non-zero padding"):
        dcformat.load(poke(good, end, b"\x01"))
    with pytest.raises(dcformat.FormatError, match="non-zero padding"):
        dcformat.read_header(_tmpfile(poke(good, end, b"\x01")))


def _tmpfile(data: bytes) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".dcf", delete=False)
    f.write(data)
    f.close()
    return f.name


# --- data sections ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, key", [("raw", "data"), ("shared", "codebook"), ("shared", "indices"),
                                       ("sparse", "gaps"), ("sparse", "indices"), ("values", "values")])
def test_section_checksum_errors_name_the_section(good, name, key):
    header = parse_header(good)
    info = header.by_name[name]
    section = dict(info.sections())[key]
    bad = poke(good, section.offset, bytes([good[section.offset] ^ 0x40]))
    with dcformat.open(bad) as f:  # the header is intact: opening works
        with pytest.raises(dcformat.ChecksumError, match=f"section '{key}'") as e:
            f.get_tensor(name)
    assert e.value.tensor == name and e.value.offset == section.offset


def test_gap_stream_running_past_the_end_is_corrupt_data():
    a = np.zeros((4, 4), np.float32)
    a[0, 0], a[3, 3] = 1.0, 2.0
    data = dcformat.save({"a": a}, policy=Policy(bits=0, threshold=0.0, index_bits=4, huffman="off", layout="csr"))
    doc, _ = split(data)
    t = doc["tensors"][0]
    assert (t["encoding"], t["entries"], t["fillers"]) == ("sparse", 2, 0)
    assert data[t["gaps"]["section"]["offset"]] == 0xE0  # gaps 0 and 14, low nibble first (§1)
    moved = dcformat.load(resection(data, 0, "gaps", bytes([0xD1]), stream=True))["a"]  # gaps 1, 13: positions 1, 15
    assert moved[0, 1] == 1.0 and moved[3, 3] == 2.0 and np.count_nonzero(moved) == 2
    bad = resection(data, 0, "gaps", bytes([0xF1]), stream=True)  # gaps 1 and 15: positions 1 and 17 of 16
    with pytest.raises(dcformat.CorruptDataError, match="past the end") as e:
        dcformat.load(bad)
    assert e.value.tensor == "a"
    with dcformat.open(bad) as f:
        with pytest.raises(dcformat.CorruptDataError, match="past the end"):
            f.get_sparse("a")


def test_codebook_index_out_of_range_is_corrupt_data():
    rng = np.random.default_rng(0)
    q = np.array([0.5, -1.0, 2.0], np.float32)[rng.integers(0, 3, (8, 8))]
    data = dcformat.save({"q": q}, policy=Policy(bits=2, huffman="off"))
    doc, _ = split(data)
    t = doc["tensors"][0]
    assert t["encoding"] == "shared" and t["codebook"]["length"] == 12 and t["indices"]["coding"] == "fixed"
    # index 3 (binary 11) everywhere: the codebook has 3 entries
    length = t["indices"]["section"]["length"]
    bad = resection(data, 0, "indices", b"\xff" * length, stream=True)
    with pytest.raises(dcformat.CorruptDataError, match="indices") as e:
        dcformat.load(bad)
    assert e.value.tensor == "q"


def test_bool_bytes_other_than_0_and_1_are_rejected():
    data = dcformat.save({"m": np.array([True, False, True])})
    bad = resection(data, 0, "data", b"\x01\x02\x01")
    with pytest.raises(dcformat.CorruptDataError, match="byte value 2"):
        dcformat.load(bad)


# --- limits ----------------------------------------------------------------------------------


def test_limits_can_be_lowered_and_raised(good):
    with pytest.raises(dcformat.LimitError, match="4 tensors, more than the limit of 3"):
        dcformat.load(good, limits=Limits(max_tensors=3))
    with pytest.raises(dcformat.LimitError, match="header length"):
        dcformat.load(good, limits=Limits(max_header_bytes=100))
    with pytest.raises(dcformat.LimitError, match="rank 2 exceeds"):
        dcformat.load(good, limits=Limits(max_rank=1))
    with pytest.raises(dcformat.LimitError, match=f"would decode to 32000 bytes, more than the limit of {len(good)} bytes"):
        dcformat.load(good, limits=Limits(min_decoded_bytes=0, max_expansion=1))
    with pytest.raises(dcformat.LimitError, match="tensors decode to more than"):
        dcformat.load(good, limits=Limits(min_decoded_bytes=32000, max_expansion=0))
    assert len(dcformat.load(good, limits=Limits(max_tensors=4))) == 4


def test_decompression_bomb_is_refused():
    """A small file claiming an all-zero sparse tensor of 100 GB is refused before allocating."""
    tiny = np.zeros((4, 4), np.float32)
    tiny[0, 0] = 1
    data = dcformat.save({"z": tiny}, policy=Policy(bits=0, threshold=0.0))
    doc, _ = split(data)
    assert doc["tensors"][0]["encoding"] == "sparse"
    bomb = with_header(data, _set("z", "shape", value=[250_000, 100_000]))
    assert len(bomb) < 2000
    with pytest.raises(dcformat.LimitError, match="would decode to 100000000000 bytes"):
        dcformat.load(bomb)
