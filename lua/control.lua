-- SPDX-License-Identifier: Apache-2.0
-- Backend control (PROTOCOL.md §9, docs/backend-control.md): what an
-- application's backend (or `signal-gateway kick|close-room|revoke`) does to
-- live rooms, whichever gateway holds the peers.
--
-- A library of its own with STABLE function names (signal_kick,
-- signal_close_room, signal_revoke): backends in any language FCALL them,
-- while the gateway's own library carries a version hash in its names. The
-- build puts lib.lua before this file under the header
--   #!lua name=signal_control
--   local FN_PREFIX = 'signal_'
-- and every gateway loads it (FUNCTION LOAD REPLACE) on every Redis server
-- it connects to, so the names, keys, arguments and replies below
-- are a contract that later versions keep.
--
-- A kicked peer's holder hears of it on the peer's own channel, envelope
-- kind k (meta: the action, frame: the reason text, raw: the gateway
-- escapes it and checks it is UTF-8). Revocations go to every gateway on
-- CONTROL_CHANNEL and stay in REVOKED_KEY for their handshakes (wire.h).

local CONTROL_CHANNEL = 'signal:{control}:events'
local REVOKED_KEY = 'signal:{control}:revoked'
local REASON_MAX = 256   -- wire.h SG_WIRE_KICK_REASON_MAX
local SUB_MAX = 256      -- auth.h SG_SUB_MAX
local TTL_MAX_S = 31536000
-- How long a kicked member's resume token is remembered (see kicked_mark):
-- the longest grace period SIGNAL_RESUME_MS allows, and a minute more.
local KICKED_MEMORY_MS = 3660000

-- Every message of these functions goes out here: sharded pub/sub, as in
-- lib.lua (the gateways SSUBSCRIBE; a channel lives in its key's slot).
local function publish(ch, msg)
  return redis.call('SPUBLISH', ch, msg)
end

-- The room of a call, refused unless KEYS are that room's: channels and
-- frames are built from the id in ARGV, and the keys decide the slot.
local function control_room(keys, args)
  local room = room_of(keys, args)
  if type(room.id) ~= 'string' or room.id == '' or keys[1] ~= rkey(room, 'peers') or
     keys[2] ~= rkey(room, 'buckets') or keys[3] ~= rkey(room, 'seq') then
    return nil
  end
  return room
end

-- A member kicked while its connection was away (in its grace period, or
-- lost a moment before the kick reached it) would resume, fail, and join
-- again as if nothing happened. Its resume token's hash is kept, with the
-- reason, under room:{R}:kicked:<peer>: a resume with that token is
-- answered "kicked" (lua/resume.lua), so the client knows, and only that
-- client hears the reason.
local function kicked_mark(room, peer, rec_json, reason)
  local rt = cjson.decode(rec_json).rt
  if type(rt) == 'string' and rt ~= '' then
    redis.call('SET', rkey(room, 'kicked:' .. peer), rt .. '\n' .. reason, 'PX', KICKED_MEMORY_MS)
  end
end

local BAD_KEYS = 'ERR signal_control: KEYS must be room:{R}:peers room:{R}:buckets room:{R}:seq of ARGV[1] = R'
local BAD_REASON = 'ERR signal_control: reason over ' .. REASON_MAX .. ' bytes'

-- kick (docs/backend-control.md; gateway/ops.c sg_control_kick)
--   KEYS: room:{R}:peers room:{R}:buckets room:{R}:seq
--   ARGV: R peer reason ("" for the default text)
-- The member leaves at once: its holder (if it has one: a member in its
-- grace period has none) drops the room without a leave and tells the
-- client "kicked"; the others get peer_left "kicked"; its record, resume
-- token hash, relay buffer and buckets go, so a resume fails and a later
-- join starts afresh. Returns 1 when peer was a member, 0 when not.
register('kick', function(keys, args)
  local room = control_room(keys, args)
  if not room then return redis.error_reply(BAD_KEYS) end
  local peer, reason = args[2] or '', args[3] or ''
  if #reason > REASON_MAX then return redis.error_reply(BAD_REASON) end
  local cur = redis.call('HGET', room.peers, peer)
  if not cur then
    return 0
  end
  local conn = conn_of(cur)
  if conn ~= '' then
    publish(channel(room, peer), envelope(conn, 'k', reason, 'kick'))
  end
  kicked_mark(room, peer, cur, reason)
  remove_member(room, peer, 'kicked')
  return 1
end)

-- close_room (docs/backend-control.md; gateway/ops.c sg_control_close_room)
--   KEYS: room:{R}:peers room:{R}:buckets room:{R}:seq
--   ARGV: R reason
-- Every member is kicked as above, but nobody is told that the others left;
-- every key of the room but the application's acl is deleted (relay buffers
-- too, also those a seq entry still names), so no kicked mark is left: a
-- member away at the time hears resume_failed when it comes back (the
-- application decides, through acl, whether it may join again). Returns the
-- number of members.
register('close_room', function(keys, args)
  local room = control_room(keys, args)
  if not room then return redis.error_reply(BAD_KEYS) end
  local reason = args[2] or ''
  if #reason > REASON_MAX then return redis.error_reply(BAD_REASON) end
  local all = redis.call('HGETALL', room.peers)
  for i = 1, #all, 2 do
    local conn = conn_of(all[i + 1])
    if conn ~= '' then
      publish(channel(room, all[i]), envelope(conn, 'k', reason, 'close_room'))
    end
    redis.call('DEL', buf_key(room, all[i]))
  end
  for _, f in ipairs(redis.call('HKEYS', room.seq)) do
    if string.sub(f, 1, 2) ~= 'b:' then
      redis.call('DEL', buf_key(room, f))
    end
  end
  redis.call('DEL', room.peers, room.buckets, room.seq)
  return #all / 2
end)

-- revoke (docs/backend-control.md; gateway/ops.c sg_control_revoke)
--   KEYS: signal:{control}:revoked
--   ARGV: sub ttl_s (1 .. 31536000)
-- For ttl_s seconds from now (the latest call for a sub decides, so a
-- short one lifts a long one early) handshakes with a token of that sub get
-- 401, and every gateway closes that sub's open connections with 1008 (their
-- rooms hear peer_left "kicked"). Only SHA-1(sub) is kept, in a ZSET scored
-- with the end (ms, Redis clock); the key lives as long as its longest
-- entry. Returns the end (ms).
register('revoke', function(keys, args)
  if keys[1] ~= REVOKED_KEY then
    return redis.error_reply('ERR signal_control: KEYS must be ' .. REVOKED_KEY)
  end
  local sub, ttl = args[1] or '', tonumber(args[2] or '')
  if sub == '' or #sub > SUB_MAX then
    return redis.error_reply('ERR signal_control: sub must be 1..' .. SUB_MAX .. ' bytes')
  end
  if not ttl or ttl ~= math.floor(ttl) or ttl < 1 or ttl > TTL_MAX_S then
    return redis.error_reply('ERR signal_control: ttl must be a whole number of seconds, 1..' .. TTL_MAX_S)
  end
  local now = now_ms()
  local ends = now + ttl * 1000
  local h = redis.sha1hex(sub)
  redis.call('ZREMRANGEBYSCORE', REVOKED_KEY, '-inf', now)
  redis.call('ZADD', REVOKED_KEY, ends, h)
  if redis.call('PTTL', REVOKED_KEY) < ttl * 1000 then
    redis.call('PEXPIRE', REVOKED_KEY, ttl * 1000)
  end
  publish(CONTROL_CHANNEL, 'revoke\t' .. h .. '\t' .. string.format('%d', ends))
  return ends
end)
