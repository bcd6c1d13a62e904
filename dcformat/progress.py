"""Progress reports of long operations, as plain events: the library emits them, the CLI draws them.

A callback `progress(event)` receives a `ProgressEvent` whenever work advances: before a tensor
starts (so a bar can name the tensor being coded, not the previous one) and after it is done, with
the bytes done so far out of the total. Library code never prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long operation."""

    stage: str  # what is being done: "compress", "decompress", "load", "search", "verify", ...
    done_bytes: int  # input bytes finished so far
    total_bytes: int  # input bytes in all (0 when unknown)
    tensor: str | None = None  # the tensor being worked on now, if any
    shard: str | None = None  # the file being read or written now, if any
    message: str | None = None  # a free line for searches ("step 0.004: 9.8 MB")


Progress = Callable[[ProgressEvent], None]
