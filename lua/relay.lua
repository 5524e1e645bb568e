-- relay: ARGV room, from, to, holder, kind, ts_us, traceparent, frame,
--        peer_rate, peer_burst, cand_rate, cand_burst, room_rate, room_burst,
--        ttl_ms, resume_ms, buf_max, buf_bytes
-- Checks membership, takes tokens from the room, peer and (for candidates)
-- candidate buckets in one step, buffers the relay for resumption (with its
-- seq) and publishes it to the target's channel.
-- Returns {"ok", "delivered"|"buffered", seq} or {"error", code} or
-- {"rate_limited", scope}.
local from, to, holder, kind = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ts, tp, frame = ARGV[6], ARGV[7], ARGV[8]
local ttl_ms, resume_ms = tonumber(ARGV[15]), tonumber(ARGV[16])

local cur = redis.call('HGET', K_PEERS, from)
if not cur or cjson.decode(cur).conn ~= holder then
  return {'error', 'not_joined'}
end
local target = (to ~= from) and redis.call('HGET', K_PEERS, to)
if not target then
  return {'error', 'peer_not_found'}
end

-- Token buckets: "tokens last_ms" per field. A bucket with rate 0 is off.
local now = now_ms()
local function level(field, rate, burst)
  local v = redis.call('HGET', K_BUCKETS, field)
  if not v then return burst end
  local tokens, last = string.match(v, '^(%S+) (%S+)$')
  tokens = tonumber(tokens) + (now - tonumber(last)) * rate / 1000
  if tokens > burst then tokens = burst end
  return tokens
end
local buckets = {
  {'r', tonumber(ARGV[13]), tonumber(ARGV[14]), 'room'},
  {'p:' .. from, tonumber(ARGV[9]), tonumber(ARGV[10]), 'peer'},
}
if kind == 'candidate' then
  buckets[3] = {'c:' .. from, tonumber(ARGV[11]), tonumber(ARGV[12]), 'candidate'}
end
local levels = {}
for i, b in ipairs(buckets) do
  if b[2] > 0 then
    levels[i] = level(b[1], b[2], b[3])
    if levels[i] < 1 then return {'rate_limited', b[4]} end
  end
end
for i, b in ipairs(buckets) do
  if levels[i] then
    redis.call('HSET', K_BUCKETS, b[1], string.format('%.3f %d', levels[i] - 1, now))
  end
end
redis.call('PEXPIRE', K_BUCKETS, ttl_ms)

local seq = 0
if resume_ms > 0 then
  frame, seq = buffer_relay(to, frame, tonumber(ARGV[17]), tonumber(ARGV[18]), ttl_ms + resume_ms)
end
local trec = cjson.decode(target)
if trec.conn == '' then
  -- In its grace period, or a ghost re-asserted by a room-mate's node after
  -- Redis lost it: nobody holds it right now.
  if resume_ms > 0 then return {'ok', 'buffered', seq} end
  return {'error', 'peer_unreachable'}
end
local msg = trec.conn .. '\tr\t' .. ts .. '\t' .. tp .. '\t' .. seq .. '\n' .. frame
if redis.call('PUBLISH', channel(to), msg) == 0 then
  -- Its node died and the lease has not run out yet: held for resumption.
  if resume_ms > 0 then return {'ok', 'buffered', seq} end
  return {'error', 'peer_unreachable'}
end
return {'ok', 'delivered', seq}
