"""One typed settings object, read from the environment (documented in README's table)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the server. Field names map to ``G4L_<NAME>`` variables, except the
    two store URLs, which use the conventional ``REDIS_URL`` / ``MONGO_URL``."""

    model_config = SettingsConfigDict(env_prefix="G4L_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    # Scale-out (docs/scale-out.md): the launcher starts this many web processes behind
    # nginx on ``port`` (1: one web process listens on ``port`` itself).
    web_processes: int = 1
    # This web process's name: its heartbeat in /health's web_nodes and the prefix of the
    # Engine.IO session ids it hands out, which the balancer routes polling requests by.
    # Empty: ``web-<random>`` (never the host or pid: every client sees its session id).
    web_node: str = ""
    # Proxies in front of the web process whose X-Forwarded-For / -Proto it believes (the
    # launcher's balancer sets 1): per-address limits then see the client, not the proxy.
    trusted_proxies: int = 0
    # Localhost mode (docs/jerry.md): the device and gary4juce call jerry on port 8005 and
    # gary4juce calls terry on 8002, so the launcher answers there too (the same app; 0: off;
    # a port that is taken is skipped with a log line).
    jerry_port: int = Field(default=8005, ge=0, le=65535)
    terry_port: int = Field(default=8002, ge=0, le=65535)
    # Set by the launcher for its web process: more ports it listens on (jerry's, terry's).
    extra_ports: Annotated[list[int], NoDecode] = []
    # Set by the launcher for its packager: a name that outlives a restart, so a packager
    # started in place of a dead one takes that one's stream leases at once instead of
    # waiting out their TTL (the listeners' stall). Empty: ``<host>-<pid>``.
    packager_name: str = ""
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    mongo_url: str | None = Field(default=None, validation_alias="MONGO_URL")
    mongo_db: str = "g4l"
    data_dir: Path = Path(".g4l-data")
    # The embedded store's limits (no MONGO_URL; g4l/store/guard.py): the RSS it is sized for
    # (its cache is a quarter) and restarted above, and the free disk under which new audio
    # is refused. Both show in /health when reached.
    store_memory_mb: int = Field(default=512, ge=128)
    store_min_free_mb: int = Field(default=1024, ge=0)

    # Models: an allowlist of ids; "debug" is the tiny random-weight MusicGen.
    models: Annotated[list[str], NoDecode] = ["thepatch/vanya_ai_dnb_0.1"]
    default_model: str | None = None
    # "id=size,...": the size (small | medium | large) of allowlisted models, for clients
    # that group them (GET /api/models); unnamed ones: what a worker that loaded it reports.
    model_sizes: Annotated[list[str], NoDecode] = []
    # "id=/dir,...": allowlisted ids whose checkpoint is a local directory (state_dict.bin +
    # compression_state_dict.bin), so clients keep asking for the id they know (an offline
    # server; the T5 and EnCodec a released checkpoint names still come from the Hugging
    # Face cache, HF_HOME).
    model_paths: Annotated[list[str], NoDecode] = []
    workers: int = 1
    # Jobs one worker holds at once; those of one model share one decoding loop (continuous
    # batching, docs/engine-batching.md). 1: one job at a time on the stock engine.
    max_batch: int = Field(default=8, ge=1)
    # Most MiB of KV cache one decoding loop keeps (0: no limit): a job that would pass it
    # waits to join until a row leaves; a lone job always runs (docs/engine-batching.md).
    kv_budget_mb: int = Field(default=0, ge=0)
    # Threads a batching worker decodes finished rows on (EnCodec), the most decoding at
    # once; each gives its memory back after a decode (docs/engine-batching.md). 0: the
    # cores over the torch threads on CPU, 2 on a GPU.
    decode_threads: int = Field(default=0, ge=0, le=64)
    # Streamed generation: seconds of audio between two decoded pieces of a running job
    # that someone listens to (docs/engine-batching.md, "Streamed decoding"); 0: off.
    stream_chunk_s: float = Field(default=1.0, ge=0.0, le=30.0)
    torch_threads: int = 0  # 0: all cores but one on a CPU worker, torch's choice on a GPU
    worker_nice: int = 10  # CPU workers lower their priority by this much (0: off)
    # GB of (GPU) memory a worker gives its model families (g4l/engine/families.py: about
    # 4 MusicGen, 2 Stable Audio Open Small, 9 MelodyFlow): it loads, in that order, the
    # families with an allowed model that fit and takes only their jobs. 0: every family.
    worker_memory_gb: float = Field(default=0.0, ge=0.0)
    device: str = "auto"  # auto | cpu | cuda

    # Generation bounds.
    output_seconds: float = 30.0
    min_prompt_seconds: int = 1
    max_prompt_seconds: int = 30
    default_prompt_seconds: int = 6

    # Input limits: what a client may send.
    max_payload_mb: int = 256
    max_input_seconds: float = 900.0
    max_sample_rate: int = 192_000
    max_channels: int = 2
    # terry (transform): the input it rewrites. The device refuses files over 50 MB itself;
    # MelodyFlow works at 48 kHz, so audio below 22.05 kHz has nothing to rewrite its top with.
    transform_max_mb: float = Field(default=50.0, gt=0.0)  # refused from this size (10^6 bytes of WAV)
    transform_max_seconds: float = Field(default=300.0, gt=0.0)
    transform_min_rate: int = Field(default=22_050, ge=1)

    # Socket.IO heartbeat (seconds) dictated to clients.
    ping_interval: int = 25
    ping_timeout: int = 60

    # Sessions and jobs.
    retention_hours: float = 72.0
    # Versions of a session whose audio is kept (undo/redo/checkout); the oldest beyond
    # are pruned from GridFS, never the current version nor its nearest ancestors within the bound.
    history_max: int = Field(default=50, ge=1)
    history_moves_per_minute: int = 120  # undo/redo/checkout per client (0: off); each may send a whole take
    job_max_attempts: int = 2
    worker_heartbeat_s: float = 2.0
    worker_dead_after_s: float = 10.0
    # A model that failed to load is refused (MODEL_UNAVAILABLE) for this long before a
    # worker tries loading it again: a dead download is not retried on every request.
    model_retry_s: float = 600.0
    # How long a worker holding a finished generation waits for Redis to come back before
    # giving the job up (the result is then left to recovery, which stores it).
    redis_wait_s: float = 60.0
    # How long a worker keeps retrying (with backoff) to store a result the client already
    # has, while the audio store refuses it; then the job fails with STORE_UNAVAILABLE
    # rather than stay pending. Its Redis hand-off is kept readable meanwhile.
    result_store_max_s: float = Field(default=600.0, gt=0.0)
    progress_interval_s: float = 1.0
    max_queue: int = 100
    held_inputs_mb: int = 512  # continue uploads a web node keeps until their result is sent (0: off)
    rate_limit_per_minute: int = 30  # generation requests per client (0: off)

    # Chunked uploads.
    chunk_size: int = 8 * 1024 * 1024
    upload_ttl_s: int = 3600
    # What one client (API key, or address without keys) may hold in unfinished chunked
    # uploads at once, all of them together (g4l/services/upload_quota.py; 0: no bound).
    uploads_per_owner_mb: int = Field(default=96, ge=0)
    # An upload that has stored a chunk expires this long after its last one (within its
    # G4L_UPLOAD_TTL_S lifetime): what a client that left holds is freed in minutes (0: off).
    upload_idle_s: int = Field(default=300, ge=0)

    cors_origins: str = "*"  # origins allowed to call /health and open sockets ("*" or a list)

    # HTTP API and access control (docs/http-api.md).
    api_keys: Annotated[list[str], NoDecode] = []  # comma-separated; empty: no key needed anywhere
    operator_keys: Annotated[list[str], NoDecode] = []  # keys that may also run operator actions
    docs_public: bool = False  # serve /api/v1/docs and /api/v1/openapi.json without a key
    max_generate_seconds: float = 120.0  # longest ``duration`` POST /api/v1/generate accepts
    max_json_kb: int = 64  # body limit of HTTP routes that carry no audio
    # Slow clients (g4l/web/http_server.py): headers must arrive within this; a body within
    # the grace plus its length at the minimum rate (a stalled upload is let go).
    http_header_timeout_s: float = 20.0
    http_keepalive_timeout_s: float = 75.0  # an idle connection waits this long for its next request
    http_body_grace_s: float = 30.0
    http_body_min_kbps: int = 32
    jobs_per_owner: int = 500  # recent jobs remembered per key (or IP) for GET /api/v1/jobs
    # The absolute base of links the server hands out (get_stream's stream.url, the realtime
    # API's playlist_url) when clients reach it through a proxy; unset: the request's host.
    public_url: str | None = None

    # Live listening over HLS and generative stations (docs/hls.md).
    hls_enabled: bool = True  # the launcher starts the packager (python -m g4l.hls)
    hls_dir: Path | None = None  # segments + playlists; default <data_dir>/hls
    hls_segment_s: float = 1.0  # cut on AAC frames: 0.981 s, target duration 1 (hls.js plays ~3 s behind)
    hls_window_segments: int = 6  # playlist length (>= 3 target durations)
    hls_bitrate_kbps: int = 128
    hls_crossfade_ms: int = 50  # equal-power crossfade at every join
    hls_idle_fill: str = "silence"  # silence | loop: what plays while nothing is buffered
    hls_idle_timeout_s: float = 600.0  # a stream with no listener and no new audio this long stops
    hls_session_preroll_s: float = 30.0  # a new session stream starts with this much current audio
    station_buffer_s: float = 45.0  # audio a station keeps generated ahead of its listeners
    station_low_buffer_s: float = 12.0  # below this a station reports buffer_health "low"
    station_prompt_seconds: float = 6.0  # how much of its own audio a station continues from
    # Long station buffers (docs/hls.md "Long buffers"): a station's unplayed audio waits in
    # GridFS; only this much is decoded into memory ahead of the listeners.
    station_memory_s: float = 20.0
    # The health thresholds of a station created with "buffer_thresholds_s": "long" (the lower
    # bound of HEALTHY, WARNING, CRITICAL and EMERGENCY; under the last one it is DEPLETED).
    # A station given no thresholds scales them to G4L_STATION_BUFFER_S (x1, 1/2, 1/4, 1/12).
    station_healthy_s: float = 86_400.0
    station_warning_s: float = 43_200.0
    station_critical_s: float = 21_600.0
    station_emergency_s: float = 7_200.0
    station_max_chunk_s: float = 600.0  # longest chunk_seconds a station may ask for
    station_max_break_s: float = 60.0  # longest silent break between two prompts
    station_max_crossfade_s: float = 8.0  # longest crossfade between two prompts (< G4L_STATION_MEMORY_S / 2)
    # Test/dev knob: paces generation to this real-time factor (0.3: a 10 s stretch takes
    # at least 33 s), to play a slow CPU box with the tiny model. 0: off. Never in production.
    debug_model_rtf: float = Field(default=0.0, ge=0.0)
    max_stations: int = 4
    stations_per_key: int = 2  # stations one API key may run at once (keys on)
    stream_seconds: float = 30.0  # length of a realtime API one-shot (POST /api/stream/start)
    genre_rotate_s: float = 300.0  # an adaptive get_stream station changes its mood this often

    # A station's RTMP(S) outputs (YouTube Live, Twitch...; docs/hls.md): one ffmpeg each.
    station_max_outputs: int = 2  # outputs one station pushes to at once
    rtmp_video_size: str = "1280x720"  # WxH of the video
    rtmp_fps: int = 30
    rtmp_video_kbps: int = 2500  # constant video bitrate (H.264)
    rtmp_audio_kbps: int = 128  # AAC, 48 kHz stereo
    rtmp_x264_preset: str = "veryfast"
    rtmp_visual_mb: int = 20  # largest uploaded image or video
    rtmp_visual_max_s: float = 60.0  # longest uploaded video (it loops)
    rtmp_reconnect_max_s: float = 30.0  # longest pause between two connection attempts
    rtmp_stall_s: float = 15.0  # an output that sends nothing this long is restarted

    # Recordings of a station's program (stations started with "record": true).
    recording_seconds: float = 3600.0  # length of each file (1800, 3600, 14400...)
    recording_bitrate_kbps: int = 192  # AAC in MP4 (.m4a)
    recording_retention_hours: float = 168.0  # older files are deleted (at most G4L_RETENTION_HOURS once stopped)

    # The operator's dashboard (/stations): a station's buffer sampled for its plot.
    station_history_every_s: float = 10.0  # one sample of the buffer this often (at most)
    station_history_hours: float = 24.0  # samples older than this are trimmed

    log_level: str = "INFO"
    log_format: str = "json"  # json | console

    @field_validator("rtmp_video_size")
    @classmethod
    def _video_size(cls, value: str) -> str:
        w, _, h = value.lower().partition("x")
        if not (w.isdigit() and h.isdigit() and 16 <= int(w) <= 3840 and 16 <= int(h) <= 2160
                and int(w) % 2 == 0 and int(h) % 2 == 0):
            raise ValueError("rtmp_video_size must be WxH with even sides, at most 3840x2160")
        return f"{int(w)}x{int(h)}"

    @field_validator("extra_ports", mode="before")
    @classmethod
    def _split_ports(cls, value: object) -> object:
        if isinstance(value, str):
            return [int(p) for p in value.split(",") if p.strip()]
        return value

    @field_validator("models", "api_keys", "operator_keys", "model_sizes", "model_paths", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        # G4L_MODELS and G4L_API_KEYS are comma-separated lists, not JSON.
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @property
    def model_default(self) -> str:
        """The model used when a request names none."""
        return self.default_model or self.models[0]

    @property
    def model_size_map(self) -> dict[str, str]:
        """``model_sizes`` as a dict (entries without ``=`` are ignored)."""
        pairs = (item.rsplit("=", 1) for item in self.model_sizes if "=" in item)
        return {model.strip(): size.strip().lower() for model, size in pairs}

    @field_validator("model_paths")
    @classmethod
    def _check_model_paths(cls, value: list[str]) -> list[str]:
        for item in value:
            model, _, path = item.partition("=")
            if not model.strip() or not path.strip():
                raise ValueError(f"G4L_MODEL_PATHS entry {item!r} is not id=directory")
        return value

    @property
    def model_path_map(self) -> dict[str, str]:
        """``model_paths`` as a dict: model id -> checkpoint directory."""
        pairs = (item.partition("=") for item in self.model_paths)
        return {model.strip(): path.strip() for model, _, path in pairs}

    @property
    def keys_enabled(self) -> bool:
        """Whether API keys are configured (then every route but /health* needs one)."""
        return bool(self.api_keys or self.operator_keys)

    @property
    def cors_list(self) -> str | list[str]:
        """``cors_origins`` as flask-cors / python-socketio want it."""
        if self.cors_origins.strip() == "*":
            return "*"
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

    @property
    def hls_path(self) -> Path:
        """Where live streams are written (``hls_dir``, else ``<data_dir>/hls``), absolute."""
        return Path(self.hls_dir or Path(self.data_dir) / "hls").resolve()

    @property
    def retention_seconds(self) -> int:
        return int(self.retention_hours * 3600)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
