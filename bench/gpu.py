"""The serving benchmark's in-process part on a GPU: throughput of the benchmark model (``bench/model.py``)
with torch on CUDA and with ONNX Runtime's CUDA provider through IOBinding (inputs and outputs stay
on the device), at batch sizes 1 to 1024. One prepared script for a machine with a GPU and
``onnxruntime-gpu``; the HTTP rows come from ``python -m bench.serve --device cuda``.

    python -m bench.gpu [--write]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.model import ROOT, build_benchmark_checkpoint, random_images

BATCHES = (1, 8, 32, 128, 512, 1024)


def throughput(run, batch: int, seconds: float = 2.0) -> tuple[float, float]:
    """(instances/s, median ms per call) of ``run()`` after a warm-up."""
    for _ in range(5):
        run()
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    median = float(np.median(times))
    return batch / median, median * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "artifacts" / "bench" / "mnist-bench"))
    parser.add_argument("--write", action="store_true", help="rewrite the serve-gpu section of docs/benchmarks.md")
    args = parser.parse_args()
    import onnxruntime
    import torch

    from models.checkpoint import load_checkpoint

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise SystemExit("onnxruntime has no CUDA provider: install the onnx-gpu extra (onnxruntime-gpu)")
    checkpoint = build_benchmark_checkpoint(Path(args.checkpoint))
    model = load_checkpoint(checkpoint, "cuda").model.eval()
    session = onnxruntime.InferenceSession(str(checkpoint / "model.onnx"), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise SystemExit(f"ONNX Runtime fell back to {session.get_providers()}")
    rows = []
    for batch in BATCHES:
        x_cpu = random_images(batch)
        x_gpu = torch.from_numpy(x_cpu).cuda()

        def torch_run():
            with torch.inference_mode():
                output = model(x_gpu)
                model.head.predict(output.z)
            torch.cuda.synchronize()

        binding = session.io_binding()
        binding.bind_input("input", "cuda", 0, np.float32, list(x_gpu.shape), x_gpu.data_ptr())
        for name in ("log_px", "probabilities"):
            binding.bind_output(name, "cuda")

        def ort_run():
            session.run_with_iobinding(binding)

        def ort_copy_run():
            session.run(None, {"input": x_cpu})

        for name, run in (("torch CUDA", torch_run), ("ORT CUDA, IOBinding", ort_run), ("ORT CUDA, host copies", ort_copy_run)):
            rate, ms = throughput(run, batch)
            rows.append((name, batch, rate, ms))
    lines = ["| runtime | batch | instances/s | ms per batch |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {batch} | {rate:.0f} | {ms:.3f} |" for name, batch, rate, ms in rows]
    table = "\n".join(lines)
    print(table)
    if args.write:
        from training.docs import update_section

        update_section(
            ROOT / "docs" / "benchmarks.md",
            "serve-gpu",
            f"## Serving on a GPU, in-process (`bench/gpu.py`)\n\nDevice: {torch.cuda.get_device_name()}. Same benchmark model as the CPU "
            f"serving table.\n\nCommand: `python -m bench.gpu --write`\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
