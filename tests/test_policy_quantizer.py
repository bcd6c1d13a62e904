"""Policy(quantizer=, init=, lam=) reaches dcformat.quantize.quantize through the codec and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

import dcformat
from dcformat.errors import EncodeError
from dcformat.quantize import quantize


@pytest.mark.parametrize("quantizer", ["kmeans", "optimal", "ecsq"])
@pytest.mark.parametrize("prune", [0.0, 0.8])
def test_policy_quantizer_decodes_to_quantize(quantizer, prune):
    w = np.random.default_rng(0).laplace(size=(60, 40)).astype(np.float32)
    policy = dcformat.Policy(bits=4, prune=prune, quantizer=quantizer, init="kmeans++", lam=0.01)
    decoded = dcformat.load(dcformat.save({"w": w}, policy=policy))["w"]
    x = dcformat.compress({"w": w}, policy=dcformat.Policy(prune=prune, bits=0))["w"] if prune else w
    codebook, indices = quantize(x, 4, sparse=bool(prune), method=quantizer, init="kmeans++", lam=0.01)
    assert decoded.tobytes() == codebook[indices].reshape(w.shape).tobytes()


def test_policy_quantizer_per_rule_and_errors():
    w = np.random.default_rng(1).standard_normal((50, 30)).astype(np.float32)
    policy = dcformat.Policy(bits=3, rules={"a": {"quantizer": "optimal"}})
    assert policy.plan("a", w).quantizer == "optimal" and policy.plan("b", w).quantizer == "kmeans"
    for bad in ({"quantizer": "fast"}, {"init": "forgy"}, {"lam": -1.0}, {"lam": True},
                {"rules": {"a": {"quantizer": "fast"}}}):
        with pytest.raises(EncodeError):
            dcformat.Policy(**bad)


def test_cli_quantizer(tmp_path):
    from dcformat.cli import main

    w = np.random.default_rng(2).standard_normal((40, 30)).astype(np.float32)
    np.savez(tmp_path / "m.npz", w=w)
    assert main(["compress", str(tmp_path / "m.npz"), "-o", str(tmp_path / "m.dcf"), "--bits", "4",
                 "--quantizer", "ecsq", "--lam", "0.01"]) == 0
    decoded = dcformat.load_file(tmp_path / "m.dcf")["w"]
    codebook, indices = quantize(w, 4, sparse=False, method="ecsq", lam=0.01)
    assert decoded.tobytes() == codebook[indices].reshape(w.shape).tobytes()
