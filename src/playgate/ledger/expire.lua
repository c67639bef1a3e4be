--[[
expire.lua: end one stream if its lease ran out, and log its end; the sweeper runs it for each candidate of the
lease index, so that when several workers sweep at once, exactly one of them ends (and announces) each expired
stream.

KEYS[1]  the user's streams: hash playgate:{<user id>}:streams (record.lua says its records)
KEYS[2]  the lease index: sorted set playgate:leases (member stream id, score expires_at)
KEYS[3]  the change log beside it: stream playgate:events (admission.lua says its entries)
ARGV[1]  stream id    ARGV[2] now, epoch seconds    ARGV[3] the user id

Returns the ended stream as its wire list (record.lua), or nil when it is not expired (renewed since the sweeper
read the index) or already gone (its stale index entry is removed).
]]

local stream = find(KEYS[1], KEYS[2], ARGV[1], owner_prefix(ARGV[3]))
if not stream then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return nil
end
if stream.expires > tonumber(ARGV[2]) then
    return nil
end
remove(KEYS[1], KEYS[2], stream)
redis.call('XADD', KEYS[3], '*', 'u', ARGV[3], 't', ARGV[2], 'e', cjson.encode({row(stream, 'expired')}))
return cjson.encode(wire(stream))
