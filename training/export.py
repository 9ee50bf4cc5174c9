"""ONNX export of a checkpoint's density direction: x ``(N, *input_shape)`` float32 in data units ->
``log_px`` ``(N,)`` (nats) and the head's output (``probabilities`` ``(N, K)``, or ``mean`` and
``variance`` ``(N,)``), with a dynamic batch axis. Weights, including the LU factors of the 1x1
convolutions, are constants of the graph, so their products and log-dets fold away. The file and its
sha256 join the checkpoint (rewritten atomically); a parity check against torch is recorded."""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import LoadedCheckpoint, save_checkpoint
from models.heads import BayesianLinearHead, with_bias_column
from models.hybrid import HybridModel

ONNX_FILE = "model.onnx"
INPUT_NAME = "input"
log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The model could not be exported or the exported graph disagrees with torch."""


class DensityGraph(torch.nn.Module):
    """What the ONNX graph computes. The Bayesian head's predictive variance uses the posterior
    covariance as a constant (sigma0^2 + z^T Sigma z) instead of a triangular solve."""

    def __init__(self, model: HybridModel):
        super().__init__()
        self.model = model
        head = model.head
        self.bayesian = isinstance(head, BayesianLinearHead) and bool(head.fitted)
        if self.bayesian:
            covariance = torch.cholesky_inverse(head.posterior_precision_chol)
            self.register_buffer("covariance", covariance.float())
            self.register_buffer("posterior_mean", head.posterior_mean.float())
            self.register_buffer("noise_variance", head.noise_variance.detach().float())

    def output_names(self) -> list[str]:
        return ["log_px", "probabilities"] if self.model.task == "classification" else ["log_px", "mean", "variance"]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(x)
        if self.model.task == "classification":
            return output.log_px, self.model.head.predict(output.z)["probabilities"]
        if self.bayesian:
            design = with_bias_column(output.z)
            variance = self.noise_variance + ((design @ self.covariance) * design).sum(dim=1)
            return output.log_px, design @ self.posterior_mean, variance
        prediction = self.model.head.predict(output.z)
        return output.log_px, prediction["mean"], prediction["variance"]


def export_onnx(model: HybridModel, path: Path, example: torch.Tensor) -> list[str]:
    """Write the graph to ``path`` (one file); returns its output names."""
    graph = DensityGraph(model.cpu().eval()).eval()
    names = graph.output_names()
    batch = torch.export.Dim("batch", min=1)
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "torch._export", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # the exporter prints its progress
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                graph, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                input_names=[INPUT_NAME], output_names=names, dynamic_shapes=({0: batch},),
            )
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return names


def parity(model: HybridModel, path: Path, inputs: np.ndarray) -> dict[str, float]:
    """Largest difference between ONNX Runtime and torch per output on ``inputs``: absolute for
    ``log_px`` (nats), relative to max(1, |value|) for the head's outputs; plus
    ``log_px_magnitude``, the largest |log p(x)| seen."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_outputs = session.run(None, {INPUT_NAME: inputs.astype(np.float32)})
    graph = DensityGraph(model.cpu().eval()).eval()
    with torch.no_grad():
        torch_outputs = graph(torch.from_numpy(inputs.astype(np.float32)))
    differences = {}
    for name, ours, theirs in zip(graph.output_names(), ort_outputs, torch_outputs):
        scale = 1.0 if name == "log_px" else np.maximum(1.0, np.abs(theirs.numpy()))
        differences[name] = float(np.max(np.abs(ours - theirs.numpy()) / scale))
    differences["log_px_magnitude"] = float(np.max(np.abs(torch_outputs[0].numpy())))
    return differences


def parity_inputs(model: HybridModel, manifest: dict, count: int = 16, seed: int = 0) -> np.ndarray:
    """Random inputs in the model's range: integer levels for dequantized data, else standard normal
    draws around the training mean (a real input set can be checked with ``parity`` too)."""
    rng = np.random.default_rng(seed)
    shape = (count, *manifest["input_shape"])
    if manifest["preprocessing"]["kind"] == "dequantize":
        return rng.integers(0, manifest["preprocessing"]["levels"], size=shape).astype(np.float32)
    mean = model.preprocessing.mean.cpu().numpy().reshape(manifest["input_shape"])
    std = model.preprocessing.std.cpu().numpy().reshape(manifest["input_shape"])
    return (mean + std * rng.standard_normal(shape)).astype(np.float32)


def export_checkpoint(loaded: LoadedCheckpoint, tolerance_log_px: float = 1e-3, tolerance_head: float = 1e-5) -> dict:
    """Export ``loaded`` to ONNX, check parity, and rewrite its checkpoint with the file added and an
    ``onnx`` manifest section. Returns that section."""
    model, manifest = loaded.model, loaded.manifest
    inputs = parity_inputs(model, manifest)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / ONNX_FILE
        try:
            names = export_onnx(model, path, torch.from_numpy(inputs[:2]))
        except Exception as error:  # the exporter raises many kinds; the user needs one line
            raise ExportError(f"ONNX export failed: {str(error).strip().splitlines()[0]}") from error
        differences = parity(model, path, inputs)
        magnitude = differences.pop("log_px_magnitude")
        for name, difference in differences.items():
            # log p(x) of thousands of nats (random inputs lie far out of distribution) is summed in
            # float32 through every layer: allow 1e-5 of its size on top of the absolute tolerance.
            limit = tolerance_log_px + 1e-5 * magnitude if name == "log_px" else tolerance_head
            if not difference <= limit:
                raise ExportError(f"ONNX Runtime and torch disagree on {name} by {difference:.3g} (limit {limit:.3g})")
        section = {"file": ONNX_FILE, "input": INPUT_NAME, "outputs": names, "dynamic_batch": True, "parity_max_abs_difference": differences}
        others = {name: loaded.path / name for name in manifest["files"] if name not in ("weights.safetensors", ONNX_FILE)}
        save_checkpoint(loaded.path, model, {**manifest, "onnx": section}, extra_files={**others, ONNX_FILE: path})
    log.info("exported %s (parity %s)", loaded.path / ONNX_FILE, differences)
    return section
