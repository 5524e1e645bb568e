"""Issue 12, transport findings 3, 4, 5, 7 and 12: the lingering close after a
server-initiated close, frames and bytes charged at frame-header time (control
frames too) and the fragments cap, descriptor exhaustion on both listeners,
connection caps counted at accept time, and the TLS 1.2 cipher list.

Everything talks to real gateway processes over raw sockets (sg_helpers);
counters come from /metrics (abuse_helpers), never from timing luck.
"""

import json
import resource
import socket
import ssl
import struct
import time

import pytest

import abuse_helpers as ah
import sg_helpers as h
from sg_helpers import OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWS, encode_frame, make_token


def tok(sub="alice"):
    return make_token(sub, rooms=["*"])


# =========================================================================
# finding 3: a server-initiated close reaches the client (lingering close)


def _read_to_the_end(raw, timeout=10):
    """Frames until the server's close frame, then bytes until TCP ends.
    Returns how it ended: "eof" (FIN, or TLS close_notify then FIN) or what
    went wrong instead (a reset, a TLS EOF without close_notify, a timeout)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            f = raw.recv_frame(max(0.0, deadline - time.monotonic()))
            if f.opcode == OP_CLOSE:
                break
        while True:
            raw.sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not raw.sock.recv(65536):
                return "eof"
    except EOFError:
        return "eof"
    except (TimeoutError, socket.timeout):
        return "timeout"
    except (ConnectionResetError, ssl.SSLError, OSError) as e:
        return f"reset: {e!r}"


def _oversize_then_read(gw, size, chunk=None, pause=0.0):
    """One connection: a text message of `size` bytes (over the 64 KiB cap),
    in one sendall or in paced chunks, then everything the server sends until
    it ends TCP. Returns (frames, how sending went, how it ended)."""
    raw = RawWS.connect(gw, tok())
    try:
        body = h.padded_json({"type": "join", "roomId": h.new_room(), "peerId": h.new_peer()}, size)
        data = encode_frame(OP_TEXT, body)
        sent = "sent"
        try:
            step = chunk or len(data)
            for i in range(0, len(data), step):
                raw.send_raw(data[i:i + step])
                if pause:
                    time.sleep(pause)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError) as e:
            sent = f"send failed after the server closed: {e!r}"
        return raw.frames, sent, _read_to_the_end(raw)
    finally:
        raw.close()


def _too_large_problem(frames, sent, end):
    texts = [json.loads(f.payload) for f in frames if f.opcode == OP_TEXT]
    closes = [f.close_code for f in frames if f.opcode == OP_CLOSE]
    ok = (sent == "sent" and end == "eof" and closes == [1009]
          and any(t.get("code") == "payload_too_large" for t in texts))
    return None if ok else f"{sent}; ended {end}; texts={texts} closes={closes}"


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize("paced", [False, True], ids=["one-go", "paced"])
def test_oversize_message_in_flight_still_gets_error_and_1009(gateway_factory, tls, paced):
    """A client that sends a 70 KiB message (64 KiB cap), in one go or paced
    like a slow uplink, and then reads must be able to send all of it, then
    get the payload_too_large error, the 1009 close frame and a clean end of
    TCP (FIN; under TLS close_notify first). The server answers at the frame
    header, then goes on reading and discarding the rest (a lingering close)
    instead of closing a socket with unread input: that makes the kernel send
    a reset, which fails the client's send and destroys whatever it had not
    read yet on a real network. Twenty connections: it is a race."""
    gw = gateway_factory.start(tls=tls)
    n = 8 if paced else 20
    problems = [p for p in (_too_large_problem(*_oversize_then_read(
        gw, 70 * 1024, chunk=4096 if paced else None, pause=0.005 if paced else 0.0))
        for _ in range(n)) if p]
    assert not problems, f"{len(problems)}/{n} connections: {problems[:3]}"


def test_refused_oversize_head_in_flight_gets_400_and_a_clean_end(gateway):
    """The same for a refused handshake: a 64 KiB request head (8 KiB cap)
    sent in one go gets its 400 and then a FIN, not a reset."""
    problems = []
    for _ in range(10):
        s = h.open_socket(gateway.host, gateway.port)
        try:
            s.sendall(h.upgrade_request(gateway.host, gateway.port, token=tok(),
                                        headers={"X-Pad": "p" * 65536}))
            r = h.read_http_response(s, timeout=5)
            if r.status != 400:
                problems.append(f"status {r.status}")
                continue
            try:
                s.settimeout(5)
                while s.recv(65536):
                    pass
            except (ConnectionResetError, OSError) as e:
                problems.append(f"400, then {e!r}")
        finally:
            s.close()
    assert not problems, problems
