--[[
expire.lua: end one stream if its lease ran out, and log its end; the sweeper runs it for each candidate of the
lease index, so that when several workers sweep at once, exactly one of them ends (and announces) each expired
stream.

KEYS[1]  the user's streams: hash playgate:{<user id>}:streams (value JSON [video, device, started_at, expires_at,
         device name, kind tags, away])
KEYS[2]  the lease index: sorted set playgate:leases (member stream id, score expires_at)
KEYS[3]  the change log beside it: stream playgate:events (admission.lua says its entries)
ARGV[1]  stream id    ARGV[2] now, epoch seconds    ARGV[3] the user id

Returns the ended stream as that JSON list, or nil when it is not expired (its index entry is corrected) or
already gone (its stale index entry is removed).
]]

local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return nil
end
local v = cjson.decode(value)
if tonumber(v[4]) > tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[2], v[4], ARGV[1])
    return nil
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local ended = {ARGV[1], v[1], v[2], v[3], v[4], 'expired', v[5] or '', v[6], v[7]}
redis.call('XADD', KEYS[3], '*', 'u', ARGV[3], 't', ARGV[2], 'e', cjson.encode({ended}))
return value
