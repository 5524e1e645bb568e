-- join: ARGV room, peer, holder, node, subhash, sub, claim_ok, max_peers,
--       lease_ms, ttl_ms, resume_ms, rt (hash of the new resume token, or "")
-- Returns {"joined"|"rejoined"|"takeover", peer, subhash, ...} (the other
-- members) or {"error", code}.
local peer, holder, node, subhash, sub = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local claim_ok, max_peers = ARGV[7] == '1', tonumber(ARGV[8])
local lease_ms, ttl_ms, resume_ms, rt = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12]

-- The token's rooms claim, or the application's acl set, must allow the room.
if not claim_ok and redis.call('SISMEMBER', KEYS[4], sub) == 0 then
  return {'error', 'forbidden'}
end

local now = now_ms()
reap(now, nil, resume_ms)

local cur = redis.call('HGET', K_PEERS, peer)
local status = 'joined'
if cur then
  local rec = cjson.decode(cur)
  if rec.conn == holder then
    -- Idempotent: the same connection joined again; nothing is broadcast.
    -- The answer carries a fresh resume token, so it replaces the old one.
    if rt ~= '' then
      rec.rt = rt
      redis.call('HSET', K_PEERS, peer, cjson.encode(rec))
    end
    redis.call('ZADD', K_LEASES, now + lease_ms, peer)
    touch(ttl_ms)
    local out = member_list(peer)
    table.insert(out, 1, 'rejoined')
    return out
  end
  -- A ghost (re-asserted by a room-mate's node, see refresh) carries its
  -- owner's sub hash and is protected like any member.
  if rec.sub ~= subhash then
    return {'error', 'peer_id_taken'}
  end
  -- Same user on a new connection: it takes the place over (also from a
  -- member in its grace period, which then starts afresh).
  if rec.conn ~= '' then
    redis.call('PUBLISH', channel(peer), envelope(rec.conn, 'x',
      '{"type":"error","code":"replaced","message":"peerId taken over by a newer connection of the same user","roomId":"' .. ROOM .. '"}'))
  end
  status = 'takeover'
elseif redis.call('HLEN', K_PEERS) >= max_peers then
  return {'error', 'room_full'}
end

drop_buffer(peer)
local rec = {node = node, conn = holder, sub = subhash, joinedAt = now}
if rt ~= '' then rec.rt = rt end
redis.call('HSET', K_PEERS, peer, cjson.encode(rec))
redis.call('ZADD', K_LEASES, now + lease_ms, peer)
broadcast(peer, peer_joined_frame(peer), subhash)
touch(ttl_ms)
local out = member_list(peer)
table.insert(out, 1, status)
return out
