-- SPDX-License-Identifier: Apache-2.0
-- leave (gateway/ops.c sg_ops_leave)
--   KEYS: peers buckets seq acl
--   ARGV: room peer holder reason resume_ms
-- Removes the member only if this connection still holds it (a takeover may
-- have moved it). reason "lost" (the connection dropped without a close
-- frame) starts the grace period instead when resumption is on; the
-- holder's instance then watches its deadline. Sending it again is
-- harmless (the gateway does, when an answer was lost).
-- Returns {"left"}, {"grace", until_ms} or {"not_member"}.
register('leave', function(keys, args)
  local room = room_of(keys, args)
  local peer, holder, reason, resume_ms = args[2], args[3], args[4], tonumber(args[5])
  local cur = redis.call('HGET', room.peers, peer)
  if cur and reason == 'lost' and conn_of(cur) == '' then
    -- Sent again after its answer was lost (the gateway retries leaves
    -- Redis never answered): the grace period it started is this
    -- instance's to watch, so say it again.
    local rec = cjson.decode(cur)
    if rec.grace and rec.inst == inst_of(holder) then
      return {'grace', rec.grace}
    end
  end
  if not cur or conn_of(cur) ~= holder then
    return {'not_member'}
  end
  if reason == 'lost' then
    if resume_ms > 0 then
      return {'grace', enter_grace(room, peer, cjson.decode(cur), inst_of(holder), now_ms(), resume_ms)}
    end
    reason = 'disconnect'
  end
  remove_member(room, peer, reason)
  return {'left'}
end)
