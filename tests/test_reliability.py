"""Reliability: hostile files are refused with a named error before any kernel runs (the reader's
checklist of spec §8, beyond tests/test_container.py), writes that fail half way lose nothing, output
is deterministic, and concurrent readers (threads, processes, a file replaced while open) are safe."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import dcformat
from dcformat import Limits, Policy, bitpack, codec
from dcformat import constants as K
from dcformat.cli import main as cli_main
from dcformat.cli import verify_file
from dcformat.container import write_stream

from .filetools import file_with_header_text, poke, resection, split, with_header, with_header_text
from .strategies import assert_same

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(drafts: list, mode: str = "off", block_size: int = K.DEFAULT_BLOCK_SIZE, metadata=None) -> bytes:
    """A file with a JSON header (version 1.0): the tests below edit headers in place and compare offsets."""
    tables, encoded = codec.assemble(drafts, mode, block_size)
    out = io.BytesIO()
    write_stream(out, metadata or {}, tables, encoded, compact_header=False)
    return out.getvalue()


def sparse_codebook_file(layout: str = "csr", index_bits: int = 2, mode: str = "off") -> bytes:
    """A 6x5 sparse tensor with codebook [0, 0.5, -1, 2] (k=4, bits=2) and fillers."""
    idx = np.zeros((6, 5), np.int64)
    idx[0, 1], idx[2, 3], idx[5, 4] = 1, 2, 3
    cb = np.array([0.0, 0.5, -1.0, 2.0], np.float32)
    return build([codec.draft_explicit("w", np.zeros((6, 5), np.float32), "sparse", codebook=cb, indices=idx,
                                       layout=layout, index_bits=index_bits)], mode)


def shared_file(k: int = 5) -> bytes:
    """A 4x4 shared tensor with k codebook entries, indices at fixed width 3."""
    cb = np.arange(k, dtype=np.float32)
    return build([codec.draft_explicit("s", np.zeros((4, 4), np.float32), "shared", codebook=cb,
                                       indices=np.arange(16) % k)])


def tensor0(doc: dict) -> dict:
    return doc["tensors"][0]


def mutate(data: bytes, fn) -> bytes:
    return with_header(data, lambda doc: fn(tensor0(doc)))


def error_of(data: bytes, *, limits: Limits = Limits()) -> dcformat.DCFError:
    """The error dcformat.load raises for data (the test fails if it succeeds or raises anything else)."""
    with pytest.raises(dcformat.DCFError) as e:
        dcformat.load(data, limits=limits)
    return e.value


# =============================================================================================
# Sections: inside the file, 64-byte aligned, non-overlapping, no holes, nothing after the last (§4)


def test_sections_that_overlap_point_into_the_header_or_past_the_end_are_refused():
    data = sparse_codebook_file()
    doc, _ = split(data)
    t = tensor0(doc)
    cb, gaps = t["codebook"], t["gaps"]["section"]
    overlap = mutate(data, lambda t: t["gaps"]["section"].update(offset=cb["offset"]))
    assert "expected" in str(error_of(overlap)) and isinstance(error_of(overlap), dcformat.FormatError)
    into_header = mutate(data, lambda t: t["codebook"].update(offset=0))
    assert isinstance(error_of(into_header), dcformat.FormatError)
    for offset in (2**63, 2**64 + 64, 10**30):  # Python integers: no wrap-around to a plausible offset
        bad = mutate(data, lambda t: t["codebook"].update(offset=offset))
        e = error_of(bad)
        assert isinstance(e, dcformat.FormatError) and e.tensor == "w"
        assert e.offset == tensor0(split(bad)[0])["codebook"]["offset"] >= offset  # (a longer header shifts it)
    for length in (2**64, 2**63 - 1):
        e = error_of(mutate(data, lambda t: t["values" if "values" in t else "codebook"].update(length=length)))
        assert isinstance(e, dcformat.FormatError) and e.tensor == "w"
    # the last section running past the end of the file (the preamble's file length agrees)
    cut = data[:-1]
    cut = cut[:24] + len(cut).to_bytes(8, "little") + cut[32:]
    e = error_of(cut)
    assert isinstance(e, dcformat.TruncatedError) and e.offset == tensor0(doc)["indices"]["section"]["offset"]
    assert gaps["offset"] % 64 == 0


def test_nothing_may_follow_the_last_section_even_when_the_preamble_agrees():
    data = shared_file()
    longer = data + b"\0" * 64
    longer = longer[:24] + len(longer).to_bytes(8, "little") + longer[32:]
    e = error_of(longer)
    assert isinstance(e, dcformat.FormatError) and "follow the last section" in str(e) and e.offset == len(data)


def test_empty_file_with_sections_elsewhere_is_refused():
    """A header with no tensors, followed by data: a polyglot file has nowhere to hide."""
    data = file_with_header_text(b'{"metadata":{},"tables":[],"tensors":[]}')
    assert dcformat.load(data) == {}
    padded = data + b"\0" * 64
    padded = padded[:24] + len(padded).to_bytes(8, "little") + padded[32:]
    assert isinstance(error_of(padded), dcformat.FormatError)


# =============================================================================================
# Shapes, counts, stream lengths (§5, §6, §8)


@pytest.mark.parametrize("shape, message", [
    ([2**32, 2**32, 2**32], "would decode to"),
    ([2**64, 0], "dimensions too large"),
    ([0, 2**62, 2**62], "dimensions too large"),
    ([2**62, 0], "dimensions too large"),  # numel 0, but numpy cannot represent it
    ([1] * 33, "rank 33 exceeds"),
])
def test_shapes_whose_size_does_not_fit_are_limit_errors(shape, message):
    data = dcformat.save({"r": np.zeros(0, np.float32)})
    e = error_of(mutate(data, lambda t: t.update(shape=shape)))
    assert isinstance(e, dcformat.LimitError) and message in str(e) and e.tensor == "r"


def test_a_raised_rank_limit_stops_at_what_numpy_can_hold():
    data = dcformat.save({"r": np.zeros(0, np.float32)})
    deep = mutate(data, lambda t: t.update(shape=[1] * 64 + [0]))
    e = error_of(deep, limits=Limits(max_rank=100))
    assert isinstance(e, dcformat.LimitError) and "65 exceeds the 64 dimensions a numpy array" in str(e)
    ok = mutate(data, lambda t: t.update(shape=[1] * 63 + [0]))
    assert dcformat.load(ok, limits=Limits(max_rank=100))["r"].shape == (1,) * 63 + (0,)


def test_sparse_pointer_arrays_count_against_the_limit():
    """shape [n, 0] has no elements, but get_sparse would allocate n+1 row pointers."""
    data = build([codec.draft_explicit("e", np.zeros((5, 0), np.float32), "sparse")])
    big = mutate(data, lambda t: t.update(shape=[2**27, 0]))
    e = error_of(big)
    assert isinstance(e, dcformat.LimitError) and "row/column pointers" in str(e)
    with dcformat.open(big, limits=Limits(min_decoded_bytes=2**31)) as f:  # raised: allowed
        assert f.layout("e").shape == (2**27, 0)
    csc = mutate(data, lambda t: t.update(shape=[2**27, 0], layout="csc"))  # a csc view has 0 columns
    assert dcformat.load(csc)["e"].shape == (2**27, 0)


def test_entries_and_stream_lengths_must_agree():
    data = sparse_codebook_file()
    doc, _ = split(data)
    n = tensor0(doc)["entries"]
    # entries one more than the fixed-width streams can hold
    e = error_of(mutate(data, lambda t: t.update(entries=n + 1)))
    assert isinstance(e, dcformat.FormatError) and "fixed-width section" in str(e)
    # a fixed-width stream whose length is right for another count
    e = error_of(mutate(data, lambda t: t["gaps"]["section"].update(length=t["gaps"]["section"]["length"] + 1)))
    assert isinstance(e, dcformat.FormatError) and e.tensor == "w"


def huffman_sparse_file(block_size: int = 4) -> bytes:
    """A sparse 8x8 tensor (13 entries, 3 of them fillers) whose gap and index streams are Huffman-coded."""
    from dcformat import huffman
    from dcformat.container import EncodedTensor

    idx = np.zeros((8, 8), np.int64)
    idx.flat[[1, 2, 5, 9, 12, 20, 33, 34, 40, 63]] = [1, 1, 2, 1, 3, 1, 1, 2, 1, 1]
    cb = np.array([0.0, 0.5, -1.0, 2.0], np.float32)
    draft = codec.draft_explicit("h", np.zeros((8, 8), np.float32), "sparse", codebook=cb, indices=idx, index_bits=3)
    header, payloads, tables = dict(draft.header, codebook=0), [draft.payloads[0]], []
    for i, key in enumerate(("gaps", "indices"), start=1):
        s = draft.streams[key]
        lengths = huffman.code_lengths(s.counts)
        tables.append(huffman.lengths_to_hex(lengths))
        payload, block_bytes = huffman.encode(s.symbols, lengths, block_size)
        header[key] = {"coding": "huffman", "section": i, "table": i - 1, "block_size": block_size,
                       "block_bytes": block_bytes}
        payloads.append(payload)
    out = io.BytesIO()
    write_stream(out, {}, tables, [EncodedTensor(header, payloads)], compact_header=False)
    return out.getvalue()


@pytest.mark.parametrize("change, error, message", [
    (dict(block_bytes=[0, 0, 0, 0]), dcformat.FormatError, "add up to 0"),
    (dict(block_bytes=[-1, 2, 2, 2]), dcformat.HeaderError, "outside"),
    (dict(block_bytes=[2**64, 0, 0, 0]), dcformat.FormatError, "add up to"),
    (dict(block_bytes="12"), dcformat.HeaderError, "JSON array"),
    (dict(block_bytes=[2, 2, 2, 1.0]), dcformat.HeaderError, "JSON integer"),
    (dict(block_size=True), dcformat.HeaderError, "JSON integer"),
    (dict(block_size=1), dcformat.FormatError, "make 13 blocks"),
    (dict(block_size=0), dcformat.HeaderError, "block_size is 0"),
    (dict(table=-1), dcformat.HeaderError, "outside"),
    (dict(table=2), dcformat.HeaderError, "outside"),
    (dict(table="0"), dcformat.HeaderError, "JSON integer"),
])
def test_huffman_block_lists_and_table_references_are_checked(change, error, message):
    data = huffman_sparse_file()
    assert tensor0(split(data)[0])["gaps"]["block_bytes"] == [2, 2, 2, 1]
    e = error_of(mutate(data, lambda t: t["gaps"].update(change)))
    assert isinstance(e, error) and message in str(e) and e.tensor == "h"


def test_a_huffman_block_cannot_claim_more_symbols_than_its_bits():
    data = huffman_sparse_file()
    bb = tensor0(split(data)[0])["gaps"]["block_bytes"]
    assert bb == [2, 2, 2, 1]
    # all bytes in the first block: the others would hold 4, 4 and 1 symbols in 0 bytes
    e = error_of(mutate(data, lambda t: t["gaps"].update(block_bytes=[sum(bb), 0, 0, 0])))
    assert isinstance(e, dcformat.FormatError) and "cannot hold" in str(e)


def test_a_block_size_beyond_int64_means_one_block():
    data = huffman_sparse_file(block_size=64)  # 13 symbols: one block already
    expected = dcformat.load(data)["h"]
    for size in (2**63, 2**64, 10**40):
        assert_same(dcformat.load(mutate(data, lambda t: t["gaps"].update(block_size=size)))["h"], expected)


def test_huffman_stream_errors_name_tensor_and_offset():
    data = huffman_sparse_file()
    doc, _ = split(data)
    for key in ("gaps", "indices"):
        sec = tensor0(doc)[key]["section"]
        failures = 0
        # each block gets its own byte pattern; all-ones runs into invalid codewords or non-zero padding
        for fill in (0xFF, 0x00, 0x55, 0xAA, 0x80):
            bad = resection(data, 0, key, bytes([fill]) * sec["length"], stream=True)
            for read in ("get_tensor", "get_sparse"):
                with dcformat.open(bad) as f:
                    try:
                        getattr(f, read)("h")
                    except dcformat.CorruptDataError as e:
                        failures += 1
                        assert e.tensor == "h" and e.offset == sec["offset"], (key, read, str(e))
                        assert "Huffman block" in str(e) or "past the end" in str(e)
        assert failures >= 4, key


# =============================================================================================
# Tables and types (§3.4, §6.2)


@pytest.mark.parametrize("table, message", [
    ("1" + "f" * 65536, "length 65537"),
    ("f" * 16, "incomplete"),  # 16 codes of 15 bits: Kraft sum 16/32768
    ("0" * 65535 + "1", None),  # valid: one used symbol, but 65,536 symbols exceed the alphabet
    ("1" + "0" * 10 + "1", "alphabet"),  # valid code, longer than the stream's alphabet of 8
], ids=["65537-digits", "incomplete", "65536-digits", "beyond-alphabet"])
def test_huffman_tables_checked_against_spec_and_alphabet(table, message):
    data = huffman_sparse_file()
    e = error_of(with_header(data, lambda doc: doc["tables"].__setitem__(0, table)))
    assert isinstance(e, dcformat.HuffmanTableError)
    if message:
        assert message in str(e)


@pytest.mark.parametrize("key, value", [
    ("dtype", {"length": 6}), ("dtype", ["float32"]), ("dtype", 4), ("encoding", {"a": 1}), ("encoding", ["raw"]),
    ("encoding", None), ("layout", {"csr": 1}), ("layout", ["csr"]), ("name", 7), ("name", ["w"]), ("shape", "6x5"),
    ("shape", {"0": 6}), ("entries", 3.0), ("entries", "3"), ("index_bits", True), ("fillers", -1), ("bits", 2.5),
])
def test_wrongly_typed_header_values_are_header_errors(key, value):
    e = error_of(mutate(sparse_codebook_file(), lambda t: t.update({key: value})))
    assert isinstance(e, dcformat.HeaderError), repr(e)


@pytest.mark.parametrize("text", [
    b'{"metadata":{},"tables":[],"tensors":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    b'{"metadata":{},"tables":[],"tensors":[' + b"1" * 5000 + b"]}",  # beyond Python's int-digits limit
    b'{"metadata":{},"tables":[],"tensors":[1e400]}',
    b'{"metadata":{"k":"\\ud800"},"tables":[],"tensors":[]}',  # a lone surrogate: not text
    b'{"metadata":{"\\udfff":"v"},"tables":[],"tensors":[]}',
    b'{"metadata":{},"tables":[],"tensors":[{"name":"\\ud800","dtype":"bool","shape":[],"encoding":"raw",'
    b'"data":{"offset":64,"length":1,"crc32":0}}]}',
])
def test_hostile_json_is_a_header_error(text):
    assert isinstance(error_of(file_with_header_text(text)), dcformat.HeaderError)


def test_nul_and_non_ascii_text_are_fine():
    data = dcformat.save({"ü\u0000名": np.ones(2, np.int8)}, metadata={"\u0000": "✓\ud7ff\U0001f600"})
    with dcformat.open(data) as f:
        assert f.keys() == ["ü\u0000名"] and f.metadata == {"\u0000": "✓\ud7ff\U0001f600"}


# =============================================================================================
# Decoding-time checks: positions, codebook 0, bool bytes — named, with offsets


@pytest.mark.parametrize("layout", ["csr", "csc"])
@pytest.mark.parametrize("read", ["get_tensor", "get_sparse"])
def test_positions_past_the_end_are_corrupt_data_in_both_readers(layout, read):
    data = sparse_codebook_file(layout, index_bits=5)
    doc, _ = split(data)
    sec = tensor0(doc)["gaps"]["section"]
    # every gap 31: the first entry lands at position 31 of 30
    gaps = bitpack.pack(np.full(tensor0(doc)["entries"], 31), 5)
    assert len(gaps) == sec["length"]
    bad = resection(data, 0, "gaps", gaps, stream=True)
    with dcformat.open(bad) as f, pytest.raises(dcformat.CorruptDataError, match="past the end") as e:
        getattr(f, read)("w")
    assert e.value.tensor == "w" and e.value.offset == sec["offset"]


def test_fixed_width_index_beyond_the_codebook_is_corrupt_data():
    data = shared_file(k=5)
    doc, _ = split(data)
    sec = tensor0(doc)["indices"]["section"]
    bad = resection(data, 0, "indices", b"\xff" * sec["length"], stream=True)  # index 7 of 5
    e = error_of(bad)
    assert isinstance(e, dcformat.CorruptDataError) and e.tensor == "s" and e.offset == sec["offset"]


def test_sparse_codebook_entry_zero_must_be_zero():
    data = sparse_codebook_file()
    bad = resection(data, 0, "codebook", np.array([-0.0, 0.5, -1, 2], np.float32).tobytes())  # -0.0 is not all zero bits
    for read in ("get_tensor", "get_sparse"):
        with dcformat.open(bad) as f, pytest.raises(dcformat.CorruptDataError, match=r"codebook\[0\]") as e:
            getattr(f, read)("w")
        assert e.value.offset == tensor0(split(data)[0])["codebook"]["offset"]


@pytest.mark.parametrize("read", ["get_tensor", "get_sparse"])
def test_sparse_bool_values_other_than_0_and_1_are_refused(read):
    b = np.zeros((4, 4), bool)
    b[0, 1] = b[2, 3] = True
    data = build([codec.draft_explicit("b", b, "sparse", index_bits=4)])
    bad = resection(data, 0, "values", b"\x01\x03")
    with dcformat.open(bad) as f, pytest.raises(dcformat.CorruptDataError, match="byte value 3") as e:
        getattr(f, read)("b")
    assert e.value.tensor == "b"


# =============================================================================================
# Limits: defaults, raised, lowered


def test_a_small_file_cannot_ask_for_more_than_the_default_budget():
    """max(1 GiB, 10,000 x file length): a 1 KB file may decode to 1 GiB, not to 1 GiB + 4 bytes."""
    data = build([codec.draft_explicit("z", np.zeros((4, 4), np.float32), "sparse")])
    assert len(data) < 1024
    at_limit = mutate(data, lambda t: t.update(shape=[2**28]))  # exactly 1 GiB of float32
    with dcformat.open(at_limit) as f:
        assert f.layout("z").nbytes == 2**30
    e = error_of(mutate(data, lambda t: t.update(shape=[2**28 + 1])))
    assert isinstance(e, dcformat.LimitError) and e.tensor == "z"
    # five empty sparse tensors claiming 256 MiB each: together over the budget, though each fits
    five = build([codec.draft_explicit(f"z{i}", np.zeros((4, 4), np.float32), "sparse") for i in range(5)])
    many = with_header(five, lambda doc: [t.update(shape=[2**26]) for t in doc["tensors"]])
    e = error_of(many)
    assert isinstance(e, dcformat.LimitError) and "tensors decode to more than" in str(e) and e.tensor == "z4"
    assert len(dcformat.load(many, limits=Limits(min_decoded_bytes=5 * 2**28))) == 5
    hundred_gb = mutate(data, lambda t: t.update(shape=[25 * 2**30]))
    assert isinstance(error_of(hundred_gb), dcformat.LimitError)
    with dcformat.open(hundred_gb, limits=Limits(min_decoded_bytes=2**37)) as f:  # a caller may raise it
        assert f.layout("z").nbytes == 100 * 2**30


def test_limits_are_checked_before_the_header_is_parsed():
    data = shared_file()
    with pytest.raises(dcformat.LimitError, match="header length"):
        dcformat.load(data, limits=Limits(max_header_bytes=64))
    huge = data[:16] + (2**63).to_bytes(8, "little") + data[24:]
    with pytest.raises(dcformat.LimitError):
        dcformat.load(huge)


# =============================================================================================
# verify reports every problem


def test_verify_reports_every_problem_in_every_tensor(tmp_path, capsys):
    rng = np.random.default_rng(1)
    ok_values = rng.standard_normal(8).astype(np.float32)
    data = build([
        codec.draft_explicit("raw", rng.standard_normal(10).astype(np.float32), "raw"),
        codec.draft_explicit("shared", np.zeros((4, 4), np.float32), "shared", codebook=np.arange(5, dtype=np.float32),
                             indices=np.arange(16) % 5),
        codec.draft_explicit("fillers", np.eye(6, dtype=np.float32), "sparse", index_bits=1),
        codec.draft_explicit("gaps", np.eye(4, dtype=np.float32), "sparse", index_bits=4),
        codec.draft_explicit("fine", ok_values, "raw"),
    ])
    doc, _ = split(data)
    t = {x["name"]: x for x in doc["tensors"]}
    bad = poke(data, t["raw"]["data"]["offset"], b"\x00\x00\x80\x7f")  # checksum
    bad = resection(bad, 1, "indices", b"\xff" * t["shared"]["indices"]["section"]["length"], stream=True)
    bad = resection(bad, 3, "gaps", b"\xff" * t["gaps"]["gaps"]["section"]["length"], stream=True)
    bad = with_header(bad, lambda d: d["tensors"][2].update(fillers=d["tensors"][2]["fillers"] - 1))
    path = tmp_path / "bad.dcf"
    path.write_bytes(bad)
    result = verify_file(str(path))
    assert not result["ok"] and result["tensors"] == 2  # "fillers" decodes (only its count is off), "fine" too
    by_tensor = {}
    for p in result["problems"]:
        by_tensor.setdefault(p["tensor"], set()).add(p["error"])
    assert by_tensor == {"raw": {"ChecksumError"}, "shared": {"CorruptDataError"}, "gaps": {"CorruptDataError"},
                         "fillers": {"FormatError"}}
    assert cli_main(["verify", str(path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert {p["tensor"] for p in out["problems"]} == {"raw", "shared", "gaps", "fillers"}
    assert cli_main(["verify", str(path)]) == 1
    text = capsys.readouterr().out
    assert "section 'data'" in text and "tensor 'shared'" in text and "header says" in text


def test_verify_of_a_broken_header_reports_one_problem(tmp_path):
    path = tmp_path / "h.dcf"
    path.write_bytes(with_header_text(shared_file(), b'{"metadata":{},"tables":[],"tensors":[1]}'))
    result = verify_file(str(path))
    assert not result["ok"] and [p["error"] for p in result["problems"]] == ["HeaderError"]


# =============================================================================================
# Writing loses nothing


class FullDisk(io.RawIOBase):
    """A file whose disk fills up after `room` bytes: the next write raises OSError(ENOSPC)."""

    def __init__(self, real, room: int, exc: BaseException | None = None):
        self.real, self.room = real, room
        self.exc = exc or OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, b) -> int:
        n = memoryview(b).nbytes
        if n > self.room:
            self.real.write(bytes(memoryview(b).cast("B")[: self.room]))  # a partial write first
            self.room = 0
            raise self.exc
        self.room -= n
        return self.real.write(b)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self.real.flush()

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes first
            self.real.close()


def model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {"fc": rng.standard_normal((60, 40)).astype(np.float32), "b": rng.standard_normal(60).astype(np.float32)}


def listing(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("room", [0, 31, 32, 100, 1000, -1])
@pytest.mark.parametrize("existing", [True, False])
def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, room, existing):
    path = tmp_path / "m.dcf"
    if existing:
        dcformat.save_file({"old": np.arange(5, dtype=np.int16)}, path)
    before = path.read_bytes() if existing else None
    size = len(dcformat.save(model(), policy=Policy(prune=0.5)))
    room = size - 1 if room == -1 else room
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(real_fdopen(fd, *a, **k), room))
    with pytest.raises(OSError) as e:
        dcformat.save_file(model(), path, policy=Policy(prune=0.5))
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert listing(tmp_path) == (["m.dcf"] if existing else [])
    if existing:
        assert path.read_bytes() == before


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), MemoryError(), RuntimeError("boom")])
def test_an_interrupt_half_way_through_the_write_loses_nothing(tmp_path, monkeypatch, exc):
    path = tmp_path / "m.dcf"
    dcformat.save_file({"old": np.arange(5, dtype=np.int16)}, path)
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(real_fdopen(fd, *a, **k), 500, exc))
    with pytest.raises(type(exc)):
        dcformat.save_file(model(), path)
    monkeypatch.undo()
    assert path.read_bytes() == before and listing(tmp_path) == ["m.dcf"]


def test_an_encoder_failure_loses_nothing(tmp_path, monkeypatch):
    path = tmp_path / "m.dcf"
    dcformat.save_file({"old": np.arange(5, dtype=np.int16)}, path)
    before = path.read_bytes()
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(codec, "code_stream", failing)
    with pytest.raises(RuntimeError, match="encoder failed"):
        dcformat.save_file(model(), path)
    assert calls and path.read_bytes() == before and listing(tmp_path) == ["m.dcf"]


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_a_failing_fsync_or_rename_loses_nothing(tmp_path, monkeypatch, where):
    path = tmp_path / "m.dcf"
    dcformat.save_file({"old": np.arange(5, dtype=np.int16)}, path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, where, fail)
    with pytest.raises(OSError, match="I/O error"):
        dcformat.save_file(model(), path)
    monkeypatch.undo()
    assert path.read_bytes() == before and listing(tmp_path) == ["m.dcf"]


def test_a_rewrite_keeps_the_files_permissions(tmp_path):
    path = tmp_path / "m.dcf"
    dcformat.save_file({"old": np.arange(5, dtype=np.int16)}, path)
    os.chmod(path, 0o640)
    dcformat.save_file(model(), path)
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert dcformat.load_file(path).keys() == {"fc", "b"}


# =============================================================================================
# Deterministic output

POLICIES = {
    "default": Policy(),
    "pruned": Policy(prune=0.8, fc_bits=4, index_bits="auto"),
    "shared-tables": Policy(prune=0.6, huffman="shared", layout="auto"),
    "lossless": Policy(lossless=True),
}

DETERMINISM_SCRIPT = """
import hashlib, json, sys
import numpy as np
sys.path.insert(0, {root!r})
from tests.test_reliability import POLICIES, determinism_model
import dcformat
print(json.dumps({{k: hashlib.sha256(dcformat.save(determinism_model(), policy=p, metadata={{"b": "1", "a": "2"}})).hexdigest()
                  for k, p in POLICIES.items()}}))
"""


def determinism_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "conv": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "fc1": rng.laplace(0, 0.05, (50, 40)).astype(np.float32),
        "fc2": rng.laplace(0, 0.05, (10, 50)).astype(np.float16),
        "bias": rng.standard_normal(50).astype(np.float32),
        "steps": np.array(7, np.int64),
    }


def digests() -> dict[str, str]:
    return {k: hashlib.sha256(dcformat.save(determinism_model(), policy=p, metadata={"b": "1", "a": "2"})).hexdigest()
            for k, p in POLICIES.items()}


def test_same_tensors_and_policy_give_the_same_bytes_in_every_process(tmp_path):
    here = digests()
    assert here == digests()
    path = tmp_path / "m.dcf"
    dcformat.save_file(determinism_model(), path, policy=POLICIES["pruned"], metadata={"b": "1", "a": "2"})
    assert hashlib.sha256(path.read_bytes()).hexdigest() == here["pruned"]
    # another process, with string hashing (and so set and dict-of-set orders) seeded differently
    for hashseed in ["2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"]:
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        out = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT.format(root=ROOT)], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1]) == here, f"PYTHONHASHSEED={hashseed}"


# =============================================================================================
# Concurrent readers, and files replaced while open


@pytest.fixture(scope="module")
def shared_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("concurrent") / "m.dcf"
    dcformat.save_file(determinism_model(), path, policy=POLICIES["pruned"])
    return path


def test_threads_reading_one_open_file_get_correct_tensors(shared_path):
    expected = dcformat.load_file(shared_path)
    errors = []
    with dcformat.open(shared_path) as f:
        def read(i):
            try:
                for _ in range(10):
                    for name in reversed(f.keys()) if i % 2 else f.keys():
                        assert_same(f.get_tensor(name), expected[name])
                        if f.layout(name).encoding == "sparse":
                            assert_same(f.get_sparse(name).todense(), expected[name])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors


READER_SCRIPT = """
import hashlib, sys
sys.path.insert(0, {root!r})
import dcformat
with dcformat.open({path!r}) as f:
    for name in f.keys():
        a = f.get_tensor(name)
        print(name, a.dtype, a.shape, hashlib.sha256(a.tobytes()).hexdigest())
"""


def test_processes_reading_one_file_get_correct_tensors(shared_path):
    expected = dcformat.load_file(shared_path)
    want = "".join(f"{k} {a.dtype} {a.shape} {hashlib.sha256(a.tobytes()).hexdigest()}\n" for k, a in expected.items())
    script = READER_SCRIPT.format(root=ROOT, path=str(shared_path))
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out == want


def test_a_reader_never_sees_a_half_written_file(tmp_path):
    """One thread rewrites the file over and over (save_file: temporary file, then rename) while
    another opens and reads it: every read is one whole version, never a mix and never an error."""
    path = tmp_path / "m.dcf"
    versions = [{"a": np.full((64, 64), float(i), np.float32), "b": np.arange(i, i + 100, dtype=np.int32)} for i in range(2)]
    dcformat.save_file(versions[0], path)
    stop = threading.Event()
    seen, errors = set(), []

    def write():
        i = 0
        while not stop.is_set():
            i += 1
            dcformat.save_file(versions[i % 2], path, policy=Policy(lossless=True))

    def read():
        try:
            for _ in range(150):
                got = dcformat.load_file(path)
                v = int(got["b"][0])
                assert_same(got["a"], versions[v]["a"])
                assert_same(got["b"], versions[v]["b"])
                seen.add(v)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    writer, reader = threading.Thread(target=write), threading.Thread(target=read)
    writer.start()
    reader.start()
    reader.join()
    stop.set()
    writer.join()
    assert not errors, errors
    assert listing(tmp_path) == ["m.dcf"]


def test_a_file_replaced_while_open_keeps_serving_the_old_tensors(tmp_path):
    path = tmp_path / "m.dcf"
    old = {"a": np.arange(1000, dtype=np.float32), "s": np.eye(30, dtype=np.float32)}
    dcformat.save_file(old, path, policy=Policy(bits=0, threshold=0.0))
    with dcformat.open(path) as f:
        dcformat.save_file({"x": np.zeros(3, np.int8)}, path)  # replaced by rename
        os.unlink(path)  # and even removed
        assert f.keys() == ["a", "s"]
        assert_same(f.get_tensor("a"), old["a"])
        assert_same(f.get_tensor("s"), old["s"])


def test_a_file_overwritten_in_place_while_open_is_caught_by_the_checksums(tmp_path):
    """Not dcformat's way of writing (cp or a shell redirect does this): the map then shows the new
    bytes, and the section CRCs from the header read at open refuse them."""
    path = tmp_path / "m.dcf"
    dcformat.save_file({"a": np.arange(1000, dtype=np.float32)}, path, policy=Policy(lossless=True, zero_copy="*"))
    other = dcformat.save({"a": -np.arange(1000, dtype=np.float32)}, policy=Policy(lossless=True, zero_copy="*"))
    assert len(other) == os.path.getsize(path)
    with dcformat.open(path) as f:
        with open(path, "r+b") as out:  # same length, written in place
            out.write(other)
        with pytest.raises(dcformat.ChecksumError, match="section 'data'"):
            f.get_tensor("a")


SHRINK_SCRIPT = """
import os, sys
import numpy as np
import dcformat
path = sys.argv[1]
dcformat.save_file({"a": np.arange(100_000, dtype=np.float32)}, path, policy=dcformat.Policy(lossless=True))
with dcformat.open(path) as f:
    os.truncate(path, 4096)  # another program rewrites the file in place, shorter
    try:
        f.get_tensor("a")
    except dcformat.TruncatedError as e:
        print("TruncatedError", e.tensor)
"""


def test_a_file_truncated_in_place_while_open_is_an_error_not_a_sigbus(tmp_path):
    """Touching mapped pages past a file's new end raises SIGBUS; the reader checks the length first.
    (In a child process, so that a regression fails this test instead of killing the test run.)"""
    out = subprocess.run([sys.executable, "-c", SHRINK_SCRIPT, str(tmp_path / "m.dcf")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == ["TruncatedError", "a"]


def test_reading_after_close_is_a_named_error(tmp_path):
    path = tmp_path / "m.dcf"
    path.write_bytes(sparse_codebook_file())
    for source in (path, path.read_bytes()):
        f = dcformat.open(source)
        f.close()
        f.close()  # twice is fine
        for read in ("get_tensor", "get_sparse"):
            with pytest.raises(dcformat.DCFError, match="the file is closed"):
                getattr(f, read)("w")
        assert f.keys() == ["w"]  # the header stays readable
