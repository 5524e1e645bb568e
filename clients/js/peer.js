// SPDX-License-Identifier: Apache-2.0
// peer.js — wires RTCPeerConnections to a SignalClient, "perfect negotiation" style.
//
// PeerLink: one RTCPeerConnection to one remote peer in one room.
//   - Roles: the side with the lexically smaller peerId is *polite*, the
//     other *impolite* (override with the `polite` option). On glare (both
//     sent an offer) the polite side rolls its own offer back and answers;
//     the impolite side ignores the incoming offer and waits for the answer.
//     The polite side first lets its own offer finish and its ICE gathering
//     produce a first candidate (at most rollbackWaitMs, default 1 s): a
//     Chromium connection rolled back while its first gathering starts up
//     never gathers again. The rolled-back offer is not sent.
//   - negotiationneeded -> setLocalDescription() -> `offer` message.
//   - Trickle ICE: every local candidate goes out as its own `candidate`
//     message (candidate.toJSON()); end of gathering goes out once as
//     {candidate: ''}. Remote candidates go to addIceCandidate(); their
//     errors are ignored while an offer is being ignored, and for
//     end-of-candidates (older stacks reject it).
//   - Incoming messages are handled one at a time, in arrival order.
//   - If an offer arrives whose SDP session id (o= line) differs from the
//     current remote description's, the remote side has a new
//     RTCPeerConnection: this side resets to a fresh one too and answers it.
//
// PeerRoom: the membership policy for one room on top of PeerLinks.
//   - joined: a link per listed peer. After an automatic re-join (a fresh
//     join after a reconnect, `rejoin: true`) the room-mates saw us leave and
//     come back (peer_joined), so every link is reset to a fresh connection —
//     and they reset theirs on that peer_joined.
//   - resumed: room-mates saw nothing; links are kept, fresh iceServers are
//     applied, and once the replayed relays are handled each link recovers:
//     a description whose send had failed is sent again, a pending local
//     offer is sent again, and ICE is restarted (restartIce()).
//   - peer_joined: a new link, or a reset of the existing one (the peer came
//     back with a fresh connection). peer_left: the link is closed.
//   - left (our own, or a failed re-join, or `replaced`): all links close.
//   - An offer from a peer without a link creates one (membership events and
//     relays may take different paths); other relays from unknown peers are
//     dropped.

const EventCtor =
  typeof CustomEvent === 'function'
    ? CustomEvent
    : class PeerEvent extends Event {
        constructor(type, init = {}) {
          super(type);
          this.detail = init.detail ?? null;
        }
      };

/** Returns the session id of an SDP's o= line, or null. */
export function sdpSessionId(sdp) {
  if (typeof sdp !== 'string') return null;
  const m = /^o=\S+ (\S+) /m.exec(sdp);
  return m ? m[1] : null;
}

/** True when the local side is polite towards remotePeerId (the smaller id is polite). */
export function isPolite(localPeerId, remotePeerId) {
  return String(localPeerId).toLowerCase() < String(remotePeerId).toLowerCase();
}

function candidateInit(candidate) {
  if (typeof candidate.toJSON === 'function') return candidate.toJSON();
  const out = { candidate: candidate.candidate };
  for (const key of ['sdpMid', 'sdpMLineIndex', 'usernameFragment']) {
    if (candidate[key] !== undefined) out[key] = candidate[key];
  }
  return out;
}

const UNHEALTHY = new Set(['failed', 'disconnected', 'closed']);

/**
 * Events (CustomEvent; payload in `detail`; `link.on(type, fn)` calls fn(detail, event)):
 *   connectionstatechange   {state, iceState}
 *   iceconnectionstatechange {state}
 *   signalingstatechange    {state}
 *   track                   {track, streams, transceiver}
 *   datachannel             {channel}
 *   glare                   {action: 'rollback' | 'ignore'}
 *   reset                   {reason, pc}   a fresh RTCPeerConnection replaced the old one
 *   error                   {where, error}
 *   closed                  {reason}
 */
export class PeerLink extends EventTarget {
  constructor(options = {}) {
    super();
    const {
      client,
      roomId,
      localPeerId,
      remotePeerId,
      iceServers = [],
      rtcConfig = {},
      RTCPeerConnectionImpl = globalThis.RTCPeerConnection,
      setup,
      polite,
      listen = true,
      resetOnRemoteSessionChange = true,
      rollbackWaitMs = 1000,
    } = options;
    if (!client) throw new TypeError('PeerLink: client is required');
    if (typeof RTCPeerConnectionImpl !== 'function') {
      throw new TypeError('PeerLink: no RTCPeerConnection implementation');
    }
    this.client = client;
    this.roomId = roomId;
    this.localPeerId = String(localPeerId).toLowerCase();
    this.remotePeerId = String(remotePeerId).toLowerCase();
    this.polite = polite ?? isPolite(this.localPeerId, this.remotePeerId);
    this.closed = false;
    this._RTC = RTCPeerConnectionImpl;
    this._rtcConfig = rtcConfig;
    this._iceServers = [...iceServers];
    this._setup = setup;
    this._resetOnSessionChange = resetOnRemoteSessionChange;
    this._rollbackWaitMs = rollbackWaitMs;
    this._queue = Promise.resolve();
    this._unsent = null; // a local description whose send failed
    this._sendFailed = false; // some message could not be sent since the last recover()
    this._unlisten = null;
    this.pc = null;
    this._createPeerConnection();
    if (listen) {
      this._unlisten = client.on('relay', (detail) => {
        if (detail.roomId === this.roomId && detail.from === this.remotePeerId && detail.to === this.localPeerId) {
          this.handleSignal(detail.inner);
        }
      });
    }
  }

  on(type, fn) {
    const handler = (event) => fn(event.detail, event);
    this.addEventListener(type, handler);
    return () => this.removeEventListener(type, handler);
  }

  get connectionState() {
    return this.pc ? this.pc.connectionState : 'closed';
  }

  get iceConnectionState() {
    return this.pc ? this.pc.iceConnectionState : 'closed';
  }

  /**
   * Handles one relayed message (relay.inner: offer, answer or candidate).
   * Messages are processed in order; the returned Promise settles when this
   * one is done (it never rejects: failures become 'error' events).
   */
  handleSignal(inner) {
    return this._enqueue(() => this._handle(inner));
  }

  /** Restarts ICE: a new offer with fresh ICE credentials (e.g. after a network change). */
  restartIce() {
    const pc = this.pc;
    if (!pc || this.closed) return;
    if (typeof pc.restartIce === 'function') {
      pc.restartIce(); // fires negotiationneeded -> a restart offer
    } else {
      this._negotiate(pc, { iceRestart: true });
    }
  }

  /**
   * After the signaling connection came back (resumed): re-send what may
   * have been lost, then restart ICE (when `restartIce` is true, or the
   * connection is unhealthy, or a message could not be sent meanwhile).
   */
  recover({ restartIce = true } = {}) {
    return this._enqueue(async () => {
      const pc = this.pc;
      if (!pc || this.closed) return;
      const local = pc.localDescription;
      const unsent = this._unsent;
      const lostSomething = this._sendFailed;
      this._unsent = null;
      this._sendFailed = false;
      if (unsent && local && local.sdp === unsent.sdp) {
        this._sendDescription(local); // e.g. an answer the remote still waits for
      } else if (pc.signalingState === 'have-local-offer' && local) {
        this._sendDescription(local); // our offer may never have arrived
      }
      const unhealthy = UNHEALTHY.has(pc.connectionState) || UNHEALTHY.has(pc.iceConnectionState);
      if (restartIce || unhealthy || lostSomething) this.restartIce();
    });
  }

  /** Replaces the RTCPeerConnection with a fresh one (setup runs again). */
  reset(reason = 'reset') {
    if (this.closed) return;
    this._closePeerConnection();
    this._createPeerConnection();
    this._emit('reset', { reason, pc: this.pc });
  }

  /** New ICE servers (e.g. fresh TURN credentials); used by later gathering. */
  setIceServers(iceServers) {
    this._iceServers = [...(iceServers ?? [])];
    const pc = this.pc;
    if (!pc || typeof pc.setConfiguration !== 'function') return;
    try {
      const current = typeof pc.getConfiguration === 'function' ? pc.getConfiguration() : {};
      pc.setConfiguration({ ...current, iceServers: this._iceServers });
    } catch (error) {
      this._emit('error', { where: 'setConfiguration', error });
    }
  }

  close(reason = 'closed') {
    if (this.closed) return;
    this.closed = true;
    if (this._unlisten) this._unlisten();
    this._closePeerConnection();
    this._emit('closed', { reason });
  }

  // --------------------------------------------------------------- private

  _emit(type, detail) {
    this.dispatchEvent(new EventCtor(type, { detail }));
  }

  _enqueue(fn) {
    const next = this._queue.then(fn).catch((error) => this._emit('error', { where: 'signal', error }));
    this._queue = next;
    return next;
  }

  _createPeerConnection() {
    const pc = new this._RTC({ ...this._rtcConfig, iceServers: this._iceServers });
    this.pc = pc;
    this._makingOffer = false;
    this._offerDone = Promise.resolve(); // settles when the offer being made is set (or failed)
    this._ignoreOffer = false;
    this._settingRemoteAnswer = false;
    this._rollbackPending = false;
    this._eocSent = false;
    this._gatherSeen = false; // a local candidate (or its end) came since our last offer
    this._gatherWaiters = [];
    this._unsent = null;
    const current = () => pc === this.pc && !this.closed;
    pc.onnegotiationneeded = () => {
      if (current()) this._negotiate(pc);
    };
    pc.onicecandidate = (event) => {
      if (!current()) return;
      this._gatherSeen = true;
      this._wakeGatherWaiters();
      this._onLocalCandidate(event.candidate);
    };
    pc.onconnectionstatechange = () => {
      if (current()) this._emit('connectionstatechange', { state: pc.connectionState, iceState: pc.iceConnectionState });
    };
    pc.oniceconnectionstatechange = () => {
      if (current()) this._emit('iceconnectionstatechange', { state: pc.iceConnectionState });
    };
    pc.onsignalingstatechange = () => {
      if (current()) this._emit('signalingstatechange', { state: pc.signalingState });
    };
    pc.ontrack = (event) => {
      if (current()) this._emit('track', { track: event.track, streams: event.streams ?? [], transceiver: event.transceiver });
    };
    pc.ondatachannel = (event) => {
      if (current()) this._emit('datachannel', { channel: event.channel });
    };
    if (typeof this._setup === 'function') {
      try {
        this._setup(pc, this);
      } catch (error) {
        this._emit('error', { where: 'setup', error });
      }
    }
  }

  _closePeerConnection() {
    this._wakeGatherWaiters();
    const pc = this.pc;
    if (!pc) return;
    pc.onnegotiationneeded = pc.onicecandidate = pc.onconnectionstatechange = null;
    pc.oniceconnectionstatechange = pc.onsignalingstatechange = pc.ontrack = pc.ondatachannel = null;
    try {
      pc.close();
    } catch {
      /* already closed */
    }
  }

  async _negotiate(pc, offerOptions) {
    let settled;
    this._offerDone = new Promise((resolve) => {
      settled = resolve;
    });
    try {
      this._makingOffer = true;
      this._gatherSeen = false;
      if (offerOptions) {
        await pc.setLocalDescription(await pc.createOffer(offerOptions));
      } else {
        await pc.setLocalDescription();
      }
      // A polite rollback is under way: this offer is dead, do not send it.
      if (pc !== this.pc || this.closed || this._rollbackPending) return;
      if (pc.localDescription) this._sendDescription(pc.localDescription);
    } catch (error) {
      if (pc === this.pc && !this.closed) this._emit('error', { where: 'negotiation', error });
    } finally {
      if (pc === this.pc) this._makingOffer = false;
      settled();
    }
  }

  _wakeGatherWaiters() {
    const waiters = this._gatherWaiters;
    this._gatherWaiters = [];
    for (const wake of waiters) wake();
  }

  // Resolves once our offer's ICE gathering has produced something (a
  // candidate or its end), or is not running, or after timeoutMs.
  _gatheringStarted(pc, timeoutMs) {
    if (this._gatherSeen || pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(wake, timeoutMs);
      function wake() {
        clearTimeout(timer);
        resolve();
      }
      this._gatherWaiters.push(wake);
    });
  }

  _sendDescription(description) {
    const { type, sdp } = description;
    try {
      if (type === 'offer') this.client.offer(this.roomId, this.localPeerId, this.remotePeerId, sdp);
      else if (type === 'answer') this.client.answer(this.roomId, this.localPeerId, this.remotePeerId, sdp);
      else return;
      this._unsent = null;
    } catch (error) {
      // Typically not_connected during a reconnect: recover() sends it again.
      this._unsent = { type, sdp };
      this._sendFailed = true;
      this._emit('error', { where: 'send', error });
    }
  }

  _onLocalCandidate(candidate) {
    let init;
    if (candidate && candidate.candidate) {
      init = candidateInit(candidate);
      this._eocSent = false;
    } else {
      // End of gathering: some stacks signal it with an empty candidate and
      // then a null one; send it once.
      if (this._eocSent) return;
      this._eocSent = true;
      init = candidate ? candidateInit(candidate) : { candidate: '' };
    }
    try {
      this.client.candidate(this.roomId, this.localPeerId, this.remotePeerId, init);
    } catch (error) {
      this._sendFailed = true;
      this._emit('error', { where: 'send', error });
    }
  }

  async _handle(msg) {
    if (this.closed || !msg || typeof msg !== 'object') return;
    if (msg.type === 'offer' || msg.type === 'answer') {
      await this._handleDescription({ type: msg.type, sdp: msg.sdp });
    } else if (msg.type === 'candidate') {
      await this._handleCandidate(msg.candidate ?? { candidate: '' });
    }
  }

  async _handleDescription(description) {
    let pc = this.pc;
    if (description.type === 'offer' && this._resetOnSessionChange && pc.remoteDescription) {
      const incoming = sdpSessionId(description.sdp);
      const known = sdpSessionId(pc.remoteDescription.sdp);
      if (incoming && known && incoming !== known) {
        this.reset('remote-session-changed');
        pc = this.pc;
      }
    }
    const readyForOffer = !this._makingOffer && (pc.signalingState === 'stable' || this._settingRemoteAnswer);
    const offerCollision = description.type === 'offer' && !readyForOffer;
    this._ignoreOffer = !this.polite && offerCollision;
    if (this._ignoreOffer) {
      this._emit('glare', { action: 'ignore' });
      return;
    }
    if (offerCollision) {
      // Polite side: drop our own offer and take theirs.
      this._emit('glare', { action: 'rollback' });
      this._rollbackPending = true;
      try {
        // Let our offer finish being set, and its ICE gathering start, before
        // rolling it back: Chromium rolled back while its first gathering is
        // still starting up never gathers a candidate again on that
        // connection (seen with Chromium 156; an ICE restart does not help).
        await this._offerDone;
        if (pc.signalingState === 'have-local-offer') await this._gatheringStarted(pc, this._rollbackWaitMs);
        if (pc !== this.pc || this.closed) return;
        // Both calls in the same turn so nothing slips in between on the pc's chain.
        await Promise.all([
          pc.signalingState === 'have-local-offer' ? pc.setLocalDescription({ type: 'rollback' }) : Promise.resolve(),
          pc.setRemoteDescription(description),
        ]);
      } finally {
        this._rollbackPending = false;
      }
    } else {
      this._settingRemoteAnswer = description.type === 'answer';
      try {
        await pc.setRemoteDescription(description);
      } finally {
        this._settingRemoteAnswer = false;
      }
    }
    if (pc !== this.pc || this.closed) return;
    if (description.type === 'offer') {
      await pc.setLocalDescription();
      if (pc !== this.pc || this.closed) return;
      this._sendDescription(pc.localDescription);
    }
  }

  async _handleCandidate(candidate) {
    const pc = this.pc;
    try {
      await pc.addIceCandidate(candidate);
    } catch (error) {
      // Candidates of an offer we ignored cannot be added; end-of-candidates
      // is optional and some stacks reject it.
      if (this._ignoreOffer || candidate.candidate === '' || pc !== this.pc) return;
      throw error;
    }
  }
}

/**
 * PeerRoom: one PeerLink per remote peer in a room, following membership.
 * Events: peer {peerId, link} (a link was created), peerclosed {peerId, link, reason}.
 */
export class PeerRoom extends EventTarget {
  constructor(options = {}) {
    super();
    const {
      client,
      roomId,
      peerId,
      iceServers = [],
      restartIceOnResume = true,
      replayWaitMs = 1000,
      ...linkOptions
    } = options;
    if (!client) throw new TypeError('PeerRoom: client is required');
    this.client = client;
    this.roomId = roomId;
    this.peerId = String(peerId).toLowerCase();
    /** remote peerId -> PeerLink */
    this.peers = new Map();
    this._iceServers = [...iceServers];
    this._serverIceServers = [];
    this._restartIceOnResume = restartIceOnResume;
    this._replayWaitMs = replayWaitMs;
    this._linkOptions = linkOptions;
    this._replayLeft = 0;
    this._replayTimer = null;
    this._closed = false;
    const mine = (d) => d && d.roomId === this.roomId;
    this._off = [
      client.on('joined', (d) => mine(d) && d.peerId === this.peerId && this._onJoined(d)),
      client.on('resumed', (d) => mine(d) && d.peerId === this.peerId && this._onResumed(d)),
      client.on('peer_joined', (d) => mine(d) && d.peerId !== this.peerId && this._onPeerJoined(d.peerId)),
      client.on('peer_left', (d) => mine(d) && this._closeLink(d.peerId, d.reason || 'peer_left')),
      client.on('left', (d) => mine(d) && this._closeAll(d.reason || 'left')),
      client.on('relay', (d) => mine(d) && d.to === this.peerId && this._onRelay(d)),
    ];
  }

  on(type, fn) {
    const handler = (event) => fn(event.detail, event);
    this.addEventListener(type, handler);
    return () => this.removeEventListener(type, handler);
  }

  /** Joins the room through the client (links follow from the events). */
  join(options) {
    return this.client.join(this.roomId, this.peerId, options);
  }

  /** Leaves the room and closes every link. */
  async leave() {
    try {
      return await this.client.leave(this.roomId, this.peerId);
    } finally {
      this._closeAll('leave');
    }
  }

  /** Stops following the room and closes every link (does not leave). */
  close() {
    if (this._closed) return;
    this._closed = true;
    for (const off of this._off) off();
    this._clearReplayTimer();
    this._closeAll('closed');
  }

  get iceServers() {
    return [...this._iceServers, ...this._serverIceServers];
  }

  // --------------------------------------------------------------- private

  _emit(type, detail) {
    this.dispatchEvent(new EventCtor(type, { detail }));
  }

  _createLink(remotePeerId) {
    const link = new PeerLink({
      ...this._linkOptions,
      client: this.client,
      roomId: this.roomId,
      localPeerId: this.peerId,
      remotePeerId,
      iceServers: this.iceServers,
      listen: false,
    });
    this.peers.set(remotePeerId, link);
    this._emit('peer', { peerId: remotePeerId, link });
    return link;
  }

  _closeLink(remotePeerId, reason) {
    const link = this.peers.get(remotePeerId);
    if (!link) return;
    this.peers.delete(remotePeerId);
    link.close(reason);
    this._emit('peerclosed', { peerId: remotePeerId, link, reason });
  }

  _closeAll(reason) {
    for (const peerId of [...this.peers.keys()]) this._closeLink(peerId, reason);
  }

  _setServerIce(iceServers) {
    if (!Array.isArray(iceServers)) return false;
    this._serverIceServers = iceServers;
    return true;
  }

  _sync(peers, { reset }) {
    const listed = new Set(peers.filter((p) => p !== this.peerId));
    for (const peerId of [...this.peers.keys()]) {
      if (!listed.has(peerId)) this._closeLink(peerId, 'gone');
    }
    for (const peerId of listed) {
      const link = this.peers.get(peerId);
      if (!link) this._createLink(peerId);
      else if (reset) link.reset('rejoined');
    }
  }

  _onJoined(d) {
    if (this._closed) return;
    if (this._setServerIce(d.iceServers)) {
      for (const link of this.peers.values()) link.setIceServers(this.iceServers);
    }
    this._sync(d.peers, { reset: Boolean(d.rejoin) });
  }

  _onResumed(d) {
    if (this._closed) return;
    if (this._setServerIce(d.iceServers)) {
      for (const link of this.peers.values()) link.setIceServers(this.iceServers);
    }
    this._sync(d.peers, { reset: false });
    // Recover once the replayed relays have been handed to the links.
    this._clearReplayTimer();
    this._replayLeft = Number.isInteger(d.replayed) && d.replayed > 0 ? d.replayed : 0;
    if (this._replayLeft === 0) this._recoverAll();
    else this._replayTimer = setTimeout(() => this._recoverAll(), this._replayWaitMs);
  }

  _clearReplayTimer() {
    if (this._replayTimer !== null) {
      clearTimeout(this._replayTimer);
      this._replayTimer = null;
    }
  }

  _recoverAll() {
    this._clearReplayTimer();
    this._replayLeft = 0;
    for (const link of this.peers.values()) link.recover({ restartIce: this._restartIceOnResume });
  }

  _onPeerJoined(peerId) {
    if (this._closed) return;
    const link = this.peers.get(peerId);
    if (link) link.reset('peer-rejoined');
    else this._createLink(peerId);
  }

  _onRelay(d) {
    if (this._closed) return;
    let link = this.peers.get(d.from);
    if (!link && d.type === 'offer' && d.from !== this.peerId) link = this._createLink(d.from);
    if (link) link.handleSignal(d.inner);
    if (this._replayLeft > 0) {
      this._replayLeft -= 1;
      if (this._replayLeft === 0) this._recoverAll();
    }
  }
}

export default PeerLink;
