-- wrk script: POST the body in $BENCH_BODY with the Content-Type in
-- $BENCH_TYPE; count answers by HTTP status and by MM7 StatusCode; with
-- $BENCH_DELAY_MS, wait that long before each request (a rate limit).
-- Each request gets a TransactionID of its own (the body's "bench-1"
-- replaced), as real peers send: a fixed one would measure the answers a
-- store remembers.  $BENCH_SAME_TRANSACTION=1 keeps the body's, to
-- measure exactly those.
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_TYPE")
local wait = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local same = os.getenv("BENCH_SAME_TRANSACTION") == "1"
local at = string.find(wrk.body, "bench-1", 1, true)
local head, tail
if at then
  head, tail = string.sub(wrk.body, 1, at - 1), string.sub(wrk.body, at + 7)
end

local threads = {}
function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

local sent = 0
function request()
  if same or not head then
    return wrk.format()
  end
  sent = sent + 1
  local tid = string.format("b%d-%d-%d", thread_id, math.random(1e9), sent)
  return wrk.format(nil, nil, nil, head .. tid .. tail)
end

function init(args)
  ok, other, mm7_1000 = 0, 0, 0
end

function delay()
  -- Jittered, so that the connections do not fire in lockstep.
  if wait == 0 then return 0 end
  return wait * (0.5 + math.random())
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 else other = other + 1 end
  if string.find(body, "<StatusCode>1000</StatusCode>", 1, true) then
    mm7_1000 = mm7_1000 + 1
  end
end

function done(summary, latency, requests)
  local t_ok, t_other, t_1000 = 0, 0, 0
  for _, thread in ipairs(threads) do
    t_ok = t_ok + thread:get("ok")
    t_other = t_other + thread:get("other")
    t_1000 = t_1000 + thread:get("mm7_1000")
  end
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f http200=%d other=%d mm7_1000=%d errors=%d p50=%.3f p99=%.3f\n",
    summary.requests, summary.duration / 1e6, t_ok, t_other, t_1000,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
