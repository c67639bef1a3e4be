// The wire shapes of PlayGate that a player sees (camelCase JSON, ISO-8601 UTC times), and the player's events.

/** A stream holding the limit that a denied request ran into. */
export interface Conflict {
  streamId: string;
  videoId: string;
  deviceId: string;
  /** What people call the device ("Chrome on Linux", "Living-room TV"); "" when unknown. */
  deviceName: string;
  startedAt: string;
  lastSeenAt: string;
}

/** The answer to POST /v1/plays and GET /v1/plays/{requestId}. */
export interface PlayAnswer {
  requestId: string;
  status: "pending" | "allowed" | "denied";
  videoId: string;
  deviceId?: string;
  /** With a `deviceId` the server issued for this request: its secret (told only here). */
  deviceSecret?: string | null;
  streamId?: string | null;
  reason?: string | null;
  active?: number | null;
  limit?: number | null;
  expiresAt?: string | null;
  playbackUrl?: string | null;
  /** The stream's playback token (the one `playbackUrl` carries; with edge signing, whose links carry none, only
   * here): heartbeats send it, so that PlayGate honours them in an outage of its ledger. */
  playbackToken?: string | null;
  conflicts?: Conflict[] | null;
}

/** The Socket.IO `message` event: a decision for one of this account's requests. */
export interface DecisionMessage {
  status: "allowed" | "denied";
  data: { videoId: string; userId: string };
  requestId: string;
  deviceId: string;
  streamId?: string;
  /** Allowed: when the new stream's lease runs out, unless renewed (as the HTTP answer's). */
  expiresAt?: string;
  /** Denied: as the HTTP answer words it (`limit_reached`, `kind_limit:uhd`, ...). */
  reason?: string;
  active: number;
  limit: number;
  playbackUrl?: string;
  playbackToken?: string;
  conflicts?: Conflict[];
}

/** The Socket.IO `stream_ended` event. */
export interface EndedMessage {
  streamId: string;
  videoId: string;
  reason: string;
}

export interface AllowedEvent {
  requestId: string;
  streamId: string;
  videoId: string;
  deviceId: string;
  playbackUrl: string | null;
  active: number | null;
  limit: number | null;
}

export interface DeniedEvent {
  requestId: string;
  videoId: string;
  /** `limit_reached`, `user_disabled`, `unknown_user`, `error`, ... */
  reason: string;
  active: number | null;
  limit: number | null;
  /** At the limit: the streams holding it, oldest first (offer to stop one, or all: "Watch here"). */
  conflicts: Conflict[];
}

export interface EndedEvent {
  streamId: string;
  videoId: string;
  /**
   * `expired`, `evicted`, `replaced`, `stopped_by_admin`, `user_disabled`, `limit_lowered`, `video_deleted`,
   * `stopped` (stopped from another device), or `gone` (a heartbeat found it ended, reason unknown). When the media
   * is refused, the reason is the one the gate's 403 names.
   */
  reason: string;
}

/** Another stream of the account started or ended (a live denial panel refreshes on it). */
export interface ChangedEvent {
  streamId: string | null;
  reason: string;
}

export interface PlayerEvents {
  allowed: AllowedEvent;
  denied: DeniedEvent;
  ended: EndedEvent;
  changed: ChangedEvent;
  error: Error;
}

/** What the player needs of a `<video>` element (an HTMLVideoElement has all of it). */
export interface MediaLike extends EventTarget {
  src: string;
  readonly paused: boolean;
  currentTime: number;
  play(): Promise<void> | void;
  pause(): void;
  load(): void;
  removeAttribute(name: string): void;
  canPlayType(type: string): string;
}

/** What the player needs of a socket.io-client socket. */
export interface SocketLike {
  readonly connected: boolean;
  on(event: string, handler: (...args: any[]) => void): unknown;
  timeout(ms: number): { emitWithAck(event: string, ...args: unknown[]): Promise<any> };
  connect(): unknown;
  disconnect(): unknown;
}

/** socket.io-client's `io` (or anything that makes a SocketLike the same way). */
export type IoFactory = (url: string | undefined, options: Record<string, unknown>) => SocketLike;

/** What the player needs of hls.js's `Hls` class. */
export interface HlsLike {
  on?(event: string, handler: (event: string, data: { fatal?: boolean }) => void): void;
  loadSource(url: string): void;
  attachMedia(media: MediaLike): void;
  destroy(): void;
}
export interface HlsClass {
  new (config?: Record<string, unknown>): HlsLike;
  isSupported(): boolean;
}

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem?(key: string): void;
}

export interface PlayerOptions {
  /** Where PlayGate answers, e.g. "https://gate.example.com"; "" (the default) is this page's origin. */
  baseUrl?: string;
  /** The user's access token, or a function returning the current one (it may be refreshed). */
  token: string | (() => string | null);
  /** A name people recognise; without it the server names the device from the User-Agent. */
  deviceName?: string;
  /** This device's id; without it the one kept in `storage`, else the one the server issues on the first play. */
  deviceId?: string;
  /** The secret `deviceId` was issued with (PLAYGATE_DEVICE_IDS=issued requires it); kept in `storage` otherwise. */
  deviceSecret?: string;
  /** Where the issued device id and its secret are kept (default: localStorage when there is one; null keeps none). */
  storage?: StorageLike | null;
  /** socket.io-client's `io`: decisions and ends arrive at once. Without it the player works over HTTP only. */
  io?: IoFactory;
  /** hls.js's `Hls` (else `globalThis.Hls`): HLS where Media Source Extensions exist. */
  Hls?: HlsClass;
  /** Loads hls.js when a first HLS source comes and no `Hls` is given, e.g. `() => import("hls.js").then((m) =>
   * m.default)`: pages that play MP4 only never download it. */
  loadHls?: () => Promise<HlsClass>;
  /** hls.js's configuration, e.g. `{ maxBufferLength: 8 }`: a paused player soon stops fetching segments (each
   * renews the lease), so that its slot frees itself. */
  hlsConfig?: Record<string, unknown>;
  /** Seconds a play request waits for its decision within one HTTP call (the server caps it at 10). */
  waitS?: number;
  /** Milliseconds between heartbeats while the media plays (default: a third of the lease, 1 to 20 seconds). */
  heartbeatMs?: number;
  /** Socket reconnection: the first delay and the largest, milliseconds (doubling, with jitter). */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Injected for tests and other runtimes; default: the globals of a browser. */
  fetch?: typeof fetch;
  sendBeacon?: (url: string, data: Blob | string) => boolean;
  window?: EventTarget;
  random?: () => number;
}
