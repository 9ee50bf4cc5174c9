"""The deployment files, checked with what runs here (no Docker engine): compose structure,
Dockerfile references, the health check path, the Prometheus target."""
from pathlib import Path

import yaml

from service.app import create_app

ROOT = Path(__file__).resolve().parents[1]


def test_compose_runs_trainer_then_service_then_prometheus():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["service"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert services["prometheus"]["depends_on"]["service"]["condition"] == "service_healthy"
    for name in ("trainer", "service", "service-gpu"):
        build = services[name]["build"]
        assert (ROOT / build["dockerfile"]).is_file()
        assert any(volume.startswith("models:/models") for volume in services[name]["volumes"])
    prometheus_config = services["prometheus"]["volumes"][0].split(":")[0]
    scrape = yaml.safe_load((ROOT / prometheus_config).read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/metrics" and scrape["static_configs"][0]["targets"] == ["service:8000"]


def test_dockerfiles_copy_existing_paths_and_check_readiness():
    routes = set(create_app().openapi()["paths"])
    for dockerfile in ("Dockerfile.gpu", "Dockerfile.cpu"):
        text = (ROOT / "docker" / dockerfile).read_text()
        for line in text.splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile} copies missing {source}"
        assert "/v2/health/ready" in text and "/v2/health/ready" in routes
        assert "USER 10001" in text
    gpu, cpu = (ROOT / "docker" / "Dockerfile.gpu").read_text(), (ROOT / "docker" / "Dockerfile.cpu").read_text()
    assert '".[serve,onnx-gpu]"' in gpu and "onnx-cpu" not in gpu and '".[serve,onnx-cpu]"' in cpu and "onnx-gpu" not in cpu
    assert "train" not in gpu.split("pip install", 1)[1].split("\n")[0]  # the serving image carries no training extras
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert pyproject.count("onnxruntime==1.31.1") == 1 and pyproject.count("onnxruntime-gpu==1.31.1") == 1


def test_the_service_imports_nothing_of_the_training_extras():
    """The serve extra is enough: a process where the training-only packages cannot be imported
    still builds the app and loads its modules."""
    import subprocess
    import sys

    blocked = ["sklearn", "matplotlib", "onnxscript", "yaml", "tqdm", "training"]  # scipy serves the drift tests
    script = (
        "import sys\n"
        f"blocked = {blocked!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in blocked:\n"
        "            raise ImportError(f'{name} is not part of the serve extra')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import service.__main__, service.app, service.runtime\n"
        "service.app.create_app()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
