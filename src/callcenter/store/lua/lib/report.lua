-- report.lua: the report R of a report_* script, and the per-call sequence check.
-- ARGV of every report script: [1] now_ms, [2] stream entry id, [3] the report's msgpack data.
-- NEEDS: core

local R = cmsgpack.unpack(ARGV[3])
if type(R) ~= 'table' or type(R.call_id) ~= 'string' or type(R.seq) ~= 'number' then
  return { RC.INVALID, 'report lacks call_id/seq' }
end

-- Load the call a report is about and apply the per-call sequence check: a report already
-- applied is a duplicate (a redelivery), a report ahead of the next expected one must wait
-- until its predecessor (being handled by another dispatcher) is applied.
local function load_call_for_report()
  local call = hgetall(k_call(R.call_id))
  if call == nil then return nil, RC.OUT_OF_ORDER end
  if call.edge ~= R.edge then return nil, RC.INVALID end
  local seq = num(call.seq, 0)
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
  local call, rc = load_call_for_report()
  if call ~= nil and call.state == 'ended' then return nil, RC.STALE end
  return call, rc
end
