"""Whole-file round trips through the public API, over awkward tensors and every encoding path."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import dcformat
from dcformat import Policy
from dcformat import constants as K

from .strategies import ALL_DTYPES, FLOAT_DTYPES, assert_same, bits_of, finite_float_tensors, names, tensors

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encodings_of(data: bytes) -> dict[str, str]:
    with dcformat.open(data) as f:
        return {name: f.layout(name).encoding for name in f.keys()}


@SETTINGS
@given(st.dictionaries(names, tensors(), min_size=0, max_size=4), st.dictionaries(names, names, max_size=3))
# found by hypothesis: a 120-byte tensor whose two fields sections paid ~60 B of padding each, priced at 32
@example(model={"\x1f\x80\x83\xcf\xdb": np.zeros((2, 3, 5), np.float32)}, metadata={})
def test_lossless_round_trip_every_dtype(model, metadata):
    data = dcformat.save(model, policy=Policy(lossless=True), metadata=metadata)
    out = dcformat.load(data)
    assert list(out) == list(model)
    for name, a in model.items():
        assert_same(out[name], a)
    with dcformat.open(data) as f:
        assert f.metadata == metadata
    assert set(encodings_of(data).values()) <= {"raw", "fields"}
    zero_copy = dcformat.save(model, policy=Policy(lossless=True, zero_copy="*"), metadata=metadata)
    assert set(encodings_of(zero_copy).values()) <= {"raw"}
    assert len(data) <= len(zero_copy) + 64  # fields only where its estimate is smaller (within the alignment)


@SETTINGS
@given(tensors(dtypes=ALL_DTYPES), st.sampled_from(["csr", "csc"]), st.integers(1, 16), st.sampled_from(["auto", "off"]))
def test_sparse_raw_values_round_trip_is_exact(a, layout, index_bits, huffman):
    """Pruned-but-not-quantized tensors (any dtype, NaN and -0.0 included) come back bit for bit."""
    from dcformat import codec
    from dcformat.policy import TensorPlan

    plan = TensorPlan("coded", prune=0.0, bits=None, index_bits=index_bits, layout=layout)
    draft = codec.draft_tensor("t", a, plan)
    tables, encoded = codec.assemble([draft], huffman)
    import io

    from dcformat.container import write_stream

    buf = io.BytesIO()
    write_stream(buf, {}, tables, encoded)
    out = dcformat.load(buf.getvalue())["t"]
    assert_same(out, a)


@SETTINGS
@given(finite_float_tensors(), st.integers(1, 8), st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from(["csr", "csc", "auto"]),
       st.sampled_from([1, 2, 3, 5, 8, 16, "auto"]), st.sampled_from(["auto", "shared", "off"]))
def test_lossy_file_decodes_to_what_compress_reports(a, bits, prune, layout, index_bits, huffman):
    policy = Policy(bits=bits, prune=prune, layout=layout, index_bits=index_bits, huffman=huffman)
    model = {"w": a, "b": a.reshape(-1)[:3].copy()}
    expected = dcformat.compress(model, policy=policy)
    out = dcformat.load(dcformat.save(model, policy=policy))
    for name in model:
        assert_same(out[name], expected[name])
    assert_same(out["b"], model["b"])  # 1-D tensors stay raw
    w = out["w"]
    # pruned share is at least what was asked (exact zeros may add to it)
    assert np.count_nonzero(bits_of(w) == 0) >= round(prune * a.size) - 0
    # at most 2^bits distinct values (the codebook), zero included
    assert len(np.unique(bits_of(w))) <= 2**bits


@SETTINGS
@given(finite_float_tensors(zero_share=0.0), st.integers(1, 6))
def test_already_quantized_tensor_round_trips_exactly(a, bits):
    """A tensor with at most 2^bits distinct values is its own codebook: the lossy path is lossless."""
    rng = np.random.default_rng(0)
    levels = np.unique(a.reshape(-1))[: 2**bits]
    q = levels[rng.integers(0, len(levels), a.size)].reshape(a.shape).astype(a.dtype)
    out = dcformat.load(dcformat.save({"q": q}, policy=Policy(bits=bits)))["q"]
    assert_same(out, q)


def test_bfloat16_and_scalars_and_empty_tensors():
    bf = np.array([[1.5, -0.0], [np.nan, 3.0]], dtype=ml_dtypes.bfloat16)
    model = {"bf": bf, "scalar": np.float32(2.5), "empty": np.zeros((0, 7), np.float32), "int": np.arange(7, dtype=np.int8)}
    with pytest.warns(UserWarning, match="non-finite"):
        out = dcformat.load(dcformat.save(model))
    for name, a in model.items():
        assert_same(out[name], np.asarray(a))
    assert out["bf"].dtype.name == "bfloat16"


def test_save_file_load_file_and_lazy_reader(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.laplace(0, 0.1, (64, 48)).astype(np.float32)
    model = {"fc.weight": w, "fc.bias": rng.standard_normal(64).astype(np.float32)}
    path = tmp_path / "m.dcf"
    dcformat.save_file(model, path, policy=Policy(prune=0.9, fc_bits=5), metadata={"arch": "mlp"})
    loaded = dcformat.load_file(path)
    with dcformat.open(path) as f:
        assert f.keys() == ["fc.weight", "fc.bias"]
        assert "fc.weight" in f and "nope" not in f
        assert f.metadata == {"arch": "mlp"}
        info = f.layout("fc.weight")
        assert info.encoding == "sparse" and info.bits == 5 and info.index_bits == 5
        assert info.entries - info.fillers == round(0.1 * w.size)
        assert_same(f.get_tensor("fc.weight"), loaded["fc.weight"])
        raw_view = f.get_tensor("fc.bias", copy=False)
        assert not raw_view.flags.writeable
        assert_same(raw_view, model["fc.bias"])
        sp = f.get_sparse("fc.weight")
        assert_same(sp.todense(), loaded["fc.weight"])
        assert len(sp.values) == round(0.1 * w.size)
        np.testing.assert_array_equal(sp.codebook[sp.codes], sp.values)
        scipy = pytest.importorskip("scipy")
        assert np.array_equal(sp.to_scipy().toarray().reshape(w.shape), loaded["fc.weight"])
        with pytest.raises(dcformat.DCFError, match="not sparse"):
            f.get_sparse("fc.bias")
        with pytest.raises(KeyError, match="no tensor named"):
            f.get_tensor("missing")
        del raw_view
    # 90% pruned, 5-bit codes and indices: far below a quarter of the dense size
    assert os.path.getsize(path) < w.nbytes / 4


def test_writes_are_deterministic():
    rng = np.random.default_rng(2)
    model = {"a": rng.standard_normal((40, 30)).astype(np.float32), "c": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)}
    policy = Policy(prune=0.7)
    assert dcformat.save(model, policy=policy) == dcformat.save(dict(model), policy=policy)


def test_default_policy_is_the_papers_widths_without_pruning():
    rng = np.random.default_rng(3)
    model = {"conv": rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "fc": rng.standard_normal((20, 30)).astype(np.float32),
             "bias": rng.standard_normal(20).astype(np.float32)}
    data = dcformat.save(model)
    with dcformat.open(data) as f:
        assert f.layout("conv").encoding == "shared" and f.layout("conv").bits <= 8
        assert f.layout("fc").encoding == "shared" and f.layout("fc").bits <= 5
        assert f.layout("bias").encoding == "raw"
        out = {k: f.get_tensor(k) for k in f.keys()}
    assert np.count_nonzero(out["fc"]) == out["fc"].size  # nothing pruned
    assert len(np.unique(out["fc"])) <= 32 and len(np.unique(out["conv"])) <= 256


def test_policy_rules_and_raw_patterns():
    rng = np.random.default_rng(4)
    model = {"enc.w": rng.standard_normal((30, 30)).astype(np.float32), "head.w": rng.standard_normal((30, 30)).astype(np.float32),
             "emb.w": rng.standard_normal((30, 30)).astype(np.float32)}
    policy = Policy(raw=("emb.*",), rules={"head.*": {"bits": 2, "prune": 0.5}}, zero_copy=("emb.*",))
    with dcformat.open(dcformat.save(model, policy=policy)) as f:
        assert f.layout("emb.w").encoding == "raw"
        assert f.layout("head.w").encoding in ("sparse", "shared") and f.layout("head.w").bits <= 2
        assert f.layout("enc.w").bits <= 5
        head = f.get_tensor("head.w")
    assert np.count_nonzero(head == 0) >= 450


@pytest.mark.parametrize("bad", [
    dict(prune=1.5), dict(bits=17), dict(index_bits=0), dict(layout="coo"), dict(huffman="maybe"),
    dict(prune=0.5, threshold=0.1), dict(rules={"x": {"colour": 1}}), dict(block_size=0),
])
def test_bad_policies_raise_encode_error(bad):
    with pytest.raises(dcformat.EncodeError):
        Policy(**bad)


def test_bad_inputs_raise_encode_error():
    with pytest.raises(dcformat.EncodeError, match="not supported"):
        dcformat.save({"c": np.zeros(3, np.complex64)})
    with pytest.raises(dcformat.EncodeError, match="non-empty string"):
        dcformat.save({"": np.zeros(3)})
    with pytest.raises(dcformat.EncodeError, match="metadata"):
        dcformat.save({"a": np.zeros(3)}, metadata={"k": 1})
    with pytest.raises(dcformat.EncodeError, match="lone surrogate"):
        dcformat.save({"\ud800": np.zeros(2)})
    with pytest.raises(dcformat.EncodeError, match="lone surrogate"):
        dcformat.save({"a": np.zeros(2)}, metadata={"k": "\udc00"})
    nan = np.full((4, 4), np.nan, np.float32)
    nan[0, 0] = 1.0
    with pytest.warns(UserWarning, match="non-finite"):
        data = dcformat.save({"a": nan}, policy=Policy(bits=4))
    assert_same(dcformat.load(data)["a"], nan)


def test_failed_write_leaves_existing_file_and_no_temporaries(tmp_path, monkeypatch):
    path = tmp_path / "m.dcf"
    dcformat.save_file({"a": np.arange(10, dtype=np.float32)}, path)
    before = path.read_bytes()
    from dcformat import container

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(container.StreamWriter, "finish", boom)  # the streaming writer save_file uses
    with pytest.raises(KeyboardInterrupt):
        dcformat.save_file({"a": np.zeros(10, np.float32)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dcf"]


def test_reader_keeps_its_map_when_file_is_replaced(tmp_path):
    path = tmp_path / "m.dcf"
    old = np.arange(100, dtype=np.float32).reshape(10, 10)
    dcformat.save_file({"a": old}, path, policy=Policy(lossless=True))
    with dcformat.open(path) as f:
        dcformat.save_file({"a": -old}, path, policy=Policy(lossless=True))
        assert_same(f.get_tensor("a"), old)
    assert_same(dcformat.load_file(path)["a"], -old)


def test_torch_state_dict_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"w": torch.randn(20, 30), "b": torch.randn(20).to(torch.bfloat16), "n": torch.tensor(3, dtype=torch.int64)}
    path = tmp_path / "t.dcf"
    dcformat.save_torch(sd, path, policy=Policy(lossless=True))
    out = dcformat.load_torch(path)
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        assert torch.equal(out[k], v)


def test_threaded_load_equals_serial_load(tmp_path):
    rng = np.random.default_rng(9)
    model = {f"t{i}": rng.laplace(0, 0.1, (30 + i, 17)).astype(np.float32) for i in range(6)}
    model["raw"] = np.arange(5, dtype=np.int16)
    path = tmp_path / "m.dcf"
    dcformat.save_file(model, path, policy=Policy(prune=0.6, fc_bits=4))
    serial = dcformat.load_file(path, threads=1)
    threaded = dcformat.load_file(path, threads=4)
    assert list(threaded) == list(model)  # file order kept
    for name in model:
        assert_same(threaded[name], serial[name])
    assert_same(dcformat.load(path.read_bytes(), threads=3)["t5"], serial["t5"])


def test_get_sparse_allocates_its_pointer_array_once():
    """Found by the fuzzer: the row pointers of a tall sparse tensor (the one array sized by the shape,
    not by the data) were allocated twice, with a full-size count array beside them."""
    import tracemalloc

    x = np.zeros((1 << 22, 1), np.float32)
    x[5], x[-1] = 1, 2
    f = dcformat.open(dcformat.save({"x": x}))
    assert f.header.tensors[0].encoding == "sparse" and f.header.tensors[0].layout == "csr"
    f.get_sparse("x")  # the kernels are compiled or loaded outside the measurement
    tracemalloc.start()
    try:
        sp = f.get_sparse("x")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sp.indptr.nbytes == 8 * ((1 << 22) + 1)
    assert sp.indptr[-1] == 2 and sp.indices.tolist() == [0, 0] and sp.values.tolist() == [1, 2]
    assert np.array_equal(sp.todense(), x)
    assert peak < 1.1 * sp.indptr.nbytes, peak


def _with_a_bad_last_tensor(tmp_path, n: int = 4):
    """A file of n 4 MB tensors whose last one (in file order) has one data byte flipped."""
    tensors = {f"t{i}": np.full((1 << 20,), i + 0.5, np.float32) for i in range(n)}
    path = tmp_path / "bad.dcf"
    dcformat.save_file(tensors, path, policy=Policy(lossless=True))
    with dcformat.open(path) as f:  # the section that lies last in the file, whatever the encoding
        _, section = max((s for t in f.header.tensors for s in t.sections()), key=lambda s: s[1].offset)
        offset = section.offset + section.length // 2
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))
    return path


def _failed_load(path, threads: int) -> tuple[str, int, int]:
    """(the error's message, traced memory still held, peak) of a load_file that fails, the caller
    keeping the error and the garbage collector off: what outlives the call is held by references."""
    import gc
    import tracemalloc

    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        try:
            dcformat.load_file(path, threads=threads)
        except dcformat.ChecksumError as e:
            kept = e
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    return str(kept), current, peak


@pytest.mark.parametrize("threads", [1, 2])
def test_a_failed_load_holds_no_decoded_tensor(tmp_path, threads):
    """Found by the fuzzer: load_file failing on one tensor kept the ones decoded before it alive
    through the error's traceback (a reference cycle), so the next call started with them in memory.
    Here the caller even keeps the error: the tensors are still freed, without the garbage collector."""
    path = _with_a_bad_last_tensor(tmp_path)
    with pytest.raises(dcformat.ChecksumError):
        dcformat.load_file(path, threads=threads)  # kernels and caches warm
    for _ in range(5):  # with threads, which thread decodes the bad tensor varies from run to run
        message, current, peak = _failed_load(path, threads)
        assert "t3" in message
        assert peak > 8 << 20  # tensors were decoded ...
        assert current < 1 << 20, current  # ... and none outlives the call


def test_a_failed_sharded_load_holds_no_decoded_tensor(tmp_path):
    """The same over shards: the first shard's tensors are freed when the second one fails."""
    from dcformat import shards

    good = {f"a{i}": np.full((1 << 20,), i + 0.5, np.float32) for i in range(3)}
    dcformat.save_file(good, tmp_path / "model-00001-of-00002.dcf", policy=Policy(lossless=True))
    _with_a_bad_last_tensor(tmp_path).rename(tmp_path / "model-00002-of-00002.dcf")
    weight_map = {**{n: "model-00001-of-00002.dcf" for n in good},
                  **{f"t{i}": "model-00002-of-00002.dcf" for i in range(4)}}
    shards.write_index(tmp_path / shards.INDEX_NAME, weight_map, 7 << 22)
    message, current, peak = _failed_load(tmp_path, 1)
    assert "t3" in message and peak > 12 << 20
    assert current < 1 << 20, current
