-- Shared by every wrk script in bench/lua: each loads it with
-- dofile(BENCH_LUA_DIR .. "/common.lua") and then defines request() (or
-- leaves wrk's static request in place).
--
-- What it gives:
--   * thread numbering: setup() hands each wrk thread a distinct `tid`
--     (0, 1, ...), so ids built from (tid, per-thread counter) never repeat
--     across threads;
--   * per-thread counters by status, kept in the thread's global `stats`
--     table and summed in done() through thread:get("stats");
--   * a microsecond monotonic clock (LuaJIT ffi) for sell-out timing;
--   * one machine-readable line, "BENCH key=value ...", printed by done().

local ffi = require("ffi")
-- cdef twice in one Lua state fails; the pcall makes a second load harmless.
pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
int clock_gettime(int clk_id, bench_timespec_t *tp);
int getpid(void);
int kill(int pid, int sig);
]])
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec_t")

function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then
    if default == nil then
      error("bench: environment variable " .. name .. " is not set")
    end
    return default
  end
  return v
end

function env_number(name, default)
  local v = tonumber(env(name, default and tostring(default) or nil))
  if v == nil then
    error("bench: " .. name .. " is not a number")
  end
  return v
end

JSON_HEADERS = { ["Content-Type"] = "application/json" }

-- With `key`, the claim carries it as its Idempotency-Key.
function claim_request(user_id, coupon, key)
  local body = '{"user_id":"' .. user_id .. '","coupon_name":"' .. coupon .. '"}'
  local headers = JSON_HEADERS
  if key ~= nil then
    headers = { ["Content-Type"] = "application/json", ["Idempotency-Key"] = key }
  end
  return wrk.format("POST", "/api/coupons/claim", headers, body)
end

-- Main Lua state: number the threads and keep them for done().
local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

-- Thread Lua state.
stats = {
  s2xx = 0, s400 = 0, s404 = 0, s409 = 0, s4xx = 0, s5xx = 0, other = 0,
  busy503 = 0, unavailable503 = 0, other5xx = 0,
  first_us = 0, last_us = 0, last200_us = 0, counted = 0,
}

function thread_init()
  math.randomseed(os.time() * 1000 + tid * 7919)
end

function init(args)
  thread_init()
end

-- Records one response; scripts call it from response() (or use the default
-- response below). Returns nothing.
function count(status, body)
  local t = now_us()
  stats.counted = stats.counted + 1
  stats.last_us = t
  if status >= 200 and status < 300 then
    stats.s2xx = stats.s2xx + 1
    stats.last200_us = t
  elseif status == 400 then
    stats.s400 = stats.s400 + 1
  elseif status == 404 then
    stats.s404 = stats.s404 + 1
  elseif status == 409 then
    stats.s409 = stats.s409 + 1
  elseif status >= 400 and status < 500 then
    stats.s4xx = stats.s4xx + 1
  elseif status >= 500 and status < 600 then
    stats.s5xx = stats.s5xx + 1
    if status == 503 and body and body:find('"busy"', 1, true) then
      stats.busy503 = stats.busy503 + 1
    elseif status == 503 and body and body:find('"database_unavailable"', 1, true) then
      stats.unavailable503 = stats.unavailable503 + 1
    else
      stats.other5xx = stats.other5xx + 1
    end
  else
    stats.other = stats.other + 1
  end
end

-- Scripts that send requests of their own call this when they build one.
function mark_sent()
  if stats.first_us == 0 then
    stats.first_us = now_us()
  end
end

function response(status, headers, body)
  count(status, body)
end

-- For scripts that end on a count rather than on wrk's -d: stops this
-- thread, and once every thread has stopped, ends the run. wrk's main thread
-- sleeps for the whole -d whatever the threads do; SIGINT (which wrk handles
-- as "stop now") cuts that sleep short. Threads are counted through marker
-- files in BENCH_DONE_DIR: each writes its own, then looks for all of them,
-- so whichever finishes last sees them all.
function finish_thread()
  wrk.thread:stop()
  local dir = env("BENCH_DONE_DIR")
  local nthreads = env_number("BENCH_THREADS")
  local f = assert(io.open(dir .. "/done-" .. tid, "w"))
  f:close()
  for i = 0, nthreads - 1 do
    local g = io.open(dir .. "/done-" .. i, "r")
    if g == nil then
      return
    end
    g:close()
  end
  ffi.C.kill(ffi.C.getpid(), 2) -- SIGINT
end

function done(summary, latency, requests)
  local agg = {}
  local first_us, last_us, last200_us = nil, 0, 0
  for _, thread in ipairs(threads) do
    local s = thread:get("stats")
    for k, v in pairs(s) do
      if k == "first_us" then
        if v > 0 and (first_us == nil or v < first_us) then first_us = v end
      elseif k == "last_us" then
        if v > last_us then last_us = v end
      elseif k == "last200_us" then
        if v > last200_us then last200_us = v end
      else
        agg[k] = (agg[k] or 0) + v
      end
    end
  end
  first_us = first_us or 0
  local e = summary.errors
  local fields = {
    string.format("requests=%d", summary.requests),
    string.format("duration_us=%d", summary.duration),
    string.format("p50_us=%d", latency:percentile(50)),
    string.format("p99_us=%d", latency:percentile(99)),
    string.format("max_us=%d", latency.max),
    string.format("mean_us=%.0f", latency.mean),
    string.format("err_connect=%d", e.connect),
    string.format("err_read=%d", e.read),
    string.format("err_write=%d", e.write),
    string.format("err_timeout=%d", e.timeout),
    string.format("first_us=%d", first_us),
    string.format("last_us=%d", last_us),
    string.format("last200_us=%d", last200_us),
  }
  local keys = {}
  for k in pairs(agg) do table.insert(keys, k) end
  table.sort(keys)
  for _, k in ipairs(keys) do
    table.insert(fields, string.format("%s=%d", k, agg[k]))
  end
  io.write("BENCH " .. table.concat(fields, " ") .. "\n")
end
