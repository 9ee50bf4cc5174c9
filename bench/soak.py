"""``make soak``: overload the service for minutes and check nothing is lost. Starts ``python -m
service`` on a free loopback port, measures its capacity with wrk (``--capacity-connections``
connections, 15 s), then drives it with twice those connections' offered load for ``--minutes`` in
30-second segments (wrk is closed-loop: twice the connections of the saturating run, with requests
of the same single digit) and prints, per segment, requests, status counts, p99 latency and the
server's resident memory; then checks the answers to known digits are exactly what they were.

Pass: every non-2xx is a 503 (with Retry-After) or a 504, p99 of all answers within the request
deadline, RSS growth under 10%, answers unchanged.

    .venv/bin/python -m bench.soak --model-dir artifacts/digits --minutes 5
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import httpx

from bench import wrk
from bench.serve_load import free_port, start_server
from training.config import DataConfig
from training.data import load_dataset

# counts answers by status, and whether 503s carry Retry-After
CLASSIFY = """
function classify(status, headers, body)
  if status == 503 and headers["retry-after"] == nil and headers["Retry-After"] == nil then return "503-without-retry-after" end
  return tostring(status)
end
"""


def rss_kib(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="artifacts/digits")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--capacity-connections", type=int, default=64, help="connections of the capacity run (saturating)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 1
    digits = load_dataset(DataConfig(name="digits")).x
    port = free_port()
    server = start_server(port, "--model-dir", args.model_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        model = httpx.get(f"{base}/v2").json()["models"][0]
        deadline = 5.0  # the service's default request_timeout_s
        before = httpx.post(f"{base}/v1/models/{model}:predict", json={"instances": digits[:20].tolist()}).json()
        script = wrk.write_script(Path(tempfile.mkdtemp()) / "post.lua", json.dumps({"instances": [digits[0].tolist()]}), CLASSIFY)
        url = f"{base}/v1/models/{model}:predict"
        capacity = wrk.run(url, script, args.capacity_connections, 15)
        print(f"capacity: {capacity['requests_per_s']:.0f} requests/s at {args.capacity_connections} connections (p99 {capacity['p99_s']:.3f} s)")
        connections = 2 * args.capacity_connections
        start_rss = rss_kib(server.pid)
        segments = []
        print(f"soak: {connections} connections for {args.minutes:g} min\n\n| segment | requests | statuses | p99 (s) | socket errors | RSS (MiB) |\n|---:|---:|---|---:|---|---:|")
        for index in range(max(1, int(args.minutes * 2))):
            segment = wrk.run(url, script, connections, 30)
            segment["rss_kib"] = rss_kib(server.pid)
            segments.append(segment)
            print(f"| {index + 1} | {segment['requests']} | {segment['statuses']} | {segment['p99_s']:.3f} | {segment['socket_errors']} | {segment['rss_kib'] / 1024:.1f} |", flush=True)
        after = httpx.post(f"{base}/v1/models/{model}:predict", json={"instances": digits[:20].tolist()}).json()
    finally:
        server.terminate()
        server.wait(timeout=60)
    totals: dict[str, int] = {}
    for segment in segments:
        for key, n in segment["statuses"].items():
            totals[key] = totals.get(key, 0) + n
    unexpected = {key: n for key, n in totals.items() if key not in ("200", "503", "504")}
    growth = segments[-1]["rss_kib"] / start_rss - 1
    worst_p99 = max(segment["p99_s"] for segment in segments)
    socket_errors = sum(sum(segment["socket_errors"]) for segment in segments)
    print(f"\ntotal: {sum(totals.values())} requests {totals}; worst p99 {worst_p99:.3f} s (deadline {deadline:g} s); "
          f"RSS {start_rss / 1024:.1f} -> {segments[-1]['rss_kib'] / 1024:.1f} MiB ({growth:+.1%}); socket errors {socket_errors}; "
          f"answers unchanged: {after == before}")
    passed = not unexpected and worst_p99 <= deadline and growth < 0.10 and after == before and socket_errors == 0
    print("soak: passed" if passed else f"soak: FAILED (unexpected statuses {unexpected})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
