-- offer.lua: who gets what. A call is offered to an agent (or to all, ring-all), dissuaded or
-- queued (route_call); an agent that becomes free takes the best waiting call (dispatch_to_agent).
-- NEEDS: config, core, stats, chat, agents, queue

-- the caller's name as the agent sees it: the flow's prefix, then the display name (or user)
local function display_towards_agent(call, flow)
  local display = call.caller_display
  if display == nil or display == '' then display = call.caller end
  if flow.prepend_cid and flow.prepend_cid ~= '' then
    display = string.sub(flow.prepend_cid .. ' ' .. (display or ''), 1, 64)
  end
  return display
end

-- Offer a call to an agent: the agent rings, the edge is told, a lease guards the offer. An audio
-- call makes a free agent ringing; a chat takes one of the agent's chat slots (state in_chat).
local function offer(call_id, call, flow, agent_id, agent)
  local offer_id = tostring(redis.call('HINCRBY', k_call(call_id), 'offers', 1))
  redis.call('ZREM', k_queue_of(call), call_id)
  call_field_updates(call_id, call, { state = 'offered', agent = agent_id, offer = offer_id, offered_ms = NOW })
  local uri = agent.uri
  if call.media_type == 'chat' then
    uri = agent.chat_uri
    take_chat_slot(agent_id, agent, call_id)
  else
    set_agent_state(agent_id, agent, 'ringing', call_id)
  end
  -- the offer's lease and its command before the counters: a step that fails half-way (no
  -- rollback) must not leave an offer without its lease (the counters are the least of it)
  local ring_s = cfg('ring_timeout_s')
  local whisper = flow.flow_id_uri or ''
  local lease_s = ring_s + cfg('offer_lease_grace_s')
  if whisper ~= '' then lease_s = lease_s + cfg('whisper_max_s') end
  add_timer(NOW + lease_s * 1000, 'offer|' .. call_id .. '|' .. offer_id)
  local display = display_towards_agent(call, flow)
  local ring = { call_id = call_id, offer_id = offer_id, agent_id = agent_id, uri = uri, timeout_s = ring_s }
  if display and display ~= '' then ring.caller_display = display end
  if whisper ~= '' then ring.whisper_uri = whisper end
  command(call.edge, 'command.ring', ring)
  emit('call.offered', { call_id = call_id, flow = call.flow, agent_id = agent_id, offer_id = offer_id })
  redis.call('HINCRBY', k_agent(agent_id), 'distributed', 1)
  stat(call.flow, 'distributed')
end

local function agent_if_free(agent_id, skill)
  local agent = hgetall(k_agent(agent_id))
  if agent == nil or agent.state ~= 'free' or (agent.uri or '') == '' then
    -- index out of step with the agent (deleted agent): repair it
    redis.call('ZREM', k_skill_free(skill), agent_id)
    return nil
  end
  return agent
end

-- Ring-all: offer a call to every free agent of the flow at once; the edge forks, the first to
-- answer wins and the others get CANCEL. The call holds the ringing agents in `ring_all`.
local function offer_all(call_id, call, flow, agents)
  local offer_id = tostring(redis.call('HINCRBY', k_call(call_id), 'offers', 1))
  redis.call('ZREM', k_queue_of(call), call_id)
  local ids, targets = {}, {}
  for _, pair in ipairs(agents) do
    local agent_id, agent = pair[1], pair[2]
    ids[#ids + 1] = agent_id
    targets[#targets + 1] = { agent_id = agent_id, uri = agent.uri }
    set_agent_state(agent_id, agent, 'ringing', call_id)
    redis.call('HINCRBY', k_agent(agent_id), 'distributed', 1)
    emit('call.offered', { call_id = call_id, flow = call.flow, agent_id = agent_id, offer_id = offer_id })
  end
  call_field_updates(call_id, call, { state = 'offered', agent = '', offer = offer_id, offered_ms = NOW,
    ring_all = table.concat(ids, ',') })
  local ring_s = cfg('ring_timeout_s')
  add_timer(NOW + (ring_s + cfg('offer_lease_grace_s')) * 1000,
    'offer|' .. call_id .. '|' .. offer_id)
  local cmd = { call_id = call_id, offer_id = offer_id, targets = targets, timeout_s = ring_s }
  local display = display_towards_agent(call, flow)
  if display and display ~= '' then cmd.caller_display = display end
  command(call.edge, 'command.ring_all', cmd)
  stat(call.flow, 'distributed')  -- after the lease, as in offer()
end

-- The agents a call is not offered to, as a set (nil when none, the common case) and its size:
-- each refused its ring `registered_elsewhere` (its contacts are connections another edge holds,
-- which the call's edge cannot ring). Kept on the call's hash (`skip_agents`, a CSV list) so the
-- exclusion lives and goes with the call; the agent stays free for every other call.
local function skipped_agents(call)
  local csv = call.skip_agents
  if csv == nil or csv == '' then return nil, 0 end
  local set, n = {}, 0
  for _, id in ipairs(split_csv(csv)) do set[id] = true n = n + 1 end
  return set, n
end

-- whether a call whose `skip_agents` field is `csv` skips this agent (a queue scan reads the field
-- alone, not the hash)
local function skips_agent(csv, agent_id)
  if csv == nil or csv == false or csv == '' then return false end
  return string.find(',' .. csv .. ',', ',' .. agent_id .. ',', 1, true) ~= nil
end

local function free_agents_of(flow, skip)
  local out = {}
  for _, id in ipairs(redis.call('ZRANGE', k_skill_free(flow.skill), 0, -1)) do
    local agent = not (skip and skip[id]) and agent_if_free(id, flow.skill)
    if agent then out[#out + 1] = { id, agent } end
  end
  return out
end

-- Choose a free agent for a flow by the flow's strategy; nil when none is free but the agents of
-- `skip` (skipped_agents: nil for none, `nskip` its size).
--   longest-idle (default), random, top-down (agent id order), round-robin (id order, after
--   the flow's last choice), fewest-calls (answered), least-talk-time (talk_ms)
local function pick_agent(flow_id, flow, skip, nskip)
  local fkey = k_skill_free(flow.skill)
  local strategy = flow.strategy or ''
  nskip = nskip or 0
  if skip == nil and (strategy == '' or strategy == 'longest-idle') then
    for _ = 1, 3 do
      local ids = redis.call('ZRANGE', fkey, 0, 0)
      if #ids == 0 then return nil, nil end
      local agent = agent_if_free(ids[1], flow.skill)
      if agent then return ids[1], agent end
    end
    return nil, nil
  end
  if strategy == '' or strategy == 'longest-idle' or strategy == 'random' then
    -- past the skipped ones (at most nskip of the first nskip + 3), three tries as above; random:
    -- as many distinct members, so one that is not skipped is among them if there is one
    local ids
    if strategy == 'random' then ids = redis.call('ZRANDMEMBER', fkey, nskip + 1)
    else ids = redis.call('ZRANGE', fkey, 0, nskip + 2) end
    for _, id in ipairs(ids) do
      local agent = not (skip and skip[id]) and agent_if_free(id, flow.skill)
      if agent then return id, agent end
    end
    return nil, nil
  end
  local ids = redis.call('ZRANGE', fkey, 0, -1)  -- longest idle first: the tie-breaker below
  local best_id, best_agent, best_metric = nil, nil, nil
  if strategy == 'top-down' or strategy == 'round-robin' then
    table.sort(ids)
    local last = strategy == 'round-robin' and (flow.rr_last or '') or ''
    local ordered = {}
    for _, id in ipairs(ids) do if id > last then ordered[#ordered + 1] = id end end
    for _, id in ipairs(ids) do if id <= last then ordered[#ordered + 1] = id end end
    for _, id in ipairs(ordered) do
      local agent = not (skip and skip[id]) and agent_if_free(id, flow.skill)
      if agent then best_id, best_agent = id, agent break end
    end
    if best_id and strategy == 'round-robin' then redis.call('HSET', k_flow(flow_id), 'rr_last', best_id) end
    return best_id, best_agent
  end
  local field = strategy == 'least-talk-time' and 'talk_ms' or 'answered'
  for _, id in ipairs(ids) do
    local agent = not (skip and skip[id]) and agent_if_free(id, flow.skill)
    if agent then
      local metric = num(agent[field], 0)
      if best_metric == nil or metric < best_metric then best_id, best_agent, best_metric = id, agent, metric end
    end
  end
  return best_id, best_agent
end

-- A caller is offered to an agent only once it is on our media: its dialog confirmed (the edge
-- reports media_answered only after the caller's ACK) and a media server answering it. Until then
-- a caller nobody has answered yet (no welcome) is queued, and the queue media's answer
-- (report_media_answered.lua) offers the call; a caller that ACKed its welcome is on media already.
-- Why: a caller that never ACKs (or never answers the re-INVITE that moves it to the agent) held
-- the agent it had been offered to for sippy's 32 s, and the failed offer was counted against the
-- agent. With `ring_before_media` on (or a flow without any media to hold the caller on) a free
-- agent rings at arrival with the caller's own offer; the edge then reports the agent answered only
-- after the caller's ACK and ends the call (caller_no_ack) within seconds without one. A flow-id
-- message always needs the caller on media.
local function media_first(flow)
  return (flow.flow_id_uri or '') ~= '' or ((flow.queue_uri or '') ~= '' and cfg('ring_before_media') ~= 1)
end

local function waits_for_media(call, flow)
  return (call.answered_ms or '') == '' and media_first(flow)
end

-- Offer a call to a free agent of its flow (by the flow's strategy, or all of them for ring-all),
-- never one the call skips (skipped_agents); false when nobody is free.
local function offer_now(call_id, call, flow)
  local skip, nskip = skipped_agents(call)
  if call.media_type == 'chat' then
    local agent_id, agent = pick_chat_agent(flow, skip, nskip)
    if agent_id then offer(call_id, call, flow, agent_id, agent) return true end
  elseif flow.strategy == 'ring-all' then
    local agents = free_agents_of(flow, skip)
    if #agents > 0 then offer_all(call_id, call, flow, agents) return true end
  else
    local agent_id, agent = pick_agent(call.flow, flow, skip, nskip)
    if agent_id then offer(call_id, call, flow, agent_id, agent) return true end
  end
  return false
end

-- Send a call to a free agent if there is one, else (a new call) dissuade it if a rule says so,
-- else queue it. With internal dispatching off, calls only queue: an external dispatcher
-- assigns them (dispatch_call.lua).
local function route_call(call_id, call, flow, at_head)
  local internal = cfg('internal_dispatching') == 1 and not waits_for_media(call, flow)
  if internal and offer_now(call_id, call, flow) then return end
  if not at_head and call.dissuaded ~= '1' then
    local rule = dissuading_rule(call.flow, flow, call)
    if rule then
      call_field_updates(call_id, call, { dissuaded = '1' })
      dissuade(call_id, call, flow, rule)
      return
    end
  end
  enqueue(call_id, call, flow, at_head)
end

-- The first call of a flow's queue an agent may be offered, as { call_id, score, flow }, or nil.
-- In a flow with queue or flow-id media a caller not on media yet is passed over (waits_for_media):
-- its queue media's answer offers it (report_media_answered.lua), and a caller that never confirms
-- must not hold up those behind it. A call on media whose ring the edge refused waits for its
-- hold's end (release_hold), and so does its flow. A call that skips `agent_id` (skipped_agents),
-- held or not, is passed over for that agent (nil: any agent): the agent may take the calls behind
-- it, which that call could never have had from it. Only the first QUEUE_SCAN entries are looked at
-- (bounded work per step); an entry without its call hash is returned so that the caller drops it.
local QUEUE_SCAN = 16
local function first_offerable(qkey, flow_id, agent_id)
  local entries = redis.call('ZRANGE', qkey, 0, QUEUE_SCAN - 1, 'WITHSCORES')
  if #entries == 0 then return nil end
  local flow = hgetall(k_flow(flow_id))
  if flow == nil then return { entries[1], tonumber(entries[2]), nil } end
  local needs_media = media_first(flow)
  for i = 1, #entries, 2 do
    local id = entries[i]
    local fields = redis.call('HMGET', k_call(id), 'state', 'answered_ms', 'held_until_ms', 'skip_agents')
    if fields[1] == false then return { id, tonumber(entries[i + 1]), flow } end
    if (not needs_media or (fields[2] or '') ~= '') and not (agent_id and skips_agent(fields[4], agent_id)) then
      if num(fields[3], 0) > NOW then return nil end
      return { id, tonumber(entries[i + 1]), flow }
    end
  end
  return nil
end

-- Give an agent the best waiting call (audio, or chat) among the flows of its skills: flow
-- priority first (0 = highest), then the call's priority and arrival (the queue score).
-- Returns true when it offered one.
local function take_waiting_call(agent_id, agent, chat)
  local queue_key = chat and k_chat_queue or k_queue
  for _ = 1, 3 do
    local best_call, best_flow, best_prio, best_score, best_flow_hash = nil, nil, nil, nil, nil
    for _, skill in ipairs(agent_skills(agent)) do
      for _, flow_id in ipairs(redis.call('SMEMBERS', k_skill_flows(skill))) do
        local head = first_offerable(queue_key(flow_id), flow_id, agent_id)
        if head then
          local prio = num(head[3] and head[3].priority, 256)
          local score = head[2]
          if best_call == nil or prio < best_prio or (prio == best_prio and score < best_score) then
            best_call, best_flow, best_prio, best_score, best_flow_hash = head[1], flow_id, prio, score, head[3]
          end
        end
      end
    end
    if best_call == nil then return false end
    local call = hgetall(k_call(best_call))
    local flow = best_flow_hash
    if call == nil or flow == nil or call.state ~= 'queued' then
      redis.call('ZREM', queue_key(best_flow), best_call)  -- a stale queue entry: drop it, look again
    else
      if not chat and flow.strategy == 'ring-all' then
        offer_all(best_call, call, flow, free_agents_of(flow, skipped_agents(call)))
      else
        offer(best_call, call, flow, agent_id, agent)
      end
      return true
    end
  end
  return false
end

-- An agent with free chat slots takes waiting chats until its slots or the chat queues run out.
local function dispatch_chats(agent_id, agent)
  if cfg('internal_dispatching') ~= 1 then return end
  for _ = 1, num(agent.chat_capacity, cfg('chat_capacity')) do
    if chat_slots_free(agent) <= 0 or not take_waiting_call(agent_id, agent, true) then return end
  end
end

-- An agent became free: an audio call first (the reference's preference), else chats.
local function dispatch_to_agent(agent_id, agent)
  if agent.state ~= 'free' or cfg('internal_dispatching') ~= 1 then return false end
  if (agent.uri or '') ~= '' and take_waiting_call(agent_id, agent, false) then return true end
  if (agent.chat_uri or '') ~= '' then dispatch_chats(agent_id, agent) end
  return agent.state ~= 'free'
end

-- Offer a flow's waiting calls to the free agents of its skill, until one takes nothing (the head
-- waits for its media or its hold; a call that skips that agent does not stop the next) or the
-- queue is empty. For when what blocked the head is gone (a held head's hold ended or it left the
-- queue, the flow took another skill): a free agent looks for a waiting call only when it becomes
-- free.
local function serve_flow(flow_id, flow, chat)
  if flow == nil or cfg('internal_dispatching') ~= 1 then return end
  local qkey = chat and k_chat_queue(flow_id) or k_queue(flow_id)
  local index = chat and k_skill_chat(flow.skill) or k_skill_free(flow.skill)
  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    if redis.call('ZCARD', qkey) == 0 then return end
    local agent
    if chat then agent = hgetall(k_agent(id)) else agent = agent_if_free(id, flow.skill) end
    if agent then
      local took
      if chat then
        local before = agent.chats
        dispatch_chats(id, agent)
        took = agent.chats ~= before
      else
        took = dispatch_to_agent(id, agent)
      end
      -- one that took nothing: the head waits (media, hold), and the next agent would take nothing
      -- either, unless the calls that wait skip this agent (skipped_agents): the next may take one
      if not took and first_offerable(qkey, flow_id) == nil then return end
    end
  end
end

-- A queued call left its flow's queue on a timer (overflowed, dissuaded): a hold it had is over
-- (nothing of the queue is left to wait for), and the calls behind it may be offered now.
local function left_queue(call_id, call, flow_id, flow)
  if (call.held_until_ms or '') ~= '' then
    redis.call('ZREM', K.timers, 'held|' .. call_id)
    call_field_updates(call_id, call, { held_until_ms = '' })
  end
  serve_flow(flow_id, flow, call.media_type == 'chat')
end

-- The hold of a call whose ring the edge refused is over (its media answered, or the hold timer
-- fired): it is offered at once if an agent is free, else it waits at the head of its queue; the
-- calls that waited behind it go to the other free agents. Returns true when it offered it.
local function release_hold(call_id, call, flow)
  if (call.held_until_ms or '') == '' then return false end
  redis.call('ZREM', K.timers, 'held|' .. call_id)
  call_field_updates(call_id, call, { held_until_ms = '' })
  if call.state ~= 'queued' or flow == nil or cfg('internal_dispatching') ~= 1 then return false end
  local offered = offer_now(call_id, call, flow)
  if offered then serve_flow(call.flow, flow, call.media_type == 'chat') end
  return offered
end
