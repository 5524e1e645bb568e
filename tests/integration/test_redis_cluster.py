# SPDX-License-Identifier: Apache-2.0
"""Redis Cluster mode (issue 15; docs/protocol.md §7 SIGNAL_REDIS_CLUSTER):
gateways on a real 3-master, 3-replica cluster started by the test. Rooms
spread over every shard; a live room's slot migrated mid-call; a master
killed and a planned failover; a shard restarted empty. Every relay tried is
delivered once and in order (perhaps late), or answered; none is lost without
a word."""

import asyncio
import json
import time

import pytest

import sg_helpers as h
from sg_helpers import Clients, arun, new_peer, tok

import ext_helpers as x
import redis_cluster as rc


@pytest.fixture
def cluster(tmp_path):
    c = rc.RedisCluster(tmp_path / "cluster").start()
    yield c
    c.stop()


def cluster_env(cluster, **extra):
    env = dict(h.NO_RATE_LIMITS, SIGNAL_REDIS_CLUSTER=cluster.seeds, SIGNAL_RESUME_MS="30000")
    env.update({k: str(v) for k, v in extra.items()})
    return env


async def pair(cs, g1, g2, room, replica=None):
    """alice on g1 and bob on g2 in room (both on replica too, when given)."""
    pa, pb = new_peer(), new_peer()
    a = await cs.connect(g1.ws_url, tok("alice"), name=f"a-{room}")
    b = await cs.connect(g2.ws_url, tok("bob"), name=f"b-{room}")
    await a.join(room, pa)
    tb = (await b.join(room, pb))["resumeToken"]
    await a.recv_type("peer_joined", peerId=pb)
    if replica:
        await h.async_wait_until(lambda: replica.read_replica("HLEN", f"room:{{{room}}}:peers") == 2, 5,
                                 what="replicated")
    return a, pa, b, pb, tb


class Flow:
    """Candidates a -> b, one every interval, each with ack: the outcome of
    every one (ack status or error code) and what b got."""

    def __init__(self, a, pa, b, pb, room, interval=0.02):
        self.a, self.pa, self.b, self.pb, self.room = a, pa, b, pb, room
        self.interval = interval
        self.sent = []
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        i = 0
        while not self.stop.is_set():
            cid = f"f{i}"
            await self.a.send(dict(h.candidate(self.room, self.pa, self.pb, h.ice(i), cid=cid), ack=True))
            self.sent.append(cid)
            i += 1
            try:
                await asyncio.wait_for(self.stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    async def finish(self, settle=15):
        self.stop.set()
        await asyncio.wait_for(self.task, 5)
        outcome = {}
        deadline = time.monotonic() + settle
        while len(outcome) < len(self.sent) and time.monotonic() < deadline:
            try:
                m = await self.a.recv(timeout=max(0.1, deadline - time.monotonic()))
            except AssertionError:
                break
            if m.get("correlationId", "").startswith("f") and m["type"] in ("ack", "error"):
                outcome[m["correlationId"]] = m.get("status") or m.get("code")
        missing = [c for c in self.sent if c not in outcome]
        assert not missing, f"{len(missing)} relays got no answer at all: {missing[:10]}"
        # b gets every one acknowledged, once, in order (late ones from the buffer)
        want = [c for c in self.sent if outcome[c] in ("delivered", "buffered")]
        got = []
        deadline = time.monotonic() + settle
        while len(got) < len(want) and time.monotonic() < deadline:
            try:
                got.append((await self.b.recv_type("relay", timeout=max(0.1, deadline - time.monotonic())))
                           ["correlationId"])
            except AssertionError:
                break
        assert got == want, f"delivered {len(got)} of {len(want)}; first difference at " \
                            f"{next((i for i, (p, q) in enumerate(zip(got, want)) if p != q), len(got))}"
        errors = {c: o for c, o in outcome.items() if o not in ("delivered", "buffered")}
        assert set(errors.values()) <= {"unavailable"}, errors
        return outcome


def shard_of(cluster, room):
    """The room's slot, its master and that master's replica."""
    slot = cluster.keyslot(f"room:{{{room}}}:peers")
    master = cluster.master_of_slot(slot)
    replica = next(n for n in cluster.nodes if n.role() == "slave" and
                   n.info("replication").get("master_port") == str(master.port))
    return slot, master, replica


def no_membership_changes(*clients):
    for c in clients:
        seen = [m for m in c.messages + c.pending if m.get("type") in ("peer_left", "peer_joined")]
        # each saw its room-mate join once at the start at most
        assert all(m["type"] == "peer_joined" for m in seen) and len(seen) <= 1, (c.name, seen)


def test_rooms_on_every_shard_join_relay_resume_and_share_rate_limits(gateway_factory, cluster):
    g1, g2 = gateway_factory(2, env=cluster_env(cluster, SIGNAL_RATE_CANDIDATE="0.1/3"))
    rooms = rc.rooms_on_every_shard(cluster, "spread")
    assert len(rooms) == 3, rooms  # CLUSTER KEYSLOT put one on each master

    async def main():
        async with Clients() as cs:
            for port, (room,) in rooms.items():
                a, pa, b, pb, tb = await pair(cs, g1, g2, room)
                master = next(n for n in cluster.nodes if n.port == port)
                # the room's state lives on its slot's master, and both
                # gateways listen there (sharded pub/sub)
                assert sorted(master("HKEYS", f"room:{{{room}}}:peers")) == sorted([pa, pb])
                assert master("PUBSUB", "SHARDNUMSUB", f"room:{{{room}}}:peer:{pb}")[1] == 1
                await a.send(h.offer(room, pa, pb, cid="o"))
                await b.recv_type("relay", correlationId="o")
                await b.send(h.answer(room, pb, pa, cid="ans"))
                await a.recv_type("relay", correlationId="ans")
                # the candidate bucket (3, in Redis) holds across both gateways
                for i in range(5):
                    await a.send(dict(h.candidate(room, pa, pb, h.ice(i), cid=f"c{i}"), ack=True))
                acks = [(await a.recv_type("ack", correlationId=f"c{i}"))["status"] for i in range(5)]
                assert acks == ["delivered"] * 3 + ["dropped"] * 2, acks
                # resumption: bob's connection drops; he resumes on the other node
                b.abort()
                await h.async_wait_until(lambda: x.in_grace(master, room, pb), 5, what="grace")
                await a.send(dict(h.offer(room, pa, pb, cid="late"), ack=True))
                assert (await a.recv_type("ack", correlationId="late"))["status"] == "buffered"
                b2 = await cs.connect(g1.ws_url, tok("bob"), name=f"b2-{room}")
                await b2.send(x.resume_msg(room, pb, tb, 4))  # o, c0..c2 seen: seq 1-4
                r = await b2.recv_type("resumed")
                assert r["replayed"] == 1 and r["peers"] == [pa], r
                assert (await b2.recv_type("relay"))["correlationId"] == "late"
            # every gateway loaded the library on every master
            for n in cluster.nodes[:3]:
                assert len(n("FUNCTION", "LIST")) >= 1
    arun(main())


def migrate_slot(cluster, slot, source, target):
    """Moves a slot the way redis-cli --cluster reshard does, all its keys in
    one MIGRATE."""
    sid, tid = source.node_id(), target.node_id()
    target("CLUSTER", "SETSLOT", slot, "IMPORTING", sid)
    source("CLUSTER", "SETSLOT", slot, "MIGRATING", tid)
    keys = source("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    if keys:
        source("MIGRATE", h.HOST, target.port, "", 0, 5000, "KEYS", *keys)
    for n in cluster.nodes[:cluster.masters]:
        n("CLUSTER", "SETSLOT", slot, "NODE", tid)


def test_a_live_rooms_slot_migrates_mid_call(gateway_factory, cluster):
    g1, g2 = gateway_factory(2, env=cluster_env(cluster))
    room = "migrating-room"
    slot = cluster.keyslot(f"room:{{{room}}}:peers")
    source = cluster.master_of_slot(slot)
    target = next(n for n in cluster.nodes[:3] if n is not source)

    async def main():
        async with Clients() as cs:
            a, pa, b, pb, _ = await pair(cs, g1, g2, room)
            flow = Flow(a, pa, b, pb, room)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(migrate_slot, cluster, slot, source, target)
            await asyncio.sleep(1.0)
            outcome = await flow.finish()
            assert cluster.master_of_slot(slot) is target
            assert sorted(target("HKEYS", f"room:{{{room}}}:peers")) == sorted([pa, pb])
            assert source("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            # relays go on through the new owner
            await a.send(dict(h.offer(room, pa, pb, cid="after"), ack=True))
            assert (await a.recv_type("ack", correlationId="after"))["status"] == "delivered"
            await b.recv_type("relay", correlationId="after")
            no_membership_changes(a, b)
            print(f"\n[cluster] migration: {len(outcome)} relays, "
                  f"{sum(v == 'delivered' for v in outcome.values())} delivered, "
                  f"{sum(v == 'buffered' for v in outcome.values())} buffered (caught up), "
                  f"{sum(v == 'unavailable' for v in outcome.values())} unavailable")
    arun(main(), 120)


@pytest.mark.parametrize("how", ["sigkill", "planned"])
def test_a_master_fails_over_and_the_gateways_follow(gateway_factory, cluster, how):
    g1, g2 = gateway_factory(2, env=cluster_env(cluster))
    room = f"failover-{how}"
    slot, master, replica = shard_of(cluster, room)

    async def main():
        async with Clients() as cs:
            a, pa, b, pb, _ = await pair(cs, g1, g2, room, replica)
            flow = Flow(a, pa, b, pb, room)
            await asyncio.sleep(0.5)
            t0 = time.monotonic()
            if how == "sigkill":
                master.kill()
            else:
                replica("CLUSTER", "FAILOVER")
            await h.async_wait_until(lambda: cluster.master_of_slot(slot) is replica, 20,
                                     what="the replica promoted")
            await h.async_wait_until(lambda: g1.readyz() == 200 and g2.readyz() == 200, 20,
                                     what="both gateways ready on the new master")
            took = time.monotonic() - t0
            await asyncio.sleep(1.0)
            outcome = await flow.finish()
            await a.send(dict(h.offer(room, pa, pb, cid="after"), ack=True))
            assert (await a.recv_type("ack", correlationId="after"))["status"] == "delivered"
            await b.recv_type("relay", correlationId="after")
            no_membership_changes(a, b)
            assert g1.running() and g2.running()
            print(f"\n[cluster] {how}: gateways ready again {took:.2f}s after; {len(outcome)} relays, "
                  f"{sum(v == 'unavailable' for v in outcome.values())} answered unavailable")
    arun(main(), 120)


def test_planned_failovers_back_and_forth_under_a_flow(gateway_factory, cluster):
    """Regression: after a MOVED, the map a gateway read could be older than
    the server's word (from a master that had not heard of the failover: it
    still named the master that sent the commands back). The gateway then
    held the slot's commands and asked for no other map until its delivery
    probe went stale 10 s later, answering them all unavailable. Six
    planned failovers, one way and back, under a relay every 5 ms: every
    relay delivered once and in order or answered unavailable, and no probe
    goes stale. (Room "flip-1" met the stale map in every run before the fix.)"""
    g1, g2 = gateway_factory(2, env=cluster_env(cluster))
    room = "flip-1"
    slot, master, replica = shard_of(cluster, room)

    async def main():
        async with Clients() as cs:
            a, pa, b, pb, _ = await pair(cs, g1, g2, room, replica)
            flow = Flow(a, pa, b, pb, room, interval=0.005)
            await asyncio.sleep(0.3)
            for i in range(6):
                promote = (replica, master)[i % 2]
                await h.async_wait_until(lambda: promote.info("replication").get("master_link_status") == "up", 10,
                                         what="the replica in sync")
                promote("CLUSTER", "FAILOVER")
                await h.async_wait_until(lambda: cluster.master_of_slot(slot) is promote, 20, what="promoted")
                await h.async_wait_until(lambda: g1.readyz() == 200 and g2.readyz() == 200, 20,
                                         what="both gateways ready")
                # a manual failover right after another can time out in Redis
                await asyncio.sleep(2.0)
            outcome = await flow.finish()
            no_membership_changes(a, b)
            for g in (g1, g2):
                assert not h.log_events(g.log_text(), "redis.probe_stale"), g.name
            print(f"\n[cluster] 6 planned failovers: {len(outcome)} relays, "
                  f"{sum(v == 'unavailable' for v in outcome.values())} answered unavailable")
    arun(main(), 180)


def gateway_clients(node):
    """The gateways' command connections to node (CLIENT LIST lines)."""
    return [line for line in node("CLIENT", "LIST").splitlines() if " name=signal-gateway-cmd " in line]


@pytest.mark.parametrize("back", [False, True], ids=["moved", "moved-back"])
def test_a_relay_in_flight_on_a_master_that_loses_its_slot_is_answered_by_what_redis_did(gateway_factory,
                                                                                        cluster, back):
    """Regression: a map without the master a relay waits on made the
    gateway close that link and answer the relay unavailable, though the old
    master still holds the call and runs it or sends it on (MOVED). Here the
    relay waits in a paused master while its replica takes over and both
    gateways apply the new map; once the old master serves again, the relay
    gets MOVED, goes to the new master, and is delivered in order. With
    moved-back the old master takes the slot back before it serves again
    (what a gateway also sees when a map it was given is stale): it runs
    the relay itself."""
    g1, g2 = gateway_factory(2, env=cluster_env(cluster, SIGNAL_REDIS_TIMEOUT_MS="20000"))
    room = "in-flight"
    slot, master, replica = shard_of(cluster, room)

    async def main():
        async with Clients() as cs:
            a, pa, b, pb, _ = await pair(cs, g1, g2, room, replica)
            assert not gateway_clients(replica)
            master("CLIENT", "PAUSE", "30000", "WRITE")
            try:
                await a.send(dict(h.candidate(room, pa, pb, h.ice(1), cid="x"), ack=True))
                await h.async_wait_until(lambda: any(" cmd=fcall " in c and " flags=b " in c
                                                     for c in gateway_clients(master)), 5,
                                         what="the relay waiting in the paused master")
                held_by = [c.split()[0] for c in gateway_clients(master) if " flags=b " in c]
                replica("CLUSTER", "FAILOVER", "TAKEOVER")
                await h.async_wait_until(lambda: master.role() == "slave", 10, what="the old master demoted")
                # both gateways applied a map with the new master (they link to it)
                await h.async_wait_until(lambda: len(gateway_clients(replica)) == 2, 10,
                                         what="both gateways linked to the new master")
                assert any(" cmd=fcall " in c for c in gateway_clients(master)), \
                    "the gateway dropped the old master's link with the relay in it"
                if back:
                    master("CLUSTER", "FAILOVER", "TAKEOVER")
                    await h.async_wait_until(lambda: master.role() == "master", 10, what="the slot back")
                    await h.async_wait_until(lambda: not gateway_clients(replica), 10,
                                             what="both gateways on the old master again")
                await a.send(dict(h.candidate(room, pa, pb, h.ice(2), cid="y"), ack=True))
            finally:
                master("CLIENT", "UNPAUSE")
            assert (await a.recv_type("ack", correlationId="x", timeout=10))["status"] == "delivered"
            assert (await a.recv_type("ack", correlationId="y", timeout=10))["status"] == "delivered"
            assert [(await b.recv_type("relay", timeout=10))["correlationId"] for _ in range(2)] == ["x", "y"]
            if back:
                # g1 went on with the link x waited in (y behind x on it)
                assert held_by[0] in [c.split()[0] for c in gateway_clients(master)]
            now_master, former = (master, replica) if back else (replica, master)
            assert cluster.master_of_slot(slot) is now_master
            # the drained links went: no gateway talks to the replica
            await h.async_wait_until(lambda: not gateway_clients(former), 10, what="links to the replica closed")
            no_membership_changes(a, b)
    arun(main(), 90)


def test_a_shard_restarted_empty_gets_its_memberships_back(gateway_factory, cluster):
    g1, g2 = gateway_factory(2, env=cluster_env(cluster))
    room = "empty-shard"
    slot, master, replica = shard_of(cluster, room)

    async def main():
        async with Clients() as cs:
            a, pa, b, pb, _ = await pair(cs, g1, g2, room)
            before = {p: json.loads(v) for p, v in zip(*[iter(master("HGETALL", f"room:{{{room}}}:peers"))] * 2)}
            # the whole shard goes, and comes back with its cluster identity
            # (nodes.conf) but no data: what a restart without persistence does
            replica.kill()
            master.kill()
            master.start()
            replica.start()
            cluster.wait_ok(30)
            assert master("DBSIZE") == 0 or cluster.master_of_slot(slot)("DBSIZE") >= 0

            def rebuilt():
                m = cluster.master_of_slot(slot)
                return m is not None and sorted(m("HKEYS", f"room:{{{room}}}:peers")) == sorted([pa, pb])
            await h.async_wait_until(rebuilt, 20, what="members re-asserted on the restarted shard")
            m = cluster.master_of_slot(slot)
            after = {p: json.loads(v) for p, v in zip(*[iter(m("HGETALL", f"room:{{{room}}}:peers"))] * 2)}
            for p in (pa, pb):
                assert after[p]["conn"] == before[p]["conn"], (before[p], after[p])
            await h.async_wait_until(lambda: g1.readyz() == 200 and g2.readyz() == 200, 20, what="ready")
            await a.send(dict(h.offer(room, pa, pb, cid="back"), ack=True))
            assert (await a.recv_type("ack", correlationId="back", timeout=10))["status"] == "delivered"
            await b.recv_type("relay", correlationId="back")
            no_membership_changes(a, b)
    arun(main(), 120)


def test_a_one_master_cluster(gateway_factory, tmp_path):
    """A cluster of one master holding every slot (a small managed Redis
    Cluster): the node never met a peer, so CLUSTER SHARDS gives it no
    address; the gateway uses the seed it asked (it used to find "no master
    serves any slot" and never became ready)."""
    one = rc.RedisCluster(tmp_path / "one", masters=1, replicas=0).start()
    try:
        assert one.nodes[0]("CLUSTER", "SHARDS")[0][3][0][5] == ""  # "ip": unknown to the node itself
        g1, g2 = gateway_factory(2, env=cluster_env(one))

        async def main():
            async with Clients() as cs:
                a, pa, b, pb, _ = await pair(cs, g1, g2, "solo")
                o = h.offer("solo", pa, pb, cid="one-master")
                await a.send(o)
                assert (await b.recv_type("relay"))["inner"] == h.inner_of(o)
        arun(main())
    finally:
        one.stop()

