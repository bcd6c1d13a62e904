"""The committed test vectors of spec/vectors (listed in spec/vectors/index.json).

(a) dcformat and the reference decoder decode every valid vector exactly (dtype, shape, bit
patterns, metadata); (b) dcformat's writer re-encodes the expected tensors with the recorded
settings into the same bytes; (c) both readers reject every invalid vector with its error kind
(spec §8.1). The vectors are frozen: spec/make_vectors.py must still write exactly them.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import dcformat
from dcformat import codec, container

from . import reference_decoder as ref
from .strategies import assert_same

SPEC = Path(__file__).resolve().parent.parent / "spec"
VECTORS = SPEC / "vectors"
INDEX = json.loads((VECTORS / "index.json").read_text("utf-8"))
VALID = INDEX["valid"]
INVALID = INDEX["invalid"]


def _ids(entries: list[dict]) -> list[str]:
    return [e["name"] for e in entries]


def _read(rel: str) -> bytes:
    return (VECTORS / rel).read_bytes()


def _expected(t: dict) -> np.ndarray:
    a = np.load(VECTORS / t["expected"], allow_pickle=False)
    if t["dtype"] in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):  # stored as their bit patterns
        return a.view(getattr(ml_dtypes, t["dtype"]))
    return a


def _dtype_name(a: np.ndarray) -> str:
    return "bfloat16" if a.dtype == np.dtype(ml_dtypes.bfloat16) else a.dtype.name


def test_the_index_covers_what_the_brief_asks():
    assert len(VALID) >= 15 and len(INVALID) >= 15
    stored = " ".join(t["stored"] for v in VALID for t in v["tensors"])
    for needle in ("raw", "shared", "csr", "csc", "raw values", "huffman", "fixed"):
        assert needle in stored
    for b in (1, 2, 4, 5, 8, 16):
        assert f"b={b} " in stored
    for bits in (1, 4, 5, 8):
        assert f"bits={bits}" in stored
    assert {e["error"] for e in INVALID} == {
        "FormatError", "VersionError", "TruncatedError", "HeaderError", "ChecksumError", "HuffmanTableError",
        "FrequencyTableError", "CorruptDataError", "LimitError"}
    assert "rans" in stored and "indices rans" in stored and "gaps rans" in stored and "row_scales rans" in stored


def test_the_index_lists_every_file_and_nothing_else():
    listed = {"index.json", "index.md"}
    for v in VALID:
        listed.add(v["file"])
        listed.update(t["expected"] for t in v["tensors"])
    listed.update(e["file"] for e in INVALID)
    on_disk = {p.relative_to(VECTORS).as_posix() for p in VECTORS.rglob("*") if p.is_file()}
    assert on_disk == listed


@pytest.mark.parametrize("v", VALID, ids=_ids(VALID))
def test_dcformat_decodes_valid_vector(v):
    data = _read(v["file"])
    with dcformat.open(data) as f:
        assert f.keys() == [t["name"] for t in v["tensors"]]
        assert f.metadata == v["metadata"]
        for t in v["tensors"]:
            got = f.get_tensor(t["name"])
            assert _dtype_name(got) == t["dtype"] and list(got.shape) == t["shape"]
            assert_same(got, _expected(t))


@pytest.mark.parametrize("v", VALID, ids=_ids(VALID))
def test_reference_decodes_valid_vector(v):
    f = ref.read_file(_read(v["file"]), strict=True)
    assert f.metadata == v["metadata"]
    assert [t.name for t in f.tensors] == [t["name"] for t in v["tensors"]]
    for got, t in zip(f.tensors, v["tensors"]):
        assert got.dtype == t["dtype"] and list(got.shape) == t["shape"]
        assert got.data == _expected(t).tobytes()
        assert_same(got.array(), _expected(t))


def _lookup(array: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Each element's codebook index, matched by bit pattern."""
    size = array.dtype.itemsize
    where = {bytes(codebook[i : i + 1].view(np.uint8)): i for i in reversed(range(len(codebook)))}
    rows = np.ascontiguousarray(array).reshape(-1).view(np.uint8).reshape(-1, size)
    return np.array([where[bytes(r)] for r in rows], dtype=np.int64)


def _draft(t: dict, a: np.ndarray, settings: dict | None = None) -> codec.TensorDraft:
    """The tensor in the recorded form, with dcformat's explicit drafting API."""
    if t["encoding"] == "fields":
        settings = settings or {}
        return codec.draft_explicit(t["name"], a, "fields", fields=tuple(t["fields"]), chunk_size=t["chunk_size"],
                                    huffman=settings.get("huffman", "off"),
                                    header_cost=settings.get("huffman_header_cost", 0))
    if t["encoding"] == "raw":
        return codec.draft_explicit(t["name"], a, "raw")
    kw = {"layout": t["layout"], "index_bits": t["index_bits"]} if t["encoding"] == "sparse" else {}
    if t["codebook"] is None:
        return codec.draft_explicit(t["name"], a, t["encoding"], **kw)
    bits = np.array([int(h, 16) for h in t["codebook"]], dtype=f"<u{a.dtype.itemsize}")
    cb = bits.view(a.dtype)
    if "scales" in t:  # format 1.3, row scales (§5.2): indices and row classes as recorded
        scales = np.array([int(h, 16) for h in t["scales"]], dtype=f"<u{a.dtype.itemsize}").view(a.dtype)
        return codec.draft_explicit(t["name"], a, "shared", codebook=cb, indices=np.array(t["indices"], dtype=np.int64),
                                    scales=scales, row_scales=np.array(t["row_scales"], dtype=np.int64))
    return codec.draft_explicit(t["name"], a, t["encoding"], codebook=cb, indices=_lookup(a, cb), **kw)


REENCODE = [v for v in VALID if v["reencode"]]


def _reencode(v: dict) -> bytes:
    """The vector's expected tensors through dcformat's writer with the recorded settings (1.0 vectors
    predate compact_header and huffman_header_cost: they were written with False and 0; vectors before
    1.4 predate coder: they were written without rANS)."""
    settings = v["settings"]
    drafts = [_draft(t, _expected(t), settings) for t in v["tensors"]]
    tables, encoded = codec.assemble(drafts, settings["huffman"], settings["block_size"],
                                     header_cost=settings.get("huffman_header_cost", 0),
                                     rans=settings.get("coder", "huffman") == "rans")
    out = io.BytesIO()
    container.write_stream(out, v["metadata"], tables, encoded, compact_header=settings.get("compact_header", False))
    return out.getvalue()


def _relative(data: bytes) -> tuple[dict, bytes]:
    """A file's header document with every section offset counted from the data start, and the bytes
    from the data start on: what a file is, whatever its header region holds and however long it is."""
    header = container.parse_header(data)
    text, _ = container.header_json_bytes(data[32 : header.data_start], header.version)
    doc = json.loads(text)
    for t in doc["tensors"]:
        for s in (s for c in t.get("chunks", []) for s in c):
            s["section"]["offset"] -= header.data_start
        for key in ("data", "codebook", "scales", "row_scales", "gaps", "indices", "values"):
            if key in t:
                (t[key]["section"] if key in ("row_scales", "gaps", "indices") else t[key])["offset"] -= header.data_start
    return doc, data[header.data_start :]


@pytest.mark.parametrize("v", REENCODE, ids=_ids(REENCODE))
def test_writer_reproduces_valid_vector(v):
    """Byte for byte; for a compressed header (whose bytes depend on the zlib build, and which the vector
    holds as make_vectors.py's own deflate stream), the decompressed JSON and every byte after the
    header exactly, and the writer's header bytes where the zlib is the one recorded."""
    out, vector = _reencode(v), _read(v["file"])
    if not v["settings"].get("compact_header", False):
        assert out == vector
        return
    assert out[32] == 0x78 and out[8:12] == b"\x01\x00\x01\x00"  # the writer compresses it: version 1.1
    assert _relative(out) == _relative(vector)
    recorded = v["writer_header"]
    if recorded["zlib"] == zlib.ZLIB_RUNTIME_VERSION:
        n = int.from_bytes(out[16:24], "little")
        assert (n, zlib.crc32(out[32 : 32 + n])) == (recorded["header_length"], recorded["header_crc32"])


def test_the_one_zero_vectors_stay_one_zero():
    """Every vector without a compressed header says version 1.0 (but the hand-made minor-version ones),
    so a 1.0 reader reads them; each with one says 1.1 or later."""
    for v in VALID:
        data = _read(v["file"])
        minor = int.from_bytes(data[10:12], "little")
        if data[32] == 0x78:
            assert minor >= 1, v["name"]
        elif int(v["name"][:2]) >= 38:  # format 1.4 vectors: rans streams
            assert minor == 4, v["name"]
        elif int(v["name"][:2]) >= 33:  # format 1.3 vectors: row scales
            assert minor == 3, v["name"]
        elif int(v["name"][:2]) >= 29:  # format 1.2 vectors: the fields encoding or float8
            assert minor == 2, v["name"]
        elif v["name"] != "23-minor-version":
            assert minor == 0, v["name"]


@pytest.mark.parametrize("e", INVALID, ids=_ids(INVALID))
def test_dcformat_rejects_invalid_vector(e):
    with pytest.raises(dcformat.DCFError) as info:
        dcformat.load(_read(e["file"]))
    assert type(info.value).__name__ == e["error"], info.value


@pytest.mark.parametrize("e", INVALID, ids=_ids(INVALID))
def test_reference_rejects_invalid_vector(e):
    with pytest.raises(dcformat.DCFError) as info:
        ref.read_file(_read(e["file"]))
    assert type(info.value).__name__ == e["error"], info.value


def test_invalid_vectors_also_fail_the_file_reader(tmp_path):
    """dcformat's path-based reader (mmap, read_header) rejects them with the same kinds."""
    for e in INVALID:
        path = tmp_path / "x.dcf"
        path.write_bytes(_read(e["file"]))
        with pytest.raises(dcformat.DCFError) as info:
            dcformat.load_file(path)
        assert type(info.value).__name__ == e["error"], (e["name"], info.value)


# ------------------------------------------------------------------------------------------------
# The vectors are frozen, and the spec's examples are the vectors


def _generator():
    spec = importlib.util.spec_from_file_location("make_vectors", SPEC / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator():
    return _generator()


def test_generator_still_writes_exactly_the_committed_vectors(generator, capsys):
    assert generator.main(["--check", "--out", str(VECTORS)]) == 0, capsys.readouterr().err


def test_generator_refuses_to_overwrite_a_vector(generator, tmp_path, capsys):
    assert generator.main(["--out", str(tmp_path)]) == 0
    target = tmp_path / "01-spec-example.dcf"
    target.write_bytes(b"changed")
    assert generator.main(["--out", str(tmp_path)]) == 1
    assert "01-spec-example.dcf" in capsys.readouterr().err
    assert target.read_bytes() == b"changed"
    (tmp_path / "03-metadata.dcf").unlink()  # a missing vector is written again
    assert generator.main(["--out", str(tmp_path)]) == 1
    assert (tmp_path / "03-metadata.dcf").read_bytes() == _read("03-metadata.dcf")


def test_generator_keeps_a_writer_record_made_with_another_zlib(generator, tmp_path, capsys):
    """writer_header says what dcformat's writer stored with the zlib named there: on a machine whose
    zlib differs, the check passes and the record stays (it cannot be remade here)."""
    assert generator.main(["--out", str(tmp_path)]) == 0
    index = json.loads((tmp_path / "index.json").read_text("utf-8"))
    entry = next(v for v in index["valid"] if "writer_header" in v)
    entry["writer_header"] = {"zlib": "0.0-elsewhere", "header_length": 1, "header_crc32": 2}
    text = json.dumps(index, indent=1, ensure_ascii=False) + "\n"
    (tmp_path / "index.json").write_text(text, "utf-8")
    assert generator.main(["--check", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    entry["writer_header"]["zlib"] = zlib.ZLIB_RUNTIME_VERSION  # the same zlib: the record must match
    (tmp_path / "index.json").write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n", "utf-8")
    assert generator.main(["--check", "--out", str(tmp_path)]) == 1


def test_generator_refuses_to_change_an_index_entry(generator, tmp_path):
    assert generator.main(["--out", str(tmp_path)]) == 0
    index = json.loads((tmp_path / "index.json").read_text("utf-8"))
    index["invalid"][0]["error"] = "HeaderError"
    text = json.dumps(index)
    (tmp_path / "index.json").write_text(text, "utf-8")
    assert generator.main(["--out", str(tmp_path)]) == 1
    assert (tmp_path / "index.json").read_text("utf-8") == text


def _spec_text() -> str:
    return (SPEC / "format.md").read_text("utf-8")


@pytest.mark.parametrize("vector", ["01-spec-example.dcf", "26-zlib-spec-example.dcf",
                                    "33-row-scales-spec-example.dcf", "38-rans-spec-example.dcf"])
def test_spec_hex_dump_is_the_vector(vector):
    """Appendix A's hex dumps (hexdump -C style, '*' for repeated lines) are the committed vectors 01 and 26."""
    text = _spec_text()
    block = text[text.index(f"<!-- hexdump: {vector} -->") :]
    block = block[block.index("```") + 3 :]
    block = block[block.index("\n") + 1 : block.index("```")]
    out = bytearray()
    previous = b""
    pending_repeat = False
    for line in block.splitlines():
        if line.strip() == "*":
            pending_repeat = True
            continue
        m = re.match(r"^([0-9a-f]{8})((?:\s+[0-9a-f]{2})*)", line)
        assert m, line
        offset = int(m.group(1), 16)
        if pending_repeat:
            while len(out) < offset:
                out += previous
            pending_repeat = False
        assert offset == len(out), (hex(offset), hex(len(out)))
        previous = bytes.fromhex(m.group(2))
        out += previous
    assert bytes(out) == _read(vector)


def test_spec_appendix_a2_figures_are_vector_26s():
    """The figures of Appendix A.2 and §2.2's example: 389 bytes of JSON in a 269-byte stream, 19 spaces,
    Adler-32 0xc4d878c2, and vector 01's sections 128 bytes earlier."""
    data, v01 = _read("26-zlib-spec-example.dcf"), _read("01-spec-example.dcf")
    header = container.parse_header(data)
    assert (header.version, header.header_length, header.data_start, len(data)) == ((1, 1), 288, 320, 450)
    assert (header.header_coding, header.json_length) == ("zlib", 389)
    inflater = zlib.decompressobj()
    text = inflater.decompress(data[32:320])
    assert (len(text), len(inflater.unused_data), inflater.unused_data) == (389, 19, b" " * 19)
    assert data[32:34] == b"\x78\x01" and data[0x129:0x12D] == bytes.fromhex("c4d878c2") == zlib.adler32(text).to_bytes(4, "big")
    assert data[34] == 0xAB and int.from_bytes(data[12:16], "little") == 0x9C060295
    assert data[320:] == v01[448:]
    spec = _spec_text()
    assert "`78 01 … c4 d8 78 c2`" in spec and "226-byte" in spec
    assert len(zlib.compress(text, 9)) == 226 or zlib.ZLIB_RUNTIME_VERSION != "1.2.13"  # the figure quoted


def test_spec_header_json_is_vector_01s():
    text = _spec_text()
    block = text[text.index("<!-- header: 01-spec-example.dcf -->") :]
    block = block[block.index("```json") + 7 : block.index("```", block.index("```json") + 7)]
    data = _read("01-spec-example.dcf")
    header, _ = container.parse_header(data).header_length, None
    assert json.loads(block) == json.loads(data[32 : 32 + header])


def test_spec_readme_lists_every_vector():
    readme = (SPEC / "README.md").read_text("utf-8")
    for v in VALID:
        assert f"`{v['name']}`" in readme, v["name"]
    for e in INVALID:
        number, rest = e["name"].split("-", 1)
        row = next(line for line in readme.splitlines() if line.startswith(f"| {e['error']} |"))
        assert f" {number} " in row, e["name"]


def test_header_reader_makes_every_header_check(tmp_path):
    """dcformat.read_header (what `inspect` uses) raises the kind of every invalid vector whose broken
    rule is a header check (§8, checks 1-6), and lets pass those found only while decoding data."""
    for e in INVALID:
        path = tmp_path / "x.dcf"
        path.write_bytes(_read(e["file"]))
        found_while_decoding = e["error"] == "CorruptDataError" or e["rule"] == "§3.3"
        try:
            dcformat.read_header(path)
        except dcformat.DCFError as err:
            assert not found_while_decoding and type(err).__name__ == e["error"], (e["name"], err)
        else:
            assert found_while_decoding, e["name"]


def test_spec_fields_example_is_vector_29s():
    """§5.4's worked example: its tensor object, table, and section bytes are vector 29's."""
    text = _spec_text()
    section = text[text.index("### §5.4"):text.index("## §6 Streams")]
    block = section[section.index("```json") + 7:]
    obj = json.loads(block[: block.index("```")])
    data = _read("29-fields-spec-example.dcf")
    doc = json.loads(data[32:448].rstrip(b" "))
    assert doc["tensors"] == [obj] and len(data) == 513
    assert f'`"{doc["tables"][0]}"`' in section
    assert data[448:453] == bytes.fromhex("0000000080") and data[512:513] == bytes([0x1C])
    assert "`00 00 00 00 80`" in section and "`0x1C`" in section


def test_spec_row_scales_example_is_vector_33s():
    """§5.2's row-scales worked example: its tensor object and section bytes are vector 33's."""
    text = _spec_text()
    section = text[text.index("### §5.2"):text.index("### §5.3")]
    section = section[section.index("**Row scales**"):]
    block = section[section.index("```json") + 7:]
    obj = json.loads(block[: block.index("```")])
    data = _read("33-row-scales-spec-example.dcf")
    doc = json.loads(data[32:448].rstrip(b" "))
    assert doc["tensors"] == [obj] and len(data) == 642 and data[8:12] == b"\x01\x00\x03\x00"
    assert data[448:460] == bytes.fromhex("000080bf0000003f00000040")
    assert data[512:524] == bytes.fromhex("0000803e0000003f00004040")
    assert data[576:577] == b"\x12" and data[640:642] == b"\x49\x0a"
    for shown in ("`00 00 80 bf 00 00 00 3f 00 00 00 40`", "`00 00 80 3e 00 00 00 3f 00 00 40 40`", "`12`", "`49 0a`"):
        assert shown in section
    expected = np.array([[1.5, 6], [-0.25, 0.125], [1, 1]], np.float32)
    assert np.array_equal(dcformat.load(data)["w"], expected)
    assert "[[1.5, 6], [-0.25, 0.125], [1, 1]]" in section


def test_spec_rans_example_is_vector_38s():
    """§6.4's worked example: its table, block bytes, states and tensor object are vector 38's, and the
    table of decoding steps is what the spec's loop computes."""
    text = _spec_text()
    section = text[text.index("### §6.4"):text.index("## §7 Limits")]
    block = section[section.index("<!-- rans-tensor: 38-rans-spec-example.dcf -->"):]
    block = block[block.index("```json") + 7:]
    obj = json.loads(block[: block.index("```")])
    data = _read("38-rans-spec-example.dcf")
    header = container.parse_header(data)
    doc = json.loads(data[32 : header.data_start].rstrip(b" "))
    assert doc["tensors"] == [obj] and len(data) == 460 and data[8:12] == b"\x01\x00\x04\x00"
    s = obj["indices"]["section"]
    payload = data[s["offset"] : s["offset"] + s["length"]]
    assert payload == bytes.fromhex("e67f800001000000" "70000206")
    assert "e6 7f 80 00 01 00 00 00   70 00 02 06" in section and '`"7fe000100010"`' in section
    assert "`0x100807fe6`" in section and "`0x06020070`" in section
    freqs = ref.parse_frequencies(obj["indices"]["frequencies"])
    cum = [0, freqs[0], freqs[0] + freqs[1]]
    x, pos = int.from_bytes(payload[:8], "little"), 8
    for i in range(5):  # each row of the spec's table, recomputed
        slot = x % 32768
        s_ = max(t for t in range(3) if cum[t] <= slot)
        y = freqs[s_] * (x >> 15) + slot - cum[s_]
        row = f"| {i} | `{x:#x}` | {slot} | {s_} | `{freqs[s_]} × {x >> 15:#x} + {slot - cum[s_]} = {y:#x}` |"
        assert row in section, row
        if y < 1 << 31:
            y = (y << 32) | int.from_bytes(payload[pos : pos + 4], "little")
            pos += 4
        x = y
    assert (x, pos) == (1 << 31, 12)
    assert np.array_equal(dcformat.load(data)["r"], np.array([0.25, 0, -0.5, 0, 0.25], np.float32))


def test_only_the_format_1_4_vectors_record_a_coder():
    """The coder setting (rANS offered) is recorded on the writer-made 1.4 vectors only: replaying the
    older vectors' settings never turns rANS on."""
    for v in REENCODE:
        assert ("coder" in v["settings"]) == (int(v["name"][:2]) >= 38), v["name"]
