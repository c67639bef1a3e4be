import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { attach, backoffMs, isHls, type Player, playbackToken } from "../src/index";
import type { Conflict, MediaLike, PlayerOptions, SocketLike, StorageLike } from "../src/types";

const BASE = "https://gate.test";
const TOKEN = "token-1";

/** A media element: play() fires play then playing, pause() fires pause, as a browser's does. */
class FakeMedia extends EventTarget implements MediaLike {
  src = "";
  paused = true;
  currentTime = 0;
  loads = 0;
  play(): Promise<void> {
    this.paused = false;
    this.dispatchEvent(new Event("play"));
    this.dispatchEvent(new Event("playing"));
    return Promise.resolve();
  }
  pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.dispatchEvent(new Event("pause"));
  }
  load(): void {
    this.loads += 1;
  }
  removeAttribute(name: string): void {
    if (name === "src") this.src = "";
  }
  canPlayType(type: string): string {
    return type === "application/vnd.apple.mpegurl" && this.nativeHls ? "maybe" : "";
  }
  nativeHls = false;
}

type Route = (body: Record<string, unknown> | null, url: string) => [number, unknown];

/** A fetch that answers from `routes` ("METHOD /path" without the query) and records every call. */
function fakeServer(routes: Record<string, Route>) {
  const calls: Array<{ method: string; path: string; body: Record<string, unknown> | null; headers: Headers }> = [];
  const fetch = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = new URL(String(input));
    const method = init?.method ?? "GET";
    const body = init?.body ? JSON.parse(String(init.body)) : null;
    calls.push({ method, path: url.pathname, body, headers: new Headers(init?.headers) });
    const route = routes[`${method} ${url.pathname}`];
    const [status, json] = route ? route(body, url.toString()) : [404, { status: 404, detail: "no route" }];
    return new Response(status === 204 ? null : JSON.stringify(json), {
      status,
      headers: { "content-type": status < 300 ? "application/json" : "application/problem+json" },
    });
  });
  return { fetch: fetch as unknown as typeof globalThis.fetch, calls };
}

function allowedAnswer(streamId: string, videoId = "v1"): [number, unknown] {
  return [
    200,
    {
      requestId: `r-${streamId}`,
      status: "allowed",
      videoId,
      deviceId: "dv1.issued",
      streamId,
      active: 1,
      limit: 1,
      playbackUrl: `/v1/streams/${streamId}/content?token=p`,
    },
  ];
}

const conflict: Conflict = {
  streamId: "other",
  videoId: "v9",
  deviceId: "tv",
  deviceName: "Living-room TV",
  startedAt: "2026-12-01T00:00:00.000Z",
  lastSeenAt: "2026-12-01T00:01:00.000Z",
};

function memoryStorage(): StorageLike & { items: Map<string, string> } {
  const items = new Map<string, string>();
  return { items, getItem: (k) => items.get(k) ?? null, setItem: (k, v) => void items.set(k, v) };
}

function heartbeats(calls: ReturnType<typeof fakeServer>["calls"]): number {
  return calls.filter((c) => c.path.endsWith("/heartbeat")).length;
}

let player: Player | null = null;

/** A player that was allowed to play v1 as stream s1 (its routes besides the play), with a spy on `ended`. */
async function allowedPlayer(routes: Record<string, Route>) {
  const media = new FakeMedia();
  const server = fakeServer({ "POST /v1/plays": () => allowedAnswer("s1"), ...routes });
  const p = make(media, server.fetch);
  const ended = vi.fn();
  p.on("ended", ended);
  await p.play("v1");
  return { media, p, ended };
}

function make(media: FakeMedia, fetch: typeof globalThis.fetch, extra: Partial<PlayerOptions> = {}): Player {
  player = attach(media, {
    baseUrl: BASE,
    token: TOKEN,
    fetch,
    storage: null,
    window: new EventTarget(),
    heartbeatMs: 10_000,
    ...extra,
  });
  return player;
}

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(() => {
  player?.destroy();
  player = null;
  vi.useRealTimers();
});

describe("asking to play", () => {
  it("sets the MP4 source, keeps the issued device id, and emits allowed", async () => {
    const media = new FakeMedia();
    const server = fakeServer({ "POST /v1/plays": () => allowedAnswer("s1") });
    const storage = memoryStorage();
    const p = make(media, server.fetch, { storage, deviceName: "Den TV" });
    const allowed = vi.fn();
    p.on("allowed", allowed);
    await p.play("v1");
    expect(media.src).toBe(`${BASE}/v1/streams/s1/content?token=p`);
    expect(allowed).toHaveBeenCalledWith(expect.objectContaining({ streamId: "s1", videoId: "v1" }));
    expect(storage.items.get("playgate.deviceId")).toBe("dv1.issued");
    expect(server.calls[0].body).toEqual({ videoId: "v1", deviceName: "Den TV" });
    expect(server.calls[0].headers.get("Authorization")).toBe(`Bearer ${TOKEN}`);
    await p.play("v2");
    expect(server.calls[1].body).toMatchObject({ videoId: "v2", deviceId: "dv1.issued" });
  });

  it("emits denied with the conflicts at the limit", async () => {
    const media = new FakeMedia();
    const server = fakeServer({
      "POST /v1/plays": () => [
        200,
        { requestId: "r1", status: "denied", videoId: "v1", reason: "limit_reached", active: 1, limit: 1, conflicts: [conflict] },
      ],
    });
    const p = make(media, server.fetch);
    const denied = vi.fn();
    p.on("denied", denied);
    const result = await p.play("v1");
    expect(result).toMatchObject({ reason: "limit_reached", conflicts: [conflict], limit: 1 });
    expect(denied).toHaveBeenCalledOnce();
    expect(media.src).toBe("");
  });

  it("watch here asks once, naming the conflicts (or all the others) to replace; it stops nothing itself", async () => {
    const media = new FakeMedia();
    const server = fakeServer({ "POST /v1/plays": () => allowedAnswer("s1") });
    const p = make(media, server.fetch);
    await expect(p.watchHere("v1", [conflict, { ...conflict, streamId: "another" }])).resolves.toMatchObject({
      streamId: "s1",
    });
    expect(server.calls).toHaveLength(1);
    expect(server.calls[0].body).toMatchObject({ videoId: "v1", replaceStreamIds: ["other", "another"] });
    expect(server.calls[0].body).not.toHaveProperty("replaceOthers");
    await p.watchHere("v2");
    expect(server.calls[1].body).toMatchObject({ videoId: "v2", replaceOthers: true });
    expect(server.calls[1].body).not.toHaveProperty("replaceStreamIds");
    expect(server.calls.filter((c) => c.method === "DELETE")).toEqual([]);
  });

  it("keeps the device secret with the issued id, and starts over as a new device when a kept id is refused", async () => {
    const media = new FakeMedia();
    const storage = memoryStorage();
    storage.setItem("playgate.deviceId", "dv1.copied");
    const server = fakeServer({
      "POST /v1/plays": (body) =>
        body?.deviceId === "dv1.copied"
          ? [422, { status: 422, detail: "another installation's", field: "deviceSecret" }]
          : [200, { ...(allowedAnswer("s1")[1] as object), deviceId: "dv1.mine", deviceSecret: "secret-1" }],
    });
    const p = make(media, server.fetch, { storage });
    await expect(p.play("v1")).resolves.toMatchObject({ streamId: "s1" });
    expect(server.calls.map((c) => c.body?.deviceId)).toEqual(["dv1.copied", undefined]);
    expect(storage.items.get("playgate.deviceId")).toBe("dv1.mine");
    expect(storage.items.get("playgate.deviceSecret")).toBe("secret-1");
    await p.play("v2");
    expect(server.calls[2].body).toMatchObject({ deviceId: "dv1.mine", deviceSecret: "secret-1" });
    // Another player of this installation reads both back.
    const again = make(new FakeMedia(), server.fetch, { storage });
    await again.play("v3");
    expect(server.calls[3].body).toMatchObject({ deviceId: "dv1.mine", deviceSecret: "secret-1" });
  });

  it("asks again after a 503 or no answer with the same Idempotency-Key, a few times at most", async () => {
    const media = new FakeMedia();
    const answers: Array<[number, unknown]> = [[503, { status: 503, detail: "store away" }], allowedAnswer("s1")];
    const server = fakeServer({ "POST /v1/plays": () => answers.shift() as [number, unknown] });
    const p = make(media, server.fetch, { random: () => 0 });
    const done = p.play("v1");
    await vi.advanceTimersByTimeAsync(300); // the first retry waits half of 0.5 s with this random
    await expect(done).resolves.toMatchObject({ streamId: "s1" });
    const keys = server.calls.map((c) => c.headers.get("Idempotency-Key"));
    expect(keys).toHaveLength(2);
    expect(keys[0]).toMatch(/^play-/);
    expect(keys[1]).toBe(keys[0]);

    const down = fakeServer({ "POST /v1/plays": () => [503, { status: 503, detail: "store away" }] });
    const q = make(new FakeMedia(), down.fetch, { random: () => 0 });
    const refused = expect(q.play("v1")).rejects.toMatchObject({ status: 503 });
    await vi.advanceTimersByTimeAsync(5_000);
    await refused;
    expect(down.calls).toHaveLength(4); // the first try and three more
    expect(new Set(down.calls.map((c) => c.headers.get("Idempotency-Key"))).size).toBe(1);
  });

  it("does not ask again after an answer that is not a 503", async () => {
    const server = fakeServer({ "POST /v1/plays": () => [429, { status: 429, detail: "slow down" }] });
    const p = make(new FakeMedia(), server.fetch);
    await expect(p.play("v1")).rejects.toMatchObject({ status: 429 });
    expect(server.calls).toHaveLength(1);
  });

  it("polls GET /v1/plays/{id} over HTTP only while the decision is pending", async () => {
    const media = new FakeMedia();
    let looks = 0;
    const server = fakeServer({
      "POST /v1/plays": () => [202, { requestId: "r1", status: "pending", videoId: "v1", deviceId: "d" }],
      "GET /v1/plays/r1": () => {
        looks += 1;
        return looks < 2 ? [200, { requestId: "r1", status: "pending", videoId: "v1" }] : allowedAnswer("s1");
      },
    });
    const p = make(media, server.fetch);
    const done = p.play("v1");
    await vi.advanceTimersByTimeAsync(2_500);
    await expect(done).resolves.toMatchObject({ streamId: "s1" });
    expect(looks).toBe(2);
  });

  it("plays HLS through hls.js where it is supported, natively elsewhere", async () => {
    const hlsUrl = (id: string) => `/v1/play/${id}/master.m3u8`;
    const server = fakeServer({
      "POST /v1/plays": (body) => {
        const [status, json] = allowedAnswer(String(body!.videoId));
        return [status, { ...(json as object), playbackUrl: hlsUrl(String(body!.videoId)) }];
      },
    });
    const loaded: string[] = [];
    class FakeHls {
      static isSupported = () => true;
      loadSource(url: string) {
        loaded.push(url);
      }
      attachMedia() {}
      destroy() {}
    }
    const withMse = new FakeMedia();
    await make(withMse, server.fetch, { Hls: FakeHls }).play("a");
    expect(loaded).toEqual([`${BASE}${hlsUrl("a")}`]);
    expect(withMse.src).toBe("");
    player!.destroy();
    const safari = new FakeMedia();
    safari.nativeHls = true;
    await make(safari, server.fetch).play("b");
    expect(safari.src).toBe(`${BASE}${hlsUrl("b")}`);
    expect(isHls("/x/master.m3u8?token=1")).toBe(true);
    expect(isHls("/x/clip.mp4")).toBe(false);
  });
});

describe("playbackToken", () => {
  it("is the token of a PlayGate playback URL, none in an edge's signed link", () => {
    expect(playbackToken("/v1/play/eyJ.a-b_c/master.m3u8")).toBe("eyJ.a-b_c");
    expect(playbackToken("/v1/streams/s1/content?token=q")).toBe("q");
    expect(playbackToken("/edge/s1/v1.mp4?md5=abc&expires=9")).toBeNull();
    expect(playbackToken(null)).toBeNull();
  });
});

describe("heartbeats", () => {
  it("are sent only while the media plays", async () => {
    const media = new FakeMedia();
    const server = fakeServer({
      "POST /v1/plays": () => allowedAnswer("s1"),
      "POST /v1/streams/s1/heartbeat": () => [200, { expiresAt: "later" }],
    });
    const p = make(media, server.fetch);
    await p.play("v1");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(heartbeats(server.calls)).toBe(0); // allowed but not playing yet: nothing holds the slot
    await media.play();
    await vi.advanceTimersByTimeAsync(30_000);
    expect(heartbeats(server.calls)).toBe(3);
    // with the stream's playback token: a PlayGate process that never saw the stream honours it in an outage
    const beats = server.calls.filter((c) => c.path.endsWith("/heartbeat"));
    expect(beats.map((c) => c.headers.get("X-Playback-Token"))).toEqual(["p", "p", "p"]);
    media.pause();
    await vi.advanceTimersByTimeAsync(120_000);
    expect(heartbeats(server.calls)).toBe(3); // paused: the lease runs out and the slot is freed
  });

  it("send the decision's playbackToken when its URL (an edge's link) carries none, then the fresh one", async () => {
    const edge = "/edge/md5/9/s1/v1/master.m3u8";
    const media = new FakeMedia();
    media.nativeHls = true;
    const server = fakeServer({
      "POST /v1/plays": () => {
        const [status, body] = allowedAnswer("s1");
        return [status, { ...(body as object), playbackUrl: edge, playbackToken: "pt1" }];
      },
      "POST /v1/streams/s1/heartbeat": () => [200, { expiresAt: "later", playbackUrl: edge, playbackToken: "pt2" }],
    });
    const p = make(media, server.fetch);
    await p.play("v1");
    expect(playbackToken(edge)).toBeNull();
    await media.play();
    await vi.advanceTimersByTimeAsync(20_000);
    const beats = server.calls.filter((c) => c.path.endsWith("/heartbeat"));
    expect(beats.map((c) => c.headers.get("X-Playback-Token"))).toEqual(["pt1", "pt2"]);
  });

  it("pause then resume asks again, and a denial on resume pauses the media", async () => {
    const media = new FakeMedia();
    let answer: () => [number, unknown] = () => allowedAnswer("s1");
    const server = fakeServer({
      "POST /v1/plays": () => answer(),
      "POST /v1/streams/s1/heartbeat": () => [200, {}],
      "POST /v1/streams/s2/heartbeat": () => [200, {}],
    });
    const p = make(media, server.fetch);
    await p.play("v1");
    await media.play();
    media.pause();
    media.currentTime = 42;
    // The lease ran out meanwhile: the server admits a new stream of the same title.
    answer = () => allowedAnswer("s2");
    await media.play();
    await vi.advanceTimersByTimeAsync(0);
    const asks = server.calls.filter((c) => c.path === "/v1/plays");
    expect(asks).toHaveLength(2);
    expect(asks[1].body).toMatchObject({ videoId: "v1", deviceId: "dv1.issued" });
    expect(p.streamId).toBe("s2");
    expect(media.src).toContain("/v1/streams/s2/content");
    expect(media.currentTime).toBe(42);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(server.calls.at(-1)!.path).toBe("/v1/streams/s2/heartbeat");

    media.pause();
    answer = () => [200, { requestId: "r9", status: "denied", videoId: "v1", reason: "limit_reached", conflicts: [conflict] }];
    const denied = vi.fn();
    p.on("denied", denied);
    await media.play();
    await vi.advanceTimersByTimeAsync(0);
    expect(denied).toHaveBeenCalledWith(expect.objectContaining({ conflicts: [conflict] }));
    expect(media.paused).toBe(true);
    expect(p.streamId).toBeNull();
  });

  it("a stream found gone at a heartbeat ends", async () => {
    const { media, p, ended } = await allowedPlayer({
      "POST /v1/streams/s1/heartbeat": () => [404, { status: 404, detail: "not active" }],
    });
    await media.play();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(ended).toHaveBeenCalledWith({ streamId: "s1", videoId: "v1", reason: "gone" });
    expect(p.streamId).toBeNull();
  });
});

describe("a refused stream", () => {
  it("ends with the reason the gate's 403 names, asked with the latest playback URL", async () => {
    const asked: string[] = [];
    const { media, p, ended } = await allowedPlayer({
      "POST /v1/streams/s1/heartbeat": () => [200, { expiresAt: "x", playbackUrl: "/v1/streams/s1/content?token=q" }],
      "GET /v1/streams/s1/content": (_body, url) => {
        asked.push(url);
        return [403, { status: 403, detail: "Stream 's1' has ended (evicted)", reason: "evicted" }];
      },
    });
    await media.play();
    await vi.advanceTimersByTimeAsync(10_000);
    media.dispatchEvent(new Event("error"));
    await vi.advanceTimersByTimeAsync(0);
    expect(asked).toEqual([`${BASE}/v1/streams/s1/content?token=q`]);
    expect(ended).toHaveBeenCalledWith({ streamId: "s1", videoId: "v1", reason: "evicted" });
    expect(p.streamId).toBeNull();
  });

  it("a heartbeat answered 404 with a reason ends with it at once", async () => {
    const { media, ended } = await allowedPlayer({
      "POST /v1/streams/s1/heartbeat": () => [404, { status: 404, detail: "not active", reason: "limit_lowered" }],
    });
    await media.play();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(ended).toHaveBeenCalledWith({ streamId: "s1", videoId: "v1", reason: "limit_lowered" });
  });

  it("without a reason in the refusal, a heartbeat says whether it is gone", async () => {
    const { media, ended } = await allowedPlayer({
      "GET /v1/streams/s1/content": () => [403, { status: 403, detail: "has ended" }],
      "POST /v1/streams/s1/heartbeat": () => [404, { status: 404, detail: "not active" }],
    });
    media.dispatchEvent(new Event("error"));
    await vi.advanceTimersByTimeAsync(0);
    expect(ended).toHaveBeenCalledWith({ streamId: "s1", videoId: "v1", reason: "gone" });
  });
});

describe("leaving the page", () => {
  it("stops the stream with a beacon carrying the token in its body", async () => {
    const media = new FakeMedia();
    const win = new EventTarget();
    const beacons: Array<[string, Blob | string]> = [];
    const server = fakeServer({ "POST /v1/plays": () => allowedAnswer("s1") });
    const p = make(media, server.fetch, { window: win, sendBeacon: (url, data) => beacons.push([url, data]) > 0 });
    await p.play("v1");
    win.dispatchEvent(new Event("pagehide"));
    expect(beacons).toHaveLength(1);
    const [url, data] = beacons[0];
    expect(url).toBe(`${BASE}/v1/streams/s1/stop`);
    expect(JSON.parse(await (data as Blob).text())).toEqual({ token: TOKEN });
    expect(p.streamId).toBeNull();
    win.dispatchEvent(new Event("pagehide"));
    expect(beacons).toHaveLength(1);
  });
});

describe("the live connection", () => {
  /** A socket.io-client stand-in: the test fires its events; connect() is counted. */
  function fakeIo() {
    const handlers = new Map<string, (...args: any[]) => void>();
    const socket = {
      connected: false,
      connects: 0,
      acks: [] as unknown[],
      on(event: string, handler: (...args: any[]) => void) {
        handlers.set(event, handler);
      },
      timeout: () => ({
        emitWithAck: async (_event: string, data: unknown): Promise<Record<string, unknown>> => {
          socket.acks.push(data);
          return { expiresAt: "later" };
        },
      }),
      connect() {
        socket.connects += 1;
      },
      disconnect() {},
      fire(event: string, ...args: unknown[]) {
        handlers.get(event)!(...args);
      },
    };
    const io = vi.fn((_url: string | undefined, _options: Record<string, unknown>) => socket as unknown as SocketLike);
    return { io, socket };
  }

  it("reconnects with doubling delays, jittered, reset once connected", async () => {
    const { io, socket } = fakeIo();
    make(new FakeMedia(), fakeServer({}).fetch, { io, reconnectMinMs: 100, reconnectMaxMs: 1_000, random: () => 1 });
    expect(io.mock.calls[0][1]).toMatchObject({ reconnection: false });
    const delays: number[] = [];
    for (let attempt = 0; attempt < 6; attempt += 1) {
      socket.fire("connect_error", new Error("refused"));
      const before = socket.connects;
      let waited = 0;
      while (socket.connects === before && waited < 5_000) {
        await vi.advanceTimersByTimeAsync(50);
        waited += 50;
      }
      delays.push(waited);
    }
    expect(delays).toEqual([100, 200, 400, 800, 1_000, 1_000]);
    socket.fire("connect");
    socket.fire("disconnect", "transport close");
    await vi.advanceTimersByTimeAsync(100);
    expect(socket.connects).toBe(7);
    expect(backoffMs(3, 100, 10_000, () => 0)).toBe(400);
  });

  it("the next title on this device ends the previous stream as replaced without an ended event", async () => {
    const { io, socket } = fakeIo();
    const media = new FakeMedia();
    let next = "s1";
    const server = fakeServer({
      "POST /v1/plays": (body) => {
        // The server announces the replaced stream before the HTTP answer comes back.
        if (next === "s2") socket.fire("stream_ended", { streamId: "s1", videoId: "v1", reason: "replaced" });
        return allowedAnswer(next, String(body!.videoId));
      },
    });
    const p = make(media, server.fetch, { io });
    const ended = vi.fn();
    p.on("ended", ended);
    await p.play("v1");
    next = "s2";
    await p.play("v2");
    expect(ended).not.toHaveBeenCalled();
    expect(p.streamId).toBe("s2");
    expect(media.src).toContain("/v1/streams/s2/content");
  });

  it("heartbeats over the socket and hears its stream end, and others change", async () => {
    const { io, socket } = fakeIo();
    const media = new FakeMedia();
    const server = fakeServer({ "POST /v1/plays": () => allowedAnswer("s1") });
    const p = make(media, server.fetch, { io });
    socket.connected = true;
    socket.fire("connect");
    const ended = vi.fn();
    const changed = vi.fn();
    p.on("ended", ended);
    p.on("changed", changed);
    await p.play("v1");
    await media.play();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(socket.acks).toEqual([{ streamId: "s1", playbackToken: "p" }]);
    expect(heartbeats(server.calls)).toBe(0);
    socket.fire("stream_ended", { streamId: "elsewhere", videoId: "v3", reason: "expired" });
    expect(changed).toHaveBeenCalledWith({ streamId: "elsewhere", reason: "expired" });
    socket.fire("stream_ended", { streamId: "s1", videoId: "v1", reason: "limit_lowered" });
    expect(ended).toHaveBeenCalledWith({ streamId: "s1", videoId: "v1", reason: "limit_lowered" });
    expect(media.src).toBe("");
  });

  it("heartbeats over the socket with the pushed decision's playbackToken, then the ack's fresh one", async () => {
    const { io, socket } = fakeIo();
    socket.timeout = () => ({
      emitWithAck: async (_event: string, data: unknown) => {
        socket.acks.push(data);
        const playbackUrl = "/edge/b/9/s1/v1/master.m3u8";
        return { streamId: "s1", expiresAt: "later", playbackUrl, playbackToken: "pt2" };
      },
    });
    const media = new FakeMedia();
    media.nativeHls = true;
    const server = fakeServer({
      "POST /v1/plays": () => {
        // Decided on the socket before the answer came back; the answer says pending.
        socket.fire("message", {
          status: "allowed",
          data: { videoId: "v1", userId: "u1" },
          requestId: "r-s1",
          streamId: "s1",
          active: 1,
          limit: 1,
          playbackUrl: "/edge/a/9/s1/v1/master.m3u8",
          playbackToken: "pt1",
        });
        return [202, { requestId: "r-s1", status: "pending", videoId: "v1", deviceId: "tv" }];
      },
    });
    const p = make(media, server.fetch, { io });
    socket.connected = true;
    socket.fire("connect");
    await p.play("v1");
    expect(p.streamId).toBe("s1");
    await media.play();
    await vi.advanceTimersByTimeAsync(20_000);
    expect(socket.acks).toEqual([
      { streamId: "s1", playbackToken: "pt1" },
      { streamId: "s1", playbackToken: "pt2" },
    ]);
  });

  /** A player on a connected socket whose heartbeat acks are `ack`, playing s1 for one heartbeat period. */
  async function refusedOnTheSocket(ack: Record<string, unknown>) {
    const { io, socket } = fakeIo();
    socket.timeout = () => ({ emitWithAck: async () => ack });
    const media = new FakeMedia();
    const p = make(media, fakeServer({ "POST /v1/plays": () => allowedAnswer("s1") }).fetch, { io });
    socket.connected = true;
    const ended = vi.fn();
    p.on("ended", ended);
    await p.play("v1");
    await media.play();
    await vi.advanceTimersByTimeAsync(10_000);
    return { socket, ended };
  }

  it("a socket heartbeat's 404 naming why ends the stream at once", async () => {
    const { ended } = await refusedOnTheSocket({ status: 404, reason: "evicted" });
    expect(ended.mock.calls).toEqual([[{ streamId: "s1", videoId: "v1", reason: "evicted" }]]);
  });

  it("a stream refused at a heartbeat waits a moment for the socket to say why", async () => {
    const { socket, ended } = await refusedOnTheSocket({ status: 404 });
    expect(ended).not.toHaveBeenCalled();
    socket.fire("stream_ended", { streamId: "s1", videoId: "v1", reason: "stopped_by_admin" });
    await vi.advanceTimersByTimeAsync(3_000);
    expect(ended.mock.calls).toEqual([[{ streamId: "s1", videoId: "v1", reason: "stopped_by_admin" }]]);
  });
});
