"""Replay traffic through the service and watch its drift monitor (``service/drift.py``).

The app runs in this process (httpx over ASGI, no sockets); each request carries ``--batch``
instances and the drift report is read after each. Scenarios:

- ``mnist-pure``: 20,000 MNIST test images (two shuffled passes): false alarms;
- ``mnist-<p>``: 2,000 MNIST images, then MNIST with a share p of NotMNIST mixed in: the number of
  instances from the switch until drift is declared;
- ``flights``: 2,000 held-out rows of the training months (January-October), then the test months
  (November-December): the same delay.

Beside the service's report, each request's row carries the drift p-value of the rule before issue 34
on the same window (``bench.drift_false_alarms.before_issue_34``, from the served answers), so the
false alarms and delays of both rules come from one replay. Writes docs/results/drift.json,
docs/results/drift.png and the drift section of docs/operations.md.

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

from bench.drift_false_alarms import before_issue_34
from inference.runtime import ModelRuntime
from service.app import create_app
from service.drift import finite_floor
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
    checkpoint; after each request the service's drift report and, side by side, the drift p-value
    of the rule before issue 34 on the same window (from the served instances' answers)."""
    app = create_app(settings.model_copy(update={"model_dir": runtime.checkpoint_path}))
    window, threshold, alpha = settings.drift_window, settings.drift_threshold, runtime.gate.alpha
    reference_log_px = np.sort(finite_floor(runtime.gate.calibration["log_px"]))
    served = {"log_px": [], "p_value": [], "rejected": []}

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
                    for answer in response.json()["predictions"]:
                        served["log_px"].append(-math.inf if answer["log_px"] is None else answer["log_px"])
                        served["p_value"].append(answer["p_value"])
                        served["rejected"].append(not answer["accepted"])
                    before = None
                    if len(served["log_px"]) >= window:
                        last = {key: np.array(values[-window:]) for key, values in served.items()}
                        before = before_issue_34(last["log_px"], last["p_value"], last["rejected"], reference_log_px, alpha)
                    report = (await client.get(f"/v2/models/{runtime.name}/drift")).json()
                    reports.append({"instances": start + len(chunk), "p_val": report["p_val"], "is_drift": report["is_drift"],
                                    "p_val_before": before, "is_drift_before": int(before is not None and before < threshold),
                                    "rejection_rate": report["rejection_rate"], "mean_shift_nats": report["mean_shift_nats"]})
        return reports

    return asyncio.run(go())


def compact(reports: list[dict]) -> list[dict]:
    """Reports with floats at 4 significant digits (the JSON kept in docs/)."""
    return [{key: float(f"{value:.4g}") if isinstance(value, float) else value for key, value in report.items()} for report in reports]


def summarize(reports: list[dict], switch: int | None) -> dict:
    """Per rule (``after``: the service's, ``before``: before issue 34): alarms before the switch
    (false), the smallest p-value before it and the instances from the switch to the first alarm."""
    before = [r for r in reports if switch is None or r["instances"] <= switch]
    after = [r for r in reports if switch is not None and r["instances"] > switch]
    summary = {"instances": reports[-1]["instances"], "checks_before_shift": len(before)}
    for rule, suffix in (("after", ""), ("before", "_before")):
        first = next((r["instances"] - switch for r in after if r["is_drift" + suffix]), None)
        summary[rule] = {
            "false_alarms": sum(r["is_drift" + suffix] for r in before),
            "detection_delay_instances": first,
            "smallest_p_before_shift": min((r["p_val" + suffix] for r in before if r["p_val" + suffix] is not None), default=None),
        }
    return summary


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
        for key, label, style in (("p_val_before", "before issue 34", {"color": "0.6", "linestyle": "--"}), ("p_val", "calibration-aware", {"color": "C0"})):
            x = [r["instances"] for r in reports if r[key] is not None]
            evidence = [min(-math.log10(max(r[key], 1e-300)), EVIDENCE_CAP) for r in reports if r[key] is not None]
            axis.plot(x, evidence, linewidth=0.8, label=label, **style)
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
    def delay(rule: dict, switch: int | None) -> str:
        if switch is None:
            return "-"
        return "not detected" if rule["detection_delay_instances"] is None else f"{rule['detection_delay_instances']:,}"

    def smallest(rule: dict) -> str:
        return "-" if rule["smallest_p_before_shift"] is None else f"{rule['smallest_p_before_shift']:.1e}"

    rows = []
    for name, r in results["scenarios"].items():
        old, new = r["before"], r["after"]
        rows.append(
            f"| {name} | {r['instances']:,} | {r['checks_before_shift']} | {old['false_alarms']} / {new['false_alarms']} "
            f"| {smallest(old)} / {smallest(new)} | {delay(old, r['switch'])} | {delay(new, r['switch'])} |"
        )
    settings = results["settings"]
    return f"""## Drift: replays through the service

Command: `{command}`. The app runs in-process; requests of {results['batch']} instances; the drift report
(`GET /v2/models/{{name}}/drift`) is read after every request. Window {settings['drift_window']} instances,
threshold {settings['drift_threshold']} on the Bonferroni p-value of the monitor's tests (`service/drift.py`: two-sample
KS tests of log p(x) and of the gate's statistic against the calibration split, beta-binomial test of the
rejections). Side by side, on the same windows: the rule before issue 34 (KS of the combined p-values against
uniform and a binomial test of the rejection rate against alpha, which ignore the calibration split's own
randomness), computed from the served answers. Shift scenarios serve {WARM:,} in-distribution instances first,
then the shifted stream; the delay counts instances from the switch to the first alarm.
Checkpoints: {', '.join(f'`{m}`' for m in results['models'])}.

| scenario | instances | checks before the shift | false alarms (before / after) | smallest p before the shift (before / after) | delay before issue 34 (instances) | delay now (instances) |
|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

![drift p-value over the replays, before issue 34 and now](results/drift.png)
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
    if not Path(args.mnist, "manifest.json").is_file():
        parser.error(f"no MNIST checkpoint at {args.mnist}: train it with python -m training experiment gate, or pass --mnist")
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
