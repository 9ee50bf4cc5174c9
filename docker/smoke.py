"""``make docker-smoke``: build the CPU images from the wheelhouse with no index, bring up the compose
stack (docker-compose.yml + docker/compose.local.yml: host network, ports 18080 and 19090), and
check it end to end: the trainer writes a checkpoint into the volume, the service turns healthy
only after that, predictions through the container are right, Prometheus scrapes the service and
loaded the alert rules, ``docker stop`` ends the service gracefully within its grace period. The
stack is torn down whatever happens. Prints the image sizes and the seconds of every stage.

Needs the Docker engine and compose v1, and the base images ``python:3.11-slim`` and
``prom/prometheus:latest`` (on machines without a registry: ../shared/tools/docker-local)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import yaml
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "diglm-smoke"
OVERRIDE = ["-f", "docker-compose.yml", "-f", "docker/compose.local.yml"]
COMPOSE = ["docker-compose", "-p", PROJECT, "-f", str(ROOT / "artifacts" / "docker-smoke" / "compose.yml")]
SERVICE = "http://127.0.0.1:18080"
PROMETHEUS = "http://127.0.0.1:19090"
IMAGES = {"trainer": "diglm-trainer:smoke", "service": "diglm-service:smoke"}
GRACE_SECONDS = 10  # docker stop's default grace period before SIGKILL

stages: list[tuple[str, float]] = []


class SmokeFailure(Exception):
    pass


@contextmanager
def stage(name: str):
    started = time.perf_counter()
    print(f"== {name}", flush=True)
    yield
    stages.append((name, time.perf_counter() - started))
    print(f"   ok ({stages[-1][1]:.1f} s)", flush=True)


def run(command: list[str], capture: bool = False) -> str:
    result = subprocess.run(command, cwd=ROOT, text=True, capture_output=capture)
    if result.returncode != 0:
        raise SmokeFailure(f"{' '.join(command)} exited {result.returncode}: {(result.stderr or '')[-2000:]}")
    return result.stdout if capture else ""


def container(name: str) -> str:
    return run([*COMPOSE, "ps", "-q", name], capture=True).strip()


def inspect(container_id: str) -> dict:
    return json.loads(run(["docker", "inspect", container_id], capture=True))[0]


def wait_for(what: str, check, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise SmokeFailure(f"timed out after {timeout:.0f} s waiting for {what}")


def check_base_images() -> None:
    for image in ("python:3.11-slim", "prom/prometheus:latest"):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            raise SmokeFailure(f"base image {image} is missing: pull it, or build it with ../shared/tools/docker-local (see its README)")
    if not any((ROOT / "docker" / "wheels").glob("torch-*.whl")):
        raise SmokeFailure("docker/wheels has no torch wheel: run make docker-wheels")


def host_network_compose_file() -> None:
    """docker-compose.yml with docker/compose.local.yml merged in (compose config), minus the port
    mappings of host-network services: Docker refuses both together, and compose v1 overrides can
    add to a list but not remove it."""
    merged = yaml.safe_load(run(["docker-compose", "-p", PROJECT, *OVERRIDE, "config"], capture=True))
    for service in merged["services"].values():
        if service.get("network_mode") == "host":
            service.pop("ports", None)
    path = Path(COMPOSE[-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(merged, sort_keys=False))


def build_images() -> None:
    for target, tag in IMAGES.items():
        run(["docker", "build", "--network", "host", "--pull=false", "-f", "docker/Dockerfile.cpu", "--target", target,
             "--build-arg", "PIP_INDEX_ARGS=--no-index", "-t", tag, "."], capture=True)


def trainer_then_service() -> None:
    run([*COMPOSE, "down", "-v", "--remove-orphans"], capture=True)
    run([*COMPOSE, "up", "-d", "--no-build", "service", "prometheus"], capture=True)
    trainer = wait_for("the trainer container", lambda: container("trainer"), 60)
    state = wait_for("the trainer to finish", lambda: (s := inspect(trainer)["State"])["Status"] == "exited" and s, 900, 2)
    if state["ExitCode"] != 0:
        raise SmokeFailure(f"trainer exited {state['ExitCode']}: {run(['docker', 'logs', '--tail', '30', trainer], capture=True)}")
    service = wait_for("the service container", lambda: container("service"), 120)
    health = wait_for("the service to be healthy", lambda: inspect(service)["State"]["Health"]["Status"] == "healthy", 300, 2)
    started = inspect(service)["State"]["StartedAt"]
    if started < state["FinishedAt"]:
        raise SmokeFailure(f"service started at {started}, before the trainer finished at {state['FinishedAt']}")
    assert health


def predictions() -> None:
    digits = load_digits()
    x, y = digits.images[-100:], digits.target[-100:]
    response = httpx.post(f"{SERVICE}/v1/models/digits:predict", json={"instances": x.tolist()}, timeout=30)
    response.raise_for_status()
    body = response.json()["predictions"]
    accepted = np.array([p["accepted"] for p in body])
    correct = np.array([p["label"] for p in body]) == y
    print(f"   100 held-out digits: accuracy {correct.mean():.0%}, accepted {accepted.mean():.0%}, accuracy among accepted {correct[accepted].mean():.0%}")
    if correct.mean() < 0.85 or accepted.mean() < 0.9:
        raise SmokeFailure("the model in the container answers badly")
    blank = httpx.post(f"{SERVICE}/v1/models/digits:predict", json={"instances": [np.zeros((8, 8)).tolist()]}, timeout=30).json()["predictions"][0]
    if blank["accepted"]:
        raise SmokeFailure("a blank image was accepted")
    print(f"   a blank image: rejected by {blank['rejected_by']} (p = {blank['p_value']:.4f})")


def prometheus_scrapes() -> None:
    def query(expression: str) -> list:
        return httpx.get(f"{PROMETHEUS}/api/v1/query", params={"query": expression}, timeout=5).json()["data"]["result"]

    def target_up():
        try:
            targets = httpx.get(f"{PROMETHEUS}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        except httpx.HTTPError:
            return None
        return [t for t in targets if t["labels"]["job"] == "diglm" and t["health"] == "up"]

    wait_for("Prometheus to report the diglm target up", target_up, 120, 2)
    series = wait_for("diglm_requests_total in Prometheus", lambda: query('diglm_requests_total{endpoint="/v1/models/{name}:predict"}'), 60, 2)
    print(f"   diglm_requests_total for :predict, by status: {({s['metric']['status']: s['value'][1] for s in series})}")
    rules = httpx.get(f"{PROMETHEUS}/api/v1/rules", timeout=5).json()["data"]["groups"]
    names = [rule["name"] for group in rules for rule in group["rules"]]
    print(f"   alert rules loaded: {', '.join(names)}")
    if len(names) < 7:
        raise SmokeFailure(f"expected the 7 alert rules of docker/alerts.yml, Prometheus has {names}")


def graceful_stop() -> None:
    service = container("service")
    started = time.perf_counter()
    run(["docker", "stop", "-t", str(GRACE_SECONDS), service])
    seconds = time.perf_counter() - started
    state = inspect(service)["State"]
    logged = subprocess.run(["docker", "logs", "--tail", "5", service], capture_output=True, text=True)
    logs = logged.stdout + logged.stderr
    print(f"   stopped in {seconds:.1f} s (grace {GRACE_SECONDS} s), exit code {state['ExitCode']}")
    if state["ExitCode"] != 0 or seconds >= GRACE_SECONDS or "Finished server process" not in logs:
        raise SmokeFailure(f"the service did not stop gracefully: exit {state['ExitCode']} after {seconds:.1f} s; last log lines: {logs}")


def image_sizes() -> dict[str, float]:
    return {tag: int(run(["docker", "image", "inspect", "--format", "{{.Size}}", tag], capture=True)) / 1e6 for tag in IMAGES.values()}


def main() -> int:
    failure = None
    try:
        with stage("base images and wheelhouse present"):
            check_base_images()
        with stage("build the trainer and service images (wheelhouse, --no-index)"):
            build_images()
            host_network_compose_file()
        with stage("compose up: the trainer writes a checkpoint, then the service turns healthy"):
            trainer_then_service()
        with stage("predictions through the container"):
            predictions()
        with stage("Prometheus scrapes the service and loaded the alert rules"):
            prometheus_scrapes()
        with stage("docker stop ends the service gracefully"):
            graceful_stop()
    except SmokeFailure as error:
        failure = error
    finally:
        with stage("tear down (compose down -v)"):
            subprocess.run([*COMPOSE, "down", "-v", "--remove-orphans"], cwd=ROOT, capture_output=True)
    print("\n| stage | seconds |\n|---|---:|")
    for name, seconds in stages:
        print(f"| {name} | {seconds:.1f} |")
    if not failure:
        print("\n| image | size (MB) |\n|---|---:|")
        for tag, size in image_sizes().items():
            print(f"| {tag} | {size:.0f} |")
    if failure:
        print(f"\nFAILED: {failure}", file=sys.stderr)
        return 1
    print("\ndocker smoke: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
