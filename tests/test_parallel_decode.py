"""Decoding on several threads (issue #5): a tensor cut into pieces — block ranges of its streams, then
ranges of its dense output — decodes bit for bit as on one thread, and a malformed file fails with
the same error. PIECE_BYTES is lowered here so that even small tensors are cut into many pieces."""

from __future__ import annotations

import gc
import io
import os
import threading
import time
import weakref
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import dcformat
from dcformat import Policy, codec, pool, relindex
from dcformat import constants as K
from dcformat.container import write_stream

from .filetools import resection, split
from .strategies import assert_same, np_dtype

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@pytest.fixture(autouse=True, scope="module")
def many_pieces():
    """Every tensor of more than one byte is cut into 2 pieces per thread, and so is the CRC-32 of
    every section of 32 bytes or more."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "PIECE_BYTES", 1)
        mp.setattr(codec, "_CRC_PIECE_BYTES", 16)
        yield


def build(drafts: list, mode: str = "auto", block_size: int = K.DEFAULT_BLOCK_SIZE) -> bytes:
    tables, encoded = codec.assemble(drafts, mode, block_size)
    out = io.BytesIO()
    write_stream(out, {}, tables, encoded)
    return out.getvalue()


def load_all_ways(data: bytes) -> dict[int, dict[str, np.ndarray] | BaseException]:
    """load() with 1, 2 and 3 threads: the tensors, or the error raised."""
    out: dict = {}
    for threads in (1, 2, 3):
        try:
            out[threads] = dcformat.load(data, threads=threads)
        except dcformat.DCFError as e:
            out[threads] = e
    return out


def assert_same_everywhere(data: bytes) -> dict[str, np.ndarray] | BaseException:
    """Every thread count gives the same tensors, or the same error (class, message, tensor, offset)."""
    results = load_all_ways(data)
    one = results[1]
    for threads in (2, 3):
        got = results[threads]
        if isinstance(one, BaseException):
            assert type(got) is type(one), (threads, got, one)
            assert (str(got), got.tensor, got.offset) == (str(one), one.tensor, one.offset)
        else:
            assert not isinstance(got, BaseException), got
            assert list(got) == list(one)
            for name in one:
                assert_same(got[name], one[name])
    return one


# ------------------------------------------------------------------------------------------------
# relindex.rebuild: any cut of the entries into ranges gives the whole rebuild


@st.composite
def sparse_streams(draw):
    """(gaps, values, rows, cols): random stored positions of an R x C matrix, as relative indices
    with fillers at a random width, and random non-zero values (fillers zero)."""
    rows, cols = draw(st.sampled_from([(1, 1), (1, 9), (9, 1), (0, 4), (4, 0), (2, 3), (7, 5), (13, 17), (40, 33)]))
    total = rows * cols
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    density = draw(st.sampled_from([0.0, 0.02, 0.2, 0.7, 1.0]))
    positions = np.flatnonzero(rng.random(total) < density)
    b = draw(st.integers(1, 16))
    gaps, real = relindex.encode_gaps(positions, b)
    itemsize = draw(st.sampled_from([1, 2, 4, 8]))
    values = np.zeros(gaps.size, UINT[itemsize])
    values[real] = rng.integers(1, 2 ** (8 * itemsize) - 1, real.size, dtype=UINT[itemsize], endpoint=True)
    return gaps, values, rows, cols


def expected_dense(gaps, values, rows, cols, layout):
    out = np.zeros(rows * cols, values.dtype)
    positions = relindex.decode_positions(gaps, rows * cols)
    out[relindex.scan_to_flat(positions, rows, cols, layout)] = values
    return out


@given(sparse_streams(), st.sampled_from(["csr", "csc"]), st.lists(st.integers(0, 10**6), max_size=6),
       st.sampled_from([(1, 1), (1, 3), (2, 2), (3, 5), (1000, 1 << 18)]), st.booleans(), st.randoms())
@SETTINGS
def test_rebuild_in_any_ranges_equals_the_reference(stream, layout, cut_seeds, tile, by_index, rnd):
    gaps, values, rows, cols = stream
    total, n = rows * cols, gaps.size
    cuts = sorted({0, n} | {s % (n + 1) for s in cut_seeds}) if n else [0, 0]
    start = [0]  # scan position one past the previous entry, at each cut
    for e0, e1 in zip(cuts, cuts[1:]):
        start.append(start[-1] + relindex.gap_span(gaps, e0, e1))
    start[-1] = total  # the last range runs to the end
    ranges = list(zip(cuts, cuts[1:], start, start[1:]))
    if by_index:  # the same values through a codebook: distinct values, codebook[0] zero
        codebook, indices = np.unique(values, return_inverse=True)
        if codebook.size == 0 or codebook[0] != 0:
            codebook = np.concatenate((np.zeros(1, values.dtype), codebook))
            indices = indices + 1
            indices[values == 0] = 0
        indices = indices.astype(np.uint16)
        if codebook.size > 1 << 16:
            return
    else:
        codebook, indices = values, None
    with pytest.MonkeyPatch.context() as mp:  # small tiles: several bands and blocks of rows
        mp.setattr(relindex, "_CSC_BAND_BYTES", tile[0] * values.dtype.itemsize)
        mp.setattr(relindex, "_CSC_TILE_BYTES", tile[0] * tile[1] * values.dtype.itemsize)
        out = relindex.dense_output(values.dtype, rows, cols, layout)
        if relindex._tiled(rows, cols, layout == "csc"):
            out[:] = np.iinfo(values.dtype).max  # garbage: the tiled rebuild must write every element
        else:
            assert not out.any()  # the scattering rebuild needs a zeroed output, and gets one
        rnd.shuffle(ranges)  # ranges are independent: any order
        for e0, e1, lo, hi in ranges:
            code = relindex.rebuild(gaps, indices, codebook, rows, cols, layout == "csc", out, e0, e1, lo, hi)
            assert code == (0, 0, 0)
    assert np.array_equal(out, expected_dense(gaps, values, rows, cols, layout))


def test_rebuild_reports_entries_past_their_range_and_bad_indices():
    gaps = np.array([3, 2, 3, 3, 0], np.uint16)  # positions 3, 6, 10, 14, 15 of 16 (spec §5.3 example)
    values = np.array([0, 7, 0, 0, 9], np.uint32)
    for layout in ("csr", "csc"):
        csc = layout == "csc"
        out = relindex.dense_output(values.dtype, 4, 4, layout)
        assert relindex.rebuild(gaps, None, values, 4, 4, csc, out, 0, 2, 0, 6) == (1, 1, 6)  # 6 >= hi
        assert relindex.rebuild(gaps, None, values, 4, 4, csc, out, 2, 5, 7, 15) == (1, 4, 15)
        assert relindex.rebuild(gaps, None, values, 4, 4, csc, out, 0, 5, 0, 16) == (0, 0, 0)
        idx = np.array([0, 1, 0, 0, 3], np.uint16)
        assert relindex.rebuild(gaps, idx, np.array([0, 5, 6], np.uint32), 4, 4, csc, out, 0, 5, 0, 16) == (2, 4, 3)
        with pytest.raises(dcformat.DCFError):  # ranges outside the arrays never reach a kernel
            relindex.rebuild(gaps, None, values, 4, 4, csc, out, 0, 6, 0, 16)
        with pytest.raises(dcformat.DCFError):
            relindex.rebuild(gaps, None, values, 4, 4, csc, out, 0, 5, 3, 17)


# ------------------------------------------------------------------------------------------------
# Whole files: threads=1, 2 and 3 agree bit for bit


@st.composite
def policies(draw):
    return Policy(
        prune=draw(st.sampled_from([0.0, 0.5, 0.9, 0.99])),
        bits=draw(st.integers(1, 8)),
        index_bits=draw(st.sampled_from([1, 2, 3, 5, 8, 16])),
        layout=draw(st.sampled_from(["csr", "csc", "auto"])),
        huffman=draw(st.sampled_from(["auto", "off", "shared"])),
        block_size=draw(st.sampled_from([1, 2, 3, 7, 64, 1000])),
    )


@st.composite
def models(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shapes = draw(st.lists(st.sampled_from([(40, 33), (48, 50), (17, 3, 3, 3), (3, 200), (200, 3), (1, 50)]),
                           min_size=1, max_size=3))
    dtype = np_dtype(draw(st.sampled_from(["float32", "float16", "bfloat16", "float64"])))
    return {f"t{i}": rng.laplace(0, 0.05, s).astype(dtype) for i, s in enumerate(shapes)}


@given(models(), policies())
@settings(SETTINGS, max_examples=30)
def test_every_thread_count_decodes_the_same_bits(model, policy):
    data = dcformat.save(model, policy=policy)
    with pytest.MonkeyPatch.context() as mp:  # a valid file never needs the exact (error-finding) path
        mp.setattr(codec, "_decode_exact", lambda *a: pytest.fail("the fast path failed on a valid file"))
        decoded = assert_same_everywhere(data)
    with dcformat.open(data) as f:
        for name in model:
            assert_same(f.get_tensor(name, threads=2), decoded[name])


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "int64", "bool", "uint16"])
@pytest.mark.parametrize("layout", ["csr", "csc"])
@pytest.mark.parametrize("index_bits", [1, 3, 16])
def test_sparse_values_without_codebook_every_width(dtype, layout, index_bits):
    rng = np.random.default_rng(index_bits)
    a = rng.integers(-3, 4, (37, 29)).astype(np_dtype(dtype))
    a[rng.random(a.shape) < 0.8] = 0
    data = build([codec.draft_explicit("v", a, "sparse", layout=layout, index_bits=index_bits)], "auto", 5)
    assert_same(assert_same_everywhere(data)["v"], a)


@pytest.mark.parametrize("mode", ["off", "auto"])
@pytest.mark.parametrize("k", [1, 2, 5, 256, 3000])
def test_shared_fixed_width_and_huffman_indices(mode, k):
    rng = np.random.default_rng(k)
    codebook = rng.standard_normal(k).astype(np.float32)
    indices = rng.integers(0, k, (61, 23))
    data = build([codec.draft_explicit("s", np.zeros((61, 23), np.float32), "shared", codebook=codebook,
                                       indices=indices)], mode, 17)
    assert_same(assert_same_everywhere(data)["s"], codebook[indices])


def test_empty_and_all_zero_tensors():
    drafts = [codec.draft_explicit("e0", np.zeros((0, 5), np.float32), "sparse", layout="csc"),
              codec.draft_explicit("e1", np.zeros((5, 0), np.float32), "shared", codebook=np.ones(1, np.float32),
                                   indices=np.zeros((5, 0), np.int64)),
              codec.draft_explicit("z", np.zeros((30, 40), np.float16), "sparse", layout="csc", index_bits=2),
              codec.draft_explicit("z2", np.zeros((30, 40), np.float16), "sparse", layout="csr", index_bits=2,
                                   codebook=np.zeros(1, np.float16), indices=np.zeros((30, 40), np.int64)),
              codec.draft_explicit("r", np.arange(7000, dtype=np.int32), "raw")]
    decoded = assert_same_everywhere(build(drafts, "auto", 3))
    for d in drafts:
        assert_same(decoded[d.name], d.decoded)


def test_fillers_on_every_piece_boundary():
    """index_bits=1 and a lone element at the end: all entries but the last are fillers, so every
    cut between pieces falls between two fillers."""
    a = np.zeros((50, 40), np.float32)
    a[-1, -1] = 3.0
    a[0, 0] = -1.0
    indices = np.zeros(a.shape, np.int64)
    indices[0, 0], indices[-1, -1] = 1, 2
    for layout in ("csr", "csc"):
        for codebook in (None, np.array([0.0, -1.0, 3.0], np.float32)):
            draft = codec.draft_explicit("w", a, "sparse", layout=layout, index_bits=1, codebook=codebook,
                                         indices=None if codebook is None else indices)
            data = build([draft], "off", 4)
            with dcformat.open(data) as f:
                assert f.layout("w").fillers > 900
            assert_same(assert_same_everywhere(data)["w"], a)


# ------------------------------------------------------------------------------------------------
# Malformed files: the same error with any thread count


def sample_files() -> list[bytes]:
    rng = np.random.default_rng(5)
    w = rng.laplace(0, 0.05, (48, 40)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0
    b = w != 0
    files = []
    for layout in ("csr", "csc"):
        for mode in ("auto", "off"):
            files.append(dcformat.save({"w": w}, policy=Policy(bits=3, index_bits=2, layout=layout, huffman=mode,
                                                               block_size=50)))
    files.append(dcformat.save({"d": rng.standard_normal((40, 40)).astype(np.float32)},
                               policy=Policy(bits=4, block_size=100)))
    files.append(build([codec.draft_explicit("b", b, "sparse", layout="csc", index_bits=3)], "off"))
    files.append(build([codec.draft_explicit("s", np.zeros((9, 70), np.float32), "shared",
                                             codebook=np.arange(5, dtype=np.float32),
                                             indices=rng.integers(0, 5, (9, 70)))], "off"))
    return files


FILES = sample_files()


def section_keys(data: bytes) -> list[tuple[str, bool]]:
    t = split(data)[0]["tensors"][0]
    return [(k, isinstance(t[k], dict) and "coding" in t[k]) for k in ("codebook", "gaps", "indices", "values")
            if k in t]


@given(st.sampled_from(range(len(FILES))), st.integers(0, 3), st.integers(0, 10**6),
       st.lists(st.integers(0, 255), min_size=1, max_size=3))
@example(0, 1, 0, [255, 255, 255])  # gaps of csr all ones: past the end
@example(4, 0, 10, [1])  # a flipped bit in a shared tensor's Huffman stream
@SETTINGS
def test_a_damaged_stream_fails_the_same_way_with_any_thread_count(which, key_seed, offset, new_bytes):
    data = FILES[which]
    keys = section_keys(data)
    key, stream = keys[key_seed % len(keys)]
    t = split(data)[0]["tensors"][0]
    sec = t[key]["section"] if stream else t[key]
    payload = bytearray(data[sec["offset"]: sec["offset"] + sec["length"]])
    if not payload:
        return
    at = offset % len(payload)
    for i, v in enumerate(new_bytes):
        payload[(at + i) % len(payload)] = v
    assert_same_everywhere(resection(data, 0, key, bytes(payload), stream=stream))


def test_non_zero_padding_of_fixed_width_streams_fails_the_same_way():
    checked = 0
    for data in FILES:
        t = split(data)[0]["tensors"][0]
        for key, stream in section_keys(data):
            if not stream or t[key]["coding"] != "fixed":
                continue
            width = t["index_bits"] if key == "gaps" else t["bits"]
            count = t["entries"] if "entries" in t else int(np.prod(t["shape"]))
            used = count * width % 8
            if used:
                sec = t[key]["section"]
                payload = bytearray(data[sec["offset"]: sec["offset"] + sec["length"]])
                payload[-1] |= 0xFF << used & 0xFF
                e = assert_same_everywhere(resection(data, 0, key, bytes(payload), stream=True))
                assert isinstance(e, dcformat.CorruptDataError) and "padding" in str(e)
                checked += 1
    assert checked >= 2


def test_unrepaired_checksums_fail_the_same_way():
    for data in FILES:
        t = split(data)[0]["tensors"][0]
        for key, stream in section_keys(data):
            sec = t[key]["section"] if stream else t[key]
            if sec["length"]:
                bad = bytearray(data)
                bad[sec["offset"]] ^= 0x40
                assert isinstance(assert_same_everywhere(bytes(bad)), dcformat.ChecksumError)


def test_the_first_bad_tensor_in_file_order_is_reported():
    rng = np.random.default_rng(2)
    model = {f"t{i}": rng.laplace(0, 0.05, (30 + 10 * i, 20)).astype(np.float32) for i in range(4)}
    data = dcformat.save(model, policy=Policy(prune=0.5, bits=3))
    doc = split(data)[0]
    bad = bytearray(data)
    for i in (1, 3):  # t3 is the largest and decodes first on several threads
        sec = doc["tensors"][i]["codebook"]
        bad[sec["offset"]] ^= 1
    e = assert_same_everywhere(bytes(bad))
    assert isinstance(e, dcformat.ChecksumError) and e.tensor == "t1"


@given(st.binary(max_size=300), st.binary(max_size=300))
@SETTINGS
def test_crc32_of_two_parts_combines_into_the_crc32_of_the_whole(a, b):
    assert codec.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_crc32_combine_over_long_parts():
    a, b = bytes(range(256)) * 4099, b"\xff" * (3 << 20)
    assert codec.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


# ------------------------------------------------------------------------------------------------
# The thread budget


def test_run_keeps_order_and_raises_the_first_error_in_list_order():
    budget = pool.Budget(3)
    assert pool.run([lambda i=i: i * i for i in range(20)], budget) == [i * i for i in range(20)]

    def fail(i):
        time.sleep(0.002 * (5 - i))  # the later task fails first
        raise ValueError(i)

    with pytest.raises(ValueError, match="^2$"):
        pool.run([lambda: 0, lambda: 1, lambda: fail(2), lambda: fail(4)], budget)


def test_one_thread_stays_on_the_calling_thread():
    me = threading.get_ident()
    seen = pool.run([threading.get_ident for _ in range(10)], pool.Budget(1))
    assert set(seen) == {me}


def test_nested_runs_never_exceed_the_budget_nor_deadlock():
    lock = threading.Lock()
    active = [0, 0]  # now, most

    def leaf():
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        time.sleep(0.001)
        with lock:
            active[0] -= 1
        return 1

    for threads in (1, 2, 3):
        budget = pool.Budget(threads)
        active[1] = 0
        outer = [lambda: sum(pool.run([leaf] * 6, budget)) for _ in range(6)]
        assert pool.run(outer, budget) == [6] * 6
        assert 1 <= active[1] <= threads


class _Held:
    """Something a task holds on to, whose death a weak reference can see."""


def test_a_run_leaves_no_reference_cycle_behind():
    # A cycle would keep every task, and what it holds (a decoded tensor), alive until the garbage
    # collector ran: memory held for no reason, then a collection pause on some later call.
    held = _Held()
    alive = weakref.ref(held)
    gc.disable()
    try:
        assert pool.run([lambda h=held: 1 for _ in range(8)], pool.Budget(2)) == [1] * 8
        del held
        assert alive() is None
    finally:
        gc.enable()


def test_a_parallel_load_frees_its_tensor_when_the_caller_drops_it():
    big = np.random.default_rng(3).laplace(0, 0.02, (1024, 2048)).astype(np.float32)  # 8 MB: several pieces
    data = dcformat.save({"w": big}, policy=Policy(prune=0.9, fc_bits=5))
    gc.disable()
    try:
        out = dcformat.load(data, threads=2)["w"]
        while out.base is not None:  # the memory itself, not a reshaped view of it
            out = out.base
        alive = weakref.ref(out)
        del out
        assert alive() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(threads):
    data = dcformat.save({"w": np.ones((4, 4), np.float32)})
    with pytest.raises(dcformat.DCFError, match="threads"):
        dcformat.load(data, threads=threads)
    with dcformat.open(data) as f, pytest.raises(dcformat.DCFError, match="threads"):
        f.get_tensor("w", threads=threads)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_decodes_on_threads_of_its_own():
    data = dcformat.save({"w": np.arange(4000, dtype=np.float32).reshape(40, 100)}, policy=Policy(bits=4))
    parent = dcformat.load(data, threads=2)["w"]  # the parent's helper threads exist now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        ok = np.array_equal(dcformat.load(data, threads=2)["w"], parent)
        os._exit(0 if ok else 1)
    assert os.waitpid(pid, 0)[1] == 0
