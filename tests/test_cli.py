"""The command line as a user meets it: commands and --json, one-line errors with their exit
statuses, options that mean what they say, summaries, inspect's tables, the progress bar, the demo."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time

import ml_dtypes
import numpy as np
import pytest

import dcformat
from dcformat import cli
from dcformat.cli import ProgressBar, main
from dcformat.progress import ProgressEvent
from dcformat.report import ENCODER_KEY, compact_table, layout_report, ratio_words, shorten

from .filetools import poke, split

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture()
def model_npz(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "m.npz"
    np.savez(path, **{"conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
                      "fc.weight": rng.laplace(0, 0.1, (50, 40)).astype(np.float32),
                      "fc.bias": rng.standard_normal(50).astype(np.float32),
                      "steps": np.array(7, np.int64)})
    return path


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    """The single line a user error prints (and nothing else: no traceback)."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcformat: error: "), err
    assert "Traceback" not in err and ".tmp" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------------
# The commands


def test_compress_inspect_verify_decompress(model_npz, tmp_path, capsys):
    out = tmp_path / "m.dcf"
    code, text, _ = run(["compress", model_npz, "-o", out, "--prune", "0.8", "--fc-bits", "4", "--conv-bits", "6",
                         "--index-bits", "4", "--metadata", "arch=toy", "--json"], capsys)
    assert code == 0
    summary = json.loads(text)
    assert summary["summary"]["file_bytes"] == os.path.getsize(out)
    rows = {r["name"]: r for r in summary["tensors"]}
    assert rows["fc.weight"]["encoding"] == "sparse" and rows["fc.weight"]["weight_bits"] <= 4
    assert rows["fc.weight"]["index_bits"] == 4
    assert abs(rows["fc.weight"]["kept"] - 0.2) < 1e-9
    assert rows["conv.weight"]["weight_bits"] <= 6
    assert rows["fc.bias"]["encoding"] == "raw" and rows["steps"]["encoding"] == "raw"
    # the errors reported are the file's, measured against the input
    original, decoded = dict(np.load(model_npz)), dcformat.load_file(out)
    for name, row in rows.items():
        d = decoded[name].astype(np.float64) - original[name]
        expected = np.linalg.norm(d) / np.linalg.norm(original[name].astype(np.float64))
        assert row["error"] == pytest.approx(expected, rel=1e-9, abs=0)
    assert rows["fc.bias"]["error"] == 0.0 and rows["fc.weight"]["error"] > 0.3  # 80% pruned
    assert not summary["summary"]["lossless"] and summary["summary"]["policy"]["prune"] == 0.8

    code, text, _ = run(["inspect", out], capsys)
    assert code == 0
    assert "fc.weight" in text and "stored as" in text and "20.0%" in text and "arch: toy" in text

    code, text, _ = run(["inspect", out, "--wide"], capsys)
    assert code == 0 and "sparse" in text and "total (file)" in text and "P+Q" in text

    code, text, _ = run(["inspect", out, "--json"], capsys)
    report = json.loads(text)
    assert report["metadata"].pop("dcformat.encoder") and report["metadata"] == {"arch": "toy"}
    assert report["encoder"]["policy"]["prune"] == 0.8  # the encoder's record of what it did
    assert report["totals"]["file_bytes"] == os.path.getsize(out)
    assert report["totals"]["weights"] == 8 * 27 + 2000 + 50 + 1

    code, text, _ = run(["verify", out], capsys)
    assert code == 0 and "OK (4 tensors decoded" in text

    for ext in (".npz", ".safetensors"):
        dec = tmp_path / f"d{ext}"
        code, text, _ = run(["decompress", out, "-o", dec], capsys)
        assert code == 0 and "4 tensors" in text
        back = dcformat.read_tensors(dec)
        assert set(back) == set(decoded)
        for k in decoded:
            assert back[k].dtype == decoded[k].dtype and back[k].shape == decoded[k].shape
            assert np.array_equal(back[k], decoded[k])


def test_verify_reports_every_problem(model_npz, tmp_path, capsys):
    out = tmp_path / "m.dcf"
    assert run(["compress", model_npz, "-o", out, "--lossless", "--zero-copy", "*"], capsys)[0] == 0
    data = out.read_bytes()
    doc, _ = split(data)
    bad = data
    for t in doc["tensors"][:2]:
        bad = poke(bad, t["data"]["offset"], bytes([bad[t["data"]["offset"]] ^ 1]))
    out.write_bytes(bad)
    code, text, _ = run(["verify", out, "--json"], capsys)
    result = json.loads(text)
    assert code == 1 and not result["ok"]
    assert [p["error"] for p in result["problems"]].count("ChecksumError") >= 2
    assert {p["tensor"] for p in result["problems"]} == {doc["tensors"][0]["name"], doc["tensors"][1]["name"]}


def test_verify_reports_a_checksum_once(model_npz, tmp_path, capsys):
    out = tmp_path / "m.dcf"
    assert run(["compress", model_npz, "-o", out, "--lossless", "--zero-copy", "*"], capsys)[0] == 0
    data = out.read_bytes()
    doc, _ = split(data)
    t = doc["tensors"][0]
    out.write_bytes(poke(data, t["data"]["offset"], bytes([data[t["data"]["offset"]] ^ 1])))
    code, text, _ = run(["verify", out, "--json"], capsys)
    result = json.loads(text)
    assert code == 1 and [p["error"] for p in result["problems"]] == ["ChecksumError"]
    assert result["tensors"] == len(doc["tensors"]) - 1


def test_rule_flag(model_npz, tmp_path, capsys):
    out = tmp_path / "m.dcf"
    code, text, _ = run(["compress", model_npz, "-o", out, "--rule", "fc.*:bits=2,prune=0.5", "--raw", "conv*", "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(text)["tensors"]}
    assert rows["conv.weight"]["encoding"] == "raw"
    assert rows["fc.weight"]["weight_bits"] <= 2
    w = dcformat.load_file(out)["fc.weight"]
    assert np.count_nonzero(w == 0) >= 1000 and len(np.unique(w)) <= 4


def test_safetensors_and_pt_inputs_with_bfloat16(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as st_save

    sd = {"w": torch.randn(30, 20).to(torch.bfloat16), "b": torch.randn(30), "file": torch.arange(4)}
    st_path, pt_path = tmp_path / "m.safetensors", tmp_path / "m.pt"
    st_save(sd, str(st_path))
    torch.save(sd, pt_path)
    for src in (st_path, pt_path):
        out = tmp_path / (src.stem + src.suffix[1:] + ".dcf")
        assert run(["compress", src, "-o", out, "--lossless"], capsys)[0] == 0
        back = dcformat.load_torch(out)
        for k, v in sd.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    dec = tmp_path / "d.safetensors"
    assert run(["decompress", out, "-o", dec], capsys)[0] == 0
    w = dcformat.read_tensors(dec)["w"]
    assert w.dtype.name == "bfloat16"
    assert torch.equal(torch.from_numpy(w.view(np.int16)).view(torch.bfloat16), sd["w"])


def test_npz_output_takes_any_tensor_name(tmp_path):
    tensors = {"file": np.arange(3), "allow_pickle": np.ones(2, np.float16), "a/b": np.zeros((2, 2))}
    dcformat.write_tensors(tensors, tmp_path / "x.npz")
    back = dcformat.read_tensors(tmp_path / "x.npz")
    assert set(back) == set(tensors)
    for k in tensors:
        assert back[k].dtype == tensors[k].dtype and np.array_equal(back[k], tensors[k])


def test_inspect_and_verify_escape_control_characters(tmp_path, capsys):
    out = tmp_path / "m.dcf"
    dcformat.save_file({"evil\x1b[2J\nname": np.zeros(3, np.float32)}, out, metadata={"k\x1b]0;x\x07": "v\r\n"})
    for flags in ([], ["--wide"]):
        code, text, _ = run(["inspect", out, *flags], capsys)
        assert code == 0
        assert "\x1b" not in text and "\\x1b[2J\\nname" in text and "v\\r\\n" in text


def test_help_and_inspect_do_not_import_numba(model_npz, tmp_path):
    out = tmp_path / "m.dcf"
    dcformat.save_file(dict(np.load(model_npz)), out)
    code = ("import sys; from dcformat.cli import main\n"
            f"main(['inspect', {str(out)!r}, '--json'])\n"
            f"main(['inspect', {str(out)!r}])\n"
            "assert 'numba' not in sys.modules, 'numba imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    for command in ([], ["compress"], ["decompress"], ["inspect"], ["verify"], ["demo"], ["convert"]):
        proc = subprocess.run([sys.executable, "-m", "dcformat.cli", *command, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: dcformat" in proc.stdout


# ------------------------------------------------------------------------------------------------
# Bad input: one line, `dcformat: error: <file>: <what>`, 1 for bad data and 2 for usage.
# Each case is a row of the README's table ("What bad input gets"): the test below checks both agree.


def _write_inputs(d):
    """Files a user may hand us, good and bad, in folder d."""
    rng = np.random.default_rng(0)
    np.savez(d / "good.npz", **{"fc.weight": rng.standard_normal((20, 30)).astype(np.float32),
                                "fc.bias": np.zeros(20, np.float32)})
    np.savez(d / "empty.npz")
    np.savez(d / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    np.savez(d / "complex.npz", **{"layer.w": np.ones((4, 4), np.complex64)})
    (d / "empty.safetensors").write_bytes(b"")
    (d / "notes.txt").write_text("hello")
    (d / "junk.dcf").write_bytes(b"not a model at all, just text" * 3)
    good = dcformat.save(dict(np.load(d / "good.npz")))
    (d / "cut.dcf").write_bytes(good[: len(good) // 2])
    (d / "good.dcf").write_bytes(good)
    dcformat.save_file({"w": np.ones((3, 3), ml_dtypes.bfloat16)}, d / "bf16.dcf")
    (d / "exists.dcf").write_bytes(b"keep me")


BAD_INPUT = [
    # (case as the README's table names it, arguments, exit status, what the message says)
    ("a missing input file", ["compress", "missing.npz", "-o", "x.dcf"], 1, "missing.npz: No such file or directory"),
    ("an input with no tensors", ["compress", "empty.npz", "-o", "x.dcf"], 1, "empty.npz: holds no tensors"),
    ("an .npz of pickled objects", ["compress", "objects.npz", "-o", "x.dcf"], 1, "objects.npz: Object arrays cannot be loaded"),
    ("an unsupported dtype", ["compress", "complex.npz", "-o", "x.dcf"], 1, "complex.npz: dtype complex64 is not supported"),
    ("an empty or broken .safetensors", ["compress", "empty.safetensors", "-o", "x.dcf"], 1, "empty.safetensors: "),
    ("an unknown file type", ["compress", "notes.txt", "-o", "x.dcf"], 1, "notes.txt: unknown input type '.txt'"),
    ("a file that is not dcformat", ["inspect", "junk.dcf"], 1, "junk.dcf: not a dcformat file: bad magic"),
    ("a truncated .dcf", ["decompress", "cut.dcf", "-o", "x.npz"], 1, "cut.dcf: "),
    ("bfloat16 into .npz", ["decompress", "bf16.dcf", "-o", "x.npz"], 1, "x.npz: .npz cannot hold bfloat16"),
    ("an output folder that does not exist", ["compress", "good.npz", "-o", "nowhere/x.dcf"], 1,
     "nowhere/x.dcf: No such file or directory"),
    ("an output that exists", ["compress", "good.npz", "-o", "exists.dcf"], 2, "exists.dcf: already exists: use --force (-f)"),
    ("the output is the input", ["compress", "good.npz", "-o", "good.npz", "--force"], 2,
     "good.npz: is the input file: dcformat never overwrites its input"),
    ("contradictory options", ["compress", "good.npz", "-o", "x.dcf", "--lossless", "--prune", "0.9"], 2,
     "--lossless and --prune contradict each other"),
    ("a step with a width", ["compress", "good.npz", "-o", "x.dcf", "--step", "0.1", "--bits", "4"], 2,
     "--step and --bits contradict each other"),
    ("a size target with a step", ["compress", "good.npz", "-o", "x.dcf", "--target-size", "1k", "--step", "0.1"], 2,
     "--target-size and --step contradict each other: the target size chooses the step"),
    ("a rule without settings", ["compress", "good.npz", "-o", "x.dcf", "--rule", "foo"], 2, "--rule 'foo': no settings"),
    ("an unknown rule key", ["compress", "good.npz", "-o", "x.dcf", "--rule", "fc*:bitz=3"], 2,
     "--rule 'fc*:bitz=3': unknown setting 'bitz' (known: prune"),
    ("a value out of range", ["compress", "good.npz", "-o", "x.dcf", "--prune", "1.5"], 2,
     "argument --prune: '1.5' is not a fraction in [0, 1]"),
    ("an unknown option", ["compress", "good.npz", "-o", "x.dcf", "--bitz", "3"], 2, "unrecognized arguments: --bitz"),
]


@pytest.mark.parametrize("case, args, status, message", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_one_line(tmp_path, capsys, monkeypatch, case, args, status, message):
    _write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    code, out, err = run(args, capsys)
    line = one_error_line(err)
    assert code == status and out == ""
    assert line.startswith("dcformat: error: " + message) or message in line, line
    # nothing written, nothing changed, no temporary file left
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before


def test_the_readme_table_lists_the_bad_input_cases():
    text = open(README, encoding="utf-8").read()
    table = text.split("What bad input gets", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    cases = {c[0]: c for c in BAD_INPUT} | {c[0]: c for c in MORE_CASES}
    assert [r[0].strip() for r in rows] == list(cases)  # one row a case, in this order, each tested here
    for case, status, message in ((r[0].strip(), r[1].strip(), r[2].strip()) for r in rows):
        assert status == str(cases[case][2]), case
        assert cases[case][3] in message.replace("`", "").replace("\\|", "|"), case


MORE_CASES = [
    # cases with a test of their own below: (case, -, status, message)
    ("a pickled whole model in a .pt", None, 1, "not a state dict"),
    ("a missing optional package", None, 1, "pip install 'dcformat[torch]'"),
    ("Ctrl-C", None, 130, "dcformat: interrupted"),
    ("a closed pipe (`inspect f.dcf` into `head`)", None, 141, "nothing"),
]


def test_a_pickled_model_is_refused_in_one_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Linear(3, 3), tmp_path / "whole.pt")
    code, _, err = run(["compress", tmp_path / "whole.pt", "-o", tmp_path / "x.dcf"], capsys)
    line = one_error_line(err)
    assert code == 1 and f"{tmp_path / 'whole.pt'}: holds a pickled torch.nn.modules.linear.Linear" in line
    assert "not a state dict" in line and "state_dict()" in line


def test_a_missing_optional_package_names_its_extra(tmp_path, capsys, monkeypatch):
    (tmp_path / "m.pt").write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if it were not installed
    code, _, err = run(["compress", tmp_path / "m.pt", "-o", tmp_path / "x.dcf"], capsys)
    line = one_error_line(err)
    assert code == 1 and "m.pt: needs the optional package torch" in line and "pip install 'dcformat[torch]'" in line


def test_ctrl_c_is_one_line_and_130_and_leaves_no_file(model_npz, tmp_path, capsys, monkeypatch):
    import dcformat.interop.convert

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dcformat.interop.convert, "compress_shard", interrupted)
    code, out, err = run(["compress", model_npz, "-o", tmp_path / "x.dcf"], capsys)
    assert code == 130 and err == "dcformat: interrupted\n" and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_ctrl_c_during_a_real_compress(tmp_path):
    # A real SIGINT to a running process: one line, 130, and the output never appears.
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "big.npz", **{f"l{i}.weight": rng.standard_normal((512, 512)).astype(np.float32) for i in range(30)})
    proc = subprocess.Popen([sys.executable, "-m", "dcformat.cli", "compress", str(tmp_path / "big.npz"), "-o",
                             str(tmp_path / "big.dcf"), "--max-error", "0.001"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    proc.send_signal(2)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("compress ended before the signal")
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "dcformat: interrupted"
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npz"]


def test_a_closed_pipe_is_quiet(tmp_path):
    path = tmp_path / "many.dcf"
    dcformat.save_file({f"layer{i:04d}.a.rather.long.name.weight": np.zeros(2, np.float32) for i in range(3000)}, path)
    proc = subprocess.Popen([sys.executable, "-m", "dcformat.cli", "inspect", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"tensor")
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read()
    assert proc.wait(timeout=60) in (0, 141) and err == b""


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(cli.CommandError):
        main(["compress", str(tmp_path / "missing.npz"), "-o", str(tmp_path / "x.dcf"), "--debug"])
    proc = subprocess.run([sys.executable, "-m", "dcformat.cli", "--debug", "inspect", str(tmp_path / "missing.dcf")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


def test_force_overwrites_an_output_but_never_the_input(model_npz, tmp_path, capsys):
    out = tmp_path / "m.dcf"
    assert run(["compress", model_npz, "-o", out], capsys)[0] == 0
    first = out.read_bytes()
    assert run(["compress", model_npz, "-o", out, "--lossless"], capsys)[0] == 2
    assert out.read_bytes() == first
    assert run(["compress", model_npz, "-o", out, "--lossless", "-f"], capsys)[0] == 0
    assert out.read_bytes() != first
    # a link to the input is the input
    link = tmp_path / "link.npz"
    os.symlink(model_npz, link)
    data = model_npz.read_bytes()
    code, _, err = run(["compress", model_npz, "-o", link, "-f"], capsys)
    assert code == 2 and "is the input file" in err and model_npz.read_bytes() == data
    code, _, err = run(["decompress", out, "-o", out, "-f"], capsys)
    assert code == 2 and "is the input file" in err


def test_library_warnings_are_one_line(tmp_path, capsys):
    w = np.ones((4, 4), np.float32)
    w[1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", w=w)
    code, _, err = run(["compress", tmp_path / "nan.npz", "-o", tmp_path / "x.dcf"], capsys)
    assert code == 0
    assert err == "dcformat: warning: tensor 'w' has non-finite values: stored without weight sharing\n"


# ------------------------------------------------------------------------------------------------
# Options and what compress says


def test_default_compress_says_it_is_lossy_with_errors_and_the_way_to_exact(model_npz, tmp_path, capsys):
    code, text, err = run(["compress", model_npz, "-o", tmp_path / "m.dcf"], capsys)
    assert code == 0 and err == ""
    assert "lossy: k-means codebooks of 5 bits for 2-D and 8 for conv tensors (the paper's widths, the default)" in text
    assert re.search(r"relative RMS error .*: \d+\.\d+% over the 1 changed tensor, at most \d+\.\d+% \(fc.weight\)", text)
    assert "--lossless" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(("fc.", "conv.", "steps"))]
    errors = {r[0]: r[-1] for r in rows}
    assert errors["fc.bias"] == "exact" and errors["fc.weight"].endswith("%")
    code, text, _ = run(["compress", model_npz, "-o", tmp_path / "exact.dcf", "--lossless"], capsys)
    assert code == 0 and "lossless: every tensor decodes exactly" in text and "lossy" not in text


def test_patterns_that_match_nothing_and_pruning_warn(model_npz, tmp_path, capsys):
    args = ["compress", model_npz, "-o", tmp_path / "m.dcf", "--raw", "nomatch*", "--rule", "zzz:bits=3", "--prune", "0.5"]
    code, _, err = run(args, capsys)
    assert code == 0
    assert err.splitlines() == [
        "dcformat: warning: --raw 'nomatch*' matches no tensor",
        "dcformat: warning: --rule 'zzz' matches no tensor",
        "dcformat: warning: pruning without retraining costs accuracy (a pruned weight is gone for good): prune "
        "while training with dcformat.pipeline (Pruner, then CodebookTrainer), as the paper does",
    ]
    code, text, err = run(args + ["-f", "--json"], capsys)
    assert code == 0 and len(json.loads(text)["summary"]["warnings"]) == 3
    code, _, err = run(args + ["-f", "-q"], capsys)
    assert code == 0 and err == ""


@pytest.mark.parametrize("args, reason", [
    (["--lossless", "--bits", "4"], "--lossless and --bits"),
    (["--lossless", "--rule", "fc*:prune=0.5"], "--lossless and --rule 'fc*' contradict each other"),
    (["--lossless", "--rule", "fc*:raw"], None),  # raw is not lossy
    (["--prune", "0.5", "--threshold", "0.1"], "--prune and --threshold"),
    (["--target-size", "1k", "--bits", "4"], "--target-size and --bits"),
    (["--max-error", "0.01", "--fc-bits", "6"], "--max-error chooses each tensor's width"),
    (["--max-error", "0.01", "--target-size", "2k"], "--max-error and --target-size"),
    (["--step-scales", "s.json"], "--step-scales needs --step or --target-size"),
    (["--lam", "0.01"], "--lam needs --quantizer ecsq"),
    (["--quantizer", "optimal", "--init", "random"], "--init and --quantizer optimal"),
    (["--step", "0.01", "--quantizer", "ecsq"], "a step quantizes uniformly"),
    (["--rule", "fc*:bits=99"], "bits: 99 bits: give 1..16"),
    (["--metadata", "novalue"], "--metadata 'novalue': write KEY=VALUE"),
])
def test_option_contradictions_are_usage_errors(model_npz, tmp_path, capsys, args, reason):
    code, _, err = run(["compress", model_npz, "-o", tmp_path / "m.dcf", *args], capsys)
    if reason is None:
        assert code == 0
        return
    assert code == 2 and reason in one_error_line(err)
    assert not (tmp_path / "m.dcf").exists()


def test_max_error_reports_what_each_tensor_reached_and_what_it_missed(model_npz, tmp_path, capsys):
    code, text, err = run(["compress", model_npz, "-o", tmp_path / "m.dcf", "--max-error", "0.01", "--json"], capsys)
    assert code == 0 and err == ""
    rows = {r["name"]: r for r in json.loads(text)["tensors"]}
    for name in ("fc.weight", "conv.weight"):
        assert 0 < rows[name]["error"] <= 0.01
    assert rows["fc.weight"]["weight_bits"] > 5  # past the default 5-bit fc width
    # pruning alone costs more than the target: the file is written, and the miss is said
    code, text, err = run(["compress", model_npz, "-o", tmp_path / "p.dcf", "--max-error", "0.01", "--prune", "0.5",
                           "-q", "--json"], capsys)
    summary = json.loads(text)["summary"]
    assert code == 0 and any("--max-error 0.01 not met by 2 tensor(s)" in w and "pruning alone" in w
                             for w in summary["warnings"])


def test_target_size_on_a_small_model_is_quick_and_says_its_step(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", **{"fc.weight": rng.standard_normal((20, 30)).astype(np.float32),
                                    "fc.bias": np.zeros(20, np.float32)})
    for target in (600, 700):  # such targets once searched forever (the file records its encoding: ~530 B at least)
        start = time.perf_counter()
        code, text, _ = run(["compress", tmp_path / "s.npz", "-o", tmp_path / f"{target}.dcf", "--target-size", str(target)], capsys)
        assert time.perf_counter() - start < 30
        assert code == 0 and os.path.getsize(tmp_path / f"{target}.dcf") <= target
        assert re.search(rf"uniform quantization, step [0-9.e-]+ \(chosen for --target-size {target} B\)", text)
    from dcformat.allocation import file_size, lossless_policy

    # the file records its encoding ("dcformat.encoder"), as every file compress writes
    lossless = file_size(dict(np.load(tmp_path / "s.npz")), lossless_policy(dcformat.Policy()), record=True)
    code, text, _ = run(["compress", tmp_path / "s.npz", "-o", tmp_path / "big.dcf", "--target-size", "200MB"], capsys)
    assert code == 0 and "lossless: every tensor decodes exactly" in text and "at or above the exact file's size" in text
    assert os.path.getsize(tmp_path / "big.dcf") == lossless
    code, _, err = run(["compress", tmp_path / "s.npz", "-o", tmp_path / "tiny.dcf", "--target-size", "100"], capsys)
    assert code == 1 and "s.npz: target size 100 B is unreachable" in one_error_line(err)


def test_ratio_words_never_say_a_fraction_smaller():
    assert ratio_words(1000, 100) == "10.0x smaller"
    assert ratio_words(1000, 800) == "1.25x smaller"
    assert ratio_words(1000, 1600) == "1.60x larger"
    assert ratio_words(100, 1000) == "10.0x larger"
    assert ratio_words(100, 100) == "the same size"
    assert ratio_words(0, 128) == "no size to compare"


def test_a_file_larger_than_its_tensors_says_larger(tmp_path, capsys):
    np.savez(tmp_path / "t.npz", b=np.ones(3, np.float32))
    code, text, _ = run(["compress", tmp_path / "t.npz", "-o", tmp_path / "t.dcf"], capsys)
    assert code == 0 and "x larger" in text and "smaller" not in text


# ------------------------------------------------------------------------------------------------
# inspect


def _minilm_like(path):
    rng = np.random.default_rng(1)
    tensors = {}
    for i in range(3):
        for part in ("attention.self.query", "attention.output.LayerNorm", "intermediate.dense"):
            tensors[f"encoder.layer.{i}.{part}.weight"] = rng.standard_normal((32, 16)).astype(np.float32)
            tensors[f"encoder.layer.{i}.{part}.bias"] = rng.standard_normal(32).astype(np.float32)
    dcformat.save_file(tensors, path, metadata={"format": "pt", "long": "x" * 500})
    return tensors


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_inspect_fits_the_terminal(tmp_path, capsys, monkeypatch, columns):
    path = tmp_path / "m.dcf"
    _minilm_like(path)
    monkeypatch.setenv("COLUMNS", str(columns))
    code, text, _ = run(["inspect", path], capsys)
    assert code == 0
    assert max(map(len, text.splitlines())) <= columns
    assert "stored as" in text and "k-means" not in text  # no encoder record: no quantizer to show
    assert ("encoder.layer.0.attention.output.LayerNorm.weight" in text) == (columns >= 120)
    assert ("..." in text.split("metadata:")[0]) == (columns < 120)  # long names cut in the middle
    # the paper's columns are wider and come with their legend
    code, wide, _ = run(["inspect", path, "--paper"], capsys)
    assert "w bits P+Q / +H" in wide and "Table 4" in wide and "x" * 500 in wide


def test_inspect_shows_the_encoder_record(tmp_path, capsys):
    w = np.random.default_rng(2).standard_normal((30, 20)).astype(np.float32)
    record = {"policy": {"step": 0.02, "rules": {"k*": {"quantizer": "ecsq"}}}, "error": 0.0123,
              "tensors": {"w": {"error": 0.0123, "step": 0.02, "bits": None}, "kern": {"error": 0.5}}}
    path = tmp_path / "m.dcf"
    dcformat.save_file({"w": w, "kern": w, "b": w[0]}, path, policy=dcformat.Policy(step=0.02),
                       metadata={ENCODER_KEY: json.dumps(record)})
    code, text, _ = run(["inspect", path], capsys)
    assert code == 0
    rows = {line.split()[0]: line for line in text.splitlines()[2:5]}
    assert "step 0.02" in rows["w"] and rows["w"].endswith("1.23%")
    assert "ecsq" in rows["kern"] and rows["kern"].endswith("50.00%")
    assert rows["b"].split()[-1] == "exact"
    assert 'encoded with: step=0.02' in text and "relative RMS error of the lossy tensors 1.23%" in text
    assert ENCODER_KEY not in text.split("metadata:")[-1] if "metadata:" in text else True
    code, text, _ = run(["inspect", path, "--wide"], capsys)
    assert "quantizer" in text and "uniform" in text and "ecsq" in text
    code, text, _ = run(["inspect", path, "--json"], capsys)
    assert json.loads(text)["encoder"]["error"] == 0.0123


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"tensors": {"w": {"error": "NaN", "step": true}}}',
                                  '{"error": 1e999, "policy": 3}'])
def test_a_malformed_encoder_record_is_shown_as_nothing(tmp_path, capsys, text):
    path = tmp_path / "m.dcf"
    dcformat.save_file({"w": np.ones((4, 4), np.float32)}, path, metadata={ENCODER_KEY: text})
    code, out, err = run(["inspect", path], capsys)
    assert code == 0 and err == ""
    report = layout_report(dcformat.read_header(path))
    row = report["tensors"][0]
    assert row["step"] is None and (row["error"] in (None, 0.0))


def test_shorten_cuts_in_the_middle():
    assert shorten("encoder.layer.0.attention.self.query.weight", 20) == "encoder.l...y.weight"
    assert len(shorten("x" * 100, 20)) == 20 and shorten("short", 20) == "short"


# ------------------------------------------------------------------------------------------------
# Progress


def test_the_progress_bar_goes_by_bytes_and_names_the_tensor_being_coded(tmp_path):
    tensors = {"small": np.ones((4, 4), np.float32), "big": np.ones((400, 400), np.float32)}
    events: list[ProgressEvent] = []
    dcformat.save_file(tensors, tmp_path / "m.dcf", progress=events.append)
    total = 16 * 4 + 160_000 * 4
    assert [(e.tensor, e.done_bytes, e.total_bytes) for e in events] == [
        ("small", 0, total), ("small", 64, total), ("big", 64, total), ("big", total, total)]
    # the bar draws them: while "big" is coded it names "big", and it ends at 100%
    stream = io.StringIO()
    bar = ProgressBar(enabled=True, stream=stream)
    for e in events:
        bar.last = 0.0  # no throttling in the test
        bar(e)
    drawn = stream.getvalue().split("\r")
    assert "big" in drawn[3] and "  0%" in drawn[3]
    assert "100%" in drawn[-1] and "0.6/0.6 MB" in drawn[-1]
    bar.close()
    assert stream.getvalue().endswith("\r\x1b[K")


def test_the_bar_shows_the_search_and_fits_the_line():
    line = ProgressBar.line(ProgressEvent("search", 0, 0, message="step 0.01: about 1,234 B (target 2,000 B, try 3)"),
                            2.0, 200)
    assert line.startswith("search") and "step 0.01" in line and "try 3" in line
    long = ProgressBar.line(ProgressEvent("compress", 5, 10, tensor="x" * 300), 1.0, 80)
    assert len(long) == 79 and " 50%" in long
    assert not ProgressBar(stream=io.StringIO()).enabled  # not a terminal: no bar


def test_a_target_size_search_reports_progress(tmp_path):
    from dcformat import allocation

    tensors = {"w": np.random.default_rng(0).standard_normal((40, 40)).astype(np.float32)}
    events: list[ProgressEvent] = []
    dcformat.save_file(tensors, tmp_path / "m.dcf", policy=dcformat.Policy(target_size=2000), progress=events.append)
    search = [e for e in events if e.stage == "search"]
    assert search and all("target 2,000 B" in e.message for e in search)
    assert events[-1].stage == "compress" and events[-1].done_bytes == events[-1].total_bytes
    assert len(search) <= 2 + allocation._ESTIMATES + allocation._EXACT


# ------------------------------------------------------------------------------------------------
# The demo


def test_demo_explains_itself_and_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, text, err = run(["demo"], capsys)
    assert code == 0 and err == ""
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone
    assert "fc1.weight" in text and "One row a tensor" in text and "bits/weight" in text
    assert "first decode" in text and "numba kernels" in text and " ms" in text and " s," not in text
    assert re.search(r"largest change of any weight: [0-9.]+ \(absolute; the largest weight magnitude is [0-9.]+\)", text)
    assert "test accuracy on 360 held-out digits" in text
    match = re.search(r"file: ([0-9,]+) B, ([0-9.]+)x smaller than the 202,440 B", text)
    size = int(match.group(1).replace(",", ""))
    assert size < 202_440 / 10  # the bundled model compresses more than 10x
    out = tmp_path / "keep" / "demo.dcf"
    out.parent.mkdir()
    assert run(["demo", "-o", out], capsys)[0] == 0 and os.path.getsize(out) == size
    assert run(["demo", "-o", out], capsys)[0] == 2  # exists: needs --force
    assert run(["demo", "-o", out, "-f"], capsys)[0] == 0


# ------------------------------------------------------------------------------------------------
# Model folders: compress, inspect, verify and decompress take them


@pytest.fixture()
def hf_folder(tmp_path):
    """A Hugging Face-style folder: model.safetensors (with metadata), config.json, a tokenizer file."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(9)
    folder = tmp_path / "hf"
    (folder / "sub").mkdir(parents=True)
    tensors = {f"layer{i}.weight": rng.laplace(0, 0.05, (64, 48)).astype(np.float32) for i in range(4)}
    tensors |= {f"layer{i}.bias": rng.standard_normal(64).astype(np.float32) for i in range(4)}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text('{"model_type": "toy"}')
    (folder / "sub" / "tokenizer.json").write_text("{}")
    return folder, tensors


def test_a_model_folder_round_trips_through_the_command_line(hf_folder, tmp_path, capsys):
    from safetensors import safe_open

    folder, tensors = hf_folder
    out, back = tmp_path / "out", tmp_path / "back"
    code, text, err = run(["compress", folder, "-o", out, "--lossless", "--max-shard-size", "20KB", "--threads", "2"], capsys)
    assert code == 0, err
    shards = sorted(p.name for p in out.glob("*.dcf"))
    assert len(shards) == 4 and shards[0] == "model-00001-of-00004.dcf"  # 12 KB weights + biases in 20 KB shards
    assert (out / "model.dcf.index.json").exists() and (out / "config.json").read_text() == '{"model_type": "toy"}'
    assert (out / "sub" / "tokenizer.json").exists() and not (out / "model.safetensors").exists()
    assert "in 4 shards, 2 other files copied" in text and "lossless" in text
    index = json.loads((out / "model.dcf.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors) and index["metadata"]["total_size"] == sum(a.nbytes for a in tensors.values())

    code, text, _ = run(["inspect", out], capsys)
    assert code == 0 and "4 shards:" in text and "model-00002-of-00004.dcf" in text and "layer3.bias" in text
    code, text, _ = run(["inspect", out / "model.dcf.index.json", "--json"], capsys)
    report = json.loads(text)
    assert [s["file"] for s in report["shards"]] == shards and len(report["tensors"]) == 8
    assert report["totals"]["file_bytes"] == sum((out / s).stat().st_size for s in shards)
    assert {r["name"]: r["shard"] for r in report["tensors"]} == index["weight_map"]

    code, text, _ = run(["verify", out], capsys)
    assert code == 0 and "OK (8 tensors decoded in 4 shards" in text

    code, text, err = run(["decompress", out, "-o", back], capsys)
    assert code == 0, err
    assert sorted(p.name for p in back.glob("*.safetensors")) == [s.replace(".dcf", ".safetensors") for s in shards]
    assert (back / "model.safetensors.index.json").exists() and (back / "sub" / "tokenizer.json").exists()
    seen = {}
    for f in back.glob("*.safetensors"):
        with safe_open(str(f), "np") as st:
            assert st.metadata() == {"format": "pt"}  # kept through both ways, without the encoder record
            seen |= {k: st.get_tensor(k) for k in st.keys()}
    assert seen.keys() == tensors.keys()
    for k, a in tensors.items():
        assert np.array_equal(seen[k].view(np.uint32), a.view(np.uint32)), k


def test_verify_of_a_folder_checks_the_index_against_the_shards(hf_folder, tmp_path, capsys):
    folder, _ = hf_folder
    out = tmp_path / "out"
    assert run(["compress", folder, "-o", out, "--max-shard-size", "20KB", "-q"], capsys)[0] == 0
    path = out / "model.dcf.index.json"
    index = json.loads(path.read_text())
    index["weight_map"]["layer0.weight"] = "model-00004-of-00004.dcf"  # listed in the wrong shard
    path.write_text(json.dumps(index))
    code, text, _ = run(["verify", out], capsys)
    assert code == 1
    assert "model-00004-of-00004.dcf: ShardIndexError: the index lists tensor 'layer0.weight' in model-00004" in text
    assert "holds tensor 'layer0.weight', which the index does not list (it lists it in model-00004" in text
    (out / "model-00002-of-00004.dcf").unlink()
    code, text, _ = run(["verify", out, "--json"], capsys)
    result = json.loads(text)
    assert code == 1 and any(p["shard"] == "model-00002-of-00004.dcf" for p in result["problems"])


def test_folder_options_are_checked(hf_folder, tmp_path, capsys):
    folder, _ = hf_folder
    code, _, err = run(["compress", folder / "model.safetensors", "-o", tmp_path / "x.dcf", "--max-shard-size", "1MB"], capsys)
    assert code == 2 and "--max-shard-size needs a folder output" in one_error_line(err)
    code, _, err = run(["compress", folder, "-o", tmp_path / "o", "--threads", "0"], capsys)
    assert code == 2 and "0 threads: give 1 or more" in one_error_line(err)
    code, _, err = run(["compress", folder, "-o", folder / "inside"], capsys)
    assert code == 2 and "inside the input folder" in one_error_line(err)
    (tmp_path / "o").mkdir()
    code, _, err = run(["compress", folder, "-o", tmp_path / "o"], capsys)
    assert code == 2 and "already exists: use --force" in one_error_line(err)
    assert run(["compress", folder, "-o", tmp_path / "o", "-f", "-q"], capsys)[0] == 0
    assert (tmp_path / "o" / "model.dcf").exists() and (tmp_path / "o" / "config.json").exists()
    # one model.safetensors file to a path without .dcf: a folder too, as the library does
    assert run(["compress", folder / "model.safetensors", "-o", tmp_path / "f", "-q"], capsys)[0] == 0
    assert (tmp_path / "f" / "model.dcf").exists()


def test_verify_reports_progress_by_bytes_and_shard(hf_folder, tmp_path, capsys):
    folder, tensors = hf_folder
    out = tmp_path / "out"
    assert run(["compress", folder, "-o", out, "--max-shard-size", "20KB", "-q"], capsys)[0] == 0
    events = []
    result = cli.verify_model(str(out), events.append)
    assert result["ok"] and result["tensors"] == len(tensors)
    assert {e.stage for e in events} == {"verify"} and {e.tensor for e in events} == set(tensors)
    assert sorted({e.shard for e in events}) == sorted(p.name for p in out.glob("*.dcf"))
    assert all(0 <= e.done_bytes < e.total_bytes for e in events)
