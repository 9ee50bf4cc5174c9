"""LitServe serving the same ONNX model with its own batching (max_batch_size / batch_timeout).

    python -m bench.peers.litserve_onnx CHECKPOINT PORT [MAX_BATCH_SIZE BATCH_TIMEOUT_S]
"""
from __future__ import annotations

import sys
from pathlib import Path

import litserve as ls
import numpy as np


class OnnxAPI(ls.LitAPI):
    def __init__(self, model_path: str, **kwargs):
        super().__init__(**kwargs)
        self.model_path = model_path

    def setup(self, device):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(self.model_path, providers=["CPUExecutionProvider"])

    def decode_request(self, request):
        return np.asarray(request["instances"][0], dtype=np.float32)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        if x.ndim == 2:
            x = x[None]
        return self.session.run(["log_px", "probabilities"], {"input": x})  # the outputs the peers serve

    def unbatch(self, output):
        log_px, probabilities = output
        return [(float(l), p.tolist()) for l, p in zip(log_px, probabilities)]

    def encode_response(self, output):
        if isinstance(output, list):  # unbatched single request
            output = self.unbatch(output)[0]
        log_px, probabilities = output
        return {"predictions": [{"log_px": log_px, "probabilities": probabilities}]}


if __name__ == "__main__":
    checkpoint, port = sys.argv[1], int(sys.argv[2])
    max_batch_size = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    batch_timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 0.005
    api = OnnxAPI(str(Path(checkpoint) / "model.onnx"), max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=port, log_level="warning", generate_client_file=False)
