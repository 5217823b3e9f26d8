"""Socket.IO event names, exactly as existing gary4live-style clients spell them."""

from dataclasses import dataclass

# Client -> server
PROCESS_AUDIO = "process_audio_request"  # "bang"
CONTINUE_MUSIC = "continue_music_request"
RETRY_MUSIC = "retry_music_request"
UPDATE_CROPPED_AUDIO = "update_cropped_audio"  # "crop"
CLEANUP_SESSION = "cleanup_session_request"
VERIFY_SESSION = "verify_session"
REQUEST_PROGRESS_STATUS = "request_progress_status"
BEGIN_RESTORE_AUDIO = "begin_restore_audio"
AUDIO_CHUNK = "audio_chunk"
GET_LISTEN_URL = "get_listen_url"  # {session_id} -> listen_url (read-only HLS link)
# The session history (g4l's own): every version kept, undo/redo/checkout move the current one.
UNDO = "undo_request"  # {session_id} -> undo_complete
REDO = "redo_request"  # {session_id} -> redo_complete
CHECKOUT = "checkout_request"  # {session_id, version} -> checkout_complete
HISTORY = "history_request"  # {session_id} -> history
UNDO_TRANSFORM = "undo_transform_request"  # {session_id} -> transform_undone (the device's terry undo)
# terry (MelodyFlow): rewrite the session's audio in a preset's style, same length.
TRANSFORM_AUDIO = "transform_audio_request"  # {audio_data?, variation, session_id?, flowstep?, solver?, ...}
# Live progress of the HTTP API's jobs and sessions (g4l's own: g4l/web/api/live.py).
SUBSCRIBE = "subscribe"  # {job_id?, session_id?} -> subscribed, then job_update ... job_completed
UNSUBSCRIBE = "unsubscribe"  # the same payload

# Server -> client
PROCESS_AUDIO_RECEIVED = "process_audio_received"
CONTINUE_MUSIC_RECEIVED = "continue_music_received"
RETRY_MUSIC_RECEIVED = "retry_music_received"
PROCESSING_STARTED = "processing_started"
QUEUE_UPDATE = "queue_update"
QUEUE_STATUS = "queue_status"
PROGRESS_UPDATE = "progress_update"
AUDIO_PROCESSED = "audio_processed"
MUSIC_CONTINUED = "music_continued"
MUSIC_RETRIED = "music_retried"
UPDATE_CROPPED_AUDIO_COMPLETE = "update_cropped_audio_complete"
CLEANUP_COMPLETE = "cleanup_complete"
SESSION_STATUS = "session_status"  # our answer to verify_session / request_progress_status
READY_FOR_CHUNKS = "ready_for_chunks"
CHUNK_RECEIVED = "chunk_received"
RESTORE_COMPLETE = "restore_complete"
CHUNKS_MISSING = "chunks_missing"
LISTEN_URL = "listen_url"  # {playlist_url, page_url, session_id}
UNDO_COMPLETE = "undo_complete"  # {audio_data, session_id, version, operation}
REDO_COMPLETE = "redo_complete"
CHECKOUT_COMPLETE = "checkout_complete"
HISTORY_RESULT = "history"  # {session_id, current, versions: [...]} (no audio)
TRANSFORM_UNDONE = "transform_undone"  # {audio_data, session_id}
TRANSFORM_AUDIO_RECEIVED = "transform_audio_received"  # {session_id, job_id, seed}
AUDIO_TRANSFORMED = "audio_transformed"  # {audio_data, session_id, variation}
ERROR = "error"
SUBSCRIBED = "subscribed"  # {job_id?, session_id?}: the rooms joined
JOB_UPDATE = "job_update"  # the job's JSON (GET /api/v1/jobs/{id}) on every change
JOB_COMPLETED = "job_completed"  # the same, with audio_url, once it is done


@dataclass(frozen=True)
class GenerationEvents:
    """A device generation's three events: its request, the acknowledgement sent as soon as
    it is accepted, and the event that brings its result."""

    request: str
    received: str
    result: str


BANG = GenerationEvents(PROCESS_AUDIO, PROCESS_AUDIO_RECEIVED, AUDIO_PROCESSED)
CONTINUE = GenerationEvents(CONTINUE_MUSIC, CONTINUE_MUSIC_RECEIVED, MUSIC_CONTINUED)
RETRY = GenerationEvents(RETRY_MUSIC, RETRY_MUSIC_RECEIVED, MUSIC_RETRIED)
TRANSFORM = GenerationEvents(TRANSFORM_AUDIO, TRANSFORM_AUDIO_RECEIVED, AUDIO_TRANSFORMED)
#: Every device generation (the server's kind table says which kind uses which).
GENERATIONS = (BANG, CONTINUE, RETRY, TRANSFORM)
