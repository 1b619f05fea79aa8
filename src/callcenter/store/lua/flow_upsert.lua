-- flow_upsert: create or update a flow in the Redis cache (SQL is its durable home).
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 flow_id, 3... field/value pairs (skill, priority, welcome_uri, queue_uri, ...)
-- READS: agent, agent_chats, call, chat_queue, config, flow, queue, skill_chat, skill_flows, skill_free, timer_sleep, timer_wake
-- WRITES: agent, agent_chats, call, chat_queue, commands, events, flow, flow_stats, flows, queue, skill_chat, skill_flows, skill_free, statflows, timer_wake, timers
-- RETURNS: OK | INVALID why
-- EVENTS: agent.state_changed, call.offered
-- COMMANDS: command.ring, command.ring_all
-- LIB: core, offer
--
-- A flow whose overflow_flow chain leads back to itself (a -> a, a -> b -> a, ...) is refused:
-- INVALID 'overflow cycle: a -> b -> a'. When the skill changes, free agents of the new skill take
-- the flow's waiting calls at once.

local flow_id = ARGV[2]
local fkey = k_flow(flow_id)
local old_skill = redis.call('HGET', fkey, 'skill')
local args = {}
local new_skill = nil
local overflow_flow = ''
for i = 3, #ARGV, 2 do
  args[#args + 1] = ARGV[i]
  args[#args + 1] = ARGV[i + 1]
  if ARGV[i] == 'skill' then new_skill = ARGV[i + 1] end
  if ARGV[i] == 'overflow_flow' then overflow_flow = ARGV[i + 1] end
end
if new_skill == nil or new_skill == '' then return { RC.INVALID, 'skill is required' } end
-- follow overflow_flow from the new definition: coming back to this flow is a cycle (refused, nothing
-- written). `seen` ends the walk on a cycle elsewhere (a cache written before this check existed).
local path, seen, hop = { flow_id }, {}, overflow_flow
while hop ~= '' and not seen[hop] do
  path[#path + 1] = hop
  if hop == flow_id then return { RC.INVALID, 'overflow cycle: ' .. table.concat(path, ' -> ') } end
  seen[hop] = true
  hop = redis.call('HGET', k_flow(hop), 'overflow_flow') or ''
end
if old_skill and old_skill ~= new_skill then redis.call('SREM', k_skill_flows(old_skill), flow_id) end
-- replace the definition, keeping runtime fields (the round-robin position)
local rr_last = redis.call('HGET', fkey, 'rr_last')
redis.call('DEL', fkey)
redis.call('HSET', fkey, 'id', flow_id, 'updated_ms', NOW, unpack(args))
if rr_last then redis.call('HSET', fkey, 'rr_last', rr_last) end
redis.call('SADD', k_skill_flows(new_skill), flow_id)
redis.call('SADD', K.flows, flow_id)
redis.call('SADD', K.statflows, flow_id)  -- its counters count in the tenant's totals
if old_skill and old_skill ~= new_skill then
  -- calls already waiting may be served at once by free agents of the new skill
  local flow = hgetall(fkey)
  serve_flow(flow_id, flow, false)
  serve_flow(flow_id, flow, true)
end
return { RC.OK }
