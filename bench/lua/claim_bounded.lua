-- S2 and the S3 setup: exactly BENCH_TOTAL claims on one coupon, from the
-- distinct users "<prefix>-0" .. "<prefix>-<total-1>". Thread t (of
-- BENCH_THREADS) sends users t, t+T, t+2T, ... until it has sent its share,
-- then stops itself once every one of its claims is answered; the run ends
-- when every thread has (see finish_thread in common.lua). A connection
-- that needs a request after the share is sent gets, after a pause, a GET of
-- an unknown path (a filler, answered 404 not_found), which is neither a
-- claim nor counted.
-- Env: BENCH_LUA_DIR, BENCH_PREFIX, BENCH_COUPON, BENCH_TOTAL, BENCH_THREADS,
-- BENCH_DONE_DIR (an empty directory for the end-of-run markers).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local prefix = env("BENCH_PREFIX")
local coupon = env("BENCH_COUPON")
local total = env_number("BENCH_TOTAL")
local nthreads = env_number("BENCH_THREADS")
local share, sent = 0, 0
local FILLER = "/bench-filler-not-a-route"
-- wrk calls request() once on thread 0 right after init() to check the
-- request, and never sends what it returns: that call must not use up a user.
-- (Were it ever sent, it would only be one more filler.)
local skip_first = false

function init(args)
  thread_init()
  share = math.floor(total / nthreads)
  if tid < total % nthreads then
    share = share + 1
  end
  skip_first = (tid == 0)
end

-- Once the share is sent, a connection waits a second before each filler,
-- so fillers stay few and barely touch the latency figures.
function delay()
  if sent < share then
    return 0
  end
  return 1000
end

function request()
  if skip_first then
    skip_first = false
    return wrk.format("GET", FILLER)
  end
  if sent < share then
    mark_sent()
    local user = tid + sent * nthreads
    sent = sent + 1
    return claim_request(prefix .. "-" .. user, coupon)
  end
  return wrk.format("GET", FILLER)
end

function response(status, headers, body)
  if status == 404 and body and body:find('"not_found"', 1, true) then
    return -- a filler's answer (claims answer coupon_not_found instead)
  end
  count(status, body)
  if stats.counted == share then
    finish_thread()
  end
end
