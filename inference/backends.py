"""Inference backends behind one small interface: ``name``, ``device`` and ``forward(x)`` with x
``(N, *input_shape)`` float32 in data units, returning the head's outputs (``probabilities`` ``(N, K)``
for classification, ``mean`` and ``variance`` for regression) and every score of ``models.scores``
(``log_px`` float64 ``(N,)`` nats, the level terms, head evidence, ``latent_distance``, ``neighbour_distance``, ``complexity``, ``likelihood_ratio``).

On the CPU both give each row the same bits whatever the batch it comes in and whatever the thread
count (docs/gate.md, "Same input, same answer"; ``bench/batch_invariance.py`` measures it):

- ``TorchBackend``: the checkpoint's model in eager mode under ``torch.inference_mode`` (CUDA when
  the device says so). On the CPU a batch of fewer than ``TORCH_CPU_MIN_ROWS`` rows is padded to
  that many: below it torch takes other kernels (native 1x1 convolutions instead of oneDNN's,
  small-matrix BLAS paths) that round differently.
- ``OnnxBackend``: ONNX Runtime on the checkpoint's ``model.onnx``: the CUDA provider first where
  ONNX Runtime has it and the device allows, else the CPU. There each ``session.run`` has one
  thread, and a batch's rows are shared out in ranges run at once: with intra-op threads, ONNX
  Runtime's blocked-layout (NCHWc) convolutions share out their work by the batch's size and round
  a rare row differently (1 of 1,797 digits at 2 threads); one thread computes each row alike.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from models.device import DeviceUnavailable, usable_cpus
from models.hybrid import HybridModel
from models.scores import ScoreFit, forward_scores

log = logging.getLogger(__name__)
# torch on the CPU takes its large-batch kernels from this many rows on (its own threshold for oneDNN's
# 1x1 convolutions; measured batch-invariant from here: bench/batch_invariance.py)
TORCH_CPU_MIN_ROWS = 16


class TorchBackend:
    name = "torch"

    def __init__(self, model: HybridModel, fitted: ScoreFit | None, device: torch.device, threads: int | None = None):
        """``fitted``: the gate's fitted score parts. ``threads``: torch's CPU threads (process-wide);
        default the usable CPUs minus one, as idle torch threads spin and would starve the event loop."""
        self.model = model.to(device).eval()
        self.fitted = None if fitted is None else fitted.to(device)
        self.device = device
        self.min_rows = TORCH_CPU_MIN_ROWS if device.type == "cpu" else 1
        if device.type == "cpu":
            torch.set_num_threads(threads or max(1, usable_cpus() - 1))

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        rows = len(x)
        if rows < self.min_rows:  # copies of the first row: any valid input does
            x = np.concatenate([x, np.repeat(x[:1], self.min_rows - rows, axis=0)])
        with torch.inference_mode():
            results = forward_scores(self.model, torch.from_numpy(x).to(self.device), self.fitted)
            results.pop("z")
            results["log_px"] = results["log_px"].double()
            return {key: value[:rows].cpu().numpy() for key, value in results.items()}


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, device: torch.device, threads: int | None = None):
        """``threads``: on the CPU, how many of a batch's row ranges run at once, each a one-thread
        ``session.run`` (default all usable CPUs); see the module's note for why not intra-op threads."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
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
        self.workers = 1 if device.type == "cuda" else threads or usable_cpus()
        self._pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="onnx-rows") if self.workers > 1 else None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: x})

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        ranges = min(self.workers, len(x))
        if ranges > 1:  # the session is thread-safe and releases the GIL while it runs
            first, *rest = np.array_split(x, ranges)
            others = [self._pool.submit(self._run, part) for part in rest]
            parts = [self._run(first), *(future.result() for future in others)]
            results = [np.concatenate(columns) for columns in zip(*parts)]
        else:
            results = self._run(x)
        outputs = dict(zip(self.output_names, results))
        outputs["log_px"] = outputs["log_px"].astype(np.float64)
        return outputs
