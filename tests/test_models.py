"""Checkpoints at any size: the streaming writer, decoding into caller memory, shards and model
folders, torch checkpoints and modules, parallel encoding (issue 13 and the interop of issue 11)."""

from __future__ import annotations

import io
import json
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcformat
from dcformat import Policy, container, encoder
from dcformat.errors import ChecksumError, DCFError, OutputExistsError, SameFileError
from dcformat.interop import convert
from dcformat.interop import safetensors as sf
from dcformat.shards import INDEX_NAME, ShardIndexError, ShardedOpen

from .strategies import assert_same, names, tensors

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
POLICIES = [Policy(), Policy(lossless=True), Policy(prune=0.7), Policy(step=0.01), Policy(huffman="shared", prune=0.5),
            Policy(prune=0.8, bits=0, layout="csc"), Policy(huffman="off", vector_bits=3)]


def model_of(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.laplace(0, 0.02, (96, 80)).astype(np.float32)
    conv = rng.normal(0, 0.1, (16, 3, 3, 3)).astype(np.float32)
    conv[rng.random(conv.shape) < 0.7] = 0
    return {"fc.weight": w, "fc.bias": rng.normal(size=80).astype(np.float32), "conv.weight": conv,
            "emb": rng.normal(size=(50, 8)).astype(ml_dtypes.bfloat16), "steps": np.arange(5, dtype=np.int64),
            "half": rng.normal(size=(20, 20)).astype(np.float16), "empty": np.zeros((0, 3), np.float32)}


# -- the streaming writer -------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("threads", [1, 2])
def test_save_file_streams_the_same_bytes(tmp_path, policy, threads):
    model = model_of()
    path = tmp_path / "m.dcf"
    dcformat.save_file(model, path, policy=policy, threads=threads)
    assert path.read_bytes() == encoder.encode_bytes(model, policy) == dcformat.save(model, policy=policy)


@pytest.mark.parametrize("policy", POLICIES[:3])
def test_spilled_to_disk_same_bytes(tmp_path, monkeypatch, policy):
    model = model_of(1)
    monkeypatch.setattr(container, "SPILL_MEMORY_BYTES", 100)  # every file spills to a temporary file
    path = tmp_path / "m.dcf"
    dcformat.save_file(model, path, policy=policy)
    assert path.read_bytes() == encoder.encode_bytes(model, policy)
    buf = io.BytesIO()  # a destination without a file descriptor: copied by hand
    w = container.StreamWriter(buf, {}, compact_header=policy.compact_header, directory=str(tmp_path), memory_bytes=1)
    tables, _ = encoder.encode_to(w, [(k, (lambda v=v: v)) for k, v in model.items()], policy)
    w.finish(tables)
    assert buf.getvalue() == path.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["m.dcf"]


@SETTINGS
@given(st.dictionaries(names, tensors(), max_size=4))
def test_streaming_writer_round_trip_every_dtype(model):
    data = dcformat.save(model, policy=Policy(lossless=True))
    out = dcformat.load(data)
    for k, a in model.items():
        assert_same(out[k], a)


def test_encoder_record_and_errors(tmp_path):
    model = model_of()
    src = tmp_path / "m.safetensors"
    sf.save_file(model, src, {"format": "pt"})
    report = convert.compress(src, tmp_path / "m.dcf", policy=Policy(step=0.01), metadata={"who": "me"})
    with dcformat.open(tmp_path / "m.dcf") as f:
        meta = f.metadata
        decoded = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format"] == "pt" and meta["who"] == "me"
    record = json.loads(meta[encoder.ENCODER_METADATA_KEY])
    assert record["policy"] == {"step": 0.01}
    rows = {r["name"]: r for r in report.tensors}
    for name, a in model.items():
        err = record["tensors"][name]["error"]
        if a.dtype.kind == "f" and a.size and rows[name]["encoding"] != "raw":
            x = a.astype(np.float64)
            expect = np.linalg.norm(decoded[name].astype(np.float64) - x) / np.linalg.norm(x)
            assert err == pytest.approx(expect, rel=1e-5) and err > 0
            assert record["tensors"][name]["step"] == 0.01 and "bits" in record["tensors"][name]
        else:
            assert err == 0 and "step" not in record["tensors"][name]
    assert report.error == pytest.approx(record["error"], rel=1e-5)


# -- decoding into caller memory ------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_get_tensor_out_every_encoding(policy):
    model = model_of(2)
    data = dcformat.save(model, policy=policy)
    with dcformat.open(data) as f:
        for name in f.keys():
            ref = f.get_tensor(name)
            for threads in (1, 2):
                out = np.empty_like(ref)
                out.reshape(-1).view(np.uint8)[:] = 0xA5  # garbage: every element must be written
                assert f.get_tensor(name, out=out, threads=threads) is out
                assert out.tobytes() == ref.tobytes()


def test_large_sparse_tensor_out_in_pieces():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(1024, 2048)).astype(np.float32)
    a[rng.random(a.shape) < 0.9] = 0
    for layout in ("csr", "csc"):
        data = dcformat.save({"a": a}, policy=Policy(prune=0.5, layout=layout))
        with dcformat.open(data) as f:
            ref = f.get_tensor("a")
            out = np.full_like(a, np.nan)
            f.get_tensor("a", out=out, threads=2)
            assert out.tobytes() == ref.tobytes()


def test_out_is_checked():
    data = dcformat.save({"a": np.zeros((4, 4), np.float32)})
    with dcformat.open(data) as f:
        for bad in (np.zeros((4, 4), np.float64), np.zeros(15, np.float32), np.zeros((4, 8), np.float32)[:, ::2],
                    [0.0] * 16):
            with pytest.raises(DCFError, match="out"):
                f.get_tensor("a", out=bad)
        ro = np.zeros((4, 4), np.float32)
        ro.flags.writeable = False
        with pytest.raises(DCFError, match="writable"):
            f.get_tensor("a", out=ro)
        ok = np.zeros(16, np.float32)  # another shape with the same size is fine
        f.get_tensor("a", out=ok)


def test_out_on_a_corrupt_file_raises_and_leaves_the_file(tmp_path):
    a = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    data = bytearray(dcformat.save({"a": a}, policy=Policy(lossless=True)))
    data[-10] ^= 0xFF
    path = tmp_path / "bad.dcf"
    path.write_bytes(bytes(data))
    out = np.zeros_like(a)
    with dcformat.open(path) as f, pytest.raises(ChecksumError):
        f.get_tensor("a", out=out)
    assert path.read_bytes() == bytes(data)


def test_load_into_numpy(tmp_path):
    model = model_of()
    path = tmp_path / "m.dcf"
    dcformat.save_file(model, path, policy=Policy(lossless=True))
    arrays = {k: np.empty_like(v) for k, v in model.items()}
    assert dcformat.load_into(path, arrays) == list(model)
    for k, v in model.items():
        assert_same(arrays[k], v)
    with pytest.raises(DCFError, match="names differ"):
        dcformat.load_into(path, {"fc.weight": arrays["fc.weight"]})
    assert dcformat.load_into(path, {"fc.weight": arrays["fc.weight"]}, strict=False) == ["fc.weight"]


# -- shards and folders ---------------------------------------------------------------------------


def write_folder(tmp_path, model, shards: int = 1, *, extra: bool = True):
    folder = tmp_path / "in"
    folder.mkdir()
    names = list(model)
    if shards == 1:
        sf.save_file(model, folder / "model.safetensors", {"format": "pt"})
    else:
        weight_map = {}
        parts = np.array_split(np.arange(len(names)), shards)
        for i, part in enumerate(parts):
            shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            sf.save_file({names[j]: model[names[j]] for j in part}, folder / shard, {"format": "pt"})
            weight_map.update({names[j]: shard for j in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    if extra:
        (folder / "config.json").write_text('{"model_type": "x"}')
        (folder / "sub").mkdir()
        (folder / "sub" / "tokenizer.json").write_text("{}")
    return folder


@pytest.mark.parametrize("shards_in", [1, 3])
@pytest.mark.parametrize("max_shard_size", [None, 3000])
def test_folder_round_trip_lossless(tmp_path, shards_in, max_shard_size):
    model = model_of()
    folder = write_folder(tmp_path, model, shards_in)
    events = []
    report = convert.compress(folder, tmp_path / "dcf", policy=Policy(lossless=True), max_shard_size=max_shard_size,
                              progress=events.append)
    out = tmp_path / "dcf"
    assert (out / "config.json").read_text() == '{"model_type": "x"}' and (out / "sub" / "tokenizer.json").exists()
    dense = sum(a.nbytes for a in model.values())
    if max_shard_size is None:
        assert (out / "model.dcf").exists() and not (out / INDEX_NAME).exists()
    else:
        index = json.loads((out / INDEX_NAME).read_text())
        assert index["metadata"]["total_size"] == dense == report.input_bytes
        assert set(index["weight_map"]) == set(model)
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.dcf"
        for s in shards:  # each shard holds at most max_shard_size dense bytes (a larger tensor alone)
            held = [n for n, v in index["weight_map"].items() if v == s]
            assert len(held) == 1 or sum(model[n].nbytes for n in held) <= max_shard_size
    assert events[-1].done_bytes == events[-1].total_bytes == dense
    assert {e.tensor for e in events if e.tensor} == set(model)
    loaded = dcformat.load_file(out)
    for k, v in model.items():
        assert_same(loaded[k], v)
    back = convert.decompress(out, tmp_path / "back")
    assert back.input_bytes == dense
    with dcformat.open(out) as f:
        names = f.keys()
    got = {}
    for p in sorted((tmp_path / "back").glob("*.safetensors")):
        with sf.SafetensorsReader(p) as r:
            assert r.metadata == {"format": "pt"}
            got.update({k: r.get(k).copy() for k in r.keys()})
    assert set(got) == set(names)
    for k, v in model.items():
        assert_same(got[k], v)
    if shards_in == 1 and max_shard_size is None:  # the same file, byte for byte
        assert (tmp_path / "back" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert (tmp_path / "back" / "sub" / "tokenizer.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_sharded_reader_is_lazy_and_checked(tmp_path):
    model = model_of()
    folder = write_folder(tmp_path, model, extra=False)
    convert.compress(folder, tmp_path / "dcf", max_shard_size=2000)
    with dcformat.open(tmp_path / "dcf" / INDEX_NAME) as f:
        assert isinstance(f, ShardedOpen) and f.keys() == list(json.loads((tmp_path / "dcf" / INDEX_NAME).read_text())["weight_map"])
        f.get_tensor("fc.bias")
        assert len(f._open) == 1  # only the shard that holds it
        assert "fc.bias" in f and len(f) == len(model)
    index = tmp_path / "dcf" / INDEX_NAME
    doc = json.loads(index.read_text())
    doc["weight_map"]["fc.bias"] = "../evil.dcf"
    index.write_text(json.dumps(doc))
    with pytest.raises(ShardIndexError, match="not a file name"):
        dcformat.open(tmp_path / "dcf")
    doc["weight_map"]["fc.bias"] = "missing.dcf"
    index.write_text(json.dumps(doc))
    with pytest.raises(DCFError, match="missing"):
        dcformat.open(tmp_path / "dcf")
    index.write_text("{not json")
    with pytest.raises(ShardIndexError, match="JSON"):
        dcformat.load_file(index)
    with pytest.raises(DCFError, match="no .dcf file"):
        dcformat.open(tmp_path / "in")


def test_refusals_and_overwrite(tmp_path):
    model = model_of()
    src = tmp_path / "m.safetensors"
    sf.save_file(model, src)
    with pytest.raises(SameFileError, match="is the input"):
        convert.compress(src, src, overwrite=True)
    folder = write_folder(tmp_path, model)
    with pytest.raises(SameFileError, match="inside the input folder"):
        convert.compress(folder, folder / "out", overwrite=True)
    with pytest.raises(SameFileError, match="holds the input"):
        convert.compress(folder / "model.safetensors", tmp_path, overwrite=True)
    dst = tmp_path / "m.dcf"
    dst.write_bytes(b"keep")
    with pytest.raises(OutputExistsError, match="already exists"):
        convert.compress(src, dst)
    assert dst.read_bytes() == b"keep"
    convert.compress(src, dst, overwrite=True)
    out = tmp_path / "dir"
    convert.compress(folder, out)
    with pytest.raises(OutputExistsError):
        convert.compress(folder, out)
    convert.compress(folder, out, overwrite=True, policy=Policy(lossless=True))
    with pytest.raises(OutputExistsError):
        convert.decompress(dst, src)
    with pytest.raises(SameFileError):
        convert.decompress(out, out / "x", overwrite=True)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_failed_folder_leaves_nothing(tmp_path, monkeypatch):
    folder = write_folder(tmp_path, model_of())
    calls = []

    def boom(*a, **k):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "_copy_others", boom)
    with pytest.raises(KeyboardInterrupt):
        convert.compress(folder, tmp_path / "out")
    assert calls and sorted(os.listdir(tmp_path)) == ["in"]


def test_decompress_to_every_type(tmp_path):
    model = {k: v for k, v in model_of().items() if k != "emb"}
    dcf = tmp_path / "m.dcf"
    dcformat.save_file(model, dcf, policy=Policy(lossless=True), metadata={"a": "b"})
    convert.decompress(dcf, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as z:
        for k, v in model.items():
            assert_same(z[k], v)
    convert.decompress(dcf, tmp_path / "m.safetensors")
    with sf.SafetensorsReader(tmp_path / "m.safetensors") as r:
        assert r.metadata == {"a": "b"}
    with pytest.raises(DCFError, match="cannot hold bfloat16"):
        dcformat.save_file({"x": np.zeros(2, ml_dtypes.bfloat16)}, tmp_path / "b.dcf")
        convert.decompress(tmp_path / "b.dcf", tmp_path / "b.npz")
    assert not (tmp_path / "b.npz").exists()


def test_npz_inputs(tmp_path):
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(DCFError, match="empty.npz: holds no tensors"):
        convert.compress(tmp_path / "empty.npz", tmp_path / "e.dcf")
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(DCFError, match="obj.npz: Object arrays cannot be loaded"):
        convert.compress(tmp_path / "obj.npz", tmp_path / "o.dcf")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DCFError, match="junk.npz"):
        convert.compress(tmp_path / "junk.npz", tmp_path / "j.dcf")
    np.savez(tmp_path / "ok.npz", w=np.ones((3, 3), np.float32))
    r = convert.compress(tmp_path / "ok.npz", tmp_path / "ok.dcf")
    assert [t["name"] for t in r.tensors] == ["w"]
    with pytest.raises(DCFError, match="unknown input type"):
        convert.compress(tmp_path / "ok.dcf.x", tmp_path / "x.dcf") if (tmp_path / "ok.dcf.x").write_text("") is not None else None


def test_parallel_encoding_same_file(tmp_path):
    rng = np.random.default_rng(5)
    model = {f"w{i}": rng.laplace(0, 0.02, (128, 256)).astype(np.float32) for i in range(8)}
    src = tmp_path / "m.safetensors"
    sf.save_file(model, src)
    one = convert.compress(src, tmp_path / "a.dcf", threads=1)
    two = convert.compress(src, tmp_path / "b.dcf", threads=2)
    assert (tmp_path / "a.dcf").read_bytes() == (tmp_path / "b.dcf").read_bytes()
    assert [t["name"] for t in one.tensors] == [t["name"] for t in two.tensors] == sorted(model)


def test_executor_maps_the_shard_function(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    folder = write_folder(tmp_path, model_of(), extra=False)
    convert.compress(folder, tmp_path / "a", max_shard_size=2000, policy=Policy(step=0.01))
    with ThreadPoolExecutor(2) as ex:
        convert.compress(folder, tmp_path / "b", max_shard_size=2000, policy=Policy(step=0.01), executor=ex)
    for name in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    folder = write_folder(tmp_path, model_of(), extra=False)
    convert.compress(folder, tmp_path / "a", max_shard_size=2000)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        convert.compress(folder, tmp_path / "b", max_shard_size=2000, executor=client.get_executor())
    for name in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_parse_size():
    assert convert.parse_size("5GB") == 5 * 10**9 and convert.parse_size("2GiB") == 2 << 30
    assert convert.parse_size(100) == 100 and convert.parse_size("1.5MB") == 1_500_000
    for bad in ("5 parsecs", 0, -3, True, "GB"):
        with pytest.raises(DCFError):
            convert.parse_size(bad)


def test_memory_stays_flat_as_the_model_grows(tmp_path):
    """Peak memory of compress and decompress follows the largest tensor, not the model: a model four
    times larger (48 tensors of 4 MiB instead of 12) costs about the same."""
    import subprocess
    import sys

    code = ("import resource, sys; from dcformat.interop import convert; import dcformat; "
            "getattr(convert, sys.argv[1])(sys.argv[2], sys.argv[3], **({'policy': dcformat.Policy(step=0.002)} "
            "if sys.argv[1] == 'compress' else {})); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    peaks = {}
    for count in (12, 48):
        rng = np.random.default_rng(0)
        folder = tmp_path / f"m{count}"
        folder.mkdir()
        specs = [sf.Spec(f"w{i}", "float32", (1024, 1024)) for i in range(count)]
        with open(folder / "model.safetensors", "wb") as f:
            sf.write_stream(f, specs, lambda s: rng.normal(0, 0.02, (1024, 1024)).astype(np.float32))
        for cmd, a, b in (("compress", folder, tmp_path / f"c{count}"), ("decompress", tmp_path / f"c{count}", tmp_path / f"d{count}")):
            out = subprocess.run([sys.executable, "-c", code, cmd, str(a), str(b)], capture_output=True, text=True,
                                 check=True)
            peaks[cmd, count] = int(out.stdout.split()[-1])
    for cmd in ("compress", "decompress"):  # the larger model is 151 MB more: holding it would show
        assert peaks[cmd, 48] - peaks[cmd, 12] < 40e6, peaks
