"""A learned score of the gate: a small classifier of the pattern of all gate scores, in-distribution
against synthetic outliers (the gate's ``max_sum`` adds its surprise to T with a fitted weight).

The maximum of m surprises pays for its multiplicity wherever the evidence lies in a combination of
scores that no single one crosses its threshold for (a digit-like stroke: a slightly low
max p(y|x), a slightly far latent, a slightly low likelihood ratio). A one-hidden-layer ReLU network
on the standardised score vector learns those directions; an ensemble of ``MEMBERS`` such networks
from different seeds, averaged, keeps the answer from hanging on one initialisation (it is stored
as one network ``MEMBERS`` times as wide). It is fitted on the reference split only
(never on the calibration split), so the gate's conformal p-value stays exactly valid; the rows it
was fitted on must not fix its surprise function (``Gate`` uses held-out reference rows).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.rowwise import row_products

CLIP = 50.0  # standardised scores beyond this many reference deviations (and non-finite ones) are clipped
HIDDEN = 32  # hidden units per member
MEMBERS = 5  # networks averaged (docs/gate.md: one network's seed moved unseen families by up to 4 points)
STEPS = 500  # full-batch Adam steps
LEARNING_RATE = 0.01
WEIGHT_DECAY = 1e-3


def _standardised(scores: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``scores`` ``(N, m)`` in reference standard deviations, clipped to +-CLIP (infinities to their sign's end; NaN read as 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    standard = (np.where(np.isnan(scores), 0.0, scores) - mean) / scale
    return np.clip(np.nan_to_num(standard, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP)


@dataclass(frozen=True)
class ScoreClassifier:
    """Log-odds ``(N,)`` that a score vector ``(N, m)`` (the gate scores in the order of its tails)
    comes from a synthetic outlier: ``relu(z @ hidden_weight + hidden_bias) @ output_weight +
    output_bias`` on ``z``, the scores standardised by the inliers' ``mean`` and ``scale`` ``(m,)``
    (an ensemble's mean is this form too: its members side by side, output weights divided by their
    number). float64 numpy, so both serving backends give the same answer, row by row
    (``models.rowwise``) whatever the batch."""

    mean: np.ndarray
    scale: np.ndarray
    hidden_weight: np.ndarray  # (m, hidden)
    hidden_bias: np.ndarray  # (hidden,)
    output_weight: np.ndarray  # (hidden,)
    output_bias: np.ndarray  # (1,)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        hidden = np.maximum(0.0, row_products(_standardised(scores, self.mean, self.scale), self.hidden_weight) + self.hidden_bias)
        return row_products(hidden, self.output_weight) + self.output_bias[0]

    def bounds(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds ``(N,)`` of the log-odds over every score vector between ``low`` and
        ``high`` ``(N, m)`` (interval arithmetic: exact per layer, so the bounds contain the range)."""
        def layer(lower, upper, weight, bias):
            positive, negative = np.maximum(weight, 0.0), np.minimum(weight, 0.0)
            return lower @ positive + upper @ negative + bias, upper @ positive + lower @ negative + bias

        lower, upper = (_standardised(s, self.mean, self.scale) for s in (low, high))
        lower, upper = (np.maximum(0.0, v) for v in layer(lower, upper, self.hidden_weight, self.hidden_bias))
        return layer(lower, upper, self.output_weight, self.output_bias[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The parameters by name (what the gate file stores)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ScoreClassifier":
        return cls(**{name: np.asarray(arrays[name], dtype=np.float64) for name in cls.__dataclass_fields__})

    @classmethod
    def fit(cls, inliers: np.ndarray, outliers: list[np.ndarray], hidden: int = HIDDEN, seed: int = 0, members: int = MEMBERS) -> "ScoreClassifier":
        """The mean of ``members`` networks (seeds ``seed``, ``seed + 1``, ...), each fitted on inlier
        score vectors ``(N, m)`` against outlier sets ``(n_i, m)`` by weighted cross-entropy: the
        inliers weigh as much as all outlier sets together, and every set the same, so a large easy
        family does not drown a small hard one."""
        finite = inliers[np.isfinite(inliers).all(axis=1)]
        mean = finite.mean(axis=0)
        scale = np.maximum(finite.std(axis=0), 1e-12)
        features = np.concatenate([_standardised(inliers, mean, scale), *(_standardised(o, mean, scale) for o in outliers)])
        labels = np.concatenate([np.zeros(len(inliers)), *(np.ones(len(o)) for o in outliers)])
        weights = np.concatenate([np.full(len(inliers), 0.5 / len(inliers)), *(np.full(len(o), 0.5 / (len(o) * len(outliers))) for o in outliers)])
        first_weight, first_bias, last_weight, last_bias = _fitted_members(
            *(torch.from_numpy(a) for a in (features, labels, weights)), hidden, range(seed, seed + members)
        )
        return cls(mean, scale, first_weight, first_bias, last_weight.reshape(-1) / members, last_bias.mean(keepdims=True))


def _fitted_members(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, hidden: int, seeds) -> list[np.ndarray]:
    """Networks ``Linear(m, hidden), ReLU, Linear(hidden, 1)`` (float64), one per seed, fitted by
    full-batch Adam on features ``x`` ``(N, m)``, labels ``y`` ``(N,)`` and row weights ``w``
    ``(N,)``; trained side by side (the sum of their losses, which leaves each member's updates its
    own). Returns their first layers side by side, weight ``(m, K * hidden)`` and bias ``(K * hidden,)``,
    and their output layers, weight ``(K, hidden)`` and bias ``(K,)``."""
    def uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:  # torch.nn.Linear's initialisation
        return torch.empty(shape, dtype=torch.float64).uniform_(-fan_in**-0.5, fan_in**-0.5, generator=generator)

    members = []
    for seed in seeds:  # seeded, independent of the global generator
        generator = torch.Generator().manual_seed(seed)
        members.append([uniform((hidden, x.shape[1]), x.shape[1], generator), *(uniform(shape, hidden, generator) for shape in ((hidden,), (hidden,), ()))])
    first_weight, first_bias, last_weight, last_bias = (torch.cat([m[0].T for m in members], dim=1), *(torch.stack([m[i] for m in members]) for i in (1, 2, 3)))
    first_bias = first_bias.reshape(-1)
    parameters = [p.requires_grad_() for p in (first_weight, first_bias, last_weight, last_bias)]
    optimizer = torch.optim.Adam(parameters, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    targets = y[:, None].expand(-1, len(members))
    for _ in range(STEPS):
        optimizer.zero_grad()
        hidden_units = torch.relu(x @ first_weight + first_bias).view(len(x), len(members), hidden)
        logits = torch.einsum("nkh,kh->nk", hidden_units, last_weight) + last_bias
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none") * w[:, None]).sum()
        loss.backward()
        optimizer.step()
    return [p.detach().numpy() for p in parameters]
