"""The `dcformat` command: compress, decompress, inspect, verify, convert and demo.

Every error a user can cause is one line on stderr, `dcformat: error: <file>: <what is wrong>`,
and an exit status:

- 0: done (`verify`: the file is intact);
- 1: bad data — an input that is missing, unreadable, not a model, corrupt, or holds what cannot be
  encoded; a missing optional dependency; a write that failed; `verify` found a problem;
- 2: usage — an unknown option or bad value, contradictory options, an output that exists (without
  --force) or is the input itself;
- 130: interrupted (Ctrl-C); 141: the reader of the output went away (SIGPIPE's convention).

`--debug` shows the traceback instead. `--help` and `inspect` never import numba, so they answer
instantly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from . import constants as K
from .container import read_header
from .errors import DCFError
from .progress import ProgressEvent
from .report import (  # noqa: F401  (layout_report, format_report and printable are used by examples and tests)
    PAPER_LEGEND, compact_table, encoder_lines, file_lines, format_report, layout_report, metadata_lines,
    paper_table, percent, printable, ratio_words, tensor_row,
)

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")

DATA_ERROR = 1
USAGE_ERROR = 2
INTERRUPTED = 130
BROKEN_PIPE = 128 + 13  # SIGPIPE

# The optional extra that brings each optional package (pyproject.toml's optional-dependencies).
EXTRAS = {"torch": "torch", "safetensors": "safetensors", "scipy": "test", "transformers": "hf", "distributed": "dask",
          "matplotlib": "examples", "sklearn": "examples"}


# ---------------------------------------------------------------------------------------------
# Errors and warnings


class CommandError(Exception):
    """An error to print as one line, `dcformat: error: <path>: <message>`, with the exit status."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, status: int = DATA_ERROR):
        super().__init__(message)
        self.message, self.path, self.status = message, None if path is None else os.fspath(path), status

    def line(self) -> str:
        where = f"{printable(self.path)}: " if self.path is not None else ""
        return f"dcformat: error: {where}{printable(self.message)}"


def usage(message: str, path: str | os.PathLike | None = None) -> CommandError:
    return CommandError(message, path, USAGE_ERROR)


def describe(error: BaseException, path: str | None = None) -> str:
    """One line saying what went wrong, without the paths of temporary files or a repeat of `path`."""
    if isinstance(error, ImportError) and getattr(error, "name", None):
        name = error.name.split(".")[0]
        extra = EXTRAS.get(name)
        how = f"pip install 'dcformat[{extra}]'" if extra else f"pip install {name}"
        return f"needs the optional package {name}, which is not installed: {how}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror  # the caller names the file: never the temporary one
    text = str(error)
    if type(error).__name__ == "UnpicklingError" and "Unsupported global: GLOBAL " in text:
        cls = text.split("Unsupported global: GLOBAL ", 1)[1].split()[0]
        return (f"holds a pickled {cls} object, not a state dict (PyTorch files are read with "
                "weights_only=True): save model.state_dict() instead")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if path and text.startswith(f"{path}: "):
        text = text[len(path) + 2:]
    return text


@contextmanager
def about(path: str | os.PathLike | None, status: int = DATA_ERROR) -> Iterator[None]:
    """Report any error raised inside as one line about `path` (readers of other formats raise anything)."""
    try:
        yield
    except (CommandError, KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as e:  # noqa: BLE001 - third-party readers raise their own types for bad files
        raise CommandError(describe(e, None if path is None else os.fspath(path)), path, status) from e


class Messages:
    """Warnings on stderr (`dcformat: warning: ...`), kept for --json, silenced by --quiet."""

    def __init__(self, quiet: bool = False):
        self.quiet, self.warnings = quiet, []

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        if not self.quiet:
            print(f"dcformat: warning: {printable(text)}", file=sys.stderr)


def check_output(output: str, inputs: Sequence[str], force: bool) -> None:
    """Never write onto an input; an existing output needs --force (as gzip and zstd)."""
    for src in inputs:
        if _same_file(src, output):
            raise usage("is the input file: dcformat never overwrites its input (choose another output)", output)
    if os.path.isdir(output):
        raise usage("is a directory: give the output file's name", output)
    if os.path.lexists(output) and not force:
        raise usage("already exists: use --force (-f) to overwrite it", output)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


# ---------------------------------------------------------------------------------------------
# Progress


class ProgressBar:
    """Draws `ProgressEvent`s as one line on stderr, on a terminal only: bytes done, and the tensor
    being worked on (events arrive before a tensor starts); a search shows what it is trying."""

    def __init__(self, enabled: bool | None = None, stream: Any = None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.perf_counter()
        self.last = 0.0
        self.drawn = False

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        finished = event.total_bytes and event.done_bytes >= event.total_bytes
        if now - self.last < 0.1 and not finished:
            return
        self.last = now
        self.draw(self.line(event, now - self.start, shutil.get_terminal_size().columns))

    @staticmethod
    def line(event: ProgressEvent, seconds: float, columns: int) -> str:
        """The bar's text for one event, at most `columns - 1` characters."""
        if event.total_bytes:
            share = min(1.0, event.done_bytes / event.total_bytes)
            filled = int(20 * share)
            text = (f"{event.stage} [{'#' * filled}{'.' * (20 - filled)}] {100 * share:3.0f}% "
                    f"{event.done_bytes / 1e6:,.1f}/{event.total_bytes / 1e6:,.1f} MB {seconds:4.0f} s")
        else:
            text = f"{event.stage} {seconds:4.0f} s"
        detail = event.message or event.tensor or event.shard
        if detail:
            text += " " + printable(detail)
        return text[: max(columns - 1, 10)]

    def draw(self, text: str) -> None:
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """Clear the bar's line, so that what follows starts on a clean line."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False


# ---------------------------------------------------------------------------------------------
# Arguments


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1] (e.g. 0.9 prunes 90%)")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if not 0.0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative number")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _width(text: str) -> int:
    """A codebook width: 1..16 bits, or 0 for exact values."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bits") from None
    if not (value == 0 or K.MIN_BITS <= value <= K.MAX_BITS):
        raise argparse.ArgumentTypeError(f"{value} bits: give 1..16 (or 0: no weight sharing)")
    return value


def _index_bits(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a width 1..16 or 'auto'") from None
    if not K.MIN_BITS <= value <= K.MAX_BITS:
        raise argparse.ArgumentTypeError(f"{value}: give a width 1..16 or 'auto'")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of threads") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} threads: give 1 or more")
    return value


def _size(text: str) -> int:
    """A size in bytes: 1500000, 1.5MB, 1.5M, 800KiB (k/M/G = powers of 1000, Ki/Mi/Gi = of 1024)."""
    number = text.strip().rstrip("bB").lower()
    unit = ""
    while number and number[-1].isalpha():
        unit = number[-1] + unit
        number = number[:-1]
    unit = {"k": "kb", "m": "mb", "g": "gb", "ki": "kib", "mi": "mib", "gi": "gib"}.get(unit, unit)
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1500000, 1.5MB, 800KiB)") from None
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(value)


RULE_EXAMPLE = "e.g. 'fc8.*:bits=4,prune=0.75'"


def parse_rule(text: str) -> tuple[str, dict[str, Any]]:
    """'PATTERN:KEY=VALUE,...' -> (pattern, settings), refusing empty and unknown settings."""
    from .policy import RULE_KEYS

    pattern, colon, body = text.partition(":")
    items = [item.strip() for item in body.split(",") if item.strip()]
    if not pattern or not colon or not items:
        raise usage(f"--rule {text!r}: no settings; write PATTERN:KEY=VALUE[,KEY=VALUE...], {RULE_EXAMPLE}")
    rule: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if key not in RULE_KEYS:
            raise usage(f"--rule {text!r}: unknown setting {key!r} (known: {', '.join(RULE_KEYS)})")
        if not eq and key != "raw":
            raise usage(f"--rule {text!r}: {key} needs a value ({key}=...)")
        try:
            if key == "index_bits":
                rule[key] = _index_bits(value)
            elif key == "bits":
                rule[key] = _width(value)
            elif key in ("prune", "threshold", "lam", "max_error", "step"):
                rule[key] = None if value.lower() == "none" else float(value)
            elif key == "raw":
                if value.lower() not in ("", "1", "true", "yes", "0", "false", "no"):
                    raise ValueError(f"raw={value}: give true or false")
                rule[key] = value.lower() in ("", "1", "true", "yes")
            else:
                rule[key] = value
        except (argparse.ArgumentTypeError, ValueError) as e:
            raise usage(f"--rule {text!r}: {key}: {e}") from None
    return pattern, rule


def _given(args: argparse.Namespace, *names: str) -> list[str]:
    """The options among `names` that the user set (their defaults are None)."""
    return [n for n in names if getattr(args, n, None) not in (None, False, [])]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options(args: argparse.Namespace, rules: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse options that contradict each other, saying why (the Policy checks each one alone)."""
    widths = _given(args, "bits", "conv_bits", "fc_bits")

    def refuse(first: str, others: list[str], why: str) -> None:
        if others and _given(args, first):
            raise usage(f"{_flag(first)} and {_flag(others[0])} contradict each other: {why}")

    if args.lossless:
        lossy = _given(args, "prune", "threshold", *("bits", "conv_bits", "fc_bits"), "quantizer", "init", "lam",
                       "max_error", "vector_bits", "step", "step_scales", "target_size")
        refuse("lossless", lossy, "--lossless stores every tensor exactly")
        from .policy import LOSSY_RULE_KEYS

        for pattern, rule in rules.items():
            lossy_keys = [k for k in LOSSY_RULE_KEYS if k in rule]
            if lossy_keys:
                raise usage(f"--lossless and --rule {pattern!r} contradict each other: --lossless stores every "
                            f"tensor exactly, the rule sets {lossy_keys[0]}")
    refuse("prune", _given(args, "threshold"), "give a fraction to prune or a threshold, not both")
    refuse("step", widths, "a step sets the levels itself (as many as the weights span)")
    refuse("target_size", _given(args, "step"), "the target size chooses the step")
    refuse("target_size", widths, "the target size searches a uniform step, which sets the levels")
    refuse("max_error", _given(args, "step", "target_size"), "give one target: an error, a step or a size")
    refuse("max_error", widths, "--max-error chooses each tensor's width (1..16 bits)")
    if args.step_scales and not _given(args, "step", "target_size"):
        raise usage("--step-scales needs --step or --target-size: its factors scale the uniform step")
    ecsq = args.quantizer == "ecsq" or any(r.get("quantizer") == "ecsq" for r in rules.values())
    if args.lam is not None and not ecsq:
        raise usage("--lam needs --quantizer ecsq: it is the entropy-constrained quantizer's rate weight")
    if args.init is not None and args.quantizer not in (None, "kmeans"):
        raise usage(f"--init and --quantizer {args.quantizer} contradict each other: --init sets k-means' start")
    if (args.quantizer or args.init) and _given(args, "step", "target_size"):
        raise usage("--quantizer/--init and --step/--target-size contradict each other: a step quantizes uniformly")


def policy_from_args(args: argparse.Namespace):
    """The Policy the options describe, after refusing contradictions (exit 2)."""
    from .policy import Policy

    rules: dict[str, dict[str, Any]] = {}
    for text in args.rule or []:
        pattern, rule = parse_rule(text)
        rules[pattern] = rule
    check_options(args, rules)
    kwargs: dict[str, Any] = dict(
        prune=args.prune or 0.0, threshold=args.threshold, index_bits=5 if args.index_bits is None else args.index_bits,
        layout=args.layout or "auto", raw=tuple(args.raw or ()), rules=rules, huffman=args.huffman, coder=args.coder,
        lossless=args.lossless, quantizer=args.quantizer or "kmeans", init=args.init or "linear", lam=args.lam or 0.0,
        max_error=args.max_error, step=args.step, target_size=args.target_size,
        step_scales=_step_scales(args.step_scales), vector_bits=args.vector_bits, compact_header=not args.json_header,
        zero_copy=tuple(args.zero_copy or ()),
    )
    kwargs["conv_bits"] = args.bits if args.bits is not None else (8 if args.conv_bits is None else args.conv_bits)
    kwargs["fc_bits"] = args.bits if args.bits is not None else (5 if args.fc_bits is None else args.fc_bits)
    try:
        return Policy(**kwargs)
    except DCFError as e:
        raise usage(str(e).removeprefix("policy: ")) from None


def _step_scales(path: str | None) -> dict[str, float]:
    """{tensor name: step factor} from a JSON file, e.g. dcformat.allocation.scales_from_sensitivity's result."""
    if path is None:
        return {}
    with about(path):
        with open(path, encoding="utf-8") as f:
            scales = json.load(f)
    if not isinstance(scales, dict):
        raise CommandError("expected a JSON object {tensor name: factor} (--step-scales)", path)
    return scales


def _parse_metadata(items: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise usage(f"--metadata {item!r}: write KEY=VALUE")
        out[key] = value
    return out


def unmatched_patterns(args: argparse.Namespace, policy: Any, names: Sequence[str]) -> list[str]:
    """Warnings for --raw and --rule patterns that match no tensor, and --step-scales names not in the model."""
    import fnmatch

    out = []
    for pattern in policy.raw:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            out.append(f"--raw {pattern!r} matches no tensor")
    for pattern in policy.rules:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            out.append(f"--rule {pattern!r} matches no tensor")
    missing = sorted(set(policy.step_scales) - set(names))
    if missing:
        out.append(f"--step-scales names {len(missing)} tensor(s) not in the model, e.g. {missing[0]!r}")
    return out


def pruning_warning(policy: Any) -> str | None:
    if policy.prune or policy.threshold is not None or any(r.get("prune") or r.get("threshold") is not None
                                                            for r in policy.rules.values()):
        return ("pruning without retraining costs accuracy (a pruned weight is gone for good): prune while "
                "training with dcformat.pipeline (Pruner, then CodebookTrainer), as the paper does")
    return None


# ---------------------------------------------------------------------------------------------
# What a compressed file changed


def tensor_errors(path: str, tensors: Mapping[str, Any], progress: ProgressBar | None = None) -> dict[str, float | None]:
    """Relative RMS error ||decoded - original|| / ||original|| of each tensor as the file at `path` decodes it
    (0 for exact; None where the original's norm is not finite), one tensor at a time."""
    import numpy as np

    from .api import SafeOpen

    out: dict[str, float | None] = {}
    with SafeOpen(path) as f:
        for name in f.keys():
            original = np.ascontiguousarray(tensors[name]).reshape(-1)
            decoded = f.get_tensor(name).reshape(-1)
            if original.dtype == decoded.dtype and np.array_equal(original.view(np.uint8), decoded.view(np.uint8)):
                out[name] = 0.0  # bit for bit (NaN payloads and -0.0 included)
                continue
            a, b = original.astype(np.float64).reshape(-1), decoded.astype(np.float64).reshape(-1)
            norm, diff = float(np.linalg.norm(a)), float(np.linalg.norm(b - a))
            out[name] = None if not math.isfinite(norm) or not math.isfinite(diff) else (diff / norm if norm else math.inf)
    return out


def model_error(tensors: Mapping[str, Any], errors: Mapping[str, float | None]) -> float | None:
    """Relative RMS error over all lossy tensors together: sqrt(sum of squared errors / sum of squares)."""
    import numpy as np

    num = den = 0.0
    for name, e in errors.items():
        if e is None or e == 0.0:
            continue
        sq = float(np.sum(np.square(np.asarray(tensors[name], dtype=np.float64))))
        if not math.isfinite(e):
            return math.inf
        num += e * e * sq
        den += sq
    return math.sqrt(num / den) if den else (0.0 if num == 0 else math.inf)


def annotate(report: dict[str, Any], policy: Any, tensors: Mapping[str, Any]) -> None:
    """Give each coded row of a fresh file's report the quantizer and step its policy chose."""
    import numpy as np

    for row in report["tensors"]:
        if row["codebook"] and row["name"] in tensors:
            plan = policy.plan(row["name"], np.asarray(tensors[row["name"]]))
            row["step"] = plan.step
            row["quantizer"] = "uniform" if plan.step is not None else plan.quantizer


def policy_words(policy: Any, args: argparse.Namespace) -> str:
    """The lossy steps of a policy in a line."""
    if policy.step is not None:
        text = f"uniform quantization, step {policy.step:.4g}"
        if args.target_size is not None:
            text += f" (chosen for --target-size {args.target_size:,} B)"
    elif policy.max_error is not None:
        text = f"per tensor, the fewest codebook bits (1..16) for a relative RMS error of at most {percent(policy.max_error)}"
    else:
        text = f"k-means codebooks of {policy.fc_bits or 'exact'} bits for 2-D and {policy.conv_bits or 'exact'} for conv tensors"
        if (policy.fc_bits, policy.conv_bits) == (5, 8):
            text += " (the paper's widths, the default)"
    if policy.prune or policy.threshold is not None:
        text += f", {100 * policy.prune:g}% pruned" if policy.prune else f", |w| < {policy.threshold:g} pruned"
    if policy.vector_bits:
        text += f", 1-D tensors as {policy.vector_bits}-bit codebooks"
    return text


# ---------------------------------------------------------------------------------------------
# Commands


@contextmanager
def output_named(src: str, dst: str) -> Iterator[None]:
    """An OSError about anything but the input is about the output: say so naming the output the user
    gave, never the temporary file or staging folder the writer was using."""
    try:
        yield
    except OSError as e:
        if e.filename is not None and os.fspath(e.filename) != os.fspath(src):
            raise CommandError(describe(e), dst) from e
        raise


def check_job_output(src: str, dst: str, force: bool, folder: bool) -> None:
    """check_output, for a file or a folder output: never the input, inside it or holding it."""
    from .interop.convert import check_paths

    if not folder or _same_file(src, dst):
        check_output(dst, [src], force)
        return
    if os.path.lexists(dst) and not os.path.isdir(dst):
        raise usage("exists and is not a folder: a model folder is written as a folder", dst)
    try:
        check_paths(src, dst, force)
    except DCFError as e:
        text = str(e).removeprefix(f"{dst}: ")
        if "already exists" in text:
            text = "already exists: use --force (-f) to replace it"
        raise usage(text, dst) from None


def cmd_compress(args: argparse.Namespace) -> int:
    from .interop import convert

    if args.min_similarity is not None:
        return cmd_compress_similarity(args)
    messages = Messages(args.quiet)
    policy = policy_from_args(args)
    metadata = _parse_metadata(args.metadata)
    folder = convert.compress_writes_folder(args.input, args.output)
    if not os.path.exists(args.input):
        raise CommandError("No such file or directory", args.input)
    check_job_output(args.input, args.output, args.force, folder)
    if args.max_shard_size is not None and not folder:
        raise usage("--max-shard-size needs a folder output (a path without .dcf): shards are files of a folder")
    bar = ProgressBar(enabled=False if (args.json or args.quiet) else None)
    try:
        with about(args.input), output_named(args.input, args.output):
            result = convert.compress(args.input, args.output, policy=policy, metadata=metadata,
                                      max_shard_size=args.max_shard_size, threads=args.threads, progress=bar,
                                      overwrite=args.force)
        with about(args.output):
            errors = {row["name"]: row["error"] for row in result.tensors}
            report, shard_files = model_layout(args.output, errors)
    finally:
        bar.close()
    names = [row["name"] for row in result.tensors]
    for text in unmatched_patterns(args, policy, names):
        messages.warn(text)
    if (text := pruning_warning(policy)) is not None:
        messages.warn(text)
    for key, why in result.dropped.items():
        messages.warn(f"{args.input}: not a tensor, not kept: {key} ({why})")
    # what --target-size settled on (a step, or lossless): the report records the policy used
    used = policy if policy.target_size is None else policy.with_(
        target_size=None, step=result.policy.get("step"), lossless=bool(result.policy.get("lossless")))
    totals = report["totals"]
    lossy = {n: e for n, e in errors.items() if e != 0.0}
    error = result.error
    if policy.max_error is not None:
        missed = [n for n, e in errors.items() if e is not None and e > policy.max_error * (1 + 1e-9)]
        if missed:
            messages.warn(f"--max-error {policy.max_error:g} not met by {len(missed)} tensor(s), even at the widest "
                          f"width allowed: {', '.join(repr(n) for n in missed[:3])}{', ...' if len(missed) > 3 else ''}"
                          + (" (pruning alone costs more)" if policy.prune or policy.threshold is not None else ""))
    input_bytes = sum(os.path.getsize(p) for p in result.read)
    summary = {
        "input": args.input, "output": args.output, "input_bytes": input_bytes,
        "dense_bytes": totals["dense_bytes"], "file_bytes": totals["file_bytes"],
        "ratio": totals["dense_bytes"] / totals["file_bytes"], "seconds": result.seconds,
        "lossless": not lossy, "error": error, "step": used.step, "policy": result.policy,
        "shards": [os.path.relpath(p, args.output) if folder else p for p in shard_files],
        "copied": result.copied, "warnings": messages.warnings,
    }
    if args.json:
        print(json.dumps({"summary": summary, **report}, indent=2))
        return 0
    width = _terminal_width()
    what = "tensors"
    if folder:
        what = f"tensors in {len(shard_files)} shard{'s' if len(shard_files) != 1 else ''}"
        if result.copied:
            what += f", {len(result.copied)} other file{'s' if len(result.copied) != 1 else ''} copied"
    lines = [f"wrote {args.output}: {totals['file_bytes']:,} B from {totals['dense_bytes']:,} B of {what}, "
             f"{ratio_words(totals['dense_bytes'], totals['file_bytes'])} ({result.seconds:.1f} s)"]
    if not lossy:
        lines.append("lossless: every tensor decodes exactly as it was")
        if args.target_size is not None:
            lines.append(f"  (--target-size {args.target_size:,} B is at or above the exact file's size)")
    else:
        worst = max(lossy, key=lambda n: lossy[n] if lossy[n] is not None else -1.0)
        lines.append(f"lossy: {policy_words(used, args)}")
        together = f"the {len(lossy)} changed tensors together" if len(lossy) > 1 else "the 1 changed tensor"
        lines.append(f"  relative RMS error ||decoded - original|| / ||original||: {percent(error)} over "
                     f"{together}, at most {percent(lossy[worst])} ({worst})")
        lines.append(f"  for an exact file: dcformat compress {args.input} -o OUT --lossless")
    print("\n".join(compact_table(report, width)))
    print(wrapped([printable(line) for line in lines], width))
    return 0


SIMILARITY_HELP = ("smallest file whose model outputs stay this similar (mean cosine, 1 = the original's) on "
                   "held-out calibration text, e.g. 0.99; the input is a transformers folder (or its .safetensors "
                   "beside config.json); needs the hf extra. Similarity: of mean-pooled sentence embeddings for a "
                   "sentence-transformers folder (modules.json), of next-token distributions for causal LMs, of "
                   "the last hidden states of each token for other models")


def cmd_compress_similarity(args: argparse.Namespace) -> int:
    """compress --min-similarity: search the smallest file meeting the target on calibration text (dcformat.fit)."""
    import numpy as np

    from .api import load_file, save_file
    from .interop.formats import read_tensors
    from .policy import Policy

    lossy = _given(args, "prune", "threshold", "bits", "conv_bits", "fc_bits", "index_bits", "quantizer", "init", "lam",
                   "max_error", "vector_bits", "step", "step_scales", "target_size", "rule", "lossless")
    if args.max_shard_size is not None:
        raise usage("--min-similarity writes one .dcf file: --max-shard-size does not apply to it")
    if lossy:
        raise usage(f"--min-similarity and {_flag(lossy[0])} contradict each other: the similarity target chooses "
                    "every step itself")
    if not -1.0 <= args.min_similarity < 1.0:
        raise usage(f"--min-similarity must be in [-1, 1) (1 would be the exact file: use --lossless), "
                    f"not {args.min_similarity}")
    messages = Messages(args.quiet)
    folder = args.input if os.path.isdir(args.input) else os.path.dirname(os.path.abspath(args.input))
    weights = args.input
    if os.path.isdir(args.input):
        candidates = [n for n in ("model.safetensors",) if os.path.isfile(os.path.join(folder, n))]
        if not candidates:
            raise CommandError("--min-similarity needs a folder holding model.safetensors (sharded folders are not "
                               "supported yet)", args.input)
        weights = os.path.join(folder, candidates[0])
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise CommandError("--min-similarity needs the model's config.json beside its weights (a transformers "
                           "folder)", args.input)
    if args.calibration is not None and not os.path.isfile(args.calibration):
        raise CommandError("no such calibration text file", args.calibration)
    check_output(args.output, [weights], args.force)
    metadata = _parse_metadata(args.metadata)
    verbose = not (args.quiet or args.json)
    start = time.perf_counter()

    def progress(event: ProgressEvent) -> None:
        if verbose and event.message and event.total_bytes == 0:
            print(f"  {time.perf_counter() - start:6.1f} s  {printable(event.message)}", file=sys.stderr, flush=True)
        elif verbose and event.total_bytes and event.done_bytes in (1, event.total_bytes):
            what = (event.message or "").split(" of ")[0]
            print(f"  {time.perf_counter() - start:6.1f} s  {what}: tensor {event.done_bytes} of {event.total_bytes}",
                  file=sys.stderr, flush=True)

    from .interop import transformers_fit as tf

    with about(args.input):
        base = Policy(huffman=args.huffman, coder=args.coder, compact_header=not args.json_header)
        result, kind = tf.fit_folder(folder, args.min_similarity, calibration=args.calibration, method=args.method,
                                     policy=base, progress=progress)
        tensors = read_tensors(weights)
    names = tf.rename_for(tensors, result.tensors)
    for model_name, file_name in names.items():
        if tensors[file_name].shape == result.tensors[model_name].shape and \
                tensors[file_name].dtype == result.tensors[model_name].dtype:
            tensors[file_name] = result.tensors[model_name]
    scales = {names[n]: v for n, v in result.policy.step_scales.items() if n in names}
    rows = {names[n]: v for n, v in result.policy.row_scales.items() if n in names}
    policy = result.policy.with_(step_scales=scales, row_scales=rows)
    with about(args.output):
        save_file(tensors, args.output, policy=policy, metadata={**metadata, **result.metadata})
    # What a user gets: the file decoded, loaded into the model, measured on the held-out text again.
    with about(args.output):
        decoded = load_file(args.output)
    model, tokenizer, _ = tf.load_folder(folder)
    _, held_texts = tf.split_texts(tf.calibration_texts(args.calibration))
    held = tf.OutputSimilarity(model, tf._batches_of(tokenizer, held_texts), kind)
    back = {m: decoded[f] for m, f in names.items()}
    from_file = held(back)
    seconds = time.perf_counter() - start
    dense = sum(int(np.asarray(v).nbytes) for v in tensors.values())
    size = os.path.getsize(args.output)
    summary = {"input": args.input, "output": args.output, "dense_bytes": dense, "file_bytes": size,
               "ratio": dense / size, "seconds": seconds, "method": result.method, "similarity_kind": kind,
               "min_similarity": args.min_similarity, "search_similarity": result.similarity,
               "held_out_similarity": from_file, "data": json.loads(result.metadata["dcformat.fit"])["data"],
               "warnings": messages.warnings}
    if args.json:
        print(json.dumps({"summary": summary}, indent=2))
        return 0
    print(f"wrote {args.output}: {size:,} B from {dense:,} B of tensors, {ratio_words(dense, size)} ({seconds:.1f} s)")
    print(f"  {kind} cosine {from_file:.5f} on held-out text (target {args.min_similarity}), {result.similarity:.5f} "
          f"on the text searched; method {result.method}")
    print(f"  data: {summary['data']}")
    return 0


def _index_shards(index: str) -> tuple[dict[str, str], str, list[str]]:
    """(weight map, folder, shard file names in the order the index first names them) of an index file."""
    from .shards import read_index

    weight_map, _ = read_index(index)
    return weight_map, os.path.dirname(os.path.abspath(index)), list(dict.fromkeys(weight_map.values()))


def model_layout(path: str, errors: Mapping[str, float | None] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The layout report of a .dcf file, an index file or a model folder, and the files it read: the
    shards of a folder merged into one report, each row naming its shard (headers only)."""
    from .shards import resolve

    kind, target = resolve(path)
    if kind == "file":
        return layout_report(read_header(target), errors), [target]
    _, folder, names = _index_shards(target)
    files = [os.path.join(folder, n) for n in names]
    reports = []
    for name, file in zip(names, files):
        with about(file):
            reports.append(layout_report(read_header(file), errors))
        for row in reports[-1]["tensors"]:
            row["shard"] = name
    return merge_layouts(reports, names), files


def merge_layouts(reports: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """One report over several shards: rows in shard order, totals summed, one entry per shard."""
    rows = [row for r in reports for row in r["tensors"]]
    totals: dict[str, Any] = {}
    for key in ("tensors", "weights", "fillers", "bytes", "dense_bytes", "file_bytes", "header_bytes",
                "header_stored_bytes", "header_json_bytes"):
        totals[key] = sum(r["totals"][key] for r in reports)
    kept = sum(r["weights"] * r["kept"] for r in rows if r["kept"] is not None)
    totals["kept"] = kept / totals["weights"] if totals["weights"] else None
    codings = sorted({r["totals"]["header_coding"] for r in reports})
    totals["header_coding"] = codings[0] if len(codings) == 1 else "mixed"
    totals["rate"] = totals["file_bytes"] / totals["dense_bytes"] if totals["dense_bytes"] else None
    totals["ratio"] = totals["dense_bytes"] / totals["file_bytes"] if totals["file_bytes"] else None
    totals["error"] = None
    first = reports[0]
    encoder = dict(first["encoder"], error=None) if first["encoder"] else None
    return {
        "version": max((r["version"] for r in reports), key=lambda v: tuple(map(int, v.split(".")))),
        "metadata": first["metadata"], "encoder": encoder, "tables": sum(r["tables"] for r in reports),
        "tensors": rows, "totals": totals,
        "shards": [{"file": n, "tensors": r["totals"]["tensors"], "file_bytes": r["totals"]["file_bytes"],
                    "dense_bytes": r["totals"]["dense_bytes"]} for n, r in zip(names, reports)],
    }


def shard_lines(report: dict[str, Any]) -> list[str]:
    """One line per shard of a folder's report (none for a single file)."""
    shards = report.get("shards")
    if not shards:
        return []
    return [f"{len(shards)} shards:"] + [
        f"  {printable(s['file'])}: {s['tensors']} tensors, {s['file_bytes']:,} B from {s['dense_bytes']:,} B" for s in shards]


def cmd_decompress(args: argparse.Namespace) -> int:
    from .interop import convert

    if not os.path.exists(args.input):
        raise CommandError("No such file or directory", args.input)
    check_job_output(args.input, args.output, args.force, convert.decompress_writes_folder(args.input, args.output))
    bar = ProgressBar()
    try:
        with about(args.input), output_named(args.input, args.output):
            result = convert.decompress(args.input, args.output, overwrite=args.force, progress=bar,
                                        threads=args.threads)
    finally:
        bar.close()
    what = f"{len(result.tensors)} tensors, {result.input_bytes:,} B"
    if len(result.written) > 1 or result.copied:
        what += f" in {len([w for w in result.written if not w.endswith('.json')])} file(s)"
        if result.copied:
            what += f", {len(result.copied)} other file(s) copied"
    print(f"wrote {printable(args.output)}: {what}")
    return 0


def wrapped(lines: Sequence[str], width: int | None) -> str:
    """Lines of prose, each wrapped to `width` (continuations indented); tables are printed as they are."""
    import textwrap

    if width is None:
        return "\n".join(lines)
    out = []
    for line in lines:
        indent = " " * (len(line) - len(line.lstrip(" ")))
        out += textwrap.wrap(line, max(width - 1, 20), subsequent_indent=indent + "  ", break_on_hyphens=False,
                             break_long_words=False) or [""]
    return "\n".join(out)


def _terminal_width() -> int | None:
    """Columns to fit: $COLUMNS, else the terminal's; None (no limit) when stdout is not a terminal."""
    if os.environ.get("COLUMNS", "").isdigit() or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def cmd_inspect(args: argparse.Namespace) -> int:
    with about(args.file):
        report, _ = model_layout(args.file)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    width = _terminal_width()
    if args.wide:
        lines = paper_table(report) + [""] + PAPER_LEGEND.splitlines()
    else:
        lines = compact_table(report, width)
    print("\n".join(lines))
    print(wrapped([""] + file_lines(report) + shard_lines(report) + encoder_lines(report), width))
    meta = metadata_lines(report, None if args.wide else width)
    if meta:
        print("\n".join(meta))
    return 0


def verify_file(path: str, progress: ProgressBar | None = None, shard: str | None = None) -> dict[str, Any]:
    """Check the header, every section's CRC and every tensor's decoding; collect every problem.
    "names": the tensors the header lists (None if the file could not be opened)."""
    from .api import SafeOpen
    from .container import check_section

    problems: list[dict[str, Any]] = []
    checked = 0

    def problem(tensor: str | None, error: str, message: str) -> None:
        problems.append({"tensor": tensor, "error": error, "message": message})

    try:
        f = SafeOpen(path)
    except (DCFError, OSError) as e:
        problem(None, type(e).__name__, describe(e) if isinstance(e, OSError) else str(e))
        return {"file": path, "ok": False, "tensors": 0, "problems": problems, "names": None}
    with f:
        total = sum(info.nbytes for info in f.header.tensors)
        done = 0
        for info in f.header.tensors:
            if progress is not None:
                progress(ProgressEvent("verify", done, total, tensor=info.name, shard=shard))
            done += info.nbytes
            intact = True
            for key, section in info.sections():
                try:
                    check_section(f._buf, section, key, info.name)
                except DCFError as e:
                    problem(info.name, type(e).__name__, str(e))
                    intact = False
            if not intact:  # decoding would only report the same checksum again
                continue
            try:
                f.get_tensor(info.name)
                if info.encoding == K.SPARSE:
                    fillers = info.entries - len(f.get_sparse(info.name).values)
                    if fillers != info.fillers:
                        problem(info.name, "FormatError",
                                f"header says {info.fillers} fillers, the data has {fillers} zero entries")
                checked += 1
            except DCFError as e:
                problem(info.name, type(e).__name__, str(e))
        names = [info.name for info in f.header.tensors]
    return {"file": path, "ok": not problems, "tensors": checked, "problems": problems, "names": names}


def verify_model(path: str, progress: ProgressBar | None = None) -> dict[str, Any]:
    """verify_file for a .dcf file; for an index or a model folder, every shard it lists, and the index
    against the shards (every listed tensor in its shard, every tensor of a shard listed)."""
    from .shards import resolve

    def failed(error: BaseException) -> dict[str, Any]:
        message = describe(error) if isinstance(error, OSError) else str(error)
        return {"file": path, "ok": False, "tensors": 0,
                "problems": [{"tensor": None, "error": type(error).__name__, "message": message}]}

    try:
        kind, target = resolve(path)
        if kind == "file":
            result = verify_file(target, progress)
            del result["names"]
            return result
        weight_map, folder, names = _index_shards(target)
    except (DCFError, OSError) as e:
        return failed(e)
    problems: list[dict[str, Any]] = []
    checked = 0
    for shard in names:
        result = verify_file(os.path.join(folder, shard), progress, shard)
        checked += result["tensors"]
        problems += [{**p, "shard": shard} for p in result["problems"]]
        names_held = result.pop("names")
        if names_held is None:
            continue  # the shard could not be opened: reported above
        held = set(names_held)
        listed = {n for n, s in weight_map.items() if s == shard}
        for n in sorted(listed - held):
            problems.append({"tensor": n, "error": "ShardIndexError", "shard": shard,
                             "message": f"the index lists tensor {n!r} in {shard}, which does not hold it"})
        for n in sorted(held - listed):
            problems.append({"tensor": n, "error": "ShardIndexError", "shard": shard,
                             "message": f"{shard} holds tensor {n!r}, which the index does not list"
                             + (f" (it lists it in {weight_map[n]})" if n in weight_map else "")})
    return {"file": path, "ok": not problems, "tensors": checked, "shards": names, "problems": problems}


def cmd_verify(args: argparse.Namespace) -> int:
    bar = ProgressBar(enabled=False if args.json else None)
    try:
        result = verify_model(args.file, bar)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["ok"]:
        where = f" in {len(result['shards'])} shards" if len(result.get("shards", [])) > 1 else ""
        print(f"{printable(args.file)}: OK ({result['tensors']} tensors decoded{where}, all checksums match)")
    else:
        for p in result["problems"]:
            shard = f"{printable(p['shard'])}: " if p.get("shard") else ""
            print(f"{printable(args.file)}: {shard}{p['error']}: {printable(p['message'])}")
        print(f"{printable(args.file)}: {len(result['problems'])} problem(s)")
    return 0 if result["ok"] else DATA_ERROR


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np

    from .api import load_file, save_file
    from .policy import Policy

    if args.output:
        check_output(args.output, [], args.force)
    with np.load(os.path.join(EXAMPLES, "lenet300.npz")) as z:
        model = {k: z[k] for k in z.files}
    with np.load(os.path.join(EXAMPLES, "digits_test.npz")) as z:
        x, y = z["x"], z["y"]
    policy = Policy(fc_bits=args.bits, index_bits=args.index_bits)
    dense = sum(a.nbytes for a in model.values())
    width = _terminal_width()
    print(wrapped([
        "dcformat demo: compress a small trained model, show what the file holds, decode it, check it still works.",
        "",
        f"model: an MLP 64-300-100-10 (LeNet-300-100's shape) for 8x8 digits, bundled with dcformat, trained, "
        f"pruned to about 10% of its weights and retrained; {sum(a.size for a in model.values()):,} parameters, "
        f"{dense:,} B as float32",
        f"policy: the weight matrices as {args.bits}-bit k-means codebooks (linear init), {args.index_bits}-bit "
        "relative indices between kept weights, Huffman coding; biases exact",
        ""], width))

    def accuracy(params: dict[str, np.ndarray]) -> float:
        h = x
        for i in (1, 2, 3):
            h = h @ params[f"fc{i}.weight"].T + params[f"fc{i}.bias"]
            h = np.maximum(h, 0) if i < 3 else h
        return float((h.argmax(1) == y).mean())

    with tempfile.TemporaryDirectory(prefix="dcformat-demo-") as folder:
        out = args.output or os.path.join(folder, "lenet300.dcf")
        start = time.perf_counter()
        with about(out):
            save_file(model, out, policy=policy, metadata={"model": "lenet-300-100 (digits)", "source": "dcformat demo"})
        t_enc = time.perf_counter() - start
        start = time.perf_counter()
        decoded = load_file(out)
        t_first = time.perf_counter() - start
        start = time.perf_counter()
        load_file(out)
        t_again = time.perf_counter() - start
        errors = tensor_errors(out, model)
        report = layout_report(read_header(out), errors)
        size = os.path.getsize(out)
    annotate(report, policy, model)
    print("\n".join(compact_table(report, width)))
    where = printable(out) if args.output else "a temporary folder, removed again (-o FILE keeps it)"
    biggest = max(float(np.max(np.abs(a))) for a in model.values() if a.size)
    change = max(float(np.max(np.abs(decoded[k].astype(np.float64) - model[k]))) if model[k].size else 0.0 for k in model)
    print(wrapped([
        "",
        "One row a tensor. kept: the share of its weights that are not zero (the rest were pruned in training); "
        "stored as: exact, or a codebook of shared values that each weight indexes; bits/weight: what the tensor "
        "costs in the file per weight, indices and codebook included (32 for exact float32); bytes: its share of "
        "the file; error: its relative RMS error ||decoded - original|| / ||original||.",
        "",
        f"file: {size:,} B, {ratio_words(dense, size)} than the {dense:,} B of float32 tensors; written to {where}",
        f"time: encode {1000 * t_enc:,.0f} ms and first decode {1000 * t_first:,.0f} ms, both including the one-time "
        f"loading (on the first run, compiling) of dcformat's numba kernels; decode again {1000 * t_again:,.1f} ms",
        f"largest change of any weight: {change:.3g} (absolute; the largest weight magnitude is {biggest:.3g}); "
        f"relative RMS error of the whole model {percent(model_error(model, errors))}",
        f"test accuracy on 360 held-out digits: {accuracy(model):.4f} before, {accuracy(decoded):.4f} after",
    ], width))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .interop.deepcompression import cli_convert

    if args.from_format and not args.prototxt:
        raise usage("--from deepcompression needs --prototxt: a .net file holds no layer names or shapes")
    check_output(args.output, [args.input] + ([args.prototxt] if args.prototxt else []), args.force)
    with about(args.input):
        return cli_convert(args)


# ---------------------------------------------------------------------------------------------
# Parser


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line: `dcformat: error: <what> (see dcformat compress --help)`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise usage(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="dcformat", description="Compressed neural-network model files (Deep Compression): "
               "pruned CSR/CSC layers, codebooks, Huffman-coded streams.",
               epilog="Exit status: 0 done; 1 bad data (an input that cannot be read or encoded, a corrupt file, a "
               "failed write, a missing optional package); 2 usage (bad or contradictory options, an output that "
               "exists without --force or is the input); 130 interrupted.")
    p.add_argument("--version", action="version", version=f"dcformat format {K.VERSION_MAJOR}.{K.VERSION_MINOR}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error instead of one line")
    sub.required = True

    c = sub.add_parser("compress", parents=[common], help="compress a model (.npz, .safetensors, .pt/.pth, or a model folder) into .dcf",
                       description="Compress a model. The default is lossy, the paper's widths: 2-D weight tensors as "
                       "5-bit and conv (3-D and more) as 8-bit k-means codebooks; 1-D tensors (biases, norms) and "
                       "non-float tensors stay exact. --lossless keeps every tensor exact. A model folder (Hugging Face style: "
                       "model.safetensors or shards with model.safetensors.index.json, or pytorch_model*.bin) becomes a "
                       "folder: the other files copied as they are, the weights as model.dcf or as shards "
                       "model-00001-of-0000N.dcf with model.dcf.index.json. Work goes one tensor at a time: memory stays "
                       "near a few tensors whatever the model's size.")
    c.add_argument("input", help="input model: .npz, .safetensors, .pt, .pth or .bin (loaded with weights_only=True), "
                   "or a model folder")
    c.add_argument("-o", "--output", required=True, help="output .dcf file, or a folder (a path without .dcf; "
                   "always for a folder input); written atomically, never the input")
    c.add_argument("--max-shard-size", type=_size, default=None, metavar="SIZE",
                   help="folder output: shards of at most this many dense bytes of tensors, as transformers' "
                   "max_shard_size (default 5GB; e.g. 2GB, 500MB)")
    c.add_argument("--threads", type=_threads, default=None, metavar="N",
                   help="tensors encoded side by side on N threads (default: one per CPU)")
    c.add_argument("-f", "--force", action="store_true", help="overwrite the output if it exists")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no warnings")
    c.add_argument("--prune", type=_fraction, default=None, metavar="FRACTION",
                   help="prune this fraction of each conv/fc tensor by magnitude (default 0; costs accuracy "
                   "without retraining: see dcformat.pipeline)")
    c.add_argument("--threshold", type=_non_negative, default=None, help="prune weights of magnitude below this instead")
    c.add_argument("--bits", type=_width, default=None, help="codebook bits for conv and fc tensors (0: no weight sharing)")
    c.add_argument("--conv-bits", type=_width, default=None, help="codebook bits for conv tensors (default 8)")
    c.add_argument("--fc-bits", type=_width, default=None, help="codebook bits for fc tensors (default 5)")
    c.add_argument("--index-bits", type=_index_bits, default=None, help="relative index width 1..16 or 'auto' (default 5)")
    c.add_argument("--layout", choices=("csr", "csc", "auto"), default=None, help="sparse layout (default: the smaller)")
    c.add_argument("--raw", action="append", metavar="PATTERN", help="keep tensors matching this name pattern exact (repeatable)")
    c.add_argument("--rule", action="append", metavar="PATTERN:KEY=VALUE,...",
                   help=f"per-name settings, {RULE_EXAMPLE} (keys: bits, prune, threshold, index_bits, layout, "
                   "raw, quantizer, init, lam, max_error, step)")
    c.add_argument("--huffman", choices=("auto", "shared", "off"), default="auto",
                   help="Huffman tables per stream (auto), one per stream kind for the model (shared), or none (off)")
    c.add_argument("--coder", choices=("auto", "rans", "huffman"), default="auto",
                   help="entropy coder of the coded weights' streams: rANS where it saves 2%% or more over Huffman "
                   "(auto; format 1.4), wherever it is smaller (rans), or never (huffman: files readable by format "
                   "1.3 readers)")
    c.add_argument("--lossless", action="store_true",
                   help="store every tensor exactly (coded field by field where that is smaller: format 1.2)")
    c.add_argument("--zero-copy", action="append", metavar="PATTERN",
                   help="store exact tensors matching this name pattern raw, memory-mappable in place ('*': all; "
                   "repeatable)")
    c.add_argument("--quantizer", choices=("kmeans", "optimal", "ecsq"), default=None,
                   help="codebook choice: the paper's k-means (default), optimal least squares, or entropy-constrained")
    c.add_argument("--init", choices=("linear", "density", "random", "kmeans++"), default=None,
                   help="k-means initialisation (default linear, the paper's)")
    c.add_argument("--lam", type=_non_negative, default=None,
                   help="ecsq: squared error (in units of the tensor's variance) one index bit must buy (e.g. 0.001)")
    c.add_argument("--max-error", type=_non_negative, default=None, metavar="REL_RMS",
                   help="quality target: per tensor, the fewest codebook bits (1..16) whose relative RMS error is at "
                   "most this, e.g. 0.03; says which tensors miss it")
    c.add_argument("--vector-bits", type=_width, default=None, metavar="BITS",
                   help="codebook bits for 1-D tensors (biases, norms), which otherwise stay exact")
    c.add_argument("--step", type=_positive, default=None,
                   help="uniform quantization: round each conv/fc weight to a multiple of this step (Huffman-coded "
                   "levels; replaces the codebook bits), e.g. 0.005")
    c.add_argument("--step-scales", default=None, metavar="JSON",
                   help="JSON file {tensor name: factor}: that tensor's step is --step times the factor "
                   "(e.g. from dcformat.allocation.scales_from_sensitivity)")
    c.add_argument("--target-size", type=_size, default=None, metavar="SIZE",
                   help="aim at this file size (e.g. 10MB, 800KiB): searches the uniform step giving the largest "
                   "file that fits; at or above the exact file's size, the file is exact")
    c.add_argument("--min-similarity", type=_number, default=None, metavar="COSINE", help=SIMILARITY_HELP)
    c.add_argument("--calibration", default=None, metavar="TEXT_FILE",
                   help="--min-similarity: UTF-8 text to measure on (default: Python's pydoc_data.topics); passages "
                   "alternate between the search and a held-out half, on which the similarity is reported")
    c.add_argument("--method", choices=("uniform", "sensitivity", "rd", "gptq", "fisher"), default="fisher",
                   help="--min-similarity: uniform (one step), sensitivity (steps scaled by measured sensitivity), rd "
                   "(per-tensor steps by rate-distortion), gptq (rd's steps, matrices rounded with error feedback "
                   "through their input Hessian), fisher (gptq, and each token's embedding row a step by how often "
                   "the calibration text uses the token: smallest, but text with other words loses more; default)")
    c.add_argument("--json-header", action="store_true",
                   help="store the header as plain JSON (format 1.0) even where zlib would make the file smaller")
    c.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="add user metadata (repeatable)")
    c.add_argument("--json", action="store_true", help="print the summary and layout as JSON")
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", parents=[common], help="decode a .dcf file or folder into .safetensors, .npz, .pt or a model folder",
                       description="Decode a .dcf file, an index file or a dcformat model folder. A folder becomes a "
                       "folder that transformers' from_pretrained loads: safetensors shards named like the .dcf ones, "
                       "model.safetensors.index.json, the other files copied; metadata kept. One tensor at a time.")
    d.add_argument("input", help="input .dcf file, model.dcf.index.json or a dcformat model folder")
    d.add_argument("-o", "--output", required=True, help="output .safetensors, .npz or .pt file, or a folder "
                   "(any other path; always for a folder input)")
    d.add_argument("--threads", type=_threads, default=None, metavar="N",
                   help="decode on N threads (default: one per CPU)")
    d.add_argument("-f", "--force", action="store_true", help="overwrite the output if it exists")
    d.set_defaults(func=cmd_decompress)

    i = sub.add_parser("inspect", parents=[common], help="show what a file holds, tensor by tensor (reads only the header)",
                       description="What a file holds, one tensor a row, fitted to the terminal: shape, how it is "
                       "stored, bits per weight, bytes, and the error and step recorded when it was encoded. "
                       "--wide shows the Deep Compression paper's Table 4 columns.")
    i.add_argument("file", help="a .dcf file, model.dcf.index.json or a dcformat model folder")
    i.add_argument("--wide", "--paper", dest="wide", action="store_true",
                   help="the paper's columns: kept share, bits per weight and per index before (P+Q) and after "
                   "Huffman (+H), fillers, bytes, rate")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_inspect)

    v = sub.add_parser("verify", parents=[common], help="check every checksum and decode every tensor; exit 1 on any problem")
    v.add_argument("file", help="a .dcf file, model.dcf.index.json or a dcformat model folder (every shard, and the index)")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.set_defaults(func=cmd_verify)

    cv = sub.add_parser("convert", parents=[common], help="convert between dcformat and the Deep Compression authors' released format",
                        description="Read or write the headerless format of the Deep Compression authors' released "
                        "AlexNet/SqueezeNet files (layer shapes from a Caffe deploy prototxt).")
    direction = cv.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="from_format", choices=("deepcompression",), help="input format")
    direction.add_argument("--to", dest="to_format", choices=("deepcompression",), help="output format")
    cv.add_argument("input", help="input file (.net with --from, .dcf with --to)")
    cv.add_argument("--prototxt", help="Caffe deploy prototxt giving the layers and their shapes (required with --from)")
    cv.add_argument("-o", "--output", required=True, help="output file")
    cv.add_argument("-f", "--force", action="store_true", help="overwrite the output if it exists")
    cv.add_argument("--json", action="store_true", help="machine-readable summary")
    cv.set_defaults(func=cmd_convert)

    m = sub.add_parser("demo", parents=[common], help="compress the bundled example model, show its layout, decode it back")
    m.add_argument("-o", "--output", default=None, help="keep the .dcf file here (default: a temporary folder, removed)")
    m.add_argument("-f", "--force", action="store_true", help="overwrite the output if it exists")
    m.add_argument("--bits", type=_width, default=5, help="codebook bits (default 5, the paper's fc width)")
    m.add_argument("--index-bits", type=_index_bits, default=5, help="relative index width (default 5)")
    m.set_defaults(func=cmd_demo)
    return p


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """Library warnings (e.g. a tensor with NaN stored without weight sharing) as one line each."""
    print(f"dcformat: warning: {printable(str(message))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            args = build_parser().parse_args(argv)
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return code
    except CommandError as e:
        if debug:
            raise
        print(e.line(), file=sys.stderr)
        return e.status
    except BrokenPipeError:
        # The reader went away (`dcformat inspect f.dcf | head`): stop quietly, as a killed `cat` would.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return BROKEN_PIPE
    except KeyboardInterrupt:
        if debug:
            raise
        print("dcformat: interrupted", file=sys.stderr)
        return INTERRUPTED
    except (DCFError, OSError, ValueError, ImportError) as e:
        if debug:
            raise
        print(CommandError(describe(e)).line(), file=sys.stderr)
        return DATA_ERROR
    except Exception as e:  # noqa: BLE001 - a bug: still one line, and the way to see more
        if debug:
            raise
        print(f"dcformat: error: internal error: {type(e).__name__}: {printable(describe(e))} "
              "(run again with --debug for the traceback, and please report it)", file=sys.stderr)
        return DATA_ERROR


if __name__ == "__main__":
    sys.exit(main())
