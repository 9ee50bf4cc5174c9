"""The DIGLM: preprocessing -> flow -> GLM head, giving z, log p(x) and p(y|x) in one pass.

log p(x) = log N(z; 0, I) + log|det dz/dx| (flow) + the preprocessing's log-det, in nats per example,
a density of the data as users send it (see ``models.preprocessing``). For a multi-scale Glow it is
also split by level: level l's term is the log-det of its steps plus the log-density of the latents
it factors out (under its split prior, conditioned on the coarser levels, when the Glow has them; the
preprocessing's log-det joins the finest level), so the terms sum to log p(x).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.config import ModelConfig
from models.flows import Flow, Glow, PlanarFlow, RealNVP
from models.heads import BayesianLinearHead, CategoricalHead, GaussianHead
from models.preprocessing import Dequantize, Standardize


@dataclass(frozen=True)
class LossShares:
    """When one batch is split across processes (data-parallel training): this process's rows of
    each group the objective averages over, as a fraction of the whole batch's (all rows, labeled,
    unlabeled), times the number of processes. Each process's loss is then its part of the whole
    batch's means, scaled so that the average of the processes' gradients (what data-parallel
    training all-reduces) is the gradient of the single-process loss on the whole batch."""

    rows: float
    labeled: float
    unlabeled: float


@dataclass
class HybridOutput:
    z: torch.Tensor  # (N, D) latents
    log_px: torch.Tensor  # (N,) nats
    level_log_px: torch.Tensor  # (N, L) nats per level, finest first (L = 1 unless a multi-scale Glow); sums to log_px


def _flow_input_shape(config: ModelConfig) -> tuple[int, ...]:
    """Glow takes (C, H, W): a 2-D input shape gets a channel of 1. Other flows take flat vectors."""
    shape = tuple(config.input_shape)
    if config.flow.kind == "glow":
        return (1, *shape) if len(shape) == 2 else shape
    return (math.prod(shape),)


def _build_flow(config: ModelConfig, flow_shape: tuple[int, ...]) -> Flow:
    flow = config.flow
    if flow.kind == "glow":
        if len(flow_shape) != 3:
            raise ValueError(f"Glow needs image inputs (H, W) or (C, H, W), got input_shape {config.input_shape}")
        return Glow(flow_shape, flow.levels, flow.steps, flow.hidden, flow.net, flow.net_layers, flow.split_prior)
    if flow.kind == "realnvp":
        return RealNVP(flow_shape[0], flow.steps, flow.hidden, flow.net, flow.net_layers)
    return PlanarFlow(flow_shape[0], flow.steps)


def _build_head(config: ModelConfig, latent_dim: int) -> nn.Module:
    head = config.head
    if head.kind == "categorical":
        if head.num_classes is None:
            raise ValueError("a categorical head needs head.num_classes")
        return CategoricalHead(latent_dim, head.num_classes)
    if head.kind == "gaussian":
        return GaussianHead(latent_dim, head.noise_std)
    return BayesianLinearHead(latent_dim, head.objective, head.alpha, head.noise_std)


class HybridModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if not config.input_shape:
            raise ValueError("model config needs input_shape")
        self.config = config
        self.input_shape = tuple(config.input_shape)
        self.dims = math.prod(self.input_shape)
        self.flow_shape = _flow_input_shape(config)
        if config.preprocessing.kind == "dequantize":
            if config.preprocessing.levels is None:
                raise ValueError("dequantize preprocessing needs preprocessing.levels")
            self.preprocessing = Dequantize(config.preprocessing.levels, config.preprocessing.logit_alpha)
        else:
            self.preprocessing = Standardize(self.flow_shape, config.preprocessing.dequantize_integers)
        self.flow = _build_flow(config, self.flow_shape)
        self.head = _build_head(config, self.dims)
        if config.task == "classification":
            # p(y) from training label counts: the output for rejected inputs (eq. 10).
            self.register_buffer("label_prior", torch.full((config.head.num_classes,), 1.0 / config.head.num_classes))
        else:
            # Training targets' mean and variance: the output for rejected inputs.
            self.register_buffer("target_moments", torch.tensor([0.0, 1.0]))

    @property
    def task(self) -> str:
        return self.config.task

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> HybridOutput:
        """``x``: ``(N, *input_shape)`` in data units; ``noise``: dequantization u of the same shape or
        None (u = 1/2, one number per input)."""
        x = x.reshape(x.shape[0], *self.flow_shape)
        if noise is not None:
            noise = noise.reshape_as(x)
        h, log_det_preprocessing = self.preprocessing(x, noise)
        if isinstance(self.flow, Glow):
            z, level_logdets = self.flow.forward_levels(h)
        else:
            z, log_det_flow = self.flow(h)
            level_logdets = log_det_flow[:, None]
        log_pz = torch.stack(
            [-0.5 * (part**2 + math.log(2 * math.pi)).sum(dim=1) for part in z.split(self.level_sizes, dim=1)], dim=1
        )
        level_log_px = log_pz + level_logdets
        level_log_px = torch.cat([level_log_px[:, :1] + log_det_preprocessing[:, None], level_log_px[:, 1:]], dim=1)
        return HybridOutput(z=z, log_px=level_log_px.sum(dim=1), level_log_px=level_log_px)

    @property
    def level_sizes(self) -> list[int]:
        """Latents per level of ``level_log_px``, finest first; they sum to D."""
        return self.flow.latent_sizes if isinstance(self.flow, Glow) else [self.dims]

    def loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        labeled: torch.Tensor | None,
        lambda_per_dim: float,
        entropy_weight: float = 0.0,
        noise: torch.Tensor | None = None,
        shares: LossShares | None = None,
        labeled_fraction: float | None = None,
    ) -> tuple[torch.Tensor, HybridOutput]:
        """-(mean_labeled log p(y|x) + lambda mean_all log p(x) - w mean_unlabeled H[p(y|x)]) with
        lambda = lambda_per_dim / D (eq. 7 and sec. 3.1). Each term is a mean over its own rows, so
        a few labeled rows among many unlabeled ones keep their weight. ``labeled``: boolean ``(N,)``,
        or None when every row is labeled (then this is the mean of eq. 7 over the batch, with no
        data-dependent branch, so it compiles into one graph). ``shares``: this process's part of a
        batch split across processes (each mean weighted by its share); None: the whole batch.
        ``labeled_fraction``: the labeled rows' share of the whole training set, for batches that
        draw the two groups in other proportions (``train.labeled_share``): log p(x) is then averaged
        per group and the two means weighted by it, an unbiased estimate of its full-data mean."""
        shares = shares or LossShares(1.0, 1.0, 1.0)
        output = self(x, noise)
        objective = (lambda_per_dim / self.dims) * self._mean_log_px(output.log_px, labeled, shares, labeled_fraction)
        if labeled is None:
            return -(objective + self.head.batch_log_likelihood(output.z, y) * shares.rows), output
        if bool(labeled.any()):
            objective = objective + self.head.batch_log_likelihood(output.z[labeled], y[labeled]) * shares.labeled
        if entropy_weight and not bool(labeled.all()):
            objective = objective - entropy_weight * self.head.entropy(output.z[~labeled]).mean() * shares.unlabeled
        return -objective, output

    @staticmethod
    def _mean_log_px(log_px: torch.Tensor, labeled: torch.Tensor | None, shares: LossShares, labeled_fraction: float | None) -> torch.Tensor:
        """The batch's estimate of the training set's mean log p(x) (see ``loss``)."""
        if labeled is None or labeled_fraction is None:
            return log_px.mean() * shares.rows
        mean = log_px.new_zeros(())
        if bool(labeled.any()):
            mean = mean + labeled_fraction * log_px[labeled].mean() * shares.labeled
        if not bool(labeled.all()):
            mean = mean + (1 - labeled_fraction) * log_px[~labeled].mean() * shares.unlabeled
        return mean

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(N, D)`` back to inputs ``(N, *input_shape)`` in data units (continuous)."""
        return self.preprocessing.inverse(self.flow.inverse(z)).reshape(z.shape[0], *self.input_shape)

    @torch.no_grad()
    def sample(self, count: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``(count, *input_shape)`` inputs: z ~ N(0, T^2 I) through the inverse flow, in data units."""
        device = next(self.parameters()).device
        return self.decode(torch.randn(count, self.dims, generator=generator).to(device) * temperature)
