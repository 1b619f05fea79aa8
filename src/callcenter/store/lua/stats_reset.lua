-- stats_reset: reset the statistics counters (global, per flow, per agent).
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms
-- READS: agents, flow_stats, flows, stats
-- WRITES: agent, flow_stats, stats
-- RETURNS: OK
-- EVENTS: -
-- COMMANDS: -
-- LIB: -
--
-- Gauges (calls on hold) and the handle-time average used for estimated waits are kept.

local KEEP = { onhold = true, onhold_chats = true, aht_ema_ms = true }
local function reset(key)
  local fields = redis.call('HKEYS', key)
  for _, f in ipairs(fields) do
    if not KEEP[f] then redis.call('HDEL', key, f) end
  end
end
reset(K.stats)
for _, flow_id in ipairs(redis.call('SMEMBERS', K.flows)) do reset(k_flow_stats(flow_id)) end
for _, agent_id in ipairs(redis.call('SMEMBERS', K.agents)) do
  redis.call('HDEL', k_agent(agent_id), 'distributed', 'answered', 'answered_chats', 'missed', 'talk_ms')
end
redis.call('HSET', K.stats, 'reset_ms', NOW)
return { RC.OK }
