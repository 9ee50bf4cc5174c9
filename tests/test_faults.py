"""Faults survived for real, in processes of their own (docs/operations.md, "Faults"): a training
killed with SIGKILL while it writes its checkpoint, a disk that fills during the write, and the
service killed with SIGKILL during a hot swap. Each test kills only the process it started, by its
PID; the full disk is a 1 MB tmpfs the test mounts and unmounts. ONNX Runtime failing for one
version, and folders or names leading out of the repository, are in tests/test_repository.py."""
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from inference.inputs import InferenceInput
from inference.runtime import ModelRuntime
from models.checkpoint import load_checkpoint, read_manifest
from tests.conftest import free_port, wait_for
from tests.test_repository import add_version
from training.cli import main as training_main
from training.config import DataConfig
from training.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "training" / "configs" / "tiny.yaml")

# `python -m training train` with one step of models.checkpoint paused for good, so that the test can kill it there
PAUSED_TRAINING = """
import sys, time
import models.checkpoint as checkpoint
from training.cli import main

step, after = sys.argv[1], sys.argv[2] == "after"
original = getattr(checkpoint, step)

def paused(*args, **kwargs):
    if after:
        original(*args, **kwargs)
    print("paused", flush=True)
    time.sleep(600)

setattr(checkpoint, step, paused)
sys.exit(main(sys.argv[3:]))
"""


def train(out: Path, seed: int) -> None:
    assert training_main(["train", "--config", TINY, "--out", str(out), "--quiet", "--set", f"seed={seed}"]) == 0


def wait_for_line(process: subprocess.Popen, line: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([process.stdout], [], [], 0.1)[0] and process.stdout.readline().strip() == line:
            return
        if process.poll() is not None:
            pytest.fail(f"the process exited ({process.returncode}) before printing {line!r}")
    pytest.fail(f"waited {timeout:g} s for {line!r}")


def load(url: str) -> None:
    """The load call of a hot swap; the service is killed before it answers (most often)."""
    try:
        httpx.post(url, timeout=60)
    except httpx.HTTPError:
        pass


def staging_folders(folder: Path, name: str) -> list[Path]:
    return list(folder.glob(f".{name}.tmp-*"))


@pytest.mark.parametrize("step, when", [("_write_manifest", "before"), ("_exchange", "after")], ids=["before-the-swap", "after-the-swap"])
def test_a_training_killed_while_it_writes_its_checkpoint_leaves_a_whole_one_and_a_rerun_works(tmp_path, step, when):
    out = tmp_path / "model"
    train(out, seed=0)
    before = read_manifest(out).version
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_TRAINING, step, when, "train", "--config", TINY, "--out", str(out), "--quiet", "--set", "seed=1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        wait_for_line(process, "paused")
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    whole = load_checkpoint(out)  # every file's hash and the manifest's seal verified
    assert (whole.manifest.version == before) == (when == "before")  # the old one until the swap, the new one after it
    assert len(staging_folders(tmp_path, "model")) == 1  # what the killed writer left beside it, never loaded
    train(out, seed=2)
    assert read_manifest(out).version not in (before, whole.manifest.version)
    assert staging_folders(tmp_path, "model") == []  # the rerun removed the dead writer's leftovers


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs mounted for the test (root only; skipped elsewhere), unmounted after it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_disk_that_fills_during_the_write_is_a_one_line_error_and_the_checkpoint_before_stays(small_disk):
    out = small_disk / "model"
    train(out, seed=0)
    before = read_manifest(out)
    (small_disk / "filler").write_bytes(bytes(shutil.disk_usage(small_disk).free - 48 * 1024))  # room for a part of a checkpoint
    result = subprocess.run(
        [sys.executable, "-m", "training", "train", "--config", TINY, "--out", str(out), "--quiet", "--set", "seed=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot write checkpoint {out}: No space left on device; the checkpoint there is unchanged"]
    assert load_checkpoint(out).manifest.digest == before.digest
    assert sorted(path.name for path in small_disk.iterdir()) == ["filler", "model"]  # nothing half-written left behind


def test_the_service_killed_during_a_hot_swap_serves_a_verified_version_when_it_restarts(tmp_path):
    checkpoints = {seed: tmp_path / f"seed{seed}" for seed in (0, 1)}
    for seed, path in checkpoints.items():
        train(path, seed)
    digits = load_dataset(DataConfig(name="digits")).x[:4]
    expected = ModelRuntime.load(checkpoints[1], "cpu", "torch").predict(InferenceInput(digits)).log_px
    root = tmp_path / "repo"
    add_version(root, "a", 1, checkpoints[0])
    port, log = free_port(), tmp_path / "service.log"
    command = [sys.executable, "-m", "service", "--model-repository", str(root), "--port", str(port), "--device", "cpu", "--backend", "torch"]
    env = {**os.environ, "DIGLM_GRPC_PORT": "0", "DIGLM_LOG_LEVEL": "info"}
    base = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen:
        with open(log, "w") as handle:
            service = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=handle, env=env)
        wait_for(lambda: httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200, "the service to be ready", timeout=120)
        return service

    service = start()
    try:
        add_version(root, "a", 2, checkpoints[1])
        swap = threading.Thread(target=load, args=(f"{base}/v2/repository/models/a/load",), daemon=True)
        swap.start()
        wait_for(lambda: "loaded a version 2" in log.read_text(), "the swap to load version 2", timeout=60)
        os.kill(service.pid, signal.SIGKILL)  # mid-swap: loaded, maybe warmed up, maybe switched
        assert service.wait(timeout=30) == -signal.SIGKILL
        swap.join(timeout=60)
        cut_short = root / "a" / "3"  # a copy into the repository that the same crash cut short
        shutil.copytree(checkpoints[1], cut_short)
        (cut_short / "weights.safetensors").write_bytes((cut_short / "weights.safetensors").read_bytes()[:1000])
        service = start()
        answer = httpx.post(f"{base}/v1/models/a:predict", json={"instances": digits.tolist()}, timeout=30)
        index = httpx.post(f"{base}/v2/repository/index", timeout=30).json()
    finally:
        if service.poll() is None:
            service.terminate()
            service.wait(timeout=60)
    assert answer.status_code == 200 and answer.json()["model_version"] == "2"
    np.testing.assert_allclose([row["log_px"] for row in answer.json()["predictions"]], expected, atol=1e-4)
    assert {"name": "a", "version": "2", "state": "READY"} in index
    damaged = next(row for row in index if row["version"] == "3")
    assert damaged["state"] == "UNAVAILABLE" and "sha256" in damaged["reason"]
