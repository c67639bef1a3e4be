--[[
admission.lua: decide a batch of play requests, in order, atomically; each decision mirrors
playgate.admission.decide step for step.

KEYS[1]  the lease index: sorted set playgate:leases, member = stream id, score = expires_at (epoch seconds)
then, for the i-th request (i = 1..n):
KEYS[2i]      the user's streams: hash playgate:{<user id>}:streams
              field = stream id, value = JSON [video id, device id, started_at, expires_at, device name]
              (times: epoch seconds)
KEYS[2i + 1]  the request's decision: string playgate:decision:<request id>, JSON, kept decision_ttl_ms milliseconds

ARGV[1]  now, epoch seconds (the caller's clock, so that every ledger decides on the same instant)
ARGV[2]  lease_s, seconds a stream counts after its start or last renewal
ARGV[3]  decision_ttl_ms, milliseconds the decision is kept
ARGV[4]  policy: "deny" or "evict_oldest"
ARGV[4 + i]  the i-th request, JSON [the id of the stream to start if one starts, request id, user id, video id,
             device id, the stream to replace or "", the user's limit, "1" if the user is disabled,
             "1" if the user exists, "1" if the device's own stream makes way (one stream per device),
             device name]

One request travels as three strings (two keys and its JSON), not sixteen: packing the command is most of a
worker's work per decision.

Returns one JSON string per request, in order: {"decision": {...}, "ended": [[stream id, video id, device id,
started_at, expires_at, reason, device name], ...], "conflicts": [rows as in ended, reason ""]} (conflicts: the
streams holding the limit when the request is denied for it). A decision is {"r": request id, "u": user id, "v": video id,
"d": device id, "s": status, "a": active, "l": limit, "t": decided_at, "sid": stream id?, "why": reason?,
"x": expires_at?}. Times travel as '%.17g' strings: exact doubles.
]]

local now = tonumber(ARGV[1])
local lease_s = tonumber(ARGV[2])
local decision_ttl_ms = ARGV[3]
local policy = ARGV[4]
local leases = KEYS[1]

local function fmt(seconds)
    return string.format('%.17g', seconds)
end

local function row(stream, reason)
    return {stream.id, stream.video, stream.device, fmt(stream.started), fmt(stream.expires), reason, stream.name}
end

local function by_age(a, b)
    if a.started ~= b.started then
        return a.started < b.started
    end
    return a.id < b.id
end

local function admit(streams_key, decision_key, request)
    local new_stream_id, request_id, user_id = request[1], request[2], request[3]
    local video_id, device_id, replace_id = request[4], request[5], request[6]
    local limit, disabled, exists = tonumber(request[7]), request[8], request[9]
    local replace_device, device_name = request[10], request[11] or ''

    local function save(stream)
        redis.call('HSET', streams_key, stream.id,
            cjson.encode({stream.video, stream.device, fmt(stream.started), fmt(stream.expires), stream.name}))
        redis.call('ZADD', leases, fmt(stream.expires), stream.id)
    end

    local function drop(stream)
        redis.call('HDEL', streams_key, stream.id)
        redis.call('ZREM', leases, stream.id)
    end

    -- Drop expired leases: they are reported as ended (reason expired) whatever the outcome.
    local live, ended = {}, {}
    local raw = redis.call('HGETALL', streams_key)
    for i = 1, #raw, 2 do
        local v = cjson.decode(raw[i + 1])
        local stream = {id = raw[i], video = v[1], device = v[2], started = tonumber(v[3]), expires = tonumber(v[4]),
                        name = v[5] or ''}
        if stream.expires > now then
            live[#live + 1] = stream
        else
            ended[#ended + 1] = row(stream, 'expired')
            drop(stream)
        end
    end
    table.sort(live, by_age)

    local conflicts = {}
    local function reply(decision)
        return cjson.encode({decision = decision, ended = ended, conflicts = conflicts})
    end

    -- A request decided before gets its first decision again, and changes nothing.
    local prior = redis.call('GET', decision_key)
    if prior then
        return reply(cjson.decode(prior))
    end

    local function decided(status, active, decision_limit, stream, reason)
        local d = {r = request_id, u = user_id, v = video_id, d = device_id, s = status, a = active,
                   l = decision_limit, t = fmt(now)}
        if stream then
            d.sid = stream.id
            d.x = fmt(stream.expires)
        end
        if reason then
            d.why = reason
        end
        redis.call('SET', decision_key, cjson.encode(d), 'PX', decision_ttl_ms)
        return reply(d)
    end

    if exists ~= '1' then
        return decided('denied', #live, 0, nil, 'unknown_user')
    end
    if disabled == '1' then
        return decided('denied', #live, limit, nil, 'user_disabled')
    end

    -- The same device asking again for the video it plays keeps its stream and renews the lease.
    for _, stream in ipairs(live) do
        if stream.device == device_id and stream.video == video_id then
            stream.expires = now + lease_s
            save(stream)
            return decided('allowed', #live, limit, stream, nil)
        end
    end

    -- Make room: the device's own stream (one stream per device), the stream named to replace, then
    -- (evict_oldest) the oldest ones.
    local kept, freed = live, {}
    -- The streams `take(i, stream)` picks go to `freed` with `reason`; the others stay, in their order.
    local function set_aside(streams, take, reason)
        local rest = {}
        for i, stream in ipairs(streams) do
            if take(i, stream) then
                freed[#freed + 1] = {stream, reason}
            else
                rest[#rest + 1] = stream
            end
        end
        return rest
    end
    if replace_device == '1' then
        kept = set_aside(kept, function(_, stream) return stream.device == device_id end, 'replaced')
    end
    if replace_id ~= '' then
        kept = set_aside(kept, function(_, stream) return stream.id == replace_id end, 'replaced')
    end
    if policy == 'evict_oldest' and limit > 0 and #kept >= limit then
        local surplus = #kept - limit + 1
        -- kept is sorted oldest first
        kept = set_aside(kept, function(i, _) return i <= surplus end, 'evicted')
    end
    if #kept >= limit then
        -- Nothing is ended when the request is denied anyway.
        for i, stream in ipairs(live) do
            conflicts[i] = row(stream, '')
        end
        return decided('denied', #live, limit, nil, 'limit_reached')
    end

    for _, item in ipairs(freed) do
        drop(item[1])
        ended[#ended + 1] = row(item[1], item[2])
    end
    local started = {id = new_stream_id, video = video_id, device = device_id, started = now, expires = now + lease_s,
                     name = device_name}
    save(started)
    return decided('allowed', #kept + 1, limit, started, nil)
end

local replies = {}
for i = 1, #ARGV - 4 do
    replies[i] = admit(KEYS[2 * i], KEYS[2 * i + 1], cjson.decode(ARGV[4 + i]))
end
return replies
