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
from models.manifest import Manifest, OnnxSection
from models.scores import ScoreFit, forward_scores

ONNX_FILE = "model.onnx"
INPUT_NAME = "input"
log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The model could not be exported or the exported graph disagrees with torch."""


class DensityGraph(torch.nn.Module):
    """What the ONNX graph computes: the head's outputs and every score of ``models.scores`` (with
    the gate's fitted parts as constants). The Bayesian head's predictive variance uses the
    posterior covariance as a constant (sigma0^2 + z^T Sigma z) instead of a triangular solve."""

    def __init__(self, model: HybridModel, fitted: ScoreFit | None):
        super().__init__()
        self.model = model
        self.fitted = fitted
        head = model.head
        self.bayesian = isinstance(head, BayesianLinearHead) and bool(head.fitted)
        if self.bayesian:
            covariance = torch.cholesky_inverse(head.posterior_precision_chol)
            self.register_buffer("covariance", covariance.float())
            self.register_buffer("posterior_mean", head.posterior_mean.float())
            self.register_buffer("noise_variance", head.noise_variance.detach().float())
        with torch.no_grad():
            probe = forward_scores(model, torch.zeros(1, *model.input_shape, device=next(model.parameters()).device), fitted, self.predict)
        self.names = ["log_px"] + [name for name in probe if name not in ("log_px", "z")]

    def predict(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The head's outputs; the Bayesian head's from the constant posterior covariance."""
        if not self.bayesian:
            return self.model.head.predict(z)
        design = with_bias_column(z)
        return {"mean": design @ self.posterior_mean, "variance": self.noise_variance + ((design @ self.covariance) * design).sum(dim=1)}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        results = forward_scores(self.model, x, self.fitted, self.predict)
        return tuple(results[name] for name in self.names)


def export_onnx(model: HybridModel, fitted: ScoreFit | None, path: Path, example: torch.Tensor) -> list[str]:
    """Write the graph to ``path`` (one file); returns its output names."""
    graph = DensityGraph(model.cpu().eval(), fitted).eval()
    names = graph.names
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


NATS_OUTPUTS = ("log_px", "level_")  # summed in float32 through every layer: tolerance grows with the size


def parity(model: HybridModel, fitted: ScoreFit | None, path: Path, inputs: np.ndarray) -> dict[str, float]:
    """Largest difference between ONNX Runtime and torch per output on ``inputs``: absolute for
    outputs in nats (log p(x), level terms), relative to max(1, |value|) for the others; equal
    infinities count as no difference, an infinity against a finite value as an infinite one. Plus
    ``log_px_magnitude``, the largest finite |log p(x)| seen."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_outputs = session.run(None, {INPUT_NAME: inputs.astype(np.float32)})
    graph = DensityGraph(model.cpu().eval(), fitted).eval()
    with torch.no_grad():
        torch_outputs = [value.numpy() for value in graph(torch.from_numpy(inputs.astype(np.float32)))]
    differences = {}
    for name, ours, theirs in zip(graph.names, ort_outputs, torch_outputs):
        ours, theirs = ours.astype(np.float64), theirs.astype(np.float64)
        same_infinity = ~np.isfinite(theirs) & (ours == theirs)
        scale = 1.0 if name.startswith(NATS_OUTPUTS) else np.maximum(1.0, np.abs(np.nan_to_num(theirs)))
        with np.errstate(invalid="ignore"):  # inf - inf where both runtimes agree on an infinity
            gap = np.where(same_infinity, 0.0, np.abs(ours - theirs) / scale)
        differences[name] = float(np.max(np.nan_to_num(gap, nan=np.inf)))
    finite = np.isfinite(torch_outputs[0])
    differences["log_px_magnitude"] = float(np.max(np.abs(torch_outputs[0][finite]), initial=0.0))
    return differences


def parity_inputs(model: HybridModel, manifest: Manifest, count: int = 16, seed: int = 0) -> np.ndarray:
    """Inputs inside the model's support: its own samples at temperature 0.7 (rounded and clipped to
    the levels for dequantized data) and one constant mid-range input."""
    generator = torch.Generator().manual_seed(seed)
    samples = model.cpu().eval().sample(count - 1, temperature=0.7, generator=generator).numpy()
    preprocessing = manifest.preprocessing
    if preprocessing.kind == "dequantize":
        top = preprocessing.levels - 1
        samples = np.clip(np.round(np.nan_to_num(samples, nan=top / 2)), 0, top)
        middle = np.full((1, *samples.shape[1:]), top / 2)
    else:
        middle = model.preprocessing.mean.cpu().numpy().reshape(1, *samples.shape[1:])
    return np.concatenate([middle, samples]).astype(np.float32)


def export_checkpoint(loaded: LoadedCheckpoint, tolerance_log_px: float = 1e-3, tolerance_head: float = 1e-5) -> OnnxSection:
    """Export ``loaded`` to ONNX, check parity, and rewrite its checkpoint with the file added and an
    ``onnx`` manifest section. Returns that section."""
    model, manifest, fitted = loaded.model, loaded.manifest, loaded.gate.fitted
    inputs = parity_inputs(model, manifest)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / ONNX_FILE
        try:
            names = export_onnx(model, fitted, path, torch.from_numpy(inputs[:2]))
        except Exception as error:  # the exporter raises many kinds; the user needs one line
            raise ExportError(f"ONNX export failed: {str(error).strip().splitlines()[0]}") from error
        differences = parity(model, fitted, path, inputs)
        magnitude = differences.pop("log_px_magnitude")
        for name, difference in differences.items():
            # log p(x) of thousands of nats (random inputs lie far out of distribution) is summed in
            # float32 through every layer: allow 1e-5 of its size on top of the absolute tolerance.
            limit = tolerance_log_px + 1e-5 * magnitude if name.startswith(NATS_OUTPUTS) else tolerance_head
            if not difference <= limit:
                raise ExportError(f"ONNX Runtime and torch disagree on {name} by {difference:.3g} (limit {limit:.3g})")
        section = OnnxSection(file=ONNX_FILE, input=INPUT_NAME, outputs=names, dynamic_batch=True, parity_max_abs_difference=differences)
        others = {name: loaded.path / name for name in manifest.files if name not in ("weights.safetensors", ONNX_FILE)}
        save_checkpoint(loaded.path, model, manifest.draft().revised(onnx=section), extra_files={**others, ONNX_FILE: path})
    log.info("exported %s (parity %s)", loaded.path / ONNX_FILE, differences)
    return section
