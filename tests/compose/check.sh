#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Static checks of the deployment files (no container engine needed):
#   - docker-compose.yml parses and validates (Debian's docker-compose 1.29),
#     with and without each optional profile (tls, nginx, sentinel, cluster) and with
#     all of them, has no obsolete `version:` key, and refuses to run without
#     SIGNAL_JWT_SECRET;
#   - every long-running service restarts unless stopped; the gateway's
#     container health check (compose and Dockerfile) is /healthz, while the
#     load balancer checks /readyz;
#   - Grafana gets Prometheus as its data source and the dashboard, as the
#     provisioning files and mounts say;
#   - the cluster profile: six cluster-enabled Redis nodes, one init job
#     that waits for all of them and joins those six (3 masters, 1 replica
#     each), SIGNAL_REDIS_CLUSTER passed through to the gateways;
#   - the tls profile: the certificate script makes a PEM that haproxy
#     accepts with deploy/haproxy.cfg + deploy/haproxy-tls.cfg;
#   - .dockerignore keeps .git and build*/ out and every COPY source in;
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
ALL_PROFILES="--profile tls --profile nginx --profile sentinel --profile cluster"
for profiles in "" "--profile tls" "--profile nginx" "--profile sentinel" "--profile cluster" "$ALL_PROFILES"; do
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
  docker-compose -f docker-compose.yml --profile nginx --profile sentinel --profile cluster config >"$tmp/compose.out"
)
if grep -nE "^\s+SIGNAL_[A-Z_]+: (''|\"\")\s*$" "$tmp/compose.out"; then
  fail "a SIGNAL_* variable is set to an empty string in docker-compose.yml"
fi
ok "no SIGNAL_* variable is an empty string"
# (awk reads all of it: exiting early would SIGPIPE docker-compose under pipefail)
replicas=$(docker-compose -f docker-compose.yml config | awk '/^  gateway:/{g=1} g&&/replicas:/&&!r{r=$2} END{print r}')
[ "${replicas:-0}" -ge 2 ] || fail "the gateway service should run 2 or more replicas (got ${replicas:-none})"
ok "gateway replicas: $replicas"

if grep -nE '^version:' docker-compose.yml; then fail "docker-compose.yml has the obsolete version: key"; fi
ok "no version: key"

# The resolved configuration, every profile on, as YAML for the checks below.
# shellcheck disable=SC2086
docker-compose -f docker-compose.yml $ALL_PROFILES config >"$tmp/compose-all.yml"
/usr/bin/python3 - "$tmp/compose-all.yml" <<'PY' || fail "docker-compose.yml services"
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
svc = cfg["services"]
one_shot = {"tls-cert", "redis-cluster-init"}
bad = [n for n, s in svc.items() if n not in one_shot and s.get("restart") != "unless-stopped"]
assert not bad, f"services without restart: unless-stopped: {bad}"
assert "restart" not in svc["tls-cert"] or svc["tls-cert"]["restart"] == "no", "tls-cert runs once"
hc = svc["gateway"].get("healthcheck", {})
test = " ".join(hc.get("test", []))
assert "/healthz" in test and "/readyz" not in test, f"gateway healthcheck must be liveness (/healthz): {test!r}"
# Grafana: data source and dashboard provisioned from the files mounted.
g = svc["grafana"]
mounts = {}
for v in g["volumes"]:
    if isinstance(v, dict):
        mounts[v["target"]] = v.get("source")
    else:
        src, dst = v.split(":")[:2]
        mounts[dst] = src
def mounted(name):
    for dst, src in mounts.items():
        if src and src.endswith(name):
            return dst
    raise AssertionError(f"grafana does not mount {name}")
ds_dir = mounted("deploy/grafana/datasources.yml")
db_prov = mounted("deploy/grafana/dashboards.yml")
dash = mounted("deploy/grafana-dashboard.json")
assert ds_dir.startswith("/etc/grafana/provisioning/datasources/"), ds_dir
assert db_prov.startswith("/etc/grafana/provisioning/dashboards/"), db_prov
ds = yaml.safe_load(open("deploy/grafana/datasources.yml"))["datasources"]
prom = [d for d in ds if d["type"] == "prometheus"]
assert len(prom) == 1 and prom[0].get("isDefault"), ds
port = svc["prometheus"]["ports"][0]
assert prom[0]["url"] == "http://prometheus:9090", prom[0]["url"]
prov = yaml.safe_load(open("deploy/grafana/dashboards.yml"))["providers"]
paths = [p["options"]["path"] for p in prov]
assert any(dash.startswith(p.rstrip("/") + "/") for p in paths), (dash, paths)
# tls profile: lb-tls waits for the certificate and publishes the wss port.
lt = svc["lb-tls"]
assert lt["depends_on"]["tls-cert"]["condition"] == "service_completed_successfully", lt["depends_on"]
assert any(str(p.get("target") if isinstance(p, dict) else p).endswith("8445") for p in lt["ports"]), lt["ports"]
# cluster profile: six cluster-enabled nodes, joined once by the init job
# after all six answer, 3 masters with a replica each; the gateways take
# SIGNAL_REDIS_CLUSTER from the environment.
nodes = sorted(n for n in svc if n.startswith("redis-node-"))
assert nodes == [f"redis-node-{i}" for i in range(1, 7)], nodes
for n in nodes:
    cmd = svc[n]["command"]
    assert cmd[cmd.index("--cluster-enabled") + 1] == "yes", (n, cmd)
    assert svc[n].get("profiles") == ["cluster"], n
    assert "redis-cli" in " ".join(svc[n]["healthcheck"]["test"]), n
init = svc["redis-cluster-init"]
assert {k: v["condition"] for k, v in init["depends_on"].items()} == {n: "service_healthy" for n in nodes}, init
script = init["command"][0]
assert "--cluster create" in script and "--cluster-replicas 1" in script, script
assert "for n in 1 2 3 4 5 6" in script, script
assert "SIGNAL_REDIS_CLUSTER" in svc["gateway"]["environment"], svc["gateway"]["environment"]
PY
ok "restart: unless-stopped everywhere; gateway health check on /healthz; Grafana provisioned; tls and cluster profiles wired"

# ---- the tls profile's certificate, made as its script makes it, accepted by haproxy
mkdir -p "$tmp/certs"
/usr/bin/python3 - "$tmp/compose-all.yml" >"$tmp/mkcert.sh" <<'PY'
import sys, yaml
print(yaml.safe_load(open(sys.argv[1]))["services"]["tls-cert"]["command"][0])
PY
sed -i "s#/certs#$tmp/certs#g" "$tmp/mkcert.sh"
sh "$tmp/mkcert.sh" 2>"$tmp/mkcert.err" || { cat "$tmp/mkcert.err" >&2; fail "the tls-cert script"; }
sh "$tmp/mkcert.sh" 2>>"$tmp/mkcert.err" || fail "the tls-cert script, second run (keeps the certificate)"
openssl x509 -in "$tmp/certs/haproxy.pem" -noout -ext subjectAltName | grep -q 'DNS:localhost' ||
  fail "the generated certificate has no subjectAltName localhost"
sed -e "s#/usr/local/etc/haproxy/certs/#$tmp/certs/#" deploy/haproxy-tls.cfg >"$tmp/haproxy-tls.cfg"
haproxy -c -q -f deploy/haproxy.cfg -f "$tmp/haproxy-tls.cfg" || fail "haproxy -c deploy/haproxy.cfg + deploy/haproxy-tls.cfg"
ok "tls profile: certificate made once, haproxy -c with the TLS frontend"

# ---- .dockerignore
[ -f .dockerignore ] || fail "no .dockerignore"
grep -qx '.git' .dockerignore && grep -qx 'build\*/' .dockerignore || fail ".dockerignore must exclude .git and build*/"
while read -r src; do
  if grep -qxE "/?$src/?" .dockerignore; then fail ".dockerignore excludes $src, which deploy/Dockerfile copies"; fi
done < <(awk '/^COPY / && !/--from=/ {for (i = 2; i < NF; i++) print $i}' deploy/Dockerfile)
ok ".dockerignore (excludes .git, build*/; keeps what the Dockerfile copies)"

# ---- Dockerfile: every COPY source exists
while read -r src; do
  [ -e "$root/$src" ] || fail "deploy/Dockerfile copies $src, which does not exist"
done < <(awk '/^COPY / && !/--from=/ {for (i = 2; i < NF; i++) print $i}' deploy/Dockerfile)
grep -q '^USER ' deploy/Dockerfile || fail "deploy/Dockerfile runs as root"
grep -A1 '^HEALTHCHECK' deploy/Dockerfile | grep -q '/healthz' || fail "deploy/Dockerfile's HEALTHCHECK is not /healthz (liveness)"
if grep -A1 '^HEALTHCHECK' deploy/Dockerfile | grep -q '/readyz'; then
  fail "deploy/Dockerfile's HEALTHCHECK uses /readyz: a Redis outage would get every gateway restarted"
fi
grep -q 'option httpchk GET /readyz' deploy/haproxy.cfg || fail "deploy/haproxy.cfg does not check /readyz"
ok "deploy/Dockerfile (COPY sources, non-root, HEALTHCHECK /healthz; haproxy checks /readyz)"

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
