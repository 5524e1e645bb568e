-- refresh: several rooms in one call (KEYS: the four keys of each room in
-- turn). ARGV: first room, silent, lease_ms, ttl_ms, node, resume_ms,
-- ghost_ms, nrooms, then per room: room id, nghosts, that many pairs of peer
-- and sub hash (room-mates held elsewhere, as this node last knew them),
-- nmembers, and
-- groups of five: peer, holder, subhash, joinedAt, rt (the members this node
-- holds there).
-- Renews the leases of this node's members, reaps members whose lease ran
-- out, and re-asserts members Redis lost (a restart, even an empty one):
-- silently when silent == "1" (after a reconnect, room-mates never saw them
-- go), with peer_joined otherwise (they were reaped meanwhile).
-- Room-mates Redis lost come back as ghosts with a lease of ghost_ms: their
-- own node re-asserts them when it reconnects; if none does (they left, or
-- their node died, while Redis was away) the lease runs out and the room
-- hears peer_left "timeout" instead of keeping them forever.
-- Returns, per room, {peers this node no longer holds (taken over
-- elsewhere), members} — members only when silent (the node rebuilds its view
-- of room-mates after a reconnect; events keep it current otherwise).
-- Idle rooms are what this costs: the periodic refresh decodes no record and
-- renews the keys' TTLs only once a lease has gone by.
local silent, lease_ms, ttl_ms = ARGV[2] == '1', tonumber(ARGV[3]), tonumber(ARGV[4])
local node, resume_ms, ghost_ms = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_ms()
local out, a = {}, 9
for r = 1, tonumber(ARGV[8]) do
  -- lib.lua's helpers work on "the room": point them at this one.
  K_PEERS, K_LEASES, K_BUCKETS = KEYS[4 * r - 3], KEYS[4 * r - 2], KEYS[4 * r - 1]
  ROOM = ARGV[a]
  local nghosts = tonumber(ARGV[a + 1])
  a = a + 2
  for i = a, a + 2 * (nghosts - 1), 2 do
    if redis.call('HEXISTS', K_PEERS, ARGV[i]) == 0 then
      redis.call('HSET', K_PEERS, ARGV[i], cjson.encode(
        {node = '', conn = '', sub = ARGV[i + 1], joinedAt = now, ghost = true}))
      redis.call('ZADD', K_LEASES, now + ghost_ms, ARGV[i])
    end
  end
  a = a + 2 * nghosts
  local nmembers = tonumber(ARGV[a])
  a = a + 1
  local keep, lost = {}, {}
  for i = a, a + 5 * (nmembers - 1), 5 do
    local peer, holder = ARGV[i], ARGV[i + 1]
    local cur = redis.call('HGET', K_PEERS, peer)
    local held = cur and conn_of(cur) == holder
    if not cur or string.find(cur, '"ghost":true', 1, true) then
      local rec = {node = node, conn = holder, sub = ARGV[i + 2], joinedAt = tonumber(ARGV[i + 3])}
      if ARGV[i + 4] ~= '' then rec.rt = ARGV[i + 4] end
      redis.call('HSET', K_PEERS, peer, cjson.encode(rec))
      -- A ghost was in the room-mates' view all along: nothing to announce.
      if not silent and not cur then broadcast(peer, peer_joined_frame(peer), ARGV[i + 2]) end
      held = true
    elseif not held then
      lost[#lost + 1] = peer
    end
    if held then
      keep[peer] = true
      redis.call('ZADD', K_LEASES, now + lease_ms, peer)
    end
  end
  a = a + 5 * nmembers
  reap(now, keep, resume_ms)
  -- Keys live 3 leases; renewing them once a lease is enough (-1: a key
  -- just re-created without a TTL; -2: the room is gone).
  local left = redis.call('PTTL', K_PEERS)
  if left == -1 or (left >= 0 and left < ttl_ms - lease_ms) then touch(ttl_ms) end
  out[r] = silent and {lost, member_list(nil)} or {lost}
end
return out
