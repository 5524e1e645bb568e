-- SPDX-License-Identifier: Apache-2.0
-- reassert (gateway/session_liveness.c): several rooms in one call; KEYS are
-- the peers, buckets and seq keys of each room in turn (one hash slot per
-- call in a cluster: the gateway batches by slot).
--   ARGV: silent ttl_ms node inst ghost_ms nrooms, then per room:
--         room nghosts (peer subhash)*nghosts nmembers (peer holder subhash joinedAt rt)*nmembers
-- Puts back the members this node holds wherever Redis lost them (an empty
-- restart, or the node was taken for dead and reaped): silently when silent
-- is "1" (after a reconnect: room-mates never saw them go), with
-- peer_joined otherwise. A member in its grace period with this member's
-- sub and resume token hashes is taken back silently: it never left.
-- After a reconnect, room-mates held elsewhere come back as ghosts with a
-- deadline this node watches: their own node re-asserts them, or the
-- deadline passes and the room hears peer_left "timeout".
-- Renews the TTLs of the room's keys (and of the buffers of its members).
-- Returns per room {lost, members, watch}: peers this node no longer holds
-- (taken over elsewhere), the members when silent ({} otherwise), and
-- {peer, until, ...} for the ghosts it wrote.
register('reassert', function(keys, args)
  local silent, ttl_ms, node, inst, ghost_ms = args[1] == '1', tonumber(args[2]), args[3], args[4], tonumber(args[5])
  local now = now_ms()
  local out, a = {}, 7
  for r = 1, tonumber(args[6]) do
    local room = {id = args[a], peers = keys[3 * r - 2], buckets = keys[3 * r - 1], seq = keys[3 * r]}
    local nghosts = tonumber(args[a + 1])
    a = a + 2
    local watch = {}
    for i = a, a + 2 * (nghosts - 1), 2 do
      if redis.call('HEXISTS', room.peers, args[i]) == 0 then
        redis.call('HSET', room.peers, args[i], cjson.encode(
          {node = '', inst = inst, conn = '', sub = args[i + 1], joinedAt = now, ghost = true, ['until'] = now + ghost_ms}))
        watch[#watch + 1] = args[i]
        watch[#watch + 1] = tostring(now + ghost_ms)
      end
    end
    a = a + 2 * nghosts
    local nmembers = tonumber(args[a])
    a = a + 1
    local lost = {}
    for i = a, a + 5 * (nmembers - 1), 5 do
      local peer, holder, subhash, rt = args[i], args[i + 1], args[i + 2], args[i + 4]
      local cur = redis.call('HGET', room.peers, peer)
      local rec = cur and cjson.decode(cur)
      local ours = rec and (rec.conn == holder or rec.ghost or
                            (rec.conn == '' and rec.sub == subhash and rt ~= '' and rec.rt == rt))
      if not rec or ours then
        if not rec or rec.conn ~= holder or rec.inst ~= inst then
          local new = {node = node, inst = inst, conn = holder, sub = subhash, joinedAt = tonumber(args[i + 3])}
          if rt ~= '' then new.rt = rt end
          redis.call('HSET', room.peers, peer, cjson.encode(new))
          if not silent and not rec then broadcast(room, peer, peer_joined_frame(room, peer), subhash) end
        end
        extend(buf_key(room, peer), ttl_ms)
      else
        lost[#lost + 1] = peer
      end
    end
    a = a + 5 * nmembers
    touch(room, ttl_ms)
    out[r] = {lost, silent and member_list(room, nil) or {}, watch}
  end
  return out
end)
