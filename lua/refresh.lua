-- refresh: ARGV room, silent, lease_ms, ttl_ms, node, resume_ms, then groups
--          of five: peer, holder, subhash, joinedAt, rt (the members this node holds)
-- Renews the leases of this node's members, reaps members whose lease ran
-- out, and re-asserts members Redis lost (a restart, even an empty one):
-- silently when silent == "1" (after a reconnect, room-mates never saw them
-- go), with peer_joined otherwise (they were reaped meanwhile).
-- Returns the peers this node no longer holds (taken over elsewhere).
local silent, lease_ms, ttl_ms = ARGV[2] == '1', tonumber(ARGV[3]), tonumber(ARGV[4])
local node, resume_ms = ARGV[5], tonumber(ARGV[6])
local now = now_ms()
local keep, lost = {}, {}
for i = 7, #ARGV, 5 do
  local peer, holder = ARGV[i], ARGV[i + 1]
  local cur = redis.call('HGET', K_PEERS, peer)
  if not cur then
    local rec = {node = node, conn = holder, sub = ARGV[i + 2], joinedAt = tonumber(ARGV[i + 3])}
    if ARGV[i + 4] ~= '' then rec.rt = ARGV[i + 4] end
    redis.call('HSET', K_PEERS, peer, cjson.encode(rec))
    if not silent then broadcast(peer, peer_joined_frame(peer)) end
    cur = holder
  elseif cjson.decode(cur).conn ~= holder then
    lost[#lost + 1] = peer
    cur = nil
  end
  if cur then
    keep[peer] = true
    redis.call('ZADD', K_LEASES, now + lease_ms, peer)
    redis.call('PEXPIRE', rkey('buf:' .. peer), ttl_ms + resume_ms)
  end
end
reap(now, keep, resume_ms)
if redis.call('EXISTS', K_PEERS) == 1 then touch(ttl_ms) end
return lost
