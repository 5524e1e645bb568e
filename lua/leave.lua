-- leave: ARGV room, peer, holder, reason
-- Removes the member only if this connection still holds it (a takeover may
-- have moved it). Returns "left" or "not_member".
local peer, holder, reason = ARGV[2], ARGV[3], ARGV[4]
local cur = redis.call('HGET', K_PEERS, peer)
if not cur or cjson.decode(cur).conn ~= holder then
  return 'not_member'
end
remove_member(peer, reason)
return 'left'
