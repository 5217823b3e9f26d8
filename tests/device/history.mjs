// A device session that walks its history, with Node's socket.io-client over a websocket:
// bang, continue, continue, undo, undo, continue (a branch), a refused redo, history,
// checkout of the first continue, retry, a refused undo_transform. Each reply's audio is
// written to OUT_DIR; one JSON line per step goes to stdout.
//   node history.mjs URL INPUT_WAV OUT_DIR
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { io } from "socket.io-client";
import { once as waitFor } from "./once.mjs";

const [url, inputPath, outDir] = process.argv.slice(2);
const params = { model_name: "debug", prompt_duration: 6, top_k: 250, temperature: 1.0, cfg_coef: 3.0, description: "" };
const socket = io(url, { transports: ["websocket"], reconnection: true });

const once = (events, timeoutMs) => waitFor(socket, events, timeoutMs);

function save(step, body, extra = {}) {
  const file = join(outDir, `${step}.wav`);
  writeFileSync(file, Buffer.from(body.audio_data, "base64"));
  console.log(JSON.stringify({ step, session_id: body.session_id, file, version: body.version ?? null,
    operation: body.operation ?? null, ...extra }));
  return body;
}

async function request(step, event, payload, answer) {
  const reply = once([answer]);
  socket.emit(event, payload);
  const [, body] = await reply;
  return save(step, body);
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
  const bang = await request("bang", "process_audio_request", { ...params, audio_data: input }, "audio_processed");
  const sid = bang.session_id;
  const c1 = await request("continue1", "continue_music_request", { ...params, session_id: sid, audio_data: bang.audio_data }, "music_continued");
  await request("continue2", "continue_music_request", { ...params, session_id: sid, audio_data: c1.audio_data }, "music_continued");
  await request("undo1", "undo_request", { session_id: sid }, "undo_complete");
  const back = await request("undo2", "undo_request", { session_id: sid }, "undo_complete");
  await request("branch", "continue_music_request", { ...params, session_id: sid, audio_data: back.audio_data }, "music_continued");
  await refused("redo_refused", "redo_request", { session_id: sid });
  const listed = once(["history"]);
  socket.emit("history_request", { session_id: sid });
  const [, history] = await listed;
  console.log(JSON.stringify({ step: "history", ...history }));
  const first = history.versions.find((v) => v.operation === "continue" && v.parent === 1);
  await request("checkout", "checkout_request", { session_id: sid, version: first.version }, "checkout_complete");
  await request("retry", "retry_music_request", { ...params, session_id: sid }, "music_retried");
  await refused("undo_transform_refused", "undo_transform_request", { session_id: sid });
  await refused("checkout_refused", "checkout_request", { session_id: sid, version: 999 });
  const status = once(["session_status"]);
  socket.emit("verify_session", { session_id: sid });
  const [, verified] = await status;
  console.log(JSON.stringify({ step: "status", ...verified }));
  socket.close();
}

main().catch((err) => { console.error(String(err && err.stack || err)); socket.close(); process.exit(1); });
