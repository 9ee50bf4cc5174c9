"""Protocol codecs over the one dispatch (``service.dispatch``): KServe v1 (``v1``) and the Open
Inference Protocol (``v2``) over REST. Each turns its request into the model's input and a
``Prediction`` into its answer; the REST codecs read a ``RestRequest`` and answer ``RestAnswer``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel

from service.dispatch import Codec


@dataclass(frozen=True)
class RestRequest:
    """A REST inference request's body and what of its headers a codec reads (the binary tensor
    extension's ``Inference-Header-Content-Length``; None when absent)."""

    body: bytes
    header_length: str | None = None


class RestCodec(Codec, Protocol):
    """A codec served over REST: its pydantic models describe its bodies in OpenAPI (and the tests
    check the codec against them); ``binary``: it also speaks the binary tensor extension."""

    request_model: type[BaseModel]
    response_model: type[BaseModel]
    binary: bool


@dataclass(frozen=True)
class RestAnswer:
    """A REST answer's body, media type and extra headers."""

    body: bytes
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
