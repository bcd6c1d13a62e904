"""The PyTorch training stages: pruning masks held while training, schedules, centroid fine-tuning."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import dcformat
from dcformat.errors import EncodeError
from dcformat.prune import gradual_schedule

torch = pytest.importorskip("torch")

from dcformat.pipeline import CodebookTrainer, Pruner, iterative_prune, prunable_weights  # noqa: E402


def mlp(seed: int = 0) -> "torch.nn.Module":
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 40), torch.nn.ReLU(), torch.nn.Linear(40, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5),
    )


def batch(seed: int = 0, n: int = 64) -> tuple["torch.Tensor", "torch.Tensor"]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randint(0, 5, (n,), generator=g)


def train_steps(model, optimizer, steps: int, seed: int = 0) -> None:
    for i in range(steps):
        x, y = batch(seed + i)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_import_dcformat_does_not_import_torch():
    code = "import sys, dcformat, dcformat.pipeline; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prunable_weights():
    model = mlp()
    assert list(prunable_weights(model)) == ["0.weight", "2.weight", "4.weight"]
    assert list(prunable_weights(model, ["2.weight", "4.bias"])) == ["2.weight", "4.bias"]
    with pytest.raises(EncodeError, match="9.weight"):
        prunable_weights(model, ["9.weight"])


# ------------------------------------------------------------------------------------------------
# Pruning


def test_pruner_keeps_pruned_weights_zero_under_adam():
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    train_steps(model, optimizer, 5)  # Adam's moments are non-zero everywhere now
    pruner = Pruner(model, optimizer)
    sparsity = pruner.prune(sparsity=0.75)
    assert sparsity == pytest.approx({"0.weight": 0.75, "2.weight": 0.75, "4.weight": 0.75})
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    train_steps(model, optimizer, 10, seed=100)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0)  # zeroed after each step, despite momentum
        assert torch.all(params[name].grad[~mask] == 0)  # and their gradients masked
        assert torch.count_nonzero(params[name][mask]) == int(mask.sum())  # the others train
    pruner.remove()
    train_steps(model, optimizer, 2, seed=200)  # hooks gone: the zeros may move again
    assert any(torch.count_nonzero(params[n][~m]) > 0 for n, m in masks.items())


def test_pruner_without_optimizer_rezeroes_before_forward():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, optimizer, 3)
    pruner = Pruner(model)
    pruner.prune(quality=0.5)
    w = model[0].weight
    mask = pruner.masks["0.weight"]
    train_steps(model, optimizer, 3, seed=50)  # momentum moves pruned weights after the step ...
    model(batch()[0])  # ... and the next forward sets them to zero before they are used
    assert torch.all(w[~mask] == 0)
    pruner.remove()
    assert torch.all(w[~mask] == 0)


def test_pruner_rules():
    model = mlp()
    with Pruner(model, names=["0.weight", "2.weight"]) as pruner:
        w0 = model[0].weight.detach().clone()
        t = 0.7 * float(np.std(w0.numpy()))
        pruner.prune(quality={"0.weight": 0.7})
        assert pruner.masks["0.weight"].tolist() == (w0.abs() >= t).tolist()
        assert pruner.sparsity()["2.weight"] == 0.0
        pruner.prune(threshold=0.05)
        assert torch.all(model[2].weight.abs()[pruner.masks["2.weight"]] >= 0.05)
        before = pruner.masks["0.weight"].clone()
        pruner.prune(sparsity={"0.weight": 0.9})
        assert torch.all(pruner.masks["0.weight"] <= before) and pruner.sparsity()["0.weight"] == pytest.approx(0.9)
        with pytest.raises(EncodeError):
            pruner.prune(sparsity=0.5, quality=1.0)
        with pytest.raises(EncodeError):
            pruner.prune()
        with pytest.raises(EncodeError, match="4.weight"):
            pruner.prune(sparsity={"4.weight": 0.5})
    assert not pruner._handles


def test_iterative_prune_follows_the_schedule():
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = gradual_schedule(0.8, 3)
    seen, masks = [], []

    def train(i: int) -> None:
        seen.append((i, dict(pruner_box[0].sparsity())))
        masks.append({n: m.clone() for n, m in pruner_box[0].masks.items()})
        train_steps(model, optimizer, 3, seed=10 * i)

    pruner_box = [Pruner(model, optimizer)]
    pruner = iterative_prune(model, train, schedule, pruner=pruner_box[0])
    assert [i for i, _ in seen] == [0, 1, 2]
    for (_, sparsity), target in zip(seen, schedule):
        assert all(s == pytest.approx(target, abs=0.005) for s in sparsity.values())  # round(s·n) of n >= 100
    for a, b in zip(masks, masks[1:]):
        assert all(torch.all(b[n] <= a[n]) for n in a)  # pruned once, pruned for good
    pruner.remove()
    assert all(torch.all(p[~pruner.masks[n]] == 0) for n, p in prunable_weights(model).items())
    with pytest.raises(EncodeError):
        iterative_prune(model, train, [0.5], rule="fraction")


# ------------------------------------------------------------------------------------------------
# Trained quantization


def pruned_mlp() -> "torch.nn.Module":
    model = mlp(1)
    with Pruner(model) as pruner:
        pruner.prune(sparsity={"0.weight": 0.8, "2.weight": 0.6})
    return model


def test_centroid_gradient_is_the_sum_of_weight_gradients():
    model = pruned_mlp()
    trainer = CodebookTrainer(model, bits={"0.weight": 3, "2.weight": 4, "4.weight": 2})
    assert trainer.sparse == {"0.weight": True, "2.weight": True, "4.weight": False}
    # Reference: the same model with plain weights equal to codebook[index], ordinary autograd.
    reference = mlp(1)
    reference.load_state_dict(model.state_dict())
    x, y = batch(7)
    torch.nn.functional.cross_entropy(reference(x), y).backward()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for name in trainer.params:
        g = dict(reference.named_parameters())[name].grad.reshape(-1).numpy().astype(np.float64)
        idx = trainer.indices[name].reshape(-1).numpy()
        summed = np.bincount(idx, weights=g, minlength=trainer.centroids[name].numel() + trainer.sparse[name])
        if trainer.sparse[name]:
            summed = summed[1:]
        np.testing.assert_allclose(trainer.centroids[name].grad.numpy(), summed, rtol=1e-5, atol=1e-6)
        assert torch.all(dict(model.named_parameters())[name].grad == 0)  # the weights themselves do not move
    # A second backward accumulates, as autograd does.
    first = trainer.centroids["4.weight"].grad.clone()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(trainer.centroids["4.weight"].grad, 2 * first)


@pytest.mark.parametrize("method", ["kmeans", "optimal", "ecsq"])
def test_fine_tuning_keeps_weights_in_codebook_and_zeros_zero(method):
    model = pruned_mlp()
    zeros = {n: (p == 0).clone() for n, p in prunable_weights(model).items()}
    trainer = CodebookTrainer(model, bits=3, method=method, lam=0.01)
    before = {n: c.detach().clone() for n, c in trainer.centroids.items()}
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.Adam(list(trainer.parameters()) + biases, lr=1e-2)
    train_steps(model, optimizer, 10)
    trainer.remove()
    params = dict(model.named_parameters())
    for name, (codebook, indices) in trainer.codebooks().items():
        w = params[name].detach().numpy()
        assert w.reshape(-1).tolist() == codebook[indices].tolist()  # every weight is its entry
        assert np.all(w[zeros[name].numpy()] == 0)  # pruned stay pruned
        assert np.unique(w[w != 0]).size <= 2 ** 3 - (1 if trainer.sparse[name] else 0)
        if trainer.sparse[name]:
            assert codebook[0] == 0 and np.all(indices[zeros[name].numpy().reshape(-1)] == 0)
            assert np.all(indices[~zeros[name].numpy().reshape(-1)] != 0)
        assert not torch.equal(before[name], trainer.centroids[name].detach())  # the centroids learned


def test_fine_tuned_model_is_stored_exactly(tmp_path):
    model = pruned_mlp()
    trainer = CodebookTrainer(model, bits={"0.weight": 4, "2.weight": 5, "4.weight": 6})
    optimizer = torch.optim.SGD(trainer.parameters(), lr=1e-3)
    train_steps(model, optimizer, 5)
    trainer.remove()
    policy = trainer.policy(index_bits=4)
    assert policy.plan("2.weight", np.zeros((20, 40), np.float32)).bits == 5
    path = tmp_path / "m.dcf"
    dcformat.save_torch(model.state_dict(), path, policy=policy)
    loaded = dcformat.load_file(path)
    for name, value in model.state_dict().items():
        assert loaded[name].tobytes() == value.numpy().tobytes(), name
    with dcformat.open(path) as f:
        assert f.layout("0.weight").encoding == "sparse" and f.layout("4.weight").encoding == "shared"


def test_trainer_accepts_given_codebooks_and_reports():
    model = mlp(2)
    w = model[4].weight.detach().numpy().copy()
    codebook = np.array([-0.1, 0.0, 0.1], np.float32)
    indices = np.digitize(w.reshape(-1), [-0.05, 0.05]).astype(np.uint16)
    trainer = CodebookTrainer(model, codebooks={"4.weight": (codebook, indices)})
    assert list(trainer.params) == ["4.weight"] and trainer.bits == {"4.weight": 2}
    assert model[4].weight.detach().numpy().reshape(-1).tolist() == codebook[indices].tolist()
    report = trainer.report()["4.weight"]
    assert report["mse"] == pytest.approx(float(np.mean((w.reshape(-1) - codebook[indices]) ** 2)))
    with pytest.raises(EncodeError, match="4.weight"):
        CodebookTrainer(mlp(2), codebooks={"4.weight": (codebook, indices[:-1])})
    with pytest.raises(EncodeError, match="0.weight"):
        CodebookTrainer(mlp(2), bits={"0.weight": 0})
