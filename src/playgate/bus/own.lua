--[[
own.lua: hold (or give up) one queue shard, so that a single worker reads it at a time and one user's requests are
decided in the order they arrived.

KEYS[1]     the shard's owner key (its value: the consumer that reads the shard)
ARGV[1]     the consumer asking
ARGV[2]     the lease, ms: an owner that stops renewing it (it died) loses the shard after this long
ARGV[3]     "1" to hold the shard (take it if free, renew it if held), "0" to give it up if held

Returns 2 when the shard was free and is now held (the caller first claims what an earlier owner left pending),
1 when it was held already and is renewed, 0 when another consumer holds it or it was given up.
]]

local holder = redis.call('GET', KEYS[1])
if ARGV[3] ~= '1' then
    if holder == ARGV[1] then
        redis.call('DEL', KEYS[1])
    end
    return 0
end
if holder == false then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 2
end
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
