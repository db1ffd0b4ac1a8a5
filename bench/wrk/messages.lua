-- wrk script: POST Bot Framework v3 message activities to /api/messages.
-- Usage: wrk -tT ... -s messages.lua URL -- USERS CONVS LIMIT T DONE DELAY_MS
--   DELAY_MS  >0: each connection pauses this long between requests (fixed-rate phase)
--   USERS  distinct user ids to rotate through ("u0".."u<USERS-1>")
--   CONVS  distinct conversation ids; user i talks in conversation "c<i % CONVS>"
--   T      the same thread count as -t (used to interleave users across threads)
--   LIMIT  0 = run for -d; >0: stop after LIMIT responses in total (split over threads) -- used to
--          touch exactly USERS distinct users for the memory measurement.
--   DONE   (LIMIT mode) a file each thread appends a line to when its quota is met; wrk's main
--          thread sleeps for the whole -d regardless, so the caller SIGINTs wrk once all are done.
-- Thread t of T sends users t, t+T, t+2T, ... (mod USERS), so the first USERS requests
-- overall touch every user once. done() prints one JSON line prefixed "RESULT ".

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  users = tonumber(args[1] or "10000")
  convs = tonumber(args[2] or tostring(users))
  local limit = tonumber(args[3] or "0")
  nthreads = tonumber(args[4] or "1")
  local donefile = args[5]
  pause = tonumber(args[6] or "0")
  k = 0
  if limit > 0 then
    -- only defined in LIMIT mode: a response() hook makes wrk parse every response.
    local quota = math.ceil(limit / nthreads)
    local got, bad = 0, 0
    response = function(status, headers, body)
      got = got + 1
      if status >= 400 then bad = bad + 1 end
      if got == quota then
        if donefile then local f = io.open(donefile, "a"); f:write("done\n"); f:close() end
        wrk.thread:stop()
      end
    end
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function delay()
  return pause
end

function request()
  local u = (tid + nthreads * k) % users
  k = k + 1
  local body = string.format(
    '{"type":"message","id":"m%d-%d","channelId":"bench","deliveryMode":"expectReplies",' ..
    '"from":{"id":"u%d","name":"User %d"},"recipient":{"id":"bot","name":"Bot"},' ..
    '"conversation":{"id":"c%d"},"text":"hello %d"}',
    tid, k, u, u, u % convs, k)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"err_connect":%d,"err_read":%d,"err_write":%d,' ..
    '"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write,
    e.status, e.timeout))
end
