"""Tests of canonical length-limited Huffman coding (spec §6.2, §6.3) against plain-Python references."""

from __future__ import annotations

import heapq
import itertools
import math
import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest
from bitarray import bitarray
from bitarray.util import canonical_decode, canonical_huffman
from hypothesis import given, settings
from hypothesis import strategies as st

import dcformat.huffman as huffman_module
from dcformat.errors import CorruptDataError, EncodeError, HuffmanTableError
from dcformat.huffman import (
    canonical_codes,
    code_lengths,
    decode,
    encode,
    encoded_bits,
    lengths_from_hex,
    lengths_to_hex,
    validate_lengths,
)

# --------------------------------------------------------------------------- plain-Python reference


def bits_to_bytes(bits: list[int]) -> bytes:
    """Pack a bit list LSB first (§1), zero padding in the last byte."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def bytes_to_bits(buf: bytes) -> list[int]:
    """Stream bits of `buf`, LSB of byte 0 first (§1)."""
    return [(byte >> k) & 1 for byte in bytes(buf) for k in range(8)]


def ref_codes(lengths) -> dict[int, tuple[int, int]]:
    """§6.2 canonical codewords, textbook style: symbol -> (code, length)."""
    used = sorted((int(length), s) for s, length in enumerate(lengths) if length)
    codes: dict[int, tuple[int, int]] = {}
    code = 0
    prev = used[0][0]
    for k, (length, s) in enumerate(used):
        if k:
            code = (code + 1) << (length - prev)
        codes[s] = (code, length)
        prev = length
    return codes


def kraft(lengths) -> Fraction:
    """Kraft sum of the used code lengths."""
    return sum((Fraction(1, 2 ** int(v)) for v in lengths if v), Fraction(0))


def ref_encode(symbols, lengths, block_size: int) -> tuple[bytes, list[int]]:
    """Blocks of codewords, each written MSB of the code first, padded to a byte (§6.3)."""
    codes = ref_codes(lengths)
    out = bytearray()
    sizes = []
    symbols = [int(s) for s in symbols]
    for start in range(0, len(symbols), block_size):
        bits: list[int] = []
        for s in symbols[start : start + block_size]:
            code, length = codes[s]
            bits.extend((code >> (length - 1 - k)) & 1 for k in range(length))
        block = bits_to_bytes(bits)
        out += block
        sizes.append(len(block))
    return bytes(out), sizes


def ref_decode(buf: bytes, count: int, lengths, block_size: int, block_bytes: list[int]):
    """Bit-by-bit reader: the symbols, or the first error as a tuple, checked in the real reader's order."""
    nblocks = -(-count // block_size)
    if len(block_bytes) != nblocks:
        return ("nblocks",)
    if sum(block_bytes) != len(buf):
        return ("sum",)
    codes = {(length, code): s for s, (code, length) in ref_codes(lengths).items()}
    max_len = max(int(v) for v in lengths)
    min_len = min(int(v) for v in lengths if v)
    starts = [sum(block_bytes[:b]) for b in range(nblocks)]
    for b in range(nblocks):
        n = min(block_size, count - b * block_size)
        if n * min_len > 8 * block_bytes[b]:
            return ("capacity", b, starts[b], starts[b] + block_bytes[b])
    out = []
    for b in range(nblocks):
        n = min(block_size, count - b * block_size)
        where = (b, starts[b], starts[b] + block_bytes[b])
        bits = bytes_to_bits(buf[starts[b] : starts[b] + block_bytes[b]])
        p = 0
        for j in range(n):
            code = length = 0
            while (length, code) not in codes:
                if length >= max_len:
                    return ("invalid", *where, b * block_size + j)
                if p >= len(bits):
                    return ("out_of_bits", *where, b * block_size + j)
                code = 2 * code + bits[p]
                p += 1
                length += 1
            out.append(codes[(length, code)])
        if len(bits) - p > 7:
            return ("leftover", *where, len(bits) - p)
        if any(bits[p:]):
            return ("padding", *where)
    return out


def expected_message(err: tuple) -> str:
    """The fragment of decode's message for a reference error."""
    kind = err[0]
    if kind == "nblocks":
        return "block sizes given"
    if kind == "sum":
        return "block sizes sum to"
    block, start, end = err[1:4]
    head = f"Huffman block {block} (section bytes {start}..{end}): "
    return head + {
        "capacity": "",
        "invalid": f"invalid codeword at symbol {err[-1]}",
        "out_of_bits": f"ran out of bits at symbol {err[-1]}",
        "leftover": f"{err[-1]} bits left over",
        "padding": "non-zero padding bits",
    }[kind]


def check_decode_like_reference(buf: bytes, count: int, lengths, block_size: int, block_bytes: list[int]):
    """decode (serial, parallel, narrow and wide lookup tables) must return what the reference returns."""
    expected = ref_decode(buf, count, lengths, block_size, block_bytes)
    narrow = huffman_module._NARROW_TABLE_MAX_SYMBOLS
    try:
        for parallel, wide in itertools.product((False, True), (False, True)):
            # a wide (uint32) table is what tables of more than 4096 symbols use; force it on small ones too
            huffman_module._NARROW_TABLE_MAX_SYMBOLS = 0 if wide else narrow
            check_one_decode(expected, buf, count, lengths, block_size, block_bytes, parallel)
            check_fast_decoder(expected, buf, count, lengths, block_size, block_bytes, parallel)
    finally:
        huffman_module._NARROW_TABLE_MAX_SYMBOLS = narrow
    return expected


def check_fast_decoder(expected, buf, count, lengths, block_size, block_bytes, parallel):
    """The fast kernel alone: valid exactly when the reference decodes, and then the same symbols.

    decode() falls back to the exact decoder whenever the fast one fails, so without this check a fast
    decoder that rejected valid streams would only be slow, never wrong.
    """
    if isinstance(expected, tuple) and expected[0] in ("nblocks", "sum", "capacity"):
        return  # rejected by the Python checks before any kernel runs
    if count == 0:
        return
    data = np.frombuffer(bytes(buf), dtype=np.uint8)
    sizes = np.asarray(block_bytes, dtype=np.int64)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    table, max_len, multi = huffman_module._decode_tables(lengths)
    kernel = huffman_module._decode_fast_parallel if parallel else huffman_module._decode_fast
    out = np.full(count, 0xFFFF, dtype=np.uint16)
    ok = kernel(data, starts, ends, multi, table, max_len, block_size, out)
    assert ok == isinstance(expected, list)
    if ok:
        assert out.tolist() == expected


def ref_multi_table(lengths, bits: int) -> np.ndarray:
    """The fast decoder's table, textbook style: read up to 3 whole codewords from each `bits`-bit value.

    Value v stands for the next `bits` stream bits, the first in bit 0 (§1). Entry: symbols in bits
    16..31, 32..47, 48..63, their count in bits 6..7, their total length in bits 0..5; 0 when the first
    codeword does not fit (or is invalid).
    """
    codes = {(length, code): s for s, (code, length) in ref_codes(lengths).items()}
    table = np.zeros(1 << bits, dtype=np.uint64)
    for v in range(1 << bits):
        stream = [(v >> k) & 1 for k in range(bits)]
        p = 0
        found = []
        while len(found) < 3:
            code = length = 0
            while (length, code) not in codes and p + length < bits and length < 15:
                code = 2 * code + stream[p + length]
                length += 1
            if (length, code) not in codes:
                break
            found.append(codes[(length, code)])
            p += length
        entry = 0
        for k, s in enumerate(found):
            entry |= s << (16 + 16 * k)
        if found:
            entry |= p | (len(found) << 6)
        table[v] = entry
    return table


def check_one_decode(expected, buf, count, lengths, block_size, block_bytes, parallel):
    """One decode call against the reference outcome (symbols, or error class and message fragment)."""
    if isinstance(expected, list):
        out = decode(buf, count, lengths, block_size, block_bytes, parallel=parallel)
        assert out.dtype == np.uint16
        assert out.tolist() == expected
    else:
        with pytest.raises(CorruptDataError) as info:
            decode(buf, count, lengths, block_size, block_bytes, parallel=parallel)
        assert expected_message(expected) in str(info.value)


def textbook_huffman(weights: list[int]) -> tuple[int, int]:
    """(cost, depth) of a plain Huffman code built with a heap; cost = sum of merged weights."""
    if len(weights) == 1:
        return weights[0], 1
    heap = [(w, 0, i) for i, w in enumerate(weights)]  # (weight, subtree depth, tiebreak)
    heapq.heapify(heap)
    cost, tiebreak = 0, len(weights)
    while len(heap) > 1:
        w1, d1, _ = heapq.heappop(heap)
        w2, d2, _ = heapq.heappop(heap)
        cost += w1 + w2
        heapq.heappush(heap, (w1 + w2, max(d1, d2) + 1, tiebreak))
        tiebreak += 1
    return cost, heap[0][1]


def brute_force_cost(weights: list[int], max_length: int) -> int:
    """Minimum of sum(w * L) over all prefix codes with lengths <= max_length (small inputs only)."""
    w = sorted(weights, reverse=True)  # an optimal code gives longer codes to rarer symbols
    top = min(max_length, len(w) - 1)  # an optimal code is never deeper than n - 1
    best = None
    for lens in itertools.combinations_with_replacement(range(1, top + 1), len(w)):
        if sum(Fraction(1, 2**v) for v in lens) <= 1:
            cost = sum(a * b for a, b in zip(w, lens))
            best = cost if best is None else min(best, cost)
    return best


def cost(counts, lengths) -> int:
    return sum(int(c) * int(v) for c, v in zip(counts, lengths))


# --------------------------------------------------------------------------- strategies


@st.composite
def streams(draw, max_count: int = 300, max_alphabet: int = 300):
    """(symbols, lengths, block_size): uniform, skewed, one- and two-symbol streams and tables."""
    alphabet = draw(st.integers(1, max_alphabet))
    count = draw(st.integers(0, max_count))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["uniform", "skewed", "one", "two"]))
    if kind == "uniform":
        symbols = rng.integers(0, alphabet, size=count)
    elif kind == "skewed":
        p = draw(st.floats(0.05, 0.95))
        symbols = np.minimum(rng.geometric(p, size=count) - 1, alphabet - 1)
    elif kind == "one":
        symbols = np.full(count, rng.integers(0, alphabet))
    else:
        pair = rng.integers(0, alphabet, size=2)
        symbols = pair[(rng.random(count) < draw(st.floats(0.0, 1.0))).astype(int)]
    symbols = symbols.astype(np.uint16)
    counts = np.bincount(symbols, minlength=alphabet)
    # the table may also give codes to symbols the stream never uses (a shared table, §3)
    extra = draw(st.lists(st.integers(0, alphabet - 1), max_size=4))
    counts[extra] += 1
    if not counts.any():
        counts[rng.integers(0, alphabet)] = 1
    used = int(np.count_nonzero(counts))
    max_length = draw(st.integers(max(1, math.ceil(math.log2(used))), 15))
    lengths = code_lengths(counts, max_length)
    block_size = draw(st.one_of(st.integers(1, 8), st.integers(1, max_count + 50)))
    return symbols, lengths, block_size


@st.composite
def count_arrays(draw, max_symbols: int = 40):
    """Symbol counts with zeros, ties and skew, and a max_length at least the minimum possible."""
    size = draw(st.integers(1, max_symbols))
    counts = draw(
        st.lists(
            st.one_of(st.just(0), st.integers(1, 5), st.integers(1, 1000), st.integers(1, 10**9)),
            min_size=size,
            max_size=size,
        )
    )
    if not any(counts):
        counts[draw(st.integers(0, size - 1))] = draw(st.integers(1, 100))
    used = sum(1 for c in counts if c)
    max_length = draw(st.integers(max(1, math.ceil(math.log2(used))), 15))
    return np.array(counts, dtype=np.int64), max_length


# --------------------------------------------------------------------------- spec §6.2 worked example


def test_spec_6_2_example_lengths_codes_and_bytes():
    counts = np.array([10, 1, 1, 2])
    lengths = code_lengths(counts)
    assert lengths.dtype == np.uint8
    assert lengths.tolist() == [1, 3, 3, 2]
    assert lengths_to_hex(lengths) == "1332"
    assert lengths_from_hex("1332").tolist() == [1, 3, 3, 2]
    codes = canonical_codes(lengths)
    assert codes.dtype == np.uint32
    assert codes.tolist() == [0b0, 0b110, 0b111, 0b10]
    stream = np.array([0, 3, 1, 0, 2], dtype=np.uint16)
    buf, block_bytes = encode(stream, lengths, 65536)
    assert buf == bytes([0x9A, 0x03])
    assert block_bytes == [2]
    assert decode(bytes([0x9A, 0x03]), 5, lengths, 65536, [2]).tolist() == [0, 3, 1, 0, 2]
    assert ref_encode(stream, lengths, 65536) == (bytes([0x9A, 0x03]), [2])


def test_spec_6_2_example_in_small_blocks():
    lengths = lengths_from_hex("1332")
    stream = np.array([0, 3, 1, 0, 2], dtype=np.uint16)
    buf, block_bytes = encode(stream, lengths, 2)
    # blocks "0 10", "110 0", "111": each padded to its own byte
    assert buf == bytes([0b010, 0b0011, 0b111])
    assert block_bytes == [1, 1, 1]
    assert decode(buf, 5, lengths, 2, block_bytes).tolist() == [0, 3, 1, 0, 2]


# --------------------------------------------------------------------------- code lengths


@settings(max_examples=300, deadline=None)
@given(count_arrays())
def test_code_lengths_valid_limited_and_optimal(case):
    counts, max_length = case
    lengths = code_lengths(counts, max_length)
    assert lengths.dtype == np.uint8 and lengths.shape == counts.shape
    assert np.array_equal(lengths > 0, counts > 0)  # zero counts, and only they, get length 0
    assert int(lengths.max()) <= max_length
    validate_lengths(lengths)
    used = counts[counts > 0].tolist()
    if len(used) == 1:
        assert lengths.max() == 1
        return
    assert kraft(lengths) == 1
    huff_cost, huff_depth = textbook_huffman(used)
    ours = cost(counts, lengths)
    assert ours >= huff_cost
    if huff_depth <= max_length:
        assert ours == huff_cost  # the limit does not bind: as good as plain Huffman
    # rarer symbols never get shorter codes (ties: the smaller symbol value is the rarer one)
    order = np.lexsort((np.arange(counts.size), counts))
    ordered = lengths[order][counts[order] > 0]
    assert np.all(np.diff(ordered.astype(int)) <= 0)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(1, 200), min_size=2, max_size=8),
    st.integers(1, 7),
)
def test_code_lengths_optimal_under_the_limit_by_brute_force(weights, max_length):
    if len(weights) > 2**max_length:
        with pytest.raises(EncodeError, match="cannot all have codes"):
            code_lengths(np.array(weights), max_length)
        return
    lengths = code_lengths(np.array(weights), max_length)
    assert int(lengths.max()) <= max_length
    assert kraft(lengths) == 1
    assert cost(weights, lengths) == brute_force_cost(weights, max_length)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.integers(0, 200), st.integers(1, 10_000), min_size=2, max_size=60))
def test_code_lengths_cost_equals_bitarray_huffman(freq):
    """bitarray's own Huffman code is optimal too: same total cost when the depth limit does not bind."""
    codedict, _, _ = canonical_huffman(freq)
    counts = np.zeros(max(freq) + 1, dtype=np.int64)
    for s, c in freq.items():
        counts[s] = c
    if max(len(code) for code in codedict.values()) > 15:
        return
    lengths = code_lengths(counts, 15)
    assert cost(counts, lengths) == sum(freq[s] * len(code) for s, code in codedict.items())


def test_code_lengths_deterministic_tie_break():
    assert code_lengths(np.array([1, 1, 1])).tolist() == [2, 2, 1]
    assert code_lengths(np.array([5, 5, 5, 5])).tolist() == [2, 2, 2, 2]
    assert code_lengths(np.array([0, 7, 0])).tolist() == [0, 1, 0]
    assert code_lengths(np.array([3, 0, 9])).tolist() == [1, 0, 1]
    # equal weights: a leaf is taken before a package, so among optimal codes the flatter one wins
    assert code_lengths(np.array([1, 1, 1, 2])).tolist() == [2, 2, 2, 2]
    assert code_lengths(np.array([2, 1, 2, 1])).tolist() == [2, 2, 2, 2]


def test_code_lengths_limit_binds_on_fibonacci_weights():
    fib = [1, 1]
    while len(fib) < 25:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib)
    assert textbook_huffman(fib)[1] == 24  # natural depth far beyond the limit
    for max_length in (5, 8, 12, 15):
        lengths = code_lengths(counts, max_length)
        assert int(lengths.max()) == max_length
        assert kraft(lengths) == 1
    assert cost(counts, code_lengths(counts, 5)) == brute_force_limited_cost_by_dp(fib, 5)


def brute_force_limited_cost_by_dp(weights: list[int], max_length: int) -> int:
    """Optimal length-limited cost by exhaustive search over length histograms (moderate n, small L)."""
    w = sorted(weights, reverse=True)
    n = len(w)
    prefix = [0]
    for x in w:
        prefix.append(prefix[-1] + x)
    best = None

    def search(level: int, placed: int, slots: int, acc: int):
        # `slots` codewords of length `level` are free; put k symbols there, split the rest deeper
        nonlocal best
        if placed == n:
            best = acc if best is None else min(best, acc)
            return
        if level > max_length or slots == 0:
            return
        for k in range(min(slots, n - placed), -1, -1):
            cost_here = level * (prefix[placed + k] - prefix[placed])
            search(level + 1, placed + k, 2 * (slots - k), acc + cost_here)

    search(1, 0, 2, 0)
    return best


def test_code_lengths_large_alphabets():
    rng = np.random.default_rng(3)
    # all 2**15 symbols used with max_length 15: every code has length 15
    assert np.all(code_lengths(np.ones(1 << 15, dtype=np.int64)) == 15)
    # 65,536 counts, skewed, about half used
    counts = (rng.pareto(1.2, size=65536) * 10).astype(np.int64)
    counts[rng.random(65536) < 0.5] = 0
    lengths = code_lengths(counts, 15)
    assert lengths.size == 65536 and int(lengths.max()) <= 15
    assert kraft(lengths) == 1
    huff_cost, depth = textbook_huffman(counts[counts > 0].tolist())
    assert cost(counts, lengths) >= huff_cost
    if depth <= 15:
        assert cost(counts, lengths) == huff_cost
    validate_lengths(lengths)
    assert np.array_equal(lengths_from_hex(lengths_to_hex(lengths)), lengths[: len(lengths_to_hex(lengths))])


def test_code_lengths_errors():
    with pytest.raises(EncodeError, match="no symbol has a non-zero count"):
        code_lengths(np.zeros(5, dtype=np.int64))
    with pytest.raises(EncodeError, match="no symbol has a non-zero count"):
        code_lengths(np.zeros(0, dtype=np.int64))
    with pytest.raises(EncodeError, match="5 used symbols cannot all have codes of at most 2 bits"):
        code_lengths(np.ones(5, dtype=np.int64), 2)
    with pytest.raises(EncodeError, match="32769 used symbols"):
        code_lengths(np.ones(32769, dtype=np.int64))
    with pytest.raises(EncodeError, match="negative"):
        code_lengths(np.array([3, -1]))
    with pytest.raises(EncodeError, match="maximum code length 16"):
        code_lengths(np.array([3, 1]), 16)
    with pytest.raises(EncodeError, match="maximum code length 0"):
        code_lengths(np.array([3, 1]), 0)
    with pytest.raises(EncodeError, match="65537 symbol counts"):
        code_lengths(np.ones(65537, dtype=np.int64))
    with pytest.raises(EncodeError, match="too large"):
        code_lengths(np.array([2**62, 1], dtype=np.uint64))


# --------------------------------------------------------------------------- tables


@settings(max_examples=200, deadline=None)
@given(count_arrays(max_symbols=60))
def test_canonical_codes_match_reference(case):
    lengths = code_lengths(*case)
    codes = canonical_codes(lengths)
    ref = ref_codes(lengths)
    for s, length in enumerate(lengths):
        if length:
            assert (int(codes[s]), int(length)) == ref[s]
        else:
            assert codes[s] == 0
    # prefix-free: no codeword is the prefix of another
    words = sorted(format(code, f"0{length}b") for code, length in ref.values())
    assert all(not b.startswith(a) for a, b in zip(words, words[1:]))


@settings(max_examples=200, deadline=None)
@given(count_arrays(max_symbols=60), st.integers(0, 5))
def test_hex_round_trip(case, trailing_zeros):
    lengths = code_lengths(*case)
    text = lengths_to_hex(np.concatenate([lengths, np.zeros(trailing_zeros, np.uint8)]))
    assert text == text.lower() and len(text) >= 1 and text[-1] != "0"
    assert text == "".join("0123456789abcdef"[v] for v in lengths).rstrip("0")
    back = lengths_from_hex(text)
    assert back.dtype == np.uint8
    assert np.array_equal(back, lengths[: len(text)])
    assert np.array_equal(lengths_from_hex(text + "0" * trailing_zeros)[: len(text)], back)


def test_validate_lengths_accepts_valid_tables():
    for table in ([1, 1], [1], [0, 0, 1], [1, 2, 2], [2, 2, 2, 2], [15] * 2**15, [0] * 65535 + [1]):
        validate_lengths(np.array(table, dtype=np.uint8))


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ([1, 16], "Huffman table: code length 16 of symbol 1 exceeds the maximum 15"),
        ([0, 0, 0, 16], "code length 16 of symbol 3 exceeds the maximum 15"),
        ([1, -1], "code length -1 of symbol 1 is negative"),
        ([0, 0], "Huffman table: no symbol has a code"),
        ([], "no symbol has a code"),
        ([2], "Huffman table: the only used symbol 0 has code length 2, not 1"),
        ([0, 0, 15], "the only used symbol 2 has code length 15, not 1"),
        ([1, 2], "Huffman table: Kraft sum 3/4 is not 1 (incomplete prefix code)"),
        ([2, 2, 2], "Kraft sum 3/4 is not 1 (incomplete prefix code)"),
        ([1, 1, 1], "Huffman table: Kraft sum 3/2 is not 1 (over-subscribed prefix code)"),
        ([1, 2, 2, 3], "Kraft sum 9/8 is not 1 (over-subscribed prefix code)"),
        ([15, 15], "Kraft sum 1/16384 is not 1 (incomplete prefix code)"),
        ([1] * 65536, "Kraft sum 32768/1 is not 1 (over-subscribed"),
        ([1] * 65537, "65537 symbols exceed the maximum 65536"),
    ],
)
def test_validate_lengths_rejects(table, fragment):
    with pytest.raises(HuffmanTableError) as info:
        validate_lengths(np.array(table, dtype=np.int64))
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the table string is empty"),
        ("13G2", "character 'G' at position 2 is not a lowercase hex digit"),
        ("1A", "character 'A' at position 1"),
        ("1 1", "character ' ' at position 1"),
        ("11\n", "character '\\n' at position 2"),
        ("1é", "character 'é' at position 1"),
        ("0x11", "character 'x' at position 1"),
        ("1" * 65537, "65537 digits exceed the maximum 65536"),
        ("12", "Kraft sum 3/4 is not 1 (incomplete"),
        ("111", "over-subscribed"),
        ("2", "the only used symbol 0 has code length 2, not 1"),
        ("000", "no symbol has a code"),
    ],
)
def test_lengths_from_hex_rejects(text, fragment):
    with pytest.raises(HuffmanTableError) as info:
        lengths_from_hex(text)
    assert fragment in str(info.value)


def test_lengths_from_hex_max_size_and_non_string():
    text = "f" * 32768 + "0" * 32768
    assert lengths_from_hex(text).size == 65536
    with pytest.raises(HuffmanTableError, match="expected a string"):
        lengths_from_hex(b"11")


def test_lengths_to_hex_rejects_invalid_tables():
    with pytest.raises(HuffmanTableError, match="code length 16"):
        lengths_to_hex(np.array([1, 16]))
    with pytest.raises(HuffmanTableError, match="no symbol has a code"):
        lengths_to_hex(np.array([0, 0]))
    assert lengths_to_hex(np.array([0, 0, 1, 0, 0])) == "001"


def test_encoded_bits():
    lengths = lengths_from_hex("1332")
    assert encoded_bits(np.array([10, 1, 1, 2]), lengths) == 10 + 3 + 3 + 4
    assert encoded_bits(np.array([0, 0, 0, 0, 0]), lengths) == 0
    assert encoded_bits(np.array([2**40, 0, 0, 1]), lengths) == 2**40 + 2
    with pytest.raises(EncodeError, match="symbol 4 occurs but is beyond the Huffman table of 4 symbols"):
        encoded_bits(np.array([1, 0, 0, 0, 1]), lengths)
    with pytest.raises(EncodeError, match="symbol 0 occurs but has no Huffman code"):
        encoded_bits(np.array([1, 1]), lengths_from_hex("01"))


# --------------------------------------------------------------------------- encode / decode


@settings(max_examples=300, deadline=None)
@given(streams())
def test_encode_matches_reference_and_round_trips(case):
    symbols, lengths, block_size = case
    buf, block_bytes = encode(symbols, lengths, block_size)
    assert isinstance(buf, bytes) and all(isinstance(b, int) for b in block_bytes)
    assert (buf, block_bytes) == ref_encode(symbols, lengths, block_size)
    assert len(block_bytes) == -(-symbols.size // block_size)
    assert sum(block_bytes) == len(buf)
    counts = np.bincount(symbols, minlength=lengths.size)
    assert encoded_bits(counts, lengths) <= 8 * len(buf) < encoded_bits(counts, lengths) + 8 * len(block_bytes) + 1
    for parallel in (False, True):
        out = decode(buf, symbols.size, lengths, block_size, block_bytes, parallel=parallel)
        assert out.dtype == np.uint16
        assert np.array_equal(out, symbols)
        check_fast_decoder(symbols.tolist(), buf, symbols.size, lengths, block_size, block_bytes, parallel)
    assert ref_decode(buf, symbols.size, lengths, block_size, block_bytes) == symbols.tolist()


@settings(max_examples=150, deadline=None)
@given(streams(max_count=200))
def test_bitarray_canonical_decoder_reads_our_blocks(case):
    """bitarray's canonical decoder (first stream bit = code MSB, puff style) decodes every block."""
    symbols, lengths, block_size = case
    buf, block_bytes = encode(symbols, lengths, block_size)
    max_len = int(lengths.max())
    count_per_length = [0] + [int(np.count_nonzero(lengths == n)) for n in range(1, max_len + 1)]
    canonical_order = sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (int(lengths[s]), s))
    pos = 0
    for b, nbytes in enumerate(block_bytes):
        bits = bitarray(endian="little")  # bit 0 of byte 0 first, as in §1
        bits.frombytes(buf[pos : pos + nbytes])
        want = symbols[b * block_size : (b + 1) * block_size].tolist()
        got = list(itertools.islice(canonical_decode(bits, count_per_length, canonical_order), len(want)))
        assert got == want
        pos += nbytes


@settings(max_examples=300, deadline=None)
@given(streams(max_count=120, max_alphabet=40), st.data())
def test_corrupted_streams_fail_like_the_reference(case, data):
    """Flip bits, cut or add bytes, move block boundaries: decode agrees with the bit-by-bit reference."""
    symbols, lengths, block_size = case
    buf, block_bytes = encode(symbols, lengths, block_size)
    buf = bytearray(buf)
    block_bytes = list(block_bytes)
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["flip", "truncate", "append", "move", "random"]))
        if action == "flip" and buf:
            i = data.draw(st.integers(0, 8 * len(buf) - 1))
            buf[i // 8] ^= 1 << (i % 8)
        elif action in ("truncate", "append") and block_bytes:
            b = data.draw(st.integers(0, len(block_bytes) - 1))
            end = sum(block_bytes[: b + 1])
            if action == "truncate" and block_bytes[b]:
                del buf[end - 1]
                block_bytes[b] -= 1
            elif action == "append":
                buf[end:end] = bytes([data.draw(st.sampled_from([0, 1, 0x80, 0xFF]))])
                block_bytes[b] += 1
        elif action == "move" and len(block_bytes) >= 2:
            b = data.draw(st.integers(0, len(block_bytes) - 2))
            if block_bytes[b]:
                block_bytes[b] -= 1
                block_bytes[b + 1] += 1
        elif action == "random":
            buf = bytearray(data.draw(st.binary(min_size=len(buf), max_size=len(buf))))
    check_decode_like_reference(bytes(buf), symbols.size, lengths, block_size, block_bytes)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["1", "01", "0010", "11", "1332", "22233", "2222", "123456789abcdeff"]),
    st.integers(0, 60),
    st.integers(1, 70),
    st.data(),
)
def test_arbitrary_bytes_decode_like_the_reference(text, count, block_size, data):
    try:
        lengths = lengths_from_hex(text)
    except HuffmanTableError:
        return
    nblocks = -(-count // block_size)
    block_bytes = [data.draw(st.integers(0, 2 * block_size)) for _ in range(nblocks)]
    buf = data.draw(st.binary(min_size=sum(block_bytes), max_size=sum(block_bytes)))
    check_decode_like_reference(buf, count, lengths, block_size, block_bytes)


def test_one_symbol_alphabet_and_table():
    lengths = lengths_from_hex("1")
    symbols = np.zeros(20, dtype=np.uint16)
    buf, block_bytes = encode(symbols, lengths, 8)
    assert buf == bytes(3) and block_bytes == [1, 1, 1]
    assert np.array_equal(decode(buf, 20, lengths, 8, block_bytes), symbols)
    # the lone symbol need not be symbol 0
    lengths = lengths_from_hex("0001")
    buf, block_bytes = encode(np.full(9, 3, dtype=np.uint16), lengths, 100)
    assert buf == bytes(2) and block_bytes == [2]
    assert decode(buf, 9, lengths, 100, [2]).tolist() == [3] * 9


def test_one_symbol_table_rejects_codeword_one():
    lengths = lengths_from_hex("1")
    with pytest.raises(CorruptDataError, match=r"Huffman block 0 \(section bytes 0\.\.1\): invalid codeword at symbol 2"):
        decode(bytes([0b100]), 3, lengths, 10, [1])
    with pytest.raises(CorruptDataError, match=r"Huffman block 1 \(section bytes 1\.\.2\): invalid codeword at symbol 5"):
        decode(bytes([0, 0b10]), 6, lengths, 4, [1, 1])


def test_two_symbol_alphabet():
    lengths = lengths_from_hex("11")
    symbols = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1], dtype=np.uint16)
    buf, block_bytes = encode(symbols, lengths, 100)
    assert buf == bytes([0b10001101, 0b1])
    assert decode(buf, 9, lengths, 100, block_bytes).tolist() == symbols.tolist()


def test_empty_stream():
    lengths = lengths_from_hex("1332")
    assert encode(np.zeros(0, dtype=np.uint16), lengths, 5) == (b"", [])
    out = decode(b"", 0, lengths, 5, [])
    assert out.dtype == np.uint16 and out.size == 0
    with pytest.raises(CorruptDataError, match="no symbols, but the section holds 1 bytes"):
        decode(b"\x00", 0, lengths, 5, [])
    with pytest.raises(CorruptDataError, match="1 block sizes given, but 0 symbols"):
        decode(b"", 0, lengths, 5, [0])


def test_large_alphabet_round_trip():
    rng = np.random.default_rng(11)
    # at most 2**15 symbols can have codes of <= 15 bits; spread 30,000 of them over all 65,536 values
    support = np.concatenate([[0, 65535], rng.choice(np.arange(1, 65535), size=29_998, replace=False)])
    symbols = support[rng.integers(0, support.size, size=200_000)].astype(np.uint16)
    symbols[:2] = [0, 65535]
    lengths = code_lengths(np.bincount(symbols, minlength=65536), 15)
    text = lengths_to_hex(lengths)
    assert len(text) == 65536
    lengths = lengths_from_hex(text)
    for block_size in (1, 1000, 1 << 16, 10**6):
        buf, block_bytes = encode(symbols, lengths, block_size)
        assert np.array_equal(decode(buf, symbols.size, lengths, block_size, block_bytes), symbols)
    small = symbols[:3000]
    assert encode(small, lengths, 700) == ref_encode(small, lengths, 700)


def test_skewed_long_stream_matches_reference_prefix():
    rng = np.random.default_rng(5)
    p = 0.6 ** np.arange(32)
    symbols = rng.choice(32, size=500_000, p=p / p.sum()).astype(np.uint16)
    counts = np.bincount(symbols, minlength=32)
    lengths = code_lengths(counts)
    assert int(lengths.max()) == 15  # the tail is deep: the lookup table is at its largest
    buf, block_bytes = encode(symbols, lengths, 4096)
    assert np.array_equal(decode(buf, symbols.size, lengths, 4096, block_bytes), symbols)
    assert np.array_equal(decode(buf, symbols.size, lengths, 4096, block_bytes, parallel=True), symbols)
    head = symbols[: 3 * 4096]
    ref_buf, ref_bb = ref_encode(head, lengths, 4096)
    assert block_bytes[:3] == ref_bb and buf[: sum(ref_bb)] == ref_buf


@settings(max_examples=150, deadline=None)
@given(count_arrays(max_symbols=40), st.integers(1, 12))
def test_multi_symbol_table_matches_reference(case, bits):
    """The fast decoder's table for every width it may use, narrow and wide one-symbol tables."""
    lengths = code_lengths(*case)
    max_len = int(lengths.max())
    lens = lengths.astype(np.uint32)
    one = np.zeros(1 << max_len, dtype=np.uint32)
    huffman_module._fill_decode_table(lens, huffman_module._canonical_reversed(lens), one)
    expected = ref_multi_table(lengths, bits)
    for table in (one, one.astype(np.uint16)):
        assert np.array_equal(huffman_module._build_multi_table(table, max_len, bits), expected)


@settings(max_examples=150, deadline=None)
@given(count_arrays(max_symbols=300))
def test_canonical_reversed_is_each_canonical_code_read_backwards(case):
    """The decoder's and encoder's codewords: §6.2's canonical codes, bit-reversed within their length."""
    lengths = code_lengths(*case)
    codes = canonical_codes(lengths)
    expected = [int(format(int(c), f"0{n}b")[::-1], 2) if n else 0 for c, n in zip(codes, lengths)]
    assert huffman_module._canonical_reversed(lengths.astype(np.uint32)).tolist() == expected


def test_multi_symbol_table_spec_example():
    # "1332": 0 -> 0, 10 -> 3, 110 -> 1, 111 -> 2 (stream order, first bit in bit 0 of the index)
    multi = ref_multi_table(lengths_from_hex("1332"), 3)
    assert int(multi[0b000]) == (0 << 16 | 0 << 32 | 0 << 48) | 3 | 3 << 6  # 0 0 0
    assert int(multi[0b001]) == (3 << 16 | 0 << 32) | 3 | 2 << 6  # "10" then "0"
    assert int(multi[0b011]) == 1 << 16 | 3 | 1 << 6  # "110"
    assert int(multi[0b101]) == 3 << 16 | 2 | 1 << 6  # "10", then "1" is not a whole codeword
    table, max_len, multi_k = huffman_module._decode_tables(lengths_from_hex("1332"))
    # 3 codewords of at most 3 bits: the 12-bit table is the 9-bit one 8 times over, and it is the
    # table read from all 12 bits (a value's bits beyond 3 longest codes never matter)
    assert max_len == 3 and multi_k.size == 1 << 12
    assert np.array_equal(multi_k, np.tile(ref_multi_table(lengths_from_hex("1332"), 9), 8))
    assert np.array_equal(multi_k, ref_multi_table(lengths_from_hex("1332"), 12))


@pytest.mark.parametrize("nblocks", [1, 2, 3, 6, 7])
@pytest.mark.parametrize("max_length", [1, 4, 11, 12, 13, 15])
def test_fast_decoder_every_code_length_and_block_count(nblocks, max_length):
    """Groups of three blocks and a last group of one or two, codes shorter and longer than the 12-bit
    multi-symbol lookup (the branch-free and the branching kernel)."""
    rng = np.random.default_rng(max_length * 10 + nblocks)
    fib = [1, 1]
    while len(fib) < max_length + 1:
        fib.append(fib[-1] + fib[-2])
    weights = np.array(fib[::-1], dtype=np.int64)  # natural depth max_length: the limit is reached
    lengths = code_lengths(weights, max_length)
    assert int(lengths.max()) == max_length
    block_size = 700
    symbols = rng.choice(weights.size, size=block_size * nblocks - 13, p=weights / weights.sum())
    symbols[rng.integers(0, symbols.size, size=20)] = weights.size - 1  # some longest codes in every run
    symbols = symbols.astype(np.uint16)
    buf, block_bytes = encode(symbols, lengths, block_size)
    for parallel in (False, True):
        check_fast_decoder(symbols.tolist(), buf, symbols.size, lengths, block_size, block_bytes, parallel)
        assert np.array_equal(decode(buf, symbols.size, lengths, block_size, block_bytes, parallel=parallel), symbols)


@pytest.mark.parametrize("max_length", [4, 12, 15])
def test_units_decode_and_gather_any_range_alone(max_length):
    """decode_units and gather_units fill exactly the symbols of units u0..u1, for every range of a
    stream of 7 blocks (4 units), whatever groups of three blocks the range splits into."""
    rng = np.random.default_rng(max_length)
    weights = np.array([2 ** (max_length - k) for k in range(max_length)] + [1], dtype=np.int64)
    lengths = code_lengths(weights, max_length)
    block_size = 300
    symbols = rng.choice(weights.size, size=7 * block_size - 5, p=weights / weights.sum()).astype(np.uint16)
    symbols[::97] = weights.size - 1  # longest codes in every block
    buf, block_bytes = encode(symbols, lengths, block_size)
    stream = huffman_module.prepare(buf, symbols.size, lengths, block_size, block_bytes)
    assert stream.units == 4
    codebook = np.arange(weights.size, dtype=np.float32) * 0.5 - 1.0
    for u0 in range(5):
        for u1 in range(u0, 5):
            s0, s1 = stream.unit_start(u0), stream.unit_start(u1)
            out = np.full(symbols.size, 0xFFFF, dtype=np.uint16)
            assert huffman_module.decode_units(stream, out, u0, u1)
            assert np.array_equal(out[s0:s1], symbols[s0:s1])
            assert (out[:s0] == 0xFFFF).all() and (out[s1:] == 0xFFFF).all()
            values = np.full(symbols.size, np.nan, dtype=np.float32)
            assert huffman_module.gather_units(stream, u0, u1, codebook, values)
            assert np.array_equal(values[s0:s1], codebook[symbols[s0:s1]])
            assert np.isnan(values[:s0]).all() and np.isnan(values[s1:]).all()
    # a symbol beyond the codebook: gather says so
    assert not huffman_module.gather_units(stream, 0, 4, codebook[:-1], np.empty(symbols.size, np.float32))


@pytest.mark.parametrize("bad_block", [0, 2, 3, 4])
def test_fast_decoder_rejects_an_invalid_codeword_without_stalling(bad_block):
    """The one-codeword table ("0" only) is the only one with invalid codewords: a "1" bit takes no
    bits in the fast loop, so the block stalls on it; the kernel must notice and return False."""
    lengths = lengths_from_hex("1")
    block_size = 200  # 25 zero bytes a block
    blocks = [bytearray(25) for _ in range(5)]
    blocks[bad_block][11] = 0x10  # symbol 92 of the block is "1"
    buf = b"".join(bytes(b) for b in blocks)
    for parallel in (False, True):
        check_fast_decoder(("invalid", bad_block, 92), buf, 1000, lengths, block_size, [25] * 5, parallel)
    with pytest.raises(CorruptDataError, match=rf"Huffman block {bad_block} .*invalid codeword at symbol {bad_block * 200 + 92}"):
        decode(buf, 1000, lengths, block_size, [25] * 5)


def test_decode_accepts_any_bytes_like():
    lengths = lengths_from_hex("1332")
    raw = bytes([0x9A, 0x03])
    for buf in (raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, np.uint8).copy()):
        assert decode(buf, 5, lengths, 65536, [2]).tolist() == [0, 3, 1, 0, 2]
    assert decode(raw, 5, lengths, 65536, np.array([2])).tolist() == [0, 3, 1, 0, 2]


# --------------------------------------------------------------------------- error paths


def test_encode_errors():
    with pytest.raises(HuffmanTableError, match="Kraft sum 3/4 is not 1 \\(incomplete"):
        encode(np.zeros(3, np.uint16), np.array([1, 3, 3], np.uint8), 4)
    lengths = lengths_from_hex("1022")
    with pytest.raises(EncodeError, match="symbol 1 at index 2 has no Huffman code"):
        encode(np.array([0, 3, 1], np.uint16), lengths, 4)
    with pytest.raises(EncodeError, match="symbol 4 at index 1 is beyond the Huffman table of 4 symbols"):
        encode(np.array([0, 4], np.uint16), lengths, 4)
    for bad in (0, -3, 1.5, True):
        with pytest.raises(EncodeError, match="block size"):
            encode(np.array([0], np.uint16), lengths, bad)
    with pytest.raises(EncodeError, match="symbol -1 at index 0"):
        encode(np.array([-1, 0]), lengths, 4)


def test_decode_truncated_buffer():
    lengths = lengths_from_hex("1332")
    with pytest.raises(CorruptDataError, match=r"Huffman block 0 \(section bytes 0\.\.1\): ran out of bits at symbol 4"):
        decode(bytes([0x9A]), 5, lengths, 65536, [1])
    with pytest.raises(CorruptDataError, match="block 0 claims 2 bytes, more than the section's 1"):
        decode(bytes([0x9A]), 5, lengths, 65536, [2])
    with pytest.raises(CorruptDataError, match="block sizes sum to 2 bytes, but the section holds 3"):
        decode(bytes([0x9A, 0x03, 0x00]), 5, lengths, 2, [1, 1, 0])


def test_decode_extra_bytes():
    lengths = lengths_from_hex("1332")
    with pytest.raises(CorruptDataError, match=r"Huffman block 0 \(section bytes 0\.\.3\): 14 bits left over"):
        decode(bytes([0x9A, 0x03, 0x00]), 5, lengths, 65536, [3])
    with pytest.raises(CorruptDataError, match="block sizes sum to 2 bytes, but the section holds 3"):
        decode(bytes([0x9A, 0x03, 0x00]), 5, lengths, 65536, [2])


def test_decode_nonzero_padding():
    lengths = lengths_from_hex("1332")
    with pytest.raises(CorruptDataError, match=r"Huffman block 0 \(section bytes 0\.\.2\): non-zero padding bits"):
        decode(bytes([0x9A, 0x83]), 5, lengths, 65536, [2])
    # in a middle block too
    buf, bb = encode(np.array([0, 3, 1, 0, 2], np.uint16), lengths, 2)
    bad = bytearray(buf)
    bad[1] |= 0x80
    with pytest.raises(CorruptDataError, match=r"Huffman block 1 \(section bytes 1\.\.2\): non-zero padding"):
        decode(bytes(bad), 5, lengths, 2, bb)


def test_decode_block_bytes_inconsistent():
    lengths = lengths_from_hex("1332")
    buf, bb = encode(np.array([0, 3, 1, 0, 2], np.uint16), lengths, 2)  # bb == [1, 1, 1]
    with pytest.raises(CorruptDataError, match="2 block sizes given, but 5 symbols in blocks of 2 make 3 blocks"):
        decode(buf, 5, lengths, 2, [1, 2])
    with pytest.raises(CorruptDataError, match="block 1 has a negative byte length -1"):
        decode(buf, 5, lengths, 2, [2, -1, 2])
    with pytest.raises(CorruptDataError, match="block 0 claims 4 bytes, more than the section's 3"):
        decode(buf, 5, lengths, 2, [4, 0, 0])
    with pytest.raises(CorruptDataError, match="not a list of integers"):
        decode(buf, 5, lengths, 2, [1.0, 1.0, 1.0])
    with pytest.raises(CorruptDataError, match="not a list of integers"):
        decode(buf, 5, lengths, 2, [2**70, 0, 0])
    with pytest.raises(CorruptDataError, match="not a list of integers"):
        decode(buf, 5, lengths, 2, [True, True, True])
    # a byte moved from block 1 to block 0: block 0 has a whole byte left over
    buf, bb = encode(np.full(20, 2, np.uint16), lengths, 10)  # 30 bits per block
    assert bb == [4, 4]
    with pytest.raises(CorruptDataError, match=r"Huffman block 0 \(section bytes 0\.\.5\): 10 bits left over"):
        decode(buf, 20, lengths, 10, [5, 3])
    with pytest.raises(CorruptDataError, match=r"Huffman block 0 \(section bytes 0\.\.3\): ran out of bits at symbol 8"):
        decode(buf, 20, lengths, 10, [3, 5])


def test_decode_count_the_bytes_cannot_hold():
    lengths = lengths_from_hex("1332")
    with pytest.raises(
        CorruptDataError, match=r"Huffman block 0 \(section bytes 0\.\.2\): 17 symbols of at least 1 bits cannot fit in 2 bytes"
    ):
        decode(bytes([0x9A, 0x03]), 17, lengths, 65536, [2])
    with pytest.raises(CorruptDataError, match=r"Huffman block 1 \(section bytes 2\.\.2\): 1 symbols .* in 0 bytes"):
        decode(bytes([0x9A, 0x03]), 6, lengths, 5, [2, 0])
    # min code length 2: 5 symbols need 10 bits
    with pytest.raises(CorruptDataError, match="5 symbols of at least 2 bits cannot fit in 1 bytes"):
        decode(b"\x00", 5, lengths_from_hex("2222"), 8, [1])


def test_decode_bad_arguments():
    lengths = lengths_from_hex("1332")
    for bad in (0, -1, 2.0, True):
        with pytest.raises(CorruptDataError, match="block size"):
            decode(b"", 0, lengths, bad, [])
    with pytest.raises(CorruptDataError, match="symbol count -1"):
        decode(b"", -1, lengths, 4, [])
    with pytest.raises(HuffmanTableError, match="over-subscribed"):
        decode(b"\x00", 1, np.array([1, 1, 1]), 4, [1])
    with pytest.raises(HuffmanTableError, match="code length 16"):
        decode(b"\x00", 1, np.array([1, 16]), 4, [1])


def test_kernels_stay_in_bounds_with_numba_boundscheck(tmp_path):
    """Fuzz encode/decode with bounds checking compiled in: an out-of-bounds access raises IndexError."""
    script = textwrap.dedent(
        """
        import numpy as np
        from dcformat.huffman import code_lengths, decode, encode, lengths_from_hex
        from dcformat.errors import CorruptDataError
        rng = np.random.default_rng(2)
        tables = [lengths_from_hex(t) for t in ("1", "01", "11", "1332", "2222", "22233", "123456789abcdeff")]
        for trial in range(1500):
            alphabet = int(rng.integers(1, 50))
            count = int(rng.integers(0, 200))
            symbols = np.minimum(rng.geometric(0.3, size=count) - 1, alphabet - 1).astype(np.uint16)
            counts = np.bincount(symbols, minlength=alphabet)
            counts[int(rng.integers(alphabet))] += 1
            lengths = code_lengths(counts, int(rng.integers(6, 16)))
            block_size = int(rng.integers(1, 80))
            buf, bb = encode(symbols, lengths, block_size)
            assert np.array_equal(decode(buf, count, lengths, block_size, bb), symbols)
            table = tables[trial % len(tables)]
            nblocks = -(-count // block_size)
            bb = [int(rng.integers(0, 2 * block_size)) for _ in range(nblocks)]
            junk = rng.integers(0, 256, size=sum(bb)).astype(np.uint8)
            junk[rng.random(junk.size) < 0.5] = 0
            for parallel in (False, True):
                try:
                    decode(junk.tobytes(), count, table, block_size, bb, parallel=parallel)
                except CorruptDataError:
                    pass
        print("ok")
        """
    )
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 65535), max_size=300), st.integers(0, 3))
def test_symbol_counts_is_bincount(values, repeat):
    symbols = np.array(values * (repeat + 1), dtype=np.uint16)
    expected = np.bincount(symbols, minlength=1).astype(np.int64)
    counts = huffman_module.symbol_counts(symbols)
    assert counts.dtype == np.int64 and np.array_equal(counts, expected)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(st.integers(1, 10**6), min_size=2, max_size=300),
                 st.lists(st.integers(1, 4), min_size=2, max_size=3000)), st.integers(1, 15))
def test_package_merge_kernel_matches_the_numpy_form(counts, max_length):
    """The compiled package-merge gives exactly the lengths of the numpy one (files stay reproducible)."""
    from dcformat.huffman import _package_merge, _package_merge_kernel

    if len(counts) > 1 << max_length:
        max_length = 15
    w = np.sort(np.array(counts, dtype=np.int64))
    depth = np.zeros(w.size, np.uint8)
    assert _package_merge_kernel(w, max_length, depth)
    assert np.array_equal(depth, _package_merge(w, max_length))
