-- SPDX-License-Identifier: Apache-2.0
-- The gateway's Redis function library (Redis >= 7.0). The build puts this
-- file, then every operation file, after a header that names the library and
-- the function prefix after a hash of the whole text:
--   #!lua name=sg_<hash>
--   local FN_PREFIX = 'sg_<hash>_'
-- so gateways of different versions never call each other's functions.
-- FUNCTION LOAD runs the file once: helpers here are built once, not per call.
--
-- Keys: every function of a room takes room:{R}:... keys only, so a call
-- touches one hash slot (Redis Cluster) and may SPUBLISH to the room's
-- channels. The first argument is always the room id R.
--   room:{R}:peers    HASH peerId -> JSON member record
--   room:{R}:buckets  HASH rate-limit cells (GCRA: "theoretical arrival
--                     time" in ms per bucket: r, p:<peer>, c:<peer>)
--   room:{R}:seq      HASH <peer> -> last relay seq to it, b:<peer> -> bytes
--                     ever buffered for it (the end offset of its buffer)
--   room:{R}:buf:<peer> STREAM of relays to <peer>, entry id
--                     "<start offset>-<seq>", field f = the frame as the
--                     sender's node built it (no "seq": the target's node
--                     puts it in)
--   room:{R}:acl      SET of subs (the application's; never written)
-- Node liveness (not per room, so idle rooms cost nothing):
--   signal:nodes      ZSET instance -> last heartbeat (ms, Redis clock)
--   signal:node:{<instance>}:rooms SET of rooms the instance answers for
--                     (written by the gateway, not by these functions)
-- An instance is one run of a gateway: "<SIGNAL_NODE_ID>~<random>", so a
-- node restarted under the same id is not taken for its former self.
--
-- A member record is {"node","inst","conn","sub","joinedAt"[,"rt"][,"grace"][,"ghost","until"]}:
-- node is the SIGNAL_NODE_ID of the gateway that held it last, inst the
-- instance that answers for it, conn the holder "<instance>#<connection id>"
-- ("" while nobody holds it), sub a keyed hash of the token's sub, rt a hash
-- of the resume token. grace (ms) is the end of the grace period of a
-- member whose connection is lost (conn ""), until the end of a ghost's
-- life: the instance in inst watches that deadline (expire) and takes the
-- member out when it passes.
-- A ghost is a member a room-mate's node re-asserted after Redis lost the
-- room, with the owner's sub hash as that node saw it: its own node
-- re-asserts it for real, or its deadline passes; only its owner may take
-- it over meanwhile.
--
-- Channel messages are "<holder>\t<kind>\t<ts_us>\t<meta>\t<seq>\n<frame>"
-- (include/sg/wire.h): kind r (relay; meta = traceparent), b (several
-- relays of one sender, lua/relay.lua), e (membership
-- event; meta = the joiner's sub hash for peer_joined, else "-"), x (the
-- holder lost its peerId; frame = the error to send).

local function register(name, fn)
  redis.register_function(FN_PREFIX .. name, fn)
end

-- The room a call works on: its keys and its id.
-- The instance of a holder "<instance>#<connection id>".
local function inst_of(holder)
  return string.match(holder, '^([^#]*)#') or ''
end

local function room_of(keys, args)
  return {id = args[1], peers = keys[1], buckets = keys[2], seq = keys[3], acl = keys[4]}
end

local function rkey(room, suffix)
  return 'room:{' .. room.id .. '}:' .. suffix
end

-- One concatenation each (Redis hashes every byte of every Lua string made).
local function channel(room, peer)
  return 'room:{' .. room.id .. '}:peer:' .. peer
end

local function buf_key(room, peer)
  return 'room:{' .. room.id .. '}:buf:' .. peer
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Microseconds (2^53 is far: exact in a Lua number). Arithmetic converts
-- a decimal string once; tonumber converts it twice (Lua 5.1 checks, then
-- converts): on the relay's path that is a strtod per number saved.
local function now_us()
  local t = redis.call('TIME')
  return t[1] * 1000000 + t[2]
end

-- The relay's settings (lua/relay.lua), one argument per deployment,
-- parsed once per distinct value: a tonumber costs Redis two strtod calls,
-- and the relay would make ten per call. Gateways with other settings get
-- their own entry; a handful at most, so the table is simply reset past 16.
local settings_cache, settings_count = {}, 0
local function relay_settings(text)
  local s = settings_cache[text]
  if s then return s end
  local v = {}
  for d in string.gmatch(text, '%d+') do v[#v + 1] = tonumber(d) end
  if #v ~= 10 then error('relay settings: 10 integers expected, got "' .. text .. '"') end
  s = {resume_ms = v[7], buf_max = v[8], buf_bytes = v[9], ttl_ms = v[10], buckets = {}, candidate_buckets = {}}
  local function add(field, per_peer, interval, tolerance, scope, candidate_only)
    if interval > 0 then
      local b = {field = field, per_peer = per_peer, interval = interval, tolerance = tolerance, scope = scope}
      if not candidate_only then s.buckets[#s.buckets + 1] = b end
      s.candidate_buckets[#s.candidate_buckets + 1] = b
    end
  end
  -- Candidate-only buckets come last: s.buckets is a prefix of
  -- s.candidate_buckets (relay.lua's take_tokens relies on it).
  add('r', false, v[5], v[6], 'room')
  add('p:', true, v[1], v[2], 'peer')
  add('c:', true, v[3], v[4], 'candidate', true)
  if settings_count >= 16 then settings_cache, settings_count = {}, 0 end
  settings_cache[text], settings_count = s, settings_count + 1
  return s
end

local function envelope(holder, kind, frame, meta)
  return holder .. '\t' .. kind .. '\t0\t' .. (meta or '-') .. '\t0\n' .. frame
end

-- Room and peer ids are validated by the gateway to characters that need no
-- JSON escaping, so frames can be concatenated.
local function peer_joined_frame(room, peer)
  return '{"type":"peer_joined","roomId":"' .. room.id .. '","peerId":"' .. peer .. '"}'
end

local function peer_left_frame(room, peer, reason)
  return '{"type":"peer_left","roomId":"' .. room.id .. '","peerId":"' .. peer ..
         '","reason":"' .. reason .. '"}'
end

-- A record's conn and sub, read without decoding it: in cjson's output an
-- unescaped quote only delimits, and holders ("<instance>#<n>") and hashes
-- hold nothing cjson escapes.
local function conn_of(rec)
  return string.match(rec, '"conn":"([^"\\]*)"') or cjson.decode(rec).conn
end

local function sub_of(rec)
  return string.match(rec, '"sub":"(%x*)"') or ''
end

-- Sends frame to every member but `except` that has a connection.
local function broadcast(room, except, frame, meta)
  local all = redis.call('HGETALL', room.peers)
  for i = 1, #all, 2 do
    if all[i] ~= except then
      local conn = conn_of(all[i + 1])
      if conn ~= '' then
        redis.call('SPUBLISH', channel(room, all[i]), envelope(conn, 'e', frame, meta))
      end
    end
  end
end

-- The members but `except`, sorted, as {peer, sub hash, peer, sub hash...}:
-- the gateway keeps room-mates' sub hashes to protect ghosts.
local function member_list(room, except)
  local all = redis.call('HGETALL', room.peers)
  local peers, subs = {}, {}
  for i = 1, #all, 2 do
    if all[i] ~= except then
      peers[#peers + 1] = all[i]
      subs[all[i]] = sub_of(all[i + 1])
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

-- Every key the gateway writes expires, so nothing outlives a crash; the
-- nodes holding a room renew its keys long before (reassert).
-- A renewal never shortens a TTL a grace period set longer (enter_grace):
-- GT, or NX for a key that has none yet (GT takes no TTL for an infinite one).
local function extend(key, ttl_ms)
  if redis.call('PEXPIRE', key, ttl_ms, 'GT') == 0 then
    redis.call('PEXPIRE', key, ttl_ms, 'NX')
  end
end

local function touch(room, ttl_ms)
  extend(room.peers, ttl_ms)
  extend(room.buckets, ttl_ms)
  extend(room.seq, ttl_ms)
end

-- Forgets a peer's relay buffer and sequence (a fresh join starts at 1).
local function drop_buffer(room, peer)
  redis.call('DEL', buf_key(room, peer))
  redis.call('HDEL', room.seq, peer, 'b:' .. peer)
end

-- Removes a member, tells the others, and deletes the room's keys (all but
-- the acl) when it was the last one.
local function remove_member(room, peer, reason)
  redis.call('HDEL', room.peers, peer)
  redis.call('HDEL', room.buckets, 'p:' .. peer, 'c:' .. peer)
  drop_buffer(room, peer)
  if redis.call('HLEN', room.peers) == 0 then
    redis.call('DEL', room.peers, room.buckets, room.seq)
  else
    broadcast(room, peer, peer_left_frame(room, peer, reason))
  end
end

-- Puts a member whose connection is lost into its grace period: no
-- peer_left yet, relays to it are buffered, its token may resume it. `inst`
-- watches the deadline. Returns the deadline.
-- The room's keys and the peer's buffer outlive the grace period, however
-- long SIGNAL_RESUME_MS is (they would otherwise last a room TTL from the
-- last renewal, and a room nobody holds a connection in is not renewed).
local function enter_grace(room, peer, rec, inst, now, resume_ms)
  rec.conn, rec.inst, rec.grace = '', inst, now + resume_ms
  redis.call('HSET', room.peers, peer, cjson.encode(rec))
  local keep = resume_ms + 60000
  touch(room, keep)
  extend(buf_key(room, peer), keep)
  return rec.grace
end

-- The buffered relays after last_seq within the caps of settings `s`, as
-- {seq, frame, seq, frame...}, and the peer's last seq. Entries' seqs are
-- consecutive up to the peer's current one, so the ones after last_seq
-- are the newest cur - last_seq (at most buf_max of them): read only
-- those, never the whole buffer. Of those, the entries an exact byte trim
-- would have dropped (starting before the end offset minus buf_bytes) are
-- left out, the newest never.
local function buffered_after(room, peer, last_seq, s)
  local out = {}
  local cs = redis.call('HMGET', room.seq, peer, 'b:' .. peer)
  local cur, stop = tonumber(cs[1] or '0'), tonumber(cs[2] or '0')
  local want = cur - last_seq
  if want > s.buf_max then want = s.buf_max end
  if want <= 0 then
    return out, cur
  end
  local newest = redis.call('XREVRANGE', buf_key(room, peer), '+', '-', 'COUNT', want)
  local floor = stop - s.buf_bytes
  for i = #newest, 1, -1 do
    local e = newest[i]
    local start, seq = string.match(e[1], '^(%d+)%-(%d+)$')
    if tonumber(seq) > last_seq and (i == 1 or tonumber(start) >= floor) then
      out[#out + 1] = seq
      out[#out + 1] = e[2][2]
    end
  end
  return out, cur
end

-- The token's rooms claim, or the application's acl set, must allow the room.
-- The deadline a member's watcher enforces: its grace period or a ghost's life.
local function deadline_of(rec)
  return rec.grace or rec['until']
end

local function authorized(room, claim_ok, sub)
  return claim_ok == '1' or redis.call('SISMEMBER', room.acl, sub) == 1
end
