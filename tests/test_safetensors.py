"""dcformat's own .safetensors reader and writer, checked against the safetensors package."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcformat.errors import DCFError, LimitError, TruncatedError
from dcformat.interop import safetensors as sf

from .strategies import names, tensors

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
# "__metadata__" is the safetensors header's own key: the package writes a tensor of that name as a second
# "__metadata__" entry, a file with a duplicate key that dcformat's reader (rightly) refuses
TENSOR_NAMES = names.filter(lambda n: n != "__metadata__")
NUMPY_DTYPES = ["float64", "float32", "float16", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                "uint64", "bool"]


@SETTINGS
@given(st.dictionaries(TENSOR_NAMES, tensors(dtypes=NUMPY_DTYPES), max_size=5),
       st.none() | st.dictionaries(names, names, max_size=3))
def test_writer_bytes_equal_the_package(model, metadata):
    from safetensors.numpy import load, save

    ours = sf.save_bytes(model, metadata)
    if not model and metadata is not None:  # the package writes invalid JSON here ('{},"__metadata__":{}}')
        assert json.loads(ours[8:]) == {"__metadata__": metadata}
        return
    theirs = save(model, metadata=metadata)
    if len(metadata or {}) <= 1:  # the package orders metadata keys at random (a hash map)
        assert ours == theirs
    else:
        assert len(ours) == len(theirs)
        n = struct.unpack("<Q", ours[:8])[0]
        assert json.loads(ours[8:8 + n]) == json.loads(theirs[8:8 + n]) and ours[8 + n:] == theirs[8 + n:]
    back = load(ours)
    for k, a in model.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape and back[k].tobytes() == a.tobytes()


@SETTINGS
@given(st.dictionaries(TENSOR_NAMES, tensors(dtypes=NUMPY_DTYPES), max_size=5))
def test_reader_reads_package_files(tmp_path_factory, model):
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    save_file(model, str(path), metadata={"format": "np"})
    with sf.SafetensorsReader(path) as r:
        assert sorted(r.keys()) == sorted(model) and r.metadata == {"format": "np"}
        for k, a in model.items():
            got = r.get(k)
            assert got.dtype == a.dtype and got.shape == a.shape and got.tobytes() == a.tobytes()


def test_bf16_and_float8_without_torch_match_the_package(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    t = {"bf": torch.randn(3, 5).to(torch.bfloat16), "e4": torch.randn(7).to(torch.float8_e4m3fn),
         "e5": torch.randn(2, 2).to(torch.float8_e5m2), "h": torch.randn(4).half()}
    path = tmp_path / "t.safetensors"
    save_file(t, str(path), metadata={"format": "pt"})
    with sf.SafetensorsReader(path) as r:
        arrays = {k: r.get(k) for k in r.keys()}
        assert arrays["bf"].dtype == ml_dtypes.bfloat16
        assert arrays["e4"].dtype == ml_dtypes.float8_e4m3fn and arrays["e5"].dtype == ml_dtypes.float8_e5m2
        for k, v in t.items():
            bits = {1: torch.uint8, 2: torch.int16}[v.element_size()]
            assert arrays[k].tobytes() == v.view(bits).numpy().tobytes()
        assert sf.save_bytes(arrays, {"format": "pt"}) == path.read_bytes()


def _file(tmp_path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


@pytest.mark.parametrize("header, data, length, error, match", [
    (b"", b"", None, sf.SafetensorsError, "does not start"),
    (b"{", b"", None, sf.SafetensorsError, "not valid JSON"),
    (b"[]", b"", None, sf.SafetensorsError, "does not start"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, TruncatedError, "need 8 bytes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, None, sf.SafetensorsError, "needs 8 bytes"),
    ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, None, sf.SafetensorsError, "not supported"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", None, sf.SafetensorsError, "shape"),
    ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}, "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}},
     b"\0" * 3, None, sf.SafetensorsError, "overlaps"),
    ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, b"\0" * 4, None, sf.SafetensorsError, "hole"),
    ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 5, None, sf.SafetensorsError, "belong to none"),
    ({"a": {"dtype": "U8", "shape": [2]}}, b"\0" * 2, None, sf.SafetensorsError, "expected dtype"),
    ({"__metadata__": {"k": 1}}, b"", None, sf.SafetensorsError, "__metadata__"),
    ({}, b"", 10**12, LimitError, "larger than the limit"),
    ({}, b"", 1000, TruncatedError, "header says"),
])
def test_hostile_headers_name_the_file(tmp_path, header, data, length, error, match):
    path = _file(tmp_path, header, data, length)
    with pytest.raises(error, match=match) as e:
        sf.SafetensorsReader(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, DCFError)


def test_duplicate_names_and_short_files(tmp_path):
    path = _file(tmp_path, b'{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}')
    with pytest.raises(sf.SafetensorsError, match="twice"):
        sf.SafetensorsReader(path)
    path.write_bytes(b"\1\2")
    with pytest.raises(TruncatedError, match="shorter than"):
        sf.SafetensorsReader(path)


def test_release_keeps_the_data_readable(tmp_path):
    a = np.arange(300_000, dtype=np.float32)
    path = tmp_path / "m.safetensors"
    sf.save_file({"a": a, "b": a[:10]}, path)
    with sf.SafetensorsReader(path) as r:
        first = r.get("a").copy()
        r.release("a")
        assert np.array_equal(r.get("a"), first) and np.array_equal(r.get("b"), a[:10])


def test_writer_refuses_unknown_dtypes_and_wrong_sizes(tmp_path):
    with pytest.raises(DCFError, match="no dtype for complex64"):
        sf.save_bytes({"c": np.zeros(2, np.complex64)})
    import io

    with pytest.raises(DCFError, match="its spec says"):
        sf.write_stream(io.BytesIO(), [sf.Spec("a", "float32", (4,))], lambda s: np.zeros(3, np.float32))
