-- bench/replicas: claim_new.lua (a new user per request on one coupon), and
-- done() also prints the latency distribution as 1,000 quantiles, so that
-- several wrk processes (one per server, each with a share of the
-- connections) can be merged into one p50/p99:
--   "QUANTILES requests=<n> q=<v0.1>,<v0.2>,...,<v100.0>" (microseconds).
-- Env: as claim_new.lua (BENCH_LUA_DIR, BENCH_PREFIX, BENCH_COUPON).
dofile(os.getenv("BENCH_LUA_DIR") .. "/claim_new.lua")

local summary_done = done

function done(summary, latency, requests)
  summary_done(summary, latency, requests)
  local values = {}
  for i = 1, 1000 do
    values[i] = string.format("%d", latency:percentile(i / 10))
  end
  io.write(string.format("QUANTILES requests=%d q=%s\n", summary.requests,
    table.concat(values, ",")))
end
