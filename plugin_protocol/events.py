"""Socket.IO event names, exactly as existing gary4live-style clients spell them."""

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
ERROR = "error"

#: The result event for each generation kind.
RESULT_EVENT = {"bang": AUDIO_PROCESSED, "continue": MUSIC_CONTINUED, "retry": MUSIC_RETRIED}
#: The acknowledgement sent as soon as a generation request is accepted.
RECEIVED_EVENT = {
    "bang": PROCESS_AUDIO_RECEIVED,
    "continue": CONTINUE_MUSIC_RECEIVED,
    "retry": RETRY_MUSIC_RECEIVED,
}
