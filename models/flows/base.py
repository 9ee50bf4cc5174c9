"""The flow interface and its composite.

A flow maps data x to latents z in the density direction. ``forward(x)`` returns ``(z, logabsdet)``
where ``logabsdet`` has shape ``(N,)`` and holds log|det dz/dx| in nats per example;
``inverse(z)`` returns x.
"""
from __future__ import annotations

import torch
from torch import nn


class InputOutsideDomain(ValueError):
    """The input lies outside the domain where the transform is defined (e.g. pixel outside [0, 1])."""


class Flow(nn.Module):
    """Base class: subclasses implement ``forward`` and ``inverse``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class CompositeFlow(Flow):
    """Applies flows in order and sums their log-dets."""

    def __init__(self, flows: list[Flow]):
        super().__init__()
        self.flows = nn.ModuleList(flows)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = x.new_zeros(x.shape[0])
        for flow in self.flows:
            x, logabsdet = flow(x)
            total = total + logabsdet
        return x, total

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for flow in reversed(self.flows):
            z = flow.inverse(z)
        return z
