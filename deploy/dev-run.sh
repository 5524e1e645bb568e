#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The run command: installs what it needs, builds, starts a local Redis when
# SIGNAL_REDIS_URL is not set, prints how to connect, and runs one gateway in
# the foreground (Ctrl-C drains it and stops the Redis it started).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
deploy/deps.sh run
cmake -S . -B build >/dev/null
cmake --build build -j"${JOBS:-2}" --target signal-gateway >/dev/null
bin="$root/build/signal-gateway"

redis_pid=""
if [ -z "${SIGNAL_REDIS_URL:-}" ]; then
  port=6379
  if redis-cli -p "$port" ping >/dev/null 2>&1; then
    echo "using the Redis already listening on 127.0.0.1:$port"
  else
    redis-server "$root/deploy/redis.conf" --bind 127.0.0.1 --port "$port" --dir /tmp \
      --daemonize yes --pidfile /tmp/signal-gateway-dev-redis.pid --logfile /tmp/signal-gateway-dev-redis.log
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis_pid=$(cat /tmp/signal-gateway-dev-redis.pid)
    echo "started redis-server on 127.0.0.1:$port (pid $redis_pid)"
  fi
  export SIGNAL_REDIS_URL="redis://127.0.0.1:$port/0"
fi
if [ -z "${SIGNAL_JWT_SECRET:-}" ] && [ -z "${SIGNAL_JWT_PUBLIC_KEY:-}" ] && [ -z "${SIGNAL_JWT_JWKS_FILE:-}" ]; then
  export SIGNAL_JWT_SECRET="dev-$(openssl rand -hex 24)"
  echo "SIGNAL_JWT_SECRET=$SIGNAL_JWT_SECRET   (a fresh development secret)"
fi
export SIGNAL_STATIC_DIR="${SIGNAL_STATIC_DIR:-$root/clients}"
listen="${SIGNAL_LISTEN:-0.0.0.0:8443}"
port="${listen##*:}"
scheme=ws; http=http
[ -n "${SIGNAL_TLS_CERT:-}" ] && scheme=wss && http=https

if [ -n "${SIGNAL_JWT_SECRET:-}" ]; then
  alice=$("$bin" token --sub alice --room demo --ttl 86400)
  bob=$("$bin" token --sub bob --room demo --ttl 86400)
  cat <<MSG

signal-gateway is starting.
  WebSocket:   $scheme://127.0.0.1:$port/ws   (token: Authorization: Bearer, subprotocol bearer.<JWT>, or ?access_token=)
  Metrics:     http://${SIGNAL_ADMIN_LISTEN:-127.0.0.1:9090}/metrics
  Token alice: $alice
  Token bob:   $bob
  Demo (open both, in two tabs or browsers):
    $http://127.0.0.1:$port/demo/#room=demo&token=$alice
    $http://127.0.0.1:$port/demo/#room=demo&token=$bob
  More tokens: SIGNAL_JWT_SECRET=... $bin token --sub NAME --room ROOM
  Inspect:     redis-cli HGETALL 'room:{demo}:peers'

MSG
fi

stop() {
  [ -n "${gw:-}" ] && kill -TERM "$gw" 2>/dev/null && wait "$gw" 2>/dev/null || true
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
}
trap stop INT TERM EXIT
"$bin" "$@" &
gw=$!
wait "$gw"
