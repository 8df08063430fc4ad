-- wrk script for scripts/load.py: every request a distinct Bitrix24 ONCRMDEALUPDATE (form
-- encoded as Bitrix24 sends it), LOAD_EVENTS_PER_THREAD per wrk thread, then the thread stops
-- once every one of its events has been answered. Prints one LOAD_RESULT line for load.py.

local threads = {}

function setup(thread)
  thread:set("thread_number", #threads)
  table.insert(threads, thread)
end

function init(args)
  quota = tonumber(os.getenv("LOAD_EVENTS_PER_THREAD") or "1000")
  ts = os.getenv("LOAD_TS") or "1795860000"
  auth = "&auth%5Bdomain%5D=load.bitrix24.ru"
    .. "&auth%5Bclient_endpoint%5D=https%3A%2F%2Fload.bitrix24.ru%2Frest%2F"
    .. "&auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F"
    .. "&auth%5Bmember_id%5D=load-member"
    .. "&auth%5Bapplication_token%5D=" .. (os.getenv("LOAD_APP_TOKEN") or "load-token")
  sent, answered, accepted, refused, fillers = 0, 0, 0, 0, 0
  -- wrk calls request() once on the first thread to check it, and never sends that one;
  -- answering that call with a /healthz filler keeps every event counted either way.
  checking = (thread_number == 0)
  headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
end

function request()
  if checking or sent >= quota then
    checking = false
    -- wrk needs a request for every ready connection; while the last events of this thread
    -- are still being answered, the idle connections ask /healthz (counted, not events).
    return wrk.format("GET", "/healthz")
  end
  sent = sent + 1
  local deal = 100000000 * (thread_number + 1) + sent
  local body = "event=ONCRMDEALUPDATE&event_handler_id=17&data%5BFIELDS%5D%5BID%5D=" .. deal
    .. "&ts=" .. ts .. auth
  return wrk.format("POST", "/deal", headers, body)
end

function response(status, headers, body)
  if status == 200 then
    fillers = fillers + 1
    return
  end
  answered = answered + 1
  if status == 202 then accepted = accepted + 1 else refused = refused + 1 end
  if answered >= quota then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local acc, ref, fill = 0, 0, 0
  for _, thread in ipairs(threads) do
    acc = acc + thread:get("accepted")
    ref = ref + thread:get("refused")
    fill = fill + thread:get("fillers")
  end
  io.write(string.format(
    "LOAD_RESULT accepted=%d refused=%d fillers=%d duration_us=%d p50_us=%d p99_us=%d socket_errors=%d\n",
    acc, ref, fill, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
