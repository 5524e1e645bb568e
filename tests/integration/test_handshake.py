# SPDX-License-Identifier: Apache-2.0
"""docs/protocol.md §1: the upgrade handshake, token sources, JWT validation,
origins, subprotocols, alternative algorithms and TLS."""

import asyncio
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import sg_helpers as h
from sg_helpers import Clients, handshake, make_token, new_peer, new_room


def assert_refused(resp, status, code):
    assert resp.status == status, resp
    assert resp.header("upgrade") is None or resp.status != 101, resp
    ctype = resp.header("content-type") or ""
    assert ctype.lower().startswith("application/json"), f"JSON body expected: {resp!r}"
    body = resp.json()
    assert body.get("type") == "error", body
    assert body.get("code") == code, body
    assert isinstance(body.get("message"), str) and body["message"], body
    assert h.JWT_SECRET not in resp.body.decode(errors="replace")
    return body


def assert_401(resp, invalid_token=True, token=None):
    body = assert_refused(resp, 401, "unauthorized")
    www = resp.header("www-authenticate")
    assert www is not None and www.startswith("Bearer"), resp
    if invalid_token:
        assert 'error="invalid_token"' in www, resp
    else:
        assert "error=" not in www, resp
    if token:
        assert token not in resp.body.decode(errors="replace"), "the body must not echo the token"
    return body


def assert_101(resp, key=None):
    assert resp.status == 101, resp
    assert (resp.header("upgrade") or "").lower() == "websocket", resp
    assert "upgrade" in (resp.header("connection") or "").lower(), resp
    if key is not None:
        assert resp.header("sec-websocket-accept") == h.accept_for(key), resp


def good_token():
    return make_token("alice", rooms=["*"])


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize("path", ["/", "/other", "/ws/x", "/wss", "/WS"])
def test_other_paths_get_404(gateway, path):
    resp = handshake(gateway, token=good_token(), path=path)
    assert resp.status == 404, resp


def test_valid_handshake_accept_key_rfc_sample(gateway):
    # RFC 6455 §1.3 sample key and accept value
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    resp = handshake(gateway, token=good_token(), key=key)
    assert_101(resp)
    assert resp.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert resp.header("sec-websocket-protocol") is None, "nothing offered, nothing selected"
    assert resp.header("sec-websocket-extensions") is None


def test_browser_style_headers_are_accepted(gateway):
    # Firefox sends "Connection: keep-alive, Upgrade"; header values are case-insensitive.
    key = h.new_ws_key()
    resp = handshake(gateway, token=good_token(), key=key, headers={
        "Upgrade": "WebSocket", "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
        "User-Agent": "Mozilla/5.0", "Origin": "https://any.example"})
    assert_101(resp, key)
    assert resp.header("sec-websocket-extensions") is None, "no extension may be negotiated"


def test_query_string_does_not_change_path(gateway):
    resp = handshake(gateway, path="/ws?foo=bar&access_token=" + good_token() + "&x=1")
    assert_101(resp)


# ---------------------------------------------------------------- 426


@pytest.mark.parametrize("headers", [
    {"Upgrade": None},
    {"Connection": None},
    {"Upgrade": "h2c"},
    {"Connection": "keep-alive"},
    {"Sec-WebSocket-Version": "8"},
    {"Sec-WebSocket-Version": None},
], ids=["no-upgrade", "no-connection", "upgrade-h2c", "connection-keepalive", "version-8", "no-version"])
def test_upgrade_required_426(gateway, headers):
    resp = handshake(gateway, token=good_token(), headers=headers)
    assert_refused(resp, 426, "upgrade_required")
    assert resp.header("sec-websocket-version") == "13", resp


# ---------------------------------------------------------------- 400


@pytest.mark.parametrize("headers", [
    {"Sec-WebSocket-Key": None},
    {"Sec-WebSocket-Key": "not base64!!"},
    {"Sec-WebSocket-Key": h.b64url(b"x" * 15)},  # not 16 bytes
    {"Sec-WebSocket-Key": "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eA=="},  # 26 bytes
    {"Sec-WebSocket-Protocol": "chat"},
    {"Sec-WebSocket-Protocol": "chat, superchat"},
], ids=["no-key", "key-not-base64", "key-15-bytes", "key-26-bytes", "proto-without-signal.v1",
        "protos-without-signal.v1"])
def test_bad_request_400(gateway, headers):
    resp = handshake(gateway, token=good_token(), headers=headers)
    assert_refused(resp, 400, "bad_request")


def test_bearer_subprotocol_without_signal_v1_is_400(gateway):
    resp = handshake(gateway, headers={"Sec-WebSocket-Protocol": "bearer." + good_token()})
    assert_refused(resp, 400, "bad_request")


def test_garbage_request_line_is_400(gateway):
    resp = h.http_exchange(gateway.host, gateway.port, b"HELLO THERE\r\n\r\n")
    assert resp.status == 400, resp


# ---------------------------------------------------------------- 401


def test_missing_token_401_without_error_attribute(gateway):
    resp = handshake(gateway)
    assert_401(resp, invalid_token=False)


def _now():
    return int(time.time())


def _invalid_tokens():
    other = jwt.encode(h.token_claims("alice", rooms=["*"]), "another-secret", algorithm="HS256")
    payload = h.token_claims("alice", rooms=["*"])
    return {
        "malformed": "abc.def",
        "garbage": "not-a-jwt",
        "two-parts": h.b64url(b'{"alg":"HS256"}') + "." + h.b64url(json.dumps(payload)),
        "bad-signature": other,
        "tampered-payload": (lambda t: t.split(".")[0] + "." + h.b64url(json.dumps(
            dict(payload, sub="mallory"))) + "." + t.split(".")[2])(make_token("alice", rooms=["*"])),
        "alg-none": h.hand_made_token({"alg": "none", "typ": "JWT"}, payload, signature=b""),
        "alg-none-with-sig": h.hand_made_token({"alg": "none", "typ": "JWT"}, payload,
                                               signature=b"\x00" * 32),
        "alg-HS512": jwt.encode(payload, h.JWT_SECRET, algorithm="HS512"),
        "alg-HS384": jwt.encode(payload, h.JWT_SECRET, algorithm="HS384"),
        "expired": make_token("alice", rooms=["*"], exp_in=-120),
        "nbf-future": make_token("alice", rooms=["*"], nbf=_now() + 120),
        "iat-future": make_token("alice", rooms=["*"], iat=_now() + 120),
        "no-exp": make_token("alice", rooms=["*"], exp_in=None),
        "no-sub": make_token(None, rooms=["*"]),
        "exp-string": make_token("alice", rooms=["*"], exp=str(_now() + 300)),
    }


@pytest.mark.parametrize("case", list(_invalid_tokens().keys()))
def test_invalid_token_401(gateway, case):
    token = _invalid_tokens()[case]
    resp = handshake(gateway, token=token)
    assert_401(resp, invalid_token=True, token=token)


def test_invalid_token_via_query_and_protocol_401(gateway):
    bad = make_token("alice", rooms=["*"], exp_in=-120)
    assert_401(handshake(gateway, path="/ws?access_token=" + bad))
    assert_401(handshake(gateway, headers={"Sec-WebSocket-Protocol": "signal.v1, bearer." + bad}))


@pytest.mark.parametrize("claims", [
    {"exp_in": -10},           # expired 10 s ago, inside the default 30 s leeway
    {"nbf": "+10"},            # valid in 10 s
    {"iat": "+10"},            # issued 10 s in the future
], ids=["exp-within-leeway", "nbf-within-leeway", "iat-within-leeway"])
def test_clock_leeway_default_30s(gateway, claims):
    kw = {}
    for k, v in claims.items():
        kw[k] = _now() + int(v) if isinstance(v, str) else v
    resp = handshake(gateway, token=make_token("alice", rooms=["*"], **kw))
    assert_101(resp)


async def test_established_connection_outlives_token_expiry(gateway_factory):
    gw = gateway_factory.start(env={"SIGNAL_JWT_LEEWAY_S": "0"})

    async with Clients() as c:
        a = await c.connect(gw.ws_url, make_token("alice", rooms=["*"], exp_in=2))
        await asyncio.sleep(3.5)
        # the token expired meanwhile; the connection lives on (§1)
        await a.join(new_room(), new_peer())
        # and a new handshake with it is refused
        assert_401(handshake(gw, token=make_token("alice", rooms=["*"], exp_in=-2)))


# ---------------------------------------------------------------- iss / aud


@pytest.fixture
def iss_aud_gateway(gateway_factory):
    return gateway_factory.start(env={"SIGNAL_JWT_ISSUER": "https://issuer.test",
                                      "SIGNAL_JWT_AUDIENCE": "signal-gateway"})


def test_issuer_audience_accepted(iss_aud_gateway):
    t = make_token("alice", rooms=["*"], iss="https://issuer.test", aud="signal-gateway")
    assert_101(handshake(iss_aud_gateway, token=t))


@pytest.mark.parametrize("claims", [
    {"iss": "https://evil.test", "aud": "signal-gateway"},
    {"iss": "https://issuer.test", "aud": "other-service"},
    {"aud": "signal-gateway"},
    {"iss": "https://issuer.test"},
], ids=["wrong-iss", "wrong-aud", "missing-iss", "missing-aud"])
def test_issuer_audience_rejected(iss_aud_gateway, claims):
    assert_401(handshake(iss_aud_gateway, token=make_token("alice", rooms=["*"], **claims)))


# ---------------------------------------------------------------- token sources


async def test_token_via_header_query_protocol(gateway):
    async with Clients() as c:
        room = new_room()
        for via in ("header", "query", "protocol"):
            cl = await c.connect(gateway.ws_url, make_token("u-" + via, rooms=[room]), via=via)
            await cl.join(room, new_peer())
            if via == "protocol":
                assert cl.ws.subprotocol == "signal.v1"
            else:
                assert cl.ws.subprotocol is None


@pytest.mark.parametrize("order", ["signal.v1, bearer.{t}", "bearer.{t}, signal.v1"])
def test_bearer_subprotocol_selects_signal_v1_and_is_never_echoed(gateway, order):
    t = good_token()
    key = h.new_ws_key()
    resp = handshake(gateway, key=key, headers={"Sec-WebSocket-Protocol": order.format(t=t)})
    assert_101(resp, key)
    assert resp.header_all("sec-websocket-protocol") == ["signal.v1"], resp
    raw_head = repr(resp.headers)
    assert "bearer" not in raw_head and t not in raw_head


def test_signal_v1_selected_with_header_token(gateway):
    resp = handshake(gateway, token=good_token(), headers={"Sec-WebSocket-Protocol": "signal.v1"})
    assert_101(resp)
    assert resp.header_all("sec-websocket-protocol") == ["signal.v1"]


def test_signal_v1_selected_among_other_offers(gateway):
    resp = handshake(gateway, token=good_token(),
                     headers={"Sec-WebSocket-Protocol": "chat, signal.v1"})
    assert_101(resp)
    assert resp.header_all("sec-websocket-protocol") == ["signal.v1"]


def test_precedence_header_decides_even_when_invalid(gateway):
    good = good_token()
    bad = "definitely.not.valid"
    # invalid header + valid query -> 401
    assert_401(handshake(gateway, token=bad, path="/ws?access_token=" + good))
    # invalid header + valid bearer subprotocol -> 401
    assert_401(handshake(gateway, token=bad,
                         headers={"Sec-WebSocket-Protocol": "signal.v1, bearer." + good}))
    # invalid bearer subprotocol + valid query -> 401
    assert_401(handshake(gateway, path="/ws?access_token=" + good,
                         headers={"Sec-WebSocket-Protocol": "signal.v1, bearer." + bad}))
    # valid header + invalid query -> 101 (the header decides)
    assert_101(handshake(gateway, token=good, path="/ws?access_token=" + bad))
    # valid bearer subprotocol + invalid query -> 101
    assert_101(handshake(gateway, path="/ws?access_token=" + bad,
                         headers={"Sec-WebSocket-Protocol": "signal.v1, bearer." + good}))


async def test_precedence_uses_the_deciding_tokens_claims(gateway):
    """The header's sub/rooms apply, not the query's."""
    room_h, room_q = new_room("h"), new_room("q")

    async with Clients() as c:
        cl = await c.connect(gateway.ws_url + "?access_token=" + make_token("q", rooms=[room_q]),
                             make_token("h", rooms=[room_h]), via="header")
        await cl.join(room_h, new_peer())
        await cl.send({"type": "join", "roomId": room_q, "peerId": new_peer(),
                       "correlationId": "q1"})
        await cl.expect_error("forbidden", cid="q1")


# ---------------------------------------------------------------- origins


@pytest.fixture
def origin_gateway(gateway_factory):
    return gateway_factory.start(env={
        "SIGNAL_ALLOWED_ORIGINS": "https://app.example,https://other.example:8443"})


@pytest.mark.parametrize("origin", ["https://evil.example", "http://app.example",
                                    "https://app.example.evil", "null"])
def test_origin_not_allowed_403(origin_gateway, origin):
    resp = handshake(origin_gateway, token=good_token(), headers={"Origin": origin})
    assert_refused(resp, 403, "origin_not_allowed")


@pytest.mark.parametrize("origin", ["https://app.example", "https://other.example:8443", None])
def test_origin_allowed_or_absent(origin_gateway, origin):
    resp = handshake(origin_gateway, token=good_token(), headers={"Origin": origin})
    assert_101(resp)


async def test_origin_allowed_websockets_client(origin_gateway):
    async with Clients() as c:
        cl = await c.connect(origin_gateway.ws_url, good_token(), origin="https://app.example")
        await cl.join(new_room(), new_peer())


# ---------------------------------------------------------------- RS256 / ES256


@pytest.fixture(scope="session")
def rsa_keys():
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return k, other


@pytest.fixture(scope="session")
def ec_keys():
    return ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())


def _pem_private(k):
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def _pem_public(k):
    return k.public_key().public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)


def _asym_gateway(factory, tmp_path, alg, key):
    pub = tmp_path / f"{alg}-public.pem"
    pub.write_bytes(_pem_public(key))
    gw = factory.start(env={"SIGNAL_JWT_ALG": alg, "SIGNAL_JWT_PUBLIC_KEY": str(pub),
                            "SIGNAL_JWT_SECRET": None})
    return gw, pub.read_bytes()


async def test_rs256_gateway(gateway_factory, tmp_path, rsa_keys, ec_keys):
    key, other = rsa_keys
    gw, pub_pem = _asym_gateway(gateway_factory, tmp_path, "RS256", key)
    payload = h.token_claims("alice", rooms=["*"])
    assert_101(handshake(gw, token=jwt.encode(payload, _pem_private(key), algorithm="RS256")))
    # same key, another RSA algorithm: only the configured alg is accepted
    assert_401(handshake(gw, token=jwt.encode(payload, _pem_private(key), algorithm="RS512")))
    assert_401(handshake(gw, token=jwt.encode(payload, _pem_private(key), algorithm="PS256")))
    # another key
    assert_401(handshake(gw, token=jwt.encode(payload, _pem_private(other), algorithm="RS256")))
    # HS256 with the shared test secret
    assert_401(handshake(gw, token=make_token("alice", rooms=["*"])))
    # alg confusion: HS256 with the public key PEM as the HMAC secret
    for secret in (pub_pem, pub_pem.strip()):
        t = h.hand_made_token({"alg": "HS256", "typ": "JWT"}, payload, hmac_key=secret)
        assert_401(handshake(gw, token=t))
    # ES256
    assert_401(handshake(gw, token=jwt.encode(payload, _pem_private(ec_keys[0]), algorithm="ES256")))
    # none
    assert_401(handshake(gw, token=h.hand_made_token({"alg": "none"}, payload)))
    # expiry still checked
    expired = h.token_claims("alice", rooms=["*"], exp_in=-120)
    assert_401(handshake(gw, token=jwt.encode(expired, _pem_private(key), algorithm="RS256")))

    async with Clients() as c:
        cl = await c.connect(gw.ws_url, jwt.encode(payload, _pem_private(key), algorithm="RS256"))
        await cl.join(new_room(), new_peer())


async def test_es256_gateway(gateway_factory, tmp_path, ec_keys, rsa_keys):
    key, other = ec_keys
    gw, pub_pem = _asym_gateway(gateway_factory, tmp_path, "ES256", key)
    payload = h.token_claims("alice", rooms=["*"])
    assert_101(handshake(gw, token=jwt.encode(payload, _pem_private(key), algorithm="ES256")))
    assert_401(handshake(gw, token=jwt.encode(payload, _pem_private(other), algorithm="ES256")))
    assert_401(handshake(gw, token=jwt.encode(payload, _pem_private(rsa_keys[0]), algorithm="RS256")))
    assert_401(handshake(gw, token=make_token("alice", rooms=["*"])))
    t = h.hand_made_token({"alg": "HS256", "typ": "JWT"}, payload, hmac_key=pub_pem)
    assert_401(handshake(gw, token=t))

    async with Clients() as c:
        cl = await c.connect(gw.ws_url, jwt.encode(payload, _pem_private(key), algorithm="ES256"),
                             via="protocol")
        await cl.join(new_room(), new_peer())


# ---------------------------------------------------------------- TLS


async def test_wss_with_self_signed_cert(gateway_factory):
    gw = gateway_factory.start(tls=True)
    assert gw.ws_url.startswith("wss://")
    key = h.new_ws_key()
    resp = handshake(gw, token=good_token(), key=key)
    assert_101(resp, key)
    assert_401(handshake(gw, token="bad.token.here"))

    async with Clients() as c:
        room = new_room()
        pa, pb = new_peer(), new_peer()
        a = await c.connect(gw.ws_url, make_token("alice", rooms=[room]), name="a")
        b = await c.connect(gw.ws_url, make_token("bob", rooms=[room]), name="b", via="protocol")
        await a.join(room, pa)
        await b.join(room, pb)
        await a.recv_type("peer_joined", peerId=pb)
        await a.send(h.offer(room, pa, pb, cid="tls-1"))
        m = await b.recv_type("relay")
        assert m["inner"] == h.inner_of(h.offer(room, pa, pb)) and m["correlationId"] == "tls-1"


def test_plain_http_to_tls_listener_is_not_upgraded(gateway_factory):
    gw = gateway_factory.start(tls=True)
    s = h.open_socket(gw.host, gw.port, tls=False, timeout=5)
    try:
        s.sendall(h.upgrade_request(gw.host, gw.port, token=good_token()))
        s.settimeout(5)
        try:
            data = s.recv(4096)
        except (ConnectionError, TimeoutError, OSError):
            data = b""
        assert not data.startswith(b"HTTP/1.1 101"), data
    finally:
        s.close()
    # and the listener still works for TLS clients
    assert_101(handshake(gw, token=good_token()))


# ---------------------------------------------------------------- configuration


def test_missing_jwt_secret_is_a_startup_error(gateway_factory):
    proc, log, _ = gateway_factory.spawn(env={"SIGNAL_JWT_SECRET": None})
    try:
        rc = proc.wait(timeout=10)
    except Exception:
        raise AssertionError("gateway without a JWT secret or key kept running "
                             "(must be a startup error, not an insecure mode)")
    assert rc != 0, log.read_text(errors="replace")


# ---------------------------------------------------------------- 503


def test_over_the_connection_cap_503(gateway_factory):
    gw = gateway_factory.start(env={"SIGNAL_MAX_CONNECTIONS": "2"})
    first = h.RawWS.connect(gw, good_token())
    second = h.RawWS.connect(gw, good_token())
    try:
        assert_refused(handshake(gw, token=good_token()), 503, "unavailable")
        # a slot frees up when a connection goes
        first.send_close(1000)
        first.wait_eof(3)

        def try_again():
            r = handshake(gw, token=good_token())
            return r if r.status == 101 else None
        h.wait_until(try_again, 3, what="a handshake to succeed after a connection closed")
    finally:
        first.close()
        second.close()
