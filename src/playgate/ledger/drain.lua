--[[
drain.lua: take entries of the ledger's change logs for one reader of the consumer group (the audit trail's
drainer): on one server the one log, on a Redis Cluster the logs of every bucket the node serves, in one call.

No KEYS: the logs are named in ARGV (on a cluster they lie in several slots of the node the call goes to: Redis 7
with allow-cross-slot-keys refuses declared keys of several slots, not undeclared ones the node serves).
ARGV[1]  the consumer group    ARGV[2] this reader's consumer name
ARGV[3]  the most entries to return in all
ARGV[4]  milliseconds an entry read but not acknowledged waits before it is taken over (its reader died, or could
         not write it): XAUTOCLAIM from any reader, this one included
ARGV[5..]  the change logs (streams); a log that does not exist is passed over, one without the group gets it
         (from its first entry); one whose slot is moving away (MOVED, ASK) is passed over this time.

Returns a list of triples {log position (1-based, in ARGV[5..]), entry id, {field, value, ...}}, taken-over
entries first in each log, then new ones.
]]

local group, consumer, limit, idle_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local found = {}

local function add(position, entries)
    for _, entry in ipairs(entries) do
        if entry and entry[2] then  -- an entry deleted while pending comes back as nil (Redis 6.2)
            found[#found + 1] = {position, entry[1], entry[2]}
        end
    end
end

for i = 5, #ARGV do
    if #found >= limit then
        break
    end
    local key = ARGV[i]
    if redis.pcall('EXISTS', key) == 1 then
        local claimed = redis.pcall('XAUTOCLAIM', key, group, consumer, idle_ms, '0-0', 'COUNT', limit - #found)
        if claimed.err and string.find(claimed.err, 'NOGROUP', 1, true) then
            redis.call('XGROUP', 'CREATE', key, group, '0')
            claimed = {'0-0', {}}
        end
        if not claimed.err then
            add(i - 4, claimed[2])
            if #found < limit then
                local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', limit - #found,
                    'STREAMS', key, '>')
                if read then
                    add(i - 4, read[1][2])
                end
            end
        end
    end
end
return found
