"""Planar flows (Rezende & Mohamed, 2015) for low-dimensional vectors ``(N, D)``.

In the density direction z = x + u_hat * tanh(w.x + b), log|det| = log|1 + (1 - tanh^2) u_hat.w|,
with u_hat constrained so that u_hat.w >= -1 (invertible). The inverse has no closed form: it
solves the scalar equation for a = w.x + b by bisection.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.flows.base import CompositeFlow, Flow
from models.flows.layers import ActNorm

_BISECTION_STEPS = 100


class PlanarLayer(Flow):
    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim) * 0.1)
        self.u = nn.Parameter(torch.randn(dim) * 0.1)
        self.b = nn.Parameter(torch.zeros(()))

    def _u_hat(self) -> torch.Tensor:
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w + 1e-12)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u_hat = self._u_hat()
        activation = torch.tanh(x @ self.w + self.b)
        z = x + activation[:, None] * u_hat
        logabsdet = torch.log(torch.abs(1 + (1 - activation**2) * (u_hat @ self.w)) + 1e-12)
        return z, logabsdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        u_hat = self._u_hat()
        gain = u_hat @ self.w  # >= -1, so a + gain * tanh(a) is increasing in a
        target = z @ self.w + self.b
        low, high = target - gain.abs() - 1, target + gain.abs() + 1
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            too_high = middle + gain * torch.tanh(middle) > target
            high = torch.where(too_high, middle, high)
            low = torch.where(too_high, low, middle)
        return z - torch.tanh((low + high) / 2)[:, None] * u_hat


class PlanarFlow(CompositeFlow):
    """``layers`` planar layers followed by a per-feature affine (actnorm) that sets the latent scale."""

    def __init__(self, dim: int, layers: int):
        super().__init__([*(PlanarLayer(dim) for _ in range(layers)), ActNorm(dim)])
