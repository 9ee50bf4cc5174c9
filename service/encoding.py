"""Turning ``ModelRuntime.predict`` arrays into response bodies: v1 prediction records and v2 output
tensors. Non-finite log p(x) becomes null (JSON has no infinity); such instances are never accepted."""
from __future__ import annotations

import numpy as np


def _nullable(values: np.ndarray) -> list:
    return [float(v) if np.isfinite(v) else None for v in values]


def instance_records(result: dict[str, np.ndarray], tau: float) -> list[dict]:
    """One dict per instance with every prediction field, in request order."""
    log_px = _nullable(result["log_px"])
    bits = _nullable(result["bits_per_dim"])
    accepted = result["accepted"].tolist()
    if "label" in result:
        head_fields = zip(result["label"].tolist(), result["probabilities"].tolist(), result["model_probabilities"].tolist())
        head_records = [{"label": l, "probabilities": p, "model_probabilities": m} for l, p, m in head_fields]
    else:
        columns = ("mean", "variance", "model_mean", "model_variance")
        head_records = [dict(zip(columns, row)) for row in zip(*(result[c].tolist() for c in columns))]
    return [
        {
            **head,
            "log_px": lp,
            "bits_per_dim": bpd,
            "accepted": ok,
            "threshold": tau,
            "outlier": {"is_outlier": not ok, "instance_score": None if lp is None else -lp, "threshold": -tau},
        }
        for head, lp, bpd, ok in zip(head_records, log_px, bits, accepted)
    ]


_V2_TYPES = {"label": "INT64", "accepted": "BOOL", "is_outlier": "BOOL"}


def output_tensors(result: dict[str, np.ndarray], tau: float) -> dict[str, np.ndarray]:
    """Named output arrays of the v2 protocol (``instance_score`` = -log_px, ``threshold`` = tau)."""
    tensors = dict(result)
    count = len(result["log_px"])
    tensors["threshold"] = np.full(count, tau)
    tensors["is_outlier"] = ~result["accepted"]
    tensors["instance_score"] = -result["log_px"]
    return tensors


def v2_output(name: str, array: np.ndarray) -> dict:
    """One output tensor: flat row-major data, shape, datatype; non-finite floats become null."""
    datatype = _V2_TYPES.get(name, "FP64" if array.dtype == np.float64 else "FP32")
    flat = array.reshape(-1)
    data = _nullable(flat) if datatype.startswith("FP") else flat.tolist()
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}
