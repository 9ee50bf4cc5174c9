"""Multi-scale Glow for images (Kingma & Dhariwal, 2018).

Input ``(N, C, H, W)``; each of the L levels squeezes (H and W halve, channels x4), runs K steps
(actnorm -> LU 1x1 conv -> affine coupling) and, except the last, factors out half the channels.
The output z is the concatenation of all factored-out latents, flattened: ``(N, C*H*W)``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.flows.base import Flow
from models.flows.layers import Squeeze, flow_step


class Glow(Flow):
    def __init__(
        self,
        input_shape: tuple[int, int, int],
        levels: int,
        steps: int,
        hidden: int,
        net: str = "feedforward",
        net_layers: int = 2,
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
        for level in range(levels):
            channels, height, width = channels * 4, height // 2, width // 2
            self.levels.append(
                nn.ModuleList(flow_step(channels, hidden, net, net_layers, spatial=True) for _ in range(steps))
            )
            if level < levels - 1:
                self.latent_shapes.append((channels // 2, height, width))
                channels //= 2
        self.latent_shapes.append((channels, height, width))

    @property
    def latent_sizes(self) -> list[int]:
        """Latents factored out per level, finest first; they sum to C*H*W."""
        return [math.prod(shape) for shape in self.latent_shapes]

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z ``(N, C*H*W)`` and the log-det of each level's steps ``(N, L)`` (nats), finest first."""
        level_logdets = []
        latents = []
        h = x
        for index, steps in enumerate(self.levels):
            h, _ = self.squeeze(h)
            total = x.new_zeros(x.shape[0])
            for step in steps:
                h, logabsdet = step(h)
                total = total + logabsdet
            level_logdets.append(total)
            if index < len(self.levels) - 1:
                factored = self.latent_shapes[index][0]
                latents.append(h[:, :factored].flatten(1))
                h = h[:, factored:]
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
                h = torch.cat([chunks[index], h], dim=1)
            for step in reversed(self.levels[index]):
                h = step.inverse(h)
            h = self.squeeze.inverse(h)
        return h
