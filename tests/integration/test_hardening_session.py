# SPDX-License-Identifier: Apache-2.0
"""Regression tests of issue 12's session-layer findings: what a signed-in
client could do to the gateway's memory through resumption, and sends that
freed the state of the code that made them.

Run against the ASan+UBSan build (tests/run.sh does), the fixtures fail a test
whose gateway logged a sanitizer report; the assertions below also check what
the client sees and that the gateway keeps serving.
"""

import asyncio
import hashlib
import hmac
import json

import sg_helpers as h
from sg_helpers import Clients, RawWS, new_peer, new_room, tok

import ext_helpers as x
from ext_helpers import RESUME_ENV, resume_msg, wait_in_grace


async def still_serving(cs, gw, room_prefix="alive"):
    """A fresh pair can join and relay on gw: the node survived."""
    room, pa, pb = new_room(room_prefix), new_peer(), new_peer()
    a = await cs.member(gw, "zed", room, pa, name="alive-a")
    b = await cs.member(gw, "yan", room, pb, name="alive-b")
    await a.send(h.offer(room, pa, pb, cid="alive"))
    m = await b.recv_type("relay", correlationId="alive")
    assert m["inner"]["from"] == pa, m


async def test_resume_with_a_short_token_is_refused_and_writes_nothing_out_of_bounds(gateway_factory, redis):
    """Finding 1: a resumeToken shorter than the fresh 32-character one was
    copied into a buffer of its own length, then overwritten with the new
    token (heap overflow, reported by ASan in new_resume_token). Any short
    token in the allowed charset must just fail."""
    gw, = gateway_factory(1, env=RESUME_ENV)
    room, pa, pb = new_room("short"), new_peer(), new_peer()

    async with Clients() as cs:
        a, b = await cs.pair(gw, gw, room, pa, pb)
        # Same user as a member, tokens of every short length.
        for n, token in enumerate(["a", "abc", "x" * 31, "A-_" * 5]):
            c = await cs.connect(gw.ws_url, tok("bob"), name=f"c{n}")
            await c.send(resume_msg(room, pb, token, 0, cid=f"r{n}"))
            await c.expect_error("resume_failed", cid=f"r{n}", room=room)
        # Nothing changed for the members, and the node still serves.
        assert h.member_record(redis, room, pb)["conn"] != "", h.member_record(redis, room, pb)
        await a.send(h.offer(room, pa, pb, cid="after"))
        await b.recv_type("relay", correlationId="after")
        await still_serving(cs, gw)


async def test_a_resume_answer_over_the_output_cap_frees_nothing_twice(gateway_factory, redis):
    """Finding 2: when the `resumed` frame could not be written (the
    connection was over its output cap), the send cut the connection and
    released its memberships, and the resume reply handler then freed the
    membership's resume token again (double free).

    bob holds one peer in each of two rooms, both in their grace period; the
    first room's buffer holds one relay larger than the output cap. A new
    connection resumes both rooms in one TCP write: the two script replies
    come back together, the first one's replay takes the output over its cap,
    so the second `resumed` is the send that finds the connection over it."""
    cap = 4096
    gw, = gateway_factory(1, env=dict(RESUME_ENV, SIGNAL_MAX_OUTPUT_BYTES=cap))
    r1, r2 = new_room("cap1"), new_room("cap2")
    pa1, pa2, pb1, pb2 = new_peer(), new_peer(), new_peer(), new_peer()
    big_sdp = "v=0\r\n" + "a=x-pad:" + "p" * (3 * cap) + "\r\n"

    async with Clients() as cs:
        a = await cs.connect(gw.ws_url, tok("alice"), name="a")
        b = await cs.connect(gw.ws_url, tok("bob"), name="b")
        await a.join(r1, pa1)
        await a.join(r2, pa2)
        t1 = (await b.join(r1, pb1))["resumeToken"]
        t2 = (await b.join(r2, pb2))["resumeToken"]
        b.abort()
        await wait_in_grace(redis, r1, pb1)
        await wait_in_grace(redis, r2, pb2)
        await a.send(dict(h.offer(r1, pa1, pb1, sdp=big_sdp, cid="big"), ack=True))
        ack = await a.recv_type("ack", correlationId="big")
        assert ack["status"] == "buffered", ack

        raw = await asyncio.to_thread(RawWS.connect, gw, tok("bob"))
        both = (h.encode_frame(h.OP_TEXT, json.dumps(resume_msg(r1, pb1, t1, 0, cid="res1")).encode())
                + h.encode_frame(h.OP_TEXT, json.dumps(resume_msg(r2, pb2, t2, 0, cid="res2")).encode()))
        raw.send_raw(both)
        got = []
        def read_all():
            try:
                while True:
                    got.append(raw.recv_json(timeout=3))
            except (AssertionError, EOFError, TimeoutError, OSError):
                pass
        await asyncio.to_thread(read_all)
        raw.close()
        # The scenario did reach the send over the cap (else this test
        # proves nothing), and the connection was cut for it.
        assert x.metric(gw, "output_buffer_closes_total") == 1, got[:3]
        assert raw.eof, got[:3]
        await still_serving(cs, gw)


def _reconnect_after_flush(redis):
    """Redis loses everything and every gateway's connections at once, as
    an empty restart would: the gateways reconnect and re-assert."""
    c = redis.client()
    for cmd in (("MULTI",), ("FLUSHALL",), ("CLIENT", "KILL", "TYPE", "pubsub"), ("EXEC",)):
        c(*cmd)


async def test_a_ghost_is_protected_like_its_owner(gateway_factory, redis):
    """Finding 9: after Redis lost a room, a room-mate's node re-asserts the
    members it saw held elsewhere as ghosts. A ghost used to carry no owner
    (sub ""), so any user's join took the peerId; it now carries its owner's
    sub hash: another user gets peer_id_taken, the owner takes it back."""
    g1, g2 = gateway_factory(2)
    room, pa, pb = new_room("ghost"), new_peer(), new_peer()

    async with Clients() as cs:
        await cs.member(g2, "bob", room, pb)
        await cs.member(g1, "alice", room, pa)
        owner_hash = h.member_record(redis, room, pb)["sub"]
        g2.kill()  # bob's node is gone: nobody re-asserts bob for real
        _reconnect_after_flush(redis)

        def ghost():
            raw = redis("HGET", h.peers_key(room), pb)
            return raw is not None and json.loads(raw).get("ghost")
        await h.async_wait_until(ghost, 10, what="bob re-asserted as a ghost by alice's node")
        rec = h.member_record(redis, room, pb)
        assert rec["sub"] == owner_hash, rec

        m = await cs.connect(g1.ws_url, tok("mallory"), name="m")
        await m.send({"type": "join", "roomId": room, "peerId": pb, "correlationId": "steal"})
        await m.expect_error("peer_id_taken", cid="steal", room=room)
        assert h.member_record(redis, room, pb).get("ghost"), "the ghost must stay"

        b2 = await cs.connect(g1.ws_url, tok("bob"), name="b2")
        await b2.join(room, pb)  # its owner may take it back
        rec = h.member_record(redis, room, pb)
        assert not rec.get("ghost") and rec["sub"] == owner_hash, rec


async def test_resume_is_authorized_like_a_join(gateway_factory, redis):
    """Finding 10: a user removed from room:{R}:acl (its token names no
    rooms) could still resume its membership. Resume now checks the same
    authorization as join."""
    gw, = gateway_factory(1, env=RESUME_ENV)
    room, pa, pb = new_room("acl"), new_peer(), new_peer()
    redis("SADD", h.acl_key(room), "alice", "bob")

    async with Clients() as cs:
        a = await cs.connect(gw.ws_url, h.make_token("alice", rooms=[]), name="a")
        await a.join(room, pa)
        b = await cs.connect(gw.ws_url, h.make_token("bob", rooms=[]), name="b")
        token = (await b.join(room, pb))["resumeToken"]
        b.abort()
        await wait_in_grace(redis, room, pb)
        redis("SREM", h.acl_key(room), "bob")  # the application revokes bob's access
        b2 = await cs.connect(gw.ws_url, h.make_token("bob", rooms=[]), name="b2")
        await b2.send(resume_msg(room, pb, token, 0, cid="back"))
        await b2.expect_error("resume_failed", cid="back", room=room)
        assert x.in_grace(redis, room, pb), h.member_record(redis, room, pb)
        # and with access again, the same token still works (it was not spent)
        redis("SADD", h.acl_key(room), "bob")
        b3 = await cs.connect(gw.ws_url, h.make_token("bob", rooms=[]), name="b3")
        await b3.send(resume_msg(room, pb, token, 0, cid="again"))
        r = await b3.recv_type("resumed")
        assert r["correlationId"] == "again", r


def _hmac_hex(key, sub):
    return hmac.new(key.encode(), sub.encode(), hashlib.sha256).hexdigest()


async def test_member_records_keep_a_keyed_hash_of_sub(gateway_factory, redis):
    """Finding 13: member records kept SHA-256(sub), which anyone reading
    Redis can test guesses against (email-like subs). They keep
    HMAC-SHA256(SIGNAL_SUB_HASH_KEY, sub) now; by default the key is derived
    from the HS256 secret every node shares, so same-user takeovers still
    work across nodes."""
    key = "cluster-wide-sub-key-for-the-test"
    g1, g2 = gateway_factory(2, env={"SIGNAL_SUB_HASH_KEY": key})
    g3, = gateway_factory(1)  # the default key
    room, pa, pb = new_room("hmac"), new_peer(), new_peer()
    sub = "carol@example.com"

    async with Clients() as cs:
        c1 = await cs.connect(g1.ws_url, tok(sub), name="c1")
        await c1.join(room, pa)
        rec = h.member_record(redis, room, pa)
        assert rec["sub"] != hashlib.sha256(sub.encode()).hexdigest(), "unkeyed hash of sub in Redis"
        assert rec["sub"] == _hmac_hex(key, sub), rec
        # the same user on the other node (same key) takes the peerId over
        c2 = await cs.connect(g2.ws_url, tok(sub), name="c2")
        await c2.join(room, pa)
        await c1.expect_error("replaced", room=room)
        # the default key is derived from the shared secret: keyed too
        c3 = await cs.connect(g3.ws_url, tok(sub), name="c3")
        await c3.join(room, pb)
        rec = h.member_record(redis, room, pb)
        label = "signal-gateway/sub-hash/v1"
        derived = hmac.new(h.JWT_SECRET.encode(), label.encode(), hashlib.sha256).hexdigest()
        assert rec["sub"] == _hmac_hex(derived, sub), rec
