"""Inference backends behind one small interface: ``name``, ``device`` and ``forward(x)`` with x
``(N, *input_shape)`` float32 in data units, returning the head's outputs (``probabilities`` ``(N, K)``
for classification, ``mean`` and ``variance`` for regression) and every score of ``models.scores``
(``log_px`` float64 ``(N,)`` nats, the level terms, head evidence, ``latent_distance``, ``neighbour_distance``, ``complexity``, ``likelihood_ratio``).

- ``TorchBackend``: the checkpoint's model in eager mode under ``torch.inference_mode`` (CUDA when
  the device says so).
- ``OnnxBackend``: ONNX Runtime on the checkpoint's ``model.onnx``: the CUDA provider first where
  ONNX Runtime has it and the device allows, else the CPU; threads from the CPUs this process may
  use, spinning off so idle workers do not steal the event loop's core.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from models.device import DeviceUnavailable, usable_cpus
from models.hybrid import HybridModel
from models.scores import ScoreFit, forward_scores

log = logging.getLogger(__name__)


class TorchBackend:
    name = "torch"

    def __init__(self, model: HybridModel, fitted: ScoreFit | None, device: torch.device, threads: int | None = None):
        """``fitted``: the gate's fitted score parts. ``threads``: torch's CPU threads (process-wide);
        default the usable CPUs minus one, as idle torch threads spin and would starve the event loop."""
        self.model = model.to(device).eval()
        self.fitted = None if fitted is None else fitted.to(device)
        self.device = device
        if device.type == "cpu":
            torch.set_num_threads(threads or max(1, usable_cpus() - 1))

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            results = forward_scores(self.model, torch.from_numpy(x).to(self.device), self.fitted)
            results.pop("z")
            results["log_px"] = results["log_px"].double()
            return {key: value.cpu().numpy() for key, value in results.items()}


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, device: torch.device, threads: int | None = None):
        """``threads``: ONNX Runtime's intra-op threads; default all usable CPUs (with spinning off,
        idle threads sleep)."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or usable_cpus()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        wanted = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise DeviceUnavailable("the ONNX backend needs CUDA but this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
            wanted.insert(0, "CUDAExecutionProvider")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=wanted)
        if device.type == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise DeviceUnavailable("ONNX Runtime fell back to the CPU although CUDA was required; check the CUDA and cuDNN libraries")
        self.device = device
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outputs = dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))
        outputs["log_px"] = outputs["log_px"].astype(np.float64)
        return outputs


def seconds_per_call(backend, x: np.ndarray, repeats: int = 5) -> float:
    """Median wall time of ``backend.forward(x)`` after one untimed call."""
    backend.forward(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        backend.forward(x)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def fastest(candidates: list, probes: list[np.ndarray]):
    """The backend with the least total time over the probe batches (logged)."""
    timings = {backend.name: sum(seconds_per_call(backend, x) for x in probes) for backend in candidates}
    choice = min(candidates, key=lambda backend: timings[backend.name])
    log.info("backend auto: %s (probe seconds %s)", choice.name, {k: round(v, 5) for k, v in timings.items()})
    return choice
