"""Pydantic models of the request and response bodies: the OpenAPI description of each codec
(``service.codecs``, which decode with ``service.inputs`` and encode with orjson). The fuzz tests
check that every request a codec takes fits its request model and every answer its response model."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Outlier(BaseModel):
    is_outlier: bool = Field(description="instance_score > threshold (= not accepted)")
    instance_score: float | None = Field(
        description="higher is more unusual: -log10 of the combined p-value (conformal gate) or -log p(x) in nats (tau gate); null when infinite"
    )
    threshold: float = Field(description="-log10 alpha (conformal gate) or -tau (tau gate)")


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
    accepted: bool = Field(description="the gate's decision (conformal: p_value >= alpha; tau gate: log_px >= tau)")
    p_value: float = Field(description="combined conformal p-value of the gate's scores (0 outside the support)")
    rejected_by: str | None = Field(description="null if accepted; else the score with the smallest p-value, 'log_px' (tau gate) or 'support'")
    scores: dict[str, float | None] = Field(description="each gate score (models.scores; log_px and level terms in nats)")
    p_values: dict[str, float] = Field(description="each gate score's conformal p-value")
    outlier: Outlier


class PredictRequest(BaseModel):
    instances: list[Any] = Field(min_length=1, description="inputs of the model's input_shape (a leading channel of 1 optional) or flat")
    batch_test: bool | None = Field(False, description="also test the whole request for typicality (mean log p(x) against the calibration split)")


class BatchTest(BaseModel):
    is_outlier: bool = Field(description="p_value < alpha")
    p_value: float = Field(description="two-sided bootstrap p-value of the request's mean log p(x)")
    size: int


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model_name: str
    model_version: str
    batch: BatchTest | None = Field(None, description="present when the request asked for batch_test")


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = Field(None, description="row-major values; absent when the tensor's bytes follow the JSON (binary tensor extension)")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: the length of the tensor's bytes after the JSON")


class InferRequest(BaseModel):
    id: Any = Field(None, description="any JSON value, echoed as a string in the answer")
    inputs: list[InferTensor]
    outputs: list[dict] | None = Field(None, description="requested outputs by name; default all")
    parameters: dict[str, Any] | None = Field(None, description='{"batch_test": true} adds the batch typicality test')


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferTensor]
    parameters: dict[str, Any] | None = Field(None, description="batch_p_value and batch_is_outlier when batch_test was asked")


class ErrorResponse(BaseModel):
    error: str
