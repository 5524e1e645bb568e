// SPDX-License-Identifier: Apache-2.0
import { test, describe, beforeEach } from 'node:test';
import assert from 'node:assert/strict';

import { PeerLink, PeerRoom, isPolite, sdpSessionId } from '../peer.js';
import { SignalClient } from '../signal-client.js';
import { FakeRTCPeerConnection, FakeServer, until, tick, PEER_A, PEER_B, PEER_C } from '../testing/fakes.mjs';

const ROOM = 'room-1';

// CustomEvent is global from node 19 on; keep the tests runnable on node 18.
const DetailEvent =
  globalThis.CustomEvent ??
  class extends Event {
    constructor(type, init = {}) {
      super(type);
      this.detail = init.detail ?? null;
    }
  };

/**
 * Two signaling endpoints wired back to back: what one sends arrives at the
 * other as a `relay` event after `delayMs` — enough for both sides to have
 * made an offer before either offer arrives (deterministic glare).
 */
class LoopClient extends EventTarget {
  constructor(delayMs = 20) {
    super();
    this.delayMs = delayMs;
    this.partner = null;
    this.sent = [];
    this.connected = true;
  }

  on(type, fn) {
    const h = (e) => fn(e.detail, e);
    this.addEventListener(type, h);
    return () => this.removeEventListener(type, h);
  }

  _send(inner) {
    if (!this.connected) {
      const err = new Error('not connected');
      err.code = 'not_connected';
      throw err;
    }
    this.sent.push(inner);
    const partner = this.partner;
    setTimeout(() => {
      partner.dispatchEvent(new DetailEvent('relay', { detail: { roomId: inner.roomId, type: inner.type, from: inner.from, to: inner.to, inner } }));
    }, this.delayMs);
    return `c${this.sent.length}`;
  }

  offer(roomId, from, to, sdp) {
    return this._send({ type: 'offer', roomId, from, to, sdp });
  }

  answer(roomId, from, to, sdp) {
    return this._send({ type: 'answer', roomId, from, to, sdp });
  }

  candidate(roomId, from, to, candidate) {
    return this._send({ type: 'candidate', roomId, from, to, candidate });
  }
}

function addMedia(pc) {
  pc.addTrack({ kind: 'video', id: 'v' });
  pc.createDataChannel('chat', { negotiated: true, id: 0 });
}

function linkPair({ delayMs = 20, setup = addMedia, ...extra } = {}) {
  const ca = new LoopClient(delayMs);
  const cb = new LoopClient(delayMs);
  ca.partner = cb;
  cb.partner = ca;
  const opts = { roomId: ROOM, RTCPeerConnectionImpl: FakeRTCPeerConnection, setup, ...extra };
  const a = new PeerLink({ ...opts, client: ca, localPeerId: PEER_A, remotePeerId: PEER_B });
  const b = new PeerLink({ ...opts, client: cb, localPeerId: PEER_B, remotePeerId: PEER_A });
  const log = { a: [], b: [] };
  for (const [name, link] of [
    ['a', a],
    ['b', b],
  ]) {
    for (const type of ['glare', 'error', 'reset', 'connectionstatechange', 'closed']) {
      link.on(type, (d) => log[name].push({ type, ...d }));
    }
  }
  return { ca, cb, a, b, log };
}

describe('PeerLink', () => {
  beforeEach(() => {
    FakeRTCPeerConnection.instances.length = 0;
  });

  test('the peer with the smaller peerId is polite', () => {
    assert.equal(isPolite(PEER_A, PEER_B), true);
    assert.equal(isPolite(PEER_B, PEER_A), false);
    assert.equal(isPolite(PEER_A.toUpperCase(), PEER_B), true);
    const { a, b } = linkPair();
    assert.equal(a.polite, true);
    assert.equal(b.polite, false);
    a.close();
    b.close();
  });

  test('glare: both offer at once; the polite side rolls back and answers, the impolite side ignores; both connect', async () => {
    const { ca, cb, a, b, log } = linkPair();
    await until(() => a.connectionState === 'connected' && b.connectionState === 'connected', { what: 'both connected' });
    // Let the polite side's follow-up negotiation finish too.
    await until(() => a.pc.signalingState === 'stable' && b.pc.signalingState === 'stable' && a.pc.changes === a.pc.negotiated, {
      what: 'polite side renegotiated',
    });
    // Both made an offer before either arrived: real glare.
    assert.equal(ca.sent.find((m) => m.type === 'offer') !== undefined, true);
    assert.equal(cb.sent.find((m) => m.type === 'offer') !== undefined, true);
    assert.deepEqual(
      log.a.filter((e) => e.type === 'glare').map((e) => e.action),
      ['rollback'],
    );
    assert.deepEqual(
      log.b.filter((e) => e.type === 'glare').map((e) => e.action),
      ['ignore'],
    );
    assert.ok(a.pc.calls.includes('rollback'), 'polite pc rolled back');
    assert.ok(!b.pc.calls.includes('rollback'), 'impolite pc never rolls back');
    // The polite side answered the impolite offer; the impolite never answered the first polite offer.
    const aCalls = a.pc.calls;
    assert.ok(aCalls.indexOf('rollback') < aCalls.indexOf('srd:offer'), 'rollback before taking the remote offer');
    assert.ok(aCalls.indexOf('srd:offer') < aCalls.indexOf('sld:answer'));
    // The impolite side ignored the candidates of the offer it ignored: no error surfaced.
    assert.deepEqual(log.a.filter((e) => e.type === 'error'), []);
    assert.deepEqual(log.b.filter((e) => e.type === 'error'), []);
    a.close();
    b.close();
  });

  test('glare while the polite offer is still being set: it finishes, gathers, is not sent, then rolls back', async () => {
    // A long cap: the wait must end on the first candidate, not on the cap.
    const { ca, a, b, log } = linkPair({ delayMs: 1, rollbackWaitMs: 8000 });
    const started = Date.now();
    const remoteOffer = {
      type: 'offer',
      roomId: ROOM,
      from: PEER_B,
      to: PEER_A,
      sdp: 'v=0\r\no=- 99 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n',
    };
    b.close(); // a's partner is played by hand
    const pc = a.pc;
    const sld = pc.setLocalDescription.bind(pc);
    let injected = false;
    pc.setLocalDescription = (desc) => {
      const p = sld(desc);
      if (!desc && !injected) {
        injected = true; // the remote offer arrives while our own is in flight
        a.handleSignal(remoteOffer);
      }
      return p;
    };
    await until(() => ca.sent.some((m) => m.type === 'answer'), { what: 'answer', timeoutMs: 10000 });
    assert.ok(Date.now() - started < 4000, 'the first candidate ended the wait');
    assert.deepEqual(log.a.filter((e) => e.type === 'glare').map((e) => e.action), ['rollback']);
    const calls = pc.calls;
    assert.ok(calls.indexOf('gathered') >= 0 && calls.indexOf('gathered') < calls.indexOf('rollback'), `gathering began before the rollback: ${calls}`);
    assert.equal(pc.gatherBroken, false);
    const firstOffer = ca.sent.findIndex((m) => m.type === 'offer');
    const answer = ca.sent.findIndex((m) => m.type === 'answer');
    assert.ok(firstOffer === -1 || firstOffer > answer, 'the rolled-back offer was never sent');
    a.close();
  });

  test('trickle ICE: every local candidate is its own candidate message (toJSON fields), then one end-of-candidates', async () => {
    const { ca, a, b } = linkPair();
    await until(() => ca.sent.filter((m) => m.type === 'candidate').length >= 3, { what: 'candidates' });
    const cands = ca.sent.filter((m) => m.type === 'candidate');
    const firstGen = cands.slice(0, 3);
    assert.deepEqual(
      firstGen.map((m) => m.candidate),
      [
        { candidate: `candidate:1 1 udp 2122260223 192.0.2.${a.pc.n} 5001 typ host`, sdpMid: '0', sdpMLineIndex: 0, usernameFragment: `uf${a.pc.n}` },
        { candidate: `candidate:2 1 udp 2122260223 192.0.2.${a.pc.n} 5002 typ host`, sdpMid: '0', sdpMLineIndex: 0, usernameFragment: `uf${a.pc.n}` },
        { candidate: '' },
      ],
    );
    for (const m of cands) {
      assert.deepEqual(Object.keys(m).sort(), ['candidate', 'from', 'roomId', 'to', 'type']);
      assert.equal(m.from, PEER_A);
      assert.equal(m.to, PEER_B);
      assert.ok(!('address' in m.candidate), 'only toJSON() fields travel');
    }
    a.close();
    b.close();
  });

  test('end-of-candidates is sent once even when the stack reports it twice', () => {
    const c = new LoopClient();
    c.partner = new LoopClient();
    const link = new PeerLink({ client: c, roomId: ROOM, localPeerId: PEER_A, remotePeerId: PEER_B, RTCPeerConnectionImpl: FakeRTCPeerConnection });
    const fire = (candidate) => link.pc.onicecandidate({ candidate });
    const cand = { candidate: 'candidate:9 1 udp 1 192.0.2.9 9 typ host', sdpMid: '0', sdpMLineIndex: 0 };
    fire(cand);
    fire({ candidate: '', sdpMid: '0', sdpMLineIndex: 0 });
    fire(null);
    fire(cand); // a new gathering generation (ICE restart)
    fire(null);
    assert.deepEqual(
      c.sent.map((m) => m.candidate),
      [cand, { candidate: '', sdpMid: '0', sdpMLineIndex: 0 }, cand, { candidate: '' }],
    );
    link.close();
  });

  test('a remote candidate that cannot be added is an error when no offer is being ignored', async () => {
    const c = new LoopClient();
    c.partner = new LoopClient();
    const link = new PeerLink({ client: c, roomId: ROOM, localPeerId: PEER_A, remotePeerId: PEER_B, RTCPeerConnectionImpl: FakeRTCPeerConnection });
    const errors = [];
    link.on('error', (d) => errors.push(d));
    await link.handleSignal({ type: 'candidate', roomId: ROOM, from: PEER_B, to: PEER_A, candidate: { candidate: 'candidate:1 1 udp 1 192.0.2.1 1 typ host', sdpMid: '0' } });
    assert.equal(errors.length, 1);
    assert.equal(errors[0].error.name, 'InvalidStateError');
    // end-of-candidates failures are tolerated
    await link.handleSignal({ type: 'candidate', roomId: ROOM, from: PEER_B, to: PEER_A, candidate: { candidate: '' } });
    assert.equal(errors.length, 1);
    link.close();
  });

  test('an offer from a new remote session resets the connection and is answered from a fresh one', async () => {
    const { a, b, log } = linkPair();
    await until(() => a.connectionState === 'connected' && b.connectionState === 'connected', { what: 'connected' });
    const oldPc = b.pc;
    // a's side starts over with a brand-new RTCPeerConnection (e.g. a page that lost its state).
    a.reset('test');
    await until(() => b.pc !== oldPc, { what: 'b reset' });
    assert.equal(log.b.filter((e) => e.type === 'reset')[0].reason, 'remote-session-changed');
    assert.ok(oldPc.closed);
    await until(() => a.connectionState === 'connected' && b.connectionState === 'connected', { what: 'reconnected' });
    assert.equal(sdpSessionId(b.pc.remoteDescription.sdp), a.pc.sessionId);
    a.close();
    b.close();
  });

  test('recover() re-sends an answer whose send failed and restarts ICE', async () => {
    const { ca, cb, a, b } = linkPair();
    await until(() => a.connectionState === 'connected' && b.connectionState === 'connected', { what: 'connected' });
    await until(() => a.pc.signalingState === 'stable' && b.pc.signalingState === 'stable' && a.pc.changes === a.pc.negotiated, { what: 'settled' });
    // b's signaling is down while a renegotiates: b's answer is lost.
    cb.connected = false;
    a.restartIce();
    await until(() => b.pc.calls.filter((c) => c === 'sld:answer').length >= 2, { what: 'b answered' });
    assert.equal(a.pc.signalingState, 'have-local-offer');
    cb.connected = true;
    const before = cb.sent.length;
    await b.recover({ restartIce: false });
    // Candidates b gathers once its signaling is back may go out before
    // recover() runs (its fake gathering is on a timer): look at descriptions.
    const resent = cb.sent.slice(before).filter((m) => m.type !== 'candidate');
    assert.equal(resent[0].type, 'answer');
    assert.equal(resent[0].sdp, b.pc.localDescription.sdp);
    assert.ok(b.pc.calls.includes('restartIce'), 'lost candidates force an ICE restart');
    await until(() => a.pc.signalingState === 'stable', { what: 'a got the answer' });
    a.close();
    b.close();
  });

  test('close() closes the RTCPeerConnection and stops handling signals', async () => {
    const { a, b } = linkPair();
    const pc = a.pc;
    a.close();
    assert.ok(pc.closed);
    assert.equal(a.connectionState, 'closed');
    await a.handleSignal({ type: 'offer', sdp: 'v=0\r\n' });
    assert.ok(!pc.calls.includes('srd:offer'));
    b.close();
  });
});

describe('PeerRoom with SignalClient and an in-memory gateway', () => {
  beforeEach(() => {
    FakeRTCPeerConnection.instances.length = 0;
  });

  function makePeer(server, peerId, extra = {}) {
    const client = new SignalClient({
      url: 'ws://127.0.0.1:1/ws',
      token: 'tok',
      WebSocketImpl: server.WebSocketImpl,
      reconnect: { initialMs: 5, maxMs: 20 },
    });
    const room = new PeerRoom({ client, roomId: ROOM, peerId, RTCPeerConnectionImpl: FakeRTCPeerConnection, setup: addMedia, ...extra });
    const events = [];
    room.on('peer', (d) => events.push(['peer', d.peerId]));
    room.on('peerclosed', (d) => events.push(['peerclosed', d.peerId, d.reason]));
    return { client, room, events, peerId };
  }

  const linkState = (p, remote) => p.room.peers.get(remote)?.connectionState;

  test('two peers join, negotiate through relays and connect; iceServers from joined reach the pc', async () => {
    const ice = [{ urls: ['turn:127.0.0.1:3478'], username: 'u', credential: 'c' }];
    const server = new FakeServer({ iceServers: ice });
    const A = makePeer(server, PEER_A, { iceServers: [{ urls: 'stun:127.0.0.1' }] });
    const B = makePeer(server, PEER_B);
    await A.client.connect();
    await A.room.join();
    await B.client.connect();
    await B.room.join();
    await until(() => linkState(A, PEER_B) === 'connected' && linkState(B, PEER_A) === 'connected', { what: 'connected' });
    assert.deepEqual(A.events, [['peer', PEER_B]]);
    assert.deepEqual(B.events, [['peer', PEER_A]]);
    assert.deepEqual(A.room.peers.get(PEER_B).pc.config.iceServers, [{ urls: 'stun:127.0.0.1' }, ...ice]);
    // every candidate travelled as its own message
    const cands = server.log.filter((m) => m.type === 'candidate');
    assert.ok(cands.length >= 4);
    for (const m of cands) assert.equal(typeof m.candidate.candidate, 'string');
    A.client.close();
    B.client.close();
  });

  test('peer_left closes the link; a third peer gets links to both', async () => {
    const server = new FakeServer();
    const A = makePeer(server, PEER_A);
    const B = makePeer(server, PEER_B);
    const C = makePeer(server, PEER_C);
    for (const p of [A, B, C]) {
      await p.client.connect();
      await p.room.join();
    }
    await until(() => A.room.peers.size === 2 && B.room.peers.size === 2 && C.room.peers.size === 2, { what: 'mesh' });
    await until(() => [...C.room.peers.values()].every((l) => l.connectionState === 'connected'), { what: 'C connected' });
    await B.room.leave();
    await until(() => !A.room.peers.has(PEER_B) && !C.room.peers.has(PEER_B), { what: 'B gone' });
    assert.deepEqual(A.events.at(-1), ['peerclosed', PEER_B, 'leave']);
    assert.equal(B.room.peers.size, 0);
    A.client.close();
    B.client.close();
    C.client.close();
  });

  test('reconnect without resumption: re-join resets both ends and the call comes back', async () => {
    const server = new FakeServer({ resume: false });
    const A = makePeer(server, PEER_A);
    const B = makePeer(server, PEER_B);
    await A.client.connect();
    await A.room.join();
    await B.client.connect();
    await B.room.join();
    await until(() => linkState(A, PEER_B) === 'connected' && linkState(B, PEER_A) === 'connected', { what: 'connected' });
    const oldA = A.room.peers.get(PEER_B).pc;
    const resets = [];
    A.room.peers.get(PEER_B).on('reset', (d) => resets.push(d.reason));
    const rejoined = new Promise((resolve) => A.client.on('joined', (d) => d.rejoin && resolve(d)));
    server.kill(server.sockets[0]); // A's socket dies without a close frame
    await rejoined;
    await until(() => A.room.peers.get(PEER_B).pc !== oldA, { what: 'A reset' });
    await until(() => linkState(A, PEER_B) === 'connected' && linkState(B, PEER_A) === 'connected', { what: 'connected again' });
    assert.ok(oldA.closed, 'the old connection is closed');
    assert.equal(resets[0], 'rejoined', 'A resets on its own re-join, not only when an offer shows a new session');
    assert.deepEqual(B.events, [['peer', PEER_A], ['peerclosed', PEER_A, 'disconnect'], ['peer', PEER_A]]);
    A.client.close();
    B.client.close();
  });

  test('the same peer taking its place over from a new connection resets the link at the others', async () => {
    const server = new FakeServer();
    const A = makePeer(server, PEER_A);
    const B = makePeer(server, PEER_B);
    await A.client.connect();
    await A.room.join();
    await B.client.connect();
    await B.room.join();
    await until(() => linkState(A, PEER_B) === 'connected' && linkState(B, PEER_A) === 'connected', { what: 'connected' });
    const linkAB = A.room.peers.get(PEER_B);
    const resets = [];
    linkAB.on('reset', (d) => resets.push(d.reason));
    const oldPc = linkAB.pc;
    // B opens a second connection with the same peerId (e.g. a new tab of the same user).
    const B2 = makePeer(server, PEER_B);
    await B2.client.connect();
    await B2.room.join();
    await until(() => resets.length > 0, { what: 'reset at A' });
    assert.equal(resets[0], 'peer-rejoined');
    assert.equal(A.room.peers.get(PEER_B), linkAB, 'same link, fresh connection');
    await until(() => B.room.peers.size === 0, { what: 'the replaced connection drops its links' });
    await until(() => linkState(A, PEER_B) === 'connected' && linkState(B2, PEER_A) === 'connected', { what: 'connected to B2' });
    assert.ok(oldPc.closed);
    A.client.close();
    B.client.close();
    B2.client.close();
  });

  test('reconnect with resumption: links are kept and ICE is restarted', async () => {
    const server = new FakeServer({ resume: true });
    const A = makePeer(server, PEER_A);
    const B = makePeer(server, PEER_B);
    await A.client.connect();
    await A.room.join();
    await B.client.connect();
    await B.room.join();
    await until(() => linkState(A, PEER_B) === 'connected' && linkState(B, PEER_A) === 'connected', { what: 'connected' });
    // Only this test's two connections: FakeRTCPeerConnection.instances may
    // also get a pc from an earlier test's PeerRoom still handling a relay
    // that arrived before its client was closed.
    const settled = (pc) => pc.signalingState === 'stable' && pc.changes === pc.negotiated;
    await until(() => settled(A.room.peers.get(PEER_B).pc) && settled(B.room.peers.get(PEER_A).pc), { what: 'settled' });
    const pcA = A.room.peers.get(PEER_B).pc;
    const pcB = B.room.peers.get(PEER_A).pc;
    const resumed = new Promise((resolve) => A.client.on('resumed', resolve));
    server.kill(server.sockets[0]);
    await resumed;
    await until(() => pcA.calls.includes('restartIce'), { what: 'ICE restart' });
    await until(() => pcA.signalingState === 'stable' && pcA.changes === pcA.negotiated, { what: 'restart negotiated' });
    assert.equal(A.room.peers.get(PEER_B).pc, pcA, 'A kept its connection');
    assert.equal(B.room.peers.get(PEER_A).pc, pcB, 'B kept its connection');
    assert.deepEqual(B.events, [['peer', PEER_A]], 'B saw no membership change');
    assert.ok(server.log.some((m) => m.type === 'resume' && m.peerId === PEER_A));
    A.client.close();
    B.client.close();
  });

  test('kicked: the kicked side closes every link (kicked) and never re-enters the room; the other side closes its link (kicked)', async () => {
    const server = new FakeServer({ resume: true });
    const A = makePeer(server, PEER_A);
    const B = makePeer(server, PEER_B);
    await A.client.connect();
    await A.room.join();
    await B.client.connect();
    await B.room.join();
    await until(() => linkState(A, PEER_B) === 'connected' && linkState(B, PEER_A) === 'connected', { what: 'connected' });
    const kicked = [];
    B.client.on('kicked', (d) => kicked.push(d));
    assert.equal(server.kick(ROOM, PEER_B, 'bye B'), true);
    await until(() => kicked.length > 0, { what: "B's kicked event" });
    assert.deepEqual(kicked, [{ roomId: ROOM, peerId: PEER_B, reason: 'bye B' }]);
    await until(() => A.room.peers.size === 0, { what: 'A closes its link to B' });
    assert.deepEqual(B.events, [['peer', PEER_A], ['peerclosed', PEER_A, 'kicked']]);
    assert.deepEqual(A.events, [['peer', PEER_B], ['peerclosed', PEER_B, 'kicked']]);
    assert.equal(B.client.state, 'open', 'the connection stays');
    // B's connection drops: its reconnect must not resume or join the room.
    const bSocket = server.sockets[1]; // A connected first
    let reopened = false;
    B.client.on('open', (d) => (reopened ||= d.reconnected));
    const logged = server.log.length;
    server.kill(bSocket);
    await until(() => reopened, { what: 'B reconnected' }); // the client re-enters its rooms before it says 'open'
    await tick();
    assert.deepEqual(server.log.slice(logged).filter((m) => m.roomId === ROOM), [], 'nothing sent for the kicked room');
    assert.equal(B.room.peers.size, 0);
    assert.equal(A.room.peers.size, 0);
    A.client.close();
    B.client.close();
  });

  test('revoked: links close (revoked), the room-mate sees peer_left kicked, the client stays closed', async () => {
    const server = new FakeServer({ resume: true });
    const A = makePeer(server, PEER_A);
    const B = makePeer(server, PEER_B);
    await A.client.connect();
    await A.room.join();
    await B.client.connect();
    await B.room.join();
    await until(() => linkState(A, PEER_B) === 'connected' && linkState(B, PEER_A) === 'connected', { what: 'connected' });
    const closes = [];
    B.client.on('close', (d) => closes.push(d));
    server.revoke(server.sockets[1]);
    assert.deepEqual(closes.map((d) => [d.code, d.reason, d.willReconnect]), [[1008, 'revoked', false]]);
    assert.deepEqual(B.events, [['peer', PEER_A], ['peerclosed', PEER_A, 'revoked']]);
    assert.equal(B.room.peers.get(PEER_A), undefined);
    await until(() => A.room.peers.size === 0, { what: 'A closes its link to B' });
    assert.deepEqual(A.events.at(-1), ['peerclosed', PEER_B, 'kicked']);
    assert.equal(B.client.state, 'closed');
    A.client.close();
  });

  test('an offer from a peer without a link creates one; other relays from strangers are dropped', async () => {
    const server = new FakeServer();
    const A = makePeer(server, PEER_A);
    await A.client.connect();
    await A.room.join();
    A.client.dispatchEvent(
      new DetailEvent('relay', {
        detail: { roomId: ROOM, type: 'candidate', from: PEER_C, to: PEER_A, inner: { type: 'candidate', candidate: { candidate: '' } } },
      }),
    );
    assert.equal(A.room.peers.size, 0);
    const sdp = 'v=0\r\no=- 77 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n';
    A.client.dispatchEvent(
      new DetailEvent('relay', { detail: { roomId: ROOM, type: 'offer', from: PEER_C, to: PEER_A, inner: { type: 'offer', roomId: ROOM, from: PEER_C, to: PEER_A, sdp } } }),
    );
    assert.ok(A.room.peers.has(PEER_C));
    await until(() => A.room.peers.get(PEER_C).pc.remoteDescription?.sdp === sdp, { what: 'offer applied' });
    await tick();
    A.client.close();
  });
});
