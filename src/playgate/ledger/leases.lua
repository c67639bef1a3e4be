#!lua flags=allow-cross-slot-keys,no-writes
--[[
leases.lua: read many lease indexes of one Redis Cluster node in one call (the sweeper's and the active count's
reads on a cluster, where each hash slot has a lease index of its own). Redis 7: the keys may lie in several slots,
all served by the node the call goes to.

No KEYS (Redis refuses declared keys of several slots, not undeclared ones the node serves).
ARGV[1]  "due": the members whose lease ran out by ARGV[2], at most ARGV[3] in all;
         "count": how many members still hold a lease after ARGV[2]
ARGV[2]  now, epoch seconds
ARGV[3]  (due) the most members to return
ARGV[4..]  lease indexes: sorted sets, member = stream id, score = expires_at (epoch seconds)

An index in a slot that is moving away (its reads answer MOVED or ASK) is passed over: the next pass reads it on
its new node. Returns, for "due", a flat list [index position (1-based, in ARGV[4..]), stream id, ...]; for
"count", an integer.
]]

local mode, now, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local total, found = 0, {}
for i = 4, #ARGV do
    local reply
    if mode == 'count' then
        reply = redis.pcall('ZCOUNT', ARGV[i], '(' .. now, '+inf')
    else
        reply = redis.pcall('ZRANGEBYSCORE', ARGV[i], '-inf', now, 'LIMIT', 0, limit - #found / 2)
    end
    if type(reply) == 'number' then
        total = total + reply
    elseif not reply.err then
        for _, member in ipairs(reply) do
            found[#found + 1] = i - 3
            found[#found + 1] = member
        end
        if #found / 2 >= limit then
            break
        end
    end
end
if mode == 'count' then
    return total
end
return found
