// terry as the gary4live device drives it, with Node's socket.io-client over a websocket:
// bang (gary), transform (lofi_chill, euler, the device's flowstep), transform (synth_retro,
// midpoint), continue, undo_transform, continue after the undo, a refused preset, a
// refused solver, cleanup. Each reply's audio is written to OUT_DIR; one JSON line per step
// goes to stdout, with the names of the events the session's request saw, in order.
//   node terry.mjs URL INPUT_WAV OUT_DIR
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { io } from "socket.io-client";
import { once as waitFor } from "./once.mjs";

const [url, inputPath, outDir] = process.argv.slice(2);
const gary = { model_name: "debug", prompt_duration: 6, top_k: 250, temperature: 1.0, cfg_coef: 3.0, description: "" };
const socket = io(url, { transports: ["websocket"], reconnection: true });
const once = (events, timeoutMs) => waitFor(socket, events, timeoutMs);

let seen = [];
socket.onAny((event, payload) => {
  const p = payload && typeof payload === "object" ? payload : {};
  seen.push({ event, progress: p.progress ?? null, status: p.status ?? null, variation: p.variation ?? null });
});

function save(step, body, extra = {}) {
  const file = join(outDir, `${step}.wav`);
  writeFileSync(file, Buffer.from(body.audio_data, "base64"));
  console.log(JSON.stringify({ step, session_id: body.session_id, file, variation: body.variation ?? null,
    version: body.version ?? null, operation: body.operation ?? null, ...extra }));
  return body;
}

async function request(step, event, payload, answer) {
  seen = [];
  const reply = once([answer], 300000);
  socket.emit(event, payload);
  const [, body] = await reply;
  return save(step, body, { events: seen.map((e) => e.event), progress: seen.filter((e) => e.event === "progress_update").map((e) => e.progress) });
}

async function refused(step, event, payload) {
  const reply = once(["error"]);
  socket.emit(event, payload);
  const [, error] = await reply;
  console.log(JSON.stringify({ step, code: error.code, message: error.message, session_id: error.session_id }));
}

async function main() {
  await new Promise((resolve, reject) => { socket.once("connect", resolve); socket.once("connect_error", reject); });
  const input = readFileSync(inputPath).toString("base64");
  const bang = await request("bang", "process_audio_request", { ...gary, audio_data: input }, "audio_processed");
  const sid = bang.session_id;
  // The device sends its current file (myOutput.wav), the session, the preset and its flowstep.
  const t1 = await request("transform1", "transform_audio_request",
    { audio_data: bang.audio_data, variation: "lofi_chill", session_id: sid, flowstep: 0.13 }, "audio_transformed");
  const t2 = await request("transform2", "transform_audio_request",
    { audio_data: t1.audio_data, variation: "synth_retro", session_id: sid, flowstep: 0.1, solver: "midpoint" },
    "audio_transformed");
  await request("continue", "continue_music_request", { ...gary, session_id: sid, audio_data: t2.audio_data }, "music_continued");
  const undone = await request("undo", "undo_transform_request", { session_id: sid }, "transform_undone");
  await request("continue_after_undo", "continue_music_request", { ...gary, session_id: sid, audio_data: undone.audio_data },
    "music_continued");
  await refused("unknown_preset", "transform_audio_request", { variation: "polka_metal", session_id: sid, flowstep: 0.13 });
  await refused("bad_solver", "transform_audio_request", { variation: "celtic", session_id: sid, solver: "rk4" });
  const listed = once(["history"]);
  socket.emit("history_request", { session_id: sid });
  const [, history] = await listed;
  console.log(JSON.stringify({ step: "history", ...history }));
  const cleaned = once(["cleanup_complete"]);
  socket.emit("cleanup_session_request", { session_id: sid });
  const [, done] = await cleaned;
  console.log(JSON.stringify({ step: "cleanup", ...done }));
  socket.close();
}

main().catch((err) => { console.error(String(err && err.stack || err)); socket.close(); process.exit(1); });
