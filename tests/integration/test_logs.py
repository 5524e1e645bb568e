# SPDX-License-Identifier: Apache-2.0
"""docs/protocol.md §8 (the part the core issue starts): JSON log lines on stdout
with the named events, and no secrets or personal data in them; the admin
listener's health endpoints."""

import json
import uuid

import sg_helpers as h
from sg_helpers import Clients, handshake, make_token, new_peer, new_room

REQUIRED_EVENTS = {"ws.connect", "ws.auth_success", "ws.auth_failure", "ws.close", "room.join",
                   "room.leave", "relay.offer", "relay.answer", "relay.candidate"}


async def test_log_lines_events_and_redaction(gateway_factory):
    gw = gateway_factory.start(env={"SIGNAL_LOG_LEVEL": "debug"})
    marker = uuid.uuid4().hex
    sub_a, sub_b = f"user-a-{marker}", f"user-b-{marker}"
    sdp = h.SDP + f"a=sdpmarker{marker}\r\n"
    cand = {"candidate": f"candidate:1 1 udp 1 192.0.2.77 4444 typ host ufrag{marker}",
            "sdpMid": "0", "sdpMLineIndex": 0}
    tok_a, tok_b = make_token(sub_a, rooms=["*"]), make_token(sub_b, rooms=["*"])
    bad_token = make_token(sub_a, rooms=["*"], exp_in=-300)
    room = new_room()

    async with Clients() as c:
        a = await c.connect(gw.ws_url, tok_a, name="a")
        b = await c.connect(gw.ws_url, tok_b, name="b", via="query")
        pa, pb = new_peer(), new_peer()
        await a.join(room, pa)
        await b.join(room, pb)
        await a.send(h.offer(room, pa, pb, sdp=sdp))
        await b.recv_type("relay")
        await b.send(h.answer(room, pb, pa, sdp=sdp))
        await a.recv_type("relay")
        await a.send(h.candidate(room, pa, pb, cand))
        await b.recv_type("relay")
        await b.leave(room, pb)
        await b.close()
    assert handshake(gw, token=bad_token).status == 401
    assert handshake(gw, token=bad_token, path="/ws?access_token=" + tok_a).status == 401

    assert gw.stop() == 0
    text = gw.log_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines, "the gateway logged nothing"
    events = set()
    for ln in lines:
        try:
            obj = json.loads(ln)
        except ValueError:
            raise AssertionError(f"log line is not JSON: {ln!r}")
        assert isinstance(obj, dict), ln
        for field in ("ts", "level", "event", "node"):
            assert field in obj, f"log line without {field}: {ln}"
        assert obj["node"] == gw.node_id, ln
        events.add(obj["event"])
        for secret, what in ((sub_a, "raw sub"), (sub_b, "raw sub"), (tok_a, "token"),
                             (tok_b, "token"), (bad_token, "token"), (h.JWT_SECRET, "secret"),
                             (f"sdpmarker{marker}", "SDP"), (f"ufrag{marker}", "candidate")):
            assert secret not in ln, f"{what} in the log: {ln}"
        if obj["event"].startswith(("ws.", "room.", "relay.")):
            assert "127.0.0.1" not in ln, f"client IP address in the log: {ln}"
    missing = REQUIRED_EVENTS - events
    assert not missing, f"log events missing: {sorted(missing)} (seen: {sorted(events)})"


def test_admin_health_endpoints(gateway):
    assert h.http_status(gateway.admin_url + "/healthz")[0] == 200
    assert h.http_status(gateway.admin_url + "/readyz")[0] == 200


def test_metrics_endpoint(gateway):
    status, body = h.http_status(gateway.admin_url + "/metrics")
    assert status == 200
    assert b"ws_connections_gauge" in body
