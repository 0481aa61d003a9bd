-- POST a KServe v2 JSON inference request whose body the runner wrote to a file.
-- Usage: wrk ... -s bench/lua/post_json.lua URL -- BODY_FILE
-- The body is read once per wrk thread in init(); wrk then sends the same static request
-- (Content-Length added by wrk.format) on every connection, so no Lua runs per request.

function init(args)
   local path = args[1]
   if path == nil then
      error("post_json.lua: pass the body file after --")
   end
   local file = assert(io.open(path, "rb"))
   wrk.body = file:read("*a")
   file:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end
