-- SPDX-License-Identifier: Apache-2.0
-- catchup (gateway/ops.c sg_ops_catchup)
--   KEYS: peers buckets seq
--   ARGV: room peer last_seq settings (lua/relay.lua's: the buffer's caps)
-- The relays a still-connected peer's node missed while its subscriber was
-- reconnecting: every buffered relay after last_seq, the last one that node
-- delivered. A seq below last_seq means Redis lost the buffer (an empty
-- restart) and numbering started again: then everything buffered is new.
-- Returns {reset (0 or 1), {seq, frame, seq, frame...}}.
register('catchup', function(keys, args)
  local room = room_of(keys, args)
  local peer, last_seq = args[2], tonumber(args[3])
  local s = relay_settings(args[4])
  local replay, cur = buffered_after(room, peer, last_seq, s)
  if cur >= last_seq then
    return {0, replay}
  end
  replay = buffered_after(room, peer, 0, s)
  return {1, replay}
end)
