--[[
oldest.lua: when the oldest entry still in the ledger's change logs was added, as the millisecond part of its id
(Redis's clock); nil when every log is empty. On one server the one log, on a Redis Cluster the logs of every
bucket the node serves, in one call (instead of an XRANGE per log: 1,024 on a cluster).

No KEYS, as drain.lua: ARGV[1..] the change logs (streams); one that does not exist, or whose slot is moving away
(MOVED, ASK), is passed over.
]]

local oldest = false
for i = 1, #ARGV do
    local first = redis.pcall('XRANGE', ARGV[i], '-', '+', 'COUNT', 1)
    if not first.err and first[1] then
        local ms = tonumber(string.match(first[1][1], '^(%d+)'))
        if not oldest or ms < oldest then
            oldest = ms
        end
    end
end
return oldest
