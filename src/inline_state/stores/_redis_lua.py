"""The Lua scripts of the Redis store. They compare stamps and do HSET/HDEL only.

A record is a hash (layout 2), small enough to stay in Redis's compact listpack encoding:
    <name>   a property: its stamp (8 bytes, big-endian) then its canonical JSON bytes;
             a tombstone is the stamp alone. Names are UTF-8, which never holds the
             bytes 0xFE and 0xFF, so the two fields below cannot collide with a name.
    \\xff     the head: "bag,etag[,tombs,clear]" (decimal; the eTag as text, never holding
             a comma): bag is the sum of (member length + 1) over live properties (the
             bag's JSON size is 1 + bag), tombs the tombstone count and clear the stamp
             of the last clear, both left out while 0.
    \\xfe     a string record (REST): its stamp (8 bytes) then the text.
The scripts never decode a value; they read stamps and lengths. A property's JSON member
length is its value's length plus its name's (``jlen``), which only a clear or a removal
needs: a set passes its member length.

Layout 1 (one field each for value, stamp and length per property, plus n, sz, clear, t,
created, writes, e, f) is still read; the first write to such a record rewrites it as
layout 2, keeping its eTag and its expiry. Stamps are below 2**53, so Lua's doubles hold
them exactly. The eTag is "created.writes" (hex) in both layouts: the stamp that made
the record live, and a count of accepted writes since, so every accepted write changes
it (stamps alone would not do: a compare-and-set may raise its stamp to one a turn of
the same node also holds).
"""

from __future__ import annotations

from .._codec import HASHED_NAME_JSON, NAMED_OVERHEAD, SEAL_OVERHEAD

HEAD = b"\xff"
TEXT = b"\xfe"

# Shared prelude: stamps, the head, and a record of either layout read whole.
_PRELUDE = (
    r"""
local EPOCH_MS = 1735689600000
local HEAD, TEXT = '\255', '\254'
local function num(x) if x then return tonumber(x) end return 0 end
local rk = KEYS[1]
-- Lua turns numbers into strings with 14 significant digits; stamps need all of theirs.
local function S(x) return string.format('%.0f', x) end
local function packed(s) return struct.pack('>I8', s) end
local function stamp_of(v) return (struct.unpack('>I8', v)) end
-- The JSON length of the value starting at byte `at` of `v` (as _codec.value_size): a
-- sealed one (first byte 0, which no JSON text starts with) counts as its plaintext;
-- one sealed with its name (1) as that less its hashed field name; sealed ids (2) as
-- minus their member's framing, so they count as nothing.
local function vlen(v, at)
  local n = #v - at + 1
  if n > 0 then
    local b = string.byte(v, at)
    if b == 0 then n = n - @SEAL_OVERHEAD@ elseif b == 1 then n = n - @NAMED_OVERHEAD@
    elseif b == 2 then n = -@IDS_FRAMING@ end
  end
  return n
end
-- "bag,etag", with ",tombs,clear" only when either is set: most records fit in the
-- smallest listpack allocation then.
local function head(bag, tombs, clear, etag)
  if tombs == 0 and clear == 0 then return string.format('%d,%s', bag, etag) end
  return string.format('%d,%s,%d,%.0f', bag, etag, tombs, clear)
end
local function read_head(h)
  local bag, etag, tombs, clear = string.match(h, '^(%d+),([^,]*),?(%d*),?(%d*)$')
  return tonumber(bag), tonumber(tombs) or 0, tonumber(clear) or 0, etag
end
-- The eTag after an accepted write that leaves the record live.
local function next_etag(etag, was_live, stamp)
  local created, writes = stamp, 0
  if was_live then
    local c, w = string.match(etag, '^(%x+)%.(%x+)$')
    if c then created, writes = tonumber(c, 16), tonumber(w, 16) end
  end
  return string.format('%x.%x', created, writes + 1)
end
-- The length of a name as a JSON string literal, as the bot's encoder (orjson) writes it.
local function jlen(name)
  local n = #name + 2
  for c in string.gmatch(name, '[%z\1-\31"\\]') do
    if c == '"' or c == '\\' or c == '\b' or c == '\f' or c == '\n' or c == '\r' or c == '\t' then
      n = n + 1
    else
      n = n + 5
    end
  end
  return n
end
-- The smallest stamp on the node of `stamp` (its low 8 bits) above `floor`: floor + 1
-- belongs to another node, which may issue that very stamp.
local function above(floor, stamp)
  local s = floor - floor % 256 + stamp % 256
  if s <= floor then s = s + 256 end
  return s
end
-- A record of either layout: props[name] = {stamp, live, value length, layout-2 field}.
local function load_all(key)
  local all = redis.call('HGETALL', key)
  local r = {props = {}, text = false, ts = 0, clear = 0, etag = '', bag = 0, tombs = 0,
             fields = {}, v1 = false}
  local f = {}
  for i = 1, #all, 2 do f[all[i]] = all[i + 1]; r.fields[#r.fields + 1] = all[i] end
  if f[HEAD] then
    r.bag, r.tombs, r.clear, r.etag = read_head(f[HEAD])
    for k, v in pairs(f) do
      if k == TEXT then r.text = v; r.ts = stamp_of(v)
      elseif k ~= HEAD then r.props[k] = {stamp_of(v), #v > 8, vlen(v, 9), v} end
    end
  elseif f['f'] then
    r.v1 = true
    r.clear, r.etag = num(f['clear']), f['e'] or ''
    if f['text'] then r.ts = num(f['ts']); r.text = packed(r.ts) .. f['text'] end
    for k, v in pairs(f) do
      if string.sub(k, 1, 2) == 's:' then
        local name, st = string.sub(k, 3), tonumber(v)
        local value = f['v:' .. name]
        if value then
          r.props[name] = {st, true, #value, packed(st) .. value}
          r.bag = r.bag + tonumber(f['l:' .. name]) + 1
        else
          r.props[name] = {st, false, 0, packed(st)}
          r.tombs = r.tombs + 1
        end
      end
    end
  end
  return r
end
local function observed_of(r)
  local o = math.max(r.clear, r.ts)
  for _, p in pairs(r.props) do if p[1] > o then o = p[1] end end
  return o
end
-- Rewrite a layout-1 record as layout 2 in place: HSET before HDEL, so the key never
-- empties and keeps its expiry.
local function upgrade(key, r)
  local hset, keep = {HEAD, head(r.bag, r.tombs, r.clear, r.etag)}, {[HEAD] = true}
  for name, p in pairs(r.props) do hset[#hset + 1] = name; hset[#hset + 1] = p[4]; keep[name] = true end
  if r.text then hset[#hset + 1] = TEXT; hset[#hset + 1] = r.text; keep[TEXT] = true end
  redis.call('HSET', key, unpack(hset))
  local gone = {}
  for _, k in ipairs(r.fields) do if not keep[k] then gone[#gone + 1] = k end end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
end
""".replace("@SEAL_OVERHEAD@", str(SEAL_OVERHEAD))
    .replace("@NAMED_OVERHEAD@", str(NAMED_OVERHEAD))
    .replace("@IDS_FRAMING@", str(HASHED_NAME_JSON + 2))
)

# KEYS: record [, deletion stamp key, user index set]
# ARGV: stamp, base, replace, max_bytes, ttl_ms, tombstone_ttl_ms, n_sets, now_ms,
#       (name, value, member_len) * n_sets, removed names...
APPLY = (
    _PRELUDE
    + r"""
local stamp, base = tonumber(ARGV[1]), tonumber(ARGV[2])
local replace, max_bytes = ARGV[3] == '1', tonumber(ARGV[4])
local ttl, tomb_ttl, nsets = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now_ms = tonumber(ARGV[8])
if #KEYS > 1 and base < num(redis.call('GET', KEYS[2])) then return 'dropped' end
-- One HMGET reads the head, the text and every property the change touches.
local names = {HEAD, TEXT, 'f'}
local i = 9
for _ = 1, nsets do names[#names + 1] = ARGV[i]; i = i + 3 end
while i <= #ARGV do names[#names + 1] = ARGV[i]; i = i + 1 end
local m = redis.call('HMGET', rk, unpack(names))
if not m[1] and m[3] then
  upgrade(rk, load_all(rk))
  m = redis.call('HMGET', rk, unpack(names))
end
local bag, tombs, clear, etag = 0, 0, 0, ''
if m[1] then bag, tombs, clear, etag = read_head(m[1]) end
local text, ts = m[2], 0
if text then ts = stamp_of(text) end
local was_live = bag > 0 or text ~= false
local state, hdel, hset = {}, {}, {}
for k = 4, #names do
  local v = m[k]
  if v then state[names[k]] = {stamp_of(v), #v > 8, vlen(v, 9)} else state[names[k]] = {0, false, 0} end
end
local accepted = false
local function push(t, a, b) t[#t + 1] = a; if b ~= nil then t[#t + 1] = b end end
if replace and stamp > clear then
  clear, accepted = stamp, true
  for name, p in pairs(load_all(rk).props) do
    if p[1] < stamp then
      push(hdel, name)
      if p[2] then bag = bag - (jlen(name) + 1 + p[3] + 1) else tombs = tombs - 1 end
      state[name] = {0, false, 0}
    else
      state[name] = {p[1], p[2], p[3]}
    end
  end
  if text and ts < stamp then push(hdel, TEXT); text = false end
end
local at = packed(stamp)
i = 9
for _ = 1, nsets do
  local name, value, len = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local s = state[name]
  if stamp > s[1] and stamp >= clear then
    if s[2] then
      bag = bag + vlen(value, 1) - s[3]
    else
      bag = bag + len + 1
      if s[1] > 0 then tombs = tombs - 1 end
    end
    state[name] = {stamp, true, vlen(value, 1)}
    push(hset, name, at .. value)
    accepted = true
  end
end
while i <= #ARGV do
  local name = ARGV[i]
  i = i + 1
  local s = state[name]
  if stamp > s[1] and stamp >= clear then
    if s[2] then bag = bag - (jlen(name) + 1 + s[3] + 1) elseif s[1] > 0 then tombs = tombs - 1 end
    tombs = tombs + 1
    state[name] = {stamp, false, 0}
    push(hset, name, at)
    accepted = true
  end
end
if not accepted then return 'stale' end
if text and bag > 0 then
  local newest = 0
  for _, s in pairs(state) do if s[2] and s[1] > newest then newest = s[1] end end
  if newest > ts then push(hdel, TEXT); text = false end
end
local size = 2
if bag > 0 then size = 1 + bag end
if size > max_bytes then return 'too_large' end
local live = bag > 0 or text ~= false
etag = live and next_etag(etag, was_live, stamp) or ''
-- HDEL first: a field both cleared and rewritten must end up written.
if #hdel > 0 then redis.call('HDEL', rk, unpack(hdel)) end
push(hset, HEAD, head(bag, tombs, clear, etag))
redis.call('HSET', rk, unpack(hset))
if live then
  if ttl > 0 then redis.call('PEXPIRE', rk, ttl) else redis.call('PERSIST', rk) end
  if #KEYS > 2 then redis.call('SADD', KEYS[3], rk) end
else
  redis.call('PEXPIRE', rk, math.max(ttl, tomb_ttl))
end
if tombs > 32 then
  -- Forget tombstones past their retention (stamp >> 12 is ms since EPOCH_MS).
  local gone = {}
  for name, p in pairs(load_all(rk).props) do
    if not p[2] and math.floor(p[1] / 4096) + EPOCH_MS < now_ms - tomb_ttl then
      gone[#gone + 1] = name
    end
  end
  if #gone > 0 then
    redis.call('HDEL', rk, unpack(gone))
    redis.call('HSET', rk, HEAD, head(bag, tombs - #gone, clear, etag))
  end
end
return 'applied'
"""
)

# KEYS: record [, deletion stamp key, user index set]
# ARGV: etag ('*', '' or a value), clock stamp, max_bytes, ttl_ms, tombstone_ttl_ms,
#       kind ('none', 'text', 'props'), text | (name, value, member_len)...
COMPARE_AND_SET = (
    _PRELUDE
    + r"""
local sent, stamp, max_bytes = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, tomb_ttl, kind = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local r = load_all(rk)
local live = r.bag > 0 or r.text ~= false
local current = ''
if live then current = r.etag end
if sent ~= '*' then
  if sent == '' then
    if live then return {'conflict', 'the record exists: send its eTag, or * to overwrite'} end
  elseif sent ~= current then
    if live then return {'conflict', 'eTag does not match the record\'s current eTag'} end
    return {'conflict', 'eTag names a record that does not exist'}
  end
end
local observed = observed_of(r)
if #KEYS > 1 then observed = math.max(observed, num(redis.call('GET', KEYS[2]))) end
stamp = math.max(stamp, above(observed, stamp))
local at = packed(stamp)
local hset = {}
local bag, size = 0, 2
if kind == 'text' then
  hset[#hset + 1] = TEXT; hset[#hset + 1] = at .. ARGV[7]
  size = tonumber(ARGV[8])
elseif kind == 'props' then
  local i = 7
  while i <= #ARGV do
    local name, value, len = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    i = i + 3
    bag = bag + len + 1
    hset[#hset + 1] = name; hset[#hset + 1] = at .. value
  end
  if bag > 0 then size = 1 + bag end
end
if kind ~= 'none' and size > max_bytes then return {'too_large', tostring(size)} end
local now_live = bag > 0 or kind == 'text'
local new_etag = ''
if now_live then new_etag = next_etag(current, live, stamp) end
hset[#hset + 1] = HEAD; hset[#hset + 1] = head(bag, 0, stamp, new_etag)
redis.call('DEL', rk)
redis.call('HSET', rk, unpack(hset))
if now_live then
  if ttl > 0 then redis.call('PEXPIRE', rk, ttl) end
  if #KEYS > 2 then redis.call('SADD', KEYS[3], rk) end
else
  redis.call('PEXPIRE', rk, math.max(ttl, tomb_ttl))
end
return {'ok', new_etag, S(stamp)}
"""
)

# KEYS: user record, deletion stamp key, user index set.  ARGV: caller's stamp.
# Every key in the index shares the user's hash slot.
DELETE_USER = (
    _PRELUDE
    + r"""
local highest = num(redis.call('GET', KEYS[2]))
local keys = redis.call('SMEMBERS', KEYS[3])
keys[#keys + 1] = rk
for _, k in ipairs(keys) do
  highest = math.max(highest, observed_of(load_all(k)))
  redis.call('DEL', k)
end
local deleted = math.max(tonumber(ARGV[1]), above(highest, tonumber(ARGV[1])))
redis.call('SET', KEYS[2], S(deleted))
redis.call('DEL', KEYS[3])
return S(deleted)
"""
)

# A restore's whole-record write (see RedisStore.restore): only if the head is still the
# one the merge started from, which every accepted write changes (its eTag does), and the
# owner's deletion stamp too. KEYS: the record, then for user-owned ones the deletion
# stamp, then for private ones the owner's index. ARGV: the head read, the deletion stamp
# read, the expiry (-1: keep it, 0: none, else ms), whether the record is live, fields.
RESTORE = r"""
local rk = KEYS[1]
if (redis.call('HGET', rk, '\255') or '') ~= ARGV[1] then return 0 end
if #KEYS > 1 and (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then return 0 end
local expiry, live = tonumber(ARGV[3]), ARGV[4] == '1'
local kept = redis.call('PTTL', rk)
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('DEL', rk)
redis.call('HSET', rk, unpack(fields))
if expiry > 0 then redis.call('PEXPIRE', rk, expiry)
elseif expiry < 0 and kept > 0 then redis.call('PEXPIRE', rk, kept) end
if live and #KEYS > 2 then redis.call('SADD', KEYS[3], rk) end
return 1
"""
# A deletion stamp merged in: the higher stays. When it rises, the keys of the user's
# records (their record and those in the index) are returned, for the caller to clear
# below the stamp.
RESTORE_DELETION = r"""
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= current then return false end
redis.call('SET', KEYS[1], ARGV[1])
local keys = redis.call('SMEMBERS', KEYS[2])
keys[#keys + 1] = string.sub(KEYS[1], 1, -2) .. 'r'
return keys
"""
