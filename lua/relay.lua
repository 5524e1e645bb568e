-- SPDX-License-Identifier: Apache-2.0
-- relay (gateway/ops.c sg_ops_relay): the hot path, so it reads both
-- members in one HMGET, all buckets in one HMGET and one HSET, asks for the
-- time only when a bucket is on, and leaves TTLs to the room's nodes.
--   KEYS: peers buckets seq
--   ARGV: room from to holder kind ts_us traceparent frame
--         peer_interval peer_tolerance cand_interval cand_tolerance
--         room_interval room_tolerance resume_ms buf_max buf_bytes ttl_ms
-- Buckets are GCRA cells (one integer each, the theoretical arrival time in
-- µs): a bucket of RATE/BURST has an interval of 1e6/RATE µs and a
-- tolerance of (BURST-1) intervals; an interval of 0 turns it off. Cells
-- are written as integers ('%d'): no fraction to format or parse.
-- Returns {"ok", "delivered"|"buffered", seq} or {"error", code} or
-- {"rate_limited", scope}.
register('relay', function(keys, args)
  local room = room_of(keys, args)
  local from, to, holder = args[2], args[3], args[4]
  local both = redis.call('HMGET', room.peers, from, to)
  if not both[1] or conn_of(both[1]) ~= holder then
    return {'error', 'not_joined'}
  end
  if to == from or not both[2] then
    return {'error', 'peer_not_found'}
  end
  local fields, scopes, intervals, tolerances = {}, {}, {}, {}
  local function bucket(field, interval, tolerance, scope)
    interval = tonumber(interval)
    if interval > 0 then
      local n = #fields + 1
      fields[n], scopes[n], intervals[n], tolerances[n] = field, scope, interval, tonumber(tolerance)
    end
  end
  bucket('r', args[13], args[14], 'room')
  bucket('p:' .. from, args[9], args[10], 'peer')
  if args[5] == 'candidate' then
    bucket('c:' .. from, args[11], args[12], 'candidate')
  end
  local ttl_ms = tonumber(args[18])
  if #fields > 0 then
    local now = now_us()
    local tats = redis.call('HMGET', room.buckets, unpack(fields))
    local set, fresh = {}, true
    for i = 1, #fields do
      local tat = tats[i] and tonumber(tats[i]) or now
      fresh = fresh and not tats[i]
      if tat < now then tat = now end
      if tat - now > tolerances[i] then return {'rate_limited', scopes[i]} end
      set[2 * i - 1], set[2 * i] = fields[i], string.format('%d', tat + intervals[i])
    end
    redis.call('HSET', room.buckets, unpack(set))
    if fresh then redis.call('PEXPIRE', room.buckets, ttl_ms) end
  end
  local frame, seq = args[8], 0
  local resume_ms = tonumber(args[15])
  if resume_ms > 0 then
    frame, seq = buffer_relay(room, to, frame, args[16], tonumber(args[17]), ttl_ms + resume_ms)
  end
  local tconn = conn_of(both[2])
  if tconn == '' then
    -- In its grace period, or a ghost: nobody holds it right now.
    if resume_ms > 0 then return {'ok', 'buffered', seq} end
    return {'error', 'peer_unreachable'}
  end
  local msg = tconn .. '\tr\t' .. args[6] .. '\t' .. args[7] .. '\t' .. seq .. '\n' .. frame
  if redis.call('SPUBLISH', channel(room, to), msg) == 0 then
    -- Its node died and nobody reaped it yet: held for resumption.
    if resume_ms > 0 then return {'ok', 'buffered', seq} end
    return {'error', 'peer_unreachable'}
  end
  return {'ok', 'delivered', seq}
end)
