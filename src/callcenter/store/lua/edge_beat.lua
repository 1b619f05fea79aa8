-- edge_beat: a sip-edge's heartbeat, which takes or renews the lease on its id in the same step.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 edge_id, 3 token, 4 lease_ms, 5 group (its address group, "" = none)
-- READS: edge_info, edge_lease
-- WRITES: edge_group, edge_info, edge_lease, edges
-- RETURNS: OK | OK lost_ms (the edge had been declared lost then: edge_lost) | ALREADY holder (another process holds the id) | INVALID why
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
-- The group (CC_EDGE_GROUP: the edges that share one SIP address) is recorded for edge_lost, which
-- hands a lost edge's calls to a live peer of its group. A beat after edge_lost ran for this id
-- returns the time it did (and clears the mark, once): the process learns that the calls it had
-- then were ended or adopted by a peer, and stops acting on them. (edge_lost also took the id out
-- of its address group and set a TTL on its info: the group is added again above, the TTL removed.)

local edge, token, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
if not edge or edge == '' or not token or token == '' or not ttl or ttl <= 0 then
  return { RC.INVALID, 'edge_id, token and lease_ms required' }
end
local lease = k_edge_lease(edge)
local holder = redis.call('GET', lease)
if holder and holder ~= token then return { RC.ALREADY, holder } end
redis.call('SET', lease, token, 'PX', ttl)
redis.call('ZADD', K.edges, 'GT', NOW, edge)
local info = k_edge_info(edge)
local group = ARGV[5] or ''
local was = redis.call('HGET', info, 'group')
if group ~= (was or '') then
  if was and was ~= '' then redis.call('SREM', k_edge_group(was), edge) end
  if group ~= '' then
    redis.call('HSET', info, 'group', group)
    redis.call('SADD', k_edge_group(group), edge)
  else
    redis.call('HDEL', info, 'group')
  end
end
local lost = redis.call('HGET', info, 'lost_ms')
if lost then
  redis.call('HDEL', info, 'lost_ms')
  redis.call('PERSIST', info)   -- edge_lost gave it a TTL; this id is live again
  return { RC.OK, lost }
end
return { RC.OK }
