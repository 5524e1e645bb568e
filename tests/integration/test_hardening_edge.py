"""Issue 12, the findings at the gateway's edge (the HTTP upgrade), tested
from outside against a real gateway:

- finding 6: X-Forwarded-For behind a trusted proxy is read from the right
  end of all its lines, so the line a client forged cannot decide its
  address for the per-IP cap;
- finding 11: a request head arriving in many small pieces costs CPU in
  proportion to its length, not to its length squared.

(Findings 8 and 14, the static file server, are unit-tested in
tests/unit/test_static_files.c.)
"""

import sg_helpers as h
from sg_helpers import handshake, make_token


def tok(sub):
    return make_token(sub, rooms=["*"])


def _assert_503(resp):
    assert resp.status == 503, resp
    assert resp.json().get("code") == "unavailable", resp


# =========================================================================
# finding 6: X-Forwarded-For


def via_proxy(forged, real):
    """Headers as haproxy's `option forwardfor` passes them on: the client's
    own X-Forwarded-For line first, then the line the proxy adds with the
    address it saw."""
    return {"X-Forwarded-For": [forged, real]}


def test_forwarded_for_proxy_line_decides_not_the_clients(gateway_factory):
    """SIGNAL_MAX_CONNECTIONS_PER_IP=2 behind a trusted proxy (127.0.0.1).
    A client forging a new address on every connection still gets only 2;
    forging a victim's address does not use up the victim's quota."""
    gw = gateway_factory.start(env={"SIGNAL_MAX_CONNECTIONS_PER_IP": "2",
                                    "SIGNAL_TRUSTED_PROXIES": "127.0.0.1"})
    held = []
    try:
        # the attacker is 10.1.1.1 and claims another address each time
        held += [h.RawWS.connect(gw, tok("mallory"), headers=via_proxy(f"10.9.9.{i}", "10.1.1.1"))
                 for i in range(2)]
        _assert_503(handshake(gw, token=tok("mallory"), headers=via_proxy("10.9.9.3", "10.1.1.1")))
        # a second attacker (10.1.1.3) claims to be the victim 10.2.2.2
        held += [h.RawWS.connect(gw, tok("trudy"), headers=via_proxy("10.2.2.2", "10.1.1.3"))
                 for _ in range(2)]
        # the victim's own 2 slots are untouched
        held += [h.RawWS.connect(gw, tok("victor"), headers=via_proxy("", "10.2.2.2"))
                 for _ in range(2)]
        _assert_503(handshake(gw, token=tok("victor"), headers={"X-Forwarded-For": "10.2.2.2"}))
        # the counted connections are usable ones
        w = held[-1]
        room, p = h.new_room(), h.new_peer()
        w.send_json({"type": "join", "roomId": room, "peerId": p})
        assert w.recv_json(5)["type"] == "joined"
    finally:
        for w in held:
            w.close()


def test_forwarded_for_invalid_last_entry_keeps_the_proxy_address(gateway_factory):
    """An entry that is not an address (a port, a name) where the client's
    address should be is not believed, and the entries left of it, which the
    client wrote, are not either: the connection counts for the proxy."""
    gw = gateway_factory.start(env={"SIGNAL_MAX_CONNECTIONS_PER_IP": "2",
                                    "SIGNAL_TRUSTED_PROXIES": "127.0.0.1"})
    held = []
    try:
        held.append(h.RawWS.connect(gw, tok("a"), headers={"X-Forwarded-For": "10.3.3.1, 10.3.3.3:4711"}))
        held.append(h.RawWS.connect(gw, tok("a"), headers={"X-Forwarded-For": "10.3.3.2, unknown"}))
        # both were counted for 127.0.0.1, which is now full
        _assert_503(handshake(gw, token=tok("a")))
        # while 10.3.3.1 and 10.3.3.2 were never charged
        held.append(h.RawWS.connect(gw, tok("a"), headers={"X-Forwarded-For": "10.3.3.1"}))
        held.append(h.RawWS.connect(gw, tok("a"), headers={"X-Forwarded-For": "10.3.3.1"}))
    finally:
        for w in held:
            w.close()
