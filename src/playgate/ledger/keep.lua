--[[
keep.lua: keep a decision made without the rule (a request the queue gave up on, one decided in an outage) unless
the request has one, and log it.

KEYS[1]  the request's decision: string playgate:decision:<request id> (admission.lua's KEYS[4i - 1])
KEYS[2]  the change log beside the user's lease index: stream playgate:events (admission.lua says its entries)
ARGV[1]  the decision, JSON as admission.lua keeps it    ARGV[2] decision_ttl_ms, milliseconds it is kept

Returns 1 when it was kept (and logged), 0 when the request had a decision already.
]]

if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 0
end
redis.call('XADD', KEYS[2], '*', 'd', ARGV[1])
return 1
