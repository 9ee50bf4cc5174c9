"""The Open Inference Protocol over gRPC: a ``ModelInferRequest`` with one input tensor named
``input`` of shape ``[N, *input_shape]``, its values in ``raw_input_contents`` (little-endian, as
Triton) or in the typed ``contents`` field of its datatype; a ``ModelInferResponse`` with the outputs
of ``ServedVersion.outputs`` (all, or those asked for), with REST's names, datatypes and shapes, in
``raw_output_contents`` (the default, as Triton) or, asked for with ``binary_data: false``, typed
``contents``. Request parameters as over REST: ``batch_test``, ``binary_data_output``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.errors import BadInput
from inference.prediction import Prediction
from service.codecs.v2 import INPUT_NAME, requested_outputs
from service.dispatch import BatchTest, Decoded
from service.encoding import output_tensors, raw_bytes, text_elements
from service.inputs import from_raw, optional_flag, shaped_input, tensor_layout
from service.protos import message
from service.serving import ServedVersion

InferResponse = message("ModelInferResponse")

# The typed contents field of each datatype (FP16 has none: its values go in raw_input_contents).
INPUT_CONTENTS = {
    "FP32": "fp32_contents", "FP64": "fp64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
}
OUTPUT_CONTENTS = {"FP64": "fp64_contents", "INT64": "int64_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}


def parameters(entries) -> dict:
    """A protocol ``parameters`` map as a dict of plain values (an entry with no value set: None)."""
    return {key: _value(value) for key, value in entries.items()}


def _value(parameter):
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


@dataclass(frozen=True)
class Options:
    """The outputs to answer with, in order, whether they go raw, and the request id."""

    outputs: list[str]
    raw: bool
    id: str


class GrpcCodec:
    name = "grpc"

    def decode(self, request, served: ServedVersion) -> Decoded:
        runtime = served.runtime
        if len(request.inputs) != 1:
            raise BadInput(f"request must hold one input tensor named {INPUT_NAME!r}, not {len(request.inputs)}")
        tensor = request.inputs[0]
        if tensor.name != INPUT_NAME:
            raise BadInput(f"unknown input {tensor.name!r}; the model's input is named {INPUT_NAME!r}")
        datatype, shape = tensor_layout(tensor.datatype, list(tensor.shape), served.settings.max_instances)
        typed = [field.name for field, _ in tensor.contents.ListFields()]
        if request.raw_input_contents:
            if typed:
                raise BadInput(f"input has both raw_input_contents and contents.{typed[0]}; send its values in one of them")
            if len(request.raw_input_contents) != 1:
                raise BadInput(f"raw_input_contents holds {len(request.raw_input_contents)} entries; the model has one input")
            data = from_raw(request.raw_input_contents[0], datatype, shape)
        else:
            field = INPUT_CONTENTS.get(datatype)
            if field is None:
                raise BadInput(f"{datatype} values have no typed contents field; send them in raw_input_contents")
            if any(name != field for name in typed):
                raise BadInput(f"{datatype} values go in contents.{field}, not contents.{next(name for name in typed if name != field)}")
            data = np.asarray(getattr(tensor.contents, field), dtype=np.float64)
        inputs = shaped_input(data, shape, runtime.input_shape, runtime.input_range)
        options = parameters(request.parameters)
        batch_test = optional_flag(options.get("batch_test"), 'parameters "batch_test"')
        all_raw = options.get("binary_data_output")
        all_raw = True if all_raw is None else optional_flag(all_raw, 'parameters "binary_data_output"')
        asked = [{"name": output.name, "parameters": parameters(output.parameters)} for output in request.outputs]
        outputs = requested_outputs(asked or None, [spec.name for spec in served.outputs], all_raw)
        if len({raw for _, raw in outputs}) > 1:
            raise BadInput("outputs are either all raw (raw_output_contents) or all typed (contents): set binary_data alike on every output")
        return Decoded(inputs, batch_test, Options([name for name, _ in outputs], outputs[0][1], request.id))

    def encode(self, decoded: Decoded, prediction: Prediction, served: ServedVersion, batch: BatchTest | None):
        options: Options = decoded.options
        specs = {spec.name: spec for spec in served.outputs}
        tensors = output_tensors(prediction, served.runtime.gate.outlier_threshold)
        response = InferResponse(model_name=served.name, model_version=served.version, id=options.id)
        for name in options.outputs:
            spec, array = specs[name], tensors[name]
            output = response.outputs.add(name=name, datatype=spec.datatype, shape=array.shape)
            if not options.raw:
                flat = array.reshape(-1)
                values = [item.encode() for item in text_elements(flat)] if spec.datatype == "BYTES" else flat.tolist()
                getattr(output.contents, OUTPUT_CONTENTS[spec.datatype]).extend(values)
        if options.raw:
            response.raw_output_contents.extend([raw_bytes(specs[name], tensors[name]) for name in options.outputs])
        if batch is not None:
            response.parameters["batch_p_value"].double_param = batch.p_value
            response.parameters["batch_is_outlier"].bool_param = batch.is_outlier
        return response


GRPC = GrpcCodec()
