-- edge_beat: a sip-edge's heartbeat, which takes or renews the lease on its id in the same step.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 edge_id, 3 token, 4 lease_ms
-- READS: edge_lease
-- WRITES: edge_lease, edges
-- RETURNS: OK | ALREADY holder (another process holds the id) | INVALID why
-- EVENTS: -
-- COMMANDS: -
-- LIB: -
--
-- One process per edge id: its token (host/pid/random) is the value of cc:{t}:edge:<id>:lease.
-- The lease is taken when it is free (never taken, released, or expired because its holder died
-- or Redis was away longer than lease_ms) and renewed while it holds this token; either way for
-- lease_ms (the lapse) and with the heartbeat, so a process never beats for an id it does not
-- hold. GT: a beat that waited in a paused Redis carries an older time than one that follows;
-- it never moves the heartbeat back.

local edge, token, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
if not edge or edge == '' or not token or token == '' or not ttl or ttl <= 0 then
  return { RC.INVALID, 'edge_id, token and lease_ms required' }
end
local lease = k_edge_lease(edge)
local holder = redis.call('GET', lease)
if holder and holder ~= token then return { RC.ALREADY, holder } end
redis.call('SET', lease, token, 'PX', ttl)
redis.call('ZADD', K.edges, 'GT', NOW, edge)
return { RC.OK }
