"""The gRPC protocol's messages (``inference.proto``: the Open Inference Protocol and the Triton
extensions this service serves), from the descriptor set ``make protos`` compiles it into.

They live in a descriptor pool of their own, not protobuf's default one: the kserve SDK and
tritonclient.grpc register the same ``inference.*`` names there from their own files, and a second
registration of a name in one pool fails, so the default pool would keep the service from sharing a
process with either client (tests, benchmarks, a pipeline that embeds it)."""
from __future__ import annotations

from functools import cache
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO = Path(__file__).with_name("inference.proto")
DESCRIPTOR_SET = Path(__file__).with_name("inference.binpb")
SERVICE = "inference.GRPCInferenceService"

POOL = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file:
    POOL.Add(_file)


@cache
def message(name: str) -> type:
    """The message class of ``inference.<name>`` (nested types with dots: ``ModelInferResponse.InferOutputTensor``)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{name}"))


def add_file(serialized: bytes) -> None:
    """Add another file's descriptor (health, reflection), so that reflection can describe it too."""
    POOL.AddSerializedFile(serialized)
