# SPDX-License-Identifier: Apache-2.0
"""docs/protocol.md §9 TURN credentials: joined/resumed carry iceServers in
coturn's shared-secret (TURN REST API) scheme; a real coturn (Debian's
`coturn`, started here on loopback) accepts them, refuses expired ones, and
two aiortc peers with relay-only ICE connect through it.

Needs the Debian packages coturn and python3-aiortc (deploy/deps.sh).
"""

import asyncio
import re
import shutil
import socket
import subprocess
import time

import pytest

import sg_helpers as h
from sg_helpers import Clients, arun, new_peer, new_room, tok

import ext_helpers as x
from ext_helpers import RESUME_ENV, resume_msg

SECRET = "turn-shared-secret-for-tests-0c1d"


def turn_env(urls, ttl=None, **extra):
    env = dict(RESUME_ENV, SIGNAL_TURN_SECRET=SECRET, SIGNAL_TURN_URLS=urls, **extra)
    if ttl is not None:
        env["SIGNAL_TURN_TTL_S"] = ttl
    return env


def check_ice_servers(msg, sub, urls, ttl, now):
    servers = msg.get("iceServers")
    assert isinstance(servers, list) and len(servers) == 1, msg
    s = servers[0]
    assert set(s) == {"urls", "username", "credential"}, s
    assert s["urls"] == urls, s
    m = re.fullmatch(r"(\d+):([0-9a-f]+)", s["username"])
    assert m, s["username"]
    assert sub not in s["username"], "the raw sub must not be in the TURN username"
    assert abs(int(m.group(1)) - (now + ttl)) <= 3, (s["username"], now + ttl)
    # coturn's use-auth-secret scheme: base64(HMAC-SHA1(secret, username))
    assert s["credential"] == x.turn_credential(SECRET, s["username"]), s
    return s


# ====================================================================== the credentials


async def test_ice_servers_in_joined_and_resumed(gateway_factory, redis):
    urls_env = " turn:127.0.0.1:3478?transport=udp , turn:127.0.0.1:3478?transport=tcp,stun:127.0.0.1:3478 "
    urls = ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp", "stun:127.0.0.1:3478"]
    g1, g2 = gateway_factory(2, env=turn_env(urls_env, ttl=120))
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        a = await c.member(g1, "alice", room, pa)
        b = await c.member(g1, "bob", room, pb)
        now = int(time.time())
        sa = check_ice_servers(a.joined[room], "alice", urls, 120, now)
        sb = check_ice_servers(b.joined[room], "bob", urls, 120, now)
        # the hash part names the user, the same on every node and join
        ua, ub = sa["username"].split(":")[1], sb["username"].split(":")[1]
        assert ua != ub
        room2 = new_room()
        a2 = await c.member(g2, "alice", room2, new_peer(), name="a2")
        s2 = check_ice_servers(a2.joined[room2], "alice", urls, 120, int(time.time()))
        assert s2["username"].split(":")[1] == ua
        # resumed carries fresh ones too
        await x.lose(b, redis, room, pb)
        b2 = await c.connect(g2.ws_url, tok("bob"), name="b2")
        await b2.send(resume_msg(room, pb, b.joined[room]["resumeToken"], 0))
        r = await b2.recv_type("resumed")
        check_ice_servers(r, "bob", urls, 120, int(time.time()))


async def test_no_ice_servers_without_turn_config(gateway):
    async with Clients() as c:
        a = await c.connect(gateway.ws_url, tok("alice"), name="a")
        j = await a.join(new_room(), new_peer())
        assert "iceServers" not in j, j


@pytest.mark.parametrize("env", [{"SIGNAL_TURN_SECRET": SECRET}, {"SIGNAL_TURN_URLS": "turn:127.0.0.1:3478"},
                                 {"SIGNAL_TURN_SECRET": SECRET, "SIGNAL_TURN_URLS": "turn:x", "SIGNAL_TURN_TTL_S": "10"}])
def test_turn_config_errors_are_startup_errors(gateway_factory, env):
    proc, log_path, _ = gateway_factory.spawn(env=env)
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gateway started with {env}")
    assert rc != 0
    assert "SIGNAL_TURN" in log_path.read_text(errors="replace")


# ====================================================================== a real coturn


class Coturn:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.proc = None
        self.port = None
        self.log_path = None
        self.relay_ports = range(0)

    def start(self):
        exe = shutil.which("turnserver")
        if not exe:
            pytest.fail("coturn's turnserver is not installed (apt-get install coturn)", pytrace=False)
        last = ""
        for attempt in range(4):
            port = h.free_port(udp=True)
            lo = h.port_range(50)[0]
            self.log_path = self.tmp_path / f"coturn-{port}.log"
            cmd = [exe, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
                   "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=test",
                   "--no-tls", "--no-dtls", "--relay-ip=127.0.0.1", f"--min-port={lo}",
                   f"--max-port={lo + 49}", "--allow-loopback-peers", "--no-cli", f"--log-file={self.log_path}",
                   "--simple-log", f"--pidfile={self.tmp_path / f'turnserver-{port}.pid'}",
                   f"--userdb={self.tmp_path / f'turndb-{port}'}", "--no-multicast-peers"]
            with open(self.tmp_path / f"coturn-{port}.out", "wb") as outf:
                proc = subprocess.Popen(cmd, stdout=outf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=str(self.tmp_path))
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and proc.poll() is None:
                if _stun_binding_ok(port):
                    self.proc, self.port = proc, port
                    self.relay_ports = range(lo, lo + 50)
                    return self
                time.sleep(0.05)
            _stop(proc)
            last = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"turnserver did not start: {last}")

    def url(self, transport="udp"):
        return f"turn:127.0.0.1:{self.port}?transport={transport}"

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self):
        if self.proc is not None:
            _stop(self.proc)


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _stun_binding_ok(port):
    from aioice import stun
    req = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        try:
            s.sendto(bytes(req), (h.HOST, port))
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
    try:
        resp = stun.parse_message(data)
    except ValueError:
        return False
    return resp.transaction_id == req.transaction_id


def stun_allocate(port, username, password, timeout=3.0):
    """A raw TURN Allocate over UDP with long-term credentials (RFC 5766 §6,
    RFC 5389 §10.2): the unauthenticated request gets 401 with realm and nonce,
    the authenticated one gets the answer returned here: ("success",
    relayed address) or ("error", code)."""
    from aioice import stun
    from aioice.turn import make_integrity_key

    def transact(sock, msg):
        sock.sendto(bytes(msg), (h.HOST, port))
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            data, _ = sock.recvfrom(4096)
            resp = stun.parse_message(data)
            if resp.transaction_id == msg.transaction_id:
                return resp
            if time.monotonic() > deadline:
                raise TimeoutError("no STUN answer")

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((h.HOST, 0))
        req = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
        req.attributes["LIFETIME"] = 60
        req.attributes["REQUESTED-TRANSPORT"] = 0x11000000  # UDP
        first = transact(sock, req)
        assert first.message_class == stun.Class.ERROR, first
        assert first.attributes["ERROR-CODE"][0] == 401, first.attributes
        realm, nonce = first.attributes["REALM"], first.attributes["NONCE"]
        req2 = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
        req2.attributes["LIFETIME"] = 60
        req2.attributes["REQUESTED-TRANSPORT"] = 0x11000000
        req2.attributes["USERNAME"] = username
        req2.attributes["REALM"] = realm
        req2.attributes["NONCE"] = nonce
        req2.add_message_integrity(make_integrity_key(username, realm, password))
        resp = transact(sock, req2)
        if resp.message_class == stun.Class.RESPONSE:
            relayed = resp.attributes["XOR-RELAYED-ADDRESS"]
            # release the allocation
            rel = stun.Message(message_method=stun.Method.REFRESH, message_class=stun.Class.REQUEST)
            rel.attributes["LIFETIME"] = 0
            rel.attributes["USERNAME"] = username
            rel.attributes["REALM"] = realm
            rel.attributes["NONCE"] = nonce
            rel.add_message_integrity(make_integrity_key(username, realm, password))
            try:
                transact(sock, rel)
            except (OSError, TimeoutError):
                pass
            return "success", relayed
        return "error", resp.attributes.get("ERROR-CODE", (None, ""))[0]


@pytest.fixture
def coturn(tmp_path):
    t = Coturn(tmp_path).start()
    yield t
    t.stop()


async def _ice_server_from_join(gw, sub="alice"):
    async with Clients() as c:
        a = await c.connect(gw.ws_url, tok(sub), name=sub)
        j = await a.join(new_room(), new_peer())
        return j["iceServers"][0]


@pytest.mark.e2e
def test_coturn_accepts_the_credentials_and_refuses_expired_ones(gateway_factory, coturn):
    gw = gateway_factory.start(env=turn_env(coturn.url(), ttl=60))
    s = arun(_ice_server_from_join(gw), timeout=20)
    ok = stun_allocate(coturn.port, s["username"], s["credential"])
    assert ok[0] == "success", (ok, coturn.log()[-2000:])
    assert ok[1][0] == "127.0.0.1" and ok[1][1] in coturn.relay_ports, ok

    # the same scheme with an expiry in the past: refused
    hashed = s["username"].split(":", 1)[1]
    expired = f"{int(time.time()) - 60}:{hashed}"
    res = stun_allocate(coturn.port, expired, x.turn_credential(SECRET, expired))
    assert res == ("error", 401), (res, coturn.log()[-2000:])
    # a credential that does not match the username (another secret): refused
    forged = x.turn_credential("not-the-secret", s["username"])
    assert stun_allocate(coturn.port, s["username"], forged) == ("error", 401)
    # and a username whose expiry was changed after the fact: refused
    later = f"{int(time.time()) + 7200}:{hashed}"
    assert stun_allocate(coturn.port, later, s["credential"]) == ("error", 401)


# ----------------------------------------------------------------- two aiortc peers


def _strip_candidates(sdp):
    """SDP without its candidate lines (they travel as candidate messages)."""
    lines = [ln for ln in sdp.split("\r\n") if not ln.startswith("a=candidate:") and ln != "a=end-of-candidates"]
    return "\r\n".join(lines)


def _candidates(sdp):
    """[(mid, mline index, "candidate:...")] for the relay candidates of an SDP."""
    out, mid, idx = [], None, -1
    for ln in sdp.split("\r\n"):
        if ln.startswith("m="):
            idx += 1
            mid = None
        elif ln.startswith("a=mid:"):
            mid = ln[6:]
        elif ln.startswith("a=candidate:"):
            out.append((mid, idx, ln[2:]))
    return out


def _force_relay_only(pc):
    """aiortc 1.4 has no iceTransportPolicy: set aioice's transport policy on
    the gatherer so that only relay candidates are gathered and offered."""
    from aioice.ice import TransportPolicy
    conn = pc.sctp.transport.transport.iceGatherer._connection
    conn._transport_policy = TransportPolicy.RELAY


class RtcPeer:
    def __init__(self, client, room, me, other, ice_server, offerer):
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
        cfg = RTCConfiguration(iceServers=[RTCIceServer(urls=ice_server["urls"], username=ice_server["username"],
                                                        credential=ice_server["credential"])])
        self.pc = RTCPeerConnection(configuration=cfg)
        self.client, self.room, self.me, self.other = client, room, me, other
        self.offerer = offerer
        self.channel = None
        self.open = asyncio.Event()
        self.received = asyncio.Queue()
        self.sent_candidates = []
        if offerer:
            self._use(self.pc.createDataChannel("chat"))
            _force_relay_only(self.pc)
        else:
            @self.pc.on("datachannel")
            def on_dc(ch):
                self._use(ch)
                self.open.set()

    def _use(self, ch):
        self.channel = ch
        h.watch_data_channel(ch, self.open, self.received)

    async def _send_local(self, kind):
        sdp = self.pc.localDescription.sdp
        cands = [c for c in _candidates(sdp) if " typ relay" in c[2]]
        assert cands, f"{self.me}: no relay candidate gathered; SDP:\n{sdp}"
        assert all(" typ relay" in c[2] for c in _candidates(sdp)), f"non-relay candidates gathered:\n{sdp}"
        await self.client.send(h.offer(self.room, self.me, self.other, sdp=_strip_candidates(sdp), type_=kind))
        for mid, idx, line in cands:
            c = {"candidate": line, "sdpMid": mid, "sdpMLineIndex": idx}
            self.sent_candidates.append(line)
            await self.client.send(h.candidate(self.room, self.me, self.other, c))

    async def start(self):
        if self.offerer:
            await self.pc.setLocalDescription(await self.pc.createOffer())
            await self._send_local("offer")

    async def handle(self, msg):
        from aiortc import RTCSessionDescription
        from aiortc.sdp import candidate_from_sdp
        inner = msg["inner"]
        if inner["type"] in ("offer", "answer"):
            assert "a=candidate:" not in inner["sdp"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=inner["sdp"], type=inner["type"]))
            if inner["type"] == "offer":
                _force_relay_only(self.pc)
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                await self._send_local("answer")
        else:
            c = inner["candidate"]
            assert " typ relay" in c["candidate"], c
            cand = candidate_from_sdp(c["candidate"].split(":", 1)[1])
            cand.sdpMid = c.get("sdpMid")
            cand.sdpMLineIndex = c.get("sdpMLineIndex")
            await self.pc.addIceCandidate(cand)

    async def pump(self):
        while True:
            m = await self.client.recv_type("relay", timeout=60)
            await self.handle(m)

    def selected_pair(self):
        conn = self.pc.sctp.transport.transport._connection
        return conn._nominated.get(1)


@pytest.mark.e2e
@pytest.mark.async_timeout(45)
async def test_two_aiortc_peers_connect_relay_only_through_coturn(gateway_factory, coturn):
    gw = gateway_factory.start(env=turn_env(coturn.url(), ttl=300))
    room, pa, pb = new_room(), new_peer(), new_peer()

    async with Clients() as c:
        wb = await c.member(gw, "bob", room, pb)
        wa = await c.member(gw, "alice", room, pa)
        assert wa.joined[room]["peers"] == [pb]
        alice = RtcPeer(wa, room, pa, pb, wa.joined[room]["iceServers"][0], offerer=True)
        bob = RtcPeer(wb, room, pb, pa, wb.joined[room]["iceServers"][0], offerer=False)
        pumps = [asyncio.ensure_future(alice.pump()), asyncio.ensure_future(bob.pump())]
        try:
            await alice.start()
            opened = asyncio.ensure_future(asyncio.gather(alice.open.wait(), bob.open.wait()))
            await asyncio.wait([opened, *pumps], timeout=20, return_when=asyncio.FIRST_COMPLETED)
            for t in pumps:
                if t.done():
                    t.result()  # a signaling failure: raise it
            if not opened.done():
                opened.cancel()
                raise AssertionError(
                    f"no data channel within 20s: ICE {alice.pc.iceConnectionState}/"
                    f"{bob.pc.iceConnectionState}; coturn log:\n{coturn.log()[-3000:]}")
            alice.channel.send("hello from alice")
            assert await asyncio.wait_for(bob.received.get(), 10) == "hello from alice"
            await h.async_wait_until(lambda: bob.channel.readyState == "open", 5)
            bob.channel.send("hello from bob")
            assert await asyncio.wait_for(alice.received.get(), 10) == "hello from bob"
            # the path is TURN relay to TURN relay
            for p in (alice, bob):
                pair = p.selected_pair()
                assert pair is not None
                assert pair.local_candidate.type == "relay" and pair.remote_candidate.type == "relay", pair
                for cand in (pair.local_candidate, pair.remote_candidate):
                    # addresses that coturn allocated from its relay range
                    assert cand.host == "127.0.0.1" and cand.port in coturn.relay_ports, cand
            assert alice.sent_candidates and bob.sent_candidates
        finally:
            for t in pumps:
                t.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await asyncio.gather(alice.pc.close(), bob.pc.close(), return_exceptions=True)
