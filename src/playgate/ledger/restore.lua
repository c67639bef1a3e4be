--[[
restore.lua: write back one stream decided or kept playing while the ledger was down (the outage policy).

KEYS[1]  the user's streams: hash playgate:{<user id>}:streams (record.lua says its records)
KEYS[2]  the lease index: sorted set playgate:leases (member stream id, score expires_at)
ARGV[1]  stream id    ARGV[2] now, epoch seconds    ARGV[3] the stream as its wire list (record.lua)
ARGV[4]  the user id

A stream absent here is stored as given (if its own lease has not run out); one known here keeps its fields and
takes the later of the two expiries. Returns 1 when it wrote, else 0.
]]

local given = cjson.decode(ARGV[3])
local expires = tonumber(given[4])
if expires <= tonumber(ARGV[2]) then
    return 0
end
local prefix = owner_prefix(ARGV[4])
local stream = find(KEYS[1], KEYS[2], ARGV[1], prefix)
if stream then
    -- Known here (live, or its lease ran out unswept): its own fields stay, with the later expiry.
    if stream.expires >= expires then
        return 0
    end
    stream.expires = expires
    renew(KEYS[1], KEYS[2], stream, prefix)
    return 1
end
save(KEYS[1], KEYS[2], {id = ARGV[1], video = given[1], device = given[2], started = tonumber(given[3]),
                        expires = expires, name = given[5], kinds = given[6], away = given[7]}, prefix)
return 1
