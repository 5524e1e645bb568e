# SPDX-License-Identifier: Apache-2.0
"""docs/protocol.md §9 extensions: resumption on any node, delivery receipts, the
delivery-path probe and key rotation (TURN is in test_turn.py).

conftest's gateways run with SIGNAL_RESUME_MS=0 (§5 unchanged); every test
here that needs resumption turns it on through its env.
"""

import asyncio
import json
import signal
import time

import sg_helpers as h
from sg_helpers import Clients, RawWS, arun, new_peer, new_room, tok

import ext_helpers as x
from ext_helpers import (RESUME_ENV, bob_then_alice, cand, check_candidate_relays, lose, recv_candidate_relays,
                         resume_msg, send_candidates, send_held, wait_in_grace)


class Sender:
    """Sends candidate 0, 1, 2, ... from `frm` to `to` until stopped; the
    i-th carries correlationId c<i> and, in a room where `to` joined before
    any relay to it, gets seq i + 1."""

    def __init__(self, client, room, frm, to, interval=0.01):
        self.client, self.room, self.frm, self.to = client, room, frm, to
        self.interval = interval
        self.sent = 0
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        while not self.stop.is_set():
            await self.client.send(h.candidate(self.room, self.frm, self.to, cand(self.sent),
                                               cid=f"c{self.sent}"))
            self.sent += 1
            try:
                await asyncio.wait_for(self.stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    async def finish(self):
        self.stop.set()
        await asyncio.wait_for(self.task, 5)
        return self.sent


def no_membership_events(client):
    return [m for m in client.messages if m.get("type") in ("peer_left", "peer_joined", "error")]


async def resume_fails(c, gw, name, room, peer, token, cid, sub="bob", last_seq=0):
    """A new connection of sub's to gw resumes peer with token: refused with
    resume_failed. Returns that connection."""
    cl = await c.connect(gw.ws_url, tok(sub), name=name)
    await cl.send(resume_msg(room, peer, token, last_seq, cid=cid))
    await cl.expect_error("resume_failed", cid=cid, room=room)
    return cl


async def resume_works(c, gw, name, room, peer, token, last_seq, replayed, cid=None):
    """A new connection of bob's to gw resumes peer with token after last_seq
    and is told `replayed` relays follow: (that connection, its resumed)."""
    cl = await c.connect(gw.ws_url, tok("bob"), name=name)
    await cl.send(resume_msg(room, peer, token, last_seq, cid=cid))
    r = await cl.recv_type("resumed")
    assert r["replayed"] == replayed, r
    return cl, r


# ====================================================================== resumption


async def test_resume_on_other_node_after_tcp_drop_gets_every_relay_once_in_order(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        b = await c.member(g1, "bob", room, pb, cid="jb")
        token = b.joined[room].get("resumeToken")
        assert isinstance(token, str) and len(token) >= 16, b.joined[room]
        a = await c.member(g1, "alice", room, pa)
        await b.recv_type("peer_joined", peerId=pa)

        sender = Sender(a, room, pa, pb)
        before = [await b.recv_type("relay") for _ in range(10)]
        b.abort()  # TCP gone, no close frame
        last = before[-1]["seq"]
        check_candidate_relays(before, room, pa, pb, 1)

        await wait_in_grace(redis, room, pb)
        at_grace = sender.sent
        await h.async_wait_until(lambda: sender.sent >= at_grace + 10, 5, what="more candidates")

        # resume on the other node while the room-mate keeps sending
        b2 = await c.connect(g2.ws_url, tok("bob"), name="b2")
        await b2.send(resume_msg(room, pb, token, last, cid="res-1"))
        r = await b2.recv_type("resumed", timeout=5)
        assert b2.messages[0] is r, f"resumed must come first: {b2.messages[:3]}"
        assert r["roomId"] == room and r["peerId"] == pb, r
        assert r["peers"] == [pa], r
        assert r["correlationId"] == "res-1", r
        assert isinstance(r["replayed"], int) and r["replayed"] >= 1, r
        new_token = r.get("resumeToken")
        assert isinstance(new_token, str) and new_token and new_token != token, r

        # live relays keep coming on the new connection; then stop
        after = []
        while len(after) < r["replayed"] + 10:
            after.append(await b2.recv_type("relay"))
        total = await sender.finish()
        while after[-1]["seq"] < total:
            after.append(await b2.recv_type("relay"))
        await b2.expect_no_message(0.3)

        # every candidate, in order, exactly once: seq contiguous across the cut
        check_candidate_relays(after, room, pa, pb, last + 1)
        assert [m["seq"] for m in before + after] == list(range(1, total + 1))
        assert [m["type"] for m in b2.messages] == ["resumed"] + ["relay"] * len(after)

        # the room-mate saw nothing of it
        assert no_membership_events(a) == [], a.messages
        # and the resumed peer relays again
        await b2.send(h.offer(room, pb, pa, cid="back"))
        m = await a.recv_type("relay", correlationId="back")
        assert m["inner"]["from"] == pb, m
        assert h.member_record(redis, room, pb)["conn"] != "", h.member_record(redis, room, pb)

        # a resume token works once: the old one is gone
        await resume_fails(c, g1, "b3", room, pb, token, cid="again")
        await b2.expect_no_message(0.3)
        assert no_membership_events(a) == [], a.messages


async def test_grace_period_ends_with_peer_left_timeout_and_resume_failed(gateway_factory, redis):
    resume_ms = 1500
    env = dict(RESUME_ENV, SIGNAL_RESUME_MS=resume_ms, SIGNAL_LEASE_MS=900)
    g1, g2 = gateway_factory(2, env=env)
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        b, a, token = await bob_then_alice(c, g2, g1, room, pb, pa)
        t0 = time.monotonic()
        await lose(b, redis, room, pb)
        await a.send(dict(h.candidate(room, pa, pb, cand(0), cid="held"), ack=True))
        ack = await a.recv_type("ack", correlationId="held")
        assert ack["status"] == "buffered", ack
        assert redis("XLEN", x.buf_key(room, pb)) == 1

        m = await a.recv_type("peer_left", timeout=resume_ms / 1000 + 5)
        elapsed = time.monotonic() - t0
        assert m == {"type": "peer_left", "roomId": room, "peerId": pb, "reason": "timeout"}, m
        assert elapsed >= resume_ms / 1000 - 0.1, f"peer_left after {elapsed:.2f}s, before the grace period ended"
        assert h.member_record(redis, room, pb) is None
        assert redis("EXISTS", x.buf_key(room, pb)) == 0, "the buffer must go with the grace period"

        b2 = await resume_fails(c, g1, "b2", room, pb, token, cid="late")
        await b2.expect_no_message(0.3)
        # the client then joins afresh, as a new member
        j = await b2.join(room, pb)
        assert j["peers"] == [pa], j
        await a.recv_type("peer_joined", peerId=pb)


async def test_resume_after_grace_period_of_a_lone_peer_fails(gateway_factory, redis):
    """The only member of a room loses its connection; nobody else is there to
    reap it. A resume after the grace period must still be refused (§9: an
    expired token gives resume_failed)."""
    resume_ms = 1000
    g1, g2 = gateway_factory(2, env=dict(RESUME_ENV, SIGNAL_RESUME_MS=resume_ms))
    room, pb = new_room(), new_peer()

    async with Clients() as c:
        b = await c.member(g1, "bob", room, pb)
        await lose(b, redis, room, pb)
        await asyncio.sleep(resume_ms / 1000 + 1.0)
        b2 = await c.connect(g2.ws_url, tok("bob"), name="b2")
        await b2.send(resume_msg(room, pb, b.joined[room]["resumeToken"], 0, cid="late"))
        m = await b2.recv(timeout=5)
        assert m.get("type") == "error" and m.get("code") == "resume_failed", \
            f"resume {resume_ms / 1000 + 1.0:.1f}s into a {resume_ms / 1000:.1f}s grace period " \
            f"was answered {m}; member record {h.member_record(redis, room, pb)}"


async def test_a_grace_period_longer_than_the_room_ttl_keeps_the_room(gateway_factory, redis):
    """SIGNAL_RESUME_MS may be longer than the room keys' TTL (10 min,
    renewed only by a node holding a connection in the room): entering the
    grace period makes the room's keys and the peer's buffer outlive it. (A
    lone peer lost for more than about 7 minutes used to find its room gone
    and its resume refused.)"""
    resume_ms = 900000
    room_ttl_ms = 600000
    g1, g2 = gateway_factory(2, env=dict(RESUME_ENV, SIGNAL_RESUME_MS=resume_ms))
    room, pa, pb = new_room(), new_peer(), new_peer()
    async with Clients() as c:
        b, a, _ = await bob_then_alice(c, g1, g2, room, pb, pa)
        await lose(b, redis, room, pb)
        await send_held(a, room, pa, pb, [1])
        await a.leave(room, pa)
        keys = [h.peers_key(room), f"room:{{{room}}}:seq", f"room:{{{room}}}:buf:{pb}"]
        if redis("EXISTS", f"room:{{{room}}}:buckets"):  # (with rate limits on)
            keys.append(f"room:{{{room}}}:buckets")
        for k in keys:
            assert redis("PTTL", k) > room_ttl_ms, (k, redis("PTTL", k))


async def test_lone_peer_can_resume_for_the_whole_grace_period(gateway_factory, redis):
    lease_ms, resume_ms = 900, 6000  # room keys expire 2.7 s after the last write
    g1, g2 = gateway_factory(2, env=dict(RESUME_ENV, SIGNAL_RESUME_MS=resume_ms, SIGNAL_LEASE_MS=lease_ms))
    room, pb = new_room(), new_peer()

    async with Clients() as c:
        b = await c.member(g1, "bob", room, pb)
        await lose(b, redis, room, pb)
        await asyncio.sleep(3 * lease_ms / 1000 + 0.8)  # well within the grace period
        b2 = await c.connect(g2.ws_url, tok("bob"), name="b2")
        await b2.send(resume_msg(room, pb, b.joined[room]["resumeToken"], 0, cid="r"))
        m = await b2.recv(timeout=5)
        assert m.get("type") == "resumed", \
            f"resume {3 * lease_ms / 1000 + 0.8:.1f}s into a {resume_ms / 1000:.0f}s grace period " \
            f"was answered {m}"


async def test_node_death_enters_grace_and_the_peer_resumes_on_the_survivor(gateway_factory, redis):
    lease_ms, resume_ms = 1500, 1500
    g1, g2 = gateway_factory(2, env=dict(RESUME_ENV, SIGNAL_LEASE_MS=lease_ms, SIGNAL_RESUME_MS=resume_ms))
    room = new_room()
    pa, pb, pc = new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        a = await c.member(g1, "alice", room, pa)
        b = await c.member(g2, "bob", room, pb)
        await c.member(g2, "carol", room, pc)
        g2.kill()
        t0 = time.monotonic()
        # held for resumption, not peer_unreachable
        for i, to in enumerate((pb, pc, pb)):
            await a.send(dict(h.candidate(room, pa, to, cand(i), cid=f"c{i}"), ack=True))
            ack = await a.recv_type("ack", correlationId=f"c{i}")
            assert ack["status"] == "buffered", ack
        b2, r = await resume_works(c, g1, "b2", room, pb, b.joined[room]["resumeToken"], 0, replayed=2)
        assert r["peers"] == sorted([pa, pc]), r
        got = [await b2.recv_type("relay") for _ in range(2)]
        assert [m["seq"] for m in got] == [1, 2] and [m["correlationId"] for m in got] == ["c0", "c2"]
        # carol does not come back: lease, then grace, then peer_left timeout
        m = await a.recv_type("peer_left", timeout=(lease_ms + resume_ms) / 1000 + 5)
        elapsed = time.monotonic() - t0
        assert m["peerId"] == pc and m["reason"] == "timeout", m
        assert elapsed >= (lease_ms * 2 / 3 + resume_ms) / 1000 - 0.2, f"peer_left after {elapsed:.2f}s"
        m = await b2.recv_type("peer_left")
        assert m["peerId"] == pc, m
        assert [e for e in a.messages if e.get("type") == "peer_left" and e.get("peerId") == pb] == []


async def test_seq_is_per_target_and_room_and_contiguous_across_senders(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    r1, r2 = new_room(), new_room()
    pa, pb, pc = new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        b = await c.member(g1, "bob", r1, pb)
        await b.join(r2, pb)
        a = await c.member(g1, "alice", r1, pa)
        await a.join(r2, pa)
        cc = await c.member(g2, "carol", r1, pc)
        n = 20
        for i in range(n):
            await a.send(h.candidate(r1, pa, pb, cand(i), cid=f"a{i}"))
            await cc.send(h.candidate(r1, pc, pb, cand(i), cid=f"c{i}"))
            await a.send(h.candidate(r1, pa, pc, cand(i), cid=f"ac{i}"))
        for i in range(5):
            await a.send(h.candidate(r2, pa, pb, cand(i), cid=f"r2.{i}"))
        got = [await b.recv_type("relay", roomId=None) for _ in range(2 * n + 5)]
        in_r1 = [m for m in got if m["inner"]["roomId"] == r1]
        in_r2 = [m for m in got if m["inner"]["roomId"] == r2]
        assert [m["seq"] for m in in_r1] == list(range(1, 2 * n + 1)), [m["seq"] for m in in_r1]
        assert [m["seq"] for m in in_r2] == list(range(1, 6))
        # each sender's relays keep their order
        for p in ("a", "c"):
            cids = [m["correlationId"] for m in in_r1 if m["correlationId"].startswith(p)]
            assert cids == [f"{p}{i}" for i in range(n)], cids
        to_c = [await cc.recv_type("relay") for _ in range(n)]
        assert [m["seq"] for m in to_c] == list(range(1, n + 1))


async def test_membership_changes_during_grace_are_in_resumed_peers_not_replayed(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    room, other = new_room(), new_room()
    pa, pb, pc = new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        b = await c.member(g1, "bob", room, pb)
        t_other = (await b.join(other, pb))["resumeToken"]
        a = await c.member(g2, "alice", room, pa)
        await b.recv_type("peer_joined", peerId=pa)
        await lose(b, redis, room, pb)
        await wait_in_grace(redis, other, pb)
        buf_ttl = redis("PTTL", x.buf_key(room, pb))
        assert buf_ttl == -2  # nothing buffered yet: no key
        cc = await c.member(g2, "carol", room, pc)
        await a.recv_type("peer_joined", peerId=pc)
        await a.leave(room, pa)
        await cc.send(dict(h.offer(room, pc, pb, cid="o"), ack=True))
        assert (await cc.recv_type("ack", correlationId="o"))["status"] == "buffered"
        ttl = redis("PTTL", x.buf_key(room, pb))
        assert 0 < ttl <= 30000 + x.ROOM_TTL_MS, ttl  # kept no longer than grace + a room's TTL

        # each room has its own token
        b2 = await resume_fails(c, g2, "b2", room, pb, t_other, cid="wrong-room")
        await b2.send(resume_msg(room, pb, b.joined[room]["resumeToken"], 0, cid="r"))
        r = await b2.recv_type("resumed", correlationId="r")
        assert r["peers"] == [pc] and r["replayed"] == 1, r
        m = await b2.recv_type("relay")
        assert m["correlationId"] == "o" and m["seq"] == 1, m
        await b2.expect_no_message(0.3)  # no peer_joined / peer_left replayed
        await b2.send(resume_msg(other, pb, t_other, 0, cid="r2"))
        r2 = await b2.recv_type("resumed", correlationId="r2")
        assert r2["peers"] == [] and r2["replayed"] == 0, r2
        assert [e for e in cc.messages if e.get("type") in ("peer_joined", "peer_left")
                and e.get("peerId") == pb] == []


async def test_heartbeat_reap_enters_grace_then_resume_works(gateway_factory, redis):
    env = dict(RESUME_ENV, SIGNAL_PING_INTERVAL_MS=500, SIGNAL_PONG_TIMEOUT_MS=300)
    g1, g2 = gateway_factory(2, env=env)
    room, pa, pb = new_room(), new_peer(), new_peer()

    # a raw client that never answers a ping (nor sends anything else)
    raw = RawWS.connect(g1, tok("bob"))
    try:
        token = raw.join(room, pb)["resumeToken"]
        async with Clients() as c:
            a = await c.member(g2, "alice", room, pa)
            t0 = time.monotonic()
            await wait_in_grace(redis, room, pb, timeout=5)
            assert raw.closed_within(3), "the reaped connection must be dropped"
            assert any(f.opcode == h.OP_PING for f in raw.frames), raw.frames
            await send_held(a, room, pa, pb, range(3))

            b2, r = await resume_works(c, g2, "b2", room, pb, token, 0, replayed=3)
            assert r["peers"] == [pa], r
            await recv_candidate_relays(b2, room, pa, pb, 1, 3)
            # outlive a few heartbeats: a stays, b2 (which answers pings) stays
            await a.expect_no_message(1.5)
            assert b2.is_open and a.is_open
            assert no_membership_events(a) == [], a.messages
            assert time.monotonic() - t0 < 10
        leaves = [e for e in x.log_events(g1) if e.get("event") == "room.leave"]
        assert leaves and leaves[-1].get("reason") == "lost", leaves
    finally:
        raw.close()


async def test_clean_close_leaves_at_once_and_cannot_resume(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        b, a, token = await bob_then_alice(c, g1, g2, room, pb, pa)
        await b.close()  # with a close frame
        t0 = time.monotonic()
        m = await a.recv_type("peer_left", timeout=3)
        assert m["reason"] == "disconnect" and m["peerId"] == pb, m
        assert time.monotonic() - t0 < 2
        assert h.member_record(redis, room, pb) is None
        assert redis("EXISTS", x.buf_key(room, pb)) == 0

        await resume_fails(c, g2, "b2", room, pb, token, cid="r")
        await a.send(dict(h.candidate(room, pa, pb, cand(0), cid="gone"), ack=True))
        await a.expect_error("peer_not_found", cid="gone", room=room)
        await a.expect_no_message(0.3)


async def test_drain_closes_with_a_close_frame_so_peers_leave_at_once(gateway_factory, redis):
    """SIGTERM: the node closes each connection with 1001 and the client
    answers the close frame, so its rooms get peer_left (shutdown) at once and
    there is no grace period to resume into: the client joins afresh."""
    g1, g2 = gateway_factory(2, env=dict(RESUME_ENV, SIGNAL_DRAIN_MS=2000))
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        b, a, token = await bob_then_alice(c, g1, g2, room, pb, pa)
        g1.terminate()
        assert await b.wait_closed(5) == 1001
        m = await a.recv_type("peer_left", timeout=5)
        assert m["peerId"] == pb and m["reason"] == "shutdown", m
        await resume_fails(c, g2, "b2", room, pb, token, cid="r")
    assert g1.wait(10) == 0


async def test_buffer_count_cap_drops_oldest_and_resume_shows_the_gap(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=dict(RESUME_ENV, SIGNAL_RESUME_BUFFER_MAX=10))
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        b, a, token = await bob_then_alice(c, g1, g2, room, pb, pa)
        await send_candidates(a, room, pa, pb, range(3))
        await recv_candidate_relays(b, room, pa, pb, 1, 3)
        await lose(b, redis, room, pb)
        await send_held(a, room, pa, pb, range(3, 28))  # 25 while away
        # Redis trims whole stream nodes (~100 entries): it may hold more,
        # never more than a node over the cap; a resume sees the cap.
        assert 10 <= len(x.buffered(redis, room, pb)) <= 10 + 100
        buf = x.replayable(redis, room, pb, 10, 262144)
        assert [s for s, _, _ in buf] == list(range(19, 29)), buf

        b2, r = await resume_works(c, g2, "b2", room, pb, token, 3, replayed=10)
        got = [await b2.recv_type("relay") for _ in range(10)]
        await b2.expect_no_message(0.3)
        # the gap: seq 4..18 were dropped, and the client can see it
        assert got[0]["seq"] > 3 + 1
        check_candidate_relays(got, room, pa, pb, 19)
        assert [m for _, m, _ in buf] == got
        # after the gap, seq goes on from where it was
        await send_candidates(a, room, pa, pb, [28])
        await recv_candidate_relays(b2, room, pa, pb, 29, 1)


async def test_buffer_byte_cap_drops_oldest_and_keeps_the_newest_even_if_larger(gateway_factory, redis):
    cap = 1024  # the smallest allowed
    g1, g2 = gateway_factory(2, env=dict(RESUME_ENV, SIGNAL_RESUME_BUFFER_BYTES=cap))
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        b, a, token = await bob_then_alice(c, g1, g2, room, pb, pa)
        await lose(b, redis, room, pb)
        await send_held(a, room, pa, pb, range(25), pad=150)
        buf = x.buffered(redis, room, pb)
        sizes = [n for _, _, n in buf]
        assert 2 <= len(buf) < 10, sizes
        assert sum(sizes) <= cap, sizes
        assert sum(sizes) + min(sizes) > cap, f"dropped more than the cap needs: {sizes}"
        assert [s for s, _, _ in buf] == list(range(26 - len(buf), 26))
        assert x.buffered_bytes_accounted(redis, room, pb) == sum(sizes)

        b2, r = await resume_works(c, g2, "b2", room, pb, token, 0, replayed=len(buf))
        got = [await b2.recv_type("relay") for _ in range(len(buf))]
        assert got[0]["seq"] > 1, "the gap from seq 1 tells the client what was dropped"
        check_candidate_relays(got, room, pa, pb, 26 - len(buf), pad=150)
        assert [m["seq"] for m in got] == [s for s, _, _ in buf]

        # a single relay larger than the cap is kept (alone)
        await lose(b2, redis, room, pb)
        big = h.SDP + "a=x-pad:" + "p" * 2000 + "\r\n"
        await a.send(dict(h.offer(room, pa, pb, sdp=big, cid="big"), ack=True))
        assert (await a.recv_type("ack", correlationId="big"))["status"] == "buffered"
        buf = x.buffered(redis, room, pb)
        assert [s for s, _, _ in buf] == [26] and buf[0][2] > cap, buf
        b3, _ = await resume_works(c, g1, "b3", room, pb, r["resumeToken"], 25, replayed=1)
        m = await b3.recv_type("relay")
        assert m["seq"] == 26 and m["inner"]["sdp"] == big, m


async def test_byte_cap_trimmed_lazily_in_redis_holds_exactly_at_replay(gateway_factory, redis):
    """Small frames: Redis trims the byte cap every few relays (lua/relay.lua
    TRIM_EVERY), so between trims it holds a little more than the cap, but
    never twice the cap; a resume replays exactly what an exact trim keeps:
    the newest entries within the cap, and no more."""
    cap = 4096
    g1, g2 = gateway_factory(2, env=dict(RESUME_ENV, SIGNAL_RESUME_BUFFER_BYTES=cap))
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        b, a, token = await bob_then_alice(c, g1, g2, room, pb, pa)
        await lose(b, redis, room, pb)
        n = 45  # not a multiple of the trim period: the last relays are untrimmed
        # The first 40 at once (they reach Redis several to a call, each call
        # trimming at its end), the last 5 one call each: no trim after 40.
        await send_held(a, room, pa, pb, range(40))
        for i in range(40, n):
            await send_held(a, room, pa, pb, [i])
        held = x.buffered(redis, room, pb)
        sizes_held = [size for _, _, size in held]
        assert max(sizes_held) * 8 <= cap, "frames this test means to be small are not"
        assert sum(sizes_held) < 2 * cap, sizes_held
        assert sum(sizes_held) > cap, "nothing over the cap held: the lazy trim is not exercised"
        buf = x.replayable(redis, room, pb, 256, cap)
        sizes = [size for _, _, size in buf]
        assert sum(sizes) <= cap < sum(sizes) + sizes_held[-len(buf) - 1], sizes
        assert [s for s, _, _ in buf] == list(range(n + 1 - len(buf), n + 1))

        b2, _ = await resume_works(c, g2, "b2", room, pb, token, 0, replayed=len(buf))
        got = [await b2.recv_type("relay") for _ in range(len(buf))]
        await b2.expect_no_message(0.3)
        check_candidate_relays(got, room, pa, pb, n + 1 - len(buf))
        assert [m for _, m, _ in buf] == got


async def test_resume_with_wrong_token_or_another_users_token_fails(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        b, a, token = await bob_then_alice(c, g1, g2, room, pb, pa)
        await lose(b, redis, room, pb)
        await send_candidates(a, room, pa, pb, [0])

        w = await resume_fails(c, g2, "wrong", room, pb, x.random_resume_token(), cid="w")
        # a failed resume leaves no membership on that connection
        await w.send(h.candidate(room, pb, pa, cand(1), cid="w2"))
        await w.expect_error("not_joined", cid="w2")

        await resume_fails(c, g2, "mallory", room, pb, token, cid="m", sub="mallory")

        # a peer that was never in the room
        await w.send(resume_msg(room, new_peer(), token, 0, cid="nobody"))
        await w.expect_error("resume_failed", cid="nobody", room=room)

        # none of that disturbed the real owner
        assert x.in_grace(redis, room, pb)
        b2, _ = await resume_works(c, g1, "b2", room, pb, token, 0, replayed=1)
        await recv_candidate_relays(b2, room, pa, pb, 1, 1)
        assert no_membership_events(a) == [], a.messages


async def test_fresh_join_replaces_the_resume_token(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        a = await c.member(g2, "alice", room, pa)
        # a repeated join on the same connection answers a fresh token
        b = await c.member(g1, "bob", room, pb)
        t1 = b.joined[room]["resumeToken"]
        await a.recv_type("peer_joined", peerId=pb)
        t2 = (await b.join(room, pb))["resumeToken"]
        assert t1 != t2
        await lose(b, redis, room, pb)
        b2 = await resume_fails(c, g2, "b2", room, pb, t1, cid="old")
        await b2.send(resume_msg(room, pb, t2, 0, cid="new"))
        t3 = (await b2.recv_type("resumed", correlationId="new"))["resumeToken"]

        # lost again, then a fresh join (not a resume) takes the place over
        await send_candidates(a, room, pa, pb, [0])
        assert (await b2.recv_type("relay"))["seq"] == 1
        await lose(b2, redis, room, pb)
        # buffered before the fresh join (acknowledged), not racing it
        await send_held(a, room, pa, pb, [1])
        b3 = await c.member(g1, "bob", room, pb, name="b3")
        t4 = b3.joined[room]["resumeToken"]
        assert t4 not in (t1, t2, t3)
        # a fresh join starts afresh: the buffer is gone and seq restarts at 1
        assert redis("EXISTS", x.buf_key(room, pb)) == 0
        await b3.expect_no_message(0.3)
        await send_candidates(a, room, pa, pb, [0])
        await recv_candidate_relays(b3, room, pa, pb, 1, 1)
        await resume_fails(c, g2, "b4", room, pb, t3, cid="stale", last_seq=1)
        assert b3.is_open
        await b3.expect_no_message(0.3)


async def test_two_resumes_with_one_token_exactly_one_wins(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        b, a, token = await bob_then_alice(c, g1, g2, room, pb, pa)
        await lose(b, redis, room, pb)
        x1 = await c.connect(g1.ws_url, tok("bob"), name="x1")
        x2 = await c.connect(g2.ws_url, tok("bob"), name="x2")
        await asyncio.gather(x1.send(resume_msg(room, pb, token, 0, cid="r")),
                             x2.send(resume_msg(room, pb, token, 0, cid="r")))
        answers = sorted([(await x1.recv(timeout=5))["type"], (await x2.recv(timeout=5))["type"]])
        assert answers == ["error", "resumed"], answers
        winner = x1 if x1.messages[0]["type"] == "resumed" else x2
        loser = x2 if winner is x1 else x1
        assert loser.messages[0]["code"] == "resume_failed", loser.messages
        await send_candidates(a, room, pa, pb, [0])
        await recv_candidate_relays(winner, room, pa, pb, 1, 1)
        await loser.expect_no_message(0.3)


async def test_a_peer_in_grace_keeps_its_place_in_the_room(gateway_factory, redis):
    gw = gateway_factory.start(env=dict(RESUME_ENV, SIGNAL_ROOM_MAX_PEERS=2))
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        await c.member(gw, "alice", room, pa)
        b = await c.member(gw, "bob", room, pb)
        await lose(b, redis, room, pb)
        cc = await c.connect(gw.ws_url, tok("carol"), name="c")
        await cc.send({"type": "join", "roomId": room, "peerId": new_peer(), "correlationId": "j"})
        await cc.expect_error("room_full", cid="j", room=room)
        # nor can another user take its peerId
        await cc.send({"type": "join", "roomId": room, "peerId": pb, "correlationId": "j2"})
        await cc.expect_error("peer_id_taken", cid="j2", room=room)


async def test_resume_with_last_seq_beyond_the_current_seq(gateway_factory, redis):
    """Not validated against the buffer: resumed with replayed 0, and later
    relays go on from the real seq (lower than the lastSeq the client sent)."""
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        b, a, token = await bob_then_alice(c, g1, g2, room, pb, pa)
        await send_candidates(a, room, pa, pb, range(3))
        await recv_candidate_relays(b, room, pa, pb, 1, 3)
        await lose(b, redis, room, pb)
        await send_held(a, room, pa, pb, range(3, 5))
        b2, _ = await resume_works(c, g2, "b2", room, pb, token, 100, replayed=0)
        await b2.expect_no_message(0.3)
        await send_candidates(a, room, pa, pb, [5])
        await recv_candidate_relays(b2, room, pa, pb, 6, 1)


async def test_resume_message_validation(gateway_factory):
    gw = gateway_factory.start(env=RESUME_ENV)
    room, pb = new_room(), new_peer()

    async with Clients() as c:
        b = await c.member(gw, "bob", room, pb)
        token = b.joined[room]["resumeToken"]
        bad = [
            dict(resume_msg(room, pb, token, -1), correlationId="neg"),
            dict(resume_msg(room, pb, token, 1.5), correlationId="float"),
            dict(resume_msg(room, pb, token, "3"), correlationId="str"),
            dict(resume_msg(room, pb, token, 2 ** 53), correlationId="big"),
            dict(resume_msg(room, pb, "not a token!", 0), correlationId="chars"),
            dict(resume_msg(room, pb, "t" * 129, 0), correlationId="long"),
            {"type": "resume", "roomId": room, "peerId": pb, "resumeToken": token, "correlationId": "noseq"},
            {"type": "resume", "roomId": room, "peerId": pb, "lastSeq": 0, "correlationId": "notok"},
        ]
        for m in bad:
            await b.send(m)
            await b.expect_error("bad_request", cid=m["correlationId"])
        # resume into a room this connection is in
        await b.send(resume_msg(room, pb, token, 0, cid="dup"))
        await b.expect_error("bad_request", cid="dup", room=room)
        await b.expect_no_message(0.3)


async def test_resume_while_the_old_connection_is_still_open_replaces_it(gateway_factory, redis):
    """The gateway has not noticed the loss yet (half-open TCP): the resume
    still works and the old connection is told it was replaced."""
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        b, a, token = await bob_then_alice(c, g1, g2, room, pb, pa)
        await b.recv_type("peer_joined", peerId=pa)
        await send_candidates(a, room, pa, pb, [0])
        first = await b.recv_type("relay")
        b2, _ = await resume_works(c, g2, "b2", room, pb, token, first["seq"], replayed=0)
        await b.expect_error("replaced", room=room)
        await send_candidates(a, room, pa, pb, [1])
        await recv_candidate_relays(b2, room, pa, pb, 2, 1)
        await b.expect_no_message(0.3)
        assert no_membership_events(a) == [], a.messages
        # the old connection closing now changes nothing
        await b.close()
        await a.expect_no_message(0.5)
        assert h.member_record(redis, room, pb)["conn"] != ""


async def test_resume_off_gives_resume_failed_and_no_seq(gateway_factory, redis):
    gw = gateway_factory.start(env=dict(h.NO_RATE_LIMITS, SIGNAL_RESUME_MS=0))
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        b = await c.member(gw, "bob", room, pb)
        assert "resumeToken" not in b.joined[room], b.joined[room]
        a = await c.member(gw, "alice", room, pa)
        await a.send(dict(h.candidate(room, pa, pb, cand(0), cid="c0"), ack=True))
        assert (await a.recv_type("ack", correlationId="c0"))["status"] == "delivered"
        m = await b.recv_type("relay")
        assert "seq" not in m, m
        assert redis.keys(f"room:{{{room}}}:buf:*") == []
        b.abort()
        left = await a.recv_type("peer_left", timeout=3)
        assert left["reason"] == "disconnect", left
        await resume_fails(c, gw, "b2", room, pb, x.random_resume_token(), cid="off")


# ====================================================================== receipts


async def test_ack_statuses_and_errors(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    room = new_room()
    pa, pb, pc = new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        a = await c.member(g1, "alice", room, pa)
        b = await c.member(g2, "bob", room, pb)
        cc = await c.member(g1, "carol", room, pc)
        for p in (pb, pc):
            await a.recv_type("peer_joined", peerId=p)

        # live target on the other node / on the same node
        await a.send(dict(h.offer(room, pa, pb, cid="o1"), ack=True))
        ack = await a.recv_type("ack", correlationId="o1")
        assert ack == {"type": "ack", "correlationId": "o1", "status": "delivered"}, ack
        rel = await b.recv_type("relay", correlationId="o1")
        assert "ack" not in rel["inner"] and "ack" not in rel, rel
        assert rel["inner"] == h.inner_of(h.offer(room, pa, pb)), rel
        await a.send(dict(h.candidate(room, pa, pc, cand(0), cid="k1"), ack=True))
        assert (await a.recv_type("ack", correlationId="k1"))["status"] == "delivered"
        rel = await cc.recv_type("relay", correlationId="k1")
        assert "ack" not in rel["inner"], rel

        # without a correlationId: the ack names the server-made one the target got
        await a.send(dict(h.answer(room, pa, pb), ack=True))
        ack = await a.recv_type("ack")
        rel = await b.recv_type("relay")
        assert ack["status"] == "delivered" and ack["correlationId"] == rel["correlationId"], (ack, rel)
        assert ack["correlationId"].startswith("s."), ack

        # ack false, or absent: no receipt
        await a.send(dict(h.candidate(room, pa, pb, cand(1), cid="nf"), ack=False))
        await a.send(h.candidate(room, pa, pb, cand(2), cid="na"))
        await b.recv_type("relay", correlationId="nf")
        await b.recv_type("relay", correlationId="na")
        await a.expect_no_message(0.3)

        # target in its grace period
        b.abort()
        await wait_in_grace(redis, room, pb)
        await a.send(dict(h.answer(room, pa, pb, cid="g1"), ack=True))
        assert (await a.recv_type("ack", correlationId="g1"))["status"] == "buffered"

        # other failures stay errors, never an ack
        await a.send(dict(h.candidate(room, pa, new_peer(), cand(3), cid="nf1"), ack=True))
        await a.expect_error("peer_not_found", cid="nf1", room=room)
        await a.send(dict(h.candidate(room, pa, pa, cand(3), cid="self"), ack=True))
        await a.expect_error("peer_not_found", cid="self", room=room)
        await a.send(dict(h.candidate(room, pc, pb, cand(3), cid="forged"), ack=True))
        await a.expect_error("forbidden", cid="forged", room=room)
        other = new_room()
        await a.send(dict(h.candidate(other, pa, pb, cand(3), cid="nj"), ack=True))
        await a.expect_error("not_joined", cid="nj")
        await a.send(dict(h.candidate(room, pa, pc, cand(3), cid="bad"), ack="yes"))
        await a.expect_error("bad_request", cid="bad")
        await a.send(dict(h.candidate(room, pa, pc, cand(3), cid="bad1"), ack=1))
        await a.expect_error("bad_request", cid="bad1")
        await a.expect_no_message(0.3)
        assert [m for m in a.messages if m.get("type") == "ack"
                and m["correlationId"] in ("nf1", "self", "forged", "nj", "bad", "bad1")] == []
        # ack belongs to relays only
        await a.send({"type": "join", "roomId": other, "peerId": pa, "ack": True, "correlationId": "j"})
        await a.expect_error("bad_request", cid="j")


async def test_ack_with_resumption_off_peer_unreachable_stays_an_error(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=dict(h.NO_RATE_LIMITS, SIGNAL_RESUME_MS=0, SIGNAL_LEASE_MS=6000))
    room = new_room()
    pa, pb = new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(g1, g2, room, pa, pb)
        await a.send(dict(h.offer(room, pa, pb, cid="o1"), ack=True))
        assert (await a.recv_type("ack", correlationId="o1"))["status"] == "delivered"
        g2.kill()
        # The kernel closed g2's sockets; Redis drops its subscriber when
        # it reads that, which may come after our next PUBLISH.
        channel = h.peer_channel(room, pb)
        await h.async_wait_until(lambda: redis.subscribers(channel) == 0, 5,
                                 what="Redis noticed the dead node's subscriber")
        await a.send(dict(h.offer(room, pa, pb, cid="o2"), ack=True))
        await a.expect_error("peer_unreachable", cid="o2", room=room)
        await a.expect_no_message(0.3)


async def test_ack_dropped_over_a_rate_limit(gateway_factory):
    env = dict(RESUME_ENV, SIGNAL_RATE_CANDIDATE="0.1/3")
    g1, g2 = gateway_factory(2, env=env)
    room = new_room()
    pa, pb = new_peer(), new_peer()

    async with Clients() as c:
        a = await c.member(g1, "alice", room, pa)
        b = await c.member(g2, "bob", room, pb)
        for i in range(6):
            await a.send(dict(h.candidate(room, pa, pb, cand(i), cid=f"c{i}"), ack=True))
        statuses = [(await a.recv_type("ack", correlationId=f"c{i}"))["status"] for i in range(6)]
        assert statuses == ["delivered"] * 3 + ["dropped"] * 3, statuses
        got = [await b.recv_type("relay") for _ in range(3)]
        assert [m["correlationId"] for m in got] == ["c0", "c1", "c2"]
        await b.expect_no_message(0.3)
        # the receipt is the answer: no rate_limited error besides it
        assert [m for m in a.messages if m.get("type") == "error"] == [], a.messages
        # without ack, the same limit answers the §10 way
        await a.send(h.candidate(room, pa, pb, cand(6), cid="c6"))
        await a.expect_error("rate_limited", room=room)
        # offers are not under the candidate limit
        await a.send(dict(h.offer(room, pa, pb, cid="o"), ack=True))
        assert (await a.recv_type("ack", correlationId="o"))["status"] == "delivered"


# ====================================================================== delivery-path probe


def _readyz(gw):
    status, body = h.http_status(gw.admin_url + "/readyz", timeout=1)
    return status, (json.loads(body) if body else None)


def _wait_ready(gw, want, timeout):
    t0 = time.monotonic()
    h.wait_until(lambda: _readyz(gw)[0] == want, timeout, 0.1,
                 what=f"/readyz {want} (last {_readyz(gw)}); log tail:\n{gw.log_tail(10)}")
    return time.monotonic() - t0


def _probe_age(gw):
    v = x.metric(gw, "delivery_probe_age_ms")
    assert v is not None, "no delivery_probe_age_ms in /metrics"
    return v


def _wait_first_probe(gw):
    h.wait_until(lambda: 0 <= _probe_age(gw) < 2500, 5, what="a probe to come back")


async def _relay_works(gw):
    room = new_room()
    pa, pb = new_peer(), new_peer()
    async with Clients() as c:
        a = await c.member(gw, "alice", room, pa)
        b = await c.member(gw, "bob", room, pb)
        await a.send(h.offer(room, pa, pb, cid="o"))
        await b.recv_type("relay", correlationId="o")


def test_probe_catches_a_wedged_subscription_and_renews_it(gateway_factory, redis):
    """Only the subscriber connection that exists now wedges (its TCP
    connection stays up, nothing comes through): /readyz turns 503, then the
    gateway renews the subscriber connection and is ready again by itself."""
    proxy = x.RedisProxy(redis.port)
    try:
        gw = gateway_factory.start(env={"SIGNAL_REDIS_URL": proxy.url})
        _wait_first_probe(gw)
        assert _readyz(gw)[0] == 200
        subs_before = proxy.sub_conns
        assert subs_before >= 1
        proxy.wedge_existing()
        t0 = time.monotonic()
        _wait_ready(gw, 503, 10)
        took = time.monotonic() - t0
        # not before the probe went stale (5 s after the last one came back)
        assert took >= 3.5, f"503 after {took:.1f}s"
        status, body = _readyz(gw)
        assert body["probe_age_ms"] >= 4000 and body["redis"] is True, body
        assert _probe_age(gw) >= 4000
        # commands still worked all along: the command connection is there
        names = [ln for ln in redis("CLIENT", "LIST").splitlines() if "name=signal-gateway-cmd" in ln]
        assert names, redis("CLIENT", "LIST")
        # the gateway renews the subscriber connection and recovers by itself
        _wait_ready(gw, 200, 12)
        assert proxy.sub_conns > subs_before
        assert any(e.get("event") == "redis.probe_stale" for e in x.log_events(gw))
        _wait_first_probe(gw)
        arun(_relay_works(gw), timeout=20)
    finally:
        proxy.close()


def test_probe_readyz_503_while_pubsub_is_broken_and_200_when_it_stops(gateway_factory, redis):
    proxy = x.RedisProxy(redis.port)
    try:
        gw = gateway_factory.start(env={"SIGNAL_REDIS_URL": proxy.url})
        _wait_first_probe(gw)
        proxy.wedged.set()  # every subscriber connection, present and future
        _wait_ready(gw, 503, 10)
        # stays unready while the breakage lasts
        for _ in range(10):
            assert _readyz(gw)[0] == 503
            time.sleep(0.1)
        proxy.wedged.clear()
        _wait_ready(gw, 200, 15)
        _wait_first_probe(gw)
        arun(_relay_works(gw), timeout=20)
    finally:
        proxy.close()


# ====================================================================== key rotation


def _auth_status(gw, token):
    r = h.handshake(gw, token)
    return r.status, r.header("www-authenticate")


async def test_key_rotation_on_sighup_under_live_traffic(gateway_factory, tmp_path):
    ka, ja = x.rsa_key("a")
    kb, jb = x.rsa_key("b")
    jwks = tmp_path / "jwks.json"
    x.write_atomically(jwks, json.dumps({"keys": [ja]}))
    env = dict(h.NO_RATE_LIMITS, SIGNAL_JWT_ALG="RS256", SIGNAL_JWT_JWKS_FILE=str(jwks), SIGNAL_JWT_SECRET=None)
    gw = gateway_factory.start(env=env)
    room = new_room()
    pa, pb = new_peer(), new_peer()

    def token(key, kid, sub):
        return x.signed_token(key, kid, "RS256", sub)

    st, www = _auth_status(gw, token(kb, "b", "bob"))
    assert st == 401 and "unknown_kid" in (www or ""), (st, www)
    async with Clients() as c:
        a = await c.connect(gw.ws_url, token(ka, "a", "alice"), name="a")
        b = await c.connect(gw.ws_url, token(ka, "a", "bob"), name="b")
        await a.join(room, pa)
        await b.join(room, pb)
        s1 = Sender(a, room, pa, pb, interval=0.02)
        s2 = Sender(b, room, pb, pa, interval=0.02)
        await h.async_wait_until(lambda: s1.sent > 5, 5)

        # rotate: the file now holds key B only
        n_logs = len(x.log_events(gw))
        x.write_atomically(jwks, json.dumps({"keys": [jb]}))
        gw.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(x.wait_log_event, gw, "auth.reload", 5, n_logs)
        await asyncio.sleep(0.3)
        st, www = await asyncio.to_thread(_auth_status, gw, token(ka, "a", "carol"))
        assert st == 401 and 'error_description="unknown_kid"' in www, (st, www)
        d = await c.connect(gw.ws_url, token(kb, "b", "dave"), name="d")
        await d.join(room, new_peer())

        # a broken file keeps the keys in force (B)
        n_logs = len(x.log_events(gw))
        x.write_atomically(jwks, '{"keys": [')
        gw.proc.send_signal(signal.SIGHUP)
        ev = await asyncio.to_thread(x.wait_log_event, gw, "auth.reload_failed", 5, n_logs)
        assert ev.get("level") == "error", ev
        assert (await asyncio.to_thread(_auth_status, gw, token(kb, "b", "erin")))[0] == 101
        assert (await asyncio.to_thread(_auth_status, gw, token(ka, "a", "erin")))[0] == 401
        # so does a file with no usable key, and a missing one
        for text in ('{"keys": []}', json.dumps({"keys": [dict(ja, use="enc")]})):
            n_logs = len(x.log_events(gw))
            x.write_atomically(jwks, text)
            gw.proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(x.wait_log_event, gw, "auth.reload_failed", 5, n_logs)
        n_logs = len(x.log_events(gw))
        jwks.unlink()
        gw.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(x.wait_log_event, gw, "auth.reload_failed", 5, n_logs)
        assert (await asyncio.to_thread(_auth_status, gw, token(kb, "b", "erin")))[0] == 101

        # the live traffic went on throughout, on the connections admitted with key A
        sent1, sent2 = await s1.finish(), await s2.finish()
        got_b = [await b.recv_type("relay", correlationId=f"c{i}") for i in range(sent1)]
        got_a = [await a.recv_type("relay", correlationId=f"c{i}") for i in range(sent2)]
        assert len(got_b) == sent1 and len(got_a) == sent2
        assert a.is_open and b.is_open and d.is_open
        errors = [m for cl in (a, b, d) for m in cl.messages if m.get("type") == "error"]
        assert errors == [], errors
    assert gw.running()


def test_jwks_with_es256_and_rs256_keys_alg_must_match_the_kid(gateway_factory, tmp_path):
    """§9: the kid picks the key and the key's type decides the algorithm
    (RS256 for RSA, ES256 for P-256); SIGNAL_JWT_ALG only says a JWKS is in
    use, so one file may mix both kinds."""
    ke, je = x.ec_key("e")
    kr, jr = x.rsa_key("r")
    jwks = tmp_path / "jwks.json"
    x.write_atomically(jwks, json.dumps({"keys": [je, jr]}))
    env = {"SIGNAL_JWT_ALG": "ES256", "SIGNAL_JWT_JWKS_FILE": str(jwks), "SIGNAL_JWT_SECRET": None}
    gw = gateway_factory.start(env=env)
    assert _auth_status(gw, x.signed_token(ke, "e", "ES256", "alice"))[0] == 101
    assert _auth_status(gw, x.signed_token(kr, "r", "RS256", "alice"))[0] == 101
    # the token's alg must be the one of the key its kid names
    for key, kid, alg in ((kr, "e", "RS256"), (ke, "r", "ES256")):
        st, www = _auth_status(gw, x.signed_token(key, kid, alg, "alice"))
        assert st == 401 and 'error_description="bad_alg"' in www, (kid, alg, st, www)
    # the right alg and kid with another key's signature
    ke2, _ = x.ec_key("e")
    st, www = _auth_status(gw, x.signed_token(ke2, "e", "ES256", "alice"))
    assert st == 401 and 'error_description="bad_signature"' in www, (st, www)
    st, www = _auth_status(gw, x.signed_token(ke, "nope", "ES256", "alice"))
    assert st == 401 and 'error_description="unknown_kid"' in www, (st, www)
    # no kid at all
    st, www = _auth_status(gw, h.sign_token(h.token_claims("alice", ["*"]), ke, "ES256"))
    assert st == 401 and 'error_description="unknown_kid"' in www, (st, www)
