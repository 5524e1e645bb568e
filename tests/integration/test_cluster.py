# SPDX-License-Identifier: Apache-2.0
"""Scale-out and failure (issue 6): gateways behind haproxy, rolling restarts,
a node dying, Redis restarting empty, a Sentinel failover, and a soak.

Each test builds its own cluster on loopback from child processes
(cluster_helpers.py): redis-server from deploy/redis.conf, gateways on fixed
ports, and haproxy from deploy/haproxy-local.cfg.in, the template
deploy/cluster.sh uses. Measured timings are printed (pytest -s shows them)
and bounded by assertions.
"""

import asyncio
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time

import pytest

import cluster_helpers as ch
import sg_helpers as h
from sg_helpers import arun, new_peer, new_room, tok


def require(*tools):
    """Fail (not skip: CI must not pass without these tests) when a tool is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"needs {', '.join(missing)}: apt-get install {' '.join(missing)} "
                    f"(deploy/deps.sh test)", pytrace=False)


def info_fields(text):
    """INFO's `field:value` lines as a dict."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def report(what, value):
    print(f"\n[cluster measurement] {what}: {value}")


@pytest.fixture
def cluster(tmp_path, request):
    require("haproxy", "redis-server")
    c = ch.Cluster(tmp_path)
    yield c
    rep = getattr(request.node, "rep_call", None)  # set by conftest's report hook
    if rep is not None and rep.failed:
        for n in c.nodes:
            print(f"\n===== log tail of {n.name} (pid {n.pid}) =====\n{n.log_tail(30)}")
    problems = c.teardown()
    if problems:
        tails = "".join(f"\n===== {n.name} =====\n{n.log_tail(30)}" for n in c.nodes)
        pytest.fail("; ".join(problems) + tails, pytrace=False)


def drain_queue(client):
    """Move what has arrived so far into client.pending."""
    while not client.queue.empty():
        item = client.queue.get_nowait()
        if item is h._CLOSED:
            client.queue.put_nowait(item)
            break
        client.pending.append(item)


async def exchange(a, pa, b, pb, room, tag, timeout=5.0):
    """offer a->b, answer b->a; both arrive."""
    await a.send(h.offer(room, pa, pb, cid=f"{tag}-o"))
    m = await b.recv_type("relay", correlationId=f"{tag}-o", timeout=timeout)
    assert m["inner"]["from"] == pa, m
    await b.send(h.answer(room, pb, pa, cid=f"{tag}-a"))
    await a.recv_type("relay", correlationId=f"{tag}-a", timeout=timeout)


# ---------------------------------------------------------------- the LB itself


@pytest.mark.async_timeout(60)
async def test_lb_sticky_cookie_and_retry_of_a_draining_node(cluster):
    """haproxy hands out a cookie naming the node; a client that sends it back
    lands on that node; a handshake sent (with that cookie) to a node that is
    draining is retried on another one before the client sees a 503."""
    cluster.start_redis()
    g1, g2 = cluster.add_nodes(2, env={"SIGNAL_DRAIN_MS": 4000})
    lb = cluster.start_lb()

    async with h.Clients() as cs:
        seen = set()
        for i in range(4):
            c = await cs.connect(lb.url, tok(f"u{i}"), name=f"c{i}")
            seen.add(ch.lb_cookie(c))
        assert seen == {"gw1", "gw2"}, f"leastconn over two nodes should use both: {seen}"
        for name in ("gw1", "gw2", "gw1"):
            room, p = new_room(), new_peer()
            c = await ch.pinned_member(cs, lb, name, "pin", room, p)
            assert cluster.redis.member_nodes(room) == {p: name}

        # a client that never answers the close frame keeps gw1 draining
        stubborn = await asyncio.to_thread(h.RawWS.connect, g1, tok("stubborn"))
        try:
            g1.terminate()
            await asyncio.to_thread(stubborn.expect_close, 5)
            t0 = time.monotonic()
            room, p = new_room(), new_peer()
            lb_view = lb.stats().get("gw1", "")
            c = await ch.pinned_member(cs, lb, "gw1", "late", room, p)
            assert cluster.redis.member_nodes(room) == {p: "gw2"}, "not redispatched"
            assert g1.running(), "gw1 should still be draining (stubborn client)"
            lb.wait_states({"gw1": "DOWN"}, 5)
            report("haproxy marks a draining node DOWN after SIGTERM", f"{time.monotonic() - t0:.2f}s "
                   f"(when the late handshake went out, haproxy still had it {lb_view!r}: "
                   f"the 503 was retried on gw2)")
            rc = await asyncio.to_thread(g1.wait, 8)
            assert rc == 0
        finally:
            stubborn.close()


# ---------------------------------------------------------------- rolling restart


async def test_rolling_restart_through_the_load_balancer(cluster):
    """Two peers in a call on different nodes; each node in turn is drained
    (SIGTERM) and started again. The peer on it is closed with 1001,
    reconnects through haproxy and joins again; the other peer sees peer_left
    (shutdown) then peer_joined and nothing else; relays work after each step;
    every drained node exits 0 within its drain bound; afterwards nothing of
    the room is left in Redis. Resumption stays on (production default)."""
    drain_ms = 3000
    cluster.start_redis()
    cluster.add_nodes(3, env={"SIGNAL_DRAIN_MS": drain_ms})
    lb = cluster.start_lb()
    redis = cluster.redis
    room = new_room("roll")
    peers = {"a": new_peer(), "b": new_peer()}
    toks = {"a": tok("alice"), "b": tok("bob")}
    timings = []

    clients = {}
    cookies = {}
    try:
        for who, node in (("a", "gw1"), ("b", "gw2")):
            c, _ = await ch.connect_retry(lb.url, toks[who], who, cookie=node)
            clients[who], cookies[who] = c, ch.lb_cookie(c) or node
        await clients["a"].join(room, peers["a"])
        await clients["b"].join(room, peers["b"])
        await clients["a"].recv_type("peer_joined", peerId=peers["b"])
        await exchange(clients["a"], peers["a"], clients["b"], peers["b"], room, "start")
        assert redis.member_nodes(room) == {peers["a"]: "gw1", peers["b"]: "gw2"}

        for step, node in enumerate(cluster.nodes):
            where = redis.member_nodes(room)
            on_node = [w for w in ("a", "b") if where[peers[w]] == node.name]
            assert len(on_node) <= 1, f"both peers on {node.name}: {where}"
            t0 = time.monotonic()
            node.terminate()
            if on_node:
                x = on_node[0]
                y = "b" if x == "a" else "a"
                left = await clients[y].recv_type("peer_left", peerId=peers[x], timeout=5)
                assert left["reason"] == "shutdown" and left["roomId"] == room, left
                code = await clients[x].wait_closed(5)
                assert code == 1001, f"{x}: close code {code}"
            rc = await asyncio.to_thread(node.wait, drain_ms / 1000 + 3)
            drained = time.monotonic() - t0
            assert rc == 0, f"{node.name} exited with {rc} after SIGTERM"
            assert drained < drain_ms / 1000 + 1, f"{node.name} drained in {drained:.2f}s"
            if on_node:
                # reconnect through the LB with the cookie it had (now naming a dead node)
                t1 = time.monotonic()
                c, attempts = await ch.connect_retry(lb.url, toks[x], x, cookie=cookies[x])
                clients[x] = c
                cookies[x] = ch.lb_cookie(c) or cookies[x]
                j = await c.join(room, peers[x])
                assert j["peers"] == [peers[y]], j
                pj = await clients[y].recv_type("peer_joined", peerId=peers[x], timeout=5)
                assert pj["roomId"] == room
                rejoin = time.monotonic() - t1
                await exchange(clients["a"], peers["a"], clients["b"], peers["b"], room, f"step{step}")
                # nothing else reached the peer that stayed
                await clients[y].expect_no_message(0.2)
                where = redis.member_nodes(room)
                assert where[peers[x]] != node.name
                timings.append((node.name, f"drain {drained:.2f}s", f"reconnect+join {rejoin:.2f}s",
                                f"{attempts} attempt(s)", f"-> {where[peers[x]]}"))
            # the node comes back in its slot; haproxy sends to it again
            await asyncio.to_thread(cluster.restart_node, node)
            # the two peers stay on different nodes (leastconn)
            where = redis.member_nodes(room)
            assert where[peers["a"]] != where[peers["b"]], where

        await exchange(clients["a"], peers["a"], clients["b"], peers["b"], room, "end")
        assert ch.ttl_problems(redis) == []
        await clients["a"].leave(room, peers["a"])
        await clients["b"].recv_type("peer_left", peerId=peers["a"], reason="leave")
        await clients["b"].leave(room, peers["b"])
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True)
    assert redis.keys("room:*") == [], f"leaked: {redis.keys('room:*')}"
    assert ch.gateway_keys(redis) == []
    for t in timings:
        report("rolling restart step", " ".join(t))
    for n in cluster.nodes:
        assert [rc for _, rc in n.exits] == [0], f"{n.name} exits {n.exits}"


# ---------------------------------------------------------------- SIGKILL


def test_a_client_still_sending_when_its_node_drains_gets_the_close_behind_haproxy(cluster):
    """A node drains (SIGTERM) while a client behind haproxy is still sending:
    the client reads the 1001 close frame, goes on sending for a moment (it
    has not read the close yet), then answers it; its close frame reaches
    the node (ws.close "closed") and TCP ends without a reset on the way.
    The node used to end TCP right behind its close frame: haproxy then tore
    the tunnel down at once, so the client's close frame never arrived (the
    node logged "eof") and a client still sending got a reset that destroyed
    the close frame it had not read yet (the soak test saw websockets'
    1006, "no close frame received or sent", about once in eleven runs)."""
    cluster.start_redis()
    g, = cluster.add_nodes(1, env={"SIGNAL_DRAIN_MS": 5000})
    lb = cluster.start_lb()
    raw = h.RawWS.connect(lb, tok())
    try:
        raw.send_frame(h.OP_PING, b"up")  # through haproxy to the node and back
        assert raw.recv_frame(5).opcode == h.OP_PONG
        g.terminate()
        f = raw.recv_frame(5)
        assert f.opcode == h.OP_CLOSE and f.close_code == 1001, f
        ended = "eof"
        try:
            for _ in range(3):
                raw.send_frame(h.OP_TEXT, b'{"type":"ping"}')
            time.sleep(0.3)
            raw.send_frame(h.OP_CLOSE, (1001).to_bytes(2, "big"))
            raw.sock.settimeout(5)
            while raw.sock.recv(65536):
                pass
        except OSError as e:
            ended = f"reset: {e!r}"
    finally:
        raw.close()
    assert g.wait(10) == 0
    closes = [json.loads(ln) for ln in g.log_text().splitlines() if '"event":"ws.close"' in ln]
    assert ended == "eof" and [(c["code"], c["reason"]) for c in closes] == [(1001, "closed")], (ended, closes)



@pytest.mark.async_timeout(60)
async def test_sigkill_of_a_node_peers_time_out_and_keys_expire(cluster):
    """A node dies without a word (SIGKILL): its peers' room-mates get
    peer_left reason timeout within lease + one heartbeat period + margin; a
    room held only by the dead node is reaped with it (its keys deleted); the dead node's clients reconnect through haproxy and join again;
    afterwards nothing is left. Resumption off (docs/protocol.md §5 as it stands)."""
    lease_ms = 2000
    cluster.start_redis()
    g1, g2 = cluster.add_nodes(2, env={"SIGNAL_LEASE_MS": lease_ms, "SIGNAL_RESUME_MS": 0,
                                       "SIGNAL_DRAIN_MS": 2000})
    lb = cluster.start_lb()
    redis = cluster.redis
    room, lonely = new_room("kill"), new_room("lonely")
    pa, pb, pc, pd, pe = (new_peer() for _ in range(5))

    async with h.Clients() as cs:
        a = await ch.pinned_member(cs, lb, "gw1", "alice", room, pa)
        b = await ch.pinned_member(cs, lb, "gw2", "bob", room, pb)
        c = await ch.pinned_member(cs, lb, "gw2", "carol", room, pc)
        d = await ch.pinned_member(cs, lb, "gw2", "dave", lonely, pd)
        e = await ch.pinned_member(cs, lb, "gw2", "erin", lonely, pe)
        await a.recv_type("peer_joined", peerId=pb)
        await a.recv_type("peer_joined", peerId=pc)
        await exchange(a, pa, b, pb, room, "pre")
        await d.send(h.candidate(lonely, pd, pe, h.ice(1), cid="pre-c"))
        await e.recv_type("relay", correlationId="pre-c")
        assert redis.member_nodes(room) == {pa: "gw1", pb: "gw2", pc: "gw2"}
        assert set(redis.member_nodes(lonely).values()) == {"gw2"}
        # every key the gateway wrote expires (its nodes renew a room's
        # keys; liveness does not wait for them: see below)
        keys = redis.keys("*")
        assert any(k.endswith(":buckets") for k in keys), keys
        for k in keys:
            ttl = redis("PTTL", k)
            assert 0 < ttl <= ch.KEY_TTL_MAX_MS, f"{k}: PTTL {ttl}"
        # live members are not reaped: two lease periods pass quietly
        await a.expect_no_message(2 * lease_ms / 1000)

        g2.kill()
        t0 = time.monotonic()
        bound = lease_ms / 1000 * 4 / 3 + 1.5
        got = {}
        for _ in range(2):
            m = await a.recv_type("peer_left", timeout=max(0.1, bound + 2 - (time.monotonic() - t0)))
            got[m["peerId"]] = (m["reason"], time.monotonic() - t0)
        assert set(got) == {pb, pc}, got
        assert all(r == "timeout" for r, _ in got.values()), got
        worst = max(t for _, t in got.values())
        report("SIGKILL -> peer_left timeout (lease 2000 ms)", f"{worst:.2f}s")
        assert worst <= bound, f"peer_left after {worst:.2f}s, bound {bound:.2f}s"
        assert sorted(redis.hgetall(h.peers_key(room))) == [pa]
        await a.expect_no_message(0.2)

        # the lonely room, where nobody is left to tell: the survivor
        # reaps the dead node's rooms, and the room's keys go with it
        def gone():
            return not any(lonely in k for k in redis.keys("*"))
        await h.async_wait_until(gone, bound + 2, interval=0.1,
                                 what="the dead node's lonely room reaped")
        report("dead node's lonely room gone after SIGKILL", f"{time.monotonic() - t0:.2f}s")

        # the dead node's clients were cut; through the LB they land on gw1
        for cl in (b, c):
            await cl.wait_closed(5)
        b2, _ = await ch.connect_retry(lb.url, tok("bob"), "b2", cookie="gw2")
        cs.clients.append(b2)
        j = await b2.join(room, pb)
        assert j["peers"] == [pa], j
        await a.recv_type("peer_joined", peerId=pb)
        await exchange(a, pa, b2, pb, room, "post")
        assert redis.member_nodes(room) == {pa: "gw1", pb: "gw1"}
        await b2.leave(room, pb)
        await a.leave(room, pa)
    assert ch.gateway_keys(redis) == [], ch.gateway_keys(redis)


# ---------------------------------------------------------------- Redis restarted empty


@pytest.mark.async_timeout(60)
async def test_redis_restarted_empty_mid_call(cluster):
    """Redis dies (SIGKILL) in the middle of a call and a fresh, empty one
    starts on the same port. Meanwhile: client messages get `unavailable`,
    /readyz and new handshakes (through haproxy) get 503. Then, within 5 s,
    the gateways have rebuilt room:{R}:peers (and leases) from their own
    knowledge, and relays flow between the two existing connections: no
    client reconnects, nobody sees peer_left or peer_joined."""
    cluster.start_redis()
    g1, g2 = cluster.add_nodes(2, env={"SIGNAL_DRAIN_MS": 2000})
    lb = cluster.start_lb()
    redis = cluster.redis
    room, pa, pb = new_room("empty"), new_peer(), new_peer()

    async with h.Clients() as cs:
        a, b = await ch.pinned_pair(cs, lb, room, pa, pb)
        await exchange(a, pa, b, pb, room, "before")
        before = redis.hgetall(h.peers_key(room))
        assert sorted(before) == sorted([pa, pb])
        # A key no gateway writes: it is in the old Redis and must not be
        # in the new one. (The room keys cannot show that: the gateways
        # reconnect and re-assert their members within milliseconds of
        # the restart, before the test can look.)
        canary = f"test:canary:{room}"
        assert redis("SET", canary, "written before the kill", "PX", 60000) == "OK"
        old_run_id = info_fields(redis("INFO", "server"))["run_id"]

        redis.kill()
        t_kill = time.monotonic()
        await h.async_wait_until(lambda: g1.readyz() == 503 and g2.readyz() == 503, 3,
                                 what="/readyz 503 on both nodes")
        await a.send(h.offer(room, pa, pb, cid="during"))
        await a.expect_error("unavailable", cid="during")
        st, body = await asyncio.to_thread(
            lambda: (lambda r: (r.status, r.json()))(h.http_exchange(
                h.HOST, lb.port, h.upgrade_request(h.HOST, lb.port, token=tok("late")))))
        assert st == 503 and body.get("code") == "unavailable", (st, body)
        # a Redis restart takes a while: stay away ~2 s, so the gateways'
        # reconnect backoff has grown (100 ms doubling, jittered, capped at 5 s)
        await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - t_kill)))

        redis.start()  # same port, nothing in it
        t0 = time.monotonic()
        # a new server process that loaded no data: whatever room state
        # is in it from here on, the gateways put there
        server, persistence = info_fields(redis("INFO", "server")), info_fields(redis("INFO", "persistence"))
        assert server["run_id"] != old_run_id, "the same redis-server answered: it was not restarted"
        assert persistence["rdb_last_load_keys_loaded"] == "0" and persistence["aof_enabled"] == "0", persistence
        assert redis("EXISTS", canary) == 0, "data from before the kill survived the restart"

        def rebuilt():
            # each member re-asserted by its own node (the other node may
            # have put it back as a ghost first)
            recs = redis.hgetall(h.peers_key(room))
            return sorted(recs) == sorted([pa, pb]) and not any(json.loads(v).get("ghost") for v in recs.values())
        await h.async_wait_until(rebuilt, 5, interval=0.02, what="room:{R}:peers rebuilt")
        t_rebuilt = time.monotonic() - t0
        after = redis.hgetall(h.peers_key(room))
        for p in (pa, pb):
            old, new = json.loads(before[p]), json.loads(after[p])
            assert (new["node"], new["conn"], new["sub"]) == (old["node"], old["conn"], old["sub"]), (old, new)
            # joinedAt comes back from the gateway's clock (Redis' at the join): close, not equal
            assert abs(new["joinedAt"] - old["joinedAt"]) < 2000, (old, new)
        # liveness is per gateway instance: both heartbeat again, and each
        # answers for the room again (whoever reaps it will find it)
        insts = {json.loads(after[p])["inst"] for p in (pa, pb)}
        await h.async_wait_until(lambda: insts <= set(redis("ZRANGE", ch.NODES_KEY, 0, -1)), 5,
                                 what="both instances heartbeating in the restarted Redis")
        for i in insts:
            assert redis("SISMEMBER", f"signal:node:{{{i}}}:rooms", room) == 1, i
        assert ch.ttl_problems(redis) == []

        # relays between the two existing connections, both ways
        await exchange(a, pa, b, pb, room, "after", timeout=5)
        t_relay = time.monotonic() - t0
        assert a.is_open and b.is_open
        seen = [m["type"] for m in a.messages] + [m["type"] for m in b.messages]
        assert seen.count("peer_left") == 0, seen
        assert [m for m in a.messages if m["type"] == "peer_joined"] == \
            [{"type": "peer_joined", "roomId": room, "peerId": pb}], a.messages
        assert not [m for m in b.messages if m["type"] == "peer_joined"], b.messages
        report("Redis restarted empty: members back in Redis", f"{t_rebuilt:.2f}s after the restart")
        report("Redis restarted empty: first relay through", f"{t_relay:.2f}s after the restart "
               f"({time.monotonic() - t_kill:.2f}s after the kill)")
        # the LB serves new handshakes again
        await h.async_wait_until(lambda: g1.readyz() == 200 and g2.readyz() == 200, 5)
        lb.wait_states({"gw1": "UP", "gw2": "UP"}, 5)
        c = await cs.connect(lb.url, tok("carol"), name="c")
        pc = new_peer()
        j = await c.join(room, pc)
        assert j["peers"] == sorted([pa, pb]), j
        for cl in (c, a, b):
            await cl.leave(room, {a: pa, b: pb, c: pc}[cl])
    assert ch.gateway_keys(redis) == [], ch.gateway_keys(redis)


@pytest.mark.async_timeout(30)
async def test_leave_during_an_outage_reaches_the_room_after_an_empty_restart(cluster):
    """b closes its connection while Redis is away; Redis comes back empty.
    b's membership is neither in Redis nor held by any gateway; g1 re-asserts
    it as a ghost (it knew b as a room-mate) whose lease (lease + the longest
    reconnect backoff, 5 s) runs out, so a hears peer_left "timeout"."""
    lease_ms = 2000
    cluster.start_redis()
    g1, g2 = cluster.add_nodes(2, env={"SIGNAL_LEASE_MS": lease_ms, "SIGNAL_RESUME_MS": 0,
                                       "SIGNAL_DRAIN_MS": 2000})
    redis = cluster.redis
    room, pa, pb = new_room("ghost"), new_peer(), new_peer()

    async with h.Clients() as cs:
        a, b = await cs.pair(g1, g2, room, pa, pb)
        redis.kill()
        await h.async_wait_until(lambda: g2.readyz() == 503, 3)
        await b.close()
        await asyncio.sleep(0.3)
        redis.start()
        t_back = time.monotonic()
        # the ghost is in Redis meanwhile, so room state looks unchanged to a
        await h.async_wait_until(lambda: pb in redis.hgetall(h.peers_key(room)), 5, what="b re-asserted as a ghost")
        ghost = json.loads(redis.hgetall(h.peers_key(room))[pb])
        assert ghost.get("ghost") is True and ghost["conn"] == "", ghost
        m = await a.recv_type("peer_left", peerId=pb, timeout=lease_ms / 1000 + 5 + 3)
        assert m["reason"] == "timeout", m
        report("leave during an outage, Redis back empty: peer_left", f"{time.monotonic() - t_back:.2f}s after the restart")
        # only a is left, re-asserted by its own node
        assert sorted(redis.hgetall(h.peers_key(room))) == [pa], redis.hgetall(h.peers_key(room))
        await a.leave(room, pa)
    assert ch.gateway_keys(redis) == [], ch.gateway_keys(redis)


def redis_client_ids_of(redis, pid, name):
    """Redis client ids of the connections named `name` that process `pid` holds."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", "dst", f"{h.HOST}:{redis.port}"],
                         capture_output=True, text=True, check=True).stdout
    ports = {line.split()[2].rsplit(":", 1)[1] for line in out.splitlines() if f"pid={pid}," in line}
    ids = []
    for line in redis("CLIENT", "LIST").splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if f.get("name") == name and f["addr"].rsplit(":", 1)[1] in ports:
            ids.append(f["id"])
    return ids


@pytest.mark.async_timeout(60)
async def test_relays_published_while_a_subscriber_reconnects_are_caught_up(cluster):
    """b's node loses its Redis connections (killed by Redis, as an overloaded
    or failing-over Redis does) while a, on another node, keeps relaying. The
    relays that reach Redis while b's node is not subscribed are acknowledged
    "buffered"; when b's node is back it fetches them from b's resumption
    buffer before anything newer, so b gets every candidate exactly once, in
    order, without reconnecting."""
    cluster.start_redis()
    # up to 10 bursts of 40 candidates: no rate limit in the way
    g1, g2 = cluster.add_nodes(2, env={"SIGNAL_RATE_PEER": "0", "SIGNAL_RATE_CANDIDATE": "0",
                                       "SIGNAL_RATE_ROOM": "0", "SIGNAL_RATE_CONN_FRAMES": "0"})
    redis = cluster.redis
    room, pa, pb = new_room("catch"), new_peer(), new_peer()

    async with h.Clients() as cs:
        a, b = await cs.pair(g1, g2, room, pa, pb)
        # b's node reconnects within milliseconds, so the relays go
        # back to back right after the kill; a try where none fell into
        # the gap is repeated (it proves nothing either way)
        for attempt in range(10):
            ids = redis_client_ids_of(redis, g2.pid, "signal-gateway-sub")
            assert len(ids) == 1, ids
            redis("CLIENT", "KILL", "ID", ids[0])
            cids = [f"c{attempt}-{i}" for i in range(40)]
            for i, cid in enumerate(cids):
                m = h.candidate(room, pa, pb, h.ice(i), cid=cid)
                m["ack"] = True
                await a.send(m)
            acks = {}
            while len(acks) < len(cids):
                m = await a.recv_type("ack", timeout=10)
                acks[m["correlationId"]] = m["status"]
            assert set(acks.values()) <= {"delivered", "buffered"}, acks
            got = []
            while len(got) < len(cids):
                got.append((await b.recv_type("relay", timeout=10))["correlationId"])
            assert got == cids, got  # each once, in order
            await b.expect_no_message(0.5)
            if "buffered" in acks.values():
                break
        else:
            pytest.fail("the subscriber always came back before any relay was sent: nothing tested")
        report("relays caught up after a subscriber reconnect",
               f"{list(acks.values()).count('buffered')} of {len(cids)} were buffered, all delivered once in order")
        assert "relay.catch_up" in g2.log_text()
        await a.leave(room, pa)
        await b.leave(room, pb)
    assert ch.gateway_keys(redis) == [], ch.gateway_keys(redis)


@pytest.mark.async_timeout(60)
async def test_catch_up_after_an_empty_restart_restarts_its_numbering(cluster):
    """Redis restarts empty, so relay seq numbers start again at 1 while b's
    node remembers the last seq it delivered before (higher). Relays after
    the restart still reach b, and when b's node later misses relays (its
    subscriber killed), the catch-up sees the restarted numbering and
    delivers what b missed, once each, in order."""
    cluster.start_redis()
    g1, g2 = cluster.add_nodes(2, env={"SIGNAL_DRAIN_MS": 2000})
    redis = cluster.redis
    room, pa, pb = new_room("reseq"), new_peer(), new_peer()

    async def send_all(a, cids):
        for i, cid in enumerate(cids):
            await a.send(h.candidate(room, pa, pb, h.ice(i), cid=cid))
            await asyncio.sleep(0.01)

    async with h.Clients() as cs:
        a, b = await cs.pair(g1, g2, room, pa, pb)
        before = [f"pre{i}" for i in range(20)]
        await send_all(a, before)
        got = [await b.recv_type("relay", timeout=5) for _ in before]
        assert [m["correlationId"] for m in got] == before and got[-1]["seq"] == 20, got[-1]
        redis.kill()
        await h.async_wait_until(lambda: g1.readyz() == 503 and g2.readyz() == 503, 5)
        redis.start()
        await h.async_wait_until(lambda: g1.readyz() == 200 and g2.readyz() == 200, 10)
        await h.async_wait_until(lambda: sorted(redis.hgetall(h.peers_key(room))) == sorted([pa, pb]), 5)
        after = [f"post{i}" for i in range(3)]
        await send_all(a, after)
        got = [await b.recv_type("relay", timeout=5) for _ in after]
        assert [m["correlationId"] for m in got] == after, got
        assert got[0]["seq"] == 1, got[0]  # numbering started again
        # now b's node misses some: its subscriber is killed while a relays
        ids = redis_client_ids_of(redis, g2.pid, "signal-gateway-sub")
        redis("CLIENT", "KILL", "ID", ids[0])
        missed = [f"gap{i}" for i in range(12)]  # fewer than before the restart: seq stays below 20
        await send_all(a, missed)
        got = [(await b.recv_type("relay", timeout=10))["correlationId"] for _ in missed]
        assert got == missed, got
        await b.expect_no_message(0.5)
        await a.leave(room, pa)
        await b.leave(room, pb)


# ---------------------------------------------------------------- Sentinel


@pytest.mark.async_timeout(80)
async def test_sentinel_failover(cluster):
    """One master, one replica, three sentinels. The replica is cut off from
    the master's replication stream (a wrong masterauth, then its link is
    killed: it cannot reconnect), so writes made after that exist only on the
    master: the failover loses them, as it can with asynchronous replication. The master is SIGKILLed;
    the sentinels promote the replica; the gateways ask the sentinels again,
    check ROLE, reconnect, and re-assert every membership they hold, so the
    lost member comes back, silently, and relays flow again with no client
    action."""
    g1, g2, lb = cluster.start_sentinel_cluster()
    master, replica = cluster.redis, cluster.replicas[0]
    room, pa, pb, pc = new_room("fo"), new_peer(), new_peer(), new_peer()

    async with h.Clients() as cs:
        a, b = await ch.pinned_pair(cs, lb, room, pa, pb)
        await exchange(a, pa, b, pb, room, "before")
        h.wait_until(lambda: sorted(replica.hgetall(h.peers_key(room))) == sorted([pa, pb]), 5,
                     what="replica has both members")

        # cut replication, then carol joins: only the master knows her
        replica("CONFIG", "SET", "masterauth", "not-the-password")
        replica("CLIENT", "KILL", "TYPE", "master")
        h.wait_until(lambda: "master_link_status:down" in replica("INFO", "replication"), 5,
                     what="replication cut")
        c = await ch.pinned_member(cs, lb, "gw1", "carol", room, pc)
        await a.recv_type("peer_joined", peerId=pc)
        await b.recv_type("peer_joined", peerId=pc)
        await asyncio.sleep(0.3)
        assert pc in master.hgetall(h.peers_key(room))
        assert pc not in replica.hgetall(h.peers_key(room)), "replication was not cut"

        master.kill()
        t0 = time.monotonic()

        async def promoted():
            # the sentinels promote the replica
            await h.async_wait_until(
                lambda: all(s.master_addr() == (h.HOST, replica.port) for s in cluster.sentinels),
                15, interval=0.1, what="sentinels switching to the replica")
            return time.monotonic() - t0
        watcher = asyncio.ensure_future(promoted())
        # relays work again: try every 250 ms from the kill on until one
        # goes through. Every try must be answered: delivered to b (late is
        # fine: relays that reached the new master while b's node was still
        # reconnecting its subscriber are caught up from the resumption
        # buffer) or an error to a ("unavailable" while Redis is away).
        ok_at, n = None, 0
        delivered, errors = collections.Counter(), {}

        def collect():
            drain_queue(a)
            drain_queue(b)
            for m in [m for m in a.pending if m.get("type") == "error"]:
                errors[m.get("correlationId")] = m["code"]
            a.pending = [m for m in a.pending if m.get("type") != "error"]
            for m in [m for m in b.pending if m.get("type") == "relay"]:
                delivered[m["correlationId"]] += 1
            b.pending = [m for m in b.pending if m.get("type") != "relay"]
        while time.monotonic() - t0 < 20:
            n += 1
            cid = f"fo-{n}"
            await a.send(h.offer(room, pa, pb, cid=cid))
            try:
                await b.recv_type("relay", correlationId=cid, timeout=0.25)
                delivered[cid] += 1
                ok_at = time.monotonic() - t0
                break
            except AssertionError:
                await asyncio.sleep(0.01)
                collect()
        t_promoted = await watcher
        assert ok_at is not None, f"no relay within 20 s of the kill; errors {errors}"
        sent = {f"fo-{i}" for i in range(1, n + 1)}
        # answers to relays sent into the dead connection come when their
        # command times out (SIGNAL_REDIS_TIMEOUT_MS): collect them, bounded
        settle = time.monotonic() + 8
        while sent - set(delivered) - set(errors) and time.monotonic() < settle:
            await asyncio.sleep(0.2)
            collect()
        collect()
        unanswered = sorted(sent - set(delivered) - set(errors), key=lambda c: int(c[3:]))
        assert not unanswered, f"{n} tries; no answer at all to {unanswered}; errors {errors}; delivered {delivered}"
        assert set(errors.values()) <= {"unavailable"}, errors
        assert all(v == 1 for v in delivered.values()), f"delivered twice: {delivered}"
        late = len(delivered) - 1
        # carol, lost by the failover, is back on the new master: re-asserted
        await h.async_wait_until(
            lambda: sorted(replica.hgetall(h.peers_key(room))) == sorted([pa, pb, pc]), 5,
            what="all three members on the new master")
        t_members = time.monotonic() - t0
        assert replica("ROLE")[0] == "master"
        await exchange(b, pb, c, pc, room, "carol")
        await exchange(c, pc, a, pa, room, "carol2")
        for cl in (a, b, c):
            assert cl.is_open
            assert not [m for m in cl.pending if m["type"] in ("peer_left", "peer_joined")], cl.pending
            assert not [m for m in cl.messages if m["type"] == "peer_left"], cl.messages
        await h.async_wait_until(lambda: g1.readyz() == 200 and g2.readyz() == 200, 5)
        report("Sentinel failover: sentinels promoted the replica", f"{t_promoted:.2f}s after SIGKILL")
        report("Sentinel failover: first relay through", f"{ok_at:.2f}s after SIGKILL "
               f"({n} tries: {len(errors)} answered 'unavailable', {late} delivered late, none unanswered)")
        report("Sentinel failover: lost member re-asserted", f"by {t_members:.2f}s after SIGKILL")
        assert ch.ttl_problems(replica) == []
        for cl, p in ((a, pa), (b, pb), (c, pc)):
            await cl.leave(room, p)
    assert replica.keys("room:*") == []


def gateway_clients(server):
    """CLIENT LIST names of the gateways' connections on a Redis server ([]
    when the query's own connection was killed by a Sentinel reconfiguring
    that server)."""
    out = ch.ask(server, "CLIENT", "LIST") or ""
    return sorted(f.split("=", 1)[1] for line in out.splitlines() for f in line.split()
                  if f.startswith("name=signal-gateway"))


@pytest.mark.async_timeout(80)
async def test_sentinel_planned_failover(cluster):
    """SENTINEL FAILOVER with both servers up (planned maintenance). Sentinel
    promotes the replica at once but demotes the old master only when it next
    looks at it (up to ~10 s later), so nothing fails by itself: the gateways
    follow the sentinels' +switch-master announcement and move at once (a
    join made just before may exist only on the old master). Once moved, they
    re-assert every membership, so nothing is lost, and relays keep flowing
    throughout."""
    _, _, lb = cluster.start_sentinel_cluster()
    old, new = cluster.redis, cluster.replicas[0]
    room, pa, pb, pc = new_room("planned"), new_peer(), new_peer(), new_peer()

    async with h.Clients() as cs:
        a, b = await ch.pinned_pair(cs, lb, room, pa, pb)
        assert len(gateway_clients(old)) == 4  # cmd + sub of each gateway

        assert cluster.sentinels[0]("SENTINEL", "FAILOVER", "mymaster") == "OK"
        t0 = time.monotonic()
        await h.async_wait_until(lambda: (ch.ask(new, "ROLE") or [None])[0] == "master", 10,
                                 what="promotion")
        # while the gateways still write to the old master
        c = await ch.pinned_member(cs, lb, "gw1", "carol", room, pc)
        await a.recv_type("peer_joined", peerId=pc)
        on_old = ch.ask(old, "HKEYS", h.peers_key(room)) or []  # old is demoted (clients killed) any time now
        wrote_old_only = pc in on_old and pc not in new.hgetall(h.peers_key(room))
        moved_at, n, worst_gap, last_ok = None, 0, 0.0, time.monotonic()
        while time.monotonic() - t0 < 30:
            n += 1
            await a.send(h.offer(room, pa, pb, cid=f"p{n}"))
            try:
                await b.recv_type("relay", correlationId=f"p{n}", timeout=1.0)
                worst_gap = max(worst_gap, time.monotonic() - last_ok)
                last_ok = time.monotonic()
            except AssertionError:
                pass
            if moved_at is None and len(gateway_clients(new)) == 4:
                moved_at = time.monotonic() - t0
            if moved_at is not None and time.monotonic() - t0 > moved_at + 1:
                break
            await asyncio.sleep(0.1)
        assert moved_at is not None, f"gateways still on {gateway_clients(old)} of the old master"
        for g in cluster.nodes:
            assert '"event":"redis.switch_master"' in g.log_text(), g.log_tail()
        await h.async_wait_until(
            lambda: sorted(new.hgetall(h.peers_key(room))) == sorted([pa, pb, pc]), 5,
            what="every member on the new master")
        await exchange(b, pb, c, pc, room, "after")
        drain_queue(a)
        errors = [m for m in a.pending if m.get("type") == "error"]
        assert all(e["code"] == "unavailable" for e in errors), errors
        for cl in (a, b, c):
            assert not [m for m in cl.messages if m["type"] == "peer_left"], cl.messages
        report("planned Sentinel failover: gateways moved to the new master",
               f"{moved_at:.2f}s after SENTINEL FAILOVER (carol's join reached only the old master: "
               f"{wrote_old_only}); longest gap between relays {worst_gap:.2f}s, "
               f"{len(errors)} 'unavailable' answers")
        for cl, p in ((a, pa), (b, pb), (c, pc)):
            await cl.leave(room, p)
    assert new.keys("room:*") == []


# ---------------------------------------------------------------- deploy/cluster.sh


def cluster_script(state):
    """(env, sh): deploy/cluster.sh run as a user would, its state in state,
    on ports of this test process' block."""
    require("haproxy", "redis-server", "redis-cli", "curl")
    env = h.clean_env()
    env.update({"SG_CLUSTER_DIR": str(state), "SG_GATEWAY_BIN": h.GATEWAY_BIN,
                "SG_CLUSTER_LB_PORT": str(h.free_port()), "SG_CLUSTER_STATS_PORT": str(h.free_port()),
                "SG_CLUSTER_REDIS_PORT": str(h.free_port()), "SIGNAL_JWT_SECRET": h.JWT_SECRET,
                "SIGNAL_DRAIN_MS": "2000", "SIGNAL_LEASE_MS": "3000"})

    def sh(*args, check=True, timeout=60):
        r = subprocess.run([str(ch.CLUSTER_SH), *args], env=env, capture_output=True, text=True,
                           timeout=timeout)
        if check:
            assert r.returncode == 0, f"cluster.sh {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r
    return env, sh


def gone(pid):
    return not os.path.exists(f"/proc/{pid}/cmdline") or not open(f"/proc/{pid}/cmdline").read()


def test_cluster_script_start_status_restart_stop(tmp_path):
    """deploy/cluster.sh brings up redis + 2 gateways + haproxy, reports them,
    restarts a node (exit status 0), and stops everything by pid."""
    state = tmp_path / "cluster"
    env, sh = cluster_script(state)
    pids = []
    try:
        out = sh("start", "2")
        vals = dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)
        assert vals["SG_LB_URL"] == f"ws://127.0.0.1:{env['SG_CLUSTER_LB_PORT']}/ws"
        assert "deploy/cluster.sh token" in out.stderr
        pids = [int((state / f"{n}.pid").read_text()) for n in ("redis", "gw1", "gw2", "haproxy")]
        st = sh("status")
        assert st.stdout.count("readyz 200") == 2 and "gw1 UP" in st.stdout and "gw2 UP" in st.stdout, st.stdout
        assert "SIGNAL_LEASE_MS=3000" in (state / "gateway.env").read_text()
        assert oct((state / "secret.env").stat().st_mode & 0o777) == "0o600"
        token = sh("token", "alice", "demo").stdout.strip()
        room = "demo"

        async def main():
            async with h.Clients() as cs:
                a = await cs.connect(vals["SG_LB_URL"], token, name="a", extra_headers=ch.cookie_header("gw1"))
                b = await cs.connect(vals["SG_LB_URL"], token, name="b", extra_headers=ch.cookie_header("gw2"))
                pa, pb = new_peer(), new_peer()
                await a.join(room, pa)
                await b.join(room, pb)
                await exchange(a, pa, b, pb, room, "x")
                r = await asyncio.to_thread(sh, "restart", "1")
                assert "exited with status 0" in r.stdout, r.stdout
                left = await b.recv_type("peer_left", peerId=pa)
                assert left["reason"] == "shutdown"
                assert await a.wait_closed(3) == 1001
        arun(main(), 40)
        st = sh("status")
        assert st.stdout.count("readyz 200") == 2, st.stdout
        sh("stop")
        for p in pids:
            assert gone(p), f"pid {p} still running after stop"
        assert sh("status", check=False).returncode != 0
    finally:
        if (state / "cluster.env").exists():
            sh("stop", check=False)


def test_cluster_script_on_a_redis_cluster(tmp_path):
    """deploy/cluster.sh start 2 --redis-cluster: the compose "cluster"
    profile's topology as processes (3 masters, 3 replicas); the gateways
    reach rooms on every shard through haproxy; stop ends every process."""
    state = tmp_path / "cluster"
    env, sh = cluster_script(state)
    try:
        out = sh("start", "2", "--redis-cluster", timeout=120)
        vals = dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)
        seeds = vals["SG_REDIS_CLUSTER"].split(",")
        assert len(seeds) == 3 and "SG_REDIS_URL" not in vals, vals
        pids = [int((state / f"{n}.pid").read_text()) for n in
                ("gw1", "gw2", "haproxy", *[f"redis{k}" for k in range(1, 7)])]
        st = sh("status").stdout
        assert st.count("readyz 200") == 2, st
        assert st.count("  master  ") == 3 and st.count("  slave  ") == 3, st
        assert "cluster_state:ok" in st, st
        token = sh("token", "alice").stdout.strip()
        ports = [int(seed.rsplit(":", 1)[1]) for seed in seeds]

        def owner(room):
            c = h.RedisClient(ports[0])
            try:
                slot = c("CLUSTER", "KEYSLOT", f"room:{{{room}}}:peers")
                return next(sh_[2][1] for sh_ in c("CLUSTER", "SLOTS") if sh_[0] <= slot <= sh_[1])
            finally:
                c.close()
        rooms = {}
        for i in range(1000):
            rooms.setdefault(owner(f"demo-{i}"), f"demo-{i}")
            if len(rooms) == 3:
                break
        assert len(rooms) == 3, rooms

        async def main():
            async with h.Clients() as cs:
                a = await cs.connect(vals["SG_LB_URL"], token, name="a", extra_headers=ch.cookie_header("gw1"))
                b = await cs.connect(vals["SG_LB_URL"], token, name="b", extra_headers=ch.cookie_header("gw2"))
                for port, room in rooms.items():
                    pa, pb = new_peer(), new_peer()
                    await a.join(room, pa)
                    await b.join(room, pb)
                    await exchange(a, pa, b, pb, room, room)
                    c = h.RedisClient(port)
                    try:
                        assert sorted(c("HKEYS", f"room:{{{room}}}:peers")) == sorted([pa, pb])
                    finally:
                        c.close()
        arun(main(), 60)
        sh("stop")
        for p in pids:
            assert gone(p), f"pid {p} still running after stop"
    finally:
        if (state / "cluster.env").exists():
            sh("stop", check=False)


# ---------------------------------------------------------------- soak


class PartnerDrained(Exception):
    pass


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.slow
@pytest.mark.rss
@pytest.mark.xdist_group("heavy")  # one CPU-bound test at a time (pytest.ini)
def test_soak_rooms_in_waves_across_a_node_restart(cluster):
    """Hundreds of rooms (pairs; haproxy spreads the connections over both
    nodes) join, relay and leave in waves for about two minutes; each call
    lasts a few seconds with a trickle of candidates and a renegotiation.
    During one wave gw2 is drained and started again (later gw1 too): the
    pairs it cut start over through the load balancer. Afterwards: no key
    left in Redis, no connection or membership left on any node, and each
    node's RSS back near its baseline (+30 MiB at most)."""
    rooms = int(os.environ.get("SG_SOAK_ROOMS", "300"))
    duration = float(os.environ.get("SG_SOAK_SECONDS", "120"))
    cluster.start_redis()
    g1, g2 = cluster.add_nodes(2, env={"SIGNAL_DRAIN_MS": 5000})
    lb = cluster.start_lb()
    redis = cluster.redis
    time.sleep(0.5)
    baseline = {n.name: n.rss_kib() for n in cluster.nodes}
    stats = {"pairs": 0, "retries": 0, "relays": 0, "shutdown_seen": 0, "peak_rss": dict(baseline),
             "restarts": [], "max_conns": 0}
    rng = random.Random(6)
    # two users only: conftest's log scan compares every log line with every sub
    tok_a, tok_b = tok("soak-alice", exp_in=3600), tok("soak-bob", exp_in=3600)  # for the whole soak

    async def recv(cl, type_, **fields):
        """recv_type, but give up at once when the partner's node drained
        (peer_left "shutdown"): what it sent last may never have been read."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return await cl.recv_type(type_, timeout=0.25, **fields)
            except AssertionError:
                if any(m.get("type") == "peer_left" and m.get("reason") == "shutdown" for m in cl.pending):
                    raise PartnerDrained("partner's node drained") from None
                if not cl.is_open:
                    raise PartnerDrained(f"own node closed the connection ({cl.close_code})") from None
                if time.monotonic() > deadline:
                    raise

    async def pair(wave, i):
        room = f"soak-{wave}-{i}"
        hold = rng.uniform(1.0, 4.0)
        last = None
        for attempt in range(6):
            pa, pb = new_peer(), new_peer()
            a = b = None
            relays = 0
            try:
                a, _ = await ch.connect_retry(lb.url, tok_a, f"a{wave}.{i}", timeout=15)
                b, _ = await ch.connect_retry(lb.url, tok_b, f"b{wave}.{i}", timeout=15)
                await a.join(room, pa, timeout=10)
                await b.join(room, pb, timeout=10)
                await recv(a, "peer_joined", peerId=pb)
                t_end = time.monotonic() + hold
                rnd = 0
                while True:
                    rnd += 1
                    await a.send(h.offer(room, pa, pb, cid=f"o{rnd}"))
                    await recv(b, "relay", correlationId=f"o{rnd}")
                    await b.send(h.answer(room, pb, pa, cid=f"a{rnd}"))
                    await recv(a, "relay", correlationId=f"a{rnd}")
                    for k in range(4):
                        await a.send(h.candidate(room, pa, pb, h.ice(k), cid=f"ca{rnd}.{k}"))
                        await b.send(h.candidate(room, pb, pa, h.ice(k + 10), cid=f"cb{rnd}.{k}"))
                    for k in range(4):
                        await recv(b, "relay", correlationId=f"ca{rnd}.{k}")
                        await recv(a, "relay", correlationId=f"cb{rnd}.{k}")
                    relays += 10
                    if time.monotonic() > t_end:
                        break
                    await asyncio.sleep(min(1.0, max(0.0, t_end - time.monotonic())))
                await a.leave(room, pa, timeout=10)
                await recv(b, "peer_left", peerId=pa, reason="leave")
                await b.leave(room, pb, timeout=10)
                stats["pairs"] += 1
                stats["relays"] += relays
                return
            except (AssertionError, OSError, asyncio.TimeoutError, PartnerDrained,
                    ch.websockets.exceptions.WebSocketException) as e:
                # a drained node closed one of them (1001) mid-call: start over
                closed_1001 = (isinstance(e, ch.websockets.exceptions.ConnectionClosed)
                               and e.rcvd is not None and e.rcvd.code == 1001)
                if isinstance(e, PartnerDrained) or closed_1001 or any(
                        cl is not None and cl.close_code == 1001 for cl in (a, b)):
                    stats["shutdown_seen"] += 1
                stats["retries"] += 1
                why = re.sub(r"\b[ab]\d+\.\d+", "X", str(e)).split("; unmatched")[0].split(" {")[0]
                stats.setdefault("why", collections.Counter())[f"{type(e).__name__}: {why[:100]}"] += 1
                if "within" in str(e):  # a wait ran out without a drain to explain it
                    stats.setdefault("lost", []).append(f"{room} attempt {attempt}: {str(e)[:600]}")
                last = e
            finally:
                await asyncio.gather(*(cl.close() for cl in (a, b) if cl is not None),
                                     return_exceptions=True)
        raise AssertionError(f"pair {room} never completed: {last!r}")

    async def restart(node):
        await asyncio.sleep(2.0)  # in the middle of the wave
        conns = metric(node.metrics(), "ws_connections_gauge")
        t0 = time.monotonic()
        node.terminate()
        rc = await asyncio.to_thread(node.wait, 10)
        assert rc == 0, f"{node.name} exited {rc} after SIGTERM"
        drained = time.monotonic() - t0
        await asyncio.to_thread(cluster.restart_node, node)
        stats["restarts"].append((node.name, int(conns), round(drained, 2), node.rss_kib()))

    async def main():
        t_start = time.monotonic()
        wave = 0
        while time.monotonic() - t_start < duration:
            tw = time.monotonic()
            tasks = [asyncio.ensure_future(pair(wave, i)) for i in range(rooms)]
            if wave == 2:
                tasks.append(asyncio.ensure_future(restart(g2)))
            if wave == 5:
                tasks.append(asyncio.ensure_future(restart(g1)))
            while not all(t.done() for t in tasks):
                await asyncio.sleep(0.5)
                conns = 0
                for n in cluster.nodes:
                    try:  # a node may be draining or restarting right now
                        stats["peak_rss"][n.name] = max(stats["peak_rss"][n.name], n.rss_kib())
                        conns += metric(n.metrics(), "ws_connections_gauge") or 0
                    except (OSError, RuntimeError, AttributeError, TypeError):
                        pass
                stats["max_conns"] = max(stats["max_conns"], int(conns))
            for t in tasks:
                t.result()
            report(f"soak wave {wave}", f"{rooms} pairs in {time.monotonic() - tw:.1f}s")
            wave += 1
            assert time.monotonic() - t_start < duration + 60, "soak over its time bound"
        stats["waves"] = wave
    t_main = time.monotonic()
    arun(main(), duration + 120)
    report("soak: waves took", f"{time.monotonic() - t_main:.1f}s")

    # nothing left anywhere
    h.wait_until(lambda: ch.gateway_keys(redis) == [], 5, what=f"an empty Redis, left: {ch.gateway_keys(redis)[:10]}")
    for n in cluster.nodes:
        m = n.metrics()
        assert metric(m, "ws_connections_gauge") == 0, (n.name, metric(m, "ws_connections_gauge"))
        assert metric(m, "room_members_gauge") == 0, (n.name, metric(m, "room_members_gauge"))
    time.sleep(1.0)
    end = {n.name: n.rss_kib() for n in cluster.nodes}
    report("soak", f"{stats['waves']} waves, {stats['pairs']} calls completed ({stats['relays']} relays), "
           f"up to {stats['max_conns']} connections at once; {stats['retries']} calls started over "
           f"({stats['shutdown_seen']} cut by a drain)")
    for line in stats.get("lost", []):
        report("soak: a wait that ran out with no drain to explain it", line)
    for why, count in stats.get("why", {}).items():
        report("soak: why calls started over", f"{count} x {why}")
    for name, conns, drained, rss in stats["restarts"]:
        report(f"soak restart of {name}", f"{conns} connections drained in {drained}s, "
               f"new process at {rss / 1024:.1f} MiB")
    for name in end:
        report(f"soak RSS {name}", f"baseline {baseline[name] / 1024:.1f} MiB, peak "
               f"{stats['peak_rss'][name] / 1024:.1f} MiB, end {end[name] / 1024:.1f} MiB")
    assert stats["pairs"] == rooms * stats["waves"]
    assert not stats.get("lost"), stats.get("lost")
    assert len(stats["restarts"]) >= 1 and all(c > 0 for _, c, _, _ in stats["restarts"]), stats["restarts"]
    assert stats["shutdown_seen"] > 0, "the restart cut no call: the soak did not test what it says"
    assert stats["retries"] == stats["shutdown_seen"], f"calls started over for other reasons: {stats['why']}"
    for name in end:
        if not h.SANITIZED:  # see sg_helpers.SANITIZED
            assert end[name] - baseline[name] < 30 * 1024, f"{name}: RSS {baseline[name]} -> {end[name]} KiB"
    for n in cluster.nodes:
        assert [rc for _, rc in n.exits] == [0] * len(n.exits), (n.name, n.exits)


# ---------------------------------------------------------------- static checks


def test_deployment_files_pass_static_checks():
    """tests/compose/check.sh: docker-compose config, haproxy -c, nginx -t, promtool."""
    require("docker-compose", "haproxy")
    r = subprocess.run([str(ch.REPO / "tests" / "compose" / "check.sh")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"


@pytest.mark.async_timeout(40)
async def test_a_hung_redis_counts_as_down_and_is_reconnected_when_it_answers_again(cluster):
    """Redis stops answering without closing anything (SIGSTOP): after
    SIGNAL_REDIS_TIMEOUT_MS with a command waiting and no reply at all the
    gateway drops its connections (the waiting relay gets "unavailable"),
    /readyz is 503; after SIGCONT it reconnects and relays flow again."""
    cluster.start_redis()
    g, = cluster.add_nodes(1, env={"SIGNAL_REDIS_TIMEOUT_MS": 1000})
    redis = cluster.redis
    room, pa, pb = new_room("hung"), new_peer(), new_peer()

    async with h.Clients() as cs:
        a, b = await cs.pair(g, g, room, pa, pb)
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            await a.send(h.offer(room, pa, pb, cid="hung-1"))
            m = await a.recv_type("error", correlationId="hung-1", timeout=5)
            assert m["code"] == "unavailable", m
            await h.async_wait_until(lambda: g.readyz() == 503, 3, what="readyz 503")
            assert '"reason":"command timed out"' in g.log_text(), g.log_tail()
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        await h.async_wait_until(lambda: g.readyz() == 200, 10, what="readyz 200 again")
        await exchange(a, pa, b, pb, room, "after")
        await a.leave(room, pa)
        await b.leave(room, pb)
    assert ch.gateway_keys(redis) == [], ch.gateway_keys(redis)


@pytest.mark.async_timeout(30)
async def test_a_live_instances_room_set_does_not_expire(cluster):
    """signal:node:{<instance>}:rooms is what a reaper reads when the
    instance dies: its TTL is renewed with every heartbeat, not only when a
    room is added (it used to expire 10 minutes after the last join, and a
    dead instance's members in older rooms were then never reaped)."""
    cluster.start_redis()
    g, = cluster.add_nodes(1, env={"SIGNAL_LEASE_MS": 900})
    redis = cluster.redis
    room, pa, pb = new_room("set"), new_peer(), new_peer()
    async with h.Clients() as cs:
        await cs.pair(g, g, room, pa, pb)
        key, = [k for k in redis.keys("signal:node:*") if k.endswith(":rooms")]
        assert redis("SMEMBERS", key) == [room]
        redis("PEXPIRE", key, 3000)
        await h.async_wait_until(lambda: redis("PTTL", key) > 3000, 5, what="the set's TTL renewed by a heartbeat")
        assert redis("SMEMBERS", key) == [room]


@pytest.mark.async_timeout(60)
async def test_a_connection_closed_while_redis_hangs_leaves_once_it_answers(cluster):
    """A connection ends while its gateway cannot reach Redis, and Redis
    keeps its data (a hung server, a network blip): the leave could not go.
    Once Redis answers again the gateway sends it, and the room hears
    peer_left. (The member used to stay for as long as its gateway lived:
    the re-assert after the reconnect only puts back what a node holds.)
    The lease is long: no reaping is involved."""
    cluster.start_redis()
    g1, g2 = cluster.add_nodes(2, env={"SIGNAL_REDIS_TIMEOUT_MS": 1000, "SIGNAL_RESUME_MS": 0,
                                       "SIGNAL_LEASE_MS": 60000})
    redis = cluster.redis
    room, pa, pb = new_room("blip"), new_peer(), new_peer()

    async with h.Clients() as cs:
        a, b = await cs.pair(g1, g2, room, pa, pb)
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            # a command waiting on each node makes it notice the hang
            await a.send(h.offer(room, pa, pb, cid="blip-a"))
            await b.send(h.offer(room, pb, pa, cid="blip-b"))
            await h.async_wait_until(lambda: g1.readyz() == 503 and g2.readyz() == 503, 10,
                                     what="both nodes unready")
            await b.close()
            await h.async_wait_until(lambda: '"event":"ws.close"' in g2.log_text(), 5, what="b's close on g2")
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        await h.async_wait_until(lambda: g1.readyz() == 200 and g2.readyz() == 200, 15, what="both ready again")
        left = await a.recv_type("peer_left", peerId=pb, timeout=15)
        assert left["reason"] == "disconnect", left
        assert h.member_record(redis, room, pb) is None
        await a.leave(room, pa)
    assert ch.gateway_keys(redis) == [], ch.gateway_keys(redis)
