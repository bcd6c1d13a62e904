"""The Deep Compression authors' released format (.net): prototxt shapes, reader, writer, dcformat bridge, CLI.

Files are built here from known tensors (pruned, quantized layers of small AlexNet- and SqueezeNet-
like nets) and from explicit entry streams (odd counts, fillers, non-canonical streams, corrupt files).
`reference_decode` / `reference_pack` are independent plain-Python twins of the format description.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcformat
from dcformat.interop import prototxt
from dcformat import codec
from dcformat.cli import main, verify_file
from dcformat.container import write_stream
from dcformat.interop.deepcompression import (
    dcformat_to_net, default_bits, net_to_dcformat, parse_net, read_net, write_net,
)
from dcformat.errors import CorruptDataError, DCFError, EncodeError, FormatError, LimitError, TruncatedError
from dcformat.interop.prototxt import LayerSpec, layer_shapes

from .filetools import resection, split
from .strategies import assert_same

# ---------------------------------------------------------------------------------------------
# Nets

ALEXNET_MINI = """
# AlexNet in miniature: grouped convolutions, LRN, pooling with Caffe's ceil rounding, dropout, fc.
name: "AlexNetMini"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 35
input_dim: 35
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 16 kernel_size: 5 stride: 2
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 5 alpha: 1e-4 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 24 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool2" top: "fc6" inner_product_param { num_output: 256 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc7" top: "prob" }
"""
# conv1: (35 - 5) // 2 + 1 = 16; pool1: ceil((16 - 3) / 2) + 1 = 8 (floor would give 7);
# conv2 (pad 1): 8; pool2: ceil(5 / 2) + 1 = 4 (floor: 3); fc6 sees 24 * 4 * 4 = 384 inputs.
ALEXNET_MINI_SHAPES = [
    ("conv1", "Convolution", (16, 3, 5, 5), (16,)),
    ("conv2", "Convolution", (24, 8, 3, 3), (24,)),
    ("fc6", "InnerProduct", (256, 384), (256,)),
    ("fc7", "InnerProduct", (10, 256), (10,)),
]

SQUEEZENET_MINI = """
name: "SqueezeNetMini"
layer { name: "data" type: "Input" top: "data" input_param { shape: { dim: 1 dim: 3 dim: 34 dim: 34 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 16 kernel_size: 3 stride: 2 } }
layer { name: "relu_conv1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fire2/squeeze1x1" type: "Convolution" bottom: "pool1" top: "fire2/squeeze1x1" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "fire2/relu_squeeze1x1" type: "ReLU" bottom: "fire2/squeeze1x1" top: "fire2/squeeze1x1" }
layer { name: "fire2/expand1x1" type: "Convolution" bottom: "fire2/squeeze1x1" top: "fire2/expand1x1" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "fire2/expand3x3" type: "Convolution" bottom: "fire2/squeeze1x1" top: "fire2/expand3x3" convolution_param { num_output: 8 pad: 1 kernel_size: 3 } }
layer { name: "fire2/concat" type: "Concat" bottom: "fire2/expand1x1" bottom: "fire2/expand3x3" top: "fire2/concat" }
layer { name: "conv10" type: "Convolution" bottom: "fire2/concat" top: "conv10" convolution_param { num_output: 10 kernel_size: 1 bias_term: false } }
layer { name: "pool10" type: "Pooling" bottom: "conv10" top: "pool10" pooling_param { pool: AVE global_pooling: true } }
layer { name: "prob" type: "Softmax" bottom: "pool10" top: "prob" }
"""
# conv1: (34 - 3) // 2 + 1 = 16; pool1: ceil(13 / 2) + 1 = 8; concat: 8 + 8 = 16 channels.
SQUEEZENET_MINI_SHAPES = [
    ("conv1", "Convolution", (16, 3, 3, 3), (16,)),
    ("fire2/squeeze1x1", "Convolution", (4, 16, 1, 1), (4,)),
    ("fire2/expand1x1", "Convolution", (8, 4, 1, 1), (8,)),
    ("fire2/expand3x3", "Convolution", (8, 4, 3, 3), (8,)),
    ("conv10", "Convolution", (10, 16, 1, 1), None),
]


def _shapes(specs):
    return [(s.name, s.type, s.weight_shape, s.bias_shape) for s in specs]


def fc(name: str, out: int, inp: int, bias: bool = True) -> LayerSpec:
    return LayerSpec(name, "InnerProduct", (out, inp), (out,) if bias else None)


def conv(name: str, out: int, inp: int, k: int, bias: bool = True) -> LayerSpec:
    return LayerSpec(name, "Convolution", (out, inp, k, k), (out,) if bias else None)


def make_tensors(layers, rng, density=0.3, bits=None, distinct=None):
    """Pruned, quantized tensors: each weight takes at most (2^bits - 1) distinct non-zero values,
    drawn with a skewed (k-means-like) frequency."""
    out = {}
    for layer in layers:
        b = (bits or {}).get(layer.name, default_bits(layer))
        k = distinct or (1 << b) - 1
        centroids = np.sort(rng.laplace(0, 0.05, k)).astype(np.float32)
        centroids[centroids == 0] = 0.5
        n = layer.weight_numel
        probs = np.exp(-np.abs(np.arange(k) - k / 2) / (k / 6 + 1))
        codes = rng.choice(k, size=n, p=probs / probs.sum())
        w = np.where(rng.random(n) < density, centroids[codes], np.float32(0)).astype(np.float32)
        out[f"{layer.name}.weight"] = w.reshape(layer.weight_shape)
        if layer.bias_shape is not None:
            out[f"{layer.name}.bias"] = rng.standard_normal(layer.bias_shape).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# Independent plain-Python twins of the released format (from the description, loops only)


def reference_decode(data: bytes, layers, bits=None) -> dict[str, np.ndarray]:
    """Decode a .net file entry by entry; values moved as 4-byte strings so every bit is kept."""
    bits = bits or {}
    counts = [struct.unpack_from("<I", data, 4 * i)[0] for i in range(len(layers))]
    off = 4 * len(layers)
    out = {}
    for layer, n in zip(layers, counts):
        b = bits.get(layer.name, 8 if layer.type == "Convolution" else 4)
        codebook = [data[off + 4 * i: off + 4 * i + 4] for i in range(2 ** b)]
        off += 4 * 2 ** b
        nbias = layer.bias_shape[0] if layer.bias_shape else 0
        bias = data[off: off + 4 * nbias]
        off += 4 * nbias
        codes = []
        for i in range(n):
            if b == 8:
                codes.append(data[off + i])
            else:
                byte = data[off + i // 2]
                codes.append(byte & 15 if i % 2 == 0 else byte >> 4)
        off += n if b == 8 else (n + 1) // 2
        index = []
        for i in range(n):
            byte = data[off + i // 2]
            index.append(byte & 15 if i % 2 == 0 else byte >> 4)
        off += (n + 1) // 2
        numel = 1
        for d in layer.weight_shape:
            numel *= d
        weight = [b"\0\0\0\0"] * numel
        position = -1
        for i in range(n):
            position += index[i] + 1
            weight[position] = codebook[codes[i]]
        out[f"{layer.name}.weight"] = np.frombuffer(b"".join(weight), "<f4").reshape(layer.weight_shape)
        if layer.bias_shape:
            out[f"{layer.name}.bias"] = np.frombuffer(bias, "<f4").copy()
    assert off == len(data)
    return out


def reference_stream(weight: np.ndarray, codebook: list[float]) -> tuple[list[int], list[int]]:
    """(index, codes) of a weight by the filler rule, scanning the flattened weight one element at a time."""
    lookup = {struct.pack("<f", v): i for i, v in enumerate(codebook) if i}
    index, codes, zeros = [], [], 0
    for v in np.asarray(weight, np.float32).reshape(-1):
        raw = struct.pack("<f", v)
        if raw == b"\0\0\0\0":
            zeros += 1
            continue
        while zeros > 15:
            index.append(15)
            codes.append(0)
            zeros -= 16
        index.append(zeros)
        codes.append(lookup[raw])
        zeros = 0
    return index, codes


def reference_pack(layers: list[dict]) -> bytes:
    """A .net from explicit parts: dicts with codebook (list), bias (list or None), index, codes, bits."""
    out = b"".join(struct.pack("<I", len(layer["index"])) for layer in layers)
    for layer in layers:
        k = 2 ** layer["bits"]
        cb = list(layer["codebook"]) + [0.0] * (k - len(layer["codebook"]))
        out += struct.pack(f"<{k}f", *cb)
        if layer.get("bias") is not None:
            out += struct.pack(f"<{len(layer['bias'])}f", *layer["bias"])
        codes, index = list(layer["codes"]), list(layer["index"])
        if layer["bits"] == 8:
            out += bytes(codes)
        else:
            out += bytes(codes[i] | ((codes[i + 1] if i + 1 < len(codes) else 0) << 4) for i in range(0, len(codes), 2))
        out += bytes(index[i] | ((index[i + 1] if i + 1 < len(index) else 0) << 4) for i in range(0, len(index), 2))
    return out


def assert_tensors_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert_same(np.asarray(a[k]), np.asarray(b[k]))


# ---------------------------------------------------------------------------------------------
# prototxt


def test_alexnet_like_shapes_with_groups_and_ceil_pooling():
    assert _shapes(layer_shapes(ALEXNET_MINI)) == ALEXNET_MINI_SHAPES


def test_squeezenet_like_shapes_with_concat_input_layer_and_no_bias():
    specs = layer_shapes(SQUEEZENET_MINI)
    assert _shapes(specs) == SQUEEZENET_MINI_SHAPES
    assert [s.kind for s in specs] == ["conv"] * 5


def test_pooling_rounding_rules():
    def pooled(h, k, s, p, extra=""):
        text = f"""input: "x" input_shape {{ dim: 1 dim: 2 dim: {h} dim: {h} }}
        layer {{ name: "p" type: "Pooling" bottom: "x" top: "p"
          pooling_param {{ pool: AVE kernel_size: {k} stride: {s} pad: {p} {extra} }} }}
        layer {{ name: "fc" type: "InnerProduct" bottom: "p" top: "fc" inner_product_param {{ num_output: 1 }} }}"""
        return layer_shapes(text)[0].weight_shape[1] // 2

    assert pooled(14, 3, 2, 0) == 7 * 7  # ceil(11 / 2) + 1 = 7; floor would give 6
    assert pooled(14, 3, 2, 0, "round_mode: FLOOR") == 6 * 6
    assert pooled(7, 2, 2, 1) == 4 * 4  # ceil(7 / 2) + 1 = 5, but the last window would start in the padding
    assert pooled(8, 3, 2, 1) == 5 * 5


def test_input_dim_and_input_shape_forms_agree_and_v1_layers():
    v1 = """input: 'data'
    input_shape { dim: [2, 6, 9, 9] }
    layers { name: "c" type: CONVOLUTION bottom: "data" top: "c"
             convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 stride_h: 2 group: 2 } }
    layers { name: "f" type: INNER_PRODUCT bottom: "c" top: "f"; inner_product_param: { num_output: 3; bias_term: false } }
    """
    specs = layer_shapes(v1)
    # conv: (9 - 3) // 2 + 1 = 4 rows, 9 columns; fc input 4 * 4 * 9.
    assert _shapes(specs) == [("c", "Convolution", (4, 3, 3, 1), (4,)), ("f", "InnerProduct", (3, 144), None)]


def test_parser_values_comments_strings_and_lists():
    msg = prototxt.parse('a: "x\\"y" # comment\n b: -1.5e2 c: MAX d: true e { f: [1, 2, 3] g: \'s\' "t" } h: 0x1F i: 3f')
    assert msg.get("a") == 'x"y' and msg.get("b") == -150.0 and msg.get("c") == "MAX" and msg.get("d") is True
    e = msg.get("e")
    assert e.all("f") == [1, 2, 3] and e.get("g") == "st"
    assert msg.get("h") == 31 and msg.get("i") == 3
    assert isinstance(msg.get("c"), prototxt.Enum) and not isinstance(msg.get("a"), prototxt.Enum)


@pytest.mark.parametrize("text, line, words", [
    ('layer {\n name: "a"\n', 1, "not closed"),
    ('a: 1\nb: @', 2, "unexpected character"),
    ('a: 1\n\nb c', 3, "expected ':'"),
    ('a: }', 1, "expected a value"),
    ('input: "x"\ninput_dim: 1\ninput_dim: 3', 3, "input_dim"),
    ('input: "x" input_dim: 1 input_dim: 3 input_dim: 5 input_dim: 5\n'
     'layer { name: "d" type: "Deconvolution" bottom: "x" top: "y" }', 2, "not supported"),
    ('layer { name: "c" type: "Convolution" bottom: "nope" top: "c" }', 1, "not produced"),
    ('input: "x" input_shape { dim: 1 dim: 3 dim: 5 dim: 5 }\n'
     'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_size: 3 group: 2 } }',
     2, "group 2"),
    ('input: "x" input_shape { dim: 1 dim: 3 dim: 5 dim: 5 }\n'
     'layer { name: "c" type: "Convolution" bottom: "x" top: "c"\n convolution_param { num_output: "four" kernel_size: 3 } }',
     3, "num_output"),
    ('input: "x" input_shape { dim: 1 dim: 3 dim: 5 dim: 5 }\n'
     'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_size: 7 } }',
     2, "kernel extent"),
    ('input: "x" input_shape { dim: 1 dim: 3 dim: 5 dim: 5 }\n'
     'layer { name: "f" type: "InnerProduct" bottom: "x" top: "f" inner_product_param { num_output: 2 } }\n'
     'layer { name: "f" type: "InnerProduct" bottom: "f" top: "g" inner_product_param { num_output: 2 } }', 3, "used twice"),
    ('input: "a" input_shape { dim: 1 dim: 3 dim: 5 dim: 5 } input: "b" input_shape { dim: 1 dim: 3 dim: 4 dim: 5 }\n'
     'layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" }', 2, "differ outside axis 1"),
])
def test_prototxt_errors_name_the_line(text, line, words):
    with pytest.raises(FormatError, match=f"prototxt line {line}:.*{words}") as e:
        layer_shapes(text)
    assert e.value.line == line


def test_deep_nesting_is_an_error_not_a_recursion_crash():
    with pytest.raises(FormatError, match="not closed"):
        prototxt.parse("a {" * 20_000)
    assert prototxt.parse("a {" * 5000 + "}" * 5000).get("a") is not None


# ---------------------------------------------------------------------------------------------
# The byte layout


def test_write_net_hand_checked_bytes():
    """fc (2 x 20): 0.5 at flat 3, -1.0 at 21 and 0.5 at 39 (the last element).

    Entries: index 3 (position 3); 17 zeros to 21 -> filler (15, position 19) then index 1; the same
    to 39. Five entries (odd): codes 2 0 1 0 2, indices 3 15 1 15 1, each packed low nibble first.
    """
    layer = fc("ip", 2, 20)
    w = np.zeros(40, np.float32)
    w[[3, 21, 39]] = [0.5, -1.0, 0.5]
    data = write_net({"ip.weight": w.reshape(2, 20), "ip.bias": np.array([1.0, -2.0], np.float32)}, [layer])
    codebook = struct.pack("<16f", 0.0, -1.0, 0.5, *([0.0] * 13))
    expected = (struct.pack("<I", 5) + codebook + struct.pack("<2f", 1.0, -2.0)
                + bytes([0x02, 0x01, 0x02]) + bytes([0xF3, 0xF1, 0x01]))
    assert data == expected
    assert_tensors_equal(read_net(data, [layer]), reference_decode(data, [layer]))


def test_eight_bit_codes_one_byte_each_and_odd_index_count():
    layer = conv("c", 1, 1, 3, bias=False)  # 9 weights
    w = np.zeros((1, 1, 3, 3), np.float32)
    w.reshape(-1)[[0, 4, 5]] = [2.0, -3.0, 2.0]
    data = write_net({"c.weight": w}, [layer])
    assert data[:4] == struct.pack("<I", 3)
    body = data[4 + 256 * 4:]
    assert body == bytes([2, 1, 2]) + bytes([0 | (3 << 4), 0])  # codes: -3.0 is entry 1, 2.0 entry 2
    assert_tensors_equal(read_net(data, [layer]), {"c.weight": w})


def test_read_net_agrees_with_reference_decoder_on_nets():
    rng = np.random.default_rng(1)
    for text in (ALEXNET_MINI, SQUEEZENET_MINI):
        layers = layer_shapes(text)
        tensors = make_tensors(layers, rng, density=0.2)
        data = write_net(tensors, layers)
        decoded = read_net(data, layers)
        assert_tensors_equal(decoded, tensors)
        assert_tensors_equal(decoded, reference_decode(data, layers))


def test_filler_rule_and_entry_counts_match_the_reference_stream():
    rng = np.random.default_rng(2)
    layer = fc("f", 7, 61)
    t = make_tensors([layer], rng, density=0.04)  # sparse enough for many gaps > 16
    data = write_net(t, [layer])
    (parsed,) = parse_net(data, [layer])
    index, codes = reference_stream(t["f.weight"], parsed.codebook.tolist())
    assert parsed.index.tolist() == index and parsed.codes.tolist() == codes
    assert 15 in index and parsed.fillers() > 0 and parsed.entries % 2 in (0, 1)


def test_all_zero_layer_last_element_non_zero_and_empty_first_entries():
    layers = [fc("z", 3, 5), fc("last", 2, 40), conv("one", 2, 1, 1, bias=False)]
    last = np.zeros((2, 40), np.float32)
    last[-1, -1] = 0.25  # 79 zeros before it: four fillers (64 positions), then index 15
    t = {"z.weight": np.zeros((3, 5), np.float32), "z.bias": np.zeros(3, np.float32),
         "last.weight": last, "last.bias": np.ones(2, np.float32), "one.weight": np.full((2, 1, 1, 1), -0.0, np.float32)}
    data = write_net(t, layers)
    parsed = parse_net(data, layers)
    assert [p.entries for p in parsed] == [0, 5, 2]
    assert parsed[1].index.tolist() == [15, 15, 15, 15, 15] and parsed[1].codes.tolist() == [0, 0, 0, 0, 1]
    out = read_net(data, layers)
    assert_tensors_equal(out, t)  # -0.0 is stored (its bits are not zero) and comes back as -0.0
    assert_tensors_equal(out, reference_decode(data, layers))


def test_odd_counts_in_every_stream():
    rng = np.random.default_rng(3)
    for n_nonzero in (1, 3, 7, 15):
        layer = fc("f", 1, 50)
        w = np.zeros(50, np.float32)
        w[np.sort(rng.choice(50, n_nonzero, replace=False))] = rng.choice([0.5, -0.5, 1.5], n_nonzero)
        data = write_net({"f.weight": w.reshape(1, 50), "f.bias": np.zeros(1, np.float32)}, [layer])
        assert_tensors_equal(read_net(data, [layer]), reference_decode(data, [layer]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_write_then_read_round_trip(data):
    n_layers = data.draw(st.integers(1, 3))
    layers, tensors = [], {}
    for i in range(n_layers):
        is_conv = data.draw(st.booleans())
        bias = data.draw(st.booleans())
        if is_conv:
            spec = LayerSpec(f"c{i}", "Convolution", tuple(data.draw(st.lists(st.integers(1, 4), min_size=4, max_size=4))),
                             None)
        else:
            spec = LayerSpec(f"f{i}", "InnerProduct", (data.draw(st.integers(1, 6)), data.draw(st.integers(1, 60))), None)
        if bias:
            spec = LayerSpec(spec.name, spec.type, spec.weight_shape, (spec.weight_shape[0],))
        layers.append(spec)
        seed = data.draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        k = data.draw(st.integers(1, 15))
        # Awkward values: -0.0, NaN with a payload, inf, subnormals, ordinary numbers.
        pool = np.array([0x80000000, 0x7FC00123, 0x7F800000, 0x00000001, 0x3F800000, 0xBF000000, 0x41200000,
                         0x00800000, 0xFF800000, 0x3DCCCCCD, 0xC2C80000, 0x3A83126F, 0x7F7FFFFF, 0x80000002,
                         0x3EAAAAAB], np.uint32)
        values = rng.choice(pool, k, replace=False)
        density = data.draw(st.sampled_from([0.0, 0.02, 0.3, 1.0]))
        n = spec.weight_numel
        w = np.where(rng.random(n) < density, rng.choice(values, n), np.uint32(0)).astype(np.uint32)
        if data.draw(st.booleans()):
            w[-1] = values[0]  # the last element non-zero
        tensors[f"{spec.name}.weight"] = w.view(np.float32).reshape(spec.weight_shape)
        if bias:
            tensors[f"{spec.name}.bias"] = rng.standard_normal(spec.weight_shape[0]).astype(np.float32)
    encoded = write_net(tensors, layers)
    decoded = read_net(encoded, layers)
    assert_tensors_equal({k: decoded[k] for k in tensors}, tensors)
    assert_tensors_equal(reference_decode(encoded, layers), decoded)
    assert write_net(decoded, layers) == encoded  # deterministic, and a fixed point


def test_bits_override_by_name_and_by_function():
    rng = np.random.default_rng(4)
    layers = [conv("c", 2, 3, 3), fc("f", 4, 10)]
    t = make_tensors(layers, rng, bits={"c": 4, "f": 4}, distinct=15)
    by_name = write_net(t, layers, bits={"c": 4})
    by_function = write_net(t, layers, bits=lambda layer: 4)
    assert by_name == by_function
    assert [(p.bits, len(p.codebook)) for p in parse_net(by_name, layers, bits={"c": 4})] == [(4, 16), (4, 16)]
    assert_tensors_equal(read_net(by_name, layers, bits={"c": 4}), t)
    assert_tensors_equal(read_net(by_name, layers, bits={"c": 4}), reference_decode(by_name, layers, bits={"c": 4}))
    with pytest.raises(TruncatedError):  # read with the default (8-bit conv): the lengths no longer add up
        read_net(by_name, layers)
    with pytest.raises(DCFError, match="4 or 8"):
        read_net(by_name, layers, bits={"c": 5})
    with pytest.raises(EncodeError, match="not in the net"):
        write_net(t, layers, bits={"nope": 4})


# ---------------------------------------------------------------------------------------------
# Malformed files


def _one_layer_file(index, codes, numel=20, codebook=(0.0, 1.0, -1.0), bits=4):
    layer = fc("f", 1, numel, bias=False)
    return layer, reference_pack([{"codebook": codebook, "bias": None, "index": index, "codes": codes, "bits": bits}])


def test_position_past_the_end_is_corrupt_data():
    layer, data = _one_layer_file([15, 3, 0], [0, 1, 2])  # positions 15, 19, 20: 20 is past 20 weights
    with pytest.raises(CorruptDataError, match="entry 2 of 3 is at position 20.*20 weights") as e:
        read_net(data, [layer])
    assert e.value.tensor == "f.weight"
    assert e.value.offset == 4 + 64 + 2 + 1  # the byte holding entry 2's index
    layer, ok = _one_layer_file([15, 3], [0, 1])
    assert read_net(ok, [layer])["f.weight"][0, 19] == 1.0


def test_more_entries_than_weights_is_corrupt_not_a_crash():
    layer, data = _one_layer_file([0] * 21, [1] * 21)
    with pytest.raises(CorruptDataError, match="past the end"):
        read_net(data, [layer])


@pytest.mark.parametrize("cut", [0, 2, 4, 4 + 63, 4 + 64, 4 + 64 + 1, 4 + 64 + 2 + 1])
def test_truncated_files(cut):
    layer, data = _one_layer_file([3, 4, 2], [1, 2, 1])
    assert len(data) == 4 + 64 + 2 + 2
    with pytest.raises(TruncatedError) as e:
        read_net(data[:cut], [layer])
    assert e.value.offset is not None


def test_trailing_bytes_are_a_format_error_with_offset():
    layer, data = _one_layer_file([3, 4, 2], [1, 2, 1])
    with pytest.raises(FormatError, match="3 bytes follow the last layer") as e:
        read_net(data + b"abc", [layer])
    assert e.value.offset == len(data)
    with pytest.raises(FormatError, match="follow the last layer"):
        read_net(data + data, [layer])


def test_non_zero_padding_nibble_is_corrupt():
    layer, data = _one_layer_file([3, 4, 2], [1, 2, 1])
    bad_codes = bytearray(data)
    bad_codes[4 + 64 + 1] |= 0x70
    with pytest.raises(CorruptDataError, match="codes.*high nibble"):
        read_net(bytes(bad_codes), [layer])
    bad_index = bytearray(data)
    bad_index[-1] |= 0x10
    with pytest.raises(CorruptDataError, match="index stream.*high nibble"):
        read_net(bytes(bad_index), [layer])


def test_huge_count_is_truncation_not_allocation():
    layer, data = _one_layer_file([3], [1])
    bad = struct.pack("<I", 0xFFFFFFFF) + data[4:]
    with pytest.raises(TruncatedError, match="4294967295 entries"):
        read_net(bad, [layer])


def test_decoded_size_limit():
    big = LayerSpec("f", "InnerProduct", (1 << 20, 1 << 20), None)
    data = struct.pack("<I", 0) + bytes(64)
    with pytest.raises(LimitError):
        read_net(data, [big])


def test_codebook_zero_not_zero_decodes_fillers_like_the_reference():
    layer, data = _one_layer_file([15, 15, 1], [0, 0, 1], numel=40, codebook=(7.0, 1.0))
    out = read_net(data, [layer])
    assert_tensors_equal(out, reference_decode(data, [layer]))
    assert out["f.weight"][0, 15] == 7.0 and out["f.weight"][0, 0] == 0.0
    with pytest.raises(EncodeError, match="codebook\\[0\\]"):
        net_to_dcformat(data, [layer])


# ---------------------------------------------------------------------------------------------
# Encoder errors


def test_write_net_errors_name_the_layer():
    layers = [fc("f", 2, 30)]
    w = np.linspace(0.1, 1, 60, dtype=np.float32).reshape(2, 30)
    with pytest.raises(EncodeError, match="'f'.*60 distinct non-zero values.*4-bit codebook holds 15"):
        write_net({"f.weight": w, "f.bias": np.zeros(2, np.float32)}, layers)
    ok = {"f.weight": np.zeros((2, 30), np.float32), "f.bias": np.zeros(2, np.float32)}
    with pytest.raises(EncodeError, match="shape"):
        write_net({**ok, "f.weight": np.zeros((30, 2), np.float32)}, layers)
    with pytest.raises(EncodeError, match="no place for tensor"):
        write_net({**ok, "g.weight": np.zeros(3, np.float32)}, layers)
    with pytest.raises(EncodeError, match="missing weight"):
        write_net({"f.bias": ok["f.bias"]}, layers)
    with pytest.raises(EncodeError, match="bias"):
        write_net({"f.weight": ok["f.weight"]}, layers)
    with pytest.raises(EncodeError, match="float32"):
        write_net({**ok, "f.weight": np.full((2, 30), 0.1, np.float64)}, layers)
    # Exactly representable float64 and int values are fine.
    fine = write_net({**ok, "f.weight": np.full((2, 30), 0.5, np.float64)}, layers)
    assert read_net(fine, layers)["f.weight"].dtype == np.float32


# ---------------------------------------------------------------------------------------------
# The bridge to dcformat


def _net_file(seed=7, density=0.3):
    rng = np.random.default_rng(seed)
    layers = layer_shapes(ALEXNET_MINI)
    tensors = make_tensors(layers, rng, density=density)
    return layers, write_net(tensors, layers)


def test_net_to_dcformat_decodes_to_read_net_is_smaller_and_comes_back_byte_for_byte():
    layers, net = _net_file()
    dcf = net_to_dcformat(net, layers)
    assert_tensors_equal(dcformat.load(dcf), read_net(net, layers))
    assert len(dcf) < len(net)
    with dcformat.open(dcf) as f:
        for layer in layers:
            info = f.layout(f"{layer.name}.weight")
            assert info.encoding == "sparse" and info.layout == "csr"
            assert info.codebook_size == 1 << default_bits(layer)  # the whole codebook, unused entries included
        assert json.loads(f.metadata["deepcompression"])["layers"][2]["bits"] == 4
    assert dcformat_to_net(dcf) == net
    assert dcformat_to_net(dcf, layers) == net


@pytest.mark.parametrize("index_bits", [1, 4, 9])
def test_any_index_width_reproduces_the_net(index_bits):
    layers, net = _net_file(density=0.05)
    dcf = net_to_dcformat(net, layers, index_bits=index_bits)
    with dcformat.open(dcf) as f:
        assert {f.layout(f"{layer.name}.weight").index_bits for layer in layers} == {index_bits}
    assert_tensors_equal(dcformat.load(dcf), read_net(net, layers))
    assert dcformat_to_net(dcf) == net


def test_non_canonical_streams_are_kept_as_they_are(tmp_path, capsys):
    """Extra fillers, explicitly stored zeros, a code for a +0.0 codebook entry, trailing fillers,
    duplicate and unused codebook entries: decoded alike by both formats, and the .net comes back."""
    layers = [fc("a", 2, 30, bias=False), conv("b", 1, 2, 3), fc("c", 1, 40)]
    parts = [
        {"bits": 4, "codebook": [0.0, 0.5, 0.0, 0.5, -2.0], "bias": None,
         "index": [15, 0, 3, 2, 15, 1, 15], "codes": [0, 1, 2, 0, 3, 4, 0]},  # trailing filler, zeros stored
        {"bits": 8, "codebook": [0.0] + [float(i) / 8 for i in range(1, 256)], "bias": [0.25],
         "index": [0, 15, 0], "codes": [0, 5, 200]},  # a filler where no filler is needed
        {"bits": 4, "codebook": [0.0, 1.0], "bias": [1.0], "index": [15, 15, 0, 0], "codes": [0, 0, 0, 0]},
    ]
    net = reference_pack(parts)
    expected = reference_decode(net, layers)
    assert_tensors_equal(read_net(net, layers), expected)
    dcf = net_to_dcformat(net, layers)
    assert_tensors_equal(dcformat.load(dcf), expected)
    with dcformat.open(dcf) as f:
        infos = [f.layout(f"{layer.name}.weight") for layer in layers]
    assert [i.entries for i in infos] == [7, 3, 4] and all(i.index_bits == 4 for i in infos)
    assert [i.fillers for i in infos] == [4, 1, 4]
    assert dcformat_to_net(dcf) == net
    (tmp_path / "x.dcf").write_bytes(dcf)
    assert verify_file(str(tmp_path / "x.dcf"))["ok"]  # the filler counts are what `verify` expects
    (tmp_path / "x.net").write_bytes(net)
    (tmp_path / "x.prototxt").write_text(
        'input: "y" input_shape { dim: 1 dim: 30 }\ninput: "x" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
        'input: "z" input_shape { dim: 1 dim: 40 }\n'
        'layer { name: "a" type: "InnerProduct" bottom: "y" top: "a" inner_product_param { num_output: 2 bias_term: false } }\n'
        'layer { name: "b" type: "Convolution" bottom: "x" top: "b" convolution_param { num_output: 1 kernel_size: 3 } }\n'
        'layer { name: "c" type: "InnerProduct" bottom: "z" top: "c" inner_product_param { num_output: 1 } }\n')
    assert main(["convert", "--from", "deepcompression", str(tmp_path / "x.net"), "--prototxt",
                 str(tmp_path / "x.prototxt"), "-o", str(tmp_path / "y.dcf"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["per_layer"]
    assert [(r["canonical"], r["index_bits"]) for r in rows] == [(False, 4)] * 3
    assert dcformat_to_net(str(tmp_path / "y.dcf")) == net


def test_dcformat_files_from_the_policy_encoder_convert_to_net():
    """A model compressed by dcformat itself (any encoding) becomes a .net when its codebooks fit."""
    rng = np.random.default_rng(9)
    layers = layer_shapes(SQUEEZENET_MINI)
    tensors = {}
    for layer in layers:
        tensors[f"{layer.name}.weight"] = rng.laplace(0, 0.1, layer.weight_shape).astype(np.float32)
        if layer.bias_shape:
            tensors[f"{layer.name}.bias"] = rng.standard_normal(layer.bias_shape).astype(np.float32)
    for policy in (dcformat.Policy(prune=0.7, conv_bits=8, index_bits="auto"),  # sparse csr/csc, any width
                   dcformat.Policy(prune=0.0, conv_bits=3)):  # shared (dense) encoding
        dcf = dcformat.save(tensors, policy=policy)
        net = dcformat_to_net(dcf, layers)
        assert_tensors_equal(read_net(net, layers), dcformat.load(dcf))
    # A "shared" (dense) weight whose codebook starts with 0.0: codes are taken as they are.
    layer = conv("s", 3, 2, 2, bias=False)
    codes = np.random.default_rng(1).integers(0, 3, layer.weight_numel)
    codebook = np.array([0.0, 0.5, 0.5], np.float32)  # a duplicate entry: only the codes tell them apart
    draft = codec.draft_explicit("s.weight", codebook[codes].reshape(layer.weight_shape), "shared",
                                 codebook=codebook, indices=codes)
    tables, encoded = codec.assemble([draft], "off")
    buf = io.BytesIO()
    write_stream(buf, {}, tables, encoded)
    (parsed,) = parse_net(dcformat_to_net(buf.getvalue(), [layer]), [layer])
    assert parsed.codes.tolist() == codes[codes > 0].tolist() and parsed.codebook[:3].tolist() == [0.0, 0.5, 0.5]

    raw = dcformat.save(tensors, policy=dcformat.Policy(lossless=True))
    with pytest.raises(EncodeError, match="distinct non-zero values"):
        dcformat_to_net(raw, layers)
    with pytest.raises(FormatError, match="no prototxt"):
        dcformat_to_net(raw)


def test_corrupt_dcformat_stream_is_reported_when_converting_back():
    layer, net = _one_layer_file([15, 3], [0, 1])  # positions 15 and 19 of 20
    dcf = net_to_dcformat(net, [layer], index_bits=4)
    doc, _ = split(dcf)
    gaps = doc["tensors"][0]["gaps"]
    assert gaps["coding"] == "fixed" and dcf[gaps["section"]["offset"]] == 0x3F
    bad = resection(dcf, 0, "gaps", b"\xff", stream=True)  # positions 15 and 31
    with pytest.raises(CorruptDataError, match="past the end") as e:
        dcformat_to_net(bad)
    assert e.value.tensor == "f.weight"


def test_dcformat_to_net_refuses_to_drop_tensors():
    layers, net = _net_file()
    tensors = read_net(net, layers)
    tensors["extra"] = np.zeros(3, np.float32)
    dcf = dcformat.save(tensors)
    with pytest.raises(EncodeError, match="no place for tensor"):
        dcformat_to_net(dcf, layers)


# ---------------------------------------------------------------------------------------------
# Command line


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_convert_both_ways(tmp_path, capsys):
    layers, net = _net_file()
    (tmp_path / "net.prototxt").write_text(ALEXNET_MINI)
    (tmp_path / "m.net").write_bytes(net)
    dcf_path, back = tmp_path / "m.dcf", tmp_path / "back.net"

    code, text, _ = run(["convert", "--from", "deepcompression", tmp_path / "m.net", "--prototxt",
                         tmp_path / "net.prototxt", "-o", dcf_path, "--json"], capsys)
    assert code == 0
    summary = json.loads(text)
    assert summary["layers"] == 4 and summary["input_bytes"] == len(net)
    assert summary["output_bytes"] == dcf_path.stat().st_size < len(net)
    assert [r["layer"] for r in summary["per_layer"]] == ["conv1", "conv2", "fc6", "fc7"]
    assert all(r["canonical"] for r in summary["per_layer"])
    assert sum(r["net_bytes"] for r in summary["per_layer"]) + 16 == len(net)
    assert_tensors_equal(dcformat.load_file(dcf_path), read_net(net, layers))

    code, text, _ = run(["convert", "--to", "deepcompression", dcf_path, "-o", back], capsys)
    assert code == 0 and "4 layers" in text
    assert back.read_bytes() == net

    code, text, _ = run(["convert", "--to", "deepcompression", dcf_path, "--prototxt", tmp_path / "net.prototxt",
                         "-o", back, "--force", "--json"], capsys)
    assert code == 0 and json.loads(text)["output_bytes"] == len(net)
    assert back.read_bytes() == net

    code, text, _ = run(["convert", "--from", "deepcompression", tmp_path / "m.net", "--prototxt",
                         tmp_path / "net.prototxt", "-o", dcf_path, "-f"], capsys)
    assert code == 0 and "fc6" in text and "deepcompression -> dcformat: 4 layers" in text


def test_cli_convert_errors(tmp_path, capsys):
    layers, net = _net_file()
    (tmp_path / "m.net").write_bytes(net[:-1])
    (tmp_path / "net.prototxt").write_text(ALEXNET_MINI)
    code, _, err = run(["convert", "--from", "deepcompression", tmp_path / "m.net", "-o", tmp_path / "x.dcf"], capsys)
    assert code == 2 and "--prototxt" in err
    code, _, err = run(["convert", "--from", "deepcompression", tmp_path / "m.net", "--prototxt",
                        tmp_path / "net.prototxt", "-o", tmp_path / "x.dcf"], capsys)
    assert code == 1 and err.startswith(f"dcformat: error: {tmp_path / 'm.net'}: ") and "847 remain" in err
    assert not (tmp_path / "x.dcf").exists()


# ---------------------------------------------------------------------------------------------
# Full-size measurement (slow): python -m pytest -m slow -s tests/test_deepcompression.py

ALEXNET = """name: "AlexNet"
layer { name: "data" type: "Input" top: "data" input_param { shape: { dim: 10 dim: 3 dim: 227 dim: 227 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3" convolution_param { num_output: 384 pad: 1 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4" convolution_param { num_output: 384 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5" convolution_param { num_output: 256 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6" inner_product_param { num_output: 4096 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 4096 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8" inner_product_param { num_output: 1000 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""
ALEXNET_KEPT = {"conv1": .84, "conv2": .38, "conv3": .35, "conv4": .37, "conv5": .37, "fc6": .09, "fc7": .09, "fc8": .25}


@pytest.mark.slow
def test_synthetic_alexnet_full_size():
    """A synthetic AlexNet at the paper's per-layer densities (Table 4): Laplace weights, magnitude pruning
    (positions i.i.d., unlike a trained net), k-means codebooks of 256 (conv) / 16 (fc) entries."""
    from dcformat import prune, quantize

    layers = layer_shapes(ALEXNET)
    assert [s.weight_numel for s in layers] == [34848, 307200, 884736, 663552, 442368, 37748736, 16777216, 4096000]
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in layers:
        w = prune.prune(rng.laplace(0, 0.01, layer.weight_shape).astype(np.float32), sparsity=1 - ALEXNET_KEPT[layer.name])
        codebook, indices = quantize.quantize(w, default_bits(layer), sparse=True)
        tensors[f"{layer.name}.weight"] = codebook[indices].reshape(layer.weight_shape)
        tensors[f"{layer.name}.bias"] = rng.standard_normal(layer.bias_shape).astype(np.float32)
    net = write_net(tensors, layers)
    assert_tensors_equal(read_net(net, layers), tensors)
    for index_bits in (4, "auto"):
        dcf = net_to_dcformat(net, layers, index_bits=index_bits)
        assert_tensors_equal(dcformat.load(dcf), tensors)
        assert dcformat_to_net(dcf) == net
        assert len(dcf) < len(net)
        print(f"\nindex_bits={index_bits}: .net {len(net):,} B -> dcformat {len(dcf):,} B, {100 * (1 - len(dcf) / len(net)):.1f}% smaller")


@given(st.integers(0, 2**32 - 1), st.sampled_from([0.005, 0.05, 0.3, 0.9]))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_auto_index_width_is_the_width_whose_built_streams_are_smallest(seed, kept):
    # index_bits="auto" prices each width from symbol counts; building the layer at every width and
    # pricing the built streams must pick the same width (the first of the smallest, 4 bits first).
    from dcformat.interop import deepcompression as dc
    from dcformat import prune, quantize

    layer_spec = fc("f", 37, 53, bias=False)
    rng = np.random.default_rng(seed)
    w = prune.prune(rng.laplace(0, 0.1, layer_spec.weight_shape).astype(np.float32), sparsity=1 - kept)
    codebook, indices = quantize.quantize(w, default_bits(layer_spec), sparse=True)
    tensors = {"f.weight": codebook[indices].reshape(layer_spec.weight_shape)}
    (layer,) = parse_net(write_net(tensors, [layer_spec]), [layer_spec])
    sizes = {}
    for b in [dc.INDEX_BITS] + [b for b in codec.INDEX_BITS_CANDIDATES if b != dc.INDEX_BITS]:
        try:
            draft, canonical = dc._weight_draft(layer, b)
        except EncodeError:  # more fillers than weights at this width
            continue
        assert canonical
        sizes[b] = sum(codec.estimate_stream_bytes(s) for s in draft.streams.values())
    assert dc._best_index_bits(layer) == min(sizes, key=sizes.get)
