-- edge_lost: a sip-edge whose heartbeat lapsed is gone (crashed, SIGKILLed, cut off): a peer of its address adopts its calls, else they end.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 edge_id, 3 lapse_ms, 4 limit (calls per step, default 500)
-- READS: agent, agent_chats, call, chat_queue, config, dialog, edge_calls, edge_group, edge_info, edges, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, timer_sleep, timer_wake
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, dialog, edge_calls, edge_dialogs, edge_group, edge_info, edges, events, flow_stats, queue, retention, skill_chat, skill_free, skill_logged, skill_serving, sl, timer_wake, timers
-- RETURNS: OK calls_ended_or_handed | NOT_FOUND (no heartbeat entry) | STALE last_beat (the edge is alive) | INVALID why
-- EVENTS: agent.logged_out, agent.paused, agent.state_changed, call.abandoned, call.ended, call.offered
-- COMMANDS: command.adopt, command.ring, command.ring_all
-- LIB: config, core, calls
--
-- Any dispatcher replica may run it at any time; the heartbeat check inside the step makes a
-- second run, or a run racing the edge's comeback, harmless.
-- If the edge's heartbeat score in cc:{t}:edges is still older than now - lapse_ms:
-- * it is marked lost (edge:<edge>:info lost_ms): a process of that id that comes back (one that was
--   only cut off from Redis, or stopped) learns it from its next beat and drops the calls it no
--   longer owns;
-- * a peer: an edge of the same address group (edge:<edge>:info group, set by its beats from
--   CC_EDGE_GROUP) whose heartbeat is within the lapse. The one with the fewest calls (then the
--   lowest id) is chosen here, in one step, so with several peers exactly one adopts each call.
--   Each live call with a checkpoint (dialog:<call_id>) is handed to it: the call's edge and the
--   edges' call sets and checkpoint indexes change, the checkpoint's edge too, and the peer gets
--   command.adopt (it rebuilds a talking call's dialogs, ends the others, as a restarted edge
--   does). Its queue position, offer and agent stay as they are;
-- * every other live call (no peer, or no checkpoint) first leaves its queue (so a freed agent is
--   not handed a call of the same dead edge), then ends with finish_call(outcome failed, ended_by
--   system, reason edge_lost) with the edge's last heartbeat as its end (the talk time is what the
--   edge could still vouch for): its agent is released (wrap-up after a talk, free after a ring)
--   and call.ended (its CDR) is emitted. No command goes to the lost edge and no BYE is sent to the
--   caller or the agent: only the edge speaks SIP to them, and it is gone (a comeback hangs them up).
-- At most `limit` calls per step; the edge leaves cc:{t}:edges once it has no call left, so the
-- next run finishes the rest. Then nothing is left for it to carry out, and what it left goes: its
-- command stream with its group (nothing trims it once the edge is out of cc:{t}:edges; a process of
-- that id that comes back makes a new group, bus.StreamConsumer) and its fuse counts, its place in
-- its address group; its info hash (the lost mark a comeback reads) expires after max_call_s, the
-- longest any of its calls could have lasted (edge_beat removes the TTL on a comeback).

local edge = ARGV[2]
local lapse = tonumber(ARGV[3])
local limit = tonumber(ARGV[4]) or 500
if not edge or edge == '' or not lapse then return { RC.INVALID, 'edge_id and lapse_ms required' } end
local beat = redis.call('ZSCORE', K.edges, edge)
if not beat then return { RC.NOT_FOUND } end
if tonumber(beat) >= NOW - lapse then return { RC.STALE, beat } end
local last_beat = tonumber(beat)
local info = k_edge_info(edge)
redis.call('HSET', info, 'lost_ms', NOW)

-- the peer that adopts: alive, same group, fewest calls, then lowest id
local peer = nil
local group = redis.call('HGET', info, 'group')
if group and group ~= '' then
  local best = nil
  for _, other in ipairs(redis.call('SMEMBERS', k_edge_group(group))) do
    local score = redis.call('ZSCORE', K.edges, other)
    if other ~= edge and score and tonumber(score) >= NOW - lapse
        and redis.call('HGET', k_edge_info(other), 'group') == group then
      local load = redis.call('SCARD', k_edge_calls(other))
      if best == nil or load < best or (load == best and other < peer) then peer, best = other, load end
    end
  end
end

local ekey = k_edge_calls(edge)
local ids = redis.call('SMEMBERS', ekey)
local handed, ending = {}, {}
for _, call_id in ipairs(ids) do
  local call = hgetall(k_call(call_id))
  if call and call.state ~= 'ended' then
    if peer and redis.call('EXISTS', k_dialog(call_id)) == 1 then
      handed[#handed + 1] = call_id
    else
      if call.flow then redis.call('ZREM', k_queue_of(call), call_id) end
      ending[#ending + 1] = call_id
    end
  else
    redis.call('SREM', ekey, call_id)  -- an index entry without a live call: drop it
  end
end

local done = 0
for _, call_id in ipairs(handed) do
  if done >= limit then break end
  call_field_updates(call_id, hgetall(k_call(call_id)), { edge = peer })
  redis.call('SADD', k_edge_calls(peer), call_id)
  redis.call('SREM', ekey, call_id)
  redis.call('HSET', k_dialog(call_id), 'edge', peer)
  redis.call('SREM', k_edge_dialogs(edge), call_id)
  redis.call('SADD', k_edge_dialogs(peer), call_id)
  redis.call('EXPIRE', k_edge_dialogs(peer), cfg('max_call_s'))
  command(peer, 'command.adopt', { call_id = call_id, from_edge = edge })
  done = done + 1
end
for _, call_id in ipairs(ending) do
  if done >= limit then break end
  -- read again: ending an earlier call may have offered this one to the agent it freed
  local call = hgetall(k_call(call_id))
  if call and call.state ~= 'ended' then
    finish_call(call_id, call, 'failed', 'system', 'edge_lost', last_beat)
    done = done + 1
  end
  redis.call('SREM', ekey, call_id)
end
if redis.call('SCARD', ekey) == 0 then
  redis.call('ZREM', K.edges, edge)
  redis.call('DEL', ekey)
  redis.call('DEL', k_commands(edge))
  redis.call('HDEL', K.retention, 'capped:commands:' .. edge, 'capped_unread:commands:' .. edge)
  if group and group ~= '' then
    redis.call('SREM', k_edge_group(group), edge)
    redis.call('HDEL', info, 'group')
  end
  redis.call('EXPIRE', info, cfg('max_call_s'))
end
return { RC.OK, done }
