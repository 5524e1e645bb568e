# SPDX-License-Identifier: Apache-2.0
"""docs/protocol.md §2 (RFC 6455 on the wire): hand-made frames over raw sockets,
close codes, fragmentation, size caps, the close handshake, and slow or
oversized handshakes."""

import json
import os
import socket
import struct
import time

import pytest

import sg_helpers as h
from sg_helpers import (OP_BIN, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWS, encode_frame,
                        make_token, new_peer, new_room, tok)


def join_json(room=None, peer=None, **extra):
    m = {"type": "join", "roomId": room or new_room(), "peerId": peer or new_peer()}
    m.update(extra)
    return json.dumps(m, ensure_ascii=False)


@pytest.fixture
def raw(gateway):
    r = RawWS.connect(gateway, tok())
    yield r
    r.close()


def reply_close_and_expect_tcp_close(raw, code):
    """RFC 6455 §5.5.1: answer the server's close; the server then closes TCP."""
    try:
        raw.send_close(code)
    except (BrokenPipeError, ConnectionResetError):
        return  # already closed: fine
    raw.wait_eof(3)


def expect_close_code(raw, code, timeout=5):
    got, before = raw.expect_close(timeout)
    assert got == code, f"close code {got}, expected {code}; frames before: {before}"
    # after the close frame the server sends no more data frames
    return before


# ---------------------------------------------------------------- 1002


VIOLATIONS = {
    "unmasked": lambda: encode_frame(OP_TEXT, join_json(), mask=False),
    "rsv1": lambda: encode_frame(OP_TEXT, join_json(), rsv=4),
    "rsv2": lambda: encode_frame(OP_TEXT, join_json(), rsv=2),
    "rsv3": lambda: encode_frame(OP_TEXT, join_json(), rsv=1),
    "opcode-3": lambda: encode_frame(0x3, b"x"),
    "opcode-0xB": lambda: encode_frame(0xB, b"x"),
    "fragmented-ping": lambda: encode_frame(OP_PING, b"ab", fin=False),
    "fragmented-pong": lambda: encode_frame(OP_PONG, b"ab", fin=False),
    "ping-126-bytes": lambda: encode_frame(OP_PING, b"p" * 126),
    "close-126-bytes": lambda: encode_frame(OP_CLOSE, struct.pack("!H", 1000) + b"r" * 124),
    "close-1-byte": lambda: encode_frame(OP_CLOSE, b"\x03"),
    "continuation-without-start": lambda: encode_frame(OP_CONT, b"{}", fin=True),
    "text-during-fragmented-message": lambda: (
        encode_frame(OP_TEXT, b'{"type":', fin=False) + encode_frame(OP_TEXT, b'"join"}', fin=True)),
    "binary-during-fragmented-message": lambda: (
        encode_frame(OP_TEXT, b'{"type":', fin=False) + encode_frame(OP_BIN, b"x", fin=True)),
}


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_protocol_violation_closes_1002(raw, case):
    raw.send_raw(VIOLATIONS[case]())
    expect_close_code(raw, 1002)
    reply_close_and_expect_tcp_close(raw, 1002)


def test_unmasked_after_valid_traffic_closes_1002(raw):
    raw.send_text(join_json())
    assert raw.recv_json()["type"] == "joined"
    raw.send_raw(encode_frame(OP_TEXT, join_json(), mask=False))
    expect_close_code(raw, 1002)
    reply_close_and_expect_tcp_close(raw, 1002)


# ---------------------------------------------------------------- 1003 / 1007


def test_binary_message_closes_1003(raw):
    raw.send_frame(OP_BIN, join_json().encode())
    expect_close_code(raw, 1003)
    reply_close_and_expect_tcp_close(raw, 1003)


def test_fragmented_binary_message_closes_1003(raw):
    raw.send_frame(OP_BIN, b"ab", fin=False)
    raw.send_frame(OP_CONT, b"cd", fin=True)
    expect_close_code(raw, 1003)


INVALID_UTF8 = {
    "ff": b'{"type":"join","roomId":"\xff"}',
    "overlong-slash": b'{"type":"join","roomId":"\xc0\xaf"}',
    "overlong-3byte": b'{"type":"join","roomId":"\xe0\x80\xaf"}',
    "surrogate": b'{"type":"join","roomId":"\xed\xa0\x80"}',
    "above-10ffff": b'{"type":"join","roomId":"\xf4\x90\x80\x80"}',
    "truncated": b'{"type":"join","roomId":"\xe2\x82',
    "lone-continuation": b'{"x":"\x80"}',
}


@pytest.mark.parametrize("case", list(INVALID_UTF8))
def test_invalid_utf8_closes_1007(raw, case):
    raw.send_frame(OP_TEXT, INVALID_UTF8[case])
    expect_close_code(raw, 1007)
    reply_close_and_expect_tcp_close(raw, 1007)


def test_invalid_utf8_across_fragments_closes_1007(raw):
    raw.send_frame(OP_TEXT, b'{"x":"\xe2', fin=False)
    raw.send_frame(OP_CONT, b'\x28\xa1"}', fin=True)  # \xe2 followed by a non-continuation byte
    expect_close_code(raw, 1007)


def test_valid_utf8_split_across_fragments_is_accepted(raw):
    data = join_json(note="\u20ac\U0001F600").encode()  # unknown field with multibyte text
    cut = data.index("\u20ac".encode()) + 1               # split inside the euro sign
    cut2 = data.index("\U0001F600".encode()) + 2          # and inside the emoji
    raw.send_frame(OP_TEXT, data[:cut], fin=False)
    raw.send_frame(OP_CONT, data[cut:cut2], fin=False)
    raw.send_frame(OP_CONT, data[cut2:], fin=True)
    m = raw.recv_json()
    assert m["type"] == "error" and m["code"] == "bad_request", m  # unknown field, not a 1007
    raw.send_text(join_json())
    assert raw.recv_json()["type"] == "joined"


# ---------------------------------------------------------------- 1009


@pytest.fixture
def small_gateway(gateway_factory):
    return gateway_factory.start(env={"SIGNAL_MAX_MESSAGE_BYTES": "1024"})


def _expect_too_large(raw):
    before = expect_close_code(raw, 1009)
    texts = [json.loads(f.payload) for f in before if f.opcode == OP_TEXT]
    assert any(t.get("type") == "error" and t.get("code") == "payload_too_large" for t in texts), \
        f"no payload_too_large error before the close: {before}"


def test_oversized_frame_is_refused_before_it_is_buffered(small_gateway):
    raw = RawWS.connect(small_gateway, tok())
    try:
        # announce 10 MB, send only 2 KiB: the server must not wait for the rest
        mkey = os.urandom(4)
        head = struct.pack("!BBQ", 0x80 | OP_TEXT, 0x80 | 127, 10 * 1024 * 1024) + mkey
        body = h._mask_fast(b"x" * 2048, mkey)
        raw.send_raw(head + body)
        _expect_too_large(raw)
        reply_close_and_expect_tcp_close(raw, 1009)
    finally:
        raw.close()


def test_oversized_fragmented_message_closes_1009(small_gateway):
    raw = RawWS.connect(small_gateway, tok())
    try:
        raw.send_frame(OP_TEXT, b"[" + b" " * 599, fin=False)
        raw.send_frame(OP_CONT, b" " * 300, fin=False)
        raw.send_frame(OP_CONT, b" " * 300, fin=True)
        _expect_too_large(raw)
    finally:
        raw.close()


def test_message_exactly_at_the_cap_passes(small_gateway):
    raw = RawWS.connect(small_gateway, tok())
    try:
        msg = h.padded_json({"type": "join", "roomId": new_room(), "peerId": new_peer()}, 1024)
        # as one frame and as three fragments
        raw.send_text(msg)
        assert raw.recv_json()["type"] == "joined"
        b = msg.encode()
        raw.send_frame(OP_TEXT, b[:400], fin=False)
        raw.send_frame(OP_CONT, b[400:800], fin=False)
        raw.send_frame(OP_CONT, b[800:], fin=True)
        assert raw.recv_json()["type"] == "joined"
        raw.send_text(msg[:-1] + " }")
        _expect_too_large(raw)
    finally:
        raw.close()


@pytest.mark.parametrize("size", [125, 126, 127, 65535, 65536])
def test_frame_length_encodings(raw, size):
    """7-bit, 16-bit and 64-bit payload lengths; 65536 is the default cap."""
    room, peer = new_room(), new_peer()
    raw.send_text(h.padded_json({"type": "join", "roomId": room, "peerId": peer}, size))
    m = raw.recv_json(10)
    assert m["type"] == "joined" and m["roomId"] == room, m


def test_default_cap_65537_closes_1009(raw):
    raw.send_text(h.padded_json({"type": "join", "roomId": new_room(), "peerId": new_peer()}, 65537))
    _expect_too_large(raw)


# ---------------------------------------------------------------- fragmentation


def test_fragmented_text_with_ping_in_between(raw):
    data = join_json().encode()
    a, b = len(data) // 3, 2 * len(data) // 3
    raw.send_frame(OP_TEXT, data[:a], fin=False)
    raw.send_frame(OP_PING, b"mid-message")
    raw.send_frame(OP_CONT, data[a:b], fin=False)
    raw.send_frame(OP_CONT, data[b:], fin=True)
    m = raw.recv_json()
    assert m["type"] == "joined", m
    pongs = [f for f in raw.frames if f.opcode == OP_PONG]
    assert [p.payload for p in pongs] == [b"mid-message"], raw.frames


def test_frame_sent_byte_by_byte(raw):
    frame = encode_frame(OP_TEXT, join_json())
    for i in range(len(frame)):
        raw.send_raw(frame[i:i + 1])
        time.sleep(0.002)
    assert raw.recv_json()["type"] == "joined"


def test_several_frames_in_one_segment(raw):
    rooms = [new_room() for _ in range(3)]
    raw.send_raw(b"".join(encode_frame(OP_TEXT, join_json(r)) for r in rooms)
                 + encode_frame(OP_PING, b"x"))
    got = [raw.recv_json()["roomId"] for _ in range(3)]
    assert got == rooms
    # the pong may come before the answers (recv_json records control frames)
    if not any(f.opcode == OP_PONG for f in raw.frames):
        raw.recv_frame()
    pongs = [f for f in raw.frames if f.opcode == OP_PONG]
    assert [f.payload for f in pongs] == [b"x"], raw.frames


def test_empty_fragments(raw):
    data = join_json().encode()
    raw.send_frame(OP_TEXT, b"", fin=False)
    raw.send_frame(OP_CONT, data, fin=False)
    raw.send_frame(OP_CONT, b"", fin=True)
    assert raw.recv_json()["type"] == "joined"


# ---------------------------------------------------------------- close handshake


def test_client_close_is_echoed_then_tcp_closed(raw):
    raw.send_text(join_json())
    assert raw.recv_json()["type"] == "joined"
    raw.send_close(1000, b"bye")
    f = raw.recv_frame(5)
    assert f.opcode == OP_CLOSE, f
    assert f.close_code in (None, 1000), f
    raw.wait_eof(3)


def test_client_close_without_code(raw):
    raw.send_close(None)
    f = raw.recv_frame(5)
    assert f.opcode == OP_CLOSE, f
    raw.wait_eof(3)


def test_server_close_then_client_close_then_tcp_close(raw):
    raw.send_frame(OP_BIN, b"\x00")
    expect_close_code(raw, 1003)
    raw.send_close(1003)
    raw.wait_eof(3)


def test_no_frames_after_close_are_processed(raw):
    raw.send_raw(encode_frame(OP_CLOSE, struct.pack("!H", 1000)) + encode_frame(OP_TEXT, join_json()))
    f = raw.recv_frame(5)
    assert f.opcode == OP_CLOSE, f
    raw.wait_eof(3)
    assert not [x for x in raw.frames if x.opcode == OP_TEXT], raw.frames


# ---------------------------------------------------------------- slow / big handshakes


def test_incomplete_handshakes_are_dropped(gateway):
    half = h.open_socket(gateway.host, gateway.port, timeout=5)
    idle = h.open_socket(gateway.host, gateway.port, timeout=5)
    try:
        half.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        # the server still serves others meanwhile
        ok = RawWS.connect(gateway, tok())
        ok.close()
        t0 = time.monotonic()
        _, data = h.wait_socket_closed(half, 15)
        assert not data.startswith(b"HTTP/1.1 101"), data
        _, data = h.wait_socket_closed(idle, max(1.0, 15 - (time.monotonic() - t0)))
        assert not data.startswith(b"HTTP/1.1 101"), data
    finally:
        half.close()
        idle.close()


def _send_ignoring_reset(sock, data):
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        return False


@pytest.mark.parametrize("pad", [9 * 1024, 16 * 1024, 64 * 1024])
def test_oversized_headers_are_refused(gateway, pad):
    req = h.upgrade_request(gateway.host, gateway.port, token=tok(),
                            headers={"X-Pad": "a" * pad})
    s = h.open_socket(gateway.host, gateway.port, timeout=5)
    try:
        _send_ignoring_reset(s, req)
        try:
            resp = h.read_http_response(s, timeout=5)
        except (EOFError, ConnectionResetError):
            return  # dropped without an answer: acceptable
        assert resp.status == 400, resp
    finally:
        s.close()


def test_endless_header_stream_is_cut_off(gateway):
    s = h.open_socket(gateway.host, gateway.port, timeout=3)
    try:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        line = b"X-Filler: " + b"f" * 90 + b"\r\n"
        sent = 0
        while sent < 256 * 1024 and _send_ignoring_reset(s, line * 16):
            sent += len(line) * 16
        _, data = h.wait_socket_closed(s, 5)
        assert not data.startswith(b"HTTP/1.1 101"), data
        if data:
            assert data.startswith(b"HTTP/1.1 400") or data.startswith(b"HTTP/1.0 400"), data[:200]
    finally:
        s.close()


def test_a_3kib_token_fits(gateway):
    # a real token with a few dozen rooms and profile claims is a few KiB
    big = make_token("alice", rooms=["*"] + [f"team-{i}/*" for i in range(40)],
                     profile={"name": "Alice Example", "bio": "x" * 1600})
    assert 2500 < len(big) < 4000, len(big)
    raw = RawWS.connect(gateway, big)
    try:
        raw.send_text(join_json())
        assert raw.recv_json()["type"] == "joined"
    finally:
        raw.close()


# ---------------------------------------------------------------- the same over TLS


def test_raw_frames_over_tls(gateway_factory):
    gw = gateway_factory.start(tls=True, env={"SIGNAL_MAX_MESSAGE_BYTES": "1024"})
    raw = RawWS.connect(gw, tok())
    try:
        data = join_json().encode()
        raw.send_frame(OP_TEXT, data[:10], fin=False)
        raw.send_frame(OP_PING, b"tls-ping")
        raw.send_frame(OP_CONT, data[10:], fin=True)
        assert raw.recv_json()["type"] == "joined"
        assert [f.payload for f in raw.frames if f.opcode == OP_PONG] == [b"tls-ping"]
        raw.send_frame(OP_BIN, b"x")
        expect_close_code(raw, 1003)
        reply_close_and_expect_tcp_close(raw, 1003)
    finally:
        raw.close()
    raw = RawWS.connect(gw, tok())
    try:
        mkey = os.urandom(4)
        head = struct.pack("!BBQ", 0x80 | OP_TEXT, 0x80 | 127, 10 * 1024 * 1024) + mkey
        raw.send_raw(head + h._mask_fast(b"y" * 2048, mkey))
        _expect_too_large(raw)
    finally:
        raw.close()
