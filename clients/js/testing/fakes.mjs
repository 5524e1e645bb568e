// SPDX-License-Identifier: Apache-2.0
// Test doubles for the client library: a fake clock, a scriptable fake
// WebSocket, an in-memory signaling server that follows docs/protocol.md closely
// enough for the peer tests, and a fake RTCPeerConnection with a real
// signaling state machine (strict: no implicit rollback).

export const PEER_A = '00000000-0000-4000-8000-00000000000a';
export const PEER_B = '00000000-0000-4000-8000-00000000000b';
export const PEER_C = '00000000-0000-4000-8000-00000000000c';

/** A manual clock: timers run only in advance(). */
export class FakeClock {
  constructor() {
    this.t = 0;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.t + Math.max(0, ms || 0), fn, id });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
    this.now = () => this.t;
  }

  /** Delays of the pending timers, soonest first. */
  pending() {
    return [...this.timers.values()].map((x) => x.at - this.t).sort((a, b) => a - b);
  }

  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const timer of this.timers.values()) {
        if (timer.at <= end && (next === null || timer.at < next.at || (timer.at === next.at && timer.id < next.id))) next = timer;
      }
      if (!next) break;
      this.timers.delete(next.id);
      this.t = next.at;
      next.fn();
    }
    this.t = end;
  }
}

export const tick = () => new Promise((resolve) => setImmediate(resolve));

export async function until(predicate, { timeoutMs = 5000, what = 'condition' } = {}) {
  const start = Date.now();
  while (!predicate()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/**
 * Returns a fake WebSocket class; every instance is pushed to `sockets`.
 * The test plays the server: open(), receive(obj), drop(code).
 * `onSend(socket, text)` sees every frame the client sends.
 */
export function fakeWebSocketClass({ onSend, autoOpen = false } = {}) {
  const sockets = [];
  class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;

    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.protocol = '';
      this.sent = [];
      this.closeCalls = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
      if (autoOpen) setImmediate(() => this.readyState === 0 && this.open());
    }

    get messages() {
      return this.sent.map((text) => JSON.parse(text));
    }

    last() {
      return JSON.parse(this.sent[this.sent.length - 1]);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error('InvalidStateError: not open');
      this.sent.push(text);
      if (onSend) onSend(this, text);
    }

    close(code = 1000, reason = '') {
      this.closeCalls.push({ code, reason });
      if (this.readyState === 3) return;
      const wasOpen = this.readyState === 1;
      this.readyState = 2;
      queueMicrotask(() => this._closed(wasOpen ? code : 1006, reason, wasOpen));
    }

    // --- server side
    open(protocol = 'signal.v1') {
      this.readyState = 1;
      this.protocol = protocol;
      this.onopen?.({ type: 'open' });
    }

    receive(obj) {
      this.onmessage?.({ type: 'message', data: typeof obj === 'string' ? obj : JSON.stringify(obj) });
    }

    drop(code = 1006, reason = '') {
      this._closed(code, reason, code !== 1006);
    }

    _closed(code, reason, wasClean) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      if (code === 1006) this.onerror?.({ type: 'error' });
      this.onclose?.({ type: 'close', code, reason, wasClean });
    }
  }
  return { WebSocketImpl: FakeWebSocket, sockets };
}

/**
 * An in-memory gateway: join/leave/offer/answer/candidate/resume with
 * joined/peer_joined/peer_left/left/relay(seq)/error, delivered on a later
 * turn (setImmediate) like a network would. Resumption is on when
 * `resume` is true. kick() and revoke() play the backend control
 * subcommands.
 */
export class FakeServer {
  constructor({ resume = false, iceServers } = {}) {
    this.resume = resume;
    this.iceServers = iceServers;
    this.rooms = new Map(); // roomId -> Map(peerId -> socket)
    this.seq = new Map(); // roomId/peerId -> last seq
    this.log = [];
    const cls = fakeWebSocketClass({ onSend: (ws, text) => this._onFrame(ws, text), autoOpen: true });
    this.WebSocketImpl = cls.WebSocketImpl;
    this.sockets = cls.sockets;
  }

  _deliver(ws, msg) {
    setImmediate(() => {
      if (ws.readyState === 1) ws.receive(msg);
    });
  }

  members(roomId) {
    if (!this.rooms.has(roomId)) this.rooms.set(roomId, new Map());
    return this.rooms.get(roomId);
  }

  /** Drops a socket without a close frame (as a dead TCP connection would). */
  kill(ws) {
    for (const [roomId, members] of this.rooms) {
      for (const [peerId, sock] of members) {
        if (sock !== ws) continue;
        if (this.resume) continue; // grace period: room-mates see nothing
        members.delete(peerId);
        for (const other of members.values()) this._deliver(other, { type: 'peer_left', roomId, peerId, reason: 'disconnect' });
      }
    }
    ws.drop(1006);
  }

  /**
   * `signal-gateway kick` (docs/protocol.md §9): the member is removed, its
   * connection gets the kicked error (and stays open), room-mates get
   * peer_left "kicked"; a later resume fails. Returns whether it was a member.
   */
  kick(roomId, peerId, reason = 'removed from the room by the application') {
    const members = this.members(roomId);
    const sock = members.get(peerId);
    if (!sock) return false;
    members.delete(peerId);
    this._deliver(sock, { type: 'error', code: 'kicked', message: reason, roomId });
    for (const other of members.values()) this._deliver(other, { type: 'peer_left', roomId, peerId, reason: 'kicked' });
    return true;
  }

  /** `signal-gateway revoke` of the user of `ws`: out of every room (peer_left "kicked"), then closed 1008 "revoked". */
  revoke(ws) {
    for (const [roomId, members] of this.rooms) {
      for (const [peerId, sock] of members) {
        if (sock !== ws) continue;
        members.delete(peerId);
        for (const other of members.values()) this._deliver(other, { type: 'peer_left', roomId, peerId, reason: 'kicked' });
      }
    }
    ws.drop(1008, 'revoked');
  }

  _onFrame(ws, text) {
    const msg = JSON.parse(text);
    this.log.push(msg);
    const { roomId, correlationId } = msg;
    const reply = (m) => this._deliver(ws, correlationId === undefined ? m : { ...m, correlationId });
    const members = roomId ? this.members(roomId) : null;
    switch (msg.type) {
      case 'join': {
        const peerId = msg.peerId.toLowerCase();
        const holder = members.get(peerId);
        const others = [...members.keys()].filter((p) => p !== peerId);
        members.set(peerId, ws);
        const joined = { type: 'joined', roomId, peerId, peers: others };
        if (this.resume) joined.resumeToken = `rt-${peerId}-${Date.now()}`;
        if (this.iceServers) joined.iceServers = this.iceServers;
        this.seq.set(`${roomId}/${peerId}`, 0);
        reply(joined);
        if (holder !== ws) {
          // A takeover: the old connection loses the room, the others see peer_joined again.
          if (holder) this._deliver(holder, { type: 'error', code: 'replaced', message: 'taken over', roomId });
          for (const p of others) this._deliver(members.get(p), { type: 'peer_joined', roomId, peerId });
        }
        break;
      }
      case 'resume': {
        const peerId = msg.peerId.toLowerCase();
        if (!this.resume || !members.has(peerId)) {
          reply({ type: 'error', code: 'resume_failed', message: 'no such session', roomId });
          break;
        }
        members.set(peerId, ws);
        const others = [...members.keys()].filter((p) => p !== peerId);
        reply({ type: 'resumed', roomId, peerId, peers: others, replayed: 0, resumeToken: `rt2-${peerId}` });
        break;
      }
      case 'leave': {
        const peerId = msg.peerId.toLowerCase();
        if (members.get(peerId) === ws) {
          members.delete(peerId);
          for (const other of members.values()) this._deliver(other, { type: 'peer_left', roomId, peerId, reason: 'leave' });
        }
        reply({ type: 'left', roomId, peerId });
        break;
      }
      case 'offer':
      case 'answer':
      case 'candidate': {
        const target = members.get(msg.to);
        if (members.get(msg.from) !== ws) {
          reply({ type: 'error', code: 'not_joined', message: 'not in room', roomId });
          break;
        }
        if (!target) {
          reply({ type: 'error', code: 'peer_not_found', message: 'no such peer', roomId });
          break;
        }
        const { correlationId: cid, ack, ...inner } = msg;
        const key = `${roomId}/${msg.to}`;
        const seq = (this.seq.get(key) ?? 0) + 1;
        this.seq.set(key, seq);
        const relay = { type: 'relay', inner, correlationId: cid ?? `srv-${seq}` };
        if (this.resume) relay.seq = seq;
        this._deliver(target, relay);
        if (ack) reply({ type: 'ack', status: 'delivered' });
        break;
      }
      default:
        reply({ type: 'error', code: 'bad_request', message: 'unknown type' });
    }
  }
}

let pcCounter = 0;

function domError(name, message) {
  const err = new Error(message);
  err.name = name;
  return err;
}

/**
 * A fake RTCPeerConnection. It models the JSEP signaling states, an
 * operations chain, negotiationneeded (fired when stable and local changes
 * are not negotiated yet), candidate gathering after each
 * setLocalDescription (two candidates, then null), and reaches 'connected'
 * when it is stable with both descriptions and at least one remote
 * candidate. It does NOT roll back implicitly: an offer in have-local-offer
 * is an InvalidStateError, so the code under test must roll back itself.
 */
export class FakeRTCPeerConnection {
  static instances = [];

  constructor(config = {}) {
    this.n = ++pcCounter;
    this.config = config;
    this.sessionId = String(4000000000 + this.n);
    this.version = 0;
    this.signalingState = 'stable';
    this.connectionState = 'new';
    this.iceConnectionState = 'new';
    this.iceGatheringState = 'new';
    this.gatherBroken = false; // see setLocalDescription({type: 'rollback'})
    this._gatherPending = false;
    this.localDescription = null;
    this.remoteDescription = null;
    this.currentLocalDescription = null;
    this.remoteCandidates = [];
    this.calls = [];
    this.tracks = [];
    this.channels = [];
    this.changes = 0;
    this.negotiated = 0;
    this.offered = 0;
    this.closed = false;
    this._pending = 0;
    this._chain = Promise.resolve();
    this._nnScheduled = false;
    this.onnegotiationneeded = this.onicecandidate = this.onconnectionstatechange = null;
    this.oniceconnectionstatechange = this.onsignalingstatechange = this.ontrack = this.ondatachannel = null;
    this.onicegatheringstatechange = null;
    FakeRTCPeerConnection.instances.push(this);
  }

  getConfiguration() {
    return { ...this.config };
  }

  setConfiguration(config) {
    this.config = { ...config };
    this.calls.push('setConfiguration');
  }

  addTrack(track) {
    this.tracks.push(track);
    this._change();
    return { track };
  }

  createDataChannel(label, options = {}) {
    const channel = { label, ...options, readyState: 'connecting' };
    this.channels.push(channel);
    if (this.channels.length === 1) this._change();
    return channel;
  }

  restartIce() {
    this.calls.push('restartIce');
    this._change();
  }

  close() {
    this.closed = true;
    this.signalingState = 'closed';
    this.connectionState = 'closed';
    this.iceConnectionState = 'closed';
    this.calls.push('close');
  }

  setLocalDescription(desc) {
    return this._op(() => {
      if (this.closed) throw domError('InvalidStateError', 'closed');
      if (desc && desc.type === 'rollback') {
        if (this.signalingState !== 'have-local-offer') throw domError('InvalidStateError', `rollback in ${this.signalingState}`);
        // Like Chromium 156: a rollback while the offer's gathering has not
        // produced its first candidate leaves gathering dead for good.
        if (this._gatherPending) this.gatherBroken = true;
        this.calls.push('rollback');
        this.localDescription = this.currentLocalDescription;
        this._setSignaling('stable');
        return;
      }
      const type = desc?.type ?? (this.signalingState === 'have-remote-offer' ? 'answer' : 'offer');
      if (type === 'offer' && this.signalingState !== 'stable' && this.signalingState !== 'have-local-offer') {
        throw domError('InvalidStateError', `offer in ${this.signalingState}`);
      }
      if (type === 'answer' && this.signalingState !== 'have-remote-offer') {
        throw domError('InvalidStateError', `answer in ${this.signalingState}`);
      }
      this.version += 1;
      const sdp =
        desc?.sdp ??
        `v=0\r\no=- ${this.sessionId} ${this.version} IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=x-fake:${type} changes=${this.changes}\r\n`;
      this.localDescription = { type, sdp };
      this.calls.push(`sld:${type}`);
      if (type === 'offer') {
        this.offered = this.changes;
        this._setSignaling('have-local-offer');
      } else {
        this.currentLocalDescription = this.localDescription;
        this._setSignaling('stable');
      }
      this._gather();
    });
  }

  setRemoteDescription(desc) {
    return this._op(() => {
      if (this.closed) throw domError('InvalidStateError', 'closed');
      if (typeof desc?.sdp !== 'string' || !desc.sdp.startsWith('v=0')) throw domError('OperationError', 'bad sdp');
      if (desc.type === 'offer') {
        if (this.signalingState !== 'stable' && this.signalingState !== 'have-remote-offer') {
          throw domError('InvalidStateError', `remote offer in ${this.signalingState}`);
        }
        this.calls.push('srd:offer');
        this.remoteDescription = { ...desc };
        this._setSignaling('have-remote-offer');
      } else if (desc.type === 'answer') {
        if (this.signalingState !== 'have-local-offer') throw domError('InvalidStateError', `remote answer in ${this.signalingState}`);
        this.calls.push('srd:answer');
        this.remoteDescription = { ...desc };
        this.currentLocalDescription = this.localDescription;
        this.negotiated = this.offered;
        this._setSignaling('stable');
      } else {
        throw domError('TypeError', 'bad type');
      }
    });
  }

  addIceCandidate(candidate) {
    return this._op(() => {
      if (!this.remoteDescription) throw domError('InvalidStateError', 'no remote description');
      this.calls.push(candidate?.candidate ? 'addIceCandidate' : 'endOfCandidates');
      if (candidate?.candidate) this.remoteCandidates.push(candidate);
      this._checkConnected();
    });
  }

  // --- internals
  // Operations run one after another, each on a later turn, like the
  // browser's operations chain; negotiationneeded waits for an idle chain.
  _op(fn) {
    this._pending = (this._pending ?? 0) + 1;
    const p = this._chain.then(() => new Promise((r) => setImmediate(r))).then(fn);
    this._chain = p.catch(() => {});
    p.finally(() => {
      this._pending -= 1;
      this._maybeNegotiate();
    }).catch(() => {});
    return p;
  }

  _change() {
    this.changes += 1;
    this._maybeNegotiate();
  }

  _maybeNegotiate() {
    if (this._nnScheduled) return;
    this._nnScheduled = true;
    setTimeout(() => {
      this._nnScheduled = false;
      if (!this.closed && !this._pending && this.signalingState === 'stable' && this.changes > this.negotiated && this._fired !== this.changes) {
        this._fired = this.changes;
        this.onnegotiationneeded?.({ type: 'negotiationneeded' });
      }
    }, 0);
  }

  _setSignaling(state) {
    this.signalingState = state;
    this.onsignalingstatechange?.({ type: 'signalingstatechange' });
    if (state === 'stable') {
      this._fired = undefined;
      this._checkConnected();
      this._maybeNegotiate();
    }
  }

  _gather() {
    const n = this.n;
    this._gatherPending = true;
    this.iceGatheringState = 'gathering';
    this.onicegatheringstatechange?.({ type: 'icegatheringstatechange' });
    if (this.gatherBroken) return;
    const mk = (i) => {
      const init = { candidate: `candidate:${i} 1 udp 2122260223 192.0.2.${n} ${5000 + i} typ host`, sdpMid: '0', sdpMLineIndex: 0, usernameFragment: `uf${n}` };
      return { ...init, address: `192.0.2.${n}`, toJSON: () => ({ ...init }) };
    };
    setTimeout(() => {
      if (this.closed || this.gatherBroken) return;
      this._gatherPending = false;
      this.calls.push('gathered');
      this.onicecandidate?.({ candidate: mk(1) });
      this.onicecandidate?.({ candidate: mk(2) });
      this.iceGatheringState = 'complete';
      this.onicegatheringstatechange?.({ type: 'icegatheringstatechange' });
      this.onicecandidate?.({ candidate: null });
    }, 1);
  }

  _checkConnected() {
    if (this.closed || this.connectionState === 'connected') return;
    if (this.signalingState === 'stable' && this.localDescription && this.remoteDescription && this.remoteCandidates.length > 0) {
      this.iceConnectionState = 'connected';
      this.oniceconnectionstatechange?.({ type: 'iceconnectionstatechange' });
      this.connectionState = 'connected';
      this.onconnectionstatechange?.({ type: 'connectionstatechange' });
    }
  }
}
