"""API keys: every route but the probes (and /metrics unless asked) needs one when keys are set."""
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import key_matches, presented_key, warn_if_open
from service.settings import ServiceSettings, parse_settings
from training.cli import main as training_main

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("auth") / "tiny"
    assert training_main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", "--set", "train.epochs=1"]) == 0
    return out


def serve(checkpoint: Path, **settings):
    client = TestClient(create_app(ServiceSettings(model_dir=checkpoint, device="cpu", **settings)))
    client.__enter__()
    while client.get("/v2/health/ready").status_code != 200:
        pass
    return client


def test_keys_guard_every_route_but_the_probes(checkpoint, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# ops team\nfrom-file\n\n")
    client = serve(checkpoint, api_keys=["alpha", "beta"], api_keys_file=key_file)
    body = {"instances": [[[0] * 8] * 8]}
    missing = client.post("/v1/models/tiny:predict", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="diglm"'
    assert "Authorization: Bearer KEY" in missing.json()["error"]
    wrong = client.post("/v1/models/tiny:predict", json=body, headers={"authorization": "Bearer gamma"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "the API key is not valid"
    for headers in ({"authorization": "Bearer alpha"}, {"Authorization": "bearer beta"}, {"x-api-key": "from-file"}):
        assert client.post("/v1/models/tiny:predict", json=body, headers=headers).status_code == 200, headers
    for path in ("/v2/models/tiny", "/v2/models/tiny/drift", "/docs", "/openapi.json", "/v2"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"x-api-key": "alpha"}).status_code == 200, path
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert client.get(path).status_code == 200, path
    assert 'status="401"' in client.get("/metrics").text
    client.__exit__(None, None, None)
    guarded = serve(checkpoint, api_keys=["alpha"], metrics_require_key=True)
    assert guarded.get("/metrics").status_code == 401 and guarded.get("/metrics", headers={"x-api-key": "alpha"}).status_code == 200
    guarded.__exit__(None, None, None)


def test_no_keys_means_open_and_a_warning_off_loopback(checkpoint, caplog):
    client = serve(checkpoint)
    assert client.post("/v1/models/tiny:predict", json={"instances": [[[0] * 8] * 8]}).status_code == 200
    client.__exit__(None, None, None)
    with caplog.at_level(logging.WARNING, logger="service.auth"):
        warn_if_open("127.0.0.1", [])
        warn_if_open("0.0.0.0", ["k"])
        assert not caplog.records
        warn_if_open("0.0.0.0", [])
    assert "no API keys" in caplog.text


def test_keys_from_the_environment_and_the_header_forms(monkeypatch, tmp_path):
    monkeypatch.setenv("DIGLM_API_KEYS", " one, two ,,")
    assert parse_settings([]).api_keys == ["one", "two"]
    monkeypatch.setenv("DIGLM_API_KEYS_FILE", str(tmp_path / "absent"))
    with pytest.raises(Exception, match="no such file"):
        parse_settings([])
    assert presented_key({b"authorization": b"Bearer  k1 "}) == b"k1"
    assert presented_key({b"authorization": b"Basic abc", b"x-api-key": b"k2"}) == b"k2"
    assert presented_key({b"authorization": b"Bearer "}) is None
    assert key_matches(b"b", [b"a", b"b"]) and not key_matches(b"c", [b"a", b"b"]) and not key_matches(b"a", [])
