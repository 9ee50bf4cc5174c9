"""Hot swaps under load: requests served, failed and wrong, and the latency p99 with and without
version swaps, side by side in one run.

Serves a model repository (``python -m service --model-repository``, a temporary folder) holding one
model and drives it with wrk (``concurrency`` connections, one-instance ``/v1`` predictions): first
``seconds`` with no swap (steady), then ``seconds`` while a new version is copied into the repository
(staged, then renamed) and loaded through ``POST /v2/repository/models/{name}/load`` every
``swap_every`` seconds. Versions alternate between two checkpoints with different weights, so every
answer is checked (in wrk's Lua) against the checkpoint of the version that says it answered: its
log p(x) and label, computed in-process beforehand. Prints a table; ``--write`` saves
docs/results/swap.json and updates the swap section of docs/benchmarks.md.

    .venv/bin/python -m training train --config training/configs/digits.yaml --set seed=1 --onnx --out artifacts/digits-seed1
    .venv/bin/python -m bench.swap --checkpoint artifacts/digits --other artifacts/digits-seed1 --write
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench import wrk
from bench.serve_load import free_port, start_server
from training.config import DataConfig
from training.data import load_dataset
from training.docs import update_section

ROOT = Path(__file__).resolve().parents[1]

# 200 when the answer is the one of the checkpoint behind the version that answered, else "wrong"
CLASSIFY = """
local expected = {[1] = {log_px = __ODD_LOG_PX__, label = __ODD_LABEL__}, [0] = {log_px = __EVEN_LOG_PX__, label = __EVEN_LABEL__}}
function classify(status, headers, body)
  if status ~= 200 then return tostring(status) end
  local version = tonumber(body:match('"model_version":"(%d+)"'))
  local log_px = tonumber(body:match('"log_px":([-%d.eE+]+)'))
  local label = tonumber(body:match('"label":(%d+)'))
  if version == nil or log_px == nil then return "wrong" end
  local truth = expected[version % 2]
  if math.abs(log_px - truth.log_px) < 1e-3 and label == truth.label then return "200" end
  return "wrong"
end
"""


def expected_answer(checkpoint: Path, x: np.ndarray) -> tuple[float, int]:
    """log p(x) (nats) and label of one instance under ``checkpoint`` (the runtime called directly)."""
    from inference.inputs import InferenceInput
    from inference.runtime import ModelRuntime

    prediction = ModelRuntime.load(checkpoint, "cpu", "torch").predict(InferenceInput(x[None]))
    return float(prediction.log_px[0]), int(prediction.head.label[0])


def add_version(repository: Path, name: str, version: int, checkpoint: Path) -> None:
    staging = repository / f".staging-{version}"
    shutil.copytree(checkpoint, staging)
    staging.rename(repository / name / str(version))


def swap_every(interval: float, until: float, load, swaps: list) -> None:
    """Every ``interval`` seconds until ``until`` (perf_counter): ``load(version)``, recorded."""
    version = 1
    while time.perf_counter() + interval < until:
        time.sleep(interval)
        version += 1
        started = time.perf_counter()
        status = load(version)
        swaps.append({"version": version, "seconds": time.perf_counter() - started, "status": status})


def row(result: dict, seconds: float) -> dict:
    statuses = result["statuses"]
    return {
        "requests": result["requests"],
        "requests_per_s": result["requests_per_s"],
        "failed": sum(n for key, n in statuses.items() if key not in ("200", "wrong")) + sum(result["socket_errors"]),
        "wrong": statuses.get("wrong", 0),
        "statuses": statuses,
        "p50_ms": result["p50_s"] * 1000,
        "p99_ms": result["p99_s"] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="artifacts/digits", help="odd versions")
    parser.add_argument("--other", default="artifacts/digits-seed1", help="even versions: the same model trained with another seed")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase (steady, then swapping)")
    parser.add_argument("--swap-every", type=float, default=10.0)
    parser.add_argument("--write", action="store_true", help="write docs/results/swap.json and the swap section of docs/benchmarks.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 1
    checkpoints = [Path(args.checkpoint), Path(args.other)]
    for checkpoint in checkpoints:
        if not (checkpoint / "manifest.json").is_file():
            print(f"no checkpoint at {checkpoint}; train it first (see python -m bench.swap --help)", file=sys.stderr)
            return 1
    name = json.loads((checkpoints[0] / "manifest.json").read_text())["name"]
    x = load_dataset(DataConfig(name="digits")).x[0]
    (odd_log_px, odd_label), (even_log_px, even_label) = (expected_answer(checkpoint, x) for checkpoint in checkpoints)
    classify = (CLASSIFY.replace("__ODD_LOG_PX__", repr(odd_log_px)).replace("__ODD_LABEL__", str(odd_label))
                .replace("__EVEN_LOG_PX__", repr(even_log_px)).replace("__EVEN_LABEL__", str(even_label)))

    with tempfile.TemporaryDirectory(prefix="diglm-swap-") as folder:
        repository = Path(folder)
        (repository / name).mkdir()
        add_version(repository, name, 1, checkpoints[0])
        script = wrk.write_script(repository / "predict.lua", json.dumps({"instances": [x.tolist()]}), classify)
        port = free_port()
        server = start_server(port, "--model-repository", str(repository))
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/v1/models/{name}:predict"

        def load(version: int) -> int:
            add_version(repository, name, version, checkpoints[(version + 1) % 2])
            return httpx.post(f"{base}/v2/repository/models/{name}/load", timeout=60).status_code

        try:
            wrk.run(url, script, 4, 2)  # warm-up
            steady = wrk.run(url, script, args.concurrency, args.seconds)
            swaps: list[dict] = []
            swapper = threading.Thread(target=swap_every, args=(args.swap_every, time.perf_counter() + args.seconds, load, swaps))
            swapper.start()
            swapping = wrk.run(url, script, args.concurrency, args.seconds)
            swapper.join()
            final = httpx.get(f"{base}/v2/models/{name}").json()["version"]
        finally:
            server.terminate()
            server.wait(timeout=30)

    rows = {"steady (no swap)": row(steady, args.seconds), f"a swap every {args.swap_every:g} s": row(swapping, args.seconds)}
    header = "| phase | requests | requests/s | failed | wrong answers | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|"
    lines = [
        f"| {phase} | {r['requests']} | {r['requests_per_s']:.0f} | {r['failed']} | {r['wrong']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        for phase, r in rows.items()
    ]
    ratio = rows[f"a swap every {args.swap_every:g} s"]["p99_ms"] / rows["steady (no swap)"]["p99_ms"]
    swap_line = (
        f"{len(swaps)} swaps (load answers {sorted({s['status'] for s in swaps})}, the last serving version {final}), each "
        f"copy + verify + warm-up + switch {min(s['seconds'] for s in swaps):.2f}-{max(s['seconds'] for s in swaps):.2f} s; "
        f"p99 with swaps / steady p99: {ratio:.2f}x"
    ) if swaps else "no swap happened (the phase is shorter than the swap interval)"
    table = "\n".join([header, *lines])
    print(table)
    print(swap_line)
    if args.write:
        machine = f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
        results = {"machine": machine, "concurrency": args.concurrency, "seconds": args.seconds, "swap_every": args.swap_every,
                   "rows": rows, "p99_ratio": ratio, "swaps": swaps}
        (ROOT / "docs" / "results" / "swap.json").write_text(json.dumps(results, indent=2) + "\n")
        update_section(
            ROOT / "docs" / "benchmarks.md",
            "swap",
            f"## Hot swap under load (`python -m bench.swap`)\n\nwrk, {args.concurrency} connections, one-instance `/v1` predictions: "
            f"{args.seconds:g} s steady, then {args.seconds:g} s with a new version loaded every {args.swap_every:g} s "
            f"(alternating two checkpoints; every answer checked against the version that answered). {machine}.\n\n{table}\n\n{swap_line}.\n",
        )
    failed = any(r["failed"] or r["wrong"] for r in rows.values()) or any(s["status"] != 200 for s in swaps)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
