"""KServe v1: ``{"instances": [...], "batch_test": false}`` in, ``{"predictions": [...],
"model_name", "model_version", "batch"?}`` out, as JSON."""
from __future__ import annotations

import orjson

from inference.prediction import Prediction
from service.codecs import RestAnswer, RestRequest
from service.dispatch import BatchTest, Decoded
from service.encoding import instance_records
from service.inputs import decode_v1, may_hold_booleans, optional_flag, parse_json
from service.schemas import PredictRequest, PredictResponse
from service.serving import ServedVersion


class V1Codec:
    name = "v1"
    request_model, response_model, binary = PredictRequest, PredictResponse, False

    def decode(self, request: RestRequest, served: ServedVersion) -> Decoded:
        runtime = served.runtime
        body = parse_json(request.body)
        inputs = decode_v1(body, runtime.input_shape, served.settings.max_instances, runtime.input_range, may_hold_booleans(request.body))
        return Decoded(inputs, optional_flag(body.get("batch_test"), '"batch_test"'))

    def encode(self, decoded: Decoded, prediction: Prediction, served: ServedVersion, batch: BatchTest | None) -> RestAnswer:
        runtime = served.runtime
        response = {
            "predictions": instance_records(prediction, runtime.gate.outlier_threshold),
            "model_name": runtime.name,
            "model_version": runtime.version,
        }
        if batch is not None:
            response["batch"] = {"is_outlier": batch.is_outlier, "p_value": batch.p_value, "size": batch.size}
        return RestAnswer(orjson.dumps(response))


V1 = V1Codec()
