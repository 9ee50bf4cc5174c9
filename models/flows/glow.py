"""Multi-scale Glow for images (Kingma & Dhariwal, 2018).

Input ``(N, C, H, W)``; each of the L levels squeezes (H and W halve, channels x4), runs K steps
(actnorm -> LU 1x1 conv -> affine coupling) and, except the last, factors out half the channels.
The output z is the concatenation of all factored-out latents, flattened: ``(N, C*H*W)``. With
``split_prior`` the factored-out latents get Glow's learned prior, conditioned on the channels kept
(``SplitPrior``); it standardizes them, so z stays N(0, I) either way.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.flows.base import Flow
from models.flows.layers import Squeeze, flow_step, zero_initialized


class SplitPrior(nn.Module):
    """Glow's learned prior for the latents a level factors out: N(mean, exp(log_scale)^2) per value,
    mean and log_scale from a zero-initialised 3x3 conv of the channels the level keeps. Written as a
    flow step it standardizes them, eps = (z - mean) * exp(-log_scale) with log-det -sum(log_scale)
    (nats, ``(N,)``), so eps ~ N(0, I) and the identity until trained."""

    def __init__(self, kept_channels: int, factored_channels: int):
        super().__init__()
        self.net = zero_initialized(nn.Conv2d(kept_channels, 2 * factored_channels, 3, padding=1))

    def _mean_and_log_scale(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(kept)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, factored: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = self._mean_and_log_scale(kept)
        return (factored - mean) * (-log_scale).exp(), -log_scale.flatten(1).sum(dim=1)

    def inverse(self, eps: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        mean, log_scale = self._mean_and_log_scale(kept)
        return eps * log_scale.exp() + mean


class Glow(Flow):
    def __init__(
        self,
        input_shape: tuple[int, int, int],
        levels: int,
        steps: int,
        hidden: int,
        net: str = "feedforward",
        net_layers: int = 2,
        split_prior: bool = False,
    ):
        super().__init__()
        channels, height, width = input_shape
        if height % 2**levels or width % 2**levels:
            raise ValueError(
                f"Glow with {levels} levels needs height and width divisible by {2**levels}, "
                f"got {height}x{width} (inputs are never padded: a padded pixel has no density)"
            )
        self.input_shape = tuple(input_shape)
        self.squeeze = Squeeze()
        self.levels = nn.ModuleList()
        self.latent_shapes: list[tuple[int, int, int]] = []
        self.split_priors = nn.ModuleList()  # one per level but the last, when split_prior
        for level in range(levels):
            channels, height, width = channels * 4, height // 2, width // 2
            self.levels.append(
                nn.ModuleList(flow_step(channels, hidden, net, net_layers, spatial=True) for _ in range(steps))
            )
            if level < levels - 1:
                self.latent_shapes.append((channels // 2, height, width))
                if split_prior:
                    self.split_priors.append(SplitPrior(channels - channels // 2, channels // 2))
                channels //= 2
        self.latent_shapes.append((channels, height, width))

    @property
    def latent_sizes(self) -> list[int]:
        """Latents factored out per level, finest first; they sum to C*H*W."""
        return [math.prod(shape) for shape in self.latent_shapes]

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z ``(N, C*H*W)`` and the log-det of each level's steps and split prior ``(N, L)`` (nats), finest first."""
        level_logdets = []
        latents = []
        h = x
        for index, steps in enumerate(self.levels):
            h, _ = self.squeeze(h)
            total = x.new_zeros(x.shape[0])
            for step in steps:
                h, logabsdet = step(h)
                total = total + logabsdet
            if index < len(self.levels) - 1:
                channels = self.latent_shapes[index][0]
                factored, h = h[:, :channels], h[:, channels:]
                if self.split_priors:
                    factored, logabsdet = self.split_priors[index](factored, h)
                    total = total + logabsdet
                latents.append(factored.flatten(1))
            level_logdets.append(total)
        latents.append(h.flatten(1))
        return torch.cat(latents, dim=1), torch.stack(level_logdets, dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, level_logdets = self.forward_levels(x)
        return z, level_logdets.sum(dim=1)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        chunks = [c.reshape(-1, *shape) for c, shape in zip(z.split(self.latent_sizes, dim=1), self.latent_shapes)]
        h = chunks[-1]
        for index in reversed(range(len(self.levels))):
            if index < len(self.levels) - 1:
                factored = self.split_priors[index].inverse(chunks[index], h) if self.split_priors else chunks[index]
                h = torch.cat([factored, h], dim=1)
            for step in reversed(self.levels[index]):
                h = step.inverse(h)
            h = self.squeeze.inverse(h)
        return h
