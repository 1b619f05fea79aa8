-- sip_register: a verified REGISTER of an agent's AOR: add, refresh and remove its contacts.
-- KEYS: events (the tenant's events stream; every key is built from its prefix)
-- ARGV: 1 now_ms, 2 agent_id, 3 max_contacts, 4 max_registrations, 5 call_id, 6 cseq, 7 remove_all, 8... contacts
-- READS: agent, aor, aor_bindings, config, registrations, sip_auth
-- WRITES: agent, aor, aor_bindings, events, registrations, skill_chat, skill_free, timers
-- RETURNS: OK bindings | NOT_FOUND | INVALID why
-- EVENTS: agent.paused, agent.state_changed
-- COMMANDS: -
-- LIB: core, agents
--
-- contacts: triples (key, expiry in ms since the epoch (0: remove it), binding JSON); key is the
-- contact's +sip.instance when it has one, else its URI. remove_all '1' (Contact: *, Expires: 0)
-- removes every contact first. A contact whose binding came with the same Call-ID and a CSeq at
-- least this one's is left as it is (a reordered or replayed REGISTER, RFC 3261 10.3 step 7).
-- Refused (nothing changes): more than max_contacts live contacts ('too_many_contacts'); an AOR
-- that has none yet while the tenant has max_registrations of them ('too_many_registrations').
-- An AOR left with no contact while its agent is logged in pauses the agent ('unregistered').
-- OK's detail: the live bindings, a JSON list of [binding JSON, expiry ms].

local agent_id, max_contacts, max_registrations = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local call_id, cseq, remove_all = ARGV[5], tonumber(ARGV[6]) or 0, ARGV[7] == '1'
if redis.call('EXISTS', k_sip_auth(agent_id)) == 0 then return { RC.NOT_FOUND } end
local aor = k_aor(agent_id)
local bindings = k_aor_bindings(agent_id)
local live_before = prune_aor(agent_id)

local function newer(key)
  local raw = redis.call('HGET', bindings, key)
  if not raw then return true end
  local old = cjson.decode(raw)
  return old.call_id ~= call_id or (tonumber(old.cseq) or 0) < cseq
end

-- the set after this request, counted before anything is written
local after = {}
if not remove_all then
  for _, key in ipairs(redis.call('ZRANGE', aor, 0, -1)) do after[key] = true end
end
local changes = {}
for i = 8, #ARGV - 2, 3 do
  local key, expiry, binding = ARGV[i], tonumber(ARGV[i + 1]) or 0, ARGV[i + 2]
  if remove_all or newer(key) then
    changes[#changes + 1] = { key, expiry, binding }
    after[key] = expiry > NOW or nil
  end
end
local count = 0
for _ in pairs(after) do count = count + 1 end
if count > max_contacts then return { RC.INVALID, 'too_many_contacts' } end
if count > 0 and live_before == 0 and redis.call('ZCARD', K.registrations) >= max_registrations then
  return { RC.INVALID, 'too_many_registrations' }
end

if remove_all then redis.call('DEL', aor, bindings) end
for _, change in ipairs(changes) do
  local key, expiry, binding = change[1], change[2], change[3]
  if expiry > NOW then
    redis.call('ZADD', aor, expiry, key)
    redis.call('HSET', bindings, key, binding)
  else
    redis.call('ZREM', aor, key)
    redis.call('HDEL', bindings, key)
  end
end
local live = prune_aor(agent_id)
if live == 0 and live_before > 0 then
  local agent = hgetall(k_agent(agent_id))
  if agent ~= nil then pause_unregistered(agent_id, agent) end
end
local out = {}
for _, entry in ipairs(redis.call('ZRANGE', aor, 0, -1, 'WITHSCORES')) do out[#out + 1] = entry end
local listed = {}
for i = 1, #out, 2 do listed[#listed + 1] = { redis.call('HGET', bindings, out[i]), tonumber(out[i + 1]) } end
if #listed == 0 then return { RC.OK, '[]' } end
return { RC.OK, cjson.encode(listed) }
