-- agent_upsert: create or update an agent in the Redis cache, keeping its runtime state.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 agent_id, 3 uri, 4 skills, 5 wrapup_s, 6 max_no_answer, 7 chat_uri, 8 chat_capacity
-- READS: agent, agent_chats, call, chat_queue, config, flow, queue, skill_flows, skill_free, timer_sleep, timer_wake
-- WRITES: agent, agent_chats, agents, call, chat_queue, commands, events, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, timer_wake, timers
-- RETURNS: OK state | INVALID why
-- EVENTS: agent.state_changed, call.offered
-- COMMANDS: command.ring, command.ring_all
-- LIB: core, chat, agents, offer
--
-- uri: audio SIP URI ('' = takes no audio calls); skills: comma separated; wrapup_s: '' = the
-- global value; max_no_answer: '' = the global value, 0 = never pause; chat_uri: MSRP-capable SIP
-- URI ('' = takes no chats); chat_capacity: '' = the global value. An agent needs an audio URI, a
-- chat URI or both. A logged-in agent whose skills or URIs change moves between the indexes and,
-- if free, may get a waiting call.

local agent_id, uri, skills, wrapup = ARGV[2], ARGV[3] or '', ARGV[4], ARGV[5]
local max_no_answer, chat_uri, chat_capacity = ARGV[6] or '', ARGV[7] or '', ARGV[8] or ''
if uri == '' and chat_uri == '' then return { RC.INVALID, 'an audio uri or a chat uri is required' } end
if #split_csv(skills) == 0 then return { RC.INVALID, 'at least one skill is required' } end
if chat_capacity ~= '' and (tonumber(chat_capacity) == nil or tonumber(chat_capacity) < 1) then
  return { RC.INVALID, 'chat_capacity must be at least 1' }
end
local akey = k_agent(agent_id)
local agent = hgetall(akey)
if agent == nil then
  redis.call('HSET', akey, 'id', agent_id, 'uri', uri, 'skills', skills, 'wrapup_s', wrapup or '',
    'max_no_answer', max_no_answer, 'chat_uri', chat_uri, 'chat_capacity', chat_capacity, 'chats', 0,
    'state', 'logged_out', 'call', '', 'idle_since', NOW, 'state_since', NOW, 'logout_pending', '0')
  redis.call('SADD', K.agents, agent_id)
  return { RC.OK, 'logged_out' }
end
local logged_in = agent.state ~= 'logged_out' and agent.logout_pending ~= '1'
if agent.state ~= 'logged_out' then
  -- leave every index of the old definition, then enter those of the new one
  for _, skill in ipairs(agent_skills(agent)) do
    redis.call('SREM', k_skill_logged(skill), agent_id)
    redis.call('SREM', k_skill_serving(skill, 'audio'), agent_id)
    redis.call('SREM', k_skill_serving(skill, 'chat'), agent_id)
    redis.call('ZREM', k_skill_free(skill), agent_id)
    redis.call('ZREM', k_skill_chat(skill), agent_id)
  end
end
redis.call('HSET', akey, 'uri', uri, 'skills', skills, 'wrapup_s', wrapup or '', 'max_no_answer', max_no_answer,
  'chat_uri', chat_uri, 'chat_capacity', chat_capacity)
agent.skills, agent.uri, agent.chat_uri, agent.chat_capacity = skills, uri, chat_uri, chat_capacity
if agent.state ~= 'logged_out' then
  if logged_in then set_logged(agent_id, agent, true) end
  if agent.state == 'free' and uri ~= '' then
    for _, skill in ipairs(agent_skills(agent)) do
      redis.call('ZADD', k_skill_free(skill), num(agent.idle_since, NOW), agent_id)
    end
  end
  chat_index(agent_id, agent)
end
if agent.state == 'free' then dispatch_to_agent(agent_id, agent)
elseif agent.state == 'in_chat' then dispatch_chats(agent_id, agent) end
return { RC.OK, agent.state }
