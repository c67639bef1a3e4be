--[[
heartbeat.lua: renew the lease of one active stream.

KEYS[1]  the user's streams: hash playgate:{<user id>}:streams (value JSON [video, device, started_at, expires_at,
         device name, kind tags, away])
KEYS[2]  the lease index: sorted set playgate:leases (member stream id, score expires_at)
ARGV[1]  stream id    ARGV[2] now, epoch seconds    ARGV[3] lease_s, seconds

Returns the renewed stream as that JSON list (times '%.17g' strings, epoch
seconds), or nil when the stream is unknown or its lease already ran out (the sweeper announces those).
]]

local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then
    return nil
end
local now = tonumber(ARGV[2])
local v = cjson.decode(value)
if tonumber(v[4]) <= now then
    return nil
end
v[4] = string.format('%.17g', now + tonumber(ARGV[3]))
local encoded = cjson.encode(v)
redis.call('HSET', KEYS[1], ARGV[1], encoded)
redis.call('ZADD', KEYS[2], v[4], ARGV[1])
return encoded
