"""The README's examples run as printed (a README that lies is a defect)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import dcformat

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _blocks(after: str) -> list[str]:
    text = open(README, encoding="utf-8").read()
    section = text.split(after, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_pipeline_example_runs_and_stores_the_trained_weights_exactly(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    (code,) = _blocks("## The Deep Compression pipeline")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(code, "README.md (pipeline)", "exec"), namespace)
    model = namespace["model"]
    back = dcformat.load_file(tmp_path / "model.dcf")
    for name, value in model.state_dict().items():
        assert np.array_equal(back[name], value.numpy()), name  # stored exactly as trained
    w = back["0.weight"]
    assert 0.88 <= np.mean(w == 0) <= 0.92  # pruned to 90%
    assert len(np.unique(w[w != 0])) <= 31  # 5-bit codebook, zero apart
    assert os.path.getsize(tmp_path / "model.dcf") < sum(v.numel() * 4 for v in model.state_dict().values()) / 10


def test_the_api_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("scipy")
    code = _blocks("## Python API")[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (API)", "exec"), namespace)
    assert namespace["sp"].layout in ("csr", "csc")
    assert np.array_equal(namespace["loaded"]["fc1.weight"], namespace["expected"]["fc1.weight"])
    assert set(namespace["tensors2"]) == {"fc1.weight", "fc1.bias"}
