"""The station record (g4l.store.stations) on the real Redis: the hash keeps the fields it
always had, typed on the way in and out, and a write that depends on what was read applies
only while the record is still what the writer read."""

from __future__ import annotations

import threading
import uuid

import pytest

from g4l import keys
from g4l.store.stations import StationRecord, StationStore


@pytest.fixture
def store(redis_client):  # type: ignore[no-untyped-def]
    made: list[str] = []

    class Store(StationStore):
        def new_id(self) -> str:
            made.append(str(uuid.uuid4()))
            return made[-1]

    yield Store(redis_client)
    for station_id in made:
        redis_client.delete(keys.station(station_id))


def _created(store, **over) -> str:  # type: ignore[no-untyped-def]
    station_id = store.new_id()
    store.create(StationRecord(id=station_id, token="t" * 8, status="running", model="debug", owner="o",
                               prompts=["deep house", "ambient"], rotate_every_s=30, sampling="{}", created=1.5,
                               audio_s=0, generations=0, job_id="", errors=[], rotations=[], record=True,
                               queue_s=0, play_seq=0, play_offset_s=0, on_air=False, **over))
    return station_id


def test_a_new_station_is_the_hash_it_always_was_and_reads_back_typed(store, redis_client) -> None:  # type: ignore[no-untyped-def]
    station_id = _created(store)
    raw = redis_client.hgetall(keys.station(station_id))
    assert raw["prompts"] == '["deep house", "ambient"]'
    assert (raw["on_air"], raw["record"], raw["errors"], raw["rotations"]) == ("0", "1", "[]", "[]")
    assert (raw["audio_s"], raw["generations"], raw["rotate_every_s"], raw["created"]) == ("0", "0", "30", "1.5")
    assert "ever_on_air" not in raw and "played" not in raw  # only the fields a new station always had
    st = store.get(station_id)
    assert st is not None and st.running and st.record and not st.on_air
    assert st.prompts == ["deep house", "ambient"] and st.rotate_every_s == 30.0
    assert st.last_prompt_index is None and st.feed_started is None and st.played == []
    store.update(station_id, on_air=True, last_prompt_index=1, feed_started={"seq": 2, "offset_s": 0.0})
    raw = redis_client.hgetall(keys.station(station_id))
    assert (raw["on_air"], raw["last_prompt_index"], raw["feed_started"]) == ("1", "1", '{"seq": 2, "offset_s": 0.0}')
    st = store.get(station_id)
    assert st is not None and st.on_air and st.last_prompt_index == 1 and st.feed_started == {"seq": 2,
                                                                                             "offset_s": 0.0}
    assert store.get("not an id") is None and store.get(str(uuid.uuid4())) is None


def test_a_write_applies_only_while_the_record_is_what_the_writer_read(store) -> None:  # type: ignore[no-untyped-def]
    station_id = _created(store, )
    store.update(station_id, job_id="job-a")
    # The web queues job b after a tick read job a: the tick's "forget job a" must not
    # forget job b.
    store.update(station_id, job_id="job-b")
    assert store.update_if(station_id, {"job_id": "job-a"}, job_id="") is False
    assert store.fields(station_id, "job_id") == {"job_id": "job-b"}
    assert store.update_if(station_id, {"job_id": "job-b"}, job_id="", generations=1) is True
    assert store.fields(station_id, "job_id", "generations") == {"job_id": "", "generations": 1}
    # A field never written reads as empty; a gone station is never written again.
    assert store.update_if(station_id, {"last_blob": ""}, last_blob="b1") is True
    gone = str(uuid.uuid4())
    assert store.update_if(gone, {"job_id": ""}, job_id="x") is False
    assert store.get(gone) is None


def test_appends_from_two_writers_lose_nothing_and_keep_the_newest(store) -> None:  # type: ignore[no-untyped-def]
    station_id = _created(store)

    def writer(base: int) -> None:
        for i in range(40):
            store.append(station_id, "played", [base + i], keep=1000)

    threads = [threading.Thread(target=writer, args=(base,)) for base in (0, 1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    played = store.get(station_id).played
    assert sorted(played) == [*range(40), *range(1000, 1040)]
    assert store.append(station_id, "played", [7], keep=3) == [played[-2], played[-1], 7]


def test_an_unknown_field_is_refused_and_nothing_is_written(store) -> None:  # type: ignore[no-untyped-def]
    station_id = _created(store)
    with pytest.raises(KeyError):
        store.update(station_id, on_air=True, bogus=1)
    assert store.get(station_id).on_air is False
