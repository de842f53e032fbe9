-- S3: a sold-out coupon, claimed by a mix of new users (expect 400
-- out_of_stock) and users who already hold it (expect 409 already_claimed).
-- Holders are "<holder prefix>-0" .. "<holder prefix>-<n-1>"; new users are
-- "<prefix>-<thread id>-<counter>". BENCH_HOLDER_SHARE is the fraction of
-- requests sent as a holder.
-- Env: BENCH_LUA_DIR, BENCH_PREFIX, BENCH_COUPON, BENCH_HOLDER_PREFIX,
-- BENCH_HOLDERS, BENCH_HOLDER_SHARE.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local prefix = env("BENCH_PREFIX")
local coupon = env("BENCH_COUPON")
local holder_prefix = env("BENCH_HOLDER_PREFIX")
local holders = env_number("BENCH_HOLDERS")
local holder_share = env_number("BENCH_HOLDER_SHARE", 0.5)
local n = 0

function request()
  mark_sent()
  if math.random() < holder_share then
    return claim_request(holder_prefix .. "-" .. math.random(0, holders - 1), coupon)
  end
  n = n + 1
  return claim_request(prefix .. "-" .. tid .. "-" .. n, coupon)
end
