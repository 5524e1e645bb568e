// SPDX-License-Identifier: Apache-2.0
// cluster.mjs — processes of an end-to-end test: redis-server, signal-gateway
// nodes, haproxy, a self-signed certificate and tokens. Everything listens on
// free 127.0.0.1 ports, logs to files under the test's work directory, and is
// stopped by pid (SIGTERM, then SIGKILL after a bound) by Cluster.stop().

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '../../..');
export const GATEWAY_BIN = process.env.SG_GATEWAY_BIN || path.join(REPO, 'build', 'signal-gateway');
export const ARTIFACTS = process.env.SG_E2E_ARTIFACTS || path.join(REPO, 'build', 'e2e-artifacts');
export const STATIC_DIR = path.join(REPO, 'clients');
export const HOST = '127.0.0.1';

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls fn() until it returns something truthy; throws after timeoutMs. */
export async function waitFor(fn, { timeoutMs = 10000, intervalMs = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    }
    await sleep(intervalMs);
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, HOST, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** GET over plain HTTP: {status, body}, or null when nothing answered. */
export async function httpGet(url, timeoutMs = 1000) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    return { status: res.status, body: await res.text() };
  } catch {
    return null;
  }
}

/**
 * True when this process sees no network interface but loopback. The
 * browser tests must run in such a namespace (tests/e2e/run.sh makes one
 * with `unshare --net`): Chromium gathers ICE candidates on every interface,
 * and the test's WebRTC traffic must stay on 127.0.0.1.
 */
export function loopbackOnly() {
  const ifaces = os.networkInterfaces();
  return Object.values(ifaces).every((list) => list.every((a) => a.internal));
}

/** Parses Prometheus text into [{name, labels, value}]. */
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const kv of m[3].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[kv[1]] = kv[2];
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

/** Sum of a metric's samples whose labels include `where`. */
export function metricValue(samples, name, where = {}) {
  let sum = 0;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (Object.entries(where).every(([k, v]) => s.labels[k] === v)) sum += s.value;
  }
  return sum;
}

class Proc {
  constructor(name, cmd, args, { env, cwd, logPath }) {
    this.name = name;
    this.logPath = logPath;
    const fd = fs.openSync(logPath, 'a');
    this.child = spawn(cmd, args, { env, cwd, stdio: ['ignore', fd, fd], detached: false });
    fs.closeSync(fd);
    this.pid = this.child.pid;
    this.exitCode = null;
    this.signalCode = null;
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, sig) => {
        this.exitCode = code;
        this.signalCode = sig;
        resolve();
      });
      this.child.on('error', () => resolve());
    });
  }

  get running() {
    return this.exitCode === null && this.signalCode === null && this.child.pid !== undefined;
  }

  /** SIGTERM, then SIGKILL after timeoutMs; resolves when the process is gone. */
  async stop(timeoutMs = 5000) {
    if (!this.running) return;
    try {
      process.kill(this.pid, 'SIGTERM');
    } catch {
      /* gone */
    }
    const t = setTimeout(() => this.kill(), timeoutMs);
    await this.exited;
    clearTimeout(t);
  }

  /** SIGKILL, no warning. */
  kill() {
    if (!this.running) return this.exited;
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    return this.exited;
  }

  log() {
    try {
      return fs.readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  logTail(lines = 40) {
    return this.log().split('\n').slice(-lines - 1).join('\n');
  }
}

/**
 * One test's processes. `new Cluster(name)`; `await c.redis()`, `await
 * c.gateway({...})`, `await c.haproxy(cfg)`; `await c.stop()` at the end.
 */
export class Cluster {
  constructor(name) {
    this.name = name;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `sg-e2e-${name}-`));
    this.procs = [];
    this.secret = `e2e-secret-${Math.random().toString(36).slice(2)}-${Date.now()}`;
    this.gateways = [];
    this._exitHook = () => {
      for (const p of this.procs) if (p.running) try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ }
    };
    process.on('exit', this._exitHook);
  }

  _spawn(name, cmd, args, env = process.env) {
    const logPath = path.join(this.dir, `${name}.log`);
    const p = new Proc(name, cmd, args, { env, cwd: this.dir, logPath });
    this.procs.push(p);
    return p;
  }

  async redis() {
    for (let attempt = 0; attempt < 4; attempt++) {
      const port = await freePort();
      const p = this._spawn(`redis-${port}`, 'redis-server', [
        '--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no',
        '--daemonize', 'no', '--protected-mode', 'no', '--dir', this.dir,
      ]);
      try {
        await waitFor(() => p.running && redisPing(port), { timeoutMs: 5000, what: 'redis-server' });
        this.redisPort = port;
        this.redisUrl = `redis://${HOST}:${port}/0`;
        return p;
      } catch (err) {
        await p.stop(2000);
        if (attempt === 3) throw new Error(`redis-server did not start: ${err.message}\n${p.logTail()}`);
      }
    }
    return null;
  }

  /** A self-signed P-256 certificate for 127.0.0.1 and localhost, made with openssl. */
  certificate() {
    if (this.cert) return this.cert;
    const cert = path.join(this.dir, 'cert.pem');
    const key = path.join(this.dir, 'key.pem');
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    const pem = path.join(this.dir, 'cert+key.pem'); // haproxy wants both in one file
    fs.writeFileSync(pem, fs.readFileSync(cert, 'utf8') + fs.readFileSync(key, 'utf8'), { mode: 0o600 });
    this.cert = { cert, key, pem };
    return this.cert;
  }

  /**
   * Starts a gateway with the project's defaults (rate limits, message caps,
   * heartbeats, resumption: nothing is turned off) and waits for /readyz.
   */
  async gateway({ name, tls = true, staticDir = STATIC_DIR, env = {} } = {}) {
    if (!fs.existsSync(GATEWAY_BIN)) throw new Error(`no gateway binary at ${GATEWAY_BIN} (build it, or set SG_GATEWAY_BIN)`);
    const id = name ?? `gw${this.gateways.length + 1}`;
    for (let attempt = 0; attempt < 4; attempt++) {
      const port = await freePort();
      const adminPort = await freePort();
      if (port === adminPort) continue;
      const full = {};
      for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SIGNAL_')) full[k] = v;
      Object.assign(full, {
        SIGNAL_LISTEN: `${HOST}:${port}`,
        SIGNAL_ADMIN_LISTEN: `${HOST}:${adminPort}`,
        SIGNAL_REDIS_URL: this.redisUrl,
        SIGNAL_JWT_SECRET: this.secret,
        SIGNAL_NODE_ID: id,
        SIGNAL_LOG_LEVEL: 'info',
        SIGNAL_DRAIN_MS: '2000',
      });
      if (staticDir) full.SIGNAL_STATIC_DIR = staticDir;
      if (tls) {
        const { cert, key } = this.certificate();
        full.SIGNAL_TLS_CERT = cert;
        full.SIGNAL_TLS_KEY = key;
      }
      Object.assign(full, env);
      const p = this._spawn(`${id}-${port}`, GATEWAY_BIN, [], full);
      const gw = {
        name: id,
        proc: p,
        port,
        adminPort,
        tls,
        origin: `${tls ? 'https' : 'http'}://${HOST}:${port}`,
        wsUrl: `${tls ? 'wss' : 'ws'}://${HOST}:${port}/ws`,
        adminUrl: `http://${HOST}:${adminPort}`,
        metrics: async () => parseMetrics((await httpGet(`http://${HOST}:${adminPort}/metrics`, 2000))?.body ?? ''),
        logEvents: () => parseLogLines(p.log()),
      };
      try {
        await waitFor(async () => p.running && (await httpGet(`${gw.adminUrl}/readyz`, 500))?.status === 200, {
          timeoutMs: 10000,
          intervalMs: 50,
          what: `gateway ${id} /readyz`,
        });
        this.gateways.push(gw);
        return gw;
      } catch (err) {
        const tail = p.logTail();
        await p.stop(3000);
        if (attempt === 3 || p.exitCode === null) throw new Error(`gateway ${id} did not start: ${err.message}\n${tail}`);
      }
    }
    return null;
  }

  /** An HS256 token minted by the gateway's own `token` subcommand. */
  token(sub, room, ttl = 600) {
    const env = { ...process.env, SIGNAL_JWT_SECRET: this.secret };
    return execFileSync(GATEWAY_BIN, ['token', '--sub', sub, '--room', room, '--ttl', String(ttl)], { env })
      .toString()
      .trim();
  }

  /** Starts haproxy with the given configuration text; waits until each port in `ports` accepts. */
  async haproxy(config, ports) {
    const cfg = path.join(this.dir, 'haproxy.cfg');
    fs.writeFileSync(cfg, config);
    execFileSync('haproxy', ['-c', '-q', '-f', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
    const p = this._spawn('haproxy', 'haproxy', ['-db', '-f', cfg]);
    await waitFor(async () => {
      if (!p.running) throw new Error(`haproxy exited:\n${p.logTail()}`);
      for (const port of ports) if (!(await tcpOpen(port))) return false;
      return true;
    }, { timeoutMs: 10000, what: 'haproxy frontends' });
    this.lb = p;
    return p;
  }

  /** Stops everything (SIGTERM, SIGKILL after a bound); returns a log digest for failures. */
  async stop() {
    await Promise.all(this.procs.map((p) => p.stop(5000)));
    process.off('exit', this._exitHook);
  }

  /** Keeps the logs: copies them into dest (e.g. the artifacts directory). */
  saveLogs(dest) {
    fs.mkdirSync(dest, { recursive: true });
    for (const p of this.procs) {
      try {
        fs.copyFileSync(p.logPath, path.join(dest, path.basename(p.logPath)));
      } catch {
        /* never written */
      }
    }
  }

  removeWorkDir() {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export function parseLogLines(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      /* a line being written */
    }
  }
  return out;
}

function tcpOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: HOST, port });
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(500, () => done(false));
    s.on('connect', () => done(true));
    s.on('error', () => done(false));
  });
}

function redisPing(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: HOST, port });
    let buf = '';
    const done = (ok) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => {
      buf += d;
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'));
    });
    s.on('error', () => done(false));
  });
}
