#!/usr/bin/env bash
# Static checks of the deployment files (no container engine needed):
#   - docker-compose.yml parses and validates (Debian's docker-compose 1.29),
#     with and without its optional profiles, and refuses to run without
#     SIGNAL_JWT_SECRET;
#   - no SIGNAL_* variable is handed to the gateways as an empty string (the
#     gateway treats "" as a value: SIGNAL_STATIC_DIR="" serves "/");
#   - deploy/Dockerfile copies only paths that exist;
#   - deploy/haproxy.cfg and the rendered deploy/haproxy-local.cfg.in pass
#     `haproxy -c`;
#   - deploy/nginx.conf passes `nginx -t` (when nginx is installed; the
#     "gateway" upstream is pointed at 127.0.0.1 since nginx resolves it);
#   - deploy/prometheus.yml (and its rules) parse (promtool when installed);
#   - deploy/cluster.sh is valid bash.
# Exits non-zero on the first failure. Needs: docker-compose, haproxy.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok   $*"; }
need() { command -v "$1" >/dev/null 2>&1 || fail "$1 not installed (apt-get install $2)"; }

need docker-compose docker-compose
need haproxy haproxy

# ---- docker-compose.yml
export SIGNAL_JWT_SECRET=check-only-not-a-secret
for profiles in "" "--profile nginx" "--profile sentinel"; do
  # shellcheck disable=SC2086
  docker-compose -f docker-compose.yml $profiles config -q || fail "docker-compose $profiles config"
  ok "docker-compose ${profiles:+$profiles }config"
done
if env -u SIGNAL_JWT_SECRET docker-compose -f docker-compose.yml config -q >/dev/null 2>&1; then
  fail "docker-compose config passes without SIGNAL_JWT_SECRET (the gateways would start without a key)"
fi
ok "docker-compose refuses to run without SIGNAL_JWT_SECRET"
(
  for v in $(compgen -e); do case $v in SIGNAL_JWT_SECRET) ;; SIGNAL_*) unset "$v" ;; esac; done
  docker-compose -f docker-compose.yml --profile nginx --profile sentinel config >"$tmp/compose.out"
)
if grep -nE "^\s+SIGNAL_[A-Z_]+: (''|\"\")\s*$" "$tmp/compose.out"; then
  fail "a SIGNAL_* variable is set to an empty string in docker-compose.yml"
fi
ok "no SIGNAL_* variable is an empty string"
# (awk reads all of it: exiting early would SIGPIPE docker-compose under pipefail)
replicas=$(docker-compose -f docker-compose.yml config | awk '/^  gateway:/{g=1} g&&/replicas:/&&!r{r=$2} END{print r}')
[ "${replicas:-0}" -ge 2 ] || fail "the gateway service should run 2 or more replicas (got ${replicas:-none})"
ok "gateway replicas: $replicas"

# ---- Dockerfile: every COPY source exists
while read -r src; do
  [ -e "$root/$src" ] || fail "deploy/Dockerfile copies $src, which does not exist"
done < <(awk '/^COPY / && !/--from=/ {for (i = 2; i < NF; i++) print $i}' deploy/Dockerfile)
grep -q '^USER ' deploy/Dockerfile || fail "deploy/Dockerfile runs as root"
grep -A1 '^HEALTHCHECK' deploy/Dockerfile | grep -q '/readyz' || fail "deploy/Dockerfile has no /readyz healthcheck"
ok "deploy/Dockerfile (COPY sources, non-root, healthcheck)"

# ---- haproxy
haproxy -c -q -f deploy/haproxy.cfg || fail "haproxy -c deploy/haproxy.cfg"
ok "haproxy -c deploy/haproxy.cfg"
# rendered the way deploy/cluster.sh and tests/integration/cluster_helpers.py do
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    @SERVERS@) printf '  server gw1 127.0.0.1:18443 check port 19090 cookie gw1\n'
               printf '  server gw2 127.0.0.1:18444 check port 19091 cookie gw2\n' ;;
    *) line=${line//@LB_BIND@/127.0.0.1:18400}; line=${line//@STATS_BIND@/127.0.0.1:18401}
       printf '%s\n' "$line" ;;
  esac
done <deploy/haproxy-local.cfg.in >"$tmp/haproxy-local.cfg"
if grep -v '^\s*#' "$tmp/haproxy-local.cfg" | grep -n '@[A-Z_]*@'; then fail "unrendered placeholder"; fi
haproxy -c -q -f "$tmp/haproxy-local.cfg" || fail "haproxy -c (rendered deploy/haproxy-local.cfg.in)"
ok "haproxy -c deploy/haproxy-local.cfg.in (rendered)"

# ---- nginx (optional)
if command -v nginx >/dev/null 2>&1; then
  sed -e 's/server gateway:8443/server 127.0.0.1:8443/' -e "s#/tmp/nginx#$tmp/nginx#g" \
    deploy/nginx.conf >"$tmp/nginx.conf"
  nginx -t -q -c "$tmp/nginx.conf" -e "$tmp/nginx-error.log" 2>"$tmp/nginx.err" ||
    { cat "$tmp/nginx.err" >&2; fail "nginx -t deploy/nginx.conf"; }
  ok "nginx -t deploy/nginx.conf"
else
  echo "skip nginx -t (nginx not installed)"
fi

# ---- prometheus
if command -v promtool >/dev/null 2>&1; then
  promtool check config deploy/prometheus.yml || fail "promtool check config"
  ok "promtool check config deploy/prometheus.yml"
else
  /usr/bin/python3 - deploy/prometheus.yml <<'PY' || fail "deploy/prometheus.yml"
import os, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
assert cfg["scrape_configs"], "no scrape_configs"
for f in cfg.get("rule_files", []):
    p = os.path.join(os.path.dirname(sys.argv[1]), f)
    assert os.path.exists(p), f"rule file {p} missing"
    assert yaml.safe_load(open(p)).get("groups"), f"{p}: no groups"
PY
  ok "deploy/prometheus.yml parses (promtool not installed)"
fi

# ---- scripts
bash -n deploy/cluster.sh || fail "bash -n deploy/cluster.sh"
ok "bash -n deploy/cluster.sh"
echo "all deployment checks passed"
