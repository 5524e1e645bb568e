# SPDX-License-Identifier: Apache-2.0
"""E2E 1: two aiortc peers (Debian's python3-aiortc) call each other through
the gateway, each over its own WebSocket, with trickle ICE.

aiortc gathers all its candidates during setLocalDescription() and bundles
them into the SDP. Each side splits them out: the offer/answer goes through
the gateway without any `a=candidate`/`a=end-of-candidates` line, and every
candidate follows as its own `candidate` message (RTCIceCandidate.toJSON()
form: `candidate`, `sdpMid`, `sdpMLineIndex`), then an end-of-candidates
(`candidate: ""`). The receiving side adds them one by one
(addIceCandidate), so ICE can only succeed through the candidate relays.
A data channel opens and a message goes each way.

The gateway runs with its defaults (rate limits, message caps, heartbeats,
resumption on). WebRTC traffic stays on 127.0.0.1: aioice skips loopback
when it lists host addresses, so the test lists 127.0.0.1 for it, and no
STUN server is configured (aiortc's default would be a public one).

Run: /usr/bin/python3 -m pytest tests/e2e/test_aiortc.py (needs a built
gateway: $SG_GATEWAY_BIN or build/signal-gateway, and redis-server).
"""

import asyncio
import importlib.util
import json
import pathlib
import sys
import time
import uuid

import pytest

HERE = pathlib.Path(__file__).resolve().parent
INTEGRATION = HERE.parent / "integration"
sys.path.insert(0, str(INTEGRATION))
import sg_helpers as h  # noqa: E402

aiortc = pytest.importorskip("aiortc", reason="python3-aiortc is not installed (apt-get install python3-aiortc)")
import aioice.ice  # noqa: E402
import websockets  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.sdp import candidate_from_sdp  # noqa: E402

pytestmark = pytest.mark.e2e


def _load_integration_conftest():
    """The integration suite's process fixtures (RedisServer, GatewayFactory), loaded
    under a name of their own so that they are not registered as a second conftest."""
    spec = importlib.util.spec_from_file_location("sg_integration_fixtures", INTEGRATION / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_fx = _load_integration_conftest()
tls_files = _fx.tls_files  # session fixture: a self-signed cert for 127.0.0.1


@pytest.fixture
def redis(tmp_path):
    r = _fx.RedisServer(tmp_path).start()
    yield r
    r.stop()


@pytest.fixture
def gateway(redis, tmp_path, tls_files):
    f = _fx.GatewayFactory(redis, tmp_path, tls_files)
    # The integration suite turns §9 resumption off for its own checks; the
    # end-to-end tests run the defaults, so the variable is removed (None).
    gw = f.start(env={"SIGNAL_RESUME_MS": None}, tls=True)
    yield gw
    problems = f.teardown()
    assert not problems, "; ".join(problems) + "\n" + gw.log_tail(40)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


# --------------------------------------------------------------------------
# SDP <-> trickle ICE


def split_candidates(sdp):
    """Returns (sdp without candidate lines, [candidate init dicts]): one init per
    `a=candidate` line, in the RTCIceCandidate.toJSON() form, then one
    end-of-candidates ({candidate: ""}) per m-section that had `a=end-of-candidates`."""
    lines = sdp.split("\r\n")
    out, cands, ends = [], [], []
    mline = -1
    for line in lines:
        if line.startswith("m="):
            mline += 1
        if line.startswith("a=candidate:"):
            cands.append([line[2:], mline])
            continue
        if line == "a=end-of-candidates":
            ends.append(mline)
            continue
        out.append(line)
    # a=mid may come after the candidates: resolve mids per m-section afterwards
    mids = []
    for line in out:
        if line.startswith("m="):
            mids.append(None)
        elif line.startswith("a=mid:") and mids:
            mids[-1] = line[len("a=mid:"):]
    inits = [{"candidate": c, "sdpMid": mids[i], "sdpMLineIndex": i} for c, i in cands]
    inits += [{"candidate": "", "sdpMid": mids[i], "sdpMLineIndex": i} for i in ends]
    return "\r\n".join(out), inits


def ice_transports(pc, mid):
    """The RTCIceTransport(s) serving media section `mid` (one, with BUNDLE)."""
    found = []
    for t in pc.getTransceivers():
        if t.mid == mid:
            found.append(t.receiver.transport.transport)
    if pc.sctp is not None and pc.sctp.mid == mid:
        found.append(pc.sctp.transport.transport)
    return found


# --------------------------------------------------------------------------
# one peer: a WebSocket to the gateway and an RTCPeerConnection


class Peer:
    def __init__(self, name, gw, token, room):
        self.name = name
        self.gw = gw
        self.token = token
        self.room = room
        self.peer_id = str(uuid.uuid4())
        self.remote = None
        self.ws = None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.events = asyncio.Queue()  # membership events and errors
        self.relays = asyncio.Queue()  # relay.inner, in arrival order
        self.received_relays = []
        self.errors = []
        self.sent = []
        self.channel = None
        self.messages = asyncio.Queue()
        self.channel_open = asyncio.Event()
        self.connected = asyncio.Event()
        self._reader = None
        self._handler = None

        @self.pc.on("connectionstatechange")
        def _state():
            if self.pc.connectionState == "connected":
                self.connected.set()

        @self.pc.on("datachannel")
        def _dc(channel):
            self._wire(channel)

    def _wire(self, channel):
        self.channel = channel
        h.watch_data_channel(channel, self.channel_open, self.messages)

    async def connect(self):
        self.ws = await websockets.connect(
            self.gw.ws_url, subprotocols=["signal.v1", "bearer." + self.token],
            ssl=h.insecure_ssl_context(), open_timeout=5)
        assert self.ws.subprotocol == "signal.v1"
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg["type"] == "relay":
                self.received_relays.append(msg)
                self.relays.put_nowait(msg["inner"])
            else:
                if msg["type"] == "error":
                    self.errors.append(msg)
                self.events.put_nowait(msg)

    async def send(self, msg):
        self.sent.append(msg)
        await self.ws.send(json.dumps(msg))

    async def expect(self, type_, timeout=10):
        while True:
            msg = await asyncio.wait_for(self.events.get(), timeout)
            if msg["type"] == type_:
                return msg
            assert msg["type"] != "error", f"{self.name}: {msg}"

    async def join(self):
        await self.send({"type": "join", "roomId": self.room, "peerId": self.peer_id})
        return await self.expect("joined")

    async def send_description(self):
        """Sends pc.localDescription without candidates, then each candidate alone."""
        sdp, inits = split_candidates(self.pc.localDescription.sdp)
        assert "a=candidate" not in sdp and "a=end-of-candidates" not in sdp
        assert any(i["candidate"] for i in inits), f"{self.name}: aiortc gathered no candidate"
        await self.send({"type": self.pc.localDescription.type, "roomId": self.room,
                         "from": self.peer_id, "to": self.remote, "sdp": sdp})
        for init in inits:
            await self.send({"type": "candidate", "roomId": self.room, "from": self.peer_id,
                             "to": self.remote, "candidate": init})
        return len([i for i in inits if i["candidate"]])

    def start_handling(self):
        self._handler = asyncio.ensure_future(self._handle())

    async def _handle(self):
        """Applies relays one at a time, in order (offer/answer, then candidates)."""
        while True:
            inner = await self.relays.get()
            if inner["type"] in ("offer", "answer"):
                assert "a=candidate" not in inner["sdp"], "candidates arrived inside the SDP"
                await self.pc.setRemoteDescription(RTCSessionDescription(inner["sdp"], inner["type"]))
                if inner["type"] == "offer":
                    await self.pc.setLocalDescription(await self.pc.createAnswer())
                    await self.send_description()
            elif inner["type"] == "candidate":
                c = inner["candidate"]
                if c["candidate"] == "":
                    for transport in ice_transports(self.pc, c.get("sdpMid")):
                        await transport.addRemoteCandidate(None)
                    continue
                cand = candidate_from_sdp(c["candidate"].split(":", 1)[1])
                cand.sdpMid = c.get("sdpMid")
                cand.sdpMLineIndex = c.get("sdpMLineIndex")
                await self.pc.addIceCandidate(cand)

    async def close(self):
        for task in (self._handler, self._reader):
            if task is not None:
                task.cancel()
        await self.pc.close()
        if self.ws is not None:
            await self.ws.close()


async def _call(gw):
    room = h.new_room("aiortc")
    alice = Peer("alice", gw, h.make_token("alice", rooms=[room]), room)
    bob = Peer("bob", gw, h.make_token("bob", rooms=[room]), room)
    try:
        await alice.connect()
        await bob.connect()
        assert (await alice.join())["peers"] == []
        assert (await bob.join())["peers"] == [alice.peer_id]
        assert (await alice.expect("peer_joined"))["peerId"] == bob.peer_id
        alice.remote, bob.remote = bob.peer_id, alice.peer_id
        alice.start_handling()
        bob.start_handling()

        t0 = time.monotonic()
        # alice offers: an audio m-section and the data channel, BUNDLEd.
        alice.pc.addTransceiver("audio", direction="recvonly")
        alice._wire(alice.pc.createDataChannel("chat"))
        await alice.pc.setLocalDescription(await alice.pc.createOffer())
        alice_cands = await alice.send_description()

        await asyncio.wait_for(alice.connected.wait(), 20)
        await asyncio.wait_for(bob.connected.wait(), 20)
        await asyncio.wait_for(alice.channel_open.wait(), 20)
        await asyncio.wait_for(bob.channel_open.wait(), 20)
        connect_s = time.monotonic() - t0

        alice.channel.send("hello bob, from alice (aiortc)")
        assert await asyncio.wait_for(bob.messages.get(), 10) == "hello bob, from alice (aiortc)"
        bob.channel.send("hi alice, bob here (aiortc)")
        assert await asyncio.wait_for(alice.messages.get(), 10) == "hi alice, bob here (aiortc)"

        # Every candidate went through the gateway as its own message.
        def relayed(peer, type_):
            return [r["inner"] for r in peer.received_relays if r["inner"]["type"] == type_]
        bob_cands = len([c for c in relayed(alice, "candidate") if c["candidate"]["candidate"]])
        assert len(relayed(bob, "offer")) == 1 and len(relayed(alice, "answer")) == 1
        assert len([c for c in relayed(bob, "candidate") if c["candidate"]["candidate"]]) == alice_cands >= 1
        assert bob_cands >= 1
        for peer in (alice, bob):
            for c in relayed(peer, "candidate"):
                assert set(c["candidate"]) <= {"candidate", "sdpMid", "sdpMLineIndex", "usernameFragment"}
        # The relays' seq (resumption is on) counts up by one per relay.
        seqs = [r["seq"] for r in bob.received_relays]
        assert seqs == list(range(1, len(seqs) + 1))
        assert alice.pc.connectionState == bob.pc.connectionState == "connected"
        # WebRTC traffic stayed on loopback.
        for peer in (alice, bob):
            local = peer.pc.sctp.transport.transport.iceGatherer.getLocalCandidates()
            assert local and {c.ip for c in local} == {"127.0.0.1"}, local
        # Nothing tripped a limit or failed validation.
        assert alice.errors == [] and bob.errors == []
        print(f"\n# aiortc call connected in {connect_s * 1000:.0f} ms; candidates alice->bob {alice_cands}, "
              f"bob->alice {bob_cands}; relays to bob {len(bob.received_relays)}, to alice {len(alice.received_relays)}")
    finally:
        await alice.close()
        await bob.close()


def test_two_aiortc_peers_connect_with_trickled_candidates(gateway):
    h.arun(_call(gateway), timeout=60)
