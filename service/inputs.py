"""Decoding request bodies into model inputs (``inference.inputs.InferenceInput``), the pieces the
protocol codecs (``service.codecs``) are made of. Every problem is a ``BadInput`` (``TooLarge`` for
too many instances) whose message says what is wrong; nothing here raises anything else."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

from inference.errors import BadInput, TooLarge
from inference.inputs import InferenceInput


def _refuse_constant(token: str) -> None:
    raise BadInput(f"request body holds {token}, which is not a valid input (JSON has no NaN or Infinity)")


def parse_json(body: bytes) -> Any:
    """UTF-8 JSON. orjson on the hot path; what it refuses, the standard parser tells apart: NaN /
    Infinity tokens, nesting deeper than orjson's 1024 levels, integers beyond 64 bits (parsed, and
    then out of any input range), and invalid JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInput(f"request body is not UTF-8 text (byte {error.start}); send UTF-8 JSON") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadInput("request body is nested too deeply") from None
    except json.JSONDecodeError as error:
        raise BadInput(f"request body is not valid JSON: {error}") from None
    except BadInput:
        raise
    except ValueError as error:  # e.g. an integer literal past Python's digit limit
        raise BadInput(f"request body holds a number that cannot be read: {str(error).splitlines()[0][:120]}") from None


def may_hold_booleans(body: bytes) -> bool:
    """Whether a JSON text may hold a true / false anywhere: a byte search, much cheaper than walking
    the parsed lists (``to_array``), which only bodies that pass it need."""
    return b"true" in body or b"false" in body


def _holds_booleans(values: Any) -> bool:
    """Whether nested lists hold a JSON true / false (numpy would count them as 1 / 0)."""
    stack = [values]
    while stack:
        item = stack.pop()
        if isinstance(item, list) and item:
            if isinstance(item[0], list):
                stack.extend(item)
            elif bool in set(map(type, item)):
                return True
    return False


def to_array(values: Any, what: str, booleans: bool = True) -> np.ndarray:
    """Nested lists of numbers to a float64 array. Ragged lists, strings, true / false, null and
    integers beyond 64 bits are an error (numpy would read "7" as 7 and true as 1). ``booleans``:
    False when the JSON text held no true / false at all (``may_hold_booleans``), which skips the
    search for them."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        array = np.empty(0, dtype=object)
    kind = array.dtype.kind
    if kind in "US":
        raise BadInput(f"{what} must be numbers, not strings")
    if kind == "b" or (booleans and kind in "iuf" and _holds_booleans(values)):
        raise BadInput(f"{what} must be numbers, not true / false")
    if kind not in "iuf":
        raise BadInput(f"{what} must be numbers (at most 64-bit) in nested lists of equal lengths")
    return array.astype(np.float64)


def check_count(count: int, limit: int) -> None:
    if count == 0:
        raise BadInput("no instances in the request")
    if count > limit:
        raise TooLarge(f"{count} instances in one request, the limit is {limit}; split the request")


def decode_v1(
    body: Any, input_shape: tuple[int, ...], limit: int, input_range: tuple[float, float] | None = None, booleans: bool = True
) -> InferenceInput:
    """``{"instances": [x, ...]}`` to the model's input (``InferenceInput.checked``); ``booleans`` as in ``to_array``."""
    if not isinstance(body, dict) or "instances" not in body:
        raise BadInput('request body must be a JSON object {"instances": [...]}')
    instances = body["instances"]
    if not isinstance(instances, list):
        raise BadInput('"instances" must be a list of inputs')
    check_count(len(instances), limit)
    return InferenceInput.checked(to_array(instances, "instances", booleans), input_shape, input_range, "instances")


def optional_flag(value: Any, what: str) -> bool:
    """An optional boolean of a request (e.g. ``batch_test``, ``binary_data``): absent (False), true or false."""
    if value is None or isinstance(value, bool):
        return bool(value)
    raise BadInput(f"{what} must be true or false")


def optional_object(value: Any, what: str) -> dict:
    """An optional JSON object of a request (e.g. ``parameters``): absent ({}) or an object."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput(f"{what} must be an object")
    return value


def check_load_parameters(names) -> None:
    """A model repository load or unload takes no parameters but ``unload_dependents`` (ignored:
    versions are loaded from the repository's folders as they are)."""
    unsupported = sorted(set(names) - {"unload_dependents"})
    if unsupported:
        raise BadInput(f"parameters {unsupported} are not supported: versions are loaded from the repository's folders as they are")


# Open Inference Protocol datatypes and their little-endian layouts (binary tensor extension).
V2_DTYPES = {
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
}


def split_binary_request(body: bytes, header_length: str) -> tuple[Any, bytes]:
    """The binary tensor extension: a JSON header of ``header_length`` bytes, then raw tensor data."""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise BadInput(f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes")
    size = int(header_length)
    return parse_json(body[:size]), body[size:]


def tensor_layout(datatype: str, shape: Any, limit: int) -> tuple[str, list[int]]:
    """An Open Inference Protocol input tensor's datatype (one of ``V2_DTYPES``, upper case) and
    shape ``[N, ...]``, checked, with N within ``limit`` instances."""
    datatype = str(datatype).upper()
    if datatype not in V2_DTYPES:
        raise BadInput(f"input datatype {datatype or 'missing'!r} is not supported; use one of {sorted(V2_DTYPES)}")
    if not isinstance(shape, list) or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise BadInput('input "shape" must be a list of non-negative integers [N, ...]')
    check_count(shape[0], limit)
    return datatype, shape


def from_raw(raw: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    """A tensor's raw little-endian bytes (binary tensor extension, gRPC raw contents) as float64."""
    dtype = np.dtype(V2_DTYPES[datatype])
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise BadInput(f"{len(raw)} bytes of {datatype} cannot fill shape {shape} ({math.prod(shape) * dtype.itemsize} bytes)")
    return np.frombuffer(raw, dtype=dtype).astype(np.float64)


def shaped_input(data: np.ndarray, shape: list[int], input_shape: tuple[int, ...], input_range: tuple[float, float] | None) -> InferenceInput:
    """A tensor's values in the shape it declares, as the model's input (``InferenceInput.checked``)."""
    if data.size != math.prod(shape):
        raise BadInput(f"input data holds {data.size} values, shape {shape} needs {math.prod(shape)}")
    return InferenceInput.checked(data.reshape(shape), input_shape, input_range, "input")


def decode_v2_tensor(
    tensor: dict, input_shape: tuple[int, ...], limit: int, binary: bytes = b"", input_range: tuple[float, float] | None = None,
    booleans: bool = True,
) -> InferenceInput:
    """An Open Inference Protocol input tensor over REST to the model's input: ``{name, shape,
    datatype, data}`` with JSON data, or with ``parameters.binary_data_size`` and the raw
    little-endian bytes in ``binary`` (the binary tensor extension); ``booleans`` as in ``to_array``."""
    datatype, shape = tensor_layout(tensor.get("datatype", ""), tensor.get("shape"), limit)
    binary_size = optional_object(tensor.get("parameters"), 'input "parameters"').get("binary_data_size")
    if binary_size is not None:
        if type(binary_size) is not int or binary_size != len(binary):
            raise BadInput(f"binary_data_size {binary_size!r} does not match the {len(binary)} bytes after the JSON header")
        data = from_raw(binary, datatype, shape)
    else:
        data = to_array(tensor.get("data"), "input data", booleans)
    return shaped_input(data, shape, input_shape, input_range)
