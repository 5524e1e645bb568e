-- refresh: ARGV room, silent, lease_ms, ttl_ms, node, resume_ms, ghost_ms,
--          nghosts, then nghosts peers (room-mates held elsewhere, as this
--          node last knew them), then groups of five: peer, holder, subhash,
--          joinedAt, rt (the members this node holds)
-- Renews the leases of this node's members, reaps members whose lease ran
-- out, and re-asserts members Redis lost (a restart, even an empty one):
-- silently when silent == "1" (after a reconnect, room-mates never saw them
-- go), with peer_joined otherwise (they were reaped meanwhile).
-- Room-mates Redis lost come back as ghosts with a lease of ghost_ms: their
-- own node re-asserts them when it reconnects; if none does (they left, or
-- their node died, while Redis was away) the lease runs out and this room
-- hears peer_left "timeout" instead of keeping them forever.
-- Returns {peers this node no longer holds (taken over elsewhere), members}.
local silent, lease_ms, ttl_ms = ARGV[2] == '1', tonumber(ARGV[3]), tonumber(ARGV[4])
local node, resume_ms, ghost_ms = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local nghosts = tonumber(ARGV[8])
local now = now_ms()
local keep, lost = {}, {}
for i = 9, 8 + nghosts do
  local peer = ARGV[i]
  if redis.call('HEXISTS', K_PEERS, peer) == 0 then
    redis.call('HSET', K_PEERS, peer, cjson.encode(
      {node = '', conn = '', sub = '', joinedAt = now, ghost = true}))
    redis.call('ZADD', K_LEASES, now + ghost_ms, peer)
  end
end
for i = 9 + nghosts, #ARGV, 5 do
  local peer, holder = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', K_PEERS, peer)
  local rec = cur and cjson.decode(cur)
  if not rec or rec.ghost then
    rec = {node = node, conn = holder, sub = ARGV[i + 2], joinedAt = tonumber(ARGV[i + 3])}
    if ARGV[i + 4] ~= '' then rec.rt = ARGV[i + 4] end
    redis.call('HSET', K_PEERS, peer, cjson.encode(rec))
    -- A ghost was in the room-mates' view all along: nothing to announce.
    if not silent and not cur then broadcast(peer, peer_joined_frame(peer)) end
  elseif rec.conn ~= holder then
    lost[#lost + 1] = peer
    rec = nil
  end
  if rec then
    keep[peer] = true
    redis.call('ZADD', K_LEASES, now + lease_ms, peer)
    redis.call('PEXPIRE', rkey('buf:' .. peer), ttl_ms + resume_ms)
  end
end
reap(now, keep, resume_ms)
if redis.call('EXISTS', K_PEERS) == 1 then touch(ttl_ms) end
return {lost, member_list(nil)}
