"""Deep Compression of LeNet-5 on scikit-learn's 8x8 digits, next to the paper's Table 3.

    python examples/compress_lenet5.py              # about 1.5 minutes on 2 cores; updates examples/RESULTS.md

The network is the paper's (Caffe) LeNet-5 — conv1 20@5x5, max-pool 2, conv2 50@5x5, max-pool 2,
ip1 500 + ReLU, ip2 10 — adapted to 8x8 inputs: both convolutions are padded by 2 ("same"), so the
feature maps are 8x8 -> 4x4 after pool1 and 4x4 -> 2x2 after pool2, and ip1 sees 50x2x2 = 200 inputs
instead of 800. The conv layers keep the paper's sizes (500 and 25,000 weights); ip1 has 100,000
weights instead of 400,000. For each of 3 seeds: dense training, 6 rounds of magnitude pruning with
retraining, k-means codebooks with centroid fine-tuning, relative indices, Huffman coding; the file is
decoded and the decoded model scored.
"""

from __future__ import annotations

import torch

import digits_common
from digits_common import Config

# The doc's summary of the paper's Table 3 (LeNet-5 on MNIST).
PAPER = {
    "conv1": {"kept": "66%", "wq": "8", "iq": "5"},
    "conv2": {"kept": "12%", "wq": "8", "iq": "5"},
    "ip1": {"kept": "8%", "wq": "5", "iq": "5"},
    "ip2": {"kept": "19%", "wq": "5", "iq": "5"},
    "total": {"rh": "(39x)"},
}


NOTES = (
    "Differences from the paper's settings: 5-bit codebooks for the convolutions instead of 8 (conv1 has "
    "about 300 kept weights: a 255-entry float32 codebook would be 1 KB, more than its indices; the paper "
    "finds conv layers hold down to 4 bits), 4-bit instead of 5-bit for ip1 and ip2, the index width "
    "that gives the smallest file instead of 5 bits, and the biases shared too (a 4-bit k-means codebook per "
    "bias vector, set after the centroid fine-tuning; the paper does not say how it stores biases)."
)


class LeNet5(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 20, 5, padding=2)
        self.conv2 = torch.nn.Conv2d(20, 50, 5, padding=2)
        self.ip1 = torch.nn.Linear(200, 500)
        self.ip2 = torch.nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 8, 8)
        x = torch.nn.functional.max_pool2d(self.conv1(x), 2)  # Caffe's LeNet: no ReLU after the convs
        x = torch.nn.functional.max_pool2d(self.conv2(x), 2)
        return self.ip2(torch.relu(self.ip1(x.flatten(1))))


CONFIG = Config(
    sparsity={"conv1.weight": 0.40, "conv2.weight": 0.92, "ip1.weight": 0.975, "ip2.weight": 0.83},
    bits={"conv1.weight": 5, "conv2.weight": 5, "ip1.weight": 4, "ip2.weight": 4},
    index_bits="auto", dense_epochs=30, rounds=6, retrain_epochs=15, finetune_epochs=10, batch=64,
    vector_bits=4,
)


def main() -> None:
    digits_common.main(
        "lenet5", LeNet5, CONFIG, "LeNet-5 (adapted to 8x8 inputs) on 8x8 digits",
        lambda results: (
            "`python examples/compress_lenet5.py` — "
            f"{results[0]['params']:,} parameters: conv1 20@5x5 and conv2 50@5x5, padded to keep 8x8 and 4x4 "
            "maps; ip1 200x500 (the paper's is 800x500); ip2 500x10; no ReLU after the convolutions, as in "
            "Caffe's LeNet."
        ),
        PAPER, ("conv1", "conv2", "ip1", "ip2"), NOTES, __doc__.splitlines()[0],
    )


if __name__ == "__main__":
    main()
