-- queue.lua: waiting calls: the queue order, the queue media URI (position, estimated wait),
-- the waiting timers, and dissuading.
-- NEEDS: config, core, stats

local function uri_with_param(uri, name, value)
  if name == '' or value == nil then return uri end
  local q = string.find(uri, '?', 1, true)
  if q then return string.sub(uri, 1, q - 1) .. ';' .. name .. '=' .. value .. string.sub(uri, q) end
  return uri .. ';' .. name .. '=' .. value
end

local function queue_uri(flow_id, flow, position, media)
  local uri = uri_with_param(flow.queue_uri or '', cfg('queue_pos_param'), position)
  if position ~= nil then
    local ewt = estimated_wait_s(flow_id, flow, position, media)
    if ewt >= 0 then uri = uri_with_param(uri, cfg('queue_ewt_param'), ewt) end
  end
  return uri
end

-- queue score: arrival time, moved ahead by the caller's priority (higher = sooner)
local PRIORITY_STEP_MS = 1e13

local function queue_score(call)
  return num(call.received_ms, NOW) - num(call.priority, 0) * PRIORITY_STEP_MS
end

-- Put a call in its flow's queue (at the head when it comes back from a failed offer), play the
-- queue media with the position (and estimated wait) parameters, and arm its waiting timers.
local function enqueue(call_id, call, flow, at_head)
  local qkey = k_queue_of(call)
  local score = queue_score(call)
  if at_head then
    local first = redis.call('ZRANGE', qkey, 0, 0, 'WITHSCORES')
    if #first > 0 and tonumber(first[2]) <= score then score = tonumber(first[2]) - 1 end
  end
  redis.call('ZADD', qkey, score, call_id)
  local position = redis.call('ZRANK', qkey, call_id)
  local updates = { state = 'queued', agent = '', offer = '', hold_since_ms = NOW }
  if (call.queued_ms or '') == '' then updates.queued_ms = NOW end
  -- the CDR's queue position at entry and hold time count from the call's first entry into a queue
  if (call.entry_position or '') == '' then updates.entry_position, updates.entry_queued_ms = position, NOW end
  if call.media ~= 'queue' then
    command(call.edge, 'command.media', { call_id = call_id, uri = queue_uri(call.flow, flow, position, call.media_type),
      purpose = 'queue' })
    updates.media = 'queue'
  end
  call_field_updates(call_id, call, updates)
  local max_wait = tonumber(flow.max_wait_s) or 0
  if max_wait > 0 then
    -- counted from the call's entry into this flow: its arrival, or its last overflow hop
    local since = num(call.flow_ms, num(call.received_ms, NOW))
    add_timer(math.max(NOW, since + max_wait * 1000), 'maxwait|' .. call_id)
  end
  local onhold_th = tonumber(flow.dissuading_onhold_th) or 0
  if onhold_th > 0 and (flow.dissuading_uri or '') ~= '' then
    add_timer(NOW + onhold_th * 1000, 'onhold|' .. call_id)
  end
  emit('call.queued', { call_id = call_id, flow = call.flow, position = position })
end

-- Bridge the caller to the flow's dissuading media (hang up or return to the queue after it).
local function dissuade(call_id, call, flow, rule)
  redis.call('ZREM', k_queue_of(call), call_id)
  redis.call('ZREM', K.timers, 'onhold|' .. call_id, 'maxwait|' .. call_id)
  call_field_updates(call_id, call, { state = 'dissuading', media = 'dissuading', agent = '', offer = '',
    dissuaded_rule = rule })
  command(call.edge, 'command.media', { call_id = call_id, uri = flow.dissuading_uri, purpose = 'dissuading' })
  emit('call.dissuaded', { call_id = call_id, flow = call.flow, rule = rule })
end

-- The dissuading rule a new call meets (queue size, estimated wait), or nil. The queue is the
-- call's own: its flow's audio or chat queue.
local function dissuading_rule(flow_id, flow, call)
  if (flow.dissuading_uri or '') == '' then return nil end
  local waiting = redis.call('ZCARD', k_queue_of(call))
  local ewt_th = tonumber(flow.dissuading_ewt_th) or 0
  if ewt_th > 0 then
    local ewt = estimated_wait_s(flow_id, flow, waiting, call.media_type)
    if ewt < 0 or ewt > ewt_th then return 'ewt' end
  end
  local qsize_th = tonumber(flow.dissuading_qsize_th) or 0
  if qsize_th > 0 and qsize_th <= waiting then return 'queue_size' end
  return nil
end
