"""Option semantics: contradictions refused with the reason, quality targets that are met or said
not to be, size targets that end in bounded time (and give the lossless file when it fits)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import dcformat
from dcformat import allocation
from dcformat.errors import EncodeError
from dcformat.policy import Policy
from dcformat.progress import ProgressEvent


def _rel_error(decoded: np.ndarray, original: np.ndarray) -> float:
    d = decoded.astype(np.float64) - original.astype(np.float64)
    return float(np.linalg.norm(d) / np.linalg.norm(original.astype(np.float64)))


def _small_model(seed: int = 0) -> dict[str, np.ndarray]:
    """About 2.5 KB of float32: the size of model whose --target-size search once ran for minutes."""
    rng = np.random.default_rng(seed)
    return {"fc.weight": rng.standard_normal((20, 30)).astype(np.float32), "fc.bias": np.zeros(20, np.float32)}


# ------------------------------------------------------------------------------------------------
# Contradictions


@pytest.mark.parametrize("settings, reason", [
    (dict(lossless=True, prune=0.9), "lossless=True .* contradicts prune=0.9"),
    (dict(lossless=True, threshold=0.1), "contradicts threshold"),
    (dict(lossless=True, step=0.01), "contradicts step"),
    (dict(lossless=True, target_size=1000), "contradicts target_size"),
    (dict(lossless=True, max_error=0.01), "contradicts max_error"),
    (dict(lossless=True, vector_bits=4), "contradicts vector_bits"),
    (dict(lossless=True, rules={"fc*": {"bits": 4}}), "contradicts rule 'fc\\*' sets bits"),
    (dict(step=0.01, target_size=1000), "step or a target_size"),
    (dict(target_size=1000, max_error=0.01), "target_size or a max_error"),
    (dict(rules={"fc*": {"bits": 4, "max_error": 0.01}}), "bits or a max_error"),
    (dict(rules={"fc*": {"bitz": 4}}), "unknown setting\\(s\\) \\['bitz'\\] \\(known: prune, threshold, bits"),
    (dict(rules={"fc*": 4}), "must be a mapping"),
])
def test_contradictions_are_refused_with_the_reason(settings, reason):
    with pytest.raises(EncodeError, match=reason):
        Policy(**settings)


def test_lossless_keeps_settings_that_do_not_change_values():
    policy = Policy(lossless=True, huffman="off", rules={"a*": {"raw": True, "layout": "csr"}}, compact_header=False)
    assert policy.plan("w", np.zeros((3, 3), np.float32)).encoding == "raw"


def test_an_unsupported_dtype_names_the_tensor():
    with pytest.raises(EncodeError, match="complex64 is not supported.*tensor 'layer.w'"):
        dcformat.save({"ok": np.zeros(2, np.float32), "layer.w": np.ones((2, 2), np.complex64)})


# ------------------------------------------------------------------------------------------------
# Quality target


def test_max_error_raises_the_width_past_the_default():
    # A 1% target needs more than the default 5-bit fc width: the cap must not hold it back.
    w = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    default = dcformat.load(dcformat.save({"w": w}))["w"]
    assert _rel_error(default, w) > 0.01
    policy = Policy(max_error=0.01)
    assert policy.plan("w", w).bits == 16  # the search may go as far as 16 bits
    out = dcformat.load(dcformat.save({"w": w}, policy=policy))["w"]
    assert _rel_error(out, w) <= 0.01
    levels = len(np.unique(out))
    assert levels > 32
    # the fewest bits: one bit fewer misses the target
    fewer = dcformat.compress({"w": w}, policy=Policy(fc_bits=(levels - 1).bit_length() - 1))["w"]
    assert _rel_error(fewer, w) > 0.01


def test_max_error_under_a_rule_bits_cap_stays_a_cap():
    w = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    policy = Policy(max_error=0.001, rules={"w": {"bits": 6}})
    out = dcformat.compress({"w": w}, policy=policy)["w"]
    assert len(np.unique(out)) <= 64 and _rel_error(out, w) > 0.001  # not met: the CLI says so


# ------------------------------------------------------------------------------------------------
# Size target


@pytest.mark.parametrize("target", [500, 700, 900, 1500, 2000])
def test_fit_size_ends_quickly_on_a_small_model(target):
    tensors = _small_model()
    events: list[ProgressEvent] = []
    start = time.perf_counter()
    policy = allocation.fit_size(tensors, Policy(), target, progress=events.append)
    assert time.perf_counter() - start < 30  # seconds, not minutes (a generous bound for a loaded machine)
    size = len(dcformat.save(tensors, policy=policy))
    assert size <= target
    # bounded: at most the budgets' evaluations, each reported as a search event naming its step
    assert 2 <= len(events) <= 2 + allocation._ESTIMATES + allocation._EXACT
    assert all(e.stage == "search" and e.message and "target" in e.message for e in events)
    assert any("step" in e.message for e in events)


def test_fit_size_at_or_above_the_lossless_size_is_lossless():
    tensors = _small_model()
    lossless = len(dcformat.save(tensors, policy=Policy(lossless=True)))
    assert allocation.file_size(tensors, Policy(lossless=True)) == lossless
    raw = len(dcformat.save(tensors, policy=Policy(lossless=True, huffman="off")))  # huffman off: exact = raw
    for target in (raw, raw + 1, 10**9):
        policy = allocation.fit_size(tensors, Policy(huffman="off"), target)
        assert policy.lossless and policy.step is None and policy.huffman == "off"
        back = dcformat.load(dcformat.save(tensors, policy=policy))
        assert all(np.array_equal(back[k], tensors[k]) for k in tensors)
    assert not allocation.fit_size(tensors, Policy(), lossless - 1).lossless


def test_bisect_log_is_bounded_even_when_nothing_but_top_fits():
    # The old search looped forever when its estimate said the coarsest step did not fit either.
    calls = []

    def never(step: float) -> bool:
        calls.append(step)
        return False

    assert allocation._bisect_log(never, 1e-6, 1.0, 4.0, 1.0005, allocation._Budget(10)) == 1.0
    assert len(calls) <= 10
    calls.clear()
    found = allocation._bisect_log(lambda s: calls.append(s) or s >= 0.3, 1e-3, 1.0, 4.0, 1.001,
                                   allocation._Budget(100))
    assert 0.3 <= found <= 0.3 * 1.001 and len(calls) < 100
