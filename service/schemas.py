"""Pydantic models of the request and response bodies (the OpenAPI documentation; the hot path
decodes with ``service.inputs`` and encodes with orjson)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Outlier(BaseModel):
    is_outlier: bool
    instance_score: float | None = Field(description="-log p(x) in nats: higher is more unusual")
    threshold: float = Field(description="-tau")


class Prediction(BaseModel):
    label: int | None = Field(None, description="classification: the head's argmax")
    probabilities: list[float] | None = Field(None, description="eq. 10: p(y|x) if accepted, else the label prior p(y)")
    model_probabilities: list[float] | None = Field(None, description="the head's p(y|x)")
    mean: float | None = Field(None, description="regression: predictive mean, or the training targets' mean if rejected")
    variance: float | None = None
    model_mean: float | None = None
    model_variance: float | None = None
    log_px: float | None = Field(description="log p(x) in nats; null outside the model's support")
    bits_per_dim: float | None
    accepted: bool = Field(description="log_px >= threshold")
    threshold: float = Field(description="tau in log p(x) units (nats)")
    outlier: Outlier


class PredictRequest(BaseModel):
    instances: list[Any] = Field(description="inputs of the model's input_shape (a leading channel of 1 optional) or flat")


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model_name: str
    model_version: str


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferTensor]
    outputs: list[dict] | None = Field(None, description="requested outputs by name; default all")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferTensor]


class ErrorResponse(BaseModel):
    error: str
