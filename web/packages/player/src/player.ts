// The player kit: one Player per media element asks PlayGate to play, sets the source, heartbeats only while the
// media plays, asks again on resume, stops its stream when the page goes away, and reports what happens as events.
import { createHttp, type Http, PlayGateError } from "./http";
import type {
  AllowedEvent,
  Conflict,
  DecisionMessage,
  DeniedEvent,
  EndedMessage,
  HlsClass,
  HlsLike,
  MediaLike,
  PlayAnswer,
  PlayerEvents,
  PlayerOptions,
  SocketLike,
  StorageLike,
} from "./types";

const DEVICE_KEY = "playgate.deviceId";
const SECRET_KEY = "playgate.deviceSecret";
const WAIT_S = 10;
const HEARTBEAT_MAX_MS = 20_000;
const HEARTBEAT_MIN_MS = 1_000;
const ACK_TIMEOUT_MS = 5_000;
const REASON_GRACE_MS = 2_000;
const POLL_MS = 1_000;
const POLL_TRIES = 30;
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 30_000;
// A play asked again after a 503 or no answer, with the Idempotency-Key of its first try: at most this often, a
// jittered, doubling delay apart (0.25 to 0.5 s, 0.5 to 1 s, then 1 to 2 s).
const PLAY_RETRIES = 3;
const PLAY_RETRY_MIN_MS = 500;
const PLAY_RETRY_MAX_MS = 2_000;
const HLS_TYPE = "application/vnd.apple.mpegurl";

type Handler<T> = (event: T) => void;
type Settled = AllowedEvent | DeniedEvent;

/** What a play request ends in exchange if it is allowed ("Watch here"): these streams, or all the others. */
export interface Replacing {
  replaceStreamId?: string;
  replaceStreamIds?: string[];
  replaceOthers?: boolean;
}

/** True for an HLS playlist URL (`….m3u8`, with or without a query). */
export function isHls(url: string): boolean {
  return /\.m3u8(\?|#|$)/i.test(url);
}

/** The delay before reconnection attempt `attempt` (0-based): doubling from `minMs` up to `maxMs`, with jitter
 * taking it down to half at most so that many players do not come back at the same instant. */
export function backoffMs(attempt: number, minMs: number, maxMs: number, random: () => number): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling * (0.5 + random() * 0.5));
}

function defaultStorage(): StorageLike | null {
  try {
    return typeof localStorage === "undefined" ? null : localStorage;
  } catch {
    return null; // storage disabled (private mode, sandboxed frame)
  }
}

/** The PlayGate playback token in a playback URL (`/v1/play/<token>/…`, or `?token=`); null for none (an edge's
 * signed link carries none). A player uses the answers' `playbackToken`, and this only when a server sends none. */
export function playbackToken(url: string | null): string | null {
  if (!url) return null;
  const found = /\/v1\/play\/([^/?#]+)\//.exec(url) ?? /[?&]token=([^&#]+)/.exec(url);
  return found ? decodeURIComponent(found[1]) : null;
}

/** Ask, play, heartbeat and stop for one media element; see `attach`. */
export class Player {
  /** This device's id: given, kept from an earlier play, or issued by the server on the first play. */
  deviceId: string | null;
  /** The stream this player holds, while it holds one. */
  streamId: string | null = null;
  /** The video this player plays (kept after its stream ended, so that resuming asks for it again). */
  videoId: string | null = null;
  /** The secret the server issued this device's id with (sent with it; never shown to other devices). */
  private deviceSecret: string | null;
  /** The stream's latest playback URL (heartbeat answers renew it): asked why when the media is refused. */
  private playbackUrl: string | null = null;
  /** The stream's latest playback token (heartbeat answers renew it): heartbeats send it. */
  private playbackToken: string | null = null;

  private readonly media: MediaLike;
  private readonly options: PlayerOptions;
  private readonly http: Http;
  private readonly storage: StorageLike | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  private readonly handlers = new Map<keyof PlayerEvents, Set<Handler<any>>>();
  private readonly pushed = new Map<string, DecisionMessage>();
  private readonly waiting = new Map<string, () => void>();
  private socket: SocketLike | null = null;
  private reconnectAttempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  private hls: HlsLike | null = null;
  private leaseMs: number | null = null; // the lease the server gives, learnt from the allowed answer
  private asking = false;
  private inFlight = 0; // play requests under way: a `replaced` end of the current stream is their doing
  private holdPause = false;
  // Set by a pause of the viewer's (or a stream that ended): the next play asks PlayGate again.
  private askOnPlay = false;
  private destroyed = false;
  private readonly listeners: Array<[EventTarget, string, EventListener]> = [];

  constructor(media: MediaLike, options: PlayerOptions) {
    this.media = media;
    this.options = options;
    const token = options.token;
    const fetcher = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.http = createHttp(options.baseUrl ?? "", typeof token === "function" ? token : () => token, fetcher);
    this.storage = options.storage === undefined ? defaultStorage() : options.storage;
    this.deviceId = options.deviceId ?? this.storage?.getItem(DEVICE_KEY) ?? null;
    this.deviceSecret =
      options.deviceSecret ?? (options.deviceId === undefined ? this.storage?.getItem(SECRET_KEY) : null) ?? null;
    this.listen(media, "playing", () => this.startHeartbeats());
    this.listen(media, "pause", () => {
      this.stopHeartbeats();
      if (!this.holdPause) this.askOnPlay = true;
    });
    this.listen(media, "ended", () => this.stopHeartbeats());
    this.listen(media, "play", () => void this.resume());
    // The media refused (a 403 for a stream that ended): the gate's answer says why.
    this.listen(media, "error", () => void this.refused());
    const win = options.window ?? (typeof window === "undefined" ? null : window);
    if (win) this.listen(win, "pagehide", () => this.leave());
    if (options.io) this.connect();
  }

  /** Call `handler` on every `event`; returns a function that stops it. */
  on<K extends keyof PlayerEvents>(event: K, handler: Handler<PlayerEvents[K]>): () => void {
    const set = this.handlers.get(event) ?? new Set();
    this.handlers.set(event, set);
    set.add(handler);
    return () => set.delete(handler);
  }

  /** True while the live connection (Socket.IO) is up; always false over HTTP only. */
  get live(): boolean {
    return this.socket !== null && this.socket.connected;
  }

  /**
   * Ask to play `videoId` on this device; allowed: the source is set and `allowed` is emitted; denied: `denied`
   * (with the conflicts at the limit). A device playing another title has it replaced (one stream per device).
   * `replacing` names streams of the account to end in exchange, in the same step, only if this one is allowed.
   */
  async play(videoId: string, replacing: Replacing = {}): Promise<Settled> {
    this.videoId = videoId;
    const answer = await this.ask(videoId, replacing);
    if (answer.status === "allowed") return this.allowed(answer);
    return this.denied(answer);
  }

  /**
   * "Watch here": play `videoId` in exchange for the streams holding the limit (the conflicts of a denial), in one
   * atomic step on the server: they end only if this one is allowed, and the account never goes over its limit.
   * Without `conflicts`, every other stream of the account makes way.
   */
  async watchHere(videoId: string, conflicts?: Conflict[]): Promise<Settled> {
    const replacing: Replacing = conflicts
      ? { replaceStreamIds: conflicts.map((c) => c.streamId) }
      : { replaceOthers: true };
    return this.play(videoId, replacing);
  }

  /** Stop this player's stream and its media (no `ended`: that event tells of streams lost, not stopped here). */
  async stop(): Promise<void> {
    const streamId = this.streamId;
    if (!streamId) return;
    this.release(true);
    this.askOnPlay = true;
    await this.stopStream(streamId);
  }

  /** Stop one of the account's streams, this device's or another's (one that is already gone is fine). */
  async stopStream(streamId: string): Promise<void> {
    try {
      await this.http.call("DELETE", `/v1/streams/${encodeURIComponent(streamId)}`);
    } catch (error) {
      if (!(error instanceof PlayGateError && error.status === 404)) throw error;
    }
    if (streamId === this.streamId) this.release(true);
    this.emit("changed", { streamId, reason: "stopped" });
  }

  /** Stop listening, heartbeating and connecting; the stream is left to its lease (call stop() first to end it). */
  destroy(): void {
    this.destroyed = true;
    this.release(true);
    for (const [target, type, listener] of this.listeners) target.removeEventListener(type, listener);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.socket?.disconnect();
    this.socket = null;
  }

  // ---- asking ------------------------------------------------------------------------------------------------

  private async ask(videoId: string, replacing: Replacing = {}): Promise<PlayAnswer> {
    this.inFlight += 1;
    try {
      return await this.askOnce(videoId, replacing);
    } catch (error) {
      // A kept device id the server does not take (PLAYGATE_DEVICE_IDS=issued: not issued to this user, or kept
      // without its secret): forget it and ask as a new device, once.
      if (!(error instanceof PlayGateError && error.status === 422 && this.deviceId)) throw error;
      if (error.field !== "deviceId" && error.field !== "deviceSecret") throw error;
      this.deviceId = this.deviceSecret = null;
      this.storage?.removeItem?.(DEVICE_KEY);
      this.storage?.removeItem?.(SECRET_KEY);
      return await this.askOnce(videoId, replacing);
    } finally {
      this.inFlight -= 1;
    }
  }

  private async askOnce(videoId: string, replacing: Replacing): Promise<PlayAnswer> {
    const body: Record<string, unknown> = { videoId };
    if (this.deviceId) body.deviceId = this.deviceId;
    if (this.deviceId && this.deviceSecret) body.deviceSecret = this.deviceSecret;
    if (this.options.deviceName) body.deviceName = this.options.deviceName;
    if (replacing.replaceStreamId) body.replaceStreamId = replacing.replaceStreamId;
    if (replacing.replaceStreamIds?.length) body.replaceStreamIds = replacing.replaceStreamIds;
    if (replacing.replaceOthers) body.replaceOthers = true;
    const wait = this.options.waitS ?? WAIT_S;
    const key = `play-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e12).toString(36)}`;
    let answer = await this.postPlay(`/v1/plays?wait=${wait}`, body, key);
    if (answer.deviceId && answer.deviceId !== this.deviceId) {
      this.deviceId = answer.deviceId;
      this.deviceSecret = answer.deviceSecret ?? null;
      this.storage?.setItem(DEVICE_KEY, answer.deviceId);
      if (answer.deviceSecret) this.storage?.setItem(SECRET_KEY, answer.deviceSecret);
    }
    for (let tries = 0; answer.status === "pending" && tries < POLL_TRIES; tries += 1) {
      const pushed = this.pushed.get(answer.requestId);
      if (pushed) return { ...answer, ...pushed, videoId: pushed.data.videoId };
      await this.pause(answer.requestId);
      answer = (await this.http.call<PlayAnswer>("GET", `/v1/plays/${encodeURIComponent(answer.requestId)}`))!;
    }
    if (answer.status === "pending") throw new PlayGateError(504, { detail: "No decision came in time." });
    return answer;
  }

  /** POST /v1/plays. A 503 or no answer does not prove that nothing was queued (the store may have taken the
   * request and lost its answer): it is asked again with the same Idempotency-Key, which the server answers with
   * that first request (its decision, or still pending) instead of queueing a second one beside it. */
  private async postPlay(path: string, body: Record<string, unknown>, key: string): Promise<PlayAnswer> {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return (await this.http.call<PlayAnswer>("POST", path, body, { "Idempotency-Key": key })) as PlayAnswer;
      } catch (error) {
        const unanswered = error instanceof PlayGateError && (error.status === 503 || error.status === 0);
        if (!unanswered || attempt >= PLAY_RETRIES || this.destroyed) throw error;
        const delay = backoffMs(attempt, PLAY_RETRY_MIN_MS, PLAY_RETRY_MAX_MS, this.options.random ?? Math.random);
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  /** Wait up to POLL_MS, or less if the decision is pushed over the socket meanwhile. */
  private pause(requestId: string): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, POLL_MS);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.waiting.set(requestId, () => {
        this.waiting.delete(requestId);
        done();
      });
    });
  }

  private allowed(answer: PlayAnswer): AllowedEvent {
    const streamId = answer.streamId as string;
    this.askOnPlay = false;
    const fresh = streamId !== this.streamId;
    if (fresh && this.streamId) this.release(false); // the previous title on this device: replaced by the server
    this.streamId = streamId;
    if (answer.expiresAt) this.leaseMs = Date.parse(answer.expiresAt) - Date.now();
    if (fresh) this.renewPlayback(answer);
    if (fresh && answer.playbackUrl) void this.setSource(answer.playbackUrl);
    if (!this.media.paused) this.startHeartbeats();
    const event: AllowedEvent = {
      requestId: answer.requestId,
      streamId,
      videoId: answer.videoId,
      deviceId: answer.deviceId ?? this.deviceId ?? "",
      playbackUrl: answer.playbackUrl ?? null,
      active: answer.active ?? null,
      limit: answer.limit ?? null,
    };
    this.emit("allowed", event);
    return event;
  }

  private denied(answer: PlayAnswer): DeniedEvent {
    const event: DeniedEvent = {
      requestId: answer.requestId,
      videoId: answer.videoId,
      reason: answer.reason ?? "denied",
      active: answer.active ?? null,
      limit: answer.limit ?? null,
      conflicts: answer.conflicts ?? [],
    };
    this.emit("denied", event);
    return event;
  }

  /** The viewer pressed play after a pause: ask again (the same device and video keeps its stream if it lives). */
  private async resume(): Promise<void> {
    if (this.holdPause || this.asking || !this.askOnPlay || !this.videoId || this.destroyed) return;
    this.askOnPlay = false;
    this.asking = true;
    try {
      const answer = await this.ask(this.videoId);
      if (answer.status === "allowed") {
        this.allowed(answer);
      } else {
        this.hold();
        this.release(false);
        this.denied(answer);
      }
    } catch (error) {
      this.emit("error", error as Error);
    } finally {
      this.asking = false;
    }
  }

  /** Pause the media without that pause counting as the viewer's. */
  private hold(): void {
    this.holdPause = true;
    this.media.pause();
    this.holdPause = false;
  }

  // ---- the media -----------------------------------------------------------------------------------------------

  /** MP4 as it is; HLS through hls.js where Media Source Extensions exist, else the browser's own HLS. */
  private async setSource(path: string): Promise<void> {
    const url = this.http.url(path);
    const at = this.media.currentTime;
    this.hls?.destroy();
    this.hls = null;
    let Hls: HlsClass | undefined = this.options.Hls ?? (globalThis as { Hls?: HlsClass }).Hls;
    if (!Hls && isHls(url) && this.options.loadHls && typeof MediaSource !== "undefined") {
      Hls = this.options.Hls = await this.options.loadHls();
    }
    if (isHls(url) && Hls && Hls.isSupported()) {
      this.hls = new Hls(this.options.hlsConfig);
      // A fatal error (a refused segment: the stream may have ended): a heartbeat says whether it is gone.
      this.hls.on?.("hlsError", (_event, data) => {
        if (data && data.fatal) void this.refused();
      });
      this.hls.loadSource(url);
      this.hls.attachMedia(this.media);
    } else if (isHls(url) && !this.media.canPlayType(HLS_TYPE)) {
      this.emit("error", new Error("This browser plays no HLS: load hls.js (the `Hls` option)."));
      return;
    } else {
      this.media.src = url;
    }
    if (at > 0) this.media.currentTime = at; // a new stream of the same title resumes where it was
  }

  /** Forget the stream: no more heartbeats; with `unload`, the media source goes too (its URL no longer works). */
  private release(unload: boolean): void {
    this.stopHeartbeats();
    this.streamId = null;
    this.playbackUrl = null;
    this.playbackToken = null;
    if (!unload) return;
    this.hls?.destroy();
    this.hls = null;
    this.hold();
    this.media.removeAttribute("src");
    this.media.load();
  }

  private ended(message: EndedMessage): void {
    // The next title on this device replaced the current stream: the allowed answer is on its way.
    const ownReplacement = message.reason === "replaced" && this.inFlight > 0;
    if (message.streamId !== this.streamId || ownReplacement) {
      this.emit("changed", { streamId: message.streamId, reason: message.reason });
      return;
    }
    // An expired lease while paused keeps the picture and the position: resuming asks again.
    this.release(!(message.reason === "expired" && this.media.paused));
    this.askOnPlay = true;
    this.emit("ended", { streamId: message.streamId, videoId: message.videoId, reason: message.reason });
  }

  // ---- heartbeats ----------------------------------------------------------------------------------------------

  private startHeartbeats(): void {
    if (!this.streamId || this.heartbeatTimer || this.destroyed) return;
    this.heartbeatTimer = setInterval(() => void this.heartbeat(), this.heartbeatMs());
  }

  /** The heartbeat period: as configured, else a third of the lease (between 1 and 20 seconds). */
  private heartbeatMs(): number {
    if (this.options.heartbeatMs) return this.options.heartbeatMs;
    const third = this.leaseMs && this.leaseMs > 0 ? this.leaseMs / 3 : HEARTBEAT_MAX_MS;
    return Math.round(Math.min(HEARTBEAT_MAX_MS, Math.max(HEARTBEAT_MIN_MS, third)));
  }

  private stopHeartbeats(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }

  /** Renew the lease over the socket when it is up, else over HTTP; a stream found gone ends, with the reason the
   * answer names (else `gone`, once the socket had a moment to say why). */
  private async heartbeat(): Promise<void> {
    const streamId = this.streamId;
    if (!streamId) return;
    let gone = false;
    let reason: string | null = null;
    try {
      let renewed: { status?: number; playbackUrl?: string; playbackToken?: string; reason?: string } | null;
      // The stream's playback token goes along: while PlayGate's ledger is down, an API process that never saw
      // the stream (a balancer's choice) honours the heartbeat from it.
      const token = this.playbackToken;
      if (this.socket && this.socket.connected) {
        const beat = token ? { streamId, playbackToken: token } : { streamId };
        renewed = await this.socket.timeout(ACK_TIMEOUT_MS).emitWithAck("heartbeat", beat);
        gone = Boolean(renewed && renewed.status === 404);
        reason = (gone && renewed?.reason) || null;
      } else {
        const headers = token ? { "X-Playback-Token": token } : undefined;
        const path = `/v1/streams/${encodeURIComponent(streamId)}/heartbeat`;
        renewed = await this.http.call("POST", path, undefined, headers);
      }
      // Both answers carry a fresh playback URL and token (with edge signing, a link that outlives the one playing).
      if (renewed && renewed.playbackUrl && this.streamId === streamId) this.renewPlayback(renewed);
    } catch (error) {
      gone = error instanceof PlayGateError && error.status === 404;
      reason = gone ? (error as PlayGateError).reason : null;
      if (!gone) this.emit("error", error as Error); // the next beat tries again
    }
    if (!gone || this.streamId !== streamId) return;
    if (reason) {
      this.ended({ streamId, videoId: this.videoId ?? "", reason });
      return;
    }
    const lost = () => {
      if (this.streamId === streamId) this.ended({ streamId, videoId: this.videoId ?? "", reason: "gone" });
    };
    // The socket's `stream_ended` says why; it may come a moment after the media or the heartbeat was refused.
    if (this.live) setTimeout(lost, REASON_GRACE_MS);
    else lost();
  }

  /** Keep an answer's playback URL and token: its `playbackToken`, else (a server before it) the URL's. */
  private renewPlayback(answer: { playbackUrl?: string | null; playbackToken?: string | null }): void {
    this.playbackUrl = answer.playbackUrl ?? null;
    this.playbackToken = answer.playbackToken || playbackToken(this.playbackUrl);
  }

  /**
   * The media was refused (hls.js's fatal error, the element's `error`): ask the gate with the stream's playback
   * URL; its 403 names why the stream ended (`reason`). Without a reason, a heartbeat says whether it is gone.
   */
  private async refused(): Promise<void> {
    const streamId = this.streamId;
    const url = this.playbackUrl;
    if (!streamId || !url) return;
    let reason: string | null = null;
    try {
      const fetcher = this.options.fetch ?? globalThis.fetch.bind(globalThis);
      const answer = await fetcher(this.http.url(url), { headers: { Range: "bytes=0-0" } });
      const type = answer.headers.get("content-type") || "";
      if (answer.status === 403 && type.includes("json")) {
        reason = ((await answer.json()) as { reason?: string }).reason ?? null;
      }
    } catch {
      reason = null; // the gate does not answer: the heartbeat decides
    }
    if (this.streamId !== streamId) return;
    if (reason) this.ended({ streamId, videoId: this.videoId ?? "", reason });
    else await this.heartbeat();
  }

  /** The page is going away: stop the stream with a beacon (it carries the token in its body, no headers). */
  private leave(): void {
    const streamId = this.streamId;
    const token = this.http.token();
    if (!streamId || !token) return;
    const send =
      this.options.sendBeacon ??
      (typeof navigator !== "undefined" && navigator.sendBeacon ? navigator.sendBeacon.bind(navigator) : null);
    const url = this.http.url(`/v1/streams/${encodeURIComponent(streamId)}/stop`);
    const body = new Blob([JSON.stringify({ token })], { type: "text/plain" });
    if (send) send(url, body);
    this.release(false);
  }

  // ---- the live connection -------------------------------------------------------------------------------------

  private connect(): void {
    const io = this.options.io!;
    const socket = io(this.options.baseUrl || undefined, {
      // Reconnection is ours (backoffMs), so that a refused token is retried with the current one, slowly.
      reconnection: false,
      auth: (cb: (auth: { token: string | null }) => void) => cb({ token: this.http.token() }),
    });
    socket.on("connect", () => {
      this.reconnectAttempt = 0;
      this.emit("changed", { streamId: null, reason: "connected" });
    });
    socket.on("disconnect", (reason: string) => {
      if (reason !== "io client disconnect") this.reconnect();
    });
    socket.on("connect_error", () => this.reconnect());
    socket.on("message", (message: DecisionMessage) => this.decision(message));
    socket.on("stream_ended", (message: EndedMessage) => this.ended(message));
    this.socket = socket;
  }

  private reconnect(): void {
    if (this.destroyed || this.reconnectTimer) return;
    const delay = backoffMs(
      this.reconnectAttempt,
      this.options.reconnectMinMs ?? RECONNECT_MIN_MS,
      this.options.reconnectMaxMs ?? RECONNECT_MAX_MS,
      this.options.random ?? Math.random,
    );
    this.reconnectAttempt += 1;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.destroyed) this.socket?.connect();
    }, delay);
  }

  private decision(message: DecisionMessage): void {
    this.pushed.set(message.requestId, message);
    if (this.pushed.size > 100) this.pushed.delete(this.pushed.keys().next().value as string);
    const wake = this.waiting.get(message.requestId);
    if (wake) wake();
    else this.emit("changed", { streamId: message.streamId ?? null, reason: message.status });
  }

  // ---- events --------------------------------------------------------------------------------------------------

  private emit<K extends keyof PlayerEvents>(event: K, value: PlayerEvents[K]): void {
    for (const handler of this.handlers.get(event) ?? []) {
      try {
        handler(value);
      } catch (error) {
        // A failing handler must not break the player; report it where a console is.
        if (typeof console !== "undefined") console.error(error);
      }
    }
  }

  private listen(target: EventTarget, type: string, listener: EventListener): void {
    target.addEventListener(type, listener);
    this.listeners.push([target, type, listener]);
  }
}

/** Attach PlayGate to a `<video>` element: `attach(video, { baseUrl, token, deviceName }).play(videoId)`. */
export function attach(media: MediaLike, options: PlayerOptions): Player {
  return new Player(media, options);
}
