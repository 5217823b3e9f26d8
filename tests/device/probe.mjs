// Idle devices measuring the server's responsiveness, with the device's own client (Node's
// socket.io-client over websockets): CLIENTS sockets each ask verify_session (with an ack)
// every INTERVAL_MS. On SIGTERM (or after SECONDS) prints one JSON object: every round trip
// as [wall-clock ms when sent, round trip ms, ok]. Used by scripts/bench_responsiveness,
// whose measuring process would otherwise spend a third of a core of the box it measures
// on 20 Python clients.
//   node probe.mjs URL CLIENTS INTERVAL_MS SECONDS
import { io } from "socket.io-client";

const [url, clientsArg, intervalArg, secondsArg] = process.argv.slice(2);
const clients = Number(clientsArg);
const interval = Number(intervalArg);
const deadline = Date.now() + Number(secondsArg) * 1000;
const samples = [];
let stopped = false;
let connected = 0;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function finish() {
  if (stopped) return;
  stopped = true;
  process.stdout.write(JSON.stringify({ samples }) + "\n", () => process.exit(0));
}
process.on("SIGTERM", finish);

async function client(i) {
  const socket = io(url, { transports: ["websocket"], reconnection: true, forceNew: true });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no connection within 60 s")), 60000);
    socket.once("connect", () => { clearTimeout(timer); resolve(); });
  });
  connected += 1;
  if (connected === clients) console.error(`${clients} probe clients connected`);
  await sleep((i * interval) / clients); // spread the round trips over the interval
  while (!stopped && Date.now() < deadline) {
    const sent = Date.now();
    const t = process.hrtime.bigint();
    const ok = await new Promise((resolve) => socket.timeout(30000).emit("verify_session",
      { session_id: `probe-${i}-${sent}` }, (err, ack) => resolve(!err && ack && typeof ack === "object" && "exists" in ack)));
    const rtt = Number(process.hrtime.bigint() - t) / 1e6;
    samples.push([sent, Math.round(rtt * 1000) / 1000, ok ? 1 : 0]);
    await sleep(Math.max(0, interval - rtt));
  }
  socket.close();
}

await Promise.all(Array.from({ length: clients }, (_, i) => client(i)));
finish();
