"""The model repository: version policies, several models and versions served at once and routed
correctly, the repository extension's index / load / unload, hot swap (a request in flight keeps the
old version's answer, the next gets the new one), a damaged version refused while the old serves,
the folder poller, the limit on loaded versions, and per-version metrics."""
import asyncio
import gc
import shutil
import threading
import weakref
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OnnxRuntimeFail

from inference.errors import BadInput
from inference.inputs import InferenceInput
from inference.runtime import ModelRuntime
from models.checkpoint import CheckpointError
from service.app import create_app
from service.repository import ModelSource, VersionPolicy, parse_policies
from service.settings import ServiceSettings, SettingsProblem, parse_settings
from tests.conftest import wait_until
from training.cli import main as training_main
from training.config import DataConfig
from training.data import load_dataset

TINY = str(Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[int, Path]:
    """Two tiny checkpoints with different weights (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("checkpoints")
    for seed in (0, 1):
        assert training_main(["train", "--config", TINY, "--out", str(root / f"seed{seed}"), "--quiet", "--set", f"seed={seed}"]) == 0
    return {seed: root / f"seed{seed}" for seed in (0, 1)}


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_dataset(DataConfig(name="digits")).x[:4]


@pytest.fixture(scope="module")
def expected(trained, digits) -> dict[int, np.ndarray]:
    """log p(x) of the digits under each checkpoint, from the runtime called directly."""
    return {seed: ModelRuntime.load(path, "cpu", "torch").predict(InferenceInput(digits)).log_px for seed, path in trained.items()}


def add_version(root: Path, name: str, version: int, checkpoint: Path) -> Path:
    """Copy a checkpoint into ``root/name/version`` the way a pipeline should: staged, then renamed."""
    staging = root / f".staging-{name}-{version}"
    shutil.copytree(checkpoint, staging)
    (root / name).mkdir(parents=True, exist_ok=True)
    return staging.rename(root / name / str(version))


def settings_for(root: Path, **overrides) -> ServiceSettings:
    return ServiceSettings(**{"model_repository": root, "device": "cpu", "backend": "torch", "warmup_batch": 1, "drain_timeout_s": 5, **overrides})


def serve(settings: ServiceSettings, scenario, preload: bool = False):
    """Run ``scenario(client, app)`` against the started app (lifespan on, models loaded; with
    ``preload``, first loaded before the lifespan as ``python -m service`` does)."""
    app = create_app(settings)
    if preload:
        app.state.service.models.preload()

    async def go():
        async with app.router.lifespan_context(app):
            state = app.state.service
            await wait_until(lambda: state.ready or state.models.load_error is not None, "the models to load or fail")
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30) as client:
                return await scenario(client, app)

    return asyncio.run(go())


def v1(client, name: str, x: np.ndarray):
    return client.post(f"/v1/models/{name}:predict", json={"instances": x.tolist()})


def v2(client, path: str, x: np.ndarray):
    body = {"inputs": [{"name": "input", "shape": [len(x), 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}], "outputs": [{"name": "log_px"}]}
    return client.post(f"{path}/infer", json=body)


def log_px(response) -> np.ndarray:
    body = response.json()
    if "predictions" in body:
        return np.array([p["log_px"] for p in body["predictions"]])
    return np.array(body["outputs"][0]["data"])


def test_version_policies():
    versions = ["1", "2", "5", "10"]
    assert VersionPolicy.parse("latest").select(versions) == ["10"]
    assert VersionPolicy.parse("latest:2").select(versions) == ["5", "10"]
    assert VersionPolicy.parse("all").select(versions) == versions
    assert VersionPolicy.parse("1, 5").select(versions) == ["1", "5"]
    assert VersionPolicy.parse("3").select(versions) == []
    default, per_model = parse_policies(["latest:2", "digits=1,3"])
    assert default == VersionPolicy("latest", 2) and per_model == {"digits": VersionPolicy("specific", versions=("1", "3"))}
    for bad in ("latest:0", "newest", "1,x", "-1"):
        with pytest.raises(ValueError):
            VersionPolicy.parse(bad)


def test_settings_refuse_a_bad_policy_and_both_sources(tmp_path, monkeypatch):
    with pytest.raises(SettingsProblem, match="version_policy: version policy 'newest'"):
        parse_settings(["--model-repository", str(tmp_path), "--version-policy", "digits=newest"])
    with pytest.raises(SettingsProblem, match="not both"):
        parse_settings(["--model-repository", str(tmp_path), "--model-dir", str(tmp_path)])
    monkeypatch.setenv("DIGLM_VERSION_POLICY", "all; tiny=2")
    assert parse_settings(["--model-repository", str(tmp_path)]).version_policy == ["all", "tiny=2"]


def test_scan_lists_integer_versions_in_order_and_skips_the_rest(trained, tmp_path):
    root = tmp_path / "repo"
    for version in (10, 2):
        add_version(root, "a", version, trained[0])
    (root / "a" / "notes").mkdir()
    (root / "a" / "3").mkdir()  # no manifest: not a version (yet)
    (root / "README.md").write_text("not a model")
    found = ModelSource(repository=root).scan()
    assert list(found) == ["a"] and [folder.version for folder in found["a"]] == ["2", "10"]


def test_two_models_and_two_versions_are_served_at_once_and_routed(trained, expected, digits, tmp_path):
    root = tmp_path / "repo"
    add_version(root, "a", 1, trained[0])
    add_version(root, "a", 2, trained[1])
    add_version(root, "b", 7, trained[0])

    async def scenario(client, app):
        return {
            "a default v1": await v1(client, "a", digits),
            "a default v2": await v2(client, "/v2/models/a", digits),
            "a 1": await v2(client, "/v2/models/a/versions/1", digits),
            "a 2": await v2(client, "/v2/models/a/versions/2", digits),
            "b": await v1(client, "b", digits),
            "b 7": await v2(client, "/v2/models/b/versions/7", digits),
            "a 3": await v2(client, "/v2/models/a/versions/3", digits),
            "metadata a": await client.get("/v2/models/a"),
            "metadata a 1": await client.get("/v2/models/a/versions/1"),
            "ready a 1": await client.get("/v2/models/a/versions/1/ready"),
            "server": await client.get("/v2"),
            "metrics": await client.get("/metrics"),
        }

    answers = serve(settings_for(root, version_policy=["a=all"]), scenario)
    for key, seed, version in (("a default v1", 1, "2"), ("a default v2", 1, "2"), ("a 1", 0, "1"), ("a 2", 1, "2"), ("b", 0, "7"), ("b 7", 0, "7")):
        response = answers[key]
        assert response.status_code == 200, (key, response.text)
        assert response.json()["model_version"] == version, key
        np.testing.assert_allclose(log_px(response), expected[seed], atol=1e-4, err_msg=key)
    assert answers["a default v1"].json()["model_name"] == "a" and answers["b"].json()["model_name"] == "b"
    assert answers["a 3"].status_code == 404 and "loaded versions: ['1', '2']" in answers["a 3"].json()["error"]
    assert answers["metadata a"].json()["versions"] == ["1", "2"] and answers["metadata a"].json()["version"] == "2"
    assert answers["metadata a 1"].json()["version"] == "1"
    assert answers["ready a 1"].json() == {"name": "a", "version": "1", "ready": True}
    assert answers["server"].json()["models"] == ["a", "b"] and "model_repository" in answers["server"].json()["extensions"]
    metrics = answers["metrics"].text
    for version, requests in (("1", 1), ("2", 3)):
        assert f'diglm_instances_total{{model="a",version="{version}"}} {requests * len(digits)}.0' in metrics
    assert f'diglm_instances_total{{model="b",version="7"}} {2 * len(digits)}.0' in metrics
    assert 'diglm_requests_total{endpoint="/v2/models/{name}/versions/{version}/infer",model="a",protocol="rest",status="200",version="1"} 1.0' in metrics
    assert metrics.count("# TYPE diglm_log_px_nats histogram") == 1  # one family, a series per version


def test_index_load_and_unload_as_the_protocol_specifies(trained, digits, tmp_path):
    root = tmp_path / "repo"
    add_version(root, "a", 1, trained[0])
    add_version(root, "a", 2, trained[1])
    add_version(root, "b", 1, trained[0])

    async def scenario(client, app):
        seen = {"index": (await client.post("/v2/repository/index")).json()}
        seen["ready index"] = (await client.post("/v2/repository/index", json={"ready": True})).json()
        seen["frozen"] = gc.get_freeze_count()  # what loading left is out of later collections (service.serving.settle_heap)
        runtime = weakref.ref(app.state.service.models.table.routes["b"]["1"].runtime)  # the model, what holds the memory
        unload = await client.post("/v2/repository/models/b/unload")
        seen["unload"] = (unload.status_code, unload.content)
        await wait_until(lambda: runtime() is None, "the released model to be collected", timeout=30)
        seen["after unload"] = ((await v1(client, "b", digits)).status_code, (await client.get("/v2/models/b/ready")).status_code)
        seen["metrics after unload"] = (await client.get("/metrics")).text
        seen["index after unload"] = (await client.post("/v2/repository/index")).json()
        load = await client.post("/v2/repository/models/b/load", json={})
        seen["load"] = (load.status_code, load.content)
        seen["after load"] = (await v1(client, "b", digits)).status_code
        seen["unknown"] = [(await client.post(f"/v2/repository/models/zz/{verb}")).status_code for verb in ("load", "unload")]
        seen["bad bodies"] = [
            (await client.post("/v2/repository/index", json={"ready": "yes"})).status_code,
            (await client.post("/v2/repository/index", json=[1])).status_code,
            (await client.post("/v2/repository/models/b/load", json={"parameters": {"config": "{}"}})).json(),
        ]
        return seen

    seen = serve(settings_for(root), scenario)
    assert seen["index"] == [
        {"name": "a", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded"},  # the policy serves the latest only
        {"name": "a", "version": "2", "state": "READY"},
        {"name": "b", "version": "1", "state": "READY"},
    ]
    assert seen["ready index"] == [{"name": "a", "version": "2", "state": "READY"}, {"name": "b", "version": "1", "state": "READY"}]
    assert seen["unload"] == (200, b"") and seen["load"] == (200, b"") and seen["frozen"] > 0
    assert seen["after unload"] == (404, 404) and seen["after load"] == 200
    assert 'model="b"' not in seen["metrics after unload"]  # its series went with it
    assert {"name": "b", "version": "1", "state": "UNAVAILABLE", "reason": "not loaded"} in seen["index after unload"]
    assert seen["unknown"] == [404, 404]
    assert seen["bad bodies"][:2] == [400, 400] and "not supported" in seen["bad bodies"][2]["error"]


def test_hot_swap_in_flight_request_keeps_the_old_answer_and_the_next_gets_the_new(trained, expected, digits, tmp_path):
    root = tmp_path / "repo"
    add_version(root, "a", 1, trained[0])

    async def scenario(client, app):
        models = app.state.service.models
        old = models.lookup("a")
        hold, original = threading.Event(), old.batcher.run_batch

        def held(inputs, queue_seconds):
            hold.wait(10)
            return original(inputs, queue_seconds)

        old.batcher.run_batch = held
        in_flight = asyncio.ensure_future(v1(client, "a", digits))
        await wait_until(lambda: old.in_flight > 0, "the request to reach the old version")
        add_version(root, "a", 2, trained[1])
        # the old version's batch is held in the inference thread: the new version's warm-up queues
        # behind it, so let the held batch go once the load has begun
        loading = asyncio.ensure_future(client.post("/v2/repository/models/a/load"))
        await asyncio.sleep(0.2)
        assert not in_flight.done()
        hold.set()
        load, first = await loading, await in_flight
        after = await v1(client, "a", digits)
        for _ in range(100):
            if not models.table.releasing:
                break
            await asyncio.sleep(0.02)
        return load, first, after, old, models.table.loaded()

    load, first, after, old, loaded = serve(settings_for(root), scenario)
    assert load.status_code == 200
    assert first.json()["model_version"] == "1" and after.json()["model_version"] == "2"
    np.testing.assert_allclose(log_px(first), expected[0], atol=1e-4)
    np.testing.assert_allclose(log_px(after), expected[1], atol=1e-4)
    assert old.state == "UNAVAILABLE" and old.runtime is None and [served.version for served in loaded] == ["2"]


def test_a_request_resolved_before_the_switch_is_answered_by_the_old_version(trained, expected, digits, tmp_path):
    """The swap itself: the old version is held until its requests finish, never cut off."""
    root = tmp_path / "repo"
    add_version(root, "a", 1, trained[0])

    async def scenario(client, app):
        models = app.state.service.models
        old = models.lookup("a")
        with old.use():  # a request that has looked up version 1 and not yet submitted its input
            add_version(root, "a", 2, trained[1])
            assert (await client.post("/v2/repository/models/a/load")).status_code == 200
            assert models.lookup("a").version == "2" and old in models.table.releasing
            answer = await old.predict(InferenceInput(digits))
        await asyncio.sleep(0.1)
        return answer, old

    answer, old = serve(settings_for(root), scenario)
    np.testing.assert_allclose(answer.log_px, expected[0], atol=1e-4)
    assert old.state == "UNAVAILABLE"


def test_a_damaged_version_is_refused_and_the_old_keeps_serving(trained, expected, digits, tmp_path):
    root = tmp_path / "repo"
    add_version(root, "a", 1, trained[0])

    async def scenario(client, app):
        damaged = add_version(root, "a", 2, trained[1])
        weights = damaged / "weights.safetensors"
        weights.write_bytes(b"x" + weights.read_bytes()[1:])
        load = await client.post("/v2/repository/models/a/load")
        answer = await v1(client, "a", digits)
        index = (await client.post("/v2/repository/index")).json()
        broken = add_version(root, "a", 3, trained[1])
        (broken / "manifest.json").write_text("{}")
        second = await client.post("/v2/repository/models/a/load")
        return load, answer, index, second, (await client.get("/v2/health/ready")).status_code

    load, answer, index, second, ready = serve(settings_for(root), scenario)
    assert load.status_code == 400
    assert "version 2 of 'a' was not loaded (versions ['1'] keep serving)" in load.json()["error"] and "sha256" in load.json()["error"]
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    np.testing.assert_allclose(log_px(answer), expected[0], atol=1e-4)
    assert index[1]["version"] == "2" and index[1]["state"] == "UNAVAILABLE" and "sha256" in index[1]["reason"]
    assert second.status_code == 400 and "format version" in second.json()["error"]
    assert ready == 200


def test_the_poller_swaps_in_a_new_folder_and_retries_a_failed_one_only_once_it_changes(trained, expected, digits, tmp_path):
    root = tmp_path / "repo"
    add_version(root, "a", 1, trained[0])

    async def until(condition, seconds=10.0):
        for _ in range(int(seconds / 0.05)):
            if condition():
                return True
            await asyncio.sleep(0.05)
        return False

    async def scenario(client, app):
        models = app.state.service.models
        incomplete = root / "a" / "2"
        shutil.copytree(trained[1], incomplete)
        (incomplete / "gate.safetensors").unlink()  # still being copied
        await until(lambda: ("a", "2") in models.failures)
        still = models.lookup("a").version
        shutil.copy(trained[1] / "gate.safetensors", incomplete / "gate.safetensors")  # the copy completes
        swapped = await until(lambda: models.lookup("a").version == "2")
        answer = await v1(client, "a", digits)
        shutil.rmtree(incomplete)  # rolled back by deleting the folder
        rolled_back = await until(lambda: models.lookup("a").version == "1")
        shutil.rmtree(root / "a")
        gone = await until(lambda: "a" not in models.table.routes)
        return still, swapped, answer, rolled_back, gone

    still, swapped, answer, rolled_back, gone = serve(settings_for(root, repository_poll_s=0.1), scenario)
    assert still == "1" and swapped and rolled_back and gone
    np.testing.assert_allclose(log_px(answer), expected[1], atol=1e-4)


def test_the_poller_leaves_a_model_unloaded_through_the_api_until_it_is_loaded_again(trained, digits, tmp_path):
    root = tmp_path / "repo"
    add_version(root, "a", 1, trained[0])

    async def scenario(client, app):
        models = app.state.service.models
        assert (await client.post("/v2/repository/models/a/unload")).status_code == 200
        await asyncio.sleep(0.5)  # five polls
        after_polls = "a" in models.table.routes
        assert (await client.post("/v2/repository/models/a/load")).status_code == 200
        add_version(root, "a", 2, trained[1])
        for _ in range(100):
            if models.lookup("a").version == "2":
                break
            await asyncio.sleep(0.05)
        return after_polls, models.lookup("a").version

    after_polls, version = serve(settings_for(root, repository_poll_s=0.1), scenario)
    assert not after_polls and version == "2"


def test_the_limit_on_loaded_versions_is_a_clear_409(trained, digits, tmp_path):
    root = tmp_path / "repo"
    add_version(root, "a", 1, trained[0])

    async def scenario(client, app):
        add_version(root, "b", 1, trained[1])
        refused = await client.post("/v2/repository/models/b/load")
        assert (await client.post("/v2/repository/models/a/unload")).status_code == 200
        accepted = await client.post("/v2/repository/models/b/load")
        return refused, accepted, (await v1(client, "b", digits)).status_code

    refused, accepted, answer = serve(settings_for(root, max_loaded_versions=1), scenario)
    assert refused.status_code == 409 and "over the limit of 1 (DIGLM_MAX_LOADED_VERSIONS)" in refused.json()["error"]
    assert accepted.status_code == 200 and answer == 200


def test_an_empty_repository_is_never_ready_with_the_reason(tmp_path):
    (tmp_path / "repo").mkdir()

    async def scenario(client, app):
        return await client.get("/v2/health/ready")

    response = serve(settings_for(tmp_path / "repo"), scenario)
    assert response.status_code == 503 and "holds no model folders" in response.json()["error"]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> dict[int, Path]:
    """The two tiny checkpoints with their ONNX models."""
    root = tmp_path_factory.mktemp("exported")
    for seed, path in trained.items():
        shutil.copytree(path, root / f"seed{seed}")
        assert training_main(["export", "--checkpoint", str(root / f"seed{seed}")]) == 0
    return {seed: root / f"seed{seed}" for seed in trained}


class FailingSession:
    """ONNX Runtime's session failing on every run, as it does on an allocation or device error."""

    def run(self, *args):
        raise OnnxRuntimeFail("[ONNXRuntimeError] : 1 : FAIL : bad allocation")


def test_a_version_whose_onnx_runtime_fails_turns_unavailable_with_the_reason_and_the_others_keep_serving(exported, expected, digits, tmp_path):
    root = tmp_path / "repo"
    add_version(root, "a", 1, exported[0])
    add_version(root, "a", 2, exported[1])
    add_version(root, "b", 1, exported[0])

    async def scenario(client, app):
        models = app.state.service.models
        models.table.routes["a"]["2"].runtime.backend.session = FailingSession()
        seen = {"failing": await v2(client, "/v2/models/a/versions/2", digits)}
        await wait_until(lambda: "2" not in models.table.routes["a"], "the failed version to be taken out of routing", timeout=10)
        seen["again"] = await v2(client, "/v2/models/a/versions/2", digits)
        seen["default"], seen["other model"] = await v1(client, "a", digits), await v1(client, "b", digits)
        seen["index"] = (await client.post("/v2/repository/index")).json()
        seen["reload"] = (await client.post("/v2/repository/models/a/load")).status_code  # a fresh runtime
        seen["after reload"] = await v2(client, "/v2/models/a/versions/2", digits)
        return seen

    seen = serve(settings_for(root, backend="onnx", version_policy=["all"]), scenario)
    failing = seen["failing"]
    assert failing.status_code == 503 and "version 2 of 'a' failed and no longer serves: Fail: [ONNXRuntimeError] : 1 : FAIL : bad allocation" in failing.json()["error"]
    assert seen["again"].status_code == 404
    assert seen["default"].status_code == 200 and seen["default"].json()["model_version"] == "1"  # the newest that still serves
    np.testing.assert_allclose(log_px(seen["default"]), expected[0], atol=1e-3)
    assert seen["other model"].status_code == 200
    row = next(entry for entry in seen["index"] if entry["name"] == "a" and entry["version"] == "2")
    assert row["state"] == "UNAVAILABLE" and row["reason"] == "failed while serving: Fail: [ONNXRuntimeError] : 1 : FAIL : bad allocation"
    assert seen["reload"] == 200 and seen["after reload"].status_code == 200
    np.testing.assert_allclose(log_px(seen["after reload"]), expected[1], atol=1e-3)


def test_start_up_serves_the_newest_version_that_verifies(trained, expected, digits, tmp_path):
    """A newest version damaged on disk (a copy cut short) leaves the one before it serving at start-up,
    through ``python -m service``'s preload too, as a failed hot swap does; with nothing that verifies
    the start-up stops with the loader's error."""
    root = tmp_path / "repo"
    add_version(root, "a", 1, trained[0])
    damaged = add_version(root, "a", 2, trained[1])
    (damaged / "weights.safetensors").write_bytes((damaged / "weights.safetensors").read_bytes()[:100])

    async def scenario(client, app):
        return await v1(client, "a", digits), (await client.post("/v2/repository/index")).json()

    answer, index = serve(settings_for(root), scenario, preload=True)
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    np.testing.assert_allclose(log_px(answer), expected[0], atol=1e-4)
    assert index[1]["version"] == "2" and index[1]["state"] == "UNAVAILABLE" and "sha256" in index[1]["reason"]
    shutil.rmtree(root / "a" / "1")
    with pytest.raises(CheckpointError, match="sha256"):
        create_app(settings_for(root)).state.service.models.preload()


def test_folders_leading_outside_the_repository_and_names_with_dots_or_slashes_are_refused(trained, tmp_path, caplog):
    root, outside = tmp_path / "repo", tmp_path / "outside"
    add_version(root, "a", 1, trained[0])
    add_version(outside, "evil", 1, trained[0])
    (root / "evil").symlink_to(outside / "evil")  # a model folder leading out
    (root / "a" / "2").symlink_to(outside / "evil" / "1")  # a version folder leading out
    (root / "b").mkdir()
    (root / "b" / "1").symlink_to(root / "a" / "1")  # inside the repository: served
    found = ModelSource(repository=root).scan()
    assert {name: [folder.version for folder in folders] for name, folders in found.items()} == {"a": ["1"], "b": ["1"]}
    assert "leads outside the model repository" in caplog.text

    async def scenario(client, app):
        models = app.state.service.models
        refused = []
        for name in ("..", "../a", "a/../b", ".hidden", "a\n"):
            for call in (models.load, models.unload):
                with pytest.raises(BadInput, match="is not a model name"):
                    await call(name)
        refused.append((await client.post("/v2/repository/models/.hidden/load")).status_code)
        refused.append((await client.post("/v2/repository/models/evil/load")).status_code)
        return refused, sorted(models.table.routes)

    refused, served = serve(settings_for(root), scenario)
    assert refused == [400, 404] and served == ["a", "b"]
