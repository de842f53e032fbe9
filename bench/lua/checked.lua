-- S1 and S2, directly and through the edge: runs the scenario script named
-- by BENCH_SCRIPT (claim_new.lua or claim_bounded.lua, in this directory)
-- unchanged, and also counts the answers a claim should never get.
--
-- Expected answers: 2xx; 400 whose body has the code "out_of_stock" (a
-- decided claim on a sold-out coupon: S2 after the sell-out); 409 whose body
-- has the code "already_claimed" (a decided claim by a holder; S1 and S2
-- never send one, and their checks fail on any 409). Everything else,
-- whoever made it (the server or the edge: HAProxy's own 400, 408, 429, 502,
-- 503 and 504 have other codes), is "unexpected" and counted in the BENCH
-- line as unexpected=N. claim_bounded.lua's fillers (GET of an unknown path,
-- answered 404 with the code "not_found") are neither claims nor counted,
-- as that script does itself.
-- Env: BENCH_LUA_DIR, BENCH_SCRIPT, and the scenario script's own.
local script = os.getenv("BENCH_SCRIPT")
if script ~= "claim_new.lua" and script ~= "claim_bounded.lua" then
  error("bench: BENCH_SCRIPT must be claim_new.lua or claim_bounded.lua")
end
dofile(os.getenv("BENCH_LUA_DIR") .. "/" .. script)

stats.unexpected = 0
local has_fillers = (script == "claim_bounded.lua")
local scenario_response = response

local function has_code(body, code)
  return body ~= nil and body:find('"code":"' .. code .. '"', 1, true) ~= nil
end

function response(status, headers, body)
  local filler = has_fillers and status == 404 and has_code(body, "not_found")
  if not filler and not (status >= 200 and status < 300)
    and not (status == 400 and has_code(body, "out_of_stock"))
    and not (status == 409 and has_code(body, "already_claimed")) then
    stats.unexpected = stats.unexpected + 1
  end
  scenario_response(status, headers, body)
end
