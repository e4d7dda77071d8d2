-- wrk script for orders-api bench: GET BENCH_PATH with "{id}" replaced by a random id in
-- 1..BENCH_MAX_ID on every request, and one machine-readable summary line at the end (wrk_summary.lua).
local path = os.getenv("BENCH_PATH")
local max_id = tonumber(os.getenv("BENCH_MAX_ID"))
local headers = {}
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  headers["Authorization"] = "Bearer " .. token
end

function setup(thread)
  thread:set("seed", math.random(1, 2147483647))
end

function init(args)
  math.randomseed(seed or os.time())
end

function request()
  local id = math.random(1, max_id)
  local target = string.gsub(path, "{id}", tostring(id))
  return wrk.format("GET", target, headers)
end

dofile(os.getenv("BENCH_SUMMARY"))
