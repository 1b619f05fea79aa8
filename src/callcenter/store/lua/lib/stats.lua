-- stats.lua: counters (reset by stats_reset.lua) and the on-hold gauge in one hash per flow,
-- cc:{t}:stats:flow:<flow> (the tenant's totals are their sum, taken by the readers over the flows
-- of cc:{t}:statflows; cc:{t}:stats keeps only reset_ms); service level in one-minute buckets
-- cc:{t}:sl:<flow>:<minute>; the handle-time average behind estimated waits.
-- NEEDS: config, core

local function stat(flow_id, field, by)
  redis.call('HINCRBY', k_flow_stats(flow_id), field, by or 1)
end

-- a counter's value as HMGET gives it (false: none yet); a value HINCRBY would refuse is refused
local function counter_value(v)
  if not v then return 0 end
  local n = tonumber(v)
  if n == nil or n ~= math.floor(n) then error('statistics value is not an integer: ' .. tostring(v)) end
  return n
end

-- the on-hold gauge, with its chat subset
local function onhold_stat(flow_id, call, by)
  stat(flow_id, 'onhold', by)
  if call.media_type == 'chat' then stat(flow_id, 'onhold_chats', by) end
end

-- the on-hold gauge counts calls that wait for an agent (arrived, welcome, queued, ringing).
-- `fields`: the call's hash fields its caller writes next, without a write between (onhold joins
-- them: one write of the call's hash); none: written here.
local function hold_off(call_id, call, fields)
  if call.onhold == '1' then
    onhold_stat(call.flow, call, -1)
    if fields then fields.onhold = '0' else call_field_updates(call_id, call, { onhold = '0' }) end
  end
end

-- a bucket lives 62 minutes from its first count: the first count of each of its fields (HINCRBY
-- answers 1) sets the TTL, the bucket's first one among them; later counts leave it
local function sl(flow_id, field)
  local key = k_sl(flow_id, math.floor(NOW / 60000))
  if redis.call('HINCRBY', key, field, 1) == 1 then redis.call('EXPIRE', key, 3720) end
end

local function sl_threshold_ms(flow)
  local t = tonumber(flow and flow.sl_threshold_s)
  if t == nil or t <= 0 then t = cfg('sl_threshold_s') end
  return t * 1000
end

-- average handle time of a flow (ms): a moving average of its recent talk times
local function aht_ms(flow_id)
  local v = tonumber(redis.call('HGET', k_flow_stats(flow_id), 'aht_ema_ms'))
  if v == nil or v <= 0 then return cfg('default_aht_s') * 1000 end
  return v
end

-- estimated wait (s) of the call at `position` (0 = next): the flow's recent handle time divided
-- among the logged-in agents with its skill that take the call's media; -1 when nobody can serve it
local function estimated_wait_s(flow_id, flow, position, media)
  local logged = redis.call('SCARD', k_skill_serving(flow.skill, media or 'audio'))
  if logged == 0 then return -1 end
  return math.floor(aht_ms(flow_id) * (position + 1) / logged / 1000)
end
