"""A tiny reader of Caffe prototxt files: the protobuf text format, and the layer shapes of a deploy net.

The Deep Compression authors' released files store no names or shapes: a Caffe deploy prototxt
supplies them. `parse` reads the subset of the protobuf text format that prototxts use (nested
``name { ... }`` blocks, ``key: value`` with strings, numbers and enum names, repeated fields, ``[a, b]``
lists, ``#`` comments); `layer_shapes` propagates blob shapes through the net and returns, in prototxt
order, the weight and bias shapes of each weight-bearing layer (Convolution, InnerProduct).

Errors are `FormatError` whose message starts with ``prototxt line N:`` (the number is also kept as
the ``line`` attribute).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import FormatError

__all__ = ["Message", "LayerSpec", "parse", "layer_shapes", "WEIGHT_LAYER_TYPES", "SHAPE_LAYER_TYPES"]

WEIGHT_LAYER_TYPES = ("Convolution", "InnerProduct")
PASS_THROUGH_TYPES = ("ReLU", "Dropout", "LRN", "Softmax", "Sigmoid", "TanH", "Split")
SHAPE_LAYER_TYPES = WEIGHT_LAYER_TYPES + PASS_THROUGH_TYPES + ("Input", "Pooling", "Concat", "Flatten", "Eltwise")

# Old-style (V1) `layers { type: CONVOLUTION }` enum names and the layer types they stand for.
V1_TYPES = {
    "CONVOLUTION": "Convolution", "INNER_PRODUCT": "InnerProduct", "POOLING": "Pooling", "CONCAT": "Concat",
    "LRN": "LRN", "RELU": "ReLU", "DROPOUT": "Dropout", "SOFTMAX": "Softmax", "SIGMOID": "Sigmoid",
    "TANH": "TanH", "SPLIT": "Split", "FLATTEN": "Flatten", "ELTWISE": "Eltwise",
}


def _error(line: int, message: str) -> FormatError:
    e = FormatError(f"prototxt line {line}: {message}")
    e.line = line  # type: ignore[attr-defined]
    return e


# ---------------------------------------------------------------------------------------------
# Tokens and messages


class Enum(str):
    """An unquoted identifier value (an enum name such as MAX, or true/false), as opposed to a string."""


@dataclass
class Message:
    """A parsed text-format message: its fields in file order as (key, value, line)."""

    line: int
    fields: list[tuple[str, Any, int]] = field(default_factory=list)

    def all(self, key: str) -> list[Any]:
        """Every value of a (repeated) field, in order."""
        return [v for k, v, _ in self.fields if k == key]

    def has(self, key: str) -> bool:
        return any(k == key for k, _, _ in self.fields)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of a singular field: the last one given wins, as in protobuf."""
        values = self.all(key)
        return values[-1] if values else default

    def line_of(self, key: str) -> int:
        """The line of the field's last occurrence (the message's own line when absent)."""
        lines = [n for k, _, n in self.fields if k == key]
        return lines[-1] if lines else self.line


_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)(?![A-Za-z_0-9]))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}\[\]:,;<>])
""", re.VERBOSE)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unescape(body: str, line: int) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 >= len(body):
                raise _error(line, "a string ends with a backslash")
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise _error(line, f"unknown escape \\{nxt} in a string")
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _number(text: str, line: int) -> int | float:
    t = text.rstrip("fF") if not text.lower().lstrip("+-").startswith("0x") else text
    try:
        if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", t):
            return int(t, 16)
        if re.fullmatch(r"[-+]?\d+", t):
            return int(t)
        return float(t)
    except ValueError:
        raise _error(line, f"bad number {text!r}") from None


def tokens(text: str) -> Iterator[tuple[str, Any, int]]:
    """(kind, value, line) tokens; kind is one of string, number, ident, punct."""
    line, pos = 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _error(line, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        value = m.group()
        pos = m.end()
        if kind == "newline":
            line += 1
        elif kind == "string":
            yield "string", _unescape(value[1:-1], line), line
        elif kind == "number":
            yield "number", _number(value, line), line
        elif kind in ("ident", "punct"):
            yield kind, value, line


_CLOSE = {"{": "}", "<": ">"}


def parse(text: str) -> Message:
    """Parse protobuf text format into nested `Message`s (iteratively: deep nesting cannot overflow the stack)."""
    toks = list(tokens(text))
    root = Message(1)
    stack: list[tuple[Message, str | None]] = [(root, None)]  # (message, closing punctuation)
    i, n = 0, len(toks)

    def peek(j: int) -> tuple[str, Any, int] | None:
        return toks[j] if j < n else None

    while i < n:
        kind, value, line = toks[i]
        msg, closer = stack[-1]
        if kind == "punct" and value == closer:
            stack.pop()
            i += 1
            i = _skip_separator(toks, i)
            continue
        if kind != "ident":
            raise _error(line, f"expected a field name, found {value!r}")
        key = value
        i += 1
        nxt = peek(i)
        colon = nxt is not None and nxt[0] == "punct" and nxt[1] == ":"
        if colon:
            i += 1
            nxt = peek(i)
        if nxt is None:
            raise _error(line, f"field {key!r} has no value")
        if nxt[0] == "punct" and nxt[1] in _CLOSE:
            child = Message(nxt[2])
            msg.fields.append((key, child, line))
            stack.append((child, _CLOSE[nxt[1]]))
            i += 1
            continue
        if not colon:
            raise _error(line, f"expected ':' or '{{' after field {key!r}")
        if nxt[0] == "punct" and nxt[1] == "[":
            i += 1
            first = True
            while True:
                t = peek(i)
                if t is None:
                    raise _error(line, f"list of field {key!r} is not closed with ']'")
                if t[0] == "punct" and t[1] == "]":
                    i += 1
                    break
                if not first:
                    if not (t[0] == "punct" and t[1] == ","):
                        raise _error(t[2], f"expected ',' or ']' in the list of field {key!r}")
                    i += 1
                value, i = _scalar(toks, i, key, line)
                msg.fields.append((key, value, line))
                first = False
        else:
            value, i = _scalar(toks, i, key, line)
            msg.fields.append((key, value, line))
        i = _skip_separator(toks, i)
    if len(stack) > 1:
        raise _error(stack[-1][0].line, f"block opened here is not closed with {stack[-1][1]!r}")
    return root


def _skip_separator(toks: list, i: int) -> int:
    if i < len(toks) and toks[i][0] == "punct" and toks[i][1] in ",;":
        return i + 1
    return i


def _scalar(toks: list, i: int, key: str, line: int) -> tuple[Any, int]:
    if i >= len(toks):
        raise _error(line, f"field {key!r} has no value")
    kind, value, tline = toks[i]
    if kind == "string":
        parts = [value]
        i += 1
        while i < len(toks) and toks[i][0] == "string":  # adjacent strings concatenate, as in C
            parts.append(toks[i][1])
            i += 1
        return "".join(parts), i
    if kind == "number":
        return value, i + 1
    if kind == "ident":
        low = value.lower()
        if low in ("true", "t"):
            return True, i + 1
        if low in ("false", "f"):
            return False, i + 1
        if low.lstrip("-") in ("inf", "infinity", "nan"):
            return float(low.replace("infinity", "inf")), i + 1
        return Enum(value), i + 1
    raise _error(tline, f"field {key!r}: expected a value, found {value!r}")


# ---------------------------------------------------------------------------------------------
# Layer shapes


@dataclass(frozen=True)
class LayerSpec:
    """A weight-bearing layer of a deploy prototxt: its name, type and parameter shapes."""

    name: str
    type: str  # "Convolution" or "InnerProduct"
    weight_shape: tuple[int, ...]
    bias_shape: tuple[int, ...] | None  # None when bias_term: false
    line: int = 0  # where the layer starts in the prototxt (0 when not from a prototxt)

    @property
    def kind(self) -> str:
        """'conv' or 'fc'."""
        return "conv" if self.type == "Convolution" else "fc"

    @property
    def weight_numel(self) -> int:
        return math.prod(self.weight_shape)


def _int(msg: Message, key: str, default: int | None = None, *, lo: int = 0) -> int:
    value = msg.get(key, default)
    if value is None:
        raise _error(msg.line, f"{key} is required")
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _error(msg.line_of(key), f"{key} must be an integer >= {lo}, not {value!r}")
    return value


def _signed(msg: Message, key: str, default: int) -> int:
    value = msg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _error(msg.line_of(key), f"{key} must be an integer, not {value!r}")
    return value


def _ints(msg: Message, key: str, *, lo: int = 0) -> list[int]:
    out = []
    for value in msg.all(key):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise _error(msg.line_of(key), f"{key} must be an integer >= {lo}, not {value!r}")
        out.append(value)
    return out


def _bool(msg: Message, key: str, default: bool) -> bool:
    value = msg.get(key, default)
    if not isinstance(value, bool):
        raise _error(msg.line_of(key), f"{key} must be true or false, not {value!r}")
    return value


def _sub(msg: Message, key: str) -> Message:
    value = msg.get(key)
    if value is None:
        return Message(msg.line)
    if not isinstance(value, Message):
        raise _error(msg.line_of(key), f"{key} must be a {{ ... }} block")
    return value


def _shape(msg: Message) -> tuple[int, ...]:
    dims = _ints(msg, "dim", lo=1)
    if not dims:
        raise _error(msg.line, "a shape needs at least one dim")
    return tuple(dims)


def _spatial(param: Message, spatial: int, key: str, default: int | None, lo: int) -> tuple[int, ...]:
    """Per-spatial-axis values of kernel_size / pad / stride / dilation (with the _h/_w forms for 2-D)."""
    base = key if key != "kernel" else "kernel_size"
    h, w = f"{key}_h", f"{key}_w"
    if param.has(h) or param.has(w):
        if spatial != 2:
            raise _error(param.line_of(h), f"{h}/{w} need 2 spatial axes, the input has {spatial}")
        if param.has(base):
            raise _error(param.line_of(base), f"give {base} or {h}/{w}, not both")
        return (_int(param, h, default, lo=lo), _int(param, w, default, lo=lo))
    values = _ints(param, base, lo=lo)
    if not values:
        if default is None:
            raise _error(param.line, f"{base} is required")
        return (default,) * spatial
    if len(values) == 1:
        return (values[0],) * spatial
    if len(values) != spatial:
        raise _error(param.line_of(base), f"{base} has {len(values)} values for {spatial} spatial axes")
    return tuple(values)


def _conv(layer: Message, name: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], LayerSpec]:
    param = _sub(layer, "convolution_param")
    if len(shape) < 3:
        raise _error(layer.line, f"convolution {name!r} needs an input with spatial axes, got shape {shape}")
    if _signed(param, "axis", 1) != 1:
        raise _error(param.line_of("axis"), "only axis: 1 is supported")
    spatial = len(shape) - 2
    num_output = _int(param, "num_output", lo=1)
    group = _int(param, "group", 1, lo=1)
    kernel = _spatial(param, spatial, "kernel", None, 1)
    pad = _spatial(param, spatial, "pad", 0, 0)
    stride = _spatial(param, spatial, "stride", 1, 1)
    dilation = _spatial(param, spatial, "dilation", 1, 1)
    channels = shape[1]
    if channels % group or num_output % group:
        raise _error(layer.line, f"convolution {name!r}: group {group} must divide the input channels "
                                 f"({channels}) and num_output ({num_output})")
    out = []
    for size, k, p, s, d in zip(shape[2:], kernel, pad, stride, dilation):
        extent = d * (k - 1) + 1
        if size + 2 * p < extent:
            raise _error(layer.line, f"convolution {name!r}: kernel extent {extent} exceeds the padded input {size + 2 * p}")
        out.append((size + 2 * p - extent) // s + 1)
    bias = (num_output,) if _bool(param, "bias_term", True) else None
    spec = LayerSpec(name, "Convolution", (num_output, channels // group, *kernel), bias, layer.line)
    return (shape[0], num_output, *out), spec


def _axis(value: int, rank: int, line: int) -> int:
    axis = value + rank if value < 0 else value
    if not 0 <= axis < rank:
        raise _error(line, f"axis {value} is out of range for a {rank}-D blob")
    return axis


def _inner_product(layer: Message, name: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], LayerSpec]:
    param = _sub(layer, "inner_product_param")
    num_output = _int(param, "num_output", lo=1)
    axis = _axis(_signed(param, "axis", 1), len(shape), param.line_of("axis"))
    k = math.prod(shape[axis:])
    weight = (k, num_output) if _bool(param, "transpose", False) else (num_output, k)
    bias = (num_output,) if _bool(param, "bias_term", True) else None
    return (*shape[:axis], num_output), LayerSpec(name, "InnerProduct", weight, bias, layer.line)


def _pooling(layer: Message, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    param = _sub(layer, "pooling_param")
    if len(shape) != 4:
        raise _error(layer.line, f"pooling {name!r} needs a 4-D input, got shape {shape}")
    pool = param.get("pool", "MAX")
    if pool not in ("MAX", "AVE", "STOCHASTIC"):
        raise _error(param.line_of("pool"), f"pool must be MAX, AVE or STOCHASTIC, not {pool!r}")
    if _bool(param, "global_pooling", False):
        if param.has("kernel_size") or param.has("kernel_h") or param.has("kernel_w"):
            raise _error(param.line_of("global_pooling"), "global_pooling takes no kernel size")
        return (shape[0], shape[1], 1, 1)
    kernel = _spatial(param, 2, "kernel", None, 1)
    pad = _spatial(param, 2, "pad", 0, 0)
    stride = _spatial(param, 2, "stride", 1, 1)
    mode = param.get("round_mode", "CEIL")
    if mode not in ("CEIL", "FLOOR"):
        raise _error(param.line_of("round_mode"), f"round_mode must be CEIL or FLOOR, not {mode!r}")
    out = []
    for size, k, p, s in zip(shape[2:], kernel, pad, stride):
        if p >= k:
            raise _error(layer.line, f"pooling {name!r}: pad {p} must be smaller than the kernel {k}")
        if size + 2 * p < k:
            raise _error(layer.line, f"pooling {name!r}: kernel {k} exceeds the padded input {size + 2 * p}")
        span = size + 2 * p - k
        # Caffe rounds up by default, so a last window may hang over the edge...
        pooled = (-(-span // s) if mode == "CEIL" else span // s) + 1
        # ...but never starts inside the padding only.
        if p and (pooled - 1) * s >= size + p:
            pooled -= 1
        out.append(pooled)
    return (shape[0], shape[1], *out)


def _concat(layer: Message, name: str, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    param = _sub(layer, "concat_param")
    first = shapes[0]
    key = "axis" if param.has("axis") or not param.has("concat_dim") else "concat_dim"  # concat_dim: the V1 name
    axis = _axis(_signed(param, key, 1), len(first), param.line_of(key))
    for s in shapes[1:]:
        if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != axis):
            raise _error(layer.line, f"concat {name!r}: shapes {shapes} differ outside axis {axis}")
    return (*first[:axis], sum(s[axis] for s in shapes), *first[axis + 1:])


def _flatten(layer: Message, shape: tuple[int, ...]) -> tuple[int, ...]:
    param = _sub(layer, "flatten_param")
    start = _axis(_signed(param, "axis", 1), len(shape), param.line_of("axis"))
    end = _axis(_signed(param, "end_axis", -1), len(shape), param.line_of("end_axis"))
    if end < start:
        raise _error(param.line, f"flatten end_axis {end} comes before axis {start}")
    return (*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:])


def _layer_type(layer: Message) -> str:
    t = layer.get("type")
    if isinstance(t, Enum):
        return V1_TYPES.get(t, str(t))
    if not isinstance(t, str):
        raise _error(layer.line, "the layer has no type")
    return t


def _in_test_phase(layer: Message) -> bool:
    """False for layers a deploy (TEST-phase) net leaves out: include { phase: TRAIN }."""
    rules = [r for r in layer.all("include") if isinstance(r, Message) and r.has("phase")]
    return not rules or any(r.get("phase") == "TEST" for r in rules)


def _inputs(net: Message, blobs: dict[str, tuple[int, ...]]) -> None:
    names = [_str_value(v, net.line_of("input"), "input") for v in net.all("input")]
    shapes = [v for v in net.all("input_shape")]
    dims = _ints(net, "input_dim", lo=1)
    if shapes:
        if len(shapes) != len(names) or not all(isinstance(s, Message) for s in shapes):
            raise _error(net.line_of("input_shape"), f"{len(names)} inputs but {len(shapes)} input_shape blocks")
        for name, s in zip(names, shapes):
            blobs[name] = _shape(s)
    elif dims:
        if len(dims) != 4 * len(names):
            raise _error(net.line_of("input_dim"), f"{len(names)} inputs need {4 * len(names)} input_dim values, got {len(dims)}")
        for i, name in enumerate(names):
            blobs[name] = tuple(dims[4 * i: 4 * i + 4])
    elif names:
        raise _error(net.line_of("input"), "input without input_shape or input_dim")


def _str_value(value: Any, line: int, what: str) -> str:
    if not isinstance(value, str) or isinstance(value, Enum):
        raise _error(line, f"{what} must be a quoted string, not {value!r}")
    return str(value)


def layer_shapes(prototxt: str) -> list[LayerSpec]:
    """The weight-bearing layers of a deploy prototxt, in order, with their weight and bias shapes."""
    net = parse(prototxt)
    blobs: dict[str, tuple[int, ...]] = {}
    _inputs(net, blobs)
    specs: list[LayerSpec] = []
    seen: dict[str, int] = {}
    layers = [(k, v, n) for k, v, n in net.fields if k in ("layer", "layers")]
    for index, (_, layer, line) in enumerate(layers):
        if not isinstance(layer, Message):
            raise _error(line, "layer must be a { ... } block")
        if not _in_test_phase(layer):
            continue
        name = _str_value(layer.get("name", f"layer{index}"), layer.line_of("name"), "name")
        kind = _layer_type(layer)
        bottoms = [_str_value(b, layer.line_of("bottom"), "bottom") for b in layer.all("bottom")]
        tops = [_str_value(t, layer.line_of("top"), "top") for t in layer.all("top")]
        for b in bottoms:
            if b not in blobs:
                raise _error(layer.line, f"layer {name!r}: bottom {b!r} is not produced by an earlier layer or input")
        shapes = [blobs[b] for b in bottoms]
        if kind == "Input":
            given = [_shape(s) if isinstance(s, Message) else None for s in _sub(layer, "input_param").all("shape")]
            if None in given or len(given) not in (1, len(tops)) or not tops:
                raise _error(layer.line, f"input layer {name!r} needs one shape block, or one per top")
            for i, t in enumerate(tops):
                blobs[t] = given[i if len(given) > 1 else 0]
            continue
        if kind not in SHAPE_LAYER_TYPES:
            raise _error(layer.line, f"layer {name!r}: type {kind!r} is not supported "
                                     f"(supported: {', '.join(SHAPE_LAYER_TYPES)})")
        if not bottoms:
            raise _error(layer.line, f"layer {name!r} has no bottom")
        if kind == "Concat" or kind == "Eltwise":
            if kind == "Eltwise" and any(s != shapes[0] for s in shapes):
                raise _error(layer.line, f"eltwise {name!r}: inputs of different shapes {shapes}")
            out = [_concat(layer, name, shapes) if kind == "Concat" else shapes[0]]
        elif kind == "Split":
            out = [shapes[0]] * len(tops)
        elif len(bottoms) != 1:
            raise _error(layer.line, f"layer {name!r} ({kind}) takes one bottom, not {len(bottoms)}")
        elif kind in WEIGHT_LAYER_TYPES:
            shape, spec = (_conv if kind == "Convolution" else _inner_product)(layer, name, shapes[0])
            if name in seen:
                raise _error(layer.line, f"layer name {name!r} is used twice (first at line {seen[name]})")
            seen[name] = layer.line
            specs.append(spec)
            out = [shape]
        elif kind == "Pooling":
            out = [_pooling(layer, name, shapes[0])]
        elif kind == "Flatten":
            out = [_flatten(layer, shapes[0])]
        else:  # element-wise: the shape passes through
            out = [shapes[0]]
        if len(tops) != len(out):
            raise _error(layer.line, f"layer {name!r} ({kind}) needs {len(out)} top(s), has {len(tops)}")
        for t, s in zip(tops, out):
            blobs[t] = s
    return specs
