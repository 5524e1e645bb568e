# SPDX-License-Identifier: Apache-2.0
"""docs/protocol.md §2, §4, §5, §6: join/leave, membership events, authorization,
capacity, takeover, disconnects, and the state left in Redis."""

import json

import pytest

import sg_helpers as h
from sg_helpers import Clients, async_wait_until, new_peer, new_room, tok


# ---------------------------------------------------------------- join / leave


async def test_join_joined_and_peer_joined(gateway):
    room = new_room()
    pa, pb, pc = new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        a = await c.connect(gateway.ws_url, tok("alice"), name="a")
        b = await c.connect(gateway.ws_url, tok("bob"), name="b")
        cc = await c.connect(gateway.ws_url, tok("carol"), name="c")

        m = await a.join(room, pa)
        assert m["peers"] == [] and m["roomId"] == room
        m = await b.join(room, pb)
        assert m["peers"] == [pa], "peers lists the others, not the joiner"
        m = await a.recv_type("peer_joined")
        assert m["roomId"] == room and m["peerId"] == pb, m
        m = await cc.join(room, pc)
        assert sorted(m["peers"]) == sorted([pa, pb])
        for cl in (a, b):
            m = await cl.recv_type("peer_joined")
            assert m["roomId"] == room and m["peerId"] == pc, m
        for cl in (a, b, cc):
            await cl.expect_no_message()


async def test_leave_left_and_peer_left_reason_leave(gateway):
    room = new_room()
    pa, pb = new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(gateway, gateway, room, pa, pb)
        m = await b.leave(room, pb)
        assert m["type"] == "left" and m["roomId"] == room
        m = await a.recv_type("peer_left")
        assert m["roomId"] == room and m["peerId"] == pb and m["reason"] == "leave", m
        await a.expect_no_message()
        await b.expect_no_message()
        # b can join again and is announced again
        m = await b.join(room, pb)
        assert m["peers"] == [pa]
        await a.recv_type("peer_joined", peerId=pb)


async def test_repeated_join_is_idempotent(gateway):
    room = new_room()
    pa, pb = new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(gateway, gateway, room, pa, pb)
        m = await a.join(room, pa)
        assert m["peers"] == [pb]
        m = await b.join(room, pb, cid="again")
        assert m["peers"] == [pa]
        await a.expect_no_message()
        await b.expect_no_message()


async def test_leave_of_a_room_not_joined_answers_left_and_broadcasts_nothing(gateway):
    room, other = new_room(), new_room()
    pa, pb = new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(gateway, gateway, room, pa, pb)
        # b was never in `other`
        await b.leave(other, pb)
        # twice in a row from the same room
        await b.leave(room, pb)
        await a.recv_type("peer_left", peerId=pb, reason="leave")
        await b.leave(room, pb)
        await a.expect_no_message()
        await b.expect_no_message()
        # a connection that never joined anything
        cc = await c.connect(gateway.ws_url, tok("carol"), name="c")
        await cc.leave(room, new_peer())
        await a.expect_no_message()


async def test_join_with_another_peer_id_in_same_room_is_bad_request(gateway):
    room = new_room()
    pa, pb = new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(gateway, gateway, room, pa, pb)
        await a.send({"type": "join", "roomId": room, "peerId": new_peer(), "correlationId": "second-id"})
        await a.expect_error("bad_request", cid="second-id")
        await b.expect_no_message()
        # the original membership is intact
        await b.send(h.offer(room, pb, pa, cid="still"))
        m = await a.recv_type("relay")
        assert m["correlationId"] == "still"


# ---------------------------------------------------------------- limits


async def test_too_many_rooms(gateway_factory):
    gw = gateway_factory.start(env={"SIGNAL_ROOMS_PER_CONNECTION": "2"})
    r1, r2, r3 = new_room(), new_room(), new_room()
    p = new_peer()

    async with Clients() as c:
        a = await c.member(gw, "alice", r1, p)
        await a.join(r2, new_peer())
        await a.send({"type": "join", "roomId": r3, "peerId": new_peer(), "correlationId": "third"})
        await a.expect_error("too_many_rooms", cid="third")
        # a repeated join of a room it is in is not "one more"
        await a.join(r1, p)
        await a.leave(r1, p)
        await a.join(r3, new_peer())
        await a.expect_no_message()


async def test_rooms_per_connection_default_is_4(gateway):
    async with Clients() as c:
        a = await c.connect(gateway.ws_url, tok("alice"), name="a")
        for _ in range(4):
            await a.join(new_room(), new_peer())
        await a.send({"type": "join", "roomId": new_room(), "peerId": new_peer(), "correlationId": "fifth"})
        await a.expect_error("too_many_rooms", cid="fifth")


async def test_room_full(gateway_factory):
    gw = gateway_factory.start(env={"SIGNAL_ROOM_MAX_PEERS": "2"})
    room = new_room()
    pa, pb, pc = new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        a = await c.connect(gw.ws_url, tok("alice"), name="a")
        b = await c.connect(gw.ws_url, tok("bob"), name="b")
        cc = await c.connect(gw.ws_url, tok("carol"), name="c")
        await a.join(room, pa)
        await b.join(room, pb)
        await a.recv_type("peer_joined", peerId=pb)
        await cc.send({"type": "join", "roomId": room, "peerId": pc, "correlationId": "full-1"})
        await cc.expect_error("room_full", cid="full-1")
        await a.expect_no_message()
        await b.expect_no_message()
        # a repeated join by a member of a full room still works
        await b.join(room, pb)
        # room frees a seat
        await b.leave(room, pb)
        await a.recv_type("peer_left", peerId=pb, reason="leave")
        m = await cc.join(room, pc)
        assert m["peers"] == [pa]


async def test_room_capacity_default_is_8(gateway):
    room = new_room()

    async with Clients() as c:
        members = []
        for i in range(8):
            cl = await c.connect(gateway.ws_url, tok(f"user{i}"), name=f"m{i}")
            await cl.join(room, new_peer())
            members.append(cl)
        ninth = await c.connect(gateway.ws_url, tok("user9"), name="ninth")
        await ninth.send({"type": "join", "roomId": room, "peerId": new_peer(), "correlationId": "n9"})
        await ninth.expect_error("room_full", cid="n9")


# ---------------------------------------------------------------- authorization


@pytest.mark.parametrize("rooms,room,allowed", [
    (None, "standup", False),
    ([], "standup", False),
    (["standup"], "standup", True),
    (["standup"], "standup2", False),
    (["standup"], "Standup", False),
    (["other", "standup"], "standup", True),
    (["team-7/*"], "team-7/standup", True),
    (["team-7/*"], "team-7/a/b", True),
    (["team-7/*"], "team-8/standup", False),
    (["team-7/*"], "team-7", False),
    (["team-7/*"], "team-70/x", False),
    (["team-*"], "team-42", True),
    (["*"], "anything:at.all/really_-", True),
], ids=lambda v: repr(v))
async def test_rooms_claim(gateway, rooms, room, allowed):
    async with Clients() as c:
        a = await c.connect(gateway.ws_url, tok("alice", rooms=rooms), name="a")
        if allowed:
            await a.join(room, new_peer(), cid="auth")
        else:
            await a.send({"type": "join", "roomId": room, "peerId": new_peer(), "correlationId": "auth"})
            await a.expect_error("forbidden", cid="auth")
        await a.expect_no_message()


async def test_acl_set_allows_join(gateway, redis):
    room = new_room("acl")
    redis("SADD", h.acl_key(room), "carol")

    async with Clients() as c:
        # no rooms claim at all: allowed through the ACL set
        carol = await c.connect(gateway.ws_url, tok("carol", rooms=None), name="carol")
        await carol.join(room, new_peer())
        # a rooms claim that does not match: the ACL still allows
        carol2 = await c.connect(gateway.ws_url, tok("carol", rooms=["elsewhere"]), name="carol2")
        await carol2.join(room, new_peer())
        # another sub is not in the set
        dave = await c.connect(gateway.ws_url, tok("dave", rooms=None), name="dave")
        await dave.send({"type": "join", "roomId": room, "peerId": new_peer(), "correlationId": "d"})
        await dave.expect_error("forbidden", cid="d")
        # the set is read at join time: removing carol forbids her next join
        redis("SREM", h.acl_key(room), "carol")
        carol3 = await c.connect(gateway.ws_url, tok("carol", rooms=None), name="carol3")
        await carol3.send({"type": "join", "roomId": room, "peerId": new_peer(), "correlationId": "c3"})
        await carol3.expect_error("forbidden", cid="c3")
        redis("SADD", h.acl_key(room), "dave")
        await dave.join(room, new_peer())
    # the gateway never writes the acl set
    assert sorted(redis("SMEMBERS", h.acl_key(room))) == ["dave"]
    assert redis("PTTL", h.acl_key(room)) == -1


# ---------------------------------------------------------------- peer id ownership


@pytest.mark.parametrize("nodes", [1, 2])
async def test_peer_id_taken_by_another_sub(gateway_factory, nodes):
    gws = gateway_factory(nodes)
    g1, g2 = gws[0], gws[-1]
    room = new_room()
    p = new_peer()

    async with Clients() as c:
        a = await c.connect(g1.ws_url, tok("alice"), name="a")
        m = await c.connect(g2.ws_url, tok("mallory"), name="mallory")
        await a.join(room, p)
        await m.send({"type": "join", "roomId": room, "peerId": p, "correlationId": "steal"})
        await m.expect_error("peer_id_taken", cid="steal")
        # also with the id in upper case
        await m.send({"type": "join", "roomId": room, "peerId": p.upper(), "correlationId": "steal2"})
        await m.expect_error("peer_id_taken", cid="steal2")
        await a.expect_no_message()
        # mallory may join with her own id
        mp = new_peer()
        j = await m.join(room, mp)
        assert j["peers"] == [p]
        await a.recv_type("peer_joined", peerId=mp)


@pytest.mark.parametrize("nodes", [1, 2])
async def test_takeover_by_same_sub(gateway_factory, redis, nodes):
    gws = gateway_factory(nodes)
    g1, g2 = gws[0], gws[-1]
    room, other_room = new_room(), new_room()
    p, pb = new_peer(), new_peer()

    async with Clients() as c:
        old = await c.connect(g1.ws_url, tok("alice"), name="old")
        b = await c.connect(g1.ws_url, tok("bob"), name="b")
        await old.join(room, p)
        await old.join(other_room, new_peer())
        await b.join(room, pb)
        await old.recv_type("peer_joined", peerId=pb)

        new = await c.connect(g2.ws_url, tok("alice"), name="new")
        j = await new.join(room, p)
        assert j["peers"] == [pb], j
        await old.expect_error("replaced", room=room)
        m = await b.recv_type("peer_joined")
        assert m["peerId"] == p and m["roomId"] == room, m
        await b.expect_no_message()  # no peer_left for the replaced connection
        await new.expect_no_message()

        # relays now go to the new connection only
        await b.send(h.offer(room, pb, p, cid="to-new"))
        r = await new.recv_type("relay")
        assert r["correlationId"] == "to-new"
        await old.expect_no_message()
        # the record in Redis belongs to the new node now
        rec = json.loads(redis.hgetall(h.peers_key(room))[p])
        assert rec["node"] == g2.node_id, rec

        # the old connection is no longer in the room: its leave is a no-op
        await old.leave(room, p)
        await b.expect_no_message()
        # it stays usable in its other room
        assert old.is_open
        # and its disconnect does not evict the new holder
        await old.close()
        await b.expect_no_message(1.0)
        await b.send(h.offer(room, pb, p, cid="still-new"))
        r = await new.recv_type("relay")
        assert r["correlationId"] == "still-new"
        assert p in redis.hgetall(h.peers_key(room))


# ---------------------------------------------------------------- disconnects


async def test_disconnect_gives_peer_left_reason_disconnect(gateway):
    room = new_room()
    pa, pb, pc = new_peer(), new_peer(), new_peer()

    async with Clients() as c:
        a, b, cc = await c.members(room, (gateway, "alice", pa), (gateway, "bob", pb), (gateway, "carol", pc))
        # clean close (close frame)
        await b.close()
        m = await a.recv_type("peer_left", peerId=pb)
        assert m["reason"] == "disconnect" and m["roomId"] == room, m
        # TCP drop without a close frame
        cc.abort()
        m = await a.recv_type("peer_left", peerId=pc)
        assert m["reason"] == "disconnect" and m["roomId"] == room, m
        await a.expect_no_message()


async def test_disconnect_leaves_every_room(gateway):
    r1, r2 = new_room(), new_room()

    async with Clients() as c:
        a = await c.connect(gateway.ws_url, tok("alice"), name="a")
        b = await c.connect(gateway.ws_url, tok("bob"), name="b")
        pb1, pb2 = new_peer(), new_peer()
        await a.join(r1, new_peer())
        await a.join(r2, new_peer())
        await b.join(r1, pb1)
        await b.join(r2, pb2)
        await a.recv_type("peer_joined", roomId=r1)
        await a.recv_type("peer_joined", roomId=r2)
        await b.close()
        await a.recv_type("peer_left", roomId=r1, peerId=pb1, reason="disconnect")
        await a.recv_type("peer_left", roomId=r2, peerId=pb2, reason="disconnect")
        await a.expect_no_message()


# ---------------------------------------------------------------- identifiers


async def test_uppercase_peer_id_is_lowercased_everywhere(gateway, redis):
    room = new_room()
    pa, pb = new_peer(), new_peer()
    PA, PB = pa.upper(), pb.upper()

    async with Clients() as c:
        a = await c.connect(gateway.ws_url, tok("alice"), name="a")
        b = await c.connect(gateway.ws_url, tok("bob"), name="b")
        m = await a.join(room, PA)
        assert m["peerId"] == pa
        m = await b.join(room, PB)
        assert m["peerId"] == pb and m["peers"] == [pa], m
        m = await a.recv_type("peer_joined")
        assert m["peerId"] == pb, m
        assert sorted(redis.hgetall(h.peers_key(room))) == sorted([pa, pb])
        # the same peer in another case is the same peer: idempotent join
        m = await a.join(room, pa)
        assert m["peers"] == [pb]
        await b.expect_no_message()
        await a.send(h.offer(room, PA, PB, cid="case"))
        r = await b.recv_type("relay")
        assert r["inner"]["from"] == pa and r["inner"]["to"] == pb, r
        await b.send(h.candidate(room, pb.upper(), pa[:8] + pa[8:].upper(), h.ice(1)))
        r = await a.recv_type("relay")
        assert r["inner"]["from"] == pb and r["inner"]["to"] == pa, r
        m = await b.leave(room, PB)
        assert m["peerId"] == pb
        m = await a.recv_type("peer_left")
        assert m["peerId"] == pb and m["reason"] == "leave"


async def test_join_validation(gateway):
    good_room = new_room()
    cases = {
        "room-empty": {"roomId": "", "peerId": new_peer()},
        "room-129": {"roomId": "r" * 129, "peerId": new_peer()},
        "room-brace": {"roomId": "a{b}c", "peerId": new_peer()},
        "room-space": {"roomId": "a b", "peerId": new_peer()},
        "room-unicode": {"roomId": "caf\u00e9", "peerId": new_peer()},
        "room-star": {"roomId": "a*", "peerId": new_peer()},
        "room-number": {"roomId": 5, "peerId": new_peer()},
        "peer-not-uuid": {"roomId": good_room, "peerId": "peer-1"},
        "peer-no-dashes": {"roomId": good_room, "peerId": new_peer().replace("-", "")},
        "peer-braces": {"roomId": good_room, "peerId": "{" + new_peer() + "}"},
        "peer-not-hex": {"roomId": good_room, "peerId": "g" + new_peer()[1:]},
        "peer-too-long": {"roomId": good_room, "peerId": new_peer() + "0"},
        "peer-missing": {"roomId": good_room},
        "room-missing": {"peerId": new_peer()},
        "unknown-field": {"roomId": good_room, "peerId": new_peer(), "extra": 1},
        "peer-null": {"roomId": good_room, "peerId": None},
    }

    async with Clients() as c:
        a = await c.connect(gateway.ws_url, tok("alice"), name="a")
        for i, (name, body) in enumerate(cases.items()):
            cid = f"v{i}"
            await a.send(dict({"type": "join", "correlationId": cid}, **body))
            m = await a.recv_type("error")
            assert m.get("code") == "bad_request" and m.get("correlationId") == cid, (name, m)
        # still open; the longest legal room id and every legal character work
        await a.join("r" * 128, new_peer())
        await a.join("AZaz09_.:/-", new_peer())
        await a.expect_no_message()


# ---------------------------------------------------------------- Redis state


async def test_member_records_in_redis(gateway_factory, redis):
    g1, g2 = gateway_factory(2)
    room = new_room()
    pa, pb = new_peer(), new_peer()

    async with Clients() as c:
        a, b = await c.pair(g1, g2, room, pa, pb)
        recs = redis.hgetall(h.peers_key(room))
        assert sorted(recs) == sorted([pa, pb]), recs
        for peer, gw in ((pa, g1), (pb, g2)):
            rec = json.loads(recs[peer])
            assert isinstance(rec, dict), rec
            assert rec.get("node") == gw.node_id, rec
            assert "joinedAt" in rec and rec["joinedAt"] not in (None, "", 0), rec


def _assert_ttls(redis, room):
    for k in redis.keys():
        if k == h.acl_key(room):
            continue
        ttl = redis("PTTL", k)
        assert ttl > 0 or ttl == -2, f"key {k!r} written by the gateway has no TTL (PTTL {ttl})"
    for k in redis.room_keys(room):
        assert "{" + room + "}" in k, f"room key {k!r} lacks the hash tag {{{room}}}"


@pytest.mark.parametrize("how", ["leave", "disconnect", "mixed"])
async def test_room_keys_expire_and_vanish_with_last_member(gateway_factory, redis, how):
    g1, g2 = gateway_factory(2)
    room = new_room("keys")
    redis("SADD", h.acl_key(room), "alice")
    pa, pb = new_peer(), new_peer()

    async with Clients() as c:
        a = await c.connect(g1.ws_url, tok("alice", rooms=None), name="a")  # via acl
        b = await c.connect(g2.ws_url, tok("bob", rooms=[room]), name="b")
        await a.join(room, pa)
        await b.join(room, pb)
        await a.recv_type("peer_joined", peerId=pb)
        # exercise relays so that rate buckets and the like exist too
        await a.send(h.offer(room, pa, pb))
        await b.recv_type("relay")
        await b.send(h.answer(room, pb, pa))
        await a.recv_type("relay")
        for i in range(3):
            await a.send(h.candidate(room, pa, pb, h.ice(i)))
            await b.recv_type("relay")
        assert h.peers_key(room) in redis.keys()
        _assert_ttls(redis, room)

        if how == "leave":
            await a.leave(room, pa)
            await b.recv_type("peer_left", peerId=pa, reason="leave")
            _assert_ttls(redis, room)
            await b.leave(room, pb)
        elif how == "disconnect":
            await a.close()
            await b.recv_type("peer_left", peerId=pa, reason="disconnect")
            await b.close()
        else:
            await b.leave(room, pb)
            await a.recv_type("peer_left", peerId=pb, reason="leave")
            a.abort()

        await async_wait_until(lambda: redis.room_keys(room) == [h.acl_key(room)], 3.0,
                               what=f"room keys to vanish (left: {redis.room_keys(room)})")
    assert redis("SMEMBERS", h.acl_key(room)) == ["alice"]
    _assert_ttls(redis, room)


async def test_per_peer_channel_is_subscribed_while_joined(gateway, redis):
    """§6: relays and events for a peer go to room:{R}:peer:<peerId>."""
    room = new_room()
    pa = new_peer()
    channel = h.peer_channel(room, pa)

    async with Clients() as c:
        a = await c.connect(gateway.ws_url, tok("alice"), name="a")
        await a.join(room, pa.upper())
        assert redis.subscribers(channel) >= 1, \
            f"nobody subscribes {channel}: {redis('PUBSUB', 'CHANNELS')} {redis('PUBSUB', 'SHARDCHANNELS')}"
        await a.leave(room, pa)
        await async_wait_until(lambda: redis.subscribers(channel) == 0, 3.0,
                               what="the channel to be unsubscribed after leave")
