// The viewer, built on the player kit (@playgate/player): log in, see the videos, play one at a time on this
// device (a tab is a device of its own), see denials with the streams that hold the limit (live, as a list),
// stop, replace or "watch here", and hear at once about streams that end.
import { attach } from "@playgate/player";
import { io } from "socket.io-client";
import { ApiError, ENDED_REASONS, browserName, createApi, h, loadSession, since } from "./api.js";
import "./style.css";

const SESSION_KEY = "playgate.viewer";
const TAB_KEY = "playgate.tab";
const NOTICE_MS = 12000; // a notice clears itself once stale
const TICK_MS = 5000; // "(N s ago)" and the live mark advance
const HLS_BUFFER_S = 8;

const $ = (id) => document.getElementById(id);

/** This tab's name: the browser, and a short tag that tells tabs apart (kept for the tab's life). */
const tabName = (() => {
  let tag = sessionStorage.getItem(TAB_KEY);
  if (!tag) {
    tag = Array.from(crypto.getRandomValues(new Uint8Array(2)), (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem(TAB_KEY, tag);
  }
  return `${browserName(navigator.userAgent)} · tab ${tag}`;
})();

let session = loadSession(localStorage, SESSION_KEY);
let player = null;
let current = null; // the Card whose video plays (or last played) on this device
let denial = null; // {card, limit, streams} while the denial panel is open
let noticeTimer = null;
let ticker = null;
const videos = new Map(); // videoId -> Video
const cards = new Map(); // videoId -> Card
// One <video> for the tab: one device, one stream at a time. It moves into the card that plays.
const screen = h("video", { class: "poster", controls: true, playsInline: true, preload: "auto" });
screen.muted = true;
screen.setAttribute("muted", "");
screen.loop = true;

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

/** One video in the grid and its state on this device: idle, requesting, playing, denied, ended or error. */
class Card {
  constructor(video) {
    this.video = video;
    this.status = h("p", { class: "state" }, "Ready to play");
    this.playButton = h("button", { type: "button", class: "primary", onclick: () => play(this) }, "Play");
    this.playButton.setAttribute("aria-label", `Play ${video.title}`);
    this.stopButton = h("button", { type: "button", hidden: true, onclick: () => stop(this) }, "Stop");
    this.stopButton.setAttribute("aria-label", `Stop ${video.title}`);
    this.media = h("div", { class: "media" }, poster(video));
    this.el = h(
      "li",
      { class: "card", "data-video-id": video.id, "data-state": "idle" },
      this.media,
      h(
        "div",
        { class: "card-body" },
        h("h3", {}, video.title),
        this.status,
        h("div", { class: "actions" }, this.playButton, this.stopButton),
      ),
    );
  }

  set(state, text) {
    const hadFocus = this.el.contains(document.activeElement);
    this.el.dataset.state = state;
    this.status.textContent = text;
    // aria-disabled, not disabled: a disabled button would drop the keyboard focus while the request runs.
    this.playButton.setAttribute("aria-disabled", String(state === "requesting"));
    this.playButton.textContent = state === "requesting" ? "Requesting…" : "Play";
    this.playButton.setAttribute("aria-label", `${this.playButton.textContent} ${this.video.title}`);
    this.playButton.hidden = state === "playing";
    this.stopButton.hidden = state !== "playing";
    if (hadFocus) (state === "playing" ? this.stopButton : this.playButton).focus();
  }

  showScreen() {
    screen.setAttribute("aria-label", `${this.video.title}, playing`);
    this.media.replaceChildren(screen);
  }

  hideScreen() {
    if (this.media.contains(screen)) this.media.replaceChildren(poster(this.video));
  }
}

// ---- notices --------------------------------------------------------------------------------------------------

/** A notice under the title: dismissable, and gone by itself after NOTICE_MS. */
function notice(text) {
  const el = $("notice");
  clearTimeout(noticeTimer);
  if (!text) {
    el.hidden = true;
    el.replaceChildren();
    return;
  }
  el.replaceChildren(
    h("span", {}, text),
    h("button", { type: "button", class: "dismiss", "aria-label": "Dismiss", onclick: () => notice("") }, "×"),
  );
  el.hidden = false;
  noticeTimer = setTimeout(() => notice(""), NOTICE_MS);
}

/** Full screen, on the device that lost its stream: why, and what to do next. Escape or the button closes it. */
function showEnded(title, reason) {
  const [why, next] = ENDED_REASONS[reason] || [reason, "Press Play to ask again."];
  const back = document.activeElement;
  const close = () => {
    overlay.hidden = true;
    overlay.replaceChildren();
    if (back && back.isConnected) back.focus();
  };
  const overlay = $("ended");
  const ok = h("button", { type: "button", class: "primary", onclick: close }, "OK");
  overlay.replaceChildren(
    h(
      "div",
      { class: "panel", role: "alertdialog", "aria-modal": "true", "aria-labelledby": "ended-title", "aria-describedby": "ended-why" },
      h("h2", { id: "ended-title" }, `${title} stopped`),
      h("p", { id: "ended-why" }, `Why: ${why}. ${next}`),
      h("div", { class: "actions" }, ok),
    ),
  );
  overlay.onkeydown = (event) => {
    if (event.key === "Escape") close();
  };
  overlay.hidden = false;
  ok.focus();
}

// ---- playing --------------------------------------------------------------------------------------------------

async function play(card, replaceStreamId) {
  if (card.el.dataset.state === "requesting") return;
  card.set("requesting", "Requesting…");
  try {
    await player.play(card.video.id, replaceStreamId ? { replaceStreamId } : {});
  } catch (err) {
    if (session) card.set("error", `Could not ask to play: ${err.message}`);
  }
}

function onAllowed(event) {
  const card = cards.get(event.videoId);
  if (!card) return;
  if (current && current !== card) {
    // One stream per device: the server replaced the title that played here.
    current.hideScreen();
    current.set("idle", "Ready to play");
  }
  current = card;
  card.showScreen();
  card.set("playing", event.playbackUrl ? "Playing" : "Playing (no media from this server)");
  screen.play().catch(() => {
    // Autoplay refused (rare when muted): the controls let the viewer start it.
  });
  if (denial) hideDenial(false);
  showUsage(event.active, event.limit);
  notice("");
}

function onDenied(event) {
  const card = cards.get(event.videoId);
  if (!card) return;
  if (current === card) current.hideScreen();
  if (event.reason !== "limit_reached") {
    card.set("denied", event.reason === "user_disabled" ? "Denied: this account is disabled" : `Denied: ${event.reason}`);
    return;
  }
  card.set("denied", event.limit === 0 ? "Denied: this account may not play" : `Denied: all ${event.limit} of your streams are in use`);
  showUsage(event.active, event.limit);
  denial = { card, limit: event.limit, streams: event.conflicts.map(fromConflict) };
  renderDenial();
  $("denial-title").focus();
}

function onEnded(event) {
  const card = cards.get(event.videoId);
  if (event.reason === "user_disabled") {
    endSession("An admin disabled this account; its streams were stopped.", true);
    return;
  }
  if (!card) return;
  if (event.reason === "expired" && card === current && screen.paused) {
    // Paused long enough for the lease to run out: the slot is free, as promised; Play asks again.
    card.set("paused", "Paused: your slot is free again; Play asks for it");
    refreshUsage();
    return;
  }
  card.hideScreen();
  card.set("ended", `Stopped: ${(ENDED_REASONS[event.reason] || [event.reason])[0]}`);
  showEnded(card.video.title, event.reason);
  refreshUsage();
}

async function stop(card) {
  try {
    await player.stop();
  } catch (err) {
    notice(`Could not stop ${card.video.title}: ${err.message}`);
    return;
  }
  card.hideScreen();
  card.set("idle", "Stopped");
  refreshUsage();
}

// ---- the denial panel: a list of the streams holding the limit, live while open ----------------------------

function fromConflict(c) {
  return { id: c.streamId, videoId: c.videoId, deviceId: c.deviceId, deviceName: c.deviceName, startedAt: c.startedAt };
}

function deviceLabel(stream) {
  if (player && stream.deviceId === player.deviceId) return "this tab";
  return stream.deviceName || `device …${stream.deviceId.slice(-6)}`;
}

function renderDenial() {
  if (!denial) return;
  const { card, limit, streams } = denial;
  const panel = $("denial");
  const focusKey = panel.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  const title = card.video.title;
  const items = streams.map((stream) => {
    const name = (videos.get(stream.videoId) || { title: `video ${stream.videoId}` }).title;
    const where = deviceLabel(stream);
    const stopButton = h("button", { type: "button", "data-key": `stop:${stream.id}`, onclick: () => stopOne(stream) }, "Stop");
    stopButton.setAttribute("aria-label", `Stop ${name} on ${where}`);
    const replaceButton = h(
      "button",
      { type: "button", "data-key": `replace:${stream.id}`, onclick: () => replace(stream) },
      `Replace with ${title}`,
    );
    replaceButton.setAttribute("aria-label", `Replace with ${title}: ${name} on ${where}`);
    return h(
      "li",
      { "data-stream-id": stream.id },
      h(
        "div",
        { class: "what" },
        h("strong", {}, name),
        h("span", {}, ` on ${where}`),
        h("span", { class: "since", "data-since": stream.startedAt }, `since ${since(stream.startedAt)}`),
      ),
      h("div", { class: "row-actions" }, stopButton, replaceButton),
    );
  });
  const free = limit !== null && streams.length < limit;
  const text =
    limit === 0
      ? "This account may not play any stream: its limit is 0. Ask the account's owner to raise it."
      : free
        ? `A slot is free now (${streams.length} of ${limit} streams in use).`
        : limit === null
          ? `Every stream your account may play is in use. Stop one, or replace it with ${title}:`
          : `Your account may play ${limit} stream${limit === 1 ? "" : "s"} at once, and all ${limit} are in use. Stop one, or replace it with ${title}:`;
  panel.replaceChildren(
    h("h2", { id: "denial-title", tabindex: "-1" }, `Limit reached: ${title} cannot start`),
    h("p", {}, text),
    streams.length ? h("ul", { class: "conflicts", "aria-label": "Streams using your limit" }, items) : null,
    h(
      "div",
      { class: "actions" },
      free && limit > 0
        ? h("button", { type: "button", class: "primary", "data-key": "play", onclick: () => { hideDenial(true); play(card); } }, `Play ${title}`)
        : null,
      !free && streams.length && limit > 0
        ? h("button", { type: "button", class: "primary", "data-key": "here", onclick: () => watchHere() }, "Watch here")
        : null,
      h("button", { type: "button", "data-key": "close", onclick: () => hideDenial(true) }, "Close"),
    ),
  );
  panel.hidden = false;
  const again = focusKey && panel.querySelector(`[data-key="${CSS.escape(focusKey)}"]`);
  if (again) again.focus();
  else if (focusKey) (panel.querySelector("button.primary") || $("denial-title")).focus();
}

/** The panel is live: another device's stream started or ended, so list the streams again. */
async function refreshDenial() {
  if (!denial) return;
  const open = denial;
  let streams;
  try {
    streams = await api.get("/v1/streams");
  } catch {
    return; // the list stays as it was; a 401 has ended the session
  }
  if (denial !== open) return;
  denial.streams = streams;
  renderDenial();
}

function hideDenial(restoreFocus) {
  const had = denial;
  denial = null;
  $("denial").hidden = true;
  $("denial").replaceChildren();
  if (had && restoreFocus && had.card.el.isConnected) had.card.playButton.focus();
}

async function stopOne(stream) {
  try {
    await player.stopStream(stream.id);
  } catch (err) {
    notice(`Could not stop it: ${err.message}`);
    return;
  }
  if (denial) {
    denial.streams = denial.streams.filter((s) => s.id !== stream.id);
    renderDenial();
  }
  refreshUsage();
}

function replace(stream) {
  const card = denial.card;
  hideDenial(true); // the focus goes to the card, and follows its action (Stop once it plays)
  play(card, stream.id);
}

async function watchHere() {
  const { card, streams } = denial;
  hideDenial(true);
  card.set("requesting", "Requesting…");
  try {
    await player.watchHere(card.video.id, streams.map((s) => ({ streamId: s.id })));
  } catch (err) {
    card.set("error", `Could not ask to play: ${err.message}`);
  }
}

// ---- usage and live updates -----------------------------------------------------------------------------------

function showUsage(active, limit) {
  if (typeof active === "number" && typeof limit === "number") $("usage").textContent = `${active} of ${limit} streams in use`;
}

async function refreshUsage() {
  if (!session) return;
  try {
    const [streams, user] = await Promise.all([api.get("/v1/streams"), api.get(`/users/${encodeURIComponent(session.user.id)}`)]);
    showUsage(streams.length, user.limit);
  } catch {
    // A failed refresh leaves the last count; a 401 has already ended the session.
  }
}

function onChanged(event) {
  if (event.reason === "user_disabled") {
    // Another device's stream ended because the account was disabled: this device's token no longer works.
    endSession("An admin disabled this account; its streams were stopped.", true);
    return;
  }
  refreshUsage();
  refreshDenial();
}

function tick() {
  for (const el of document.querySelectorAll("[data-since]")) el.textContent = `since ${since(el.dataset.since)}`;
  $("live").textContent = player && player.live ? "Live" : "Reconnecting…";
}

// ---- session --------------------------------------------------------------------------------------------------

async function start() {
  $("login-view").hidden = true;
  $("videos-view").hidden = false;
  $("who").hidden = false;
  $("who-name").textContent = session.user.name;
  $("device-id").textContent = tabName;
  notice("");
  player = attach(screen, {
    token: () => session && session.token,
    deviceName: tabName,
    storage: sessionStorage, // a tab is a device of its own here; a platform's player keeps it in localStorage
    io,
    // hls.js/light (no DRM, subtitles or alternate audio: about half the size), loaded with the first HLS source.
    loadHls: () => import("hls.js/light").then((module) => module.default),
    // hls.js buffers this far ahead and then waits: a paused player soon stops fetching, and its slot frees itself.
    hlsConfig: { maxBufferLength: HLS_BUFFER_S, maxMaxBufferLength: HLS_BUFFER_S * 2 },
  });
  player.on("allowed", onAllowed);
  player.on("denied", onDenied);
  player.on("ended", onEnded);
  player.on("changed", onChanged);
  player.on("error", (err) => {
    if (err instanceof ApiError && err.status === 401) return;
    notice(err.message);
  });
  ticker = setInterval(tick, TICK_MS);
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

/** After a reload, pick up this tab's stream again: asking again from the same device re-uses the stream. */
async function resume() {
  if (!player.deviceId) return;
  const streams = await api.get("/v1/streams");
  const mine = streams.find((s) => s.deviceId === player.deviceId);
  const card = mine && cards.get(mine.videoId);
  if (card) play(card);
}

function endSession(message, isError = false) {
  if (player) {
    player.destroy();
    player = null;
  }
  clearInterval(ticker);
  current = null;
  hideDenial(false);
  $("ended").hidden = true;
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

/** Log out of this device: its stream ends, the other devices play on. */
async function logout() {
  const device = player && player.deviceId;
  try {
    if (device) await api.del(`/v1/streams?deviceId=${encodeURIComponent(device)}`);
    endSession("You logged out; this device's stream was stopped, your other devices play on.");
  } catch (err) {
    endSession(`Logged out, but the server did not confirm that this device's stream stopped: ${err.message}`, true);
  }
}

/** Sign out of all devices: every stream of the account ends. */
async function logoutEverywhere() {
  try {
    await api.del("/v1/streams");
    endSession("You signed out of all devices; every stream of your account was stopped.");
  } catch (err) {
    endSession(`Signed out, but the server did not confirm that your streams stopped: ${err.message}`, true);
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
    error.textContent =
      err.status === 401
        ? "Wrong user name or password."
        : err.status === 403
          ? err.message
          : `Could not log in: ${err.message}`;
    error.hidden = false;
    $("password").select();
  } finally {
    button.disabled = false;
  }
}

$("login-form").addEventListener("submit", login);
$("logout").addEventListener("click", logout);
$("logout-all").addEventListener("click", logoutEverywhere);
$("denial").addEventListener("keydown", (event) => {
  if (event.key === "Escape") hideDenial(true);
});
window.addEventListener("storage", (event) => {
  if (event.key === SESSION_KEY && !event.newValue && session) endSession("You logged out in another tab.");
});
if (session) start();
