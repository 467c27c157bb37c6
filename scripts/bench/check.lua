-- wrk script for `scripts/bench.sh` single, cluster and redis: POST /v1/check with
-- random tenants.
--
-- Each request carries {"tenant_id":"t<N>","cost":C} with N drawn uniformly from
-- 1..BENCH_TENANT_SPACE (default 100000) by math.random, seeded differently in
-- every wrk thread, and C = BENCH_COST (default 1). Connections are kept alive
-- (wrk's default, HTTP/1.1).
--
-- Environment (read by every thread):
--   BENCH_TENANT_SPACE  number of distinct tenant ids (default 100000)
--   BENCH_COST          cost of every check (default 1)
--   BENCH_STATUS        1 = count responses per HTTP status (adds a response()
--                       callback, which costs some client CPU; default 0)
--   BENCH_DELAY_MS      pause of every connection before each request (wrk's
--                       delay() hook), to offer a bounded rate: at most
--                       connections * 1000 / BENCH_DELAY_MS checks/s (default 0:
--                       as fast as the server answers)
--
-- done() prints one machine-readable line that the bench binary parses
-- (integration/src/bin/bench/wrk.rs):
--   BENCH_RESULT requests=.. duration_s=.. rps=.. p50_us=.. p90_us=.. p99_us=..
--                max_us=.. non2xx=.. connect_err=.. read_err=.. write_err=.. timeout_err=..
-- and, with BENCH_STATUS=1, a line `BENCH_STATUS 200=.. 429=.. ...`.

local tenant_space = tonumber(os.getenv("BENCH_TENANT_SPACE") or "") or 100000
local cost = tonumber(os.getenv("BENCH_COST") or "") or 1
local count_status = (os.getenv("BENCH_STATUS") or "0") == "1"
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "") or 0

wrk.method = "POST"
wrk.path = "/v1/check"
wrk.headers["Content-Type"] = "application/json"

local threads = {}
local thread_counter = 0

function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("thread_no", thread_counter)
  table.insert(threads, thread)
end

function init(args)
  -- Seed per thread: time plus the thread number, so threads draw different ids.
  math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919)
  -- Discard the first few values (LuaJIT's PRNG is fine, but be safe).
  for _ = 1, 10 do math.random() end
  statuses = {}
end

local random = math.random
local tail = '","cost":' .. cost .. '}'
local format = wrk.format

function request()
  local body = '{"tenant_id":"t' .. random(1, tenant_space) .. tail
  return format(nil, nil, nil, body)
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

if count_status then
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
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
  if count_status then
    local totals = {}
    for _, t in ipairs(threads) do
      local s = t:get("statuses")
      if s then
        for code, n in pairs(s) do
          totals[code] = (totals[code] or 0) + n
        end
      end
    end
    local codes = {}
    for code, _ in pairs(totals) do table.insert(codes, code) end
    table.sort(codes)
    local parts = {}
    for _, code in ipairs(codes) do
      table.insert(parts, code .. "=" .. totals[code])
    end
    io.write("BENCH_STATUS " .. table.concat(parts, " ") .. "\n")
  end
end
