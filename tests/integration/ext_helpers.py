# SPDX-License-Identifier: Apache-2.0
"""Helpers for the docs/protocol.md §9 extension tests (resumption, receipts, TURN,
delivery-path probe, key rotation). Black-box like sg_helpers: sockets,
Redis reads, the admin endpoints, the gateway's log.
"""

import base64
import hashlib
import hmac
import json
import re
import secrets
import select
import socket
import threading
import time

import sg_helpers as h

# Resumption on, rate limits off (tests that push many relays quickly).
RESUME_ENV = dict(h.NO_RATE_LIMITS, SIGNAL_RESUME_MS="30000")


def buf_key(room, peer):
    return f"room:{{{room}}}:buf:{peer}"


def seq_key(room):
    return f"room:{{{room}}}:seq"


def in_grace(redis, room, peer):
    m = h.member_record(redis, room, peer)
    return bool(m) and m.get("conn") == "" and "grace" in m


async def wait_in_grace(redis, room, peer, timeout=5.0):
    """Until the gateway noticed the lost connection and Redis holds the
    member in its grace period."""
    await h.async_wait_until(lambda: in_grace(redis, room, peer), timeout, 0.02,
                             what=f"{peer} in its grace period in Redis (record: "
                                  f"{h.member_record(redis, room, peer)})")


def buffered(redis, room, peer):
    """[(seq, frame dict, frame bytes)] of a peer's resumption buffer (entry
    ids are "<byte offset>-<seq>", lua/lib.lua). The stored frame has no
    "seq" (the target's gateway puts it in): the dict gets it from the id,
    as the client would see it; the size is the stored one."""
    out = []
    for entry_id, fields in redis("XRANGE", buf_key(room, peer), "-", "+"):
        d = dict(zip(fields[0::2], fields[1::2]))
        seq, frame = int(entry_id.split("-")[1]), json.loads(d["f"])
        assert "seq" not in frame, f"a buffered frame with a seq: {d['f']}"
        out.append((seq, dict(frame, seq=seq), len(d["f"].encode())))
    return out


def replayable(redis, room, peer, max_count, max_bytes):
    """The part of a peer's buffer a resume replays (lua/lib.lua
    buffered_after): Redis trims lazily (whole stream nodes, the byte cap
    every few relays), the caps hold exactly at replay: the newest
    max_count entries, of those the ones starting at or after the end
    offset minus max_bytes, the newest always. Same shape as buffered()."""
    ids = [e[0] for e in redis("XRANGE", buf_key(room, peer), "-", "+")]
    entries = buffered(redis, room, peer)[-max_count:]
    starts = [int(i.split("-")[0]) for i in ids][-max_count:]
    stop = int(redis("HGET", seq_key(room), "b:" + peer) or 0)
    keep = [e for e, st in zip(entries, starts) if st >= stop - max_bytes]
    return keep or entries[-1:]


def buffered_bytes_accounted(redis, room, peer):
    """The bytes the buffer's byte count says it holds: the end offset
    (b:<peer>) minus the offset of its oldest entry."""
    first = redis("XRANGE", buf_key(room, peer), "-", "+", "COUNT", 1)
    if not first:
        return 0
    return int(redis("HGET", seq_key(room), "b:" + peer)) - int(first[0][0].split("-")[0])


ROOM_TTL_MS = 600_000  # SG_ROOM_TTL_MS (include/sg/ops.h): how long a room's keys live unrenewed


def resume_msg(room, peer, token, last_seq, cid=None):
    m = {"type": "resume", "roomId": room, "peerId": peer, "resumeToken": token, "lastSeq": last_seq}
    if cid is not None:
        m["correlationId"] = cid
    return m


def random_resume_token():
    return base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")


def cand(i, pad=0):
    """A candidate whose content names its index (and optionally padded, for
    the byte cap). No '/' so frames re-encode byte for byte."""
    c = h.ice(i)
    if pad:
        c["candidate"] += " " + "x" * pad
    return c


def check_relay_for(msg, room, frm, to, i, pad=0):
    """msg is the relay of candidate i from frm to to (h.candidate with cand(i, pad))."""
    assert msg.get("type") == "relay", msg
    assert msg.get("inner") == h.inner_of(h.candidate(room, frm, to, cand(i, pad))), msg
    assert "ack" not in msg["inner"], msg


def check_candidate_relays(msgs, room, frm, to, first_seq, pad=0):
    """msgs are the relays of candidates first_seq-1, first_seq, ... in order,
    with seq first_seq, first_seq+1, ... (contiguous) and matching content."""
    for k, m in enumerate(msgs):
        seq = first_seq + k
        assert m.get("seq") == seq, f"relay #{k}: seq {m.get('seq')}, expected {seq}: {m}"
        check_relay_for(m, room, frm, to, seq - 1, pad)
        assert m.get("correlationId") == f"c{seq - 1}", m


# --------------------------------------------------------------------------
# resumption scenarios, written from the clients' side


async def bob_then_alice(c, g_bob, g_alice, room, pb, pa):
    """bob joins room as pb on g_bob, then alice as pa on g_alice (so no relay
    to bob comes before his join): (b, a, bob's resume token)."""
    b = await c.member(g_bob, "bob", room, pb)
    a = await c.member(g_alice, "alice", room, pa)
    return b, a, b.joined[room]["resumeToken"]


async def lose(client, redis, room, peer):
    """The client's TCP connection drops without a close frame; returns once
    the gateway noticed and Redis holds peer in its grace period."""
    client.abort()
    await wait_in_grace(redis, room, peer)


async def send_candidates(sender, room, frm, to, indices, pad=0, ack=False):
    """Candidate cand(i, pad) with correlationId c<i> for each i, in order;
    with ack, each asks for a receipt (not read here)."""
    for i in indices:
        m = h.candidate(room, frm, to, cand(i, pad), cid=f"c{i}")
        await sender.send(dict(m, ack=True) if ack else m)


async def send_held(sender, room, frm, to, indices, pad=0):
    """send_candidates to a peer in its grace period: every receipt must say
    "buffered"."""
    await send_candidates(sender, room, frm, to, indices, pad, ack=True)
    for i in indices:
        ack = await sender.recv_type("ack", correlationId=f"c{i}")
        assert ack["status"] == "buffered", ack


async def recv_candidate_relays(client, room, frm, to, first_seq, n, pad=0):
    """The next n relays to client are candidates first_seq-1, ... with seq
    first_seq, ... (check_candidate_relays); returns them."""
    got = [await client.recv_type("relay") for _ in range(n)]
    check_candidate_relays(got, room, frm, to, first_seq, pad)
    return got


# --------------------------------------------------------------------------
# admin endpoints


def metric(gw, name):
    """Value of an unlabelled metric (any prefix), or None."""
    status, body = h.http_status(gw.admin_url + "/metrics", timeout=2)
    assert status == 200, status
    for line in body.decode().splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)\s+(\S+)$", line)
        if m and (m.group(1) == name or m.group(1).endswith("_" + name)):
            return float(m.group(2))
    return None


def log_events(gw):
    return h.log_events(gw.log_text())


def wait_log_event(gw, event, timeout=5.0, after=0):
    """The first log line with this event among lines after index `after`."""
    def find():
        evs = log_events(gw)[after:]
        for e in evs:
            if e.get("event") == event:
                return e
        return None
    return h.wait_until(find, timeout, what=f"log event {event} from {gw.name}; tail:\n{gw.log_tail(15)}")


# --------------------------------------------------------------------------
# a TCP proxy in front of Redis that can wedge the gateway's subscriber
# connection (recognised by its CLIENT SETNAME) while commands still flow


class RedisProxy:
    SUB_NAME = b"signal-gateway-sub"

    def __init__(self, upstream_port):
        self.upstream = (h.HOST, upstream_port)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((h.HOST, 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.wedged = threading.Event()   # set: server->client bytes of sub connections are held back
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.socks = []
        self.states = []
        self.sub_conns = 0
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    @property
    def url(self):
        return f"redis://{h.HOST}:{self.port}/0"

    def _accept(self):
        while not self.stopping.is_set():
            r, _, _ = select.select([self.lsock], [], [], 0.1)
            if not r:
                continue
            try:
                c, _ = self.lsock.accept()
            except OSError:
                continue
            try:
                u = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                c.close()
                continue
            state = {"sub": False, "seen": b"", "wedged": False}
            with self.lock:
                self.socks += [c, u]
                self.states.append(state)
            for args in ((c, u, state, True), (u, c, state, False)):
                t = threading.Thread(target=self._pump, args=args, daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, src, dst, state, upstream):
        try:
            while not self.stopping.is_set():
                if not upstream and state["sub"] and (state["wedged"] or self.wedged.is_set()):
                    # hold the subscriber's replies and messages: a wedged
                    # subscription whose TCP connection stays up
                    time.sleep(0.02)
                    continue
                r, _, _ = select.select([src], [], [], 0.05)
                if not r:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                if upstream and not state["sub"]:
                    state["seen"] = (state["seen"] + data)[-4096:]
                    if self.SUB_NAME in state["seen"]:
                        state["sub"] = True
                        with self.lock:
                            self.sub_conns += 1
                dst.sendall(data)
        except (OSError, ValueError):
            pass  # the other direction's pump closed the sockets (ValueError: fd -1 in select)
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass

    def wedge_existing(self):
        """Wedge the subscriber connections open now; later ones flow."""
        with self.lock:
            for st in self.states:
                if st["sub"]:
                    st["wedged"] = True

    def close(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            for s in self.socks:
                try:
                    s.close()
                except OSError:
                    pass
        for t in self.threads:
            t.join(timeout=2)


# --------------------------------------------------------------------------
# JWKS


def b64u_int(n):
    return h.b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def rsa_key(kid):
    """(private key, public JWK per RFC 7517/7518) for RS256."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    return key, {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                 "n": b64u_int(pub.n), "e": b64u_int(pub.e)}


def ec_key(kid):
    """(private key, public JWK) for ES256 (P-256)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_numbers()
    return key, {"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
                 "x": h.b64url(pub.x.to_bytes(32, "big")), "y": h.b64url(pub.y.to_bytes(32, "big"))}


def write_atomically(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def signed_token(key, kid, alg, sub, rooms=("*",), exp_in=300):
    return h.sign_token(h.token_claims(sub, list(rooms), exp_in), key, alg, headers={"kid": kid})


# --------------------------------------------------------------------------
# coturn's shared-secret (TURN REST API) scheme


def turn_credential(secret, username):
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
