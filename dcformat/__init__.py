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
    HeaderError,
    HuffmanTableError,
    LimitError,
    TruncatedError,
    VersionError,
)
from .interop.formats import read_tensors, write_tensors
from .interop.torch import load_torch, save_torch
from .policy import Policy

__version__ = "0.1.0"

__all__ = [
    "ChecksumError", "CorruptDataError", "DCFError", "EncodeError", "FormatError", "HeaderError",
    "HuffmanTableError", "LimitError", "Limits", "Policy", "SafeOpen", "TruncatedError", "VersionError",
    "compress", "load", "load_file", "load_into", "load_torch", "open", "read_header", "read_tensors", "save", "save_file", "save_torch", "write_tensors",
]
