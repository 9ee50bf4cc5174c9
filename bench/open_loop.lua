-- Open-loop arrivals for wrk (bench/soak_open.py): requests go at fixed times, RATE per second per
-- thread, whatever the earlier answers (as wrk2 does in C). wrk calls delay() before each request
-- of a connection: a free connection takes the next time slot of its thread and waits for it, so every
-- slot goes on time while a connection is free. With more connections than requests in flight the
-- arrivals never wait for answers; when none is free, slots go late and the lag (sent - due) shows it.
--
-- Each request takes the earliest slot taken (the timers fire in that order, to the millisecond).
-- Each request posts one of the cases in turn, with X-Request-ID naming it. OUT/thread-N.txt (flushed
-- once a second: the last second is lost when wrk exits) gets a
-- line per request sent, "sent ID DUE SENT" (seconds from the thread's start), and one per answer,
-- "answer ID STATUS SECONDS VERDICT" (seconds from sent to the answer); the verdict: a 200's body
-- equal to the case's answer at rest (same) or not (wrong); a 503 with Retry-After (retry-after) or
-- without (no-retry-after); "-" otherwise. An answer without a known X-Request-ID has ID "?".
--
-- wrk -t THREADS -c CONNECTIONS -d SECONDS -s bench/open_loop.lua URL -- RATE CASES_FILE OUT
-- CASES_FILE: a request body and its answer at rest, one line each, in turn.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } timespec_t;
int clock_gettime(int clock, timespec_t *now);
]]
local clock = ffi.new("timespec_t")
local function now()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

local interval, start, slot, out, flushed
local bodies, answers = {}, {}
local dues, first, last = {}, 1, 0 -- the slots taken by waiting connections, earliest first
local pending, sequence = {}, 0 -- request id -> {sent, case}

function init(args)
  local rate, cases_file, folder = tonumber(args[1]), args[2], args[3]
  interval = 1 / rate
  local lines = {}
  for line in io.lines(cases_file) do table.insert(lines, line) end
  for index = 1, #lines, 2 do
    table.insert(bodies, lines[index])
    table.insert(answers, lines[index + 1])
  end
  out = assert(io.open(folder .. "/thread-" .. id .. ".txt", "w"))
  out:setvbuf("full", 1048576) -- flushed each second (response): wrk exits without closing the threads' files
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  start, slot = now(), 0
  flushed = start
end

function delay()
  local due = start + slot * interval
  slot = slot + 1
  last = last + 1
  dues[last] = due
  local wait = (due - now()) * 1000
  return wait > 0 and math.ceil(wait) or 0
end

function request()
  if first > last then -- wrk's check of the script, before the run: not sent
    return wrk.format(nil, nil, nil, bodies[1])
  end
  local due = dues[first]
  dues[first] = nil
  first = first + 1
  sequence = sequence + 1
  local case = sequence % #bodies + 1
  local sent = now()
  local id = tostring(sequence)
  pending[id] = { sent, case }
  out:write(string.format("sent %s %.6f %.6f\n", id, due - start, sent - start))
  wrk.headers["X-Request-ID"] = id
  return wrk.format(nil, nil, nil, bodies[case])
end

function response(status, headers, body)
  local answered = now()
  if answered > flushed + 1 then
    out:flush()
    flushed = answered
  end
  local id = headers["x-request-id"] or headers["X-Request-ID"]
  local sent = id and pending[id]
  if not sent then
    out:write(string.format("answer ? %d nan -\n", status))
    return
  end
  pending[id] = nil
  local verdict = "-"
  if status == 200 then
    verdict = body == answers[sent[2]] and "same" or "wrong"
  elseif status == 503 then
    verdict = (headers["retry-after"] or headers["Retry-After"]) and "retry-after" or "no-retry-after"
  end
  out:write(string.format("answer %s %d %.6f %s\n", id, status, answered - sent[1], verdict))
end

function done(summary, latency, requests)
  io.write(string.format("ERRORS %d %d %d %d %d\n", summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout, summary.errors.status))
end
