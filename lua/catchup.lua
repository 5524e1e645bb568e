-- catchup: ARGV room, peer, last_seq
-- The relays a still-connected peer's node missed while its subscriber was
-- reconnecting: every buffered relay after last_seq, the last one that node
-- delivered. A seq below last_seq means Redis lost the buffer (an empty
-- restart) and numbering started again: then everything buffered is new.
-- Returns {reset (0 or 1), {seq, frame, seq, frame...}}.
local peer, last_seq = ARGV[2], tonumber(ARGV[3])
local reset = 0
if tonumber(redis.call('HGET', rkey('seq'), peer) or '0') < last_seq then
  last_seq, reset = 0, 1
end
local out = {}
for _, e in ipairs(redis.call('XRANGE', rkey('buf:' .. peer), string.format('%d-0', last_seq + 1), '+')) do
  out[#out + 1] = string.match(e[1], '^(%d+)')
  out[#out + 1] = e[2][2]
end
return {reset, out}
