"""The command line: compress, decompress, inspect, verify, demo; --json; exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dcformat
from dcformat.cli import main

from .filetools import poke, split


@pytest.fixture()
def model_npz(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "m.npz"
    np.savez(path, **{"conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
                      "fc.weight": rng.laplace(0, 0.1, (50, 40)).astype(np.float32),
                      "fc.bias": rng.standard_normal(50).astype(np.float32),
                      "steps": np.array(7, np.int64)})
    return path


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compress_inspect_verify_decompress(model_npz, tmp_path, capsys):
    out = tmp_path / "m.dcf"
    code, text, _ = run(["compress", model_npz, "-o", out, "--prune", "0.8", "--fc-bits", "4", "--conv-bits", "6",
                         "--index-bits", "4", "--metadata", "arch=toy", "--json"], capsys)
    assert code == 0
    summary = json.loads(text)
    assert summary["summary"]["file_bytes"] == os.path.getsize(out)
    rows = {r["name"]: r for r in summary["tensors"]}
    assert rows["fc.weight"]["encoding"] == "sparse" and rows["fc.weight"]["weight_bits"] <= 4
    assert rows["fc.weight"]["index_bits"] == 4
    assert abs(rows["fc.weight"]["kept"] - 0.2) < 1e-9
    assert rows["conv.weight"]["weight_bits"] <= 6
    assert rows["fc.bias"]["encoding"] == "raw" and rows["steps"]["encoding"] == "raw"

    code, text, _ = run(["inspect", out], capsys)
    assert code == 0
    assert "fc.weight" in text and "sparse" in text and "total (file)" in text and "arch: toy" in text

    code, text, _ = run(["inspect", out, "--json"], capsys)
    report = json.loads(text)
    assert report["metadata"] == {"arch": "toy"}
    assert report["totals"]["file_bytes"] == os.path.getsize(out)
    assert report["totals"]["weights"] == 8 * 27 + 2000 + 50 + 1

    code, text, _ = run(["verify", out], capsys)
    assert code == 0 and "OK (4 tensors decoded" in text

    for ext in (".npz", ".safetensors"):
        dec = tmp_path / f"d{ext}"
        code, _, _ = run(["decompress", out, "-o", dec], capsys)
        assert code == 0
        back = dcformat.read_tensors(dec)
        expected = dcformat.load_file(out)
        assert set(back) == set(expected)
        for k in expected:
            assert back[k].dtype == expected[k].dtype and back[k].shape == expected[k].shape
            assert np.array_equal(back[k], expected[k])


def test_verify_reports_every_problem(model_npz, tmp_path, capsys):
    out = tmp_path / "m.dcf"
    assert run(["compress", model_npz, "-o", out, "--lossless"], capsys)[0] == 0
    data = out.read_bytes()
    doc, _ = split(data)
    bad = data
    for t in doc["tensors"][:2]:
        bad = poke(bad, t["data"]["offset"], bytes([bad[t["data"]["offset"]] ^ 1]))
    out.write_bytes(bad)
    code, text, _ = run(["verify", out, "--json"], capsys)
    result = json.loads(text)
    assert code == 1 and not result["ok"]
    assert [p["error"] for p in result["problems"]].count("ChecksumError") >= 2
    assert {p["tensor"] for p in result["problems"]} == {doc["tensors"][0]["name"], doc["tensors"][1]["name"]}


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    junk = tmp_path / "junk.dcf"
    junk.write_bytes(b"not a model at all, just text" * 3)
    code, _, err = run(["inspect", junk], capsys)
    assert code == 2 and "FormatError" in err and "bad magic" in err
    code, _, err = run(["verify", junk], capsys)
    assert code == 1
    code, _, err = run(["compress", tmp_path / "missing.npz", "-o", tmp_path / "x.dcf"], capsys)
    assert code == 2 and "missing.npz" in err


def test_rule_flag(model_npz, tmp_path, capsys):
    out = tmp_path / "m.dcf"
    code, text, _ = run(["compress", model_npz, "-o", out, "--rule", "fc.*:bits=2,prune=0.5", "--raw", "conv*", "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(text)["tensors"]}
    assert rows["conv.weight"]["encoding"] == "raw"
    assert rows["fc.weight"]["weight_bits"] <= 2
    w = dcformat.load_file(out)["fc.weight"]
    assert np.count_nonzero(w == 0) >= 1000 and len(np.unique(w)) <= 4


def test_demo_runs(tmp_path, capsys):
    out = tmp_path / "demo.dcf"
    code, text, _ = run(["demo", "-o", out], capsys)
    assert code == 0
    assert "fc1.weight" in text and "largest reconstruction error" in text and "test accuracy" in text
    assert os.path.getsize(out) < 202_440 / 10  # the bundled model compresses more than 10x


def test_help_and_inspect_do_not_import_numba(model_npz, tmp_path):
    out = tmp_path / "m.dcf"
    dcformat.save_file(dict(np.load(model_npz)), out)
    code = ("import sys; from dcformat.cli import main\n"
            f"main(['inspect', {str(out)!r}, '--json'])\n"
            "assert 'numba' not in sys.modules, 'numba imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    for command in ([], ["compress"], ["decompress"], ["inspect"], ["verify"], ["demo"]):
        proc = subprocess.run([sys.executable, "-m", "dcformat.cli", *command, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: dcformat" in proc.stdout


def test_safetensors_and_pt_inputs_with_bfloat16(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as st_save

    sd = {"w": torch.randn(30, 20).to(torch.bfloat16), "b": torch.randn(30), "file": torch.arange(4)}
    st_path, pt_path = tmp_path / "m.safetensors", tmp_path / "m.pt"
    st_save(sd, str(st_path))
    torch.save(sd, pt_path)
    for src in (st_path, pt_path):
        out = tmp_path / (src.stem + src.suffix[1:] + ".dcf")
        assert run(["compress", src, "-o", out, "--lossless"], capsys)[0] == 0
        back = dcformat.load_torch(out)
        for k, v in sd.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    # decompress: bfloat16 to .safetensors works, to .npz is refused with a clear error
    dec = tmp_path / "d.safetensors"
    assert run(["decompress", out, "-o", dec], capsys)[0] == 0
    w = dcformat.read_tensors(dec)["w"]
    assert w.dtype.name == "bfloat16"
    assert torch.equal(torch.from_numpy(w.view(np.int16)).view(torch.bfloat16), sd["w"])
    code, _, err = run(["decompress", out, "-o", tmp_path / "d.npz"], capsys)
    assert code == 2 and "cannot hold bfloat16" in err and not (tmp_path / "d.npz").exists()


def test_npz_output_takes_any_tensor_name(tmp_path):
    tensors = {"file": np.arange(3), "allow_pickle": np.ones(2, np.float16), "a/b": np.zeros((2, 2))}
    dcformat.write_tensors(tensors, tmp_path / "x.npz")
    back = dcformat.read_tensors(tmp_path / "x.npz")
    assert set(back) == set(tensors)
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype and np.array_equal(back[k], tensors[k])


def test_inspect_and_verify_escape_control_characters(tmp_path, capsys):
    out = tmp_path / "m.dcf"
    dcformat.save_file({"evil\x1b[2J\nname": np.zeros(3, np.float32)}, out, metadata={"k\x1b]0;x\x07": "v\r\n"})
    code, text, _ = run(["inspect", out], capsys)
    assert code == 0
    assert "\x1b" not in text and "\\x1b[2J\\nname" in text and "v\\r\\n" in text


def test_verify_reports_a_checksum_once(model_npz, tmp_path, capsys):
    out = tmp_path / "m.dcf"
    assert run(["compress", model_npz, "-o", out, "--lossless"], capsys)[0] == 0
    data = out.read_bytes()
    doc, _ = split(data)
    t = doc["tensors"][0]
    out.write_bytes(poke(data, t["data"]["offset"], bytes([data[t["data"]["offset"]] ^ 1])))
    code, text, _ = run(["verify", out, "--json"], capsys)
    result = json.loads(text)
    assert code == 1 and [p["error"] for p in result["problems"]] == ["ChecksumError"]
    assert result["tensors"] == len(doc["tensors"]) - 1
