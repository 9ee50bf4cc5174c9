"""Normalizing flows with one interface: ``forward(x) -> (z, logabsdet)``, ``inverse(z) -> x``."""
from models.flows.base import CompositeFlow, Flow, InputOutsideDomain
from models.flows.glow import Glow
from models.flows.layers import ActNorm, AffineCoupling, InvertibleLinearLU
from models.flows.planar import PlanarFlow, PlanarLayer
from models.flows.realnvp import RealNVP

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "CompositeFlow",
    "Flow",
    "Glow",
    "InputOutsideDomain",
    "InvertibleLinearLU",
    "PlanarFlow",
    "PlanarLayer",
    "RealNVP",
]
