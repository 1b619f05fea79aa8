-- agent_release.lua: an administrator frees an agent by force. Its live call, if any, is hung up
-- and ended (outcome failed, reason force_release); the agent is free (or logged out / paused if
-- that was pending) at once, without wrap-up.
-- KEYS[1] any tenant key. ARGV: now_ms, agent_id.
-- Returns {RC.OK, state} | {RC.ALREADY, state} | {RC.NOT_FOUND}.
--!include common.lua

local agent_id = ARGV[2]
local agent = hgetall(k_agent(agent_id))
if agent == nil then return { RC.NOT_FOUND } end
local state = agent.state or 'logged_out'
if state ~= 'ringing' and state ~= 'in_call' and state ~= 'wrap_up' then return { RC.ALREADY, state } end
local held = agent.call or ''
local ev = { agent_id = agent_id, reason = 'forced', from = state }
local call = (agent.call or '') ~= '' and hgetall(k_call(agent.call)) or nil
if (agent.call or '') ~= '' then ev.call_id = agent.call end
emit('agent.released', ev)
if call and call.state ~= 'ended' and call.agent == agent_id then
  command(call.edge, 'command.hangup', { call_id = agent.call, reason = 'force_release' })
  finish_call(agent.call, call, 'failed', 'system', 'force_release')
end
agent = hgetall(k_agent(agent_id))
-- finish_call may have freed the agent and handed it the next waiting call: that offer stays
if agent.state == 'wrap_up' or ((agent.state == 'ringing' or agent.state == 'in_call') and (agent.call or '') == held) then
  redis.call('ZREM', K.timers, 'wrapup|' .. agent_id)
  release_agent(agent_id, nil, false)
end
return { RC.OK, hgetall(k_agent(agent_id)).state }
