-- agent_upsert.lua: create or update an agent in the Redis cache, keeping its runtime state.
-- KEYS[1] any tenant key. ARGV: now_ms, agent_id, uri, skills (comma separated), wrapup_s
-- ('' = the global value), max_no_answer ('' = the global value; 0 = never pause). A logged-in agent whose skills change moves between skill indexes
-- and, if free, may get a waiting call of a new skill. Returns {RC.OK, state}.
--!include common.lua

local agent_id, uri, skills, wrapup, max_no_answer = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6] or ''
if uri == nil or uri == '' then return { RC.INVALID, 'uri is required' } end
if #split_csv(skills) == 0 then return { RC.INVALID, 'at least one skill is required' } end
local akey = k_agent(agent_id)
local agent = hgetall(akey)
if agent == nil then
  redis.call('HSET', akey, 'id', agent_id, 'uri', uri, 'skills', skills, 'wrapup_s', wrapup or '',
    'max_no_answer', max_no_answer, 'state', 'logged_out', 'call', '', 'idle_since', NOW, 'state_since', NOW, 'logout_pending', '0')
  redis.call('SADD', K.agents, agent_id)
  return { RC.OK, 'logged_out' }
end
local logged_in = agent.state ~= 'logged_out' and agent.logout_pending ~= '1'
if agent.skills ~= skills and agent.state ~= 'logged_out' then
  for _, skill in ipairs(agent_skills(agent)) do
    redis.call('SREM', k_skill_logged(skill), agent_id)
    redis.call('ZREM', k_skill_free(skill), agent_id)
  end
  agent.skills = skills
  if logged_in then set_logged(agent_id, agent, true) end
  if agent.state == 'free' then
    for _, skill in ipairs(agent_skills(agent)) do
      redis.call('ZADD', k_skill_free(skill), num(agent.idle_since, NOW), agent_id)
    end
  end
end
redis.call('HSET', akey, 'uri', uri, 'skills', skills, 'wrapup_s', wrapup or '', 'max_no_answer', max_no_answer)
agent.skills, agent.uri = skills, uri
if agent.state == 'free' then dispatch_to_agent(agent_id, agent) end
return { RC.OK, agent.state }
