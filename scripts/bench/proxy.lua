-- wrk script for `scripts/bench.sh proxy`: POST /v1/chat/completions (a
-- one-message gpt-4o chat, max_tokens 16, non-streaming) with a bearer key
-- drawn from BENCH_TENANT_SPACE keys, so the proxy spreads tenants over its
-- buckets. The same script is run against the stub upstream directly (the
-- key is then ignored) and through the proxy.
--
-- done() prints the BENCH_RESULT line of check.lua.

local tenant_space = tonumber(os.getenv("BENCH_TENANT_SPACE") or "") or 100000
-- BENCH_DELAY_MS: each connection pauses this long before each request, so
-- the offered rate is at most connections * 1000 / BENCH_DELAY_MS (0: as fast
-- as answers come).
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "") or 0
if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"gpt-4o","max_tokens":16,"messages":[{"role":"user","content":"hello world"}]}'

local thread_counter = 0

function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("thread_no", thread_counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919)
  for _ = 1, 10 do math.random() end
end

local random = math.random
local format = wrk.format

function request()
  return format(nil, nil, { ["Authorization"] = "Bearer bench-" .. random(1, tenant_space),
                            ["Content-Type"] = "application/json" }, nil)
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_s=%.3f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "non2xx=%d connect_err=%d read_err=%d write_err=%d timeout_err=%d\n",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
