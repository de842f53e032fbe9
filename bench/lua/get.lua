-- S5 and the ceiling: wrk's own static GET of the URL's path (no request()
-- function, so wrk builds the request once); only the answers are counted.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
