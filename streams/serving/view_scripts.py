"""The Lua scripts of the Redis views (streams/serving/views.py has the key layout): each
applies one record, or one tombstone, atomically."""

# The member of a sorted index for the address in ARGV[2] (see index_member).
_INDEXED = "local indexed = (string.match(ARGV[2], '@([^@]*)$') or '') .. ' ' .. ARGV[2]"

# Compare versions, replace the hash, maintain membership sets, optionally publish.
# An equal version is applied: after a crash a worker may publish the same version again
# with other content (its redelivered inputs interleaved differently), and the later record
# is the one that stands, as on the compacted topic.
# KEYS[1] hash; KEYS[2..] one per char of ARGV[3]: '!' the key's tombstone marker (skip a
# record of the retired life: at or before the tombstone in both event time and version);
# '+' add to / '-' remove from a set; '>' add to / '<' remove from a sorted index, as
# '<domain> <member>'; '~' append the record to a capped stream when its version is new.
# ARGV[1] version, ARGV[2] set member, ARGV[3] the ops, ARGV[4] channel or '', ARGV[5] TTL
# (s) or '', ARGV[6] the record's event time or '', ARGV[7..] field/value pairs.
_UPSERT_TEMPLATE = """
for i = 2, #KEYS do
  if string.sub(ARGV[3], i - 1, i - 1) == '!' and ARGV[6] ~= '' then
    local gone = redis.call('HMGET', KEYS[i], 'event_time', 'version')
    if gone[1] and tonumber(ARGV[6]) <= tonumber(gone[1])
        and tonumber(ARGV[1]) <= tonumber(gone[2]) then
      return 0
    end
  end
end
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
local version = tonumber(ARGV[1])
if current > version then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
if ARGV[5] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
INDEXED
for i = 2, #KEYS do
  local op = string.sub(ARGV[3], i - 1, i - 1)
  if op == '+' then
    redis.call('SADD', KEYS[i], ARGV[2])
  elseif op == '-' then
    redis.call('SREM', KEYS[i], ARGV[2])
  elseif op == '>' then
    redis.call('ZADD', KEYS[i], 0, indexed)
  elseif op == '<' then
    redis.call('ZREM', KEYS[i], indexed)
  elseif op == '~' then
    if current < version then
      redis.call('XADD', KEYS[i], 'MAXLEN', '~', HISTORY_MAX, '*', unpack(ARGV, 7))
    end
  end
end
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], cjson.encode(ARGV)) end
return 1
"""

# Apply a tombstone: ignored when the hash is newer (a higher version, or a later event
# time: the key was reborn after it); else delete the hash, leave the sets and indexes,
# and keep the newest tombstone's event time and version in the marker (a hash).
# KEYS[1] hash, KEYS[2] marker, KEYS[3..] one per char of ARGV[3] ('-' a set, '<' a sorted
# index). ARGV[1] version or '', ARGV[2] member, ARGV[3] the ops, ARGV[4] event time or ''
# (either missing: no comparison with it, and no marker), ARGV[5] the marker's TTL (s).
_RETIRE_TEMPLATE = """
local version = tonumber(ARGV[1])
local event_time = tonumber(ARGV[4])
local stored = redis.call('HMGET', KEYS[1], 'version', 'event_time')
if version and stored[1] and tonumber(stored[1]) > version then return 0 end
if event_time and stored[2] and tonumber(stored[2]) > event_time then return 0 end
redis.call('DEL', KEYS[1])
INDEXED
for i = 3, #KEYS do
  if string.sub(ARGV[3], i - 2, i - 2) == '-' then
    redis.call('SREM', KEYS[i], ARGV[2])
  else
    redis.call('ZREM', KEYS[i], indexed)
  end
end
if version and event_time then
  local old = redis.call('HMGET', KEYS[2], 'version', 'event_time')
  local old_version = tonumber(old[1] or '-1')
  if version > old_version or (version == old_version and event_time > tonumber(old[2])) then
    redis.call('HSET', KEYS[2], 'event_time', ARGV[4], 'version', ARGV[1])
    redis.call('EXPIRE', KEYS[2], ARGV[5])
  end
end
return 1
"""

# Throttle changes kept in ``P:throttle-history`` (a capped stream) for the status page's
# chart: the views themselves keep only each key's latest setting.
HISTORY_MAX = 10_000
UPSERT = _UPSERT_TEMPLATE.replace("HISTORY_MAX", f"'{HISTORY_MAX}'").replace("INDEXED", _INDEXED)
RETIRE = _RETIRE_TEMPLATE.replace("INDEXED", _INDEXED)
