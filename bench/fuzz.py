"""``make fuzz``: fuzz the live service. Starts ``python -m service`` on a free loopback port, then

1. the project's own fuzzer: the hypothesis strategies of ``bench/fuzz_cases.py``, which
   ``tests/test_fuzz.py`` draws from too (arbitrary JSON in v1 and v2 bodies, near-valid tensors,
   the binary tensor extension, raw bytes, odd content types), ``--cases`` requests in all, over
   real HTTP;
2. schemathesis against the service's OpenAPI document (every operation, ``not_a_server_error`` and
   its other default checks);

and checks the server still answers a known request exactly as before. The server has an admin key
nobody sends, so the model repository routes (load, unload) are fuzzed up to their 401: schemathesis
would otherwise unload the model under test. Prints the status counts; exits 1 on any 5xx, reset or
changed answer.

    .venv/bin/python -m bench.fuzz --model-dir artifacts/digits --cases 10000
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings

from bench.fuzz_cases import content_types, v1_bodies, v2_bodies, v2_tensors
from bench.serve_load import free_port, start_server
from training.config import DataConfig
from training.data import load_dataset


def own_fuzzer(base: str, model: str, cases: int) -> collections.Counter:
    """``cases`` requests drawn from ``bench.fuzz_cases``; status counts ("reset" for a
    connection error)."""
    counts: collections.Counter = collections.Counter()
    client = httpx.Client(base_url=base, timeout=30)
    quota = settings(max_examples=cases // 3, deadline=None, database=None, suppress_health_check=list(HealthCheck))

    def send(path: str, content: bytes, headers: dict) -> None:
        try:
            counts[client.post(path, content=content, headers=headers).status_code] += 1
        except httpx.TransportError:
            counts["reset"] += 1

    @quota
    @given(body=v1_bodies, content_type=content_types)
    def v1(body, content_type):
        send(f"/v1/models/{model}:predict", json.dumps(body).encode(), {"content-type": content_type})

    @quota
    @given(body=v2_bodies, content_type=content_types)
    def v2(body, content_type):
        send(f"/v2/models/{model}/infer", json.dumps(body).encode(), {"content-type": content_type})

    @quota
    @given(tensor=v2_tensors)
    def binary(tensor):
        header = json.dumps({"inputs": [tensor]}).encode()
        payload = bytes(range(256))[: (len(header) * 7) % 256]
        send(f"/v2/models/{model}/infer", header + payload, {"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"})

    for run in (v1, v2, binary):
        run()
    return counts


def schemathesis(base: str, model: str, examples: int) -> tuple[int, str]:
    """schemathesis run with the served model's name as the {name} path parameter (else almost every
    case is a 404). Its "coverage" phase is left out: it fails inside hypothesis' lambda printer on
    Python 3.11.7 before sending anything."""
    config = Path(tempfile.mkdtemp()) / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.name" = "{model}"\n')
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{base}/openapi.json", "--max-examples", str(examples),
        "--checks", "not_a_server_error", "--phases", "examples,fuzzing,stateful", "--workers", "2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    return result.returncode, (result.stdout + result.stderr)[-3000:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="artifacts/digits")
    parser.add_argument("--cases", type=int, default=10_000, help="requests of the project's own fuzzer (default 10,000)")
    parser.add_argument("--schemathesis-examples", type=int, default=300, help="schemathesis examples per operation")
    args = parser.parse_args()
    port = free_port()
    os.environ["DIGLM_ADMIN_API_KEYS"] = secrets.token_hex(16)  # the repository routes answer 401 (see above)
    server = start_server(port, "--model-dir", args.model_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        model = httpx.get(f"{base}/v2").json()["models"][0]
        digits = load_dataset(DataConfig(name="digits")).x[:5].tolist()
        before = httpx.post(f"{base}/v1/models/{model}:predict", json={"instances": digits}).json()
        counts = own_fuzzer(base, model, args.cases)
        print(f"own fuzzer: {sum(counts.values())} requests; status counts {dict(sorted(counts.items(), key=str))}")
        code, report = schemathesis(base, model, args.schemathesis_examples)
        print(f"schemathesis (exit {code}):\n{report}")
        after = httpx.post(f"{base}/v1/models/{model}:predict", json={"instances": digits}).json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    server_errors = sum(n for status, n in counts.items() if status == "reset" or status >= 500)
    unchanged = after == before
    print(f"5xx or resets: {server_errors}; schemathesis failures: {'none' if code == 0 else 'see above'}; answers after fuzzing unchanged: {unchanged}")
    return 0 if server_errors == 0 and code == 0 and unchanged else 1


if __name__ == "__main__":
    sys.exit(main())
