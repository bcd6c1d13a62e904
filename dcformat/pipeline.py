"""Deep Compression's training stages for PyTorch models: pruning with masks held while retraining,
iterative prune-and-retrain schedules, and trained quantization (centroid fine-tuning, paper eq. 3).

torch is imported inside the functions that need it, so ``import dcformat`` never loads it.

    pruner = Pruner(model, optimizer)            # masks of the weights of rank >= 2 (Linear, Conv, ...)
    iterative_prune(model, train_one_round, gradual_schedule(0.92, 4), pruner=pruner)
    pruner.remove()                              # pruned weights are +0.0 from here on

    trainer = CodebookTrainer(model, bits={"fc1.weight": 6, "fc2.weight": 5})
    opt = torch.optim.Adam(list(trainer.parameters()) + biases, lr=1e-4)
    ...train...                                  # weights stay codebook[index]; zeros stay zero
    trainer.remove()
    dcformat.save_torch(model.state_dict(), "m.dcf", policy=trainer.policy())  # stored exactly
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import EncodeError
from .prune import magnitude_mask
from .quantize import quantization_report, quantize

__all__ = ["prunable_weights", "Pruner", "iterative_prune", "CodebookTrainer"]

Rule = float | Mapping[str, float] | None


def _torch():
    """The torch module, or an EncodeError saying how to get it."""
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise EncodeError("the training pipeline needs PyTorch: pip install 'dcformat[torch]'") from None
    return torch


def prunable_weights(model: Any, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The floating-point parameters of rank >= 2 (Linear, Conv, Embedding weights) by name, or the named ones."""
    params = dict(model.named_parameters())
    if names is None:
        return {n: p for n, p in params.items() if p.dim() >= 2 and p.is_floating_point()}
    out = {}
    for name in names:
        if name not in params:
            raise EncodeError(f"the model has no parameter {name!r}", tensor=name)
        if not params[name].is_floating_point():
            raise EncodeError(f"parameter {name!r} is not a float tensor", tensor=name)
        out[name] = params[name]
    return out


def _as_numpy(p: Any) -> np.ndarray:
    """A parameter's values as a float32/float64 numpy array (16-bit floats widen exactly)."""
    t = p.detach().cpu()
    if t.dtype not in (_torch().float32, _torch().float64):
        t = t.float()
    return t.numpy()


def _rule_for(name: str, value: Rule) -> float | None:
    """The value of a rule for one layer: a number for all, or a mapping by name (absent: None)."""
    if value is None or not isinstance(value, Mapping):
        return value
    return value.get(name)


class Pruner:
    """Magnitude pruning of a model's weights, with the masks held while training.

    Gradients of pruned weights are zeroed as they are computed, and the weights are set to zero again
    before every forward pass of the model and (if ``optimizer`` is given) after every optimizer step,
    so momentum or weight decay cannot bring them back.
    """

    def __init__(self, model: Any, optimizer: Any = None, names: Iterable[str] | None = None):
        torch = _torch()
        self.model = model
        self.params = prunable_weights(model, names)
        self.masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()}
        self._handles = [p.register_hook(functools.partial(self._mask_grad, n)) for n, p in self.params.items()]
        self._handles.append(model.register_forward_pre_hook(lambda module, args: self.apply()))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self.apply()))

    def _mask_grad(self, name: str, grad: Any) -> Any:
        return grad * self.masks[name]

    def prune(self, sparsity: Rule = None, threshold: Rule = None, quality: Rule = None) -> dict[str, float]:
        """Prune more, by one rule (a number for every layer, or a mapping by name); return the sparsities.

        ``sparsity``: the fraction of each layer pruned (already pruned weights count and stay pruned);
        ``threshold``: |w| below it; ``quality``: |w| below quality × the layer's standard deviation.
        """
        torch = _torch()
        given = [(k, v) for k, v in (("sparsity", sparsity), ("threshold", threshold), ("quality", quality))
                 if v is not None]
        if len(given) != 1:
            raise EncodeError("give exactly one of sparsity, threshold or quality")
        kind, value = given[0]
        if isinstance(value, Mapping):
            unknown = set(value) - set(self.params)
            if unknown:
                raise EncodeError(f"no prunable weights named {sorted(unknown)}")
        for name, p in self.params.items():
            v = _rule_for(name, value)
            if v is None:
                continue
            keep = magnitude_mask(_as_numpy(p), keep=self.masks[name].cpu().numpy(), **{kind: v})
            self.masks[name] = torch.from_numpy(keep).to(p.device)
        self.apply()
        return self.sparsity()

    def apply(self) -> None:
        """Set every pruned weight to +0.0 now."""
        torch = _torch()
        with torch.no_grad():
            for name, p in self.params.items():
                p.masked_fill_(~self.masks[name], 0.0)

    def sparsity(self) -> dict[str, float]:
        """The fraction of each layer pruned."""
        return {n: 1.0 - int(m.sum()) / m.numel() if m.numel() else 0.0 for n, m in self.masks.items()}

    def remove(self) -> None:
        """Zero the pruned weights a last time and detach the hooks (the masks stay readable)."""
        self.apply()
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "Pruner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def iterative_prune(model: Any, train: Callable[[int], Any], schedule: Sequence[Rule], *,
                    rule: str = "sparsity", pruner: Pruner | None = None,
                    names: Iterable[str] | None = None) -> Pruner:
    """Prune-and-retrain rounds: for each step i, prune by ``rule`` to schedule[i], then call train(i).

    ``schedule`` holds a number or a {name: number} mapping per round, e.g. gradual_schedule(0.9, 4);
    ``rule`` is "sparsity", "threshold" or "quality". Returns the pruner, hooks still attached: call
    its remove() when done training.
    """
    if rule not in ("sparsity", "threshold", "quality"):
        raise EncodeError(f"rule must be 'sparsity', 'threshold' or 'quality', not {rule!r}")
    pruner = pruner if pruner is not None else Pruner(model, names=names)
    for i, value in enumerate(schedule):
        pruner.prune(**{rule: value})
        train(i)
    return pruner


def _escape(name: str) -> str:
    """name as an fnmatch pattern matching only itself."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


class CodebookTrainer:
    """Trained quantization: each weight tied to its codebook entry while training (paper §3.3).

    Each named weight (default: every float parameter of rank >= 2) is quantized to ``bits`` (a number,
    or {name: bits}) with dcformat.quantize (``method``, ``init``, ``lam``, ``seed``) — sparsely when it
    has zeros, whose entry stays zero — unless ``codebooks`` gives {name: (codebook, indices)} already.
    The non-zero centroids become the trainable parameters (``parameters()``): the gradient of a
    centroid is the sum of the gradients of the weights that share it (eq. 3), accumulated by a hook
    on each weight's gradient, which is then zeroed. Before every forward pass, and on sync(), each
    weight is rewritten as codebook[index].
    """

    def __init__(self, model: Any, bits: int | Mapping[str, int] = 5, *, names: Iterable[str] | None = None,
                 method: str = "kmeans", init: str = "linear", lam: float = 0.0, seed: int = 0,
                 codebooks: Mapping[str, tuple[Any, Any]] | None = None):
        torch = _torch()
        self.model = model
        if names is None and isinstance(bits, Mapping):
            names = list(bits)
        if names is None and codebooks is not None:
            names = list(codebooks)
        self.params = prunable_weights(model, names)
        self.bits: dict[str, int] = {}
        self.sparse: dict[str, bool] = {}
        self.centroids: dict[str, Any] = {}
        self.indices: dict[str, Any] = {}
        self.initial_reports: dict[str, dict[str, Any]] = {}
        for name, p in self.params.items():
            w = _as_numpy(p)
            if codebooks is not None and name in codebooks:
                codebook, idx = codebooks[name]
                codebook = np.asarray(codebook, dtype=np.float64).reshape(-1)
                idx = np.asarray(idx).reshape(-1)
                if idx.size != w.size or (idx.size and (int(idx.min()) < 0 or int(idx.max()) >= codebook.size)):
                    raise EncodeError("indices must give one codebook index per weight", tensor=name)
                sparse = codebook.size > 0 and codebook[0] == 0.0 and bool(np.any(idx == 0))
                b = max(1, int(codebook.size - 1).bit_length())
            else:
                b = bits.get(name, 5) if isinstance(bits, Mapping) else bits
                # As the codec decides: a weight whose bits are all zero (+0.0, what pruning leaves).
                sparse = bool(np.any(w.view(np.uint32 if w.dtype == np.float32 else np.uint64) == 0))
                try:
                    codebook, idx = quantize(w, b, sparse=sparse, method=method, init=init, lam=lam, seed=seed)
                except EncodeError as e:
                    raise EncodeError(str(e), tensor=name) from None
            self.bits[name] = int(b)
            self.sparse[name] = sparse
            self.initial_reports[name] = quantization_report(w, codebook, idx, sparse=sparse)
            body = np.asarray(codebook, dtype=np.float64)[1:] if sparse else np.asarray(codebook, dtype=np.float64)
            self.centroids[name] = torch.nn.Parameter(torch.tensor(body, dtype=p.dtype, device=p.device))
            self.indices[name] = torch.from_numpy(idx.astype(np.int64)).to(p.device).reshape(p.shape)
        self._handles = [p.register_hook(functools.partial(self._centroid_grad, n)) for n, p in self.params.items()]
        self._handles.append(model.register_forward_pre_hook(lambda module, args: self.sync()))
        self.sync()

    def _table(self, name: str) -> Any:
        """The codebook as a tensor: the centroids, after a fixed zero when the layer is sparse."""
        torch = _torch()
        c = self.centroids[name]
        if self.sparse[name]:
            return torch.cat((torch.zeros(1, dtype=c.dtype, device=c.device), c))
        return c

    def _centroid_grad(self, name: str, grad: Any) -> Any:
        """Add the weights' gradients, grouped by codebook index, to the centroids' (eq. 3)."""
        torch = _torch()
        c = self.centroids[name]
        size = c.numel() + (1 if self.sparse[name] else 0)
        summed = torch.zeros(size, dtype=grad.dtype, device=grad.device)
        summed.index_add_(0, self.indices[name].reshape(-1), grad.reshape(-1))
        if self.sparse[name]:
            summed = summed[1:]  # the zero entry is not trained: pruned weights stay zero
        summed = summed.to(c.dtype)
        c.grad = summed if c.grad is None else c.grad + summed
        return torch.zeros_like(grad)

    def parameters(self) -> Iterator[Any]:
        """The trainable centroids (give these to the optimizer instead of the quantized weights)."""
        return iter(self.centroids.values())

    def sync(self) -> None:
        """Rewrite every quantized weight as codebook[index] now."""
        torch = _torch()
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self._table(name)[self.indices[name]])

    def codebooks(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{name: (codebook as float32 numpy, uint16 index of each weight in C order)}, zero first if sparse."""
        out = {}
        for name in self.params:
            table = self._table(name).detach().float().cpu().numpy()
            out[name] = (table, self.indices[name].reshape(-1).cpu().numpy().astype(np.uint16))
        return out

    def report(self) -> dict[str, dict[str, Any]]:
        """Per layer: bits, sparse, codebook size, and the quantization error at the start (before training)."""
        return {n: {"bits": self.bits[n], "sparse": self.sparse[n], **self.initial_reports[n]} for n in self.params}

    def policy(self, **settings: Any) -> Any:
        """A dcformat.Policy that stores each trained weight exactly, with its own bit width (rules by name).

        Other settings (index_bits, huffman, ...) pass through; 1-D tensors stay raw as always.
        """
        from .policy import Policy

        rules = {_escape(n): {"bits": self.bits[n], "prune": 0.0} for n in self.params}
        rules.update(settings.pop("rules", {}))
        return Policy(rules=rules, **settings)

    def remove(self) -> None:
        """Write the final weights and detach the hooks."""
        self.sync()
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "CodebookTrainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
