"""transformers: a model straight from a compressed folder, in one line, without writing safetensors.

    from dcformat.interop.transformers import from_pretrained
    model = from_pretrained("minilm-dcf/")            # AutoModel; or model_class=AutoModelForCausalLM

The model is built from the folder's config.json with weight initialisation skipped, then filled in
place tensor by tensor from the .dcf files (`interop.torch.load_into`), so peak memory stays near
the model's own size. Needs the `hf` extra: pip install 'dcformat[hf]'.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

from ..errors import DCFError, needs
from .torch import load_into


def from_pretrained(folder: str | os.PathLike, model_class: Any = None, *, dtype: Any = None,
                    threads: int | None = None, **config_kwargs: Any) -> Any:
    """A transformers model (AutoModel unless `model_class` is given) loaded from a dcformat model folder.

    `dtype`: the torch dtype to build the model in (default: the dtype of the file's floating-point
    tensors, as from_pretrained with dtype="auto"). The model is returned in eval mode.
    """
    transformers = needs("transformers", "hf", "loading a transformers model")
    torch = needs("torch", "hf", "loading a transformers model")
    from ..api import open as dcf_open

    folder = os.fspath(folder)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise DCFError(f"{folder}: a transformers model folder needs config.json")
    config = transformers.AutoConfig.from_pretrained(folder, **config_kwargs)
    model_class = model_class or transformers.AutoModel
    with dcf_open(folder) as f:
        if dtype is None:
            floats = [f.layout(n).dtype for n in f.keys() if f.layout(n).dtype.startswith(("float", "bfloat"))]
            dtype = getattr(torch, max(set(floats), key=floats.count)) if floats else torch.float32
        from transformers.initialization import no_init_weights

        with no_init_weights():  # every weight is about to be overwritten: skip the random init
            model = model_class.from_config(config, dtype=dtype)
        names = set(model.state_dict())
        result = load_into(model, f, strict=False, threads=threads)
    missing = [n for n in result.missing if n in names]
    tied = set()
    if missing:
        model.tie_weights()
        tied = {n for n in missing if _is_tied(model, n)}
    untied = [n for n in missing if n not in tied and not _is_buffer(model, n)]
    if untied:
        raise DCFError(f"{folder}: the model has {len(untied)} weights the files do not hold: {untied[:5]}")
    ignored = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    buffers = dict(model.named_buffers())  # non-persistent buffers (position ids) the model computes itself
    unexpected = [n for n in result.unexpected if n not in buffers and not any(p.search(n) for p in ignored)]
    if unexpected:  # as transformers does: a warning, not an error
        warnings.warn(f"{folder}: {len(unexpected)} tensors of the files are not used by {type(model).__name__}: "
                      f"{unexpected[:5]}", stacklevel=2)
    model.eval()
    return model


def _is_tied(model: Any, name: str) -> bool:
    """True when `name` shares its storage with another parameter (tie_weights, e.g. lm_head)."""
    sd = model.state_dict()
    ptr = sd[name].untyped_storage().data_ptr()
    return any(k != name and v.untyped_storage().data_ptr() == ptr for k, v in sd.items())


def _is_buffer(model: Any, name: str) -> bool:
    """A buffer the model computes itself (position ids, rotary tables) rather than loads."""
    return name in dict(model.named_buffers())
