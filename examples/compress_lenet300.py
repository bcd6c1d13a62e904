"""Deep Compression of LeNet-300-100 on scikit-learn's 8x8 digits, next to the paper's Table 2.

    python examples/compress_lenet300.py            # about 1.5 minutes on 2 cores; updates examples/RESULTS.md

The network is the paper's LeNet-300-100 with 64 inputs instead of 784 (8x8 images): ip1 64x300,
ip2 300x100, ip3 100x10, ReLU. For each of 3 seeds (data split and initialisation): dense training,
6 rounds of magnitude pruning with retraining, k-means codebooks (linear init) with centroid
fine-tuning, relative indices and Huffman coding; the file is decoded and the decoded model scored.
"""

from __future__ import annotations

import torch

import digits_common
from digits_common import Config

# The doc's summary of the paper's Table 2 (LeNet-300-100 on MNIST).
PAPER = {
    "ip1": {"kept": "8%", "wq": "6", "wh": "4.4", "iq": "5", "ih": "3.7"},
    "ip2": {"kept": "9%", "wq": "6", "iq": "5"},
    "ip3": {"kept": "26%", "wq": "6", "iq": "5"},
    "total": {"kept": "8%", "rh": "2.49% (40x)"},
}


NOTES = (
    "Differences from the paper's settings: 4-bit codebooks instead of 6 (the paper finds fully connected "
    "layers hold down to 2 bits; here a 6-bit codebook, 63 float32 values, would cost as much as the "
    "indices of a layer of a few hundred kept weights), the index width that gives the smallest file "
    "instead of 5 bits, and the biases shared too (a 4-bit k-means codebook per bias vector, set after the "
    "centroid fine-tuning; the paper does not say how it stores biases)."
)


class LeNet300(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ip1 = torch.nn.Linear(64, 300)
        self.ip2 = torch.nn.Linear(300, 100)
        self.ip3 = torch.nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ip3(torch.relu(self.ip2(torch.relu(self.ip1(x)))))


CONFIG = Config(
    sparsity={"ip1.weight": 0.96, "ip2.weight": 0.97, "ip3.weight": 0.80},
    bits={"ip1.weight": 4, "ip2.weight": 4, "ip3.weight": 4},
    index_bits="auto", dense_epochs=60, rounds=6, retrain_epochs=30, finetune_epochs=15, batch=64,
    vector_bits=4,
)


def main() -> None:
    digits_common.main(
        "lenet300", LeNet300, CONFIG, "LeNet-300-100 (64-300-100-10) on 8x8 digits",
        lambda results: (
            "`python examples/compress_lenet300.py` — "
            f"{results[0]['params']:,} parameters: ip1 64x300, ip2 300x100, ip3 100x10 (the paper's ip1 is 784x300)."
        ),
        PAPER, ("ip1", "ip2", "ip3"), NOTES, __doc__.splitlines()[0],
    )


if __name__ == "__main__":
    main()
