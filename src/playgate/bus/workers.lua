--[[
workers.lua: a worker says it is alive and learns who else is, on Redis's clock (workers' clocks may differ).

KEYS[1]     the sorted set of live workers (consumer -> last seen, ms)
ARGV[1]     the consumer
ARGV[2]     ms after which a worker not seen is forgotten
ARGV[3]     "1" to leave (a worker stopping)

Returns the live consumers, sorted by name.
]]

local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ARGV[3] == '1' then
    redis.call('ZREM', KEYS[1], ARGV[1])
else
    redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
table.sort(live)
return live
