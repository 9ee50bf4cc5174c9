"""The model's configuration as data (validated once, stored in the manifest) and the factory that
builds a ``HybridModel`` from it. Unknown keys and wrong types are errors."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PreprocessingConfig(StrictModel):
    kind: Literal["dequantize", "standardize"] = "dequantize"
    levels: int | None = Field(None, ge=2, description="values per dimension (dequantize); set from the data if omitted")
    logit_alpha: float | None = Field(None, gt=0, lt=0.5, description="logit(a + (1-2a) x) after dequantizing; none = shift only")
    dequantize_integers: bool = Field(
        False, description="standardize: features whose training values are all integers get uniform noise over their unit cell in "
        "training (the cell's centre at inference), so the flow models a density, not spikes on the integer lattice"
    )


class FlowConfig(StrictModel):
    kind: Literal["glow", "realnvp", "planar"] = "glow"
    levels: int = Field(2, ge=1, description="Glow: multi-scale levels L")
    steps: int = Field(4, ge=1, description="Glow: steps K per level; RealNVP: coupling steps; planar: layers")
    hidden: int = Field(64, ge=1, description="hidden channels / units of the coupling nets")
    net: Literal["feedforward", "highway"] = "feedforward"
    net_layers: int = Field(2, ge=1, description="hidden layers of each coupling net")
    split_prior: bool = Field(
        False, description="Glow: the latents a level factors out get a learned Gaussian prior conditioned on the channels it "
        "keeps (Glow's split prior); they are standardized by it, so the head still sees N(0, I) latents"
    )


class HeadConfig(StrictModel):
    kind: Literal["categorical", "gaussian", "bayesian"] = "categorical"
    num_classes: int | None = Field(None, ge=2, description="categorical: set from the data if omitted")
    objective: Literal["marginal_likelihood", "gaussian"] = "marginal_likelihood"
    alpha: float = Field(1.0, gt=0, description="bayesian: initial prior precision")
    noise_std: float = Field(1.0, gt=0, description="gaussian, bayesian: initial noise standard deviation (target units)")


class ModelConfig(StrictModel):
    input_shape: list[int] = Field(default_factory=list, description="shape of one input; set from the data if empty")
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    flow: FlowConfig = FlowConfig()
    head: HeadConfig = HeadConfig()

    @property
    def task(self) -> Literal["classification", "regression"]:
        return "classification" if self.head.kind == "categorical" else "regression"
