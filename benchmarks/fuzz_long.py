"""The long fuzz run: many mutated dcformat files through every reading path, in worker processes.

    python benchmarks/fuzz_long.py --cases 200000                 # ~5-10 minutes on 2 cores
    python benchmarks/fuzz_long.py --cases 200000 --seed 7 --report fuzz-report.json
    python benchmarks/fuzz_long.py --engine atheris --seconds 600   # coverage-guided (pip install atheris)

The default engine is tests/fuzz.py: structure-aware mutations of small valid files of every encoding
(JSON and zlib-compressed headers, with mutations of the zlib stream and of the JSON inside it),
CRCs usually repaired, each case run in a persistent worker so that a crash, hang or huge allocation
is caught and its input saved to --out. The atheris engine lets libFuzzer choose inputs by the Python
coverage they reach, with the same mutations and the same checks, in one process: it stops at the
first crash and saves its input as crash-* in --out. Exit status 1 when anything was found.

To keep a finding as a regression case once it is fixed:
    python tests/fuzz.py --add-regression fuzz-findings/<file>.dcf --name <what-it-is> --bug "<what broke>"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import fuzz  # noqa: E402  (tests/fuzz.py)


def table(stats: fuzz.Stats) -> str:
    """Cases by mutation kind and outcome, as a Markdown table."""
    summary = stats.to_json()
    outcomes = list(summary["by_outcome"])
    lines = ["| mutation | cases | " + " | ".join(outcomes) + " |", "|---|---:|" + "---:|" * len(outcomes)]
    for kind, counts in summary["by_kind_outcome"].items():
        cells = [f"{counts.get(o, 0):,}" for o in outcomes]
        lines.append(f"| {kind} | {sum(counts.values()):,} | " + " | ".join(cells) + " |")
    cells = [f"{summary['by_outcome'][o]:,}" for o in outcomes]
    lines.append(f"| **all** | **{stats.cases:,}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_pool(args: argparse.Namespace) -> int:
    last = [time.monotonic()]

    def progress(s: fuzz.Stats) -> None:
        if time.monotonic() - last[0] >= 30:
            last[0] = time.monotonic()
            print(f"  {s.cases:,} cases, {len(s.findings)} distinct findings, {s.worker_restarts} worker restarts",
                  file=sys.stderr, flush=True)

    stats = fuzz.run(args.cases, seed=args.seed, workers=args.workers, timeout=args.timeout, out_dir=args.out,
                     progress=progress)
    summary = stats.to_json()
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(summary, fh, indent=2)
    print(table(stats))
    rate = stats.cases / stats.seconds if stats.seconds else 0.0
    print(f"\n{stats.cases:,} cases in {stats.seconds:.0f} s ({rate:.0f}/s) on {args.workers} workers, seed {args.seed}; "
          f"{stats.worker_restarts} worker restarts; {len(stats.findings)} distinct findings")
    for f in summary["findings"]:
        print(f"  {f['kind']}: {f['signature']} x{f['count']} ({f['mutation']} of {f['seed']}): {f['message']}")
    if stats.findings:
        print(f"inputs saved in {args.out}/")
    return 1 if stats.findings else 0


def run_atheris(args: argparse.Namespace) -> int:
    """Coverage-guided fuzzing of the same target with libFuzzer (atheris), in fork mode."""
    import random

    import atheris

    # Instrument the pure-Python reading path, function by function: the numba kernel modules are left
    # alone, as numba compiles their bytecode and must not meet atheris's hooks.
    import types

    from dcformat import api, cli, codec, container

    for module in (container, codec, api, cli):
        for obj in list(vars(module).values()):
            functions = [obj] if isinstance(obj, types.FunctionType) else (
                [v for v in vars(obj).values() if isinstance(v, types.FunctionType)] if isinstance(obj, type) else [])
            for fn in functions:
                if fn.__module__ == module.__name__:
                    atheris.instrument_func(fn)
    # libFuzzer keeps the inputs that reach new code in the corpus folder: a later run goes on from them
    corpus = os.path.join(args.out, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for name, data in fuzz.seed_files().items():
        with open(os.path.join(corpus, name + ".dcf"), "wb") as fh:
            fh.write(data)
    mutator = fuzz.Mutator(fuzz.seed_files(), random.Random(args.seed))
    path = os.path.join(args.out, "case.dcf")

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        mutator.rng.seed(seed)
        if mutator.rng.random() < 0.2:
            return atheris.Mutate(data, max_size)
        kind = mutator._pick()
        return mutator._apply(kind, data, "")[:max_size]

    def test_one_input(data: bytes) -> None:
        fuzz.exercise(data, path)  # returns for success or a DCFError; anything else is a crash

    os.makedirs(args.out, exist_ok=True)
    # In-process (libFuzzer's fork mode cannot re-launch a Python script): the run stops at the first
    # crash, hang (-timeout) or out-of-memory (-rss_limit_mb) and saves that input as crash-*/timeout-*/oom-*.
    argv = [sys.argv[0], corpus, f"-max_total_time={args.seconds}", f"-timeout={int(args.timeout)}",
            "-rss_limit_mb=4096", f"-artifact_prefix={os.path.abspath(args.out)}/", "-max_len=65536",
            f"-seed={args.seed or 1}"]
    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    p.add_argument("--out", default="fuzz-findings", help="directory for inputs that broke the reader")
    p.add_argument("--report", help="write the run's statistics as JSON here")
    p.add_argument("--engine", choices=["pool", "atheris"], default="pool")
    p.add_argument("--seconds", type=int, default=600, help="atheris engine: how long to run")
    args = p.parse_args()
    return run_atheris(args) if args.engine == "atheris" else run_pool(args)


if __name__ == "__main__":
    sys.exit(main())
