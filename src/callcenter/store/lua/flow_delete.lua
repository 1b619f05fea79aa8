-- flow_delete: remove a flow from the Redis cache. Refused while calls wait in its queue.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 flow_id
-- READS: chat_queue, flow, queue
-- WRITES: flow, flows, skill_flows
-- RETURNS: OK | NOT_FOUND | INVALID why
-- EVENTS: -
-- COMMANDS: -
-- LIB: -

local flow_id = ARGV[2]
local skill = redis.call('HGET', k_flow(flow_id), 'skill')
if not skill then return { RC.NOT_FOUND } end
if redis.call('ZCARD', k_queue(flow_id)) + redis.call('ZCARD', k_chat_queue(flow_id)) > 0 then return { RC.INVALID, 'calls are waiting in this flow' } end
redis.call('SREM', k_skill_flows(skill), flow_id)
redis.call('SREM', K.flows, flow_id)
redis.call('DEL', k_flow(flow_id))
return { RC.OK }
