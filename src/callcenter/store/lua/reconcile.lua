-- reconcile: end calls that can no longer end by themselves, and free agents that no live call holds.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 edge_lapse_ms (0: calls are not checked against the edges), 3 limit (calls ended per step, default 500)
-- READS: agent, agent_chats, agents, call, calls, chat_queue, config, edges, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, timer_sleep, timer_wake, timers
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, events, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, timer_wake, timers
-- RETURNS: OK number_released number_ended
-- EVENTS: agent.logged_out, agent.paused, agent.released, agent.state_changed, call.abandoned, call.ended, call.offered
-- COMMANDS: command.hangup, command.ring, command.ring_all
-- LIB: config, core, chat, calls
--
-- Calls first (every live call in cc:{t}:calls), each ended with finish_call(outcome failed,
-- ended_by system), which frees its agent with no penalty and emits call.ended (its CDR):
-- - `edge_unknown`: its sip-edge has no heartbeat in cc:{t}:edges (it never sent one, or was
--   declared lost before this call was recorded) and the call is older than edge_lapse_ms; no
--   command is sent, nobody would read it;
-- - `stalled`: it stayed in its state (`state_ms`) longer than that state may last: an offer
--   ring_timeout_s + offer_lease_grace_s + whisper_max_s, a wait in a flow with max_wait_s that
--   maximum (while its timer is armed); anything else (talking, media, waiting with no maximum)
--   max_call_s. Each timer-bound phase gets offer_lease_grace_s more, so the timer due first
--   always wins. The edge is told to hang up (command.hangup, reason stalled).
-- Then agents: an agent ringing or in a call must be the agent of a live call in the matching
-- state; an agent in wrap-up must have its wrap-up timer. Any replica may run it at any time.

local edge_lapse = tonumber(ARGV[2]) or 0
local limit = tonumber(ARGV[3]) or 500

-- how long a call may stay in its present state (ms)
local function state_bound_ms(call_id, call)
  local grace = cfg('offer_lease_grace_s')
  if call.state == 'offered' then
    return (cfg('ring_timeout_s') + grace + cfg('whisper_max_s') + grace) * 1000
  end
  -- a wait whose maximum has fired and left the call queued (no overflow target, max_overflows
  -- spent) has no maximum any more
  if call.state == 'queued' and redis.call('ZSCORE', K.timers, 'maxwait|' .. call_id) then
    local flow = hgetall(k_flow(call.flow or ''))
    local max_wait = flow and tonumber(flow.max_wait_s) or 0
    if max_wait > 0 then return (max_wait + grace) * 1000 end
  end
  return cfg('max_call_s') * 1000
end

-- The fields of a hash this step reads (HMGET: not the whole hash into a Lua table, for every live
-- call and busy agent each pass), or nil when it has none of them.
local function hash_fields(key, names)
  local values = redis.call('HMGET', key, unpack(names))
  local t, any = {}, false
  for i, name in ipairs(names) do
    if values[i] then t[name], any = values[i], true end
  end
  return any and t or nil
end
local CALL_FIELDS = { 'state', 'state_ms', 'received_ms', 'edge', 'flow', 'media_type' }
local HOLDER_FIELDS = { 'agent', 'state', 'ring_all' }
local BUSY_FIELDS = { 'state', 'call' }

-- whether an edge has a heartbeat, asked once per edge (a few edges hold every call)
local known_edges = {}
local function edge_known(edge)
  if known_edges[edge] == nil then known_edges[edge] = redis.call('ZSCORE', K.edges, edge) ~= false end
  return known_edges[edge]
end

local doomed = {}
for _, call_id in ipairs(redis.call('SMEMBERS', K.calls)) do
  if #doomed >= limit then break end
  local ckey = k_call(call_id)
  local call = hash_fields(ckey, CALL_FIELDS)
  if call ~= nil and call.state == nil then call = hgetall(ckey) end  -- an odd hash: read as it is
  if call == nil or call.state == 'ended' then
    redis.call('SREM', K.calls, call_id)  -- an index entry without a live call: drop it
  else
    local since = num(call.state_ms, num(call.received_ms, NOW))
    local reason = nil
    if edge_lapse > 0 and not edge_known(call.edge or '')
        and NOW - num(call.received_ms, NOW) > edge_lapse then
      reason = 'edge_unknown'
    elseif NOW - since > state_bound_ms(call_id, call) then
      reason = 'stalled'
    end
    if reason then
      -- out of its queue first, so that no agent freed below is handed a doomed call
      if call.flow then redis.call('ZREM', k_queue_of(call), call_id) end
      doomed[#doomed + 1] = { call_id, reason }
    end
  end
end
local ended = 0
for _, pair in ipairs(doomed) do
  local call_id, reason = pair[1], pair[2]
  local call = hgetall(k_call(call_id))  -- again: an earlier end may have changed it
  if call and call.state ~= 'ended' then
    if reason == 'stalled' then command(call.edge, 'command.hangup', { call_id = call_id, reason = 'stalled' }) end
    finish_call(call_id, call, 'failed', 'system', reason)
    ended = ended + 1
  end
end

local released = 0
-- only an agent ringing, in a call, in wrap-up or in a chat can be held by nothing: the others
-- (most of them: free, paused, logged out) are known by their state alone, read with one HGET
for _, agent_id in ipairs(redis.call('SMEMBERS', K.agents)) do
  local akey = k_agent(agent_id)
  local state = redis.call('HGET', akey, 'state')
  local agent = nil
  if state == 'in_chat' then
    agent = hgetall(akey)
  elseif state == 'ringing' or state == 'in_call' or state == 'wrap_up' then
    agent = hash_fields(akey, BUSY_FIELDS)
  end
  if agent then
    local stuck = false
    if agent.state == 'ringing' or agent.state == 'in_call' then
      local call = (agent.call or '') ~= '' and hash_fields(k_call(agent.call), HOLDER_FIELDS) or nil
      local want = agent.state == 'ringing' and 'offered' or 'connected'
      local holds = call ~= nil and call.agent == agent_id
      if call ~= nil and not holds and agent.state == 'ringing' then
        for _, id in ipairs(ring_all_members(call)) do if id == agent_id then holds = true end end
      end
      stuck = not holds or call.state ~= want
    elseif agent.state == 'wrap_up' then
      stuck = redis.call('ZSCORE', K.timers, 'wrapup|' .. agent_id) == false
    elseif agent.state == 'in_chat' then
      -- every chat slot must be held by a live chat of this agent; drop the others
      for _, chat_id in ipairs(redis.call('SMEMBERS', k_agent_chats(agent_id))) do
        local chat = hgetall(k_call(chat_id))
        if chat == nil or chat.agent ~= agent_id or (chat.state ~= 'offered' and chat.state ~= 'connected') then
          redis.call('SREM', k_agent_chats(agent_id), chat_id)
        end
      end
      local chats = redis.call('SCARD', k_agent_chats(agent_id))
      if tostring(chats) ~= (agent.chats or '0') then
        redis.call('HSET', k_agent(agent_id), 'chats', chats)
        agent.chats = tostring(chats)
        chat_index(agent_id, agent)
      end
      stuck = chats == 0
    end
    if stuck then
      released = released + 1
      local ev = { agent_id = agent_id, reason = 'no_live_call', from = agent.state }
      if (agent.call or '') ~= '' then ev.call_id = agent.call end
      emit('agent.released', ev)
      release_agent(agent_id, nil, false)
    end
  end
end
return { RC.OK, released, ended }
