"""RealNVP for vectors ``(N, D)``: K steps of actnorm -> invertible linear mixing (LU) -> affine
coupling with an MLP (or highway) net. The linear mixing generalises RealNVP's fixed permutations."""
from __future__ import annotations

from models.flows.base import CompositeFlow
from models.flows.layers import flow_step


class RealNVP(CompositeFlow):
    def __init__(self, dim: int, steps: int, hidden: int, net: str = "feedforward", net_layers: int = 2):
        if dim < 2:
            raise ValueError(f"RealNVP needs at least 2 features, got {dim}; use planar flows for 1-D data")
        super().__init__([flow_step(dim, hidden, net, net_layers, spatial=False) for _ in range(steps)])
