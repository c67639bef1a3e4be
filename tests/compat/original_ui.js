// The original service's web UI (github.com/sergiolc/streaming-ui, Angular 6: its toolchain does not build on
// Node 20), played as a browser on another origin would: its HTTP calls, in its order and with its paths
// (trailing slashes included), and its socket: socket.io-client 2 with no options, so no user and no token.
// usage: node original_ui.js <api url> <origin>
// Prints one JSON object: {"calls": [{method, path, status, allowOrigin}], "feedback": [{videoId, status,
// feedback}], "socket": {"transport"}} and exits 0, or prints {"error"} and exits 1.
"use strict";

const io = require("socket.io-client");

const [apiUrl, origin] = process.argv.slice(2);
const calls = [];
const feedback = [];
const STEP_TIMEOUT_MS = 10000;

// What the UI's video component shows for a status.
const FEEDBACK = { allowed: "Playing...", denied: "Limit exceeded.", pending: "Requesting...", stopped: "" };

async function get(path) {
  const response = await fetch(apiUrl + path, { headers: { Origin: origin }, redirect: "manual" });
  const text = await response.text();
  calls.push({
    method: "GET",
    path,
    status: response.status,
    allowOrigin: response.headers.get("access-control-allow-origin"),
  });
  if (response.status >= 300) {
    throw new Error(`GET ${path} answered ${response.status}: ${text}`);
  }
  return text ? JSON.parse(text) : null;
}

function show(videoId, status) {
  feedback.push({ videoId, status, feedback: FEEDBACK[status] });
}

async function main() {
  // Login: the session service looks the user up by name; the password check is the UI's own.
  const user = await get("/users/?name=user1");
  // Home: the socket first, then the videos and the user's streams.
  const socket = io(apiUrl, { extraHeaders: { Origin: origin }, forceNew: true, reconnection: false });
  const decisions = [];
  let wake = null;
  socket.on("message", (message) => {
    decisions.push(message);
    if (wake) wake();
  });
  await new Promise((resolve, reject) => {
    socket.on("connect", resolve);
    socket.on("connect_error", (err) => reject(new Error(`socket: ${err.message || err}`)));
    socket.on("error", (err) => reject(new Error(`socket: ${err}`)));
    setTimeout(() => reject(new Error("socket never connected")), STEP_TIMEOUT_MS);
  });
  const videos = await get("/videos");
  const streams = await get(`/users/${user.id}/streams`);
  for (const stream of streams) {
    const video = videos.find((item) => item.id === stream.videoId);
    if (video) video.status = "allowed";
  }

  // Play: the request, then the decision for that video on the socket.
  async function play(videoId) {
    show(videoId, "pending");
    const seen = decisions.length;
    await get(`/videos/${videoId}/request/?user=${user.id}`);
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    for (;;) {
      const message = decisions.slice(seen).find((m) => m.data.videoId === videoId);
      if (message) return show(videoId, message.status);
      if (Date.now() > deadline) throw new Error(`no decision for video ${videoId}`);
      await new Promise((resolve) => {
        wake = resolve;
        setTimeout(resolve, 200);
      });
    }
  }
  async function stop(videoId) {
    await get(`/videos/${videoId}/stop/?user=${user.id}`);
    show(videoId, "stopped");
  }

  for (const id of ["1", "2", "3", "4"]) await play(id);
  await stop("1");
  await play("4");
  // Log out: stop every stream.
  await get(`/videos/stop/?user=${user.id}`);
  const transport = socket.io.engine.transport.name;
  socket.close();
  return { transport };
}

main().then(
  (socket) => {
    process.stdout.write(JSON.stringify({ calls, feedback, socket }) + "\n");
    process.exit(0);
  },
  (err) => {
    process.stdout.write(JSON.stringify({ error: String(err && err.stack ? err.stack : err), calls, feedback }) + "\n");
    process.exit(1);
  },
);
