"""Policy(quantizer=, init=, lam=) reaches dcformat.quantize.quantize through the codec and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dcformat
from dcformat import Policy
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


def _rel_error(decoded, original):
    d = decoded.astype(np.float64) - original.astype(np.float64)
    return float(np.linalg.norm(d) / np.linalg.norm(original.astype(np.float64)))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.005, 0.02, 0.05, 0.2]), st.sampled_from([0.0, 0.5]))
def test_max_error_picks_the_fewest_bits_that_meet_it(seed, target, prune):
    rng = np.random.default_rng(seed)
    w = rng.laplace(0, 0.1, (40, 30)).astype(np.float32)
    policy = Policy(fc_bits=8, max_error=target, prune=prune)
    out = dcformat.load(dcformat.save({"w": w}, policy=policy))["w"]
    assert_same_as_compress = dcformat.compress({"w": w}, policy=policy)["w"]
    assert np.array_equal(out, assert_same_as_compress)
    error = _rel_error(out, w)
    levels = len(np.unique(out))
    if error <= target:
        # one bit fewer would not have met the target (or we are at 1 bit already)
        fewer = levels.bit_length() - 1
        if fewer >= 1 and 2 ** fewer < levels:
            coarser = dcformat.compress({"w": w}, policy=Policy(fc_bits=fewer, prune=prune))["w"]
            assert _rel_error(coarser, w) > target
    else:
        assert levels > 2**7  # not met even at the maximum width: the maximum width is used


def test_max_error_flag_and_validation(tmp_path):
    from dcformat.cli import main

    rng = np.random.default_rng(1)
    np.savez(tmp_path / "m.npz", w=rng.standard_normal((64, 64)).astype(np.float32))
    for target, path in ((0.3, "loose.dcf"), (0.01, "tight.dcf")):
        assert main(["compress", str(tmp_path / "m.npz"), "-o", str(tmp_path / path), "--max-error", str(target)]) == 0
    assert (tmp_path / "loose.dcf").stat().st_size < (tmp_path / "tight.dcf").stat().st_size
    w = dcformat.load_file(tmp_path / "loose.dcf")["w"]
    assert _rel_error(w, np.load(tmp_path / "m.npz")["w"]) <= 0.3
    with pytest.raises(dcformat.EncodeError, match="max_error"):
        Policy(max_error=-1.0)
    with pytest.raises(dcformat.EncodeError, match="max_error"):
        Policy(rules={"x": {"max_error": "big"}})
