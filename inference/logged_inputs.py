"""How a decision record (``service.decision_log``) stores an instance's input, for the service
that writes it and the tools that read it back (``training.decisions``): the instance as the model
saw it, float32 little-endian in C order; its sha256 (hex) always, the bytes themselves (base64)
where the log is configured to keep them."""
from __future__ import annotations

import base64
import hashlib

import numpy as np

DTYPE = "<f4"


def as_logged(x: np.ndarray) -> np.ndarray:
    """Instances ``(N, *input_shape)`` in the logged layout (no copy when they are already)."""
    return np.ascontiguousarray(x, dtype=DTYPE)


def digest(instance: np.ndarray) -> str:
    """The sha256 (hex) of one instance in the logged layout."""
    return hashlib.sha256(as_logged(instance).data).hexdigest()


def encoded(instance: np.ndarray) -> dict:
    """One instance as a record's ``input``: ``{"dtype", "shape", "base64"}``."""
    instance = as_logged(instance)
    return {"dtype": DTYPE, "shape": list(instance.shape), "base64": base64.b64encode(instance.data).decode()}


def decoded(stored: dict) -> np.ndarray:
    """A record's ``input`` back as an array of its shape (float32); ValueError when malformed."""
    if not isinstance(stored, dict) or stored.get("dtype") != DTYPE or not isinstance(stored.get("shape"), list):
        raise ValueError("not a logged input (dtype <f4, shape, base64)")
    return np.frombuffer(base64.b64decode(stored["base64"], validate=True), dtype=DTYPE).reshape(stored["shape"]).astype(np.float32)
