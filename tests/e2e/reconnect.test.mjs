// SPDX-License-Identifier: Apache-2.0
// E2E 4: a call survives the death of one page's gateway node. Two pages on
// two nodes behind haproxy (as in cross-node.test.mjs) are in a call; node A
// (alice's) is killed with SIGKILL. haproxy closes alice's WebSocket and
// sends her reconnect to node B; the JS client reconnects and resumes its
// room there (docs/protocol.md §9), or re-joins when the resume is refused; the
// peers renegotiate through the surviving node — an ICE restart after a
// resume, a fresh RTCPeerConnection on both sides after a re-join — and the
// call comes back: connectionState "connected" on the renegotiated session
// and new chat messages both ways.
//
// Three cases, each with its own cluster: the reconnecting page is the
// polite one / the impolite one (perfect negotiation roles follow the peer
// ids, which the test picks), and a resume refused by the gateway (the test
// corrupts the page's resume token before the kill: resume_failed, then the
// client's fallback join takes the peerId over on node B).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { ARTIFACTS, waitFor } from './lib/cluster.mjs';
import {
  callUp, endBrowserTests, exchange, openDemo, politeImpoliteIds, saveDiagnostics, screenshot, startBrowserTests, waitConnected,
} from './lib/browser.mjs';
import { connectionsPerNode, twoNodes } from './lib/two-nodes.mjs';

const OUT = path.join(ARTIFACTS, 'reconnect');
let browser;

before(async () => {
  browser = await startBrowserTests(OUT);
});

after(() => endBrowserTests(browser, null, OUT));

/** Starts recording the page's client and link events into window.__e2e. */
function record(demo, remote) {
  return demo.page.evaluate((r) => {
    const events = [];
    window.__e2e = { events };
    const t0 = performance.now();
    const push = (type, detail) => events.push({ t: Math.round(performance.now() - t0), type, ...detail });
    const c = window.demo.client;
    c.on('close', (d) => push('close', { code: d.code, willReconnect: d.willReconnect }));
    c.on('open', (d) => push('open', { reconnected: d.reconnected }));
    c.on('joined', (d) => push('joined', { rejoin: d.rejoin, peers: d.peers.length }));
    c.on('resumed', (d) => push('resumed', { replayed: d.replayed, peers: d.peers.length }));
    c.on('peer_left', (d) => push('peer_left', { reason: d.reason }));
    c.on('peer_joined', () => push('peer_joined', {}));
    c.on('error', (d) => push('error', { code: d.code, local: Boolean(d.local) }));
    c.on('sent', (m) => (m.type === 'offer' || m.type === 'answer') && push(`sent ${m.type}`, {}));
    c.on('relay', (d) => (d.type === 'offer' || d.type === 'answer') && push(`got ${d.type}`, {}));
    const link = window.demo.peers.get(r);
    link.on('reset', (d) => push('reset', { reason: d.reason }));
    link.on('connectionstatechange', (d) => push('connection', { state: d.state }));
    link.on('glare', (d) => push('glare', { action: d.action }));
    window.__e2e.pc = link.pc;
  }, remote);
}

/**
 * The ICE session of the link to `remote`: the ufrags of the local and remote
 * descriptions, the signaling state, what getStats() says the transport
 * runs on, and whether the RTCPeerConnection is the one recorded before.
 */
function iceInfo(demo, remote) {
  return demo.page.evaluate(async (r) => {
    const link = window.demo.peers.get(r);
    const pc = link?.pc;
    const ufrag = (d) => /a=ice-ufrag:(\S+)/.exec(d?.sdp ?? '')?.[1] ?? null;
    let transport = null;
    if (pc) {
      for (const s of (await pc.getStats()).values()) {
        if (s.type === 'transport') transport = { localUfrag: s.iceLocalUsernameFragment ?? null, iceState: s.iceState ?? null, dtlsState: s.dtlsState };
      }
    }
    return {
      ufrag: ufrag(pc?.localDescription),
      remoteUfrag: ufrag(pc?.remoteDescription),
      signalingState: pc?.signalingState,
      transport,
      samePc: pc === window.__e2e.pc,
      events: window.__e2e.events,
    };
  }, remote);
}

/** True when the session is a new one (new pc or ICE restart) that both sides agree on and that carries the call. */
function renegotiated(mine, theirs, was) {
  const fresh = !mine.samePc || (mine.ufrag && mine.ufrag !== was.ufrag);
  const agreed = mine.signalingState === 'stable' && mine.remoteUfrag === theirs.ufrag && theirs.remoteUfrag === mine.ufrag;
  const carried = !mine.transport?.localUfrag || (mine.transport.localUfrag === mine.ufrag && mine.transport.iceState === 'connected');
  return fresh && agreed && carried;
}

async function failover({ label, alicePolite, refuseResume }) {
  const out = path.join(OUT, label);
  const env = await twoNodes(`reconnect-${label}`);
  const { cluster, gwA, gwB, originA, originB } = env;
  const room = 'demo';
  const [small, large] = politeImpoliteIds();
  const [pa, pb] = alicePolite ? [small, large] : [large, small];
  let a;
  let b;
  try {
    a = await openDemo(browser, `${originA}/demo/#token=${cluster.token('alice', room)}&room=${room}&peer=${pa}`, 'alice');
    b = await openDemo(browser, `${originB}/demo/#token=${cluster.token('bob', room)}&room=${room}&peer=${pb}`, 'bob');
    assert.deepEqual(await connectionsPerNode(gwA, gwB), { 'gw-a': 1, 'gw-b': 1 });
    await waitConnected(a, b.peerId);
    await waitConnected(b, a.peerId);
    await exchange(a, b, 'before the crash: alice -> bob');
    await exchange(b, a, 'before the crash: bob -> alice');
    await record(a, b.peerId);
    await record(b, a.peerId);
    const before = { a: await iceInfo(a, b.peerId), b: await iceInfo(b, a.peerId) };
    if (refuseResume) {
      // Fault injection: a resume token the gateway does not know (as after
      // the grace period ran out), so the resume is refused.
      await a.page.evaluate((r) => {
        const rec = window.demo.client._rooms.get(r);
        if (!rec?.resumeToken) throw new Error('the page holds no resume token');
        rec.resumeToken = (rec.resumeToken[0] === 'x' ? 'y' : 'x') + rec.resumeToken.slice(1);
      }, room);
    }

    // Node A dies without a word.
    const t0 = Date.now();
    await gwA.proc.kill();
    assert.equal(gwA.proc.signalCode, 'SIGKILL');

    // alice's client reconnects through the same frontend and lands on node B.
    await a.page.waitForFunction(
      () => window.__e2e.events.some((e) => e.type === 'open' && e.reconnected) && window.demo.client.state === 'open',
      null,
      { timeout: 20000, polling: 100 },
    );
    const reconnectMs = Date.now() - t0;
    await waitFor(async () => (await connectionsPerNode(gwB))['gw-b'] === 2, { timeoutMs: 5000, what: 'both pages on node B' });
    await a.page.waitForFunction(
      () => window.__e2e.events.some((e) => e.type === 'resumed' || (e.type === 'joined' && e.rejoin)),
      null,
      { timeout: 15000, polling: 100 },
    );

    // The peers renegotiate and the call is back.
    let last;
    await waitFor(
      async () => {
        const ia = await iceInfo(a, b.peerId);
        const ib = await iceInfo(b, a.peerId);
        last = { ia, ib };
        return renegotiated(ia, ib, before.a) && renegotiated(ib, ia, before.b);
      },
      { timeoutMs: 20000, what: 'a renegotiated ICE session (restart or new connection) on both sides' },
    ).catch((err) => {
      throw new Error(`${err.message}: ${JSON.stringify({ before, last })}`);
    });
    const backMs = (await callUp(a, b, ['after the crash: alice -> bob', 'after the crash: bob -> alice'])) - t0;

    const ia = await iceInfo(a, b.peerId);
    const ib = await iceInfo(b, a.peerId);
    const resumed = ia.events.some((e) => e.type === 'resumed');
    const how = resumed
      ? (ia.samePc && ib.samePc ? 'resumed on node B, ICE restart on the same connections' : 'resumed on node B, new connection')
      : 're-joined on node B, new connection';
    const sa = await a.state();
    const sb = await b.state();
    assert.equal(sa.peers[b.peerId].connectionState, 'connected');
    assert.equal(sb.peers[a.peerId].connectionState, 'connected');
    assert.deepEqual(sb.errors, [], 'bob saw no signaling error');
    if (!refuseResume) {
      // §9: the room comes back silently and the same connections restart ICE.
      assert.ok(resumed, 'alice resumed her room on node B');
      assert.ok(ia.samePc && ib.samePc, 'ICE restart on the same RTCPeerConnections');
      assert.ok(!ib.events.some((e) => e.type === 'peer_left' || e.type === 'peer_joined'), 'bob saw no membership change');
      assert.deepEqual(sa.errors, [], 'alice saw no signaling error');
    } else {
      assert.ok(!resumed && ia.events.some((e) => e.type === 'joined' && e.rejoin), 'alice re-joined on node B');
      assert.deepEqual(sa.errors.map((e) => e.code), ['resume_failed'], 'alice saw only the refused resume');
      assert.ok(!ia.samePc && !ib.samePc, 'both sides started a new RTCPeerConnection');
      assert.ok(ib.events.some((e) => e.type === 'peer_joined'), 'bob saw alice come back (takeover)');
    }

    const shots = [await screenshot(a, out, 'alice-after-failover.png'), await screenshot(b, out, 'bob-after-failover.png')];
    fs.writeFileSync(path.join(out, 'events.json'), JSON.stringify({ alice: ia.events, bob: ib.events }, null, 2) + '\n');
    console.log(`# ${label}: ${how}; signaling back ${reconnectMs} ms and call back ${backMs} ms after the SIGKILL; ` +
      `alice events: ${ia.events.map((e) => e.type).join(',')}; bob events: ${ib.events.map((e) => e.type).join(',')}; ` +
      `ICE ufrag ${before.a.ufrag}->${ia.ufrag} (alice), ${before.b.ufrag}->${ib.ufrag} (bob); alice transport ${JSON.stringify(ia.transport)}; screenshots: ${shots.join(' ')}`);
  } finally {
    if (a) await saveDiagnostics(a, out, 'alice');
    if (b) await saveDiagnostics(b, out, 'bob');
    await a?.context.close().catch(() => {});
    await b?.context.close().catch(() => {});
    cluster.saveLogs(path.join(out, 'logs'));
    await cluster.stop();
    cluster.removeWorkDir();
  }
}

test('SIGKILL of the polite page\'s node: reconnect to the other node, resume, ICE restart', { timeout: 120000 }, () =>
  failover({ label: 'polite', alicePolite: true, refuseResume: false }));

test('SIGKILL of the impolite page\'s node: reconnect to the other node, resume, ICE restart', { timeout: 120000 }, () =>
  failover({ label: 'impolite', alicePolite: false, refuseResume: false }));

test('SIGKILL with the resume refused: re-join on the other node, new connections on both sides', { timeout: 120000 }, () =>
  failover({ label: 'rejoin', alicePolite: true, refuseResume: true }));
