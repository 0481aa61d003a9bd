-- POST a JSON inference request that differs on every request: the body file's __N__ is replaced
-- by a counter unique to this connection's thread and request (a response-cache miss each time).
-- Usage: wrk ... -s bench/lua/post_json_vary.lua URL -- BODY_FILE
-- Unlike post_json.lua, Lua runs per request (on wrk's core, not the server's).

local template
local counter = 0

function init(args)
   local path = args[1]
   if path == nil then
      error("post_json_vary.lua: pass the body file after --")
   end
   local file = assert(io.open(path, "rb"))
   template = file:read("*a")
   file:close()
end

function request()
   counter = counter + 1
   local body = template:gsub("__N__", tostring(counter))
   return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
