"""The one path of every inference call, whatever its protocol: look up the model version, read the
request, decode it with the protocol's codec, run it through the version's batcher, hand the
prediction to the decision log (``service.decision_log``), encode the answer. A protocol is a codec
(``service.codecs``) and a server that calls ``dispatch``; REST's routes and its fast path
(``service.api.common.serve_http``) both do. Errors are the domain's
(``inference.errors``); each server maps them to its statuses (``service.status``)."""
from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, TypeVar

from inference.errors import BadInput
from inference.inputs import InferenceInput
from inference.prediction import Prediction

if TYPE_CHECKING:
    from service.decision_log import DecisionLog
    from service.loader import ModelLoader
    from service.loop_lag import LoopLag
    from service.serving import ServedVersion

REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # visible ASCII
Request = TypeVar("Request")
Answer = TypeVar("Answer")


@dataclass
class ServedBy:
    """The model and version that answered a call (empty until the lookup): what the request metrics
    are labelled with. Made by the server for each call and handed to ``dispatch``."""

    model: str = ""
    version: str = ""

    def record(self, served: ServedVersion) -> None:
        self.model, self.version = served.name, served.version


def request_id(presented: str | None) -> str:
    """A call's id: the client's (REST's ``X-Request-ID`` header, gRPC's ``x-request-id`` metadata),
    which must be 1-128 visible ASCII characters, or a new one (32 hex digits) without it."""
    if presented is None:
        return uuid.uuid4().hex
    if REQUEST_ID.fullmatch(presented) is None:
        raise BadInput("X-Request-ID must be 1 to 128 visible ASCII characters (no spaces)")
    return presented


@dataclass(frozen=True)
class BatchTest:
    """The typicality test of a whole request (``Gate.batch_test`` on its log p(x))."""

    p_value: float
    is_outlier: bool
    size: int


@dataclass(frozen=True)
class Decoded:
    """A decoded request: the model's input, whether the batch test is asked for, and what else the
    codec needs to encode the answer (``options``: its own type)."""

    inputs: InferenceInput
    batch_test: bool = False
    options: Any = None


class Codec(Protocol[Request, Answer]):
    """A protocol's two translations: its request to a ``Decoded``, a ``Prediction`` to its answer.
    Both run while the version is held (``ServedVersion.use``); both raise only ``BadInput``."""

    name: str  # the protocol, e.g. "v1"

    def decode(self, request: Request, served: ServedVersion) -> Decoded: ...

    def encode(self, decoded: Decoded, prediction: Prediction, served: ServedVersion, batch: BatchTest | None) -> Answer: ...


async def dispatch(
    models: ModelLoader,
    codec: Codec[Request, Answer],
    name: str,
    version: str | None,
    read: Callable[[], Awaitable[Request]],
    served_by: ServedBy,
    client_gone: Callable[[], Awaitable[None]] | None = None,
    decisions: DecisionLog | None = None,
    call_id: str = "",
    loop_lag: LoopLag | None = None,
) -> Answer:
    """The answer of ``codec`` to one call of model ``name`` (its default version when ``version`` is
    None). ``read``: the request, read once the version is known (a missing model is reported before
    a malformed body); ``served_by``: filled with the version that answers; ``client_gone``: returns
    when the caller has left (its queued work is then dropped, ``ServedVersion.predict``);
    ``decisions``: the decision log that gets the prediction, under ``call_id`` (``request_id``);
    ``loop_lag``: how far behind the event loop is, the wait the call has most likely had already:
    an overloaded version refuses the call before it is read (``ServedVersion.admit``)."""
    started = time.perf_counter()
    served = models.lookup(name, version)
    served_by.record(served)
    waited_s = loop_lag.seconds if loop_lag is not None else 0.0
    served.admit(waited_s)
    with served.use():
        decoded = codec.decode(await read(), served)
        prediction = await served.predict(decoded.inputs, client_gone, waited_s)
        if decisions is not None:
            decisions.served(call_id, served.name, served.version, codec.name, time.perf_counter() - started, decoded.inputs.x, prediction)
        batch = None
        if decoded.batch_test:
            p_value, is_outlier = served.runtime.gate.batch_test(prediction.log_px)
            batch = BatchTest(p_value, is_outlier, len(decoded.inputs))
        return codec.encode(decoded, prediction, served, batch)
