#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A process-based signal-gateway cluster on loopback, the same topology as
# docker-compose.yml: one redis-server (deploy/redis.conf) or, with
# --redis-cluster, a Redis Cluster of three masters and three replicas (the
# compose "cluster" profile), N gateways with distinct SIGNAL_NODE_IDs, and
# haproxy in front of them (rendered from deploy/haproxy-local.cfg.in).
# Every process is started in the background, recorded by pid under the
# state directory and stopped by that pid.
#
#   deploy/cluster.sh start N       start redis, N gateways, haproxy (N: 1-16, default 2)
#   deploy/cluster.sh start N --redis-cluster
#                                   the same on a 3-master, 3-replica Redis Cluster
#   deploy/cluster.sh status        what runs, readiness, haproxy's view, room keys
#   deploy/cluster.sh stop          drain the gateways (SIGTERM), then haproxy, then redis
#   deploy/cluster.sh drain I       SIGTERM gateway I, wait, print its exit status
#   deploy/cluster.sh start-node I  start gateway I again (same ports and node id)
#   deploy/cluster.sh restart I     drain I, then start it again (one step of a rolling restart)
#   deploy/cluster.sh kill I        SIGKILL gateway I (a node dying without a word)
#   deploy/cluster.sh token SUB [ROOM...]   mint an HS256 token (rooms default: "*")
#   deploy/cluster.sh env           print the cluster's addresses as shell variables
#
# Environment:
#   SG_CLUSTER_DIR        state dir: pids, logs, ports, haproxy.cfg (default /tmp/sg-cluster)
#   SG_GATEWAY_BIN        gateway binary (default build/signal-gateway; built if missing)
#   SG_CLUSTER_HOST       loopback address to bind (default 127.0.0.1)
#   SG_CLUSTER_LB_PORT    haproxy's WebSocket port (default 8443, or a free port when taken)
#   SG_CLUSTER_STATS_PORT haproxy stats + /metrics (default: a free port)
#   SG_CLUSTER_REDIS_PORT redis-server port (default: a free port)
#   SG_CLUSTER_REDIS_URL  use this Redis instead of starting one
#   SG_CLUSTER_NODE_TIMEOUT_MS  the Redis Cluster's cluster-node-timeout (default 5000)
#   SIGNAL_*              passed to every gateway (e.g. SIGNAL_LEASE_MS=3000,
#                         SIGNAL_RESUME_MS=0, SIGNAL_JWT_SECRET); SIGNAL_LISTEN,
#                         SIGNAL_ADMIN_LISTEN, SIGNAL_NODE_ID and
#                         SIGNAL_REDIS_URL (or SIGNAL_REDIS_CLUSTER) are set per node.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${SG_CLUSTER_DIR:-/tmp/sg-cluster}
host=${SG_CLUSTER_HOST:-127.0.0.1}
bin=${SG_GATEWAY_BIN:-$root/build/signal-gateway}
template=$root/deploy/haproxy-local.cfg.in

die() { echo "cluster.sh: $*" >&2; exit 1; }
say() { echo "$*" >&2; }

# ---------------------------------------------------------------- helpers

port_in_use() { (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null; }

free_port() {
  local p
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$host"
    return
  fi
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    port_in_use "$p" || { echo "$p"; return; }
  done
  die "no free port found"
}

# is_ours PID NAME: the pid is alive and runs NAME (pids are reused).
is_ours() {
  local pid=$1 name=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"
}

pid_of() { cat "$dir/$1.pid" 2>/dev/null || true; }

# stop_pid NAME MATCH SIGNAL TIMEOUT_S: signal the recorded pid, wait, SIGKILL after the bound.
stop_pid() {
  local name=$1 match=$2 sig=$3 timeout=$4 pid
  pid=$(pid_of "$name")
  if ! is_ours "$pid" "$match"; then
    rm -f "$dir/$name.pid"
    return 0
  fi
  kill "-$sig" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + timeout))
  while is_ours "$pid" "$match" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  if is_ours "$pid" "$match"; then
    say "$name (pid $pid) still running after ${timeout}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while is_ours "$pid" "$match"; do sleep 0.1; done
  fi
  rm -f "$dir/$name.pid"
}

http_code() { curl -s -o /dev/null -m 1 -w '%{http_code}' "$1" 2>/dev/null || true; }

load_state() {
  [ -f "$dir/cluster.env" ] || die "no cluster in $dir (deploy/cluster.sh start N)"
  # shellcheck disable=SC1091
  . "$dir/cluster.env"
}

# ---------------------------------------------------------------- pieces

start_redis() {
  if [ -n "${SG_CLUSTER_REDIS_URL:-}" ]; then
    REDIS_URL=$SG_CLUSTER_REDIS_URL
    REDIS_PORT=""
    return
  fi
  REDIS_PORT=${SG_CLUSTER_REDIS_PORT:-$(free_port)}
  REDIS_URL="redis://$host:$REDIS_PORT/0"
  # a copy: a server Sentinel reconfigures rewrites its config file
  cp "$root/deploy/redis.conf" "$dir/redis.conf"
  setsid redis-server "$dir/redis.conf" --port "$REDIS_PORT" --bind "$host" \
    --dir "$dir" --daemonize no --logfile "" --protected-mode no \
    >"$dir/redis.log" 2>&1 </dev/null &
  echo $! >"$dir/redis.pid"
  for _ in $(seq 100); do
    redis-cli -h "$host" -p "$REDIS_PORT" ping >/dev/null 2>&1 && return
    is_ours "$(pid_of redis)" redis-server || break
    sleep 0.05
  done
  tail -20 "$dir/redis.log" >&2
  die "redis-server did not start on $host:$REDIS_PORT"
}

# Six cluster-enabled redis-servers (each its own directory and cluster bus
# port), joined by redis-cli as 3 masters with a replica each.
start_redis_cluster() {
  local k port bus seeds="" addrs=""
  REDIS_NODES=""
  cp "$root/deploy/redis.conf" "$dir/redis.conf"
  for k in 1 2 3 4 5 6; do
    port=$(free_port); bus=$(free_port)
    while [ "$bus" = "$port" ]; do bus=$(free_port); done
    mkdir -p "$dir/redis$k"
    rm -f "$dir/redis$k/nodes.conf"
    setsid redis-server "$dir/redis.conf" --port "$port" --bind "$host" --dir "$dir/redis$k" \
      --cluster-enabled yes --cluster-port "$bus" --cluster-config-file nodes.conf \
      --cluster-node-timeout "${SG_CLUSTER_NODE_TIMEOUT_MS:-5000}" \
      --daemonize no --logfile "" --protected-mode no >"$dir/redis$k.log" 2>&1 </dev/null &
    echo $! >"$dir/redis$k.pid"
    REDIS_NODES+="$port "
    addrs+="$host:$port "
    [ $k -le 3 ] && seeds+="${seeds:+,}$host:$port"
  done
  for port in $REDIS_NODES; do
    for _ in $(seq 100); do
      redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1 && continue 2
      sleep 0.05
    done
    die "redis-server did not start on $host:$port (logs: $dir/redis*.log)"
  done
  # shellcheck disable=SC2086
  redis-cli --cluster create $addrs --cluster-replicas 1 --cluster-yes >"$dir/redis-cluster-create.log" 2>&1 ||
    { tail -20 "$dir/redis-cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
  for port in $REDIS_NODES; do
    for _ in $(seq 200); do
      redis-cli -h "$host" -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && continue 2
      sleep 0.05
    done
    die "the Redis Cluster did not reach cluster_state:ok on $host:$port"
  done
  REDIS_SEEDS=$seeds
  REDIS_PORT=${REDIS_NODES%% *}
  REDIS_URL=""
}

# stop_redis: the one server, or every cluster node.
stop_redis() {
  local f
  stop_pid redis redis-server TERM 10
  for f in "$dir"/redis[0-9]*.pid; do
    [ -e "$f" ] || continue
    stop_pid "$(basename "$f" .pid)" redis-server TERM 10
  done
}

# start_node I: runs gateway I under a small waiting shell that records its
# exit status in gwI.rc (so `drain` can report it); gwI.pid is the gateway's own pid.
start_node() {
  local i=$1 port aport
  load_state
  port=$(eval echo "\$GW${i}_PORT")
  aport=$(eval echo "\$GW${i}_ADMIN")
  [ -n "$port" ] || die "no gateway $i in this cluster"
  if is_ours "$(pid_of "gw$i")" signal-gateway; then
    die "gateway $i is already running (pid $(pid_of "gw$i"))"
  fi
  rm -f "$dir/gw$i.rc" "$dir/gw$i.pid"
  (
    # The settings given to `start` (gateway.env, secret.env) apply to every
    # later start-node/restart too, whatever the caller's environment is now.
    for v in $(compgen -e); do case $v in SIGNAL_*) unset "$v" ;; esac; done
    set -a
    # shellcheck disable=SC1091
    . "$dir/gateway.env"
    # shellcheck disable=SC1091
    . "$dir/secret.env"
    set +a
    export SIGNAL_NODE_ID="${SG_CLUSTER_NODE_PREFIX}$i" SIGNAL_LISTEN="$host:$port" \
      SIGNAL_ADMIN_LISTEN="$host:$aport"
    if [ -n "${REDIS_SEEDS:-}" ]; then
      export SIGNAL_REDIS_CLUSTER="$REDIS_SEEDS"
    else
      export SIGNAL_REDIS_URL="$REDIS_URL"
    fi
    setsid bash -c '"$1" & echo $! >"$2"; wait $!; echo $? >"$3"' _ "$BIN" "$dir/gw$i.pid" "$dir/gw$i.rc" \
      >>"$dir/gw$i.log" 2>&1 </dev/null &
  )
  for _ in $(seq 200); do
    [ -s "$dir/gw$i.pid" ] && [ "$(http_code "http://$host:$aport/readyz")" = 200 ] && return 0
    [ -f "$dir/gw$i.rc" ] && break
    sleep 0.05
  done
  tail -20 "$dir/gw$i.log" >&2
  die "gateway $i did not become ready (http://$host:$aport/readyz)"
}

render_haproxy() {
  local servers="" i port aport
  for i in $(seq "$N"); do
    port=$(eval echo "\$GW${i}_PORT")
    aport=$(eval echo "\$GW${i}_ADMIN")
    servers+="  server ${SG_CLUSTER_NODE_PREFIX}$i $host:$port check port $aport cookie ${SG_CLUSTER_NODE_PREFIX}$i"$'\n'
  done
  local out=$dir/haproxy.cfg line
  : >"$out"
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      @SERVERS@) printf '%s' "$servers" >>"$out" ;;
      *) line=${line//@LB_BIND@/$host:$LB_PORT}
         line=${line//@STATS_BIND@/$host:$STATS_PORT}
         printf '%s\n' "$line" >>"$out" ;;
    esac
  done <"$template"
  haproxy -c -q -f "$out" || die "generated $out is invalid"
}

haproxy_servers_up() { # prints "name status" per gateway, from the stats CSV
  curl -s -m 1 "http://$host:$STATS_PORT/stats;csv" 2>/dev/null |
    awk -F, '$1=="gateways" && $2!="BACKEND" {print $2, $18}'
}

start_haproxy() {
  render_haproxy
  setsid haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 </dev/null &
  echo $! >"$dir/haproxy.pid"
  for _ in $(seq 100); do
    [ "$(haproxy_servers_up | grep -c ' UP$' || true)" -eq "$N" ] && return
    is_ours "$(pid_of haproxy)" haproxy || break
    sleep 0.1
  done
  tail -20 "$dir/haproxy.log" >&2
  die "haproxy did not see every gateway up"
}

# ---------------------------------------------------------------- commands

cmd_start() {
  local redis_cluster=""
  if [ "${2:-}" = --redis-cluster ]; then redis_cluster=1
  elif [ -n "${2:-}" ]; then die "start N [--redis-cluster]"; fi
  N=${1:-2}
  [[ "$N" =~ ^[0-9]+$ ]] && [ "$N" -ge 1 ] && [ "$N" -le 16 ] || die "start N: N is 1-16"
  if [ -f "$dir/cluster.env" ]; then
    for f in "$dir"/*.pid; do
      [ -e "$f" ] || continue
      name=$(basename "$f" .pid)
      case $name in gw*) m=signal-gateway ;; *) m=$name ;; esac
      case $name in redis*) m=redis-server ;; esac
      is_ours "$(cat "$f")" "$m" && die "a cluster is running in $dir (deploy/cluster.sh stop first)"
    done
  fi
  command -v redis-server >/dev/null && command -v haproxy >/dev/null && command -v curl >/dev/null ||
    die "needs redis-server, haproxy and curl (apt-get install redis-server haproxy curl)"
  if [ ! -x "$bin" ]; then
    say "building $bin"
    cmake -S "$root" -B "$root/build" -DSG_TESTS=OFF >/dev/null
    cmake --build "$root/build" -j"${JOBS:-2}" --target signal-gateway >/dev/null
    bin=$root/build/signal-gateway
  fi
  mkdir -p "$dir"
  chmod 700 "$dir"
  rm -f "$dir"/redis*.pid "$dir"/haproxy.pid "$dir"/gw*.pid "$dir"/gw*.rc \
    "$dir"/redis*.log "$dir"/haproxy.log "$dir"/gw*.log
  SG_CLUSTER_NODE_PREFIX=${SG_CLUSTER_NODE_PREFIX:-gw}
  LB_PORT=${SG_CLUSTER_LB_PORT:-8443}
  if [ -z "${SG_CLUSTER_LB_PORT:-}" ] && port_in_use "$LB_PORT"; then LB_PORT=$(free_port); fi
  STATS_PORT=${SG_CLUSTER_STATS_PORT:-$(free_port)}

  # The secret stays in a 0600 file, never on a command line.
  umask 077
  if [ -n "${SIGNAL_JWT_SECRET:-}" ]; then
    printf 'SIGNAL_JWT_SECRET=%q\n' "$SIGNAL_JWT_SECRET" >"$dir/secret.env"
  elif [ -z "${SIGNAL_JWT_PUBLIC_KEY:-}${SIGNAL_JWT_JWKS_FILE:-}" ]; then
    printf 'SIGNAL_JWT_SECRET=%q\n' "cluster-$(openssl rand -hex 24)" >"$dir/secret.env"
  else
    : >"$dir/secret.env"
  fi
  for v in $(compgen -e); do
    case $v in
      SIGNAL_JWT_SECRET|SIGNAL_LISTEN|SIGNAL_ADMIN_LISTEN|SIGNAL_NODE_ID|SIGNAL_REDIS_URL|SIGNAL_REDIS_CLUSTER) ;;
      SIGNAL_*) printf '%s=%q\n' "$v" "${!v}" ;;
    esac
  done >"$dir/gateway.env"
  umask 022

  # A start that fails half way stops what it started.
  trap failed_start EXIT
  REDIS_SEEDS="" REDIS_NODES=""
  if [ -n "$redis_cluster" ]; then start_redis_cluster; else start_redis; fi
  {
    echo "N=$N"
    echo "HOST=$host"
    echo "BIN=$bin"
    echo "LB_PORT=$LB_PORT"
    echo "STATS_PORT=$STATS_PORT"
    echo "REDIS_PORT=$REDIS_PORT"
    echo "REDIS_URL=$REDIS_URL"
    echo "REDIS_SEEDS=$REDIS_SEEDS"
    echo "REDIS_NODES=\"$REDIS_NODES\""
    echo "SG_CLUSTER_NODE_PREFIX=$SG_CLUSTER_NODE_PREFIX"
    for i in $(seq "$N"); do
      p=$(free_port); a=$(free_port)
      while [ "$a" = "$p" ]; do a=$(free_port); done
      echo "GW${i}_PORT=$p"
      echo "GW${i}_ADMIN=$a"
    done
  } >"$dir/cluster.env"
  for i in $(seq "$N"); do start_node "$i"; done
  load_state
  start_haproxy
  trap - EXIT
  cmd_env
  cat >&2 <<MSG

signal-gateway cluster: $N gateways behind haproxy (state in $dir)
  WebSocket (load balancer): ws://$host:$LB_PORT/ws
  haproxy stats:             http://$host:$STATS_PORT/stats   (Prometheus: /metrics)
  gateways:                  $(for i in $(seq "$N"); do printf '%s ' "$(eval echo "ws://$host:\$GW${i}_PORT/ws")"; done)
  Redis:                     $( if [ -n "$REDIS_SEEDS" ]; then echo "Redis Cluster, 3 masters + 3 replicas: redis-cli -c -h $host -p $REDIS_PORT"; elif [ -n "$REDIS_PORT" ]; then echo "redis-cli -h $host -p $REDIS_PORT"; else echo "$REDIS_URL"; fi)
  Tokens:                    deploy/cluster.sh token alice demo     (HS256, secret in $dir/secret.env)
  Inspect a room:            redis-cli$( [ -n "$REDIS_SEEDS" ] && echo " -c") -h $host -p ${REDIS_PORT:-PORT} HGETALL 'room:{demo}:peers'
  Rolling restart, one node: deploy/cluster.sh restart 1
  Stop everything:           deploy/cluster.sh stop
MSG
}

# EXIT trap of a start that failed half way: stop what it started, by pid.
failed_start() {
  local f name
  say "start failed: stopping what was started (logs in $dir)"
  for f in "$dir"/gw*.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid)
    stop_pid "$name" signal-gateway TERM 15
  done
  stop_pid haproxy haproxy TERM 10
  stop_redis
}

cmd_env() {
  load_state
  echo "SG_LB_URL=ws://$HOST:$LB_PORT/ws"
  echo "SG_STATS_URL=http://$HOST:$STATS_PORT/stats"
  if [ -n "${REDIS_SEEDS:-}" ]; then echo "SG_REDIS_CLUSTER=$REDIS_SEEDS"; else echo "SG_REDIS_URL=$REDIS_URL"; fi
  for i in $(seq "$N"); do
    echo "SG_GW${i}_URL=ws://$HOST:$(eval echo "\$GW${i}_PORT")/ws"
    echo "SG_GW${i}_ADMIN=http://$HOST:$(eval echo "\$GW${i}_ADMIN")"
    echo "SG_GW${i}_PID=$(pid_of "gw$i")"
  done
}

cmd_status() {
  load_state
  local rc=0 pid
  pid=$(pid_of redis)
  if [ -n "${REDIS_SEEDS:-}" ]; then
    local k=0 port role
    for port in $REDIS_NODES; do
      k=$((k + 1)); pid=$(pid_of "redis$k")
      if is_ours "$pid" redis-server; then
        role=$(redis-cli -h "$HOST" -p "$port" role 2>/dev/null | head -1)
        echo "redis$k   pid $pid  $HOST:$port  ${role:-?}  keys: $(redis-cli -h "$HOST" -p "$port" dbsize 2>/dev/null)"
      else echo "redis$k   DOWN"; rc=1; fi
    done
    redis-cli -h "$HOST" -p "${REDIS_NODES%% *}" cluster info 2>/dev/null | grep '^cluster_state' | sed 's/^/  /' || true
  elif [ -n "$REDIS_PORT" ]; then
    if is_ours "$pid" redis-server; then
      echo "redis    pid $pid  $HOST:$REDIS_PORT  room keys: $(redis-cli -h "$HOST" -p "$REDIS_PORT" --scan --pattern 'room:*' 2>/dev/null | wc -l)"
    else echo "redis    DOWN"; rc=1; fi
  else
    echo "redis    external $REDIS_URL"
  fi
  for i in $(seq "$N"); do
    pid=$(pid_of "gw$i")
    aport=$(eval echo "\$GW${i}_ADMIN")
    if is_ours "$pid" signal-gateway; then
      echo "gw$i      pid $pid  ws://$HOST:$(eval echo "\$GW${i}_PORT")/ws  readyz $(http_code "http://$HOST:$aport/readyz")  node ${SG_CLUSTER_NODE_PREFIX}$i"
    else
      echo "gw$i      DOWN$( [ -f "$dir/gw$i.rc" ] && echo " (last exit status $(cat "$dir/gw$i.rc"))")"; rc=1
    fi
  done
  pid=$(pid_of haproxy)
  if is_ours "$pid" haproxy; then
    echo "haproxy  pid $pid  ws://$HOST:$LB_PORT/ws  stats http://$HOST:$STATS_PORT/stats"
    haproxy_servers_up | sed 's/^/  backend /'
  else echo "haproxy  DOWN"; rc=1; fi
  return $rc
}

cmd_drain() {
  local i=${1:?drain I} pid
  load_state
  pid=$(pid_of "gw$i")
  is_ours "$pid" signal-gateway || die "gateway $i is not running"
  local t0=$SECONDS
  stop_pid "gw$i" signal-gateway TERM 60
  for _ in $(seq 50); do [ -f "$dir/gw$i.rc" ] && break; sleep 0.05; done
  echo "gw$i (pid $pid) exited with status $(cat "$dir/gw$i.rc" 2>/dev/null || echo '?') after $((SECONDS - t0))s"
}

cmd_kill() {
  local i=${1:?kill I}
  load_state
  stop_pid "gw$i" signal-gateway KILL 5
  echo "gw$i killed"
}

cmd_stop() {
  load_state
  for i in $(seq "$N"); do stop_pid "gw$i" signal-gateway TERM 60; done
  stop_pid haproxy haproxy TERM 10
  stop_redis
  echo "cluster in $dir stopped"
}

cmd_token() {
  local sub=${1:?token SUB [ROOM...]}
  shift
  load_state
  local args=(token --sub "$sub" --ttl "${SG_TOKEN_TTL:-86400}")
  if [ $# -eq 0 ]; then args+=(--room '*'); fi
  for r in "$@"; do args+=(--room "$r"); done
  (
    set -a
    # shellcheck disable=SC1091
    . "$dir/secret.env"
    set +a
    "$BIN" "${args[@]}"
  )
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  drain) shift; cmd_drain "$@" ;;
  kill) shift; cmd_kill "$@" ;;
  start-node) shift; start_node "${1:?start-node I}"; load_state; echo "gw$1 started (pid $(pid_of "gw$1"))" ;;
  restart) shift; cmd_drain "${1:?restart I}"; start_node "$1"; echo "gw$1 started again (pid $(pid_of "gw$1"))" ;;
  token) shift; cmd_token "$@" ;;
  *) sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
