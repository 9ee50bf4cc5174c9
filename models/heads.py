"""Generalized linear model heads on the latents z ``(N, D)``.

Every head has ``log_likelihood(z, y) -> (N,)`` (log p(y|z) in nats), ``batch_log_likelihood(z, y)``
(the training term, a scalar per example) and ``predict(z) -> dict`` of tensors with leading
dimension N.

- ``CategoricalHead``: softmax of linear logits; y holds class indices.
- ``GaussianHead``: linear mean with a learned noise variance; y holds real targets.
- ``BayesianLinearHead``: prior beta ~ N(0, alpha^-1 I) on [z, 1] (P = D + 1 weights, the last is the
  bias), noise sigma0^2. Closed-form posterior, predictive N(mu^T z, sigma0^2 + z^T Sigma z) and log
  marginal likelihood (the paper's eq. 13 written in P dimensions). It trains either through the
  marginal likelihood of the whole batch (``objective="marginal_likelihood"``, for data that fit in
  one batch) or as a Gaussian head (``objective="gaussian"``), with the posterior and the
  hyperparameters fitted afterwards from sufficient statistics accumulated over all training latents.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(y: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """log N(y; mean, variance), elementwise, nats."""
    return -0.5 * (LOG_2PI + torch.log(variance) + (y - mean) ** 2 / variance)


class CategoricalHead(nn.Module):
    def __init__(self, latent_dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(latent_dim, num_classes)

    def log_likelihood(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(self.linear(z), y.long(), reduction="none")

    def batch_log_likelihood(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.log_likelihood(z, y).mean()

    def entropy(self, z: torch.Tensor) -> torch.Tensor:
        """Entropy of p(y|z) in nats, ``(N,)``."""
        log_probs = F.log_softmax(self.linear(z), dim=1)
        return -(log_probs.exp() * log_probs).sum(dim=1)

    def predict(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.linear(z)
        return {"logits": logits, "probabilities": F.softmax(logits, dim=1)}


class GaussianHead(nn.Module):
    def __init__(self, latent_dim: int, noise_std: float = 1.0):
        super().__init__()
        self.linear = nn.Linear(latent_dim, 1)
        self.log_noise_std = nn.Parameter(torch.tensor(math.log(noise_std)))

    def predict(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        mean = self.linear(z).squeeze(1)
        return {"mean": mean, "variance": (2 * self.log_noise_std).exp().expand_as(mean)}

    def log_likelihood(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        prediction = self.predict(z)
        return gaussian_log_prob(y, prediction["mean"], prediction["variance"])

    def batch_log_likelihood(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.log_likelihood(z, y).mean()


@dataclass
class SufficientStatistics:
    """N, Z^T Z, Z^T y and y^T y of design rows [z, 1], in float64; they add over batches."""

    count: torch.Tensor
    ztz: torch.Tensor
    zty: torch.Tensor
    yty: torch.Tensor

    @staticmethod
    def from_batch(z: torch.Tensor, y: torch.Tensor) -> "SufficientStatistics":
        design = with_bias_column(z.double())
        y = y.double()
        return SufficientStatistics(
            count=torch.tensor(float(z.shape[0]), dtype=torch.float64, device=z.device),
            ztz=design.T @ design,
            zty=design.T @ y,
            yty=y @ y,
        )

    def __add__(self, other: "SufficientStatistics") -> "SufficientStatistics":
        return SufficientStatistics(
            self.count + other.count, self.ztz + other.ztz, self.zty + other.zty, self.yty + other.yty
        )


def with_bias_column(z: torch.Tensor) -> torch.Tensor:
    """[z, 1]: ``(N, D) -> (N, D + 1)``."""
    return torch.cat([z, torch.ones_like(z[:, :1])], dim=1)


def posterior(
    stats: SufficientStatistics, alpha: torch.Tensor, noise_variance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean mu ``(P,)`` and the Cholesky factor of the precision A = alpha I + Z^T Z / sigma0^2."""
    eye = torch.eye(stats.ztz.shape[0], dtype=stats.ztz.dtype, device=stats.ztz.device)
    precision = alpha * eye + stats.ztz / noise_variance
    chol = torch.linalg.cholesky(precision)
    mean = torch.cholesky_solve((stats.zty / noise_variance)[:, None], chol).squeeze(1)
    return mean, chol


def log_marginal_likelihood(
    stats: SufficientStatistics, alpha: torch.Tensor, noise_variance: torch.Tensor
) -> torch.Tensor:
    """log p(y | Z, alpha, sigma0^2) summed over the N examples (nats), from sufficient statistics:
    (P/2) log alpha - (N/2) log(2 pi sigma0^2) - (1/2) log|A| - ||y - Z mu||^2 / (2 sigma0^2) - (alpha/2) ||mu||^2.
    """
    mean, chol = posterior(stats, alpha, noise_variance)
    dims = stats.ztz.shape[0]
    residual = stats.yty - 2 * mean @ stats.zty + mean @ stats.ztz @ mean
    log_det_precision = 2 * torch.log(torch.diagonal(chol)).sum()
    return (
        0.5 * dims * torch.log(alpha)
        - 0.5 * stats.count * torch.log(2 * math.pi * noise_variance)
        - 0.5 * log_det_precision
        - residual / (2 * noise_variance)
        - 0.5 * alpha * mean @ mean
    )


class BayesianLinearHead(nn.Module):
    OBJECTIVES = ("marginal_likelihood", "gaussian")

    def __init__(self, latent_dim: int, objective: str = "marginal_likelihood", alpha: float = 1.0, noise_std: float = 1.0):
        super().__init__()
        if objective not in self.OBJECTIVES:
            raise ValueError(f"objective must be one of {self.OBJECTIVES}, got {objective!r}")
        self.objective = objective
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha)))
        self.log_noise_std = nn.Parameter(torch.tensor(math.log(noise_std)))
        self.point_estimate = nn.Linear(latent_dim, 1)
        params = latent_dim + 1
        self.register_buffer("posterior_mean", torch.zeros(params, dtype=torch.float64))
        self.register_buffer("posterior_precision_chol", torch.eye(params, dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(0, dtype=torch.uint8))

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.double().exp()

    @property
    def noise_variance(self) -> torch.Tensor:
        return (2 * self.log_noise_std.double()).exp()

    @torch.no_grad()
    def _store_posterior(self, stats: SufficientStatistics) -> None:
        mean, chol = posterior(stats, self.alpha, self.noise_variance)
        self.posterior_mean.copy_(mean)
        self.posterior_precision_chol.copy_(chol)
        self.fitted.fill_(1)

    def batch_log_likelihood(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.objective == "gaussian":
            mean = self.point_estimate(z).squeeze(1)
            variance = self.noise_variance.to(z.dtype).expand_as(mean)
            return gaussian_log_prob(y, mean, variance).mean()
        stats = SufficientStatistics.from_batch(z, y)
        if self.training:
            self._store_posterior(stats)
        return (log_marginal_likelihood(stats, self.alpha, self.noise_variance) / stats.count).to(z.dtype)

    def fit_posterior(self, stats: SufficientStatistics, optimize_hyperparameters: bool, max_iter: int = 200) -> float:
        """Fit the closed-form posterior to the training statistics; with ``optimize_hyperparameters``
        first choose alpha and sigma0 by maximising the marginal likelihood. Returns the log marginal
        likelihood per example (nats)."""
        if optimize_hyperparameters:
            log_alpha = self.log_alpha.detach().double().clone().requires_grad_(True)
            log_noise_std = self.log_noise_std.detach().double().clone().requires_grad_(True)
            optimizer = torch.optim.LBFGS([log_alpha, log_noise_std], max_iter=max_iter, line_search_fn="strong_wolfe")

            def closure() -> torch.Tensor:
                optimizer.zero_grad()
                loss = -log_marginal_likelihood(stats, log_alpha.exp(), (2 * log_noise_std).exp()) / stats.count
                loss.backward()
                return loss

            optimizer.step(closure)
            with torch.no_grad():
                self.log_alpha.copy_(log_alpha)
                self.log_noise_std.copy_(log_noise_std)
        self._store_posterior(stats)
        with torch.no_grad():
            return float(log_marginal_likelihood(stats, self.alpha, self.noise_variance) / stats.count)

    def predict(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictive mean and variance; the variance includes the posterior's parameter uncertainty
        once the posterior is fitted (before that, the point estimate with noise variance only)."""
        if not bool(self.fitted):
            mean = self.point_estimate(z).squeeze(1)
            return {"mean": mean, "variance": self.noise_variance.to(z.dtype).expand_as(mean)}
        design = with_bias_column(z.double())
        mean = design @ self.posterior_mean
        whitened = torch.linalg.solve_triangular(self.posterior_precision_chol, design.T, upper=False)
        variance = self.noise_variance + (whitened**2).sum(dim=0)
        return {"mean": mean.to(z.dtype), "variance": variance.to(z.dtype)}

    def log_likelihood(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        prediction = self.predict(z)
        return gaussian_log_prob(y, prediction["mean"], prediction["variance"])
