// SPDX-License-Identifier: Apache-2.0
// Type declarations of peer.js: RTCPeerConnections wired to a SignalClient
// ("perfect negotiation", trickle ICE). Checked with signal-client.d.ts by
// tests/package/npm.sh.

/// <reference lib="dom" />

import type { IceServer, LeaveResult, RelayInner, RequestOptions, SignalClient, SignalRoom } from './signal-client.js';

/** The session id of an SDP's o= line, or null. */
export declare function sdpSessionId(sdp: unknown): string | null;
/** True when the local side is polite towards remotePeerId (the smaller id is polite). */
export declare function isPolite(localPeerId: string, remotePeerId: string): boolean;

export type Listener<D> = (detail: D, event: CustomEvent<D>) => void;

export interface PeerLinkEventMap {
  connectionstatechange: { state: RTCPeerConnectionState; iceState: RTCIceConnectionState };
  iceconnectionstatechange: { state: RTCIceConnectionState };
  signalingstatechange: { state: RTCSignalingState };
  track: { track: MediaStreamTrack; streams: readonly MediaStream[]; transceiver?: RTCRtpTransceiver };
  datachannel: { channel: RTCDataChannel };
  glare: { action: 'rollback' | 'ignore' };
  /** A fresh RTCPeerConnection replaced the old one. */
  reset: { reason: string; pc: RTCPeerConnection };
  error: { where: 'setup' | 'negotiation' | 'send' | 'signal' | 'setConfiguration' | (string & {}); error: unknown };
  closed: { reason: string };
}

export interface PeerLinkOptions {
  client: SignalClient;
  roomId: string;
  localPeerId: string;
  remotePeerId: string;
  iceServers?: IceServer[];
  rtcConfig?: RTCConfiguration;
  RTCPeerConnectionImpl?: new (config?: RTCConfiguration) => RTCPeerConnection;
  /** Runs for every new RTCPeerConnection (add tracks, negotiated data channels). */
  setup?: (pc: RTCPeerConnection, link: PeerLink) => void;
  /** Override the role (default: the smaller peerId is polite). */
  polite?: boolean;
  /** Subscribe to the client's relays for this pair (true). */
  listen?: boolean;
  resetOnRemoteSessionChange?: boolean;
  rollbackWaitMs?: number;
}

export declare class PeerLink extends EventTarget {
  constructor(options: PeerLinkOptions);
  readonly client: SignalClient;
  readonly roomId: string;
  readonly localPeerId: string;
  readonly remotePeerId: string;
  readonly polite: boolean;
  readonly closed: boolean;
  readonly pc: RTCPeerConnection | null;
  readonly connectionState: RTCPeerConnectionState;
  readonly iceConnectionState: RTCIceConnectionState;
  on<K extends keyof PeerLinkEventMap>(type: K, fn: Listener<PeerLinkEventMap[K]>): () => void;
  /** Handles one relayed message; settles when done (never rejects: failures are 'error' events). */
  handleSignal(inner: RelayInner): Promise<void>;
  restartIce(): void;
  recover(options?: { restartIce?: boolean }): Promise<void>;
  reset(reason?: string): void;
  setIceServers(iceServers: IceServer[]): void;
  close(reason?: string): void;
}

export interface PeerRoomEventMap {
  /** A link was created. */
  peer: { peerId: string; link: PeerLink };
  peerclosed: { peerId: string; link: PeerLink; reason: string };
}

export interface PeerRoomOptions extends Omit<PeerLinkOptions, 'roomId' | 'localPeerId' | 'remotePeerId' | 'listen'> {
  roomId: string;
  peerId: string;
  restartIceOnResume?: boolean;
  replayWaitMs?: number;
}

export declare class PeerRoom extends EventTarget {
  constructor(options: PeerRoomOptions);
  readonly client: SignalClient;
  readonly roomId: string;
  readonly peerId: string;
  /** remote peerId -> PeerLink */
  readonly peers: Map<string, PeerLink>;
  readonly iceServers: IceServer[];
  on<K extends keyof PeerRoomEventMap>(type: K, fn: Listener<PeerRoomEventMap[K]>): () => void;
  /** Joins through the client (links follow from the events). */
  join(options?: RequestOptions): Promise<SignalRoom>;
  /** Leaves the room and closes every link. */
  leave(): Promise<LeaveResult>;
  /** Stops following the room and closes every link (does not leave). */
  close(): void;
}

export default PeerLink;
