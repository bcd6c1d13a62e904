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
    return a.view(ml_dtypes.bfloat16) if t["dtype"] == "bfloat16" else a


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
        "CorruptDataError", "LimitError"}


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


def _draft(t: dict, a: np.ndarray) -> codec.TensorDraft:
    """The tensor in the recorded form, with dcformat's explicit drafting API."""
    if t["encoding"] == "raw":
        return codec.draft_explicit(t["name"], a, "raw")
    kw = {"layout": t["layout"], "index_bits": t["index_bits"]} if t["encoding"] == "sparse" else {}
    if t["codebook"] is None:
        return codec.draft_explicit(t["name"], a, t["encoding"], **kw)
    bits = np.array([int(h, 16) for h in t["codebook"]], dtype=f"<u{a.dtype.itemsize}")
    cb = bits.view(a.dtype)
    return codec.draft_explicit(t["name"], a, t["encoding"], codebook=cb, indices=_lookup(a, cb), **kw)


REENCODE = [v for v in VALID if v["reencode"]]


@pytest.mark.parametrize("v", REENCODE, ids=_ids(REENCODE))
def test_writer_reproduces_valid_vector(v):
    drafts = [_draft(t, _expected(t)) for t in v["tensors"]]
    tables, encoded = codec.assemble(drafts, v["settings"]["huffman"], v["settings"]["block_size"])
    out = io.BytesIO()
    container.write_stream(out, v["metadata"], tables, encoded)
    assert out.getvalue() == _read(v["file"])


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


def test_spec_hex_dump_is_vector_01():
    """Appendix A's hex dump (hexdump -C style, '*' for repeated lines) is the committed vector 01."""
    text = _spec_text()
    block = text[text.index("<!-- hexdump: 01-spec-example.dcf -->") :]
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
    assert bytes(out) == _read("01-spec-example.dcf")


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
