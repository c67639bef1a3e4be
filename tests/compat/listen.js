// A Socket.IO client for the compatibility tests: connects, then prints one JSON line per event it gets.
// usage: node listen.js <v2|v4> <url> <transports, comma-separated> [origin]
// Lines: {"event":"connect","transport":...}, {"event":"message","data":...}, {"event":"stream_ended",...},
// {"event":"error"|"connect_error"|"disconnect","data":...}, {"event":"upgrade","transport":...}.
// Each line on its stdin, {"emit": name, "data": ...}, is emitted with an ack, printed as {"event":"ack","data":...}.
// It exits when its stdin closes, or after 60 s at the latest.
"use strict";

const [version, url, transports, origin] = process.argv.slice(2);
const io = require(version === "v2" ? "socket.io-client" : "socket.io-client-v4");

const print = (event, data) => process.stdout.write(JSON.stringify({ event, data }) + "\n");
const options = { transports: transports.split(","), reconnection: false, forceNew: true };
if (origin) {
  options.extraHeaders = { Origin: origin };
}
const socket = io(url, options);
const engine = () => socket.io.engine;

socket.on("connect", () => {
  print("connect", { transport: engine().transport.name });
  engine().on("upgrade", (transport) => print("upgrade", { transport: transport.name }));
});
socket.on("message", (data) => print("message", data));
socket.on("stream_ended", (data) => print("stream_ended", data));
socket.on("error", (data) => print("error", String(data)));
socket.on("connect_error", (err) => print("connect_error", String(err && err.message ? err.message : err)));
socket.on("disconnect", (reason) => print("disconnect", reason));

const stop = () => {
  socket.close();
  process.exit(0);
};
const lines = require("readline").createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const { emit, data } = JSON.parse(line);
  socket.emit(emit, data, (ack) => print("ack", ack));
});
lines.on("close", stop);
setTimeout(stop, 60000);
