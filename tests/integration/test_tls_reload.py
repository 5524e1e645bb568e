# SPDX-License-Identifier: Apache-2.0
"""Issue 16: the public listener's certificate is reloaded on SIGHUP, as the
JWKS file is (certbot and cert-manager rotate files in place). Checked with
real wss clients (the `websockets` library over Python's ssl):

- a connection opened before the reload keeps its TLS session and keeps
  working (joins, relays both ways, peer events);
- handshakes after the reload present the new certificate;
- a certificate that does not load, or a key that does not match, keeps the
  old certificate (`tls.reload_failed` in the log) and the node keeps serving;
- `tls_certificate_expiry_timestamp_seconds` follows the certificate in use.
"""

import datetime
import ipaddress
import os
import signal
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import sg_helpers as h
from sg_helpers import Clients, arun, make_token, new_peer, new_room


def make_cert(days):
    """(cert PEM, key PEM, DER, not_after) of a self-signed cert for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    not_after = now + datetime.timedelta(days=days)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return (cert.public_bytes(serialization.Encoding.PEM), key_pem,
            cert.public_bytes(serialization.Encoding.DER), int(not_after.timestamp()))


def put(path, data):
    """Replaces a file the way rotation tools do: a new file renamed over it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def peer_cert(client):
    return client.ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)


def expiry_gauge(gw):
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=3) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("tls_certificate_expiry_timestamp_seconds "):
                return int(float(line.split()[1]))
    return None


def log_events(gw, name):
    return h.log_events(gw.log_text(), name)


def test_sighup_reloads_the_certificate_for_new_handshakes_only(gateway_factory, tmp_path):
    a_cert, a_key, a_der, a_until = make_cert(days=10)
    b_cert, b_key, b_der, b_until = make_cert(days=20)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    put(cert, a_cert)
    put(key, a_key)
    gw = gateway_factory.start(env={"SIGNAL_TLS_CERT": str(cert), "SIGNAL_TLS_KEY": str(key)})
    url = f"wss://{gw.host}:{gw.port}/ws"
    assert expiry_gauge(gw) == a_until
    ctx = h.insecure_ssl_context()  # the certificate is compared by its bytes below

    def sighup_and_wait(event, count):
        os.kill(gw.pid, signal.SIGHUP)
        h.wait_until(lambda: len(log_events(gw, event)) >= count, 10, what=f"{count} {event} line(s)")

    async def main():
        async with Clients() as c:
            room, pa, pb, pc = new_room(), new_peer(), new_peer(), new_peer()
            old = await c.connect(url, make_token("tls-old", rooms=["*"]), name="old", ssl=ctx)
            assert peer_cert(old) == a_der
            await old.join(room, pa)

            # Rotate: new files, SIGHUP. Handshakes from now on get B.
            put(cert, b_cert)
            put(key, b_key)
            sighup_and_wait("tls.reload", 1)
            new = await c.connect(url, make_token("tls-new", rooms=["*"]), name="new", ssl=ctx)
            assert peer_cert(new) == b_der
            await new.join(room, pb)
            # The connection from before the reload is untouched and works both ways.
            await old.recv_type("peer_joined", peerId=pb)
            await old.send(h.offer(room, pa, pb, cid="before-reload"))
            assert (await new.recv_type("relay"))["correlationId"] == "before-reload"
            await new.send(h.answer(room, pb, pa, cid="after-reload"))
            assert (await old.recv_type("relay"))["correlationId"] == "after-reload"
            assert peer_cert(old) == a_der

            # A certificate that does not parse, then a key of another
            # certificate: each reload fails and B stays.
            put(cert, b"-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
            sighup_and_wait("tls.reload_failed", 1)
            put(cert, b_cert)
            put(key, a_key)
            sighup_and_wait("tls.reload_failed", 2)
            third = await c.connect(url, make_token("tls-third", rooms=["*"]), name="third", ssl=ctx)
            assert peer_cert(third) == b_der
            await third.join(room, pc)
            await old.recv_type("peer_joined", peerId=pc)
            await new.recv_type("peer_joined", peerId=pc)
            await third.send(h.offer(room, pc, pa, cid="after-failed-reload"))
            assert (await old.recv_type("relay"))["correlationId"] == "after-failed-reload"
    arun(main(), timeout=60)

    ok = log_events(gw, "tls.reload")
    assert len(ok) == 1 and ok[0]["not_after"] == b_until, ok
    failed = log_events(gw, "tls.reload_failed")
    assert len(failed) == 2, failed
    assert "SIGNAL_TLS_CERT" in failed[0]["error"], failed[0]
    assert "SIGNAL_TLS_KEY" in failed[1]["error"], failed[1]
    assert expiry_gauge(gw) == b_until
    assert gw.running()


def test_sighup_without_tls_changes_nothing(gateway):
    """A plain ws:// node: SIGHUP reloads the JWT keys only, no TLS line."""
    os.kill(gateway.pid, signal.SIGHUP)
    h.wait_until(lambda: log_events(gateway, "auth.reload"), 10, what="auth.reload")
    assert not log_events(gateway, "tls.reload") and not log_events(gateway, "tls.reload_failed")
    assert expiry_gauge(gateway) is None
    assert gateway.readyz() == 200
