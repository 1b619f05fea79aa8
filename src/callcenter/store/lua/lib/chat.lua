-- chat.lua: chat (MSRP) capacity of agents and the chat policy.
-- An agent with a chat URI takes chats while free or in_chat: up to its chat capacity, minus one
-- slot held back while its chat wrap-up runs (the reference's rule). Such agents are indexed in
-- cc:{t}:skill:<skill>:chat, scored by (ongoing chats, time of the last change): the balancing
-- policy takes the lowest score (fewest chats), full-load the highest (fill one agent up first).
-- NEEDS: config, core

-- ---- chat (MSRP) capacity
-- An agent with a chat URI takes chats while free or in_chat: up to its chat capacity, minus one
-- slot held back while its chat wrap-up runs (the reference's rule). Such agents are indexed in
-- cc:{t}:skill:<skill>:chat, scored by (ongoing chats, time of the last change): the balancing
-- policy takes the lowest score (fewest chats), full-load the highest (fill one agent up first).
local CHAT_SCORE_STEP = 1e13

local function chat_slots_free(agent)
  if (agent.chat_uri or '') == '' then return 0 end
  if agent.state ~= 'free' and agent.state ~= 'in_chat' then return 0 end
  if agent.logout_pending == '1' or (agent.pause_pending or '') ~= '' then return 0 end
  local held = num(agent.wrapup_end_ms, 0) > NOW and 1 or 0
  return num(agent.chat_capacity, cfg('chat_capacity')) - num(agent.chats, 0) - held
end

local function chat_index(agent_id, agent)
  local open = chat_slots_free(agent) > 0
  local score = num(agent.chats, 0) * CHAT_SCORE_STEP + NOW
  for _, skill in ipairs(agent_skills(agent)) do
    if open then redis.call('ZADD', k_skill_chat(skill), score, agent_id)
    else redis.call('ZREM', k_skill_chat(skill), agent_id) end
  end
end

-- A chat goes to an agent with a free chat slot chosen by the chat policy (the flow's, else the
-- global chat_dispatch_policy): balancing (fewest ongoing chats first) or full-load (the agent
-- with the most ongoing chats that still has room, so the others stay free for audio calls).
-- Never an agent of `skip` (a set of the agents the chat skips, nil for none; `nskip` its size).
local function pick_chat_agent(flow, skip, nskip)
  local key = k_skill_chat(flow.skill)
  local policy = flow.chat_policy or ''
  if policy == '' then policy = cfg('chat_dispatch_policy') end
  local past = 0  -- the skipped agents passed over at the front of the index
  for _ = 1, 3 do
    local ids
    if policy == 'full-load' then ids = redis.call('ZREVRANGE', key, past, past + (nskip or 0))
    else ids = redis.call('ZRANGE', key, past, past + (nskip or 0)) end
    local id = nil
    for _, candidate in ipairs(ids) do
      if skip and skip[candidate] then past = past + 1 else id = candidate break end
    end
    if id == nil then return nil, nil end
    local agent = hgetall(k_agent(id))
    if agent and chat_slots_free(agent) > 0 then return id, agent end
    redis.call('ZREM', key, id)  -- index out of step with the agent: repair it
  end
  return nil, nil
end
