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
local function k_chat_queue(flow) return P .. 'chatq:' .. flow end
-- the queue a call waits in: its flow's audio queue or chat queue
local function k_queue_of(call)
  if call.media_type == 'chat' then return k_chat_queue(call.flow) end
  return k_queue(call.flow)
end
local function k_skill_flows(skill) return P .. 'skill:' .. skill .. ':flows' end
local function k_skill_logged(skill) return P .. 'skill:' .. skill .. ':logged' end
-- the logged-in agents of a skill that take a media type ('audio': with a uri, 'chat': a chat_uri)
local function k_skill_serving(skill, media) return P .. 'skill:' .. skill .. ':logged:' .. media end
local function k_skill_free(skill) return P .. 'skill:' .. skill .. ':free' end
local function k_skill_chat(skill) return P .. 'skill:' .. skill .. ':chat' end
local function k_agent_chats(id) return P .. 'agentchats:' .. id end
local function k_commands(edge) return P .. 'commands:' .. edge end
local function k_edge_calls(edge) return P .. 'edge:' .. edge .. ':calls' end
local function k_stats(flow) if flow then return P .. 'stats:flow:' .. flow end return P .. 'stats' end
local function k_sl(flow, minute) return P .. 'sl:' .. flow .. ':' .. minute end

--!versions

-- configuration with the reference module's defaults, overridden by cc:{t}:config
local CONFIG_DEFAULTS = {
  wrapup_s = 30, ring_timeout_s = 20, reject_on_no_agents = 1, no_agents_code = 480,
  queue_pos_param = 'cc_pos', offer_lease_grace_s = 15, events_maxlen = 1000000,
  commands_maxlen = 100000, ended_call_ttl_s = 3600, internal_dispatching = 1, max_no_answer = 0,
  sl_threshold_s = 20, queue_ewt_param = 'cc_ewt', default_aht_s = 180,
  chat_dispatch_policy = 'balancing', chat_capacity = 4, whisper_max_s = 30,
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

-- ---------------------------------------------------------------------------------- statistics
-- Counters (reset by stats_reset.lua) and the on-hold gauge live in cc:{t}:stats and
-- cc:{t}:stats:flow:<flow>; service level is counted in one-minute buckets cc:{t}:sl:<flow>:<minute>.

local function stat(flow_id, field, by)
  redis.call('HINCRBY', k_stats(nil), field, by or 1)
  redis.call('HINCRBY', k_stats(flow_id), field, by or 1)
end

-- the on-hold gauge, with its chat subset
local function onhold_stat(flow_id, call, by)
  stat(flow_id, 'onhold', by)
  if call.media_type == 'chat' then stat(flow_id, 'onhold_chats', by) end
end

local function sl(flow_id, field)
  local key = k_sl(flow_id, math.floor(NOW / 60000))
  redis.call('HINCRBY', key, field, 1)
  redis.call('EXPIRE', key, 3720)
end

local function sl_threshold_ms(flow)
  local t = tonumber(flow and flow.sl_threshold_s)
  if t == nil or t <= 0 then t = cfg('sl_threshold_s') end
  return t * 1000
end

-- average handle time of a flow (ms): a moving average of its recent talk times
local function aht_ms(flow_id)
  local v = tonumber(redis.call('HGET', k_stats(flow_id), 'aht_ema_ms'))
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

-- ---------------------------------------------------------------------------------- agents

local function agent_skills(agent) return split_csv(agent.skills) end

-- ---- chat (MSRP) capacity
-- An agent with a chat URI takes chats while free or in_chat: up to its chat capacity, minus one
-- slot held back while its chat wrap-up runs (the reference's rule). Such agents are indexed in
-- cc:{t}:skill:<skill>:chat, scored by (ongoing chats, time of the last change): the balancing
-- policy takes the lowest score (fewest chats), full-load the highest (fill one agent up first).
local CHAT_SCORE_STEP = 1e13

local function chat_slots_free(agent)
  if (agent.chat_uri or '') == '' then return 0 end
  if agent.state ~= 'free' and agent.state ~= 'in_chat' then return 0 end
  if agent.logout_pending == '1' or (agent.pause_pending or '') ~= '' then return 0 end
  local held = num(agent.wrapup_end_ms, 0) > NOW and 1 or 0
  return num(agent.chat_capacity, cfg('chat_capacity')) - num(agent.chats, 0) - held
end

local function chat_index(agent_id, agent)
  local open = chat_slots_free(agent) > 0
  local score = num(agent.chats, 0) * CHAT_SCORE_STEP + NOW
  for _, skill in ipairs(agent_skills(agent)) do
    if open then redis.call('ZADD', k_skill_chat(skill), score, agent_id)
    else redis.call('ZREM', k_skill_chat(skill), agent_id) end
  end
end

-- Move an agent to a new state, keeping the per-skill free (audio) and chat indexes in step, and
-- say so. Only an agent with an audio URI is ever indexed as free for audio calls.
local function set_agent_state(agent_id, agent, new_state, call_id)
  local old = agent.state or 'logged_out'
  local akey = k_agent(agent_id)
  if new_state == 'free' then
    local idle = num(agent.idle_since, NOW)
    if old ~= 'free' then idle = NOW end
    redis.call('HSET', akey, 'state', 'free', 'call', '', 'idle_since', idle, 'state_since', NOW, 'wrapup_end_ms', 0)
    if (agent.uri or '') ~= '' then
      for _, skill in ipairs(agent_skills(agent)) do redis.call('ZADD', k_skill_free(skill), idle, agent_id) end
    end
    agent.idle_since = tostring(idle)
    agent.wrapup_end_ms = '0'
  else
    redis.call('HSET', akey, 'state', new_state, 'call', call_id or '', 'state_since', NOW)
    for _, skill in ipairs(agent_skills(agent)) do redis.call('ZREM', k_skill_free(skill), agent_id) end
  end
  agent.state = new_state
  agent.call = call_id or ''
  if (agent.chat_uri or '') ~= '' then chat_index(agent_id, agent) end
  if old ~= new_state then
    local ev = { agent_id = agent_id, from = old, to = new_state }
    if call_id and call_id ~= '' then ev.call_id = call_id end
    if new_state == 'in_chat' then ev.chats = num(agent.chats, 0) end
    emit('agent.state_changed', ev)
  end
end

local function set_logged(agent_id, agent, logged_in)
  for _, skill in ipairs(agent_skills(agent)) do
    if logged_in then
      redis.call('SADD', k_skill_logged(skill), agent_id)
      if (agent.uri or '') ~= '' then redis.call('SADD', k_skill_serving(skill, 'audio'), agent_id) end
      if (agent.chat_uri or '') ~= '' then redis.call('SADD', k_skill_serving(skill, 'chat'), agent_id) end
    else
      redis.call('SREM', k_skill_logged(skill), agent_id)
      redis.call('SREM', k_skill_serving(skill, 'audio'), agent_id)
      redis.call('SREM', k_skill_serving(skill, 'chat'), agent_id)
    end
  end
end

local function log_out(agent_id, agent)
  set_logged(agent_id, agent, false)
  redis.call('HSET', k_agent(agent_id), 'logout_pending', '0', 'pause_pending', '', 'pause_reason', '')
  redis.call('ZREM', K.timers, 'wrapup|' .. agent_id)
  set_agent_state(agent_id, agent, 'logged_out', nil)
  emit('agent.logged_out', { agent_id = agent_id })
end

local function pause(agent_id, agent, reason)
  redis.call('HSET', k_agent(agent_id), 'pause_reason', reason, 'pause_pending', '')
  redis.call('ZREM', K.timers, 'wrapup|' .. agent_id)
  agent.pause_reason, agent.pause_pending = reason, ''
  set_agent_state(agent_id, agent, 'paused', nil)
  emit('agent.paused', { agent_id = agent_id, reason = reason })
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

local function call_field_updates(call_id, call, fields)
  local args = {}
  for name, value in pairs(fields) do
    args[#args + 1] = name
    args[#args + 1] = value
    call[name] = tostring(value)
  end
  redis.call('HSET', k_call(call_id), unpack(args))
end

-- the on-hold gauge counts calls that wait for an agent (arrived, welcome, queued, ringing)
local function hold_off(call_id, call)
  if call.onhold == '1' then
    onhold_stat(call.flow, call, -1)
    call_field_updates(call_id, call, { onhold = '0' })
  end
end

-- the caller's name as the agent sees it: the flow's prefix, then the display name (or user)
local function display_towards_agent(call, flow)
  local display = call.caller_display
  if display == nil or display == '' then display = call.caller end
  if flow.prepend_cid and flow.prepend_cid ~= '' then
    display = string.sub(flow.prepend_cid .. ' ' .. (display or ''), 1, 64)
  end
  return display
end

local function ring_all_members(call) return split_csv(call.ring_all) end

-- A chat takes one of the agent's chat slots: the agent is in_chat while it holds any.
local function take_chat_slot(agent_id, agent, call_id)
  redis.call('SADD', k_agent_chats(agent_id), call_id)
  agent.chats = tostring(redis.call('SCARD', k_agent_chats(agent_id)))
  redis.call('HSET', k_agent(agent_id), 'chats', agent.chats)
  if agent.state == 'in_chat' then chat_index(agent_id, agent)
  else set_agent_state(agent_id, agent, 'in_chat', nil) end
end

-- Offer a call to an agent: the agent rings, the edge is told, a lease guards the offer. An audio
-- call makes a free agent ringing; a chat takes one of the agent's chat slots (state in_chat).
local function offer(call_id, call, flow, agent_id, agent)
  local offer_id = tostring(redis.call('HINCRBY', k_call(call_id), 'offers', 1))
  redis.call('ZREM', k_queue_of(call), call_id)
  call_field_updates(call_id, call, { state = 'offered', agent = agent_id, offer = offer_id, offered_ms = NOW })
  local uri = agent.uri
  if call.media_type == 'chat' then
    uri = agent.chat_uri
    take_chat_slot(agent_id, agent, call_id)
  else
    set_agent_state(agent_id, agent, 'ringing', call_id)
  end
  redis.call('HINCRBY', k_agent(agent_id), 'distributed', 1)
  stat(call.flow, 'distributed')
  local ring_s = cfg('ring_timeout_s')
  local whisper = flow.flow_id_uri or ''
  local lease_s = ring_s + cfg('offer_lease_grace_s')
  if whisper ~= '' then lease_s = lease_s + cfg('whisper_max_s') end
  redis.call('ZADD', K.timers, NOW + lease_s * 1000, 'offer|' .. call_id .. '|' .. offer_id)
  local display = display_towards_agent(call, flow)
  local ring = { call_id = call_id, offer_id = offer_id, agent_id = agent_id, uri = uri, timeout_s = ring_s }
  if display and display ~= '' then ring.caller_display = display end
  if whisper ~= '' then ring.whisper_uri = whisper end
  command(call.edge, 'command.ring', ring)
  emit('call.offered', { call_id = call_id, flow = call.flow, agent_id = agent_id, offer_id = offer_id })
end

local function agent_if_free(agent_id, skill)
  local agent = hgetall(k_agent(agent_id))
  if agent == nil or agent.state ~= 'free' or (agent.uri or '') == '' then
    -- index out of step with the agent (deleted agent): repair it
    redis.call('ZREM', k_skill_free(skill), agent_id)
    return nil
  end
  return agent
end

-- Ring-all: offer a call to every free agent of the flow at once; the edge forks, the first to
-- answer wins and the others get CANCEL. The call holds the ringing agents in `ring_all`.
local function offer_all(call_id, call, flow, agents)
  local offer_id = tostring(redis.call('HINCRBY', k_call(call_id), 'offers', 1))
  redis.call('ZREM', k_queue_of(call), call_id)
  local ids, targets = {}, {}
  for _, pair in ipairs(agents) do
    local agent_id, agent = pair[1], pair[2]
    ids[#ids + 1] = agent_id
    targets[#targets + 1] = { agent_id = agent_id, uri = agent.uri }
    set_agent_state(agent_id, agent, 'ringing', call_id)
    redis.call('HINCRBY', k_agent(agent_id), 'distributed', 1)
    emit('call.offered', { call_id = call_id, flow = call.flow, agent_id = agent_id, offer_id = offer_id })
  end
  call_field_updates(call_id, call, { state = 'offered', agent = '', offer = offer_id, offered_ms = NOW,
    ring_all = table.concat(ids, ',') })
  stat(call.flow, 'distributed')
  local ring_s = cfg('ring_timeout_s')
  redis.call('ZADD', K.timers, NOW + (ring_s + cfg('offer_lease_grace_s')) * 1000,
    'offer|' .. call_id .. '|' .. offer_id)
  local cmd = { call_id = call_id, offer_id = offer_id, targets = targets, timeout_s = ring_s }
  local display = display_towards_agent(call, flow)
  if display and display ~= '' then cmd.caller_display = display end
  command(call.edge, 'command.ring_all', cmd)
end

local function free_agents_of(flow)
  local out = {}
  for _, id in ipairs(redis.call('ZRANGE', k_skill_free(flow.skill), 0, -1)) do
    local agent = agent_if_free(id, flow.skill)
    if agent then out[#out + 1] = { id, agent } end
  end
  return out
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
  if call.media ~= 'queue' then
    command(call.edge, 'command.media', { call_id = call_id, uri = queue_uri(call.flow, flow, position, call.media_type),
      purpose = 'queue' })
    updates.media = 'queue'
  end
  call_field_updates(call_id, call, updates)
  local max_wait = tonumber(flow.max_wait_s) or 0
  if max_wait > 0 then
    redis.call('ZADD', K.timers, math.max(NOW, num(call.received_ms, NOW) + max_wait * 1000), 'maxwait|' .. call_id)
  end
  local onhold_th = tonumber(flow.dissuading_onhold_th) or 0
  if onhold_th > 0 and (flow.dissuading_uri or '') ~= '' then
    redis.call('ZADD', K.timers, NOW + onhold_th * 1000, 'onhold|' .. call_id)
  end
  emit('call.queued', { call_id = call_id, flow = call.flow, position = position })
end

-- Choose a free agent for a flow by the flow's strategy; nil when none is free.
--   longest-idle (default), random, top-down (agent id order), round-robin (id order, after
--   the flow's last choice), fewest-calls (answered), least-talk-time (talk_ms)
local function pick_agent(flow_id, flow)
  local fkey = k_skill_free(flow.skill)
  local strategy = flow.strategy or ''
  if strategy == '' or strategy == 'longest-idle' then
    for _ = 1, 3 do
      local ids = redis.call('ZRANGE', fkey, 0, 0)
      if #ids == 0 then return nil, nil end
      local agent = agent_if_free(ids[1], flow.skill)
      if agent then return ids[1], agent end
    end
    return nil, nil
  end
  if strategy == 'random' then
    local id = redis.call('ZRANDMEMBER', fkey)
    if not id then return nil, nil end
    local agent = agent_if_free(id, flow.skill)
    if agent then return id, agent end
    return nil, nil
  end
  local ids = redis.call('ZRANGE', fkey, 0, -1)  -- longest idle first: the tie-breaker below
  local best_id, best_agent, best_metric = nil, nil, nil
  if strategy == 'top-down' or strategy == 'round-robin' then
    table.sort(ids)
    local last = strategy == 'round-robin' and (flow.rr_last or '') or ''
    local ordered = {}
    for _, id in ipairs(ids) do if id > last then ordered[#ordered + 1] = id end end
    for _, id in ipairs(ids) do if id <= last then ordered[#ordered + 1] = id end end
    for _, id in ipairs(ordered) do
      local agent = agent_if_free(id, flow.skill)
      if agent then best_id, best_agent = id, agent break end
    end
    if best_id and strategy == 'round-robin' then redis.call('HSET', k_flow(flow_id), 'rr_last', best_id) end
    return best_id, best_agent
  end
  local field = strategy == 'least-talk-time' and 'talk_ms' or 'answered'
  for _, id in ipairs(ids) do
    local agent = agent_if_free(id, flow.skill)
    if agent then
      local metric = num(agent[field], 0)
      if best_metric == nil or metric < best_metric then best_id, best_agent, best_metric = id, agent, metric end
    end
  end
  return best_id, best_agent
end

-- Bridge the caller to the flow's dissuading media (hang up or return to the queue after it).
local function dissuade(call_id, call, flow, rule)
  redis.call('ZREM', k_queue_of(call), call_id)
  redis.call('ZREM', K.timers, 'onhold|' .. call_id, 'maxwait|' .. call_id)
  call_field_updates(call_id, call, { state = 'dissuading', media = 'dissuading', agent = '', offer = '' })
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

-- Send a call to a free agent if there is one, else (a new call) dissuade it if a rule says so,
-- else queue it. With internal dispatching off, calls only queue: an external dispatcher
-- assigns them (dispatch_call.lua).
-- A chat goes to an agent with a free chat slot chosen by the chat policy (the flow's, else the
-- global chat_dispatch_policy): balancing (fewest ongoing chats first) or full-load (the agent
-- with the most ongoing chats that still has room, so the others stay free for audio calls).
local function pick_chat_agent(flow)
  local key = k_skill_chat(flow.skill)
  local policy = flow.chat_policy or ''
  if policy == '' then policy = cfg('chat_dispatch_policy') end
  for _ = 1, 3 do
    local ids
    if policy == 'full-load' then ids = redis.call('ZREVRANGE', key, 0, 0)
    else ids = redis.call('ZRANGE', key, 0, 0) end
    if #ids == 0 then return nil, nil end
    local agent = hgetall(k_agent(ids[1]))
    if agent and chat_slots_free(agent) > 0 then return ids[1], agent end
    redis.call('ZREM', key, ids[1])  -- index out of step with the agent: repair it
  end
  return nil, nil
end

-- A flow with a flow-id message queues a caller nobody has answered yet (no welcome) first: the
-- message needs the caller on media while the agent hears it. The queue media's answer
-- (report_media_answered.lua) then offers the call.
local function waits_for_media(call, flow)
  return (flow.flow_id_uri or '') ~= '' and (call.answered_ms or '') == ''
end

local function route_call(call_id, call, flow, at_head)
  local internal = cfg('internal_dispatching') == 1 and not waits_for_media(call, flow)
  if internal and call.media_type == 'chat' then
    local agent_id, agent = pick_chat_agent(flow)
    if agent_id then
      offer(call_id, call, flow, agent_id, agent)
      return
    end
  elseif internal and flow.strategy == 'ring-all' then
    local agents = free_agents_of(flow)
    if #agents > 0 then
      offer_all(call_id, call, flow, agents)
      return
    end
  elseif internal then
    local agent_id, agent = pick_agent(call.flow, flow)
    if agent_id then
      offer(call_id, call, flow, agent_id, agent)
      return
    end
  end
  if not at_head and call.dissuaded ~= '1' then
    local rule = dissuading_rule(call.flow, flow, call)
    if rule then
      call_field_updates(call_id, call, { dissuaded = '1' })
      dissuade(call_id, call, flow, rule)
      return
    end
  end
  enqueue(call_id, call, flow, at_head)
end

-- Give an agent the best waiting call (audio, or chat) among the flows of its skills: flow
-- priority first (0 = highest), then the call's priority and arrival (the queue score).
-- Returns true when it offered one.
local function take_waiting_call(agent_id, agent, chat)
  local queue_key = chat and k_chat_queue or k_queue
  for _ = 1, 3 do
    local best_call, best_flow, best_prio, best_score = nil, nil, nil, nil
    for _, skill in ipairs(agent_skills(agent)) do
      for _, flow_id in ipairs(redis.call('SMEMBERS', k_skill_flows(skill))) do
        local head = redis.call('ZRANGE', queue_key(flow_id), 0, 0, 'WITHSCORES')
        local flow_fields = #head > 0 and redis.call('HMGET', k_flow(flow_id), 'priority', 'flow_id_uri') or nil
        -- a flow-id message flow's head that waits for its queue media is offered when it answers
        if flow_fields and (flow_fields[2] or '') ~= ''
            and (redis.call('HGET', k_call(head[1]), 'answered_ms') or '') == '' then
          flow_fields = nil
        end
        if flow_fields then
          local prio = num(flow_fields[1], 256)
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
      redis.call('ZREM', queue_key(best_flow), best_call)  -- a stale queue entry: drop it, look again
    else
      if not chat and flow.strategy == 'ring-all' then
        offer_all(best_call, call, flow, free_agents_of(flow))
      else
        offer(best_call, call, flow, agent_id, agent)
      end
      return true
    end
  end
  return false
end

-- An agent with free chat slots takes waiting chats until its slots or the chat queues run out.
local function dispatch_chats(agent_id, agent)
  if cfg('internal_dispatching') ~= 1 then return end
  for _ = 1, num(agent.chat_capacity, cfg('chat_capacity')) do
    if chat_slots_free(agent) <= 0 or not take_waiting_call(agent_id, agent, true) then return end
  end
end

-- An agent became free: an audio call first (the reference's preference), else chats.
local function dispatch_to_agent(agent_id, agent)
  if agent.state ~= 'free' or cfg('internal_dispatching') ~= 1 then return false end
  if (agent.uri or '') ~= '' and take_waiting_call(agent_id, agent, false) then return true end
  if (agent.chat_uri or '') ~= '' then dispatch_chats(agent_id, agent) end
  return agent.state ~= 'free'
end

-- An agent's call or offer is over: log out, pause, wrap-up or free (then take the next call).
local function release_agent(agent_id, flow, with_wrapup)
  local agent = hgetall(k_agent(agent_id))
  if agent == nil then return end
  if agent.logout_pending == '1' then
    log_out(agent_id, agent)
    return
  end
  if (agent.pause_pending or '') ~= '' then
    pause(agent_id, agent, agent.pause_pending)
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

-- A chat of an agent is over (ended, or its offer failed): the slot is given back; a wrap-up
-- (after a talk, or the penalty of a failed offer) is added to the agent's running chat wrap-up,
-- which holds one slot back. With no chat left the agent logs out, pauses, wraps up or is free.
local function release_chat(agent_id, call_id, flow, with_wrapup)
  local akey = k_agent(agent_id)
  local agent = hgetall(akey)
  if agent == nil then return end
  redis.call('SREM', k_agent_chats(agent_id), call_id)
  local chats = redis.call('SCARD', k_agent_chats(agent_id))
  agent.chats = tostring(chats)
  redis.call('HSET', akey, 'chats', chats)
  local w = with_wrapup and wrapup_ms(agent, flow) or 0
  if w > 0 then
    local ends = math.max(NOW, num(agent.wrapup_end_ms, 0)) + w
    agent.wrapup_end_ms = tostring(ends)
    redis.call('HSET', akey, 'wrapup_end_ms', ends)
    redis.call('ZADD', K.timers, ends, 'wrapup|' .. agent_id)
  end
  if agent.state ~= 'in_chat' then return end
  if chats > 0 then
    chat_index(agent_id, agent)
    dispatch_chats(agent_id, agent)
  elseif agent.logout_pending == '1' then
    log_out(agent_id, agent)
  elseif (agent.pause_pending or '') ~= '' then
    pause(agent_id, agent, agent.pause_pending)
  elseif num(agent.wrapup_end_ms, 0) > NOW then
    set_agent_state(agent_id, agent, 'wrap_up', nil)  -- its timer is armed
  else
    set_agent_state(agent_id, agent, 'free', nil)
    dispatch_to_agent(agent_id, agent)
  end
end

-- Release whatever an ended or failed offer held: the agent of an audio call, or a chat slot.
local function release_for_call(agent_id, call_id, call, flow, with_wrapup)
  if call.media_type == 'chat' then release_chat(agent_id, call_id, flow, with_wrapup)
  else release_agent(agent_id, flow, with_wrapup) end
end

-- Close a call: leave the queue, release the agent, count it, and emit its summary (its CDR).
local function finish_call(call_id, call, outcome, ended_by, reason)
  local flow = hgetall(k_flow(call.flow)) or {}
  redis.call('ZREM', k_queue_of(call), call_id)
  redis.call('SREM', K.calls, call_id)
  if call.edge then redis.call('SREM', k_edge_calls(call.edge), call_id) end
  redis.call('ZREM', K.timers, 'maxwait|' .. call_id, 'onhold|' .. call_id)
  hold_off(call_id, call)
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
  if outcome ~= 'rejected' then
    stat(call.flow, 'awt_sum_ms', wait)
    stat(call.flow, 'awt_n')
  end
  if outcome == 'answered' then
    stat(call.flow, 'talk_sum_ms', talk)
    stat(call.flow, 'talk_n')
    local ema = tonumber(redis.call('HGET', k_stats(call.flow), 'aht_ema_ms'))
    ema = ema and (ema * 0.8 + talk * 0.2) or talk
    redis.call('HSET', k_stats(call.flow), 'aht_ema_ms', math.floor(ema))
    if agent_id then redis.call('HINCRBY', k_agent(agent_id), 'talk_ms', talk) end
  elseif outcome == 'abandoned' then
    stat(call.flow, 'abandoned')
    sl(call.flow, 'abandoned')
    if wait <= sl_threshold_ms(flow) then sl(call.flow, 'abandoned_in_t') end
    emit('call.abandoned', { call_id = call_id, flow = call.flow, wait_ms = wait, stage = prev_state })
  end
  local ended = { call_id = call_id, flow = call.flow, caller = call.caller or '', outcome = outcome,
    ended_by = ended_by, reason = reason, received_ms = received, wait_ms = wait, pickup_ms = pickup,
    talk_ms = talk, rejections = num(call.rejections, 0) }
  if agent_id then ended.agent_id = agent_id end
  if (call.media_type or '') ~= '' then ended.media_type = call.media_type end
  emit('call.ended', ended)
  if agent_id and (prev_state == 'offered' or prev_state == 'connected') then
    release_for_call(agent_id, call_id, call, flow, prev_state == 'connected')
  elseif prev_state == 'offered' then
    for _, ringing in ipairs(ring_all_members(call)) do release_agent(ringing, flow, false) end
  end
end

-- The offer of a call failed (agent rejected, did not answer, lease expired): the agent gets
-- the reference's wrap-up penalty (or a pause after too many misses in a row), the call goes
-- back to the head of its queue. When nobody of a ring-all answered, nobody is penalised.
local function offer_failed(call_id, call, reason)
  local flow = hgetall(k_flow(call.flow))
  local offer_id = call.offer
  redis.call('ZREM', K.timers, 'offer|' .. call_id .. '|' .. offer_id)
  local ring_all = (call.ring_all or '') ~= '' and call.agent == ''
  local failed_agents = ring_all and ring_all_members(call) or { call.agent }
  for _, agent_id in ipairs(failed_agents) do
    emit('call.agent_failed', { call_id = call_id, flow = call.flow, agent_id = agent_id, offer_id = offer_id,
      reason = reason })
  end
  if not ring_all then
    redis.call('HINCRBY', k_call(call_id), 'rejections', 1)
    call.rejections = tostring(num(call.rejections, 0) + 1)
    if reason ~= 'cancelled' then
      local akey = k_agent(call.agent)
      redis.call('HINCRBY', akey, 'missed', 1)
      local in_row = redis.call('HINCRBY', akey, 'missed_in_row', 1)
      local limit = tonumber(redis.call('HGET', akey, 'max_no_answer'))
      if limit == nil or limit < 0 then limit = cfg('max_no_answer') end
      if limit > 0 and in_row >= limit then
        redis.call('HSET', akey, 'pause_pending', 'no-answer', 'missed_in_row', 0)
      end
    end
  end
  if flow == nil then
    command(call.edge, 'command.hangup', { call_id = call_id, reason = 'flow_removed' })
    finish_call(call_id, call, 'failed', 'system', 'flow_removed')
    return
  end
  call_field_updates(call_id, call, { agent = '', offer = '', state = 'queued', ring_all = '' })
  for _, agent_id in ipairs(failed_agents) do release_for_call(agent_id, call_id, call, flow, not ring_all) end
  -- release_agent may already have handed an agent another call; this one goes to the head
  call = hgetall(k_call(call_id))
  route_call(call_id, call, flow, true)
end

-- The caller is now talking to the agent it was offered to.
local function connect(call_id, call)
  redis.call('ZREM', K.timers, 'offer|' .. call_id .. '|' .. call.offer, 'maxwait|' .. call_id, 'onhold|' .. call_id)
  hold_off(call_id, call)
  if (call.ring_all or '') ~= '' then
    local flow = hgetall(k_flow(call.flow))
    for _, other in ipairs(ring_all_members(call)) do
      if other ~= call.agent then
        emit('call.agent_failed', { call_id = call_id, flow = call.flow, agent_id = other, offer_id = call.offer,
          reason = 'answered_elsewhere' })
        release_agent(other, flow, false)
      end
    end
    call_field_updates(call_id, call, { ring_all = '' })
  end
  call_field_updates(call_id, call, { state = 'connected', connected_ms = NOW, media = '' })
  local wait = NOW - num(call.received_ms, NOW)
  local agent = hgetall(k_agent(call.agent))
  local chat = call.media_type == 'chat'
  if agent then
    if not chat then set_agent_state(call.agent, agent, 'in_call', call_id) end
    redis.call('HINCRBY', k_agent(call.agent), chat and 'answered_chats' or 'answered', 1)
    redis.call('HSET', k_agent(call.agent), 'missed_in_row', 0)
  end
  stat(call.flow, 'answered')
  if chat then stat(call.flow, 'answered_chats') end
  sl(call.flow, 'answered')
  local flow = hgetall(k_flow(call.flow))
  if wait <= sl_threshold_ms(flow) then sl(call.flow, 'answered_in_t') end
  emit('call.connected', { call_id = call_id, flow = call.flow, agent_id = call.agent, wait_ms = wait })
end
