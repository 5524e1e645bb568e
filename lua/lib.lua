-- Shared helpers. The gateway prepends this file to every operation script
-- before SCRIPT LOAD, so each script stays short and self-contained in Redis.
--
-- Every script gets the same four keys, all under the room's hash tag:
--   KEYS[1] room:{R}:peers    HASH peerId -> JSON member record
--   KEYS[2] room:{R}:leases   ZSET peerId -> lease expiry (ms, Redis clock)
--   KEYS[3] room:{R}:buckets  HASH token buckets ("tokens ts_ms" per bucket)
--   KEYS[4] room:{R}:acl      SET of subs (the application's; never written)
-- and ARGV[1] is the room id, used to name the per-peer channels.
--
-- Messages on a peer channel are "<holder>\t<kind>\t<ts_us>\t<traceparent>\t<seq>\n<frame>":
-- holder is "<node>#<connection id>" (only that connection takes it: after a
-- takeover two nodes may briefly listen on the same channel), kind is
-- r (relay), e (membership event) or x (replaced: the holder lost the peerId).

local K_PEERS, K_LEASES, K_BUCKETS = KEYS[1], KEYS[2], KEYS[3]
local ROOM = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function channel(peer)
  return 'room:{' .. ROOM .. '}:peer:' .. peer
end

local function envelope(holder, kind, frame)
  return holder .. '\t' .. kind .. '\t0\t-\t0\n' .. frame
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

-- Sends frame to every member except `except`.
local function broadcast(except, frame)
  local all = redis.call('HGETALL', K_PEERS)
  for i = 1, #all, 2 do
    if all[i] ~= except then
      local rec = cjson.decode(all[i + 1])
      redis.call('PUBLISH', channel(all[i]), envelope(rec.conn, 'e', frame))
    end
  end
end

local function member_list(except)
  local out = {}
  for _, p in ipairs(redis.call('HKEYS', K_PEERS)) do
    if p ~= except then out[#out + 1] = p end
  end
  table.sort(out)
  return out
end

-- Every key the gateway writes expires, so nothing outlives a crash.
local function touch(ttl_ms)
  redis.call('PEXPIRE', K_PEERS, ttl_ms)
  redis.call('PEXPIRE', K_LEASES, ttl_ms)
  redis.call('PEXPIRE', K_BUCKETS, ttl_ms)
end

-- Removes a member, tells the others, and deletes the room's keys (all but
-- the acl) when it was the last one.
local function remove_member(peer, reason)
  redis.call('HDEL', K_PEERS, peer)
  redis.call('ZREM', K_LEASES, peer)
  redis.call('HDEL', K_BUCKETS, 'p:' .. peer, 'c:' .. peer)
  if redis.call('HLEN', K_PEERS) == 0 then
    redis.call('DEL', K_PEERS, K_LEASES, K_BUCKETS)
  else
    broadcast(peer, peer_left_frame(peer, reason))
  end
end

-- Members whose lease ran out (their node died without a word) leave with
-- reason timeout. `keep` lists peers the caller holds and is refreshing.
local function reap(now, keep)
  local expired = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now)
  for _, p in ipairs(expired) do
    if not (keep and keep[p]) then remove_member(p, 'timeout') end
  end
end
