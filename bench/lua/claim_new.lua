-- S1 (and S4 with BENCH_COUPONS > 1): every request claims for a user never
-- seen before: "<prefix>-<thread id>-<per-thread counter>".
-- Env: BENCH_LUA_DIR, BENCH_PREFIX, and either BENCH_COUPON (one coupon) or
-- BENCH_COUPON_PREFIX + BENCH_COUPONS (a random one of
-- "<coupon prefix>-0" .. "<coupon prefix>-<n-1>" per request); with
-- BENCH_KEYS=1, every claim carries an Idempotency-Key of its own.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local prefix = env("BENCH_PREFIX")
local coupon = env("BENCH_COUPON", "")
local coupon_prefix = env("BENCH_COUPON_PREFIX", "")
local coupons = env_number("BENCH_COUPONS", 1)
local keys = env("BENCH_KEYS", "0") == "1"
local n = 0

function request()
  mark_sent()
  n = n + 1
  local c = coupon
  if coupon_prefix ~= "" then
    c = coupon_prefix .. "-" .. math.random(0, coupons - 1)
  end
  local user = prefix .. "-" .. tid .. "-" .. n
  local key = nil
  if keys then
    key = "key-" .. user
  end
  return claim_request(user, c, key)
end
