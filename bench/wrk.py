"""wrk (the C load generator) driven from Python: a Lua script that POSTs one JSON body and counts
the answers by a ``classify(status, headers, body)`` function of the caller's (Lua), merged over
wrk's threads, and the run's requests/s, p50 / p99 latency and socket errors parsed from its output."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '__BODY__'
__CLASSIFY__
local counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  local key = classify(status, headers, body)
  counts[key] = (counts[key] or 0) + 1
  local parts = {}
  for name, n in pairs(counts) do table.insert(parts, name .. "=" .. n) end
  encoded = table.concat(parts, " ")  -- each thread publishes its counts for done() (Lua states are per thread)
end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local text = thread:get("encoded") or ""
    for name, n in string.gmatch(text, "([%w-]+)=(%d+)") do total[name] = (total[name] or 0) + tonumber(n) end
  end
  local parts = {}
  for name, n in pairs(total) do table.insert(parts, name .. "=" .. n) end
  io.write("STATUS " .. table.concat(parts, " ") .. "\\n")
  io.write(string.format("P50 %f\\nP99 %f\\n", latency:percentile(50) / 1e6, latency:percentile(99) / 1e6))
  io.write(string.format("ERRORS %d %d %d %d\\n", summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
end
function request() return wrk.format() end
"""


def write_script(path: Path, body: str, classify: str) -> Path:
    """The Lua script posting ``body`` (JSON without single quotes) with ``classify`` (Lua source
    defining ``classify(status, headers, body)`` -> a count's name)."""
    path.write_text(SCRIPT.replace("__BODY__", body).replace("__CLASSIFY__", classify))
    return path


def run(url: str, script: Path, connections: int, seconds: float, cpus: set[int] | None = None) -> dict:
    """One closed-loop wrk run (2 threads; on ``cpus`` only when given): requests, counts by
    ``classify``, p50 / p99 (s), socket errors (connect, read, write, timeout), requests/s."""
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "-s", str(script), url], capture_output=True, text=True,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )
    text = result.stdout
    if "STATUS" not in text:
        raise RuntimeError(f"wrk failed: {result.stderr.strip() or text.strip()}")
    counts = {key: int(n) for key, n in re.findall(r"([\w-]+)=(\d+)", re.search(r"STATUS (.*)", text).group(1))}
    return {
        "requests": sum(counts.values()),
        "statuses": counts,
        "p50_s": float(re.search(r"P50 ([\d.]+)", text).group(1)),
        "p99_s": float(re.search(r"P99 ([\d.]+)", text).group(1)),
        "socket_errors": [int(n) for n in re.search(r"ERRORS (\d+) (\d+) (\d+) (\d+)", text).groups()],
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
    }
