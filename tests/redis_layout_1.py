"""The Redis store's scripts of record layout 1, kept verbatim: tests write records the
way older versions did, which the store must read and upgrade on write."""

from __future__ import annotations

# Shared prelude: numbers, and the record's state per property name.
_PRELUDE = r"""
local EPOCH_MS = 1735689600000
local function num(x) if x then return tonumber(x) end return 0 end
local rk = KEYS[1]
local function etag(created, writes) return string.format('%x.%x', created, writes) end
-- Lua turns numbers into strings with 14 significant digits; stamps need all of theirs.
local function S(x) return string.format('%.0f', x) end
-- The smallest stamp on the node of `stamp` (its low 8 bits) above `floor`: floor + 1
-- belongs to another node, which may issue that very stamp.
local function above(floor, stamp)
  local s = floor - floor % 256 + stamp % 256
  if s <= floor then s = s + 256 end
  return s
end
"""

# KEYS: record [, deletion stamp key, user index set]
# ARGV: stamp, base, replace, max_bytes, ttl_ms, tombstone_ttl_ms, n_sets, now_ms,
#       (name, value, member_len) * n_sets, removed names...
APPLY_LAYOUT_1 = (
    _PRELUDE
    + r"""
local stamp, base = tonumber(ARGV[1]), tonumber(ARGV[2])
local replace, max_bytes = ARGV[3] == '1', tonumber(ARGV[4])
local ttl, tomb_ttl, nsets = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now_ms = tonumber(ARGV[8])
if #KEYS > 1 and base < num(redis.call('GET', KEYS[2])) then return 'dropped' end
local m = redis.call('HMGET', rk, 'clear', 'n', 'sz', 'ts', 'created', 'writes', 'text', 't')
local clear, n, sz, ts = num(m[1]), num(m[2]), num(m[3]), num(m[4])
local created, writes, has_text, tombs = num(m[5]), num(m[6]), m[7] ~= false, num(m[8])
local was_live = n > 0 or has_text
local state, hdel, hset = {}, {}, {}
local accepted = false
local function push(t, a, b) t[#t + 1] = a; if b ~= nil then t[#t + 1] = b end end
if replace and stamp > clear then
  clear, accepted = stamp, true
  local all, info = redis.call('HGETALL', rk), {}
  for i = 1, #all, 2 do
    local p = string.sub(all[i], 1, 2)
    if p == 's:' or p == 'l:' then
      local name = string.sub(all[i], 3)
      info[name] = info[name] or {}
      info[name][p] = all[i + 1]
    end
  end
  for name, e in pairs(info) do
    local st, len = num(e['s:']), e['l:']
    if st < stamp then
      push(hdel, 's:' .. name)
      if len then push(hdel, 'v:' .. name); push(hdel, 'l:' .. name); n = n - 1; sz = sz - tonumber(len)
      else tombs = tombs - 1 end
      state[name] = {0, false, 0}
    else
      state[name] = {st, len ~= nil, num(len)}
    end
  end
  if has_text and ts < stamp then push(hdel, 'text'); push(hdel, 'ts'); has_text = false end
end
local function current(name)
  local s = state[name]
  if s == nil then
    local r = redis.call('HMGET', rk, 's:' .. name, 'l:' .. name)
    s = {num(r[1]), r[2] ~= false, num(r[2])}
    state[name] = s
  end
  return s
end
local i = 9
for _ = 1, nsets do
  local name, value, len = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local s = current(name)
  if stamp > s[1] and stamp >= clear then
    if s[2] then sz = sz - s[3] else n = n + 1; if s[1] > 0 then tombs = tombs - 1 end end
    sz = sz + len
    state[name] = {stamp, true, len}
    push(hset, 'v:' .. name, value); push(hset, 's:' .. name, S(stamp)); push(hset, 'l:' .. name, len)
    accepted = true
  end
end
while i <= #ARGV do
  local name = ARGV[i]
  i = i + 1
  local s = current(name)
  if stamp > s[1] and stamp >= clear then
    if s[2] then
      sz = sz - s[3]; n = n - 1; push(hdel, 'v:' .. name); push(hdel, 'l:' .. name)
    end
    if not s[2] and s[1] > 0 then tombs = tombs - 1 end
    tombs = tombs + 1
    state[name] = {stamp, false, 0}
    push(hset, 's:' .. name, S(stamp))
    accepted = true
  end
end
if not accepted then return 'stale' end
if has_text and n > 0 then
  local newest = 0
  for _, s in pairs(state) do if s[2] and s[1] > newest then newest = s[1] end end
  if newest > ts then push(hdel, 'text'); push(hdel, 'ts'); has_text = false end
end
local size = 2
if n > 0 then size = 1 + sz + n end
if size > max_bytes then return 'too_large' end
local live = n > 0 or has_text
if live and not was_live then created, writes = stamp, 0 end
writes = writes + 1
-- HDEL first: a field both cleared and rewritten must end up written.
if #hdel > 0 then redis.call('HDEL', rk, unpack(hdel)) end
push(hset, 'n', n); push(hset, 'sz', sz); push(hset, 'clear', S(clear)); push(hset, 't', tombs)
push(hset, 'created', S(created)); push(hset, 'writes', writes); push(hset, 'f', 1)
push(hset, 'e', live and etag(created, writes) or '')
redis.call('HSET', rk, unpack(hset))
if live then
  if ttl > 0 then redis.call('PEXPIRE', rk, ttl) else redis.call('PERSIST', rk) end
  if #KEYS > 2 then redis.call('SADD', KEYS[3], rk) end
else
  redis.call('PEXPIRE', rk, math.max(ttl, tomb_ttl))
end
if tombs > 32 then
  -- Forget tombstones past their retention (stamp >> 12 is ms since EPOCH_MS).
  local all, live_names, stamps, gone = redis.call('HGETALL', rk), {}, {}, {}
  for j = 1, #all, 2 do
    local p = string.sub(all[j], 1, 2)
    if p == 'l:' then live_names[string.sub(all[j], 3)] = true
    elseif p == 's:' then stamps[string.sub(all[j], 3)] = tonumber(all[j + 1]) end
  end
  for name, st in pairs(stamps) do
    if not live_names[name] and math.floor(st / 4096) + EPOCH_MS < now_ms - tomb_ttl then
      gone[#gone + 1] = 's:' .. name
    end
  end
  if #gone > 0 then
    redis.call('HDEL', rk, unpack(gone))
    redis.call('HSET', rk, 't', tombs - #gone)
  end
end
return 'applied'
"""
)

# KEYS: record [, deletion stamp key, user index set]
# ARGV: etag ('*', '' or a value), clock stamp, max_bytes, ttl_ms, tombstone_ttl_ms,
#       kind ('none', 'text', 'props'), text | (name, value, member_len)...
COMPARE_AND_SET_LAYOUT_1 = (
    _PRELUDE
    + r"""
local sent, stamp, max_bytes = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, tomb_ttl, kind = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local all = redis.call('HGETALL', rk)
local f = {}
local observed = 0
for i = 1, #all, 2 do
  f[all[i]] = all[i + 1]
  local p = string.sub(all[i], 1, 2)
  if p == 's:' or all[i] == 'clear' or all[i] == 'ts' then
    observed = math.max(observed, tonumber(all[i + 1]))
  end
end
local live = num(f['n']) > 0 or f['text'] ~= nil
local current = ''
if live then current = f['e'] end
if sent ~= '*' then
  if sent == '' then
    if live then return {'conflict', 'the record exists: send its eTag, or * to overwrite'} end
  elseif sent ~= current then
    if live then return {'conflict', 'eTag does not match the record\'s current eTag'} end
    return {'conflict', 'eTag names a record that does not exist'}
  end
end
if #KEYS > 1 then observed = math.max(observed, num(redis.call('GET', KEYS[2]))) end
stamp = math.max(stamp, above(observed, stamp))
local created, writes = num(f['created']), num(f['writes'])
local hset = {'f', 1, 'clear', S(stamp), 't', 0}
local n, sz, size = 0, 0, 2
if kind == 'text' then
  hset[#hset + 1] = 'text'; hset[#hset + 1] = ARGV[7]
  hset[#hset + 1] = 'ts'; hset[#hset + 1] = S(stamp)
  size = tonumber(ARGV[8])
elseif kind == 'props' then
  local i = 7
  while i <= #ARGV do
    local name, value, len = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    i = i + 3
    n = n + 1; sz = sz + len
    hset[#hset + 1] = 'v:' .. name; hset[#hset + 1] = value
    hset[#hset + 1] = 's:' .. name; hset[#hset + 1] = S(stamp)
    hset[#hset + 1] = 'l:' .. name; hset[#hset + 1] = len
  end
  if n > 0 then size = 1 + sz + n end
end
if kind ~= 'none' and size > max_bytes then return {'too_large', tostring(size)} end
local now_live = n > 0 or kind == 'text'
if now_live then
  if not live then created, writes = stamp, 0 end
  writes = writes + 1
end
local new_etag = ''
if now_live then new_etag = etag(created, writes) end
for _, v in ipairs({'n', n, 'sz', sz, 'created', S(created), 'writes', writes, 'e', new_etag}) do
  hset[#hset + 1] = v
end
redis.call('DEL', rk)
redis.call('HSET', rk, unpack(hset))
if now_live then
  if ttl > 0 then redis.call('PEXPIRE', rk, ttl) end
  if #KEYS > 2 then redis.call('SADD', KEYS[3], rk) end
else
  redis.call('PEXPIRE', rk, math.max(ttl, tomb_ttl))
end
return {'ok', new_etag}
"""
)
