"""dcformat.fit and compress --min-similarity: the target met on held-out data, and the file decodes to it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dcformat
from dcformat import fit as F
from dcformat.errors import DCFError, EncodeError

WORDS = ("the a cat dog sat ran on in park mat house tree river city code python list value error loop "
         "function class module number string file open read write data model layer weight output input").split()


def _vocab() -> list[str]:
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 14)))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random BERT saved as a transformers folder (config.json, model.safetensors, vocab.txt)."""
    pytest.importorskip("transformers")
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=len(_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "vocab.txt").write_text("\n".join(_vocab()) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    (folder / "calibration.txt").write_text("\n\n".join(_texts(80, 1)) + "\n")
    return folder


def _batches(folder, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return [dict(tok(texts[i:i + 8], padding=True, return_tensors="pt")) for i in range(0, len(texts), 8)]


# ---------------------------------------------------------------------------------------------
# GPTQ rounding onto the uniform grid


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 9), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.0, 1e-6, 0.02, 1.0, 300.0]), step=st.sampled_from([1e-3, 0.01, 0.5]))
def test_gptq_round_trip_through_the_file(tmp_path_factory, rows, cols, seed, scale, step):
    """GPTQ's values lie on the step's grid, so the file stores and decodes exactly them (awkward scales too)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    x = rng.standard_normal((20, cols)) @ rng.standard_normal((cols, cols))
    q = F.gptq_round(w, x.T @ x, step)
    assert q.dtype == np.float32 and q.shape == w.shape
    levels = q.astype(np.float64) / step
    if np.abs(levels).max(initial=0) < 2**15:
        assert np.allclose(levels, np.round(levels), atol=1e-6)
        back = dcformat.load(dcformat.save({"w": q}, policy=dcformat.Policy(step=step)))["w"]
        assert np.array_equal(back, q)


def test_gptq_round_lowers_output_error_and_equals_rounding_without_correlation():
    """With a diagonal Hessian GPTQ is round-to-nearest; with correlated inputs its output error is smaller."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 48)).astype(np.float32)
    step = 0.5
    rtn = (np.floor(w / step + 0.5) * step).astype(np.float32)
    assert np.array_equal(F.gptq_round(w, np.eye(48), step, damp=0.0), rtn)
    x = rng.standard_normal((500, 48)) @ rng.standard_normal((48, 48))
    q = F.gptq_round(w, x.T @ x, step)
    assert np.linalg.norm((w - q) @ x.T) < 0.8 * np.linalg.norm((w - rtn) @ x.T)


def test_gptq_round_refuses_bad_shapes_and_values():
    with pytest.raises(EncodeError, match="Hessian of shape"):
        F.gptq_round(np.zeros((3, 4), np.float32), np.eye(3), 0.1)
    with pytest.raises(EncodeError, match="finite"):
        F.gptq_round(np.zeros((3, 4), np.float32), np.eye(4), float("nan"))
    with pytest.raises(EncodeError, match="finite"):
        F.gptq_round(np.full((3, 4), np.inf, np.float32), np.eye(4), 0.1)


# ---------------------------------------------------------------------------------------------
# The framework-free search


def _toy(seed: int = 0):
    rng = np.random.default_rng(seed)
    tensors = {"a.weight": rng.standard_normal((64, 32)).astype(np.float32),
               "b.weight": (0.1 * rng.standard_normal((32, 32))).astype(np.float32),
               "b.bias": rng.standard_normal(32).astype(np.float32)}
    weight = {"a.weight": 1e-4, "b.weight": 1e-1}

    def similarity(t):
        return 1.0 - sum(w * float(np.sum((t[n].astype(np.float64) - tensors[n]) ** 2)) for n, w in weight.items())

    return tensors, similarity


@pytest.mark.parametrize("method", F.METHODS)
def test_fit_tensors_meets_the_target_and_the_file_decodes_to_what_was_measured(method):
    tensors, similarity = _toy()
    hessians = {"a.weight": np.eye(32), "b.weight": np.eye(32)}
    result = F.fit_tensors(tensors, similarity, 0.95, held_out=similarity, method=method, hessians=hessians,
                           data="toy")
    assert result.similarity >= 0.95 and result.held_out >= 0.95
    data = dcformat.save(result.tensors, policy=result.policy, metadata=result.metadata)
    assert len(data) == result.size < sum(v.nbytes for v in tensors.values())
    back = dcformat.load(data)
    assert similarity(back) == pytest.approx(result.similarity, abs=1e-12)
    assert np.array_equal(back["b.bias"], tensors["b.bias"])
    with dcformat.open(data) as f:
        record = json.loads(f.metadata["dcformat.fit"])
    assert record["method"] == method and record["data"] == "toy" and record["min_similarity"] == 0.95
    assert record["held_out_similarity"] >= 0.95


def test_row_multipliers_give_frequent_rows_finer_steps_in_quarter_octaves():
    counts = np.array([0, 0, 0, 1, 10, 100, 10**6, 0], np.int64)
    m = F.row_multipliers(counts)
    assert m.shape == counts.shape and np.all(np.diff(m[3:7]) < 0)  # more look-ups, finer step
    assert m[0] == m[1] == m[2] == m[7] > 1.0 > m[5]  # unseen rows coarser than the tensor step
    assert m.min() >= 1 / F.ROW_SPREAD and m.max() <= F.ROW_SPREAD and m[6] == 1 / F.ROW_SPREAD
    octaves = np.log2(m) * F.ROW_RESOLUTION
    assert np.allclose(octaves, np.round(octaves), rtol=0, atol=1e-9)
    assert np.array_equal(F.row_multipliers(np.full(5, 7)), np.ones(5))  # equal weights: the tensor's own step
    for bad in (np.array([1.0, -1.0]), np.array([np.nan]), np.zeros(0)):
        with pytest.raises(EncodeError, match="row weights"):
            F.row_multipliers(bad)


def test_fisher_file_decodes_to_what_the_search_measured_and_weights_rows():
    rng = np.random.default_rng(4)
    emb = rng.standard_normal((300, 16)).astype(np.float32)
    counts = np.zeros(300, np.int64)
    counts[:20] = rng.integers(50, 500, 20)  # 20 tokens used, 280 never
    tensors = {"emb.weight": emb, "lin.weight": rng.standard_normal((16, 16)).astype(np.float32)}

    def similarity(t):  # only the used rows and the linear matter
        err = np.sum(counts[:, None] * (t["emb.weight"].astype(np.float64) - emb) ** 2) / counts.sum()
        return 1.0 - 1e-3 * err - 1e-3 * float(np.sum((t["lin.weight"] - tensors["lin.weight"]) ** 2))

    result = F.fit_tensors(tensors, similarity, 0.999, method="fisher", row_weights={"emb.weight": counts},
                           hessians={"lin.weight": np.eye(16)})
    assert set(result.policy.row_scales) == {"emb.weight"}
    data = dcformat.save(result.tensors, policy=result.policy, metadata=result.metadata)
    back = dcformat.load(data)
    assert len(data) == result.size and similarity(back) == pytest.approx(result.similarity, abs=1e-12)
    err = np.abs(back["emb.weight"] - emb).max(axis=1)
    assert err[:20].max() < err[20:].max()  # used rows finer
    plain = F.fit_tensors(tensors, similarity, 0.999, method="gptq", hessians={"lin.weight": np.eye(16)})
    assert result.size < plain.size  # the same target for fewer bytes
    fam = F.family(tensors, similarity, "fisher", row_weights={"emb.weight": counts})
    for theta in (fam.start(0.999), fam.start(0.99)):
        decoded = fam.decoded(theta)
        again = dcformat.load(dcformat.save(fam.tensors(theta), policy=fam.policy(theta)))
        assert all(np.array_equal(decoded[n].view(np.uint32), again[n].view(np.uint32)) for n in tensors)


def test_gptq_act_order_is_the_same_rounding_for_permuted_columns():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 12)).astype(np.float32)
    x = rng.standard_normal((200, 12)) * rng.uniform(0.1, 3.0, 12)
    h = x.T @ x
    perm = rng.permutation(12)
    q = F.gptq_round(w, h, 0.3)
    assert np.array_equal(F.gptq_round(w[:, perm], h[np.ix_(perm, perm)], 0.3), q[:, perm])
    assert not np.array_equal(F.gptq_round(w, h, 0.3, act_order=False), q)
    assert np.allclose(q / 0.3, np.round(q / 0.3), atol=1e-4)


def test_rd_gives_the_more_sensitive_tensor_the_finer_step():
    tensors, similarity = _toy()
    fam = F.family(tensors, similarity, "rd")
    theta = fam.start(0.95)
    steps = fam.steps(theta)
    assert steps["b.weight"] / fam.rms["b.weight"] < steps["a.weight"] / fam.rms["a.weight"]
    assert fam.estimated_bytes(theta * 4) >= fam.estimated_bytes(theta) >= fam.estimated_bytes(theta / 4)


def test_fit_tensors_refuses_bad_targets_methods_and_unreachable_ones():
    tensors, similarity = _toy()
    for bad in (1.0, 2.0, -3.0, True, "0.9"):
        with pytest.raises(EncodeError, match="min_similarity"):
            F.fit_tensors(tensors, similarity, bad)
    with pytest.raises(EncodeError, match="method"):
        F.fit_tensors(tensors, similarity, 0.9, method="magic")
    with pytest.raises(EncodeError, match="nothing to fit"):
        F.fit_tensors({"v": np.zeros(4, np.float32)}, lambda t: 1.0, 0.9)
    with pytest.raises(EncodeError, match="not reached"):
        F.fit_tensors(tensors, lambda t: 0.5, 0.9, method="uniform")
    with pytest.raises(EncodeError, match="held-out"):
        F.fit_tensors(tensors, similarity, 0.95, held_out=lambda t: 0.0, method="uniform")


# ---------------------------------------------------------------------------------------------
# Calibration text


def test_calibration_texts_default_offline_and_split_disjoint():
    from dcformat.interop.transformers_fit import calibration_texts, split_texts

    texts = calibration_texts()
    assert len(texts) > 500 and all(40 <= len(t) <= 1280 for t in texts)
    search, held = split_texts(texts, 10, 7)
    assert len(search) == 10 and len(held) == 7 and not set(search) & set(held)


def test_calibration_texts_refuse_binary_and_empty(tmp_path):
    from dcformat.interop.transformers_fit import calibration_texts

    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00garbage" * 10)
    with pytest.raises(DCFError, match="UTF-8"):
        calibration_texts(tmp_path / "bin")
    (tmp_path / "short").write_text("too short\n\nalso short")
    with pytest.raises(DCFError, match="at least two prose passages"):
        calibration_texts(tmp_path / "short")


# ---------------------------------------------------------------------------------------------
# Torch models and the command line


@pytest.mark.parametrize("method", ["rd", "gptq", "fisher"])
def test_fit_torch_model_meets_target_on_held_out_inputs(tiny_folder, method):
    from transformers import AutoModel

    from dcformat.interop.transformers_fit import OutputSimilarity

    model = AutoModel.from_pretrained(str(tiny_folder)).eval()
    search, held = _batches(tiny_folder, _texts(32, 2)), _batches(tiny_folder, _texts(32, 3))
    before = {n: t.clone() for n, t in model.state_dict().items()}
    result = dcformat.fit(model, search, min_similarity=0.995, held_out=held, method=method, kind="hidden-state")
    assert all(np.array_equal(before[n].numpy(), t.numpy()) for n, t in model.state_dict().items())  # untouched
    assert result.held_out >= 0.995
    back = dcformat.load(dcformat.save(result.tensors, policy=result.policy, metadata=result.metadata))
    assert OutputSimilarity(model, held, "hidden-state")(back) == pytest.approx(result.held_out, abs=1e-9)
    assert result.size < sum(v.nbytes for v in result.tensors.values())


def test_cli_min_similarity_writes_a_file_that_meets_the_target(tiny_folder, tmp_path, capsys):
    from dcformat.cli import main

    out = tmp_path / "tiny.dcf"
    code = main(["compress", str(tiny_folder), "-o", str(out), "--min-similarity", "0.99",
                 "--calibration", str(tiny_folder / "calibration.txt"), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["held_out_similarity"] >= 0.99 and summary["ratio"] > 1.5
    assert summary["similarity_kind"] == "hidden-state" and summary["file_bytes"] == os.path.getsize(out)
    with dcformat.open(out) as f:
        record = json.loads(f.metadata["dcformat.fit"])
        names = set(f.keys())
    assert record["method"] == "fisher" and "calibration.txt" in record["data"]
    assert "token counts of embeddings.word_embeddings.weight" in record["data"]
    with dcformat.open(out) as f:  # the token embeddings got a step per row: per-row scales on disk
        assert f.layout("embeddings.word_embeddings.weight").scale_bits >= 1
    assert names == set(dcformat.read_tensors(str(tiny_folder / "model.safetensors")))
    # the .safetensors file beside config.json is taken as its folder
    code = main(["compress", str(tiny_folder / "model.safetensors"), "-o", str(out), "-f", "-q",
                 "--min-similarity", "0.9", "--calibration", str(tiny_folder / "calibration.txt"),
                 "--method", "uniform"])
    assert code == 0
    # --coder, --huffman and --json-header reach the search's policy (and so the file)
    from dcformat.interop import transformers_fit as tf

    seen = []
    original = tf.fit_folder

    def spy(*args, **kwargs):
        seen.append(kwargs["policy"])
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tf, "fit_folder", spy)
        code = main(["compress", str(tiny_folder), "-o", str(out), "-f", "-q", "--min-similarity", "0.9",
                     "--calibration", str(tiny_folder / "calibration.txt"), "--method", "uniform",
                     "--coder", "huffman", "--json-header"])
    assert code == 0 and seen[0].coder == "huffman" and seen[0].compact_header is False
    header = dcformat.read_header(out)
    assert header.header_coding == "json" and header.version <= (1, 3)


def test_cli_min_similarity_refusals(tiny_folder, tmp_path, capsys, monkeypatch):
    from dcformat.cli import main

    out = str(tmp_path / "x.dcf")
    assert main(["compress", str(tiny_folder), "-o", out, "--min-similarity", "0.99", "--step", "0.01"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert main(["compress", str(tiny_folder), "-o", out, "--min-similarity", "1.5"]) == 2
    capsys.readouterr()
    assert main(["compress", str(tiny_folder), "-o", out, "--min-similarity", "0.99", "--max-shard-size", "1MB"]) == 2
    assert "--max-shard-size does not apply" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    assert main(["compress", str(tmp_path / "bare"), "-o", out, "--min-similarity", "0.99"]) == 1
    assert "model.safetensors" in capsys.readouterr().err
    assert main(["compress", str(tiny_folder), "-o", out, "--min-similarity", "0.99",
                 "--calibration", str(tmp_path / "none.txt")]) == 1
    assert "calibration" in capsys.readouterr().err
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the hf extra were not installed
    assert main(["compress", str(tiny_folder), "-o", out, "--min-similarity", "0.99"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'dcformat[hf]'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("method", ["rd", "fisher"])
def test_fit_causal_lm_compares_next_token_distributions(method):
    pytest.importorskip("transformers")
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from dcformat.interop.transformers_fit import OutputSimilarity, _auto_kind

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=1, n_head=2)).eval()
    assert _auto_kind(model) == "next-token"
    batches = [{"input_ids": torch.randint(0, 50, (4, 12))} for _ in range(4)]
    result = dcformat.fit(model, batches, min_similarity=0.999, method=method)
    if method == "fisher":  # the tied token embeddings (wte, also lm_head) got a step per row
        assert "transformer.wte.weight" in result.policy.row_scales
    assert result.held_out >= 0.999
    back = dcformat.load(dcformat.save(result.tensors, policy=result.policy, metadata=result.metadata))
    assert OutputSimilarity(model, batches[1::2], "next-token")(back) == pytest.approx(result.held_out, abs=1e-9)


def test_hessian_texts_never_take_search_or_held_out_passages():
    from dcformat.interop.transformers_fit import hessian_texts, split_texts

    texts = [f"passage {i} " * 5 for i in range(100)]
    search, held = split_texts(texts, 10, 10)
    extra = hessian_texts(texts, search, held, 30)
    assert len(extra) == 30 and not set(extra) & (set(search) | set(held))
    assert hessian_texts(texts[:20], texts[:10], texts[10:20]) == []


def test_distill_keeps_each_level_in_its_cell_and_leaves_the_model_as_it_was(tiny_folder):
    from transformers import AutoModel

    from dcformat import quantize
    from dcformat.interop.transformers_fit import OutputSimilarity, distill

    model = AutoModel.from_pretrained(str(tiny_folder)).eval()
    batches = _batches(tiny_folder, _texts(32, 4))
    before = {n: t.clone() for n, t in model.state_dict().items()}
    tensors = {n: t.numpy().copy() for n, t in model.state_dict().items() if t.dtype.is_floating_point}
    sim = OutputSimilarity(model, batches, "hidden-state")
    fam = F.family(tensors, sim, "rd")
    theta = fam.start(0.98)
    tuned = distill(model, fam, theta, batches, "hidden-state", steps=8, lr=1e-3)
    assert all(np.array_equal(before[n].numpy(), t.numpy()) for n, t in model.state_dict().items())
    for n, step in fam.steps(theta).items():
        codebook, idx = quantize.quantize_uniform(tuned[n], step)
        assert np.array_equal(codebook[idx].reshape(tuned[n].shape), tuned[n])  # stored exactly
        assert np.array_equal(np.floor(tuned[n] / step + 0.5), np.floor(fam.decoded(theta)[n] / step + 0.5))
    back = dcformat.load(dcformat.save(tuned, policy=fam.policy(theta)))
    assert all(np.array_equal(back[n], tuned[n]) for n in tuned)
