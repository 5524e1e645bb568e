// SPDX-License-Identifier: Apache-2.0
// A typed use of the package, as an application writes it. The test command
// type-checks it with `tsc --noEmit` against the packed package (npm pack),
// so it covers `exports`, `types` and the declarations; the @ts-expect-error
// lines must stay errors, which keeps the declarations from drifting to any.
import SignalClientDefault, {
  SignalClient,
  SignalError,
  SignalRoom,
  type AckDetail,
  type KickedDetail,
  type PeerLeftReason,
  type RelayDetail,
  type RevokedDetail,
  type SignalClientEventMap,
} from 'signal-gateway-client';
import { PeerRoom, type PeerLink } from 'signal-gateway-client/peer';

declare const jwt: string;
declare const pc: RTCPeerConnection;

const sameClass: typeof SignalClient = SignalClientDefault;

export async function call(roomId: string, me: string, stream: MediaStream): Promise<void> {
  const client = new sameClass({
    url: 'wss://signal.example.com/ws',
    token: async () => jwt,
    reconnect: { maxMs: 5000 },
  });
  client.on('state', ({ state, previous }) => console.log(previous, '->', state));
  client.on('close', (d) => d.willReconnect && console.log(`retry #${d.attempt} in ${d.delayMs} ms`));
  await client.connect();

  // The room handle: ids given once.
  const room: SignalRoom = await client.join(roomId, me);
  const first: string | undefined = room.peers[0];
  room.on('peer_joined', ({ peerId }) => console.log('joined:', peerId));
  room.on('relay', async (relay: RelayDetail) => {
    if (relay.inner.type === 'offer') {
      await pc.setRemoteDescription({ type: 'offer', sdp: relay.inner.sdp });
      await pc.setLocalDescription();
      room.answer(relay.from, pc.localDescription!);
    } else if (relay.inner.type === 'candidate') {
      await pc.addIceCandidate(relay.inner.candidate);
    }
  });
  room.on('left', ({ reason }) => console.log('left:', reason));

  // Backend control: removed from this room (never re-entered by itself),
  // a room-mate removed, or the user revoked (no reconnect).
  room.on('kicked', ({ roomId: from, peerId, reason }: KickedDetail) => console.log(`${peerId} removed from ${from}: ${reason}`));
  room.on('peer_left', ({ peerId, reason }) => {
    const why: PeerLeftReason = reason;
    if (why === 'kicked') console.log(`${peerId} was removed by the application`);
  });
  client.on('revoked', ({ code, reason, rooms }: RevokedDetail) => console.log(code === 1008, reason, rooms.join(',')));
  client.on('left', ({ roomId: r, reason }) => (reason === 'kicked' || reason === 'revoked') && console.log(r, 'gone:', reason));
  if (first) {
    const cid: string = room.offer(first, pc.localDescription ?? { sdp: 'v=0' });
    const receipt: AckDetail = await room.candidate(first, { candidate: '' }, { ack: true });
    console.log(cid, receipt.status === 'delivered');
  }
  const now = room.info();
  if (now) console.log(now.status, now.peers.length, room.active);

  // The calls with explicit ids keep working.
  const { peers, iceServers } = await client.join(`${roomId}-2`, me);
  client.offer(`${roomId}-2`, me, peers[0] ?? me, 'v=0\r\n');
  console.log(iceServers?.[0]?.urls);

  // Typed events on the client, by name.
  const onError = (d: SignalClientEventMap['error']) => d.local && console.log(d.code);
  client.on('error', onError);
  client.addEventListener('relay', (ev) => console.log(ev.detail.seq, ev.detail.gap));

  // Perfect negotiation on top.
  const peerRoom = new PeerRoom({
    client,
    roomId,
    peerId: me,
    setup(conn: RTCPeerConnection) {
      stream.getTracks().forEach((t) => conn.addTrack(t, stream));
    },
  });
  peerRoom.on('peer', ({ peerId, link }: { peerId: string; link: PeerLink }) => {
    link.on('connectionstatechange', ({ state }) => console.log(peerId, state));
  });

  try {
    await room.leave();
  } catch (err) {
    if (err instanceof SignalError && err.local) console.log(err.code);
  }

  // @ts-expect-error: 'bogus' is no event of the client
  client.on('bogus', () => {});
  // @ts-expect-error: the room handle takes room events only
  room.on('open', () => {});
  // @ts-expect-error: revoked concerns the connection, not one room
  room.on('revoked', () => {});
  // @ts-expect-error: a kicked detail carries the reason as a string
  room.on('kicked', (d) => d.reason.toFixed());
  // @ts-expect-error: a relay detail has no 'sdp' at its top level
  room.on('relay', (d) => d.sdp);
  // @ts-expect-error: offer wants an SDP, not a number
  room.offer(me, 42);
  // @ts-expect-error: with ack the call returns a Promise, not a correlationId
  const notACid: string = room.offer(me, 'v=0', { ack: true });
  void notACid;
  client.close();
}
