--[[
stop.lua: end some or all of one user's streams, and log their ends.

KEYS[1]  the user's streams: hash playgate:{<user id>}:streams (record.lua says its records)
KEYS[2]  the lease index: sorted set playgate:leases (member stream id, score expires_at)
KEYS[3]  the change log beside it: stream playgate:events (admission.lua says its entries)
KEYS[4]  this call's reply, kept ARGV[7] milliseconds: the same call again (a client's retry after the reply was
         lost with its connection, the streams ended already) gets the first run's reply, not an empty list
ARGV[1]  now, epoch seconds
ARGV[2]  only streams of this video id; "" for any video
ARGV[3]  "ids" to end only the stream ids in ARGV[8..], "all" to end every stream of the user
ARGV[4]  the user id    ARGV[5] the reason the ends are logged with; "" logs nothing (a stop not announced)
ARGV[6]  "" or where to announce the ended streams, as JSON {"c": channel, "r": [room, ...]}: one PUBLISH of
         {"e": [["stream_ended", {"streamId", "videoId", "reason": ARGV[5]}, room], ...]} for the ended streams that
         were active, the message bus.redis.RedisFanout.announce would send (the API processes emit it to the
         rooms' sockets), so that the caller need not publish it in a call of its own
ARGV[7]  how long KEYS[4] is kept, milliseconds
ARGV[8]  "" or an instant (epoch seconds): a stream whose lease runs past it is left alone (renewed since: a stop
         taken during an outage, written back after the stream was played again)
ARGV[9..] the stream ids of "ids"

Returns a JSON list of [stream id, then its wire list (record.lua)] of the ended streams whose lease had not run
out (expired ones are deleted too, but they were no longer active; the sweeper's expire.lua has not logged them,
so they are logged here as expired).
]]

local kept = redis.call('GET', KEYS[4])
if kept then
    return kept
end
local now = tonumber(ARGV[1])
local wanted = nil
if ARGV[3] == 'ids' then
    wanted = {}
    for i = 9, #ARGV do
        wanted[ARGV[i]] = true
    end
end
local renewed_after = tonumber(ARGV[8])
local stopped, logged = {}, {}
for _, stream in ipairs(load_all(KEYS[1], KEYS[2], owner_prefix(ARGV[4]))) do
    if (wanted == nil or wanted[stream.id]) and (ARGV[2] == '' or stream.video == ARGV[2])
            and (renewed_after == nil or stream.expires <= renewed_after) then
        remove(KEYS[1], KEYS[2], stream)
        local reason = ARGV[5]
        if stream.expires > now then
            local ended = wire(stream)
            table.insert(ended, 1, stream.id)
            stopped[#stopped + 1] = ended
        else
            reason = 'expired'
        end
        if reason ~= '' then
            logged[#logged + 1] = row(stream, reason)
        end
    end
end
if #logged > 0 then
    redis.call('XADD', KEYS[3], '*', 'u', ARGV[4], 't', ARGV[1], 'e', cjson.encode(logged))
end
if #stopped == 0 then
    return '[]'  -- run again, it ends nothing either
end
if ARGV[6] ~= '' then
    local to = cjson.decode(ARGV[6])
    local emits = {}
    for _, ended in ipairs(stopped) do
        local body = {streamId = ended[1], videoId = ended[2], reason = ARGV[5]}
        for _, room in ipairs(to.r) do
            emits[#emits + 1] = {'stream_ended', body, room}
        end
    end
    redis.call('PUBLISH', to.c, cjson.encode({e = emits}))
end
local reply = cjson.encode(stopped)
redis.call('SET', KEYS[4], reply, 'PX', ARGV[7])
return reply
