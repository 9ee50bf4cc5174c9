"""Turning a ``inference.prediction.Prediction`` into response bodies: v1 prediction records and v2
output tensors. Non-finite floats become null (JSON has no infinity): log p(x) outside the support, and
its outlier score. ``output_table`` is the one list of v2 outputs that metadata and infer share."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.prediction import ClassOutputs, Prediction
from service.inputs import V2_DTYPES

REGRESSION_HEAD = ("mean", "variance", "model_mean", "model_variance")


@dataclass(frozen=True)
class OutputSpec:
    """A v2 output tensor: its name, datatype, and shape with -1 for the batch axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def output_table(task: str, classes: int | None, gate_scores: list[str]) -> list[OutputSpec]:
    """Every v2 output, in response order: the head's, log p(x), the gate's decision and evidence
    (``rejected_by`` is "" when accepted), and the outlier convention (``instance_score`` and
    ``threshold`` in the same units, ``is_outlier`` iff score > threshold)."""
    if task == "classification":
        head = [OutputSpec("label", "INT64", (-1,)), OutputSpec("probabilities", "FP64", (-1, classes)), OutputSpec("model_probabilities", "FP64", (-1, classes))]
    else:
        head = [OutputSpec(name, "FP64", (-1,)) for name in REGRESSION_HEAD]
    common = [
        OutputSpec("log_px", "FP64", (-1,)),
        OutputSpec("bits_per_dim", "FP64", (-1,)),
        OutputSpec("accepted", "BOOL", (-1,)),
        OutputSpec("p_value", "FP64", (-1,)),
        OutputSpec("rejected_by", "BYTES", (-1,)),
        OutputSpec("is_outlier", "BOOL", (-1,)),
        OutputSpec("instance_score", "FP64", (-1,)),
        OutputSpec("threshold", "FP64", (-1,)),
    ]
    evidence = [OutputSpec(f"{kind}_{name}", "FP64", (-1,)) for name in gate_scores for kind in ("score", "p_value")]
    return head + common + evidence


def _nullable(values: np.ndarray) -> list:
    """Floats as a list, with None for NaN and infinities (checked for the whole array at once)."""
    values = np.asarray(values, dtype=np.float64)
    listed = values.tolist()
    finite = np.isfinite(values)
    if finite.all():
        return listed
    return [value if keep else None for value, keep in zip(listed, finite.tolist())]


def instance_records(prediction: Prediction, threshold: float) -> list[dict]:
    """One dict per instance with every prediction field, in request order."""
    head = prediction.head
    if isinstance(head, ClassOutputs):
        head_fields = zip(head.label.tolist(), head.probabilities.tolist(), head.model_probabilities.tolist())
        head_records = [{"label": l, "probabilities": p, "model_probabilities": m} for l, p, m in head_fields]
    else:
        head_records = [dict(zip(REGRESSION_HEAD, row)) for row in zip(*(getattr(head, c).tolist() for c in REGRESSION_HEAD))]
    gate_scores = list(prediction.scores)
    scores = [dict(zip(gate_scores, row)) for row in zip(*(_nullable(values) for values in prediction.scores.values()))]
    p_values = [dict(zip(gate_scores, row)) for row in zip(*(values.tolist() for values in prediction.p_values.values()))]
    columns = zip(
        head_records, _nullable(prediction.log_px), _nullable(prediction.bits_per_dim), prediction.accepted.tolist(),
        prediction.p_value.tolist(), prediction.rejected_by.tolist(), _nullable(prediction.instance_score), scores, p_values,
    )
    return [
        {
            **head,
            "log_px": log_px,
            "bits_per_dim": bits,
            "accepted": accepted,
            "p_value": p_value,
            "rejected_by": reason,
            "scores": score,
            "p_values": p,
            "outlier": {"is_outlier": not accepted, "instance_score": instance_score, "threshold": threshold},
        }
        for head, log_px, bits, accepted, p_value, reason, instance_score, score, p in columns
    ]


def output_tensors(prediction: Prediction, threshold: float) -> dict[str, np.ndarray]:
    """Named output arrays of the v2 protocol, by ``output_table`` name."""
    tensors = prediction.columns()
    tensors["threshold"] = np.full(len(prediction), threshold)
    tensors["is_outlier"] = ~prediction.accepted
    return tensors


# Little-endian layouts of our output datatypes (the inputs' table, and BOOL as one byte); BYTES is length-prefixed.
BINARY_LAYOUTS = {"FP64": V2_DTYPES["FP64"], "INT64": V2_DTYPES["INT64"], "BOOL": "u1"}


def text_elements(flat: np.ndarray) -> list[str]:
    """A BYTES tensor's elements as text (None as "")."""
    return ["" if value is None else str(value) for value in flat]


def raw_bytes(spec: OutputSpec, array: np.ndarray) -> bytes:
    """An output tensor's raw little-endian bytes (floats exactly, infinities and NaN included; a
    BYTES element as a 4-byte length and its UTF-8 bytes): the binary tensor extension's and gRPC's."""
    flat = array.reshape(-1)
    if spec.datatype == "BYTES":
        return b"".join(len(item).to_bytes(4, "little") + item for item in (text.encode() for text in text_elements(flat)))
    return np.ascontiguousarray(flat, dtype=BINARY_LAYOUTS[spec.datatype]).tobytes()


def v2_binary_output(spec: OutputSpec, array: np.ndarray) -> tuple[dict, bytes]:
    """One output tensor in the binary tensor extension: its JSON part (``binary_data_size``, no
    ``data``) and its raw bytes (``raw_bytes``)."""
    data = raw_bytes(spec, array)
    header = {"name": spec.name, "shape": list(array.shape), "datatype": spec.datatype, "parameters": {"binary_data_size": len(data)}}
    return header, data


def v2_output(spec: OutputSpec, array: np.ndarray) -> dict:
    """One output tensor: flat row-major data, shape, datatype; non-finite floats become null."""
    flat = array.reshape(-1)
    if spec.datatype == "FP64":
        data = _nullable(flat)
    elif spec.datatype == "BYTES":
        data = text_elements(flat)
    else:
        data = flat.tolist()
    return {"name": spec.name, "shape": list(array.shape), "datatype": spec.datatype, "data": data}
