// SPDX-License-Identifier: Apache-2.0
// demo.js — the signal-gateway demo page: a video call plus a data-channel
// chat with every other peer in a room, over the JS client library.
//
// Parameters, from the URL query or (preferred, it never reaches a server
// log) the fragment, e.g. /demo/#token=...&room=demo:
//   token  (required) the JWT
//   room   room id (default "demo")
//   peer   this tab's peerId (default: a random UUID)
//   ws     signaling URL (default: ws(s)://<this host>/ws)
//
// For tests the page exposes window.demo = {client, room, peers, state(), send()}
// and data-testid attributes on the chat input/send button, the logs and tiles.
//
// Backend control (docs/backend-control.md): when the application removes
// this peer from the room (signal-gateway kick / close-room) the page says so
// with the reason and stays out (the client never re-enters a room it was
// kicked from); when it revokes the user the page says the connection is
// closed for good; a room-mate removed shows as "removed by the application".

import { SignalClient, isPeerId, isRoomId } from '../js/signal-client.js';
import { PeerRoom } from '../js/peer.js';

const $ = (id) => document.getElementById(id);
/** A short form of an id: first and last 4 characters of a UUID. */
const abbrev = (id) => (typeof id !== 'string' ? String(id) : id.length > 12 ? `${id.slice(0, 4)}…${id.slice(-4)}` : id);
const MAX_LOG = 400;

// ------------------------------------------------------------ parameters

function readParams() {
  const params = new URLSearchParams(location.search);
  const hash = new URLSearchParams(location.hash.replace(/^#/, ''));
  for (const [key, value] of hash) params.set(key, value);
  return params;
}

function randomUUID() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  // crypto.randomUUID needs a secure context; getRandomValues does not.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function defaultWsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

/** The URL for display: no query, no fragment (nothing secret). */
function displayUrl(url) {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}

// ------------------------------------------------------------ page state

const params = readParams();
const token = params.get('token') || '';
const roomId = params.get('room') || 'demo';
const peerId = (params.get('peer') || randomUUID()).toLowerCase();
const wsUrl = params.get('ws') || defaultWsUrl();

const received = []; // chat messages from others: {from, text, at}
const sentChat = []; // chat messages we sent: {text, at}
const errors = []; // {code, message}
const departures = []; // room-mates that left: {peerId, reason, at}
let membership = 'joining'; // joining | joined | left | kicked | revoked
let kicked = null; // {roomId, reason} once the application removed us
const channels = new Map(); // remote peerId -> RTCDataChannel
const tiles = new Map(); // remote peerId -> {root, video, stream, ice, conn, chan}
let localStream = null;
let mediaKind = 'none';
let client = null;
let room = null;

// ------------------------------------------------------------ the log

function log(kind, text) {
  const list = $('signal-log');
  const li = document.createElement('li');
  li.className = kind;
  const time = document.createElement('time');
  time.textContent = new Date().toISOString().slice(11, 23);
  li.append(time, document.createTextNode(text));
  list.append(li);
  while (list.childElementCount > MAX_LOG) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

function candidateSummary(candidate) {
  const c = candidate?.candidate;
  if (c === '' || c === undefined) return 'end-of-candidates';
  const m = / typ (\w+)/.exec(c);
  return `typ ${m ? m[1] : '?'}`; // never the address
}

/** One line per message: its type and abbreviated ids; never a token, SDP body or address. */
function describe(msg) {
  const parts = [msg.type];
  if (msg.roomId !== undefined) parts.push(`room=${msg.roomId}`);
  if (msg.peerId !== undefined) parts.push(`peer=${abbrev(msg.peerId)}`);
  if (msg.from !== undefined) parts.push(`from=${abbrev(msg.from)}`);
  if (msg.to !== undefined) parts.push(`to=${abbrev(msg.to)}`);
  switch (msg.type) {
    case 'offer':
    case 'answer':
      parts.push(`sdp=${msg.sdp?.length ?? 0}B`);
      break;
    case 'candidate':
      parts.push(candidateSummary(msg.candidate));
      break;
    case 'joined':
    case 'resumed':
      parts.push(`peers=[${(msg.peers ?? []).map(abbrev).join(',')}]`);
      if (msg.resumeToken) parts.push('resumable');
      if (msg.replayed !== undefined) parts.push(`replayed=${msg.replayed}`);
      if (Array.isArray(msg.iceServers)) parts.push(`iceServers=${msg.iceServers.length}`);
      break;
    case 'resume':
      parts.push(`lastSeq=${msg.lastSeq}`);
      break;
    case 'peer_left':
      parts.push(`reason=${msg.reason}`);
      break;
    case 'relay': {
      const inner = msg.inner ?? {};
      parts.push(`${inner.type} from=${abbrev(inner.from)}`);
      if (inner.type === 'candidate') parts.push(candidateSummary(inner.candidate));
      else if (inner.sdp !== undefined) parts.push(`sdp=${inner.sdp.length}B`);
      if (msg.seq !== undefined) parts.push(`seq=${msg.seq}`);
      break;
    }
    case 'ack':
      parts.push(`status=${msg.status}`);
      break;
    case 'error':
      parts.push(`${msg.code}: ${msg.message}`);
      break;
    default:
      break;
  }
  if (msg.correlationId !== undefined) parts.push(`cid=${String(msg.correlationId).slice(-8)}`);
  return parts.join(' ');
}

function showError(text) {
  const box = $('error');
  box.textContent = text;
  box.hidden = false;
}

function setState(el, state) {
  el.textContent = state;
  el.dataset.state = state;
}

function setMembership(value) {
  membership = value;
  setState($('membership'), value);
}

/** A line in the notices list (what happened to the room, in words). */
function notice(kind, text) {
  const list = $('notices');
  const li = document.createElement('li');
  li.className = kind;
  li.textContent = text;
  list.append(li);
  list.hidden = false;
}

const LEFT_BECAUSE = {
  leave: 'left the room',
  disconnect: 'disconnected',
  timeout: 'timed out',
  shutdown: 'left: its server shut down',
  kicked: 'was removed from the room by the application',
};

// ------------------------------------------------------------ media

async function getLocalMedia() {
  if (navigator.mediaDevices?.getUserMedia) {
    try {
      const gum = navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
      const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('no answer to the permission prompt')), 15000));
      const stream = await Promise.race([gum, timeout]);
      mediaKind = 'camera';
      return stream;
    } catch (err) {
      log('info', `camera/microphone unavailable (${err.name || 'Error'}): using a generated video`);
    }
  } else {
    log('info', 'getUserMedia unavailable (not a secure context?): using a generated video');
  }
  const fake = fakeVideoStream();
  mediaKind = fake ? 'fake' : 'none';
  return fake;
}

/** A canvas-drawn test video: moving bar, clock and this peer's id. */
function fakeVideoStream() {
  const canvas = document.createElement('canvas');
  if (typeof canvas.captureStream !== 'function') return null;
  canvas.width = 320;
  canvas.height = 240;
  const ctx = canvas.getContext('2d');
  const hue = parseInt(peerId.slice(0, 2), 16) * 1.4;
  let frame = 0;
  const draw = () => {
    frame += 1;
    ctx.fillStyle = `hsl(${hue} 45% 25%)`;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = `hsl(${hue} 80% 65%)`;
    ctx.fillRect((frame * 4) % canvas.width, 0, 24, canvas.height);
    ctx.fillStyle = '#fff';
    ctx.font = 'bold 26px monospace';
    ctx.fillText(abbrev(peerId), 16, 110);
    ctx.font = '18px monospace';
    ctx.fillText(new Date().toISOString().slice(11, 21), 16, 145);
  };
  draw();
  setInterval(draw, 1000 / 15);
  return canvas.captureStream(15);
}

// ------------------------------------------------------------ remote tiles

function tileFor(remote) {
  let tile = tiles.get(remote);
  if (tile) return tile;
  const root = $('remote-tile').content.firstElementChild.cloneNode(true);
  root.dataset.testid = `remote-${remote}`;
  root.dataset.peer = remote;
  const video = root.querySelector('video');
  video.dataset.testid = `remote-video-${remote}`;
  root.querySelector('.who').textContent = abbrev(remote);
  const unmute = root.querySelector('.unmute');
  unmute.addEventListener('click', () => {
    video.muted = !video.muted;
    unmute.textContent = video.muted ? 'unmute' : 'mute';
  });
  tile = {
    root,
    video,
    stream: new MediaStream(),
    ice: root.querySelector('.ice'),
    conn: root.querySelector('.conn'),
    chan: root.querySelector('.chan'),
  };
  // Remote video starts muted so autoplay is allowed; the button unmutes.
  video.srcObject = tile.stream;
  $('videos').append(root);
  tiles.set(remote, tile);
  return tile;
}

function removeTile(remote) {
  const tile = tiles.get(remote);
  if (!tile) return;
  tile.root.remove();
  tiles.delete(remote);
}

function updateChatStatus() {
  const open = [...channels.values()].filter((c) => c.readyState === 'open').length;
  $('chat-status').textContent = open ? `(${open} open channel${open > 1 ? 's' : ''})` : '(no open channel)';
}

// ------------------------------------------------------------ chat

function appendChat(who, text, mine) {
  const li = document.createElement('li');
  if (mine) li.className = 'me';
  const b = document.createElement('b');
  b.textContent = `${who}: `;
  li.append(b, document.createTextNode(text));
  $('chat-log').append(li);
  $('chat-log').scrollTop = $('chat-log').scrollHeight;
}

function wireChannel(remote, channel) {
  channels.set(remote, channel);
  const update = () => {
    if (channels.get(remote) !== channel) return;
    const tile = tiles.get(remote);
    if (tile) setState(tile.chan, channel.readyState);
    updateChatStatus();
  };
  channel.addEventListener('open', () => {
    update();
    log('info', `data channel to ${abbrev(remote)} open`);
  });
  channel.addEventListener('close', update);
  channel.addEventListener('message', (event) => {
    if (typeof event.data !== 'string') return;
    let text = event.data;
    try {
      const parsed = JSON.parse(event.data);
      if (parsed && typeof parsed.text === 'string') text = parsed.text;
    } catch {
      /* plain text */
    }
    received.push({ from: remote, text, at: Date.now() });
    appendChat(abbrev(remote), text, false);
  });
}

/** Sends text to every peer with an open channel; returns how many got it. */
function sendChat(text) {
  text = String(text ?? '').trim();
  if (!text) return 0;
  let n = 0;
  for (const channel of channels.values()) {
    if (channel.readyState !== 'open') continue;
    channel.send(JSON.stringify({ text }));
    n += 1;
  }
  sentChat.push({ text, at: Date.now(), delivered: n });
  appendChat('you', n ? text : `${text} (not sent: no open channel)`, true);
  return n;
}

// ------------------------------------------------------------ wiring

function setupPeerConnection(pc, link) {
  const remote = link.remotePeerId;
  if (localStream) {
    for (const track of localStream.getTracks()) pc.addTrack(track, localStream);
  } else {
    pc.addTransceiver('video', { direction: 'recvonly' });
  }
  // A negotiated channel (same id on both ends): no glare over who creates it.
  wireChannel(remote, pc.createDataChannel('chat', { negotiated: true, id: 0 }));
}

function followLink(remote, link) {
  const tile = tileFor(remote);
  setState(tile.ice, link.iceConnectionState);
  setState(tile.conn, link.connectionState);
  setState(tile.chan, channels.get(remote)?.readyState ?? 'closed');
  link.on('track', ({ track, streams }) => {
    const t = tileFor(remote);
    const stream = streams[0];
    if (stream) {
      if (t.video.srcObject !== stream) t.video.srcObject = stream;
    } else {
      t.stream.addTrack(track);
      if (t.video.srcObject !== t.stream) t.video.srcObject = t.stream;
    }
    t.video.play().catch(() => {});
  });
  link.on('iceconnectionstatechange', ({ state }) => {
    setState(tileFor(remote).ice, state);
    log('info', `ICE ${abbrev(remote)}: ${state}`);
  });
  link.on('connectionstatechange', ({ state }) => {
    setState(tileFor(remote).conn, state);
    log('info', `connection ${abbrev(remote)}: ${state}`);
  });
  link.on('glare', ({ action }) => log('info', `glare with ${abbrev(remote)}: ${action}`));
  link.on('reset', ({ reason }) => {
    const t = tileFor(remote);
    t.stream = new MediaStream();
    t.video.srcObject = t.stream;
    setState(t.ice, link.iceConnectionState);
    setState(t.conn, link.connectionState);
    log('info', `new connection to ${abbrev(remote)} (${reason})`);
  });
  link.on('error', ({ where, error }) => {
    log('err', `${where} error with ${abbrev(remote)}: ${error?.name ?? ''} ${error?.code ?? ''} ${error?.message ?? ''}`.trim());
  });
}

function state() {
  const peers = {};
  for (const [remote, link] of room?.peers ?? []) {
    const channel = channels.get(remote);
    peers[remote] = {
      connectionState: link.connectionState,
      iceConnectionState: link.iceConnectionState,
      signalingState: link.pc?.signalingState ?? 'closed',
      dataChannel: channel?.readyState ?? 'none',
      dataChannelOpen: channel?.readyState === 'open',
    };
  }
  return {
    roomId,
    peerId,
    signaling: client?.state ?? 'idle',
    media: mediaKind,
    peers,
    membership,
    kicked: kicked && { ...kicked },
    departures: departures.map((d) => ({ ...d })),
    received: received.map((m) => ({ ...m })),
    sent: sentChat.map((m) => ({ ...m })),
    errors: errors.map((e) => ({ ...e })),
  };
}

const noPeers = new Map();
window.demo = {
  /** The SignalClient (null until the page has a token and media). */
  get client() {
    return client;
  },
  /** The PeerRoom that follows membership. */
  get room() {
    return room;
  },
  /** remote peerId -> PeerLink (link.pc is its RTCPeerConnection). */
  get peers() {
    return room ? room.peers : noPeers;
  },
  /** remote peerId -> RTCDataChannel of the chat. */
  channels,
  get localStream() {
    return localStream;
  },
  state,
  send: sendChat,
  /** true once connect() and join() have succeeded. */
  ready: false,
};

async function main() {
  $('room-id').textContent = roomId;
  $('peer-id').textContent = abbrev(peerId);
  $('peer-id').title = peerId;
  setMembership('joining');
  $('chat-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('chat-input');
    sendChat(input.value);
    input.value = '';
    input.focus();
  });

  if (!token) {
    showError('No token: open this page as /demo/#token=<JWT>&room=<room> (signal-gateway token --sub NAME --room ROOM prints one).');
    errors.push({ code: 'no_token', message: 'no token in the URL' });
    return;
  }
  if (!isRoomId(roomId)) {
    showError('The room id may hold 1-128 characters from A-Z a-z 0-9 _ . : / -');
    errors.push({ code: 'bad_room', message: 'invalid room id' });
    return;
  }
  if (!isPeerId(peerId)) {
    showError('The peer id must be a UUID (8-4-4-4-12 hex).');
    errors.push({ code: 'bad_peer', message: 'invalid peer id' });
    return;
  }

  localStream = await getLocalMedia();
  $('media-kind').textContent = mediaKind;
  $('local-video').srcObject = localStream;
  $('local-video').play().catch(() => {});

  try {
    client = new SignalClient({ url: wsUrl, token });
  } catch (err) {
    showError(`Cannot create the client: ${err.message}`);
    errors.push({ code: 'bad_ws_url', message: err.message });
    return;
  }
  log('info', `signaling ${displayUrl(wsUrl)} as ${abbrev(peerId)} in room ${roomId}`);

  client.on('sent', (msg) => log('out', `→ ${describe(msg)}`));
  client.on('message', (msg) => log(msg.type === 'error' ? 'err' : 'in', `← ${describe(msg)}`));
  client.on('state', ({ state: s }) => setState($('signal-state'), s));
  client.on('close', ({ code, willReconnect, delayMs }) =>
    log('info', `socket closed (${code})${willReconnect ? `, reconnecting in ${delayMs} ms` : ''}`),
  );
  client.on('error', (e) => {
    errors.push({ code: e.code, message: e.message });
    if (e.local) log('err', `client: ${e.code}: ${e.message}`);
  });
  client.on('left', ({ roomId: r, reason }) => {
    if (r !== roomId) return;
    if (reason === 'kicked' || reason === 'revoked') return; // said by their own events below
    setMembership('left');
    if (reason !== 'leave') showError(`Left the room (${reason}). Reload to join again.`);
  });
  client.on('joined', ({ roomId: r }) => r === roomId && setMembership('joined'));
  client.on('resumed', ({ roomId: r }) => r === roomId && setMembership('joined'));
  // The application removed us: the client forgets the room (no re-join on
  // reconnect), and so does the page.
  client.on('kicked', ({ roomId: r, reason }) => {
    if (r !== roomId) return;
    kicked = { roomId: r, reason };
    setMembership('kicked');
    const why = reason ? `: ${reason}` : '';
    showError(`You were removed from room ${r} by the application${why}. The page will not rejoin; reload to try again.`);
    log('err', `kicked from ${r}${why}`);
  });
  client.on('revoked', () => {
    setMembership('revoked');
    showError('Your access was revoked by the application: the server closed the connection, and the page will not reconnect.');
    log('err', 'access revoked: connection closed (1008 revoked), no reconnect');
  });
  client.on('peer_left', ({ roomId: r, peerId: remote, reason }) => {
    if (r !== roomId) return;
    departures.push({ peerId: remote, reason, at: Date.now() });
    const text = LEFT_BECAUSE[reason] ?? `left (${reason})`;
    notice(reason === 'kicked' ? 'kicked' : 'info', `Peer ${abbrev(remote)} ${text}.`);
  });

  room = new PeerRoom({ client, roomId, peerId, setup: setupPeerConnection });
  room.on('peer', ({ peerId: remote, link }) => followLink(remote, link));
  room.on('peerclosed', ({ peerId: remote, reason }) => {
    channels.delete(remote);
    removeTile(remote);
    updateChatStatus();
    log('info', `peer ${abbrev(remote)} gone (${reason})`);
  });

  // Leave at once when the tab goes (close 1000): room-mates see peer_left now.
  addEventListener('pagehide', () => client.close(1000, 'page closed'));

  try {
    await client.connect();
    await room.join();
    window.demo.ready = true;
  } catch (err) {
    showError(`Could not join: ${err.code ?? err.name}: ${err.message}`);
  }
}

main().catch((err) => {
  showError(`Demo failed: ${err?.message ?? err}`);
  errors.push({ code: 'exception', message: String(err?.message ?? err) });
});
