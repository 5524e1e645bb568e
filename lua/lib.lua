-- Shared helpers. The gateway prepends this file to every operation script
-- before SCRIPT LOAD, so each script stays short and self-contained in Redis.
--
-- Every script gets the same four keys, all under the room's hash tag:
--   KEYS[1] room:{R}:peers    HASH peerId -> JSON member record
--   KEYS[2] room:{R}:leases   ZSET peerId -> lease (or grace) expiry, ms by Redis' clock
--   KEYS[3] room:{R}:buckets  HASH token buckets ("tokens last_ms" per bucket)
--   KEYS[4] room:{R}:acl      SET of subs (the application's; never written)
-- and ARGV[1] is the room id. Resumption (PROTOCOL.md §9) adds, under the
-- same hash tag: room:{R}:seq (HASH peer -> last relay seq, "b:"..peer ->
-- buffered bytes) and room:{R}:buf:<peer> (STREAM of relays, id "<seq>-1").
--
-- Messages on a peer channel are "<holder>\t<kind>\t<ts_us>\t<traceparent>\t<seq>\n<frame>":
-- holder is "<node>#<connection id>" (only that connection takes it: after a
-- takeover two nodes may briefly listen on the same channel), kind is
-- r (relay), e (membership event) or x (replaced: the holder lost the peerId).
--
-- A member record is {"node","conn","sub","joinedAt"[,"rt"][,"grace"][,"ghost"]}:
-- sub is a hash of the token's sub, rt a hash of the resume token, grace is
-- set (and conn is "") while the member's connection is lost and it may resume.
-- ghost is set (conn "") on a member a room-mate's node re-asserted after
-- Redis lost the room, with the owner's sub hash as that node saw it: its
-- own node re-asserts it for real, or its lease runs out and the room hears
-- peer_left "timeout"; meanwhile only its owner may take it over.

local K_PEERS, K_LEASES, K_BUCKETS = KEYS[1], KEYS[2], KEYS[3]
local ROOM = ARGV[1]

local function rkey(suffix)
  return 'room:{' .. ROOM .. '}:' .. suffix
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function channel(peer)
  return rkey('peer:' .. peer)
end

-- meta: "-", or for a peer_joined event the joiner's sub hash (the room's
-- other nodes keep it to protect the ghost they may have to re-assert).
local function envelope(holder, kind, frame, meta)
  return holder .. '\t' .. kind .. '\t0\t' .. (meta or '-') .. '\t0\n' .. frame
end

-- Room and peer ids are validated by the gateway to characters that need no
-- JSON escaping, so frames can be concatenated.
local function peer_joined_frame(peer)
  return '{"type":"peer_joined","roomId":"' .. ROOM .. '","peerId":"' .. peer .. '"}'
end

local function peer_left_frame(peer, reason)
  return '{"type":"peer_left","roomId":"' .. ROOM .. '","peerId":"' .. peer ..
         '","reason":"' .. reason .. '"}'
end

-- Sends frame to every member except `except` (members in grace have no
-- connection to send to).
local function broadcast(except, frame, meta)
  local all = redis.call('HGETALL', K_PEERS)
  for i = 1, #all, 2 do
    if all[i] ~= except then
      local rec = cjson.decode(all[i + 1])
      if rec.conn ~= '' then
        redis.call('PUBLISH', channel(all[i]), envelope(rec.conn, 'e', frame, meta))
      end
    end
  end
end

-- A member record's conn, read without decoding the record: the relay script
-- is what bounds throughput (and refreshes what idle rooms cost), and
-- cjson.decode calls were a good part of both. In cjson's output an
-- unescaped quote only delimits, so '"conn":"' can only be that key; a value
-- holding anything cjson escapes (never the case for holders,
-- "<node id>#<n>" with node ids of A-Za-z0-9_.:-) falls back to decoding.
local function conn_of(rec)
  local c = string.match(rec, '"conn":"([^"\\]*)"')
  if c then return c end
  return cjson.decode(rec).conn
end

-- The members but `except`, sorted, as {peer, sub hash, peer, sub hash...}:
-- the gateway keeps room-mates' sub hashes to protect ghosts.
local function member_list(except)
  local all = redis.call('HGETALL', K_PEERS)
  local peers, subs = {}, {}
  for i = 1, #all, 2 do
    if all[i] ~= except then
      peers[#peers + 1] = all[i]
      subs[all[i]] = string.match(all[i + 1], '"sub":"(%x*)"') or ''
    end
  end
  table.sort(peers)
  local out = {}
  for _, p in ipairs(peers) do
    out[#out + 1] = p
    out[#out + 1] = subs[p]
  end
  return out
end

-- Every key the gateway writes expires, so nothing outlives a crash.
local function touch(ttl_ms)
  redis.call('PEXPIRE', K_PEERS, ttl_ms)
  redis.call('PEXPIRE', K_LEASES, ttl_ms)
  redis.call('PEXPIRE', K_BUCKETS, ttl_ms)
  redis.call('PEXPIRE', rkey('seq'), ttl_ms)
end

-- Forgets a peer's relay buffer and sequence (a fresh join starts at 1).
local function drop_buffer(peer)
  redis.call('DEL', rkey('buf:' .. peer))
  redis.call('HDEL', rkey('seq'), peer, 'b:' .. peer)
end

-- Removes a member, tells the others, and deletes the room's keys (all but
-- the acl) when it was the last one.
local function remove_member(peer, reason)
  redis.call('HDEL', K_PEERS, peer)
  redis.call('ZREM', K_LEASES, peer)
  redis.call('HDEL', K_BUCKETS, 'p:' .. peer, 'c:' .. peer)
  drop_buffer(peer)
  if redis.call('HLEN', K_PEERS) == 0 then
    redis.call('DEL', K_PEERS, K_LEASES, K_BUCKETS, rkey('seq'))
  else
    broadcast(peer, peer_left_frame(peer, reason))
  end
end

-- Puts a member whose connection is lost into its grace period: no
-- peer_left yet, relays to it are buffered, its token may resume it.
local function enter_grace(peer, rec, now, resume_ms)
  rec.conn = ''
  rec.grace = now + resume_ms
  redis.call('HSET', K_PEERS, peer, cjson.encode(rec))
  redis.call('ZADD', K_LEASES, now + resume_ms, peer)
  -- The room must outlive the grace period even when nobody else refreshes
  -- it; only ever lengthen a key's life here (PTTL, not PEXPIRE GT: Redis 6).
  local keep = resume_ms * 2
  for _, k in ipairs({K_PEERS, K_LEASES, K_BUCKETS, rkey('seq'), rkey('buf:' .. peer)}) do
    local left = redis.call('PTTL', k)
    if left >= 0 and left < keep then redis.call('PEXPIRE', k, keep) end
  end
end

-- Members whose lease ran out: their node died without a word. With
-- resumption on they enter the grace period first; when that runs out too
-- (or without resumption) they leave with reason timeout. `keep` lists
-- peers the caller holds and is refreshing.
local function reap(now, keep, resume_ms)
  local expired = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now)
  for _, p in ipairs(expired) do
    if not (keep and keep[p]) then
      local cur = redis.call('HGET', K_PEERS, p)
      local rec = cur and cjson.decode(cur)
      if rec and not rec.grace and not rec.ghost and resume_ms > 0 then
        enter_grace(p, rec, now, resume_ms)
      else
        remove_member(p, 'timeout')
      end
    end
  end
end

-- Appends a relay to the target's buffer, oldest dropped first past either
-- cap, and returns the frame with its seq.
local function buffer_relay(peer, frame, max_count, max_bytes, ttl_ms)
  local sk = rkey('seq')
  local seq = redis.call('HINCRBY', sk, peer, 1)
  -- The gateway's frame always starts with {"type":"relay", (16 bytes).
  frame = '{"type":"relay","seq":' .. seq .. ',' .. string.sub(frame, 17)
  local buf = rkey('buf:' .. peer)
  -- The count cap goes with the XADD (MAXLEN); what it will drop is read
  -- first, only for its size (a full buffer, the steady state of a long call,
  -- drops one entry per relay). The byte cap still needs the loop below.
  local len = redis.call('XLEN', buf)
  local delta = #frame
  local over = len + 1 - max_count
  if over > 0 then
    for _, e in ipairs(redis.call('XRANGE', buf, '-', '+', 'COUNT', over)) do
      delta = delta - #e[2][2]
    end
    len = max_count
  else
    len = len + 1
  end
  redis.call('XADD', buf, 'MAXLEN', max_count, string.format('%d-1', seq), 'f', frame)
  redis.call('PEXPIRE', buf, ttl_ms)
  local bytes = redis.call('HINCRBY', sk, 'b:' .. peer, delta)
  redis.call('PEXPIRE', sk, ttl_ms) -- it may have just been created
  while bytes > max_bytes and len > 1 do
    local oldest = redis.call('XRANGE', buf, '-', '+', 'COUNT', 1)[1]
    redis.call('XDEL', buf, oldest[1])
    bytes = redis.call('HINCRBY', sk, 'b:' .. peer, -#oldest[2][2])
    len = len - 1
  end
  return frame, seq
end
