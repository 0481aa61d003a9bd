-- POST a request in Triton's binary tensor extension: body = JSON header + raw tensor bytes.
-- Usage: wrk ... -s bench/lua/post_binary.lua URL -- BODY_FILE HEADER_LENGTH
-- HEADER_LENGTH is the byte length of the JSON header at the start of the body, sent as
-- Inference-Header-Content-Length. The file is read once per thread in init(); every request
-- after that is the same static buffer, so the figure measures the server, not Lua.

function init(args)
   local path, header_length = args[1], args[2]
   if path == nil or header_length == nil then
      error("post_binary.lua: pass BODY_FILE HEADER_LENGTH after --")
   end
   local file = assert(io.open(path, "rb"))
   wrk.body = file:read("*a")
   file:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/octet-stream"
   wrk.headers["Inference-Header-Content-Length"] = header_length
end
