-- config.lua: cfg(name), the call-handling parameters of cc:{t}:config; a missing or empty
-- value is the default of CONFIG_DEFAULTS (prelude, from callcenter.store.config). Read once per run.
-- NEEDS: -

local _cfg = nil

-- per call (a step's start): the config read by the last call is forgotten
local function config_begin() _cfg = nil end

local function cfg(name)
  if _cfg == nil then
    _cfg = {}
    local raw = redis.call('HGETALL', K.config)
    for i = 1, #raw, 2 do _cfg[raw[i]] = raw[i + 1] end
  end
  local v = _cfg[name]
  if v == nil or v == '' then return CONFIG_DEFAULTS[name] end
  if type(CONFIG_DEFAULTS[name]) == 'number' then return tonumber(v) or CONFIG_DEFAULTS[name] end
  return v
end

-- Why the stored config would make a step fail half-way, or nil. Numbers reach Redis commands
-- as integers (EXPIRE, ...): Lua prints 1e14 and above, and fractions, in a form Redis refuses,
-- so a step checks them before its first write (issue 10: events_maxlen 1e30, once an XADD MAXLEN;
-- the stream caps are now read by callcenter.retention, which checks them the same way).
local function config_fault()
  if _cfg == nil then
    -- read here rather than by cfg(), so a config key of another type is this fault, not an error
    local raw = redis.pcall('HGETALL', K.config)
    if raw.err then return K.config .. ' is a ' .. redis.call('TYPE', K.config)['ok'] .. ', not a hash' end
    _cfg = {}
    for i = 1, #raw, 2 do _cfg[raw[i]] = raw[i + 1] end
  end
  for name, default in pairs(CONFIG_DEFAULTS) do
    if type(default) == 'number' then
      local n = cfg(name)
      if n ~= n or n ~= math.floor(n) or math.abs(n) >= 1e14 then
        return 'config ' .. name .. ' is not an integer Redis takes: ' .. tostring(n)
      end
    end
  end
  for _, name in ipairs({ 'events_maxlen', 'commands_maxlen', 'ended_call_ttl_s' }) do
    if cfg(name) < 1 then return 'config ' .. name .. ' must be at least 1' end
  end
  return nil
end
