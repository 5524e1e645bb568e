#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The JavaScript client as an npm package (clients/js), checked the way a
# user gets it:
#   - package.json: not private, the gateway's version (CMake's project
#     VERSION), Apache-2.0, an ES module, `types` and `exports` (".", "./peer")
#     pointing at files that exist;
#   - `npm pack` makes a tarball holding exactly the modules, their .d.ts,
#     README.md, LICENSE (the repository's) and package.json;
#   - in a throwaway project, typescript (tests/package/ts, pinned by its
#     package-lock.json, like tests/e2e's playwright-core) and the tarball
#     installed: `tsc --noEmit` type-checks clients/js/examples/typed.ts
#     through the package's exports (its @ts-expect-error lines must stay
#     errors); node imports both entry points by package name; a file that is
#     not exported cannot be imported.
# Usage: tests/package/npm.sh   (needs node and npm; reaches the npm registry
# through npm's cache)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok   $*"; }

# npm: Debian's package when none is there (a node from elsewhere brings its own).
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing: npm" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

version=$(sed -n 's/^project(signal_gateway VERSION \([0-9][0-9.]*\).*/\1/p' CMakeLists.txt)
[ -n "$version" ] || fail "no project VERSION in CMakeLists.txt"

# ---- package.json
SG_VERSION="$version" node --input-type=module -e '
  import { readFileSync, existsSync } from "node:fs";
  const pkg = JSON.parse(readFileSync("clients/js/package.json", "utf8"));
  const bad = [];
  const want = (cond, what) => { if (!cond) bad.push(what); };
  want(pkg.name === "signal-gateway-client", `name ${pkg.name}`);
  want(pkg.version === process.env.SG_VERSION, `version ${pkg.version}, the gateway is ${process.env.SG_VERSION}`);
  want(!pkg.private, "private");
  want(pkg.license === "Apache-2.0", `license ${pkg.license}`);
  want(pkg.type === "module", "type is not module");
  want(pkg.types && existsSync("clients/js/" + pkg.types), `types ${pkg.types}`);
  for (const [entry, js, dts] of [[".", "./signal-client.js", "./signal-client.d.ts"], ["./peer", "./peer.js", "./peer.d.ts"]]) {
    const e = pkg.exports?.[entry];
    want(e?.types === dts && e?.default === js, `exports["${entry}"]: ${JSON.stringify(e)}`);
    want(Object.keys(e ?? {})[0] === "types", `exports["${entry}"]: "types" must come first`);
  }
  for (const f of pkg.files ?? []) want(existsSync("clients/js/" + f), `files: ${f} does not exist`);
  if (bad.length) { console.error("clients/js/package.json: " + bad.join("; ")); process.exit(1); }
' || fail "clients/js/package.json"
ok "clients/js/package.json: signal-gateway-client@$version, Apache-2.0, types and exports"

# ---- npm pack
(cd clients/js && npm pack --pack-destination "$tmp" --json --loglevel=error) >"$tmp/pack.json" ||
  fail "npm pack"
tarball="$tmp/signal-gateway-client-$version.tgz"
[ -f "$tarball" ] || fail "npm pack made no $(basename "$tarball")"
node -e '
  const [pack] = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const got = pack.files.map((f) => f.path).sort();
  const want = ["LICENSE", "README.md", "package.json", "peer.d.ts", "peer.js", "signal-client.d.ts", "signal-client.js"];
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    console.error("npm pack holds " + JSON.stringify(got) + ", expected " + JSON.stringify(want));
    process.exit(1);
  }
' "$tmp/pack.json" || fail "tarball contents"
mkdir "$tmp/unpacked"
tar -xzf "$tarball" -C "$tmp/unpacked"
cmp -s "$tmp/unpacked/package/LICENSE" LICENSE || fail "clients/js/LICENSE differs from the repository's LICENSE"
ok "npm pack: $(basename "$tarball"), 7 files"

# ---- a consumer project: typescript + the tarball
consumer="$tmp/consumer"
mkdir "$consumer"
cp tests/package/ts/package.json tests/package/ts/package-lock.json tests/package/ts/tsconfig.json "$consumer/"
cp clients/js/examples/typed.ts "$consumer/"
(cd "$consumer" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || fail "npm ci (typescript)"
(cd "$consumer" && npm install --no-save --no-audit --no-fund --loglevel=error "$tarball" >/dev/null) ||
  fail "npm install of the tarball"
(cd "$consumer" && ./node_modules/.bin/tsc -p tsconfig.json) || fail "tsc --noEmit clients/js/examples/typed.ts"
ok "tsc $(cd "$consumer" && ./node_modules/.bin/tsc --version | sed 's/Version //') --noEmit: clients/js/examples/typed.ts against the package"

(cd "$consumer" && node --input-type=module -e '
  import Default, { SignalClient, SignalRoom, SignalError } from "signal-gateway-client";
  import PeerLinkDefault, { PeerRoom, PeerLink } from "signal-gateway-client/peer";
  import { createRequire } from "node:module";
  const pkg = createRequire(import.meta.url)("signal-gateway-client/package.json");
  const ok = Default === SignalClient && typeof SignalRoom === "function" && typeof SignalError === "function" &&
             PeerLinkDefault === PeerLink && typeof PeerRoom === "function" && pkg.name === "signal-gateway-client";
  if (!ok) process.exit(1);
') || fail "node cannot import the package's entry points by name"
if (cd "$consumer" && node --input-type=module -e 'await import("signal-gateway-client/signal-client.js")' 2>/dev/null); then
  fail "a path that is not in exports can be imported"
fi
ok "node imports signal-gateway-client and signal-gateway-client/peer; nothing else is exported"
echo "all npm package checks passed"
