# SPDX-License-Identifier: Apache-2.0
"""Issue 12, transport findings 3, 4, 5, 7 and 12: the lingering close after a
server-initiated close, frames and bytes charged at frame-header time (control
frames too) and the fragments cap, descriptor exhaustion on both listeners,
connection caps counted at accept time, and the TLS 1.2 cipher list.

Everything talks to real gateway processes over raw sockets (sg_helpers);
counters come from /metrics (abuse_helpers), never from timing luck.
"""

import json
import os
import resource
import socket
import ssl
import threading
import time

import pytest

import abuse_helpers as ah
import sg_helpers as h
from sg_helpers import OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWS, encode_frame, tok


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


def test_the_close_wait_timer_does_not_renew_the_linger_bound(gateway_factory):
    """After our close frame (here the join timeout's) a client that never
    answers it and goes on sending is read and discarded up to 256 KiB in
    all (LINGER_MAX_BYTES, gateway/conn.c). The close-wait timer then ends
    our side (FIN) and lingers a little more, but the count goes on: 150 KiB
    before our FIN and 150 KiB after it end the connection at the bound
    ("linger bound"), not at the timer's second deadline ("close timeout").
    Regression: the timer started the count again, so twice the bound could
    be read."""
    gw = gateway_factory.start(env={"SIGNAL_JOIN_TIMEOUT_MS": "300"})
    raw = RawWS.connect(gw, tok())
    try:
        assert _read_until_close(raw, 10) == 1008
        junk = encode_frame(OP_TEXT, b"x" * 1000) * 50  # ~50 KiB of frames
        for _ in range(3):
            raw.send_raw(junk)
        # Our FIN: the close-wait timer (2 s after the close frame) fired.
        raw.sock.settimeout(10)
        assert raw.sock.recv(65536) == b""
        try:
            for _ in range(3):
                raw.send_raw(junk)
        except OSError:
            pass  # the bound was passed: the server closed with input unread (a reset)
        deadline = time.monotonic() + 10
        while True:
            closes = ah.log_events(gw, "ws.close")
            if closes or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [e.get("reason") for e in closes] == ["linger bound"], closes
    finally:
        raw.close()


# =========================================================================
# finding 4: frames and bytes charged at frame-header time; the fragments cap

MAX_FRAGMENTS = 256  # SG_WS_MAX_FRAGMENTS (include/sg/ws_frame.h, docs/protocol.md §10)


def _read_until_close(raw, timeout):
    """Frames until the server's close frame; returns its code (None if the
    connection ended without one or nothing came within timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            f = raw.recv_frame(max(0.0, deadline - time.monotonic()))
        except (EOFError, TimeoutError, ConnectionResetError, ssl.SSLError, OSError):
            return None
        if f.opcode == OP_CLOSE:
            return f.close_code


def test_endless_continuation_message_is_closed_1008(gateway):
    """A text message followed by empty continuation frames that never end:
    each frame is charged at its header and the message may have at most
    MAX_FRAGMENTS frames, so the connection is closed with 1008 at once
    (it used to be parsed forever at 100% CPU, never closed)."""
    raw = RawWS.connect(gateway, tok())
    try:
        raw.send_frame(OP_TEXT, b'{"type":', fin=False)
        empty = encode_frame(OP_CONT, b"", fin=False)
        try:
            for _ in range(4):
                raw.send_raw(empty * 1000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _read_until_close(raw, 5) == 1008, raw.frames
    finally:
        raw.close()
    m = ah.metrics(gateway)
    assert ah.metric(m, "caps_tripped_total", cap="fragments") == 1, m


@pytest.mark.parametrize("fragments", [MAX_FRAGMENTS, MAX_FRAGMENTS + 1])
def test_fragments_cap(gateway_factory, fragments):
    """A join in exactly MAX_FRAGMENTS frames is answered; one frame more
    closes the connection with 1008 before the message ends."""
    gw = gateway_factory.start(env=h.NO_RATE_LIMITS)
    raw = RawWS.connect(gw, tok())
    try:
        room, peer = h.new_room(), h.new_peer()
        body = json.dumps({"type": "join", "roomId": room, "peerId": peer}).encode()
        parts = [body] + [b""] * (fragments - 1)
        raw.send_raw(b"".join(encode_frame(OP_TEXT if i == 0 else OP_CONT, p, fin=i == fragments - 1)
                              for i, p in enumerate(parts)))
        if fragments <= MAX_FRAGMENTS:
            m = raw.recv_json(5)
            assert m["type"] == "joined" and m["roomId"] == room, m
        else:
            assert _read_until_close(raw, 5) == 1008, raw.frames
            assert not [f for f in raw.frames if f.opcode == OP_TEXT
                        and json.loads(f.payload).get("type") == "joined"], raw.frames
    finally:
        raw.close()


def test_ping_flood_is_answered_at_the_limit_rate_then_closed_1008(gateway_factory):
    """Pings are frames too: with SIGNAL_RATE_CONN_FRAMES=20/20, a client
    sending 200 pings a second gets at most 20 + 20/s pongs (the rest are
    not answered) and, over the limit for 10 s on end, is closed with 1008
    (it used to get every ping answered, 1.6M in 2 s, and stay)."""
    rate, burst = 20, 20
    gw = gateway_factory.start(env={"SIGNAL_RATE_CONN_FRAMES": f"{rate}/{burst}",
                                    "SIGNAL_PING_INTERVAL_MS": "60000"})
    raw = RawWS.connect(gw, tok())
    stop = threading.Event()
    sent = [0]

    def flood():
        frame = encode_frame(OP_PING, b"flood")
        while not stop.is_set():
            try:
                raw.send_raw(frame)
            except OSError:
                return
            sent[0] += 1
            time.sleep(0.005)

    t = threading.Thread(target=flood, daemon=True)
    t0 = time.monotonic()
    t.start()
    try:
        code = _read_until_close(raw, 25)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        t.join(5)
        raw.close()
    pongs = [f for f in raw.frames if f.opcode == OP_PONG]
    warnings = [json.loads(f.payload) for f in raw.frames if f.opcode == OP_TEXT]
    assert code == 1008, (code, len(pongs), sent[0], raw.frames[-5:])
    assert len(pongs) <= burst + rate * elapsed + 1, (len(pongs), sent[0], elapsed)
    assert sent[0] > 3 * (burst + rate * elapsed), "the flood was not a flood"
    assert warnings and all(w.get("code") == "rate_limited" for w in warnings), warnings
    m = ah.metrics(gw)
    assert ah.metric(m, "caps_tripped_total", cap="flood") == 1, m


# =========================================================================
# finding 7: connection caps counted at accept time


def _half_open(gw, n):
    """n connections that send nothing."""
    socks = []
    for _ in range(n):
        socks.append(h.open_socket(gw.host, gw.port))
    return socks


def _ended_with_503(socks, timeout):
    """For each socket: "503" when the server answered 503 and ended TCP
    within timeout, "open" when nothing came, or what else happened."""
    out = []
    deadline = time.monotonic() + timeout
    for s in socks:
        data = b""
        try:
            while True:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, TimeoutError):
            out.append("open" if not data else f"partial {data[:60]!r}")
            continue
        except OSError as e:
            out.append(f"{e!r} after {data[:60]!r}")
            continue
        ok = data.startswith(b"HTTP/1.1 503 ") and b'"code":"unavailable"' in data
        out.append("503" if ok else f"ended: {data[:80]!r}")
        deadline = max(deadline, time.monotonic() + 0.2)  # the open ones still get a fair wait
    return out


def _upgrade_ok(gw, s):
    s.sendall(h.upgrade_request(gw.host, gw.port, token=tok()))
    return h.read_http_response(s, timeout=5).status == 101


@pytest.mark.parametrize("cap_env,cap_name,limit", [
    ({"SIGNAL_MAX_CONNECTIONS_PER_IP": "2"}, "max_connections_per_ip", 2),
    ({"SIGNAL_MAX_CONNECTIONS": "3"}, "max_connections", 3),
], ids=["per-ip", "global"])
def test_half_open_connections_are_capped_at_accept(gateway_factory, cap_env, cap_name, limit):
    """50 connections that never send a request head, with a cap of 2 per
    address (or 3 per node): the cap counts them at accept, so all but the
    first `limit` get a 503 at once and are closed, without waiting for a head
    or the handshake timeout (30 s here); the admitted ones still upgrade."""
    gw = gateway_factory.start(env=dict(cap_env, SIGNAL_HANDSHAKE_TIMEOUT_MS="30000"))
    socks = _half_open(gw, 50)
    try:
        states = _ended_with_503(socks, 5)
        assert states.count("503") == 50 - limit and states.count("open") == limit, states
        admitted = [s for s, st in zip(socks, states) if st == "open"]
        assert all(_upgrade_ok(gw, s) for s in admitted)
        m = ah.metrics(gw)
        assert ah.metric(m, "caps_tripped_total", cap=cap_name) == 50 - limit, m
        assert ah.metric(m, "handshakes_total", outcome="503") == 50 - limit, m
    finally:
        for s in socks:
            s.close()


def test_a_slot_frees_when_a_pending_handshake_goes(gateway_factory):
    """The count at accept is given back when a pending handshake ends."""
    gw = gateway_factory.start(env={"SIGNAL_MAX_CONNECTIONS_PER_IP": "1",
                                    "SIGNAL_HANDSHAKE_TIMEOUT_MS": "30000"})
    first = h.open_socket(gw.host, gw.port)
    second = _half_open(gw, 1)
    try:
        assert _ended_with_503(second, 5) == ["503"]
    finally:
        first.close()
        second[0].close()

    def upgrades():
        r = h.handshake(gw, token=tok())
        assert r.status in (101, 503), r
        return r.status == 101
    h.wait_until(upgrades, 5, what="a slot after the pending handshake closed")


def test_a_trusted_proxy_is_not_capped_at_accept(gateway_factory):
    """Connections from a trusted proxy are counted by their X-Forwarded-For
    address once the head is read: five pending handshakes from the proxy
    with a cap of 2 are all admitted and upgrade for distinct clients."""
    gw = gateway_factory.start(env={"SIGNAL_MAX_CONNECTIONS_PER_IP": "2",
                                    "SIGNAL_TRUSTED_PROXIES": "127.0.0.1",
                                    "SIGNAL_HANDSHAKE_TIMEOUT_MS": "30000"})
    socks = _half_open(gw, 5)
    try:
        time.sleep(0.3)  # the gateway has accepted them all by now (nothing to assert on)
        for i, s in enumerate(socks):
            s.sendall(h.upgrade_request(gw.host, gw.port, token=tok(),
                                        headers={"X-Forwarded-For": f"10.9.9.{i + 1}"}))
            assert h.read_http_response(s, timeout=5).status == 101
    finally:
        for s in socks:
            s.close()


# =========================================================================
# finding 5: descriptor exhaustion


def test_descriptor_exhaustion_pauses_both_listeners(gateway_factory):
    """Out of descriptors (RLIMIT_NOFILE lowered to what the gateway holds plus
    8), with connections waiting on the public and the admin listener for 2 s:
    both listeners pause and retry on a timer instead of spinning, so accept
    errors stay few (the log line is rate-limited as well), libevent's own
    warnings come out as JSON log lines, and once descriptors are free again
    new connections are accepted on both listeners."""
    gw = gateway_factory.start()
    held = len(os.listdir(f"/proc/{gw.pid}/fd"))
    soft, hard = resource.prlimit(gw.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(gw.pid, resource.RLIMIT_NOFILE, (held + 8, hard))
    socks = []
    try:
        # 8 descriptors' worth accepted, the rest waits in the backlogs
        socks += [h.open_socket(gw.host, gw.port) for _ in range(12)]
        socks += [h.open_socket(gw.host, gw.admin_port) for _ in range(3)]
        time.sleep(0.5)
        cpu0, t0 = h.cpu_seconds(gw.pid), time.monotonic()
        while time.monotonic() - t0 < 2.0:
            socks.append(h.open_socket(gw.host, gw.port))
            socks.append(h.open_socket(gw.host, gw.admin_port))
            time.sleep(0.1)
        cpu = h.cpu_seconds(gw.pid) - cpu0
        elapsed = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
        resource.prlimit(gw.pid, resource.RLIMIT_NOFILE, (soft, hard))

    def upgrades():
        try:
            w = RawWS.connect(gw, tok(), timeout=2)
        except (AssertionError, OSError, EOFError, TimeoutError):
            return False
        w.send_json({"type": "join", "roomId": h.new_room(), "peerId": h.new_peer()})
        ok = w.recv_json(5)["type"] == "joined"
        w.close()
        return ok
    h.wait_until(upgrades, 10, what="a ws connection accepted after the descriptors came back")
    h.wait_until(lambda: h.http_status(gw.admin_url + "/healthz")[0] == 200, 10,
                 what="the admin listener accepting again")

    lines = gw.log_text().splitlines()
    not_json = []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            not_json.append(line)
    assert not not_json, f"{len(not_json)} non-JSON lines, e.g. {not_json[:3]}"
    accept_lines = [e for e in events if e.get("event", "").endswith("accept_error")]
    assert 1 <= len(accept_lines) <= 10, (len(accept_lines), accept_lines[:3])
    m = ah.metrics(gw)
    errors = ah.metric(m, "caps_tripped_total", cap="accept_error")
    # paused and retried every 100 ms per listener: about 20 a second at most
    assert 1 <= errors <= 40 * (elapsed + 3), errors
    # a spinning listener takes a core (or what the machine's load leaves of it)
    assert cpu < 0.25 * elapsed, f"{cpu:.2f} s of CPU in {elapsed:.2f} s: a listener spins"
    # no accept error is left to libevent (it would warn on each, spinning)
    assert not [e for e in events if e.get("event") == "libevent.log" and "accept" in e.get("msg", "")], \
        [e for e in events if e.get("event") == "libevent.log"][:3]


# =========================================================================
# finding 12: TLS 1.2 suites


def _tls12_handshake(gw, ciphers):
    """The TLS 1.2 suite negotiated with a client offering only `ciphers`, or
    None when the server refused them all."""
    ctx = h.insecure_ssl_context()
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    raw = socket.create_connection((gw.host, gw.port), timeout=5)
    try:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.cipher()[0]
    except (ssl.SSLError, ConnectionResetError):
        return None
    finally:
        raw.close()


def _rsa_cert(tmp_path):
    """A self-signed RSA-2048 certificate: RSA key exchange suites (no forward
    secrecy) need one to be offered at all."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "rsa-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "rsa-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {"SIGNAL_TLS_CERT": str(tmp_path / "rsa-cert.pem"), "SIGNAL_TLS_KEY": str(tmp_path / "rsa-key.pem")}


WEAK_TLS12 = {
    # no forward secrecy (RSA key exchange), CBC, SHA-1 MACs, finite-field DH
    "rsa": ["AES128-SHA", "AES256-SHA256", "AES128-GCM-SHA256", "AES256-GCM-SHA384",
            "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384", "DHE-RSA-AES128-GCM-SHA256"],
    "ec": ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256"],
}
GOOD_TLS12 = {
    "rsa": ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"],
    "ec": ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"],
}


@pytest.mark.parametrize("cert", ["rsa", "ec"])
def test_tls12_suites_are_ecdhe_with_aead_only(gateway_factory, tmp_path, cert):
    """TLS 1.2: each weak suite offered alone (the client at security level 0,
    so that it does offer it) is refused; each ECDHE + AES-GCM/ChaCha20 suite
    is accepted."""
    gw = gateway_factory.start(tls=True, env=_rsa_cert(tmp_path) if cert == "rsa" else None)
    accepted = {c: _tls12_handshake(gw, c + ":@SECLEVEL=0") for c in WEAK_TLS12[cert]}
    assert not {c: n for c, n in accepted.items() if n}, accepted
    for c in GOOD_TLS12[cert]:
        assert _tls12_handshake(gw, c) == c


def test_tls13_still_works_and_a_wss_connection_opens(gateway_factory):
    gw = gateway_factory.start(tls=True)
    raw = RawWS.connect(gw, tok())
    try:
        assert raw.sock.version() == "TLSv1.3"
        raw.join(h.new_room(), h.new_peer())
    finally:
        raw.close()
