"""Row scales of shared tensors (spec §5.2, format 1.3): quantize_uniform_rows, Policy.row_scales,
the file round trip (decoded = dtype(codebook[index] x scale of the row), bit for bit), refusals and
readers (lazy, parallel, reference, inspect, verify)."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dcformat
from dcformat import Policy, allocation, codec, container, encoder
from dcformat.errors import CorruptDataError, EncodeError, HeaderError
from dcformat.quantize import MAX_LEVELS, quantize_uniform, quantize_uniform_rows, row_count

from . import reference_decoder as ref
from .strategies import assert_same, bits_of


def _decoded(codebook: np.ndarray, indices: np.ndarray, scales: np.ndarray, classes: np.ndarray,
             shape: tuple[int, ...]) -> np.ndarray:
    """§5.2 in plain numpy: each codebook value times its row's scale, one IEEE multiplication."""
    flat = codebook[indices.astype(np.int64)]
    rows = row_count(shape)
    if rows and flat.size:
        with np.errstate(over="ignore", under="ignore"):
            flat = (flat.reshape(rows, -1) * scales[classes.astype(np.int64)][:, None]).reshape(-1)
    return flat.reshape(shape)


@st.composite
def scaled_inputs(draw) -> tuple[np.ndarray, float, np.ndarray]:
    """(x, step, row multipliers): awkward shapes and values, multipliers equal, spread, huge or tiny."""
    dtype = np.dtype(draw(st.sampled_from(["float32", "float64"])))
    shape = draw(st.sampled_from([(), (1,), (5,), (1, 1), (0, 4), (4, 0), (1, 9), (7, 3), (2, 3, 5), (40, 33)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = np.asarray(rng.laplace(0.0, draw(st.sampled_from([1e-3, 0.05, 1.0, 300.0])), size=shape)).astype(dtype)
    kind = draw(st.sampled_from(["plain", "zeros", "zero rows", "one value", "negative zero", "subnormal"]))
    rows = row_count(shape)
    if kind == "zeros":
        x[rng.random(x.shape) < 0.7] = 0
    elif kind == "zero rows" and x.ndim >= 2:
        x[rng.random(shape[0]) < 0.5] = 0
    elif kind == "one value":
        x[...] = x.reshape(-1)[0] if x.size else 0
    elif kind == "negative zero":
        x[...] = np.asarray(-0.0, dtype=dtype)
    elif kind == "subnormal":
        tiny = np.finfo(dtype).smallest_subnormal
        x = (np.asarray(rng.integers(-5, 6, size=shape)) * tiny).astype(dtype)
    mult = draw(st.sampled_from(["ones", "equal", "spread", "few", "huge", "tiny"]))
    if mult == "ones":
        m = np.ones(rows)
    elif mult == "equal":
        m = np.full(rows, 2.5)
    elif mult == "spread":
        m = rng.uniform(0.1, 10.0, rows)
    elif mult == "few":
        m = rng.choice([0.5, 1.0, 2.0, 3.0], rows)
    elif mult == "huge":
        m = rng.uniform(1e20, 1e25, rows)
    else:
        m = rng.uniform(1e-25, 1e-20, rows)
    step = draw(st.sampled_from([1e-4, 0.01, 0.3, 7.5]))
    if kind == "subnormal":
        step = float(np.finfo(dtype).smallest_subnormal) * draw(st.sampled_from([1.0, 3.0]))
        if mult in ("huge", "tiny"):
            m = np.ones(rows)
    return x, step, m


def _quantize_or_refuse(x: np.ndarray, step: float, m: np.ndarray):
    try:
        return quantize_uniform_rows(x, step, m)
    except EncodeError:
        # too many levels (a small step times small multipliers), or x / s overflowing the dtype:
        # the file writer refuses the same way
        if x.ndim >= 2:  # (a policy keeps 1-D tensors and scalars exact: no step, no row scales)
            with pytest.raises(EncodeError):
                dcformat.save({"w": x}, policy=Policy(step=step, row_scales={"w": m}))
        return None


def _save_scaled(x: np.ndarray, step: float, m: np.ndarray, out: tuple) -> bytes:
    """The file of x with row scales: through a Policy (rank >= 2, what the policy quantizes with a step),
    else (1-D, scalar) through the explicit draft of the same quantization."""
    if x.ndim >= 2:
        return dcformat.save({"w": x}, policy=Policy(step=step, row_scales={"w": m}))
    codebook, indices, scales, classes = out
    draft = codec.draft_explicit("w", x, "shared", codebook=codebook, indices=indices, scales=scales,
                                 row_scales=classes)
    tables, encoded = codec.assemble([draft], "auto")
    f = io.BytesIO()
    container.write_stream(f, {}, tables, encoded)
    return f.getvalue()


@settings(max_examples=200, deadline=None)
@given(scaled_inputs())
def test_quantize_uniform_rows_levels_codebook_and_error(inputs):
    x, step, m = inputs
    out = _quantize_or_refuse(x, step, m)
    if out is None:
        return
    codebook, indices, scales, classes = out
    rows = row_count(x.shape)
    assert codebook.dtype == scales.dtype == x.dtype and indices.dtype == classes.dtype == np.uint16
    assert indices.shape == (x.size,) and classes.shape == (rows,)
    assert np.array_equal(scales, np.unique(m.astype(x.dtype))) if rows else np.array_equal(scales, [1.0])
    assert np.all(np.diff(scales.astype(np.float64)) > 0) and np.isfinite(codebook).all()
    if x.size == 0:
        assert_same(codebook, np.zeros(1, x.dtype))
        return
    assert np.array_equal(scales[classes], m.astype(x.dtype))
    s_r = np.repeat(scales[classes].astype(np.float64), x.size // rows)
    q = step * s_r
    levels = np.floor(x.reshape(-1).astype(np.float64) / q + 0.5)
    # level 0 (when used) is exactly +0.0 and first; the rest ascending
    if np.any(levels == 0):
        assert bits_of(codebook[:1])[0] == 0 and np.all(indices[levels == 0] == 0)
    body = codebook[1:] if np.any(levels == 0) else codebook
    assert np.all(np.diff(body.astype(np.float64)) >= 0)  # (means of subnormals may round together)
    decoded = _decoded(codebook, indices, scales, classes, x.shape).reshape(-1).astype(np.float64)
    err = np.abs(decoded - x.reshape(-1).astype(np.float64))
    eps = float(np.finfo(x.dtype).eps)
    slack = 4 * eps * np.abs(x.reshape(-1).astype(np.float64)) + 2 * float(np.finfo(x.dtype).smallest_subnormal)
    assert np.all(err <= q * (1 + 1e-9) + slack)
    zero = levels == 0
    assert np.all(err[zero] <= q[zero] / 2 * (1 + 1e-9) + slack[zero])


@settings(max_examples=120, deadline=None)
@given(scaled_inputs())
def test_row_scales_round_trip_bit_for_bit(tmp_path_factory, inputs):
    x, step, m = inputs
    out = _quantize_or_refuse(x, step, m)
    if out is None:
        return
    expected = _decoded(*out, x.shape)
    path = tmp_path_factory.mktemp("rs") / "w.dcf"
    path.write_bytes(_save_scaled(x, step, m, out))
    header = dcformat.read_header(path)
    t = header.tensors[0]
    assert header.version == (1, 4 if "rans" in (t.indices.coding, t.row_scales.coding) else 3)
    assert t.encoding == "shared" and t.scales_count == len(out[2]) and t.row_scales.count == row_count(x.shape)
    got = dcformat.load_file(path)["w"]
    assert_same(got, expected)
    assert ref.read_file(path.read_bytes()).tensors[0].data == expected.tobytes()


def test_equal_multipliers_are_quantize_uniform():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 17)).astype(np.float32)
    codebook, indices = quantize_uniform(x, 0.05)
    cb, idx, scales, classes = quantize_uniform_rows(x, 0.05, np.ones(30))
    assert_same(cb, codebook) and np.array_equal(idx, indices)
    assert_same(scales, np.ones(1, np.float32)) and not classes.any()
    # any equal multiplier c: the levels of quantize_uniform at step x c, one scale
    _, idx3, scales3, _ = quantize_uniform_rows(x, 0.05, np.full(30, 3.0))
    assert np.array_equal(idx3, quantize_uniform(x, 0.05 * 3.0)[1]) and len(scales3) == 1


def test_far_outliers_take_the_sparse_level_path():
    """A level span wider than the dense table (2^24) is counted with a hash map: same contract."""
    x = np.zeros((4, 50), np.float64)
    x[0, 0], x[3, 7], x[2, 2] = 1e9, -3e9, 0.4
    m = np.array([1.0, 2.0, 0.5, 4.0])
    codebook, indices, scales, classes = quantize_uniform_rows(x, 0.1, m)
    decoded = _decoded(codebook, indices, scales, classes, x.shape)
    assert np.all(np.abs(decoded - x) <= 0.1 * scales[classes][:, None] * (1 + 1e-9))
    assert len(codebook) == 4 and codebook[0] == 0


def test_2_16_distinct_multipliers_and_one_more():
    x = np.linspace(-1, 1, 1 << 16, dtype=np.float32).reshape(-1, 1)
    m = 1.0 + np.arange(1 << 16) / (1 << 17)  # distinct in float32
    _, _, scales, classes = quantize_uniform_rows(x, 0.01, m)
    assert len(scales) == MAX_LEVELS and int(classes.max()) == MAX_LEVELS - 1
    data = dcformat.save({"w": x}, policy=Policy(step=0.01, row_scales={"w": m}))
    t = container.parse_header(data).tensors[0]
    assert (t.scale_bits, t.scales_count) == (16, 1 << 16)
    assert_same(dcformat.load(data)["w"], _decoded(*quantize_uniform_rows(x, 0.01, m), x.shape))
    x1 = np.zeros(((1 << 16) + 1, 1), np.float32)
    m1 = 1.0 + np.arange((1 << 16) + 1) / (1 << 18)
    with pytest.raises(EncodeError, match="distinct"):
        quantize_uniform_rows(x1, 0.01, m1)
    with pytest.raises(EncodeError, match="distinct"):
        Policy(step=0.01, row_scales={"w": m1})


@pytest.mark.parametrize("bad", [[1.0, np.nan, 1.0], [1.0, np.inf, 1.0], [1.0, 0.0, 1.0], [1.0, -2.0, 1.0],
                                 [[1.0, 1.0, 1.0]], "abc", None])
def test_bad_multipliers_are_refused(bad):
    x = np.ones((3, 4), np.float32)
    with pytest.raises(EncodeError):
        quantize_uniform_rows(x, 0.1, bad)
    with pytest.raises(EncodeError):
        Policy(step=0.1, row_scales={"w": bad})


def test_multipliers_that_leave_the_dtype_are_refused():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(EncodeError, match="finite and positive as float32"):
        quantize_uniform_rows(x, 0.1, [1.0, 1e39])
    with pytest.raises(EncodeError, match="finite and positive as float32"):
        quantize_uniform_rows(x, 0.1, [1.0, 1e-50])
    with pytest.raises(EncodeError, match="overflow"):  # x / s past float32's range
        quantize_uniform_rows(np.full((1, 2), 1e38, np.float32), 1e30, [1e-5])


def test_wrong_length_and_dtype_are_refused_naming_the_tensor():
    x = np.ones((3, 4), np.float32)
    policy = Policy(step=0.1, row_scales={"w": np.ones(4)})
    with pytest.raises(EncodeError) as info:
        dcformat.save({"w": x}, policy=policy)
    assert info.value.tensor == "w" and "3 rows" in str(info.value)
    with pytest.raises(EncodeError) as info:
        allocation.file_size({"w": x}, policy)
    assert info.value.tensor == "w"
    for dtype in ("float16", "bfloat16"):
        import ml_dtypes

        y = x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
        with pytest.raises(EncodeError, match="float32 and float64") as info:
            dcformat.save({"w": y}, policy=Policy(step=0.1, row_scales={"w": np.ones(3)}))
        assert info.value.tensor == "w"
    with pytest.raises(EncodeError, match="float32 and float64"):
        quantize_uniform_rows(x.astype(np.float16), 0.1, np.ones(3))


def test_tensors_without_a_step_ignore_their_multipliers():
    """Row multipliers only refine a step: an exact or k-means tensor is stored as without them (1.0-1.2)."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    data = dcformat.save({"w": x}, policy=Policy(row_scales={"w": [1.0, 2.0, 3.0]}, lossless=True))
    assert container.parse_header(data).version[1] < 3
    assert_same(dcformat.load(data)["w"], x)


def test_policy_keeps_row_scales_and_records_a_summary():
    m = np.array([1.0, 2.0, 2.0, 4.0])
    p = Policy(step=0.1, row_scales={"w": m})
    q = p.with_(step=0.2)
    assert np.array_equal(q.row_scales["w"], m) and q.step == 0.2
    assert p.to_dict()["row_scales"] == {"w": 3}
    doc = json.loads(encoder.choices(p, []))
    assert doc["policy"]["row_scales"] == {"w": 3} and "step" in doc["policy"]
    rng = np.random.default_rng(3)
    tensors = {"w": rng.standard_normal((4, 64)).astype(np.float32), "b": rng.standard_normal(64).astype(np.float32)}
    size = allocation.file_size(tensors, p)
    assert size == len(dcformat.save(tensors, policy=p))
    assert allocation.file_size(tensors, p, record=True) > size


def test_fit_size_searches_the_base_step_with_row_scales():
    rng = np.random.default_rng(8)
    x = rng.laplace(0, 0.05, (2000, 64)).astype(np.float32)
    m = 1 / np.sqrt(np.minimum(rng.zipf(1.5, 2000), 5000) + 1.0)
    m /= m.max()  # most rows' steps are much finer than the base step
    policy = allocation.fit_size({"w": x}, Policy(row_scales={"w": m}), 100_000)
    data = dcformat.save({"w": x}, policy=policy)
    assert 99_000 <= len(data) <= 100_000 and np.array_equal(policy.row_scales["w"], m)
    assert container.parse_header(data).tensors[0].scales_count == len(np.unique(m.astype(np.float32)))
    # the coarsest step tried makes every row all zeros (the finest row's step counted)
    coarse = allocation._top({"w": x}, ["w"], policy)
    codebook, _, _, _ = quantize_uniform_rows(x, coarse, m)
    assert len(codebook) == 1 and codebook[0] == 0


def test_record_in_a_saved_file_does_not_hold_the_arrays(tmp_path):
    from dcformat.cli import main

    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    m = rng.choice([0.5, 1.0, 1.5], 300)
    path = tmp_path / "w.dcf"
    encoder_path = tmp_path / "w2.dcf"
    dcformat.save_file({"w": x}, path, policy=Policy(step=0.05, row_scales={"w": m}))
    with open(encoder_path, "wb") as f:
        encoder.write_file(f, [("w", lambda: x)], Policy(step=0.05, row_scales={"w": m}), None, record=True)
    record = json.loads(dcformat.read_header(encoder_path).metadata[encoder.ENCODER_METADATA_KEY])
    assert record["policy"]["row_scales"] == {"w": 3} and record["tensors"]["w"]["error"] > 0
    assert len(json.dumps(record)) < 300
    assert main(["verify", str(encoder_path)]) == 0


def test_recorded_error_is_the_decoded_error():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 20)).astype(np.float32)
    m = rng.uniform(0.5, 2.0, 50)
    policy = Policy(step=0.1, row_scales={"w": m})
    _, result = encoder.encode_tensor("w", x, policy)
    d = _decoded(*quantize_uniform_rows(x, 0.1, m), x.shape).astype(np.float64)
    x64 = x.astype(np.float64)
    assert result.error == pytest.approx(np.linalg.norm(d - x64) / np.linalg.norm(x64), rel=1e-9)
    assert result.lossy and result.step == pytest.approx(0.1)


def test_row_scales_are_never_sparse_even_when_mostly_zero():
    x = np.zeros((20, 50), np.float32)
    x[3, 4], x[7, 9] = 1.0, -2.0
    data = dcformat.save({"w": x}, policy=Policy(step=0.1, row_scales={"w": np.linspace(1, 2, 20)}))
    t = container.parse_header(data).tensors[0]
    assert t.encoding == "shared" and t.scales is not None


def _big(rows: int = 3000, cols: int = 384) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(6)
    x = rng.laplace(0, 0.05, (rows, cols)).astype(np.float32)
    m = 1.0 / np.sqrt(np.minimum(rng.zipf(1.5, rows), 5000) + 1.0)  # token counts: most rows rare
    return x, m


@pytest.mark.parametrize("huffman", ["auto", "off"])
def test_lazy_parallel_and_out_readers_agree(huffman, tmp_path):
    x, m = _big()
    policy = Policy(step=0.01, row_scales={"w": m}, huffman=huffman, block_size=4096)
    path = tmp_path / "w.dcf"
    dcformat.save_file({"w": x}, path, policy=policy)
    expected = _decoded(*quantize_uniform_rows(x, 0.01, m), x.shape)
    info = dcformat.read_header(path).tensors[0]
    assert (info.row_scales.coding == "huffman") == (huffman == "auto")
    for threads in (1, 4):
        assert_same(dcformat.load_file(path, threads=threads)["w"], expected)
    with dcformat.open(path) as f:
        assert_same(f.get_tensor("w"), expected)
    out = np.empty_like(x)
    assert dcformat.load_into(str(path), {"w": out}) == ["w"]
    assert_same(out, expected)


def test_decode_memory_is_the_output_and_o_of_r(tmp_path):
    x, m = _big(4000, 256)
    path = tmp_path / "w.dcf"
    dcformat.save_file({"w": x}, path, policy=Policy(step=0.01, row_scales={"w": m}, huffman="off"))
    dcformat.load_file(path, threads=1)  # compile and warm up first
    tracemalloc.start()
    try:
        got = dcformat.load_file(path, threads=1)["w"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.nbytes == x.nbytes
    assert peak <= x.nbytes + 64 * 4000 + (256 << 10), peak  # output + a few arrays of R + small


def test_inspect_shows_the_scales(tmp_path, capsys):
    from dcformat.cli import main

    x, m = _big(500, 16)
    path = tmp_path / "w.dcf"
    dcformat.save_file({"w": x}, path, policy=Policy(step=0.01, row_scales={"w": m}))
    m_count = len(np.unique(m.astype(np.float32)))
    assert main(["inspect", "--json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == "1.3" and report["tensors"][0]["scales"] == m_count
    assert main(["inspect", str(path)]) == 0
    assert f"{m_count} scales" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Readers: what a file with row scales must say and hold


def _file(x: np.ndarray, m, step: float = 0.1, **kw) -> bytes:
    return dcformat.save({"w": x}, policy=Policy(step=step, row_scales={"w": np.asarray(m, float)}, compact_header=False, **kw))


def _with_doc(data: bytes, minor: int, edit=None) -> bytes:
    """The file with its JSON header edited and version_minor set (sections unchanged, CRC fixed)."""
    n = struct.unpack_from("<Q", data, 16)[0]
    doc = json.loads(data[32:32 + n])
    if edit is not None:
        edit(doc)
    text = json.dumps(doc, separators=(",", ":")).encode()
    assert len(text) <= n
    header = text + b" " * (n - len(text))
    pre = struct.pack("<8sHHIQQ", data[:8], 1, minor, zlib.crc32(header), n, len(data))
    return pre + header + data[32 + n:]


def test_a_1_2_header_with_row_scales_is_refused():
    data = _file(np.arange(6, dtype=np.float32).reshape(3, 2), [1.0, 2.0, 3.0])
    assert data[8:12] == b"\x01\x00\x03\x00"
    old = _with_doc(data, 2)
    for read in (dcformat.load, ref.read_file):
        with pytest.raises(HeaderError):
            read(old)


def test_non_finite_scale_or_codebook_is_corrupt_data():
    data = _file(np.arange(6, dtype=np.float32).reshape(3, 2), [1.0, 2.0, 3.0])
    t = container.parse_header(data).tensors[0]
    for section, offset in ((t.scales, 4), (t.codebook, 0)):
        bad = bytearray(data)
        bad[section.offset + offset:section.offset + offset + 4] = np.float32(np.nan).tobytes()

        def fix(doc, section=section, bad=bad):
            key = "scales" if section is t.scales else "codebook"
            doc["tensors"][0][key]["crc32"] = zlib.crc32(bytes(bad[section.offset:section.end]))

        damaged = _with_doc(bytes(bad), 3, fix)
        for read in (dcformat.load, ref.read_file):
            with pytest.raises(CorruptDataError):
                read(damaged)
        with dcformat.open(damaged) as f:  # the header is fine: the lazy reader opens, the tensor fails
            with pytest.raises(CorruptDataError):
                f.get_tensor("w")


def test_explicit_draft_rejects_bad_row_scales():
    x = np.zeros((2, 2), np.float32)
    cb = np.array([0.0, 1.0], np.float32)
    with pytest.raises(EncodeError):
        codec.draft_explicit("w", x, "shared", codebook=cb, indices=[0, 1, 1, 0], scales=[1.0], row_scales=[0, 1])
    with pytest.raises(EncodeError):
        codec.draft_explicit("w", x, "shared", codebook=cb, indices=[0, 1, 1, 0], scales=[1.0], row_scales=[0])
    with pytest.raises(EncodeError):
        codec.draft_explicit("w", x.astype(np.float16), "shared", codebook=cb.astype(np.float16),
                             indices=[0, 1, 1, 0], scales=[1.0], row_scales=[0, 0])


def test_files_without_row_scales_keep_their_version():
    x = np.random.default_rng(7).standard_normal((8, 8)).astype(np.float32)
    data = dcformat.save({"w": x}, policy=Policy(step=0.1, compact_header=False))
    assert data[8:12] == b"\x01\x00\x00\x00"
    buf = io.BytesIO()
    assert container.content_minor([{"encoding": "fields"}, {"encoding": "shared", "scales": 0}]) == 3
    assert container.content_minor([{"encoding": "fields"}]) == 2 and not buf.getvalue()
