"""The serving benchmarks' model: an MNIST-size Glow hybrid (the ``mnist-cpu`` architecture, 1x28x28,
L=2, K=4, 64 hidden channels) with random weights, written as a normal checkpoint with its ONNX
export. Throughput does not depend on training; the gate is calibrated on random digit-like images,
with as many training rows as MNIST's so that the nearest-neighbour score searches a reference of
the served size, and a validation split large enough for the gate's classifier ensemble."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.gate import CLASSIFIER_MIN_REFERENCE, GATE_FILE
from models.hybrid import HybridModel
from models.manifest import DataSummary, ManifestDraft
from training.calibration import fit_gate
from training.config import GateSettings, load_config
from training.data.registry import Dataset, Split, Splits
from training.trainer import complete_model_config

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ROWS = 50_000  # the gate's training split: the neighbour reference of an MNIST model (models.gate.NEIGHBOUR_REFERENCE)
HALF_ROWS = CLASSIFIER_MIN_REFERENCE  # validation and calibration rows each: the least that fits the classifier
SIZES = {"train": TRAIN_ROWS, "validation": HALF_ROWS}


def random_images(count: int, seed: int = 0) -> np.ndarray:
    """Sparse bright strokes on black, ``(count, 28, 28)`` in 0-255: MNIST-like statistics."""
    rng = np.random.default_rng(seed)
    images = np.where(rng.random((count, 28, 28)) < 0.8, 0, rng.integers(0, 256, (count, 28, 28)))
    return images.astype(np.float32)


def build_benchmark_checkpoint(out: Path, gate: GateSettings | None = None) -> Path:
    """Write (once) and return the benchmark checkpoint folder, with model.onnx; ``gate``: the gate's
    settings (default: the default conformal gate)."""
    if (out / "model.onnx").is_file():
        try:
            if load_checkpoint(out).manifest.data.sizes == SIZES:
                return out
        except CheckpointError:  # written by an older format: build it again
            pass
    from training.export import export_checkpoint

    torch.manual_seed(0)
    config = load_config(ROOT / "training" / "configs" / "mnist-cpu.yaml")
    images = random_images(2 * HALF_ROWS)
    dataset = Dataset(x=images, y=np.zeros(len(images), dtype=np.int64), task="classification", levels=256, classes=[str(d) for d in range(10)])
    model = HybridModel(complete_model_config(config.model, dataset))
    model.train()
    init = images[:512]  # the data-dependent initialisation needs a few hundred images, not all
    with torch.no_grad():
        model(torch.from_numpy(init), torch.rand(init.shape))
    model.eval()
    labels = np.arange(TRAIN_ROWS) % 10
    halves = [Split(part, labels[: len(part)]) for part in np.array_split(images, 2)]
    train = Split(random_images(TRAIN_ROWS, seed=3), labels)
    fitted = fit_gate(model, Splits(train=train, validation=halves[0], test=halves[1], calibration=halves[1]), gate or GateSettings())
    manifest = ManifestDraft(
        name="mnist-bench", task="classification", input_shape=[28, 28], input_range=[0, 255], classes=dataset.classes,
        preprocessing=model.config.preprocessing, gate=fitted.summary, label_prior=model.label_prior.tolist(),
        data=DataSummary(name="random", description="random digit-like images: weights for serving benchmarks only", sizes=SIZES, labeled_train=0),
    )
    gate_path = out.parent / f".{out.name}-{GATE_FILE}"
    out.parent.mkdir(parents=True, exist_ok=True)
    fitted.save(gate_path)
    save_checkpoint(out, model, manifest, extra_files={GATE_FILE: gate_path})
    gate_path.unlink()
    export_checkpoint(load_checkpoint(out))
    return out
