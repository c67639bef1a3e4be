--[[
read.lua: one user's streams, or one of them, as the scripts answer them (read-only).

KEYS[1]  the user's streams: hash playgate:{<user id>}:streams (record.lua says its records)
KEYS[2]  the lease index: sorted set playgate:leases (member stream id, score expires_at)
ARGV[1]  the user id    ARGV[2] (optional) the one stream id wanted

Returns a flat list [stream id, its wire list (record.lua), ...]: every stream of the user, or the one wanted if
it is there, their leases run out or not.
]]

local prefix = owner_prefix(ARGV[1])
local streams
if ARGV[2] then
    streams = {find(KEYS[1], KEYS[2], ARGV[2], prefix)}
else
    streams = load_all(KEYS[1], KEYS[2], prefix)
end
local found = {}
for _, stream in ipairs(streams) do
    found[#found + 1] = stream.id
    found[#found + 1] = cjson.encode(wire(stream))
end
return found
