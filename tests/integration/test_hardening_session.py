"""Regression tests of issue 12's session-layer findings: what a signed-in
client could do to the gateway's memory through resumption, and sends that
freed the state of the code that made them.

Run against the ASan+UBSan build (tests/run.sh does), the fixtures fail a test
whose gateway logged a sanitizer report; the assertions below also check what
the client sees and that the gateway keeps serving.
"""

import asyncio
import json

import sg_helpers as h
from sg_helpers import Clients, RawWS, arun, new_peer, new_room

import ext_helpers as x
from ext_helpers import RESUME_ENV, resume_msg, tok, wait_in_grace


async def still_serving(cs, gw, room_prefix="alive"):
    """A fresh pair can join and relay on gw: the node survived."""
    room, pa, pb = new_room(room_prefix), new_peer(), new_peer()
    a = await cs.connect(gw.ws_url, tok("zed"), name="alive-a")
    b = await cs.connect(gw.ws_url, tok("yan"), name="alive-b")
    await a.join(room, pa)
    await b.join(room, pb)
    await a.send(h.offer(room, pa, pb, cid="alive"))
    m = await b.recv_type("relay", correlationId="alive")
    assert m["inner"]["from"] == pa, m


def test_resume_with_a_short_token_is_refused_and_writes_nothing_out_of_bounds(gateway_factory, redis):
    """Finding 1: a resumeToken shorter than the fresh 32-character one was
    copied into a buffer of its own length, then overwritten with the new
    token (heap overflow, reported by ASan in new_resume_token). Any short
    token in the allowed charset must just fail."""
    gw, = gateway_factory(1, env=RESUME_ENV)
    room, pa, pb = new_room("short"), new_peer(), new_peer()

    async def main():
        async with Clients() as cs:
            a = await cs.connect(gw.ws_url, tok("alice"), name="a")
            b = await cs.connect(gw.ws_url, tok("bob"), name="b")
            await a.join(room, pa)
            await b.join(room, pb)
            await a.recv_type("peer_joined", peerId=pb)
            # Same user as a member, tokens of every short length.
            for n, token in enumerate(["a", "abc", "x" * 31, "A-_" * 5]):
                c = await cs.connect(gw.ws_url, tok("bob"), name=f"c{n}")
                await c.send(resume_msg(room, pb, token, 0, cid=f"r{n}"))
                await c.expect_error("resume_failed", cid=f"r{n}", room=room)
            # Nothing changed for the members, and the node still serves.
            assert x.member(redis, room, pb)["conn"] != "", x.member(redis, room, pb)
            await a.send(h.offer(room, pa, pb, cid="after"))
            await b.recv_type("relay", correlationId="after")
            await still_serving(cs, gw)
    arun(main())


def test_a_resume_answer_over_the_output_cap_frees_nothing_twice(gateway_factory, redis):
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

    async def main():
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
    arun(main())
