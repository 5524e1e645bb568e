-- SPDX-License-Identifier: Apache-2.0
-- relay (gateway/ops.c sg_ops_relay): the hot path. One call carries the
-- relays one connection sent one target in one read, in order (1 to
-- SG_RELAY_BATCH_MAX): one membership check, one read and one write of the
-- buckets, one pair of counters for the buffer and one SPUBLISH for all of
-- them. It reads both members in one HMGET, asks for the time only when a
-- bucket is on, leaves TTLs to the room's nodes, and makes no table a
-- single relay does not need (its cost per call is the capacity).
--   KEYS: peers buckets seq
--   ARGV: room from to holder settings, then per relay i (from 1):
--         kind ts_us traceparent frame at 4i+2 .. 4i+5
-- settings: the deployment's relay settings in one argument (parsed once
-- per value, relay_settings in lib.lua), integers separated by spaces:
--   peer_interval peer_tolerance cand_interval cand_tolerance
--   room_interval room_tolerance resume_ms buf_max buf_bytes ttl_ms
-- Buckets are GCRA cells (one integer each, the theoretical arrival time in
-- µs): a bucket of RATE/BURST has an interval of 1e6/RATE µs and a
-- tolerance of (BURST-1) intervals; an interval of 0 turns it off. Cells
-- are written as integers ('%d'): no fraction to format or parse. The
-- relays of a call take tokens one after the other, as separate calls would.
-- A result is {"ok", "delivered"|"buffered", seq}, {"error", code} or
-- {"rate_limited", scope}. Returns one result for every relay of the call
-- (one relay, or a refusal of them all), else a list of one per relay.
-- One relay goes out as an "r" envelope, several as one "b" envelope
-- (include/sg/wire.h): "<holder>\tb\t<count>\t-\t<first seq>\n" then per
-- relay "<ts_us>\t<traceparent>\t<frame length>\n<frame>".

-- The buffer of relays to `peer` (§9): the relay gets its seq and goes in
-- as the sender's node built it (the target's node puts "seq" into the
-- frame, include/sg/wire.h: a Lua string costs Redis a hash of every byte,
-- so the frame is never copied here). Entry ids are "<start>-<seq>", start
-- being the byte offset of the entry in everything ever buffered for the
-- peer (b:<peer> is the end offset). Trimming is amortised and the caps are
-- exact where they are seen, at replay (buffered_after): the count cap is
-- the XADD's `MAXLEN ~` (whole stream nodes, ~100 entries, go at once: an
-- exact trim rewrites the head node on every relay), the byte cap one XTRIM
-- MINID every TRIM_EVERY relays, or at once for a frame over 1/TRIM_EVERY
-- of the cap, so Redis holds less than twice the byte cap. The newest entry
-- is always kept, even alone over the byte cap. Appends the k relays of the
-- call that got their tokens (limited: take_tokens'), in order, and
-- returns the first one's seq as a number and as text; the others follow.
local TRIM_EVERY = 8
local function buffer_relays(room, peer, args, limited, n, k, max_count, max_bytes, ttl_ms)
  local total, big, newest = 0, false, 0
  for i = 1, n do
    if not (limited and limited[i]) then
      local size = #args[4 * i + 5]
      total, newest = total + size, size
      big = big or size * TRIM_EVERY > max_bytes
    end
  end
  -- One HINCRBY each for the whole call: its seqs and offsets are consecutive.
  local last = redis.call('HINCRBY', room.seq, peer, k == 1 and '1' or string.format('%d', k))
  local stop = redis.call('HINCRBY', room.seq, 'b:' .. peer, string.format('%d', total))
  local first = last - k + 1
  local first_text = string.format('%d', first)
  local buf = buf_key(room, peer)
  if first == 1 then
    redis.call('DEL', buf) -- numbering starts again: nothing older can be replayed
  end
  local start, seq = stop - total, first
  for i = 1, n do
    if not (limited and limited[i]) then
      local frame = args[4 * i + 5]
      local id = seq == first and string.format('%d-', start) .. first_text or string.format('%d-%d', start, seq)
      redis.call('XADD', buf, 'MAXLEN', '~', max_count, id, 'f', frame)
      start, seq = start + #frame, seq + 1
    end
  end
  -- A multiple of TRIM_EVERY among the call's seqs, or a big frame: trim.
  if stop > max_bytes and (big or last - last % TRIM_EVERY >= first) then
    local floor = stop - max_bytes
    if floor > stop - newest then floor = stop - newest end
    redis.call('XTRIM', buf, 'MINID', string.format('%d', floor))
  end
  if first == 1 then
    -- Created by this relay: its TTL once; the room's nodes renew it.
    redis.call('PEXPIRE', buf, ttl_ms)
    redis.call('PEXPIRE', room.seq, ttl_ms)
  end
  return first, first_text
end

-- Takes tokens for the relays in order. Returns nil when every one got
-- them, else a table whose entry i is the scope of the bucket that refused
-- relay i (nil: it got them).
local function take_tokens(keys, args, s, from, n)
  -- s.buckets is a prefix of s.candidate_buckets (relay_settings): read
  -- the longer list if any relay is a candidate, and each relay uses the
  -- first #buckets or all of them.
  local all = s.buckets
  for i = 1, n do
    if args[4 * i + 2] == 'candidate' then
      all = s.candidate_buckets
      break
    end
  end
  local m = #all
  if m == 0 then return nil end
  local fields = {}
  for j = 1, m do
    local b = all[j]
    fields[j] = b.per_peer and b.field .. from or b.field
  end
  local now = now_us()
  local tats = redis.call('HMGET', keys[2], unpack(fields))
  -- One relay (the common case) is checked as its cells are read, and
  -- moved as they are written; several go one after the other in between.
  local single, fresh = n == 1, true
  for j = 1, m do
    local tat = tats[j]
    if tat then
      fresh = false
      tat = tat + 0 -- one conversion (tonumber makes two: now_us)
      if tat < now then tat = now end
    else
      tat = now
    end
    if single and tat - now > all[j].tolerance then return {all[j].scope} end
    tats[j] = tat
  end
  local limited, touched = nil, single
  if not single then
    for i = 1, n do
      local mine = args[4 * i + 2] == 'candidate' and m or #s.buckets
      local j = 1
      while j <= mine and tats[j] - now <= all[j].tolerance do j = j + 1 end
      if j <= mine then
        limited = limited or {}
        limited[i] = all[j].scope
      else
        for j = 1, mine do tats[j] = tats[j] + all[j].interval end
        touched = true
      end
    end
  end
  if touched then
    -- A cell no relay moved is written as it reads: now or later, the same.
    local set = {}
    for j = 1, m do
      set[2 * j - 1], set[2 * j] = fields[j], string.format('%d', single and tats[j] + all[j].interval or tats[j])
    end
    redis.call('HSET', keys[2], unpack(set))
    if fresh then redis.call('PEXPIRE', keys[2], s.ttl_ms) end
  end
  return limited
end

-- Publishes the k relays that got their tokens (the last of them relay
-- `last`) to the target's holder tconn, numbered from first_text. Returns
-- 'delivered', or `lost` when nobody holds the target or listens.
local function publish(room, to, tconn, args, limited, n, k, last, first_text, lost)
  if tconn == '' then return lost end -- in its grace period, or a ghost
  local msg
  if k == 1 then
    local a = 4 * last + 2
    msg = tconn .. '\tr\t' .. args[a + 1] .. '\t' .. args[a + 2] .. '\t' .. first_text .. '\n' .. args[a + 3]
  else
    local parts, j = {tconn .. '\tb\t' .. k .. '\t-\t' .. first_text .. '\n'}, 1
    for i = 1, n do
      if not (limited and limited[i]) then
        local frame = args[4 * i + 5]
        parts[j + 1] = args[4 * i + 3] .. '\t' .. args[4 * i + 4] .. '\t' .. #frame .. '\n'
        parts[j + 2] = frame
        j = j + 2
      end
    end
    msg = table.concat(parts)
  end
  -- Nobody listening: its node died and nobody reaped it yet.
  if redis.call('SPUBLISH', channel(room, to), msg) == 0 then return lost end
  return 'delivered'
end

register('relay', function(keys, args)
  local from, to, holder = args[2], args[3], args[4]
  local n = (#args - 5) / 4
  local both = redis.call('HMGET', keys[1], from, to)
  if not both[1] or conn_of(both[1]) ~= holder then
    return {'error', 'not_joined'}
  end
  if to == from or not both[2] then
    return {'error', 'peer_not_found'}
  end
  local s = relay_settings(args[5])
  local limited = #s.candidate_buckets > 0 and take_tokens(keys, args, s, from, n) or nil
  if limited and n == 1 then return {'rate_limited', limited[1]} end
  local k, last = n, n
  if limited then
    k, last = 0, 0
    for i = 1, n do
      if not limited[i] then k, last = k + 1, i end
    end
  end
  local first, first_text, status = 0, '0', 'delivered'
  if k > 0 then
    local room = {id = args[1], seq = keys[3]}
    if s.resume_ms > 0 then
      first, first_text = buffer_relays(room, to, args, limited, n, k, s.buf_max, s.buf_bytes,
        s.ttl_ms + s.resume_ms)
    end
    status = publish(room, to, conn_of(both[2]), args, limited, n, k, last, first_text,
      s.resume_ms > 0 and 'buffered' or 'peer_unreachable')
  end
  if n == 1 then
    if status == 'peer_unreachable' then return {'error', status} end
    return {'ok', status, first}
  end
  local out, j = {}, 0
  for i = 1, n do
    if limited and limited[i] then
      out[i] = {'rate_limited', limited[i]}
    elseif status == 'peer_unreachable' then
      out[i] = {'error', status}
    else
      out[i] = {'ok', status, first > 0 and first + j or 0}
      j = j + 1
    end
  end
  return out
end)
