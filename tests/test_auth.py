"""API keys: every route but the probes (and /metrics unless asked) needs one when keys are set."""
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import key_matches, presented_key, warn_if_open
from service.settings import ServiceSettings, parse_settings
from tests.conftest import wait_ready
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
    wait_ready(client)
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
    for path in ("/v2/models/tiny", "/v2/models/tiny/drift", "/v2/models/tiny/gate", "/v2/models/tiny/stats", "/v2/models/tiny/rejections", "/docs", "/openapi.json", "/v2"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"x-api-key": "alpha"}).status_code == 200, path
    for path in ("/v2/health/live", "/v2/health/ready", "/", "/metrics", "/console", "/console/console.js", "/console/console.css"):
        assert client.get(path).status_code == 200, path  # the console's page holds no data: its calls above need the key
    for path in ("/consoles", "/console-x"):
        assert client.get(path).status_code == 401, path
    assert 'status="401"' in client.get("/metrics").text
    client.__exit__(None, None, None)
    guarded = serve(checkpoint, api_keys=["alpha"], metrics_require_key=True)
    assert guarded.get("/metrics").status_code == 401 and guarded.get("/metrics", headers={"x-api-key": "alpha"}).status_code == 200
    guarded.__exit__(None, None, None)


def test_the_model_repository_routes_need_an_admin_key(checkpoint):
    index = "/v2/repository/index"
    client = serve(checkpoint, api_keys=["user"], admin_api_keys=["root"])
    assert client.post(index).status_code == 401
    refused = client.post(index, headers={"x-api-key": "user"})
    assert refused.status_code == 403 and refused.json()["error"] == "this route needs an admin API key" and "www-authenticate" not in refused.headers
    assert client.post(index, headers={"x-api-key": "root"}).status_code == 200
    assert client.post("/v1/models/tiny:predict", json={"instances": [[[0] * 8] * 8]}, headers={"x-api-key": "root"}).status_code == 200
    client.__exit__(None, None, None)
    no_admin = serve(checkpoint, api_keys=["user"])
    off = no_admin.post("/v2/repository/models/tiny/unload", headers={"x-api-key": "user"})
    assert off.status_code == 403 and "DIGLM_ADMIN_API_KEYS" in off.json()["error"]
    assert no_admin.get("/v2/models/tiny/ready", headers={"x-api-key": "user"}).status_code == 200
    no_admin.__exit__(None, None, None)
    admin_only = serve(checkpoint, admin_api_keys=["root"])
    assert admin_only.post(index).status_code == 401 and admin_only.post(index, headers={"x-api-key": "root"}).status_code == 200
    assert admin_only.get("/v2/models/tiny").status_code == 200  # predictions stay open without user keys
    admin_only.__exit__(None, None, None)


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
