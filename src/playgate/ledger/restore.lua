--[[
restore.lua: write back one stream decided or kept playing while the ledger was down (the outage policy).

KEYS[1]  the user's streams: hash playgate:{<user id>}:streams (value JSON [video, device, started_at, expires_at,
         device name, kind tags, away])
KEYS[2]  the lease index: sorted set playgate:leases (member stream id, score expires_at)
ARGV[1]  stream id    ARGV[2] now, epoch seconds    ARGV[3] the stream as that JSON list

A stream absent here is stored as given (if its own lease has not run out); one known here keeps its fields and
takes the later of the two expiries. Returns 1 when it wrote, else 0.
]]

local now = tonumber(ARGV[2])
local given = cjson.decode(ARGV[3])
if tonumber(given[4]) <= now then
    return 0
end
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then
    -- Known here (live, or its lease ran out unswept): its own fields stay, with the later expiry.
    local v = cjson.decode(value)
    if tonumber(v[4]) >= tonumber(given[4]) then
        return 0
    end
    v[4] = given[4]
    given = v
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(given))
redis.call('ZADD', KEYS[2], given[4], ARGV[1])
return 1
