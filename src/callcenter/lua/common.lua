-- common.lua: shared helpers, prepended to every script by callcenter.store (never run alone).
--
-- Conventions of every script:
--   KEYS[1]  any key of the tenant (e.g. cc:{t}:events); the tenant prefix is derived from it, so
--            every key a script touches shares the tenant's hash tag (one cluster slot).
--   ARGV[1]  now_ms: the caller's clock. Scripts never read the time themselves.
-- Return value: { code, ... } where code is one of RC below (mirrored by callcenter.store.RC).

local RC = { OK = 0, DUPLICATE = 1, OUT_OF_ORDER = 2, NOT_FOUND = 3, INVALID = 4, ALREADY = 5, STALE = 6 }

local P = string.match(KEYS[1], '^(cc:{[^}]*}:)')
if not P then return redis.error_reply('KEYS[1] is not a callcenter key: ' .. tostring(KEYS[1])) end
local NOW = tonumber(ARGV[1])
if not NOW then return redis.error_reply('ARGV[1] (now_ms) is not a number') end

local K = {
  config = P .. 'config', flows = P .. 'flows', agents = P .. 'agents', calls = P .. 'calls',
  timers = P .. 'timers', edges = P .. 'edges', events = P .. 'events', dead = P .. 'dead',
}
local function k_flow(id) return P .. 'flow:' .. id end
local function k_agent(id) return P .. 'agent:' .. id end
local function k_call(id) return P .. 'call:' .. id end
local function k_queue(flow) return P .. 'queue:' .. flow end
local function k_skill_flows(skill) return P .. 'skill:' .. skill .. ':flows' end
local function k_skill_logged(skill) return P .. 'skill:' .. skill .. ':logged' end
local function k_skill_free(skill) return P .. 'skill:' .. skill .. ':free' end
local function k_commands(edge) return P .. 'commands:' .. edge end
local function k_edge_calls(edge) return P .. 'edge:' .. edge .. ':calls' end

--!versions

-- configuration with the reference module's defaults, overridden by cc:{t}:config
local CONFIG_DEFAULTS = {
  wrapup_s = 30, ring_timeout_s = 20, reject_on_no_agents = 1, no_agents_code = 480,
  queue_pos_param = 'cc_pos', offer_lease_grace_s = 5, events_maxlen = 1000000,
  commands_maxlen = 100000, ended_call_ttl_s = 3600,
}
local _cfg = nil
local function cfg(name)
  if _cfg == nil then
    _cfg = {}
    local raw = redis.call('HGETALL', K.config)
    for i = 1, #raw, 2 do _cfg[raw[i]] = raw[i + 1] end
  end
  local v = _cfg[name]
  if v == nil or v == '' then return CONFIG_DEFAULTS[name] end
  if type(CONFIG_DEFAULTS[name]) == 'number' then return tonumber(v) or CONFIG_DEFAULTS[name] end
  return v
end

local function hgetall(key)
  local raw = redis.call('HGETALL', key)
  if #raw == 0 then return nil end
  local t = {}
  for i = 1, #raw, 2 do t[raw[i]] = raw[i + 1] end
  return t
end

local function split_csv(s)
  local out = {}
  if s then
    for item in string.gmatch(s, '([^,]+)') do
      item = string.match(item, '^%s*(.-)%s*$')
      if item ~= '' then out[#out + 1] = item end
    end
  end
  return out
end

local function num(v, default)
  local n = tonumber(v)
  if n == nil then return default end
  return n
end

-- product events: XADD cc:{t}:events type <t> v <v> data <msgpack>
local function emit(etype, data)
  data.ts = NOW
  redis.call('XADD', K.events, 'MAXLEN', '~', cfg('events_maxlen'), '*',
    'type', etype, 'v', EVENT_V[etype], 'data', cmsgpack.pack(data))
end

local function command(edge, ctype, data)
  redis.call('XADD', k_commands(edge), 'MAXLEN', '~', cfg('commands_maxlen'), '*',
    'type', ctype, 'v', EVENT_V[ctype], 'data', cmsgpack.pack(data))
end

-- ---------------------------------------------------------------------------------- agents

local function agent_skills(agent) return split_csv(agent.skills) end

-- Move an agent to a new state, keeping the per-skill free index in step, and say so.
local function set_agent_state(agent_id, agent, new_state, call_id)
  local old = agent.state or 'logged_out'
  local akey = k_agent(agent_id)
  if new_state == 'free' then
    local idle = num(agent.idle_since, NOW)
    if old ~= 'free' then idle = NOW end
    redis.call('HSET', akey, 'state', 'free', 'call', '', 'idle_since', idle, 'state_since', NOW)
    for _, skill in ipairs(agent_skills(agent)) do redis.call('ZADD', k_skill_free(skill), idle, agent_id) end
    agent.idle_since = tostring(idle)
  else
    redis.call('HSET', akey, 'state', new_state, 'call', call_id or '', 'state_since', NOW)
    for _, skill in ipairs(agent_skills(agent)) do redis.call('ZREM', k_skill_free(skill), agent_id) end
  end
  agent.state = new_state
  agent.call = call_id or ''
  if old ~= new_state then
    local ev = { agent_id = agent_id, from = old, to = new_state }
    if call_id and call_id ~= '' then ev.call_id = call_id end
    emit('agent.state_changed', ev)
  end
end

local function set_logged(agent_id, agent, logged_in)
  for _, skill in ipairs(agent_skills(agent)) do
    if logged_in then redis.call('SADD', k_skill_logged(skill), agent_id)
    else redis.call('SREM', k_skill_logged(skill), agent_id) end
  end
end

local function log_out(agent_id, agent)
  set_logged(agent_id, agent, false)
  redis.call('HSET', k_agent(agent_id), 'logout_pending', '0')
  redis.call('ZREM', K.timers, 'wrapup|' .. agent_id)
  set_agent_state(agent_id, agent, 'logged_out', nil)
  emit('agent.logged_out', { agent_id = agent_id })
end

-- wrap-up length: the agent's own value, else the global one, capped by the flow's maximum
local function wrapup_ms(agent, flow)
  local w = tonumber(agent.wrapup_s)
  if w == nil or w < 0 then w = cfg('wrapup_s') end
  local cap = flow and tonumber(flow.max_wrapup_s) or 0
  if cap and cap > 0 and cap < w then w = cap end
  return w * 1000
end

-- ---------------------------------------------------------------------------------- calls

local function queue_uri(flow, position)
  local uri = flow.queue_uri or ''
  local param = cfg('queue_pos_param')
  if param == '' or position == nil then return uri end
  local q = string.find(uri, '?', 1, true)
  if q then return string.sub(uri, 1, q - 1) .. ';' .. param .. '=' .. position .. string.sub(uri, q) end
  return uri .. ';' .. param .. '=' .. position
end

local function call_field_updates(call_id, call, fields)
  local args = {}
  for name, value in pairs(fields) do
    args[#args + 1] = name
    args[#args + 1] = value
    call[name] = tostring(value)
  end
  redis.call('HSET', k_call(call_id), unpack(args))
end

-- Offer a call to a free agent: the agent rings, the edge is told, a lease guards the offer.
local function offer(call_id, call, flow, agent_id, agent)
  local offer_id = tostring(redis.call('HINCRBY', k_call(call_id), 'offers', 1))
  redis.call('ZREM', k_queue(call.flow), call_id)
  call_field_updates(call_id, call, { state = 'offered', agent = agent_id, offer = offer_id, offered_ms = NOW })
  set_agent_state(agent_id, agent, 'ringing', call_id)
  local ring_s = cfg('ring_timeout_s')
  redis.call('ZADD', K.timers, NOW + (ring_s + cfg('offer_lease_grace_s')) * 1000,
    'offer|' .. call_id .. '|' .. offer_id)
  local display = call.caller_display
  if flow.prepend_cid and flow.prepend_cid ~= '' then
    display = flow.prepend_cid .. (display ~= nil and display ~= '' and display or call.caller)
  end
  local ring = { call_id = call_id, offer_id = offer_id, agent_id = agent_id, uri = agent.uri,
    timeout_s = ring_s }
  if display and display ~= '' then ring.caller_display = display end
  command(call.edge, 'command.ring', ring)
  emit('call.offered', { call_id = call_id, flow = call.flow, agent_id = agent_id, offer_id = offer_id })
end

-- Put a call in its flow's queue (at the head when it comes back from a failed offer) and play
-- the queue media with the position parameter.
local function enqueue(call_id, call, flow, at_head)
  local qkey = k_queue(call.flow)
  local score = num(call.received_ms, NOW)
  if at_head then
    local first = redis.call('ZRANGE', qkey, 0, 0, 'WITHSCORES')
    if #first > 0 and tonumber(first[2]) <= score then score = tonumber(first[2]) - 1 end
  end
  redis.call('ZADD', qkey, score, call_id)
  local position = redis.call('ZRANK', qkey, call_id)
  local updates = { state = 'queued', agent = '', offer = '' }
  if (call.queued_ms or '') == '' then updates.queued_ms = NOW end
  if call.media ~= 'queue' then
    command(call.edge, 'command.media', { call_id = call_id, uri = queue_uri(flow, position), purpose = 'queue' })
    updates.media = 'queue'
  end
  call_field_updates(call_id, call, updates)
  emit('call.queued', { call_id = call_id, flow = call.flow, position = position })
end

-- The longest-idle free agent holding the skill, or nil.
local function longest_idle_agent(skill)
  local ids = redis.call('ZRANGE', k_skill_free(skill), 0, 0)
  if #ids == 0 then return nil, nil end
  local agent = hgetall(k_agent(ids[1]))
  if agent == nil or agent.state ~= 'free' then
    -- index out of step with the agent (deleted agent): repair it and give up for this step
    redis.call('ZREM', k_skill_free(skill), ids[1])
    return nil, nil
  end
  return ids[1], agent
end

-- Send a call to a free agent if there is one, else queue it.
local function route_call(call_id, call, flow, at_head)
  local agent_id, agent = longest_idle_agent(flow.skill)
  if agent_id then
    offer(call_id, call, flow, agent_id, agent)
  else
    enqueue(call_id, call, flow, at_head)
  end
end

-- An agent became free: give it the best waiting call among the flows of its skills
-- (flow priority first, 0 = highest, then queue order).
local function dispatch_to_agent(agent_id, agent)
  if agent.state ~= 'free' then return false end
  local best_call, best_flow, best_prio, best_score = nil, nil, nil, nil
  for _, skill in ipairs(agent_skills(agent)) do
    for _, flow_id in ipairs(redis.call('SMEMBERS', k_skill_flows(skill))) do
      local head = redis.call('ZRANGE', k_queue(flow_id), 0, 0, 'WITHSCORES')
      if #head > 0 then
        local prio = num(redis.call('HGET', k_flow(flow_id), 'priority'), 256)
        local score = tonumber(head[2])
        if best_call == nil or prio < best_prio or (prio == best_prio and score < best_score) then
          best_call, best_flow, best_prio, best_score = head[1], flow_id, prio, score
        end
      end
    end
  end
  if best_call == nil then return false end
  local call = hgetall(k_call(best_call))
  local flow = hgetall(k_flow(best_flow))
  if call == nil or flow == nil or call.state ~= 'queued' then
    redis.call('ZREM', k_queue(best_flow), best_call)  -- a stale queue entry: drop it
    return false
  end
  offer(best_call, call, flow, agent_id, agent)
  return true
end

-- An agent's call or offer is over: wrap-up, log out, or free (and then take the next call).
local function release_agent(agent_id, flow, with_wrapup)
  local agent = hgetall(k_agent(agent_id))
  if agent == nil then return end
  if agent.logout_pending == '1' then
    log_out(agent_id, agent)
    return
  end
  local w = with_wrapup and wrapup_ms(agent, flow) or 0
  if w > 0 then
    set_agent_state(agent_id, agent, 'wrap_up', nil)
    redis.call('HSET', k_agent(agent_id), 'wrapup_end_ms', NOW + w)
    redis.call('ZADD', K.timers, NOW + w, 'wrapup|' .. agent_id)
  else
    set_agent_state(agent_id, agent, 'free', nil)
    dispatch_to_agent(agent_id, agent)
  end
end

-- Close a call: leave the queue, release the agent, and emit the call's summary (its CDR).
local function finish_call(call_id, call, outcome, ended_by, reason)
  local flow = hgetall(k_flow(call.flow)) or {}
  redis.call('ZREM', k_queue(call.flow), call_id)
  redis.call('SREM', K.calls, call_id)
  if call.edge then redis.call('SREM', k_edge_calls(call.edge), call_id) end
  local received = num(call.received_ms, NOW)
  local connected = tonumber(call.connected_ms)
  local wait, pickup, talk = NOW - received, 0, 0
  if connected then
    wait = connected - received
    pickup = connected - num(call.offered_ms, connected)
    talk = NOW - connected
  end
  local agent_id = call.agent ~= '' and call.agent or nil
  if call.offer and call.offer ~= '' then
    redis.call('ZREM', K.timers, 'offer|' .. call_id .. '|' .. call.offer)
  end
  local prev_state = call.state
  call_field_updates(call_id, call, { state = 'ended', ended_ms = NOW, outcome = outcome })
  redis.call('EXPIRE', k_call(call_id), cfg('ended_call_ttl_s'))
  if outcome == 'abandoned' then
    emit('call.abandoned', { call_id = call_id, flow = call.flow, wait_ms = wait, stage = prev_state })
  end
  local ended = { call_id = call_id, flow = call.flow, caller = call.caller or '', outcome = outcome,
    ended_by = ended_by, reason = reason, received_ms = received, wait_ms = wait, pickup_ms = pickup,
    talk_ms = talk, rejections = num(call.rejections, 0) }
  if agent_id then ended.agent_id = agent_id end
  emit('call.ended', ended)
  if agent_id and (prev_state == 'offered' or prev_state == 'connected') then
    release_agent(agent_id, flow, prev_state == 'connected')
  end
end

-- The offer of a call failed (agent rejected, did not answer, lease expired): the agent gets
-- the reference's wrap-up penalty, the call goes back to the head of its queue.
local function offer_failed(call_id, call, reason)
  local flow = hgetall(k_flow(call.flow))
  local agent_id = call.agent
  redis.call('ZREM', K.timers, 'offer|' .. call_id .. '|' .. call.offer)
  emit('call.agent_failed', { call_id = call_id, flow = call.flow, agent_id = agent_id,
    offer_id = call.offer, reason = reason })
  redis.call('HINCRBY', k_call(call_id), 'rejections', 1)
  call.rejections = tostring(num(call.rejections, 0) + 1)
  if flow == nil then
    command(call.edge, 'command.hangup', { call_id = call_id, reason = 'flow_removed' })
    finish_call(call_id, call, 'failed', 'system', 'flow_removed')
    return
  end
  call_field_updates(call_id, call, { agent = '', offer = '', state = 'queued' })
  release_agent(agent_id, flow, true)
  -- release_agent may already have handed this agent another call; this one goes to the head
  call = hgetall(k_call(call_id))
  route_call(call_id, call, flow, true)
end
