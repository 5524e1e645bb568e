#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The Debian package (CPack), built and checked the way a user gets it:
#   - `cmake --build BUILD --target package` makes signal-gateway_<version>_<arch>.deb,
#     version = CMake's project VERSION;
#   - Depends (from dpkg-shlibdeps) names the runtime libraries, each a real
#     package of this system, no -dev package; Recommends redis-server >= 7;
#   - the contents: binary, systemd unit, environment file (0600, a conffile),
#     demo + JS client (no tests, no node_modules), docs, license;
#   - dpkg itself installs it into a throwaway root (--root, maintainer scripts
#     run chrootless) and the installed binary passes --version; the installed
#     unit names the installed binary and environment file, passes
#     `systemd-analyze verify` and scores <= 2.0 on `systemd-analyze security`,
#     and its LimitNOFILE covers the default SIGNAL_MAX_CONNECTIONS;
#   - the installed binary serves the installed demo (/demo/, /js/...);
#   - `apt-get install --simulate` of the .deb resolves its Depends here;
#   - dpkg -r keeps the conffile, dpkg -P removes it.
# Usage: tests/package/deb.sh [BUILD_DIR]   (default build; configured already)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
tmp=$(mktemp -d)
gw_pid=""
cleanup() {
  if [ -n "$gw_pid" ]; then kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok   $*"; }

version=$(sed -n 's/^project(signal_gateway VERSION \([0-9][0-9.]*\).*/\1/p' CMakeLists.txt)
[ -n "$version" ] || fail "no project VERSION in CMakeLists.txt"
arch=$(dpkg --print-architecture)
deb="$build/signal-gateway_${version}_${arch}.deb"
rm -f "$build"/signal-gateway_*.deb
cmake --build "$build" --target package >"$tmp/cpack.log" 2>&1 || { cat "$tmp/cpack.log" >&2; fail "cpack"; }
[ -f "$deb" ] || fail "cpack made no $deb"
ok "cmake --build $build --target package: $deb"

# ---- control fields
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = signal-gateway ] || fail "Package: $(field Package)"
[ "$(field Version)" = "$version" ] || fail "Version $(field Version), CMake says $version"
[ "$(field Architecture)" = "$arch" ] || fail "Architecture: $(field Architecture)"
depends=$(field Depends)
for lib in libc6 libevent-2.1-7 libevent-openssl-2.1-7 libssl3 libhiredis0.14 libjson-c5 libjwt0; do
  printf '%s\n' "$depends" | tr ',' '\n' | grep -qE "^ *$lib( |$)" || fail "Depends lacks $lib: $depends"
done
if printf '%s\n' "$depends" | grep -q -- '-dev'; then fail "Depends names a -dev package: $depends"; fi
for p in $(printf '%s\n' "$depends" | tr ',|' '\n\n' | sed 's/(.*//' | tr -d ' '); do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    fail "Depends names $p, which is not an installed package here"
done
field Recommends | grep -q 'redis-server (>= 5:7' || fail "Recommends: $(field Recommends)"
ok "control: Version $version, Depends: $depends"

# ---- contents
dpkg-deb -c "$deb" | awk '{print $1, $6}' >"$tmp/contents"
for path in ./usr/bin/signal-gateway ./usr/lib/systemd/system/signal-gateway.service \
            ./etc/signal-gateway/signal-gateway.env \
            ./usr/share/signal-gateway/clients/demo/index.html ./usr/share/signal-gateway/clients/demo/demo.js \
            ./usr/share/signal-gateway/clients/js/signal-client.js ./usr/share/signal-gateway/clients/js/peer.js \
            ./usr/share/doc/signal-gateway/README.md ./usr/share/doc/signal-gateway/CHANGELOG.md \
            ./usr/share/doc/signal-gateway/LICENSE ./usr/share/doc/signal-gateway/copyright \
            ./usr/share/doc/signal-gateway/operating.md ./usr/share/doc/signal-gateway/high-availability.md; do
  grep -q " $path\$" "$tmp/contents" || fail "the package lacks $path"
done
if grep -E '/(test|testing|node_modules)/|\.tgz$|\.test\.mjs$|/tests/' "$tmp/contents"; then
  fail "the package carries test files"
fi
grep -q '^-rw------- ./etc/signal-gateway/signal-gateway.env$' "$tmp/contents" ||
  fail "the environment file (it holds the JWT secret) is not 0600: $(grep signal-gateway.env "$tmp/contents")"
grep -q '^-rwxr-xr-x ./usr/bin/signal-gateway$' "$tmp/contents" || fail "the binary is not 0755"
mkdir "$tmp/ctrl"
dpkg-deb -e "$deb" "$tmp/ctrl"
[ "$(cat "$tmp/ctrl/conffiles")" = /etc/signal-gateway/signal-gateway.env ] || fail "conffiles: $(cat "$tmp/ctrl/conffiles")"
for s in postinst prerm postrm; do sh -n "$tmp/ctrl/$s" || fail "$s does not parse"; done
ok "contents: $(wc -l <"$tmp/contents") entries, env file 0600 and a conffile, no test files"

# ---- dpkg -i into a throwaway root
root="$tmp/root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
dpkgr() { dpkg --root="$root" --force-depends --force-script-chrootless --log=/dev/null "$@"; }
dpkgr -i "$deb" >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -i"; }
dpkg --root="$root" -s signal-gateway | grep -q '^Status: install ok installed' || fail "not installed"
"$root/usr/bin/signal-gateway" --version >"$tmp/version" || fail "the installed binary: --version failed"
head -1 "$tmp/version" | grep -qE "^signal-gateway $version \(commit [0-9A-Za-z._+-]+\)$" ||
  fail "installed --version: $(head -1 "$tmp/version")"
[ "$(head -1 "$tmp/version")" = "$("$build/signal-gateway" --version | head -1)" ] ||
  fail "the packaged binary is not the one built in $build"
ok "dpkg -i (throwaway root): $(head -1 "$tmp/version")"

# ---- the installed unit
unit="$root/usr/lib/systemd/system/signal-gateway.service"
grep -qx 'ExecStart=/usr/bin/signal-gateway' "$unit" || fail "unit: $(grep ExecStart= "$unit")"
grep -qx 'EnvironmentFile=/etc/signal-gateway/signal-gateway.env' "$unit" || fail "unit: $(grep EnvironmentFile= "$unit")"
for k in DynamicUser=yes NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes \
         'CapabilityBoundingSet=' 'ExecReload=/bin/kill -HUP $MAINPID' KillSignal=SIGTERM; do
  grep -qxF "$k" "$unit" || fail "unit lacks $k"
done
nofile=$(sed -n 's/^LimitNOFILE=//p' "$unit")
maxconn=$("$root/usr/bin/signal-gateway" --help | sed -n 's/.*SIGNAL_MAX_CONNECTIONS .*\[default \([0-9]*\)\].*/\1/p')
[ -n "$maxconn" ] && [ "${nofile:-0}" -ge $((maxconn + 1024)) ] ||
  fail "LimitNOFILE=$nofile does not cover SIGNAL_MAX_CONNECTIONS=$maxconn + 1024"
drain_ms=$("$root/usr/bin/signal-gateway" --help | sed -n 's/.*SIGNAL_DRAIN_MS .*\[default \([0-9]*\)\].*/\1/p')
stop_s=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s$/\1/p' "$unit")
[ -n "$stop_s" ] && [ $((stop_s * 1000)) -gt "$drain_ms" ] || fail "TimeoutStopSec=$stop_s s is not longer than SIGNAL_DRAIN_MS=$drain_ms"
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify needs the ExecStart binary where the unit says: point it into the root.
  sed "s#^ExecStart=/usr/bin/#ExecStart=$root/usr/bin/#" "$unit" >"$tmp/signal-gateway.service"
  (cd "$tmp" && systemd-analyze verify "$tmp/signal-gateway.service") || fail "systemd-analyze verify"
  systemd-analyze security --offline=yes --root="$root" --threshold=20 \
    /usr/lib/systemd/system/signal-gateway.service >"$tmp/security" 2>&1 ||
    { tail -5 "$tmp/security" >&2; fail "systemd-analyze security: exposure above 2.0"; }
  ok "unit: systemd-analyze verify, $(grep -o 'Overall exposure level.*' "$tmp/security" | sed 's/ *[^ ]*$//')"
else
  echo "skip systemd-analyze (not installed)"
fi
ok "unit: LimitNOFILE=$nofile for SIGNAL_MAX_CONNECTIONS=$maxconn, TimeoutStopSec=${stop_s}s > drain ${drain_ms} ms"

# ---- the installed binary serves the installed demo (no Redis needed for it)
port_pair() {
  /usr/bin/python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])'
}
served=0
for attempt in 1 2 3; do
  read -r port admin < <(port_pair)
  SIGNAL_JWT_SECRET=package-check SIGNAL_REDIS_URL=redis://127.0.0.1:1/0 \
    SIGNAL_LISTEN=127.0.0.1:$port SIGNAL_ADMIN_LISTEN=127.0.0.1:$admin \
    SIGNAL_STATIC_DIR="$root/usr/share/signal-gateway/clients" \
    "$root/usr/bin/signal-gateway" >"$tmp/gw.log" 2>&1 &
  gw_pid=$!
  for _ in $(seq 50); do
    curl -fsS -o /dev/null "http://127.0.0.1:$admin/healthz" 2>/dev/null && break
    kill -0 "$gw_pid" 2>/dev/null || break
    sleep 0.1
  done
  if curl -fsS "http://127.0.0.1:$port/demo/" -o "$tmp/index.html" &&
     curl -fsS "http://127.0.0.1:$port/js/signal-client.js" -o "$tmp/client.js"; then
    served=1
  fi
  kill "$gw_pid" 2>/dev/null || true
  wait "$gw_pid" 2>/dev/null || true
  gw_pid=""
  [ $served = 1 ] && break
done
[ $served = 1 ] || { cat "$tmp/gw.log" >&2; fail "the installed demo was not served"; }
cmp -s "$tmp/client.js" clients/js/signal-client.js || fail "/js/signal-client.js differs from clients/js"
grep -q '<html' "$tmp/index.html" || fail "/demo/ is not the demo page"
ok "the installed binary serves the installed demo (/demo/, /js/signal-client.js)"

# ---- apt resolves the Depends on this system
if apt-get install --simulate "./$deb" >"$tmp/apt.log" 2>&1; then
  grep -q '^Inst signal-gateway' "$tmp/apt.log" || { cat "$tmp/apt.log" >&2; fail "apt-get --simulate"; }
  ok "apt-get install --simulate ./$(basename "$deb")"
else
  cat "$tmp/apt.log" >&2
  fail "apt-get install --simulate: dependencies do not resolve"
fi

# ---- remove keeps the configuration, purge removes it
dpkgr -r signal-gateway >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -r"; }
[ ! -e "$root/usr/bin/signal-gateway" ] || fail "dpkg -r left the binary"
[ -f "$root/etc/signal-gateway/signal-gateway.env" ] || fail "dpkg -r removed the conffile"
dpkgr -P signal-gateway >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -P"; }
[ ! -e "$root/etc/signal-gateway/signal-gateway.env" ] || fail "dpkg -P left the conffile"
ok "dpkg -r keeps /etc/signal-gateway/signal-gateway.env, dpkg -P removes it"
echo "all Debian package checks passed"
