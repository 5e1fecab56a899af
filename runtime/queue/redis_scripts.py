"""The Redis queue's Lua scripts: each change of the queues is one script, so it is atomic.

Keys, under the prefix `llm-runtime:{<service>}:` (one hash tag, so one Cluster slot):
  seq, sinkseq      the last index given in the input queue and in the sink (INCR)
  in:1, in:0        the input queue, as two streams: priority and normal items. An entry's id is
                    `<index>-0` and it holds the request id; every runtime reads both streams
                    in one consumer group, each runtime a consumer
  item:<rid>        the request: index, priority, body, content_type, tags, attempts, state,
                    consumer
  sink              the sink stream: id `<index>-0`; rid, data, tags (JSON), at (time)
  res:<rid>         the sink indexes of the request's results (a set), expiring with them
  done:<rid>        set when the request's first result arrived: a later one is a duplicate
  events            a channel: "input" or "sink" after each change, so others look at once

Every script takes the prefix, the consumer group and the calling runtime's consumer name as
ARGV[1..3] (the name goes into published messages, so a runtime can tell its own), its own
arguments from ARGV[4]; KEYS[1] is a key of the prefix, which routes the script to the right
node of a Cluster.
"""

# ARGV[4..]: rid, priority (0|1), body, content_type, tags, now, max_pending (-1: none)
ENQUEUE = """
local p, g = ARGV[1], ARGV[2]
local max = tonumber(ARGV[10])
if max >= 0 then
  local waiting = 0
  for _, s in ipairs({p .. 'in:1', p .. 'in:0'}) do
    waiting = waiting + redis.call('XLEN', s)
    local pending = redis.pcall('XPENDING', s, g)
    if type(pending) == 'table' and not pending.err then
      waiting = waiting - pending[1]
    end
  end
  if waiting >= max then return -1 end
end
local index = redis.call('INCR', p .. 'seq')
redis.call('XADD', p .. 'in:' .. ARGV[5], index .. '-0', 'rid', ARGV[4])
redis.call('HSET', p .. 'item:' .. ARGV[4], 'index', index, 'priority', ARGV[5],
  'body', ARGV[6], 'content_type', ARGV[7], 'tags', ARGV[8], 'enqueued_at', ARGV[9],
  'attempts', 0, 'state', 'pending')
redis.call('PUBLISH', p .. 'events', 'input ' .. ARGV[3])
return index
"""

# ARGV[4..]: lease in ms, at most how many (ARGV[3], the caller, is the consumer).
# Entries whose lease lapsed (idle in another consumer's pending list) first, priority stream
# first; then new entries, priority stream first. Returns a list of {index, rid, body, content
# type, tags, attempt}: fewer than asked when no more wait.
CLAIM = """
local p, g, c = ARGV[1], ARGV[2], ARGV[3]
local limit = tonumber(ARGV[5])  -- ARGV[4]: the lease
local streams = {p .. 'in:1', p .. 'in:0'}
local items = {}
local function take(s, id, fields)
  local rid = fields[2]
  local key = p .. 'item:' .. rid
  if redis.call('EXISTS', key) == 0 then  -- deleted by a client: the entry goes too
    redis.call('XACK', s, g, id)
    redis.call('XDEL', s, id)
    return
  end
  local attempts = redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'state', 'running', 'consumer', c)
  local f = redis.call('HMGET', key, 'index', 'body', 'content_type', 'tags')
  table.insert(items, {tonumber(f[1]), rid, f[2], f[3], f[4], attempts})
end
for _, s in ipairs(streams) do
  local cursor = '0-0'
  repeat
    local r = redis.call('XAUTOCLAIM', s, g, c, ARGV[4], cursor, 'COUNT', limit - #items)
    cursor = r[1]
    for _, e in ipairs(r[2]) do
      if e and e[2] then take(s, e[1], e[2]) end
    end
  until cursor == '0-0' or #items >= limit
end
for _, s in ipairs(streams) do
  while #items < limit do
    local r = redis.call('XREADGROUP', 'GROUP', g, c, 'COUNT', limit - #items, 'STREAMS', s, '>')
    if not r then break end
    for _, e in ipairs(r[1][2]) do take(s, e[1], e[2]) end
  end
end
return items
"""

# Whether consumer c holds the entry of request `rid`: its stream and id, or nil.
_HELD = """
local function held(p, g, c, rid)
  local f = redis.call('HMGET', p .. 'item:' .. rid, 'index', 'priority')
  if not f[1] then return nil end
  local s, id = p .. 'in:' .. f[2], f[1] .. '-0'
  local entry = redis.call('XPENDING', s, g, id, id, 1)[1]
  if entry and entry[2] == c then return s, id end
  return nil
end
"""

# ARGV[4..]: rid...: a claim with no IDLE resets the entry's idle time.
RENEW = (
    _HELD
    + """
local p, g, c = ARGV[1], ARGV[2], ARGV[3]
local renewed = 0
for i = 4, #ARGV do
  local s, id = held(p, g, c, ARGV[i])
  if s then
    redis.call('XCLAIM', s, g, c, 0, id, 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
"""
)

# ARGV[4..]: rid, idle ms: the entry looks lapsed, so any runtime (this one included) claims it
# next; the cut-short run is not counted as an attempt.
RELEASE = (
    _HELD
    + """
local p, g, c = ARGV[1], ARGV[2], ARGV[3]
local s, id = held(p, g, c, ARGV[4])
if not s then return 0 end
redis.call('XCLAIM', s, g, c, 0, id, 'IDLE', ARGV[5], 'JUSTID')
local key = p .. 'item:' .. ARGV[4]
redis.call('HINCRBY', key, 'attempts', -1)
redis.call('HSET', key, 'state', 'pending')
redis.call('PUBLISH', p .. 'events', 'input ' .. c)
return 1
"""
)

# ARGV[4..]: rid, data, tags (JSON), now, result ttl (s).
# Returns the sink index and the tags written; nil when a client deleted the item while it ran.
COMPLETE = """
local p, g, rid = ARGV[1], ARGV[2], ARGV[4]
local key, done = p .. 'item:' .. rid, p .. 'done:' .. rid
local f = redis.call('HMGET', key, 'index', 'priority')
local first = redis.call('SET', done, ARGV[7], 'NX', 'EX', ARGV[8])
if not f[1] and first then
  redis.call('DEL', done)
  return nil
end
if f[1] then
  local s, id = p .. 'in:' .. f[2], f[1] .. '-0'
  redis.call('XACK', s, g, id)
  redis.call('XDEL', s, id)
  redis.call('DEL', key)
end
local tags = ARGV[6]
if not first then
  local decoded = cjson.decode(tags)
  decoded['duplicate'] = 'true'
  tags = cjson.encode(decoded)
end
local index = redis.call('INCR', p .. 'sinkseq')
redis.call('XADD', p .. 'sink', index .. '-0', 'rid', rid, 'data', ARGV[5], 'tags', tags,
  'at', ARGV[7])
redis.call('SADD', p .. 'res:' .. rid, index)
redis.call('EXPIRE', p .. 'res:' .. rid, ARGV[8])
-- Only the sink is announced: what left the input queue wakes no worker.
redis.call('PUBLISH', p .. 'events', 'sink ' .. ARGV[3])
return {index, tags}
"""

# ARGV[4..]: rid, data, tags (JSON), now, result ttl (s): a client's put on the sink.
PUT = """
local p, rid = ARGV[1], ARGV[4]
local index = redis.call('INCR', p .. 'sinkseq')
redis.call('XADD', p .. 'sink', index .. '-0', 'rid', rid, 'data', ARGV[5], 'tags', ARGV[6],
  'at', ARGV[7])
redis.call('SADD', p .. 'res:' .. rid, index)
redis.call('EXPIRE', p .. 'res:' .. rid, ARGV[8])
redis.call('PUBLISH', p .. 'events', 'sink ' .. ARGV[3])
return index
"""

# Removing one entry, from the sink or the input queue (then its request too).
_REMOVE = """
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
local function remove(p, g, s, e)
  local rid = field(e[2], 'rid')
  if s == p .. 'sink' then
    redis.call('SREM', p .. 'res:' .. rid, string.match(e[1], '^(%d+)'))
  else
    redis.call('XACK', s, g, e[1])
    redis.call('DEL', p .. 'item:' .. rid)
  end
  redis.call('XDEL', s, e[1])
  return rid
end
local function streams_of(p, which)
  if which == 'sink' then return {p .. 'sink'} end
  return {p .. 'in:1', p .. 'in:0'}
end
"""

# ARGV[4..]: "input"|"sink", index...
DELETE = (
    _REMOVE
    + """
local p, g = ARGV[1], ARGV[2]
local removed = 0
for i = 5, #ARGV do
  local id = ARGV[i] .. '-0'
  for _, s in ipairs(streams_of(p, ARGV[4])) do
    local e = redis.call('XRANGE', s, id, id)[1]
    if e then
      remove(p, g, s, e)
      removed = removed + 1
    end
  end
end
if removed > 0 then redis.call('PUBLISH', p .. 'events', ARGV[4] .. ' ' .. ARGV[3]) end
return removed
"""
)

# ARGV[4..]: "input"|"sink", before, at most how many: entries below an index.
TRUNCATE = (
    _REMOVE
    + """
local p, g = ARGV[1], ARGV[2]
local removed, most = 0, tonumber(ARGV[6])
for _, s in ipairs(streams_of(p, ARGV[4])) do
  local entries = redis.call('XRANGE', s, '-', '(' .. ARGV[5] .. '-0', 'COUNT', most - removed)
  for _, e in ipairs(entries) do
    remove(p, g, s, e)
    removed = removed + 1
  end
end
if removed > 0 then redis.call('PUBLISH', p .. 'events', ARGV[4] .. ' ' .. ARGV[3]) end
return removed
"""
)

# ARGV[4..]: cutoff (s since the epoch), at most how many: results older than cutoff
# go, and their requests are forgotten (their keys expire by then anyway).
EXPIRE = (
    _REMOVE
    + """
local p, g = ARGV[1], ARGV[2]
local cutoff, most = tonumber(ARGV[4]), tonumber(ARGV[5])
local entries = redis.call('XRANGE', p .. 'sink', '-', '+', 'COUNT', most)
local removed = 0
for _, e in ipairs(entries) do
  if tonumber(field(e[2], 'at')) >= cutoff then break end
  redis.call('DEL', p .. 'done:' .. remove(p, g, p .. 'sink', e))
  removed = removed + 1
end
return removed
"""
)

# ARGV[4]: rid: the request's results in the sink, as XRANGE gives entries.
RESULTS = """
local p = ARGV[1]
local found = {}
for _, index in ipairs(redis.call('SMEMBERS', p .. 'res:' .. ARGV[4])) do
  local e = redis.call('XRANGE', p .. 'sink', index .. '-0', index .. '-0')[1]
  if e then table.insert(found, e) end
end
return found
"""

# ARGV[4..]: "input"|"sink", index...: the indexes still there.
EXISTING = (
    _REMOVE
    + """
local p = ARGV[1]
local found = {}
for i = 5, #ARGV do
  local id = ARGV[i] .. '-0'
  for _, s in ipairs(streams_of(p, ARGV[4])) do
    if redis.call('XRANGE', s, id, id)[1] then table.insert(found, tonumber(ARGV[i])) end
  end
end
return found
"""
)

# ARGV[4]: index: {"running", 0, consumer} or {"pending", number ahead, ""}.
POSITION = """
local p, g, id = ARGV[1], ARGV[2], ARGV[4] .. '-0'
local hi, lo = p .. 'in:1', p .. 'in:0'
local function undelivered(s, before)
  if before == nil then
    return redis.call('XLEN', s) - redis.call('XPENDING', s, g)[1]
  end
  local entries = #redis.call('XRANGE', s, '-', before)
  return entries - #redis.call('XPENDING', s, g, '-', before, entries + 1)
end
for _, s in ipairs({hi, lo}) do
  local e = redis.call('XRANGE', s, id, id)[1]
  if e then
    local f = redis.call('HMGET', p .. 'item:' .. e[2][2], 'state', 'consumer')
    if f[1] == 'running' then return {'running', 0, f[2] or ''} end
    local ahead = undelivered(s, '(' .. id)
    if s == lo then ahead = ahead + undelivered(hi, nil) end
    return {'pending', ahead, ''}
  end
end
return nil
"""

ALL = {
    "ENQUEUE": ENQUEUE,
    "CLAIM": CLAIM,
    "RENEW": RENEW,
    "RELEASE": RELEASE,
    "COMPLETE": COMPLETE,
    "PUT": PUT,
    "DELETE": DELETE,
    "TRUNCATE": TRUNCATE,
    "EXPIRE": EXPIRE,
    "RESULTS": RESULTS,
    "EXISTING": EXISTING,
    "POSITION": POSITION,
}
