--[[
heartbeat.lua: renew the lease of one active stream.

KEYS[1]  the user's streams: hash playgate:{<user id>}:streams (record.lua says its records)
KEYS[2]  the lease index: sorted set playgate:leases (member stream id, score expires_at)
ARGV[1]  stream id    ARGV[2] now, epoch seconds    ARGV[3] lease_s, seconds    ARGV[4] the user id

Only the lease index changes (a record of the previous format is rewritten in this one). Returns the renewed
stream as its wire list (record.lua), or nil when the stream is unknown or its lease already ran out (the sweeper
announces those).
]]

local prefix = owner_prefix(ARGV[4])
local stream = find(KEYS[1], KEYS[2], ARGV[1], prefix)
local now = tonumber(ARGV[2])
if not stream or stream.expires <= now then
    return nil
end
stream.expires = now + tonumber(ARGV[3])
renew(KEYS[1], KEYS[2], stream, prefix)
return cjson.encode(wire(stream))
