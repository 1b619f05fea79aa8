-- stats_reset: reset the statistics counters (global, per flow, per agent).
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms
-- READS: agents, flow_stats, flows, statflows, stats
-- WRITES: agent, flow_stats, statflows, stats
-- RETURNS: OK
-- EVENTS: -
-- COMMANDS: -
-- LIB: core
--
-- Gauges (calls on hold) and the handle-time average used for estimated waits are kept.

local KEEP = { onhold = true, onhold_chats = true, aht_ema_ms = true }
local function reset(key)
  local fields = redis.call('HKEYS', key)
  for _, f in ipairs(fields) do
    if not KEEP[f] then redis.call('HDEL', key, f) end
  end
end
reset(K.stats)  -- counters kept there before they were per flow only
-- every flow whose counters count (the tenant's totals are their sum); a deleted flow leaves the
-- totals once its counters are reset and no call of it is on hold
for _, flow_id in ipairs(redis.call('SUNION', K.statflows, K.flows)) do
  local key = k_flow_stats(flow_id)
  reset(key)
  if redis.call('SISMEMBER', K.flows, flow_id) == 1 then
    redis.call('SADD', K.statflows, flow_id)
  elseif redis.call('HLEN', key) == 0 or (num(redis.call('HGET', key, 'onhold'), 0) == 0
      and num(redis.call('HGET', key, 'onhold_chats'), 0) == 0) then
    redis.call('SREM', K.statflows, flow_id)
  end
end
for _, agent_id in ipairs(redis.call('SMEMBERS', K.agents)) do
  redis.call('HDEL', k_agent(agent_id), 'distributed', 'answered', 'answered_chats', 'missed', 'talk_ms')
end
redis.call('HSET', K.stats, 'reset_ms', NOW)
return { RC.OK }
