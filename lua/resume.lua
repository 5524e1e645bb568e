-- resume: ARGV room, peer, holder, node, subhash, rt_old, rt_new, last_seq,
--         lease_ms, ttl_ms, claim_ok, sub
-- A new connection of the same user takes its membership back, silently,
-- and gets every buffered relay after last_seq.
-- Returns {"resumed", {peer, subhash, ...}, {seq, frame, seq, frame...}} or
-- {"error", "resume_failed"}.
local peer, holder, node, subhash = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local rt_old, rt_new, last_seq = ARGV[6], ARGV[7], tonumber(ARGV[8])
local lease_ms, ttl_ms = tonumber(ARGV[9]), tonumber(ARGV[10])
local claim_ok, sub = ARGV[11] == '1', ARGV[12]

-- The same authorization as join: the token's rooms claim or the acl.
if not claim_ok and redis.call('SISMEMBER', KEYS[4], sub) == 0 then
  return {'error', 'resume_failed'}
end

local cur = redis.call('HGET', K_PEERS, peer)
local rec = cur and cjson.decode(cur)
if not rec or rec.sub ~= subhash or not rec.rt or rec.rt ~= rt_old then
  return {'error', 'resume_failed'}
end
local now = now_ms()
if rec.grace and rec.grace <= now then
  -- The grace period is over even if no refresh has reaped it yet.
  remove_member(peer, 'timeout')
  return {'error', 'resume_failed'}
end
-- The old connection may not have been noticed as lost yet: it gives way.
if rec.conn ~= '' and rec.conn ~= holder then
  redis.call('PUBLISH', channel(peer), envelope(rec.conn, 'x',
    '{"type":"error","code":"replaced","message":"peerId resumed by a newer connection of the same user","roomId":"' .. ROOM .. '"}'))
end
rec.conn, rec.node, rec.rt, rec.grace = holder, node, rt_new, nil
redis.call('HSET', K_PEERS, peer, cjson.encode(rec))
redis.call('ZADD', K_LEASES, now + lease_ms, peer)
touch(ttl_ms)

local replay = {}
for _, e in ipairs(redis.call('XRANGE', rkey('buf:' .. peer), string.format('%d-0', last_seq + 1), '+')) do
  replay[#replay + 1] = string.match(e[1], '^(%d+)')
  replay[#replay + 1] = e[2][2]
end
return {'resumed', member_list(peer), replay}
