"""Helpers to take dcformat files apart and put them back together, for malformed-file tests."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any, Callable

from dcformat import constants as K


def split(data: bytes) -> tuple[dict[str, Any], int]:
    """The header document and header length of a file (a zlib header decompressed, spec §2.2); the
    helpers below write the document back as JSON text."""
    n = struct.unpack_from("<Q", data, 16)[0]
    raw = data[K.PREAMBLE_SIZE : K.PREAMBLE_SIZE + n]
    if raw[:1] == bytes([K.ZLIB_HEADER_CMF]):
        raw = zlib.decompressobj().decompress(raw)
    return json.loads(raw), n


def with_header(data: bytes, mutate: Callable[[dict], Any]) -> bytes:
    """The file with its header document changed by `mutate`, with a correct header CRC and file
    length. The header keeps its length when the new text fits; otherwise it grows by multiples of
    64 bytes and every section offset moves by as much (so a deliberately wrong offset stays wrong
    by the same amount)."""
    doc, n = split(data)
    mutate(doc)
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) <= n:
        return with_header_text(data, text, n)
    delta = 0
    while True:
        delta += 64
        shifted = _shift_offsets(doc, delta)
        text = json.dumps(shifted, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= n + delta:
            body = data[K.PREAMBLE_SIZE + n :]
            return with_header_text(data[: K.PREAMBLE_SIZE + n] + b"\0" * delta + body, text, n + delta)


def _shift_offsets(obj: Any, delta: int) -> Any:
    if isinstance(obj, dict):
        out = {k: _shift_offsets(v, delta) for k, v in obj.items()}
        if set(obj) == {"offset", "length", "crc32"} and isinstance(obj["offset"], int):
            out["offset"] = obj["offset"] + delta
        return out
    if isinstance(obj, list):
        return [_shift_offsets(v, delta) for v in obj]
    return obj


def with_header_text(data: bytes, text: bytes, n: int | None = None) -> bytes:
    """The file with raw header text (padded with spaces to the old length when it fits)."""
    old = struct.unpack_from("<Q", data, 16)[0]
    n = old if n is None else n
    if n > old:  # the caller already inserted the extra header bytes into `data`
        old = n
    if len(text) > n:
        raise ValueError("new header text does not fit the old header length")
    text = text + b" " * (n - len(text))
    body = data[K.PREAMBLE_SIZE + old :]
    total = K.PREAMBLE_SIZE + n + len(body)
    pre = struct.pack(K.PREAMBLE_FORMAT, K.MAGIC, K.VERSION_MAJOR, K.VERSION_MINOR, zlib.crc32(text), n, total)
    return pre + text + body


def with_preamble(data: bytes, **fields: int | bytes) -> bytes:
    """The file with preamble fields replaced (magic, major, minor, header_crc, header_length, file_length)."""
    names = ["magic", "major", "minor", "header_crc", "header_length", "file_length"]
    values = dict(zip(names, struct.unpack_from(K.PREAMBLE_FORMAT, data, 0)))
    values.update(fields)
    return struct.pack(K.PREAMBLE_FORMAT, *(values[k] for k in names)) + data[K.PREAMBLE_SIZE :]


def poke(data: bytes, offset: int, value: bytes) -> bytes:
    """The file with bytes overwritten at offset."""
    return data[:offset] + value + data[offset + len(value) :]


def resection(data: bytes, tensor: int, key: str, payload: bytes, *, stream: bool = False) -> bytes:
    """Replace one section's bytes (same length) and fix its CRC in the header."""
    doc, _ = split(data)
    obj = doc["tensors"][tensor][key]
    sec = obj["section"] if stream else obj
    assert len(payload) == sec["length"]
    out = poke(data, sec["offset"], payload)

    def fix(d):
        o = d["tensors"][tensor][key]
        (o["section"] if stream else o)["crc32"] = zlib.crc32(payload)

    return with_header(out, fix)


def file_with_header_text(text: bytes) -> bytes:
    """A file of just a preamble and this header text (padded to 64 bytes), no sections."""
    n = -(-(K.PREAMBLE_SIZE + len(text)) // 64) * 64 - K.PREAMBLE_SIZE
    text = text + b" " * (n - len(text))
    pre = struct.pack(K.PREAMBLE_FORMAT, K.MAGIC, K.VERSION_MAJOR, K.VERSION_MINOR, zlib.crc32(text), n, K.PREAMBLE_SIZE + n)
    return pre + text
