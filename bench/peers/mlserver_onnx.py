"""MLServer (Seldon) serving the same ONNX model through a custom runtime, with its adaptive batching.

MLServer has no ONNX runtime of its own, so ``OnnxModel`` is the smallest one: decode the v2 input
tensor, run the session, return log p(x) and the class probabilities (the outputs every peer
serves). ``write_model_folder`` writes the folder ``mlserver start`` reads (settings.json and the
model's model-settings.json); MLServer runs in its own environment, ``.venv-mlserver`` (its pins
clash with the project's: ``make bench-env``). It speaks the Open Inference Protocol v2 over HTTP
with JSON tensors only: the binary tensor extension is not implemented (SeldonIO/MLServer#324).

    .venv-mlserver/bin/mlserver start FOLDER
"""
from __future__ import annotations

import json
from pathlib import Path

MODEL_NAME = "mnist-bench"


def write_model_folder(folder: Path, model_path: Path, http_port: int, grpc_port: int, metrics_port: int, max_batch_size: int = 32, max_batch_time_s: float = 0.005) -> Path:
    """The settings of one MLServer instance serving ``model_path`` (adaptive batching on)."""
    model = folder / MODEL_NAME
    model.mkdir(parents=True, exist_ok=True)
    settings = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port, "metrics_dir": str(folder / ".metrics"), "debug": False}
    (folder / "settings.json").write_text(json.dumps(settings))  # metrics_dir: its scratch files in the folder, not the working one
    (model / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL_NAME,
                "implementation": "bench.peers.mlserver_onnx.OnnxModel",
                "max_batch_size": max_batch_size,
                "max_batch_time": max_batch_time_s,
                "parameters": {"uri": str(model_path)},
            }
        )
    )
    return folder


try:
    import numpy as np
    import onnxruntime
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse
except ImportError:  # imported for write_model_folder outside MLServer's environment
    MLModel = None

if MLModel is not None:

    class OnnxModel(MLModel):
        async def load(self) -> bool:
            self.session = onnxruntime.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
            log_px, probabilities = self.session.run(["log_px", "probabilities"], {"input": x})
            return InferenceResponse(
                model_name=self.name,
                outputs=[NumpyCodec.encode_output("log_px", log_px), NumpyCodec.encode_output("probabilities", probabilities)],
            )
