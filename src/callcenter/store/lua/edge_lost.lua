-- edge_lost: a sip-edge whose heartbeat lapsed is gone (crashed, SIGKILLed, cut off): end the calls it owned.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 edge_id, 3 lapse_ms, 4 limit (calls per step, default 500)
-- READS: agent, agent_chats, call, chat_queue, config, edge_calls, edges, flow, flow_stats, queue, skill_chat, skill_flows, skill_free
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, edges, events, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, stats, timers
-- RETURNS: OK calls_ended | NOT_FOUND (no heartbeat entry) | STALE last_beat (the edge is alive) | INVALID why
-- EVENTS: agent.logged_out, agent.paused, agent.state_changed, call.abandoned, call.ended, call.offered
-- COMMANDS: command.ring, command.ring_all
-- LIB: core, calls
--
-- Any dispatcher replica may run it at any time; the heartbeat check inside the step makes a
-- second run, or a run racing the edge's comeback, harmless.
-- If the edge's heartbeat score in cc:{t}:edges is still older than now - lapse_ms: its live calls
-- (cc:{t}:edge:<edge>:calls) first leave their queues (so a freed agent is not handed a call of the
-- same dead edge), then each ends with finish_call(outcome failed, ended_by system, reason
-- edge_lost): its agent is released (wrap-up after a talk, free after a ring) and call.ended (its
-- CDR) is emitted. No command is sent to the lost edge: nobody would read it (a freed agent may
-- be offered a call of another edge). At most `limit` calls end per step; the edge leaves
-- cc:{t}:edges once it has no call left, so the next run finishes the rest.

local edge = ARGV[2]
local lapse = tonumber(ARGV[3])
local limit = tonumber(ARGV[4]) or 500
if not edge or edge == '' or not lapse then return { RC.INVALID, 'edge_id and lapse_ms required' } end
local beat = redis.call('ZSCORE', K.edges, edge)
if not beat then return { RC.NOT_FOUND } end
if tonumber(beat) >= NOW - lapse then return { RC.STALE, beat } end

local ekey = k_edge_calls(edge)
local ids = redis.call('SMEMBERS', ekey)
local calls = {}
for _, call_id in ipairs(ids) do
  local call = hgetall(k_call(call_id))
  if call and call.state ~= 'ended' then
    if call.flow then redis.call('ZREM', k_queue_of(call), call_id) end
    calls[#calls + 1] = call_id
  else
    redis.call('SREM', ekey, call_id)  -- an index entry without a live call: drop it
  end
end

local ended = 0
for _, call_id in ipairs(calls) do
  if ended >= limit then break end
  -- read again: ending an earlier call may have offered this one to the agent it freed
  local call = hgetall(k_call(call_id))
  if call and call.state ~= 'ended' then
    finish_call(call_id, call, 'failed', 'system', 'edge_lost')
    ended = ended + 1
  end
  redis.call('SREM', ekey, call_id)
end
if redis.call('SCARD', ekey) == 0 then
  redis.call('ZREM', K.edges, edge)
  redis.call('DEL', ekey)
end
return { RC.OK, ended }
