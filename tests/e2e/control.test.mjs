// SPDX-License-Identifier: Apache-2.0
// E2E 5: backend control (docs/protocol.md §9, docs/backend-control.md) as
// the browser sees it. Two headless Chromium pages are in a call through one
// gateway and a real Redis; the test runs the real `signal-gateway kick`
// subcommand on one of them:
//   - the kicked page gets the client's typed `kicked` event with the reason,
//     the demo says so, and its connection stays open;
//   - the other page gets peer_left with reason "kicked" and says the peer
//     was removed;
//   - Redis' room:{R}:peers holds only the other peer, and the kicked page
//     does not come back, not even after its connection drops and the client
//     reconnects: it sends no join or resume for the room, and a relay it
//     sends afterwards is refused by the gateway with not_joined.
// Then `signal-gateway revoke` of a user: its page gets `revoked`, its
// connection is closed with 1008, the client stays closed (no reconnect,
// no refused handshakes on the gateway), the room-mate sees peer_left
// "kicked".

import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { ARTIFACTS, Cluster, GATEWAY_BIN, HOST, metricValue, waitFor } from './lib/cluster.mjs';
import { endBrowserTests, openDemo, politeImpoliteIds, saveDiagnostics, screenshot, startBrowserTests, waitConnected } from './lib/browser.mjs';

const OUT = path.join(ARTIFACTS, 'control');
const SDP = 'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n';
let cluster;
let browser;
let gw;

before(async () => {
  browser = await startBrowserTests(OUT);
  cluster = new Cluster('control');
  await cluster.redis();
  gw = await cluster.gateway({ name: 'gw-control', tls: true });
});

after(() => endBrowserTests(browser, cluster, OUT));

/**
 * Runs a control subcommand of the gateway binary against the test's Redis,
 * with none of the runner's SIGNAL_* or OTEL_* settings. Returns {status,
 * stdout, stderr}.
 */
function control(args) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SIGNAL_') && !k.startsWith('OTEL_')) env[k] = v;
  env.SIGNAL_REDIS_URL = cluster.redisUrl;
  const r = spawnSync(GATEWAY_BIN, args, { env, encoding: 'utf8', timeout: 30000 });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

function roomPeers(room) {
  return execFileSync('redis-cli', ['-h', HOST, '-p', String(cluster.redisPort), '--raw', 'HKEYS', `room:{${room}}:peers`])
    .toString()
    .split('\n')
    .filter(Boolean)
    .sort();
}

/** Records the page's client events (and every message it sends) into window.__e2e. */
function record(demo) {
  return demo.page.evaluate(() => {
    const events = [];
    window.__e2e = { events };
    const c = window.demo.client;
    for (const type of ['kicked', 'revoked', 'left', 'peer_left', 'peer_joined', 'close', 'open', 'joined', 'resumed']) {
      c.on(type, (d) => events.push({ type, ...JSON.parse(JSON.stringify(d)) }));
    }
    c.on('sent', (m) => events.push({ type: 'sent', msg: m.type, roomId: m.roomId }));
  });
}

const events = (demo) => demo.page.evaluate(() => window.__e2e.events);

async function waitEvent(demo, what, pred, timeoutMs = 15000) {
  return waitFor(async () => (await events(demo)).find(pred), { timeoutMs, what: `${demo.name}: ${what}` });
}

test('kick: the kicked page gets `kicked` with the reason and never comes back; its room-mate sees peer_left kicked', { timeout: 180000 }, async () => {
  const room = 'control-kick';
  const [alicePeer, bobPeer] = politeImpoliteIds();
  const a = await openDemo(browser, `${gw.origin}/demo/#token=${cluster.token('alice', room)}&room=${room}&peer=${alicePeer}`, 'alice');
  const b = await openDemo(browser, `${gw.origin}/demo/#token=${cluster.token('bob', room)}&room=${room}&peer=${bobPeer}`, 'bob');
  try {
    await waitConnected(a, bobPeer);
    await waitConnected(b, alicePeer);
    assert.deepEqual(roomPeers(room), [alicePeer, bobPeer].sort());
    await record(a);
    await record(b);

    const reason = 'e2e: removed by the moderator';
    const kick = control(['kick', '--room', room, '--peer', bobPeer, '--reason', reason]);
    assert.equal(kick.status, 0, `kick exit status (stderr: ${kick.stderr})`);
    assert.match(kick.stdout, /"control\.kick"/);
    assert.match(kick.stdout, /"result":"kicked"/);

    // The kicked page: the typed event with the reason, then left (kicked); the connection stays.
    const kicked = await waitEvent(b, 'kicked event', (e) => e.type === 'kicked');
    assert.deepEqual(kicked, { type: 'kicked', roomId: room, peerId: bobPeer, reason });
    await waitEvent(b, 'left (kicked)', (e) => e.type === 'left' && e.reason === 'kicked');
    const sb = await b.state();
    assert.equal(sb.membership, 'kicked');
    assert.deepEqual(sb.kicked, { roomId: room, reason });
    assert.equal(sb.signaling, 'open', 'the kicked connection stays open');
    assert.deepEqual(sb.peers, {}, 'the kicked page closed its call');
    const banner = await b.page.textContent('[data-testid="error"]');
    assert.ok(banner.includes(reason) && banner.includes('removed'), `the page says it was removed, with the reason: ${banner}`);
    assert.equal(await b.page.isVisible('[data-testid="error"]'), true);

    // The room-mate: peer_left kicked, shown as such; the link is gone.
    await waitEvent(a, 'peer_left (kicked)', (e) => e.type === 'peer_left' && e.peerId === bobPeer && e.reason === 'kicked');
    await a.page.waitForFunction((r) => !(r in window.demo.state().peers), bobPeer, { timeout: 10000, polling: 100 });
    const sa = await a.state();
    assert.deepEqual(sa.departures.map((d) => [d.peerId, d.reason]), [[bobPeer, 'kicked']]);
    assert.equal(sa.membership, 'joined');
    const notices = await a.page.textContent('[data-testid="notices"]');
    assert.ok(notices.includes('removed from the room by the application'), `alice's page says bob was removed: ${notices}`);
    assert.deepEqual(roomPeers(room), [alicePeer]);

    // Bob's connection drops (a close the server did not ask for) and the
    // client reconnects: it must not resume or re-join the room. (The test
    // closes the client's own socket with an application code: a page has
    // no other way to lose one WebSocket while the gateway stays up.)
    const before = (await events(b)).length;
    await b.page.evaluate(() => window.demo.client._ws.close(4000, 'e2e: drop'));
    await waitEvent(b, 'reconnected', (e) => e.type === 'open' && e.reconnected);
    const after = (await events(b)).slice(before);
    assert.ok(after.some((e) => e.type === 'close' && e.code === 4000 && e.willReconnect), 'the drop was followed by a reconnect');
    assert.deepEqual(after.filter((e) => e.type === 'sent' && e.roomId === room), [], 'no join or resume of the kicked room');
    // A relay from bob on the new connection: the gateway answers on that
    // connection in order, after anything bob sent before, and refuses it:
    // bob is no member of the room.
    const refused = await b.page.evaluate(
      ([r, from, to, sdp]) => window.demo.client.offer(r, from, to, sdp, { ack: true }).then((d) => `accepted ${d.status}`, (err) => err.code),
      [room, bobPeer, alicePeer, SDP],
    );
    assert.equal(refused, 'not_joined');
    assert.deepEqual(roomPeers(room), [alicePeer], 'Redis: only alice in the room');
    const aliceAfter = await events(a);
    assert.equal(aliceAfter.filter((e) => e.type === 'peer_joined').length, 0, 'alice never saw bob come back');
    assert.equal((await b.state()).membership, 'kicked');

    const m = await gw.metrics();
    assert.equal(metricValue(m, 'control_actions_total', { action: 'kick' }), 1);
    assert.equal(metricValue(m, 'errors_total', { code: 'kicked' }), 1);
    await screenshot(b, OUT, 'kicked-bob.png');
    await screenshot(a, OUT, 'kicked-alice.png');
  } finally {
    await saveDiagnostics(a, OUT, 'kick-alice');
    await saveDiagnostics(b, OUT, 'kick-bob');
    await a.context.close();
    await b.context.close();
  }
});

test('revoke: the revoked page gets `revoked`, its connection closes with 1008 and the client does not reconnect', { timeout: 180000 }, async () => {
  const room = 'control-revoke';
  const [carolPeer, davePeer] = politeImpoliteIds();
  const c = await openDemo(browser, `${gw.origin}/demo/#token=${cluster.token('carol', room)}&room=${room}&peer=${carolPeer}`, 'carol');
  const d = await openDemo(browser, `${gw.origin}/demo/#token=${cluster.token('dave', room)}&room=${room}&peer=${davePeer}`, 'dave');
  try {
    await waitConnected(c, davePeer);
    await waitConnected(d, carolPeer);
    await record(c);
    await record(d);
    const refusedBefore = metricValue(await gw.metrics(), 'auth_failures_total', { reason: 'revoked' });

    const revoke = control(['revoke', '--sub', 'dave', '--ttl', '600']);
    assert.equal(revoke.status, 0, `revoke exit status (stderr: ${revoke.stderr})`);

    const revoked = await waitEvent(d, 'revoked event', (e) => e.type === 'revoked');
    assert.deepEqual(revoked, { type: 'revoked', code: 1008, reason: 'revoked', rooms: [room] });
    const closes = (await events(d)).filter((e) => e.type === 'close');
    assert.deepEqual(closes.map((e) => [e.code, e.reason, e.willReconnect]), [[1008, 'revoked', false]]);
    const sd = await d.state();
    assert.equal(sd.signaling, 'closed');
    assert.equal(sd.membership, 'revoked');
    const banner = await d.page.textContent('[data-testid="error"]');
    assert.ok(banner.includes('revoked'), `the page says the access was revoked: ${banner}`);

    await waitEvent(c, 'peer_left (kicked)', (e) => e.type === 'peer_left' && e.peerId === davePeer && e.reason === 'kicked');
    assert.deepEqual(roomPeers(room), [carolPeer]);
    // The client made no new attempt: its state is final and the gateway
    // refused no handshake of dave's (a retry would be a 401).
    assert.equal(await d.page.evaluate(() => window.demo.client.state), 'closed');
    assert.equal(metricValue(await gw.metrics(), 'auth_failures_total', { reason: 'revoked' }), refusedBefore);
    assert.equal((await events(d)).filter((e) => e.type === 'open').length, 0);
    await screenshot(d, OUT, 'revoked-dave.png');
  } finally {
    await saveDiagnostics(c, OUT, 'revoke-carol');
    await saveDiagnostics(d, OUT, 'revoke-dave');
    await c.context.close();
    await d.context.close();
  }
});
