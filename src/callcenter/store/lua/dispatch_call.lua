-- dispatch_call: an external dispatcher hands a waiting call to a free agent, or a chat to an agent with a free chat slot.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 call_id, 3 agent_id
-- READS: agent, agent_chats, call, config, flow, timer_sleep, timer_wake
-- WRITES: agent, agent_chats, call, chat_queue, commands, events, flow_stats, queue, skill_chat, skill_free, timer_wake, timers
-- RETURNS: OK | NOT_FOUND 'call' | NOT_FOUND 'agent' | INVALID why
-- EVENTS: agent.state_changed, call.offered
-- COMMANDS: command.ring
-- LIB: core, chat, offer
--
-- The reference's dispatch_call_to_agent; meant for internal dispatching off, works either way.

local call_id, agent_id = ARGV[2], ARGV[3]
local call = hgetall(k_call(call_id))
if call == nil or call.state == 'ended' then return { RC.NOT_FOUND, 'call' } end
local agent = hgetall(k_agent(agent_id))
if agent == nil then return { RC.NOT_FOUND, 'agent' } end
if call.state ~= 'queued' then return { RC.INVALID, 'the call is ' .. call.state .. ', not queued' } end
if call.media_type == 'chat' then
  if (agent.chat_uri or '') == '' then return { RC.INVALID, 'the agent takes no chats' } end
  if chat_slots_free(agent) <= 0 then
    return { RC.INVALID, 'the agent has no free chat slot (' .. (agent.state or 'logged_out') .. ')' }
  end
else
  if (agent.uri or '') == '' then return { RC.INVALID, 'the agent takes no audio calls' } end
  if agent.state ~= 'free' then return { RC.INVALID, 'the agent is ' .. (agent.state or 'logged_out') .. ', not free' } end
end
local flow = hgetall(k_flow(call.flow))
if flow == nil then return { RC.INVALID, 'the flow of the call no longer exists' } end
local has_skill = false
for _, skill in ipairs(agent_skills(agent)) do if skill == flow.skill then has_skill = true end end
if not has_skill then return { RC.INVALID, 'the agent lacks skill ' .. flow.skill } end
-- the caller is rung to an agent only once it is on our media (offer.lua waits_for_media)
if waits_for_media(call, flow) then return { RC.INVALID, 'the caller is not on media yet' } end
-- its edge refused to ring this agent for it before (offer.lua skipped_agents): it would again
if skips_agent(call.skip_agents, agent_id) then
  return { RC.INVALID, 'the edge of the call cannot reach the agent (registered_elsewhere)' }
end
offer(call_id, call, flow, agent_id, agent)
return { RC.OK }
