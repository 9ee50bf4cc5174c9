"""The model runtime: a verified checkpoint on a device behind one small backend interface, and
``predict`` that returns every per-instance field of a prediction as arrays.

Backends implement ``forward(x) -> {"log_px": (N,), "probabilities": (N, K)}`` (classification) or
``{"log_px", "mean", "variance"}`` (regression), with x ``(N, *input_shape)`` float32 in data units.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from models.checkpoint import LoadedCheckpoint, load_checkpoint
from models.device import resolve_device
from models.gate import accept, bits_per_dim, gated_probabilities, gated_regression
from models.hybrid import HybridModel

log = logging.getLogger(__name__)


class TorchBackend:
    name = "torch"

    def __init__(self, model: HybridModel, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            output = self.model(torch.from_numpy(x).to(self.device))
            prediction = self.model.head.predict(output.z)
            prediction.pop("logits", None)
            results = {"log_px": output.log_px.double(), **prediction}
            return {key: value.cpu().numpy() for key, value in results.items()}


class ModelRuntime:
    def __init__(self, checkpoint: LoadedCheckpoint, device: torch.device):
        self.manifest = checkpoint.manifest
        self.model = checkpoint.model
        self.device = device
        self.backend = TorchBackend(checkpoint.model, device)
        self.name: str = self.manifest["name"]
        self.version: str = self.manifest["version"]
        self.task: str = self.manifest["task"]
        self.input_shape: tuple[int, ...] = tuple(self.manifest["input_shape"])
        self.dims = int(np.prod(self.input_shape))
        self.tau: float = float(self.manifest["gate"]["tau"])

    @classmethod
    def load(cls, model_dir, device: str = "auto", cpu_threads: int | None = None) -> "ModelRuntime":
        """Load and verify a checkpoint (``CheckpointError`` on any problem). ``cpu_threads`` sets
        torch's thread count for CPU inference (spinning extra threads starve the event loop)."""
        resolved = resolve_device(device)
        if resolved.type == "cpu" and cpu_threads is not None:
            torch.set_num_threads(cpu_threads)
        runtime = cls(load_checkpoint(model_dir, resolved), resolved)
        log.info("loaded %s version %s from %s on %s", runtime.name, runtime.version, model_dir, resolved)
        return runtime

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Per-instance arrays: ``log_px`` (nats; -inf outside the support), ``bits_per_dim``,
        ``accepted``, and for classification ``label`` (the head's argmax), ``probabilities``
        (eq. 10: the label prior when rejected), ``model_probabilities``; for regression ``mean``,
        ``variance`` (training target moments when rejected), ``model_mean``, ``model_variance``."""
        raw = self.backend.forward(x)
        log_px = torch.from_numpy(raw["log_px"])
        accepted = accept(log_px, self.tau)
        result = {"log_px": raw["log_px"], "bits_per_dim": bits_per_dim(raw["log_px"], self.dims), "accepted": accepted.numpy()}
        if self.task == "classification":
            probabilities = torch.from_numpy(raw["probabilities"])
            result["label"] = raw["probabilities"].argmax(axis=1)
            result["model_probabilities"] = raw["probabilities"]
            result["probabilities"] = gated_probabilities(probabilities, accepted, self.model.label_prior.cpu()).numpy()
        else:
            mean, variance = gated_regression(
                torch.from_numpy(raw["mean"]), torch.from_numpy(raw["variance"]), accepted, self.model.target_moments.cpu()
            )
            result.update(model_mean=raw["mean"], model_variance=raw["variance"], mean=mean.numpy(), variance=variance.numpy())
        return result

    def warm_up(self, batch: int) -> float:
        """Run one batch of mid-range inputs; returns its seconds."""
        levels = self.manifest["preprocessing"].get("levels") or 2
        x = np.full((batch, *self.input_shape), (levels - 1) / 2, dtype=np.float32)
        started = time.perf_counter()
        self.predict(x)
        return time.perf_counter() - started
