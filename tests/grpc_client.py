"""tritonclient.grpc against a live service, in a process of its own: tritonclient registers the
protocol's ``inference.*`` messages in protobuf's default pool, which the kserve SDK (imported by
other tests) also fills with its own file of the same names, so the two cannot share the test process.

``python -m tests.grpc_client protocol``: each message of the service's protocol
(``service/protos``) field by field against tritonclient's published descriptors.
``python -m tests.grpc_client calls ADDRESS INPUTS.npy USER_KEY ADMIN_KEY``: every call tritonclient
makes, its answers as JSON on stdout (``tests/test_grpc.py`` compares them with REST's)."""
from __future__ import annotations

import json
import sys

import numpy as np


def protocol() -> dict:
    """{message: differences} between the service's messages and tritonclient's (empty: none)."""
    from tritonclient.grpc import model_config_pb2, service_pb2

    from service.protos import POOL

    def fields(descriptor) -> dict:
        return {f.name: (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None) for f in descriptor.fields}

    differences, checked = {}, []

    def compare(ours) -> None:
        theirs = service_pb2.DESCRIPTOR.message_types_by_name.get(ours.name) or model_config_pb2.DESCRIPTOR.message_types_by_name.get(ours.name)
        if ours.containing_type is not None:
            parent = service_pb2.DESCRIPTOR.message_types_by_name.get(ours.containing_type.name)
            theirs = parent.nested_types_by_name.get(ours.name) if parent else None
        checked.append(ours.full_name)
        if theirs is None:
            differences[ours.full_name] = "not in the published protocol"
            return
        mine, published = fields(ours), fields(theirs)
        wrong = {name: (value, published.get(name)) for name, value in mine.items() if published.get(name) != value}
        if wrong:
            differences[ours.full_name] = wrong
        for nested in ours.nested_types:
            if not nested.GetOptions().map_entry:
                compare(nested)

    file = POOL.FindFileByName("inference.proto")
    for descriptor in file.message_types_by_name.values():
        compare(descriptor)
    service = file.services_by_name["GRPCInferenceService"]
    published = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        other = published.methods_by_name.get(method.name)
        if other is None or (other.input_type.name, other.output_type.name) != (method.input_type.name, method.output_type.name):
            differences[method.full_name] = "not as published"
    enum = file.enum_types_by_name["DataType"]
    if {v.name: v.number for v in enum.values} != {v.name: v.number for v in model_config_pb2.DESCRIPTOR.enum_types_by_name["DataType"].values}:
        differences["DataType"] = "not as published"
    return {"checked": checked, "differences": differences}


def calls(address: str, inputs_file: str, user_key: str, admin_key: str) -> dict:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(address)
    user, admin = {"authorization": f"Bearer {user_key}"}, {"x-api-key": admin_key}
    x = np.load(inputs_file)
    out: dict = {
        "live": client.is_server_live(), "ready": client.is_server_ready(),
        "model_ready": {version: client.is_model_ready("tiny", version, headers=user) for version in ("", "1", "2", "9")},
        "unknown_ready": client.is_model_ready("nope", headers=user),
        "server_metadata": client.get_server_metadata(headers=user, as_json=True),
        "metadata": {version: client.get_model_metadata("tiny", version, headers=user, as_json=True) for version in ("1", "2")},
        "config": client.get_model_config("tiny", headers=user, as_json=True),
    }
    described = [output["name"] for output in out["metadata"]["2"]["outputs"]]
    answers = {}
    for size in (1, 3, 17):
        tensor = grpcclient.InferInput("input", [size, *x.shape[1:]], "FP32")
        tensor.set_data_from_numpy(x[:size])
        result = client.infer("tiny", [tensor], model_version="1", request_id=f"r{size}", headers=user)
        answers[size] = {
            "id": result.get_response().id,
            "outputs": {name: {"datatype": result.get_output(name).datatype, "shape": list(result.get_output(name).shape), "data": _listed(result.as_numpy(name))} for name in described},
        }
    out["infer"] = answers
    chosen = client.infer("tiny", [tensor], outputs=[grpcclient.InferRequestedOutput("log_px"), grpcclient.InferRequestedOutput("accepted")], headers=user)
    out["chosen_outputs"] = [output.name for output in chosen.get_response().outputs]
    out["statistics"] = client.get_inference_statistics("tiny", "1", headers=user, as_json=True)
    out["index"] = client.get_model_repository_index(headers=admin, as_json=True)
    client.unload_model("tiny", headers=admin)
    out["after_unload"] = {"ready": client.is_model_ready("tiny", headers=user), "index": client.get_model_repository_index(headers=admin, as_json=True)}
    client.load_model("tiny", headers=admin)
    out["after_load"] = client.is_model_ready("tiny", "2", headers=user)
    out["errors"] = {}
    attempts = {
        "unknown_model": lambda: client.infer("nope", [tensor], headers=user),
        "no_key": lambda: client.get_model_metadata("tiny"),
        "wrong_key": lambda: client.get_model_metadata("tiny", headers={"authorization": "Bearer nope"}),
        "user_key_on_load": lambda: client.load_model("tiny", headers=user),
        "load_with_config": lambda: client.load_model("tiny", config="{}", headers=admin),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            out["errors"][name] = None
        except InferenceServerException as error:
            out["errors"][name] = {"status": error.status(), "message": error.message()}
    return out


def _listed(array: np.ndarray) -> list:
    if array.dtype == object:
        return [item.decode() for item in array.ravel()]
    return array.ravel().tolist()


if __name__ == "__main__":
    answer = protocol() if sys.argv[1] == "protocol" else calls(*sys.argv[2:6])
    json.dump(answer, sys.stdout)
