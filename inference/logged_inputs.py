"""How a decision record (``service.decision_log``) stores an instance's input, for the service
that writes it and the tools that read it back (``training.decisions``): the instance as the model
saw it, float32 little-endian in C order; its sha256 (hex) always, the bytes themselves (base64)
where the log is configured to keep them."""
from __future__ import annotations

import base64
import hashlib

import numpy as np

DTYPE = "<f4"
HASH_PIECE = 2047  # bytes per hashlib update: under the 2048 at which hashlib lets the GIL go


def as_logged(x: np.ndarray) -> np.ndarray:
    """Instances ``(N, *input_shape)`` in the logged layout (no copy when they are already)."""
    return np.ascontiguousarray(x, dtype=DTYPE)


def digest(instance: np.ndarray) -> str:
    """The sha256 (hex) of one instance in the logged layout."""
    return digests(instance[None])[0]


def digests(x: np.ndarray) -> list[str]:
    """The sha256 (hex) of each instance of ``x`` ``(N, *input_shape)`` in the logged layout. Fed to
    hashlib in pieces of ``HASH_PIECE`` bytes: hashlib lets the GIL go for 2 KiB or more, and a
    thread that takes the GIL back once per instance slows a busy service's other threads (the
    decision log's builder cost about 60 µs more server CPU per request so, bench/decision_log.py)."""
    x = as_logged(x)
    if not x.size:
        return [hashlib.sha256().hexdigest()] * len(x)
    data, step, found = memoryview(x).cast("B"), x[0].nbytes, []
    for start in range(0, len(x) * step, step):
        instance = data[start:start + step]
        hashed = hashlib.sha256(instance[:HASH_PIECE])
        for piece in range(HASH_PIECE, step, HASH_PIECE):
            hashed.update(instance[piece:piece + HASH_PIECE])
        found.append(hashed.hexdigest())
    return found


def encoded(instance: np.ndarray) -> dict:
    """One instance as a record's ``input``: ``{"dtype", "shape", "base64"}``."""
    instance = as_logged(instance)
    return {"dtype": DTYPE, "shape": list(instance.shape), "base64": base64.b64encode(instance.data).decode()}


def decoded(stored: dict) -> np.ndarray:
    """A record's ``input`` back as an array of its shape (float32); ValueError when malformed."""
    if not isinstance(stored, dict) or stored.get("dtype") != DTYPE or not isinstance(stored.get("shape"), list):
        raise ValueError("not a logged input (dtype <f4, shape, base64)")
    return np.frombuffer(base64.b64decode(stored["base64"], validate=True), dtype=DTYPE).reshape(stored["shape"]).astype(np.float32)
