--[[
admission.lua: decide a batch of play requests, in order, atomically; each decision mirrors
playgate.admission.decide step for step.

For the i-th request (i = 1..n), four keys, all in the user's hash slot on a Redis Cluster:
KEYS[4i - 3]  the lease index holding the user's streams: sorted set, member = stream id, score = expires_at
              (epoch seconds); playgate:leases on one server, one per bucket on a cluster (connections.KeyLayout)
KEYS[4i - 2]  the user's streams: hash playgate:{<user id>}:streams, a record a stream (record.lua, which the
              ledger puts in front of this script, says its format; expires_at is the lease index's score alone)
KEYS[4i - 1]  the request's decision: string, JSON, kept decision_ttl_ms milliseconds
              (playgate:decision:<request id>; playgate:{b…}:decision:<request id> on a cluster)
KEYS[4i]      the user's devices: hash playgate:{<user id>}:devices, field = device id, value = last seen (epoch s)
On a cluster one call may hold the requests of several slots of one node: the ledger loads the script with the
flag allow-cross-slot-keys, passes no KEYS, and sends the 4n keys after the n requests, ARGV[3 + n + 1 ..]
(Redis refuses declared keys of several slots, not undeclared ones served by the node).

ARGV[1]  now, epoch seconds (the caller's clock, so that every ledger decides on the same instant)
ARGV[2]  lease_s, seconds a stream counts after its start or last renewal
ARGV[3]  decision_ttl_ms, milliseconds the decision is kept
ARGV[3 + i]  the i-th request, JSON [the id of the stream to start if one starts, request id, user id, video id,
             device id, the ids of the streams to replace (a JSON array), the user's limit, "1" if the user is disabled,
             "1" if the user exists, "1" if the device's own stream makes way (one stream per device),
             device name, the video's kind tags, 1 if away from the household, seconds the devices are kept
             (0: no device is registered), rules, shadow rules or false, 1 if every other stream of the user
             makes way ("Watch here") else 0, the instant after which a stream of the device was started by a
             later request of it (accepted at, plus the clocks' tolerance: then this one is `superseded`)]
             rules: {p = on-limit policy, k = [[kind tag, cap], ...], t = max per title, d = max devices,
             w = device window seconds, a = max away streams, m = total (shadow only; else the user's limit)};
             absent: no such cap

One request travels as five strings (four keys and its JSON), not twenty: packing the command is most of a
worker's work per decision.

Each change is logged beside it, in the same call (so in the same slot, atomically): to the stream named as the
lease index with `events` for `leases` (playgate:events; playgate:{b…}:events on a cluster; undeclared, as it
follows from KEYS[4i - 3]), one entry per request that changed something: a new decision `d` (the decision's JSON,
as kept), with the streams it ended `e` (rows as in "ended" below) if any; or, for a request decided before whose
call still dropped expired leases, `u` user id, `t` now and `e` those rows. The audit trail drains it
(playgate.audit).

Returns one JSON string per request, in order: {"decision": {...}, "ended": [[stream id, video id, device id,
started_at, expires_at, reason, device name, kind tags, away], ...], "conflicts": [rows as in ended, reason ""]}
(conflicts: the streams the denying cap counts, when a cap denies the request). A decision is {"r": request id,
"u": user id, "v": video id, "d": device id, "s": status, "a": active, "l": limit, "t": decided_at, "sid": stream id?, "why": reason?,
"x": expires_at?, "sh": the shadow's would-be denial?, "st": the stream's started_at?, "aw": true if the stream plays
away from the household?} (sid, x and st: an allowed decision's stream, its start earlier than t when the device
asked again for the stream it plays; decisions kept before st and aw were added lack them). Times travel as '%.17g'
strings: exact doubles.
]]

local now = tonumber(ARGV[1])
local lease_s = tonumber(ARGV[2])
local decision_ttl_ms = ARGV[3]

local function has(list, item)
    for _, value in ipairs(list) do
        if value == item then
            return true
        end
    end
    return false
end

local function filter(streams, keep)
    local found = {}
    for _, stream in ipairs(streams) do
        if keep(stream) then
            found[#found + 1] = stream
        end
    end
    return found
end

local function by_age(a, b)
    if a.started ~= b.started then
        return a.started < b.started
    end
    return a.id < b.id
end

-- Whether `device_id` is a new device past the cap: not among the devices seen within the window, and those fill
-- max devices. `recent` memoises the count per window, so that the shadow and the enforced rules count once.
local function new_device_over_cap(device_id, known, rules, recent)
    local found = recent[rules.w]
    if not found then
        local since, count, seen = now - rules.w, 0, false
        for device, seen_at in pairs(known) do
            if seen_at > since then
                count = count + 1
                seen = seen or device == device_id
            end
        end
        found = {count, seen}
        recent[rules.w] = found
    end
    return not found[2] and found[1] >= rules.d
end

local function every()
    return true
end

local function count(streams, counts)
    local n = 0
    for _, stream in ipairs(streams) do
        if counts(stream) then
            n = n + 1
        end
    end
    return n
end

-- The first cap the new stream would break: its reason, the cap, and which streams it counts (nil: all fit).
-- Caps the rules do not set, and kind caps of tags the video lacks, cost nothing.
local function first_full(req, kept, rules, limit)
    if #kept >= limit then
        return 'limit_reached', limit, every
    end
    if rules.k and #req.kinds > 0 then
        for _, pair in ipairs(rules.k) do
            local tag, cap = pair[1], pair[2]
            if has(req.kinds, tag) then
                local counts = function(s) return has(s.kinds, tag) end
                if count(kept, counts) >= cap then
                    return 'kind_limit:' .. tag, cap, counts
                end
            end
        end
    end
    if rules.t then
        local same_title = function(s) return s.video == req.video end
        if count(kept, same_title) >= rules.t then
            return 'title_limit', rules.t, same_title
        end
    end
    if req.away == 1 and rules.a then
        local away = function(s) return s.away == 1 end
        if count(kept, away) >= rules.a then
            return 'household_limit', rules.a, away
        end
    end
    return nil
end

-- The stream to evict: the oldest of `scope`, or the asking device's oldest first if the policy says so.
local function oldest(scope, device_id, policy)
    local pool = scope
    if policy == 'evict_oldest_on_same_device_first' then
        local mine = filter(scope, function(s) return s.device == device_id end)
        if #mine > 0 then
            pool = mine
        end
    end
    local best = nil
    for _, stream in ipairs(pool) do
        if best == nil or by_age(stream, best) then
            best = stream
        end
    end
    return best
end

-- playgate.admission._make_way: the streams kept and those freed ({stream, reason}) before any cap is looked at
-- (the device's own stream, one stream per device; the stream named to replace). The same for the shadow.
local function make_way(req, live)
    local kept, freed = live, {}
    -- The streams `take(stream)` picks go to `freed` with `reason`; the others stay, in their order.
    local function set_aside(streams, take, reason)
        local rest = {}
        for _, stream in ipairs(streams) do
            if take(stream) then
                freed[#freed + 1] = {stream, reason}
            else
                rest[#rest + 1] = stream
            end
        end
        return rest
    end
    if req.replace_device == '1' then
        kept = set_aside(kept, function(s) return s.device == req.device end, 'replaced')
    end
    if req.replace_others == 1 then
        kept = set_aside(kept, every, 'replaced')
    elseif next(req.replace) ~= nil then
        kept = set_aside(kept, function(s) return req.replace[s.id] ~= nil end, 'replaced')
    end
    return kept, freed
end

-- playgate.admission._fit: the streams kept and those freed, or the reason that denies and the live streams its
-- cap counts (the conflicts; only when `want_conflicts`: the shadow's would-be denial names its rule alone).
local function admit_rule(req, live, way_kept, way_freed, rules, limit, known, recent, want_conflicts)
    local kept, freed = way_kept, {}
    for i, item in ipairs(way_freed) do
        freed[i] = item
    end
    if rules.d and new_device_over_cap(req.device, known, rules, recent) then
        return live, {}, 'device_limit', {}
    end
    local policy = rules.p or 'deny'
    for _ = 1, #kept + 1 do
        local reason, cap, counts = first_full(req, kept, rules, limit)
        if not reason then
            return kept, freed, nil, {}
        end
        if policy == 'deny' or cap <= 0 then
            return live, {}, reason, want_conflicts and filter(live, counts) or {}
        end
        local victim = oldest(filter(kept, counts), req.device, policy)
        kept = filter(kept, function(s) return s.id ~= victim.id end)
        freed[#freed + 1] = {victim, 'evicted'}
    end
    error('admission: eviction did not converge')
end

local function admit(leases, streams_key, decision_key, devices_key, request)
    local new_stream_id, request_id, user_id = request[1], request[2], request[3]
    local video_id, device_id = request[4], request[5]
    local limit, disabled, exists = tonumber(request[7]), request[8], request[9]
    local replace = {}
    for _, id in ipairs(request[6]) do
        replace[id] = true
    end
    local req = {video = video_id, device = device_id, replace = replace, replace_device = request[10],
                 kinds = request[12], away = request[13], replace_others = request[17]}
    local device_name = request[11] or ''
    local device_window_s, rules, shadow = request[14], request[15], request[16]
    local superseded_after = tonumber(request[18])  -- accepted, plus the clocks' tolerance (SUPERSEDED_AFTER_S)
    local events = string.sub(leases, 1, -7) .. 'events'  -- beside the lease index: 'leases' -> 'events'
    local prefix = owner_prefix(user_id)

    -- Drop expired leases: they are reported as ended (reason expired) whatever the outcome.
    local live, ended = {}, {}
    for _, stream in ipairs(load_all(streams_key, leases, prefix)) do
        if stream.expires > now then
            live[#live + 1] = stream
        else
            ended[#ended + 1] = row(stream, 'expired')
            remove(streams_key, leases, stream)
        end
    end
    table.sort(live, by_age)

    local conflicts = {}
    local function reply(decision, again)
        return cjson.encode({decision = decision, ended = ended, conflicts = conflicts, again = again})
    end

    -- A request decided before gets its first decision again, and changes nothing (but the expired leases dropped).
    local prior = redis.call('GET', decision_key)
    if prior then
        if #ended > 0 then
            redis.call('XADD', events, '*', 'u', user_id, 't', fmt(now), 'e', cjson.encode(ended))
        end
        return reply(cjson.decode(prior), true)
    end

    local function decided(status, active, decision_limit, stream, reason, shadow_denial)
        local d = {r = request_id, u = user_id, v = video_id, d = device_id, s = status, a = active,
                   l = decision_limit, t = fmt(now)}
        if stream then
            d.sid = stream.id
            d.x = fmt(stream.expires)
            d.st = fmt(stream.started)
            if stream.away == 1 then
                d.aw = true
            end
        end
        if reason then
            d.why = reason
        end
        if shadow_denial then
            d.sh = shadow_denial
        end
        local encoded = cjson.encode(d)
        redis.call('SET', decision_key, encoded, 'PX', decision_ttl_ms)
        local policy = (rules and rules.p) or 'deny'
        if #ended > 0 then
            redis.call('XADD', events, '*', 'd', encoded, 'p', policy, 'e', cjson.encode(ended))
        else
            redis.call('XADD', events, '*', 'd', encoded, 'p', policy)
        end
        return reply(d)
    end

    if exists ~= '1' then
        return decided('denied', #live, 0, nil, 'unknown_user', nil)
    end
    if disabled == '1' then
        return decided('denied', #live, limit, nil, 'user_disabled', nil)
    end

    -- The same device asking again for the video it plays keeps its stream and renews the lease.
    for _, stream in ipairs(live) do
        if stream.device == device_id and stream.video == video_id then
            stream.expires = now + lease_s
            renew(streams_key, leases, stream, prefix)
            return decided('allowed', #live, limit, stream, nil, nil)
        end
    end

    -- playgate.admission.superseded: a later request of this device was decided first; its stream stays.
    if req.replace_device == '1' then
        for _, stream in ipairs(live) do
            if stream.device == device_id and stream.started > superseded_after then
                return decided('denied', #live, limit, nil, 'superseded', nil)
            end
        end
    end

    local known = {}
    if device_window_s > 0 then
        local raw_devices = redis.call('HGETALL', devices_key)
        for i = 1, #raw_devices, 2 do
            known[raw_devices[i]] = tonumber(raw_devices[i + 1])
        end
    end
    -- One pass for both rule sets: the way made, and the devices counted, once.
    local way_kept, way_freed = make_way(req, live)
    local recent = {}
    local shadow_denial = nil
    if shadow then
        local _, _, denial = admit_rule(req, live, way_kept, way_freed, shadow, shadow.m or limit, known, recent, false)
        shadow_denial = denial
    end
    local kept, freed, denial, holding = admit_rule(req, live, way_kept, way_freed, rules, limit, known, recent, true)
    if denial then
        for i, stream in ipairs(holding) do
            conflicts[i] = row(stream, '')
        end
        return decided('denied', #live, limit, nil, denial, shadow_denial)
    end

    for _, item in ipairs(freed) do
        remove(streams_key, leases, item[1])
        ended[#ended + 1] = row(item[1], item[2])
    end
    -- The device is seen now; those not seen within the window are forgotten.
    if device_window_s > 0 then
        for device, seen in pairs(known) do
            if device ~= device_id and seen <= now - device_window_s then
                redis.call('HDEL', devices_key, device)
            end
        end
        redis.call('HSET', devices_key, device_id, fmt(now))
    end
    local started = {id = new_stream_id, video = video_id, device = device_id, started = now, expires = now + lease_s,
                     name = device_name, kinds = req.kinds, away = req.away}
    save(streams_key, leases, started, prefix)
    return decided('allowed', #kept + 1, limit, started, nil, shadow_denial)
end

-- The keys: declared (KEYS), or, for a call that spans several slots of one cluster node, undeclared after the
-- requests in ARGV. Those, and the change log beside each lease index (undeclared either way), are first all touched
-- read-only: a slot moving away (MOVED, ASK) fails the call before anything is written, and the caller decides its
-- requests again one slot a call. (Redis checks declared keys itself.)
local function reachable(key)
    local reached = redis.pcall('EXISTS', key)
    if type(reached) == 'table' and reached.err then
        return reached.err
    end
    return nil
end
local keys, n = KEYS, #ARGV - 3
if #KEYS == 0 then
    n = n / 5
    keys = {}
end
local seen_logs = {}  -- lease index -> its change log checked
for i = 1, 4 * n do
    local err = nil
    if #KEYS == 0 then
        keys[i] = ARGV[3 + n + i]
        err = reachable(keys[i])
    end
    if not err and i % 4 == 1 and not seen_logs[keys[i]] then
        seen_logs[keys[i]] = true
        err = reachable(string.sub(keys[i], 1, -7) .. 'events')
    end
    if err then
        return redis.error_reply('TRYAGAIN ' .. err)
    end
end
local replies = {}
for i = 1, n do
    replies[i] = admit(keys[4 * i - 3], keys[4 * i - 2], keys[4 * i - 1], keys[4 * i], cjson.decode(ARGV[3 + i]))
end
return replies
