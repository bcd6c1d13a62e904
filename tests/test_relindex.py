"""Relative indices with fillers (spec §5.3): kernels against a plain-Python reference, round trips."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcformat.constants import DTYPE_SIZES
from dcformat.errors import CorruptDataError, DCFError, EncodeError
from dcformat.huffman import symbol_counts
from dcformat.relindex import (decode_dense, decode_dense_codebook, decode_positions, encode_gaps, entry_values,
                               gap_counts, matrix_shape, nonzero_positions, scan_to_flat, to_compressed)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALL_DTYPES = [ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name) for name in DTYPE_SIZES]


# ------------------------------------------------------------------------------------------------
# Plain-Python reference, written from the text of §5.3


def ref_encode(positions: list[int], b: int) -> tuple[list[int], list[int]]:
    """Encoder rule: g = zeros skipped; while more than 2^b-1 zeros remain, a filler with g = 2^b-1."""
    gaps, real = [], []
    previous = -1  # so that p_0 = g_0
    for p in positions:
        z = p - previous - 1  # zeros between the previous stored position and this one
        while z > 2**b - 1:
            gaps.append(2**b - 1)  # the filler occupies position previous + 2^b ...
            previous += 2**b
            z = p - previous - 1  # ... and the encoder continues from it
        real.append(len(gaps))
        gaps.append(z)
        previous = p
    return gaps, real


def ref_decode(gaps: list[int], total: int) -> list[int]:
    """p_0 = g_0, p_j = p_{j-1} + g_j + 1; reject p_j >= R*C."""
    positions = []
    for j, g in enumerate(gaps):
        p = g if j == 0 else positions[-1] + g + 1
        if p >= total:
            raise CorruptDataError(f"entry {j} at {p}")
        positions.append(p)
    return positions


def ref_flat(p: int, rows: int, cols: int, layout: str) -> int:
    """Scan position to C-order index: p = r*C + c (csr) or p = c*R + r (csc)."""
    r, c = divmod(p, cols) if layout == "csr" else divmod(p, rows)[::-1]
    return r * cols + c


def ref_nonzero(x: np.ndarray, layout: str) -> list[int]:
    """Scan positions of elements whose bytes are not all zero, element by element."""
    rows, cols = matrix_shape(x.shape)
    flat = np.ascontiguousarray(x).reshape(-1)
    return sorted(
        (i if layout == "csr" else (i % cols) * rows + i // cols)
        for i in range(flat.size) if flat[i : i + 1].tobytes() != bytes(flat.dtype.itemsize))


# ------------------------------------------------------------------------------------------------
# Strategies


def boundary_zero_runs(b: int) -> st.SearchStrategy[int]:
    """Zero-run lengths at and around every filler boundary of width b, plus arbitrary ones."""
    m = 2**b
    specials = sorted({v for k in range(4) for v in (k * m - 2, k * m - 1, k * m, k * m + 1) if v >= 0})
    return st.one_of(st.sampled_from(specials), st.integers(0, 3 * m + 2))


@st.composite
def positions_and_bits(draw):
    """(sorted distinct positions, index_bits), zero runs drawn near filler boundaries."""
    b = draw(st.integers(1, 16))
    runs = draw(st.lists(boundary_zero_runs(b), max_size=30))
    positions, previous = [], -1
    for z in runs:
        previous += z + 1
        positions.append(previous)
    return positions, b


@st.composite
def sparse_tensors(draw):
    """A tensor of any supported dtype and small shape (0-size dims, scalars) with many zeros."""
    dtype = draw(st.sampled_from(ALL_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
    n = math.prod(shape)
    size = np.dtype(dtype).itemsize
    raw = bytearray(draw(st.binary(min_size=n * size, max_size=n * size)))
    zero_mask = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    for i, zero in enumerate(zero_mask):
        if zero:
            raw[i * size : (i + 1) * size] = bytes(size)
    x = np.frombuffer(bytes(raw), dtype=dtype).reshape(shape).copy()
    return x


# ------------------------------------------------------------------------------------------------
# matrix_shape, scan order


@pytest.mark.parametrize("shape, expected", [
    ((), (1, 1)), ((7,), (1, 7)), ((0,), (1, 0)), ((0, 5), (0, 0)), ((0, 0, 3), (0, 0)),
    ((3, 4), (3, 4)), ((2, 3, 4), (2, 12)), ((5, 0), (5, 0)), ((2, 3, 0, 4), (2, 0)), ((1, 1, 1), (1, 1)),
])
def test_matrix_shape(shape, expected):
    got = matrix_shape(shape)
    assert got == expected and all(type(v) is int for v in got)


def test_matrix_shape_huge_is_exact():
    assert matrix_shape((2**40, 2**30, 3)) == (2**40, 3 * 2**30)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["csr", "csc"])
def test_nonzero_positions_every_dtype(dtype, layout):
    rng = np.random.default_rng(1)
    size = np.dtype(dtype).itemsize
    raw = rng.integers(0, 256, size=5 * 7 * 2 * size, dtype=np.uint8)
    raw = raw.reshape(-1, size)
    raw[rng.random(raw.shape[0]) < 0.5] = 0
    raw[3, -1] = 1  # only one non-zero byte: still stored
    x = raw.reshape(-1).view(dtype).reshape(5, 7, 2)
    got = nonzero_positions(x, layout)
    assert got.dtype == np.int64
    assert got.tolist() == ref_nonzero(x, layout)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, ml_dtypes.bfloat16], ids=str)
def test_nonzero_positions_signed_zero_and_nan(dtype):
    x = np.array([0.0, -0.0, np.nan, 1.0, 0.0, -np.nan, np.inf], dtype=dtype)
    assert nonzero_positions(x, "csr").tolist() == [1, 2, 3, 5, 6]


def test_nonzero_positions_bool_and_scalar():
    assert nonzero_positions(np.array([True, False, True]), "csc").tolist() == [0, 2]
    assert nonzero_positions(np.float32(3.0), "csr").tolist() == [0]
    assert nonzero_positions(np.array(0.0), "csc").tolist() == []
    assert nonzero_positions(np.zeros((0, 4)), "csr").tolist() == []
    assert nonzero_positions(np.ones((4, 0)), "csc").tolist() == []


def test_nonzero_positions_non_contiguous():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]  # a strided view
    assert nonzero_positions(x, "csc").tolist() == ref_nonzero(np.ascontiguousarray(x), "csc")


def test_nonzero_positions_bad_layout():
    with pytest.raises(EncodeError):
        nonzero_positions(np.ones(3), "coo")


@given(st.integers(0, 7), st.integers(0, 7), st.sampled_from(["csr", "csc"]))
@SETTINGS
def test_scan_to_flat_matches_reference(rows, cols, layout):
    positions = np.arange(rows * cols)
    got = scan_to_flat(positions, rows, cols, layout)
    assert got.dtype == np.int64
    assert got.tolist() == [ref_flat(p, rows, cols, layout) for p in range(rows * cols)]
    assert sorted(got.tolist()) == list(range(rows * cols))  # a permutation


def test_scan_to_flat_rejects_out_of_range():
    with pytest.raises(DCFError):
        scan_to_flat(np.array([12]), 3, 4, "csc")


# ------------------------------------------------------------------------------------------------
# encode_gaps / decode_positions against the reference


def test_worked_example_of_section_5_3():
    x = np.zeros((4, 4), dtype=np.float32)
    x[1, 2], x[3, 3] = 1.5, -2.0
    positions = nonzero_positions(x, "csr")
    assert positions.tolist() == [6, 15]
    gaps, real = encode_gaps(positions, 2)
    assert gaps.dtype == np.uint16 and real.dtype == np.int64
    assert gaps.tolist() == [3, 2, 3, 3, 0]
    assert real.tolist() == [1, 4]
    codebook = np.array([0.0, -2.0, 1.5], dtype=np.float32)
    indices = np.zeros(gaps.size, dtype=np.uint16)  # fillers: code 0
    indices[real] = [2, 1]  # 1.5 -> 2, -2.0 -> 1
    assert indices.tolist() == [0, 2, 0, 0, 1]
    assert decode_positions(gaps, 16).tolist() == [3, 6, 10, 14, 15]
    out = decode_dense_codebook(gaps, indices, codebook, 4, 4, "csr")
    assert out.dtype == np.float32 and out.shape == (16,)
    assert out.tobytes() == x.tobytes()


@given(positions_and_bits())
@SETTINGS
def test_encode_gaps_matches_reference(case):
    positions, b = case
    gaps, real = encode_gaps(np.array(positions, dtype=np.int64), b)
    ref_gaps, ref_real = ref_encode(positions, b)
    assert gaps.tolist() == ref_gaps
    assert real.tolist() == ref_real
    assert all(g < 2**b for g in ref_gaps)


@given(positions_and_bits(), st.integers(0, 3))
@SETTINGS
def test_decode_positions_round_trip(case, extra):
    positions, b = case
    gaps, real = encode_gaps(np.array(positions, dtype=np.int64), b)
    total = (positions[-1] + 1 if positions else 0) + extra
    decoded = decode_positions(gaps, total)
    assert decoded.dtype == np.int64
    assert decoded.tolist() == ref_decode(gaps.tolist(), total)
    assert decoded[real].tolist() == positions
    fillers = np.setdiff1d(np.arange(gaps.size), real)
    assert np.all(gaps[fillers] == 2**b - 1)


@given(st.lists(st.integers(0, 2**16 - 1), max_size=40), st.integers(0, 400_000))
@SETTINGS
def test_decode_positions_any_stream_matches_reference(gaps, total):
    """Any gap stream either decodes like the reference or is rejected, like the reference."""
    try:
        expected = ref_decode(gaps, total)
    except CorruptDataError:
        expected = None
    if expected is None:
        with pytest.raises(CorruptDataError):
            decode_positions(np.array(gaps, dtype=np.uint16), total)
    else:
        assert decode_positions(np.array(gaps, dtype=np.uint16), total).tolist() == expected


@pytest.mark.parametrize("b", range(1, 17))
def test_every_filler_boundary_every_width(b):
    m = 2**b
    runs = [z for k in range(3) for z in (k * m - 2, k * m - 1, k * m, k * m + 1) if z >= 0]
    positions = np.cumsum(np.array(runs) + 1) - 1
    gaps, real = encode_gaps(positions, b)
    ref_gaps, ref_real = ref_encode(positions.tolist(), b)
    assert gaps.tolist() == ref_gaps and real.tolist() == ref_real
    # A run of z zeros needs exactly z // 2^b fillers.
    assert gaps.size == len(runs) + sum(z // m for z in runs)
    assert decode_positions(gaps, int(positions[-1]) + 1)[real].tolist() == positions.tolist()


def test_encode_gaps_empty_and_single():
    for b in (1, 5, 16):
        gaps, real = encode_gaps(np.array([], dtype=np.int64), b)
        assert gaps.size == 0 and real.size == 0 and gaps.dtype == np.uint16
        gaps, real = encode_gaps(np.array([0]), b)
        assert gaps.tolist() == [0] and real.tolist() == [0]


def test_encode_gaps_huge_gap_wide_index():
    positions = np.array([10**9, 2 * 10**9], dtype=np.int64)
    gaps, real = encode_gaps(positions, 16)
    fillers_first = 10**9 // 2**16
    fillers_second = (10**9 - 1) // 2**16
    assert gaps.size == fillers_first + fillers_second + 2
    assert real.tolist() == [fillers_first, fillers_first + 1 + fillers_second]
    assert gaps[real].tolist() == [10**9 % 2**16, (10**9 - 1) % 2**16]
    assert decode_positions(gaps, 2 * 10**9 + 1)[real].tolist() == positions.tolist()


def test_encode_gaps_refuses_astronomical_filler_count():
    # 10^12 positions apart with 1-bit gaps would need 5*10^11 fillers: refused before allocating.
    with pytest.raises(EncodeError, match="exceed"):
        encode_gaps(np.array([0, 10**12]), 1, max_entries=10**6)
    gaps, _ = encode_gaps(np.array([0, 10**6]), 16, max_entries=100)
    assert gaps.size == 2 + (10**6 - 1) // 2**16  # 999,999 zeros: 15 fillers
    with pytest.raises(EncodeError):
        encode_gaps(np.array([0, 3]), 1, max_entries=2)  # needs 3 entries
    assert encode_gaps(np.array([0, 3]), 1, max_entries=3)[0].tolist() == [0, 1, 0]


@pytest.mark.parametrize("positions", [[3, 3], [5, 2], [-1, 4], [0, 1, 1]])
def test_encode_gaps_rejects_unsorted(positions):
    with pytest.raises(EncodeError):
        encode_gaps(np.array(positions), 4)


@pytest.mark.parametrize("b", [0, 17, -1, 2.0, True])
def test_encode_gaps_rejects_bad_width(b):
    with pytest.raises(EncodeError):
        encode_gaps(np.array([1, 2]), b)


def test_encode_gaps_rejects_float_positions():
    with pytest.raises(EncodeError):
        encode_gaps(np.array([1.0, 2.0]), 4)


# ------------------------------------------------------------------------------------------------
# Dense round trips


def dense_ref(gaps, values, rows, cols, layout, dtype):
    """Decoding by the spec: zeros everywhere, then values[j] at p_j (bytes copied, not converted)."""
    out = np.zeros(rows * cols, dtype=dtype)
    for j, p in enumerate(ref_decode(list(gaps), rows * cols)):
        out[ref_flat(p, rows, cols, layout) : ref_flat(p, rows, cols, layout) + 1] = values[j : j + 1]
    return out


@given(positions_and_bits(), st.lists(st.integers(1, 16), min_size=1, max_size=4, unique=True))
@SETTINGS
def test_gap_counts_equal_the_counts_of_the_built_stream(case, more_widths):
    # The encoder prices widths and layouts from gap_counts and builds only the winner: the prices
    # must be those of the streams encode_gaps builds, at every width, filler boundaries included.
    positions, b = case
    widths = tuple(dict.fromkeys([b, *more_widths]))
    positions = np.array(positions, dtype=np.int64)
    for width, (counts, fillers) in zip(widths, gap_counts(positions, widths)):
        gaps, _ = encode_gaps(positions, width)
        assert counts.dtype == np.int64
        assert counts.tolist() == symbol_counts(gaps).tolist()
        assert fillers == len(gaps) - len(positions)


def test_gap_counts_long_runs_and_empty():
    positions = np.array([0, 5, 70_000, 70_001, 3_000_000], dtype=np.int64)  # runs beyond the histogram
    for width, (counts, fillers) in zip((1, 12, 16), gap_counts(positions, (1, 12, 16))):
        gaps, _ = encode_gaps(positions, width)
        assert counts.tolist() == symbol_counts(gaps).tolist() and fillers == len(gaps) - 5
    assert [(c.tolist(), f) for c, f in gap_counts(np.zeros(0, np.int64), (3, 5))] == [([0], 0), ([0], 0)]


@pytest.mark.parametrize("positions", [[3, 3], [5, 2], [-1, 4]])
def test_gap_counts_rejects_unsorted(positions):
    with pytest.raises(EncodeError, match="strictly increasing"):
        gap_counts(np.array(positions), (4,))
    with pytest.raises(EncodeError, match="widths"):
        gap_counts(np.array([1, 2]), (0,))


@given(sparse_tensors(), st.integers(1, 16), st.sampled_from(["csr", "csc"]))
@SETTINGS
def test_entry_values_places_each_value_at_its_entry(x, b, layout):
    rows, cols = matrix_shape(x.shape)
    positions = nonzero_positions(x, layout)
    gaps, real = encode_gaps(positions, b)
    order = scan_to_flat(positions, rows, cols, layout)
    expected = np.zeros(gaps.size, dtype=x.dtype)
    expected[real] = np.ascontiguousarray(x).reshape(-1)[order]
    got = entry_values(x, order, real, gaps.size)
    assert got.dtype == x.dtype and got.tobytes() == expected.tobytes()  # bit for bit, fillers zero


def test_entry_values_rejects_indices_outside():
    with pytest.raises(EncodeError, match="outside"):
        entry_values(np.ones(3, np.float32), np.array([3]), np.array([0]), 1)
    with pytest.raises(EncodeError, match="outside"):
        entry_values(np.ones(3, np.float32), np.array([0]), np.array([1]), 1)
    with pytest.raises(EncodeError, match="one length"):
        entry_values(np.ones(3, np.float32), np.array([0, 1]), np.array([0]), 2)


@given(sparse_tensors(), st.integers(1, 16), st.sampled_from(["csr", "csc"]))
@SETTINGS
def test_decode_dense_round_trip_every_dtype(x, b, layout):
    rows, cols = matrix_shape(x.shape)
    positions = nonzero_positions(x, layout)
    assert positions.tolist() == ref_nonzero(x, layout)
    gaps, real = encode_gaps(positions, b)
    values = np.zeros(gaps.size, dtype=x.dtype)  # fillers are zero bits
    values[real] = np.ascontiguousarray(x).reshape(-1)[scan_to_flat(positions, rows, cols, layout)]
    out = decode_dense(gaps, values, rows, cols, layout)
    assert out.dtype == x.dtype and out.shape == (x.size,)
    assert out.tobytes() == np.ascontiguousarray(x).tobytes()  # bit for bit: -0.0, NaN, bool bytes
    assert out.tobytes() == dense_ref(gaps.tolist(), values, rows, cols, layout, x.dtype).tobytes()


@given(sparse_tensors(), st.integers(1, 16), st.sampled_from(["csr", "csc"]))
@SETTINGS
def test_decode_dense_codebook_round_trip_every_dtype(x, b, layout):
    rows, cols = matrix_shape(x.shape)
    flat = np.ascontiguousarray(x).reshape(-1)
    positions = nonzero_positions(x, layout)
    gaps, real = encode_gaps(positions, b)
    # Codebook of the distinct bit patterns, [0] all zero bits as §5.3 requires.
    uint = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize]
    stored_bits = flat.view(uint)[scan_to_flat(positions, rows, cols, layout)]
    distinct, inverse = np.unique(stored_bits, return_inverse=True)
    codebook = np.concatenate((np.zeros(1, uint), distinct)).view(x.dtype)
    indices = np.zeros(gaps.size, dtype=np.uint16)
    indices[real] = inverse.reshape(-1) + 1
    out = decode_dense_codebook(gaps, indices, codebook, rows, cols, layout)
    assert out.dtype == x.dtype
    assert out.tobytes() == flat.tobytes()


@pytest.mark.parametrize("layout", ["csr", "csc"])
@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 100), (100, 1), (3, 70_000), (70_000, 3), (257, 259)])
def test_decode_dense_huge_gaps_odd_shapes(layout, rows, cols):
    rng = np.random.default_rng(rows + cols)
    x = np.zeros((rows, cols), dtype=np.float32)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=min(5, flat.size), replace=False)
    flat[picks] = rng.standard_normal(picks.size).astype(np.float32)
    flat[-1] = 7.0  # last position stored: the walk reaches the very end
    for b in (1, 3, 16):
        positions = nonzero_positions(x, layout)
        gaps, real = encode_gaps(positions, b)
        values = np.zeros(gaps.size, dtype=np.float32)
        values[real] = flat[scan_to_flat(positions, rows, cols, layout)]
        assert decode_dense(gaps, values, rows, cols, layout).tobytes() == x.tobytes()


def test_decode_dense_all_zeros_and_no_zeros():
    x = np.zeros((6, 5), dtype=np.float16)
    gaps, _ = encode_gaps(nonzero_positions(x, "csc"), 2)
    assert gaps.size == 0  # zeros after the last stored element are not stored
    assert decode_dense(gaps, np.zeros(0, np.float16), 6, 5, "csc").tobytes() == x.tobytes()
    y = np.arange(1, 31, dtype=np.float16).reshape(6, 5)
    positions = nonzero_positions(y, "csc")
    gaps, real = encode_gaps(positions, 1)
    assert gaps.tolist() == [0] * 30 and real.tolist() == list(range(30))
    values = y.reshape(-1)[scan_to_flat(positions, 6, 5, "csc")]
    assert decode_dense(gaps, values, 6, 5, "csc").tobytes() == y.tobytes()


def test_decode_dense_scalar_and_empty():
    out = decode_dense(np.array([0], np.uint16), np.array([2.5], np.float64), 1, 1, "csr")
    assert out.tolist() == [2.5]
    assert decode_dense(np.zeros(0, np.uint16), np.zeros(0, np.int8), 0, 0, "csc").size == 0
    assert decode_dense_codebook(np.zeros(0, np.uint16), np.zeros(0, np.uint16),
                                 np.zeros(1, np.float32), 5, 0, "csr").size == 0


def test_decode_dense_out_is_cleared_and_checked():
    out = np.full(16, 9.0, dtype=np.float32)
    got = decode_dense_codebook(np.array([3, 2, 3, 3, 0], np.uint16), np.array([0, 2, 0, 0, 1], np.uint16),
                                np.array([0.0, -2.0, 1.5], np.float32), 4, 4, "csr", out=out)
    assert got is out
    assert np.flatnonzero(out).tolist() == [6, 15] and out[6] == 1.5 and out[15] == -2.0
    with pytest.raises(DCFError):
        decode_dense(np.array([0], np.uint16), np.array([1.0], np.float32), 1, 1, "csr",
                     out=np.zeros(1, np.float64))
    with pytest.raises(DCFError):
        decode_dense(np.array([0], np.uint16), np.array([1.0], np.float32), 1, 1, "csr",
                     out=np.zeros(2, np.float32))


# ------------------------------------------------------------------------------------------------
# Corrupt streams


@pytest.mark.parametrize("layout", ["csr", "csc"])
def test_gap_stream_past_the_end_is_rejected(layout):
    gaps = np.array([3, 2, 3, 3, 1], dtype=np.uint16)  # last entry lands on position 16 of 16
    with pytest.raises(CorruptDataError, match="entry 4 puts position 16 past the end"):
        decode_positions(gaps, 16)
    with pytest.raises(CorruptDataError, match="entry 4"):
        decode_dense(gaps, np.ones(5, np.float32), 4, 4, layout)
    with pytest.raises(CorruptDataError, match="entry 4"):
        decode_dense_codebook(gaps, np.zeros(5, np.uint16), np.zeros(1, np.float32), 4, 4, layout)
    with pytest.raises(CorruptDataError, match="entry 0"):
        decode_dense(np.array([65535], np.uint16), np.ones(1, np.float32), 0, 0, layout)


def test_too_many_entries_run_past_the_end():
    with pytest.raises(CorruptDataError, match="entry 3 puts position 3"):
        decode_positions(np.zeros(10, np.uint16), 3)


@pytest.mark.parametrize("layout", ["csr", "csc"])
def test_codebook_index_out_of_range_is_rejected(layout):
    gaps = np.array([3, 2, 3, 3, 0], dtype=np.uint16)
    codebook = np.array([0.0, -2.0, 1.5], dtype=np.float32)
    with pytest.raises(CorruptDataError, match="value index 3 of entry 4"):
        decode_dense_codebook(gaps, np.array([0, 2, 0, 0, 3], np.uint16), codebook, 4, 4, layout)
    with pytest.raises(CorruptDataError, match="entry 0"):
        decode_dense_codebook(gaps, np.array([65535, 0, 0, 0, 0], np.uint16), codebook, 4, 4, layout)
    with pytest.raises(CorruptDataError):
        decode_dense_codebook(gaps, np.zeros(5, np.uint16), np.zeros(0, np.float32), 4, 4, layout)


@given(st.lists(st.integers(0, 9), max_size=12), st.lists(st.integers(0, 4), min_size=12, max_size=12),
       st.integers(0, 5), st.integers(0, 5), st.sampled_from(["csr", "csc"]))
@SETTINGS
def test_random_streams_decode_like_reference_or_fail(gaps, indices, rows, cols, layout):
    """Arbitrary (often corrupt) streams: the reference's result, or CorruptDataError; never a crash."""
    indices = indices[: len(gaps)]
    codebook = np.array([0.0, 1.0, 2.0], dtype=np.float64)
    try:
        expected = dense_ref(gaps, [float(i) if i < 3 else None for i in indices], rows, cols, layout, object)
        if any(v is None for v in expected):
            raise CorruptDataError("index")
        ok = True
    except CorruptDataError:
        ok = False

    def call():
        return decode_dense_codebook(np.array(gaps, np.uint16), np.array(indices, np.uint16),
                                     codebook, rows, cols, layout)

    if ok:
        assert call().tolist() == [float(v) for v in expected]
    else:
        with pytest.raises(CorruptDataError):
            call()


def test_argument_errors():
    with pytest.raises(DCFError):
        decode_dense(np.array([0, 1], np.uint16), np.ones(1, np.float32), 2, 2, "csr")
    with pytest.raises(DCFError):
        decode_dense_codebook(np.array([0, 1], np.uint16), np.zeros(3, np.uint16), np.ones(1), 2, 2, "csr")
    with pytest.raises(DCFError):
        decode_dense(np.array([0], np.uint16), np.ones(1, np.float32), 1, 1, "diag")
    with pytest.raises(DCFError):
        decode_positions(np.array([-1]), 5)
    with pytest.raises(DCFError):
        decode_positions(np.array([0]), -5)
    # Wider integer dtypes are accepted when every symbol fits in 16 bits.
    assert decode_positions(np.array([1, 0], np.int64), 5).tolist() == [1, 2]


# ------------------------------------------------------------------------------------------------
# CSR / CSC views


def ref_compressed(nonzero: np.ndarray, layout: str) -> tuple[list[int], list[int]]:
    """CSR (or CSC) of a bool matrix the textbook way: per major line, the minor indices of its non-zeros."""
    lines = nonzero if layout == "csr" else nonzero.T
    indptr, minor = [0], []
    for line in lines:
        minor.extend(i for i, v in enumerate(line) if v)
        indptr.append(len(minor))
    return indptr, minor


@given(sparse_tensors(), st.sampled_from(["csr", "csc"]))
@SETTINGS
def test_to_compressed_matches_reference(x, layout):
    rows, cols = matrix_shape(x.shape)
    nonzero = (np.ascontiguousarray(x).reshape(-1).view(
        {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize]) != 0).reshape(rows, cols)
    indptr, minor = to_compressed(nonzero_positions(x, layout), rows, cols, layout)
    assert indptr.dtype == np.int64 and minor.dtype == np.int64
    ref_indptr, ref_minor = ref_compressed(nonzero, layout)
    assert indptr.tolist() == ref_indptr
    assert minor.tolist() == ref_minor


def test_to_compressed_worked_example_and_errors():
    assert [a.tolist() for a in to_compressed(np.array([6, 15]), 4, 4, "csr")] == [[0, 0, 1, 1, 2], [2, 3]]
    # csc positions of the same elements: (1, 2) -> 9, (3, 3) -> 15
    assert [a.tolist() for a in to_compressed(np.array([9, 15]), 4, 4, "csc")] == [[0, 0, 0, 1, 2], [1, 3]]
    assert [a.tolist() for a in to_compressed(np.array([], np.int64), 3, 0, "csr")] == [[0, 0, 0, 0], []]
    with pytest.raises(DCFError):
        to_compressed(np.array([15, 6]), 4, 4, "csr")
    with pytest.raises(DCFError):
        to_compressed(np.array([16]), 4, 4, "csr")
