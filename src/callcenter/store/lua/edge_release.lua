-- edge_release: a sip-edge's clean stop: it gives up the lease on its id and its heartbeat.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 edge_id, 3 token
-- READS: edge_lease
-- WRITES: edge_lease, edges
-- RETURNS: OK | NOT_FOUND (the lease is not this token's: nothing is touched) | INVALID why
-- EVENTS: -
-- COMMANDS: -
-- LIB: -
--
-- Only the holder releases: a process whose lease expired and was taken by another must not
-- remove the new holder's lease or heartbeat. A new process may take the id at once.

local edge, token = ARGV[2], ARGV[3]
if not edge or edge == '' or not token or token == '' then return { RC.INVALID, 'edge_id and token required' } end
local lease = k_edge_lease(edge)
if redis.call('GET', lease) ~= token then return { RC.NOT_FOUND } end
redis.call('DEL', lease)
redis.call('ZREM', K.edges, edge)
return { RC.OK }
