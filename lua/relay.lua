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
if not cur or conn_of(cur) ~= holder then
  return {'error', 'not_joined'}
end
local target = (to ~= from) and redis.call('HGET', K_PEERS, to)
if not target then
  return {'error', 'peer_not_found'}
end

-- Token buckets: "tokens last_ms" per field. A bucket with rate 0 is off;
-- with every bucket off there is nothing to read, write or time.
local buckets = {}
local function bucket(field, rate, burst, scope)
  rate = tonumber(rate)
  if rate > 0 then buckets[#buckets + 1] = {field, rate, tonumber(burst), scope} end
end
bucket('r', ARGV[13], ARGV[14], 'room')
bucket('p:' .. from, ARGV[9], ARGV[10], 'peer')
if kind == 'candidate' then
  bucket('c:' .. from, ARGV[11], ARGV[12], 'candidate')
end
if #buckets > 0 then
  local now = now_ms()
  local levels = {}
  for i, b in ipairs(buckets) do
    local tokens = b[3]
    local v = redis.call('HGET', K_BUCKETS, b[1])
    if v then
      local t, last = string.match(v, '^(%S+) (%S+)$')
      tokens = tonumber(t) + (now - tonumber(last)) * b[2] / 1000
      if tokens > b[3] then tokens = b[3] end
    end
    if tokens < 1 then return {'rate_limited', b[4]} end
    levels[i] = tokens
  end
  for i, b in ipairs(buckets) do
    redis.call('HSET', K_BUCKETS, b[1], string.format('%.3f %d', levels[i] - 1, now))
  end
  redis.call('PEXPIRE', K_BUCKETS, ttl_ms)
end

local seq = 0
if resume_ms > 0 then
  frame, seq = buffer_relay(to, frame, tonumber(ARGV[17]), tonumber(ARGV[18]), ttl_ms + resume_ms)
end
local tconn = conn_of(target)
if tconn == '' then
  -- In its grace period, or a ghost re-asserted by a room-mate's node after
  -- Redis lost it: nobody holds it right now.
  if resume_ms > 0 then return {'ok', 'buffered', seq} end
  return {'error', 'peer_unreachable'}
end
local msg = tconn .. '\tr\t' .. ts .. '\t' .. tp .. '\t' .. seq .. '\n' .. frame
if redis.call('PUBLISH', channel(to), msg) == 0 then
  -- Its node died and the lease has not run out yet: held for resumption.
  if resume_ms > 0 then return {'ok', 'buffered', seq} end
  return {'error', 'peer_unreachable'}
end
return {'ok', 'delivered', seq}
