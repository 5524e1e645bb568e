-- SPDX-License-Identifier: Apache-2.0
-- expire (gateway/session_liveness.c)
--   KEYS: peers buckets seq
--   ARGV: room peer until
-- A deadline this node watches has passed: the member in its grace period
-- (or the ghost) leaves with reason timeout, unless it came back or its
-- deadline moved meanwhile (then it is no longer this deadline's business).
-- Returns "expired" or "kept".
register('expire', function(keys, args)
  local room = room_of(keys, args)
  local peer, deadline = args[2], tonumber(args[3])
  local cur = redis.call('HGET', room.peers, peer)
  local rec = cur and cjson.decode(cur)
  if not rec or deadline_of(rec) ~= deadline or rec.conn ~= '' then
    return 'kept'
  end
  remove_member(room, peer, 'timeout')
  return 'expired'
end)
