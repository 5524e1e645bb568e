-- leave: ARGV room, peer, holder, reason, resume_ms
-- Removes the member only if this connection still holds it (a takeover may
-- have moved it). reason "lost" (the connection dropped without a close
-- frame) starts the grace period instead when resumption is on.
-- Returns "left", "grace" or "not_member".
local peer, holder, reason, resume_ms = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local cur = redis.call('HGET', K_PEERS, peer)
local rec = cur and cjson.decode(cur)
if not rec or rec.conn ~= holder then
  return 'not_member'
end
if reason == 'lost' then
  if resume_ms > 0 then
    enter_grace(peer, rec, now_ms(), resume_ms)
    return 'grace'
  end
  reason = 'disconnect'
end
remove_member(peer, reason)
return 'left'
