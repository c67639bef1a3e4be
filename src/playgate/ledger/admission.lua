--[[
admission.lua: decide one play request of one user atomically; mirrors playgate.admission.decide step for step.

KEYS[1]  the user's streams: hash playgate:{<user id>}:streams
         field = stream id, value = JSON [video id, device id, started_at, expires_at] (times: epoch seconds)
KEYS[2]  the lease index: sorted set playgate:leases, member = stream id, score = expires_at (epoch seconds)
KEYS[3]  the request's decision: string playgate:decision:<request id>, JSON, kept decision_ttl_ms milliseconds

ARGV[1]  now, epoch seconds (the caller's clock, so that every ledger decides on the same instant)
ARGV[2]  lease_s, seconds a stream counts after its start or last renewal
ARGV[3]  decision_ttl_ms, milliseconds the decision is kept
ARGV[4]  policy: "deny" or "evict_oldest"
ARGV[5]  the id of the stream to start, if one starts
ARGV[6]  request id    ARGV[7] user id    ARGV[8] video id    ARGV[9] device id
ARGV[10] the stream to replace, "" for none
ARGV[11] the user's limit (streams)    ARGV[12] "1" if the user is disabled    ARGV[13] "1" if the user exists

Returns JSON {"decision": {...}, "ended": [[stream id, video id, device id, started_at, expires_at, reason], ...]}.
A decision is {"r": request id, "u": user id, "v": video id, "d": device id, "s": status, "a": active, "l": limit,
"t": decided_at, "sid": stream id?, "why": reason?, "x": expires_at?}. Times travel as '%.17g' strings: exact doubles.
]]

local now = tonumber(ARGV[1])
local lease_s = tonumber(ARGV[2])
local limit = tonumber(ARGV[11])

local function fmt(seconds)
    return string.format('%.17g', seconds)
end

local function row(stream, reason)
    return {stream.id, stream.video, stream.device, fmt(stream.started), fmt(stream.expires), reason}
end

local function save(stream)
    redis.call('HSET', KEYS[1], stream.id,
        cjson.encode({stream.video, stream.device, fmt(stream.started), fmt(stream.expires)}))
    redis.call('ZADD', KEYS[2], fmt(stream.expires), stream.id)
end

local function drop(stream)
    redis.call('HDEL', KEYS[1], stream.id)
    redis.call('ZREM', KEYS[2], stream.id)
end

local function by_age(a, b)
    if a.started ~= b.started then
        return a.started < b.started
    end
    return a.id < b.id
end

-- Drop expired leases: they are reported as ended (reason expired) whatever the outcome.
local live, ended = {}, {}
local raw = redis.call('HGETALL', KEYS[1])
for i = 1, #raw, 2 do
    local v = cjson.decode(raw[i + 1])
    local stream = {id = raw[i], video = v[1], device = v[2], started = tonumber(v[3]), expires = tonumber(v[4])}
    if stream.expires > now then
        live[#live + 1] = stream
    else
        ended[#ended + 1] = row(stream, 'expired')
        drop(stream)
    end
end
table.sort(live, by_age)

local function reply(decision)
    return cjson.encode({decision = decision, ended = ended})
end

-- A request decided before gets its first decision again, and changes nothing.
local prior = redis.call('GET', KEYS[3])
if prior then
    return reply(cjson.decode(prior))
end

local function decided(status, active, decision_limit, stream, reason)
    local d = {r = ARGV[6], u = ARGV[7], v = ARGV[8], d = ARGV[9], s = status, a = active, l = decision_limit,
               t = fmt(now)}
    if stream then
        d.sid = stream.id
        d.x = fmt(stream.expires)
    end
    if reason then
        d.why = reason
    end
    redis.call('SET', KEYS[3], cjson.encode(d), 'PX', ARGV[3])
    return reply(d)
end

if ARGV[13] ~= '1' then
    return decided('denied', #live, 0, nil, 'unknown_user')
end
if ARGV[12] == '1' then
    return decided('denied', #live, limit, nil, 'user_disabled')
end

-- The same device asking again for the video it plays keeps its stream and renews the lease.
for _, stream in ipairs(live) do
    if stream.device == ARGV[9] and stream.video == ARGV[8] then
        stream.expires = now + lease_s
        save(stream)
        return decided('allowed', #live, limit, stream, nil)
    end
end

-- Make room: the stream named to replace, then (evict_oldest) the oldest ones.
local kept, freed = live, {}
if ARGV[10] ~= '' then
    local rest = {}
    for _, stream in ipairs(live) do
        if stream.id == ARGV[10] then
            freed[#freed + 1] = {stream, 'replaced'}
        else
            rest[#rest + 1] = stream
        end
    end
    kept = rest
end
if ARGV[4] == 'evict_oldest' and limit > 0 and #kept >= limit then
    local surplus = #kept - limit + 1
    local rest = {}
    for i, stream in ipairs(kept) do -- kept is sorted oldest first
        if i <= surplus then
            freed[#freed + 1] = {stream, 'evicted'}
        else
            rest[#rest + 1] = stream
        end
    end
    kept = rest
end
if #kept >= limit then
    -- Nothing is ended when the request is denied anyway.
    return decided('denied', #live, limit, nil, 'limit_reached')
end

for _, item in ipairs(freed) do
    drop(item[1])
    ended[#ended + 1] = row(item[1], item[2])
end
local started = {id = ARGV[5], video = ARGV[8], device = ARGV[9], started = now, expires = now + lease_s}
save(started)
return decided('allowed', #kept + 1, limit, started, nil)
