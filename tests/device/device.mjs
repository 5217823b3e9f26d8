// A device session as the Max4Live device plays it, with Node's socket.io-client over a
// websocket: bang, continue twice, retry, crop, continue from the stored audio, a refused
// retry, cleanup. Each result is written to OUT_DIR; one JSON line per step goes to stdout.
//   node device.mjs URL INPUT_WAV CROP_WAV OUT_DIR [API_KEY]
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { io } from "socket.io-client";
import { once as waitFor } from "./once.mjs";

const [url, inputPath, cropPath, outDir, apiKey] = process.argv.slice(2);
const params = { model_name: "debug", prompt_duration: 6, top_k: 250, temperature: 1.0, cfg_coef: 3.0, description: "" };
const socket = io(url, { transports: ["websocket"], reconnection: true, auth: apiKey ? { api_key: apiKey } : undefined });

const once = (events, timeoutMs) => waitFor(socket, events, timeoutMs);

async function generate(step, event, payload, resultEvent) {
  const seen = { progress: [], acks: [], queue_status: 0, processing_started: 0 };
  const onProgress = (p) => seen.progress.push(p.progress);
  const onAck = (p) => seen.acks.push(p);
  const onQueue = () => { seen.queue_status += 1; };
  const onStarted = () => { seen.processing_started += 1; };
  const ack = event.replace("_request", "_received"); // process_audio_received, continue_music_received...
  socket.on("progress_update", onProgress);
  socket.on(ack, onAck);
  socket.on("queue_status", onQueue);
  socket.on("processing_started", onStarted);
  const started = Date.now();
  const result = once([resultEvent]);
  socket.emit(event, payload);
  const [, body] = await result;
  for (const [e, h] of [["progress_update", onProgress], [ack, onAck], ["queue_status", onQueue], ["processing_started", onStarted]]) socket.off(e, h);
  const file = join(outDir, `${step}.wav`);
  writeFileSync(file, Buffer.from(body.audio_data, "base64"));
  console.log(JSON.stringify({ step, session_id: body.session_id, file, seconds: (Date.now() - started) / 1000,
    progress_events: seen.progress.length, max_progress: Math.max(0, ...seen.progress), acks: seen.acks.length,
    ack_job_id: seen.acks[0] ? seen.acks[0].job_id : null, queue_status: seen.queue_status,
    processing_started: seen.processing_started }));
  return body;
}

async function main() {
  await new Promise((resolve, reject) => { socket.once("connect", resolve); socket.once("connect_error", reject); });
  const input = readFileSync(inputPath).toString("base64");
  const bang = await generate("bang", "process_audio_request", { ...params, audio_data: input }, "audio_processed");
  const sid = bang.session_id;
  const c1 = await generate("continue1", "continue_music_request", { ...params, session_id: sid, audio_data: bang.audio_data }, "music_continued");
  await generate("continue2", "continue_music_request", { ...params, session_id: sid, audio_data: c1.audio_data }, "music_continued");
  await generate("retry", "retry_music_request", { ...params, session_id: sid }, "music_retried");
  const cropped = once(["update_cropped_audio_complete"]);
  socket.emit("update_cropped_audio", { session_id: sid, audio_data: readFileSync(cropPath).toString("base64") });
  const [, crop] = await cropped;
  console.log(JSON.stringify({ step: "crop", session_id: crop.session_id, message: crop.message }));
  await generate("continue3", "continue_music_request", { ...params, session_id: sid }, "music_continued");
  const refused = once(["error"]);
  socket.emit("retry_music_request", { session_id: "no-such-session" });
  const [, error] = await refused;
  console.log(JSON.stringify({ step: "refused", code: error.code, message: error.message }));
  const cleaned = once(["cleanup_complete"]);
  socket.emit("cleanup_session_request", { session_id: sid });
  const [, cleanup] = await cleaned;
  console.log(JSON.stringify({ step: "cleanup", session_id: cleanup.session_id }));
  socket.close();
}

main().catch((err) => { console.error(String(err && err.stack || err)); socket.close(); process.exit(1); });
