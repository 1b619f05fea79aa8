-- report.lua: the report R of a report_* script, and the per-call sequence check.
-- ARGV of every report script: [1] now_ms, [2] stream entry id, [3] the report's msgpack data.
-- NEEDS: config, core, calls

local R = nil

-- per call (a step's start): read the report; a report without call_id/seq ends the step
local function report_begin()
  R = cmsgpack.unpack(ARGV[3])
  if type(R) ~= 'table' or type(R.call_id) ~= 'string' or type(R.seq) ~= 'number' then
    return { RC.INVALID, 'report lacks call_id/seq' }
  end
  return nil
end

-- When the edge saw what it reports (its `ts`), within [floor, NOW]: a report held across a Redis
-- outage or a dispatcher restart is applied late, but the call's times are the edge's, never in
-- the future of this step nor before what came first.
local function reported_at(floor)
  local ts = tonumber(R.ts)
  if not ts then return NOW end
  return math.max(floor or 0, math.min(ts, NOW))
end

-- When a connected call ended, in our time: its connection plus the talk the edge measured on its
-- own clock (answer to BYE), so neither a late report nor a skew between the edge's clock and ours
-- changes the talk time; now for a call connected without the edge's answer time.
local function reported_end(call)
  local answered, ts, connected = tonumber(call.answered_ts), tonumber(R.ts), tonumber(call.connected_ms)
  if not (answered and ts and connected) then return NOW end
  return math.min(NOW, connected + math.max(0, ts - answered))
end


-- Why this report's step would fail half-way, or nil: checked before the step's first write, so
-- a fault (a bad config value, a key of the wrong type) leaves no trace and a redelivery after
-- it is mended applies the report whole.
-- The config's type is config_fault's (it reads the config); the call's, unless `call_read` (the
-- caller read the call's hash already, see load_call_for_report).
local function report_fault(call_read)
  local fault = config_fault()
  if fault then return fault end
  -- what a report step writes in any case, with the type each key must have (or none yet)
  local keys = { { k_commands(R.edge), 'stream' }, { k_edge_calls(R.edge), 'set' },
    { K.events, 'stream' }, { K.calls, 'set' }, { K.timers, 'zset' } }
  if not call_read then keys[#keys + 1] = { k_call(R.call_id), 'hash' } end
  for _, pair in ipairs(keys) do
    local t = redis.call('TYPE', pair[1])['ok']
    if t ~= 'none' and t ~= pair[2] then return pair[1] .. ' is a ' .. t .. ', not a ' .. pair[2] end
  end
  return nil
end

-- A step that failed half-way (after its first write): Redis has no rollback, so what it wrote
-- stays, and the report is not applied again over it. The call keeps which report failed and
-- why (run_report_step); a redelivery of that report ends the call, with its CDR event, unless it
-- has ended, and is answered FAILED (dead-lettered): never taken for a duplicate. Returns that
-- detail, or nil for any other report.
local function failed_before(call)
  if call == nil or call.failed_seq ~= tostring(R.seq) then return nil end
  local why = 'failed half-way before: ' .. (call.failed_why or '?')
  if call.state ~= 'ended' then
    finish_call(R.call_id, call, 'failed', 'system', 'step_failed')
    command(call.edge, 'command.hangup', { call_id = R.call_id, reason = 'step_failed' })
    why = why .. '; the call is ended'
  end
  return why
end

-- Load the call a report is about and apply the per-call sequence check: a report already
-- applied is a duplicate (a redelivery), a report ahead of the next expected one must wait
-- until its predecessor (being handled by another dispatcher) is applied. Returns the call, or
-- nil, the code and a detail.
local function load_call_for_report()
  -- the call's hash is read first: a WRONGTYPE here is its type check
  local raw = redis.pcall('HGETALL', k_call(R.call_id))
  if raw.err then return nil, RC.FAILED, 'preflight: ' .. type_fault(k_call(R.call_id), 'hash') end
  local fault = report_fault(true)
  if fault then return nil, RC.FAILED, 'preflight: ' .. fault end
  local call = hash_table(raw)
  if call == nil then return nil, RC.OUT_OF_ORDER end
  if call.edge ~= R.edge then return nil, RC.INVALID end
  local seq = num(call.seq, 0)
  local failed = failed_before(call)
  if failed then return nil, RC.FAILED, failed end
  if R.seq <= seq then return nil, RC.DUPLICATE end
  if R.seq > seq + 1 then return nil, RC.OUT_OF_ORDER end
  redis.call('HSET', k_call(R.call_id), 'seq', R.seq)
  call.seq = tostring(R.seq)
  return call, RC.OK
end

-- The same for a report that acts on a live call: one about a call that has ended already (a
-- media failure after a late answer hung it up) is STALE, so nothing ends a call twice. Only the
-- call's end report (report_call_ended) takes an ended call.
local function load_live_call_for_report()
  local call, rc, detail = load_call_for_report()
  if call ~= nil and call.state == 'ended' then return nil, RC.STALE end
  return call, rc, detail
end

-- Run a report script's body (load_source wraps it in `step`): a Lua error in it is caught and
-- kept on the call (see failed_before), and the step answers FAILED 'half-way: <why>'. A call
-- not ended stays in the live indexes, where the reconciler looks for calls without progress.
local function run_report_step(step)
  local ok, res = pcall(step)
  if ok then return res end
  local why = type(res) == 'table' and tostring(res.err) or tostring(res)
  local ckey = k_call(R.call_id)
  if redis.call('EXISTS', ckey) == 1 then
    redis.pcall('HSET', ckey, 'failed_seq', R.seq, 'failed_why', string.sub(why, 1, 200))
    if redis.call('HGET', ckey, 'state') ~= 'ended' then
      redis.pcall('SADD', K.calls, R.call_id)
      redis.pcall('SADD', k_edge_calls(R.edge), R.call_id)
    end
  end
  return { RC.FAILED, 'half-way: ' .. why }
end
