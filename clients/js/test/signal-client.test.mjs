// SPDX-License-Identifier: Apache-2.0
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { inspect } from 'node:util';

import {
  SignalClient,
  SignalError,
  SignalRoom,
  backoffDelay,
  normalizeCandidate,
  DEFAULT_RECONNECT,
  CORRELATION_ID_RE,
} from '../signal-client.js';
import { FakeClock, fakeWebSocketClass, tick, PEER_A, PEER_B, PEER_C } from '../testing/fakes.mjs';

const TOKEN = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlY3JldA';
const URL = 'wss://gw.example.test/ws';
const SDP = 'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n';
const ICE = { candidate: 'candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host', sdpMid: '0', sdpMLineIndex: 0 };
const EVENT_TYPES = ['state', 'open', 'close', 'joined', 'resumed', 'peer_joined', 'peer_left', 'left', 'kicked', 'revoked', 'relay', 'ack', 'error', 'message', 'sent'];

function setup(options = {}) {
  const clock = new FakeClock();
  const { WebSocketImpl, sockets } = fakeWebSocketClass();
  const client = new SignalClient({
    url: URL,
    token: TOKEN,
    WebSocketImpl,
    timers: clock,
    now: clock.now,
    random: () => 0.5, // jitter factor 1.0 unless a test says otherwise
    ...options,
  });
  const events = [];
  for (const type of EVENT_TYPES) client.on(type, (detail) => events.push({ type, detail }));
  const of = (type) => events.filter((e) => e.type === type).map((e) => e.detail);
  return { clock, sockets, client, events, of, ws: () => sockets[sockets.length - 1] };
}

async function connected(options) {
  const t = setup(options);
  const p = t.client.connect();
  t.ws().open();
  await p;
  return t;
}

/** Joins a room and answers it; returns the join detail. */
async function joinRoom(t, roomId = 'room-1', peerId = PEER_A, extra = {}) {
  const p = t.client.join(roomId, peerId);
  const msg = t.ws().last();
  t.ws().receive({ type: 'joined', roomId, peerId, peers: [], correlationId: msg.correlationId, ...extra });
  return p;
}

describe('connecting and token transport', () => {
  test("default 'protocol' transport offers signal.v1 and bearer.<token>, URL untouched", async () => {
    const t = setup();
    t.client.connect();
    assert.equal(t.sockets.length, 1);
    assert.deepEqual(t.ws().protocols, ['signal.v1', 'bearer.' + TOKEN]);
    assert.equal(t.ws().url, URL);
  });

  test("'query' transport puts access_token in the URL and offers only signal.v1", () => {
    const t = setup({ tokenTransport: 'query', url: URL + '?x=1', token: 'a+b/c=' });
    t.client.connect();
    assert.deepEqual(t.ws().protocols, ['signal.v1']);
    assert.equal(t.ws().url, URL + '?x=1&access_token=a%2Bb%2Fc%3D');
  });

  test('without a token only signal.v1 is offered', () => {
    const t = setup({ token: undefined });
    t.client.connect();
    assert.deepEqual(t.ws().protocols, ['signal.v1']);
  });

  test('a token function is called again for every attempt', async () => {
    let n = 0;
    const t = setup({ token: async () => `tok${++n}` });
    t.client.connect();
    await tick();
    assert.deepEqual(t.ws().protocols, ['signal.v1', 'bearer.tok1']);
    t.ws().drop(1006);
    t.clock.advance(10000);
    await tick();
    assert.equal(t.sockets.length, 2);
    assert.deepEqual(t.ws().protocols, ['signal.v1', 'bearer.tok2']);
  });

  test('connect() resolves on open; state goes idle -> connecting -> open', async () => {
    const t = setup();
    assert.equal(t.client.state, 'idle');
    const p = t.client.connect();
    assert.equal(t.client.state, 'connecting');
    t.ws().open();
    await p;
    assert.equal(t.client.state, 'open');
    assert.equal(t.client.protocol, 'signal.v1');
    assert.deepEqual(
      t.of('state').map((s) => s.state),
      ['connecting', 'open'],
    );
    assert.deepEqual(t.of('open'), [{ protocol: 'signal.v1', reconnected: false }]);
  });

  test('the token appears in no event, error, property or inspection', async () => {
    const t = await connected();
    await joinRoom(t);
    t.ws().receive({ type: 'error', code: 'forbidden', message: 'no', correlationId: 'x' });
    t.ws().receive('not json');
    t.client.offer('room-1', PEER_A, PEER_B, SDP);
    t.ws().drop(1006);
    t.clock.advance(1000);
    t.client.close();
    await tick();
    const everything = JSON.stringify(t.events) + JSON.stringify(t.client) + inspect(t.client, { depth: 5, showHidden: true });
    assert.ok(t.events.length > 10);
    assert.ok(!everything.includes(TOKEN), 'token leaked');
    assert.ok(!everything.includes(TOKEN.slice(10, 30)), 'token leaked');
  });

  test('a token a subprotocol cannot carry fails without ever opening a socket', async () => {
    const t = setup({ token: 'has space' });
    await assert.rejects(t.client.connect(), (err) => err.code === 'connect_failed' && !err.message.includes('has space'));
    assert.equal(t.sockets.length, 0);
    assert.equal(t.client.state, 'closed');
  });

  test('rejects bad options early', () => {
    const { WebSocketImpl } = fakeWebSocketClass();
    assert.throws(() => new SignalClient({ url: 'http://x/ws', WebSocketImpl }), TypeError);
    assert.throws(() => new SignalClient({ url: URL, WebSocketImpl, tokenTransport: 'header' }), TypeError);
    assert.throws(() => new SignalClient({ url: URL, WebSocketImpl: null }), TypeError);
  });
});

describe('message encoding', () => {
  test('join sends {type, roomId, peerId (lowercased), correlationId}', async () => {
    const t = await connected();
    t.client.join('team-7/daily:standup_1.x', PEER_A.toUpperCase()).catch(() => {});
    const msg = t.ws().last();
    assert.deepEqual(Object.keys(msg).sort(), ['correlationId', 'peerId', 'roomId', 'type']);
    assert.equal(msg.type, 'join');
    assert.equal(msg.roomId, 'team-7/daily:standup_1.x');
    assert.equal(msg.peerId, PEER_A);
    assert.match(msg.correlationId, CORRELATION_ID_RE);
  });

  test('offer/answer/candidate encode exactly the protocol fields and return the correlationId', async () => {
    const t = await connected();
    const c1 = t.client.offer('r', PEER_A, PEER_B, SDP);
    assert.deepEqual(t.ws().last(), { type: 'offer', roomId: 'r', from: PEER_A, to: PEER_B, sdp: SDP, correlationId: c1 });
    const c2 = t.client.answer('r', PEER_A, PEER_B, { type: 'answer', sdp: SDP });
    assert.deepEqual(t.ws().last(), { type: 'answer', roomId: 'r', from: PEER_A, to: PEER_B, sdp: SDP, correlationId: c2 });
    const cand = {
      candidate: 'candidate:1 1 udp 1 192.0.2.1 5000 typ host',
      sdpMid: '0',
      sdpMLineIndex: 0,
      usernameFragment: 'abcd',
      address: '192.0.2.1',
      toJSON() {
        return { candidate: this.candidate, sdpMid: this.sdpMid, sdpMLineIndex: this.sdpMLineIndex, usernameFragment: this.usernameFragment };
      },
    };
    const c3 = t.client.candidate('r', PEER_A, PEER_B, cand);
    assert.deepEqual(t.ws().last(), {
      type: 'candidate',
      roomId: 'r',
      from: PEER_A,
      to: PEER_B,
      candidate: { candidate: cand.candidate, sdpMid: '0', sdpMLineIndex: 0, usernameFragment: 'abcd' },
      correlationId: c3,
    });
    const c4 = t.client.candidate('r', PEER_A, PEER_B, { candidate: '' });
    assert.deepEqual(t.ws().last().candidate, { candidate: '' });
    assert.equal(new Set([c1, c2, c3, c4]).size, 4, 'correlationIds are unique');
    for (const c of [c1, c2, c3, c4]) assert.match(c, CORRELATION_ID_RE);
    t.client.offer('r', PEER_A, PEER_B, SDP, { correlationId: 'my-id.1' });
    assert.equal(t.ws().last().correlationId, 'my-id.1');
  });

  test('ids, sdp and candidates are checked before anything is sent', async () => {
    const t = await connected();
    const before = t.ws().sent.length;
    const bad = (fn) => assert.throws(fn, (err) => err instanceof SignalError && err.code === 'bad_request' && err.local);
    bad(() => t.client.offer('bad room!', PEER_A, PEER_B, SDP));
    bad(() => t.client.offer('x'.repeat(129), PEER_A, PEER_B, SDP));
    bad(() => t.client.offer('{tag}', PEER_A, PEER_B, SDP));
    bad(() => t.client.offer('r', 'not-a-uuid', PEER_B, SDP));
    bad(() => t.client.offer('r', PEER_A, PEER_A, SDP));
    bad(() => t.client.offer('r', PEER_A, PEER_B, 'o=- 1'));
    bad(() => t.client.offer('r', PEER_A, PEER_B, SDP, { correlationId: 'has space' }));
    bad(() => t.client.candidate('r', PEER_A, PEER_B, { candidate: 1 }));
    bad(() => t.client.candidate('r', PEER_A, PEER_B, { candidate: '', sdpMLineIndex: 70000 }));
    await assert.rejects(t.client.join('r', 'nope'), { code: 'bad_request' });
    await assert.rejects(t.client.join('', PEER_A), { code: 'bad_request' });
    assert.equal(t.ws().sent.length, before);
  });

  test('a message over maxMessageBytes fails locally instead of getting the connection closed', async () => {
    const t = await connected({ maxMessageBytes: 1000 });
    assert.throws(() => t.client.offer('r', PEER_A, PEER_B, SDP + 'a=x\r\n'.repeat(300)), { code: 'payload_too_large' });
    assert.equal(t.ws().sent.length, 0);
  });

  test('sending without an open connection throws not_connected', async () => {
    const t = setup();
    assert.throws(() => t.client.offer('r', PEER_A, PEER_B, SDP), { code: 'not_connected' });
    await assert.rejects(t.client.join('r', PEER_A), { code: 'not_connected' });
  });

  test('normalizeCandidate keeps only the four allowed fields', () => {
    assert.deepEqual(normalizeCandidate({ candidate: 'c', sdpMid: null, sdpMLineIndex: null, foo: 1 }), {
      candidate: 'c',
      sdpMid: null,
      sdpMLineIndex: null,
    });
  });
});

describe('correlation and server messages', () => {
  test('join resolves on the joined carrying its correlationId, not on another', async () => {
    const t = await connected();
    let resolved1 = null;
    const p1 = t.client.join('room-1', PEER_A).then((d) => (resolved1 = d));
    const cid1 = t.ws().last().correlationId;
    const p2 = t.client.join('room-2', PEER_A);
    const cid2 = t.ws().last().correlationId;
    assert.notEqual(cid1, cid2);
    t.ws().receive({ type: 'joined', roomId: 'room-2', peerId: PEER_A, peers: [PEER_B], correlationId: cid2 });
    const d2 = await p2;
    assert.deepEqual(d2.peers, [PEER_B]);
    await tick();
    assert.equal(resolved1, null, 'room-1 join must still be pending');
    t.ws().receive({ type: 'joined', roomId: 'room-1', peerId: PEER_A, peers: [], correlationId: cid1, iceServers: [{ urls: ['stun:x'] }] });
    await p1;
    assert.equal(resolved1.roomId, 'room-1');
    assert.deepEqual(resolved1.iceServers, [{ urls: ['stun:x'] }]);
    assert.equal(resolved1.rejoin, false);
    assert.equal(t.client._requests.size, 0, 'answered requests are forgotten');
    assert.deepEqual(
      t.client.rooms.map((r) => [r.roomId, r.status]),
      [
        ['room-1', 'joined'],
        ['room-2', 'joined'],
      ],
    );
  });

  test('a joined without correlationId (a server that does not echo it) still completes the join', async () => {
    const t = await connected();
    const p = t.client.join('room-1', PEER_A);
    t.ws().receive({ type: 'joined', roomId: 'room-1', peerId: PEER_A, peers: [] });
    const d = await p;
    assert.equal(d.roomId, 'room-1');
    assert.equal(t.client.room('room-1').status, 'joined');
  });

  test('a join error with its correlationId rejects the join and forgets the room', async () => {
    const t = await connected();
    const p = t.client.join('room-1', PEER_A);
    const cid = t.ws().last().correlationId;
    t.ws().receive({ type: 'error', code: 'unrelated', message: 'x', correlationId: 'other' });
    t.ws().receive({ type: 'error', code: 'forbidden', message: 'not in rooms claim', correlationId: cid, roomId: 'room-1' });
    await assert.rejects(p, (err) => err instanceof SignalError && err.code === 'forbidden' && err.correlationId === cid && !err.local);
    assert.deepEqual(t.client.rooms, []);
    assert.deepEqual(t.of('error').at(-1), { code: 'forbidden', message: 'not in rooms claim', correlationId: cid, roomId: 'room-1' });
  });

  test('join rejects after requestTimeoutMs without an answer', async () => {
    const t = await connected({ requestTimeoutMs: 500 });
    const p = t.client.join('room-1', PEER_A);
    t.clock.advance(499);
    await tick();
    t.clock.advance(1);
    await assert.rejects(p, { code: 'timeout' });
  });

  test('every server message type becomes its typed event', async () => {
    const t = await connected();
    await joinRoom(t, 'room-1', PEER_A, { resumeToken: 'rt-1' });
    const ws = t.ws();
    ws.receive({ type: 'peer_joined', roomId: 'room-1', peerId: PEER_B.toUpperCase() });
    ws.receive({ type: 'peer_left', roomId: 'room-1', peerId: PEER_B, reason: 'timeout' });
    const inner = { type: 'offer', roomId: 'room-1', from: PEER_B, to: PEER_A, sdp: SDP };
    ws.receive({ type: 'relay', inner, correlationId: 'c-9', seq: 1 });
    ws.receive({ type: 'ack', correlationId: 'c-10', status: 'buffered' });
    ws.receive({ type: 'error', code: 'rate_limited', message: 'slow down', roomId: 'room-1' });
    ws.receive({ type: 'left', roomId: 'room-1', peerId: PEER_A });
    ws.receive({ type: 'resumed', roomId: 'room-9', peerId: PEER_A, peers: [], replayed: 0, resumeToken: 'x' });
    ws.receive({ type: 'future_type', x: 1 });
    assert.deepEqual(t.of('peer_joined'), [{ roomId: 'room-1', peerId: PEER_B }]);
    assert.deepEqual(t.of('peer_left'), [{ roomId: 'room-1', peerId: PEER_B, reason: 'timeout' }]);
    assert.deepEqual(t.of('relay'), [{ roomId: 'room-1', type: 'offer', from: PEER_B, to: PEER_A, inner, correlationId: 'c-9', seq: 1, gap: 0 }]);
    assert.deepEqual(t.of('ack'), [{ correlationId: 'c-10', status: 'buffered' }]);
    assert.deepEqual(t.of('error'), [{ code: 'rate_limited', message: 'slow down', roomId: 'room-1' }]);
    assert.deepEqual(t.of('left'), [{ roomId: 'room-1', peerId: PEER_A, reason: 'leave' }]);
    assert.equal(t.of('resumed').length, 1);
    assert.equal(t.of('resumed')[0].roomId, 'room-9');
    assert.equal(t.of('message').length, 9, 'every message, known or not, is a message event');
    assert.equal(t.of('joined')[0].resumable, true);
    assert.ok(!('resumeToken' in t.of('joined')[0]), 'the resume token is not handed out');
  });

  test('a message that is not JSON becomes a local error and the connection stays', async () => {
    const t = await connected();
    t.ws().receive('{broken');
    t.ws().receive('[1,2]');
    assert.deepEqual(
      t.of('error').map((e) => [e.code, e.local]),
      [
        ['invalid_message', true],
        ['invalid_message', true],
      ],
    );
    assert.equal(t.client.state, 'open');
  });

  test('ack:true returns a Promise of the ack; errors and disconnects reject it', async () => {
    const t = await connected();
    const p1 = t.client.offer('r', PEER_A, PEER_B, SDP, { ack: true });
    const m1 = t.ws().last();
    assert.equal(m1.ack, true);
    t.ws().receive({ type: 'ack', correlationId: m1.correlationId, status: 'delivered' });
    assert.deepEqual(await p1, { correlationId: m1.correlationId, status: 'delivered' });

    const p2 = t.client.candidate('r', PEER_A, PEER_B, { candidate: '' }, { ack: true });
    const m2 = t.ws().last();
    t.ws().receive({ type: 'error', code: 'peer_not_found', message: 'gone', correlationId: m2.correlationId, roomId: 'r' });
    await assert.rejects(p2, { code: 'peer_not_found', correlationId: m2.correlationId });

    const p3 = t.client.answer('r', PEER_A, PEER_B, SDP, { ack: true });
    t.ws().drop(1006);
    await assert.rejects(p3, { code: 'disconnected' });

    await assert.rejects(t.client.offer('r', PEER_A, PEER_B, SDP, { ack: true }), { code: 'not_connected' });
  });

  test('leave sends leave, resolves on left, and the room is not re-joined later', async () => {
    const t = await connected();
    await joinRoom(t);
    const p = t.client.leave('room-1', PEER_A);
    const msg = t.ws().last();
    assert.deepEqual(msg, { type: 'leave', roomId: 'room-1', peerId: PEER_A, correlationId: msg.correlationId });
    t.ws().receive({ type: 'left', roomId: 'room-1', peerId: PEER_A, correlationId: msg.correlationId });
    assert.deepEqual(await p, { roomId: 'room-1', peerId: PEER_A, confirmed: true });
    t.ws().drop(1006);
    t.clock.advance(10000);
    t.ws().open();
    assert.equal(t.ws().sent.length, 0, 'nothing to re-join');
  });

  test('error replaced drops the room: a left event, and no re-join after reconnect', async () => {
    const t = await connected();
    await joinRoom(t);
    t.ws().receive({ type: 'error', code: 'replaced', message: 'taken over', roomId: 'room-1' });
    assert.deepEqual(t.of('left'), [{ roomId: 'room-1', peerId: PEER_A, reason: 'replaced' }]);
    assert.deepEqual(t.client.rooms, []);
    t.ws().drop(1006);
    t.clock.advance(10000);
    t.ws().open();
    assert.equal(t.ws().sent.length, 0);
  });
});

describe('room handle', () => {
  test('join resolves with a SignalRoom that carries the joined detail', async () => {
    const t = await connected();
    const room = await joinRoom(t, 'room-1', PEER_A.toUpperCase(), {
      peers: [PEER_B],
      iceServers: [{ urls: ['stun:x'] }],
      resumeToken: 'rt',
    });
    assert.ok(room instanceof SignalRoom);
    // The fields code written against the detail reads keep working.
    const { roomId, peerId, peers, iceServers, resumable, rejoin } = room;
    assert.deepEqual({ roomId, peerId, peers, iceServers, resumable, rejoin }, {
      roomId: 'room-1',
      peerId: PEER_A,
      peers: [PEER_B],
      iceServers: [{ urls: ['stun:x'] }],
      resumable: true,
      rejoin: false,
    });
    assert.equal(room.correlationId, t.of('joined')[0].correlationId);
    assert.equal(room.active, true);
    assert.equal(room.info().status, 'joined');
    // The event detail itself stays a plain object.
    assert.equal(Object.getPrototypeOf(t.of('joined')[0]), Object.prototype);
    // The client never shows through the handle (no token behind a property).
    assert.equal(JSON.stringify(room).includes(TOKEN), false);
    assert.equal(inspect(room, { depth: 5, showHidden: true }).includes(TOKEN), false);
  });

  test('offer/answer/candidate send as this peer in this room, acks included', async () => {
    const t = await connected();
    const room = await joinRoom(t, 'room-1', PEER_A);
    const c1 = room.offer(PEER_B, SDP);
    assert.deepEqual(t.ws().last(), { type: 'offer', roomId: 'room-1', from: PEER_A, to: PEER_B, sdp: SDP, correlationId: c1 });
    const c2 = room.answer(PEER_C, { type: 'answer', sdp: SDP }, { correlationId: 'my-cid' });
    assert.equal(c2, 'my-cid');
    assert.deepEqual(t.ws().last(), { type: 'answer', roomId: 'room-1', from: PEER_A, to: PEER_C, sdp: SDP, correlationId: 'my-cid' });
    const acked = room.candidate(PEER_B, ICE, { ack: true });
    const sent = t.ws().last();
    assert.deepEqual(sent, { type: 'candidate', roomId: 'room-1', from: PEER_A, to: PEER_B, candidate: ICE, correlationId: sent.correlationId, ack: true });
    t.ws().receive({ type: 'ack', correlationId: sent.correlationId, status: 'delivered' });
    assert.deepEqual(await acked, { correlationId: sent.correlationId, status: 'delivered' });
    // The same checks as the client's own calls.
    assert.throws(() => room.offer(PEER_A, SDP), { code: 'bad_request', local: true });
    assert.throws(() => room.offer('nope', SDP), { code: 'bad_request' });
  });

  test("room.on() delivers this room's events only, and unsubscribes", async () => {
    const t = await connected();
    const r1 = await joinRoom(t, 'room-1', PEER_A);
    await joinRoom(t, 'room-2', PEER_A);
    const got = [];
    const offs = ['relay', 'peer_joined', 'peer_left', 'error', 'left'].map((type) =>
      r1.on(type, (detail, event) => got.push([type, detail.roomId, event.type])),
    );
    const relay = (roomId) =>
      t.ws().receive({ type: 'relay', inner: { type: 'offer', roomId, from: PEER_B, to: PEER_A, sdp: SDP }, correlationId: 'x' });
    relay('room-2');
    relay('room-1');
    t.ws().receive({ type: 'peer_joined', roomId: 'room-2', peerId: PEER_C });
    t.ws().receive({ type: 'peer_joined', roomId: 'room-1', peerId: PEER_C });
    t.ws().receive({ type: 'peer_left', roomId: 'room-1', peerId: PEER_C, reason: 'leave' });
    t.ws().receive({ type: 'error', code: 'rate_limited', message: 'slow down', roomId: 'room-2' });
    t.ws().receive({ type: 'error', code: 'rate_limited', message: 'slow down', roomId: 'room-1' });
    t.ws().receive({ type: 'error', code: 'bad_request', message: 'no room' });
    assert.deepEqual(got, [
      ['relay', 'room-1', 'relay'],
      ['peer_joined', 'room-1', 'peer_joined'],
      ['peer_left', 'room-1', 'peer_left'],
      ['error', 'room-1', 'error'],
    ]);
    assert.deepEqual(r1.info().peers, []);
    for (const off of offs) off();
    relay('room-1');
    assert.equal(got.length, 4);
  });

  test('leave() leaves as this peer; the handle is inactive afterwards', async () => {
    const t = await connected();
    const room = await joinRoom(t, 'room-1', PEER_A);
    let left = null;
    room.on('left', (d) => (left = d));
    const p = room.leave();
    const msg = t.ws().last();
    assert.deepEqual(msg, { type: 'leave', roomId: 'room-1', peerId: PEER_A, correlationId: msg.correlationId });
    assert.equal(room.active, false);
    assert.equal(room.info(), null);
    t.ws().receive({ type: 'left', roomId: 'room-1', peerId: PEER_A, correlationId: msg.correlationId });
    assert.deepEqual(await p, { roomId: 'room-1', peerId: PEER_A, confirmed: true });
    assert.equal(left.reason, 'leave');
    // Sending through it now is refused by the server, not hidden: the client still sends.
    assert.equal(typeof room.offer(PEER_B, SDP), 'string');
  });

  test('the handle keeps working across a reconnect (resumed)', async () => {
    const t = await connected();
    const room = await joinRoom(t, 'room-1', PEER_A, { resumeToken: 'rt' });
    const n = t.sockets.length;
    t.ws().drop(1006);
    t.clock.advance(250);
    assert.equal(t.sockets.length, n + 1);
    t.ws().open();
    const resume = t.ws().last();
    assert.equal(resume.type, 'resume');
    t.ws().receive({ type: 'resumed', roomId: 'room-1', peerId: PEER_A, peers: [PEER_B], replayed: 0, resumeToken: 'rt2', correlationId: resume.correlationId });
    assert.equal(room.active, true);
    assert.deepEqual(room.info().peers, [PEER_B]);
    const cid = room.offer(PEER_B, SDP);
    assert.deepEqual(t.ws().last(), { type: 'offer', roomId: 'room-1', from: PEER_A, to: PEER_B, sdp: SDP, correlationId: cid });
  });

  test('a second join of the same room resolves with another handle of the same room', async () => {
    const t = await connected();
    const a = await joinRoom(t, 'room-1', PEER_A);
    const b = await joinRoom(t, 'room-1', PEER_A);
    assert.notEqual(a, b);
    assert.equal(a.roomId, b.roomId);
    assert.equal(a.active && b.active, true);
    await assert.rejects(t.client.join('room-1', PEER_B), { code: 'bad_request' });
  });
});

describe('reconnect', () => {
  test('backoffDelay grows by factor, caps at maxMs, jitter stays within bounds', () => {
    const p = DEFAULT_RECONNECT;
    const mid = [0, 1, 2, 3, 4, 5, 6, 7, 8].map((a) => backoffDelay(a, p, () => 0.5));
    assert.deepEqual(mid, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
    for (let attempt = 0; attempt < 10; attempt++) {
      const base = Math.min(p.maxMs, p.initialMs * p.factor ** attempt);
      for (const r of [0, 0.1, 0.25, 0.5, 0.75, 0.999999]) {
        const d = backoffDelay(attempt, p, () => r);
        assert.ok(d >= Math.floor(base * (1 - p.jitter)), `attempt ${attempt} r ${r}: ${d} too small`);
        assert.ok(d <= Math.min(p.maxMs, Math.ceil(base * (1 + p.jitter))), `attempt ${attempt} r ${r}: ${d} too large`);
      }
    }
    assert.equal(backoffDelay(0, p, () => 0), 175);
    assert.equal(backoffDelay(0, p, () => 0.999999), 325);
    assert.equal(backoffDelay(20, p, () => 0.999999), 10000);
    assert.equal(backoffDelay(20, p, () => 0), 7000, 'the base is capped before the jitter');
  });

  test('failed attempts wait 250, 500, 1000, ... 10000 ms (capped) before the next socket', async () => {
    const t = setup();
    t.client.connect().catch(() => {});
    const delays = [];
    for (let i = 0; i < 8; i++) {
      const n = t.sockets.length;
      t.ws().drop(1006);
      assert.equal(t.client.state, 'reconnecting');
      const [delay] = t.clock.pending();
      delays.push(delay);
      t.clock.advance(delay - 1);
      assert.equal(t.sockets.length, n, 'no attempt before the delay');
      t.clock.advance(1);
      assert.equal(t.sockets.length, n + 1, 'an attempt once the delay passed');
    }
    assert.deepEqual(delays, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
    assert.deepEqual(
      t.of('close').map((c) => c.delayMs),
      delays,
    );
  });

  test('jittered delays stay within ±jitter of the base', async () => {
    const values = [0, 0.999999, 0.3];
    let i = 0;
    const t = setup({ random: () => values[i++ % values.length] });
    t.client.connect().catch(() => {});
    const delays = [];
    for (let k = 0; k < 3; k++) {
      t.ws().drop(1006);
      delays.push(t.clock.pending()[0]);
      t.clock.advance(20000);
    }
    assert.deepEqual(delays, [175, 650, 880]);
  });

  test('the backoff starts over after a connection that stayed open stableMs', async () => {
    const t = await connected();
    t.ws().drop(1006);
    t.clock.advance(250);
    t.ws().drop(1006); // never opened: the next delay grows
    assert.equal(t.clock.pending()[0], 500);
    t.clock.advance(500);
    t.ws().open();
    t.clock.advance(6000);
    t.ws().drop(1006);
    assert.equal(t.clock.pending()[0], 250);
  });

  test('no reconnect after close(): state closed, close event says so', async () => {
    const t = await connected();
    t.client.close();
    await tick();
    assert.deepEqual(t.ws().closeCalls, [{ code: 1000, reason: '' }]);
    assert.equal(t.client.state, 'closed');
    t.clock.advance(60000);
    assert.equal(t.sockets.length, 1);
    assert.equal(t.of('close').at(-1).willReconnect, false);
  });

  test('close() with an application code does not reconnect either', async () => {
    const t = await connected();
    t.client.close(4000, 'bye');
    await tick();
    assert.deepEqual(t.ws().closeCalls, [{ code: 4000, reason: 'bye' }]);
    t.clock.advance(60000);
    assert.equal(t.sockets.length, 1);
    assert.equal(t.client.state, 'closed');
  });

  test('close() during the backoff wait cancels the pending attempt', async () => {
    const t = await connected();
    t.ws().drop(1006);
    assert.equal(t.clock.pending().length, 1);
    t.client.close();
    t.clock.advance(60000);
    assert.equal(t.sockets.length, 1);
    assert.equal(t.client.state, 'closed');
  });

  test('server close 1000 and 1008 end the session; 1001 and 1011 reconnect', async () => {
    for (const [code, again] of [
      [1000, false],
      [1008, false],
      [1001, true],
      [1011, true],
      [1006, true],
    ]) {
      const t = await connected();
      t.ws().drop(code);
      t.clock.advance(20000);
      assert.equal(t.sockets.length, again ? 2 : 1, `close ${code}`);
      assert.equal(t.of('close')[0].willReconnect, again, `close ${code}`);
    }
  });

  test('maxAttempts exhausted: connect() rejects and the client is closed', async () => {
    const t = setup({ reconnect: { maxAttempts: 2 } });
    const p = t.client.connect();
    t.ws().drop(1006);
    t.clock.advance(1000);
    t.ws().drop(1006);
    t.clock.advance(1000);
    t.ws().drop(1006);
    await assert.rejects(p, { code: 'connect_failed' });
    assert.equal(t.client.state, 'closed');
    assert.equal(t.sockets.length, 3);
  });

  test('after reconnecting it re-joins every room with the same peerId', async () => {
    const t = await connected();
    await joinRoom(t, 'room-1', PEER_A);
    await joinRoom(t, 'room-2', PEER_C);
    t.ws().drop(1006);
    t.clock.advance(250);
    t.ws().open();
    const sent = t.ws().messages;
    assert.deepEqual(
      sent.map((m) => [m.type, m.roomId, m.peerId]),
      [
        ['join', 'room-1', PEER_A],
        ['join', 'room-2', PEER_C],
      ],
    );
    assert.deepEqual(t.of('open').at(-1), { protocol: 'signal.v1', reconnected: true });
    t.ws().receive({ type: 'joined', roomId: 'room-1', peerId: PEER_A, peers: [PEER_B], correlationId: sent[0].correlationId });
    const last = t.of('joined').at(-1);
    assert.equal(last.rejoin, true);
    assert.deepEqual(last.peers, [PEER_B]);
  });

  test('a join made while reconnecting is sent on open and resolves then', async () => {
    const t = await connected();
    t.ws().drop(1006);
    const p = t.client.join('room-1', PEER_A);
    t.clock.advance(250);
    t.ws().open();
    const msg = t.ws().last();
    assert.equal(msg.type, 'join');
    t.ws().receive({ type: 'joined', roomId: 'room-1', peerId: PEER_A, peers: [], correlationId: msg.correlationId });
    const d = await p;
    assert.equal(d.rejoin, false);
  });

  test('a re-join that hits a transient error is retried with backoff', async () => {
    const t = await connected();
    await joinRoom(t);
    t.ws().drop(1006);
    t.clock.advance(250);
    t.ws().open();
    const first = t.ws().last();
    t.ws().receive({ type: 'error', code: 'unavailable', message: 'redis down', correlationId: first.correlationId });
    assert.equal(t.ws().sent.length, 1);
    t.clock.advance(250);
    const second = t.ws().last();
    assert.equal(t.ws().sent.length, 2);
    assert.equal(second.type, 'join');
    assert.notEqual(second.correlationId, first.correlationId);
  });
});

describe('resumption', () => {
  async function joinedWithResume() {
    const t = await connected();
    await joinRoom(t, 'room-1', PEER_A, { resumeToken: 'secret-resume-token' });
    const relay = (seq) =>
      t.ws().receive({
        type: 'relay',
        inner: { type: 'candidate', roomId: 'room-1', from: PEER_B, to: PEER_A, candidate: { candidate: '' } },
        correlationId: `c${seq}`,
        seq,
      });
    relay(1);
    relay(2);
    relay(3);
    t.ws().drop(1006);
    t.clock.advance(250);
    t.ws().open();
    return { t, relay };
  }

  test('after a drop it sends resume with the token and the highest seq seen', async () => {
    const { t } = await joinedWithResume();
    const msg = t.ws().last();
    assert.deepEqual(msg, {
      type: 'resume',
      roomId: 'room-1',
      peerId: PEER_A,
      resumeToken: 'secret-resume-token',
      lastSeq: 3,
      correlationId: msg.correlationId,
    });
    assert.equal(t.client.room('room-1').status, 'resuming');
  });

  test('resumed: a resumed event, replayed relays pass once, duplicates are dropped, gaps reported', async () => {
    const { t, relay } = await joinedWithResume();
    const msg = t.ws().last();
    t.ws().receive({ type: 'resumed', roomId: 'room-1', peerId: PEER_A, peers: [PEER_B], replayed: 2, resumeToken: 'fresh', correlationId: msg.correlationId });
    assert.deepEqual(t.of('resumed'), [{ roomId: 'room-1', peerId: PEER_A, peers: [PEER_B], replayed: 2, resumed: true, correlationId: msg.correlationId }]);
    relay(3); // already seen
    relay(4);
    relay(6); // 5 was dropped by the buffer caps
    assert.deepEqual(
      t.of('relay').map((r) => [r.seq, r.gap]),
      [
        [1, 0],
        [2, 0],
        [3, 0],
        [4, 0],
        [6, 1],
      ],
    );
    // The next drop resumes with the fresh token and seq 6.
    const n = t.sockets.length;
    t.ws().drop(1006);
    t.clock.advance(10000);
    assert.equal(t.sockets.length, n + 1);
    t.ws().open();
    assert.equal(t.ws().last().resumeToken, 'fresh');
    assert.equal(t.ws().last().lastSeq, 6);
  });

  test('resume_failed falls back to a fresh join; seq numbering starts over', async () => {
    const { t, relay } = await joinedWithResume();
    const resume = t.ws().last();
    t.ws().receive({ type: 'error', code: 'resume_failed', message: 'expired', correlationId: resume.correlationId, roomId: 'room-1' });
    const join = t.ws().last();
    assert.equal(join.type, 'join');
    assert.equal(join.peerId, PEER_A);
    assert.notEqual(join.correlationId, resume.correlationId);
    t.ws().receive({ type: 'joined', roomId: 'room-1', peerId: PEER_A, peers: [PEER_B], correlationId: join.correlationId, resumeToken: 'new' });
    assert.equal(t.of('joined').at(-1).rejoin, true);
    relay(1); // a new membership: seq 1 is new, not a duplicate
    assert.equal(t.of('relay').at(-1).seq, 1);
    assert.equal(t.of('relay').length, 4);
  });

  test('without a resumeToken (server has resumption off) it joins directly', async () => {
    const t = await connected();
    await joinRoom(t);
    t.ws().drop(1006);
    t.clock.advance(250);
    t.ws().open();
    assert.equal(t.ws().last().type, 'join');
  });

  test('resume: false never sends resume; a fresh join starts seq over', async () => {
    const t = await connected({ resume: false });
    await joinRoom(t, 'room-1', PEER_A, { resumeToken: 'tok' });
    const relay = (seq) =>
      t.ws().receive({ type: 'relay', inner: { type: 'answer', roomId: 'room-1', from: PEER_B, to: PEER_A, sdp: SDP }, correlationId: `c${seq}`, seq });
    relay(1);
    relay(2);
    t.ws().drop(1006);
    t.clock.advance(250);
    t.ws().open();
    const join = t.ws().last();
    assert.equal(join.type, 'join');
    t.ws().receive({ type: 'joined', roomId: 'room-1', peerId: PEER_A, peers: [PEER_B], correlationId: join.correlationId });
    relay(1);
    assert.deepEqual(
      t.of('relay').map((r) => r.seq),
      [1, 2, 1],
    );
  });
});

// docs/protocol.md §9 "Backend control": kick (and close-room) tell the
// kicked connection {type: error, code: kicked, roomId, message: reason} and
// keep it open for its other rooms; revoke closes the user's connections
// with 1008 "revoked" and refuses its handshakes (401) for the TTL.
describe('backend control: kicked and revoked', () => {
  const KICK = (roomId, message = 'see you later') => ({ type: 'error', code: 'kicked', roomId, message });

  /** Two rooms joined, both with resume tokens (the gateway's default). */
  async function inTwoRooms(options) {
    const t = await connected(options);
    const r1 = await joinRoom(t, 'room-1', PEER_A, { resumeToken: 'rt-1', peers: [PEER_B] });
    const r2 = await joinRoom(t, 'room-2', PEER_C, { resumeToken: 'rt-2', peers: [PEER_B] });
    return { t, r1, r2 };
  }

  test('kicked: a typed kicked event with the reason, then left (kicked); the room is forgotten, the connection stays', async () => {
    const { t, r1, r2 } = await inTwoRooms();
    const order = [];
    for (const type of ['error', 'kicked', 'left']) t.client.on(type, () => order.push(type));
    t.ws().receive(KICK('room-1'));
    assert.deepEqual(t.of('kicked'), [{ roomId: 'room-1', peerId: PEER_A, reason: 'see you later' }]);
    assert.deepEqual(t.of('left'), [{ roomId: 'room-1', peerId: PEER_A, reason: 'kicked' }]);
    assert.deepEqual(t.of('error'), [{ code: 'kicked', message: 'see you later', roomId: 'room-1' }]);
    assert.deepEqual(order, ['error', 'kicked', 'left'], 'the error first, as for every server error; then what it means');
    assert.deepEqual(t.client.rooms.map((r) => r.roomId), ['room-2']);
    assert.equal(r1.active, false);
    assert.equal(r1.info(), null);
    // The connection and the other room go on.
    assert.equal(t.client.state, 'open');
    assert.equal(t.of('close').length, 0);
    assert.equal(r2.active, true);
    const cid = r2.offer(PEER_B, SDP);
    assert.deepEqual(t.ws().last(), { type: 'offer', roomId: 'room-2', from: PEER_C, to: PEER_B, sdp: SDP, correlationId: cid });
    t.ws().receive({ type: 'peer_joined', roomId: 'room-2', peerId: PEER_A });
    assert.deepEqual(r2.info().peers, [PEER_B, PEER_A]);
  });

  test('no rejoin after kicked: a reconnect resumes the other room only, and nothing re-enters the kicked one', async () => {
    const { t } = await inTwoRooms();
    t.ws().receive(KICK('room-1'));
    t.ws().drop(1006);
    t.clock.advance(250);
    t.ws().open();
    assert.deepEqual(t.ws().messages.map((m) => [m.type, m.roomId]), [['resume', 'room-2']]);
    const resume = t.ws().last();
    t.ws().receive({ type: 'resumed', roomId: 'room-2', peerId: PEER_C, peers: [PEER_B], replayed: 0, resumeToken: 'rt-2b', correlationId: resume.correlationId });
    // Nor later: more drops, more reconnects, a resume_failed fallback of the other room.
    t.ws().drop(1006);
    t.clock.advance(10000);
    t.ws().open();
    const again = t.ws().last();
    t.ws().receive({ type: 'error', code: 'resume_failed', message: 'expired', roomId: 'room-2', correlationId: again.correlationId });
    assert.deepEqual(t.ws().messages.map((m) => [m.type, m.roomId]), [['resume', 'room-2'], ['join', 'room-2']]);
    const afterKick = t.sockets.slice(1).flatMap((ws) => ws.messages);
    assert.equal(afterKick.filter((m) => m.roomId === 'room-1').length, 0, 'room-1 never re-entered');
    assert.equal(t.of('kicked').length, 1);
  });

  test('no rejoin after kicked without resumption either (the fresh-join path)', async () => {
    const t = await connected({ resume: false });
    await joinRoom(t, 'room-1', PEER_A);
    await joinRoom(t, 'room-2', PEER_A);
    t.ws().receive(KICK('room-2', ''));
    assert.deepEqual(t.of('kicked'), [{ roomId: 'room-2', peerId: PEER_A, reason: '' }]);
    t.ws().drop(1006);
    t.clock.advance(250);
    t.ws().open();
    assert.deepEqual(t.ws().messages.map((m) => [m.type, m.roomId]), [['join', 'room-1']]);
  });

  test("room.on('kicked') gets its own room's kick only; room.on('left') says kicked", async () => {
    const { t, r1, r2 } = await inTwoRooms();
    const got = [];
    r1.on('kicked', (d) => got.push(['r1 kicked', d.roomId, d.reason]));
    r1.on('left', (d) => got.push(['r1 left', d.roomId, d.reason]));
    r2.on('kicked', (d) => got.push(['r2 kicked', d.roomId, d.reason]));
    t.ws().receive(KICK('room-2', 'meeting over'));
    t.ws().receive(KICK('room-1', 'bye'));
    assert.deepEqual(got, [
      ['r2 kicked', 'room-2', 'meeting over'],
      ['r1 kicked', 'room-1', 'bye'],
      ['r1 left', 'room-1', 'kicked'],
    ]);
    assert.equal(r1.active || r2.active, false);
    assert.deepEqual(t.client.rooms, []);
    assert.equal(t.client.state, 'open');
  });

  test('a kick while a join() of that room waits rejects it with the kicked error', async () => {
    const { t } = await inTwoRooms();
    let outcome = 'pending';
    t.client.join('room-1', PEER_A).then(() => (outcome = 'resolved'), (err) => (outcome = err)); // a repeated join, unanswered
    t.ws().receive(KICK('room-1', 'out'));
    await tick();
    assert.ok(outcome instanceof SignalError, `the join is rejected, not ${outcome}`);
    assert.deepEqual([outcome.code, outcome.message, outcome.roomId, outcome.local], ['kicked', 'out', 'room-1', false]);
    // Its late answer (if the server sends one) brings nothing back.
    t.ws().receive({ type: 'error', code: 'not_joined', message: 'gone', roomId: 'room-1', correlationId: t.ws().last().correlationId });
    assert.equal(t.client.room('room-1'), null);
  });

  test('a kick of a room the client does not hold is only an error event', async () => {
    const { t } = await inTwoRooms();
    t.ws().receive(KICK('room-9'));
    t.ws().receive({ type: 'error', code: 'kicked', message: 'no room id' });
    assert.equal(t.of('kicked').length, 0);
    assert.equal(t.of('left').length, 0);
    assert.equal(t.of('error').length, 2);
    assert.deepEqual(t.client.rooms.map((r) => r.roomId), ['room-1', 'room-2']);
  });

  test('after a kick the application may join the room again itself', async () => {
    const { t } = await inTwoRooms();
    t.ws().receive(KICK('room-1'));
    const room = await joinRoom(t, 'room-1', PEER_A, { resumeToken: 'rt-new' });
    assert.equal(room.active, true);
    assert.equal(t.of('joined').at(-1).rejoin, false, 'an explicit join, not an automatic re-join');
  });

  test('peer_left with reason kicked reaches the app and the room handle; the peer is gone from the room', async () => {
    const { t, r1 } = await inTwoRooms();
    const viaRoom = [];
    r1.on('peer_left', (d) => viaRoom.push(d));
    t.ws().receive({ type: 'peer_left', roomId: 'room-1', peerId: PEER_B, reason: 'kicked' });
    assert.deepEqual(t.of('peer_left'), [{ roomId: 'room-1', peerId: PEER_B, reason: 'kicked' }]);
    assert.deepEqual(viaRoom, [{ roomId: 'room-1', peerId: PEER_B, reason: 'kicked' }]);
    assert.deepEqual(r1.info().peers, []);
    assert.equal(r1.active, true, 'a room-mate kicked: we stay');
  });

  test('revoked (close 1008 "revoked"): a revoked event, left (revoked) per room, close without reconnect', async () => {
    const { t, r1 } = await inTwoRooms();
    const order = [];
    for (const type of ['revoked', 'left', 'close']) t.client.on(type, (d) => order.push(type === 'left' ? `left ${d.roomId}` : type));
    t.ws().drop(1008, 'revoked');
    assert.deepEqual(t.of('revoked'), [{ code: 1008, reason: 'revoked', rooms: ['room-1', 'room-2'] }]);
    assert.deepEqual(t.of('left'), [
      { roomId: 'room-1', peerId: PEER_A, reason: 'revoked' },
      { roomId: 'room-2', peerId: PEER_C, reason: 'revoked' },
    ]);
    assert.deepEqual(t.of('close'), [{ code: 1008, reason: 'revoked', wasClean: true, willReconnect: false }]);
    assert.deepEqual(order, ['revoked', 'left room-1', 'left room-2', 'close']);
    assert.equal(t.client.state, 'closed');
    assert.deepEqual(t.client.rooms, []);
    assert.equal(r1.active, false);
    t.clock.advance(600000);
    assert.equal(t.sockets.length, 1, 'no reconnect');
    assert.deepEqual(t.clock.pending(), [], 'no timer left behind');
  });

  test('no reconnect after revoked even when 1008 is not in noReconnectCodes (any other 1008 then reconnects)', async () => {
    const policy = { reconnect: { noReconnectCodes: [1000] } };
    const revoked = await inTwoRooms(policy);
    revoked.t.ws().drop(1008, 'revoked');
    revoked.t.clock.advance(600000);
    assert.equal(revoked.t.sockets.length, 1, 'revoked: no reconnect');
    assert.equal(revoked.t.of('close')[0].willReconnect, false);
    assert.equal(revoked.t.of('revoked').length, 1);

    const flooded = await inTwoRooms(policy);
    flooded.t.ws().drop(1008, 'policy violation');
    flooded.t.clock.advance(250);
    assert.equal(flooded.t.sockets.length, 2, 'another 1008 follows noReconnectCodes');
    assert.equal(flooded.t.of('revoked').length, 0);
  });

  test('revoked rejects a pending join with the revoked code; connecting again is the application\'s call', async () => {
    const { t } = await inTwoRooms();
    const joining = t.client.join('room-3', PEER_A);
    t.ws().drop(1008, 'revoked');
    await assert.rejects(joining, { name: 'SignalError', code: 'revoked', roomId: 'room-3', local: true });
    assert.deepEqual(t.of('revoked')[0].rooms, ['room-1', 'room-2', 'room-3']);
    assert.equal(t.of('left').length, 2, 'left only for rooms the client was in');
    // connect() again is the application's call (a new token, after the revocation ends).
    const p = t.client.connect();
    t.ws().open();
    await p;
    assert.equal(t.client.state, 'open');
  });
});
