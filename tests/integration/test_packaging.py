# SPDX-License-Identifier: Apache-2.0
"""Issue 16: what tells an operator which build runs. `--version` / `-V`
(without any configuration), the `build_info{version,commit}` gauge on
/metrics and the `server.start` log line agree with each other and with the
version and commit CMake compiled in (build/generated/sg/version.h of the
binary's own build directory, when there is one).

The Debian package itself is checked by tests/package/deb.sh (a step of
tests/run.sh): it needs a release build and CPack, not a running gateway.
"""

import json
import pathlib
import re
import subprocess
import urllib.request

import sg_helpers as h

VERSION_LINE = re.compile(r"^signal-gateway (\d+\.\d+\.\d+) \(commit ([0-9A-Za-z._+-]+)\)$")
BUILD_INFO = re.compile(r'^build_info\{version="([^"]*)",commit="([^"]*)"\} 1$', re.M)


def run_version(*args):
    # No SIGNAL_* at all: the version needs no secret, no Redis, no config.
    env = h.clean_env()
    return subprocess.run([h.GATEWAY_BIN, *args], env=env, capture_output=True, text=True, timeout=20)


def compiled_in():
    """(version, commit) from the generated header next to the binary, or None."""
    header = pathlib.Path(h.GATEWAY_BIN).resolve().parent / "generated" / "sg" / "version.h"
    if not header.exists():
        return None
    text = header.read_text()
    v = re.search(r'#define SG_VERSION "([^"]*)"', text).group(1)
    c = re.search(r'#define SG_GIT_COMMIT "([^"]*)"', text).group(1)
    return v, c


def test_version_flag_without_configuration():
    outs = []
    for args in (["--version"], ["-V"], ["--log-level", "bogus", "--version"]):
        r = run_version(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        lines = r.stdout.splitlines()
        m = VERSION_LINE.match(lines[0])
        assert m, f"first line of {args}: {lines[0]!r}"
        assert re.search(r"\blibevent 2\.\d+", lines[1]) and "OpenSSL" in lines[1], lines
        outs.append(m.groups())
    assert len(set(outs)) == 1, outs
    want = compiled_in()
    if want:
        assert outs[0] == want, (outs[0], want)
    # The CMake project version, the one the Debian package and the npm client carry.
    cmake = (h.REPO / "CMakeLists.txt").read_text()
    assert re.search(r"project\(signal_gateway VERSION %s\b" % re.escape(outs[0][0]), cmake)
    pkg = json.loads((h.REPO / "clients" / "js" / "package.json").read_text())
    assert pkg["version"] == outs[0][0], "clients/js/package.json is not in step with the gateway"


def test_help_mentions_version():
    env = h.clean_env()
    r = subprocess.run([h.GATEWAY_BIN, "--help"], env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0
    assert "--version" in r.stdout


def test_build_info_gauge_and_start_line_agree(gateway):
    version, commit = VERSION_LINE.match(run_version("--version").stdout.splitlines()[0]).groups()
    with urllib.request.urlopen(gateway.admin_url + "/metrics", timeout=3) as r:
        text = r.read().decode()
    found = BUILD_INFO.findall(text)
    assert found == [(version, commit)], found
    assert "# TYPE build_info gauge" in text

    start = [json.loads(ln) for ln in gateway.log_text().splitlines()
             if ln.startswith("{") and '"server.start"' in ln]
    assert len(start) == 1, start
    assert start[0]["version"] == version and start[0]["commit"] == commit, start[0]
