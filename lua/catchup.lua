-- SPDX-License-Identifier: Apache-2.0
-- catchup (gateway/ops.c sg_ops_catchup)
--   KEYS: peers buckets seq
--   ARGV: room peer last_seq
-- The relays a still-connected peer's node missed while its subscriber was
-- reconnecting: every buffered relay after last_seq, the last one that node
-- delivered. A seq below last_seq means Redis lost the buffer (an empty
-- restart) and numbering started again: then everything buffered is new.
-- Returns {reset (0 or 1), {seq, frame, seq, frame...}}.
register('catchup', function(keys, args)
  local room = room_of(keys, args)
  local peer, last_seq = args[2], tonumber(args[3])
  local reset = 0
  if tonumber(redis.call('HGET', room.seq, peer) or '0') < last_seq then
    last_seq, reset = 0, 1
  end
  return {reset, buffered_after(room, peer, last_seq)}
end)
