-- fire_timers: run the timers that are due: wrap-up ends, expired offer leases, holds of refused offers, maximum wait (overflow to another flow or a SIP URI), time on hold (dissuading), maximum call duration (hang-up).
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 limit, 3 sleep_max_ms (the timer loop's longest sleep; none: timer_sleep is left as it is)
-- READS: agent, agent_chats, call, chat_queue, config, flow, flow_stats, queue, skill_chat, skill_flows, skill_free, skill_serving, timer_sleep, timer_wake, timers
-- WRITES: agent, agent_chats, call, calls, chat_queue, commands, edge_calls, events, flow, flow_stats, queue, skill_chat, skill_free, skill_logged, skill_serving, sl, timer_sleep, timer_wake, timers
-- RETURNS: OK number_fired first_due
-- EVENTS: agent.logged_out, agent.paused, agent.state_changed, call.abandoned, call.agent_failed, call.dissuaded, call.ended, call.offered, call.overflowed, call.queued
-- COMMANDS: command.cancel_ring, command.hangup, command.media, command.ring, command.ring_all
-- LIB: config, core, stats, chat, agents, queue, offer, calls
--
-- Any dispatcher may call it at any time: each timer is removed and handled in the same atomic
-- step, so it fires exactly once. `first_due`: when the first timer left is due (ms; -1: none),
-- read in this same step; with `sleep_max_ms` (the timer loop's pass) the loop sleeps until then,
-- that long at most, and says so in timer_sleep, so that a timer added meanwhile and due sooner
-- wakes it (`add_timer`). The wake-ups pushed before this pass are spent here.

local limit = tonumber(ARGV[2]) or 100
local due = redis.call('ZRANGEBYSCORE', K.timers, '-inf', NOW, 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  redis.call('ZREM', K.timers, member)
  local kind, id, token = string.match(member, '^([^|]+)|([^|]+)|?(.*)$')
  if kind == 'wrapup' then
    local agent = hgetall(k_agent(id))
    if agent and agent.state == 'wrap_up' then
      if agent.logout_pending == '1' then
        log_out(id, agent)
      elseif (agent.pause_pending or '') ~= '' then
        pause(id, agent, agent.pause_pending)
      else
        set_agent_state(id, agent, 'free', nil)
        dispatch_to_agent(id, agent)
      end
    elseif agent and agent.state == 'in_chat' then
      -- the chat wrap-up is over: the slot it held back is open again
      chat_index(id, agent)
      dispatch_chats(id, agent)
    end
  elseif kind == 'offer' then
    local call = hgetall(k_call(id))
    if call and call.state == 'offered' and call.offer == token then
      command(call.edge, 'command.cancel_ring', { call_id = id, offer_id = token })
      offer_failed(id, call, 'lease_expired')
    end
  elseif kind == 'maxdur' then
    -- the flow's max_call_duration_s is over: the edge hangs up both legs and reports the end
    -- (call_ended by edge, reason max_duration: the CDR's reason)
    local call = hgetall(k_call(id))
    if call and call.state == 'connected' then
      command(call.edge, 'command.hangup', { call_id = id, reason = 'max_duration' })
    end
  elseif kind == 'maxwait' then
    local call = hgetall(k_call(id))
    local flow = call and hgetall(k_flow(call.flow))
    if call and flow and call.state == 'queued' then
      local target = flow.overflow_flow or ''
      -- a call hops from flow to flow at most max_overflows times (a cycle left in the cache, or a
      -- long chain, cannot bounce it for ever); at the limit it stays queued here
      local hops = num(call.overflows, 0)
      local target_flow = target ~= '' and target ~= call.flow and hops < cfg('max_overflows')
        and hgetall(k_flow(target)) or nil
      if target_flow then
        redis.call('ZREM', k_queue_of(call), id)
        local from = call.flow
        hold_off(id, call)
        emit('call.overflowed', { call_id = id, flow = call.flow, to_flow = target })
        stat(call.flow, 'overflowed')
        -- not a new incoming call of the target (incalls counts arrivals only): overflowed_in
        stat(target, 'overflowed_in')
        onhold_stat(target, call, 1)
        -- flow_ms: the target's max_wait_s counts from now
        call_field_updates(id, call, { flow = target, media = '', onhold = '1', queued_ms = '', flow_ms = NOW,
          overflows = hops + 1, overflow_to_flow = target })
        route_call(id, call, target_flow, false)
        left_queue(id, call, from, flow)
      elseif (flow.overflow_uri or '') ~= '' then
        redis.call('ZREM', k_queue_of(call), id)
        redis.call('ZREM', K.timers, 'onhold|' .. id)
        emit('call.overflowed', { call_id = id, flow = call.flow, to_uri = flow.overflow_uri })
        stat(call.flow, 'overflowed')
        call_field_updates(id, call, { state = 'overflow', media = 'overflow', overflow_to_uri = flow.overflow_uri })
        command(call.edge, 'command.media', { call_id = id, uri = flow.overflow_uri, purpose = 'overflow' })
        left_queue(id, call, call.flow, flow)
      end
    end
  elseif kind == 'held' then
    local call = hgetall(k_call(id))
    if call and call.state ~= 'ended' then release_hold(id, call, hgetall(k_flow(call.flow))) end
  elseif kind == 'onhold' then
    local call = hgetall(k_call(id))
    local flow = call and hgetall(k_flow(call.flow))
    if call and flow and call.state == 'queued' and (flow.dissuading_uri or '') ~= '' then
      dissuade(id, call, flow, 'on_hold')
      left_queue(id, call, call.flow, flow)
    end
  end
end
redis.call('DEL', K.timer_wake)
local first = redis.call('ZRANGE', K.timers, 0, 0, 'WITHSCORES')
local first_due = first[2] and tonumber(first[2]) or -1
local sleep_max = tonumber(ARGV[3])
if sleep_max then
  local wake_at = NOW + sleep_max
  if first_due >= 0 and first_due < wake_at then wake_at = first_due end
  redis.call('SET', K.timer_sleep, wake_at)
end
return { RC.OK, #due, first_due }
