"""The accept/reject gate and the outputs it implies (paper eq. 9, 10, and beyond).

Methods (the manifest's ``gate.method``):
- ``conformal`` (default): each of the gate's scores (``models.scores``) gets a conformal p-value
  against a calibration split held out from training and model selection; the scores are combined
  (``models.conformal``: the largest surprise against the reference split, itself calibrated) and x
  is rejected when the combined p-value is below ``alpha``, the target false-rejection rate. With
  ``combine: weighted`` the surprises are weighted first, with ``max_sum`` a weighted sum of them
  is added to the largest (weights chosen on the reference split against synthetic outliers), and
  with a score classifier (``models.score_classifier``, fitted on half the reference split) its
  surprise joins that sum. The response names the gate score with the strongest (weighted)
  evidence as the reason.
- ``validation``: accept iff log p(x) >= tau, tau the ``alpha`` quantile of the validation split's
  log p(x).
- ``min_train`` (the paper's): tau = min over the training set of log p(x) minus a slack c (nats).
Inputs outside the model's support (log p(x) = -inf) are rejected by every method, reason
``support``. ``Gate.decide`` is the one place where a decision is made from score arrays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from models.conformal import LEARNED_COMBINATIONS, Combine, Surprise, Tail, batch_typicality_p_value, combined_p_values, combined_statistic, fit_sum_weights, fit_weights, p_values
from models.manifest import FittedScores, GateMethod, GateSection, LogPxSummary, MinTrainTau, ValidationTau
from models.score_classifier import ScoreClassifier
from models.scores import LatentGaussian, LatentNeighbours, ScoreFit

GATE_METHODS: tuple[GateMethod, ...] = ("conformal", "validation", "min_train")
SUMMARY_QUANTILES = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
GATE_FILE = "gate.safetensors"
SUPPORT = "support"  # the reason for inputs outside the model's support
# The conformal gate's scores when a config names none (those a model does not compute are left out);
# the measurements behind this choice are in docs/gate.md.
# ``level_*`` stands for every level term of a multi-scale Glow.
DEFAULT_SCORES: dict[str, Tail] = {
    "log_px": "both",
    "level_*": "both",
    "likelihood_ratio": "lower",
    "complexity": "both",
    "max_probability": "lower",
    "latent_distance": "upper",
    "neighbour_distance": "upper",
}
# neighbour_distance's defaults (docs/gate.md has the measurements): the k-th nearest of how many
# training latents, compared in how many principal directions (None: all of z).
NEIGHBOUR_REFERENCE = 50_000
NEIGHBOUR_K = 1
NEIGHBOUR_DIMS: int | None = 64
# max_sum's score classifier is fitted on half the reference split and its surprise on the other
# half; below this many reference rows the halves are too small and the gate has none.
CLASSIFIER_MIN_REFERENCE = 2_000
CLASSIFIER_SEED = 0


def gate_tails(requested: dict[str, Tail] | None, available: list[str]) -> dict[str, Tail]:
    """The gate's scores: ``requested`` (each must be available), or the defaults this model has."""
    if requested is None:
        return {
            name: tail
            for pattern, tail in DEFAULT_SCORES.items()
            for name in available
            if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1]))
        }
    unknown = sorted(set(requested) - set(available))
    if unknown:
        raise ValueError(f"gate scores {unknown} are not computed for this model; available: {', '.join(available)}")
    return dict(requested)


def summarize_log_px(log_px: np.ndarray) -> LogPxSummary:
    """Count, min, max, mean, std and quantiles of the finite log p(x) values (nats)."""
    finite = log_px[np.isfinite(log_px)]
    if finite.size == 0:
        raise ValueError("no finite log p(x) values to summarize")
    return LogPxSummary(
        count=int(log_px.size),
        non_finite=int(log_px.size - finite.size),
        min=float(finite.min()),
        max=float(finite.max()),
        mean=float(finite.mean()),
        std=float(finite.std()),
        quantiles={str(q): float(np.quantile(finite, q)) for q in SUMMARY_QUANTILES},
    )


@dataclass
class GateDecision:
    """Per-instance arrays ``(N,)``: ``accepted``; ``p_value`` (combined; 0 outside the support);
    ``p_values`` per gate score; ``rejected_by`` (object: None, a score name or ``support``);
    ``instance_score`` and ``threshold``, the outlier convention (higher = more outlying,
    ``is_outlier`` iff score > threshold): -log10 p and -log10 alpha for the conformal gate,
    -log p(x) and -tau for a tau gate."""

    accepted: np.ndarray
    p_value: np.ndarray
    p_values: dict[str, np.ndarray]
    rejected_by: np.ndarray
    instance_score: np.ndarray
    threshold: float


@dataclass
class Gate:
    """A calibrated gate: ``tails`` maps each gate score to the tail that counts as outlying,
    ``calibration`` each score (and always ``log_px``) to its sorted calibration values,
    ``reference`` each gate score to its sorted reference (validation) values that fix the
    surprise functions, ``statistic`` the sorted combined statistic of the calibration inputs
    (``models.conformal``; None for Bonferroni), ``weights`` ``(m,)`` the weights of the surprises
    in the order of ``tails`` (``weighted`` and ``max_sum`` only; ``(m + 1,)`` with a
    ``classifier``, whose surprise against ``classifier_reference``, its sorted log-odds on
    reference rows it was not fitted on, enters ``max_sum``'s sum last)."""

    method: GateMethod
    tau: float
    alpha: float
    combine: Combine
    tails: dict[str, Tail]
    calibration: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    statistic: np.ndarray | None
    fitted: ScoreFit | None = None
    summary: GateSection | None = None  # the manifest's gate section
    weights: np.ndarray | None = None
    classifier: ScoreClassifier | None = None
    classifier_reference: np.ndarray | None = None

    def __post_init__(self):
        self._surprise = {name: Surprise.fit(self.reference[name], tail) for name, tail in self.tails.items()}
        self._classifier_surprise = None if self.classifier is None else Surprise.fit(self.classifier_reference, "upper")

    @property
    def sum_only(self) -> int:
        """How many of ``statistic_surprises``' last columns enter only max_sum's sum (the classifier's)."""
        return int(self.classifier is not None)

    def surprises(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Per gate score, -log p against the reference split ``(N, m)`` (nats)."""
        return np.stack([self._surprise[name](scores[name]) for name in self.tails], axis=1)

    def classifier_surprise(self, log_odds: np.ndarray) -> np.ndarray:
        """The classifier's log-odds ``(N,)`` as a surprise against ``classifier_reference`` (nats)."""
        return self._classifier_surprise(log_odds)

    def statistic_surprises(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """What T combines ``(N, m + sum_only)``: the gate scores' surprises and the classifier's."""
        surprises = self.surprises(scores)
        if self.classifier is None:
            return surprises
        log_odds = self.classifier(score_matrix(scores, self.tails))
        return np.concatenate([surprises, self.classifier_surprise(log_odds)[:, None]], axis=1)

    def decide(self, scores: dict[str, np.ndarray]) -> GateDecision:
        """The decision for score arrays ``(N,)`` by name (at least ``log_px`` and the gate's scores)."""
        log_px = np.asarray(scores["log_px"], dtype=np.float64)
        supported = np.isfinite(log_px)
        names = list(self.tails)
        per_score = {name: p_values(self.calibration[name], scores[name], self.tails[name]) for name in names}
        p_matrix = np.stack([per_score[n] for n in names], axis=1)
        surprises = None if self.combine == "bonferroni" else self.statistic_surprises(scores)
        combined = np.where(supported, combined_p_values(p_matrix, surprises, self.combine, self.statistic, self.weights, self.sum_only), 0.0)
        if surprises is None:
            evidence = -np.log(p_matrix)
        elif self.combine == "weighted":
            evidence = surprises * self.weights
        elif self.combine == "max_sum":  # a gate score's share of T, counting the maximum for each score
            evidence = surprises[:, : len(names)] * (1 + self.weights[: len(names)])
        else:
            evidence = surprises
        with np.errstate(divide="ignore"):
            if self.method == "conformal":
                accepted = combined >= self.alpha
                instance_score = -np.log10(combined)
                reasons = np.array(names, dtype=object)[np.argmax(evidence, axis=1)]
            else:
                accepted = supported & (log_px >= self.tau)
                instance_score = -log_px
                reasons = np.full(len(log_px), "log_px", dtype=object)
        rejected_by = np.where(accepted, None, np.where(supported, reasons, SUPPORT))
        return GateDecision(accepted, combined, per_score, rejected_by, instance_score, self.outlier_threshold)

    @property
    def outlier_threshold(self) -> float:
        """The threshold of the outlier convention: -log10 alpha (conformal) or -tau (nats)."""
        return -math.log10(self.alpha) if self.method == "conformal" else -self.tau

    def with_method(self, method: GateMethod) -> "Gate":
        """The same calibration deciding by another method (for reports that compare them)."""
        return replace(self, method=method, tau=self.summary.tau_of(method) if method != "conformal" else self.tau)

    def batch_p_value(self, log_px: np.ndarray) -> float:
        """Typicality p-value of a whole batch (``models.conformal.batch_typicality_p_value``)."""
        return batch_typicality_p_value(self.calibration["log_px"], np.asarray(log_px, dtype=np.float64), seed=len(log_px))

    def batch_test(self, log_px: np.ndarray) -> tuple[float, bool]:
        """The batch's typicality p-value and whether it is below alpha (the batch is an outlier)."""
        p_value = self.batch_p_value(log_px)
        return p_value, p_value < self.alpha

    def save(self, path: Path) -> None:
        """Write the fitted score parts and the calibration arrays (safetensors)."""
        tensors = {f"calibration.{name}": values for name, values in self.calibration.items()}
        tensors.update({f"reference.{name}": values for name, values in self.reference.items()})
        if self.statistic is not None:
            tensors["statistic"] = self.statistic
        if self.weights is not None:
            tensors["weights"] = self.weights
        if self.classifier is not None:
            tensors.update({f"classifier.{name}": value for name, value in self.classifier.arrays().items()})
            tensors["classifier_reference"] = self.classifier_reference
        if self.fitted is not None:
            tensors.update({f"latent.{key}": value.cpu().numpy() for key, value in self.fitted.latent.state_dict().items()})
            if self.fitted.neighbour_scale is not None:
                tensors["neighbour_scale"] = np.array([self.fitted.neighbour_scale])
            neighbours = self.fitted.neighbours
            if neighbours is not None:
                tensors["neighbours.reference"] = neighbours.reference.cpu().numpy()
                tensors["neighbours.k"] = np.array([neighbours.k])
                if neighbours.projection is not None:
                    tensors["neighbours.projection"] = neighbours.projection.cpu().numpy()
        save_file({key: np.ascontiguousarray(value) for key, value in tensors.items()}, str(path))

    @classmethod
    def load(cls, summary: GateSection, path: Path) -> "Gate":
        """The gate of a manifest's ``gate`` section and its file (already hash-checked)."""
        tensors = load_file(str(path))
        fitted = None
        if "latent.weight" in tensors:
            latent = LatentGaussian(torch.from_numpy(tensors["latent.weight"]), torch.from_numpy(tensors["latent.means"]))
            scale = tensors.get("neighbour_scale")
            neighbours = None
            if "neighbours.reference" in tensors:
                projection = tensors.get("neighbours.projection")
                neighbours = LatentNeighbours(
                    torch.from_numpy(tensors["neighbours.reference"]), int(tensors["neighbours.k"][0]), None if projection is None else torch.from_numpy(projection)
                )
            fitted = ScoreFit(latent, None if scale is None else float(scale[0]), neighbours)
        def group(prefix: str) -> dict[str, np.ndarray]:
            return {key.split(".", 1)[1]: value for key, value in tensors.items() if key.startswith(prefix + ".")}

        return cls(
            method=summary.method, tau=summary.tau, alpha=summary.alpha, combine=summary.combine,
            tails=dict(summary.scores), calibration=group("calibration"), reference=group("reference"),
            statistic=tensors.get("statistic"), fitted=fitted, summary=summary, weights=tensors.get("weights"),
            classifier=ScoreClassifier.from_arrays(group("classifier")) if "classifier_reference" in tensors else None,
            classifier_reference=tensors.get("classifier_reference"),
        )


def _finite_rows(scores: dict[str, np.ndarray], names) -> dict[str, np.ndarray]:
    """The ``names`` columns as float64, keeping the rows where all of them are finite."""
    columns = {name: np.asarray(scores[name], dtype=np.float64) for name in names}
    finite = np.isfinite(np.stack(list(columns.values()), axis=1)).all(axis=1)
    return {name: values[finite] for name, values in columns.items()}


def calibrate_gate(
    train_log_px: np.ndarray,
    validation_scores: dict[str, np.ndarray],
    calibration_scores: dict[str, np.ndarray],
    tails: dict[str, Tail],
    method: GateMethod = "conformal",
    alpha: float = 0.01,
    combine: Combine = "min",
    slack: float = 0.0,
    fitted: ScoreFit | None = None,
    fitted_summary: FittedScores | None = None,
    outliers: list[dict[str, np.ndarray]] | None = None,
    classifier_hidden: int = 0,
) -> Gate:
    """A gate from three held-out score sets: training log p(x) (the paper's tau), the validation
    split's scores (the quantile tau at ``alpha``, the reference of the surprise functions and, for
    ``weighted`` and ``max_sum``, of the weights) and the calibration split's scores (the conformal
    p-values and the combined statistic). ``outliers``: synthetic outlier sets' scores, which
    ``weighted`` and ``max_sum`` need. ``classifier_hidden`` > 0: ``max_sum`` with a score
    classifier of that many hidden units per member where the reference has ``CLASSIFIER_MIN_REFERENCE``
    rows and there are at least two outlier sets (``_with_classifier``)."""
    names = {*tails, "log_px"}
    reference = _finite_rows(validation_scores, names)
    calibration = _finite_rows(calibration_scores, names)
    taus = {"min_train": summarize_log_px(train_log_px).min - slack, "validation": float(np.quantile(reference["log_px"], alpha))}
    if combine in LEARNED_COMBINATIONS and not outliers:
        raise ValueError(f"gate.combine {combine!r} needs synthetic outliers to choose its weights (image models only); use min")
    outliers = [_finite_rows(scores, tails) for scores in outliers or []]
    gate = Gate(
        method=method, tau=taus.get(method, taus["validation"]), alpha=alpha, combine=combine, tails=dict(tails),
        calibration={name: np.sort(values) for name, values in calibration.items()},
        reference={name: np.sort(reference[name]) for name in tails}, statistic=None, fitted=fitted,
    )
    if combine in LEARNED_COMBINATIONS:
        if combine == "max_sum" and classifier_hidden > 0 and len(reference["log_px"]) >= CLASSIFIER_MIN_REFERENCE and len(outliers) > 1:
            gate, weight_reference, weight_outliers = _with_classifier(gate, reference, outliers, classifier_hidden)
        else:
            weight_reference, weight_outliers = gate.surprises(reference), [gate.surprises(scores) for scores in outliers]
        fit = fit_weights if combine == "weighted" else partial(fit_sum_weights, sum_only=gate.sum_only)
        gate.weights = fit(weight_reference, weight_outliers, alpha)
    if combine != "bonferroni":
        gate.statistic = np.sort(combined_statistic(gate.statistic_surprises(calibration), combine, gate.weights, gate.sum_only))
    gate.summary = GateSection(
        method=method,
        alpha=alpha,
        tau=gate.tau,
        combine=combine,
        scores=dict(tails),
        weights=None if gate.weights is None else dict(zip([*tails, *(["classifier"] if gate.classifier is not None else [])], gate.weights.tolist())),
        calibration_size=len(calibration["log_px"]),
        reference_size=len(reference["log_px"]),
        fitted=fitted_summary,
        file=GATE_FILE,
        min_train=MinTrainTau(tau=taus["min_train"], slack=slack),
        validation=ValidationTau(tau=taus["validation"], false_rejection_rate=alpha),
        statistics={name: summarize_log_px(values) for name, values in (("train", train_log_px), ("validation", reference["log_px"]), ("calibration", calibration["log_px"]))},
    )
    return gate


def score_matrix(scores: dict[str, np.ndarray], names) -> np.ndarray:
    """The ``names`` columns of score arrays by name, side by side ``(N, len(names))``."""
    return np.stack([scores[name] for name in names], axis=1)


def _halves(scores: dict[str, np.ndarray], seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The rows of ``scores`` in two seeded random halves."""
    order = np.random.default_rng(seed).permutation(len(next(iter(scores.values()))))
    first, second = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    return {name: values[first] for name, values in scores.items()}, {name: values[second] for name, values in scores.items()}


def _with_classifier(
    gate: Gate, reference: dict[str, np.ndarray], outliers: list[dict[str, np.ndarray]], hidden: int
) -> tuple[Gate, list[np.ndarray], list[np.ndarray]]:
    """``gate`` with a score classifier fitted on one seeded half of the reference rows and of each
    outlier set, its surprise fixed by its log-odds on the other reference half; and what the
    weights are fitted on, per outlier set: the held-out reference half's and the set's held-out
    half's statistic surprises, where the classifier's column comes from a classifier fitted
    without that set (leave one family out). The weights thus value the classifier as on a family
    it never saw, which is what a deployment meets (docs/gate.md)."""
    names = list(gate.tails)
    fit_reference, held_reference = _halves(reference, CLASSIFIER_SEED)
    split = [_halves(scores, CLASSIFIER_SEED + 1 + i) for i, scores in enumerate(outliers)]
    fit_matrix, held_matrix = score_matrix(fit_reference, names), score_matrix(held_reference, names)
    fits = [score_matrix(first, names) for first, _ in split]

    def fitted(sets: list[np.ndarray]) -> tuple[ScoreClassifier, np.ndarray]:
        classifier = ScoreClassifier.fit(fit_matrix, sets, hidden, CLASSIFIER_SEED)
        return classifier, np.sort(classifier(held_matrix))

    classifier, classifier_reference = fitted(fits)
    held_surprises = gate.surprises(held_reference)
    weight_reference, weight_outliers = [], []
    for left_out, (_, held) in enumerate(split):
        without, without_reference = fitted(fits[:left_out] + fits[left_out + 1 :])
        surprise = Surprise.fit(without_reference, "upper")
        weight_reference.append(np.c_[held_surprises, surprise(without(held_matrix))])
        weight_outliers.append(np.c_[gate.surprises(held), surprise(without(score_matrix(held, names)))])
    return replace(gate, classifier=classifier, classifier_reference=classifier_reference), weight_reference, weight_outliers


def gated_probabilities(probabilities: np.ndarray, accepted: np.ndarray, label_prior: np.ndarray) -> np.ndarray:
    """Eq. 10: p(y|x) where accepted, else the label prior p(y). ``(N, K)``."""
    return np.where(accepted[:, None], probabilities, np.asarray(label_prior, dtype=probabilities.dtype)[None, :])


def gated_regression(mean: np.ndarray, variance: np.ndarray, accepted: np.ndarray, target_moments) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 10's analogue for regression: the head's predictive where accepted, else the training
    targets' mean and variance (``target_moments`` = [mean, variance])."""
    fallback_mean, fallback_variance = (float(v) for v in target_moments)
    return np.where(accepted, mean, fallback_mean), np.where(accepted, variance, fallback_variance)


def bits_per_dim(log_px, dims: int):
    """-log p(x) / (D ln 2): nats per example to bits per dimension."""
    return -log_px / (dims * math.log(2))
