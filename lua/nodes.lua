-- SPDX-License-Identifier: Apache-2.0
-- nodes (gateway/session_liveness.c): a gateway instance's heartbeat, once a
-- third of a lease, and the only per-period work idle rooms cause.
--   KEYS: signal:nodes
--   ARGV: inst lease_ms ttl_ms
-- Records the caller's heartbeat and hands it up to 8 instances silent for
-- more than a lease, each claimed for one more lease (so one caller reaps
-- it; if that caller dies too, the instance is found dead again).
-- Returns {reaped, dead...}: reaped is 1 when the caller itself had been
-- taken for dead (it then puts its members back).
register('nodes', function(keys, args)
  local node, lease_ms = args[1], tonumber(args[2])
  local now = now_ms()
  local last = redis.call('ZSCORE', keys[1], node)
  local reaped = (not last or tonumber(last) < now - lease_ms) and 1 or 0
  redis.call('ZADD', keys[1], now, node)
  local out = {reaped}
  for _, d in ipairs(redis.call('ZRANGEBYSCORE', keys[1], '-inf', now - lease_ms, 'LIMIT', 0, 8)) do
    redis.call('ZADD', keys[1], now, d)
    out[#out + 1] = d
  end
  -- The set itself expires if every instance goes for good.
  redis.call('PEXPIRE', keys[1], args[3])
  return out
end)
