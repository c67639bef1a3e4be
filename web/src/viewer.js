// The viewer: log in, see the videos, play (each tab is its own device), see denials with the streams that use
// the limit, stop or replace one of them, and hear over Socket.IO about streams that end elsewhere.
import Hls from "hls.js/light"; // no DRM, subtitles or alternate audio: about half the size
import { io } from "socket.io-client";
import { ApiError, ENDED_REASONS, createApi, h, loadSession, randomId, since } from "./api.js";
import "./style.css";

const SESSION_KEY = "playgate.viewer";
const DEVICE_KEY = "playgate.deviceId";
const WAIT_S = 10; // POST /v1/plays?wait=: the server caps it at 10 s
const POLL_TRIES = 20; // then GET /v1/plays/{id} once a second, if the decision took longer
const POLL_INTERVAL_MS = 1000;
const HEARTBEAT_MIN_MS = 2000;
const HEARTBEAT_MAX_MS = 30000;
const HEARTBEAT_RETRY_MS = 5000;
const ACK_TIMEOUT_MS = 5000;
const MAX_MEDIA_RELOADS = 3; // fresh playback URLs tried after media errors, per stream
const KEPT_DECISIONS = 200;
// hls.js buffers this far ahead and then waits: a paused player soon stops fetching, and its slot frees itself.
const HLS_BUFFER_S = 8;

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** This tab's device id: kept in sessionStorage, so a reload keeps it and another tab gets its own. */
const deviceId = (() => {
  const known = sessionStorage.getItem(DEVICE_KEY);
  if (known) return known;
  const fresh = randomId("tab-");
  sessionStorage.setItem(DEVICE_KEY, fresh);
  return fresh;
})();

let session = loadSession(localStorage, SESSION_KEY);
let socket = null;
const videos = new Map(); // videoId -> Video
const cards = new Map(); // videoId -> Card
const playing = new Map(); // streamId -> Card, the streams of this tab
const decisions = new Map(); // requestId -> `message` payload, for answers that arrive before the HTTP reply
let denial = null; // {card, limit} while the denial panel is open

const api = createApi(
  () => session && session.token,
  (error) => endSession(`Your session ended: ${error.message} Log in again.`, true),
);

// ---- video cards ---------------------------------------------------------------------------------------------

function placeholder(video) {
  return h("div", { class: "poster placeholder", "aria-hidden": "true" }, h("span", {}, video.title));
}

function poster(video) {
  if (!video.posterUrl) return placeholder(video);
  const img = h("img", { class: "poster", src: video.posterUrl, alt: "", loading: "lazy" });
  img.addEventListener("error", () => img.replaceWith(placeholder(video)));
  return img;
}

/** One video in the grid and its state in this tab: idle, requesting, playing, denied, ended or error. */
class Card {
  constructor(video) {
    this.video = video;
    this.streamId = null;
    this.timer = null;
    this.busy = false;
    this.status = h("p", { class: "state" }, "Ready to play");
    this.playButton = h(
      "button",
      { type: "button", class: "primary", "aria-label": `Play ${video.title}`, onclick: () => play(this) },
      "Play",
    );
    this.stopButton = h(
      "button",
      { type: "button", "aria-label": `Stop ${video.title}`, hidden: true, onclick: () => stop(this) },
      "Stop",
    );
    this.media = h("div", { class: "media" }, poster(video));
    this.el = h(
      "li",
      { class: "card", "data-video-id": video.id, "data-state": "idle" },
      this.media,
      h("div", { class: "card-body" }, h("h3", {}, video.title), this.status, h("div", { class: "actions" }, this.playButton, this.stopButton)),
    );
  }

  set(state, text) {
    const hadFocus = this.el.contains(document.activeElement);
    this.el.dataset.state = state;
    this.status.textContent = text;
    // aria-disabled, not disabled: a disabled button would drop the keyboard focus while the request runs.
    this.playButton.setAttribute("aria-disabled", String(state === "requesting"));
    this.playButton.textContent = state === "requesting" ? "Requesting…" : "Play";
    this.playButton.hidden = state === "playing";
    this.stopButton.hidden = state !== "playing";
    if (hadFocus) (state === "playing" ? this.stopButton : this.playButton).focus();
  }

  showVideo(url) {
    const video = h("video", {
      class: "poster",
      controls: true,
      autoplay: true,
      muted: true,
      loop: true,
      playsInline: true,
      preload: "auto",
      "aria-label": `${this.video.title}, playing`,
    });
    video.setAttribute("muted", "");
    this.reloads = 0;
    video.addEventListener("error", () => this.mediaFailed(video));
    // Segment requests are the heartbeat while playing; paused, no heartbeats either, so the slot frees itself.
    video.addEventListener("pause", () => clearTimeout(this.timer));
    video.addEventListener("play", () => this.streamId && scheduleHeartbeat(this));
    setSource(video, url, () => this.mediaFailed(video));
    this.media.replaceChildren(video);
    video.play().catch(() => {
      // Autoplay refused (rare when muted): the controls let the viewer start it.
    });
  }

  /** The media request failed: if the stream is still ours, resume from a fresh playback URL, else end it. */
  async mediaFailed(video) {
    const streamId = this.streamId;
    if (!streamId || this.reloads >= MAX_MEDIA_RELOADS) return;
    this.reloads += 1;
    let answer;
    try {
      answer = await api.post(`/v1/streams/${encodeURIComponent(streamId)}/heartbeat`);
    } catch (err) {
      if (this.streamId === streamId && err instanceof ApiError && err.status === 404) ended(this, "stopped_elsewhere");
      return;
    }
    if (this.streamId !== streamId || !answer.playbackUrl || !video.isConnected) return;
    const at = video.currentTime;
    setSource(video, answer.playbackUrl, () => this.mediaFailed(video));
    video.currentTime = at;
    video.play().catch(() => {});
  }

  hideVideo() {
    const video = this.media.querySelector("video");
    if (video) {
      if (video.hls) video.hls.destroy();
      video.pause();
      video.removeAttribute("src");
      video.load();
    }
    this.media.replaceChildren(poster(this.video));
  }
}

/** Play `url` in `video`: an HLS playlist through hls.js where Media Source Extensions exist, else natively (Safari,
 * iOS); `failed` is called on a fatal error (a refused segment: the stream ended). */
function setSource(video, url, failed) {
  if (video.hls) video.hls.destroy();
  video.hls = null;
  if (!/\.m3u8$/.test(url) || !Hls.isSupported()) {
    video.src = url;
    return;
  }
  const hls = new Hls({ maxBufferLength: HLS_BUFFER_S, maxMaxBufferLength: HLS_BUFFER_S * 2 });
  hls.on(Hls.Events.ERROR, (_event, data) => {
    if (!data.fatal) return;
    hls.destroy();
    if (video.hls === hls) video.hls = null;
    failed();
  });
  hls.loadSource(url);
  hls.attachMedia(video);
  video.hls = hls;
}

function notice(text) {
  const el = $("notice");
  el.textContent = text;
  el.hidden = !text;
}

// ---- playing --------------------------------------------------------------------------------------------------

async function play(card, replaceStreamId = null) {
  if (card.busy || card.streamId) return;
  card.busy = true;
  card.set("requesting", "Requesting…");
  try {
    const body = { videoId: card.video.id, deviceId };
    if (replaceStreamId) body.replaceStreamId = replaceStreamId;
    const answer = await api.post(`/v1/plays?wait=${WAIT_S}`, body, { "Idempotency-Key": randomId("play-") });
    const decision = await settle(answer);
    if (decision.status === "allowed") startPlaying(card, decision);
    else await deny(card, decision);
  } catch (err) {
    if (session) card.set("error", `Could not ask to play: ${err.message}`);
  } finally {
    card.busy = false;
    refreshUsage();
  }
}

/** The decision for a play answer: at once, from a `message` that came first, or from GET /v1/plays/{id}. */
async function settle(answer) {
  let current = answer;
  for (let attempt = 0; current.status === "pending" && attempt < POLL_TRIES; attempt += 1) {
    const pushed = decisions.get(current.requestId);
    if (pushed) return { ...pushed, videoId: pushed.data.videoId };
    await sleep(POLL_INTERVAL_MS);
    current = await api.get(`/v1/plays/${encodeURIComponent(current.requestId)}`);
  }
  if (current.status === "pending") throw new Error("no decision came in time; try again");
  const pushed = decisions.get(current.requestId);
  return { ...(pushed || {}), ...current };
}

function startPlaying(card, decision) {
  card.streamId = decision.streamId;
  playing.set(decision.streamId, card);
  const url = decision.playbackUrl || (decisions.get(decision.requestId) || {}).playbackUrl;
  if (url) {
    card.showVideo(url);
    card.set("playing", "Playing");
  } else {
    card.set("playing", "Playing (no media from this server: heartbeats hold the slot)");
  }
  scheduleHeartbeat(card, decision.expiresAt);
  if (denial && denial.card === card) hideDenial();
}

async function deny(card, decision) {
  if (decision.reason !== "limit_reached") {
    card.set("denied", `Denied: ${decision.reason || "no reason given"}`);
    return;
  }
  card.set("denied", `Denied: all ${decision.limit} of your streams are in use`);
  denial = { card, limit: decision.limit };
  await renderDenial();
  $("denial").querySelector("h2").focus();
}

async function stop(card) {
  const streamId = card.streamId;
  if (!streamId) return;
  try {
    await api.del(`/v1/streams/${encodeURIComponent(streamId)}`);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) {
      notice(`Could not stop ${card.video.title}: ${err.message}`);
      return;
    }
  }
  release(card);
  card.set("idle", "Stopped");
  refreshUsage();
}

/** Forget this tab's stream on `card`: no more heartbeats, no more media requests. */
function release(card) {
  if (card.streamId) playing.delete(card.streamId);
  card.streamId = null;
  clearTimeout(card.timer);
  card.timer = null;
  card.hideVideo();
}

function ended(card, reason) {
  const why = ENDED_REASONS[reason] || reason;
  release(card);
  card.set("ended", `Stopped: ${why}`);
  notice(`${card.video.title} stopped: ${why}.`);
  refreshUsage();
}

// ---- heartbeats -----------------------------------------------------------------------------------------------

function scheduleHeartbeat(card, expiresAt) {
  clearTimeout(card.timer);
  // Without a known expiry, renew soon: the ack says when the lease runs out.
  const left = expiresAt ? new Date(expiresAt).getTime() - Date.now() : 0;
  const delay = Math.min(HEARTBEAT_MAX_MS, Math.max(HEARTBEAT_MIN_MS, left / 3));
  const streamId = card.streamId;
  card.timer = setTimeout(() => heartbeat(card, streamId), delay);
}

/** Renew the lease over the socket (its ack says 404 when the stream is gone), or over HTTP when offline. */
async function heartbeat(card, streamId) {
  if (card.streamId !== streamId) return;
  let answer;
  try {
    if (socket && socket.connected) {
      answer = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("heartbeat", { streamId });
    } else {
      answer = await api.post(`/v1/streams/${encodeURIComponent(streamId)}/heartbeat`);
    }
  } catch (err) {
    answer = err instanceof ApiError && err.status === 404 ? { status: 404 } : null;
  }
  if (card.streamId !== streamId) return;
  if (answer && answer.status === 404) {
    ended(card, "stopped_elsewhere");
  } else if (answer && answer.expiresAt) {
    scheduleHeartbeat(card, answer.expiresAt);
  } else {
    clearTimeout(card.timer);
    card.timer = setTimeout(() => heartbeat(card, streamId), HEARTBEAT_RETRY_MS);
  }
}

// ---- the denial panel -----------------------------------------------------------------------------------------

function deviceName(id) {
  return id === deviceId ? "this tab" : id;
}

async function renderDenial() {
  if (!denial) return;
  const { card, limit } = denial;
  let streams;
  try {
    streams = await api.get("/v1/streams");
  } catch (err) {
    notice(`Could not list your streams: ${err.message}`);
    return;
  }
  if (!denial || denial.card !== card) return;
  const title = card.video.title;
  const rows = streams.map((stream) => {
    const name = (videos.get(stream.videoId) || { title: `video ${stream.videoId}` }).title;
    const where = deviceName(stream.deviceId);
    return h(
      "tr",
      { "data-stream-id": stream.id },
      h("td", {}, name),
      h("td", {}, where),
      h("td", {}, since(stream.startedAt)),
      h(
        "td",
        {},
        h(
          "div",
          { class: "row-actions" },
          h("button", { type: "button", "aria-label": `Stop ${name} on ${where}`, onclick: () => stopFromPanel(stream) }, "Stop"),
          h(
            "button",
            { type: "button", "aria-label": `Replace ${name} on ${where} with ${title}`, onclick: () => replace(stream) },
            `Replace with ${title}`,
          ),
        ),
      ),
    );
  });
  const free = streams.length < limit;
  const panel = $("denial");
  panel.replaceChildren(
    h("h2", { id: "denial-title", tabindex: "-1" }, `Limit reached: ${title} cannot start`),
    h(
      "p",
      {},
      limit === 0
        ? "This account may not play any stream (its limit is 0)."
        : free
          ? `A slot is free now (${streams.length} of ${limit} streams in use).`
          : `Your account may play ${limit} streams at once, and all ${limit} are in use. Stop one, or replace it with ${title}:`,
    ),
    streams.length
      ? h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            {},
            h("caption", { class: "sr-only" }, "Streams using your limit"),
            h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Video"), h("th", { scope: "col" }, "Device"), h("th", { scope: "col" }, "Since"), h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions")))),
            h("tbody", {}, rows),
          ),
        )
      : null,
    h(
      "div",
      { class: "actions" },
      free && limit > 0
        ? h("button", { type: "button", class: "primary", onclick: () => { hideDenial(); play(card); } }, `Play ${title}`)
        : null,
      h("button", { type: "button", onclick: hideDenial }, "Close"),
    ),
  );
  panel.hidden = false;
}

function hideDenial() {
  const had = denial;
  denial = null;
  $("denial").hidden = true;
  $("denial").replaceChildren();
  if (had && had.card.el.isConnected) had.card.playButton.focus();
}

async function stopFromPanel(stream) {
  try {
    await api.del(`/v1/streams/${encodeURIComponent(stream.id)}`);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) notice(`Could not stop it: ${err.message}`);
  }
  const mine = playing.get(stream.id);
  if (mine) {
    release(mine);
    mine.set("idle", "Stopped");
  }
  await renderDenial();
  refreshUsage();
  const button = $("denial").querySelector("button.primary");
  if (button) button.focus();
}

function replace(stream) {
  const card = denial.card;
  hideDenial();
  const mine = playing.get(stream.id);
  if (mine) {
    // This tab's own stream: the server ends it in exchange; stop its media here at once.
    release(mine);
    mine.set("idle", `Replaced by ${card.video.title}`);
  }
  play(card, stream.id);
}

// ---- live updates ---------------------------------------------------------------------------------------------

async function refreshUsage() {
  if (!session) return;
  try {
    const [streams, user] = await Promise.all([api.get("/v1/streams"), api.get(`/users/${encodeURIComponent(session.user.id)}`)]);
    $("usage").textContent = `${streams.length} of ${user.limit} streams in use`;
  } catch {
    // A failed refresh leaves the last count; a 401 has already ended the session.
  }
}

function onDecision(message) {
  decisions.set(message.requestId, message);
  if (decisions.size > KEPT_DECISIONS) decisions.delete(decisions.keys().next().value);
  if (typeof message.active === "number") $("usage").textContent = `${message.active} of ${message.limit} streams in use`;
  if (denial) renderDenial();
}

function onEnded(message) {
  if (message.reason === "user_disabled") {
    // The token no longer works: say why at once instead of letting the next call fail.
    endSession("An admin disabled this account; its streams were stopped.", true);
    return;
  }
  const card = playing.get(message.streamId);
  if (card) ended(card, message.reason);
  else refreshUsage();
  if (denial) renderDenial();
}

function connectSocket() {
  socket = io({ auth: { token: session.token } });
  socket.on("message", onDecision);
  socket.on("stream_ended", onEnded);
  socket.on("connect", () => {
    $("live").textContent = "Live";
  });
  socket.on("disconnect", () => {
    $("live").textContent = "Reconnecting…";
  });
  socket.on("connect_error", (err) => {
    if (!socket.active) endSession(`The server refused live updates: ${err.message}`, true);
  });
}

// ---- session --------------------------------------------------------------------------------------------------

async function start() {
  $("login-view").hidden = true;
  $("videos-view").hidden = false;
  $("who").hidden = false;
  $("who-name").textContent = session.user.name;
  $("device-id").textContent = deviceId;
  notice("");
  connectSocket();
  try {
    const list = await api.get("/videos");
    videos.clear();
    cards.clear();
    for (const video of list) {
      videos.set(video.id, video);
      cards.set(video.id, new Card(video));
    }
    $("grid").replaceChildren(...[...cards.values()].map((card) => card.el));
    await resume();
  } catch (err) {
    notice(`Could not load the videos: ${err.message}`);
  }
  refreshUsage();
}

/** After a reload, pick up this tab's streams again: asking again from the same device re-uses the stream. */
async function resume() {
  const streams = await api.get("/v1/streams");
  for (const stream of streams) {
    const card = cards.get(stream.videoId);
    if (stream.deviceId === deviceId && card) play(card);
  }
}

function endSession(message, isError = false) {
  for (const card of playing.values()) {
    clearTimeout(card.timer);
    card.hideVideo();
  }
  playing.clear();
  hideDenial();
  if (socket) {
    socket.disconnect();
    socket = null;
  }
  session = null;
  localStorage.removeItem(SESSION_KEY);
  $("grid").replaceChildren();
  $("videos-view").hidden = true;
  $("who").hidden = true;
  $("login-view").hidden = false;
  const el = $("login-error");
  el.textContent = message;
  el.hidden = !message;
  el.classList.toggle("info", !isError);
}

async function logout() {
  try {
    await api.del("/v1/streams");
    endSession("You logged out; your streams were stopped.");
  } catch (err) {
    endSession(`Logged out, but the server did not confirm that your streams stopped: ${err.message}`, true);
  }
}

async function login(event) {
  event.preventDefault();
  const username = $("username").value.trim();
  const password = $("password").value;
  const error = $("login-error");
  error.classList.remove("info");
  if (!username || !password) {
    error.textContent = username ? "Enter your password." : "Enter your user name.";
    error.hidden = false;
    $(username ? "password" : "username").focus();
    return;
  }
  const button = event.target.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const answer = await api.login(username, password);
    session = { token: answer.accessToken, user: answer.user };
    localStorage.setItem(SESSION_KEY, JSON.stringify(session));
    error.hidden = true;
    $("password").value = "";
    await start();
  } catch (err) {
    error.textContent = err.status === 401 ? "Wrong user name or password." : `Could not log in: ${err.message}`;
    error.hidden = false;
    $("password").select();
  } finally {
    button.disabled = false;
  }
}

$("login-form").addEventListener("submit", login);
$("logout").addEventListener("click", logout);
window.addEventListener("storage", (event) => {
  if (event.key === SESSION_KEY && !event.newValue && session) endSession("You logged out in another tab.");
});
if (session) start();
