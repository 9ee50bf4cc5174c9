"""The decision log (``service.decision_log``): records equal the answers, sampling and inputs as
configured, rotation and retention, drops counted, never a wait in serving, everything queued
written at shutdown."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from inference.logged_inputs import digests
from models.checkpoint import load_checkpoint
from service.app import create_app
from service.decision_log import AnsweredRequest, DecisionLog, JsonLinesSink, records
from service.settings import ServiceSettings
from tests.agreement import held_out_digits
from tests.conftest import wait_for, wait_ready
from tests.test_deploy import referenced_metrics
from tests.test_service import metric
from training.cli import main as training_main
from training.config import load_config
from training.data import DataError, load_dataset, split_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
BLANK = [[0.0] * 8] * 8  # rejected by the tiny model's gate


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("decisions") / "tiny"
    assert training_main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet"]) == 0
    return out


def serve(checkpoint: Path, folder: Path, **options) -> TestClient:
    settings = ServiceSettings(**{"model_dir": checkpoint, "device": "cpu", "grpc_port": 0, "decision_log_dir": folder, **options})
    client = TestClient(create_app(settings))
    client.__enter__()
    wait_ready(client)
    return client


def logged(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("decisions*.jsonl")) for line in path.read_text().splitlines()]


def written(client: TestClient, count: int) -> None:
    wait_for(lambda: metric(client, "diglm_decision_log_records_total", sink="jsonl") >= count, f"{count} decision records")


def test_each_record_equals_the_answer_it_logs(checkpoint, tmp_path):
    digits = held_out_digits(6)[0].tolist()
    client = serve(checkpoint, tmp_path, decision_log_inputs="rejected")
    try:
        v1 = client.post("/v1/models/tiny:predict", json={"instances": [*digits, BLANK]}, headers={"x-request-id": "batch-7"})
        assert v1.status_code == 200 and v1.headers["x-request-id"] == "batch-7"
        v2 = client.post("/v2/models/tiny/infer", json={"inputs": [{"name": "input", "shape": [1, 8, 8], "datatype": "FP32", "data": np.ravel(BLANK).tolist()}]})
        generated = v2.headers["x-request-id"]
        assert len(generated) == 32 and generated != "batch-7"
        assert client.post("/v1/models/tiny:predict", json={"instances": digits[:1]}, headers={"x-request-id": "has space"}).status_code == 400
        written(client, 8)
        exported = {re.split(r"[{ ]", line, 1)[0] for line in client.get("/metrics").text.splitlines() if line.startswith("diglm_decision_log_")}
        queried = {name for name in referenced_metrics() if name.startswith("diglm_decision_log_")}  # by the alert rules
        assert queried and queried <= exported, queried - exported
    finally:
        client.__exit__(None, None, None)
    records = logged(tmp_path)
    assert len(records) == 8 and all(set(record) >= {"time", "model", "version", "latency_ms"} for record in records)
    by_request = {(record["request_id"], record["instance"]): record for record in records}
    for i, (answer, sent) in enumerate(zip(v1.json()["predictions"], [*digits, BLANK])):
        record = by_request["batch-7", i]
        assert (record["protocol"], record["model"], record["decision"]) == ("v1", "tiny", "accept" if answer["accepted"] else "reject")
        assert (record["p_value"], record["reason"], record["log_px"], record["label"]) == (answer["p_value"], answer["rejected_by"], answer["log_px"], answer["label"])
        assert record["probability"] == max(answer["model_probabilities"])
        assert record["scores"] == {name: {"value": answer["scores"][name], "p_value": answer["p_values"][name]} for name in answer["scores"]}
        x = np.asarray(sent, dtype="<f4")
        assert record["input_sha256"] == hashlib.sha256(x.tobytes()).hexdigest()
        if answer["accepted"]:
            assert "input" not in record
        else:
            stored = record["input"]
            assert np.array_equal(np.frombuffer(base64.b64decode(stored["base64"]), dtype=stored["dtype"]).reshape(stored["shape"]), x)
    assert not v1.json()["predictions"][-1]["accepted"]
    blank = by_request[generated, 0]
    outputs = {output["name"]: output["data"] for output in v2.json()["outputs"]}
    assert (blank["protocol"], blank["decision"], blank["p_value"], blank["reason"]) == ("v2", "reject", outputs["p_value"][0], outputs["rejected_by"][0])


def test_accepted_instances_are_sampled_and_rejected_ones_kept(checkpoint, tmp_path):
    digits = held_out_digits(6)[0].tolist()
    client = serve(checkpoint, tmp_path, decision_log_sample=0.0)
    try:
        answers = client.post("/v1/models/tiny:predict", json={"instances": [*digits, BLANK, BLANK]}).json()["predictions"]
        rejected = sum(not answer["accepted"] for answer in answers)
        written(client, rejected)
    finally:
        client.__exit__(None, None, None)
    records = logged(tmp_path)
    assert rejected >= 2 and len(records) == rejected and {record["decision"] for record in records} == {"reject"}


def test_the_file_rotates_by_size_and_keeps_the_newest(tmp_path):
    sink = JsonLinesSink(tmp_path, max_bytes=4096, keep=2)
    records = [json.dumps({"n": n, "pad": "x" * 100}).encode() for n in range(400)]
    for start in range(0, len(records), 10):
        sink.write(records[start:start + 10])
    sink.close()
    rotated = sorted(tmp_path.glob("decisions-*.jsonl"))
    assert len(rotated) == 2 and all(path.stat().st_size <= 4096 for path in [*rotated, tmp_path / "decisions.jsonl"])
    kept = [json.loads(line)["n"] for path in [*rotated, tmp_path / "decisions.jsonl"] for line in path.read_text().splitlines()]
    assert kept == list(range(400 - len(kept), 400))  # whole records, in order, the newest ones


class StuckSink:
    """A sink whose writes wait for ``release`` (then fail with ``error``, if given)."""

    def __init__(self, name: str, error: Exception | None = None):
        self.name, self.release, self.error, self.lines = name, threading.Event(), error, []

    def write(self, records):
        self.release.wait(timeout=30)
        if self.error is not None:
            raise self.error
        self.lines += records

    def close(self):
        pass


def counted(registry: CollectorRegistry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def answered(n: int, rejected: int):
    """A prediction of ``n`` instances, the last ``rejected`` of them rejected."""
    from inference.prediction import ClassOutputs, Prediction

    accepted = np.arange(n) < n - rejected
    probabilities = np.full((n, 2), 0.5)
    return Prediction(
        ClassOutputs(np.zeros(n, dtype=np.int64), probabilities, probabilities), np.zeros(n), np.zeros(n), accepted, np.where(accepted, 0.5, 0.001),
        np.where(accepted, None, "log_px").astype(object), np.zeros(n), {"log_px": np.zeros(n)}, {"log_px": np.full(n, 0.5)},
    )


def test_records_built_together_are_each_instances_own():
    """Requests of two model versions, one run after another, with kept rows and inputs drawn: each record holds
    its own instance's values, in the order of the requests and their instances."""
    from inference.prediction import ClassOutputs, Prediction

    rng = np.random.default_rng(3)
    requests = []
    for i in range(16):
        n, model = int(rng.integers(1, 5)), "b" if 6 <= i < 9 else "a"
        names = ["log_px", "typicality"] if model == "a" else ["log_px"]
        accepted, probabilities = rng.random(n) < 0.5, rng.dirichlet(np.ones(3), n)
        prediction = Prediction(
            ClassOutputs(probabilities.argmax(axis=1), probabilities, probabilities), rng.normal(size=n), rng.normal(size=n), accepted, rng.random(n),
            np.where(accepted, None, names[-1]).astype(object), rng.normal(size=n), {name: rng.normal(size=n) for name in names}, {name: rng.random(n) for name in names},
        )
        x = rng.random((n, 8, 8) if model == "a" else (n, 5)).astype(np.float32)
        keep, with_input = (None, None) if i % 4 == 0 else (rng.random(n) < 0.7, rng.random(n) < 0.5)
        requests.append(AnsweredRequest(f"r{i}", 1.8e9 + i / 7, model, "1", "v2", i / 1000, x, prediction, keep, with_input))
    built = records(requests)
    expected = [(request, row) for request in requests for row in range(len(request.prediction)) if request.keep is None or request.keep[row]]
    assert [(record["request_id"], record["instance"]) for record in built] == [(request.request_id, row) for request, row in expected]
    for record, (request, row) in zip(built, expected):
        prediction = request.prediction
        assert record["model"] == request.model and record["latency_ms"] == pytest.approx(request.latency_s * 1e3)
        assert record["time"] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(request.time)) + f".{int(request.time * 1000) % 1000:03d}Z"
        assert record["decision"] == ("accept" if prediction.accepted[row] else "reject") and record["p_value"] == prediction.p_value[row]
        assert record["reason"] == prediction.rejected_by[row] and record["log_px"] == prediction.log_px[row]
        assert record["scores"] == {name: {"value": prediction.scores[name][row], "p_value": prediction.p_values[name][row]} for name in prediction.scores}
        assert record["label"] == prediction.head.label[row] and record["probability"] == prediction.head.model_probabilities[row].max()
        assert record["input_sha256"] == hashlib.sha256(request.x[row].astype("<f4").tobytes()).hexdigest()
        assert ("input" in record) == (request.with_input is not None and bool(request.with_input[row]))
        if "input" in record:
            assert base64.b64decode(record["input"]["base64"]) == request.x[row].astype("<f4").tobytes()


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 5), (0, 4), (2, 0)])
def test_digests_are_each_instances_sha256(shape):
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    assert digests(x) == [hashlib.sha256(instance.tobytes()).hexdigest() for instance in x]


def test_a_full_queue_or_a_failing_sink_drops_records_counted_and_serving_never_waits(tmp_path):
    registry = CollectorRegistry()
    stuck, failing = StuckSink("stuck"), StuckSink("failing", OSError("disk full"))
    decisions = DecisionLog([stuck, failing], registry, capacity=6)
    x = np.zeros((3, 8, 8), dtype=np.float32)
    decisions.served("r0", "m", "1", "v1", 0.001, x, answered(3, 1))
    taken = lambda: not decisions.pending and all(writer.taken == 3 for writer in decisions.writers)  # noqa: E731
    wait_for(taken, "the writers to take the first request", timeout=10)
    for i in range(1, 6):  # both writers wait in their first write: two requests fill each queue (6 records), three are dropped
        decisions.served(f"r{i}", "m", "1", "v1", 0.001, x, answered(3, 1))
    wait_for(lambda: counted(registry, "diglm_decision_log_dropped_total", sink="failing", reason="queue_full") >= 9, "the drops of a full queue", timeout=10)
    stuck.release.set()
    failing.release.set()
    decisions.close(timeout=10)
    assert counted(registry, "diglm_decision_log_dropped_total", sink="stuck", reason="queue_full") == 9
    assert counted(registry, "diglm_decision_log_records_total", sink="stuck") == len(stuck.lines) == 9
    assert [json.loads(record)["request_id"] for record in stuck.lines] == ["r0"] * 3 + ["r1"] * 3 + ["r2"] * 3
    assert counted(registry, "diglm_decision_log_dropped_total", sink="failing", reason="queue_full") == 9
    assert counted(registry, "diglm_decision_log_dropped_total", sink="failing", reason="sink_error") == 3  # its first write
    assert counted(registry, "diglm_decision_log_dropped_total", sink="failing", reason="backoff") == 6  # the next, untried
    assert counted(registry, "diglm_decision_log_records_total", sink="failing") == 0


def test_a_full_log_queue_counts_its_drops_for_every_sink():
    registry = CollectorRegistry()
    decisions = DecisionLog([StuckSink("a"), StuckSink("b")], registry, capacity=2)
    decisions.closing.set()  # a builder that has stopped: the queue only fills
    decisions.builder.join(timeout=10)
    for i in range(5):
        decisions.served(f"r{i}", "m", "1", "v1", 0.001, np.zeros((3, 8, 8), dtype=np.float32), answered(3, 1))
    assert len(decisions.pending) == 2
    assert counted(registry, "diglm_decision_log_dropped_total", sink="a", reason="queue_full") == 9
    assert counted(registry, "diglm_decision_log_dropped_total", sink="b", reason="queue_full") == 9
    for writer in decisions.writers:
        writer.close(timeout=10)


def test_close_writes_everything_queued(tmp_path):
    registry = CollectorRegistry()
    decisions = DecisionLog([JsonLinesSink(tmp_path, 1 << 20, 1)], registry, capacity=10_000, inputs="sampled", input_sample=0.0, seed=0)
    x = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    for i in range(500):
        decisions.served(f"r{i}", "m", "1", "grpc", 0.002, x, answered(4, 2))
    decisions.close(timeout=30)
    records = logged(tmp_path)
    assert len(records) == 2000 == counted(registry, "diglm_decision_log_records_total", sink="jsonl")
    assert sum("input" in record for record in records) == 1000  # the rejected ones'; no accepted one at a share of 0


def test_grpc_calls_are_logged_under_their_metadata_id_and_errors_carry_the_id(checkpoint, tmp_path):
    import grpc

    from service.protos import message
    from tests.conftest import free_port

    port = free_port()
    client = serve(checkpoint, tmp_path, grpc_port=port)
    try:
        request = message("ModelInferRequest")(model_name="tiny")
        request.inputs.add(name="input", datatype="FP32", shape=[1, 8, 8])
        request.raw_input_contents.append(np.asarray([BLANK], dtype="<f4").tobytes())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", response_deserializer=message("ModelInferResponse").FromString)
            answer, call = infer.with_call(request.SerializeToString(), timeout=30, metadata=[("x-request-id", "grpc-1")])
            assert ("x-request-id", "grpc-1") in call.trailing_metadata()
            request.model_name = "nope"
            with pytest.raises(grpc.RpcError) as refused:
                infer.with_call(request.SerializeToString(), timeout=30, metadata=[("x-request-id", "grpc-2")])
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and ("x-request-id", "grpc-2") in refused.value.trailing_metadata()
        for path, body in [("/v1/models/nope:predict", {"instances": [BLANK]}), ("/v2/models/tiny/infer", {"inputs": []})]:
            error = client.post(path, json=body, headers={"x-request-id": "rest-2"})
            assert error.status_code in (400, 404) and error.headers["x-request-id"] == "rest-2" and "error" in error.json()
        written(client, 1)
    finally:
        client.__exit__(None, None, None)
    (record,) = logged(tmp_path)
    p_value = np.frombuffer(answer.raw_output_contents[[output.name for output in answer.outputs].index("p_value")], dtype="<f8")[0]
    assert (record["request_id"], record["protocol"], record["decision"], record["p_value"]) == ("grpc-1", "grpc", "reject", p_value)


def test_a_log_folder_that_cannot_be_written_stops_the_start_with_one_line(checkpoint, tmp_path, capsys):
    from service.__main__ import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["--model-dir", str(checkpoint), "--decision-log-dir", str(blocker / "log"), "--grpc-port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write the decision log in {blocker / 'log'}") and "\n" not in err


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that keeps what is POSTed to it (headers and JSON body), each
    answer ``delay_s`` late."""

    def __init__(self, delay_s: float = 0.0):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                time.sleep(delay_s)
                received.append(({key.lower(): value for key, value in self.headers.items()}, json.loads(body)))
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_cloudevents_carry_the_records_in_structured_mode(checkpoint, tmp_path):
    receiver = Receiver()
    client = serve(checkpoint, tmp_path, decision_log_cloudevents_url=receiver.url)
    try:
        sent = [*held_out_digits(2)[0].tolist(), BLANK]
        assert client.post("/v1/models/tiny:predict", json={"instances": sent}, headers={"x-request-id": "ce-1"}).status_code == 200
        wait_for(lambda: metric(client, "diglm_decision_log_records_total", sink="cloudevents") >= 3, "3 CloudEvents")
        written(client, 3)
    finally:
        client.__exit__(None, None, None)
        receiver.close()
    records = {record["instance"]: record for record in logged(tmp_path)}
    assert len(receiver.received) == 3
    for headers, event in receiver.received:
        assert headers["content-type"] == "application/cloudevents+json"
        assert (event["specversion"], event["type"], event["inferenceservicename"]) == ("1.0", "io.diglm.decision", "tiny")
        record = event["data"]
        assert event["id"] == f"ce-1/{record['instance']}" and event["source"] == f"/v2/models/tiny/versions/{record['version']}"
        assert record == records[record["instance"]] and event["time"].startswith(record["time"][:19])


def test_a_cloudevents_sink_down_or_slow_drops_counted_records_while_serving_goes_on(checkpoint, tmp_path):
    from tests.conftest import free_port

    slow = Receiver(delay_s=1.0)
    for url, timeout in ((f"http://127.0.0.1:{free_port()}/nobody", "2"), (slow.url, "0.1")):
        client = serve(checkpoint, tmp_path / url.rsplit(":", 1)[1].replace("/", "-"), decision_log_cloudevents_url=url, decision_log_cloudevents_timeout_s=timeout)
        try:
            for _ in range(3):
                assert client.post("/v1/models/tiny:predict", json={"instances": [BLANK, BLANK]}).status_code == 200
            failed = lambda: metric(client, "diglm_decision_log_dropped_total", sink="cloudevents", reason="sink_error")  # noqa: E731
            untried = lambda: metric(client, "diglm_decision_log_dropped_total", sink="cloudevents", reason="backoff")  # noqa: E731
            wait_for(lambda: failed() + untried() >= 6, f"the drops of {url}")  # a failed write's, then those of its back-off
            written(client, 6)  # the JSON Lines sink is not held up
            assert failed() >= 1 and metric(client, "diglm_decision_log_records_total", sink="cloudevents") == 0
        finally:
            client.__exit__(None, None, None)
    slow.close()


def test_recent_rejections_are_the_newest_rejected_records_with_their_inputs(checkpoint):
    settings = ServiceSettings(model_dir=checkpoint, device="cpu", grpc_port=0, recent_rejections=3)  # no decision log: the list is kept anyway
    digits = held_out_digits(2)[0].tolist()
    sent = {f"r{i}": [digits[0], np.full((8, 8), float(level)).tolist(), digits[1]] for i, level in enumerate((0, 16, 0, 16))}  # flat images: rejected
    rejected = []  # (request id, instance), in the order answered
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert client.get("/v2/models/tiny/rejections").json()["rejections"] == []
        for request_id, instances in sent.items():
            answer = client.post("/v1/models/tiny:predict", json={"instances": instances}, headers={"x-request-id": request_id}).json()
            rejected += [(request_id, i) for i, prediction in enumerate(answer["predictions"]) if not prediction["accepted"]]
        body = client.get("/v2/models/tiny/rejections", params={"limit": 10}).json()
        version = body["rejections"][0]["version"]
        assert client.get(f"/v2/models/tiny/versions/{version}/rejections", params={"limit": 10}).json()["rejections"] == body["rejections"]
        assert client.get("/v2/models/tiny/rejections", params={"limit": 2}).json()["rejections"] == body["rejections"][:2]
        assert client.get("/v2/models/other/rejections").status_code == 404
    assert len(rejected) >= 4 and body["kept"] == 3 and body["version"] is None
    assert [(record["request_id"], record["instance"]) for record in body["rejections"]] == rejected[::-1][:3]  # the newest three, newest first
    for record in body["rejections"]:
        stored = record["input"]
        image = np.frombuffer(base64.b64decode(stored["base64"]), dtype=stored["dtype"]).reshape(stored["shape"])
        assert record["decision"] == "reject" and np.array_equal(image, np.asarray(sent[record["request_id"]][record["instance"]], dtype="<f4"))


def test_logged_rejections_export_to_a_set_that_evaluate_and_calibrate_read_and_labels_make_training_data(checkpoint, tmp_path, capsys, monkeypatch):
    log, out = tmp_path / "log", tmp_path / "rejected.npz"
    digits = held_out_digits(3)[0].tolist()
    flat = [np.full((8, 8), float(level)).tolist() for level in (0, 16)]
    client = serve(checkpoint, log, decision_log_inputs="rejected")
    try:
        answers = {}
        for request_id, instances in (("a", [digits[0], flat[0]]), ("b", [flat[1], digits[1], digits[2]])):
            answers[request_id] = client.post("/v1/models/tiny:predict", json={"instances": instances}, headers={"x-request-id": request_id}).json()["predictions"]
        written(client, 5)
    finally:
        client.__exit__(None, None, None)
    with (log / "decisions.jsonl").open("ab") as handle:
        handle.write(b'{"request_id": "cut sh')  # a write cut short
    sent = {"a": [digits[0], flat[0]], "b": [flat[1], digits[1], digits[2]]}
    rejected = [(request, i) for request in ("a", "b") for i, answer in enumerate(answers[request]) if not answer["accepted"]]
    assert training_main(["decisions", "--log", str(log), "--rejected", "--model", "tiny", "--since", "2000-01-01T00:00:00Z", "--out", str(out)]) == 0
    assert f"wrote {len(rejected)} inputs" in capsys.readouterr().out
    exported = np.load(out)
    assert [(str(request), int(i)) for request, i in zip(exported["request_id"], exported["instance"])] == rejected
    assert np.array_equal(exported["x"], np.array([sent[request][i] for request, i in rejected], dtype=np.float32))
    assert set(exported["decision"].tolist()) == {"reject"} and len(exported["p_value"]) == len(rejected)
    assert training_main(["evaluate", "--checkpoint", str(checkpoint), "--ood", str(out), "--out", str(tmp_path / "evaluation.json")]) == 0
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["ood"][str(out)]["gate"]["rejected"] == 1.0  # the same inputs, the same model: every one rejected again

    recalibrated = tmp_path / "recalibrated"
    shutil.copytree(checkpoint, recalibrated)
    assert training_main(["calibrate", "--checkpoint", str(recalibrated), "--set", "gate.combine=min", "--outliers", str(out)]) == 2
    assert "choose their weights against" in capsys.readouterr().err
    import training.calibration

    outlier_sets = []  # the outlier sets each fit chose its weights against
    fit = training.calibration.calibrate_gate
    monkeypatch.setattr(training.calibration, "calibrate_gate", lambda *args, **kwargs: outlier_sets.append(args[10]) or fit(*args, **kwargs))
    for outliers in ([], ["--outliers", str(out)]):
        assert training_main(["calibrate", "--checkpoint", str(recalibrated), "--set", "gate.combine=max_sum", *outliers]) == 0
    assert len(outlier_sets[1]) == len(outlier_sets[0]) + 1 and len(outlier_sets[1][-1]["log_px"]) == len(rejected)
    gate = load_checkpoint(recalibrated).manifest.gate
    assert gate.combine == "max_sum" and gate.weights is not None
    assert [dict(outlier_set) for outlier_set in gate.outliers] == [{"name": out.name, "sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "rows": len(rejected)}]

    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,instance,label\nb,0,7\n")
    assert training_main(["decisions", "--log", str(log), "--labels", str(labels), "--out", str(tmp_path / "labelled.npz")]) == 0
    labelled = np.load(tmp_path / "labelled.npz")
    assert labelled["y"].tolist() == [7] and np.array_equal(labelled["x"][0], np.asarray(flat[1], dtype=np.float32))
    config = load_config(CONFIGS / "tiny.yaml")
    plain = split_dataset(load_dataset(config.data, config.seed), config.data, config.seed)
    config.data.add_to_train = [tmp_path / "labelled.npz"]
    added = split_dataset(load_dataset(config.data, config.seed), config.data, config.seed)
    assert np.array_equal(added.train.x, np.r_[plain.train.x, labelled["x"].astype(plain.train.x.dtype)]) and added.train.y.tolist() == [*plain.train.y.tolist(), 7]
    for name in ("validation", "calibration", "test"):  # the added rows go to training only
        assert np.array_equal(getattr(added, name).x, getattr(plain, name).x)
    np.savez(tmp_path / "unknown-class.npz", x=labelled["x"], y=[10])
    config.data.add_to_train = [tmp_path / "unknown-class.npz"]
    with pytest.raises(DataError, match="class indices 0 to 9"):
        split_dataset(load_dataset(config.data, config.seed), config.data, config.seed)
    capsys.readouterr()
    assert training_main(["decisions", "--log", str(log), "--accepted", "--out", str(tmp_path / "none.npz")]) == 2  # accepted inputs were not kept
    assert "no logged inputs match" in capsys.readouterr().err and not (tmp_path / "none.npz").exists()
    assert training_main(["decisions", "--log", str(log), "--since", "yesterday", "--out", str(out)]) == 2
    assert "not an ISO 8601 time" in capsys.readouterr().err
