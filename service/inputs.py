"""Decoding request bodies into model inputs. Every problem is an ``InputError`` with the HTTP
status to answer and a message that says what is wrong; nothing here raises anything else."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson


class InputError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_json(body: bytes) -> Any:
    """orjson on the hot path; the standard parser only to name NaN / Infinity tokens."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"request body is not valid JSON: {error}") from None
    raise InputError("request body holds NaN or Infinity, which are not valid inputs")


def to_array(values: Any, what: str) -> np.ndarray:
    """Nested lists of numbers to a float64 array; ragged or non-numeric values are an error."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(f"{what} must be numbers in nested lists of equal lengths") from None
    if array.dtype == object:
        raise InputError(f"{what} must be numbers in nested lists of equal lengths")
    return array


def conform(array: np.ndarray, input_shape: tuple[int, ...], what: str) -> np.ndarray:
    """``(N, ...)`` to ``(N, *input_shape)`` float32, accepting the input shape itself, a leading
    channel of 1, or a flat vector of the right length; values must be finite."""
    size = math.prod(input_shape)
    allowed = {tuple(input_shape), (1, *input_shape), (size,)}
    if array.ndim < 2 or tuple(array.shape[1:]) not in allowed:
        shown = list(array.shape[1:]) if array.ndim >= 1 else []
        raise InputError(
            f"{what}: each instance must have shape {list(input_shape)}, [1, {', '.join(map(str, input_shape))}] "
            f"or [{size}], got {shown}"
        )
    if not np.isfinite(array).all():
        raise InputError(f"{what}: values must be finite numbers (found NaN or infinity)")
    return array.reshape(len(array), *input_shape).astype(np.float32)


def check_count(count: int, limit: int) -> None:
    if count == 0:
        raise InputError("no instances in the request")
    if count > limit:
        raise InputError(f"{count} instances in one request, the limit is {limit}; split the request", status=413)


def decode_v1(body: Any, input_shape: tuple[int, ...], limit: int) -> np.ndarray:
    """``{"instances": [x, ...]}`` to ``(N, *input_shape)`` float32."""
    if not isinstance(body, dict) or "instances" not in body:
        raise InputError('request body must be a JSON object {"instances": [...]}')
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InputError('"instances" must be a list of inputs')
    check_count(len(instances), limit)
    return conform(to_array(instances, "instances"), input_shape, "instances")


def batch_test_flag(value: Any, what: str) -> bool:
    """The optional request flag that asks for the batch typicality test: absent, true or false."""
    if value is None or isinstance(value, bool):
        return bool(value)
    raise InputError(f"{what} must be true or false")


# Open Inference Protocol datatypes and their little-endian layouts (binary tensor extension).
V2_DTYPES = {
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
}


def split_binary_request(body: bytes, header_length: str) -> tuple[Any, bytes]:
    """The binary tensor extension: a JSON header of ``header_length`` bytes, then raw tensor data."""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise InputError(f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes")
    size = int(header_length)
    return parse_json(body[:size]), body[size:]


def decode_v2_tensor(tensor: dict, input_shape: tuple[int, ...], limit: int, binary: bytes = b"") -> np.ndarray:
    """An Open Inference Protocol input tensor to ``(N, *input_shape)``: ``{name, shape, datatype,
    data}`` with JSON data, or with ``parameters.binary_data_size`` and the raw little-endian bytes
    in ``binary`` (the binary tensor extension)."""
    datatype = str(tensor.get("datatype", "")).upper()
    if datatype not in V2_DTYPES:
        raise InputError(f"input datatype {datatype or 'missing'!r} is not supported; use one of {sorted(V2_DTYPES)}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InputError('input "shape" must be a list of non-negative integers [N, ...]')
    check_count(shape[0], limit)
    binary_size = (tensor.get("parameters") or {}).get("binary_data_size")
    if binary_size is not None:
        if not isinstance(binary_size, int) or binary_size != len(binary):
            raise InputError(f"binary_data_size {binary_size!r} does not match the {len(binary)} bytes after the JSON header")
        dtype = np.dtype(V2_DTYPES[datatype])
        if len(binary) != math.prod(shape) * dtype.itemsize:
            raise InputError(f"{len(binary)} bytes of {datatype} cannot fill shape {shape} ({math.prod(shape) * dtype.itemsize} bytes)")
        data = np.frombuffer(binary, dtype=dtype).astype(np.float64)
    else:
        data = to_array(tensor.get("data"), "input data")
    if data.size != math.prod(shape):
        raise InputError(f"input data holds {data.size} values, shape {shape} needs {math.prod(shape)}")
    return conform(data.reshape(shape), input_shape, "input")
