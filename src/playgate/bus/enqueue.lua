--[[
enqueue.lua: queue a play request and mark it pending, both or neither (one script: a MULTI that a Redis Cluster
client can send too, since every key lies in the queue's slot).

KEYS[1]  the request's pending marker (string, JSON of the request), kept ARGV[2] milliseconds
KEYS[2]  the request stream (entries with one field `r`: the request's JSON), trimmed to about ARGV[3] entries
ARGV[1]  the request as JSON    ARGV[2] pending_ttl_ms    ARGV[3] maxlen

Returns the stream entry's id; nil, adding nothing, when the request is pending already (the same call again: a
client's retry after its reply was lost, which must not queue the request twice).
]]

if not redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
    return nil
end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'r', ARGV[1])
