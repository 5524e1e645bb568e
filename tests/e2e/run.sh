#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# End-to-end tests with real WebRTC stacks (tests/e2e/README.md):
#   1. test_aiortc.py        two aiortc peers, trickle ICE, a data channel (pytest)
#   2. single-node.test.mjs  two headless Chromium pages, the demo over wss from one gateway
#   3. cross-node.test.mjs   the pages on two gateway nodes behind haproxy (TLS at haproxy)
#   4. reconnect.test.mjs    SIGKILL of one page's node: reconnect, resume, ICE restart
#   5. control.test.mjs      backend control: `signal-gateway kick` / `revoke` of a page in a call
# (2-5 run on node's test runner, Chromium driven by playwright-core.)
#
# Usage: tests/e2e/run.sh            (from anywhere; exits non-zero on any failure)
# Env:   SG_GATEWAY_BIN     gateway binary (default build/signal-gateway; built when missing)
#        SG_E2E_ARTIFACTS   screenshots, page logs, process logs (default build/e2e-artifacts)
#        SG_E2E_UPDATE_DOCS=1  also copy a fresh screenshot to docs/demo.png
#
# Every process a test starts (redis-server, gateways, haproxy, Chromium)
# runs in a private network namespace with nothing but loopback (unshare
# --net): WebRTC gathers candidates on every interface, and this test's
# traffic must stay on 127.0.0.1. npm ci runs before, outside it.
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$self")/../.."
root=$(pwd)
PY=/usr/bin/python3 # Debian's python3-* packages live here

stage=${SG_E2E_STAGE:-prepare}

if [ "$stage" = prepare ]; then
  # ---- what the tests need (Debian 12 packages; node/npm may come from elsewhere)
  need=(python3-pytest python3-websockets python3-jwt python3-cryptography python3-aiortc
        chromium haproxy redis-server openssl iproute2 util-linux
        build-essential cmake pkg-config libevent-dev libssl-dev libhiredis-dev libjson-c-dev libjwt-dev)
  missing=()
  for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi

  export SG_GATEWAY_BIN=${SG_GATEWAY_BIN:-$root/build/signal-gateway}
  export SG_E2E_ARTIFACTS=${SG_E2E_ARTIFACTS:-$root/build/e2e-artifacts}
  if [ ! -x "$SG_GATEWAY_BIN" ]; then
    echo "===== building $SG_GATEWAY_BIN =====" >&2
    cmake -S . -B build -DSG_WERROR=ON >/dev/null
    cmake --build build -j"${JOBS:-2}" --target signal-gateway
  fi
  mkdir -p "$SG_E2E_ARTIFACTS"

  echo "===== npm ci (tests/e2e: playwright-core; no browser download) ====="
  (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)

  if [ "${SG_E2E_HOST_NETWORK:-0}" = 1 ]; then
    echo "SG_E2E_HOST_NETWORK=1: running in the host's network namespace" >&2
    SG_E2E_STAGE=run exec "$self" "$@"
  fi
  SG_E2E_STAGE=netns exec unshare --net -- "$self" "$@"
fi

# ---- inside the namespace (or on the host network, when asked to)
if [ "$stage" = netns ]; then ip link set lo up; fi
rc=0
echo "===== e2e 1: two aiortc peers (pytest) ====="
timeout 300 "$PY" -m pytest -v -m e2e tests/e2e/test_aiortc.py || rc=1

echo "===== e2e 2-5: Chromium pages and the demo (node --test) ====="
node_args=(--test --test-reporter=spec)
# One browser test at a time (2 cores shared). Node before 20.10 lacks the
# flag and runs availableParallelism()-1 files at once.
if node --test-concurrency=1 -e 0 2>/dev/null; then node_args+=(--test-concurrency=1); fi
timeout 900 node "${node_args[@]}" tests/e2e/single-node.test.mjs tests/e2e/cross-node.test.mjs \
  tests/e2e/reconnect.test.mjs tests/e2e/control.test.mjs || rc=1

echo "artifacts (screenshots, page and process logs): $SG_E2E_ARTIFACTS"
[ $rc -eq 0 ] && echo "===== e2e: all passed =====" || echo "===== e2e: FAILED =====" >&2
exit $rc
