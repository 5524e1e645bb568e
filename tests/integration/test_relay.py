# SPDX-License-Identifier: Apache-2.0
"""docs/protocol.md §2–§5: targeted relay of offer/answer/candidate, relay.inner,
correlationIds, per-sender order (one node and across nodes), relay errors and
message validation."""

import asyncio
import json

import pytest

import abuse_helpers as ah
import sg_helpers as h
from sg_helpers import Clients, new_peer, new_room, tok


def check_relay(m, sent, cid=None):
    assert m["type"] == "relay", m
    assert m["inner"] == h.inner_of(sent), f"relay.inner must be exactly the validated fields: {m}"
    assert "correlationId" not in m["inner"] and "ack" not in m["inner"]
    if cid is not None:
        assert m.get("correlationId") == cid, m
    else:
        assert isinstance(m.get("correlationId"), str) and m["correlationId"], m


@pytest.mark.parametrize("nodes", [1, 2])
async def test_offer_answer_candidates(gateway_factory, nodes):
    gws = gateway_factory(nodes)
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(gws[0], gws[-1], room, pa, pb)
        o = h.offer(room, pa, pb, cid="offer-1")
        await a.send(o)
        check_relay(await b.recv_type("relay"), o, "offer-1")
        ans = h.answer(room, pb, pa, cid="answer-1")
        await b.send(ans)
        check_relay(await a.recv_type("relay"), ans, "answer-1")
        cands = [
            h.ice(1),
            {"candidate": "candidate:2 1 udp 1 198.51.100.7 3478 typ srflx", "sdpMid": None,
             "sdpMLineIndex": None, "usernameFragment": None},
            {"candidate": "candidate:3 1 tcp 1 192.0.2.3 9 typ host tcptype active"},
            {"candidate": "candidate:4 1 udp 1 192.0.2.4 4 typ host", "sdpMLineIndex": 65535},
            {"candidate": "candidate:5 1 udp 1 192.0.2.5 5 typ host", "sdpMid": "audio"},
            {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0},  # end-of-candidates
        ]
        for i, cand in enumerate(cands):
            m = h.candidate(room, pa, pb, cand, cid=f"cand-a-{i}")
            await a.send(m)
            check_relay(await b.recv_type("relay"), m, f"cand-a-{i}")
            m = h.candidate(room, pb, pa, cand, cid=f"cand-b-{i}")
            await b.send(m)
            check_relay(await a.recv_type("relay"), m, f"cand-b-{i}")
        # renegotiation: a second offer/answer pass
        o2 = h.offer(room, pb, pa, sdp=h.SDP + "a=renegotiate\r\n")
        await b.send(o2)
        check_relay(await a.recv_type("relay"), o2)
        await a.expect_no_message()
        await b.expect_no_message()


async def test_relay_goes_only_to_the_target(gateway):
    """§5 targeted relay: an offer or candidate reaches its `to` and no other
    member of the room."""
    room, pa, pb, pc = new_room(), new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        a, b, cc = await c.members(room, (gateway, "alice", pa), (gateway, "bob", pb), (gateway, "carol", pc))
        await a.send(h.offer(room, pa, pb, cid="only-b"))
        await b.recv_type("relay", correlationId="only-b")
        await a.send(h.candidate(room, pa, pc, h.ice(7), cid="only-c"))
        await cc.recv_type("relay", correlationId="only-c")
        for cl in (a, b, cc):
            await cl.expect_no_message()


async def test_inner_is_canonical(gateway):
    """No correlationId inside inner, ids lowercased, optional candidate fields
    kept exactly as sent (absent stays absent, null stays null)."""
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(gateway, gateway, room, pa, pb)
        cand = {"candidate": "candidate:9 1 udp 1 192.0.2.9 9 typ host", "sdpMid": None}
        m = h.candidate(room, pa.upper(), pb.upper(), cand, cid="canon")
        await a.send(m)
        r = await b.recv_type("relay")
        assert r["inner"] == {"type": "candidate", "roomId": room, "from": pa, "to": pb,
                              "candidate": cand}, r
        assert r["correlationId"] == "canon"


async def test_correlation_id_echoed_exactly(gateway):
    room, pa, pb = new_room(), new_peer(), new_peer()
    cids = ["x", "A-Za-z0-9_.-", "c" * 64]

    async with Clients() as c:
        a, b = await c.pair(gateway, gateway, room, pa, pb)
        for cid in cids:
            await a.send(h.offer(room, pa, pb, cid=cid))
            r = await b.recv_type("relay")
            assert r["correlationId"] == cid, r


async def test_server_generated_correlation_ids_are_unique(gateway_factory):
    g1, g2 = gateway_factory(2, env=h.NO_RATE_LIMITS)
    room, pa, pb, pc = new_room(), new_peer(), new_peer(), new_peer()
    n = 15

    async with Clients() as c:
        a, b = await c.pair(g1, g1, room, pa, pb)
        cc = await c.member(g2, "carol", room, pc)
        for i in range(n):
            await a.send(h.offer(room, pa, pb))
            await cc.send(h.candidate(room, pc, pb, h.ice(i)))
        seen = []
        for _ in range(2 * n):
            r = await b.recv_type("relay")
            cid = r.get("correlationId")
            assert isinstance(cid, str) and 1 <= len(cid), r
            seen.append(cid)
        assert len(set(seen)) == 2 * n, f"server-made correlationIds are not unique: {seen}"


@pytest.mark.parametrize("nodes", [1, 2])
async def test_order_of_200_candidates_each_way(gateway_factory, nodes):
    gws = gateway_factory(nodes, env=h.NO_RATE_LIMITS)
    room, pa, pb = new_room(), new_peer(), new_peer()
    n = 200

    async with Clients() as c:
        a, b = await c.pair(gws[0], gws[-1], room, pa, pb)

        async def burst(sender, frm, to, tag):
            for i in range(n):
                await sender.send(h.candidate(room, frm, to, h.ice(i), cid=f"{tag}{i}"))

        await asyncio.gather(burst(a, pa, pb, "a"), burst(b, pb, pa, "b"))

        async def collect(receiver, tag):
            got = []
            for _ in range(n):
                r = await receiver.recv_type("relay", timeout=10)
                got.append(r["correlationId"])
                assert r["inner"]["candidate"] == h.ice(int(r["correlationId"][1:])), r
            return got

        got_b, got_a = await asyncio.gather(collect(b, "a"), collect(a, "b"))
        assert got_b == [f"a{i}" for i in range(n)], "a->b relays out of order or lost"
        assert got_a == [f"b{i}" for i in range(n)], "b->a relays out of order or lost"
        await a.expect_no_message()
        await b.expect_no_message()


async def test_order_mixed_types_across_nodes(gateway_factory):
    g1, g2 = gateway_factory(2, env=h.NO_RATE_LIMITS)
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(g1, g2, room, pa, pb)
        sent = [h.offer(room, pa, pb, cid="m0")]
        sent += [h.candidate(room, pa, pb, h.ice(i), cid=f"m{i + 1}") for i in range(30)]
        sent += [h.offer(room, pa, pb, sdp=h.SDP + "a=x\r\n", cid="m31")]
        for m in sent:
            await a.send(m)
        for m in sent:
            r = await b.recv_type("relay")
            assert r["correlationId"] == m["correlationId"], (r, m)
            assert r["inner"] == h.inner_of(m)


# ---------------------------------------------------------------- relay errors


async def test_not_joined(gateway):
    room, other = new_room(), new_room()
    pa, pb = new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(gateway, gateway, room, pa, pb)
        outsider = await c.connect(gateway.ws_url, tok("eve"), name="eve")
        await outsider.send(h.offer(room, new_peer(), pb, cid="nj-1"))
        await outsider.expect_error("not_joined", cid="nj-1")
        # a member of `room` relaying in a room it is not in
        await a.send(h.offer(other, pa, pb, cid="nj-2"))
        await a.expect_error("not_joined", cid="nj-2")
        # after leaving
        await a.leave(room, pa)
        await b.recv_type("peer_left", peerId=pa)
        await a.send(h.candidate(room, pa, pb, h.ice(1), cid="nj-3"))
        await a.expect_error("not_joined", cid="nj-3")
        await b.expect_no_message()


async def test_forbidden_from_not_own_peer_id(gateway):
    """§5: a relay's `from` must be the sender's own peerId in the room;
    another member's id, or one nobody holds, is forbidden and reaches no one."""
    room, pa, pb, pc = new_room(), new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        a, b, cc = await c.members(room, (gateway, "alice", pa), (gateway, "bob", pb), (gateway, "carol", pc))
        # a pretends to be b
        await a.send(h.offer(room, pb, pc, cid="spoof-1"))
        await a.expect_error("forbidden", cid="spoof-1")
        await a.send(h.candidate(room, new_peer(), pc, h.ice(1), cid="spoof-2"))
        await a.expect_error("forbidden", cid="spoof-2")
        for cl in (b, cc):
            await cl.expect_no_message()


async def test_peer_not_found(gateway):
    room, other = new_room(), new_room()
    pa, pb, pd = new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(gateway, gateway, room, pa, pb)
        d = await c.member(gateway, "dave", other, pd)
        await a.send(h.offer(room, pa, new_peer(), cid="nf-1"))
        await a.expect_error("peer_not_found", cid="nf-1")
        await a.send(h.offer(room, pa, pa, cid="nf-self"))
        await a.expect_error("peer_not_found", cid="nf-self")
        await a.send(h.offer(room, pa, pd, cid="nf-other-room"))
        await a.expect_error("peer_not_found", cid="nf-other-room")
        await b.leave(room, pb)
        await a.recv_type("peer_left", peerId=pb)
        await a.send(h.answer(room, pa, pb, cid="nf-left"))
        await a.expect_error("peer_not_found", cid="nf-left")
        await d.expect_no_message()
        await b.expect_no_message()


# ---------------------------------------------------------------- validation


def _bad_messages(room, pa, pb):
    base_o = h.offer(room, pa, pb)
    base_c = h.candidate(room, pa, pb, h.ice(1))

    def o(**kw):
        m = dict(base_o, **kw)
        return {k: v for k, v in m.items() if v is not h.OMIT}

    def c(cand=None, **kw):
        m = dict(base_c, **kw)
        if cand is not None:
            m["candidate"] = cand
        return {k: v for k, v in m.items() if v is not h.OMIT}

    # (name, message, correlationId the error must carry or None)
    return [
        ("unknown-field", o(foo=1), True),
        ("unknown-field-null", o(extra=None), True),
        ("sdp-number", o(sdp=123), True),
        ("sdp-null", o(sdp=None), True),
        ("sdp-object", o(sdp={"v": 0}), True),
        ("sdp-not-v0", o(sdp="x=0\r\n"), True),
        ("sdp-v1", o(sdp="v=1\r\n"), True),
        ("sdp-leading-space", o(sdp=" v=0\r\n"), True),
        ("sdp-empty", o(sdp=""), True),
        ("sdp-missing", o(sdp=h.OMIT), True),
        ("to-missing", o(to=h.OMIT), True),
        ("from-missing", o(**{"from": h.OMIT}), True),
        ("room-missing", o(roomId=h.OMIT), True),
        ("to-not-uuid", o(to="bob"), True),
        ("from-not-uuid", o(**{"from": "alice"}), True),
        ("to-number", o(to=7), True),
        ("room-bad-char", o(roomId="a{b}"), True),
        ("offer-with-candidate", o(candidate=h.ice(1)), True),
        ("answer-with-candidate", dict(o(candidate=h.ice(1)), type="answer"), True),
        ("type-unknown", o(type="hello"), True),
        ("type-number", o(type=1), True),
        ("type-missing", o(type=h.OMIT), True),
        ("type-uppercase", o(type="OFFER"), True),
        ("candidate-string", c(cand="candidate:1 1 udp 1 192.0.2.1 1 typ host"), True),
        ("candidate-missing", c(candidate=h.OMIT), True),
        ("candidate-null", c(candidate=None), True),
        ("candidate-no-candidate-key", c(cand={"sdpMid": "0"}), True),
        ("candidate-candidate-number", c(cand={"candidate": 5}), True),
        ("candidate-candidate-null", c(cand={"candidate": None}), True),
        ("candidate-extra-field", c(cand={"candidate": "", "foo": 1}), True),
        ("candidate-mline-65536", c(cand={"candidate": "", "sdpMLineIndex": 65536}), True),
        ("candidate-mline-negative", c(cand={"candidate": "", "sdpMLineIndex": -1}), True),
        ("candidate-mline-float", c(cand={"candidate": "", "sdpMLineIndex": 1.5}), True),
        ("candidate-mline-string", c(cand={"candidate": "", "sdpMLineIndex": "0"}), True),
        ("candidate-mline-bool", c(cand={"candidate": "", "sdpMLineIndex": True}), True),
        ("candidate-mid-number", c(cand={"candidate": "", "sdpMid": 5}), True),
        ("candidate-ufrag-number", c(cand={"candidate": "", "usernameFragment": 5}), True),
        ("candidate-with-sdp", c(sdp=h.SDP), True),
        ("cid-too-long", dict(o(), correlationId="c" * 65), False),
        ("cid-bad-char", dict(o(), correlationId="a b"), False),
        ("cid-empty", dict(o(), correlationId=""), False),
        ("cid-number", dict(o(), correlationId=5), False),
        ("not-json", "{", None),
        ("json-array", "[1,2]", None),
        ("json-string", '"offer"', None),
        ("json-null", "null", None),
        ("empty-text", "", None),
        ("deep-nesting", "[" * 5000 + "]" * 5000, None),
        ("trailing-garbage", json.dumps(o()) + "x", None),
    ]


async def test_bad_request_cases_keep_the_connection_open(gateway):
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(gateway, gateway, room, pa, pb)
        for i, (name, msg, has_cid) in enumerate(_bad_messages(room, pa, pb)):
            cid = f"bad-{i}"
            if isinstance(msg, dict) and has_cid:
                msg = dict(msg, correlationId=cid)
            await a.send(msg)
            try:
                e = await a.recv_type("error")
            except AssertionError as ex:
                raise AssertionError(f"case {name}: {ex}") from None
            assert e.get("code") == "bad_request", (name, e)
            assert isinstance(e.get("message"), str) and e["message"], (name, e)
            if has_cid:
                assert e.get("correlationId") == cid, f"case {name}: correlationId not echoed: {e}"
            assert a.is_open, f"case {name}: connection closed"
        # the connection is still usable and nothing reached b
        await b.expect_no_message()
        await a.send(h.offer(room, pa, pb, cid="after-bad"))
        r = await b.recv_type("relay")
        assert r["correlationId"] == "after-bad"
        await a.expect_no_message()
        await b.expect_no_message()


async def test_payload_too_large_closes_1009(gateway_factory):
    gw = gateway_factory.start(env={"SIGNAL_MAX_MESSAGE_BYTES": "1024"})
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(gw, gw, room, pa, pb)
        # exactly the maximum passes
        exact = h.padded_json(h.offer(room, pa, pb, cid="exact"), 1024)
        assert len(exact.encode()) == 1024
        await a.send(exact)
        r = await b.recv_type("relay")
        assert r["correlationId"] == "exact"
        # one byte more does not
        await a.send(h.padded_json(h.offer(room, pa, pb, cid="over"), 1025))
        await a.expect_error("payload_too_large")
        code = await a.wait_closed(5)
        assert code == 1009, f"close code {code}, expected 1009"
        assert not a.pending, a.pending
        # the room-mate learns that a went away, and gets nothing of the big message
        m = await b.recv_type("peer_left", peerId=pa)
        assert m["roomId"] == room
        await b.expect_no_message()


def _monitor(redis):
    """A socket in Redis' MONITOR mode: every command Redis runs, one line each."""
    s = h.open_socket("127.0.0.1", redis.port)
    s.sendall(b"MONITOR\r\n")
    buf = b""
    while not buf.endswith(b"+OK\r\n"):
        chunk = s.recv(4096)
        assert chunk, "Redis closed the MONITOR connection"
        buf += chunk
    return s


def _relay_calls(sock, relays):
    """The relay function calls MONITOR shows, read until they carried
    `relays` relays (each call has one kind argument per relay)."""
    buf, calls = b"", []
    while sum(c.count(' "candidate" ') for c in calls) < relays:
        chunk = sock.recv(65536)
        assert chunk, "Redis closed the MONITOR connection"
        buf += chunk
        *lines, buf = buf.split(b"\r\n")
        calls += [l.decode() for l in lines if b'"FCALL"' in l and b'_relay" ' in l]
    return calls


async def _bob_then_raw_alice(c, g_bob, g_alice, redis, room, pb, pa):
    """Bob joins on g_bob, then alice on g_alice over a raw socket (so a test
    can send several frames in one write), then a MONITOR of Redis starts."""
    b = await c.connect(g_bob.ws_url, tok("bob"))
    await b.join(room, pb)
    raw = await asyncio.to_thread(h.RawWS.connect, g_alice, tok("alice"))
    await asyncio.to_thread(raw.join, room, pa)
    return b, raw, await asyncio.to_thread(_monitor, redis)


@pytest.mark.parametrize("resume", [True, False])
async def test_relays_one_read_brings_go_in_one_redis_call_in_order(gateway_factory, redis, resume):
    """Relays a connection sends one target in one TCP write reach Redis as
    one call of the relay function (one membership check, one publish:
    lua/relay.lua), and the target, on another node, gets each of them in
    order (with its own seq when resumption is on); the sender gets each
    receipt."""
    g1, g2 = gateway_factory(2, env={"SIGNAL_RESUME_MS": "30000" if resume else "0"})
    room, pa, pb = new_room(), new_peer(), new_peer()
    async with Clients() as c:
        b, raw, mon = await _bob_then_raw_alice(c, g2, g1, redis, room, pb, pa)
        sent = [dict(h.candidate(room, pa, pb, h.ice(i), cid=f"k{i}"), ack=True) for i in range(5)]
        raw.send_raw(b"".join(h.encode_frame(h.OP_TEXT, json.dumps(m).encode()) for m in sent))
        for i, m in enumerate(sent):
            got = await b.recv_type("relay")
            check_relay(got, m, f"k{i}")
            assert got.get("seq") == (i + 1 if resume else None), got
        acks = [await asyncio.to_thread(raw.recv_json) for _ in sent]
        assert acks == [{"type": "ack", "correlationId": f"k{i}", "status": "delivered"} for i in range(5)]
        calls = await asyncio.to_thread(_relay_calls, mon, len(sent))
        mon.close()
        raw.close()
        assert len(calls) == 1, calls


async def test_relays_of_one_call_take_their_tokens_one_after_the_other(gateway_factory, redis):
    """In one call (one TCP write) each relay takes its own tokens, in order,
    from the buckets of its kind: the fourth candidate is over a burst of 3
    and dropped, the offer after it is not a candidate and goes."""
    g, = gateway_factory(1, env={"SIGNAL_RATE_CANDIDATE": "0.1/3", "SIGNAL_RATE_PEER": "0.1/10",
                                 "SIGNAL_RATE_ROOM": "0"})
    room, pa, pb = new_room(), new_peer(), new_peer()
    async with Clients() as c:
        b, raw, mon = await _bob_then_raw_alice(c, g, g, redis, room, pb, pa)
        sent = [dict(h.candidate(room, pa, pb, h.ice(i), cid=f"k{i}"), ack=True) for i in range(4)]
        sent.append(dict(h.offer(room, pa, pb, cid="k4"), ack=True))
        raw.send_raw(b"".join(h.encode_frame(h.OP_TEXT, json.dumps(m).encode()) for m in sent))
        acks = [await asyncio.to_thread(raw.recv_json) for _ in sent]
        assert [a.get("status") for a in acks] == ["delivered"] * 3 + ["dropped", "delivered"], acks
        assert [a["correlationId"] for a in acks] == [f"k{i}" for i in range(5)]
        for i in (0, 1, 2, 4):
            check_relay(await b.recv_type("relay"), sent[i], f"k{i}")
        await b.recv_type("peer_joined")
        await b.expect_no_message(0.3)
        calls = await asyncio.to_thread(_relay_calls, mon, 4)
        mon.close()
        raw.close()
        assert len(calls) == 1 and calls[0].count(' "offer" ') == 1, calls


async def _delivered(gw, at_least, timeout=20.0):
    """Waits until gw's relays_delivered_total reaches at_least (every one
    of them written to its target's connection: in the socket or queued)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        n = ah.metric(await asyncio.to_thread(ah.metrics, gw), "relays_delivered_total")
        if n >= at_least:
            return n
        assert asyncio.get_running_loop().time() < deadline, f"{n} of {at_least} relays delivered"
        await asyncio.sleep(0.05)


@pytest.mark.async_timeout(60)
async def test_a_receiver_that_pauses_reading_gets_every_relay_in_order(gateway_factory):
    """A node writes a connection's frames itself, once per pass of its loop,
    and leaves to the bufferevent only what the socket does not take. A
    receiver that reads nothing while 6 MB of offers are relayed to it
    (more than its socket takes: loopback's send buffer grows to 4 MiB;
    under SIGNAL_MAX_OUTPUT_BYTES) stays
    open, gets every one in order once it reads again, and then the relays
    after the backlog (written by the node's own pass again) too."""
    g, = gateway_factory(1, env=dict(h.NO_RATE_LIMITS, SIGNAL_MAX_OUTPUT_BYTES=str(8 << 20)))
    room, pa, pb = new_room(), new_peer(), new_peer()
    pad = "a=pad:" + "p" * 40000 + "\r\n"
    async with Clients() as c:
        a = await c.member(g, "alice", room, pa)
        raw = await c.raw_member(g, "bob", room, pb, rcvbuf=4096)
        await a.recv_type("peer_joined", peerId=pb)
        base = await _delivered(g, 0)
        n = 150
        for i in range(n):
            await a.send(h.offer(room, pa, pb, sdp=h.SDP + pad, cid=f"o{i}"))
        await _delivered(g, base + n)
        # Nothing was read so far: most of it waits in the node's output.
        for i in range(n):
            m = await asyncio.to_thread(raw.recv_json, 20)
            assert m.get("type") == "relay" and m.get("correlationId") == f"o{i}", (i, m)
            assert m["inner"]["sdp"] == h.SDP + pad
        for i in range(5):
            cand = h.candidate(room, pa, pb, h.ice(i), cid=f"c{i}")
            await a.send(cand)
            m = await asyncio.to_thread(raw.recv_json, 10)
            check_relay(m, cand, f"c{i}")
        assert a.is_open and not raw.eof
