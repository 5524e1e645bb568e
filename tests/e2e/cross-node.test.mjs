// SPDX-License-Identifier: Apache-2.0
// E2E 3: the same call with the two pages on two different gateway nodes
// behind haproxy (TLS terminated at the load balancer). Every relay crosses
// from one node to the other through Redis.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { ARTIFACTS } from './lib/cluster.mjs';
import { callUp, endBrowserTests, openDemo, politeImpoliteIds, saveDiagnostics, screenshot, startBrowserTests } from './lib/browser.mjs';
import { connectionsPerNode, relaysCounted, twoNodes } from './lib/two-nodes.mjs';

const OUT = path.join(ARTIFACTS, 'cross-node');
let env;
let browser;

before(async () => {
  browser = await startBrowserTests(OUT);
  env = await twoNodes('cross');
});

after(() => endBrowserTests(browser, env?.cluster, OUT));

test('two Chromium pages on two gateway nodes behind haproxy call each other through Redis', { timeout: 120000 }, async () => {
  const { cluster, gwA, gwB, originA, originB } = env;
  const room = 'demo';
  // bob, who joins second, is the polite side (single-node.test.mjs has it the other way round).
  const [polite, impolite] = politeImpoliteIds();
  const a = await openDemo(browser, `${originA}/demo/#token=${cluster.token('alice', room)}&room=${room}&peer=${impolite}`, 'alice');
  const b = await openDemo(browser, `${originB}/demo/#token=${cluster.token('bob', room)}&room=${room}&peer=${polite}`, 'bob');
  try {
    // Each page landed on its own node.
    assert.deepEqual(await connectionsPerNode(gwA, gwB), { 'gw-a': 1, 'gw-b': 1 });
    const joins = (gw) => gw.logEvents().filter((e) => e.event === 'room.join').map((e) => e.peer);
    assert.deepEqual(joins(gwA), [a.peerId], 'alice joined on node A');
    assert.deepEqual(joins(gwB), [b.peerId], 'bob joined on node B');

    const t0 = Date.now();
    const connectMs = (await callUp(a, b, ['hello bob, from alice on node A', 'hi alice, bob on node B here'])) - t0;

    // Each node took its own client's offer/answer/candidates and the other
    // node delivered them: the only path between the nodes is Redis.
    const ra = await relaysCounted(gwA);
    const rb = await relaysCounted(gwB);
    assert.ok(ra.offer + ra.answer >= 1 && ra.candidate >= 1, `node A relayed alice's messages: ${JSON.stringify(ra)}`);
    assert.ok(rb.offer + rb.answer >= 1 && rb.candidate >= 1, `node B relayed bob's messages: ${JSON.stringify(rb)}`);
    const sa = await a.state();
    const sb = await b.state();
    const inA = (await a.signalLog()).filter((l) => l.includes('← relay')).length;
    const inB = (await b.signalLog()).filter((l) => l.includes('← relay')).length;
    assert.equal(inA, rb.offer + rb.answer + rb.candidate, 'alice got every relay bob sent through node B');
    assert.equal(inB, ra.offer + ra.answer + ra.candidate, 'bob got every relay alice sent through node A');
    assert.deepEqual(sa.errors, [], 'alice saw no signaling error');
    assert.deepEqual(sb.errors, [], 'bob saw no signaling error');
    assert.deepEqual(await connectionsPerNode(gwA, gwB), { 'gw-a': 1, 'gw-b': 1 }, 'still one page per node');

    const shots = [await screenshot(a, OUT, 'alice-node-a.png'), await screenshot(b, OUT, 'bob-node-b.png')];
    console.log(`# connected in ${connectMs} ms; node A relayed ${JSON.stringify(ra)}, node B ${JSON.stringify(rb)}; screenshots: ${shots.join(' ')}`);
  } finally {
    await saveDiagnostics(a, OUT, 'alice');
    await saveDiagnostics(b, OUT, 'bob');
  }
});
