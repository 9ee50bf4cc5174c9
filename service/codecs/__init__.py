"""Protocol codecs over the one dispatch (``service.dispatch``): KServe v1 (``v1``) and the Open
Inference Protocol (``v2``) over REST. Each turns its request into the model's input and a
``Prediction`` into its answer; the REST codecs read a ``RestRequest`` and answer ``RestAnswer``."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RestRequest:
    """A REST inference request's body and what of its headers a codec reads (the binary tensor
    extension's ``Inference-Header-Content-Length``; None when absent)."""

    body: bytes
    header_length: str | None = None


@dataclass(frozen=True)
class RestAnswer:
    """A REST answer's body, media type and extra headers."""

    body: bytes
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
