"""Replay traffic through the service and watch its drift monitor (``service/drift.py``).

The app runs in this process (httpx over ASGI, no sockets); each request carries ``--batch``
instances and the drift report is read after each. Scenarios:

- ``mnist-pure``: 20,000 MNIST test images (two shuffled passes): false alarms;
- ``mnist-<p>``: 2,000 MNIST images, then MNIST with a share p of NotMNIST mixed in: the number of
  instances from the switch until drift is declared;
- ``flights``: 2,000 held-out rows of the training months (January-October), then the test months
  (November-December): the same delay.

Writes docs/results/drift.json, docs/results/drift.png and the drift section of docs/operations.md.

    .venv/bin/python -m bench.drift_replay --data-dir ../shared/data --write
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
from pathlib import Path

import httpx
import numpy as np

from inference.runtime import ModelRuntime
from service.app import create_app
from service.settings import ServiceSettings
from training.config import ExperimentConfig
from training.data import load_dataset, split_dataset
from training.data.mnist import notmnist_test
from training.docs import update_section

ROOT = Path(__file__).resolve().parents[1]
WARM = 2_000  # in-distribution instances before a shift starts
SHIFTED = 6_000  # instances replayed after the switch (at most)
EVIDENCE_CAP = 20  # the plot's -log10 p axis ends here


def replay(runtime: ModelRuntime, stream: np.ndarray, batch: int, settings: ServiceSettings) -> list[dict]:
    """Send ``stream`` in requests of ``batch`` instances to the service serving ``runtime``'s
    checkpoint; the drift report after each request."""
    app = create_app(settings.model_copy(update={"model_dir": runtime.checkpoint_path}))

    async def go() -> list[dict]:
        reports = []
        async with app.router.lifespan_context(app):
            while not app.state.service.ready:
                await asyncio.sleep(0.01)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://replay", timeout=60) as client:
                for start in range(0, len(stream), batch):
                    chunk = stream[start : start + batch]
                    response = await client.post(f"/v1/models/{runtime.name}:predict", json={"instances": chunk.tolist()})
                    response.raise_for_status()
                    report = (await client.get(f"/v2/models/{runtime.name}/drift")).json()
                    reports.append({"instances": start + len(chunk), "p_val": report["p_val"], "is_drift": report["is_drift"],
                                    "rejection_rate": report["rejection_rate"], "mean_shift_nats": report["mean_shift_nats"]})
        return reports

    return asyncio.run(go())


def compact(reports: list[dict]) -> list[dict]:
    """Reports with floats at 4 significant digits (the JSON kept in docs/)."""
    return [{key: float(f"{value:.4g}") if isinstance(value, float) else value for key, value in report.items()} for report in reports]


def summarize(reports: list[dict], switch: int | None) -> dict:
    """Alarms before the switch (false) and the instances from the switch to the first alarm."""
    before = [r for r in reports if switch is None or r["instances"] <= switch]
    after = [r for r in reports if switch is not None and r["instances"] > switch]
    first = next((r["instances"] - switch for r in after if r["is_drift"]), None)
    return {
        "instances": reports[-1]["instances"],
        "checks_before_shift": len(before),
        "false_alarms": sum(r["is_drift"] for r in before),
        "detection_delay_instances": first,
        "smallest_p_before_shift": min((r["p_val"] for r in before if r["p_val"] is not None), default=None),
    }


def mnist_scenarios(model_dir: Path, data_dir: Path, rng: np.random.Generator) -> dict:
    runtime = ModelRuntime.load(model_dir, "cpu")
    config = ExperimentConfig.model_validate(runtime.manifest.training.config)
    config.data.data_dir = data_dir
    test = split_dataset(load_dataset(config.data, config.seed), config.data, config.seed).test.x
    notmnist, _ = notmnist_test(data_dir)
    scenarios = {}
    pure = np.concatenate([test[rng.permutation(len(test))], test[rng.permutation(len(test))]])
    scenarios["mnist-pure"] = (pure, None)
    for share in (0.05, 0.10, 0.20):
        warm = test[rng.permutation(len(test))[:WARM]]
        shifted = test[rng.permutation(len(test))[:SHIFTED]].copy()
        mixed = rng.random(SHIFTED) < share
        shifted[mixed] = notmnist[rng.choice(len(notmnist), int(mixed.sum()), replace=False)]
        scenarios[f"mnist-{share:.0%}-notmnist"] = (np.concatenate([warm, shifted]), WARM)
    return {name: {"stream": stream, "switch": switch, "runtime": runtime} for name, (stream, switch) in scenarios.items()}


def flights_scenario(model_dir: Path, rng: np.random.Generator) -> dict:
    runtime = ModelRuntime.load(model_dir, "cpu")
    config = ExperimentConfig.model_validate(runtime.manifest.training.config)
    splits = split_dataset(load_dataset(config.data, config.seed), config.data, config.seed)
    held_out = splits.validation.x[rng.permutation(len(splits.validation))[:WARM]]
    test = splits.test.x[rng.permutation(len(splits.test))[:SHIFTED]]
    return {"flights": {"stream": np.concatenate([held_out, test]), "switch": WARM, "runtime": runtime}}


def plot(traces: dict[str, tuple[list[dict], int | None]], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(traces), figsize=(3.4 * len(traces), 3.2), sharey=True, squeeze=False)
    for axis, (name, (reports, switch)) in zip(axes[0], traces.items()):
        x = [r["instances"] for r in reports if r["p_val"] is not None]
        evidence = [min(-math.log10(max(r["p_val"], 1e-300)), EVIDENCE_CAP) for r in reports if r["p_val"] is not None]
        axis.plot(x, evidence, linewidth=0.8)
        axis.axhline(-math.log10(threshold), color="C3", linestyle="--", linewidth=0.8, label="threshold")
        if switch is not None:
            axis.axvline(switch, color="black", linestyle=":", linewidth=0.8, label="shift starts")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("instances served")
    axes[0][0].set_ylabel(f"-log10 drift p-value (capped at {EVIDENCE_CAP})")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def section(results: dict, command: str) -> str:
    rows = []
    for name, r in results["scenarios"].items():
        delay = "-" if r["switch"] is None else ("not detected" if r["detection_delay_instances"] is None else f"{r['detection_delay_instances']:,}")
        smallest = "-" if r["smallest_p_before_shift"] is None else f"{r['smallest_p_before_shift']:.1e}"
        rows.append(f"| {name} | {r['instances']:,} | {r['checks_before_shift']} | {r['false_alarms']} | {smallest} | {delay} |")
    settings = results["settings"]
    return f"""## Drift: replays through the service

Command: `{command}`. The app runs in-process; requests of {results['batch']} instances; the drift report
(`GET /v2/models/{{name}}/drift`) is read after every request. Window {settings['drift_window']} instances,
threshold {settings['drift_threshold']} on the Bonferroni p-value of three tests (KS of log p(x) against the calibration
split, KS of the combined gate p-values against uniform, binomial test of the rejection rate against alpha).
Shift scenarios serve {WARM:,} in-distribution instances first, then the shifted stream; the delay counts instances
from the switch to the first report with `is_drift`. Checkpoints: {', '.join(f'`{m}`' for m in results['models'])}.

| scenario | instances | checks before the shift | false alarms | smallest p before the shift | detection delay (instances) |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

![drift p-value over the replays](results/drift.png)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", default="artifacts/experiments/mnist-hybrid-0.1", help="MNIST checkpoint (python -m training experiment gate trains it)")
    parser.add_argument("--flights", default="artifacts/experiments/flights-b_diglm", help="flights checkpoint (python -m training experiment flights)")
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding mnist/ and notmnist/")
    parser.add_argument("--batch", type=int, default=10, help="instances per request")
    parser.add_argument("--window", type=int, default=None, help="drift window (default: the service's default)")
    parser.add_argument("--write", action="store_true", help="write docs/results/drift.{json,png} and the drift section of docs/operations.md")
    args = parser.parse_args()
    settings = ServiceSettings(device="cpu", log_level="warning", batching=False, **({"drift_window": args.window} if args.window else {}))
    rng = np.random.default_rng(0)
    scenarios = mnist_scenarios(Path(args.mnist), Path(args.data_dir), rng)
    if Path(args.flights, "manifest.json").is_file():
        scenarios |= flights_scenario(Path(args.flights), rng)
    results = {"batch": args.batch, "settings": {"drift_window": settings.drift_window, "drift_threshold": settings.drift_threshold},
               "models": sorted({str(s["runtime"].manifest.name) + " " + s["runtime"].version for s in scenarios.values()}), "scenarios": {}}
    traces = {}
    for name, scenario in scenarios.items():
        reports = replay(scenario["runtime"], scenario["stream"].astype(np.float32), args.batch, settings)
        traces[name] = (reports, scenario["switch"])
        results["scenarios"][name] = {"switch": scenario["switch"], **summarize(reports, scenario["switch"])}
        print(name, json.dumps(results["scenarios"][name]), flush=True)
    if args.write:
        out = ROOT / "docs" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "drift.json").write_text(json.dumps({**results, "traces": {k: compact(v[0]) for k, v in traces.items()}}, separators=(",", ":"), default=float) + "\n")
        plot(traces, settings.drift_threshold, out / "drift.png")
        command = "python -m bench.drift_replay --data-dir ../shared/data --write"
        update_section(ROOT / "docs" / "operations.md", "drift", section(results, command), title="# Operations\n\nRunning the service: deployment, monitoring, alerts, drift.\n")
        print("wrote docs/results/drift.json, docs/results/drift.png and the drift section of docs/operations.md")


if __name__ == "__main__":
    main()
