// SPDX-License-Identifier: Apache-2.0
// signal-client.js — browser client of the signal-gateway signaling protocol v1.
//
// A plain ES module with no dependencies and no build step. It speaks the wire
// contract of docs/protocol.md: one JSON object per WebSocket text message, the
// `signal.v1` subprotocol, a bearer token in the `Sec-WebSocket-Protocol`
// offer (or, on request, the `access_token` query parameter), join/leave,
// targeted offer/answer/candidate relays, delivery receipts (`ack`) and
// session resumption (`resume`) when the server offers it.
//
// The client never logs anything and never puts the token into an event, an
// error message or a property: the token lives in a private field and goes
// only into the WebSocket constructor call.

export const PROTOCOL = 'signal.v1';

/** roomId: 1–128 characters from A-Z a-z 0-9 _ . : / - (docs/protocol.md §2). */
export const ROOM_ID_RE = /^[A-Za-z0-9_.:/-]{1,128}$/;
/** peerId: a canonical 8-4-4-4-12 hex UUID, either case (sent in lowercase). */
export const PEER_ID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
/** correlationId: 1–64 characters from A-Z a-z 0-9 _ . - */
export const CORRELATION_ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;

/** Default reconnect policy; every field can be overridden through `reconnect`. */
export const DEFAULT_RECONNECT = Object.freeze({
  initialMs: 250, // delay before the first reconnect attempt
  maxMs: 10000, // cap of every delay, jitter included
  factor: 2, // growth of the delay per failed attempt
  jitter: 0.3, // each delay is multiplied by a random factor in [1 - jitter, 1 + jitter]
  stableMs: 5000, // a connection that stayed open this long resets the backoff
  maxAttempts: Infinity, // reconnect attempts in a row (without a stable connection) before giving up
  // Close codes after which the client does NOT reconnect: 1000 (the server
  // ended the session on purpose) and 1008 (policy violation, e.g. a
  // connection closed for flooding; reconnecting would only repeat it).
  // Everything else — 1001 (node draining), 1006 (dropped TCP, failed
  // handshake), 1011/1012/1013, 1009 — is retried with backoff. A close
  // 1008 "revoked" never reconnects, whatever this list says.
  noReconnectCodes: Object.freeze([1000, 1008]),
});

/** Server error codes that a client may retry after a while. */
const TRANSIENT_CODES = new Set(['unavailable', 'rate_limited', 'internal']);

/**
 * The close a revoked user's connections get (docs/protocol.md §9 "Backend
 * control"): its handshakes are refused with 401 for the revocation's TTL,
 * which a browser reports as a plain 1006, so reconnecting would loop on
 * refusals until the TTL ends.
 */
const REVOKED_CLOSE = Object.freeze({ code: 1008, reason: 'revoked' });

/** RFC 7230 token characters: what a Sec-WebSocket-Protocol entry may hold. */
const SUBPROTOCOL_TOKEN_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

const CANDIDATE_KEYS = ['candidate', 'sdpMid', 'sdpMLineIndex', 'usernameFragment'];

/**
 * An error raised by the client: either a server `error` message (`local`
 * false) or an early, client-side check (`local` true). `code` is one of the
 * protocol's error codes, or a client code: `not_connected`, `closed`,
 * `disconnected`, `timeout`, `left`, `invalid_message`, `connect_failed`,
 * `revoked`.
 */
export class SignalError extends Error {
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'SignalError';
    this.code = code;
    this.correlationId = extra.correlationId;
    this.roomId = extra.roomId;
    this.local = Boolean(extra.local);
  }
}

const EventCtor =
  typeof CustomEvent === 'function'
    ? CustomEvent
    : class SignalEvent extends Event {
        constructor(type, init = {}) {
          super(type);
          this.detail = init.detail ?? null;
        }
      };

/**
 * The delay before reconnect attempt number `attempt` (0-based):
 * min(maxMs, initialMs * factor^attempt), multiplied by a uniform random
 * factor in [1 - jitter, 1 + jitter], and capped at maxMs again.
 */
export function backoffDelay(attempt, policy = DEFAULT_RECONNECT, random = Math.random) {
  const p = { ...DEFAULT_RECONNECT, ...policy };
  const base = Math.min(p.maxMs, p.initialMs * Math.pow(p.factor, Math.max(0, attempt)));
  const jitter = Math.min(Math.max(Number(p.jitter) || 0, 0), 1);
  const delay = base * (1 + jitter * (2 * random() - 1));
  return Math.max(0, Math.min(p.maxMs, Math.round(delay)));
}

export function isRoomId(value) {
  return typeof value === 'string' && ROOM_ID_RE.test(value);
}

export function isPeerId(value) {
  return typeof value === 'string' && PEER_ID_RE.test(value);
}

function localError(code, message, extra = {}) {
  return new SignalError(code, message, { ...extra, local: true });
}

function checkRoomId(roomId) {
  if (!isRoomId(roomId)) {
    throw localError('bad_request', 'roomId must be 1-128 characters from A-Z a-z 0-9 _ . : / -');
  }
  return roomId;
}

function checkPeerId(peerId, what = 'peerId') {
  if (!isPeerId(peerId)) {
    throw localError('bad_request', `${what} must be a UUID in 8-4-4-4-12 hex form`);
  }
  return peerId.toLowerCase();
}

function checkCorrelationId(cid) {
  if (typeof cid !== 'string' || !CORRELATION_ID_RE.test(cid)) {
    throw localError('bad_request', 'correlationId must be 1-64 characters from A-Z a-z 0-9 _ . -');
  }
  return cid;
}

function checkSdp(sdp) {
  if (sdp && typeof sdp === 'object' && typeof sdp.sdp === 'string') sdp = sdp.sdp;
  if (typeof sdp !== 'string' || !sdp.startsWith('v=0')) {
    throw localError('bad_request', 'sdp must be a string that begins with v=0');
  }
  return sdp;
}

/**
 * Reduces an RTCIceCandidate (or its toJSON() form) to the fields the
 * protocol allows: candidate (string, '' = end-of-candidates), sdpMid,
 * sdpMLineIndex, usernameFragment. Other fields are dropped.
 */
export function normalizeCandidate(init) {
  if (init && typeof init.toJSON === 'function') init = init.toJSON();
  if (!init || typeof init !== 'object') {
    throw localError('bad_request', 'candidate must be an RTCIceCandidateInit object');
  }
  const out = {};
  for (const key of CANDIDATE_KEYS) {
    if (init[key] !== undefined) out[key] = init[key];
  }
  if (typeof out.candidate !== 'string') {
    throw localError('bad_request', 'candidate.candidate must be a string');
  }
  for (const key of ['sdpMid', 'usernameFragment']) {
    if (key in out && out[key] !== null && typeof out[key] !== 'string') {
      throw localError('bad_request', `candidate.${key} must be a string or null`);
    }
  }
  const idx = out.sdpMLineIndex;
  if (idx !== undefined && idx !== null && !(Number.isInteger(idx) && idx >= 0 && idx <= 65535)) {
    throw localError('bad_request', 'candidate.sdpMLineIndex must be an integer 0-65535 or null');
  }
  return out;
}

function utf8Length(text) {
  if (typeof TextEncoder === 'function') return new TextEncoder().encode(text).length;
  return unescape(encodeURIComponent(text)).length;
}

function randomId(length) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = new Uint8Array(length);
  if (globalThis.crypto && typeof globalThis.crypto.getRandomValues === 'function') {
    globalThis.crypto.getRandomValues(bytes);
  } else {
    for (let i = 0; i < length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  let out = '';
  for (const b of bytes) out += alphabet[b % alphabet.length];
  return out;
}

function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * A room as joined by one peer of a SignalClient: what `client.join()`
 * resolves with. It carries the fields of the `joined` (or `resumed`) detail
 * (roomId, peerId, peers as they were then, iceServers, resumable, ...) and
 * sends as that peer in that room, so callers stop repeating ids:
 *
 *   const room = await client.join(roomId, peerId);
 *   room.offer(to, sdp);  room.candidate(to, ice);  room.on('relay', fn);  await room.leave();
 *
 * `room.on(type, fn)` takes the client's events that concern this room:
 * those whose detail carries this roomId (and, where it names one, this
 * peerId as its peerId or relay target). A new room-scoped event of the
 * client needs no change here.
 */
export class SignalRoom {
  #client;

  constructor(client, detail) {
    this.#client = client;
    Object.assign(this, detail);
  }

  /** True while the client is in this room as this peer (false after leave(), replaced, kicked, revoked, close()). */
  get active() {
    const r = this.#client.room(this.roomId);
    return Boolean(r) && r.peerId === this.peerId;
  }

  /** The room as the client sees it now ({status, peers, lastSeq, ...}), or null once left. */
  info() {
    const r = this.#client.room(this.roomId);
    return r && r.peerId === this.peerId ? r : null;
  }

  offer(to, sdp, options) {
    return this.#client.offer(this.roomId, this.peerId, to, sdp, options);
  }

  answer(to, sdp, options) {
    return this.#client.answer(this.roomId, this.peerId, to, sdp, options);
  }

  candidate(to, candidateInit, options) {
    return this.#client.candidate(this.roomId, this.peerId, to, candidateInit, options);
  }

  leave(options) {
    return this.#client.leave(this.roomId, this.peerId, options);
  }

  /** Subscribes fn(detail, event) to the client's events of this room; returns an unsubscribe function. */
  on(type, fn) {
    return this.#client.on(type, (detail, event) => {
      if (this.#concerns(detail)) fn(detail, event);
    });
  }

  // A client is in a room as one peer at a time, so the roomId decides;
  // a relay must also be addressed to us.
  #concerns(d) {
    if (!d || typeof d !== 'object' || d.roomId !== this.roomId) return false;
    return typeof d.to !== 'string' || d.to === this.peerId;
  }
}

/**
 * A signaling client. Events (all are CustomEvents; the payload is in
 * `event.detail`; `client.on(type, fn)` calls fn(detail, event)):
 *
 *   state        {state, previous}   idle | connecting | open | reconnecting | closing | closed
 *   open         {protocol, reconnected}
 *   close        {code, reason, wasClean, willReconnect, delayMs?, attempt?}
 *   joined       {roomId, peerId, peers, iceServers?, resumable, correlationId?, rejoin}
 *   resumed      {roomId, peerId, peers, replayed, iceServers?, correlationId?}
 *   peer_joined  {roomId, peerId}
 *   peer_left    {roomId, peerId, reason}
 *   left         {roomId, peerId, reason, correlationId?}   reason: leave | replaced | kicked | revoked | <error code>
 *   kicked       {roomId, peerId, reason}   the application removed us from the room (never re-entered)
 *   revoked      {code, reason, rooms}      the server closed the connection: this user is revoked (no reconnect)
 *   relay        {roomId, type, from, to, inner, correlationId, seq?, gap}
 *   ack          {correlationId, status}
 *   error        {code, message, correlationId?, roomId?, local?}
 *   message      the raw server message (every one, before its typed event)
 *   sent         the message object just sent (never contains the token)
 */
export class SignalClient extends EventTarget {
  #token;

  constructor(options = {}) {
    super();
    const {
      url,
      token,
      tokenTransport = 'protocol',
      WebSocketImpl = globalThis.WebSocket,
      reconnect = {},
      resume = true,
      requestTimeoutMs = 10000,
      maxMessageBytes = 65536,
      timers,
      now,
      random,
    } = options;
    if (typeof url !== 'string' || !/^wss?:\/\//i.test(url)) {
      throw new TypeError('SignalClient: url must be a ws:// or wss:// URL');
    }
    if (tokenTransport !== 'protocol' && tokenTransport !== 'query') {
      throw new TypeError("SignalClient: tokenTransport must be 'protocol' or 'query'");
    }
    if (typeof WebSocketImpl !== 'function') {
      throw new TypeError('SignalClient: no WebSocket implementation (pass WebSocketImpl)');
    }
    if (token !== undefined && token !== null && typeof token !== 'string' && typeof token !== 'function') {
      throw new TypeError('SignalClient: token must be a string or a function returning one');
    }
    /** The endpoint URL, without any token. */
    this.url = url;
    this.tokenTransport = tokenTransport;
    this.#token = token ?? null;
    this._WebSocket = WebSocketImpl;
    this._reconnect =
      reconnect === false
        ? { ...DEFAULT_RECONNECT, maxAttempts: 0 }
        : { ...DEFAULT_RECONNECT, ...reconnect };
    this._resumeEnabled = resume !== false;
    this._requestTimeoutMs = requestTimeoutMs;
    this._maxMessageBytes = maxMessageBytes;
    this._setTimeout = timers?.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
    this._clearTimeout = timers?.clearTimeout ?? ((id) => globalThis.clearTimeout(id));
    this._now = now ?? (() => Date.now());
    this._random = random ?? Math.random;

    this._state = 'idle';
    this._ws = null;
    this._gen = 0; // incremented for every socket; stale sockets are ignored
    this._attempt = 0; // consecutive failed attempts
    this._everOpened = false;
    this._openedAt = 0;
    this._closeRequested = false;
    this._reconnectTimer = null;
    this._openWaiters = [];
    this._rooms = new Map(); // roomId -> room record (see _newRoom)
    this._requests = new Map(); // correlationId -> pending request
    this._cidPrefix = randomId(6) + '-';
    this._cidCounter = 0;
    /** The subprotocol the server selected on the current connection. */
    this.protocol = '';
  }

  // ---------------------------------------------------------------- public

  /** idle | connecting | open | reconnecting | closing | closed */
  get state() {
    return this._state;
  }

  get connected() {
    return this._state === 'open';
  }

  /** A snapshot of the rooms this client is in (or is joining). */
  get rooms() {
    return [...this._rooms.values()].map((r) => this._roomInfo(r));
  }

  room(roomId) {
    const r = this._rooms.get(roomId);
    return r ? this._roomInfo(r) : null;
  }

  /** Subscribes fn(detail, event) to an event; returns an unsubscribe function. */
  on(type, fn) {
    const handler = (event) => fn(event.detail, event);
    this.addEventListener(type, handler);
    return () => this.removeEventListener(type, handler);
  }

  /**
   * Opens the connection. Resolves when it is open (after retries, if the
   * first attempts fail); rejects when close() is called first or when
   * reconnect.maxAttempts is exhausted. Calling it while a reconnect is
   * waiting for its backoff timer tries at once.
   */
  connect() {
    if (this._state === 'open') return Promise.resolve();
    const waiter = deferred();
    this._openWaiters.push(waiter);
    if (this._state === 'idle' || this._state === 'closed') {
      this._closeRequested = false;
      this._attempt = 0;
      this._everOpened = false;
      this._openSocket();
    } else if (this._state === 'reconnecting') {
      this._clearReconnectTimer();
      this._openSocket();
    } else if (this._state === 'closing') {
      waiter.reject(localError('closed', 'the client is closing'));
      this._openWaiters.pop();
    }
    return waiter.promise;
  }

  /**
   * Closes the connection for good (no reconnect) with the given close code
   * (default 1000: the server then makes every room see peer_left
   * `disconnect` at once). Forgets every room and fails pending requests.
   */
  close(code = 1000, reason = '') {
    this._closeRequested = true;
    this._clearReconnectTimer();
    this._failOpenWaiters(localError('closed', 'the client was closed'));
    for (const room of this._rooms.values()) this._rejectRoomWaiters(room, localError('closed', 'the client was closed', { roomId: room.roomId }));
    for (const room of this._rooms.values()) this._clearRoomTimer(room);
    this._rooms.clear();
    this._failRequests('closed');
    const ws = this._ws;
    if (ws) {
      this._setState('closing');
      try {
        ws.close(code, reason);
      } catch {
        // An invalid code/reason: close with the default instead.
        try {
          ws.close();
        } catch {
          /* already closed */
        }
      }
    } else if (this._state !== 'closed' && this._state !== 'idle') {
      this._setState('closed');
      this._emit('close', { code, reason, wasClean: true, willReconnect: false });
    }
  }

  /**
   * Joins roomId as peerId. Resolves with a SignalRoom: the fields of the
   * `joined` (or, after a reconnect, `resumed`) detail plus offer/answer/
   * candidate/leave/on for this room and peer. Rejects with a SignalError on
   * an `error` answer or after requestTimeoutMs. The room is remembered and
   * re-joined after every reconnect until leave() or close().
   */
  join(roomId, peerId, { timeoutMs = this._requestTimeoutMs } = {}) {
    let pid;
    try {
      checkRoomId(roomId);
      pid = checkPeerId(peerId);
    } catch (err) {
      return Promise.reject(err);
    }
    if (this._state === 'idle' || this._state === 'closed' || this._state === 'closing') {
      return Promise.reject(localError('not_connected', 'call connect() before join()', { roomId }));
    }
    let room = this._rooms.get(roomId);
    if (room && room.peerId !== pid) {
      return Promise.reject(
        localError('bad_request', 'this connection is already in that room with another peerId', { roomId }),
      );
    }
    if (!room) {
      room = this._newRoom(roomId, pid);
      this._rooms.set(roomId, room);
    }
    const waiter = deferred();
    waiter.timer = this._setTimeout(() => {
      const i = room.waiters.indexOf(waiter);
      if (i >= 0) room.waiters.splice(i, 1);
      waiter.reject(localError('timeout', 'no answer to join in time', { roomId }));
    }, timeoutMs);
    room.waiters.push(waiter);
    // One join in flight per room and connection: a second call waits for it.
    if (this._state === 'open' && !(room.cid && room.sentGen === this._gen)) {
      try {
        this._sendRoomEntry(room, { user: true });
      } catch (err) {
        this._rejectRoomWaiters(room, err);
        if (!room.established) this._rooms.delete(roomId);
      }
    }
    return waiter.promise;
  }

  /**
   * Leaves roomId. The room is forgotten at once (no re-join after a
   * reconnect). Resolves with {roomId, peerId, confirmed}: confirmed is true
   * when the server acknowledged with `left`, false when no connection was
   * open (the server's own disconnect handling then applies).
   */
  leave(roomId, peerId, { timeoutMs = this._requestTimeoutMs } = {}) {
    let pid;
    try {
      checkRoomId(roomId);
      const room = this._rooms.get(roomId);
      pid = checkPeerId(peerId ?? room?.peerId);
    } catch (err) {
      return Promise.reject(err);
    }
    const room = this._rooms.get(roomId);
    if (room) {
      this._rooms.delete(roomId);
      this._clearRoomTimer(room);
      this._rejectRoomWaiters(room, localError('left', 'leave() was called', { roomId }));
      if (room.cid) this._requests.delete(room.cid);
    }
    if (this._state !== 'open') return Promise.resolve({ roomId, peerId: pid, confirmed: false });
    const cid = this._nextCid();
    const d = deferred();
    const req = { kind: 'leave', roomId, peerId: pid, resolve: d.resolve, reject: d.reject };
    req.timer = this._setTimeout(() => {
      this._requests.delete(cid);
      d.reject(localError('timeout', 'no answer to leave in time', { roomId, correlationId: cid }));
    }, timeoutMs);
    this._requests.set(cid, req);
    try {
      this._send({ type: 'leave', roomId, peerId: pid, correlationId: cid });
    } catch (err) {
      this._requests.delete(cid);
      this._clearTimeout(req.timer);
      return Promise.reject(err);
    }
    return d.promise;
  }

  /**
   * Sends an offer. Returns the correlationId, or with {ack: true} a Promise
   * of the `ack` detail ({correlationId, status}). Throws (or rejects, with
   * ack) a SignalError when an id is malformed or no connection is open.
   */
  offer(roomId, from, to, sdp, options = {}) {
    return this._relay('offer', roomId, from, to, () => ({ sdp: checkSdp(sdp) }), options);
  }

  answer(roomId, from, to, sdp, options = {}) {
    return this._relay('answer', roomId, from, to, () => ({ sdp: checkSdp(sdp) }), options);
  }

  /** candidateInit: an RTCIceCandidate or its toJSON(); {candidate: ''} = end-of-candidates. */
  candidate(roomId, from, to, candidateInit, options = {}) {
    return this._relay('candidate', roomId, from, to, () => ({ candidate: normalizeCandidate(candidateInit) }), options);
  }

  // --------------------------------------------------------------- private

  _roomInfo(r) {
    return {
      roomId: r.roomId,
      peerId: r.peerId,
      status: r.status,
      peers: [...r.peers],
      lastSeq: r.lastSeq,
      resumable: Boolean(r.resumeToken),
      iceServers: r.iceServers,
    };
  }

  _newRoom(roomId, peerId) {
    return {
      roomId,
      peerId,
      status: 'joining', // joining | joined | rejoining | resuming
      established: false, // a joined/resumed was received for this room
      resumeToken: null, // never exposed
      lastSeq: 0, // highest relay seq seen in the current membership
      peers: new Set(),
      iceServers: null,
      waiters: [],
      cid: null, // correlationId of the join/resume in flight
      sentGen: -1, // socket generation the join/resume was sent on
      retry: 0,
      retryTimer: null,
    };
  }

  _emit(type, detail) {
    this.dispatchEvent(new EventCtor(type, { detail }));
  }

  _setState(state) {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this._emit('state', { state, previous });
  }

  _nextCid() {
    this._cidCounter += 1;
    return this._cidPrefix + this._cidCounter.toString(36);
  }

  _clearReconnectTimer() {
    if (this._reconnectTimer !== null) {
      this._clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
    }
  }

  _clearRoomTimer(room) {
    if (room.retryTimer !== null) {
      this._clearTimeout(room.retryTimer);
      room.retryTimer = null;
    }
  }

  _failOpenWaiters(err) {
    const waiters = this._openWaiters;
    this._openWaiters = [];
    for (const w of waiters) w.reject(err);
  }

  _rejectRoomWaiters(room, err) {
    const waiters = room.waiters;
    room.waiters = [];
    for (const w of waiters) {
      this._clearTimeout(w.timer);
      w.reject(err);
    }
  }

  _resolveRoomWaiters(room, detail) {
    const waiters = room.waiters;
    room.waiters = [];
    for (const w of waiters) {
      this._clearTimeout(w.timer);
      w.resolve(new SignalRoom(this, detail));
    }
  }

  // Requests belong to one socket: when it goes, acks can no longer come.
  _failRequests(why) {
    const requests = [...this._requests.entries()];
    this._requests.clear();
    for (const [cid, req] of requests) {
      if (req.timer !== undefined) this._clearTimeout(req.timer);
      if (req.kind === 'ack') {
        req.reject(localError(why === 'closed' ? 'closed' : 'disconnected', 'the connection closed before the ack came', { correlationId: cid, roomId: req.roomId }));
      } else if (req.kind === 'leave') {
        req.resolve({ roomId: req.roomId, peerId: req.peerId, confirmed: false });
      }
    }
    for (const room of this._rooms.values()) room.cid = null;
  }

  _openSocket() {
    const gen = ++this._gen;
    this._setState('connecting');
    const source = this.#token;
    if (typeof source !== 'function') {
      this._startSocket(gen, source);
      return;
    }
    // A token function is called for every attempt, so a reconnect an hour
    // later can use a fresh token instead of an expired one.
    Promise.resolve()
      .then(() => source())
      .then(
        (token) => {
          if (gen === this._gen && !this._closeRequested) this._startSocket(gen, token);
        },
        () => {
          if (gen !== this._gen || this._closeRequested) return;
          this._emit('error', { code: 'connect_failed', message: 'the token function failed', local: true });
          this._scheduleReconnect({ code: 1006, reason: '', wasClean: false });
        },
      );
  }

  _startSocket(gen, token) {
    let url = this.url;
    const protocols = [PROTOCOL];
    if (token) {
      if (typeof token !== 'string') {
        this._giveUp(localError('connect_failed', 'the token must be a string'));
        return;
      }
      if (this.tokenTransport === 'query') {
        url += (url.includes('?') ? '&' : '?') + 'access_token=' + encodeURIComponent(token);
      } else if (SUBPROTOCOL_TOKEN_RE.test(token)) {
        protocols.push('bearer.' + token);
      } else {
        this._giveUp(localError('connect_failed', "the token has characters a subprotocol cannot carry; use tokenTransport 'query'"));
        return;
      }
    }
    let ws;
    try {
      ws = new this._WebSocket(url, protocols);
    } catch (err) {
      // Never include err.message: it may quote the URL or the protocol list.
      this._giveUp(localError('connect_failed', `the WebSocket constructor threw ${err?.name ?? 'an error'}`));
      return;
    }
    this._ws = ws;
    this._openedAt = 0;
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (event) => this._onMessage(ws, event);
    ws.onclose = (event) => this._onClose(ws, event);
    ws.onerror = () => {}; // a close event always follows; it carries what we need
  }

  _giveUp(err) {
    this._ws = null;
    this._setState('closed');
    this._failOpenWaiters(err);
    for (const room of this._rooms.values()) {
      this._rejectRoomWaiters(room, err);
      this._clearRoomTimer(room);
    }
    this._rooms.clear();
    this._emit('error', { code: err.code, message: err.message, local: true });
    this._emit('close', { code: 1006, reason: '', wasClean: false, willReconnect: false });
  }

  _onOpen(ws) {
    if (ws !== this._ws) return;
    this._openedAt = this._now();
    const reconnected = this._everOpened;
    this._everOpened = true;
    this.protocol = ws.protocol || '';
    this._setState('open');
    // Re-enter every room first (resume when we can), then tell the app.
    for (const room of [...this._rooms.values()]) {
      if (room.sentGen === this._gen) continue;
      try {
        this._sendRoomEntry(room, { user: false });
      } catch (err) {
        this._emit('error', { code: err.code, message: err.message, roomId: room.roomId, local: true });
      }
    }
    const waiters = this._openWaiters;
    this._openWaiters = [];
    for (const w of waiters) w.resolve();
    this._emit('open', { protocol: this.protocol, reconnected });
  }

  // Sends `resume` when the room has a resume token from this server,
  // else `join`. Throws when the send fails.
  _sendRoomEntry(room, { user }) {
    this._clearRoomTimer(room);
    const cid = this._nextCid();
    let msg;
    if (room.established && room.resumeToken && this._resumeEnabled && !user) {
      msg = {
        type: 'resume',
        roomId: room.roomId,
        peerId: room.peerId,
        resumeToken: room.resumeToken,
        lastSeq: room.lastSeq,
        correlationId: cid,
      };
      room.status = 'resuming';
      this._requests.set(cid, { kind: 'resume', roomId: room.roomId });
    } else {
      msg = { type: 'join', roomId: room.roomId, peerId: room.peerId, correlationId: cid };
      if (!user && room.established) room.status = 'rejoining';
      else if (!room.established) room.status = 'joining';
      this._requests.set(cid, { kind: 'join', roomId: room.roomId, auto: !user && room.established });
    }
    room.cid = cid;
    room.sentGen = this._gen;
    try {
      this._send(msg);
    } catch (err) {
      this._requests.delete(cid);
      room.cid = null;
      throw err;
    }
  }

  _send(msg) {
    const ws = this._ws;
    if (!ws || this._state !== 'open') {
      throw localError('not_connected', 'the signaling connection is not open', {
        correlationId: msg.correlationId,
        roomId: msg.roomId,
      });
    }
    const text = JSON.stringify(msg);
    if (utf8Length(text) > this._maxMessageBytes) {
      throw localError('payload_too_large', `the message is larger than ${this._maxMessageBytes} bytes`, {
        correlationId: msg.correlationId,
        roomId: msg.roomId,
      });
    }
    ws.send(text);
    this._emit('sent', msg);
  }

  _relay(type, roomId, from, to, body, options) {
    const { ack = false, correlationId, timeoutMs = this._requestTimeoutMs } = options ?? {};
    let msg;
    try {
      checkRoomId(roomId);
      const f = checkPeerId(from, 'from');
      const t = checkPeerId(to, 'to');
      if (f === t) throw localError('bad_request', 'from and to must differ', { roomId });
      const cid = correlationId === undefined ? this._nextCid() : checkCorrelationId(correlationId);
      msg = { type, roomId, from: f, to: t, ...body(), correlationId: cid };
      if (ack) msg.ack = true;
    } catch (err) {
      if (ack) return Promise.reject(err);
      throw err;
    }
    const cid = msg.correlationId;
    if (!ack) {
      this._send(msg);
      return cid;
    }
    const d = deferred();
    const req = { kind: 'ack', roomId, resolve: d.resolve, reject: d.reject };
    req.timer = this._setTimeout(() => {
      this._requests.delete(cid);
      d.reject(localError('timeout', 'no ack in time', { correlationId: cid, roomId }));
    }, timeoutMs);
    this._requests.set(cid, req);
    try {
      this._send(msg);
    } catch (err) {
      this._requests.delete(cid);
      this._clearTimeout(req.timer);
      return Promise.reject(err);
    }
    return d.promise;
  }

  _onMessage(ws, event) {
    if (ws !== this._ws) return;
    let msg;
    try {
      if (typeof event.data !== 'string') throw new Error('binary');
      msg = JSON.parse(event.data);
      if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') throw new Error('shape');
    } catch {
      this._emit('error', { code: 'invalid_message', message: 'the server sent a message that is not a JSON object with a type', local: true });
      return;
    }
    this._emit('message', msg);
    switch (msg.type) {
      case 'joined':
        return this._onJoined(msg);
      case 'resumed':
        return this._onResumed(msg);
      case 'peer_joined':
        return this._onPeerJoined(msg);
      case 'peer_left':
        return this._onPeerLeft(msg);
      case 'left':
        return this._onLeft(msg);
      case 'relay':
        return this._onRelay(msg);
      case 'ack':
        return this._onAck(msg);
      case 'error':
        return this._onError(msg);
      default:
        // Unknown types are tolerated (forward compatibility): 'message' saw it.
        return undefined;
    }
  }

  _takeRequest(cid, kind) {
    if (typeof cid !== 'string') return null;
    const req = this._requests.get(cid);
    if (!req || (kind && req.kind !== kind)) return null;
    this._requests.delete(cid);
    if (req.timer !== undefined) this._clearTimeout(req.timer);
    return req;
  }

  _onJoined(msg) {
    this._takeRequest(msg.correlationId, 'join');
    const room = this._rooms.get(msg.roomId);
    const peers = Array.isArray(msg.peers) ? msg.peers.map((p) => String(p).toLowerCase()) : [];
    const peerId = typeof msg.peerId === 'string' ? msg.peerId.toLowerCase() : msg.peerId;
    const detail = {
      roomId: msg.roomId,
      peerId,
      peers,
      resumable: Boolean(msg.resumeToken),
      rejoin: false,
    };
    if (msg.iceServers !== undefined) detail.iceServers = msg.iceServers;
    if (msg.correlationId !== undefined) detail.correlationId = msg.correlationId;
    if (room && room.peerId === peerId) {
      detail.rejoin = room.status === 'rejoining' || (room.status === 'resuming' && room.established);
      room.status = 'joined';
      room.established = true;
      room.resumeToken = typeof msg.resumeToken === 'string' ? msg.resumeToken : null;
      room.lastSeq = 0; // a fresh membership: seq numbering starts over
      room.peers = new Set(peers);
      room.iceServers = msg.iceServers ?? null;
      room.cid = null;
      room.retry = 0;
      this._clearRoomTimer(room);
      this._resolveRoomWaiters(room, detail);
    }
    this._emit('joined', detail);
  }

  _onResumed(msg) {
    this._takeRequest(msg.correlationId, 'resume');
    const room = this._rooms.get(msg.roomId);
    const peers = Array.isArray(msg.peers) ? msg.peers.map((p) => String(p).toLowerCase()) : [];
    const peerId = typeof msg.peerId === 'string' ? msg.peerId.toLowerCase() : msg.peerId;
    const detail = {
      roomId: msg.roomId,
      peerId,
      peers,
      replayed: msg.replayed,
      resumed: true,
    };
    if (msg.iceServers !== undefined) detail.iceServers = msg.iceServers;
    if (msg.correlationId !== undefined) detail.correlationId = msg.correlationId;
    if (room && room.peerId === peerId) {
      room.status = 'joined';
      room.established = true;
      if (typeof msg.resumeToken === 'string') room.resumeToken = msg.resumeToken;
      room.peers = new Set(peers);
      if (msg.iceServers !== undefined) room.iceServers = msg.iceServers;
      room.cid = null;
      room.retry = 0;
      this._clearRoomTimer(room);
      this._resolveRoomWaiters(room, detail);
    }
    this._emit('resumed', detail);
  }

  _onPeerJoined(msg) {
    const peerId = typeof msg.peerId === 'string' ? msg.peerId.toLowerCase() : msg.peerId;
    const room = this._rooms.get(msg.roomId);
    if (room) room.peers.add(peerId);
    this._emit('peer_joined', { roomId: msg.roomId, peerId });
  }

  _onPeerLeft(msg) {
    const peerId = typeof msg.peerId === 'string' ? msg.peerId.toLowerCase() : msg.peerId;
    const room = this._rooms.get(msg.roomId);
    if (room) room.peers.delete(peerId);
    this._emit('peer_left', { roomId: msg.roomId, peerId, reason: msg.reason });
  }

  _onLeft(msg) {
    let req = this._takeRequest(msg.correlationId, 'leave');
    if (!req) {
      // A server that does not echo correlationId: match the oldest leave of that room.
      for (const [cid, r] of this._requests) {
        if (r.kind === 'leave' && r.roomId === msg.roomId) {
          req = this._takeRequest(cid, 'leave');
          break;
        }
      }
    }
    const peerId = typeof msg.peerId === 'string' ? msg.peerId.toLowerCase() : msg.peerId;
    const detail = { roomId: msg.roomId, peerId, reason: 'leave' };
    if (msg.correlationId !== undefined) detail.correlationId = msg.correlationId;
    if (req) req.resolve({ roomId: msg.roomId, peerId, confirmed: true });
    this._emit('left', detail);
  }

  _onRelay(msg) {
    const inner = msg.inner;
    if (!inner || typeof inner !== 'object' || typeof inner.type !== 'string') {
      this._emit('error', { code: 'invalid_message', message: 'relay without an inner message', local: true });
      return;
    }
    const room = this._rooms.get(inner.roomId);
    let gap = 0;
    if (Number.isInteger(msg.seq) && room) {
      if (msg.seq <= room.lastSeq) return; // already delivered (a replay overlap)
      if (room.lastSeq > 0 && msg.seq > room.lastSeq + 1) gap = msg.seq - room.lastSeq - 1;
      room.lastSeq = msg.seq;
    }
    const detail = {
      roomId: inner.roomId,
      type: inner.type,
      from: typeof inner.from === 'string' ? inner.from.toLowerCase() : inner.from,
      to: typeof inner.to === 'string' ? inner.to.toLowerCase() : inner.to,
      inner,
      correlationId: msg.correlationId,
      gap,
    };
    if (msg.seq !== undefined) detail.seq = msg.seq;
    this._emit('relay', detail);
  }

  _onAck(msg) {
    const req = this._takeRequest(msg.correlationId, 'ack');
    const detail = { correlationId: msg.correlationId, status: msg.status };
    if (req) req.resolve(detail);
    this._emit('ack', detail);
  }

  _onError(msg) {
    const detail = { code: msg.code, message: msg.message };
    if (msg.correlationId !== undefined) detail.correlationId = msg.correlationId;
    if (msg.roomId !== undefined) detail.roomId = msg.roomId;
    const req = this._takeRequest(msg.correlationId);
    const err = new SignalError(msg.code, msg.message, detail);
    // Tell the app first, then act: a handler sees the error before the
    // follow-up (a fallback join, a 'left').
    this._emit('error', detail);
    if (req) {
      switch (req.kind) {
        case 'join':
          this._onJoinError(req, msg.correlationId, err);
          break;
        case 'resume':
          this._onResumeError(req, msg.correlationId);
          break;
        case 'leave':
        case 'ack':
          req.reject(err);
          break;
        default:
          break;
      }
    }
    if (msg.code === 'replaced' && typeof msg.roomId === 'string') {
      // Another connection took our peerId over: do not fight it on reconnect.
      const room = this._rooms.get(msg.roomId);
      if (room) this._dropRoom(room, 'replaced', err);
    }
    if (msg.code === 'kicked' && typeof msg.roomId === 'string') this._onKicked(msg, err);
  }

  // The application removed us from the room (docs/protocol.md §9 "Backend
  // control"): the connection stays for the other rooms, and this one is
  // forgotten so that no reconnect re-enters it (a resume would fail, and
  // a fresh join would undo the application's decision).
  _onKicked(msg, err) {
    const room = this._rooms.get(msg.roomId);
    if (!room) return; // already left or never joined on our side: nothing to forget
    const reason = typeof msg.message === 'string' ? msg.message : '';
    this._forgetRoom(room, err);
    this._emit('kicked', { roomId: room.roomId, peerId: room.peerId, reason });
    if (room.established) this._emit('left', { roomId: room.roomId, peerId: room.peerId, reason: 'kicked' });
  }

  _forgetRoom(room, err) {
    this._rooms.delete(room.roomId);
    this._clearRoomTimer(room);
    if (room.cid) this._requests.delete(room.cid);
    this._rejectRoomWaiters(room, err);
  }

  _dropRoom(room, reason, err) {
    this._forgetRoom(room, err);
    if (room.established) {
      this._emit('left', { roomId: room.roomId, peerId: room.peerId, reason });
    }
  }

  _onJoinError(req, cid, err) {
    const room = this._rooms.get(req.roomId);
    if (!room || room.cid !== cid) return; // stale answer
    room.cid = null;
    if (req.auto && TRANSIENT_CODES.has(err.code)) {
      // An automatic re-join hit a passing condition: retry with backoff.
      const delay = backoffDelay(room.retry++, this._reconnect, this._random);
      room.retryTimer = this._setTimeout(() => {
        room.retryTimer = null;
        if (this._rooms.get(room.roomId) !== room || this._state !== 'open') return;
        try {
          this._sendRoomEntry(room, { user: false });
        } catch {
          /* the connection went; _onOpen will try again */
        }
      }, delay);
      return;
    }
    if (req.auto || !room.established) {
      // We are not in the room (any more): forget it.
      this._dropRoom(room, err.code, err);
      return;
    }
    // A repeated join of a room we are in failed: we are still a member.
    room.status = 'joined';
    this._rejectRoomWaiters(room, err);
  }

  _onResumeError(req, cid) {
    const room = this._rooms.get(req.roomId);
    if (!room || room.cid !== cid) return;
    // resume_failed (or a server that does not know resume): join afresh.
    room.resumeToken = null;
    room.lastSeq = 0;
    room.cid = null;
    try {
      this._sendRoomEntry(room, { user: false });
    } catch {
      /* the connection went; _onOpen will try again */
    }
  }

  _onClose(ws, event) {
    if (ws !== this._ws) return;
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    const info = {
      code: event?.code ?? 1006,
      reason: event?.reason ?? '',
      wasClean: Boolean(event?.wasClean),
    };
    const lived = this._openedAt ? this._now() - this._openedAt : 0;
    this._openedAt = 0;
    this._failRequests('disconnected');
    for (const room of this._rooms.values()) this._clearRoomTimer(room);
    if (this._closeRequested) {
      this._setState('closed');
      this._emit('close', { ...info, willReconnect: false });
      return;
    }
    if (lived >= this._reconnect.stableMs) this._attempt = 0;
    if (info.code === REVOKED_CLOSE.code && info.reason === REVOKED_CLOSE.reason) {
      this._stopRevoked(info);
      return;
    }
    if (this._reconnect.noReconnectCodes.includes(info.code)) {
      this._stopAfterClose(info, localError('closed', `the server closed the connection with ${info.code}`));
      return;
    }
    this._scheduleReconnect(info);
  }

  // Revoked: every room is gone on the server (room-mates saw peer_left
  // "kicked"), and reconnecting would only collect 401s until the TTL ends.
  _stopRevoked(info) {
    const err = localError('revoked', 'the server closed the connection: this user is revoked');
    const rooms = [...this._rooms.values()];
    this._rooms.clear();
    this._setState('closed');
    this._failOpenWaiters(err);
    for (const room of rooms) this._rejectRoomWaiters(room, localError(err.code, err.message, { roomId: room.roomId }));
    this._emit('revoked', { code: info.code, reason: info.reason, rooms: rooms.map((r) => r.roomId) });
    for (const room of rooms) {
      if (room.established) this._emit('left', { roomId: room.roomId, peerId: room.peerId, reason: 'revoked' });
    }
    this._emit('close', { ...info, willReconnect: false });
  }

  _stopAfterClose(info, err) {
    this._setState('closed');
    this._failOpenWaiters(err);
    for (const room of this._rooms.values()) this._rejectRoomWaiters(room, err);
    this._rooms.clear();
    this._emit('close', { ...info, willReconnect: false });
  }

  _scheduleReconnect(info) {
    this._ws = null;
    if (this._attempt >= this._reconnect.maxAttempts) {
      this._stopAfterClose(info, localError('connect_failed', 'gave up reconnecting'));
      return;
    }
    const attempt = this._attempt;
    const delayMs = backoffDelay(attempt, this._reconnect, this._random);
    this._attempt += 1;
    this._setState('reconnecting');
    this._emit('close', { ...info, willReconnect: true, delayMs, attempt: attempt + 1 });
    this._clearReconnectTimer();
    this._reconnectTimer = this._setTimeout(() => {
      this._reconnectTimer = null;
      if (!this._closeRequested) this._openSocket();
    }, delayMs);
  }
}

export default SignalClient;
