"""The packages' layering, checked by import-linter against the contracts in pyproject.toml: models
<- inference <- {service, training} <- bench <- tests, service and training independent, and no
import cycles inside a package; and the check itself fails when one import breaks it. Imports inside
functions count as much as those at the top of a file."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "inference", "service", "training", "bench", "tests")
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the packages under ``root`` (its pyproject.toml's contracts)."""
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(root), "PATH": ""})


def test_the_packages_keep_their_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


LAYERS = "tests -> bench -> {service, training} -> inference -> models BROKEN"
CYCLES = "no import cycles inside a package BROKEN"


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        ("inference/runtime.py", "import service.app", LAYERS),  # inference reaching up into the web service
        ("training/score.py", "from service.encoding import output_table", LAYERS),  # training beside the service, not on it
        ("bench/fuzz.py", "from tests.conftest import wait_ready", LAYERS),  # a benchmark on the test suite
        ("models/gate.py", "def late():\n    from inference.prediction import Prediction", LAYERS),  # inside a function counts too
        ("service/metrics.py", "from service.serving import ServedVersion", CYCLES),  # serving imports metrics
    ],
)
def test_one_import_out_of_place_breaks_the_check(tmp_path, module, statement, contract):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / module, "a") as handle:
        handle.write(f"\n\n{statement}\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1 and "1 kept, 1 broken" in result.stdout and contract in result.stdout, result.stdout[-3000:]
