-- core.lua: what most steps use: hashes, CSV lists, numbers, the event and command streams,
-- and the fields of a call's hash.
-- NEEDS: -

-- a hash as a table from HGETALL's reply (nil when the hash is empty or absent)
local function hash_table(raw)
  if #raw == 0 then return nil end
  local t = {}
  for i = 1, #raw, 2 do t[raw[i]] = raw[i + 1] end
  return t
end

local function hgetall(key) return hash_table(redis.call('HGETALL', key)) end

-- why `key` cannot be used as a `want` (its type), for a preflight that found a WRONGTYPE
local function type_fault(key, want)
  return key .. ' is a ' .. redis.call('TYPE', key)['ok'] .. ', not a ' .. want
end

local function split_csv(s)
  local out = {}
  if s then
    for item in string.gmatch(s, '([^,]+)') do
      item = string.match(item, '^%s*(.-)%s*$')
      if item ~= '' then out[#out + 1] = item end
    end
  end
  return out
end

local function num(v, default)
  local n = tonumber(v)
  if n == nil then return default end
  return n
end

-- A timer (`member`, due at `due` ms) in cc:{t}:timers. The dispatchers' timer loops sleep until
-- cc:{t}:timer_sleep (the first due timer when fire_timers last ran, or its longest sleep); a timer
-- due before that wakes them (one element in cc:{t}:timer_wake, which a loop waits on with BLPOP;
-- also when no loop has said when it looks again). Best effort (pcall): the timer is in the zset
-- whatever happens to the wake-up, and a loop looks again after CC_TIMER_INTERVAL_MS at the latest.
local function add_timer(due, member)
  redis.call('ZADD', K.timers, due, member)
  local asleep_until = tonumber(redis.pcall('GET', K.timer_sleep))
  if (asleep_until == nil or due < asleep_until) and redis.pcall('LLEN', K.timer_wake) == 0 then
    redis.pcall('LPUSH', K.timer_wake, due)
  end
end

-- product events: XADD cc:{t}:events type <t> v <v> data <msgpack>. No MAXLEN: the streams are
-- trimmed by callcenter.retention, only below what every consumer group has acknowledged.
local function emit(etype, data)
  data.ts = NOW
  redis.call('XADD', K.events, '*',
    'type', etype, 'v', EVENT_V[etype], 'data', cmsgpack.pack(data))
end

local function command(edge, ctype, data)
  redis.call('XADD', k_commands(edge), '*',
    'type', ctype, 'v', EVENT_V[ctype], 'data', cmsgpack.pack(data))
end

local function agent_skills(agent) return split_csv(agent.skills) end

-- the queue a call waits in: its flow's audio queue or chat queue
local function k_queue_of(call)
  if call.media_type == 'chat' then return k_chat_queue(call.flow) end
  return k_queue(call.flow)
end

-- Every change of state stamps `state_ms`: the reconciler ends a call that stays in one state
-- longer than that state may last.
local function call_field_updates(call_id, call, fields)
  local args = {}
  if fields.state ~= nil and fields.state_ms == nil then fields.state_ms = NOW end
  for name, value in pairs(fields) do
    args[#args + 1] = name
    args[#args + 1] = value
    call[name] = tostring(value)
  end
  redis.call('HSET', k_call(call_id), unpack(args))
end

local function ring_all_members(call) return split_csv(call.ring_all) end
