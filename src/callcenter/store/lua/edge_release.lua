-- edge_release: a sip-edge's clean stop: it gives up the lease on its id and its heartbeat.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 edge_id, 3 token
-- READS: edge_calls, edge_info, edge_lease
-- WRITES: commands, edge_group, edge_info, edge_lease, edges, retention
-- RETURNS: OK | OK calls_left (the id is free; the heartbeat and the rest stay for edge_lost) | NOT_FOUND (the lease is not this token's: nothing is touched) | INVALID why
-- EVENTS: -
-- COMMANDS: -
-- LIB: -
--
-- Only the holder releases: a process whose lease expired and was taken by another must not
-- remove the new holder's lease or heartbeat. A new process may take the id at once.
-- An edge that stopped with no call left (it drained): its heartbeat, its command stream with its
-- group, its fuse counts, its info and its place in its address group go too (an id replaced by a
-- new one in a rolling update leaves nothing behind; a process of the same id makes them again: a
-- new group, its beat).
-- An edge that still has calls (a process that took the id after its predecessor died and could
-- not start, e.g. its port taken: the predecessor's calls are live; a drain cut short) frees the id
-- and nothing else: the calls need the heartbeat entry. A process of that id that comes back within
-- the lapse adopts them; else edge_lost ends them (or hands them to a peer) with the true reason and
-- then clears the rest. Without the entry the reconciler would end them as `edge_unknown` and no
-- dispatcher would ever declare the edge lost.

local edge, token = ARGV[2], ARGV[3]
if not edge or edge == '' or not token or token == '' then return { RC.INVALID, 'edge_id and token required' } end
local lease = k_edge_lease(edge)
if redis.call('GET', lease) ~= token then return { RC.NOT_FOUND } end
redis.call('DEL', lease)
local left = redis.call('SCARD', k_edge_calls(edge))
if left > 0 then return { RC.OK, left } end
redis.call('ZREM', K.edges, edge)
redis.call('DEL', k_commands(edge))
redis.call('HDEL', K.retention, 'capped:commands:' .. edge, 'capped_unread:commands:' .. edge)
local info = k_edge_info(edge)
local group = redis.call('HGET', info, 'group')
if group and group ~= '' then redis.call('SREM', k_edge_group(group), edge) end
redis.call('DEL', info)
return { RC.OK }
