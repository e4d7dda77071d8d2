-- wrk script for orders-api bench's commands, and the summary line of wrk_summary.lua at the end.
-- BENCH_COMMAND=place: POST /v1/orders for a random customer in 1..BENCH_CUSTOMERS and 1-3 distinct
-- random products in 1..BENCH_PRODUCTS, one unit each.
-- BENCH_COMMAND=pay: POST /v1/orders/{id}/pay for each id of the file BENCH_IDS once: thread i of
-- BENCH_THREADS takes lines i, i + BENCH_THREADS, ...; past its share it asks for order 0 (a 404).
-- BENCH_PREFIX goes before both paths (the write floor's /outbox variant), empty by default.
-- BENCH_KEYED=1 sends a new Idempotency-Key with every request, unique to this run (BENCH_RUN).
local command = os.getenv("BENCH_COMMAND")
local customers = tonumber(os.getenv("BENCH_CUSTOMERS") or "1")
local products = tonumber(os.getenv("BENCH_PRODUCTS") or "1")
local keyed = os.getenv("BENCH_KEYED") == "1"
local run = os.getenv("BENCH_RUN") or ""
local prefix = os.getenv("BENCH_PREFIX") or ""
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")}
local threads = 0
local sent = 0
local ids = {}

function setup(thread)
  threads = threads + 1
  thread:set("index", threads)
end

function init(args)
  -- Without a seed of its own each wrk run would draw the same customers and products.
  math.randomseed(tonumber(os.getenv("BENCH_SEED")) + index)
  if command == "pay" then
    local count = tonumber(os.getenv("BENCH_THREADS"))
    local line = 0
    for id in io.lines(os.getenv("BENCH_IDS")) do
      if line % count == index - 1 then
        ids[#ids + 1] = id
      end
      line = line + 1
    end
  end
end

local function order()
  local lines, chosen = {}, {}
  local count = math.min(math.random(1, 3), products)
  while #lines < count do
    local product = math.random(1, products)
    if not chosen[product] then
      chosen[product] = true
      lines[#lines + 1] = string.format('{"product_id":%d,"quantity":1}', product)
    end
  end
  return string.format('{"customer_id":%d,"items":[%s]}', math.random(1, customers), table.concat(lines, ","))
end

function request()
  sent = sent + 1
  if keyed then
    headers["Idempotency-Key"] = string.format("%s-%d-%d", run, index, sent)
  end
  if command == "pay" then
    return wrk.format("POST", prefix .. "/v1/orders/" .. (ids[sent] or "0") .. "/pay", headers, "")
  end
  return wrk.format("POST", prefix .. "/v1/orders", headers, order())
end

dofile(os.getenv("BENCH_SUMMARY"))
