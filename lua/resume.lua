-- SPDX-License-Identifier: Apache-2.0
-- resume (gateway/ops.c sg_ops_resume)
--   KEYS: peers buckets seq acl
--   ARGV: room peer holder node subhash rt_old rt_new last_seq claim_ok sub ttl_ms
--         settings (lua/relay.lua's: the buffer's caps)
-- A new connection of the same user takes its membership back, silently,
-- and gets every buffered relay after last_seq. It must be authorized for
-- the room as a join would be.
-- Returns {"resumed", {peer, subhash, ...}, {seq, frame, seq, frame...}, seq}
-- (seq: the last relay seq to the peer, so a lastSeq from the future does
-- not hide the next relays) or {"error", "resume_failed"}, or {"error",
-- "kicked", reason} for a member kicked while it was away.
register('resume', function(keys, args)
  local room = room_of(keys, args)
  local peer, holder, node, subhash = args[2], args[3], args[4], args[5]
  local rt_old, rt_new, last_seq = args[6], args[7], tonumber(args[8])
  if not authorized(room, args[9], args[10]) then
    return {'error', 'resume_failed'}
  end
  local cur = redis.call('HGET', room.peers, peer)
  local rec = cur and cjson.decode(cur)
  if not rec then
    -- Kicked while away (lua/control.lua kicked_mark): say so to the holder
    -- of that membership's token, with the application's reason.
    local mark = redis.call('GET', rkey(room, 'kicked:' .. peer))
    local rt, reason = string.match(mark or '', '^([^\n]*)\n(.*)$')
    if rt and rt == rt_old then
      return {'error', 'kicked', reason}
    end
    return {'error', 'resume_failed'}
  end
  if rec.sub ~= subhash or not rec.rt or rec.rt ~= rt_old or rec.ghost then
    return {'error', 'resume_failed'}
  end
  if rec.grace and rec.grace <= now_ms() then
    -- The grace period is over even if its watcher has not acted yet.
    remove_member(room, peer, 'timeout')
    return {'error', 'resume_failed'}
  end
  -- The old connection may not have been noticed as lost yet: it gives way.
  if rec.conn ~= '' and rec.conn ~= holder then
    redis.call('SPUBLISH', channel(room, peer), envelope(rec.conn, 'x',
      '{"type":"error","code":"replaced","message":"peerId resumed by a newer connection of the same user","roomId":"' .. room.id .. '"}'))
  end
  rec.conn, rec.node, rec.inst, rec.rt, rec.grace = holder, node, inst_of(holder), rt_new, nil
  redis.call('HSET', room.peers, peer, cjson.encode(rec))
  touch(room, tonumber(args[11]))
  local replay, cur = buffered_after(room, peer, last_seq, relay_settings(args[12]))
  return {'resumed', member_list(room, peer), replay, cur}
end)
