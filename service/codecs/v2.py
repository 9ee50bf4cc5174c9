"""The Open Inference Protocol (KServe v2) over REST: one input tensor named ``input`` of shape
``[N, *input_shape]``, as JSON data or raw bytes (the binary tensor extension); the outputs of
``ServedVersion.outputs`` (all, or those asked for), each as a JSON tensor or raw bytes."""
from __future__ import annotations

from dataclasses import dataclass

import orjson

from inference.errors import BadInput
from inference.prediction import Prediction
from service.codecs import RestAnswer, RestRequest
from service.dispatch import BatchTest, Decoded
from service.encoding import output_tensors, v2_binary_output, v2_output
from service.inputs import decode_v2_tensor, may_hold_booleans, optional_flag, optional_object, parse_json, split_binary_request
from service.schemas import InferRequest, InferResponse
from service.serving import ServedVersion

INPUT_NAME = "input"


@dataclass(frozen=True)
class Options:
    """What the answer needs of the request: (name, as binary) of each output, and the request id."""

    outputs: list[tuple[str, bool]]
    id: str | None


class V2Codec:
    name = "v2"
    request_model, response_model, binary = InferRequest, InferResponse, True

    def decode(self, request: RestRequest, served: ServedVersion) -> Decoded:
        runtime = served.runtime
        if request.header_length is None:
            body, binary, booleans = parse_json(request.body), b"", may_hold_booleans(request.body)
        else:
            booleans = True  # a JSON header only: any data is in the binary part
            body, binary = split_binary_request(request.body, request.header_length)
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or len(body["inputs"]) != 1 or not isinstance(body["inputs"][0], dict):
            raise BadInput(f'request must hold "inputs": a list with one tensor named {INPUT_NAME!r}')
        tensor = body["inputs"][0]
        if tensor.get("name") != INPUT_NAME:
            raise BadInput(f"unknown input {tensor.get('name')!r}; the model's input is named {INPUT_NAME!r}")
        inputs = decode_v2_tensor(tensor, runtime.input_shape, served.settings.max_instances, binary, runtime.input_range, booleans)
        parameters = optional_object(body.get("parameters"), '"parameters"')
        batch_test = optional_flag(parameters.get("batch_test"), 'parameters "batch_test"')
        all_binary = optional_flag(parameters.get("binary_data_output"), 'parameters "binary_data_output"')
        outputs = requested_outputs(body.get("outputs"), [spec.name for spec in served.outputs], all_binary)
        return Decoded(inputs, batch_test, Options(outputs, None if body.get("id") is None else str(body["id"])))

    def encode(self, decoded: Decoded, prediction: Prediction, served: ServedVersion, batch: BatchTest | None) -> RestAnswer:
        runtime = served.runtime
        specs = {spec.name: spec for spec in served.outputs}
        tensors = output_tensors(prediction, runtime.gate.outlier_threshold)
        outputs, chunks = [], []
        for name, binary in decoded.options.outputs:
            if binary:
                header, data = v2_binary_output(specs[name], tensors[name])
                outputs.append(header)
                chunks.append(data)
            else:
                outputs.append(v2_output(specs[name], tensors[name]))
        response = {"model_name": runtime.name, "model_version": runtime.version, "outputs": outputs}
        if decoded.options.id is not None:
            response["id"] = decoded.options.id
        if batch is not None:
            response["parameters"] = {"batch_p_value": batch.p_value, "batch_is_outlier": batch.is_outlier}
        header = orjson.dumps(response)
        if not chunks:
            return RestAnswer(header)
        return RestAnswer(header + b"".join(chunks), "application/octet-stream", {"Inference-Header-Content-Length": str(len(header))})


def requested_outputs(outputs, available: list[str], all_binary: bool) -> list[tuple[str, bool]]:
    """(name, as binary) of each output to return: those the request lists (``binary_data`` per
    output, default ``all_binary``), else every one."""
    if outputs is None:
        return [(name, all_binary) for name in available]
    if not isinstance(outputs, list) or not all(isinstance(output, dict) for output in outputs):
        raise BadInput('"outputs" must be a list of objects {"name": ..., "parameters": {"binary_data": true}}')
    requested = []
    for output in outputs:
        binary = optional_object(output.get("parameters") or None, 'output "parameters"').get("binary_data")  # empty as absent
        requested.append((output.get("name"), all_binary if binary is None else optional_flag(binary, 'output parameters "binary_data"')))
    unknown = [name for name, _ in requested if name not in available]
    if unknown:
        raise BadInput(f"unknown outputs {unknown}; available: {available}")
    return requested or [(name, all_binary) for name in available]


V2 = V2Codec()
