-- registration_lapse: forget AORs whose last contact lapsed; pause their logged-in agents (unregistered).
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 limit
-- READS: agent, aor, aor_bindings, config, registrations
-- WRITES: agent, aor, aor_bindings, events, registrations, skill_chat, skill_free, timers
-- RETURNS: OK paused
-- EVENTS: agent.paused, agent.state_changed
-- COMMANDS: -
-- LIB: core, agents
--
-- `registrations` holds each AOR at the expiry of its last contact (sip_register keeps it), so only
-- AORs that may have lapsed are read; one refreshed since is put back at its new expiry. OK's
-- detail: how many agents were paused (or will be, when their call ends).

local due = redis.call('ZRANGEBYSCORE', K.registrations, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[2]) or 100)
local paused = 0
for _, agent_id in ipairs(due) do
  if prune_aor(agent_id) == 0 then
    local agent = hgetall(k_agent(agent_id))
    if agent ~= nil and pause_unregistered(agent_id, agent) then paused = paused + 1 end
  end
end
return { RC.OK, paused }
