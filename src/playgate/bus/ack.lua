--[[
ack.lua: acknowledge decided requests, all or nothing: dead-letter the given-up ones, XACK every entry, drop the
pending markers (one script instead of a MULTI, so that a Redis Cluster client sends it too: every key lies in
the queue's slot).

KEYS[1]     the request stream
KEYS[2]     the dead-letter stream, trimmed to ARGV[2] entries
KEYS[3..]   the pending markers to delete
ARGV[1]     the consumer group
ARGV[2]     the dead-letter stream's maxlen
ARGV[3]     JSON list of the dead-letter entries to add, each an object of field -> value
ARGV[4..]   the stream entry ids to acknowledge

Returns the number of entries acknowledged.
]]

local STEP = 500  -- arguments per command: unpack() has a bounded stack
for _, fields in ipairs(cjson.decode(ARGV[3])) do
    local args = {KEYS[2], 'MAXLEN', ARGV[2], '*'}
    for field, value in pairs(fields) do
        args[#args + 1] = field
        args[#args + 1] = tostring(value)
    end
    redis.call('XADD', unpack(args))
end
local acked = 0
for first = 4, #ARGV, STEP do
    acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, first, math.min(#ARGV, first + STEP - 1)))
end
for first = 3, #KEYS, STEP do
    redis.call('DEL', unpack(KEYS, first, math.min(#KEYS, first + STEP - 1)))
end
return acked
