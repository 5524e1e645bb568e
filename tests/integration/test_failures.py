# SPDX-License-Identifier: Apache-2.0
"""docs/protocol.md §5: node death (lease expiry), peer_unreachable, heartbeats,
client pings, and the SIGTERM/SIGINT drain."""

import asyncio
import signal
import time

import pytest

import sg_helpers as h
from sg_helpers import Clients, RawWS, new_peer, new_room, tok


# ---------------------------------------------------------------- node death


async def test_sigkill_gives_peer_left_timeout_within_lease(gateway_factory, redis):
    lease_ms = 2000
    g1, g2 = gateway_factory(2, env={"SIGNAL_LEASE_MS": lease_ms})
    room = new_room()
    pa, pb, pc = new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        a, b, cc = await c.members(room, (g1, "alice", pa), (g2, "bob", pb), (g2, "carol", pc))
        # outlive a few lease periods first: live members must not be reaped
        await a.expect_no_message(lease_ms / 1000 * 2)

        g2.kill()
        t0 = time.monotonic()
        bound = lease_ms / 1000 * 3 + 3
        got = {}
        for _ in range(2):
            m = await a.recv_type("peer_left", timeout=max(0.1, bound - (time.monotonic() - t0)))
            got[m["peerId"]] = m
        assert set(got) == {pb, pc}, got
        for m in got.values():
            assert m["reason"] == "timeout" and m["roomId"] == room, m
        await a.expect_no_message()
        assert sorted(redis.hgetall(h.peers_key(room))) == [pa]
        # the survivor keeps working: a new member on g1 sees only a
        d = await c.connect(g1.ws_url, tok("dave"), name="d")
        j = await d.join(room, new_peer())
        assert j["peers"] == [pa], j


async def test_peer_unreachable_after_target_node_dies(gateway_factory, redis):
    lease_ms = 6000  # long enough that the member record outlives the relay below
    g1, g2 = gateway_factory(2, env={"SIGNAL_LEASE_MS": lease_ms})
    room = new_room()
    pa, pb = new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(g1, g2, room, pa, pb)
        await a.send(h.offer(room, pa, pb, cid="before"))
        await b.recv_type("relay", correlationId="before")

        g2.kill()
        t0 = time.monotonic()
        # let Redis notice that g2's subscriber connection is gone
        try:
            await h.async_wait_until(lambda: redis.subscribers(h.peer_channel(room, pb)) == 0, 2.0)
        except AssertionError:
            pass  # the gateway may name its channels otherwise; carry on
        assert pb in redis.hgetall(h.peers_key(room)), "b's record should still be there"
        await a.send(h.offer(room, pa, pb, cid="after-kill"))
        await a.expect_error("peer_unreachable", cid="after-kill")
        assert time.monotonic() - t0 < lease_ms / 1000, "test too slow to be meaningful"
        await a.send(h.candidate(room, pa, pb, h.ice(1), cid="after-kill-2"))
        await a.expect_error("peer_unreachable", cid="after-kill-2")
        # and later the lease expires
        m = await a.recv_type("peer_left", peerId=pb, timeout=lease_ms / 1000 * 3 + 3)
        assert m["reason"] == "timeout"


# ---------------------------------------------------------------- heartbeats


HB_ENV = {"SIGNAL_PING_INTERVAL_MS": "500", "SIGNAL_PONG_TIMEOUT_MS": "500"}


async def test_heartbeat_reaps_a_client_that_never_answers_pings(gateway_factory):
    gw = gateway_factory.start(env=HB_ENV)
    room = new_room()
    pa, pb = new_peer(), new_peer()

    async with Clients() as c:
        b = await c.member(gw, "bob", room, pb)
        raw = await c.raw_member(gw, "alice", room, pa)
        await b.recv_type("peer_joined", peerId=pa)
        # the raw client now stays silent (never pongs)
        m = await b.recv_type("peer_left", peerId=pa, timeout=6)
        assert m["reason"] == "timeout", m
        await asyncio.to_thread(raw.wait_eof, 5)
        pings = [f for f in raw.frames if f.opcode == h.OP_PING]
        assert pings, f"the reaped client never saw a ping: {raw.frames}"
        # b answers pings (websockets does) and stays, over several intervals
        await b.expect_no_message(2.5)
        assert b.is_open
        await b.join(new_room(), new_peer())


async def test_client_answering_pings_stays_connected(gateway_factory):
    gw = gateway_factory.start(env=HB_ENV)
    room = new_room()

    async with Clients() as c:
        a = await c.connect(gw.ws_url, tok("alice"), name="a")
        b = await c.connect(gw.ws_url, tok("bob"), name="b")
        pa, pb = new_peer(), new_peer()
        await a.join(room, pa)
        await b.join(room, pb)
        await a.recv_type("peer_joined", peerId=pb)
        # six ping intervals with no application traffic
        await asyncio.gather(a.expect_no_message(3.0), b.expect_no_message(3.0))
        await a.send(h.offer(room, pa, pb, cid="alive"))
        await b.recv_type("relay", correlationId="alive")


def test_raw_client_answering_pings_stays_and_pings_are_periodic(gateway_factory):
    gw = gateway_factory.start(env=HB_ENV)
    raw = RawWS.connect(gw, tok("alice"))
    try:
        deadline = time.monotonic() + 3.0
        pings = 0
        while time.monotonic() < deadline:
            try:
                f = raw.recv_frame(max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                break
            if f.opcode == h.OP_PING:
                pings += 1
                raw.send_frame(h.OP_PONG, f.payload)
            else:
                raise AssertionError(f"unexpected frame {f}")
        assert pings >= 3, f"{pings} pings in 3 s with a 500 ms interval"
        raw.join(new_room(), new_peer())
    finally:
        raw.close()


def test_client_ping_gets_pong_with_same_payload(gateway):
    raw = RawWS.connect(gateway, tok("alice"))
    try:
        for payload in (b"", b"hello-123", bytes(range(125))):
            raw.send_frame(h.OP_PING, payload)
            f = raw.recv_frame(5)
            assert f.opcode == h.OP_PONG and f.fin, f
            assert f.payload == payload, f
        # unsolicited pongs are ignored
        raw.send_frame(h.OP_PONG, b"unsolicited")
        raw.join(new_room(), new_peer())
    finally:
        raw.close()


async def test_websockets_client_ping(gateway):
    async with Clients() as c:
        a = await c.connect(gateway.ws_url, tok("alice"), name="a")
        waiter = await a.ws.ping(b"abc")
        await asyncio.wait_for(waiter, 3)


# ---------------------------------------------------------------- drain


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_sigterm_drain(gateway_factory, redis, sig):
    """docs/protocol.md §5 shutdown, for SIGTERM and SIGINT alike."""
    drain_ms = 3000
    g1, g2 = gateway_factory(2, env={"SIGNAL_DRAIN_MS": drain_ms})
    room, room2 = new_room(), new_room()
    pa, pb, pc = new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        a = await c.connect(g1.ws_url, tok("alice"), name="a")
        b = await c.connect(g2.ws_url, tok("bob"), name="b")
        cc = await c.connect(g2.ws_url, tok("carol"), name="c")
        await a.join(room, pa)
        await a.join(room2, new_peer())
        await b.join(room, pb)
        await cc.join(room, pc)
        await cc.join(room2, pc)
        await a.recv_type("peer_joined", peerId=pb)
        await a.recv_type("peer_joined", peerId=pc)
        await a.recv_type("peer_joined", roomId=room2)

        t0 = time.monotonic()
        g2.terminate(sig)
        got = []
        for _ in range(3):
            m = await a.recv_type("peer_left", timeout=5)
            assert m["reason"] == "shutdown", m
            got.append((m["roomId"], m["peerId"]))
        assert sorted(got) == sorted([(room, pb), (room, pc), (room2, pc)]), got
        for cl in (b, cc):
            code = await cl.wait_closed(5)
            assert code == 1001, f"{cl.name}: close code {code}, expected 1001"
        rc = await asyncio.to_thread(g2.wait, drain_ms / 1000 + 3)
        assert rc == 0, f"drained node exited with {rc}"
        assert time.monotonic() - t0 < drain_ms / 1000 + 3
        await a.expect_no_message()
        assert sorted(redis.hgetall(h.peers_key(room))) == [pa]
        # the other node carries on
        d = await c.connect(g1.ws_url, tok("dave"), name="d")
        j = await d.join(room, new_peer())
        assert j["peers"] == [pa]


async def test_drain_refuses_new_handshakes_and_bounds_stubborn_clients(gateway_factory):
    """A client that never answers the close frame keeps the node draining for
    at most SIGNAL_DRAIN_MS; meanwhile readiness and new handshakes get 503."""
    drain_ms = 3000
    g1, g2 = gateway_factory(2, env={"SIGNAL_DRAIN_MS": drain_ms})
    room = new_room()
    pa, ps = new_peer(), new_peer()

    async with Clients() as c:
        a = await c.member(g1, "alice", room, pa)
        stubborn = await c.raw_member(g2, "stubborn", room, ps)
        await a.recv_type("peer_joined", peerId=ps)

        t0 = time.monotonic()
        g2.terminate()
        m = await a.recv_type("peer_left", peerId=ps, timeout=5)
        assert m["reason"] == "shutdown", m
        code, before = await asyncio.to_thread(stubborn.expect_close, 5)
        assert code == 1001, code
        # still draining (the stubborn client has not answered)
        assert g2.running(), "node exited before its drain timeout with a client pending"
        status = await asyncio.to_thread(g2.readyz, 1.0)
        assert status == 503, f"/readyz during drain: {status}"
        resp = await asyncio.to_thread(h.handshake, g2, tok("late"))
        assert resp.status == 503, resp
        assert resp.json().get("code") == "unavailable", resp
        rc = await asyncio.to_thread(g2.wait, drain_ms / 1000 + 3)
        assert rc == 0, rc
        elapsed = time.monotonic() - t0
        assert elapsed < drain_ms / 1000 + 3, elapsed
        await asyncio.to_thread(stubborn.wait_eof, 3)


def test_sigterm_with_no_clients_exits_0_promptly(gateway_factory):
    gw = gateway_factory.start(env={"SIGNAL_DRAIN_MS": "5000"})
    t0 = time.monotonic()
    gw.terminate()
    rc = gw.wait(8)
    assert rc == 0
    assert time.monotonic() - t0 < 8


# ---------------------------------------------------------------- bounded output


async def test_a_client_that_stops_reading_is_closed(gateway_factory):
    """Issue "Gateway core": the output side is bounded; a client that stops
    reading is closed instead of growing the node's memory."""
    gw = gateway_factory.start(env=h.NO_RATE_LIMITS)
    room = new_room()
    pa, ps = new_peer(), new_peer()

    async with Clients() as c:
        a = await c.member(gw, "alice", room, pa)
        await c.raw_member(gw, "slow", room, ps, rcvbuf=4096)
        await a.recv_type("peer_joined", peerId=ps)
        # ~16 MB of offers towards a peer that reads nothing more
        sdp = h.SDP + "a=pad:" + "p" * 60000 + "\r\n"
        t0 = time.monotonic()
        left = None
        for i in range(270):
            await a.send(h.offer(room, pa, ps, sdp=sdp, cid=f"flood-{i}"))
            if i % 10 == 9:
                try:
                    left = await a.recv_type("peer_left", peerId=ps, timeout=0.01)
                    break
                except AssertionError:
                    pass
        if left is None:
            left = await a.recv_type("peer_left", peerId=ps, timeout=15)
        assert left["roomId"] == room, left
        assert time.monotonic() - t0 < 30
        # the sender is unaffected
        assert a.is_open
        # errors for relays sent after the slow peer went are fine; nothing else
        for m in a.pending:
            assert m["type"] == "error" and m["code"] in ("peer_not_found", "peer_unreachable"), m
        a.pending.clear()
        await a.join(new_room(), new_peer())


# ---------------------------------------------------------------- overload


@pytest.mark.async_timeout(60)
async def test_past_the_in_flight_bound_messages_get_unavailable_and_nothing_is_lost(gateway_factory, redis):
    """Redis stops answering for 3 s (CLIENT PAUSE) while a sends 9,000
    candidates: the gateway keeps at most 8,192 commands in flight, answers
    the rest "unavailable" at once, does not drop its Redis connections
    (Redis is paused, not gone: SIGNAL_REDIS_TIMEOUT_MS is longer), and once
    Redis answers again every accepted relay reaches b, once, in order."""
    g, = gateway_factory(1, env={"SIGNAL_RATE_PEER": "0", "SIGNAL_RATE_CANDIDATE": "0", "SIGNAL_RATE_ROOM": "0",
                                 "SIGNAL_RATE_CONN_FRAMES": "0", "SIGNAL_RATE_CONN_BYTES": "0",
                                 "SIGNAL_REDIS_TIMEOUT_MS": "20000", "SIGNAL_MAX_OUTPUT_BYTES": str(64 << 20)})
    room, pa, pb = new_room(), new_peer(), new_peer()
    total = 9000

    async with Clients() as c:
        a, b = await c.pair(g, g, room, pa, pb)
        redis("CLIENT", "PAUSE", "3000", "ALL")
        for i in range(total):
            await a.send(h.candidate(room, pa, pb, h.ice(i), cid=f"o{i}"))
        refused, got = [], []
        deadline = time.monotonic() + 20
        while len(got) + len(refused) < total and time.monotonic() < deadline:
            while not a.queue.empty():
                m = a.queue.get_nowait()
                assert m["type"] == "error" and m["code"] == "unavailable" and \
                    "overloaded" in m["message"], m
                refused.append(m["correlationId"])
            try:
                got.append((await b.recv_type("relay", timeout=0.2))["correlationId"])
            except AssertionError:
                pass
        assert len(got) + len(refused) == total, (len(got), len(refused))
        # the bound counts every command in flight (a few are the gateway's own)
        assert total - 8192 <= len(refused) < total - 8000, len(refused)
        want = [f"o{i}" for i in range(total) if f"o{i}" not in set(refused)]
        assert got == want  # each accepted one once, in order
        await a.expect_no_message(0.5)
        await b.expect_no_message(0.2)
        assert "redis.disconnect" not in g.log_text()
        await a.leave(room, pa)
        await b.leave(room, pb)


# ---------------------------------------------------------------- a replica as the Redis


def test_a_gateway_pointed_at_a_replica_says_so_and_backs_off(gateway_factory, redis):
    """Regression: a server that takes connections but refuses the function
    library (a replica answers FUNCTION LOAD with READONLY; Redis 6 has no
    functions) was reconnected to at once, again and again: 32,570
    connections in 3 s, each logged as a failed function load asking for
    Redis 7. Only a library loaded ends the backoff now."""
    redis("REPLICAOF", h.HOST, str(h.free_port()))  # a master that is not there: read-only
    assert redis("ROLE")[0] == "slave"

    def connections():
        return int(dict(line.split(":", 1) for line in redis("INFO", "stats").splitlines()
                        if ":" in line)["total_connections_received"])

    before = connections()
    proc, log_path, _ = gateway_factory.spawn()

    def disconnects():
        return h.log_events(log_path.read_text(errors="replace"), "redis.disconnect")

    h.wait_until(lambda: len(disconnects()) >= 3, 10, what="three tries")
    time.sleep(1.5)
    assert proc.poll() is None
    seen = disconnects()
    assert {e["reason"] for e in seen} == {"server is a replica now"}, seen
    assert not h.log_events(log_path.read_text(errors="replace"), "redis.function_load_failed")
    # backoff (100 ms doubling, jittered): a handful of tries, not thousands;
    # a slower machine makes fewer
    assert len(seen) <= 20, len(seen)
    assert connections() - before <= 2 * len(seen) + 4, (connections() - before, len(seen))

