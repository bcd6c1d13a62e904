"""dcformat's errors: one base class (a ValueError) and a few named subclasses.

Every error raised while reading a file is a :class:`DCFError`; where it applies, the message names
the tensor and the byte offset, which are also kept as the ``tensor`` and ``offset`` attributes.
"""

from __future__ import annotations

from typing import Any


class DCFError(ValueError):
    """Base class of every error dcformat raises about a file, a stream or an argument."""

    def __init__(self, message: str, *, tensor: str | None = None, offset: int | None = None):
        self.tensor = tensor
        self.offset = offset
        where = []
        if tensor is not None:
            where.append(f"tensor {tensor!r}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class FormatError(DCFError):
    """The file is not a dcformat file, or its structure breaks the spec (magic, layout, header)."""


class VersionError(FormatError):
    """The file's major version is one this reader does not implement."""


class TruncatedError(FormatError):
    """The file is shorter than its own structure says."""


class HeaderError(FormatError):
    """The JSON header is malformed, has unknown or wrongly typed keys, or inconsistent values."""


class ChecksumError(DCFError):
    """A CRC-32 does not match: the header or a named section is corrupted."""


class TableError(DCFError):
    """An entropy coder's table is invalid (§6.2 Huffman code lengths, §6.4 rANS frequencies)."""


class HuffmanTableError(TableError):
    """A Huffman table is not a valid canonical prefix code within the maximum length."""


class FrequencyTableError(TableError):
    """A rANS frequency table is not 1..65,536 groups of 4 hex digits adding up to 2^15 (§6.4)."""


class CorruptDataError(DCFError):
    """A data stream does not decode: bad codeword, overrun, index out of range, position past the end."""


class LimitError(DCFError):
    """The file asks for more than a configured limit allows (header size, tensors, decoded bytes)."""


class EncodeError(DCFError):
    """The input cannot be encoded as asked (unsupported dtype, bad policy or parameter)."""


class OutputExistsError(DCFError):
    """The output exists and overwriting it was not asked for (`overwrite=True`, the CLI's --force)."""


class SameFileError(DCFError):
    """The output is the input, or lies inside the input folder (or holds it): refused whatever `overwrite` says."""


class MissingExtraError(DCFError, ImportError):
    """An optional dependency is needed for this input or output; the message names the extra to install.
    Also an ImportError whose `name` is the missing module, as a failed import would be."""


def needs(module: str, extra: str, what: str) -> Any:
    """Import `module`, or raise MissingExtraError: "<what> needs <module>: pip install 'dcformat[<extra>]'"."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        error = MissingExtraError(f"{what} needs {module}: pip install 'dcformat[{extra}]'")
        error.name = module
        raise error from None
