# SPDX-License-Identifier: Apache-2.0
"""PROTOCOL.md §9 "Backend control": `signal-gateway kick`, `close-room` and
`revoke`, and the same operations as plain Redis calls (docs/backend-control.md),
against real Redis and two gateways. Kicked peers keep their connection for
their other rooms; a revoked user's connections close with 1008 everywhere
and its handshakes get 401.
"""

import asyncio
import hashlib
import json
import re
import urllib.request

import pytest

import redis_cluster as rc
import sg_helpers as h
from sg_helpers import Clients, arun, control, new_peer, new_room, tok

RESUME_ENV = {"SIGNAL_RESUME_MS": "30000"}
DOC = h.REPO / "docs" / "backend-control.md"


def samples(gw):
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=3) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def control_count(gw, action):
    return samples(gw).get(f'control_actions_total{{action="{action}"}}', 0)


def resume_msg(room, peer, token, last_seq=0):
    return {"type": "resume", "roomId": room, "peerId": peer, "resumeToken": token, "lastSeq": last_seq}


def member(redis, room, peer):
    raw = redis("HGET", f"room:{{{room}}}:peers", peer)
    return json.loads(raw) if raw is not None else None


async def wait_in_grace(redis, room, peer):
    def in_grace():
        m = member(redis, room, peer)
        return bool(m) and m.get("conn") == "" and "grace" in m
    await h.async_wait_until(in_grace, 10, 0.02, what=f"{peer} in its grace period")


# --------------------------------------------------------------------------
# kick


def test_kick_across_nodes_keeps_the_connection_for_its_other_rooms(gateway_factory, redis):
    g1, g2 = gateway_factory(2)
    room, other = new_room("kick"), new_room("stay")
    pa, pb, pc = new_peer(), new_peer(), new_peer()
    reason = 'behave "nicely"\nplease \u00e9'

    async def main():
        async with Clients() as c:
            a = await c.connect(g1.ws_url, tok("alice"), name="a")   # room-mate on g1
            b = await c.connect(g2.ws_url, tok("bob"), name="b")     # target on g2
            cc = await c.connect(g1.ws_url, tok("carol"), name="c")  # b's other room
            await a.join(room, pa)
            await b.join(room, pb)
            await a.recv_type("peer_joined", peerId=pb)
            await b.join(other, pb)
            await cc.join(other, pc)
            await b.recv_type("peer_joined", roomId=other, peerId=pc)

            rc, out, err = await asyncio.to_thread(control, redis.url, "kick", "--room", room, "--peer",
                                                   pb.upper(), "--reason", reason)
            assert rc == 0, (rc, out, err)
            ev = h.log_events(out)
            assert ev and ev[-1]["event"] == "control.kick" and ev[-1]["result"] == "kicked", out

            m = await b.expect_error("kicked", room=room)
            assert m["message"] == reason, m
            left = await a.recv_type("peer_left", roomId=room, peerId=pb)
            assert left["reason"] == "kicked", left
            assert member(redis, room, pb) is None
            assert redis("EXISTS", f"room:{{{room}}}:buf:{pb}") == 0

            # still open, still in its other room
            assert b.is_open
            await cc.send(h.offer(other, pc, pb, cid="o1"))
            relay = await b.recv_type("relay")
            assert relay["inner"]["roomId"] == other
            # not in the room it was kicked from
            await b.send(h.offer(room, pb, pa, cid="o2"))
            await b.expect_error("not_joined", cid="o2")
            # a later join is allowed as usual
            await b.join(room, pb)
            await a.recv_type("peer_joined", roomId=room, peerId=pb)
            await cc.expect_no_message(0.3)

            # kicking again after it left: not a member
            await b.leave(room, pb)
            rc, out, err = await asyncio.to_thread(control, redis.url, "kick", "--room", room, "--peer", pb)
            assert rc == 1, (rc, out, err)
            assert h.log_events(out)[-1]["result"] == "not_member"
    arun(main())

    assert control_count(g2, "kick") == 1
    assert control_count(g1, "kick") == 0
    lines = h.log_events(g2.log_text(), "control.kick")
    assert len(lines) == 1 and lines[0]["room"] == room and lines[0]["peer"] == pb, lines
    assert re.fullmatch(r"[0-9a-f]{16}", lines[0]["user"]), lines


def test_kick_of_a_peer_in_its_grace_period_ends_its_resumption(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    room = new_room("grace")
    pa, pb = new_peer(), new_peer()

    async def main():
        async with Clients() as c:
            a, b = await c.pair(g1, g2, room, pa, pb)
            token = b.joined[room]["resumeToken"]
            await b.send(h.offer(room, pb, pa))
            await a.recv_type("relay")
            await a.send(h.offer(room, pa, pb))  # buffered for b
            await b.recv_type("relay")
            b.abort()
            await wait_in_grace(redis, room, pb)
            await a.expect_no_message(0.3)  # grace: no peer_left yet

            rc, out, err = await asyncio.to_thread(control, redis.url, "kick", "--room", room, "--peer", pb,
                                                   "--reason", "seat taken")
            assert rc == 0, (rc, out, err)
            left = await a.recv_type("peer_left", roomId=room, peerId=pb)
            assert left["reason"] == "kicked", left
            assert member(redis, room, pb) is None
            assert redis("EXISTS", f"room:{{{room}}}:buf:{pb}") == 0

            # The client comes back with its token: it learns it was kicked,
            # and why (it used to hear only resume_failed, and joined again).
            b2 = await c.connect(g1.ws_url, tok("bob"), name="b2")
            await b2.send(resume_msg(room, pb, token, 0))
            m = await b2.expect_error("kicked", room=room)
            assert m["message"] == "seat taken", m
            assert member(redis, room, pb) is None
            # anyone else with another token hears nothing of it
            await b2.send(resume_msg(room, pb, "x" * 32, 0))
            await b2.expect_error("resume_failed")
            # the grace period's end, long after, says nothing more
            await a.expect_no_message(0.5)
    arun(main())


def test_kick_of_a_non_member_exits_1_and_changes_nothing(gateway_factory, redis):
    g1, = gateway_factory(1)
    room = new_room("nm")
    pa = new_peer()

    async def main():
        async with Clients() as c:
            a = await c.connect(g1.ws_url, tok("alice"), name="a")
            await a.join(room, pa)
            before = redis.hgetall(f"room:{{{room}}}:peers")
            for r, p in ((room, new_peer()), (new_room("nobody"), new_peer())):
                rc, out, err = await asyncio.to_thread(control, redis.url, "kick", "--room", r, "--peer", p)
                assert rc == 1, (rc, out, err)
                assert err == "", err
            assert redis.hgetall(f"room:{{{room}}}:peers") == before
            await a.expect_no_message(0.3)
    arun(main())


# --------------------------------------------------------------------------
# close-room


def test_close_room_kicks_everyone_on_both_nodes_and_keeps_only_the_acl(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    room, other = new_room("close"), new_room("other")
    pa, pb, pc = new_peer(), new_peer(), new_peer()
    redis("SADD", f"room:{{{room}}}:acl", "dave")

    async def main():
        async with Clients() as c:
            a = await c.connect(g1.ws_url, tok("alice"), name="a")
            b = await c.connect(g2.ws_url, tok("bob"), name="b")
            cc = await c.connect(g2.ws_url, tok("carol"), name="c")
            await a.join(room, pa)
            await b.join(room, pb)
            await cc.join(room, pc)
            await a.join(other, pa)
            await b.join(other, pb)
            for who in (a, b):
                await who.send(h.offer(room, pa if who is a else pb, pc))
            await cc.recv_type("relay")
            await cc.recv_type("relay")
            assert any(":buf:" in k for k in redis.room_keys(room)), redis.room_keys(room)

            rc, out, err = await asyncio.to_thread(control, redis.url, "close-room", "--room", room,
                                                   "--reason", "meeting over")
            assert rc == 0, (rc, out, err)
            assert h.log_events(out)[-1]["members"] == 3, out
            for who in (a, b, cc):
                m = await who.expect_error("kicked", room=room)
                assert m["message"] == "meeting over", m
            # nobody is told that the others left
            for who in (a, b, cc):
                left = [m for m in who.messages if m.get("type") == "peer_left" and m.get("roomId") == room]
                assert not left, (who, left)
            assert redis.room_keys(room) == [f"room:{{{room}}}:acl"]
            assert redis("SMEMBERS", f"room:{{{room}}}:acl") == ["dave"]
            # the other room is untouched
            await a.send(h.offer(other, pa, pb, cid="still"))
            await b.recv_type("relay")
            for who in (a, b, cc):
                who.pending = [m for m in who.pending if m.get("type") != "peer_joined"]
                await who.expect_no_message(0.3)
            assert a.is_open and b.is_open and cc.is_open
            # an empty room closes too
            rc, out, err = await asyncio.to_thread(control, redis.url, "close-room", "--room", room)
            assert rc == 0 and h.log_events(out)[-1]["members"] == 0, (rc, out, err)
    arun(main())
    assert control_count(g1, "close_room") == 1
    assert control_count(g2, "close_room") == 2
    assert len(h.log_events(g2.log_text(), "control.close_room")) == 2


# --------------------------------------------------------------------------
# revoke


def test_revoke_closes_the_users_connections_everywhere_and_refuses_its_handshakes(gateway_factory, redis):
    g1, g2 = gateway_factory(2, env=RESUME_ENV)
    r1, r2 = new_room("rv1"), new_room("rv2")
    pm1, pm2, pa, pb = new_peer(), new_peer(), new_peer(), new_peer()

    async def main():
        async with Clients() as c:
            m1 = await c.connect(g1.ws_url, tok("mallory"), name="m1")
            m2 = await c.connect(g2.ws_url, tok("mallory"), name="m2")
            a = await c.connect(g2.ws_url, tok("alice"), name="a")  # in r1 with m1 (other node)
            b = await c.connect(g1.ws_url, tok("bob"), name="b")    # in r2 with m2 (other node)
            await m1.join(r1, pm1)
            await a.join(r1, pa)
            await m2.join(r2, pm2)
            await b.join(r2, pb)
            await m1.recv_type("peer_joined", peerId=pa)
            await m2.recv_type("peer_joined", peerId=pb)

            rc, out, err = await asyncio.to_thread(control, redis.url, "revoke", "--sub", "mallory",
                                                   "--ttl", "60")
            assert rc == 0, (rc, out, err)
            assert "mallory" not in out
            assert await m1.wait_closed(5) == 1008
            assert await m2.wait_closed(5) == 1008
            assert m1.close_reason == "revoked"
            # no grace period, although resumption is on
            for who, room, peer in ((a, r1, pm1), (b, r2, pm2)):
                left = await who.recv_type("peer_left", roomId=room, peerId=peer)
                assert left["reason"] == "kicked", left
                assert member(redis, room, peer) is None
            assert a.is_open and b.is_open

            # handshakes: the revoked user is refused on both nodes, others are not
            for gw in (g1, g2):
                resp = await asyncio.to_thread(h.handshake, gw, tok("mallory"))
                assert resp.status == 401, resp
                assert resp.json()["code"] == "unauthorized"
                assert "revoked" in resp.json()["message"]
                assert 'error="invalid_token"' in resp.header("www-authenticate"), resp
                ok = await asyncio.to_thread(h.handshake, gw, tok("alice"))
                assert ok.status == 101, ok
    arun(main())
    assert control_count(g1, "revoke") == 1 and control_count(g2, "revoke") == 1
    for gw in (g1, g2):
        s = samples(gw)
        assert s.get('auth_failures_total{reason="revoked"}') == 1, s
        lines = h.log_events(gw.log_text(), "control.revoke")
        assert lines and lines[0]["connections"] == 1, lines


def test_a_revocation_ends_after_its_ttl_and_the_latest_call_decides(gateway_factory, redis):
    g1, = gateway_factory(1)
    rc, out, err = control(redis.url, "revoke", "--sub", "eve", "--ttl", "3600")
    assert rc == 0, (rc, out, err)
    assert h.handshake(g1, tok("eve")).status == 401
    rc, out, err = control(redis.url, "revoke", "--sub", "eve", "--ttl", "1")  # lifts it early
    assert rc == 0, (rc, out, err)
    h.wait_until(lambda: h.handshake(g1, tok("eve")).status == 101, 10, 0.2,
                 what="a handshake of eve accepted once her 1 s revocation ended")
    # only the SHA-1 of a sub is kept, and the key expires with its longest entry
    keys = redis.keys("signal:{control}:*")
    assert keys == ["signal:{control}:revoked"], keys
    assert "eve" not in json.dumps(redis("ZRANGE", "signal:{control}:revoked", 0, -1))
    assert 0 < redis("PTTL", "signal:{control}:revoked") <= 3600 * 1000


def test_a_revocation_missed_while_the_subscription_was_down_still_closes(gateway_factory, redis):
    """A revocation published while a node's subscriber connection was away
    (here: written without a message) is applied when the control
    subscription comes back."""
    g1, = gateway_factory(1)

    async def main():
        async with Clients() as c:
            m = await c.connect(g1.ws_url, tok("mallory"), name="m")
            a = await c.connect(g1.ws_url, tok("alice"), name="a")
            until = int(redis("TIME")[0]) * 1000 + 60000
            redis("ZADD", "signal:{control}:revoked", until, hashlib.sha1(b"mallory").hexdigest())
            await m.expect_no_message(0.3)
            killed = redis("CLIENT", "KILL", "TYPE", "pubsub")
            assert killed >= 1
            assert await m.wait_closed(10) == 1008
            await a.expect_no_message(0.3)
            assert a.is_open
    arun(main())
    lines = h.log_events(g1.log_text(), "control.revoke")
    assert lines and lines[-1].get("source") == "resync", lines


def test_a_handshake_waits_for_the_check_and_gets_503_when_redis_does_not_answer(gateway_factory, redis):
    g1, = gateway_factory(1, env={"SIGNAL_REDIS_TIMEOUT_MS": "500"})
    redis("CLIENT", "PAUSE", "2500", "ALL")
    resp = h.handshake(g1, tok("alice"))
    assert resp.status == 503, resp
    assert resp.json()["code"] == "unavailable"
    assert resp.json()["message"] == "Redis did not answer", resp
    assert redis("PING") == "PONG"  # answered once the pause is over
    h.wait_until(lambda: h.handshake(g1, tok("alice")).status == 101, 20, 0.2,
                 what="handshakes accepted again once Redis answers")


def test_frames_sent_with_the_upgrade_request_are_read_after_the_check(gateway_factory):
    """A client may send its first frames in the same write as its upgrade
    request: they wait in the input while the revocation check is out and
    are read once the connection opened."""
    g1, = gateway_factory(1)
    room, pa = new_room("pipe"), new_peer()
    s = h.open_socket(g1.host, g1.port)
    try:
        join = json.dumps({"type": "join", "roomId": room, "peerId": pa, "correlationId": "j"}).encode()
        s.sendall(h.upgrade_request(g1.host, g1.port, token=tok("alice")) + h.encode_frame(h.OP_TEXT, join))
        resp = h.read_http_response(s)
        assert resp.status == 101, resp
        ws = h.RawWS(s, resp.leftover, resp)
        m = ws.recv_json()
        assert m["type"] == "joined" and m["correlationId"] == "j", m
    finally:
        s.close()


# --------------------------------------------------------------------------
# the documented Redis calls and the limited ACL user


def doc_acl_command():
    """The ACL SETUSER line of docs/backend-control.md, as argv."""
    text = DOC.read_text()
    m = re.search(r"^ACL SETUSER control .*$", text, re.M)
    assert m, "docs/backend-control.md has no ACL SETUSER control line"
    return m.group(0).split()


def test_the_documented_calls_work_as_plain_fcall(gateway_factory, redis):
    g1, = gateway_factory(1)
    room = new_room("fcall")
    pa, pb = new_peer(), new_peer()
    k = [f"room:{{{room}}}:peers", f"room:{{{room}}}:buckets", f"room:{{{room}}}:seq"]

    async def main():
        async with Clients() as c:
            a, b = await c.pair(g1, g1, room, pa, pb)
            assert redis("FCALL", "signal_kick", 3, *k, room, pb, "") == 1
            m = await b.expect_error("kicked", room=room)
            assert m["message"] == "removed from the room by the application"
            assert redis("FCALL", "signal_kick", 3, *k, room, pb, "") == 0
            # keys that are not the room's are refused
            with pytest.raises(h.RedisError):
                redis("FCALL", "signal_kick", 3, "room:{x}:peers", k[1], k[2], room, pa, "")
            with pytest.raises(h.RedisError):
                redis("FCALL", "signal_kick", 3, *k, room, pa, "x" * 257)
            assert redis("FCALL", "signal_close_room", 3, *k, room, "") == 1
            await a.expect_error("kicked", room=room)
            assert int(redis("FCALL", "signal_revoke", 1, "signal:{control}:revoked", "zed", 30)) > 0
            for bad in (("zed", 0), ("zed", "1.5"), ("", 30), ("zed", 31536001)):
                with pytest.raises(h.RedisError):
                    redis("FCALL", "signal_revoke", 1, "signal:{control}:revoked", *bad)
    arun(main())


def test_the_limited_acl_user_can_control_and_nothing_else(gateway_factory, redis):
    g1, = gateway_factory(1)
    room = new_room("acl")
    pa, pb = new_peer(), new_peer()
    assert redis(*doc_acl_command()) == "OK"
    redis("ACL", "SETUSER", "control", "reset")  # the doc's line must stand on its own
    assert redis(*doc_acl_command()) == "OK"
    redis("ACL", "SETUSER", "control", ">test-pw")
    url = f"redis://control:test-pw@{h.HOST}:{redis.port}/0"
    redis("SADD", f"room:{{{room}}}:acl", "alice")
    redis("SET", "unrelated", "secret")
    redis("HSET", "unrelated:hash", "f", "v")

    async def main():
        async with Clients() as c:
            a, b = await c.pair(g1, g1, room, pa, pb)
            rc, out, err = await asyncio.to_thread(control, url, "kick", "--room", room, "--peer", pb)
            assert rc == 0, (rc, out, err)
            await b.expect_error("kicked", room=room)
            assert (await a.recv_type("peer_left", peerId=pb))["reason"] == "kicked"
            rc, out, err = await asyncio.to_thread(control, url, "revoke", "--sub", "trudy", "--ttl", "30")
            assert rc == 0, (rc, out, err)
            rc, out, err = await asyncio.to_thread(control, url, "close-room", "--room", room)
            assert rc == 0, (rc, out, err)
            await a.expect_error("kicked", room=room)
    arun(main())

    limited = h.RedisClient(redis.port)
    try:
        assert limited("AUTH", "control", "test-pw") == "OK"
        versioned = []
        for lib in redis("FUNCTION", "LIST"):
            lib = dict(zip(lib[0::2], lib[1::2]))
            for fn in lib["functions"]:
                name = dict(zip(fn[0::2], fn[1::2]))["name"]
                if lib["library_name"] != "signal_control":
                    versioned.append(name)
        assert versioned, "no function of the gateway's own library found"
        refused = [("GET", "unrelated"), ("SET", "unrelated", "x"), ("HGETALL", "unrelated:hash"),
                   ("KEYS", "*"), ("SCAN", "0"), ("SMEMBERS", f"room:{{{room}}}:acl"),
                   ("SREM", f"room:{{{room}}}:acl", "alice"), ("DEL", f"room:{{{room}}}:acl"),
                   ("DEL", "unrelated"), ("HGETALL", "signal:nodes"), ("FCALL", versioned[0], 0),
                   ("FUNCTION", "DELETE", "signal_control"), ("FLUSHALL",), ("CONFIG", "GET", "*"),
                   ("SUBSCRIBE", "unrelated"), ("PUBLISH", "unrelated", "x"),
                   ("ZRANGE", "signal:{control}:revoked", 0, -1), ("ACL", "WHOAMI"), ("EVAL", "return 1", 0)]
        for cmd in refused:
            with pytest.raises(h.RedisError, match="NOPERM"):
                limited(*cmd)
        assert redis("GET", "unrelated") == "secret"
        assert redis("SMEMBERS", f"room:{{{room}}}:acl") == ["alice"]
        # what Redis 7.0 cannot take away (docs/backend-control.md says so):
        # the commands the functions run, on room state, by hand
        assert limited("HGETALL", f"room:{{{room}}}:peers") == []
    finally:
        limited.close()


# --------------------------------------------------------------------------
# exit codes and usage


def test_exit_codes_and_usage_errors(redis):
    url = redis.url
    room, peer = new_room("cli"), new_peer()
    usage = [
        ("kick",),
        ("kick", "--room", room),
        ("kick", "--peer", peer),
        ("kick", "--room", "bad room!", "--peer", peer),
        ("kick", "--room", room, "--peer", "not-a-uuid"),
        ("kick", "--room", room, "--peer", peer, "--reason", "x" * 257),
        ("kick", "--room", room, "--peer", peer, "--sub", "s"),
        ("kick", "--room", room, "--peer", peer, "extra"),
        ("kick", "--room", room, "--peer", peer, "--bogus", "1"),
        ("close-room",),
        ("close-room", "--room", room, "--peer", peer),
        ("revoke", "--sub", "s"),
        ("revoke", "--ttl", "10"),
        ("revoke", "--sub", "s", "--ttl", "0"),
        ("revoke", "--sub", "s", "--ttl", "1.5"),
        ("revoke", "--sub", "s", "--ttl", "31536001"),
        ("revoke", "--sub", "s", "--ttl", "10", "--room", room),
        ("revoke", "--sub", "x" * 257, "--ttl", "10"),
    ]
    for args in usage:
        rc, out, err = control(url, *args)
        assert rc == 2, (args, rc, out, err)
        assert "usage: signal-gateway kick" in err, (args, err)
        assert out == "", (args, out)
    # a bad server setting is a usage error too
    rc, out, err = control("http://nowhere", "kick", "--room", room, "--peer", peer)
    assert rc == 2, (rc, err)
    # Redis unreachable: 3
    rc, out, err = control(f"redis://{h.HOST}:{h.free_port()}/0", "kick", "--room", room, "--peer", peer)
    assert rc == 3, (rc, out, err)
    assert "cannot connect" in err
    # flags of the server (--redis-url) work as for the server; --flag=value too
    rc, out, err = control("redis://127.0.0.1:1/0", "kick", f"--room={room}", "--peer", peer,
                           "--redis-url", url)
    assert rc == 1, (rc, out, err)
    # done: 0 (kick: 1 when not a member, above)
    for args in (("close-room", "--room", room, "--reason", "bye"), ("revoke", "--sub", "s", "--ttl", "5")):
        rc, out, err = control(url, *args)
        assert rc == 0, (args, rc, out, err)
        assert len(h.log_events(out)) == 1, out
    # a Redis that refuses the call (no such library and no right to load it): 3
    redis("ACL", "SETUSER", "weak", "on", ">pw", "~*", "+fcall")
    redis("FUNCTION", "DELETE", "signal_control")
    rc, out, err = control(f"redis://weak:pw@{h.HOST}:{redis.port}/0", "close-room", "--room", room)
    assert rc == 3, (rc, out, err)
    # with the rights, a Redis no gateway loaded yet gets the library from the command
    rc, out, err = control(url, "close-room", "--room", room)
    assert rc == 0, (rc, out, err)


# --------------------------------------------------------------------------
# how the subcommands find Redis: Sentinel, cluster seeds


def test_the_subcommands_find_the_master_through_sentinel(redis, tmp_path):
    import cluster_helpers as ch
    s = ch.SentinelProc(tmp_path, 0, redis.port).start()
    try:
        env = {"SIGNAL_REDIS_SENTINELS": f"{h.HOST}:{h.free_port()},{h.HOST}:{s.port}",  # the first is down
               "SIGNAL_REDIS_MASTER_NAME": "mymaster"}
        nowhere = f"redis://{h.HOST}:1/0"  # only the credentials and database would come from it
        rc, out, err = control(nowhere, "revoke", "--sub", "sentinel-user", "--ttl", "30", env=env)
        assert rc == 0, (rc, out, err)
        assert redis("ZCARD", "signal:{control}:revoked") == 1
        rc, out, err = control(nowhere, "kick", "--room", new_room("s"), "--peer", new_peer(), env=env)
        assert rc == 1, (rc, out, err)
        rc, out, err = control(nowhere, "revoke", "--sub", "x", "--ttl", "30",
                               env=dict(env, SIGNAL_REDIS_SENTINELS=f"{h.HOST}:{h.free_port()}"))
        assert rc == 3, (rc, out, err)
    finally:
        s.stop()


def test_the_subcommands_follow_a_cluster_to_the_slot_of_the_key(tmp_path):
    """Three masters; the seed is one of them: each call reaches the node of
    its room's (or the revocations') slot through MOVED, and loads the
    control library there when it has none."""
    cluster = rc.RedisCluster(tmp_path / "cluster", masters=3, replicas=0).start()
    try:
        env = {"SIGNAL_REDIS_CLUSTER": f"{h.HOST}:{h.free_port()},{h.HOST}:{cluster.nodes[0].port}"}  # first seed down
        code, out, err = control(f"redis://{h.HOST}:1/0", "revoke", "--sub", "clustered", "--ttl", "30", env=env)
        assert code == 0, (code, out, err)
        assert cluster.client_for("signal:{control}:revoked")("ZCARD", "signal:{control}:revoked") == 1
        # rooms spread over the three masters: a member on each, kicked through the one seed
        for port, rooms in rc.rooms_on_every_shard(cluster, "cl").items():
            r, p = rooms[0], new_peer()
            master = next(n for n in cluster.nodes if n.port == port)
            master("HSET", f"room:{{{r}}}:peers", p,
                   json.dumps({"node": "n", "inst": "i", "conn": "", "sub": "ab", "joinedAt": 1}))
            code, out, err = control(f"redis://{h.HOST}:1/0", "kick", "--room", r, "--peer", p, env=env)
            assert code == 0, (r, code, out, err)
            assert master("EXISTS", f"room:{{{r}}}:peers") == 0
            code, out, err = control(f"redis://{h.HOST}:1/0", "close-room", "--room", r, env=env)
            assert code == 0, (r, code, out, err)
        for n in cluster.nodes:
            assert n("FUNCTION", "LIST", "LIBRARYNAME", "signal_control"), n.port
    finally:
        cluster.stop()
