"""The density gate (paper eq. 9, 10): accept x iff log p(x) >= tau (nats).

Two calibrations are recorded: the paper's tau = min over the training set of log p(x) minus a slack
c, and the ``validation`` tau, the quantile of held-out log p(x) at a target false-rejection rate.
The manifest's ``gate.method`` says which one is active.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

GateMethod = Literal["validation", "min_train"]
SUMMARY_QUANTILES = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def summarize_log_px(log_px: np.ndarray) -> dict:
    """Count, min, max, mean, std and quantiles of the finite log p(x) values (nats)."""
    finite = log_px[np.isfinite(log_px)]
    if finite.size == 0:
        raise ValueError("no finite log p(x) values to summarize")
    return {
        "count": int(log_px.size),
        "non_finite": int(log_px.size - finite.size),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "quantiles": {str(q): float(np.quantile(finite, q)) for q in SUMMARY_QUANTILES},
    }


def calibrate_gate(
    train_log_px: np.ndarray,
    validation_log_px: np.ndarray,
    method: GateMethod = "validation",
    slack: float = 0.0,
    false_rejection_rate: float = 0.01,
) -> dict:
    """The manifest's ``gate`` section: the active tau, both calibrations and their statistics."""
    train_summary = summarize_log_px(train_log_px)
    validation_summary = summarize_log_px(validation_log_px)
    finite_validation = validation_log_px[np.isfinite(validation_log_px)]
    candidates = {
        "min_train": train_summary["min"] - slack,
        "validation": float(np.quantile(finite_validation, false_rejection_rate)),
    }
    return {
        "tau": candidates[method],
        "method": method,
        "min_train": {"tau": candidates["min_train"], "slack": slack},
        "validation": {"tau": candidates["validation"], "false_rejection_rate": false_rejection_rate},
        "statistics": {"train": train_summary, "validation": validation_summary},
    }


def accept(log_px: torch.Tensor, tau: float) -> torch.Tensor:
    """Boolean ``(N,)``: finite log p(x) at or above tau."""
    return torch.isfinite(log_px) & (log_px >= tau)


def gated_probabilities(probabilities: torch.Tensor, accepted: torch.Tensor, label_prior: torch.Tensor) -> torch.Tensor:
    """Eq. 10: p(y|x) where accepted, else the label prior p(y). ``(N, K)``."""
    return torch.where(accepted[:, None], probabilities, label_prior.to(probabilities.dtype).expand_as(probabilities))


def bits_per_dim(log_px: torch.Tensor | np.ndarray, dims: int):
    """-log p(x) / (D ln 2): nats per example to bits per dimension."""
    return -log_px / (dims * math.log(2))


def gated_regression(
    mean: torch.Tensor, variance: torch.Tensor, accepted: torch.Tensor, target_moments: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10's analogue for regression: the head's predictive where accepted, else the training
    targets' mean and variance (``target_moments`` = [mean, variance])."""
    fallback_mean, fallback_variance = target_moments.to(mean.dtype)
    return (
        torch.where(accepted, mean, fallback_mean),
        torch.where(accepted, variance, fallback_variance),
    )
