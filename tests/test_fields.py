"""The fields encoding (spec §5.4, format 1.2): exact round trips of every dtype, the choice against raw,
parallel decoding, version rules and hostile headers."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcformat
from dcformat import Policy, codec, container
from dcformat import constants as K
from dcformat import fields as fieldcoding
from dcformat.errors import (ChecksumError, CorruptDataError, FormatError, HeaderError, HuffmanTableError,
                             VersionError)
from tests.filetools import poke, split, with_header, with_preamble
from tests.strategies import ALL_DTYPES, assert_same, np_dtype, tensors

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELD_DTYPES = [d for d in ALL_DTYPES if d != "bool"]


def encodings(data: bytes) -> dict[str, str]:
    with dcformat.open(data) as f:
        return {n: f.layout(n).encoding for n in f.keys()}


def explicit_fields(a: np.ndarray, widths=None, chunk_size=None) -> bytes:
    """A file holding `a` in the fields encoding, whatever the size (for tests of the decoder)."""
    a = np.asarray(a)
    dtype = codec.dtype_name(a.dtype)
    widths = tuple(widths or fieldcoding.split_for(dtype))
    chunk_size = chunk_size or fieldcoding.chunk_size_for(dtype)
    base = {"name": "t", "dtype": dtype, "shape": list(a.shape)}
    chunks, payloads, _, _ = fieldcoding.code_fields(codec._bits_view(a.reshape(-1)), widths, chunk_size, "auto",
                                                      K.HUFFMAN_ZLIB_COST)
    t = container.EncodedTensor(fieldcoding.fields_header(base, widths, chunk_size, chunks), payloads)
    tables = codec.Tables()
    tables.intern(t)
    import io
    buf = io.BytesIO()
    container.write_stream(buf, {}, tables.texts, [t])
    return buf.getvalue()


def skewed(rng: np.random.Generator, n: int, dtype) -> np.ndarray:
    """Weights-like values (normal, small scale) with the awkward patterns mixed in."""
    a = (rng.standard_normal(n) * 0.05).astype(dtype)
    if n and np.dtype(dtype).kind == "f":
        special = np.array([-0.0, np.nan, np.inf, -np.inf], dtype=np.float64).astype(dtype)
        a[rng.integers(0, n, 8)] = special[rng.integers(0, 4, 8)]
    return a


@SETTINGS
@given(tensors(dtypes=FIELD_DTYPES), st.data())
def test_fields_round_trip_any_bits(a, data):
    """Random bit patterns (NaN payloads, subnormals, -0.0, inf), any split of the bits, any chunk size."""
    itembits = 8 * a.dtype.itemsize
    widths, left = [], itembits
    while left:
        w = data.draw(st.integers(1, min(16, left)))
        widths.append(w)
        left -= w
    chunk = data.draw(st.sampled_from([1, 3, 8, 64, 1 << 16]))
    out = dcformat.load(explicit_fields(a, widths, chunk))["t"]
    assert_same(out, a)


@SETTINGS
@given(tensors(dtypes=FIELD_DTYPES))
def test_lossless_never_loses_and_is_never_much_bigger(a):
    model = {"x": a}
    data = dcformat.save(model, policy=Policy(lossless=True))
    assert_same(dcformat.load(data)["x"], a)
    raw = dcformat.save(model, policy=Policy(lossless=True, zero_copy="*"))
    assert encodings(raw) == {"x": "raw"}
    assert len(data) <= len(raw) + 64


@pytest.mark.parametrize("dtype", FIELD_DTYPES)
@pytest.mark.parametrize("n", [0, 1, 2, 1000, 70_000])
def test_every_dtype_awkward_sizes(dtype, n):
    rng = np.random.default_rng(n)
    dt = np_dtype(dtype)
    a = skewed(rng, n, dt) if dt.kind == "f" else rng.integers(0, 100, n).astype(dt)
    for shape in ([n], [] if n == 1 else [n]):
        x = a.reshape(shape)
        assert_same(dcformat.load(explicit_fields(x))["t"], x)
        data = dcformat.save({"t": x}, policy=Policy(lossless=True))
        assert_same(dcformat.load(data)["t"], x)


def test_all_equal_and_special_values():
    for v in (0.0, -0.0, np.nan, np.inf, 1e-45):
        a = np.full(100_000, v, np.float32)
        data = dcformat.save({"t": a}, policy=Policy(lossless=True))
        assert encodings(data) == {"t": "fields"} and len(data) < a.nbytes // 7  # one bit per field and element
        assert_same(dcformat.load(data)["t"], a)
    payloads = np.array([0x7FC00001, 0xFFC12345, 0x7F800001, 0x00000001, 0x80000000, 0x807FFFFF], np.uint32)
    a = np.tile(payloads, 5000).view(np.float32)
    assert_same(dcformat.load(explicit_fields(a, chunk_size=777))["t"], a)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64", "float8_e4m3fn", "float8_e5m2"])
def test_weights_get_smaller(dtype):
    a = skewed(np.random.default_rng(1), 300_000, np_dtype(dtype))
    data = dcformat.save({"w": a}, policy=Policy(lossless=True))
    assert encodings(data) == {"w": "fields"}
    assert len(data) < 0.9 * a.nbytes
    assert_same(dcformat.load(data)["w"], a)
    with dcformat.open(data) as f:
        assert f.header.version == (1, K.FIELDS_MINOR)


def test_exact_tensors_inside_a_lossy_policy_use_fields():
    rng = np.random.default_rng(2)
    model = {"fc.weight": rng.standard_normal((300, 200)).astype(np.float32),
             "fc.bias": skewed(rng, 20_000, np.float32), "emb": skewed(rng, 50_000, np.float32),
             "pos": np.arange(4096, dtype=np.int64)}
    data = dcformat.save(model, policy=Policy(raw=("emb",)))
    enc = encodings(data)
    assert enc["fc.weight"] in ("shared", "sparse")
    assert enc["fc.bias"] == enc["emb"] == enc["pos"] == "fields"
    out = dcformat.load(data)
    for k in ("fc.bias", "emb", "pos"):
        assert_same(out[k], model[k])
    kept = dcformat.save(model, policy=Policy(raw=("emb",), zero_copy=("emb", "pos")))
    enc = encodings(kept)
    assert enc["emb"] == enc["pos"] == "raw" and enc["fc.bias"] == "fields"
    assert encodings(dcformat.save(model, policy=Policy(raw=("emb",), huffman="off")))["emb"] == "raw"


def test_non_finite_tensor_kept_exact_in_fields():
    a = skewed(np.random.default_rng(3), 40_000, np.float32).reshape(200, 200)
    with pytest.warns(UserWarning, match="non-finite"):
        data = dcformat.save({"w": a}, policy=Policy(bits=4))
    assert encodings(data)["w"] == "fields"
    assert_same(dcformat.load(data)["w"], a)


def test_files_without_new_features_stay_older_versions():
    a = np.arange(10, dtype=np.float32)
    with dcformat.open(dcformat.save({"a": a}, policy=Policy(lossless=True, compact_header=False))) as f:
        assert f.header.version == (1, 0)
    with dcformat.open(dcformat.save({"a": a.astype(ml_dtypes.float8_e5m2)}, policy=Policy(zero_copy="*"))) as f:
        assert f.header.version == (1, 2)  # float8 needs 1.2 even raw


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_decode_matches(threads):
    a = skewed(np.random.default_rng(4), 3_000_000, np.float32)
    data = dcformat.save({"w": a}, policy=Policy(lossless=True))
    with dcformat.open(data) as f:
        assert len(f.layout("w").chunks) > 8
    out = dcformat.load(data, threads=threads)["w"]
    assert_same(out, a)
    target = np.empty_like(a)
    with dcformat.open(data) as f:
        dcformat.load_into(f, {"w": target}, threads=threads)
    assert_same(target, a)


# ---- hostile and broken files -------------------------------------------------------------


@pytest.fixture(scope="module")
def good() -> bytes:
    return explicit_fields(skewed(np.random.default_rng(5), 5000, np.float32), widths=(8, 8, 7, 9), chunk_size=2048)


def load(data: bytes):
    return dcformat.load(data)["t"]


@pytest.mark.parametrize("mutate, error", [
    (lambda t: t.update(fields=[8, 8, 8, 7]), HeaderError),  # 31 bits
    (lambda t: t.update(fields=[16, 16, 1]), HeaderError),  # 33 bits
    (lambda t: t.update(fields=[0, 8, 8, 7, 9]), HeaderError),
    (lambda t: t.update(fields=[17, 15]), HeaderError),
    (lambda t: t.update(fields=[]), HeaderError),
    (lambda t: t.update(fields="8,8"), HeaderError),
    (lambda t: t.update(chunk_size=0), HeaderError),
    (lambda t: t.update(chunk_size=2.5), HeaderError),
    (lambda t: t.update(chunk_size=1), FormatError),  # 5000 chunks, 3 listed
    (lambda t: t.update(chunk_size=2 ** 80), FormatError),
    (lambda t: t["chunks"].pop(), FormatError),
    (lambda t: t["chunks"][0].pop(), FormatError),
    (lambda t: t.update(chunks={}), HeaderError),
    (lambda t: t["chunks"].__setitem__(0, "x"), HeaderError),
    (lambda t: t.update(dtype="bool", fields=[8]), HeaderError),
    (lambda t: t.update(extra=1), HeaderError),
    (lambda t: t.pop("chunk_size"), HeaderError),
    (lambda t: t.update(shape=[2 ** 70]), dcformat.LimitError),
])
def test_bad_fields_headers(good, mutate, error):
    bad = with_header(good, lambda doc: mutate(doc["tensors"][0]))
    with pytest.raises(error):
        load(bad)


def test_fields_need_version_1_2(good):
    assert split(good)[0]["tensors"][0]["encoding"] == "fields"
    with pytest.raises(HeaderError, match="1.2"):
        load(with_preamble(good, minor=1))
    f8 = dcformat.save({"t": np.zeros(3, ml_dtypes.float8_e4m3fn)}, policy=Policy(zero_copy="*"))
    with pytest.raises(HeaderError, match="1.2"):
        load(with_preamble(f8, minor=1))


def test_newer_minor_with_unknown_content_is_a_version_error(good, monkeypatch):
    """A 1.1 reader (simulated: no fields encoding, no float8) rejects a 1.2 file with VersionError."""
    planes = with_preamble(with_header(good, lambda doc: doc["tensors"][0].update(encoding="planes")), minor=2)
    float4 = with_preamble(with_header(good, lambda doc: doc["tensors"][0].update(dtype="float4")), minor=2)
    monkeypatch.setattr(K, "VERSION_MINOR", 1)
    monkeypatch.setattr(K, "ENCODINGS", (K.RAW, K.SHARED, K.SPARSE))
    for data in (good, planes, float4):
        with pytest.raises(VersionError, match="1.2"):
            load(data)
    monkeypatch.undo()
    with pytest.raises(HeaderError) as e:  # unknown content in a file of a version the reader knows
        load(with_preamble(planes, minor=1))
    assert not isinstance(e.value, VersionError)


def test_damaged_fields_data(good):
    doc, _ = split(good)
    huff = [s for c in doc["tensors"][0]["chunks"] for s in c if s["coding"] == "huffman"]
    assert huff
    s = huff[0]["section"]
    with pytest.raises(ChecksumError):
        load(poke(good, s["offset"], bytes([good[s["offset"]] ^ 0x10])))
    # a table longer than the field's alphabet
    nine = [s for s in doc["tensors"][0]["chunks"][0] if s["coding"] == "huffman"][-1]
    bad = with_header(good, lambda d: d["tables"].__setitem__(nine["table"], d["tables"][nine["table"]] + "0" * 600))
    with pytest.raises(HuffmanTableError):
        load(bad)


def test_merge_checks_its_arguments():
    out = np.zeros(4, np.uint32)
    with pytest.raises(CorruptDataError):
        fieldcoding.merge(out, np.zeros(3, np.uint16), 0, True)
    with pytest.raises(CorruptDataError):
        fieldcoding.merge(out, np.zeros(4, np.uint16), 32, True)
    fieldcoding.merge(out, np.array([1, 2, 3, 0xFFFF], np.uint16), 16, True)
    fieldcoding.merge(out, np.array([5, 6, 7, 8], np.uint16), 0, False)
    assert out.tolist() == [0x10005, 0x20006, 0x30007, 0xFFFF0008]


@pytest.mark.parametrize("width", [1, 2, 3, 4, 7, 8, 9, 13, 16])
@pytest.mark.parametrize("n", [0, 1, 5, 8, 101])
def test_merge_fixed_matches_unpack(width, n):
    from dcformat import bitpack

    rng = np.random.default_rng(width * 1000 + n)
    symbols = rng.integers(0, 1 << width, n).astype(np.uint16)
    data = np.frombuffer(bitpack.pack(symbols, width), np.uint8)
    base = rng.integers(0, 2 ** 31, n).astype(np.uint64)
    out = base.copy()
    assert fieldcoding.merge_fixed(out, data, width, 40, False)
    assert np.array_equal(out, base | (symbols.astype(np.uint64) << 40))
    assert fieldcoding.merge_fixed(out, data, width, 3, True)
    assert np.array_equal(out, symbols.astype(np.uint64) << 3)
    if n * width % 8:
        bad = data.copy()
        bad[-1] |= 0x80
        assert not fieldcoding.merge_fixed(out, bad, width, 0, True)
    with pytest.raises(CorruptDataError):
        fieldcoding.merge_fixed(out, np.zeros(data.size + 1, np.uint8), width, 0, True)
    with pytest.raises(CorruptDataError):
        fieldcoding.merge_fixed(out, data, width, 64 - width + 1, True)
