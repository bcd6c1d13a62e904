"""dcformat: a compressed neural-network model format (Deep Compression) and its codec.

    import dcformat
    dcformat.save_file({"fc1.weight": w}, "model.dcf", policy=dcformat.Policy(prune=0.9))
    tensors = dcformat.load_file("model.dcf")
    with dcformat.open("model.dcf") as f:
        print(f.keys(), f.metadata)

Importing the package is light: numba is loaded on the first encode or decode.
"""

from .api import SafeOpen, compress, load, load_file, load_into, open, save, save_file
from .container import Limits, read_header
from .errors import (
    ChecksumError,
    CorruptDataError,
    DCFError,
    EncodeError,
    FormatError,
    FrequencyTableError,
    HeaderError,
    HuffmanTableError,
    LimitError,
    TableError,
    TruncatedError,
    VersionError,
)
from .interop.formats import read_tensors, write_tensors
from .interop.torch import load_torch, save_torch
from .policy import Policy

__version__ = "0.1.0"


def __getattr__(name: str):
    """`dcformat.fit` on first use (it loads numba): callable as fit(model, inputs, min_similarity=...)."""
    if name == "fit":
        import importlib

        return importlib.import_module(".fit", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ChecksumError", "CorruptDataError", "DCFError", "EncodeError", "FormatError", "FrequencyTableError",
    "HeaderError", "HuffmanTableError", "LimitError", "TableError", "Limits", "Policy", "SafeOpen", "TruncatedError", "VersionError",
    "compress", "fit", "load", "load_file", "load_into", "load_torch", "open", "read_header", "read_tensors", "save", "save_file", "save_torch", "write_tensors",
]
