"""The model runtime: a verified checkpoint on a device behind a backend (``inference.backends``), and
``predict``, the model's whole answer for a batch (``inference.prediction.Prediction``): the head,
log p(x), the gate's decision and evidence (``models.gate.Gate.decide``), and eq. 10's gated
outputs."""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from models.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from models.device import resolve_device
from models.gate import bits_per_dim, gated_probabilities, gated_regression
from inference.backends import OnnxBackend, TorchBackend
from inference.inputs import InferenceInput
from inference.prediction import ClassOutputs, Prediction, RegressionOutputs

log = logging.getLogger(__name__)


class ModelRuntime:
    def __init__(
        self, checkpoint: LoadedCheckpoint, device: torch.device, backend: str = "torch", threads: int | None = None,
        name: str | None = None, version: str | None = None,
    ):
        """``name``, ``version``: what it is served as (a repository's folder names); default the
        manifest's name and version."""
        self.manifest = checkpoint.manifest
        self.checkpoint_path = checkpoint.path
        self.model = checkpoint.model
        self.device = device
        self.name: str = name or self.manifest.name
        self.version: str = version or self.manifest.version
        self.task: str = self.manifest.task
        self.input_shape: tuple[int, ...] = tuple(self.manifest.input_shape)
        self.dims = int(np.prod(self.input_shape))
        self.input_range: tuple[float, float] | None = tuple(self.manifest.input_range) if self.manifest.input_range else None
        self.gate = checkpoint.gate
        self.gate_scores = list(self.gate.tails)
        self.backend = self._build_backend(backend, checkpoint, threads)

    def _build_backend(self, kind: str, checkpoint: LoadedCheckpoint, threads: int | None):
        """``auto``: ONNX Runtime where the checkpoint has its export, else torch. A rule, not a timing
        probe, so every replica of a deployment serves the same backend and gives the same answers."""
        onnx = self.manifest.onnx
        if kind == "onnx" and onnx is None:
            raise CheckpointError(f"checkpoint {checkpoint.path} has no ONNX model; run: python -m training export --checkpoint {checkpoint.path}")
        if kind == "torch" or onnx is None:
            return TorchBackend(checkpoint.model, checkpoint.gate.fitted, self.device, threads)
        return OnnxBackend(checkpoint.path / onnx.file, self.device, threads)

    @property
    def platform(self) -> str:
        """The Open Inference Protocol / Triton platform name of the backend in use."""
        return "onnxruntime_onnx" if self.backend.name == "onnx" else "pytorch_torch"

    @classmethod
    def load(
        cls, model_dir, device: str = "auto", backend: str = "torch", threads: int | None = None, signing_key: bytes | None = None,
        name: str | None = None, version: str | None = None,
    ) -> "ModelRuntime":
        """Load and verify a checkpoint (``CheckpointError`` on any problem; with ``signing_key``
        also its signature) and start ``backend`` (``torch``, ``onnx`` or ``auto``: ONNX Runtime where the
        checkpoint has its export). ``threads``: CPU threads for model math (default per backend, see
        ``inference.backends``)."""
        resolved = resolve_device(device)
        runtime = cls(load_checkpoint(model_dir, resolved, signing_key), resolved, backend, threads, name, version)
        log.info("loaded %s version %s from %s: %s backend on %s", runtime.name, runtime.version, model_dir, runtime.backend.name, resolved)
        return runtime

    def predict(self, inputs: InferenceInput) -> Prediction:
        """The model's answer for every instance, in order."""
        raw = self.backend.forward(inputs.x)
        decision = self.gate.decide(raw)
        accepted = decision.accepted
        if self.task == "classification":
            model = raw["probabilities"]
            head = ClassOutputs(model.argmax(axis=1), gated_probabilities(model, accepted, self.model.label_prior.cpu().numpy()), model)
        else:
            mean, variance = gated_regression(raw["mean"], raw["variance"], accepted, self.model.target_moments.cpu().numpy())
            head = RegressionOutputs(mean, variance, raw["mean"], raw["variance"])
        return Prediction(
            head=head, log_px=raw["log_px"], bits_per_dim=bits_per_dim(raw["log_px"], self.dims), accepted=accepted,
            p_value=decision.p_value, rejected_by=decision.rejected_by, instance_score=decision.instance_score,
            scores={name: raw[name] for name in self.gate.tails}, p_values=decision.p_values,
        )

    def midrange_inputs(self, batch: int) -> InferenceInput:
        """``batch`` inputs in the middle of the input range (warm-up)."""
        levels = self.manifest.preprocessing.levels or 2
        return InferenceInput(np.full((batch, *self.input_shape), (levels - 1) / 2, dtype=np.float32))

    def warm_up(self, batch: int) -> float:
        """Run one batch of mid-range inputs; returns its seconds."""
        started = time.perf_counter()
        self.predict(self.midrange_inputs(batch))
        return time.perf_counter() - started
