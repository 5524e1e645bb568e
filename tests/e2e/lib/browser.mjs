// SPDX-License-Identifier: Apache-2.0
// browser.mjs — Debian's Chromium driven by playwright-core (no browser is
// ever downloaded), and helpers around the demo page's test hooks
// (window.demo, see clients/README.md).

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

import { loopbackOnly } from './cluster.mjs';

export const CHROMIUM = process.env.SG_CHROMIUM || '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--ignore-certificate-errors', // the test's self-signed certificate (also ignoreHTTPSErrors below)
  // The tests run in a network namespace with nothing but loopback (run.sh):
  // without this switch Chromium gathers no ICE candidate on 127.0.0.1.
  '--allow-loopback-in-peer-connection',
];

/**
 * A fresh Chromium (playwright gives every launch a new temporary
 * --user-data-dir and removes it on close).
 */
export function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set SG_CHROMIUM)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 60000,
  });
}

/**
 * The start of a browser test file: it runs in a network namespace with only
 * loopback (tests/e2e/run.sh; SG_E2E_HOST_NETWORK=1 to run it anyway), its
 * artifacts directory `out` starts empty; returns a fresh Chromium.
 */
export function startBrowserTests(out) {
  assert.ok(loopbackOnly() || process.env.SG_E2E_HOST_NETWORK === '1',
    'run the browser tests through tests/e2e/run.sh: they need a network namespace with only loopback');
  fs.rmSync(out, { recursive: true, force: true });
  return launchBrowser();
}

/** The end of a browser test file: Chromium closed, the cluster's logs saved under out/logs, the cluster stopped. */
export async function endBrowserTests(browser, cluster, out) {
  await browser?.close().catch(() => {});
  if (cluster) {
    cluster.saveLogs(path.join(out, 'logs'));
    await cluster.stop();
    cluster.removeWorkDir();
  }
}

/**
 * A demo page in its own browser context (own cookies, storage, permissions):
 * {page, name, console: [lines], state(), peerId}.
 */
export async function openDemo(browser, url, name) {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1100, height: 760 },
    colorScheme: 'light',
  });
  const page = await context.newPage();
  const lines = [];
  page.on('console', (m) => lines.push(`[${new Date().toISOString().slice(11, 23)}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => lines.push(`[${new Date().toISOString().slice(11, 23)}] pageerror: ${e.message}`));
  const response = await page.goto(url, { waitUntil: 'load', timeout: 30000 });
  if (!response || !response.ok()) throw new Error(`${name}: GET ${new URL(url).pathname} -> ${response?.status()}`);
  await page.waitForFunction(() => window.demo && (window.demo.ready || window.demo.state().errors.length > 0), null, {
    timeout: 30000,
  });
  const first = await page.evaluate(() => window.demo.state());
  if (!(await page.evaluate(() => window.demo.ready))) {
    throw new Error(`${name}: the demo did not join: ${JSON.stringify(first.errors)}`);
  }
  return {
    name,
    page,
    context,
    console: lines,
    peerId: first.peerId,
    state: () => page.evaluate(() => window.demo.state()),
    signalLog: () => page.evaluate(() => [...document.querySelectorAll('#signal-log li')].map((li) => li.textContent)),
  };
}

/** Waits until `demo` sees `remote` with connectionState "connected" and an open chat channel. */
export async function waitConnected(demo, remote, timeoutMs = 30000) {
  try {
    await demo.page.waitForFunction(
      (r) => {
        const p = window.demo.state().peers[r];
        return p && p.connectionState === 'connected' && p.dataChannelOpen;
      },
      remote,
      { timeout: timeoutMs, polling: 100 },
    );
  } catch (err) {
    const s = await demo.state().catch(() => null);
    throw new Error(`${demo.name}: no connected call with ${remote} within ${timeoutMs} ms: ${JSON.stringify(s?.peers)}`);
  }
}

/** Sends `text` from `from` on the chat channel and waits for `to` to receive it. */
export async function exchange(from, to, text, timeoutMs = 10000) {
  const n = await from.page.evaluate((t) => window.demo.send(t), text);
  if (n < 1) throw new Error(`${from.name}: no open chat channel to send on`);
  try {
    await to.page.waitForFunction(
      ([t, sender]) => window.demo.state().received.some((m) => m.text === t && m.from === sender),
      [text, from.peerId],
      { timeout: timeoutMs, polling: 100 },
    );
  } catch {
    throw new Error(`${to.name} did not receive ${JSON.stringify(text)} from ${from.name} within ${timeoutMs} ms`);
  }
}

/** Waits until the remote video of `remote` on `demo` plays: frames decoded and its time advancing. */
export async function waitRemoteVideo(demo, remote, timeoutMs = 15000) {
  await demo.page.waitForFunction(
    (r) => {
      const v = document.querySelector(`[data-testid="remote-video-${r}"]`);
      return v && v.readyState >= 2 && v.videoWidth > 0 && !v.paused;
    },
    remote,
    { timeout: timeoutMs, polling: 200 },
  );
  const t0 = await demo.page.evaluate((r) => document.querySelector(`[data-testid="remote-video-${r}"]`).currentTime, remote);
  await demo.page.waitForFunction(
    ([r, t]) => document.querySelector(`[data-testid="remote-video-${r}"]`).currentTime > t + 0.3,
    [remote, t0],
    { timeout: timeoutMs, polling: 100 },
  );
}

/**
 * The call between pages a and b is up: each sees the other "connected" with
 * an open chat channel, a chat message goes each way (texts [a to b, b to a])
 * and each plays the other's video. Returns Date.now() of the moment both
 * were connected.
 */
export async function callUp(a, b, [toB, toA]) {
  await waitConnected(a, b.peerId);
  await waitConnected(b, a.peerId);
  const connectedAt = Date.now();
  await exchange(a, b, toB);
  await exchange(b, a, toA);
  await waitRemoteVideo(a, b.peerId);
  await waitRemoteVideo(b, a.peerId);
  return connectedAt;
}

/** Saves a PNG of the page under dir; returns its path. */
export async function screenshot(demo, dir, file) {
  fs.mkdirSync(dir, { recursive: true });
  const p = path.join(dir, file);
  await demo.page.screenshot({ path: p, fullPage: false });
  return p;
}

/** Writes what a page printed and its signaling log next to the screenshots. */
export async function saveDiagnostics(demo, dir, prefix) {
  fs.mkdirSync(dir, { recursive: true });
  let log = [];
  let state = null;
  try {
    log = await demo.signalLog();
    state = await demo.state();
  } catch {
    /* page gone */
  }
  fs.writeFileSync(path.join(dir, `${prefix}-console.txt`), demo.console.join('\n') + '\n');
  fs.writeFileSync(path.join(dir, `${prefix}-signal-log.txt`), log.join('\n') + '\n');
  fs.writeFileSync(path.join(dir, `${prefix}-state.json`), JSON.stringify(state, null, 2) + '\n');
}

/**
 * Two random peer ids [polite, impolite]: PeerLink makes the lexically
 * smaller id the polite side, so a test can pick who is which.
 */
export function politeImpoliteIds() {
  return [crypto.randomUUID(), crypto.randomUUID()].sort();
}
