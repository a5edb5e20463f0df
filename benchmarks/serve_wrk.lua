-- wrk script for benchmarks/serve_throughput.py: POSTs KServe v2 binary requests, cycling over prepared bodies.
-- Environment: CVZOO_WRK_PATH (the infer path), CVZOO_WRK_BODIES (a file of "<json header length> <body file>" lines),
-- CVZOO_WRK_OUT (where done() writes its JSON summary).
local path = os.getenv("CVZOO_WRK_PATH")
local bodies, header_lengths = {}, {}
for line in io.lines(os.getenv("CVZOO_WRK_BODIES")) do
  local length, file = line:match("^(%d+) (.+)$")
  local f = assert(io.open(file, "rb"))
  bodies[#bodies + 1] = f:read("*a")
  f:close()
  header_lengths[#header_lengths + 1] = length
end
local next_body = 0

request = function()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", path, {["Content-Type"] = "application/octet-stream",
                                   ["Inference-Header-Content-Length"] = header_lengths[next_body]},
                    bodies[next_body])
end

done = function(summary, latency, requests)
  local e = summary.errors
  local out = assert(io.open(os.getenv("CVZOO_WRK_OUT"), "w"))
  out:write(string.format('{"requests": %d, "duration_s": %.6f, "non_2xx": %d, "socket_errors": %d, ' ..
                          '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f}',
                          summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
                          latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3))
  out:close()
end
