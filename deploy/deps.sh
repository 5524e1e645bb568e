#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs the Debian 12 packages a task needs, only those missing.
# Usage: deploy/deps.sh build|test|run
set -euo pipefail
build=(build-essential cmake pkg-config libevent-dev libssl-dev libhiredis-dev libjson-c-dev
       libjwt-dev libcmocka-dev redis-server openssl)
test=(python3-pytest python3-pytest-xdist python3-websockets python3-jwt python3-cryptography clang prometheus coturn python3-aiortc
      chromium haproxy iproute2 docker-compose curl
      libclang-rt-14-dev nodejs)
# run: what the README's hand test (python3 + websockets) needs on top.
run=(python3 python3-websockets)
want=("${build[@]}")
case "${1:-build}" in
  test) want+=("${run[@]}" "${test[@]}") ;;
  run) want+=("${run[@]}") ;;
  build) ;;
  *) echo "usage: $0 build|test|run" >&2; exit 2 ;;
esac
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
