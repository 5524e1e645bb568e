// SPDX-License-Identifier: Apache-2.0
// two-nodes.mjs — two gateway nodes behind haproxy, one Redis.
//
// haproxy terminates TLS (the test's self-signed certificate) and speaks
// plain ws to the gateways, as a production deployment behind a load
// balancer would. It has two frontends, one per page, so that each page is
// certain to land on a different node:
//
//   https://127.0.0.1:<portA>  -> backend "via-a": node A, node B as backup
//   https://127.0.0.1:<portB>  -> backend "via-b": node B, node A as backup
//
// Health checks hit each node's /readyz every 250 ms; a node that fails one
// is out, so a page whose node dies reconnects through the same frontend
// and lands on the other node. The demo page (and its JS) comes through the
// load balancer too, so the page origin is the frontend and its default
// signaling URL is wss://<frontend>/ws.

import { Cluster, HOST, freePort, metricValue } from './cluster.mjs';

export function haproxyConfig({ pem, portA, portB, gwA, gwB }) {
  const server = (name, gw, backup) =>
    `  server ${name} ${HOST}:${gw.port} check port ${gw.adminPort}${backup ? ' backup' : ''}`;
  return `global
  maxconn 1000

defaults
  mode http
  log stdout format raw local0 info
  option httplog
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
  timeout client-fin 5s
  timeout http-request 10s
  option forwardfor
  option redispatch
  retries 2

frontend via-a
  bind ${HOST}:${portA} ssl crt ${pem}
  default_backend via-a

frontend via-b
  bind ${HOST}:${portB} ssl crt ${pem}
  default_backend via-b

backend via-a
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 250ms fall 1 rise 2
${server('gw-a', gwA, false)}
${server('gw-b', gwB, true)}

backend via-b
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 250ms fall 1 rise 2
${server('gw-b', gwB, false)}
${server('gw-a', gwA, true)}
`;
}

/** Redis, gateway nodes A and B (plain ws), haproxy with TLS in front. */
export async function twoNodes(name) {
  const cluster = new Cluster(name);
  await cluster.redis();
  const gwA = await cluster.gateway({ name: 'gw-a', tls: false });
  const gwB = await cluster.gateway({ name: 'gw-b', tls: false });
  const { pem } = cluster.certificate();
  const portA = await freePort();
  let portB = await freePort();
  while (portB === portA) portB = await freePort();
  await cluster.haproxy(haproxyConfig({ pem, portA, portB, gwA, gwB }), [portA, portB]);
  return {
    cluster,
    gwA,
    gwB,
    originA: `https://${HOST}:${portA}`,
    originB: `https://${HOST}:${portB}`,
  };
}

/** {gw-a: n, gw-b: m}: open WebSocket connections per node. */
export async function connectionsPerNode(...gws) {
  const out = {};
  for (const gw of gws) {
    out[gw.name] = gw.proc.running ? metricValue(await gw.metrics(), 'ws_connections_gauge') : null;
  }
  return out;
}

/** Relays (offer/answer/candidate) received from clients, as counted by one node. */
export async function relaysCounted(gw) {
  const m = await gw.metrics();
  return Object.fromEntries(['offer', 'answer', 'candidate'].map((t) => [t, metricValue(m, 'messages_total', { type: t })]));
}
