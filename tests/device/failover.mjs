// A device whose web process dies mid-generation, as the Max4Live device lives through it
// with Node's socket.io-client: bang, and once the job has started, wait for the socket
// to drop (the test kills the web process it is on); on reconnecting (through the
// balancer, to whichever web process answers) send verify_session, and take the result.
// One JSON line per step on stdout; each carries the web node the socket is on (the
// prefix of its Engine.IO session id).
//   node failover.mjs URL INPUT_WAV [IDLE_SOCKETS]
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const [url, inputPath, idleArg] = process.argv.slice(2);
const opts = { transports: ["websocket"], reconnection: true, reconnectionDelay: 200, reconnectionDelayMax: 1000 };
const node = (s) => (s.io.engine && s.io.engine.id ? s.io.engine.id.split(".")[0] : null);
const say = (doc) => console.log(JSON.stringify(doc));
const started = Date.now();
const elapsed = () => (Date.now() - started) / 1000;

// Idle sockets beside the device (all on the balancer too): each says where it is.
const idle = [];
for (let i = 0; i < Number(idleArg || 0); i++) idle.push(io(url, { ...opts, forceNew: true }));
await Promise.all(idle.map((s) => new Promise((resolve) => s.once("connect", resolve))));
say({ step: "idle", nodes: idle.map(node) });

const socket = io(url, { ...opts, forceNew: true });
await new Promise((resolve, reject) => { socket.once("connect", resolve); socket.once("connect_error", reject); });
say({ step: "connected", node: node(socket) });

let sessionId = null;
let reconnects = 0;
const result = new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("no result within 180 s")), 180000);
  socket.on("audio_processed", (body) => { clearTimeout(timer); resolve(body); });
  socket.on("error", (body) => { clearTimeout(timer); reject(new Error(`server error: ${JSON.stringify(body)}`)); });
});
socket.on("process_audio_received", (body) => { sessionId = body.session_id; });
socket.on("processing_started", () => say({ step: "started", node: node(socket), session_id: sessionId }));
socket.on("disconnect", (reason) => say({ step: "disconnected", reason, at: elapsed() }));
socket.on("connect", () => {
  reconnects += 1;
  say({ step: "reconnected", node: node(socket), at: elapsed() });
  socket.emit("verify_session", { session_id: sessionId }, (status) => {
    say({ step: "verified", exists: status.exists, status: status.status, node: node(socket) });
  });
});
socket.emit("process_audio_request", {
  audio_data: readFileSync(inputPath).toString("base64"), model_name: "debug", prompt_duration: 4,
});
try {
  const body = await result;
  say({ step: "result", session_id: body.session_id, bytes: Buffer.from(body.audio_data, "base64").length,
        node: node(socket), reconnects, at: elapsed(),
        idle_connected: idle.filter((s) => s.connected).length, idle_nodes: idle.map(node) });
} catch (err) {
  console.error(String(err && err.stack || err));
  process.exitCode = 1;
} finally {
  socket.close();
  for (const s of idle) s.close();
}
