"""The fuzzer (tests/fuzz.py): its seeds and tools are right, it notices crashes, and a short run finds
nothing; every input that ever broke the reader (tests/regressions/) gives its expected outcome."""

from __future__ import annotations

import json
import os
import random
import zlib

import pytest

import dcformat
from dcformat import constants as K

from . import fuzz
from .strategies import assert_same

SHORT_RUN_CASES = 3000


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    return fuzz.seed_files()


# --- the seeds and the file tools --------------------------------------------------------------


def test_seeds_cover_every_encoding_coding_layout_and_dtype(seeds):
    seen = set()
    for name, data in seeds.items():
        with dcformat.open(data) as f:
            assert dcformat.load(data).keys() == set(f.keys())  # every seed is valid and decodes
            tables_used = []
            seen.add(("header", f.header.header_coding, f.header.version))
            for t in f.header.tensors:
                seen.add(("encoding", t.encoding))
                seen.add(("dtype", t.dtype))
                seen.add(("rank", min(len(t.shape), 3)))
                if t.numel == 0:
                    seen.add(("empty", t.encoding))
                if t.layout:
                    seen.add(("layout", t.layout, t.codebook is not None))
                    seen.add(("index_bits", t.index_bits))
                    if t.fillers:
                        seen.add(("fillers", t.gaps.coding))
                for s in (t.gaps, t.indices, *(s for c in t.chunks for s in c)):
                    if s is not None and s.count:
                        seen.add(("coding", t.encoding, s.coding))
                        if s.coding == "rans" and isinstance(s.frequencies, tuple):
                            seen.add(("rans class tables",))
                        if s.coding == "huffman":
                            tables_used.append(s.table)
                            if len(s.block_bytes) > 1:
                                seen.add(("multiblock", t.encoding))
                            if max(f.header.tables[s.table], key=lambda c: int(c, 16)) == "f":
                                seen.add(("15-bit codes",))
            if len(tables_used) > len(set(tables_used)):
                seen.add(("shared table",))
    expected = {("encoding", e) for e in K.ENCODINGS} | {("dtype", d) for d in K.DTYPE_SIZES}
    expected |= {("rank", r) for r in (0, 1, 2, 3)} | {("empty", "raw"), ("empty", "sparse")}
    expected |= {("layout", lay, cb) for lay in K.LAYOUTS for cb in (True, False)}
    expected |= {("index_bits", b) for b in (1, 2, 3, 4, 5, 8, 12, 16)}
    expected |= {("fillers", "fixed"), ("fillers", "huffman"), ("multiblock", "shared"), ("multiblock", "sparse")}
    expected |= {("coding", e, c) for e in ("shared", "sparse", "fields") for c in K.CODINGS}
    expected |= {("empty", "fields"), ("header", "json", (1, 2)), ("header", "zlib", (1, 2))}
    expected |= {("shared table",), ("15-bit codes",), ("rans class tables",)}
    expected |= {("header", "json", (1, 0)), ("header", "zlib", (1, 1)), ("header", "json", (1, 1))}
    assert expected <= seen, sorted(expected - seen)
    assert fuzz.seed_files() == seeds  # deterministic, so a run is reproducible from its seed


def test_serialize_rebuilds_a_writers_file_byte_for_byte(seeds):
    """The harness lays out files exactly as the writer does (§2-§4), so its repairs are faithful."""
    for name, data in seeds.items():
        doc, sections = fuzz.parse(data)
        again = fuzz.serialize(doc, [b for _, b in sections], compress=fuzz.is_zlib(data))
        if name.startswith("vector-"):  # some spec vectors use the reader's latitude (spacing, key order)
            expected, got = dcformat.load(data), dcformat.load(again)
            assert expected.keys() == got.keys(), name
            for key in expected:
                assert_same(got[key], expected[key])
        else:
            assert again == data, name


def test_fix_checksums_lets_damaged_data_reach_the_decoder(seeds):
    data = seeds["sparse-cb-csr-b3"]
    doc, sections = fuzz.parse(data)
    gaps = doc["tensors"][0]["gaps"]["section"]
    damaged = bytearray(data)
    damaged[gaps["offset"]] ^= 0xFF
    with pytest.raises(dcformat.ChecksumError):
        dcformat.load(bytes(damaged))
    fixed = fuzz.fix_checksums(bytes(damaged))
    assert len(fixed) == len(data) and fixed[gaps["offset"]] == damaged[gaps["offset"]]
    try:
        dcformat.load(fixed)
    except dcformat.DCFError as e:
        assert not isinstance(e, dcformat.ChecksumError)
    # the header CRC and the file length are repaired too
    assert fuzz.fix_checksums(data + b"\0" * 64)[24:32] == (len(data) + 64).to_bytes(8, "little")
    hlen = int.from_bytes(data[16:24], "little")
    assert zlib.crc32(fixed[32 : 32 + hlen]) == int.from_bytes(fixed[12:16], "little")


def test_file_tools_handle_compressed_headers(seeds):
    """parse/serialize/fix_checksums see through a zlib header (§2.2) and keep it compressed."""
    data = seeds["zlib-model-mixed"]
    assert fuzz.is_zlib(data) and data[8:12] == b"\x01\x00\x01\x00"
    doc, sections = fuzz.parse(data)
    assert doc == fuzz.parse(seeds["model-mixed"])[0] or len(doc["tensors"]) == 4
    assert fuzz.serialize(doc, [b for _, b in sections], compress=True) == data
    payload = sections[1]
    sec = doc["tensors"][1]["codebook"]
    damaged = bytearray(data)
    damaged[sec["offset"]] ^= 0x01
    with pytest.raises(dcformat.ChecksumError):
        dcformat.load(bytes(damaged))
    fixed = fuzz.fix_checksums(bytes(damaged))
    assert fuzz.is_zlib(fixed) and len(fixed) == len(data) and payload
    assert fuzz.parse(fixed)[0]["tensors"][1]["codebook"]["crc32"] == zlib.crc32(fixed[sec["offset"] : sec["offset"] + sec["length"]])
    dcformat.load(fixed)  # the codebook's CRC is right again; its value changed, which is fine


def test_zlib_mutations_reach_the_stream_checks(seeds):
    """The two zlib mutation kinds produce valid files and every zlib-stream error of §2.2."""
    m = fuzz.Mutator(seeds, random.Random(4))
    messages = set()
    outcomes = {}
    for i in range(300):
        kind = ("zlib_bytes", "zlib_json")[i % 2]
        data = m._apply(kind, seeds[m.names[i % len(m.names)]], "")
        try:
            dcformat.load(data)
            outcome = "ok"
        except dcformat.DCFError as e:
            outcome = type(e).__name__
            messages.add(str(e).split(":")[0])
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("ok", 0) > 20 and outcomes.get("HeaderError", 0) > 50, outcomes
    for needle in ("header zlib stream is corrupt", "header zlib stream is truncated",
                   "header zlib stream asks for a preset dictionary (FDICT set), which §2.2 forbids"):
        assert any(needle in x for x in messages), sorted(messages)
    assert any("follows the header's zlib stream" in x for x in messages), sorted(messages)
    assert any("needs format version 1.1" in x for x in messages), sorted(messages)


def test_rans_mutations_reach_every_state_check(seeds):
    """rans_blocks keeps every table and block list valid (§6.4), so each case either decodes or fails one
    of the decoding loop's checks, and all four of them come up."""
    m = fuzz.Mutator(seeds, random.Random(6))
    names = [n for n in m.names if "rans" in n]
    assert len(names) >= 8
    outcomes, messages = {}, set()
    for i in range(400):
        data = m._apply("rans_blocks", seeds[names[i % len(names)]], "")
        assert fuzz.needs_1_4(fuzz.parse(data)[0]) and data[8:12] == b"\x01\x00\x04\x00"
        try:
            dcformat.load(data)
            outcome = "ok"
        except dcformat.DCFError as e:
            outcome = type(e).__name__
            messages.add(str(e))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert set(outcomes) == {"ok", "CorruptDataError"} and outcomes["CorruptDataError"] > 200, outcomes
    for needle in ("initial state", "ran out of words", "left over", "final state"):
        assert any(needle in x for x in messages), (needle, sorted(messages)[:20])
    assert m.mutator_errors == 0


def test_random_frequency_tables_are_valid():
    from dcformat import rans

    r = random.Random(7)
    for n in [None] * 300 + list(range(1, 40)):
        text = fuzz.random_frequencies(r, n)
        assert rans.frequencies_from_hex(text).sum() == 1 << 15 and (n is None or len(text) == 4 * n)


def test_random_tables_are_valid_prefix_codes():
    from dcformat.container import validate_table_text

    r = random.Random(5)
    for _ in range(300):
        validate_table_text(fuzz.random_table(r), "random")


def test_mutations_are_varied_and_mostly_get_past_the_checksums(seeds):
    m = fuzz.Mutator(seeds, random.Random(9))
    kinds, changed, outcomes = set(), 0, {}
    for _ in range(400):
        seed, kind, data = m.case()
        kinds.add(kind.split("+")[0])
        changed += data != seeds[seed]
        try:
            dcformat.load(data)
            outcome = "ok"
        except dcformat.DCFError as e:
            outcome = type(e).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert kinds == {k for k, _, _ in m.kinds}
    assert changed > 350  # a few mutations (e.g. zeros over zeros) leave the file as it was
    # repaired CRCs: most cases get past the checksum checks into validation and decoding
    assert outcomes.get("ChecksumError", 0) < 0.15 * 400, outcomes
    assert outcomes.get("CorruptDataError", 0) > 20 and outcomes.get("ok", 0) > 40, outcomes
    assert m.mutator_errors < 40


def test_mutations_of_mutations_stay_small(seeds):
    """Fed its own output (as atheris does), the mutator never builds huge inputs or fails often."""
    r = random.Random(3)
    m = fuzz.Mutator(seeds, r)
    for chain in range(30):
        data = seeds[r.choice(m.names)]
        for _ in range(40):
            data = m._apply(m._pick(), data, "")
            assert len(data) < 8 << 20
    assert m.mutator_errors < 60


# --- the harness notices every kind of failure -------------------------------------------------


def test_harness_reports_crashes_hangs_exceptions_and_memory(tmp_path):
    inputs = [(f"s{i}", "selftest", data) for i, data in enumerate(
        [b"fine", b"segfault", b"fine", b"index", b"hang", b"abort", b"dcf", b"dcf-result", b"memory", b"fine"])]
    outcomes = {}
    stats = fuzz.run(0, workers=2, timeout=3.0, out_dir=str(tmp_path), target="fuzz:selftest_target",
                     inputs=iter(inputs), warmup=False, rss_limit=100 << 20,
                     on_result=lambda case, outcome: outcomes.__setitem__(case[0], outcome))
    assert outcomes == {
        "s0": "ok", "s1": "crash:SIGSEGV", "s2": "ok", "s3": "bug:IndexError", "s4": "hang",
        "s5": "crash:SIGABRT", "s6": "HeaderError", "s7": "HeaderError", "s8": "ok", "s9": "ok",
    }
    kinds = sorted(f.kind for f in stats.findings.values())
    assert kinds == ["crash", "crash", "exception", "hang", "memory"], stats.to_json()
    assert stats.worker_restarts == 4  # after the segfault, the abort and the hang (tried twice)
    assert stats.slow == 0
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert len(saved) == 10  # an input and a note per finding, named by kind
    assert sorted(n.split("-")[0] for n in saved if n.endswith(".dcf")) == kinds
    by_data = {p.read_bytes() for p in tmp_path.glob("*.dcf")}
    assert by_data == {b"segfault", b"index", b"hang", b"abort", b"memory"}
    note = json.loads(next(tmp_path.glob("exception-*.json")).read_text())
    assert note["signature"].startswith("IndexError@fuzz.py") and "IndexError" in note["traceback"]


def test_a_case_that_times_out_once_is_tried_again_before_it_counts_as_a_hang(tmp_path):
    marker = tmp_path / "marker"
    outcomes = {}
    stats = fuzz.run(0, workers=1, timeout=2.0, target="fuzz:selftest_target", warmup=False,
                     inputs=iter([("slow", "selftest", b"hang-once:" + str(marker).encode()), ("next", "selftest", b"x")]),
                     on_result=lambda case, outcome: outcomes.__setitem__(case[0], outcome))
    assert outcomes == {"slow": "ok", "next": "ok"} and marker.exists()
    assert stats.slow == 1 and stats.worker_restarts == 1 and not stats.findings


def test_exercise_flags_disagreeing_readers(seeds, tmp_path, monkeypatch):
    """The cross-checks fire: here get_sparse is made to disagree with get_tensor."""
    from dcformat import codec

    data = seeds["sparse-values-csr-float32"]
    assert fuzz.exercise(data, str(tmp_path / "a.dcf")) == {"error": None, "decoded": 1}
    real = codec.decode_sparse

    def off_by_one(buf, info, tables):
        sp = real(buf, info, tables)
        sp.values = sp.values + 1
        return sp

    monkeypatch.setattr(codec, "decode_sparse", off_by_one)
    with pytest.raises(fuzz.OracleError, match="differs from get_tensor"):
        fuzz.exercise(data, str(tmp_path / "a.dcf"))
    monkeypatch.undo()


def test_exercise_compares_with_the_reference_decoder(seeds, tmp_path, monkeypatch):
    from . import reference_decoder

    data = seeds["sparse-cb-huffman-csc-b3"]
    assert fuzz.exercise(data, str(tmp_path / "a.dcf"))["error"] is None
    real = reference_decoder.decode
    monkeypatch.setattr(reference_decoder, "decode", lambda *a, **k: {n: -v for n, v in real(*a, **k).items()})
    with pytest.raises(fuzz.OracleError, match="decode different values"):
        fuzz.exercise(data, str(tmp_path / "a.dcf"))

    def refuse(*a, **k):
        raise dcformat.CorruptDataError("no")

    monkeypatch.setattr(reference_decoder, "decode", refuse)
    with pytest.raises(fuzz.OracleError, match="the reference decoder raises"):
        fuzz.exercise(data, str(tmp_path / "a.dcf"))


# --- runs --------------------------------------------------------------------------------------


def test_short_fuzz_run_finds_nothing(tmp_path):
    """A few thousand mutated files of every encoding: success or a DCFError, never anything else."""
    stats = fuzz.run(SHORT_RUN_CASES, seed=20261129, workers=2, out_dir=str(tmp_path))
    summary = stats.to_json()
    assert stats.cases == SHORT_RUN_CASES
    assert not stats.findings, json.dumps(summary["findings"], indent=1)
    # the run reached every stage of the reader, not just the checksum check
    for outcome in ("ok", "HeaderError", "FormatError", "CorruptDataError", "ChecksumError", "HuffmanTableError",
                    "TruncatedError", "LimitError"):
        assert summary["by_outcome"].get(outcome, 0) > 0, (outcome, summary["by_outcome"])


@pytest.mark.slow
def test_long_fuzz_run_finds_nothing(tmp_path):
    stats = fuzz.run(50_000, seed=1, workers=os.cpu_count() or 2, out_dir=str(tmp_path))
    assert not stats.findings, json.dumps(stats.to_json()["findings"], indent=1)


# --- regressions -------------------------------------------------------------------------------


def test_every_regression_input_gives_its_expected_outcome():
    cases = fuzz.load_manifest()
    files = {c["file"] for c in cases}
    on_disk = {n for n in os.listdir(fuzz.REGRESSIONS) if n.endswith(".dcf")}
    assert files == on_disk, "tests/regressions/ and its manifest.json disagree"
    assert all(c["bug"] and c["expect"] for c in cases)
    outcomes, stats = fuzz.replay(cases)
    assert not stats.findings, json.dumps(stats.to_json()["findings"], indent=1)
    wrong = {c["file"]: (c["expect"], outcomes.get(c["file"])) for c in cases if outcomes.get(c["file"]) != c["expect"]}
    assert not wrong, wrong


@pytest.mark.parametrize("case", fuzz.load_manifest(), ids=lambda c: c["file"])
def test_regression_load_outcome(case):
    """The same outcome from a plain dcformat.load, in this process (so a failure shows its traceback)."""
    with open(os.path.join(fuzz.REGRESSIONS, case["file"]), "rb") as fh:
        data = fh.read()
    limits = dcformat.Limits(min_decoded_bytes=fuzz.FUZZ_LIMIT_BYTES)  # as in the fuzzer's worker
    if case["expect"] == "ok":
        assert isinstance(dcformat.load(data, limits=limits), dict)
    else:
        with pytest.raises(getattr(dcformat, case["expect"])) as e:
            dcformat.load(data, limits=limits)
        assert type(e.value).__name__ == case["expect"]


def test_memory_is_measured_per_case_not_as_a_running_peak(tmp_path):
    """Two cases that each allocate 400 MB in the same worker: both are found (a running peak would
    see the second one grow nothing), and a small case after them is not blamed."""
    outcomes = {}
    inputs = [("m1", "selftest", b"memory"), ("m2", "selftest", b"memory"), ("f", "selftest", b"fine")]
    stats = fuzz.run(0, workers=1, timeout=30.0, out_dir=str(tmp_path), target="fuzz:selftest_target",
                     inputs=iter(inputs), warmup=False, rss_limit=100 << 20,
                     on_result=lambda case, outcome: outcomes.__setitem__(case[0], outcome))
    assert outcomes == {"m1": "ok", "m2": "ok", "f": "ok"}
    assert stats.finding_counts == {"memory:ok": 2}, stats.to_json()
    assert 380 << 20 <= stats.max_rss_growth < 600 << 20
