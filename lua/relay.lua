-- SPDX-License-Identifier: Apache-2.0
-- relay (gateway/ops.c sg_ops_relay): the hot path, so it reads both
-- members in one HMGET, all buckets in one HMGET and one HSET, asks for the
-- time only when a bucket is on, and leaves TTLs to the room's nodes.
--   KEYS: peers buckets seq
--   ARGV: room from to holder kind ts_us traceparent frame settings
-- settings: the deployment's relay settings in one argument (parsed once
-- per value, relay_settings in lib.lua), integers separated by spaces:
--   peer_interval peer_tolerance cand_interval cand_tolerance
--   room_interval room_tolerance resume_ms buf_max buf_bytes ttl_ms
-- Buckets are GCRA cells (one integer each, the theoretical arrival time in
-- µs): a bucket of RATE/BURST has an interval of 1e6/RATE µs and a
-- tolerance of (BURST-1) intervals; an interval of 0 turns it off. Cells
-- are written as integers ('%d'): no fraction to format or parse.
-- Returns {"ok", "delivered"|"buffered", seq} or {"error", code} or
-- {"rate_limited", scope}.
register('relay', function(keys, args)
  local peers, from, to, holder = keys[1], args[2], args[3], args[4]
  local both = redis.call('HMGET', peers, from, to)
  if not both[1] or conn_of(both[1]) ~= holder then
    return {'error', 'not_joined'}
  end
  if to == from or not both[2] then
    return {'error', 'peer_not_found'}
  end
  local s = relay_settings(args[9])
  local buckets = args[5] == 'candidate' and s.candidate_buckets or s.buckets
  local n = #buckets
  if n > 0 then
    local fields = {}
    for i = 1, n do
      local b = buckets[i]
      fields[i] = b.per_peer and b.field .. from or b.field
    end
    local now = now_us()
    local tats = redis.call('HMGET', keys[2], unpack(fields))
    local set, fresh = {}, true
    for i = 1, n do
      local b, tat = buckets[i], tats[i]
      if tat then
        fresh = false
        tat = tat + 0 -- one conversion (tonumber makes two: now_us)
        if tat < now then tat = now end
      else
        tat = now
      end
      if tat - now > b.tolerance then return {'rate_limited', b.scope} end
      set[2 * i - 1], set[2 * i] = fields[i], string.format('%d', tat + b.interval)
    end
    redis.call('HSET', keys[2], unpack(set))
    if fresh then redis.call('PEXPIRE', keys[2], s.ttl_ms) end
  end
  local room = {id = args[1], seq = keys[3]}
  local frame, seq, seq_text = args[8], 0, '0'
  if s.resume_ms > 0 then
    seq, seq_text = buffer_relay(room, to, frame, s.buf_max, s.buf_bytes, s.ttl_ms + s.resume_ms)
  end
  local tconn = conn_of(both[2])
  if tconn == '' then
    -- In its grace period, or a ghost: nobody holds it right now.
    if s.resume_ms > 0 then return {'ok', 'buffered', seq} end
    return {'error', 'peer_unreachable'}
  end
  local msg = tconn .. '\tr\t' .. args[6] .. '\t' .. args[7] .. '\t' .. seq_text .. '\n' .. frame
  if redis.call('SPUBLISH', channel(room, to), msg) == 0 then
    -- Its node died and nobody reaped it yet: held for resumption.
    if s.resume_ms > 0 then return {'ok', 'buffered', seq} end
    return {'error', 'peer_unreachable'}
  end
  return {'ok', 'delivered', seq}
end)
