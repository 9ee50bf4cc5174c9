"""What the Open Inference Protocol says about the server and each model version, built once for
every transport: REST answers these dicts as JSON (``service.api.v2``), gRPC parses them into its
messages (``service.grpc_server``), so both agree on every field the protocol's messages have (REST
adds what they have not: the gate, classes, hashes...)."""
from __future__ import annotations

import numpy as np

from models.gate import summarize_log_px
from service.codecs.v2 import INPUT_NAME
from service.serving import ServedVersion
from service.state import ServiceState

SERVER_NAME, SERVER_VERSION = "diglm", "0.1.0"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository"]
GATE_HISTOGRAM_BINS = 40
# The statistic T that each calibrated combination computes from the gate scores' surprises
# (-log p against the reference split; models.conformal has the math).
COMBINED_STATISTICS = {
    "fisher": "the sum of the scores' surprises",
    "min": "the largest of the scores' surprises",
    "weighted": "the largest of the scores' weighted surprises",
    "max_sum": "the largest of the scores' surprises plus their weighted sum",
}
TRITON_TYPES = {"FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL", "BYTES": "TYPE_STRING"}


def server_metadata(state: ServiceState) -> dict:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS, "models": sorted(state.models.table.routes)}


def model_metadata(state: ServiceState, served: ServedVersion) -> dict:
    """Input and output tensors, classes, input range (and ``input_levels``: how many evenly spaced
    values each input takes across it, for a model trained on discrete inputs), the gate with its calibration, metrics, hashes;
    ``versions``: every version of the model being served, ``version``: the one described."""
    runtime = served.runtime
    manifest = runtime.manifest
    return {
        "name": runtime.name,
        "versions": list(state.models.table.routes[served.name]),
        "version": runtime.version,
        "digest": manifest.digest,
        "platform": runtime.platform,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *runtime.input_shape]}],
        "outputs": [{"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)} for spec in served.outputs],
        "task": runtime.task,
        "classes": manifest.classes,
        "input_range": manifest.input_range,
        "input_levels": manifest.preprocessing.levels if manifest.preprocessing.kind == "dequantize" else None,
        "input_note": "values in the scale the model was trained on (see input_range); a leading channel of 1 is optional",
        "gate": manifest.gate.model_dump(mode="json"),
        "metrics": manifest.metrics,
        "files": manifest.files,
        "device": str(runtime.device),
    }


def model_config(state: ServiceState, served: ServedVersion) -> dict:
    """The model's configuration in Triton's layout (what tritonclient's get_model_config reads)."""
    settings, runtime = state.settings, served.runtime
    config = {
        "name": runtime.name,
        "platform": runtime.platform,
        "max_batch_size": settings.max_instances,
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32", "dims": list(runtime.input_shape)}],
        "output": [{"name": spec.name, "data_type": TRITON_TYPES[spec.datatype], "dims": list(spec.shape[1:]) or [1]} for spec in served.outputs],
    }
    if settings.batching:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(settings.max_delay_ms * 1000)}
    return config


def model_statistics(served: ServedVersion) -> dict:
    """Inference statistics of the version since it was loaded (the statistics extension: counts and
    nanoseconds), and beyond the extension ``gate``: instances accepted and rejected by reason."""
    totals = served.metrics.statistics
    rejected = dict(totals.rejected)  # a copy: the inference thread may add a reason meanwhile
    return {
        "model_stats": [
            {
                "name": served.name,
                "version": served.version,
                "last_inference": totals.last_inference_ms,
                "inference_count": totals.instances,
                "execution_count": totals.executions,
                "inference_stats": {
                    "success": {"count": totals.requests, "ns": totals.queue_ns + totals.compute_ns},
                    "fail": {"count": 0, "ns": 0},
                    "queue": {"count": totals.requests, "ns": totals.queue_ns},
                    "compute_infer": {"count": totals.executions, "ns": totals.compute_ns},
                },
                "gate": {"accepted": totals.instances - sum(rejected.values()), "rejected": rejected},
            }
        ]
    }


def score_distribution(values: np.ndarray, bins: int) -> dict:
    """Count, range, mean, std and quantiles of a score's finite calibration values, and their
    histogram (``bins`` equal bins between the smallest and the largest: ``edges`` ``bins + 1``)."""
    summary = summarize_log_px(values)
    counts, edges = np.histogram(values[np.isfinite(values)], bins=bins)
    return {**summary.model_dump(mode="json"), "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def gate_evidence(served: ServedVersion, bins: int = GATE_HISTOGRAM_BINS) -> dict:
    """What an input is judged against: per gate score, its outlying tail, its weight (learned
    combinations) and its calibration split's distribution; alpha and the rule that combines the
    scores. A tau gate (``validation``, ``min_train``) judges log p(x) alone: reject below ``tau``."""
    gate = served.runtime.gate
    conformal = gate.method == "conformal"
    tails = gate.tails if conformal else {"log_px": "lower"}
    weights = (gate.summary.weights if gate.summary is not None else None) or {}
    if not conformal:
        rule = f"reject when log p(x) is below tau = {gate.tau:.6g} nats (the {gate.method} tau)"
    elif gate.combine == "bonferroni":
        rule = f"reject when the combined p-value is below alpha = {gate.alpha:g}: the smallest of the scores' conformal p-values times their number, capped at 1"
    else:
        learned = " (and a learned classifier's surprise in the sum)" if gate.classifier is not None else ""
        rule = (f"reject when the combined p-value is below alpha = {gate.alpha:g}: the conformal p-value of T = {COMBINED_STATISTICS[gate.combine]}{learned} "
                "among the calibration split's T, a score's surprise being -log p against the reference split")
    return {
        "name": served.name,
        "version": served.version,
        "method": gate.method,
        "alpha": gate.alpha,
        "tau": None if conformal else gate.tau,
        "combine": gate.combine if conformal else None,
        "rule": rule,
        "calibration_size": len(gate.calibration["log_px"]),
        "scores": [
            {"name": name, "tail": tail, "weight": weights.get(name), "calibration": score_distribution(gate.calibration[name], bins)}
            for name, tail in tails.items()
        ],
    }
