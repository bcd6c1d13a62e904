"""Run NNCodec on tensors from an .npz file; runs inside NNCodec's own virtual environment.

    python nncodec_worker.py IN.npz OUT_DIR --qp -38 --qp -32 --repeats 3

For each qp: compress and decompress once and check the result's names, shapes and dtypes (int32
tensors, which NNCodec codes losslessly, must come back exact), then time `repeats` compressions and
decompressions. Prints one JSON object: per qp, bytes and median seconds; the decoded tensors go to
OUT_DIR/decoded_<qp>.npz.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time


def _stub_torchvision() -> None:
    """NNCodec imports torchvision, whose CPU-less PyPI build fails to register its ops on CPU torch;
    the codec never uses them, so registering fake kernels for torchvision ops is skipped."""
    import torch.library

    original = torch.library.register_fake

    def register_fake(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            return lambda fn=None, *a, **k: fn
        return original(op, *args, **kwargs)

    torch.library.register_fake = register_fake


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("out_dir")
    parser.add_argument("--qp", type=int, action="append", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np

    _stub_torchvision()
    with contextlib.redirect_stdout(sys.stderr):
        from nncodec import nnc
    with np.load(args.input) as z:
        tensors = {k: z[k] for k in z.files}
    results = {}
    for qp in args.qp:
        with contextlib.redirect_stdout(sys.stderr):
            stream = bytes(nnc.compress(dict(tensors), bitstream_path=None, qp=qp, return_bitstream=True))
            decoded = nnc.decompress(bytearray(stream))
        for name, a in tensors.items():
            b = np.asarray(decoded[name])
            if b.shape != a.shape:
                raise SystemExit(f"qp {qp}: {name} came back with shape {b.shape}, not {a.shape}")
            if a.dtype.kind == "i" and not np.array_equal(a, b):
                raise SystemExit(f"qp {qp}: int32 tensor {name} did not come back exact")
        enc, dec = [], []
        for _ in range(args.repeats):
            with contextlib.redirect_stdout(sys.stderr):
                t = time.perf_counter()
                nnc.compress(dict(tensors), bitstream_path=None, qp=qp, return_bitstream=True)
                enc.append(time.perf_counter() - t)
                t = time.perf_counter()
                nnc.decompress(bytearray(stream))
                dec.append(time.perf_counter() - t)
        np.savez(os.path.join(args.out_dir, f"decoded_{qp}.npz"),
                 **{k: np.asarray(decoded[k]).astype(tensors[k].dtype) for k in tensors})
        results[str(qp)] = {"bytes": len(stream), "encode_s": statistics.median(enc), "decode_s": statistics.median(dec),
                            "repeats": args.repeats}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
