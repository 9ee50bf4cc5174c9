"""Invertible layers shared by Glow and RealNVP, acting on dimension 1 (channels or features).

Each layer takes ``(N, C)`` vectors or ``(N, C, H, W)`` images; a per-channel transform of an image
counts its log-det once per pixel (the factor H*W). Log-dets are in nats, shape ``(N,)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.flows.base import CompositeFlow, Flow


def _pixels_per_channel(x: torch.Tensor) -> int:
    """H*W for images, 1 for vectors."""
    return x[0, 0].numel()


def _broadcast(param: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Shape a per-channel ``(C,)`` parameter to broadcast against ``x``."""
    return param.view(1, -1, *([1] * (x.dim() - 2)))


class ActNorm(Flow):
    """Per-channel affine y = (x + bias) * exp(log_scale), initialised from the first training batch
    so that y has zero mean and unit variance per channel. ``initialized`` is a buffer, so a reloaded
    model is never initialised again."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self._known_initialized = False  # Python mirror of the buffer: no tensor read per step (torch.compile)

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
        self.bias.copy_(-per_channel.mean(dim=1))
        self.log_scale.copy_(-torch.log(per_channel.std(dim=1) + 1e-6))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self._known_initialized:
            if not bool(self.initialized):
                self._initialize(x)
            self._known_initialized = True
        y = (x + _broadcast(self.bias, x)) * _broadcast(self.log_scale.exp(), x)
        logabsdet = _pixels_per_channel(x) * self.log_scale.sum()
        return y, logabsdet.expand(x.shape[0])

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * _broadcast((-self.log_scale).exp(), z) - _broadcast(self.bias, z)


class InvertibleLinearLU(Flow):
    """Invertible C x C channel mixing (Glow's 1x1 convolution), W = P L (U + diag(sign * exp(log_s))).

    The log-det is pixels * sum(log_s): no determinant is computed. Initialised as a random rotation.
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        rotation, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign_s", torch.sign(diagonal))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diagonal.abs()))
        self._cached: tuple | None = None  # (parameter versions, W) for inference

    def weight(self) -> torch.Tensor:
        """The C x C matrix W: built once per call while training; in inference (eval mode, no
        gradients) kept until a parameter changes (their version counters say when)."""
        if self.training or torch.is_grad_enabled():
            return self._build_weight()
        key = (self.lower._version, self.upper._version, self.log_s._version, self.lower.device, self.lower.dtype)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._build_weight())
        return self._cached[1]

    def _build_weight(self) -> torch.Tensor:
        eye = torch.eye(self.log_s.shape[0], device=self.log_s.device, dtype=self.log_s.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.permutation @ lower @ upper

    @staticmethod
    def _mix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x @ matrix.T
        return F.conv2d(x, matrix[:, :, None, None])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logabsdet = _pixels_per_channel(x) * self.log_s.sum()
        return self._mix(x, self.weight()), logabsdet.expand(x.shape[0])

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self._mix(z, torch.linalg.inv(self.weight()))


def _linear_map(in_features: int, out_features: int, spatial: bool, kernel: int = 3) -> nn.Module:
    if spatial:
        return nn.Conv2d(in_features, out_features, kernel, padding=kernel // 2)
    return nn.Linear(in_features, out_features)


def zero_initialized(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class FeedForwardNet(nn.Module):
    """Coupling network: ``layers`` hidden ReLU layers, zero-initialised output layer.

    Spatial (images): 3x3 conv in, 1x1 convs between, 3x3 conv out, as in Glow. Otherwise an MLP.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int, layers: int, spatial: bool):
        super().__init__()
        modules: list[nn.Module] = [_linear_map(in_features, hidden, spatial), nn.ReLU()]
        for _ in range(layers - 1):
            modules += [_linear_map(hidden, hidden, spatial, kernel=1), nn.ReLU()]
        modules.append(zero_initialized(_linear_map(hidden, out_features, spatial)))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HighwayNet(nn.Module):
    """Coupling network of highway layers (the paper's MNIST choice):
    h <- t * relu(W h) + (1 - t) * h with gate t = sigmoid(V h); zero-initialised output layer."""

    def __init__(self, in_features: int, out_features: int, hidden: int, layers: int, spatial: bool):
        super().__init__()
        self.input = _linear_map(in_features, hidden, spatial)
        self.transforms = nn.ModuleList(_linear_map(hidden, 2 * hidden, spatial) for _ in range(layers))
        self.output = zero_initialized(_linear_map(hidden, out_features, spatial))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.input(x))
        for transform in self.transforms:
            candidate, gate_logit = transform(h).chunk(2, dim=1)
            gate = torch.sigmoid(gate_logit)
            h = gate * F.relu(candidate) + (1 - gate) * h
        return self.output(h)


COUPLING_NETS = {"feedforward": FeedForwardNet, "highway": HighwayNet}


class AffineCoupling(Flow):
    """Affine coupling: keep the first half of the channels, x_b <- (x_b + shift) * scale with
    (shift, scale) from a net on the kept half and scale = sigmoid(h + 2) in (0, 1) as in Glow."""

    def __init__(self, channels: int, hidden: int, net: str, net_layers: int, spatial: bool):
        super().__init__()
        if channels < 2:
            raise ValueError(f"affine coupling needs at least 2 channels, got {channels}")
        self.kept = channels // 2
        transformed = channels - self.kept
        self.net = COUPLING_NETS[net](self.kept, 2 * transformed, hidden, net_layers, spatial)

    def _shift_and_log_scale(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(kept)
        shift, raw_scale = h[:, 0::2], h[:, 1::2]
        return shift, F.logsigmoid(raw_scale + 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, transformed = x[:, : self.kept], x[:, self.kept :]
        shift, log_scale = self._shift_and_log_scale(kept)
        y = torch.cat([kept, (transformed + shift) * log_scale.exp()], dim=1)
        return y, log_scale.flatten(1).sum(dim=1)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        kept, transformed = z[:, : self.kept], z[:, self.kept :]
        shift, log_scale = self._shift_and_log_scale(kept)
        return torch.cat([kept, transformed * (-log_scale).exp() - shift], dim=1)


class Squeeze(Flow):
    """Space-to-depth: (N, C, H, W) -> (N, 4C, H/2, W/2); volume preserving."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        y = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(n)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        n, c, h, w = z.shape
        return z.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, 2 * h, 2 * w)


def flow_step(channels: int, hidden: int, net: str, net_layers: int, spatial: bool) -> Flow:
    """One Glow step: actnorm -> invertible linear (1x1 conv) -> affine coupling."""
    return CompositeFlow(
        [
            ActNorm(channels),
            InvertibleLinearLU(channels),
            AffineCoupling(channels, hidden, net, net_layers, spatial),
        ]
    )
