// SPDX-License-Identifier: Apache-2.0
// Type declarations of signal-client.js (the signal-gateway signaling
// protocol v1 client). Checked by `tsc --noEmit` on examples/typed.ts in the
// test command (tests/package/npm.sh).
//
// Events are typed through one map, SignalClientEventMap: `client.on(type,
// fn)` and `room.on(type, fn)` take their detail type from it. A new event
// of the client is one entry there, plus its name in RoomEventType when its
// detail carries a roomId (room.on() then delivers it for that room with no
// change to the JavaScript).

/// <reference lib="dom" />

export declare const PROTOCOL: 'signal.v1';
/** roomId: 1–128 characters from A-Z a-z 0-9 _ . : / - */
export declare const ROOM_ID_RE: RegExp;
/** peerId: a canonical 8-4-4-4-12 hex UUID, either case (sent in lowercase). */
export declare const PEER_ID_RE: RegExp;
/** correlationId: 1–64 characters from A-Z a-z 0-9 _ . - */
export declare const CORRELATION_ID_RE: RegExp;

export interface ReconnectPolicy {
  /** Delay before the first reconnect attempt (250). */
  initialMs: number;
  /** Cap of every delay, jitter included (10000). */
  maxMs: number;
  /** Growth of the delay per failed attempt (2). */
  factor: number;
  /** Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter] (0.3). */
  jitter: number;
  /** A connection that stayed open this long resets the backoff (5000). */
  stableMs: number;
  /** Attempts in a row before giving up (Infinity). */
  maxAttempts: number;
  /** Close codes after which the client does not reconnect ([1000, 1008]). A close 1008 "revoked" never reconnects. */
  noReconnectCodes: readonly number[];
}
export declare const DEFAULT_RECONNECT: Readonly<ReconnectPolicy>;

/** The server's error codes (docs/protocol.md §4). */
export type ServerErrorCode =
  | 'bad_request'
  | 'forbidden'
  | 'not_joined'
  | 'peer_not_found'
  | 'peer_unreachable'
  | 'room_full'
  | 'too_many_rooms'
  | 'peer_id_taken'
  | 'replaced'
  | 'rate_limited'
  | 'payload_too_large'
  | 'unavailable'
  | 'resume_failed'
  | 'kicked'
  | 'internal';
/** Codes the client itself raises (SignalError.local is true). */
export type ClientErrorCode =
  | 'not_connected'
  | 'closed'
  | 'disconnected'
  | 'timeout'
  | 'left'
  | 'invalid_message'
  | 'connect_failed'
  | 'revoked';
/** A known code, or one a newer server sends. */
export type ErrorCode = ServerErrorCode | ClientErrorCode | (string & {});

export declare class SignalError extends Error {
  constructor(code: ErrorCode, message: string, extra?: { correlationId?: string; roomId?: string; local?: boolean });
  readonly name: 'SignalError';
  code: ErrorCode;
  correlationId?: string;
  roomId?: string;
  /** True for a client-side check or condition, false for a server `error` message. */
  local: boolean;
}

export declare function backoffDelay(attempt: number, policy?: Partial<ReconnectPolicy>, random?: () => number): number;
export declare function isRoomId(value: unknown): value is string;
export declare function isPeerId(value: unknown): value is string;

/** The candidate fields the protocol carries ({candidate: ''} = end-of-candidates). */
export interface CandidateInit {
  candidate: string;
  sdpMid?: string | null;
  sdpMLineIndex?: number | null;
  usernameFragment?: string | null;
}
export declare function normalizeCandidate(init: CandidateInit | { toJSON(): CandidateInit }): CandidateInit;

/** An RTCIceServer as `joined`/`resumed` carry it (TURN credentials). */
export interface IceServer {
  urls: string | string[];
  username?: string;
  credential?: string;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closing' | 'closed';
export type RoomStatus = 'joining' | 'joined' | 'rejoining' | 'resuming';

/** A room as the client sees it now. */
export interface RoomInfo {
  roomId: string;
  peerId: string;
  status: RoomStatus;
  peers: string[];
  lastSeq: number;
  resumable: boolean;
  iceServers: IceServer[] | null;
}

/** A string token, or a (possibly async) function called before every connection attempt. */
export type TokenSource = string | null | (() => string | Promise<string>);

export interface SignalClientOptions {
  /** ws:// or wss:// URL of the gateway's /ws. */
  url: string;
  token?: TokenSource;
  /** 'protocol' (default): a `bearer.<token>` subprotocol; 'query': `?access_token=`. */
  tokenTransport?: 'protocol' | 'query';
  WebSocketImpl?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** Overrides of DEFAULT_RECONNECT, or false: never reconnect. */
  reconnect?: Partial<ReconnectPolicy> | false;
  /** Resume rooms after a reconnect when the server allows it (true). */
  resume?: boolean;
  /** Default timeout of join, leave and acks (10000). */
  requestTimeoutMs?: number;
  /** Messages larger than this fail locally with payload_too_large (65536). */
  maxMessageBytes?: number;
  /** For tests: timers, clock and randomness. */
  timers?: { setTimeout(fn: () => void, ms: number): unknown; clearTimeout(id: unknown): void };
  now?: () => number;
  random?: () => number;
}

// ---- event details

export interface StateDetail {
  state: ConnectionState;
  previous: ConnectionState;
}
export interface OpenDetail {
  protocol: string;
  reconnected: boolean;
}
export interface CloseDetail {
  code: number;
  reason: string;
  wasClean: boolean;
  willReconnect: boolean;
  delayMs?: number;
  attempt?: number;
}
export interface JoinedDetail {
  roomId: string;
  peerId: string;
  /** The room-mates when the join was answered. */
  peers: string[];
  iceServers?: IceServer[];
  resumable: boolean;
  correlationId?: string;
  /** True for the automatic re-join after a reconnect (room-mates saw us leave and come back). */
  rejoin: boolean;
}
export interface ResumedDetail {
  roomId: string;
  peerId: string;
  peers: string[];
  /** Buffered relays that follow, replayed. */
  replayed: number;
  resumed: true;
  iceServers?: IceServer[];
  correlationId?: string;
}
export interface PeerJoinedDetail {
  roomId: string;
  peerId: string;
}
/** kicked: the application removed the peer (kick, close-room, or its user revoked). */
export type PeerLeftReason = 'leave' | 'disconnect' | 'timeout' | 'shutdown' | 'kicked' | (string & {});
export interface PeerLeftDetail {
  roomId: string;
  peerId: string;
  reason: PeerLeftReason;
}
export interface LeftDetail {
  roomId: string;
  peerId: string;
  /**
   * leave (our leave acknowledged), replaced, kicked (the `kicked` event
   * came first), revoked (the `revoked` event came first), or the error code
   * of a failed automatic re-join.
   */
  reason: 'leave' | 'replaced' | 'kicked' | 'revoked' | ErrorCode;
  correlationId?: string;
}
/**
 * The application's backend removed this client from a room
 * (docs/protocol.md §9 "Backend control": `signal-gateway kick` or
 * `close-room`). The connection stays open for the other rooms; this room is
 * forgotten and never re-entered by a reconnect (join() again to come back,
 * if the application allows it).
 */
export interface KickedDetail {
  roomId: string;
  /** Our peerId in that room. */
  peerId: string;
  /** The application's reason (the error's `message`), or the server's default text. */
  reason: string;
}
/**
 * The server closed the connection with 1008 "revoked": this user's access
 * was revoked (`signal-gateway revoke`). The client does not reconnect (its
 * handshakes would be refused until the revocation ends) and forgets every
 * room; `close` follows.
 */
export interface RevokedDetail {
  code: 1008;
  reason: 'revoked';
  /** The rooms the client was in (or joining); each established one also gets `left` with reason revoked. */
  rooms: string[];
}
export type RelayType = 'offer' | 'answer' | 'candidate';
interface RelayInnerBase {
  roomId: string;
  from: string;
  to: string;
}
export interface DescriptionInner extends RelayInnerBase {
  type: 'offer' | 'answer';
  sdp: string;
}
export interface CandidateInner extends RelayInnerBase {
  type: 'candidate';
  candidate: CandidateInit;
}
/** The sender's message as the server validated it. */
export type RelayInner = DescriptionInner | CandidateInner;
export interface RelayDetail {
  roomId: string;
  type: RelayType;
  from: string;
  to: string;
  inner: RelayInner;
  correlationId: string;
  /** Per-peer sequence number (when the server buffers relays for resumption). */
  seq?: number;
  /** Relays the buffer caps dropped before this one (0: none). */
  gap: number;
}
export type AckStatus = 'delivered' | 'buffered' | 'dropped';
export interface AckDetail {
  correlationId: string;
  status: AckStatus;
}
export interface ErrorDetail {
  code: ErrorCode;
  message: string;
  correlationId?: string;
  roomId?: string;
  local?: boolean;
}
/** A server message as it came (the `message` event). */
export interface ServerMessage {
  type: string;
  [field: string]: unknown;
}
/** A message the client sent (the `sent` event; never holds the token). */
export interface SentMessage {
  type: string;
  [field: string]: unknown;
}

/** Every event of a SignalClient, with its detail. */
export interface SignalClientEventMap {
  state: StateDetail;
  open: OpenDetail;
  close: CloseDetail;
  joined: JoinedDetail;
  resumed: ResumedDetail;
  peer_joined: PeerJoinedDetail;
  peer_left: PeerLeftDetail;
  left: LeftDetail;
  kicked: KickedDetail;
  revoked: RevokedDetail;
  relay: RelayDetail;
  ack: AckDetail;
  error: ErrorDetail;
  message: ServerMessage;
  sent: SentMessage;
}
export type SignalClientEventType = keyof SignalClientEventMap;
/** The events whose detail carries a roomId: what room.on() takes. */
export type RoomEventType = 'joined' | 'resumed' | 'peer_joined' | 'peer_left' | 'left' | 'kicked' | 'relay' | 'error';
export type RoomEventMap = Pick<SignalClientEventMap, RoomEventType>;
export type SignalListener<D> = (detail: D, event: CustomEvent<D>) => void;

// ---- calls

export interface RequestOptions {
  timeoutMs?: number;
}
export interface RelayOptions {
  /** Ask for a delivery receipt: the call then returns a Promise of the ack. */
  ack?: boolean;
  correlationId?: string;
  /** With ack: how long to wait for it (requestTimeoutMs). */
  timeoutMs?: number;
}
export type AckedRelayOptions = RelayOptions & { ack: true };
export type SdpSource = string | { sdp?: string };
export type CandidateSource = CandidateInit | { toJSON(): CandidateInit };
export interface LeaveResult {
  roomId: string;
  peerId: string;
  /** False when no connection was open (the server's disconnect handling applies). */
  confirmed: boolean;
}

/** What join() resolves with: the joined (or resumed) detail, and the room's calls. */
export declare class SignalRoom {
  private constructor();
  readonly roomId: string;
  readonly peerId: string;
  /** The room-mates when the join was answered; info().peers is the current list. */
  readonly peers: string[];
  readonly iceServers?: IceServer[];
  readonly resumable?: boolean;
  readonly correlationId?: string;
  readonly rejoin?: boolean;
  readonly replayed?: number;
  readonly resumed?: true;
  /** True while the client is in this room as this peer (false after leave, replaced, kicked, revoked, close). */
  readonly active: boolean;
  info(): RoomInfo | null;
  offer(to: string, sdp: SdpSource, options: AckedRelayOptions): Promise<AckDetail>;
  offer(to: string, sdp: SdpSource, options?: RelayOptions): string;
  answer(to: string, sdp: SdpSource, options: AckedRelayOptions): Promise<AckDetail>;
  answer(to: string, sdp: SdpSource, options?: RelayOptions): string;
  candidate(to: string, candidate: CandidateSource, options: AckedRelayOptions): Promise<AckDetail>;
  candidate(to: string, candidate: CandidateSource, options?: RelayOptions): string;
  leave(options?: RequestOptions): Promise<LeaveResult>;
  on<K extends RoomEventType>(type: K, fn: SignalListener<SignalClientEventMap[K]>): () => void;
}

export declare class SignalClient extends EventTarget {
  constructor(options: SignalClientOptions);
  /** The endpoint URL, without any token. */
  readonly url: string;
  readonly tokenTransport: 'protocol' | 'query';
  /** The subprotocol the server selected on the current connection. */
  protocol: string;
  readonly state: ConnectionState;
  readonly connected: boolean;
  /** A snapshot of the rooms this client is in (or is joining). */
  readonly rooms: RoomInfo[];
  room(roomId: string): RoomInfo | null;

  on<K extends SignalClientEventType>(type: K, fn: SignalListener<SignalClientEventMap[K]>): () => void;
  addEventListener<K extends SignalClientEventType>(
    type: K,
    listener: (event: CustomEvent<SignalClientEventMap[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;

  connect(): Promise<void>;
  close(code?: number, reason?: string): void;
  join(roomId: string, peerId: string, options?: RequestOptions): Promise<SignalRoom>;
  leave(roomId: string, peerId?: string, options?: RequestOptions): Promise<LeaveResult>;
  offer(roomId: string, from: string, to: string, sdp: SdpSource, options: AckedRelayOptions): Promise<AckDetail>;
  offer(roomId: string, from: string, to: string, sdp: SdpSource, options?: RelayOptions): string;
  answer(roomId: string, from: string, to: string, sdp: SdpSource, options: AckedRelayOptions): Promise<AckDetail>;
  answer(roomId: string, from: string, to: string, sdp: SdpSource, options?: RelayOptions): string;
  candidate(roomId: string, from: string, to: string, candidate: CandidateSource, options: AckedRelayOptions): Promise<AckDetail>;
  candidate(roomId: string, from: string, to: string, candidate: CandidateSource, options?: RelayOptions): string;
}

export default SignalClient;
