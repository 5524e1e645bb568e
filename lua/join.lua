-- SPDX-License-Identifier: Apache-2.0
-- join (gateway/ops.c sg_ops_join)
--   KEYS: peers buckets seq acl
--   ARGV: room peer holder node subhash sub claim_ok max_peers resume_ms rt ttl_ms
-- Returns {"joined"|"rejoined"|"takeover", peer, subhash, ...} (the other
-- members) or {"error", code}.
register('join', function(keys, args)
  local room = room_of(keys, args)
  local peer, holder, node, subhash, sub = args[2], args[3], args[4], args[5], args[6]
  local claim_ok, max_peers, resume_ms, rt, ttl_ms = args[7], tonumber(args[8]), tonumber(args[9]), args[10],
                                                      tonumber(args[11])
  if not authorized(room, claim_ok, sub) then
    return {'error', 'forbidden'}
  end
  local cur = redis.call('HGET', room.peers, peer)
  local status = 'joined'
  if cur then
    local rec = cjson.decode(cur)
    if rec.conn == holder then
      -- Idempotent: the same connection joined again; nothing is broadcast.
      -- The answer carries a fresh resume token, so it replaces the old one.
      if rt ~= '' then
        rec.rt = rt
        redis.call('HSET', room.peers, peer, cjson.encode(rec))
      end
      local out = member_list(room, peer)
      table.insert(out, 1, 'rejoined')
      return out
    end
    -- A member of another user (a ghost too: it carries its owner's hash).
    if rec.sub ~= subhash then
      return {'error', 'peer_id_taken'}
    end
    -- Same user on a new connection: it takes the place over (also from a
    -- member in its grace period, which then starts afresh).
    if rec.conn ~= '' then
      redis.call('SPUBLISH', channel(room, peer), envelope(rec.conn, 'x',
        '{"type":"error","code":"replaced","message":"peerId taken over by a newer connection of the same user","roomId":"' .. room.id .. '"}'))
    end
    status = 'takeover'
  elseif redis.call('HLEN', room.peers) >= max_peers then
    return {'error', 'room_full'}
  end
  drop_buffer(room, peer)
  local rec = {node = node, inst = inst_of(holder), conn = holder, sub = subhash, joinedAt = now_ms()}
  if rt ~= '' then rec.rt = rt end
  redis.call('HSET', room.peers, peer, cjson.encode(rec))
  broadcast(room, peer, peer_joined_frame(room, peer), subhash)
  touch(room, ttl_ms)
  local out = member_list(room, peer)
  table.insert(out, 1, status)
  return out
end)
