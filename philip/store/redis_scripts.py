"""Lua scripts of :mod:`philip.store.redis_store`: the operations Redis has no single command for.

Times come from the server's TIME, so gateway replicas with skewed clocks agree on lease expiry.
"""

# INCRBY and set the TTL only if the counter has none yet, atomically (EXPIRE NX needs Redis 7).
INCR = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
"""

# A lease set is a sorted set holder -> expiry (ms). KEYS[1] the set; ARGV holder, limit, ttl ms.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

ACQUIRE_LEASE = _NOW + """
local ttl = tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)  -- the set outlives its longest lease, no longer
  end
  return 1
end
return 0
"""

COUNT_LEASES = _NOW + """
return redis.call('ZCARD', KEYS[1])
"""

# Compare-and-set of one record (a Redis Cluster runs no MULTI across a WATCH here, see redis_cluster.py):
# replace the value only if it is still, byte for byte, the one the caller read and merged. The JSON is
# only compared and stored, never decoded, so cjson cannot mangle it. A record that expired or was deleted
# reads as false, never equal: nothing is resurrected. KEYS[1] the record; ARGV old value, new value.
SET_IF_UNCHANGED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""
