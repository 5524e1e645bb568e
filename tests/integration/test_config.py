# SPDX-License-Identifier: Apache-2.0
"""docs/protocol.md §7: settings come from the environment and from flags (flags
win); bad values are startup errors; --help works."""

import subprocess

import pytest

import sg_helpers as h
from sg_helpers import Clients, make_token, new_peer, new_room


async def test_flag_wins_over_environment(gateway_factory):
    gw = gateway_factory.start(env={"SIGNAL_ROOM_MAX_PEERS": "8"}, args=["--room-max-peers", "2"])
    room = new_room()

    async with Clients() as c:
        a = await c.connect(gw.ws_url, make_token("alice", rooms=["*"]), name="a")
        a2 = await c.connect(gw.ws_url, make_token("alice", rooms=["*"]), name="a2")
        b = await c.connect(gw.ws_url, make_token("bob", rooms=["*"]), name="b")
        await a.join(room, new_peer())
        await a2.join(room, new_peer())
        await b.send({"type": "join", "roomId": room, "peerId": new_peer(), "correlationId": "f"})
        await b.expect_error("room_full", cid="f")


async def test_flag_with_equals_sign(gateway_factory):
    gw = gateway_factory.start(args=["--rooms-per-connection=1"])

    async with Clients() as c:
        a = await c.connect(gw.ws_url, make_token("alice", rooms=["*"]), name="a")
        await a.join(new_room(), new_peer())
        await a.send({"type": "join", "roomId": new_room(), "peerId": new_peer(), "correlationId": "t"})
        await a.expect_error("too_many_rooms", cid="t")


@pytest.mark.parametrize("env", [
    {"SIGNAL_LEASE_MS": "abc"},
    {"SIGNAL_ROOM_MAX_PEERS": "-1"},
    {"SIGNAL_LISTEN": "not-an-address"},
    {"SIGNAL_JWT_ALG": "none"},
    {"SIGNAL_JWT_SECRET": None},
    {"SIGNAL_JWT_ALG": "RS256", "SIGNAL_JWT_SECRET": None,
     "SIGNAL_JWT_PUBLIC_KEY": "/nonexistent/key.pem"},
    {"SIGNAL_TLS_CERT": "/nonexistent/cert.pem", "SIGNAL_TLS_KEY": "/nonexistent/key.pem"},
], ids=["lease-not-a-number", "negative-capacity", "bad-listen", "alg-none", "no-secret",
        "missing-public-key-file", "missing-tls-files"])
def test_bad_configuration_is_a_startup_error(gateway_factory, env):
    proc, log, _ = gateway_factory.spawn(env=env)
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"gateway kept running with {env}") from None
    assert rc != 0, log.read_text(errors="replace")
    assert log.read_text(errors="replace").strip(), "a startup error should say what is wrong"


def test_unknown_flag_is_an_error(gateway_factory):
    proc, log, _ = gateway_factory.spawn(args=["--no-such-flag", "1"])
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("gateway kept running with an unknown flag") from None
    assert rc != 0


def test_help(gateway_factory):
    out = subprocess.run([h.GATEWAY_BIN, "--help"], capture_output=True, timeout=10,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0
    text = (out.stdout + out.stderr).decode(errors="replace")
    for name in ("SIGNAL_LISTEN", "SIGNAL_REDIS_URL", "SIGNAL_JWT_SECRET", "SIGNAL_LEASE_MS",
                 "--redis-url"):
        assert name in text, name


async def test_redis_host_name_is_resolved_without_blocking(gateway_factory, redis):
    """A Redis URL with a host name (resolved through libevent's evdns, from
    /etc/hosts here) works like an address; a name that does not resolve is
    reported and retried, never a crash."""
    gw = gateway_factory.start(env={"SIGNAL_REDIS_URL": f"redis://localhost:{redis.port}/0"})
    room = new_room()

    async with Clients() as c:
        a = await c.connect(gw.ws_url, make_token("alice", rooms=["*"]), name="a")
        j = await a.join(room, new_peer())
        assert j["type"] == "joined", j
    proc, log_path, env = gateway_factory.spawn(env={"SIGNAL_REDIS_URL": "redis://no-such-host.invalid:6379/0"})
    h.wait_until(lambda: '"cannot resolve' in log_path.read_text(errors="replace"), 10,
                 what="a resolver error in the log")
    admin = env["SIGNAL_ADMIN_LISTEN"]
    st = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{admin}/readyz"],
                        capture_output=True, text=True, timeout=5).stdout
    assert st == "503" and proc.poll() is None, (st, proc.poll())
