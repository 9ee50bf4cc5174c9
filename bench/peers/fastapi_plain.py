"""Plain FastAPI, the way most tutorials serve a model: a ``def`` endpoint (FastAPI's thread pool),
pydantic validation of ``list[list[list[float]]]``, one forward pass per request.

    python -m bench.peers.fastapi_plain CHECKPOINT torch|onnx PORT
"""
from __future__ import annotations

import sys

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from models.checkpoint import load_checkpoint


class PredictRequest(BaseModel):
    instances: list[list[list[float]]]


def create_app(checkpoint: str, runtime: str) -> FastAPI:
    loaded = load_checkpoint(checkpoint)
    model = loaded.model.eval()
    if runtime == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(loaded.path / "model.onnx"), providers=["CPUExecutionProvider"])

        def forward(x: np.ndarray):
            log_px, probabilities = session.run(["log_px", "probabilities"], {"input": x})
            return log_px, probabilities
    else:

        def forward(x: np.ndarray):
            with torch.no_grad():
                output = model(torch.from_numpy(x))
                return output.log_px.numpy(), model.head.predict(output.z)["probabilities"].numpy()

    app = FastAPI()

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict:
        log_px, probabilities = forward(np.asarray(request.instances, dtype=np.float32))
        return {"predictions": [{"log_px": float(l), "probabilities": p} for l, p in zip(log_px, probabilities.tolist())]}

    return app


if __name__ == "__main__":
    checkpoint, runtime, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    uvicorn.run(create_app(checkpoint, runtime), host="127.0.0.1", port=port, log_level="warning")
