// Plays the REAL gary4live device script (commentedout.js, unmodified) the way Max for Live
// runs it: the script is loaded into this Node process beside a stand-in `max-api`
// (tests/device/max-api), and this driver is the patcher: it sends the messages a musician's
// clicks send and waits for the script's outlets.
//
// The script talks to the production host (https://g4l.thecollabagepatch.com) and keeps its
// audio in C:/g4l/. Without editing it, this driver
//   * runs it with the working directory RUN_DIR, where the Windows path `C:/g4l/x.wav` is a
//     relative path (RUN_DIR/C:/g4l/x.wav), so myBuffer.wav / myOutput.wav live there;
//   * points the production host at the test server, as a hosts-file entry would: the
//     script's Socket.IO connection to BACKEND_URL and its HTTPS request for jerry go to URL
//     over plain HTTP (same paths, bodies and headers).
// Every wire event is tapped (names and session ids, no audio) for the test to check.
//
//   node drive_gary4live.mjs URL SCRIPT RUN_DIR SCENARIO [INPUTS_JSON]
//     SCENARIO: gary | jerry | terry | full   (see SCENARIOS below)
//     INPUTS_JSON: {"buffer": wav, "crop": wav, "leftover": wav, "model": "debug", "timeout_s": 120}
// One JSON line per step on stdout; exit 1 (with the reason on stderr) when a step fails.
import { copyFileSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import Module, { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const PRODUCTION_HOST = "g4l.thecollabagepatch.com";

const [url, scriptSource, runDirArg, scenario, inputsJson] = process.argv.slice(2);
if (!url || !scriptSource || !runDirArg || !scenario) {
  console.error("usage: node drive_gary4live.mjs URL SCRIPT RUN_DIR SCENARIO [INPUTS_JSON]");
  process.exit(2);
}
const inputs = { model: "debug", timeout_s: 120, ...(inputsJson ? JSON.parse(inputsJson) : {}) };
const target = new URL(url);
const runDir = resolve(runDirArg);

// ------------------------------------------------------------ the device's folder
// The script sits in its own folder with its node_modules (as `npm install` leaves it in
// C:/g4l), its audio in C:/g4l/ relative to the working directory.
const deviceDir = join(runDir, "device");
const audioDir = join(runDir, "C:", "g4l");
const outDir = join(runDir, "out");
for (const d of [deviceDir, join(deviceDir, "node_modules"), audioDir, outDir]) mkdirSync(d, { recursive: true });
const scriptPath = join(deviceDir, "commentedout.js");
copyFileSync(scriptSource, scriptPath); // byte for byte
writeFileSync(join(deviceDir, "package.json"), JSON.stringify({ name: "g4l", private: true, type: "commonjs" }));
for (const [name, from] of [["max-api", join(HERE, "max-api")], ["socket.io-client", join(HERE, "node_modules", "socket.io-client")]]) {
  const link = join(deviceDir, "node_modules", name);
  if (!existsSync(link)) symlinkSync(from, link, "dir");
}
const BUFFER = join(audioDir, "myBuffer.wav");
const OUTPUT = join(audioDir, "myOutput.wav");

// ------------------------------------------------------------ the network, as a hosts file would
const sent = []; // every event the script emits: {event, keys, session_id}
const received = []; // every event the server sends: {event, session_id, keys}
const httpLog = []; // jerry's HTTP exchanges: {method, path, body_keys, status}

function redirect(uri) {
  const u = new URL(uri);
  return u.hostname === PRODUCTION_HOST ? `${target.protocol}//${target.host}${u.pathname === "/" ? "" : u.pathname}` : uri;
}

function summary(payload) {
  if (!payload || typeof payload !== "object") return { value: payload };
  const out = { keys: Object.keys(payload).sort() };
  for (const k of ["session_id", "message", "code", "variation", "progress", "job_id", "solver", "flowstep",
    "model_name", "prompt_duration", "position"]) {
    if (k in payload) out[k] = payload[k];
  }
  if (typeof payload.audio_data === "string") out.audio_bytes = Buffer.from(payload.audio_data, "base64").length;
  return out;
}

const originalLoad = Module._load;
Module._load = function load(request, parent, isMain) {
  const loaded = originalLoad.call(this, request, parent, isMain);
  if (request === "socket.io-client" && parent && parent.filename === scriptPath) {
    const io = (uri, opts) => {
      const socket = loaded(redirect(uri), opts);
      socket.onAny((event, payload) => received.push({ event, at: Date.now(), ...summary(payload) }));
      socket.onAnyOutgoing((event, payload) => sent.push({ event, at: Date.now(), ...summary(payload) }));
      return socket;
    };
    return Object.assign(io, loaded);
  }
  return loaded;
};

const originalHttpsRequest = https.request;
https.request = function request(options, callback) {
  if (options && typeof options === "object" && !(options instanceof URL) && options.hostname === PRODUCTION_HOST) {
    const entry = { method: options.method, path: options.path, status: null, body: null };
    httpLog.push(entry);
    const req = http.request({ ...options, protocol: "http:", hostname: target.hostname, port: Number(target.port) || 80 },
      (res) => { entry.status = res.statusCode; if (callback) callback(res); });
    const write = req.write.bind(req);
    req.write = (chunk, ...rest) => {
      try { entry.body = summary(JSON.parse(String(chunk))); entry.body.prompt = JSON.parse(String(chunk)).prompt; } catch { /* not JSON */ }
      return write(chunk, ...rest);
    };
    return req;
  }
  return originalHttpsRequest.apply(this, arguments);
};

// ------------------------------------------------------------ the script, under Max
process.chdir(runDir);
const deviceRequire = createRequire(scriptPath);
const Max = deviceRequire("max-api");
const max = Max.harness;
deviceRequire(scriptPath);

const FAILURE_OUTLETS = new Set(["error", "error_message"]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Wait for the first outlet named in `expect` (or a wire event named in `expectEvents`);
 *  an error outlet not expected fails the step, as would a timeout. */
function waitFor({ expect = [], expectEvents = [], timeoutMs }) {
  return new Promise((resolveWait, rejectWait) => {
    const since = received.length;
    const timer = setTimeout(() => { cleanup(); rejectWait(new Error(`timeout after ${timeoutMs} ms waiting for ${[...expect, ...expectEvents]}`)); }, timeoutMs);
    const poll = setInterval(() => {
      const hit = received.slice(since).find((r) => expectEvents.includes(r.event));
      if (hit) { cleanup(); resolveWait({ outlet: null, event: hit }); }
    }, 20);
    const onOutlet = (args) => {
      const [name] = args;
      if (expect.includes(name)) { cleanup(); resolveWait({ outlet: args }); }
      else if (FAILURE_OUTLETS.has(name)) { cleanup(); rejectWait(new Error(`device showed ${JSON.stringify(args)}`)); }
    };
    function cleanup() { clearTimeout(timer); clearInterval(poll); max.off("outlet", onOutlet); }
    max.on("outlet", onOutlet);
  });
}

let stepStart = { sent: 0, received: 0, http: 0, outlets: 0 };

/** Send `messages` ([name, ...args] as the patcher does) and wait as `waitFor`; print the step. */
async function step(name, messages, wait, { before } = {}) {
  stepStart = { sent: sent.length, received: received.length, http: httpLog.length, outlets: max.outlets.length };
  if (before) before();
  const waiting = wait ? waitFor({ timeoutMs: inputs.timeout_s * 1000, ...wait }) : Promise.resolve({});
  for (const [msg, ...args] of messages) {
    if (!max.handled().includes(msg)) throw new Error(`the device script has no handler for "${msg}"`);
    await max.send(msg, ...args);
  }
  let result;
  try {
    result = await waiting;
  } catch (err) {
    report(name, { failed: String(err.message) });
    throw new Error(`step ${name}: ${err.message}`);
  }
  // The script writes the result in its event handler before the outlet: copy it now.
  let file = null;
  if (existsSync(OUTPUT)) {
    file = join(outDir, `${name}.wav`);
    copyFileSync(OUTPUT, file);
  }
  report(name, { outlet: result.outlet || null, file });
  // The device's own 500 ms busy flag (timeoutDuration) must lapse before the next click.
  await sleep(700);
  return result;
}

function report(name, extra) {
  const events = received.slice(stepStart.received);
  const progress = events.filter((e) => e.event === "progress_update").map((e) => e.progress);
  console.log(JSON.stringify({
    step: name, ...extra,
    sent: sent.slice(stepStart.sent),
    received: events.map((e) => ({ event: e.event, session_id: e.session_id ?? null, message: e.message ?? null,
      code: e.code ?? null, variation: e.variation ?? null, audio_bytes: e.audio_bytes ?? null })),
    max_progress: progress.length ? Math.max(...progress) : null, progress_events: progress.length,
    http: httpLog.slice(stepStart.http),
    outlets: max.outlets.slice(stepStart.outlets).map((o) => o.map((a) => (typeof a === "string" && a.length > 300 ? a.slice(0, 300) : a))),
  }));
}

// ------------------------------------------------------------ the musician's clicks
const connect = () => step("connect", [], { expect: ["backend_connection"] });
// The model box: the device's default (thepatch/vanya_ai_dnb_0.1) is not served by a debug
// server, so the musician types the model name, as in the device's text field.
const chooseModel = () => step("model", [["text", inputs.model], ["prompt_duration", 6]], null);
const bang = () => step("bang", [["bang"]], { expect: ["audio_processed"] }, { before: () => copyFileSync(inputs.buffer, BUFFER) });
const cont = (name) => step(name, [["continue"]], { expect: ["music_continued"] });
const retry = () => step("retry", [["retry"]], { expect: ["music_retried"] });
// The device's waveform editor writes the cropped take over myOutput.wav, then sends crop_audio.
const crop = () => step("crop", [["crop_audio"]], { expect: ["update_cropped_audio_complete"] },
  { before: () => copyFileSync(inputs.crop, OUTPUT) });
const cleanup = (name = "cleanup") => step(name, [["reset_transform"]], { expectEvents: ["cleanup_complete"] });
const jerry = () => step("jerry", [["set_prompt", "text lofi hip hop drums"], ["set_bpm", 120], ["set_steps", 8],
  ["set_cfg", 1.0], ["generate_stable_audio"]], { expect: ["stable_audio_generated"] });
const transform = (name, variation, midpoint, options) => step(name, [["set_variation", variation],
  ["set_solver", midpoint ? 1 : 0], ["set_flowstep", 64], ["transform"]], { expect: ["audio_transformed"] }, options);
const undo = () => step("undo", [["undo_transform"]], { expect: ["transform_undone"] });
const refusedTransform = () => step("refused_preset", [["set_variation", "not_a_preset"], ["set_solver", 0], ["transform"]],
  { expect: ["error"] });

async function terrySteps() {
  await transform("transform1", "lofi_chill", false);
  await transform("transform2", "piano_classical", true);
  await undo();
  await cont("continue_after_undo");
  await refusedTransform();
  await cleanup();
}

const SCENARIOS = {
  // gary as the device plays it today: bang, continue twice, retry, crop and continue the
  // cropped take, then a fresh take: with no session but a myOutput.wav at 44.1 kHz (what
  // jerry leaves), continue sends it without session_id; cleanup.
  async gary() {
    await connect(); await chooseModel();
    await bang(); await cont("continue1"); await cont("continue2"); await retry();
    await crop(); await cont("continue3");
    await cleanup("reset");
    await step("leftover_continue", [["continue"]], { expect: ["music_continued"] },
      { before: () => copyFileSync(inputs.leftover, OUTPUT) });
    await cleanup();
  },
  // jerry makes a take from text at the DAW's tempo; gary continues it (no session yet).
  async jerry() {
    await connect(); await chooseModel();
    await jerry(); await cont("continue_jerry"); await cleanup();
  },
  // terry straight on the recording (no session yet: the script sends myBuffer.wav with
  // session_id null), then on a gary session: two presets, both solvers, undo, continue after
  // undo, a refused preset, cleanup.
  async terry() {
    await connect(); await chooseModel();
    await transform("transform0", "synth_edm", false, { before: () => copyFileSync(inputs.buffer, BUFFER) });
    await cleanup("reset");
    await bang(); await cont("continue1");
    await terrySteps();
  },
  // The whole flow of issue 19: jerry -> gary continues jerry's audio -> terry x2 -> undo ->
  // continue after undo -> refused preset -> cleanup.
  async full() {
    await connect(); await chooseModel();
    await jerry(); await cont("continue_jerry");
    await terrySteps();
  },
};

if (!SCENARIOS[scenario]) {
  console.error(`unknown scenario ${scenario}; one of ${Object.keys(SCENARIOS)}`);
  process.exit(2);
}
SCENARIOS[scenario]().then(() => process.exit(0), (err) => {
  console.error(String((err && err.stack) || err));
  console.error("last Max console lines:\n" + max.posts.slice(-15).join("\n"));
  process.exit(1);
});
