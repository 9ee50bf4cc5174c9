"""Evaluation: classification / regression metrics, bits per dimension, the gate's acceptance, and
out-of-distribution detection from log p(x) (scikit-learn metrics, in-distribution = positive)."""
from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from models.gate import accept, bits_per_dim, gated_probabilities
from models.hybrid import HybridModel


@torch.no_grad()
def model_outputs(
    model: HybridModel,
    x: np.ndarray,
    batch_size: int = 512,
    dequantization_samples: int = 0,
    generator: torch.Generator | None = None,
) -> dict[str, np.ndarray]:
    """``log_px`` (u = 1/2) and the head's predictions for ``x`` ``(N, *input_shape)``; with
    ``dequantization_samples`` > 0 also ``log_px_dequantized``, averaged over that many random u."""
    model.eval()
    device = next(model.parameters()).device
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(x), batch_size):
        batch = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32, device=device)
        output = model(batch)
        results = {"log_px": output.log_px, "z": output.z, **model.head.predict(output.z)}
        if dequantization_samples:
            draws = [model(batch, torch.rand(batch.shape, generator=generator).to(device)).log_px for _ in range(dequantization_samples)]
            results["log_px_dequantized"] = torch.stack(draws).mean(dim=0)
        for key, value in results.items():
            chunks.setdefault(key, []).append(value.float().cpu().numpy())
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
    x: np.ndarray,
    y: np.ndarray,
    gate: dict,
    dequantization_samples: int = 4,
    batch_size: int = 512,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics of one split (fractions, nats, bits/dim) and the raw outputs they came from.

    ``bits_per_dim`` averages over random dequantization noise (as the literature reports it);
    ``bits_per_dim_midpoint`` uses u = 1/2, as the gate does. ``accepted`` is the share the active
    gate (``gate["tau"]``) accepts; ``accepted_min_train`` and ``accepted_validation`` the shares
    under each calibration.
    Classification also reports the eq.-10 output (label prior when rejected) as ``selective_*``.
    """
    generator = torch.Generator().manual_seed(seed)
    if model.config.preprocessing.kind != "dequantize":
        dequantization_samples = 0  # continuous data: no noise to average over
    outputs = model_outputs(model, x, batch_size, dequantization_samples, generator)
    log_px = torch.from_numpy(outputs["log_px"])
    accepted = accept(log_px, gate["tau"])
    metrics = {
        "count": int(len(x)),
        "bits_per_dim": float(np.mean(bits_per_dim(outputs.get("log_px_dequantized", outputs["log_px"]), model.dims))),
        "bits_per_dim_midpoint": float(np.mean(bits_per_dim(outputs["log_px"], model.dims))),
        "log_px_mean": float(np.mean(outputs["log_px"])),
        "accepted": float(accepted.float().mean()),
        **{f"accepted_{method}": float(accept(log_px, gate[method]["tau"]).float().mean()) for method in ("min_train", "validation")},
    }
    if model.task == "classification":
        metrics.update(classification_metrics(outputs["probabilities"], y))
        gated = gated_probabilities(torch.from_numpy(outputs["probabilities"]), accepted, model.label_prior.cpu()).numpy()
        metrics.update({f"selective_{k}": v for k, v in classification_metrics(gated, y).items()})
    else:
        metrics.update(regression_metrics(outputs["mean"], outputs["variance"], y))
    return metrics, outputs


def ood_metrics(in_log_px: np.ndarray, out_log_px: np.ndarray, tau: float) -> dict[str, float]:
    """Detection of OOD inputs by log p(x): AUROC and AUPR with in-distribution as the positive
    class and log p(x) as the score; FPR at 95% TPR = share of OOD inputs accepted by a threshold that
    keeps 95% of in-distribution inputs; ``rejected`` = share of OOD inputs the gate at tau rejects."""
    floor = np.finfo(np.float64).min  # -inf (outside the support) ranks lowest
    scores = np.nan_to_num(np.concatenate([in_log_px, out_log_px]).astype(np.float64), nan=floor, neginf=floor)
    labels = np.concatenate([np.ones(len(in_log_px)), np.zeros(len(out_log_px))])
    false_positive, true_positive, _ = roc_curve(labels, scores)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr": float(average_precision_score(labels, scores)),
        "fpr_at_95_tpr": float(false_positive[np.searchsorted(true_positive, 0.95, side="left")]),
        "rejected": float(1.0 - accept(torch.from_numpy(out_log_px.astype(np.float64)), tau).double().mean()),
    }


def builtin_ood_sets(x: np.ndarray, levels: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Out-of-distribution sets made from in-distribution images ``x`` (values 0..levels-1):
    uniform noise, Gaussian noise with the data's mean and std (rounded, clipped), each image's pixels
    shuffled, and inverted images (levels - 1 - x)."""
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    shuffled = np.stack([row[rng.permutation(row.size)] for row in flat]).reshape(x.shape)
    gaussian = np.clip(np.round(rng.normal(x.mean(), x.std(), size=x.shape)), 0, levels - 1)
    return {
        "uniform-noise": rng.integers(0, levels, size=x.shape).astype(np.float32),
        "gaussian-noise": gaussian.astype(np.float32),
        "shuffled-pixels": shuffled.astype(np.float32),
        "inverted": (levels - 1 - x).astype(np.float32),
    }
