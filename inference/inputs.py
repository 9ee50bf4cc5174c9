"""What the model takes: ``InferenceInput``, a batch of instances checked against the model's input
shape and range. Protocol decoders (``service.inputs``) build one with ``InferenceInput.checked``; a
problem is a ``BadInput`` whose message says what is wrong."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from inference.errors import BadInput


@dataclass(frozen=True)
class InferenceInput:
    """``x`` ``(N, *input_shape)`` float32 in data units (pixel levels for images)."""

    x: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    @classmethod
    def checked(
        cls, array: np.ndarray, input_shape: tuple[int, ...], input_range: tuple[float, float] | None = None, what: str = "instances"
    ) -> "InferenceInput":
        """``(N, ...)`` to ``(N, *input_shape)`` float32, accepting the input shape itself, a leading
        channel of 1, or a flat vector of the right length; values must be finite, and inside
        ``input_range`` (the model's declared [low, high]) when there is one. ``what`` names the
        instances in the messages."""
        size = math.prod(input_shape)
        allowed = {tuple(input_shape), (1, *input_shape), (size,)}
        if array.ndim < 2 or tuple(array.shape[1:]) not in allowed:
            shown = list(array.shape[1:]) if array.ndim >= 1 else []
            raise BadInput(
                f"{what}: each instance must have shape {list(input_shape)}, [1, {', '.join(map(str, input_shape))}] "
                f"or [{size}], got {shown}"
            )
        if not np.isfinite(array).all():
            raise BadInput(f"{what}: values must be finite numbers (found NaN or infinity)")
        if input_range is not None and array.size:
            low, high = input_range
            smallest, largest = float(array.min()), float(array.max())
            if smallest < low or largest > high:
                found = smallest if smallest < low else largest
                raise BadInput(f"{what}: values must lie in the model's input range [{low:g}, {high:g}]; found {found:.6g}")
        return cls(array.reshape(len(array), *input_shape).astype(np.float32))

    @classmethod
    def concatenate(cls, parts: list["InferenceInput"]) -> "InferenceInput":
        """The parts' instances in order (one part is returned as it is, without a copy)."""
        return parts[0] if len(parts) == 1 else cls(np.concatenate([part.x for part in parts]))
