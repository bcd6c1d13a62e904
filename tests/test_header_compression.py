"""Format 1.1: the zlib-compressed header (spec §2.2, §7, §8) — written only when it pays, read by both
readers, every malformed stream refused with a named error, decompression bounded by the header limit."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcformat
from dcformat import Limits, Policy, codec, container
from dcformat import constants as K
from dcformat.cli import main as cli_main

from . import reference_decoder as ref
from .strategies import assert_same, names, tensors

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def many_tensors(n: int = 12) -> dict[str, np.ndarray]:
    """A model whose header is mostly repetitive JSON (many small tensors): compression pays."""
    rng = np.random.default_rng(3)
    out = {}
    for i in range(n):
        out[f"block{i}.fc.weight"] = rng.laplace(0, 0.05, (6, 8)).astype(np.float32)
        out[f"block{i}.fc.bias"] = rng.standard_normal(6).astype(np.float32)
    return out


def save(tensors: dict, compact: bool = True, **policy) -> bytes:
    return dcformat.save(tensors, policy=Policy(compact_header=compact, **policy), metadata={"m": "x"})


def preamble(data: bytes) -> tuple:
    return struct.unpack_from(K.PREAMBLE_FORMAT, data)


def region(data: bytes) -> bytes:
    return data[32 : 32 + preamble(data)[4]]


def stream_and_padding(data: bytes) -> tuple[bytes, bytes]:
    inflater = zlib.decompressobj()
    inflater.decompress(region(data))
    assert inflater.eof
    rest = inflater.unused_data
    return region(data)[: len(region(data)) - len(rest)], rest


def relative(data: bytes) -> tuple[dict, bytes]:
    """The header document with offsets counted from the data start, and the bytes from the data start:
    equal for the two header forms of the same model."""
    header = container.parse_header(data)
    text, _ = container.header_json_bytes(region(data), header.version)
    doc = json.loads(text)
    for t in doc["tensors"]:
        for key in ("data", "codebook", "gaps", "indices", "values"):
            if key in t:
                (t[key]["section"] if key in ("gaps", "indices") else t[key])["offset"] -= header.data_start
    return doc, data[header.data_start :]


def with_region(data: bytes, stored: bytes, *, minor: int = 1, crc: int | None = None) -> bytes:
    """The file with its header region replaced by `stored` + spaces (same length: offsets stay right)."""
    n = preamble(data)[4]
    assert len(stored) <= n, (len(stored), n)
    body = stored + b" " * (n - len(stored))
    pre = struct.pack(K.PREAMBLE_FORMAT, K.MAGIC, 1, minor, zlib.crc32(body) if crc is None else crc, n, len(data))
    return pre + body + data[32 + n :]


@pytest.fixture(scope="module")
def packed() -> bytes:
    data = save(many_tensors())
    assert data[32] == 0x78 and preamble(data)[2] == 1
    return data


@pytest.fixture(scope="module")
def text(packed) -> bytes:
    return zlib.decompress(stream_and_padding(packed)[0])


# --- the writer ------------------------------------------------------------------------------


def test_compressed_only_when_it_makes_the_file_smaller(packed):
    plain = save(many_tensors(), compact=False)
    assert plain[32:33] == b"{" and preamble(plain)[1:3] == (1, 0)
    assert len(packed) < len(plain)
    assert preamble(packed)[4] < preamble(plain)[4]  # the header region shrank by whole 64-byte steps
    assert relative(packed) == relative(plain)  # the same document and data, only the header differs
    # a tiny header gains nothing from zlib: JSON, and version 1.0 for 1.0 readers
    tiny = save({"b": np.ones(2, np.float32)})
    assert tiny[32:33] == b"{" and preamble(tiny)[1:3] == (1, 0)
    assert len(tiny) == len(save({"b": np.ones(2, np.float32)}, compact=False))


def test_compressed_header_layout(packed, text):
    """zlib level 9, CMF 0x78, no dictionary, the JSON text as the 1.0 writer writes it, the fewest spaces."""
    stream, padding = stream_and_padding(packed)
    assert stream[:2] == b"\x78\xda" and not stream[1] & 0x20
    assert stream == zlib.compress(text, 9)
    assert set(padding) <= {0x20} and len(padding) < 64
    assert text.startswith(b'{"metadata":{"m":"x"},"tables":') and text.endswith(b"}")
    magic, major, minor, crc, hlen, flen = preamble(packed)
    assert crc == zlib.crc32(region(packed)) != zlib.crc32(text)  # the CRC covers the stored bytes
    assert (32 + hlen) % 64 == 0 and flen == len(packed)


@FAST
@given(st.dictionaries(names, tensors(), min_size=0, max_size=6), st.booleans(), st.sampled_from(["auto", "off", "shared"]))
def test_round_trip_with_either_header(model, compact, huffman):
    """Any model, either header form: both readers decode it exactly; zlib only in 1.1 files and only when
    smaller; the compact file is never larger and holds the same document and data."""
    policy = Policy(compact_header=compact, huffman=huffman)
    data = dcformat.save(model, policy=policy)
    _, major, minor, _, hlen, _ = preamble(data)
    zlibbed = data[32] == 0x78
    with dcformat.open(data) as f:  # rans streams need 1.4, fields tensors and float8 dtypes 1.2 (§2.3), zlib 1.1
        newer = any(f.layout(n).encoding == "fields" or f.layout(n).dtype.startswith("float8") for n in f.keys())
        rans = any(s.coding == "rans" for n in f.keys() for s in (f.layout(n).indices, f.layout(n).gaps) if s)
    assert (major, minor) == (1, 4 if rans else 2 if newer else 1 if zlibbed else 0)
    assert compact or not zlibbed
    loaded = dcformat.load(data)
    theirs = ref.decode(data)
    assert list(loaded) == list(theirs) == list(model)
    decoded = dcformat.compress(model, policy=policy)  # the default policy quantizes finite 2-D tensors
    for name in model:
        assert_same(loaded[name], decoded[name])
        assert_same(theirs[name], decoded[name])
    if compact:
        plain = dcformat.save(model, policy=Policy(compact_header=False, huffman=huffman))
        assert len(data) <= len(plain) and (len(data) < len(plain)) == zlibbed
        if huffman == "off":  # otherwise Huffman choices may differ: they count a header-form cost
            assert relative(data) == relative(plain)
    if zlibbed:
        stream, padding = stream_and_padding(data)
        assert set(padding) <= {0x20} and len(padding) < 128  # the fewest spaces (rarely one step more)


def test_the_writer_header_iteration_converges_on_the_smallest_start():
    """_layout_header's result always holds its stream (over many sizes, where offsets change digits)."""
    for n in range(1, 60, 7):
        data = save(many_tensors(n))
        if data[32] != 0x78:
            continue
        stream, padding = stream_and_padding(data)
        assert 32 + len(stream) <= 32 + preamble(data)[4] < 32 + len(stream) + 128
        assert dcformat.load(data).keys() == many_tensors(n).keys()


def test_policy_compact_header_is_a_bool():
    assert Policy().compact_header is True
    with pytest.raises(dcformat.EncodeError, match="compact_header must be True or False"):
        Policy(compact_header="yes")


def test_save_file_honours_compact_header(tmp_path):
    for compact, first in ((True, 0x78), (False, 0x7B)):
        path = tmp_path / f"{compact}.dcf"
        dcformat.save_file(many_tensors(), path, policy=Policy(compact_header=compact))
        assert path.read_bytes()[32] == first


# --- the readers ---------------------------------------------------------------------------------


def _bad(packed: bytes, text: bytes, how: str) -> bytes:
    stream, _ = stream_and_padding(packed)
    if how == "first-byte":
        return with_region(packed, b"\x58\x09" + stream[2:])
    if how == "gzip":
        return with_region(packed, b"\x1f\x8b" + stream[2:])
    if how == "bom":
        return with_region(packed, b"\xef\xbb\xbf" + text[: 100])
    if how == "corrupt":
        return with_region(packed, stream[:2] + bytes([stream[2] | 0x06]) + stream[3:])  # block type 3
    if how == "truncated":
        n = preamble(packed)[4]
        cut = stream[: len(stream) - 5]
        # the region ends where the cut stream ends: no padding a reader might take for deflate data
        keep = (32 + len(cut)) // 64 * 64 - 32
        cut = cut[:keep]
        head = struct.pack(K.PREAMBLE_FORMAT, K.MAGIC, 1, 1, zlib.crc32(cut), len(cut), len(packed) - n + len(cut))
        return head + cut + packed[32 + n :]
    if how == "adler":
        return with_region(packed, stream[:-1] + bytes([stream[-1] ^ 0x10]))
    if how == "garbage":
        return with_region(packed, stream + b"\x00")
    if how == "second-stream":
        return with_region(packed, stream + zlib.compress(b" "))
    if how == "fdict":
        return with_region(packed, b"\x78\x20\x00\x00\x00\x01" + stream[2:])
    if how == "fcheck":
        return with_region(packed, b"\x78\x02" + stream[2:])
    if how == "version-1.0":
        return with_region(packed, stream, minor=0)
    if how == "nested":
        return with_region(packed, zlib.compress(zlib.compress(text, 9), 9))
    if how == "inner-bom":
        return with_region(packed, zlib.compress(b"\xef\xbb\xbf" + text, 9))
    if how == "inner-not-json":
        return with_region(packed, zlib.compress(text[:-1], 9))
    if how == "inner-not-utf8":
        return with_region(packed, zlib.compress(text.replace(b'"m":"x"', b'"m":"\xff"'), 9))
    if how == "inner-duplicate-key":
        return with_region(packed, zlib.compress(text.replace(b'{"m":"x"}', b'{"m":"x","m":"y"}'), 9))
    if how == "crc-of-json":
        return with_region(packed, stream, crc=zlib.crc32(text))
    if how == "empty":
        return with_region(packed, zlib.compress(b"", 9))
    raise AssertionError(how)


BAD = [
    ("first-byte", dcformat.HeaderError, r"starts with the byte 0x58: neither a JSON text .* nor a zlib stream \(0x78\)"),
    ("gzip", dcformat.HeaderError, "starts with the byte 0x1f"),
    ("bom", dcformat.HeaderError, "byte-order mark"),
    ("corrupt", dcformat.HeaderError, "zlib stream is corrupt: .*invalid block type"),
    ("truncated", dcformat.HeaderError, "zlib stream is truncated"),
    ("adler", dcformat.HeaderError, "zlib stream is corrupt: .*incorrect data check"),
    ("garbage", dcformat.HeaderError, "byte 0x00 follows the header's zlib stream: only spaces may pad it"),
    ("second-stream", dcformat.HeaderError, "byte 0x78 follows the header's zlib stream"),
    ("fdict", dcformat.HeaderError, r"preset dictionary \(FDICT set\)"),
    ("fcheck", dcformat.HeaderError, "zlib stream is corrupt: .*incorrect header check"),
    ("version-1.0", dcformat.HeaderError, r"needs format version 1.1 or later; this file says 1.0"),
    ("nested", dcformat.HeaderError, "decompressed header starts with the byte 0x78: it must be JSON text"),
    ("inner-bom", dcformat.HeaderError, "byte-order mark once decompressed"),
    ("inner-not-json", dcformat.HeaderError, "not valid JSON: .* at decompressed header byte"),
    ("inner-not-utf8", dcformat.HeaderError, "not valid UTF-8: .* at decompressed header byte"),
    ("inner-duplicate-key", dcformat.HeaderError, "duplicate key 'm'"),
    ("crc-of-json", dcformat.ChecksumError, "header CRC-32 mismatch"),
    ("empty", dcformat.HeaderError, "not valid JSON"),
]


@pytest.mark.parametrize("how, error, message", BAD, ids=[b[0] for b in BAD])
def test_every_reader_rejects_a_bad_compressed_header(packed, text, tmp_path, how, error, message):
    """dcformat (bytes, mmap, header-only) and the reference decoder refuse it with the same kind, and
    dcformat's message says what is wrong."""
    bad = _bad(packed, text, how)
    with pytest.raises(error, match=message) as e:
        dcformat.load(bad)
    assert type(e.value) is error
    if how != "inner-duplicate-key":  # a duplicate key is named, not placed (as in a JSON header)
        assert e.value.offset is not None and e.value.offset >= 32
    path = tmp_path / "bad.dcf"
    path.write_bytes(bad)
    for read in (dcformat.load_file, dcformat.read_header):
        with pytest.raises(error, match=message):
            read(path)
    with pytest.raises(error):
        ref.read_file(bad)


def test_a_json_header_may_still_start_with_whitespace_in_any_version(packed):
    """§2.2: the first-byte rule keeps 1.0's leading JSON whitespace (vector 22), and 1.1 files may
    hold a JSON header (vector 23)."""
    plain = save(many_tensors(), compact=False)
    n = preamble(plain)[4]
    doc_text = region(plain).rstrip(b" ")
    for lead in (b" ", b"\t", b"\r\n"):
        for minor in (0, 1, 9):
            moved = with_region(plain, lead + doc_text[: n - len(lead)] if len(doc_text) + len(lead) > n else lead + doc_text,
                                minor=minor)
            assert dcformat.load(moved).keys() == many_tensors().keys()
            assert ref.decode(moved).keys() == many_tensors().keys()


def test_more_padding_and_other_deflate_streams_are_accepted(packed, text):
    """Any valid zlib stream with CMF 0x78 (stored blocks, other levels, several blocks), any number of
    spaces after it, decompressed whitespace around the object, a later minor version."""
    expected = dcformat.load(packed)
    n = preamble(packed)[4]
    streams = [zlib.compress(text, 0)[: n] if len(zlib.compress(text, 0)) <= n else zlib.compress(text, 1),
               zlib.compress(b"\n " + text + b"\r\n\t", 6)]
    z = zlib.compressobj(9)
    streams.append(b"".join(z.compress(text[i : i + 50]) + z.flush(zlib.Z_FULL_FLUSH) for i in range(0, len(text), 50))
                   + z.flush())
    for stream in streams:
        if len(stream) > n:
            continue
        for minor in (1, 2, 65535):
            data = with_region(packed, stream, minor=minor)
            got = dcformat.load(data)
            assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)
            assert ref.decode(data).keys() == expected.keys()


# --- limits ------------------------------------------------------------------------------------


def test_the_header_limit_bounds_the_decompressed_text(packed, text):
    """The stored region is small; the text it decompresses to is what the limit counts: exactly at the
    limit is fine, one byte more is a LimitError (both readers)."""
    n = preamble(packed)[4]
    assert n < len(text)
    assert dcformat.load(packed, limits=Limits(max_header_bytes=len(text))).keys() == many_tensors().keys()
    assert ref.decode(packed, ref.Limits(max_header_bytes=len(text))).keys() == many_tensors().keys()
    with pytest.raises(dcformat.LimitError, match=f"decompresses to more than the limit of {len(text) - 1} bytes"):
        dcformat.load(packed, limits=Limits(max_header_bytes=len(text) - 1))
    with pytest.raises(dcformat.LimitError):
        ref.decode(packed, ref.Limits(max_header_bytes=len(text) - 1))
    # the stored length still counts on its own too
    with pytest.raises(dcformat.LimitError, match="header length"):
        dcformat.load(packed, limits=Limits(max_header_bytes=n - 1))


def _bomb(megabytes: int) -> bytes:
    """A small zlib stream of `megabytes` MB of spaces then an empty file's JSON (a valid header were
    it not for its size)."""
    z = zlib.compressobj(9)
    chunk = b" " * (1 << 20)
    stream = b"".join(z.compress(chunk) for _ in range(megabytes))
    stream += z.compress(b'{"metadata":{},"tables":[],"tensors":[]}') + z.flush()
    n = -(-(32 + len(stream)) // 64) * 64 - 32
    body = stream + b" " * (n - len(stream))
    return struct.pack(K.PREAMBLE_FORMAT, K.MAGIC, 1, 1, zlib.crc32(body), n, 32 + n) + body


def test_a_zip_bomb_is_refused_without_inflating_it():
    """A few KB that decompress to 64 MB: refused past a 1 MB limit after allocating about the limit,
    not the 64 MB (tracemalloc sees the decompressor's output buffers)."""
    bomb = _bomb(64)
    assert len(bomb) < 80_000
    limits = Limits(max_header_bytes=1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(dcformat.LimitError, match="decompresses to more than the limit of 1048576 bytes"):
            dcformat.load(bomb, limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    with pytest.raises(dcformat.LimitError):
        ref.decode(bomb, ref.Limits(max_header_bytes=1 << 20))
    # within a higher limit the same file is valid: an empty model
    assert dcformat.load(bomb, limits=Limits(max_header_bytes=100 << 20)) == {}


# --- inspect and the command line ----------------------------------------------------------------


def test_inspect_reports_the_stored_and_decompressed_header(packed, text, tmp_path, capsys):
    path = tmp_path / "m.dcf"
    path.write_bytes(packed)
    assert cli_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    n = preamble(packed)[4]
    assert f"dcformat 1.1, 24 tensors" in out
    assert f"header {32 + n:,} B (zlib: {n:,} B stored, {len(text):,} B of JSON)" in out
    assert cli_main(["inspect", "--json", str(path)]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert (totals["header_coding"], totals["header_stored_bytes"], totals["header_json_bytes"]) == ("zlib", n, len(text))
    plain = tmp_path / "p.dcf"
    plain.write_bytes(save(many_tensors(), compact=False))
    assert cli_main(["inspect", str(plain)]) == 0
    out = capsys.readouterr().out
    json_text = len(region(plain.read_bytes()).rstrip(b" "))
    assert "dcformat 1.0, 24 tensors" in out and f"(JSON: {json_text:,} B of text)" in out


def test_inspect_of_a_compressed_header_does_not_import_numba(packed, tmp_path):
    path = tmp_path / "m.dcf"
    path.write_bytes(packed)
    code = ("import sys; from dcformat.cli import main; rc = main(['inspect', sys.argv[1]]); "
            "assert 'numba' not in sys.modules, 'numba imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    assert result.returncode == 0, result.stderr
    assert "zlib:" in result.stdout


def test_compress_json_header_flag(tmp_path, capsys):
    src = tmp_path / "m.npz"
    np.savez(src, **many_tensors())
    for flag, version, first in (([], "1.1", 0x78), (["--json-header"], "1.0", 0x7B)):
        out = tmp_path / f"m{len(flag)}.dcf"
        assert cli_main(["compress", str(src), "-o", str(out), *flag, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["version"] == version
        assert out.read_bytes()[32] == first


# --- values in the header: json.loads' memory bounded before it runs (§7) ------------------------


def _zlib_file(text: bytes) -> bytes:
    """A version 1.1 file whose header is `text`, zlib-compressed."""
    stream = zlib.compress(text, 9)
    n = -(-(32 + len(stream)) // 64) * 64 - 32
    body = stream + b" " * (n - len(stream))
    return struct.pack(K.PREAMBLE_FORMAT, K.MAGIC, 1, 1, zlib.crc32(body), n, 32 + n) + body


def _structure(doc) -> int:
    """'[', '{', ',' and ':' a compact json.dumps of `doc` holds outside its strings, from the document."""
    if isinstance(doc, list):
        return 1 + max(len(doc) - 1, 0) + sum(_structure(v) for v in doc)
    if isinstance(doc, dict):
        return 1 + max(len(doc) - 1, 0) + len(doc) + sum(_structure(v) for v in doc.values())
    return 0


json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{},:"\\ ab\u00e9\n', max_size=12),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text('[{,:"\\x', max_size=4), children, max_size=5),
    max_leaves=30,
)


@given(json_docs)
@settings(max_examples=300, deadline=None)
def test_values_are_counted_outside_strings_exactly(doc):
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    assert container.count_json_values(text) == _structure(doc)
    for step in (1, 2, 3, 7):  # strings, escapes and runs of backslashes cut between pieces
        assert container.count_json_values(text, step=step) == _structure(doc)
    assert container.count_json_values(text, limit=len(text)) == len(text)  # short texts are not scanned


def test_a_header_of_many_tiny_values_is_refused_before_parsing():
    """Found by the fuzzer: ~100 MB of '[],' in a small zlib header cost ~2.5 GB inside json.loads.
    Past the value limit it is refused in bounded memory, by both readers; within it, it is parsed."""
    text = b'{"metadata":{},"tables":[],"tensors":[],"x":[' + b"[]," * 5_000 + b"[]]}"
    data = _zlib_file(text)
    values = container.count_json_values(text)
    assert values == _structure(json.loads(text)) == 12 + 5_001 + 5_000  # the top, the lists and their commas
    with pytest.raises(dcformat.LimitError, match=f"more JSON values than the limit of {values - 1} \\({values} "):
        dcformat.load(data, limits=Limits(max_header_values=values - 1))
    with pytest.raises(dcformat.LimitError):
        ref.decode(data, ref.Limits(max_header_values=values - 1))
    # with exactly that many values allowed, the same file reaches the document checks (unknown key "x")
    with pytest.raises(dcformat.HeaderError, match="x"):
        dcformat.load(data, limits=Limits(max_header_values=values))


def test_the_default_value_limit_bounds_a_bomb_of_empty_lists():
    """27 MB of '[],' (9 million values) in ~30 KB of file: LimitError at the default limits, counted
    as it is inflated, holding one 1 MB step of it (json.loads would have taken ~600 MB)."""
    text = b'{"tensors":[' + b"[]," * 9_000_000 + b"[]]}"
    data = _zlib_file(text)
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(dcformat.LimitError, match="JSON values"):
            dcformat.load(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
