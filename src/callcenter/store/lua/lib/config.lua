-- config.lua: cfg(name), the call-handling parameters of cc:{t}:config; a missing or empty
-- value is the default of CONFIG_DEFAULTS (prelude, from callcenter.store.config). Read once per run.
-- NEEDS: -

local _cfg = nil

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
