"""Evaluation: classification / regression metrics, bits per dimension, the gate's acceptance and
realised false-rejection rate, and out-of-distribution detection per gate score and for the combined
gate (scikit-learn metrics, in-distribution = positive)."""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import binomtest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from models.gate import GATE_METHODS, Gate, bits_per_dim, gated_probabilities, gated_regression
from models.hybrid import HybridModel
from models.scores import ScoreFit, forward_scores


@torch.no_grad()
def model_outputs(
    model: HybridModel,
    x: np.ndarray,
    batch_size: int = 512,
    dequantization_samples: int = 0,
    generator: torch.Generator | None = None,
    fitted: ScoreFit | None = None,
) -> dict[str, np.ndarray]:
    """``z``, the head's predictions and every score (``models.scores``; ``log_px`` at u = 1/2) for
    ``x`` ``(N, *input_shape)``; with ``dequantization_samples`` > 0 also ``log_px_dequantized``,
    averaged over that many random u. ``log_px`` is float64, the rest float32."""
    model.eval()
    device = next(model.parameters()).device
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(x), batch_size):
        batch = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32, device=device)
        results = forward_scores(model, batch, fitted)
        if dequantization_samples:
            draws = [model(batch, torch.rand(batch.shape, generator=generator).to(device)).log_px for _ in range(dequantization_samples)]
            results["log_px_dequantized"] = torch.stack(draws).mean(dim=0)
        for key, value in results.items():
            chunks.setdefault(key, []).append(value.cpu().numpy().astype(np.float64 if key == "log_px" else np.float32))
    return {key: np.concatenate(parts) for key, parts in chunks.items()}


def classification_metrics(probabilities: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Error (fraction), NLL and predictive entropy (nats, means over examples)."""
    clipped = np.clip(probabilities, 1e-12, 1.0)
    return {
        "error": float(np.mean(probabilities.argmax(axis=1) != y)),
        "nll": float(-np.mean(np.log(clipped[np.arange(len(y)), y]))),
        "entropy": float(-np.mean(np.sum(probabilities * np.log(clipped), axis=1))),
    }


def regression_metrics(mean: np.ndarray, variance: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """RMSE (target units) and Gaussian predictive NLL (nats per point)."""
    nll = 0.5 * (np.log(2 * math.pi * variance) + (y - mean) ** 2 / variance)
    return {"rmse": float(np.sqrt(np.mean((y - mean) ** 2))), "nll": float(np.mean(nll))}


def evaluate_split(
    model: HybridModel,
    gate: Gate,
    x: np.ndarray,
    y: np.ndarray,
    dequantization_samples: int = 4,
    batch_size: int = 512,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics of one split (fractions, nats, bits/dim) and the raw outputs they came from (with the
    gate's ``accepted`` and ``p_value``).

    ``bits_per_dim`` averages over random dequantization noise (as the literature reports it);
    ``bits_per_dim_midpoint`` uses u = 1/2, as the gate does. ``accepted`` is the share the active
    gate accepts; ``accepted_<method>`` the share under each method. The eq.-10 output (label prior
    or target moments when rejected) is reported as ``selective_*``; ``accepted_error`` is the error
    among accepted inputs (classification).
    """
    generator = torch.Generator().manual_seed(seed)
    if model.config.preprocessing.kind != "dequantize":
        dequantization_samples = 0  # continuous data: no noise to average over
    outputs = model_outputs(model, x, batch_size, dequantization_samples, generator, gate.fitted)
    decision = gate.decide(outputs)
    accepted = decision.accepted
    outputs.update(accepted=accepted, p_value=decision.p_value)
    metrics = {
        "count": int(len(x)),
        "bits_per_dim": float(np.mean(bits_per_dim(outputs.get("log_px_dequantized", outputs["log_px"]), model.dims))),
        "bits_per_dim_midpoint": float(np.mean(bits_per_dim(outputs["log_px"], model.dims))),
        "log_px_mean": float(np.mean(outputs["log_px"])),
        "accepted": float(accepted.mean()),
        **{f"accepted_{method}": float(gate.with_method(method).decide(outputs).accepted.mean()) for method in GATE_METHODS},
    }
    if model.task == "classification":
        metrics.update(classification_metrics(outputs["probabilities"], y))
        gated = gated_probabilities(outputs["probabilities"], accepted, model.label_prior.cpu().numpy())
        metrics.update({f"selective_{k}": v for k, v in classification_metrics(gated, y).items()})
        if accepted.any():
            metrics["accepted_error"] = float(np.mean(outputs["probabilities"][accepted].argmax(axis=1) != y[accepted]))
    else:
        metrics.update(regression_metrics(outputs["mean"], outputs["variance"], y))
        mean, variance = gated_regression(outputs["mean"], outputs["variance"], accepted, model.target_moments.cpu().numpy())
        metrics.update({f"selective_{k}": v for k, v in regression_metrics(mean, variance, y).items()})
    return metrics, outputs


def false_rejections(accepted: np.ndarray, alpha: float) -> dict:
    """The realised false-rejection rate on in-distribution inputs with its exact (Clopper-Pearson)
    95% binomial interval, and whether alpha lies within or above it."""
    rejected = int((~accepted).sum())
    interval = binomtest(rejected, len(accepted), alpha).proportion_ci(confidence_level=0.95, method="exact")
    return {
        "rate": rejected / len(accepted),
        "rejected": rejected,
        "count": int(len(accepted)),
        "interval_95": [float(interval.low), float(interval.high)],
        "alpha": alpha,
        "consistent_with_alpha": bool(interval.low <= alpha),
    }


def detection_metrics(in_statistic: np.ndarray, out_statistic: np.ndarray, alpha: float | None = None) -> dict[str, float]:
    """AUROC, AUPR and FPR at 95% TPR of a statistic that is higher for in-distribution inputs
    (the positive class); non-finite values rank lowest. With ``alpha``, also ``rejected_matched``:
    the share of the OOD inputs rejected at the threshold that rejects at most ``alpha`` of the
    in-distribution inputs themselves (1 - FPR at 1 - alpha TPR), so that statistics compare at
    equal false rejections, free of their calibration's luck."""
    floor = np.finfo(np.float64).min
    scores = np.nan_to_num(np.concatenate([in_statistic, out_statistic]).astype(np.float64), nan=floor, neginf=floor, posinf=np.finfo(np.float64).max)
    labels = np.concatenate([np.ones(len(in_statistic)), np.zeros(len(out_statistic))])
    false_positive, true_positive, _ = roc_curve(labels, scores)
    metrics = {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr": float(average_precision_score(labels, scores)),
        "fpr_at_95_tpr": float(false_positive[np.searchsorted(true_positive, 0.95, side="left")]),
    }
    if alpha is not None:
        metrics["rejected_matched"] = float(1 - false_positive[np.searchsorted(true_positive, 1 - alpha, side="left")])
    return metrics


def ood_metrics(gate: Gate, in_outputs: dict[str, np.ndarray], out_outputs: dict[str, np.ndarray]) -> dict:
    """Detection of an OOD set against in-distribution inputs: for the gate (its combined p-value)
    and each gate score (its own p-value: higher = more in-distribution), AUROC / AUPR / FPR at 95%
    TPR, ``rejected``, the share of the OOD set with p below alpha, and ``rejected_matched`` (at
    most alpha of the in-distribution inputs rejected, ``detection_metrics``); ``log_px`` also as the raw
    score (the paper's detector) with the share its active tau would reject."""
    decisions = gate.decide(in_outputs), gate.decide(out_outputs)
    result = {"gate": {**detection_metrics(decisions[0].p_value, decisions[1].p_value, gate.alpha), "rejected": float(1 - decisions[1].accepted.mean())}}
    result["scores"] = {
        name: {
            **detection_metrics(decisions[0].p_values[name], decisions[1].p_values[name], gate.alpha),
            "rejected": float(np.mean(decisions[1].p_values[name] < gate.alpha)),
        }
        for name in gate.tails
    }
    tau_gate = gate.with_method("validation")
    result["log_px_raw"] = {**detection_metrics(in_outputs["log_px"], out_outputs["log_px"]), "rejected_by_tau": float(1 - tau_gate.decide(out_outputs).accepted.mean())}
    reasons = decisions[1].rejected_by[~decisions[1].accepted]
    result["rejected_by"] = {str(reason): int(count) for reason, count in zip(*np.unique(reasons.astype(str), return_counts=True))}
    return result
