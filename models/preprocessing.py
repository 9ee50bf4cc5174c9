"""Maps from the data as users send it to the flow's input, each with its log-det counted so that
log p(x) is a density of the data itself (nats).

- ``Dequantize``: values in {0, ..., K-1} (K levels: 256 for 8-bit pixels, 17 for scikit-learn's
  0-16 digits). x_c = (x + u) / K with u ~ U[0,1)^D in training and u = 1/2 otherwise, then either
  a shift to [-1/2, 1/2) or logit(a + (1 - 2a) x_c). log p(x) = log p_c(x_c) - D log K, a lower bound
  on the discrete log-likelihood; a uniform density on [0,1)^D gives exactly log2(K) bits/dim.
  Inputs outside [0, K-1] lie outside the support: their log-det is -inf (clamped for the latents).
- ``Standardize``: continuous features, y = (x - mean) / std with mean and std from training data.
  With ``dequantize_integers``, features whose training values are all integers are dequantized
  first: x + u - 1/2 with u ~ U[0,1) in training and u = 1/2 otherwise (unit cells: log-det 0), so
  log p(x) is a density of the dequantized data (a lower bound on the lattice probability), not a
  continuous density squeezed onto integer points.

Both take and return ``(N, *input_shape)`` tensors; log-dets have shape ``(N,)``.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Dequantize(nn.Module):
    def __init__(self, levels: int, logit_alpha: float | None = None):
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        self.levels = levels
        self.logit_alpha = logit_alpha

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``noise``: u in [0, 1) of x's shape, or None for u = 1/2."""
        dims = x[0].numel()
        outside = ((x < 0) | (x > self.levels - 1)).flatten(1).any(dim=1)
        x = x.clamp(0, self.levels - 1)
        u = 0.5 if noise is None else noise
        x_c = (x + u) / self.levels
        logabsdet = torch.full((x.shape[0],), -dims * math.log(self.levels), device=x.device, dtype=x.dtype)
        if self.logit_alpha is None:
            y = x_c - 0.5
        else:
            a = self.logit_alpha
            s = a + (1 - 2 * a) * x_c
            y = torch.log(s) - torch.log1p(-s)
            logabsdet = logabsdet + dims * math.log(1 - 2 * a) - (torch.log(s) + torch.log1p(-s)).flatten(1).sum(1)
        logabsdet = logabsdet.masked_fill(outside, -math.inf)
        return y, logabsdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Continuous values in level units, x_c * K - 1/2 (round them for discrete data)."""
        if self.logit_alpha is None:
            x_c = y + 0.5
        else:
            x_c = (torch.sigmoid(y) - self.logit_alpha) / (1 - 2 * self.logit_alpha)
        return x_c * self.levels - 0.5


class Standardize(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], dequantize_integers: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_shape))
        self.register_buffer("std", torch.ones(input_shape))
        # 1 for the integer-valued features (with dequantize_integers; None otherwise, and not saved)
        self.register_buffer("lattice", torch.zeros(input_shape) if dequantize_integers else None)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set mean and std (and which features are integer-valued) from training data ``(N, *input_shape)``."""
        if self.lattice is not None:
            self.lattice.copy_((x == x.round()).all(dim=0).to(self.lattice.dtype))
            x = x + self.lattice * (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device) - 0.5)
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``noise``: u in [0, 1) of x's shape for the integer-valued features (training), or None
        (u = 1/2; also ignored without ``dequantize_integers``)."""
        if self.lattice is not None and noise is not None:
            x = x + self.lattice * (noise - 0.5)
        logabsdet = -torch.log(self.std).sum().expand(x.shape[0])
        return (x - self.mean) / self.std, logabsdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std + self.mean
