"""Out-of-distribution scores of one DIGLM forward pass, each ``(N,)``:

- ``log_px``: log p(x) in nats (the paper's score);
- ``level_1`` .. ``level_L`` (multi-scale Glow only): each level's share of log p(x) in nats, finest
  first (Schirrmeister et al. 2020: the fine levels carry the local pixel statistics that make
  simple images likely, the coarse ones more of the content);
- ``max_probability`` of the head's p(y|x) (classification only);
- ``latent_distance``: squared Mahalanobis distance of z to the nearest class mean under a
  class-conditional Gaussian with shared covariance (Lee et al. 2018), fitted in closed form on the
  training latents after training (one Gaussian for regression). ``LatentGaussian`` holds it;
- ``neighbour_distance``: the squared distance from z's direction to the k-th nearest of a
  reference set of training latents' directions (Sun et al. 2022, deep nearest neighbours: both L2-normalised,
  optionally after a PCA projection). ``LatentNeighbours`` holds the reference;
- images only: ``complexity``, the nats a generic local image model spends on x (each pixel's
  differences to its right and lower neighbours Laplace with scale b, the training images' mean
  absolute neighbour difference; up to a constant), and ``likelihood_ratio`` = log p(x) +
  complexity: the model's density against the generic one (Serra et al. 2020, with that model in
  place of a PNG compressor). Simple inputs are likely under both, so the ratio is not fooled.

``ScoreFit`` holds what is fitted after training. Every score is a torch expression, so the ONNX
graph computes them in the same pass.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from models.hybrid import HybridModel, HybridOutput

LatentSpace = Literal["head", "all", "coarse", "pca"]


class LatentGaussian(nn.Module):
    """min_k ||z W - m_k||^2: W ``(D, d)`` maps latents to whitened coordinates of the chosen space,
    m_k ``(K, d)`` are the class means there."""

    def __init__(self, weight: torch.Tensor, means: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.float())
        self.register_buffer("means", means.float())

    @classmethod
    def fit(
        cls,
        z: np.ndarray,
        y: np.ndarray | None,
        space: LatentSpace,
        level_sizes: list[int],
        dims: int | None = None,
        head_weight: np.ndarray | None = None,
        shrinkage: float = 1e-3,
    ) -> "LatentGaussian":
        """Closed-form fit on training latents ``z`` ``(N, D)`` with class labels ``y`` (None: one
        Gaussian). ``space``: the span of the linear head's weights ``head_weight`` ``(K, D)`` (the
        logits' space, where the classes separate), all of z, the coarsest level's latents, or the
        top ``dims`` principal directions. ``shrinkage`` adds that share of the mean variance to the
        covariance's diagonal."""
        z = np.asarray(z, dtype=np.float64)
        total = z.shape[1]
        if space == "head":
            if head_weight is None:
                raise ValueError("latent_space 'head' needs a linear classification head")
            projection = np.asarray(head_weight, dtype=np.float64).T
        elif space == "all":
            projection = np.eye(total)
        elif space == "coarse":
            projection = np.eye(total)[:, total - level_sizes[-1] :]
        else:
            centered = z - z.mean(axis=0)
            _, _, components = np.linalg.svd(centered, full_matrices=False)
            projection = components[: dims or min(64, total)].T
        q = z @ projection
        labels = np.zeros(len(z), dtype=np.int64) if y is None else np.asarray(y, dtype=np.int64)
        classes = np.unique(labels)
        means = np.stack([q[labels == k].mean(axis=0) for k in range(int(classes.max()) + 1)])
        residual = q - means[labels]
        covariance = residual.T @ residual / len(q)
        covariance += shrinkage * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
        cholesky = np.linalg.cholesky(covariance)
        whitening = np.linalg.inv(cholesky).T  # (x - mu) @ whitening has identity covariance
        return cls(torch.from_numpy(projection @ whitening), torch.from_numpy(means @ whitening))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # each row's differences to the means, not |u|^2 - 2 u.m + |m|^2: that product's small matmul
        # rounds by the batch size (docs/gate.md, "Same input, same answer"), and cancels besides
        u = z @ self.weight
        return (u[:, None, :] - self.means[None]).pow(2).sum(dim=2).min(dim=1).values


class LatentNeighbours(nn.Module):
    """||u - r_(k)||^2: u = normalise(z P) for z ``(N, D)``, r_(k) its k-th nearest row of the
    unit-norm ``reference`` ``(M, d)``; P ``(D, d)`` a projection (None: all of z). Unit vectors, so
    it is 2 - 2 cos, in [0, 4]: squared, since a square root would turn float32 rounding of cos
    near 1 into errors of 3e-4."""

    def __init__(self, reference: torch.Tensor, k: int, projection: torch.Tensor | None = None):
        super().__init__()
        if not 1 <= k <= len(reference):
            raise ValueError(f"neighbour k={k} needs a reference of at least k latents, got {len(reference)}")
        self.k = k
        self.register_buffer("reference", reference.float())
        self.register_buffer("projection", None if projection is None else projection.float())

    @classmethod
    def fit(cls, z: np.ndarray, k: int, size: int | None = None, dims: int | None = None, seed: int = 0) -> "LatentNeighbours":
        """From training latents ``z`` ``(N, D)``: a seeded sample of ``size`` of them (None: all) as
        the reference; with ``dims``, the top ``dims`` principal directions of the normalised latents
        (fitted on all of them) as the projection."""
        z = np.asarray(z, dtype=np.float64)
        projection = None
        if dims is not None and dims < z.shape[1]:
            directions = z / np.linalg.norm(z, axis=1, keepdims=True).clip(min=1e-12)
            _, _, components = np.linalg.svd(directions - directions.mean(axis=0), full_matrices=False)
            projection = torch.from_numpy(components[:dims].T.copy())
        if size is not None and size < len(z):
            z = z[np.sort(np.random.default_rng(seed).choice(len(z), size=size, replace=False))]
        kept = torch.from_numpy(z) if projection is None else torch.from_numpy(z) @ projection
        return cls(nn.functional.normalize(kept, dim=1), k, projection)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = z if self.projection is None else z @ self.projection
        u = nn.functional.normalize(u, dim=1)
        similarity = u @ self.reference.T
        kth = similarity.max(dim=1).values if self.k == 1 else similarity.topk(self.k, dim=1).values[:, -1]
        return (2 - 2 * kth).clamp(min=0)


def neighbour_differences(x: torch.Tensor) -> torch.Tensor:
    """Sum of |differences| between horizontally and vertically adjacent values of images ``(N, ..., H, W)``, ``(N,)``."""
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(dim=1)
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(dim=1)
    return horizontal + vertical


class ScoreFit(nn.Module):
    """The parts of the scores fitted after training: the ``latent`` Gaussian, the latent
    ``neighbours`` (None: no ``neighbour_distance``) and, for images, the Laplace scale b of
    neighbour differences (data units; None for vectors)."""

    def __init__(self, latent: LatentGaussian, neighbour_scale: float | None, neighbours: LatentNeighbours | None = None):
        super().__init__()
        self.latent = latent
        self.neighbour_scale = neighbour_scale
        self.neighbours = neighbours

    @classmethod
    def fit(
        cls, model: HybridModel, x: np.ndarray, z: np.ndarray, y: np.ndarray | None, space: LatentSpace, dims: int | None = None,
        neighbours: LatentNeighbours | None = None,
    ) -> "ScoreFit":
        """Fit on training inputs ``x`` ``(N, *input_shape)``, their latents ``z`` and labels ``y``;
        ``neighbours`` is fitted by the caller (``LatentNeighbours.fit``), which chooses its size."""
        head_weight = model.head.linear.weight.detach().cpu().numpy() if model.task == "classification" else None
        latent = LatentGaussian.fit(z, y, space, model.level_sizes, dims, head_weight)
        scale = None
        if len(model.input_shape) >= 2:
            height, width = x.shape[-2:]
            pairs = int(np.prod(x.shape[1:-2], dtype=np.int64)) * (2 * height * width - height - width)
            scale = max(float(neighbour_differences(torch.from_numpy(x[:10_000]).double()).mean()) / pairs, 1e-6)
        return cls(latent, scale, neighbours)


def instance_scores(x: torch.Tensor, output: HybridOutput, head_prediction: dict[str, torch.Tensor], fitted: ScoreFit | None) -> dict[str, torch.Tensor]:
    """Every score the model and its ``fitted`` parts give for inputs ``x``, name -> ``(N,)``."""
    scores = {"log_px": output.log_px}
    levels = output.level_log_px
    if levels.shape[1] > 1:
        for index in range(levels.shape[1]):
            scores[f"level_{index + 1}"] = levels[:, index]
    probabilities = head_prediction.get("probabilities")
    if probabilities is not None:
        scores["max_probability"] = probabilities.max(dim=1).values
    if fitted is not None:
        scores["latent_distance"] = fitted.latent(output.z)
        if fitted.neighbours is not None:
            scores["neighbour_distance"] = fitted.neighbours(output.z)
        if fitted.neighbour_scale is not None:
            scores["complexity"] = neighbour_differences(x).to(output.log_px.dtype) / (2 * fitted.neighbour_scale)
            scores["likelihood_ratio"] = output.log_px + scores["complexity"]
    return scores


def forward_scores(model: HybridModel, x: torch.Tensor, fitted: ScoreFit | None, predict=None) -> dict[str, torch.Tensor]:
    """The head's outputs (``probabilities``, or ``mean`` and ``variance``), ``z`` and every score for
    x ``(N, *input_shape)`` in data units, from one forward pass. ``predict``: z -> the head's
    outputs, if not ``model.head.predict`` (the ONNX graph's export-friendly Bayesian head)."""
    output = model(x)
    prediction = (predict or model.head.predict)(output.z)
    prediction.pop("logits", None)
    return {**prediction, "z": output.z, **instance_scores(x, output, prediction, fitted)}
