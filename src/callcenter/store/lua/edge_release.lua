-- edge_release: a sip-edge's clean stop: it gives up the lease on its id and its heartbeat.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 edge_id, 3 token
-- READS: edge_info, edge_lease
-- WRITES: commands, edge_group, edge_info, edge_lease, edges, retention
-- RETURNS: OK | NOT_FOUND (the lease is not this token's: nothing is touched) | INVALID why
-- EVENTS: -
-- COMMANDS: -
-- LIB: -
--
-- Only the holder releases: a process whose lease expired and was taken by another must not
-- remove the new holder's lease or heartbeat. A new process may take the id at once.
-- The stopped edge has drained (no call left): its command stream with its group, its fuse counts,
-- its info and its place in its address group go too (an id replaced by a new one in a rolling
-- update leaves nothing behind; a process of the same id makes them again: a new group, its beat).

local edge, token = ARGV[2], ARGV[3]
if not edge or edge == '' or not token or token == '' then return { RC.INVALID, 'edge_id and token required' } end
local lease = k_edge_lease(edge)
if redis.call('GET', lease) ~= token then return { RC.NOT_FOUND } end
redis.call('DEL', lease)
redis.call('ZREM', K.edges, edge)
redis.call('DEL', k_commands(edge))
redis.call('HDEL', K.retention, 'capped:commands:' .. edge, 'capped_unread:commands:' .. edge)
local info = k_edge_info(edge)
local group = redis.call('HGET', info, 'group')
if group and group ~= '' then redis.call('SREM', k_edge_group(group), edge) end
redis.call('DEL', info)
return { RC.OK }
