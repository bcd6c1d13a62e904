"""Train the bundled example model: a LeNet-300-100-style MLP (64-300-100-10) on scikit-learn's digits.

Pure numpy (Adam, cross-entropy), then the paper's pruning stage: prune each layer by magnitude and
retrain with the masks held, so pruned weights stay zero. Writes dcformat/examples/lenet300.npz
(weights, PyTorch layout: fc.weight is out x in) and dcformat/examples/digits_test.npz (the held-out
test split the demo scores). Needs scikit-learn (only for this script):

    pip install scikit-learn && python examples/train_lenet300.py
"""

from __future__ import annotations

import os

import numpy as np

SIZES = (64, 300, 100, 10)
# Fraction pruned per layer, close to the paper's LeNet-300-100 (Table 2: 92%, 91%, 74%)
PRUNE = {"fc1.weight": 0.92, "fc2.weight": 0.91, "fc3.weight": 0.74}
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "dcformat", "examples")


def init(rng: np.random.Generator) -> dict[str, np.ndarray]:
    params = {}
    for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:]), 1):
        params[f"fc{i}.weight"] = (rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        params[f"fc{i}.bias"] = np.zeros(n_out, np.float32)
    return params


def forward(params: dict[str, np.ndarray], x: np.ndarray) -> list[np.ndarray]:
    acts = [x]
    for i in range(1, len(SIZES)):
        z = acts[-1] @ params[f"fc{i}.weight"].T + params[f"fc{i}.bias"]
        acts.append(np.maximum(z, 0) if i < len(SIZES) - 1 else z)
    return acts


def accuracy(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float((forward(params, x)[-1].argmax(1) == y).mean())


def train(params, x, y, epochs, rng, masks=None, lr=1e-3, batch=64):
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    t = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(x), batch):
            idx = order[s : s + batch]
            acts = forward(params, x[idx])
            logits = acts[-1]
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1
            delta = p / len(idx)
            t += 1
            for i in range(len(SIZES) - 1, 0, -1):
                grads = {f"fc{i}.weight": delta.T @ acts[i - 1], f"fc{i}.bias": delta.sum(0)}
                if i > 1:
                    delta = (delta @ params[f"fc{i}.weight"]) * (acts[i - 1] > 0)
                for k, g in grads.items():
                    m[k] = 0.9 * m[k] + 0.1 * g
                    v2[k] = 0.999 * v2[k] + 0.001 * g * g
                    step = lr * (m[k] / (1 - 0.9**t)) / (np.sqrt(v2[k] / (1 - 0.999**t)) + 1e-8)
                    params[k] = (params[k] - step).astype(np.float32)
                    if masks is not None and k in masks:
                        # np.where, not a product: -w * 0 would leave -0.0, a non-zero bit pattern
                        params[k] = np.where(masks[k] > 0, params[k], np.float32(0))
    return params


def main() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    test, trainset = order[:360], order[360:]
    params = train(init(rng), x[trainset], y[trainset], 60, rng)
    print(f"dense accuracy: {accuracy(params, x[test], y[test]):.4f}")
    masks = {}
    for k, frac in PRUNE.items():
        w = params[k]
        cut = np.sort(np.abs(w).reshape(-1))[int(round(frac * w.size))]
        masks[k] = (np.abs(w) >= cut).astype(np.float32)
        params[k] = np.where(masks[k] > 0, params[k], np.float32(0))
    print(f"pruned, before retraining: {accuracy(params, x[test], y[test]):.4f}")
    params = train(params, x[trainset], y[trainset], 60, rng, masks=masks, lr=5e-4)
    print(f"pruned and retrained: {accuracy(params, x[test], y[test]):.4f}")
    for k in PRUNE:
        print(f"  {k}: kept {np.count_nonzero(params[k]) / params[k].size:.1%}")
    os.makedirs(OUT, exist_ok=True)
    np.savez_compressed(os.path.join(OUT, "lenet300.npz"), **params)
    np.savez_compressed(os.path.join(OUT, "digits_test.npz"), x=x[test], y=y[test])


if __name__ == "__main__":
    main()
