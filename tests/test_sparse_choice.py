"""The encoder prices every sparse layout and index width from symbol counts and builds only the
cheapest: that choice must be the one building every candidate would make."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dcformat import codec, quantize, relindex
from dcformat import constants as K
from dcformat.policy import AUTO, TensorPlan


def every_sparse_draft(x, codebook=None, indices=None, bits=None):
    """All sparse candidates, each built in full (what the encoder did before pricing from counts)."""
    out = []
    for layout in (K.CSR, K.CSC):
        positions = relindex.nonzero_positions(x, layout)
        for b in codec.INDEX_BITS_CANDIDATES:
            if len(relindex.encode_gaps(positions, b)[0]) > max(1, x.size):
                continue
            out.append(codec._sparse_draft({"name": "w", "dtype": "float32", "shape": list(x.shape)}, x, layout, b,
                                           positions, codebook, indices, bits))
    return out


@st.composite
def sparse_matrices(draw):
    rows, cols = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    keep = draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]))
    x = rng.laplace(0, 1, (rows, cols)).astype(np.float32)
    x[rng.random((rows, cols)) >= keep] = 0
    if draw(st.booleans()):  # long runs of zeros: fillers at the narrow widths
        x[: rows // 2] = 0
    return x


@given(sparse_matrices(), st.booleans())
@settings(max_examples=60, deadline=None)
def test_the_priced_choice_is_the_smallest_built_candidate(x, with_codebook):
    plan = TensorPlan("coded", index_bits=AUTO, layout=AUTO)
    base = {"name": "w", "dtype": "float32", "shape": list(x.shape)}
    if with_codebook:
        codebook, indices = quantize.quantize_uniform(x, 0.25)
        decoded = codebook[indices].reshape(x.shape)
        bits = max(1, int(len(codebook) - 1).bit_length())
        chosen = codec._sparse_drafts(base, decoded, plan, codebook=codebook, indices=indices, bits=bits)
        built = every_sparse_draft(decoded, codebook, indices, bits)
    else:
        chosen = codec._sparse_drafts(base, x, plan)
        built = every_sparse_draft(x)
    assert len(chosen) == 1
    best = min(built, key=lambda d: d.estimate())  # the first of the smallest, as before
    assert chosen[0].estimate() == best.estimate()
    assert {k: v for k, v in chosen[0].header.items()} == best.header
    for key, stream in best.streams.items():
        assert np.array_equal(chosen[0].streams[key].symbols, stream.symbols)
