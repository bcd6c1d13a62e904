"""torch and transformers: checkpoints read as torch reads them, modules filled in place, a transformers
model from a compressed folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dcformat
from dcformat import Policy
from dcformat.errors import DCFError
from dcformat.interop import convert
from dcformat.interop import torch as dtorch

torch = pytest.importorskip("torch")


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4),
                               torch.nn.BatchNorm1d(4))


def test_nested_checkpoint_finds_the_state_dict_and_reports_the_rest(tmp_path):
    net = small_net()
    path = tmp_path / "ck.pt"
    torch.save({"model": net.state_dict(), "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    report = convert.compress(path, tmp_path / "ck.dcf", policy=Policy(lossless=True))
    assert report.checkpoint_key == "model"
    assert set(report.dropped) == {"epoch", "optimizer"}
    got = dcformat.load_file(tmp_path / "ck.dcf")
    assert set(got) == set(net.state_dict())
    for k, v in net.state_dict().items():
        assert got[k].tobytes() == v.numpy().tobytes()


def test_bare_state_dict_with_non_tensors(tmp_path):
    sd = dict(small_net().state_dict())
    sd["note"] = "hello"
    torch.save(sd, tmp_path / "sd.pth")
    report = convert.compress(tmp_path / "sd.pth", tmp_path / "sd.dcf")
    assert report.checkpoint_key is None and list(report.dropped) == ["note"]


def test_pickled_module_and_empty_checkpoints_are_refused(tmp_path):
    torch.save(small_net(), tmp_path / "whole.pt")
    with pytest.raises(DCFError, match="whole.pt: holds a pickled .*Sequential object, not a state dict"):
        convert.compress(tmp_path / "whole.pt", tmp_path / "w.dcf")
    torch.save({"epoch": 3}, tmp_path / "none.pt")
    with pytest.raises(DCFError, match="none.pt: no tensors found"):
        convert.compress(tmp_path / "none.pt", tmp_path / "n.dcf")
    (tmp_path / "junk.bin").write_bytes(b"garbage")
    with pytest.raises(DCFError, match="junk.bin: not a readable torch file"):
        convert.compress(tmp_path / "junk.bin", tmp_path / "j.dcf")
    assert not (tmp_path / "w.dcf").exists() and not (tmp_path / "n.dcf").exists()


def test_save_torch_takes_a_module_and_load_torch_a_device(tmp_path):
    net = small_net()
    net[0].weight.data = net[0].weight.data.to(torch.bfloat16)
    dtorch.save_torch(net, tmp_path / "n.dcf", policy=Policy(lossless=True))
    got = dtorch.load_torch(tmp_path / "n.dcf", device="cpu")
    for k, v in net.state_dict().items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v)
    got = dtorch.load_torch(tmp_path / "n.dcf", map_location=torch.device("cpu"))
    assert got["0.weight"].device.type == "cpu"


def test_load_into_fills_a_module_in_place(tmp_path):
    net = small_net()
    dtorch.save_torch(net, tmp_path / "n.dcf", policy=Policy(lossless=True))
    other = small_net()
    torch.manual_seed(1)
    for p in other.parameters():
        p.data.normal_()
    ptr = other[0].weight.data_ptr()
    result = dtorch.load_into(other, tmp_path / "n.dcf")
    assert other[0].weight.data_ptr() == ptr  # filled in place, not replaced
    assert sorted(result.loaded) == sorted(net.state_dict())
    for (k, a), b in zip(net.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    half = small_net().half()  # another dtype: through a temporary and copy_
    dtorch.load_into(half, tmp_path / "n.dcf")
    assert torch.equal(half[0].weight, net[0].weight.half())
    bigger = torch.nn.Sequential(torch.nn.Linear(16, 33))
    with pytest.raises(DCFError, match="names differ"):
        dtorch.load_into(bigger, tmp_path / "n.dcf")


def test_decompress_to_pt(tmp_path):
    net = small_net()
    dtorch.save_torch(net, tmp_path / "n.dcf", policy=Policy(lossless=True))
    convert.decompress(tmp_path / "n.dcf", tmp_path / "n.pt")
    sd = torch.load(tmp_path / "n.pt", weights_only=True)
    for k, v in net.state_dict().items():
        assert torch.equal(sd[k], v)


def test_transformers_model_from_a_compressed_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    from dcformat.interop.transformers import from_pretrained

    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=48, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    model.save_pretrained(tmp_path / "hf")
    convert.compress(tmp_path / "hf", tmp_path / "dcf", policy=Policy(lossless=True), max_shard_size=20_000)
    assert json.loads((tmp_path / "dcf" / "model.dcf.index.json").read_text())["weight_map"]
    loaded = from_pretrained(tmp_path / "dcf")
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, loaded(input_ids=ids).last_hidden_state)
    convert.decompress(tmp_path / "dcf", tmp_path / "back")
    again = transformers.AutoModel.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, again(input_ids=ids).last_hidden_state)
    lossy = tmp_path / "lossy"
    convert.compress(tmp_path / "hf", lossy, policy=Policy(bits=8))
    approx = from_pretrained(lossy)
    with torch.no_grad():
        a, b = model(input_ids=ids).last_hidden_state, approx(input_ids=ids).last_hidden_state
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
