"""Quality from data for torch and transformers models: run inputs through the original and the decoded model.

    import dcformat
    result = dcformat.fit(model, batches, min_similarity=0.99)      # any torch model, any inputs
    dcformat.save_file(result.tensors, "model.dcf", policy=result.policy, metadata=result.metadata)

Similarity (1.0 = the original's outputs), by output kind:

- ``sentence-embedding`` (a sentence-transformers folder, with modules.json): mean cosine of the
  mean-pooled, L2-normalised last hidden states of each text;
- ``hidden-state`` (other encoders): mean cosine of the last hidden state of each (non-padding) token;
- ``next-token`` (causal LMs): mean cosine of the next-token probability distributions at each token.

The search itself is framework-free (dcformat.fit); this module measures similarity, collects the
input Hessians X^T X of every nn.Linear for GPTQ rounding and how often each row of the input
embeddings is looked up (fisher's row weights), and reads calibration text (default: Python's own
pydoc_data.topics, about a megabyte of English prose, so it works offline).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import DCFError, EncodeError, needs
from ..fit import GPTQ_METHODS, METHODS, FitResult, fit_tensors
from ..policy import Policy
from ..progress import Progress

__all__ = ["KINDS", "calibration_texts", "split_texts", "OutputSimilarity", "linear_hessians", "fit",
           "fit_folder", "load_folder", "distill", "hessian_texts", "token_counts", "input_embedding_name",
           "text_row_weights"]

KINDS = ("sentence-embedding", "hidden-state", "next-token")
DEFAULT_SEARCH = 48  # passages the search measures on
DEFAULT_HELD_OUT = 48  # passages set apart: the similarity reported
HESSIAN_PASSAGES = 960  # further passages (never the held-out ones) that only the GPTQ Hessians see
MAX_TOKENS = 64  # each passage truncated to this many tokens (a model run stays near a second on 2 cores)
BATCH = 16
MAX_CALIBRATION_CHARS = 64 << 20  # characters read from a --calibration file, at most


def calibration_texts(path: str | os.PathLike | None = None, *, max_chars: int = 320) -> list[str]:
    """Prose passages of at most about `max_chars` characters: from a UTF-8 text file, or pydoc_data.topics."""
    if path is None:
        from pydoc_data.topics import topics

        text = "\n\n".join(topics[k] for k in sorted(topics))
    else:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_CALIBRATION_CHARS)  # the passages are sampled: a huge file need not be held
        except UnicodeDecodeError as e:
            raise DCFError(f"{path}: calibration text must be UTF-8 ({e.reason} at byte {e.start})") from None
    passages: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        words = " ".join(paragraph.split())
        if len(words) < 40 or sum(c.isalpha() for c in words) < 0.6 * len(words):
            continue  # headings, code and tables: not prose
        sentences = re.split(r"(?<=[.!?])\s+", words)
        chunk = ""
        for s in sentences:
            if chunk and len(chunk) + 1 + len(s) > max_chars:
                passages.append(chunk)
                chunk = ""
            chunk = f"{chunk} {s}".strip()
        if len(chunk) >= 40:
            passages.append(chunk[: 4 * max_chars])
    if len(passages) < 2:
        raise DCFError(f"{path or 'pydoc_data.topics'}: calibration text needs at least two prose passages "
                       f"(of 40 characters or more), found {len(passages)}")
    return passages


def split_texts(texts: Sequence[str], search: int = DEFAULT_SEARCH, held_out: int = DEFAULT_HELD_OUT
                ) -> tuple[list[str], list[str]]:
    """(search, held-out) passages drawn evenly over the text, alternately, so the two never share a passage."""
    if search < 1 or held_out < 1 or len(texts) < 2:
        raise EncodeError("fit: needs at least one search and one held-out passage")
    n = len(texts)
    want = min(2 * max(search, held_out), n)
    picks = [texts[int(i * n / want)] for i in range(want)]
    return picks[0::2][:search], picks[1::2][:held_out]


def hessian_texts(texts: Sequence[str], search: Sequence[str], held_out: Sequence[str],
                  count: int = HESSIAN_PASSAGES) -> list[str]:
    """Up to `count` passages, evenly drawn, that are neither searched on nor held out: more inputs for X^T X.

    A 1536-wide layer's Hessian from the 48 search passages alone (~3,000 tokens) is fitted too closely:
    on MiniLM at 9.6 MB, 960 more passages move held-out prose 0.99055 -> 0.99071 and the search's own
    0.99106 -> 0.99073 (no longer above what it generalises to).
    """
    taken = set(search) | set(held_out)
    rest = [t for t in texts if t not in taken]
    if not rest or count < 1:
        return []
    return rest[:: max(1, len(rest) // count)][:count]


def _torch():
    return needs("torch", "hf", "fitting to a similarity target")


def _batches_of(tokenizer: Any, texts: Sequence[str], max_tokens: int = MAX_TOKENS) -> list[dict]:
    """Tokenized batches of `texts` (padded, truncated to max_tokens)."""
    out = []
    for i in range(0, len(texts), BATCH):
        enc = tokenizer(list(texts[i: i + BATCH]), padding=True, truncation=True, max_length=max_tokens,
                        return_tensors="pt")
        out.append(dict(enc))
    return out


def _mask(batch: Any) -> Any:
    return batch.get("attention_mask") if isinstance(batch, Mapping) else None


def _call(model: Any, batch: Any) -> Any:
    return model(**batch) if isinstance(batch, Mapping) else model(batch)


def _rows(kind: str, output: Any, batch: Any) -> Any:
    """The vectors compared by cosine, one row per text (sentence-embedding) or per real token."""
    torch = _torch()
    mask = _mask(batch)
    if kind == "sentence-embedding":
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        m = (mask if mask is not None else torch.ones(hidden.shape[:2])).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return pooled
    if kind == "hidden-state":
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
    elif kind == "next-token":
        logits = output.logits if hasattr(output, "logits") else output[0]
        hidden = torch.softmax(logits.double(), dim=-1)
    else:
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        return hidden.reshape(hidden.shape[0], -1)
    if mask is not None and hidden.dim() == 3:
        return hidden[mask.bool()]
    return hidden.reshape(-1, hidden.shape[-1])


class OutputSimilarity:
    """similarity(tensors): mean cosine between the original model's outputs and those with `tensors` loaded."""

    def __init__(self, model: Any, batches: Sequence[Any], kind: str = "hidden-state",
                 reference: Mapping[str, np.ndarray] | None = None):
        torch = _torch()
        if kind not in KINDS + ("output",):
            raise EncodeError(f"similarity kind must be one of {KINDS}, not {kind!r}")
        if not batches:
            raise EncodeError("similarity needs at least one input batch")
        self.torch, self.model, self.batches, self.kind = torch, model, list(batches), kind
        self.params = {n: t for n, t in model.state_dict().items()}
        self.original = {n: t.detach().clone() for n, t in self.params.items()} if reference is None else None
        with torch.no_grad():
            self.reference = [self._normalized(_rows(kind, _call(model, b), b)) for b in self.batches]

    def _normalized(self, rows: Any) -> Any:
        return self.torch.nn.functional.normalize(rows.double(), dim=-1)

    def __call__(self, tensors: Mapping[str, np.ndarray]) -> float:
        torch = self.torch
        with torch.no_grad():
            for name, value in tensors.items():
                if name in self.params:
                    self.params[name].copy_(torch.from_numpy(np.asarray(value)).reshape(self.params[name].shape))
            total, count = 0.0, 0
            for b, ref in zip(self.batches, self.reference):
                rows = self._normalized(_rows(self.kind, _call(self.model, b), b))
                total += float((rows * ref).sum())
                count += rows.shape[0]
            if self.original is not None:  # leave the caller's model as it was
                for name, value in self.original.items():
                    self.params[name].copy_(value)
        return total / max(count, 1)


def linear_hessians(model: Any, batches: Sequence[Any]) -> dict[str, np.ndarray]:
    """{'<module>.weight': X^T X} over the real (non-padding) tokens entering each nn.Linear of `model`."""
    torch = _torch()
    sums: dict[str, Any] = {}
    current: dict[str, Any] = {"mask": None}
    hooks = []

    def hook_for(name: str) -> Callable:
        def hook(module: Any, args: tuple) -> None:
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).double()
            mask = current["mask"]
            if mask is not None and mask.numel() == x.shape[0]:
                x = x[mask.reshape(-1).bool()]
            h = x.T @ x
            sums[name] = h if name not in sums else sums[name] + h
        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_pre_hook(hook_for(f"{name}.weight")))
    try:
        with torch.no_grad():
            for b in batches:
                current["mask"] = _mask(b)
                _call(model, b)
    finally:
        for h in hooks:
            h.remove()
    return {n: h.numpy() for n, h in sums.items()}


def input_embedding_name(model: Any) -> str | None:
    """The state_dict name of the model's token-embedding matrix (`get_input_embeddings()`), or None."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        module = get() if callable(get) else None
    except NotImplementedError:
        module = None
    if module is None:
        return None
    for name, m in model.named_modules():
        if m is module:
            return f"{name}.weight" if name else "weight"
    return None


def token_counts(rows: int, id_lists: Iterable[Any]) -> np.ndarray:
    """How often each of `rows` token ids occurs in `id_lists` (sequences or tensors of ids; others ignored)."""
    counts = np.zeros(rows, np.int64)
    for ids in id_lists:
        a = np.asarray(ids.numpy() if hasattr(ids, "numpy") else ids).reshape(-1)
        if a.size and np.issubdtype(a.dtype, np.integer):
            a = a[(a >= 0) & (a < rows)]
            counts += np.bincount(a, minlength=rows)
    return counts


def text_row_weights(model: Any, tokenizer: Any, texts: Sequence[str], held_out: Sequence[str]
                     ) -> dict[str, np.ndarray] | None:
    """fisher's row weights from text: {input embeddings' name: look-ups of each token in every passage
    but the held-out ones, whole (not cut to MAX_TOKENS)}; None when the model has no input embeddings."""
    name = input_embedding_name(model)
    if name is None:
        return None
    held = set(held_out)
    rows = int(model.state_dict()[name].shape[0])
    return {name: token_counts(rows, (tokenizer(t, truncation=True)["input_ids"] for t in texts if t not in held))}


def _batch_ids(batches: Sequence[Any]) -> Iterable[Any]:
    """The real (non-padding) input ids of each batch that has them."""
    for b in batches:
        if isinstance(b, Mapping) and "input_ids" in b:
            ids, mask = b["input_ids"], _mask(b)
            yield ids[mask.bool()] if mask is not None and mask.shape == ids.shape else ids


def _auto_kind(model: Any) -> str:
    config = getattr(model, "config", None)
    if config is not None and (getattr(config, "is_decoder", False) or any(
            a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))
            or hasattr(model, "lm_head")):
        return "next-token"
    return "hidden-state"


def fit(model: Any, inputs: Iterable[Any], min_similarity: float = 0.99, *, held_out: Iterable[Any] | None = None,
        method: str = "fisher", kind: str = "auto", policy: Policy | None = None, data: str = "caller's inputs",
        hessian_inputs: Iterable[Any] = (), row_weights: Mapping[str, np.ndarray] | None = None,
        progress: Progress | None = None) -> FitResult:
    """The smallest file of `model`'s weights whose outputs on held-out inputs keep mean cosine >= min_similarity.

    `inputs`: batches for model(**batch) (dicts, e.g. a tokenizer's output) or model(batch); `held_out`:
    batches the search never sees (default: every other batch of `inputs`). `kind`: which outputs are
    compared (see the module's docstring; "auto": next-token for causal LMs, else hidden-state).
    `hessian_inputs`: further batches (never held-out ones) that only the Hessians X^T X and (fisher)
    the token counts see. `row_weights` (fisher): {name: weight per row}; default: how often the
    inputs and hessian_inputs look up each token of the input embeddings.
    The result's tensors are named as in model.state_dict(); save them with result.policy and result.metadata.
    """
    torch = _torch()
    if method not in METHODS:
        raise EncodeError(f"fit: method must be one of {METHODS}, not {method!r}")
    batches = list(inputs)
    if held_out is None:
        if len(batches) < 2:
            raise EncodeError("fit: give held_out inputs, or at least two input batches to split")
        batches, held = batches[0::2], batches[1::2]
    else:
        held = list(held_out)
    kind = _auto_kind(model) if kind == "auto" else kind
    model.eval()
    search = OutputSimilarity(model, batches, kind)
    held_sim = OutputSimilarity(model, held, kind) if held else None
    tensors = {n: t.detach().cpu().numpy().copy() for n, t in model.state_dict().items()
               if t.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}
    tensors = {n: (v if v.dtype == np.float32 else v.astype(np.float32)) for n, v in tensors.items()}
    hessian_inputs = list(hessian_inputs)
    hessians = linear_hessians(model, batches + hessian_inputs) if method in GPTQ_METHODS else None
    if method == "fisher" and row_weights is None:
        name = input_embedding_name(model)
        row_weights = {} if name not in tensors else {
            name: token_counts(tensors[name].shape[0], _batch_ids(batches + hessian_inputs))}
    return fit_tensors(tensors, search, min_similarity, held_out=held_sim, method=method, hessians=hessians,
                       policy=policy, row_weights=row_weights, data=data, progress=progress)


def load_folder(folder: str | os.PathLike) -> tuple[Any, Any, str]:
    """(model, tokenizer, similarity kind) of a transformers folder (sentence-transformers: its encoder)."""
    transformers = needs("transformers", "hf", "--min-similarity (loading the model with transformers)")
    _torch()
    folder = os.fspath(folder)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise DCFError(f"{folder}: a transformers model folder needs config.json")
    config = transformers.AutoConfig.from_pretrained(folder)
    causal = any(a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))
    if os.path.isfile(os.path.join(folder, "modules.json")):
        kind, cls = "sentence-embedding", transformers.AutoModel
    elif causal:
        kind, cls = "next-token", transformers.AutoModelForCausalLM
    else:
        kind, cls = "hidden-state", transformers.AutoModel
    model = cls.from_pretrained(folder, dtype="float32").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model, tokenizer, kind


def rename_for(file_names: Iterable[str], model_names: Iterable[str]) -> dict[str, str]:
    """{model state_dict name: file tensor name} for names equal up to a leading prefix ("bert.", "model.")."""
    files = list(file_names)
    by_name = set(files)
    out = {}
    for m in model_names:
        if m in by_name:
            out[m] = m
            continue
        match = [f for f in files if f.endswith("." + m) or m.endswith("." + f)]
        if len(match) == 1:
            out[m] = match[0]
    return out


def fit_folder(folder: str | os.PathLike, min_similarity: float = 0.99, *, calibration: str | None = None,
               method: str = "fisher", search: int = DEFAULT_SEARCH, held_out: int = DEFAULT_HELD_OUT,
               policy: Policy | None = None, progress: Progress | None = None) -> tuple[FitResult, str]:
    """`fit` on a transformers folder with calibration text (default pydoc_data.topics); returns (result, kind).
    `policy`: the settings the search keeps (coder, huffman, header form), as `fit`'s."""
    model, tokenizer, kind = load_folder(folder)
    texts = calibration_texts(calibration)
    search_texts, held_texts = split_texts(texts, search, held_out)
    extra = hessian_texts(texts, search_texts, held_texts) if method in GPTQ_METHODS else []
    source = os.path.basename(os.fspath(calibration)) if calibration else "pydoc_data.topics"
    data = (f"{source}: {len(search_texts)} passages searched, {len(held_texts)} held out "
            + (f", {len(extra)} more for the Hessians " if extra else "")
            + f"(of {len(texts)}, up to {MAX_TOKENS} tokens each); similarity: {kind} cosine")
    row_weights = text_row_weights(model, tokenizer, texts, held_texts) if method == "fisher" else None
    if row_weights:
        data += f"; token counts of {next(iter(row_weights))} from the {len(texts) - len(set(held_texts))} " \
                "passages not held out"
    result = fit(model, _batches_of(tokenizer, search_texts), min_similarity,
                 held_out=_batches_of(tokenizer, held_texts), method=method, kind=kind, data=data,
                 hessian_inputs=_batches_of(tokenizer, extra), row_weights=row_weights, policy=policy,
                 progress=progress)
    record = json.loads(result.metadata["dcformat.fit"])
    record["kind"] = kind
    result.metadata["dcformat.fit"] = json.dumps(record, sort_keys=True)
    return result, kind


def distill(model: Any, family: Any, theta: float, batches: Sequence[Any], kind: str, *, steps: int = 60,
            lr: float = 1e-4, tune_vectors: bool = True, progress: Progress | None = None) -> dict[str, np.ndarray]:
    """The family's tensors at θ with their levels (and, if tune_vectors, the raw 1-D tensors) fine-tuned
    against the original model's outputs on `batches` (Deep Compression's centroid fine-tuning, no labels).

    Each quantized tensor keeps its indices; its non-zero levels move by gradient descent on 1 - cosine
    of the outputs, each kept within its grid cell ((k ± 0.49)·step) so that the file stores it at the same
    index and level 0 stays exactly 0. The model is left as it was.
    """
    torch = _torch()
    from .. import quantize
    from ..progress import ProgressEvent

    tensors = family.tensors(theta)
    steps_of = family.steps(theta)
    params = dict(model.named_parameters())
    state = model.state_dict()
    saved = {n: t.detach().clone() for n, t in state.items()}
    ref = OutputSimilarity(model, batches, kind)  # reference rows from the original weights
    levels, indices, bounds = {}, {}, {}
    for n, step in steps_of.items():
        if n not in params:
            continue
        codebook, idx = quantize.quantize_uniform(tensors[n], step)
        grid = np.floor(codebook.astype(np.float64) / step + 0.5)
        levels[n] = torch.tensor(codebook.astype(np.float32), requires_grad=True)
        indices[n] = torch.from_numpy(idx.astype(np.int64)).reshape(params[n].shape)
        bounds[n] = (torch.tensor((grid - 0.49) * step, dtype=torch.float32),
                     torch.tensor((grid + 0.49) * step, dtype=torch.float32), torch.tensor(grid == 0))
    vectors = [p for n, p in params.items() if n not in levels and p.dim() <= 1] if tune_vectors else []
    for p in params.values():
        p.requires_grad_(False)
    for p in vectors:
        p.requires_grad_(True)
    optim = torch.optim.Adam([*levels.values(), *vectors], lr=lr)
    try:
        model.train(False)
        for it in range(steps):
            b = batches[it % len(batches)]
            r = ref.reference[it % len(batches)]
            for n in levels:  # the weights as functions of their levels
                w = levels[n][indices[n]]
                module_name, _, attr = n.rpartition(".")
                module = model.get_submodule(module_name)
                module._parameters[attr] = None
                module.__dict__[attr] = w  # found before nn.Module.__getattr__ looks in _parameters
            rows = torch.nn.functional.normalize(_rows(kind, _call(model, b), b).double(), dim=-1)
            loss = 1.0 - (rows * r).sum(-1).mean()
            optim.zero_grad()
            loss.backward()
            for n, lv in levels.items():
                if lv.grad is not None:  # None: the tensor does not reach the outputs compared
                    lv.grad[bounds[n][2]] = 0.0
            optim.step()
            with torch.no_grad():
                for n, lv in levels.items():
                    lo, hi, zero = bounds[n]
                    lv.copy_(torch.where(zero, torch.zeros_like(lv), torch.clamp(lv, lo, hi)))
            if progress is not None and (it + 1) % 10 == 0:
                progress(ProgressEvent("fit", 0, 0, message=f"fine-tuning levels: step {it + 1} of {steps}, "
                                       f"1 - cosine {float(loss.detach()):.5f}"))
        out = dict(tensors)
        with torch.no_grad():
            for n, lv in levels.items():
                out[n] = lv[indices[n]].numpy().astype(np.float32).reshape(tensors[n].shape)
            for n, p in params.items():
                if p.requires_grad and n in out:
                    out[n] = p.detach().numpy().copy()
    finally:
        for n in levels:
            module_name, _, attr = n.rpartition(".")
            module = model.get_submodule(module_name)
            module.__dict__.pop(attr, None)
            module._parameters[attr] = params[n]
        with torch.no_grad():
            for n, t in model.state_dict().items():
                t.copy_(saved[n])
        for p in params.values():
            p.requires_grad_(False)
    return out
