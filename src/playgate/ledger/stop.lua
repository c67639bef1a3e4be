--[[
stop.lua: end some or all of one user's streams, and log their ends.

KEYS[1]  the user's streams: hash playgate:{<user id>}:streams (value JSON [video, device, started_at, expires_at,
         device name, kind tags, away])
KEYS[2]  the lease index: sorted set playgate:leases (member stream id, score expires_at)
KEYS[3]  the change log beside it: stream playgate:events (admission.lua says its entries)
ARGV[1]  now, epoch seconds
ARGV[2]  only streams of this video id; "" for any video
ARGV[3]  "ids" to end only the stream ids in ARGV[6..], "all" to end every stream of the user
ARGV[4]  the user id    ARGV[5] the reason the ends are logged with; "" logs nothing (a stop not announced)

Returns a JSON list of [stream id, video id, device id, started_at, expires_at, device name, kind tags, away] of
the ended streams whose lease had not run out (expired ones are deleted too, but they were no longer active; the
sweeper's expire.lua has not logged them, so they are logged here as expired).
]]

local now = tonumber(ARGV[1])
local wanted = nil
if ARGV[3] == 'ids' then
    wanted = {}
    for i = 6, #ARGV do
        wanted[ARGV[i]] = true
    end
end
local stopped, logged = {}, {}
local raw = redis.call('HGETALL', KEYS[1])
for i = 1, #raw, 2 do
    local id = raw[i]
    local v = cjson.decode(raw[i + 1])
    if (wanted == nil or wanted[id]) and (ARGV[2] == '' or v[1] == ARGV[2]) then
        redis.call('HDEL', KEYS[1], id)
        redis.call('ZREM', KEYS[2], id)
        local reason = ARGV[5]
        if tonumber(v[4]) > now then
            stopped[#stopped + 1] = {id, v[1], v[2], v[3], v[4], v[5] or '', v[6], v[7]}
        else
            reason = 'expired'
        end
        if reason ~= '' then
            logged[#logged + 1] = {id, v[1], v[2], v[3], v[4], reason, v[5] or '', v[6], v[7]}
        end
    end
end
if #logged > 0 then
    redis.call('XADD', KEYS[3], '*', 'u', ARGV[4], 't', ARGV[1], 'e', cjson.encode(logged))
end
if #stopped == 0 then
    return '[]'
end
return cjson.encode(stopped)
