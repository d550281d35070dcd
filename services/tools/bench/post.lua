-- wrk script: POST the JSON body in the file named by $WRK_BODY on every request.
-- The request is built once (no per-request Lua), so wrk's own cost stays negligible.
local file = assert(io.open(assert(os.getenv("WRK_BODY"), "WRK_BODY not set"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
wrk.headers["Content-Type"] = "application/json"
file:close()
