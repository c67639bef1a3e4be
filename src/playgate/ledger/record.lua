--[[
record.lua: a stream as the user's streams hash keeps it; the ledger puts this in front of each script that reads
or writes that hash (admission, heartbeat, stop, expire, restore, read), so that they share one codec.

The user's streams: hash playgate:{<user id>}:streams (on a cluster playgate:{b…}:<user id>:streams)
  field  the stream id's tail after '<user id as hex>-' (the key names its user: domain.owned_id), or the whole
         id (one that names another user, or a record of the previous format; a whole id holds a '-', a tail not)
  value  JSON [started_at, video id, device id, device name, kind tags, away 0|1]: started_at a JSON number
         (epoch seconds, the shortest of '%.15g' .. '%.17g' that reads back exactly); the last ones left out
         while they hold their default ("", [], 0)
  The stream's expires_at is its score in the lease index alone (member: the whole stream id).
Small, so that a user's hash stays a listpack (Redis's hash-max-listpack-value, 64 bytes) and a stream costs
about half of what a hashtable entry does. Records of the previous format (field the whole id, value JSON
[video id, device id, started_at, expires_at, device name?, kind tags?, away?], times '%.17g' strings; told by
a string first) are read alike (their expires_at is the score's copy) and rewritten in this format
when their lease is renewed.

Replies carry a stream as its wire list, JSON [video id, device id, started_at, expires_at, device name, kind tags,
away] (times '%.17g' strings: exact doubles), or as a row of admission.lua's (with its id and a reason).
]]

local function fmt(seconds)
    return string.format('%.17g', seconds)
end

-- The shortest form among '%.15g', '%.16g', '%.17g' that reads back as `seconds`.
local function exact(seconds)
    for digits = 15, 16 do
        local text = string.format('%.' .. digits .. 'g', seconds)
        if tonumber(text) == seconds then
            return text
        end
    end
    return fmt(seconds)
end

-- '<user id as hex>-': how domain.owned_id begins the ids of the user's streams.
local function owner_prefix(user_id)
    return string.format(string.rep('%02x', #user_id), string.byte(user_id, 1, -1)) .. '-'
end

local function field_of(id, prefix)
    local tail = string.sub(id, #prefix + 1)
    if string.sub(id, 1, #prefix) == prefix and tail ~= '' and not string.find(tail, '-', 1, true) then
        return tail
    end
    return id
end

local function id_of(field, prefix)
    if string.find(field, '-', 1, true) then
        return field
    end
    return prefix .. field
end

-- The stream a hash entry holds; `score` its lease index score (false or nil: none).
local function decode(field, value, score, prefix)
    local v = cjson.decode(value)
    local id = id_of(field, prefix)
    local stream = {id = id, field = field, expires = tonumber(score)}
    if type(v[1]) == 'number' then
        stream.current = field ~= id
        stream.started, stream.video, stream.device, stream.name, stream.kinds, stream.away =
            v[1], v[2], v[3], v[4], v[5], v[6]
    else  -- the previous format
        stream.video, stream.device, stream.started, stream.name, stream.kinds, stream.away =
            v[1], v[2], tonumber(v[3]), v[5], v[6], v[7]
        stream.expires = stream.expires or tonumber(v[4])
    end
    stream.expires = stream.expires or 0  -- no lease: ran out
    stream.name = stream.name or ''
    stream.kinds = type(stream.kinds) == 'table' and stream.kinds or {}
    stream.away = stream.away or 0
    return stream
end

local function encode(stream)
    local rest, kept = {stream.video, stream.device, stream.name, stream.kinds, 1}, 2
    if stream.away == 1 then
        kept = 5
    elseif next(stream.kinds) ~= nil then
        kept = 4
    elseif stream.name ~= '' then
        kept = 3
    end
    for i = kept + 1, 5 do
        rest[i] = nil  -- the defaults at the end are left out
    end
    return '[' .. exact(stream.started) .. ',' .. string.sub(cjson.encode(rest), 2)
end

-- Every stream of the user's hash, with its expiry from the lease index (unsorted).
local function load_all(streams_key, leases, prefix)
    local raw = redis.call('HGETALL', streams_key)
    local ids = {}
    for i = 1, #raw, 2 do
        ids[#ids + 1] = id_of(raw[i], prefix)
    end
    local streams = {}
    for first = 1, #ids, 500 do
        local last = math.min(first + 499, #ids)
        local scores = redis.call('ZMSCORE', leases, unpack(ids, first, last))
        for j = first, last do
            streams[j] = decode(raw[2 * j - 1], raw[2 * j], scores[j - first + 1], prefix)
        end
    end
    return streams
end

-- The stream of that id in the user's hash, or nil.
local function find(streams_key, leases, id, prefix)
    local field = field_of(id, prefix)
    local value = redis.call('HGET', streams_key, field)
    if not value and field ~= id then
        field = id  -- a record of the previous format
        value = redis.call('HGET', streams_key, id)
    end
    if not value then
        return nil
    end
    return decode(field, value, redis.call('ZSCORE', leases, id), prefix)
end

-- Write the stream (its record, then its lease); a record of the previous format is replaced by this one.
local function save(streams_key, leases, stream, prefix)
    local field = field_of(stream.id, prefix)
    if stream.field and stream.field ~= field then
        redis.call('HDEL', streams_key, stream.field)
    end
    stream.field, stream.current = field, true
    redis.call('HSET', streams_key, field, encode(stream))
    redis.call('ZADD', leases, fmt(stream.expires), stream.id)
end

-- Move the stream's lease to stream.expires: only the lease index changes (a record of the previous format is
-- rewritten too).
local function renew(streams_key, leases, stream, prefix)
    if stream.current then
        redis.call('ZADD', leases, fmt(stream.expires), stream.id)
    else
        save(streams_key, leases, stream, prefix)
    end
end

local function remove(streams_key, leases, stream)
    redis.call('HDEL', streams_key, stream.field)
    redis.call('ZREM', leases, stream.id)
end

local function wire(stream)
    return {stream.video, stream.device, fmt(stream.started), fmt(stream.expires), stream.name, stream.kinds,
            stream.away}
end

local function row(stream, reason)
    return {stream.id, stream.video, stream.device, fmt(stream.started), fmt(stream.expires), reason, stream.name,
            stream.kinds, stream.away}
end

