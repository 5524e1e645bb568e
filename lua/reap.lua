-- SPDX-License-Identifier: Apache-2.0
-- reap (gateway/session_liveness.c): one room of a gateway instance taken for
-- dead (see nodes). The calling instance answers for what is left of it.
--   KEYS: peers buckets seq
--   ARGV: room dead inst resume_ms
-- Members the dead instance held enter their grace period (resumption on)
-- or leave with reason timeout; its grace periods and ghosts keep their
-- deadlines, now watched by the caller, or end if they passed.
-- Returns {peer, until, ...}: the deadlines the caller must watch.
register('reap', function(keys, args)
  local room = room_of(keys, args)
  local dead, inst, resume_ms = args[2], args[3], tonumber(args[4])
  local now = now_ms()
  local watch = {}
  local all = redis.call('HGETALL', room.peers)
  for i = 1, #all, 2 do
    local peer = all[i]
    local rec = cjson.decode(all[i + 1])
    if rec.inst == dead and redis.call('HEXISTS', room.peers, peer) == 1 then
      local deadline = deadline_of(rec)
      if deadline and deadline > now then
        rec.inst = inst
        redis.call('HSET', room.peers, peer, cjson.encode(rec))
      elseif not deadline and resume_ms > 0 then
        deadline = enter_grace(room, peer, rec, inst, now, resume_ms)
      else
        deadline = nil
        remove_member(room, peer, 'timeout')
      end
      if deadline then
        watch[#watch + 1] = peer
        watch[#watch + 1] = tostring(deadline)
      end
    end
  end
  return watch
end)
