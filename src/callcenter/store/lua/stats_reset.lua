-- stats_reset.lua: reset the statistics counters (global, per flow, per agent); gauges (calls on
-- hold) and the handle-time average used for estimated waits are kept.
-- KEYS[1] any tenant key. ARGV: now_ms. Returns {RC.OK}.
--!include common.lua

local KEEP = { onhold = true, onhold_chats = true, aht_ema_ms = true }
local function reset(key)
  local fields = redis.call('HKEYS', key)
  for _, f in ipairs(fields) do
    if not KEEP[f] then redis.call('HDEL', key, f) end
  end
end
reset(k_stats(nil))
for _, flow_id in ipairs(redis.call('SMEMBERS', K.flows)) do reset(k_stats(flow_id)) end
for _, agent_id in ipairs(redis.call('SMEMBERS', K.agents)) do
  redis.call('HDEL', k_agent(agent_id), 'distributed', 'answered', 'answered_chats', 'missed', 'talk_ms')
end
redis.call('HSET', k_stats(nil), 'reset_ms', NOW)
return { RC.OK }
