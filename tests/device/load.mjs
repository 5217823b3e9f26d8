// Load as devices make it, with Node's socket.io-client over websockets: IDLE sockets that
// only ask for a session's status every few seconds (their round trips are the "ping"),
// and ACTIVE devices that each play bang -> continue (with the result, as the device
// sends it) -> retry until the time is up. Prints one JSON object at the end.
//   node load.mjs URL INPUT_WAV IDLE ACTIVE SECONDS
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const [url, inputPath, idleArg, activeArg, secondsArg] = process.argv.slice(2);
const deadline = Date.now() + Number(secondsArg) * 1000;
const opts = { transports: ["websocket"], reconnection: true, forceNew: true };
const input = readFileSync(inputPath).toString("base64");
const params = { model_name: "debug", prompt_duration: 4 };

const pings = [];
const queueWaits = [];
const stepSeconds = [];
const errors = {};
let requested = 0;
let delivered = 0;
let disconnects = 0;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// The first connection is retried as the device retries it (a refused upgrade, a busy
// balancer); a socket that never connects ends the run with an error.
const connect = (socket) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("no connection within 60 s")), 60000);
  socket.once("connect", () => { clearTimeout(timer); resolve(); });
});

async function idleClient(i) {
  const socket = io(url, opts);
  socket.on("disconnect", (reason) => { if (reason !== "io client disconnect") disconnects += 1; });
  await connect(socket);
  await sleep((i * 37) % 5000); // spread the round trips over the interval
  while (Date.now() < deadline) {
    const t = process.hrtime.bigint();
    await new Promise((resolve) => socket.timeout(30000).emit("verify_session", { session_id: "load-idle" }, (err) => {
      if (err) errors.PING_TIMEOUT = (errors.PING_TIMEOUT || 0) + 1;
      else pings.push(Number(process.hrtime.bigint() - t) / 1e6);
      resolve();
    }));
    await sleep(5000);
  }
  socket.close();
}

function generate(socket, event, payload, resultEvent) {
  // One generation: resolves with the result body, or null after an `error` (counted by code).
  const received = event.replace("_request", "_received");
  return new Promise((resolve) => {
    let acked = 0;
    const sent = Date.now();
    const handlers = {
      [received]: () => { acked = Date.now(); },
      processing_started: () => { if (acked) queueWaits.push((Date.now() - acked) / 1000); },
      [resultEvent]: (body) => { done(); delivered += 1; stepSeconds.push((Date.now() - sent) / 1000); resolve(body); },
      error: (body) => { done(); errors[body.code] = (errors[body.code] || 0) + 1; resolve(null); },
    };
    const timer = setTimeout(() => { done(); errors.NO_RESULT_IN_300S = (errors.NO_RESULT_IN_300S || 0) + 1; resolve(null); },
      300000);
    function done() { clearTimeout(timer); for (const [e, h] of Object.entries(handlers)) socket.off(e, h); }
    for (const [e, h] of Object.entries(handlers)) socket.on(e, h);
    requested += 1;
    socket.emit(event, payload);
  });
}

async function activeClient() {
  const socket = io(url, opts);
  socket.on("disconnect", (reason) => { if (reason !== "io client disconnect") disconnects += 1; });
  await connect(socket);
  while (Date.now() < deadline) {
    const bang = await generate(socket, "process_audio_request", { ...params, audio_data: input }, "audio_processed");
    if (!bang || Date.now() >= deadline) continue;
    const sid = bang.session_id;
    const cont = await generate(socket, "continue_music_request",
      { ...params, session_id: sid, audio_data: bang.audio_data }, "music_continued");
    if (!cont || Date.now() >= deadline) continue;
    await generate(socket, "retry_music_request", { ...params, session_id: sid }, "music_retried");
  }
  socket.close();
}

function pct(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

const idle = Array.from({ length: Number(idleArg) }, (_, i) => idleClient(i));
const active = Array.from({ length: Number(activeArg) }, () => activeClient());
await Promise.all([...idle, ...active]);
console.log(JSON.stringify({
  requested, delivered, errors, disconnects,
  ping_count: pings.length, ping_p50_ms: pct(pings, 0.5), ping_p99_ms: pct(pings, 0.99), ping_max_ms: pct(pings, 1),
  queue_wait_p50_s: pct(queueWaits, 0.5), queue_wait_p99_s: pct(queueWaits, 0.99),
  step_p50_s: pct(stepSeconds, 0.5), step_p99_s: pct(stepSeconds, 0.99),
}));
process.exit(0);
