# SPDX-License-Identifier: Apache-2.0
"""Issue 4, abuse resistance (docs/protocol.md §5 "Rate limits" and §10,
README "Rate limits"): Redis-held token buckets under a candidate flood, on one
node and spread over two; the local per-connection guard and its 1008 close;
slow consumers and the output bound; per-IP and join-timeout caps; the
security cases the other files do not cover yet; and a realistic browser call
passing the default limits untouched.

Bounds are computed from the configuration (the gateway's own --help defaults
or the env a test sets), never from timing luck: a token bucket of rate R and
capacity B admits at most B + R*T messages over any window T, and T is always
measured generously (from the first send to the last receive).

Flood numbers for the issue note are printed (run with -s to see them).
"""

import asyncio
import functools
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import abuse_helpers as ah
import sg_helpers as h
from sg_helpers import Clients, handshake, make_token, new_peer, new_room, tok


LOCAL_OFF = {"SIGNAL_RATE_CONN_FRAMES": "0", "SIGNAL_RATE_CONN_BYTES": "0"}


def bucket_bound(env, names, window):
    """The tightest B + R*T (+1 for rounding) over the enabled buckets."""
    bounds = []
    for n in names:
        r, b = ah.effective_rate(env, n)
        if r > 0:
            bounds.append(b + r * window + 1)
    assert bounds, "no bucket enabled"
    return min(bounds)


def relays_from(client_msgs, peer, type_="candidate"):
    """(t, msg) relays of `type_` from `peer` among a RawFlooder's messages."""
    return [(t, m) for t, m in client_msgs
            if m.get("type") == "relay" and m["inner"].get("from") == peer
            and m["inner"].get("type") == type_]


async def wait_quiet(count_fn, quiet=1.0, timeout=8.0):
    """Until count_fn() has not changed for `quiet` seconds (stragglers in)."""
    deadline = time.monotonic() + timeout
    last, since = count_fn(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        n = count_fn()
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return n
    return count_fn()


async def raw_client(gw, token, room, peer, name):
    f = await asyncio.to_thread(ah.RawFlooder, gw, token, name)
    await asyncio.to_thread(f.join, room, peer)
    f.start_reader()
    return f


async def normal_exchange(a, pa, b, pb, room, n_cand=40, spread=1.0):
    """One offer, one answer, n_cand candidates each way (trickled over
    `spread` seconds); every message must arrive, in order, and no error."""
    o = h.offer(room, pa, pb, cid="n-offer")
    await a.send(o)
    got = await b.recv_type("relay", timeout=10)
    assert got["inner"] == h.inner_of(o), got
    ans = h.answer(room, pb, pa, cid="n-answer")
    await b.send(ans)
    got = await a.recv_type("relay", timeout=10)
    assert got["inner"] == h.inner_of(ans), got
    ca = [h.candidate(room, pa, pb, h.ice(i)) for i in range(n_cand)]
    cb = [h.candidate(room, pb, pa, h.ice(500 + i)) for i in range(n_cand)]
    for i in range(n_cand):
        await a.send(ca[i])
        await b.send(cb[i])
        await asyncio.sleep(spread / n_cand)
    for receiver, sent in ((b, ca), (a, cb)):
        for m in sent:
            r = await receiver.recv_type("relay", timeout=10)
            assert r["inner"] == h.inner_of(m), (receiver, r, m)
    for cl in (a, b):
        errs = [m for m in cl.messages if m.get("type") == "error"]
        assert not errs, f"{cl.name}: {errs}"


# =========================================================================
# candidate flood on one node


FLOOD_S = 3.5
FLOOD_RATE = 10000


@pytest.mark.xdist_group("heavy")  # one CPU-bound test at a time (pytest.ini)
@pytest.mark.async_timeout(80)
async def test_candidate_flood_is_held_to_the_buckets(gateway_factory, redis):
    """One malicious peer bursts ~10,000 candidates/s at its room-mate for
    3.5 s with DEFAULT limits. The target gets no more than the buckets allow,
    the flooder gets at most ~1 warning/s, a normal call in another room and
    another member of the flooded room are untouched."""
    gw = gateway_factory.start()
    env = {}
    room, calm = new_room("flood"), new_room("calm")
    pf, pt, pc, pa, pb = (new_peer() for _ in range(5))
    report = {}

    async with Clients() as c:
        target = await raw_client(gw, tok("target"), room, pt, "target")
        carol = await c.member(gw, "carol", room, pc)
        a, b = await c.pair(gw, gw, calm, pa, pb)
        flooder = await raw_client(gw, tok("mallory"), room, pf, "flooder")
        try:
            await carol.recv_type("peer_joined", peerId=pf)
            frames = ah.candidate_frames(room, pf, pt, 1000)
            m0 = await asyncio.to_thread(ah.metrics, gw)
            e0 = await asyncio.to_thread(ah.evalsha_calls, redis)

            flooder.flood_in_thread(frames, rate=FLOOD_RATE, duration=FLOOD_S)
            t0 = time.monotonic()

            # meanwhile: a normal call in another room, and carol (same
            # room as the flood) sends her own messages to the target
            await asyncio.sleep(0.3)
            normal = asyncio.ensure_future(normal_exchange(a, pa, b, pb, calm, n_cand=40, spread=1.0))
            carol_msgs = [h.offer(room, pc, pt, cid="cm-offer")] + \
                [h.candidate(room, pc, pt, h.ice(900 + i), cid=f"cm-{i}") for i in range(20)]
            for m in carol_msgs:
                await carol.send(m)
                await asyncio.sleep(0.04)

            # steady state: a window that starts after the bursts
            await asyncio.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
            s1 = (time.monotonic(), await asyncio.to_thread(ah.metrics, gw),
                  await asyncio.to_thread(ah.evalsha_calls, redis),
                  len(relays_from(list(target.messages), pf)))
            await asyncio.to_thread(flooder.wait_writer, FLOOD_S + 15)
            s2 = (time.monotonic(), await asyncio.to_thread(ah.metrics, gw),
                  await asyncio.to_thread(ah.evalsha_calls, redis),
                  len(relays_from(list(target.messages), pf)))
            await asyncio.wait_for(normal, 30)

            # stragglers
            await wait_quiet(lambda: len(relays_from(list(target.messages), pf)), quiet=1.0)
            await asyncio.sleep(0.2)
            m1 = await asyncio.to_thread(ah.metrics, gw)
            e1 = await asyncio.to_thread(ah.evalsha_calls, redis)

            got = relays_from(list(target.messages), pf)
            assert got, "not one flooder candidate reached the target"
            window = got[-1][0] - flooder.t_first_send
            assert window <= FLOOD_S + 5, f"the last flooder candidate came {window:.1f}s after the first send"

            # ---- the bound, from the configuration
            bound = bucket_bound(env, ("RATE_CANDIDATE", "RATE_PEER", "RATE_ROOM"), window)
            assert len(got) <= bound, (
                f"target received {len(got)} flooder candidates in {window:.2f}s; "
                f"the buckets allow at most {bound:.1f}")
            # and the buckets start full: the first burst passes whole
            floor = min(ah.effective_rate(env, n)[1] for n in ("RATE_CANDIDATE", "RATE_PEER", "RATE_ROOM")
                        if ah.effective_rate(env, n)[0] > 0)
            fr, fb = ah.effective_rate(env, "RATE_CONN_FRAMES")
            if fr > 0:
                floor = min(floor, fb - 1)  # the join took one frame
            assert len(got) >= floor, (len(got), floor)
            # every delivered candidate is intact
            assert got[0][1]["inner"] == h.inner_of(json.loads(ah.unmask_frame(frames[0]))), got[0]

            # ---- the flooder: warnings, at most about one a second
            flood_end = max([flooder.t_last_send] + [t for t, _ in flooder.errors()])
            t_flood = flood_end - flooder.t_first_send
            warnings = flooder.errors("rate_limited")
            others = [m for _, m in flooder.errors() if m.get("code") != "rate_limited"]
            assert not others, others
            assert warnings, "a flooder must be told (rate_limited), never dropped silently"
            assert len(warnings) <= t_flood + 2, (
                f"{len(warnings)} rate_limited warnings in {t_flood:.2f}s (at most ~1/s)")
            assert flooder.close_code is None and flooder.eof_t is None, \
                "a 3.5 s flood must not be closed yet (only after 10 s)"
            # the gateway's own record: warnings (ratelimit.drop lines) >= 1 s apart
            ts = [ah.log_ts(o) for o in ah.log_events(gw, "ratelimit.drop")]
            gaps = [b_ - a_ for a_, b_ in zip(ts, ts[1:])]
            assert all(g >= 0.95 for g in gaps), f"ratelimit.drop warnings closer than 1 s: {gaps}"
            assert all("dropped" in o for o in ah.log_events(gw, "ratelimit.drop"))

            # ---- nobody else was hurt
            got_c = [m for _, m in target.messages if m.get("type") == "relay"
                     and m["inner"]["from"] == pc]
            assert [m["inner"] for m in got_c] == [h.inner_of(m) for m in carol_msgs], \
                f"carol's messages to the target: {len(got_c)} of {len(carol_msgs)} arrived"
            assert [m["correlationId"] for m in got_c] == [m["correlationId"] for m in carol_msgs]
            assert not [m for m in carol.messages if m.get("type") == "error"], carol.messages
            assert not target.errors(), target.errors()

            # ---- metrics
            d = {s: ah.metric(m1, "ratelimit_drops_total", scope=s) -
                 ah.metric(m0, "ratelimit_drops_total", scope=s)
                 for s in ("connection", "candidate", "peer", "room")}
            assert d["connection"] > 0, d
            assert d["candidate"] + d["peer"] + d["room"] > 0, d
            # the bucket lives in Redis, under the room's hash tag
            assert redis("HGET", f"room:{{{room}}}:buckets", f"c:{pf}") is not None

            # ---- numbers for the issue note
            redis_dropped = d["candidate"] + d["peer"] + d["room"]
            reached_redis = len(got) + redis_dropped
            send_s = flooder.t_last_send - flooder.t_first_send
            w = s2[0] - s1[0]
            steady_drop = sum(ah.metric(s2[1], "ratelimit_drops_total", scope=s) -
                              ah.metric(s1[1], "ratelimit_drops_total", scope=s)
                              for s in ("candidate", "peer", "room"))
            steady_local = (ah.metric(s2[1], "ratelimit_drops_total", scope="connection") -
                            ah.metric(s1[1], "ratelimit_drops_total", scope="connection"))
            report.update(
                sent=flooder.sent, send_s=send_s, send_rate=flooder.sent / send_s,
                local_dropped=d["connection"], reached_redis=reached_redis,
                redis_dropped=redis_dropped, received=len(got), window=window,
                bound=bound, warnings=len(warnings), t_flood=t_flood,
                evalsha=e1 - e0,
                steady_window=w,
                steady_local_per_s=steady_local / w,
                steady_redis_per_s=(steady_drop + s2[3] - s1[3]) / w,
                steady_evalsha_per_s=(s2[2] - s1[2]) / w,
                steady_target_per_s=(s2[3] - s1[3]) / w)
            # a flood worth the name, so the numbers mean something
            assert flooder.sent / send_s >= 2000, f"the client only managed {flooder.sent / send_s:.0f}/s"
        finally:
            flooder.close()
            target.close()

    r = report
    print(f"\n[flood, default limits] flooder sent {r['sent']} candidates in {r['send_s']:.2f}s "
          f"({r['send_rate']:.0f}/s); local guard dropped {r['local_dropped']:.0f}; "
          f"reached Redis {r['reached_redis']:.0f} ({r['reached_redis'] / r['send_s']:.1f}/s overall; "
          f"Redis-dropped {r['redis_dropped']:.0f}); evalsha calls during the test {r['evalsha']} "
          f"(all clients); target received {r['received']} in {r['window']:.2f}s "
          f"({r['received'] / r['window']:.1f}/s overall; bound {r['bound']:.1f}); "
          f"flooder warnings {r['warnings']} in {r['t_flood']:.2f}s")
    print(f"[flood, steady state over {r['steady_window']:.2f}s after the bursts] "
          f"local drops {r['steady_local_per_s']:.0f}/s; reached Redis {r['steady_redis_per_s']:.1f}/s "
          f"(evalsha {r['steady_evalsha_per_s']:.1f}/s, all clients); "
          f"reached the target {r['steady_target_per_s']:.1f}/s")


# =========================================================================
# the same buckets across two nodes (Redis-held)


@pytest.mark.xdist_group("heavy")  # one CPU-bound test at a time (pytest.ini)
@pytest.mark.async_timeout(60)
async def test_room_bucket_is_shared_by_senders_on_two_nodes(gateway_factory, redis):
    """Two flooders in one room, one per node, each send 300 candidates as
    fast as they can. Only the room bucket is on: together they get no more
    than ONE bucket allows (B + R*T), less than two per-node buckets would
    (2B), and both nodes saw room-scope drops."""
    env = dict(LOCAL_OFF, SIGNAL_RATE_PEER="0", SIGNAL_RATE_CANDIDATE="0", SIGNAL_RATE_ROOM="5/40")
    g1, g2 = gateway_factory(2, env=env)
    rate, burst = ah.effective_rate(env, "RATE_ROOM")
    room = new_room("shared")
    pt, p1, p2 = new_peer(), new_peer(), new_peer()

    target = await raw_client(g1, tok("target"), room, pt, "target")
    f1 = await raw_client(g1, tok("m1"), room, p1, "f1")
    f2 = await raw_client(g2, tok("m2"), room, p2, "f2")
    try:
        fr1 = ah.candidate_frames(room, p1, pt, 300)
        fr2 = ah.candidate_frames(room, p2, pt, 300)
        t0 = time.monotonic()
        w1 = f1.flood_in_thread(fr1, count=300)
        w2 = f2.flood_in_thread(fr2, count=300)
        await asyncio.to_thread(w1.join, 20)
        await asyncio.to_thread(w2.join, 20)

        def count():
            return len(relays_from(target.messages, p1)) + len(relays_from(target.messages, p2))
        await wait_quiet(count, quiet=1.0)
        got = relays_from(target.messages, p1) + relays_from(target.messages, p2)
        assert got, "nothing got through"
        window = max(t for t, _ in got) - t0
        bound = burst + rate * window + 1
        print(f"\n[two nodes, room bucket {rate:g}/{burst:g}] sent 2x300, target received "
              f"{len(relays_from(target.messages, p1))} + {len(relays_from(target.messages, p2))} "
              f"in {window:.2f}s (one shared bucket allows {bound:.1f}; per-node buckets would "
              f"allow >= {2 * burst:g})")
        assert bound < 2 * burst, f"window {window:.2f}s too long for the test to discriminate"
        assert len(got) <= bound, (len(got), bound)
        assert len(got) >= burst, (len(got), burst)  # the bucket starts full
        for g in (g1, g2):
            m = await asyncio.to_thread(ah.metrics, g)
            assert ah.metric(m, "ratelimit_drops_total", scope="room") > 0, g
        for f in (f1, f2):
            assert f.errors("rate_limited"), f"{f.name} was never warned"
            assert len(f.errors("rate_limited")) <= (time.monotonic() - t0) + 2
    finally:
        for f in (f1, f2, target):
            f.close()


@pytest.mark.xdist_group("heavy")  # one CPU-bound test at a time (pytest.ini)
@pytest.mark.async_timeout(60)
async def test_peer_bucket_survives_takeover_on_another_node(gateway_factory, redis):
    """The same user's peer floods candidates on node 1, then its new
    connection takes the peerId over on node 2 and floods on: the candidate
    bucket is the same one (it is keyed by room and peer in Redis, not held
    by a node or connection), so the total stays within one bucket."""
    env = dict(LOCAL_OFF, SIGNAL_RATE_PEER="0", SIGNAL_RATE_ROOM="0", SIGNAL_RATE_CANDIDATE="5/50")
    g1, g2 = gateway_factory(2, env=env)
    rate, burst = ah.effective_rate(env, "RATE_CANDIDATE")
    room = new_room("takeover")
    pt, pm = new_peer(), new_peer()

    target = await raw_client(g1, tok("target"), room, pt, "target")
    first = await raw_client(g1, tok("mallory"), room, pm, "first")
    second = None
    try:
        t0 = time.monotonic()
        first.flood(ah.candidate_frames(room, pm, pt, 150), count=150)
        await wait_quiet(lambda: len(relays_from(target.messages, pm)), quiet=0.5)
        n_first = len(relays_from(target.messages, pm))
        assert n_first >= burst, n_first
        # the same user, same peerId, on the other node: takeover
        second = await raw_client(g2, tok("mallory"), room, pm, "second")
        await asyncio.to_thread(h.wait_until, lambda: first.errors("replaced"), 5,
                                what="replaced on the old connection")
        second.flood(ah.candidate_frames(room, pm, pt, 150), count=150)
        await wait_quiet(lambda: len(relays_from(target.messages, pm)), quiet=1.0)
        got = relays_from(target.messages, pm)
        window = got[-1][0] - t0
        bound = burst + rate * window + 1
        print(f"\n[takeover to another node, candidate bucket {rate:g}/{burst:g}] target received "
              f"{n_first} before and {len(got) - n_first} after the takeover in {window:.2f}s "
              f"(one bucket allows {bound:.1f}; a fresh bucket would allow >= {2 * burst:g})")
        assert bound < 2 * burst, f"window {window:.2f}s too long for the test to discriminate"
        assert len(got) <= bound, (len(got), bound)
        assert second.errors("rate_limited"), "the new connection was not warned"
    finally:
        for f in (first, second, target):
            if f is not None:
                f.close()


# =========================================================================
# the local guard closes a persistent flooder


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")  # one CPU-bound test at a time (pytest.ini)
@pytest.mark.async_timeout(60)
async def test_flood_beyond_the_local_cap_for_10s_is_closed_1008(gateway_factory):
    """A client over the per-connection frame cap for 10 s on end is closed
    with 1008; one that floods in bursts with pauses (> 1 s without a drop)
    is warned but stays."""
    gw = gateway_factory.start()
    fr, fb = ah.effective_rate({}, "RATE_CONN_FRAMES")
    assert fr > 0, "the local frames guard is off by default?"
    room = new_room("persist")
    pt, pf, pi = new_peer(), new_peer(), new_peer()
    rate = max(10 * fr, 200)

    target = await raw_client(gw, tok("target"), room, pt, "target")
    flooder = await raw_client(gw, tok("mallory"), room, pf, "flooder")
    pulsed = await raw_client(gw, tok("eve"), room, pi, "pulsed")
    try:
        t0 = time.monotonic()
        flooder.flood_in_thread(ah.candidate_frames(room, pf, pt, 500), rate=rate, duration=20)

        def pulses():
            frames = ah.candidate_frames(room, pi, pt, 500)
            while time.monotonic() - t0 < 15 and not pulsed.wait_closed(0):
                pulsed.flood(frames, rate=rate, duration=1.0)
                time.sleep(1.6)
        pulser = asyncio.ensure_future(asyncio.to_thread(pulses))
        closed = await asyncio.to_thread(flooder.wait_closed, 20)
        assert closed, "the persistent flooder was not closed within 20 s"
        assert flooder.close_code == 1008, (flooder.close_code, flooder.eof_t)
        first_warn = flooder.errors("rate_limited")[0][0]
        over = flooder.close_t - first_warn
        assert 9.0 <= over <= 12.5, f"closed {over:.2f}s after the first warning (10 s expected)"
        await pulser
        assert pulsed.close_code is None and pulsed.eof_t is None, \
            "a flooder that pauses (> 1 s without a drop) must not be closed"
        assert len(pulsed.errors("rate_limited")) >= 3, pulsed.errors()
        m = await asyncio.to_thread(ah.metrics, gw)
        assert ah.metric(m, "caps_tripped_total", cap="flood") == 1, m
        print(f"\n[local guard] persistent flooder ({rate:.0f}/s > {fr:g}/s) closed 1008 "
              f"{over:.2f}s after its first warning, {flooder.close_t - t0:.2f}s after it started; "
              f"{len(flooder.errors('rate_limited'))} warnings")
    finally:
        for f in (flooder, pulsed, target):
            f.close()


# =========================================================================
# slow consumers


@pytest.mark.rss
@pytest.mark.xdist_group("heavy")  # one CPU-bound test at a time (pytest.ini)
@pytest.mark.async_timeout(80)
async def test_slow_consumers_are_closed_and_memory_stays_flat(gateway_factory):
    """Three room-mates that never read while a sender pushes ~60 KB offers at
    them (rate limits off) are closed once their output passes
    SIGNAL_MAX_OUTPUT_BYTES; the node's RSS stays bounded."""
    cap = 262144
    gw = gateway_factory.start(env=dict(h.NO_RATE_LIMITS, SIGNAL_MAX_OUTPUT_BYTES=str(cap)))
    room = new_room("slow")
    pa = new_peer()
    slow_peers = [new_peer() for _ in range(3)]
    sdp = h.SDP + "a=pad:" + "p" * 60000 + "\r\n"
    samples = []

    async with Clients() as c:
        a = await c.member(gw, "alice", room, pa)
        slows = []
        for i, ps in enumerate(slow_peers):
            slows.append(await c.raw_member(gw, f"slow{i}", room, ps, rcvbuf=4096))
            await a.recv_type("peer_joined", peerId=ps)
            # from here on this client reads nothing
        await asyncio.sleep(0.3)
        baseline = h.rss_kib(gw.pid)
        m0 = await asyncio.to_thread(ah.metrics, gw)
        live = set(slow_peers)
        sent = 0
        t0 = time.monotonic()
        while live and sent < 600 and time.monotonic() - t0 < 40:
            for ps in sorted(live):
                await a.send(h.offer(room, pa, ps, sdp=sdp))
                sent += 1
            samples.append(h.rss_kib(gw.pid))
            for m in list(a.messages):
                if m.get("type") == "peer_left" and m.get("peerId") in live:
                    live.discard(m["peerId"])
            await asyncio.sleep(0.005)
        for ps in list(live):
            await a.recv_type("peer_left", peerId=ps, timeout=15)
        samples.append(h.rss_kib(gw.pid))
        for s in slows:
            closed, _ = await asyncio.to_thread(h.wait_socket_closed, s.sock, 10)
            assert closed
        m1 = await asyncio.to_thread(ah.metrics, gw)
        closes = ah.metric(m1, "output_buffer_closes_total") - ah.metric(m0, "output_buffer_closes_total")
        assert closes >= len(slow_peers), (closes, m1)
        assert ah.metric(m1, "caps_tripped_total", cap="output_buffer") >= len(slow_peers)
        peak = max(samples)
        print(f"\n[slow consumers] {sent} offers of ~60 KB ({sent * 60 / 1024:.1f} MiB) sent; "
              f"3 slow consumers closed; RSS baseline {baseline / 1024:.1f} MiB, "
              f"peak {peak / 1024:.1f} MiB (+{(peak - baseline) / 1024:.1f} MiB)")
        if not h.SANITIZED:  # see sg_helpers.SANITIZED
            assert peak < baseline + 64 * 1024, (baseline, peak)
        # the sender is unaffected
        assert a.is_open
        for m in a.messages:
            if m.get("type") == "error":
                assert m["code"] in ("peer_not_found", "peer_unreachable"), m
        await a.join(new_room(), new_peer())


# =========================================================================
# connection caps


def _assert_503(resp):
    assert resp.status == 503, resp
    assert resp.json().get("code") == "unavailable", resp


def _101_or_503(gw, headers=None):
    r = handshake(gw, token=tok("alice"), headers=headers)
    assert r.status in (101, 503), r
    return r.status


def test_per_ip_cap(gateway_factory):
    """SIGNAL_MAX_CONNECTIONS_PER_IP=2: a third connection from 127.0.0.1 gets
    503; X-Forwarded-For from an untrusted source changes nothing."""
    gw = gateway_factory.start(env={"SIGNAL_MAX_CONNECTIONS_PER_IP": "2"})
    held = [h.RawWS.connect(gw, tok("alice")) for _ in range(2)]
    try:
        _assert_503(handshake(gw, token=tok("alice")))
        # no trusted proxies configured: X-Forwarded-For is not believed
        _assert_503(handshake(gw, token=tok("alice"), headers={"X-Forwarded-For": "10.1.1.1"}))
        # even without a valid token the cap holds (checked before the token)
        _assert_503(handshake(gw, token="garbage"))
        m = ah.metrics(gw)
        assert ah.metric(m, "caps_tripped_total", cap="max_connections_per_ip") >= 3, m
        # a slot frees up when a connection goes
        held[0].send_close(1000)
        held[0].wait_eof(3)
        h.wait_until(lambda: _101_or_503(gw) == 101, 3, what="a slot to free up")
    finally:
        for w in held:
            w.close()


def test_per_ip_cap_counts_forwarded_for_from_a_trusted_proxy(gateway_factory):
    """With SIGNAL_TRUSTED_PROXIES=127.0.0.1 the client address is the last
    X-Forwarded-For entry: 10.1.1.1 and 10.1.1.2 are counted separately, and
    the proxy's own address is not charged for them. (The addresses are only
    header values: nothing is sent to them.)"""
    gw = gateway_factory.start(env={"SIGNAL_MAX_CONNECTIONS_PER_IP": "2",
                                    "SIGNAL_TRUSTED_PROXIES": "127.0.0.1"})
    xa = {"X-Forwarded-For": "10.1.1.1"}
    xb = {"X-Forwarded-For": "10.1.1.2"}
    held = []
    try:
        held += [h.RawWS.connect(gw, tok("alice"), headers=xa) for _ in range(2)]
        _assert_503(handshake(gw, token=tok("alice"), headers=xa))
        # the proxy appends: the last entry is the client it saw
        _assert_503(handshake(gw, token=tok("alice"), headers={"X-Forwarded-For": "192.0.2.7, 10.1.1.1"}))
        held += [h.RawWS.connect(gw, tok("bob"), headers=xb) for _ in range(2)]
        _assert_503(handshake(gw, token=tok("bob"), headers=xb))
        # a spoofed first entry does not move the count away from the real client
        held.append(h.RawWS.connect(gw, tok("carol"), headers={"X-Forwarded-For": "10.1.1.1, 10.1.1.3"}))
        # the proxy itself (no header) still has its own 2 slots
        held += [h.RawWS.connect(gw, tok("dave")) for _ in range(2)]
        _assert_503(handshake(gw, token=tok("dave")))
        # the clients behind the proxy are usable
        w = held[2]
        room, p = new_room(), new_peer()
        w.join(room, p)
    finally:
        for w in held:
            w.close()


def test_per_ip_cap_ignores_forwarded_for_from_an_untrusted_source(gateway_factory):
    gw = gateway_factory.start(env={"SIGNAL_MAX_CONNECTIONS_PER_IP": "2",
                                    "SIGNAL_TRUSTED_PROXIES": "127.0.0.2,10.0.0.1"})
    held = []
    try:
        held.append(h.RawWS.connect(gw, tok("alice"), headers={"X-Forwarded-For": "10.1.1.1"}))
        held.append(h.RawWS.connect(gw, tok("alice"), headers={"X-Forwarded-For": "10.1.1.2"}))
        _assert_503(handshake(gw, token=tok("alice"), headers={"X-Forwarded-For": "10.1.1.3"}))
        _assert_503(handshake(gw, token=tok("alice")))
    finally:
        for w in held:
            w.close()


def test_join_timeout_closes_1008(gateway_factory):
    """SIGNAL_JOIN_TIMEOUT_MS=500: a connection that never joins is closed
    with 1008; one that joined in time (even if it left again) stays."""
    gw = gateway_factory.start(env={"SIGNAL_JOIN_TIMEOUT_MS": "500"})
    idle = h.RawWS.connect(gw, tok("idle"))
    t0 = time.monotonic()
    joiner = h.RawWS.connect(gw, tok("joiner"))
    leaver = h.RawWS.connect(gw, tok("leaver"))
    try:
        room, p = new_room(), new_peer()
        joiner.join(room, p, timeout=3)
        room2, p2 = new_room(), new_peer()
        leaver.join(room2, p2, timeout=3)
        leaver.send_json({"type": "leave", "roomId": room2, "peerId": p2})
        assert leaver.recv_json(3)["type"] == "left"
        code, _ = idle.expect_close(5)
        took = time.monotonic() - t0
        assert code == 1008, code
        assert took >= 0.4, f"closed {took:.2f}s after the connect: before the 500 ms join timeout"
        idle.send_close(1008)
        assert idle.closed_within(3)
        # the others are still there well after the deadline
        time.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
        for w in (joiner, leaver):
            w.send_frame(h.OP_PING, b"still-here")
            f = w.recv_frame(3)
            assert f.opcode == h.OP_PONG and f.payload == b"still-here", f
        m = ah.metrics(gw)
        assert ah.metric(m, "caps_tripped_total", cap="join_timeout") == 1, m
    finally:
        for w in (idle, joiner, leaver):
            w.close()


def test_join_timeout_holds_for_a_burst_of_idle_connections(gateway_factory):
    """40 connections upgraded in one burst (one event-loop pass) and never
    joining: every one is closed with 1008 about SIGNAL_JOIN_TIMEOUT_MS later,
    not at the next ping (20 s by default)."""
    gw = gateway_factory.start(env={"SIGNAL_JOIN_TIMEOUT_MS": "500"})
    token = tok("idle")
    socks = [h.open_socket(gw.host, gw.port) for _ in range(40)]
    try:
        req = h.upgrade_request(gw.host, gw.port, token=token)
        t0 = time.monotonic()
        for s in socks:
            s.sendall(req)
        raws = []
        for s in socks:
            resp = h.read_http_response(s)
            assert resp.status == 101, resp
            raws.append(h.RawWS(s, resp.leftover, resp))
        missed = []
        for i, w in enumerate(raws):
            try:
                code, _ = w.expect_close(max(0.1, t0 + 3.0 - time.monotonic()))
                assert code == 1008, code
            except AssertionError as e:
                missed.append((i, str(e)[:80]))
        assert not missed, (f"{len(missed)} of {len(raws)} idle connections were not closed within "
                            f"3 s of a 500 ms join timeout: {missed[:3]}")
    finally:
        for s in socks:
            s.close()


# =========================================================================
# security: only what test_handshake.py / test_rooms.py / test_relay.py miss


def _hs_payload():
    return h.token_claims("alice", rooms=["*"])


def _attacker_rsa():
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    n = k.public_key().public_numbers()
    jwk = {"kty": "RSA", "n": h.b64url(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
           "e": h.b64url(n.e.to_bytes(3, "big"))}
    return pem, jwk


@functools.lru_cache(maxsize=1)
def _alg_confused_tokens():
    p = _hs_payload()
    secret = h.JWT_SECRET.encode()
    pem, jwk = _attacker_rsa()
    return {
        # an asymmetric alg in the header, HMAC'd with the shared secret
        "RS256-header-hmac-sig": h.hand_made_token({"alg": "RS256", "typ": "JWT"}, p, hmac_key=secret),
        "ES256-header-hmac-sig": h.hand_made_token({"alg": "ES256", "typ": "JWT"}, p, hmac_key=secret),
        "PS256-header-hmac-sig": h.hand_made_token({"alg": "PS256", "typ": "JWT"}, p, hmac_key=secret),
        # the right alg spelled differently
        "alg-lowercase": h.hand_made_token({"alg": "hs256", "typ": "JWT"}, p, hmac_key=secret),
        "alg-None": h.hand_made_token({"alg": "None", "typ": "JWT"}, p),
        "alg-NONE": h.hand_made_token({"alg": "NONE", "typ": "JWT"}, p),
        "alg-missing": h.hand_made_token({"typ": "JWT"}, p, hmac_key=secret),
        "alg-not-a-string": h.hand_made_token({"alg": ["HS256"], "typ": "JWT"}, p, hmac_key=secret),
        # the attacker brings its own key in the header
        "embedded-jwk": jwt.encode(p, pem, algorithm="RS256", headers={"jwk": jwk}),
        "jku": jwt.encode(p, pem, algorithm="RS256", headers={"jku": "http://127.0.0.1:1/keys"}),
        # an empty HMAC key / kid path tricks
        "empty-key": h.hand_made_token({"alg": "HS256", "typ": "JWT"}, p, hmac_key=b""),
        "kid-dev-null": h.hand_made_token({"alg": "HS256", "typ": "JWT", "kid": "../../../../dev/null"},
                                          p, hmac_key=b""),
        # the right secret but an expired token in another form
        "expired-long-ago": make_token("alice", rooms=["*"], exp_in=-86400 * 365),
        "exp-zero": make_token("alice", rooms=["*"], exp=0),
        "exp-float-past": make_token("alice", rooms=["*"], exp=time.time() - 3600.5),
    }


@pytest.mark.parametrize("case", list(_alg_confused_tokens().keys()))
def test_alg_confused_and_forged_tokens_401(gateway, case):
    token = _alg_confused_tokens()[case]
    for headers, path in (({"Authorization": f"Bearer {token}"}, "/ws"),
                          ({"Sec-WebSocket-Protocol": f"signal.v1, bearer.{token}"}, "/ws"),
                          ({}, "/ws?access_token=" + token)):
        resp = handshake(gateway, path=path, headers=headers)
        assert resp.status == 401, (case, headers.keys(), resp)
        assert resp.json()["code"] == "unauthorized", resp
        www = resp.header("www-authenticate") or ""
        assert 'error="invalid_token"' in www, resp
        assert token not in resp.body.decode(errors="replace")


def test_origin_is_checked_before_the_token_and_for_every_token_source(gateway_factory):
    gw = gateway_factory.start(env={"SIGNAL_ALLOWED_ORIGINS": "https://app.example"})
    good = tok("alice")
    bad = "Origin"
    for headers, path in (({bad: "https://evil.example"}, "/ws"),
                          ({bad: "https://evil.example", "Authorization": "Bearer garbage"}, "/ws"),
                          ({bad: "https://evil.example", "Authorization": f"Bearer {good}"}, "/ws"),
                          ({bad: "https://evil.example",
                            "Sec-WebSocket-Protocol": f"signal.v1, bearer.{good}"}, "/ws"),
                          ({bad: "https://evil.example"}, "/ws?access_token=" + good),
                          ({bad: "https://app.example.evil.example"}, "/ws?access_token=" + good)):
        resp = handshake(gw, path=path, headers=headers)
        assert resp.status == 403, (headers, path, resp)
        assert resp.json()["code"] == "origin_not_allowed", resp
    assert handshake(gw, token=good, headers={bad: "https://app.example"}).status == 101


async def test_token_for_room_a_cannot_join_or_relay_in_room_b(gateway_factory, redis):
    """A token for room A: room B is forbidden on any node, leaves no trace in
    Redis, and relays into B are refused."""
    g1, g2 = gateway_factory(2)
    ra, rb = new_room("A"), new_room("B")
    pa, pv, pb = new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        victim = await c.connect(g1.ws_url, tok("victim", rooms=[rb]), name="victim")
        await victim.join(rb, pv)
        for i, g in enumerate((g1, g2)):
            a = await c.connect(g.ws_url, tok("alice", rooms=[ra]), name=f"alice{i}")
            await a.join(ra, new_peer() if i else pa)
            for room_b in (rb, rb + "/x", ra + "/../" + rb, ra + "x"):
                await a.send({"type": "join", "roomId": room_b, "peerId": pb, "correlationId": f"b{i}"})
                await a.expect_error("forbidden", cid=f"b{i}")
            # A prefix pattern is only what the claim says
            await a.send({"type": "join", "roomId": ra.upper(), "peerId": pb, "correlationId": "up"})
            await a.expect_error("forbidden", cid="up")
            await a.send(h.offer(rb, pb, pv, cid=f"r{i}"))
            await a.expect_error("not_joined", cid=f"r{i}")
            await a.send(h.candidate(rb, pb, pv, h.ice(1), cid=f"c{i}"))
            await a.expect_error("not_joined", cid=f"c{i}")
            await a.expect_no_message()
        await victim.expect_no_message()
        assert sorted(redis.hgetall(f"room:{{{rb}}}:peers")) == [pv]
        assert redis("EXISTS", f"room:{{{rb}}}:acl") == 0


async def test_spoofed_from_across_nodes(gateway_factory):
    """`from` must be the sender's own peerId in that room: another member's
    id (any case, on another node), or the sender's own id from another room,
    is forbidden, and nothing reaches anyone."""
    g1, g2 = gateway_factory(2)
    r1, r2 = new_room(), new_room()
    pm, pm2, pv, pw = new_peer(), new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        m = await c.connect(g1.ws_url, tok("mallory"), name="mallory")
        v = await c.connect(g2.ws_url, tok("victim"), name="victim")
        w = await c.connect(g2.ws_url, tok("witness"), name="witness")
        await m.join(r1, pm)
        await m.join(r2, pm2)
        await v.join(r1, pv)
        await w.join(r1, pw)
        await m.recv_type("peer_joined", peerId=pv)
        await m.recv_type("peer_joined", peerId=pw)
        await v.recv_type("peer_joined", peerId=pw)
        cases = [h.offer(r1, pv, pw, cid="s1"),                       # the victim's id
                 h.answer(r1, pv.upper(), pw, cid="s2"),              # ... upper case
                 h.candidate(r1, pm2, pw, h.ice(1), cid="s3"),        # own id from room 2
                 h.candidate(r1, pw, pw, h.ice(2), cid="s4"),         # the target's own id
                 h.offer(r1, pv, pv, cid="s5")]
        for msg in cases:
            await m.send(msg)
            await m.expect_error("forbidden", cid=msg["correlationId"])
        for cl in (v, w, m):
            await cl.expect_no_message(0.3)
        # her own id still works
        await m.send(h.offer(r1, pm, pw, cid="ok"))
        r = await w.recv_type("relay")
        assert r["inner"]["from"] == pm


async def test_hijack_by_leave_or_resume_from_another_sub(gateway_factory):
    """Another sub cannot take or end a peerId: not by `join` (peer_id_taken,
    tested in test_rooms.py), not by `leave` with the victim's peerId (answered
    `left`, nothing happens), and not by `resume`, even with the victim's real
    resumeToken (resume_failed)."""
    g1, g2 = gateway_factory(2, env={"SIGNAL_RESUME_MS": "30000"})
    room = new_room()
    pv, pm, pw = new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        v, w, m = await c.members(room, (g1, "victim", pv), (g1, "witness", pw), (g2, "mallory", pm))
        jv = v.joined[room]
        m2 = await c.connect(g2.ws_url, tok("mallory"), name="mallory2")
        await m2.send({"type": "join", "roomId": room, "peerId": pv, "correlationId": "j"})
        await m2.expect_error("peer_id_taken", cid="j")
        await m.send({"type": "leave", "roomId": room, "peerId": pv, "correlationId": "l"})
        left = await m.recv_type("left")
        assert left["peerId"] == pv and left.get("correlationId") == "l", left
        rt = jv.get("resumeToken")
        assert rt, f"joined carries no resumeToken with SIGNAL_RESUME_MS on: {jv}"
        for token in (rt, "0" * len(rt)):
            await m2.send({"type": "resume", "roomId": room, "peerId": pv, "resumeToken": token,
                           "lastSeq": 0, "correlationId": "r"})
            await m2.expect_error("resume_failed", cid="r")
        # the victim is untouched: still a member, still reachable
        for cl in (v, w):
            await cl.expect_no_message(0.3)
        await w.send(h.offer(room, pw, pv, cid="still"))
        r = await v.recv_type("relay")
        assert r["correlationId"] == "still"
        assert not [x for x in v.messages if x.get("type") == "error"], v.messages


# =========================================================================
# the defaults let a real call pass untouched


async def test_default_limits_let_a_browser_call_pass(gateway_factory):
    """Two peers on two nodes with DEFAULT limits: offer, answer, 60
    candidates each within ~1 s; 2 s later a renegotiation (offer/answer and
    20 candidates each). No rate_limited error, everything delivered in
    order."""
    g1, g2 = gateway_factory(2)
    room = new_room("call")
    pa, pb = new_peer(), new_peer()

    async def trickle(sender, frm, to, n, base, spread):
        sent = []
        for i in range(n):
            m = h.candidate(room, frm, to, h.ice(base + i), cid=f"c-{frm[:4]}-{base + i}")
            await sender.send(m)
            sent.append(m)
            await asyncio.sleep(spread / n)
        return sent

    async def expect(receiver, sent, timeout=10):
        for m in sent:
            r = await receiver.recv_type("relay", timeout=timeout)
            assert r["inner"] == h.inner_of(m), (r, m)
            assert r["correlationId"] == m["correlationId"], (r, m)

    async with Clients() as c:
        a, b = await c.pair(g1, g2, room, pa, pb)
        for round_, n in ((0, 60), (1, 20)):
            o = h.offer(room, pa, pb, cid=f"offer-{round_}")
            await a.send(o)
            ca = asyncio.ensure_future(trickle(a, pa, pb, n, 1000 * round_, 0.8))
            await expect(b, [o])
            ans = h.answer(room, pb, pa, cid=f"answer-{round_}")
            await b.send(ans)
            cb = asyncio.ensure_future(trickle(b, pb, pa, n, 1000 * round_ + 500, 0.8))
            sent_a, sent_b = await ca, await cb
            await expect(a, [ans] + sent_b)
            await expect(b, sent_a)
            if round_ == 0:
                await asyncio.sleep(2.0)
        for cl in (a, b):
            await cl.expect_no_message(0.3)
            errs = [m for m in cl.messages if m.get("type") == "error"]
            assert not errs, errs
    for g in (g1, g2):
        m = ah.metrics(g)
        for s in ("connection", "candidate", "peer", "room"):
            assert ah.metric(m, "ratelimit_drops_total", scope=s) == 0, (g, s)
