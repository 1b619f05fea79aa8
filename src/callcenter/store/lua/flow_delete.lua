-- flow_delete.lua: remove a flow from the Redis cache. Refused while calls wait in its queue.
-- KEYS[1] any tenant key. ARGV: now_ms, flow_id. Returns {RC.OK} | {RC.NOT_FOUND} | {RC.INVALID, why}.
--!include common.lua

local flow_id = ARGV[2]
local skill = redis.call('HGET', k_flow(flow_id), 'skill')
if not skill then return { RC.NOT_FOUND } end
if redis.call('ZCARD', k_queue(flow_id)) + redis.call('ZCARD', k_chat_queue(flow_id)) > 0 then return { RC.INVALID, 'calls are waiting in this flow' } end
redis.call('SREM', k_skill_flows(skill), flow_id)
redis.call('SREM', K.flows, flow_id)
redis.call('DEL', k_flow(flow_id))
return { RC.OK }
