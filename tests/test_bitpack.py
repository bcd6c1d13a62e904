"""Tests of fixed-width packing (spec §1 bit order, §6.1) against a bit-by-bit reference."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dcformat.bitpack as bitpack_module
from dcformat.bitpack import pack, packed_size, unpack
from dcformat.errors import CorruptDataError, DCFError, EncodeError

# --------------------------------------------------------------------------- plain-Python reference


def bits_to_bytes(bits: list[int]) -> bytes:
    """Pack a bit list LSB first (§1): bit i goes to bit i % 8 of byte i // 8; zero padding."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def bytes_to_bits(buf: bytes) -> list[int]:
    """The stream bits of `buf`, LSB of byte 0 first (§1)."""
    return [(byte >> k) & 1 for byte in bytes(buf) for k in range(8)]


def ref_pack(symbols, width: int) -> bytes:
    """Each symbol as `width` bits, its bit 0 first (§1 w-bit value)."""
    bits: list[int] = []
    for s in symbols:
        bits.extend((int(s) >> k) & 1 for k in range(width))
    return bits_to_bytes(bits)


def ref_unpack(buf: bytes, count: int, width: int, alphabet: int):
    """Reference reader: a symbol list, or an error tuple in the order the real reader checks."""
    if len(buf) != (count * width + 7) // 8:
        return ("length",)
    bits = bytes_to_bits(buf)
    out = []
    for i in range(count):
        v = sum(bits[i * width + k] << k for k in range(width))
        if v >= alphabet:
            return ("symbol", i, v)
        out.append(v)
    if any(bits[count * width :]):
        return ("padding",)
    return out


def check_fast_unpack(expected, buf: bytes, count: int, width: int, alphabet: int) -> None:
    """The fast kernel alone: True exactly when the reference decodes, and then the same symbols.

    unpack() falls back to the exact kernel when the fast one fails, so without this check a fast
    kernel that rejected valid streams would only be slow, never wrong.
    """
    out = np.full(count, 0xFFFF, dtype=np.uint16)
    ok = bitpack_module._unpack_fast(np.frombuffer(buf, dtype=np.uint8), width, alphabet, out)
    assert ok == isinstance(expected, list)
    if ok:
        assert out.tolist() == expected


@st.composite
def packed_cases(draw, max_count: int = 200):
    """(symbols, width): every width 1..16, empty and one-symbol streams, values up to 2**width - 1."""
    width = draw(st.integers(1, 16))
    top = (1 << width) - 1
    values = st.one_of(st.integers(0, top), st.sampled_from([0, top]))
    symbols = draw(st.lists(values, min_size=0, max_size=max_count))
    return np.array(symbols, dtype=np.uint16), width


# --------------------------------------------------------------------------- spec examples


def test_spec_5_3_gaps_example():
    gaps = np.array([3, 2, 3, 3, 0], dtype=np.uint16)
    assert pack(gaps, 2) == bytes([0xFB, 0x00])
    assert unpack(bytes([0xFB, 0x00]), 5, 2, 4).tolist() == [3, 2, 3, 3, 0]


def test_spec_5_3_indices_example():
    indices = np.array([0, 2, 0, 0, 1], dtype=np.uint16)
    assert pack(indices, 2) == bytes([0x08, 0x01])
    assert unpack(bytes([0x08, 0x01]), 5, 2, 3).tolist() == [0, 2, 0, 0, 1]


def test_width_4_puts_even_symbols_in_low_nibble():
    assert pack(np.array([0x1, 0x2, 0x3], dtype=np.uint16), 4) == bytes([0x21, 0x03])


def test_width_8_and_16_are_plain_little_endian():
    s = np.array([0, 1, 255, 128], dtype=np.uint16)
    assert pack(s, 8) == bytes([0, 1, 255, 128])
    s16 = np.array([0x1234, 0xFFFF, 0], dtype=np.uint16)
    assert pack(s16, 16) == s16.astype("<u2").tobytes()
    assert unpack(s16.astype("<u2").tobytes(), 3, 16, 1 << 16).tolist() == [0x1234, 0xFFFF, 0]


# --------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(packed_cases())
def test_pack_matches_reference_and_round_trips(case):
    symbols, width = case
    buf = pack(symbols, width)
    assert isinstance(buf, bytes)
    assert buf == ref_pack(symbols, width)
    assert len(buf) == packed_size(symbols.size, width)
    out = unpack(buf, symbols.size, width, 1 << width)
    assert out.dtype == np.uint16 and out.shape == symbols.shape
    assert np.array_equal(out, symbols)
    check_fast_unpack(symbols.tolist(), buf, symbols.size, width, 1 << width)
    if symbols.size and int(symbols.max()) > 0:
        # the largest symbol one past the alphabet: the fast kernel must notice, wherever it is
        check_fast_unpack(ref_unpack(buf, symbols.size, width, int(symbols.max())), buf, symbols.size, width,
                          int(symbols.max()))


@pytest.mark.parametrize("width", range(1, 17))
def test_every_width_round_trips(width):
    rng = np.random.default_rng(width)
    for count in (0, 1, 2, 7, 8, 9, 63, 64, 65, 1000):
        symbols = rng.integers(0, 1 << width, size=count).astype(np.uint16)
        symbols[: min(count, 2)] = (1 << width) - 1  # the all-ones value in every width
        buf = pack(symbols, width)
        assert buf == ref_pack(symbols, width)
        assert np.array_equal(unpack(buf, count, width, 1 << width), symbols)


@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(1, 16),
    count=st.integers(0, 60),
    alphabet=st.integers(1, 1 << 16),
    data=st.data(),
)
def test_unpack_of_arbitrary_bytes_matches_reference(width, count, alphabet, data):
    """Any bytes of the right length: same symbols as the reference, or the same error it finds first."""
    size = packed_size(count, width)
    buf = data.draw(st.binary(min_size=size, max_size=size))
    expected = ref_unpack(buf, count, width, alphabet)
    check_fast_unpack(expected, buf, count, width, alphabet)
    if isinstance(expected, list):
        assert unpack(buf, count, width, alphabet).tolist() == expected
        return
    with pytest.raises(CorruptDataError) as info:
        unpack(buf, count, width, alphabet)
    if expected[0] == "symbol":
        assert f"symbol {expected[1]} has value {expected[2]}" in str(info.value)
    else:
        assert "padding bits" in str(info.value)


@settings(max_examples=100, deadline=None)
@given(packed_cases(max_count=50))
def test_unpack_accepts_any_bytes_like(case):
    symbols, width = case
    buf = pack(symbols, width)
    for view in (buf, bytearray(buf), memoryview(buf), np.frombuffer(buf, dtype=np.uint8).copy()):
        assert np.array_equal(unpack(view, symbols.size, width, 1 << width), symbols)


def test_pack_accepts_other_integer_dtypes():
    for dtype in (np.uint8, np.int32, np.int64, np.uint64):
        s = np.array([1, 0, 3, 2], dtype=dtype)
        assert pack(s, 2) == pack(s.astype(np.uint16), 2)


def test_packed_size():
    assert packed_size(0, 16) == 0
    assert packed_size(1, 1) == 1
    assert packed_size(8, 1) == 1
    assert packed_size(9, 1) == 2
    assert packed_size(5, 2) == 2
    assert packed_size(3, 11) == 5
    assert packed_size(10**15, 16) == 2 * 10**15  # exact integers (§1)


def test_large_stream_round_trips():
    rng = np.random.default_rng(7)
    symbols = rng.integers(0, 1 << 13, size=300_001).astype(np.uint16)
    buf = pack(symbols, 13)
    assert buf[:1000] == ref_pack(symbols[:616], 13)[:1000]  # 616 * 13 bits cover 1001 bytes
    assert np.array_equal(unpack(buf, symbols.size, 13, 1 << 13), symbols)


# --------------------------------------------------------------------------- error paths


def test_symbol_too_wide_for_width():
    with pytest.raises(EncodeError, match=r"symbol 4 at index 2 does not fit in 2 bits"):
        pack(np.array([0, 3, 4, 1], dtype=np.uint16), 2)


@pytest.mark.parametrize("width", [0, 17, -1, 2.0, True])
def test_bad_width(width):
    with pytest.raises(EncodeError, match="width"):
        pack(np.zeros(3, dtype=np.uint16), width)
    with pytest.raises(DCFError, match="width"):
        unpack(b"\x00", 1, width, 2)


def test_pack_rejects_bad_symbol_arrays():
    with pytest.raises(EncodeError, match="symbol -1 at index 1"):
        pack(np.array([0, -1]), 4)
    with pytest.raises(EncodeError, match="65536"):
        pack(np.array([65536]), 16)
    with pytest.raises(EncodeError, match="integers"):
        pack(np.array([0.5]), 4)
    with pytest.raises(EncodeError, match="1-D"):
        pack(np.zeros((2, 2), dtype=np.uint16), 4)


def test_truncated_buffer():
    with pytest.raises(CorruptDataError, match=r"needs 2 bytes, got 1"):
        unpack(bytes([0xFB]), 5, 2, 4)


def test_extra_bytes():
    with pytest.raises(CorruptDataError, match=r"needs 2 bytes, got 3"):
        unpack(bytes([0xFB, 0x00, 0x00]), 5, 2, 4)
    with pytest.raises(CorruptDataError, match=r"needs 0 bytes, got 1"):
        unpack(b"\x00", 0, 7, 4)


def test_nonzero_padding():
    # 5 symbols of 2 bits use bits 0-1 of byte 1; bit 2 is padding
    with pytest.raises(CorruptDataError, match=r"padding bits of the last byte \(byte 1\) are not zero"):
        unpack(bytes([0xFB, 0x04]), 5, 2, 4)
    with pytest.raises(CorruptDataError, match="padding"):
        unpack(bytes([0x80]), 1, 3, 8)


def test_symbol_not_below_alphabet():
    with pytest.raises(CorruptDataError, match=r"symbol 1 has value 2, not below the alphabet size 2"):
        unpack(bytes([0x08, 0x01]), 5, 2, 2)
    with pytest.raises(CorruptDataError, match=r"symbol 0 has value 65535"):
        unpack(b"\xff\xff", 1, 16, 65535)


def test_bad_count_and_alphabet():
    with pytest.raises(CorruptDataError, match="negative"):
        unpack(b"", -1, 2, 4)
    with pytest.raises(CorruptDataError, match="alphabet size 0"):
        unpack(b"", 0, 2, 0)
    with pytest.raises(CorruptDataError, match="alphabet size 65537"):
        unpack(b"", 0, 2, 65537)


def test_empty_stream():
    assert pack(np.zeros(0, dtype=np.uint16), 5) == b""
    out = unpack(b"", 0, 5, 1)
    assert out.dtype == np.uint16 and out.size == 0


def test_kernels_stay_in_bounds_with_numba_boundscheck(tmp_path):
    """Fuzz unpack with bounds checking compiled in: any out-of-bounds access would raise IndexError."""
    script = textwrap.dedent(
        """
        import numpy as np
        from dcformat.bitpack import pack, unpack
        from dcformat.errors import CorruptDataError
        rng = np.random.default_rng(1)
        for trial in range(3000):
            width = int(rng.integers(1, 17))
            count = int(rng.integers(0, 40))
            size = (count * width + 7) // 8 + int(rng.integers(-1, 2)) * (trial % 3 == 0)
            buf = rng.integers(0, 256, size=max(size, 0)).astype(np.uint8).tobytes()
            try:
                unpack(buf, count, width, int(rng.integers(1, 1 << width)))
            except CorruptDataError:
                pass
            s = rng.integers(0, 1 << width, size=count).astype(np.uint16)
            assert np.array_equal(unpack(pack(s, width), count, width, 1 << width), s)
        print("ok")
        """
    )
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
