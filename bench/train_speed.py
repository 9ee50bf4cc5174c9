"""Training speed of our Glow hybrid against the ``normflows`` package's Glow, side by side.

Each (implementation, configuration) runs in its own subprocess, so its peak resident memory is its
own: random inputs (values 0-255), random labels, Adam, a linear class head on all latents, and the
same loss, bits/dim + cross-entropy. Reports training images/s after warm-up and the peak RSS. Each
row runs ``--repeats`` times, the implementations alternating within every repeat so that drift of
the machine hits them alike; the table gives the median, the spread (min-max) and the median of the
per-repeat ratios to normflows.
Needs ``normflows`` beside torch==2.13.0: ``make bench-train-speed`` builds that environment
(``.venv-bench``) and runs this script.

    .venv-bench/bin/python -m bench.train_speed --write
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    # name: (input size, levels L, steps K, hidden channels)
    "shared (1x32x32, L=3, K=8, 128 hidden)": (32, 3, 8, 128),
    "mnist-cpu (1x28x28, L=2, K=4, 64 hidden)": (28, 2, 4, 64),
}
BATCH = 64
CLASSES = 10


def ours(size: int, levels: int, steps: int, hidden: int, compile_model: bool):
    """Our HybridModel; its loss with lambda = 1/(D ln 2) is exactly CE + bits/dim."""
    import torch

    from models.config import FlowConfig, HeadConfig, ModelConfig, PreprocessingConfig
    from models.hybrid import HybridModel

    model = HybridModel(
        ModelConfig(
            input_shape=[size, size],
            preprocessing=PreprocessingConfig(levels=256),
            flow=FlowConfig(kind="glow", levels=levels, steps=steps, hidden=hidden),
            head=HeadConfig(num_classes=CLASSES),
        )
    )
    labeled = torch.ones(BATCH, dtype=torch.bool)
    loss_fn = model.loss
    if compile_model:
        loss_fn = torch.compile(model.loss)

    def loss(x, y):
        return loss_fn(x, y, labeled, 1 / math.log(2), 0.0, torch.rand_like(x))[0]

    return model, loss


def normflows_glow(size: int, levels: int, steps: int, hidden: int, compile_model: bool):
    """normflows' multi-scale Glow (its README's construction) with a linear head on the latents."""
    import normflows as nf
    import torch

    q0, merges, flows = [], [], []
    for i in range(levels):
        flows.append([nf.flows.GlowBlock(2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True) for _ in range(steps)] + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            shape = (2 ** (levels - i), size // 2 ** (levels - i), size // 2 ** (levels - i))
        else:
            shape = (2 ** (levels + 1), size // 2**levels, size // 2**levels)
        q0.append(nf.distributions.DiagGaussian(shape))
    flow = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
    head = torch.nn.Linear(size * size, CLASSES)
    model = torch.nn.ModuleDict({"flow": flow, "head": head})
    dims = size * size

    def forward(x, y):
        x_c = (x + torch.rand_like(x)) / 256 - 0.5
        z, log_det = flow.inverse_and_log_det(x_c)
        log_px = log_det - dims * math.log(256) + sum(q.log_prob(part) for q, part in zip(flow.q0, z))
        logits = head(torch.cat([part.flatten(1) for part in z], dim=1))
        return torch.nn.functional.cross_entropy(logits, y) + (-log_px / (dims * math.log(2))).mean()

    return model, torch.compile(forward) if compile_model else forward


def worker(implementation: str, config: str, steps: int, compile_model: bool) -> dict:
    import torch

    torch.manual_seed(0)
    size, levels, flow_steps, hidden = CONFIGS[config]
    build = ours if implementation == "ours" else normflows_glow
    model, loss_fn = build(size, levels, flow_steps, hidden, compile_model)
    x = torch.randint(0, 256, (BATCH, 1, size, size)).float()
    y = torch.randint(0, CLASSES, (BATCH,))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    started = time.perf_counter()
    for step in range(3 + steps):
        if step == 3:
            warm = time.perf_counter()
            started_steps = warm
        loss = loss_fn(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - started_steps
    return {
        "images_per_s": steps * BATCH / elapsed,
        "warmup_s": warm - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss_finite": bool(torch.isfinite(loss)),
    }


def run_worker(implementation: str, config: str, steps: int, compile_model: bool) -> dict:
    command = [sys.executable, "-m", "bench.train_speed", "--worker", implementation, config, "--steps", str(steps)]
    if compile_model:
        command.append("--compile")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{implementation} / {config} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per run (after 3 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row, alternating the implementations")
    parser.add_argument("--compile", action="store_true", help="also time our model under torch.compile")
    parser.add_argument("--write", action="store_true", help="update the train-speed section of docs/benchmarks.md")
    parser.add_argument("--worker", nargs=2, metavar=("IMPLEMENTATION", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.compile)))
        return

    import torch

    variants = [("normflows", False), ("ours", False)] + ([("ours", True)] if args.compile else [])
    rows = []
    for config in CONFIGS:
        runs: dict[tuple[str, bool], list[dict]] = {variant: [] for variant in variants}
        for _ in range(args.repeats):
            for implementation, compiled in variants:
                runs[(implementation, compiled)].append(run_worker(implementation, config, args.steps, compiled))
        baseline = [run["images_per_s"] for run in runs[("normflows", False)]]
        for (implementation, compiled), results in runs.items():
            speeds = [run["images_per_s"] for run in results]
            ratios = [speed / base for speed, base in zip(speeds, baseline)]
            name = implementation + (" + torch.compile" if compiled else "")
            rows.append((config, name, results, speeds, ratios))
    header = (
        "| configuration | implementation | images/s (median) | spread | ratio to normflows (median, min-max) | peak RSS (MB) | parameters | warm-up (s) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| {c} | {impl} | {statistics.median(speeds):.0f} | {min(speeds):.0f}-{max(speeds):.0f} | {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
        f"{max(r['peak_rss_mb'] for r in results):.0f} | {results[0]['parameters']:,} | {statistics.median(r['warmup_s'] for r in results):.1f} |"
        for c, impl, results, speeds, ratios in rows
    ]
    table = "\n".join([header, *lines])
    print(table)
    if args.write:
        from training.docs import update_section

        machine = f"{os.cpu_count()} CPU cores, {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
        update_section(
            ROOT / "docs" / "benchmarks.md",
            "train-speed",
            f"## Training speed: our Glow hybrid vs normflows (`bench/train_speed.py`)\n\n"
            f"Batch {BATCH} of random 8-bit images with random labels, Adam, a linear class head on all latents, loss = bits/dim + "
            f"cross-entropy, LU-parametrised 1x1 convolutions and affine couplings in both. Each row is its own process "
            f"(peak RSS is that process's), {args.steps} timed steps after 3 warm-up steps, {args.repeats} repeats per row with the implementations "
            f"alternating within each repeat, on {machine}.\n\n"
            f"Command: `make bench-train-speed`\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
