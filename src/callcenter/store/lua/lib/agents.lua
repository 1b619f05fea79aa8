-- agents.lua: an agent's state and the indexes that follow it (logged in, free, chat slots):
-- state changes, log out, pause, wrap-up length, taking a chat slot.
-- NEEDS: config, core, chat

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

-- A chat takes one of the agent's chat slots: the agent is in_chat while it holds any.
local function take_chat_slot(agent_id, agent, call_id)
  redis.call('SADD', k_agent_chats(agent_id), call_id)
  agent.chats = tostring(redis.call('SCARD', k_agent_chats(agent_id)))
  redis.call('HSET', k_agent(agent_id), 'chats', agent.chats)
  if agent.state == 'in_chat' then chat_index(agent_id, agent)
  else set_agent_state(agent_id, agent, 'in_chat', nil) end
end

-- An agent whose registration lapsed or was removed: paused with reason 'unregistered', at once when
-- free or in wrap-up, else when its call ends (as agent_pause). One logged out, logging out or
-- already paused (for any reason) stays as it is. True when it is (or will be) paused.
local function pause_unregistered(agent_id, agent)
  local state = agent.state or 'logged_out'
  if state == 'logged_out' or agent.logout_pending == '1' or state == 'paused' then return false end
  if state == 'free' or state == 'wrap_up' then
    pause(agent_id, agent, 'unregistered')
    return true
  end
  if (agent.pause_pending or '') == '' then
    redis.call('HSET', k_agent(agent_id), 'pause_pending', 'unregistered')
    agent.pause_pending = 'unregistered'
    chat_index(agent_id, agent)
  end
  return true
end

-- Forget the lapsed contacts of an agent's AOR; the live ones stay. Returns how many are live and
-- when the last of them lapses (0 when none: the AOR's keys and its lapse timer are gone).
local function prune_aor(agent_id)
  local aor = k_aor(agent_id)
local bindings = k_aor_bindings(agent_id)
  local lapsed = redis.call('ZRANGEBYSCORE', aor, '-inf', NOW)
  for _, key in ipairs(lapsed) do
    redis.call('ZREM', aor, key)
    redis.call('HDEL', bindings, key)
  end
  local last = redis.call('ZRANGE', aor, -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', aor, bindings)
    redis.call('ZREM', K.registrations, agent_id)
    return 0, 0
  end
  local until_ms = tonumber(last[2])
  -- relative to the step's clock (the argument), not Redis' own
  redis.call('PEXPIRE', aor, until_ms - NOW)
  redis.call('PEXPIRE', bindings, until_ms - NOW)
  redis.call('ZADD', K.registrations, until_ms, agent_id)
  return redis.call('ZCARD', aor), until_ms
end
