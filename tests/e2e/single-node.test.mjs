// SPDX-License-Identifier: Apache-2.0
// E2E 2: two headless Chromium pages load the demo from one gateway over wss
// (self-signed certificate made by this test), connect through the JS
// client, reach connectionState "connected" and exchange chat messages on the
// data channel both ways. Screenshots of both pages go to the artifacts
// directory (build/e2e-artifacts/ unless SG_E2E_ARTIFACTS says otherwise).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { ARTIFACTS, Cluster, REPO, metricValue } from './lib/cluster.mjs';
import { callUp, endBrowserTests, openDemo, politeImpoliteIds, saveDiagnostics, screenshot, startBrowserTests } from './lib/browser.mjs';

const OUT = path.join(ARTIFACTS, 'single-node');
let cluster;
let browser;

before(async () => {
  browser = await startBrowserTests(OUT);
  cluster = new Cluster('single');
  await cluster.redis();
});

after(() => endBrowserTests(browser, cluster, OUT));

test('two Chromium pages call each other through one gateway over wss', { timeout: 120000 }, async () => {
  const gw = await cluster.gateway({ name: 'gw-single', tls: true });
  const room = 'demo';
  const ta = cluster.token('alice', room);
  const tb = cluster.token('bob', room);
  // alice, in the room first, is the polite side; bob joins second and is
  // impolite (cross-node.test.mjs has it the other way round). Both offer at
  // once (glare): bob's offer wins.
  const [polite, impolite] = politeImpoliteIds();

  // The demo and the library come from the gateway itself (SIGNAL_STATIC_DIR),
  // same origin as wss://.../ws; the token travels in the fragment.
  const a = await openDemo(browser, `${gw.origin}/demo/#token=${ta}&room=${room}&peer=${polite}`, 'alice');
  // bob's page uses the query form instead, through the /demo -> /demo/ redirect.
  const b = await openDemo(browser, `${gw.origin}/demo?token=${tb}&room=${room}&peer=${impolite}`, 'bob');
  assert.equal(new URL(b.page.url()).pathname, '/demo/');
  try {
    const t0 = Date.now();
    const connectMs = (await callUp(a, b, ['hello bob, from alice', 'hi alice, bob here'])) - t0;

    const sa = await a.state();
    const sb = await b.state();
    assert.equal(sa.media, 'camera', 'the fake camera of --use-fake-device-for-media-stream');
    assert.equal(sa.signaling, 'open');
    assert.equal(sa.peers[b.peerId].connectionState, 'connected');
    assert.equal(sb.peers[a.peerId].connectionState, 'connected');
    // A real call never trips the default limits.
    assert.deepEqual(sa.errors, [], 'alice saw no signaling error');
    assert.deepEqual(sb.errors, [], 'bob saw no signaling error');
    // The gateway never writes a token into its logs (not even one that came in a query string).
    const log = gw.proc.log();
    assert.ok(!log.includes(ta) && !log.includes(tb), 'no token in the gateway log');
    const m = await gw.metrics();
    assert.equal(metricValue(m, 'ws_connections_gauge'), 2);
    const relayed = ['offer', 'answer', 'candidate'].map((t) => metricValue(m, 'messages_total', { type: t }));
    assert.ok(relayed[0] >= 1 && relayed[1] >= 1 && relayed[2] >= 2, `offer/answer/candidate counted: ${relayed}`);

    const shots = [await screenshot(a, OUT, 'alice.png'), await screenshot(b, OUT, 'bob.png')];
    if (process.env.SG_E2E_UPDATE_DOCS === '1') fs.copyFileSync(shots[0], path.join(REPO, 'docs', 'demo.png'));
    await saveDiagnostics(b, OUT, 'bob');

    // Closing a tab closes its WebSocket with 1000 (the demo's pagehide
    // handler): the room-mate sees the peer leave at once, not after the
    // heartbeat or the resumption grace period.
    const t1 = Date.now();
    await b.page.close({ runBeforeUnload: true });
    await a.page.waitForFunction((r) => !(r in window.demo.state().peers), b.peerId, { timeout: 5000, polling: 100 });
    const goneMs = Date.now() - t1;
    assert.ok((await a.signalLog()).some((l) => l.includes('peer_left') && l.includes('reason=disconnect')), 'peer_left with reason disconnect');
    console.log(`# connected in ${connectMs} ms; offer/answer/candidate messages: ${relayed.join('/')}; ` +
      `bob's tab closed -> alice saw peer_left in ${goneMs} ms; screenshots: ${shots.join(' ')}`);
  } finally {
    await saveDiagnostics(a, OUT, 'alice');
    if (!b.page.isClosed()) await saveDiagnostics(b, OUT, 'bob');
  }
});
