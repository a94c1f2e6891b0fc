"""The Flink job's buckets of keys (streams/flink_job.py): each bucket lands in its own key group, as Flink
itself assigns them, so the buckets spread over the subtasks exactly as the key groups do; and a bucket's
stages survive their encoding (streams/edge.py) and refuse bytes that are not one; and a worker flushes
its buckets on a quiet spell only once its input has had time to come."""

import zlib
from collections import Counter

import orjson
import pytest

from benchmarks.core_pipeline import timed_events
from streams.edge import FLOW, decode_bucket, encode_bucket
from streams.flink_job import _BUCKET_KEYS, _WAKE_KEYS, MAX_PARALLELISM, FlinkOptions, _Bucket, _Buckets, _bucket_keys, bucket_of, key_group
from tracetap.errors import UndecodableState
from tracetap.stages import FlowStage, StageConfig

S = 1_000_000_000
T0 = 1_800_000_000 * S

# KeyGroupRangeAssignment.assignToKeyGroup(Integer.valueOf(k), 128), printed by Flink 1.20.3's own jar
FLINK_KEY_GROUPS = {0: 94, 1: 86, 2: 127, 3: 113, 7: 113, 42: 29, 127: 27, 128: 41, 1000: 7, 65535: 18}


def test_the_key_group_of_an_int_key_is_flinks():
    assert {key: key_group(key, 128) for key in FLINK_KEY_GROUPS} == FLINK_KEY_GROUPS


@pytest.mark.parametrize("max_parallelism", [128, 256, 7])
def test_bucket_i_lands_in_key_group_i(max_parallelism):
    keys = _bucket_keys(max_parallelism)
    assert len(set(keys)) == max_parallelism
    assert [key_group(key, max_parallelism) for key in keys] == list(range(max_parallelism))


def _subtask(flink_key, parallelism):
    """KeyGroupRangeAssignment.computeOperatorIndexForKeyGroup."""
    return key_group(flink_key, MAX_PARALLELISM) * parallelism // MAX_PARALLELISM


@pytest.mark.parametrize("parallelism", [2, 4])
def test_flow_ids_spread_evenly_over_the_subtasks(parallelism):
    flows = [f"tcp|10.1.{i // 250}.{i % 250}|{40000 + i % 7}|10.2.0.1|8080" for i in range(20_000)]
    per_subtask = Counter(_subtask(bucket_of(flow), parallelism) for flow in flows)
    assert set(per_subtask) == set(range(parallelism))
    share = [count / len(flows) for count in per_subtask.values()]
    assert max(share) - min(share) < 0.06, per_subtask


def test_a_key_always_has_the_same_bucket():
    assert bucket_of("10.0.0.1:80-10.0.0.2:40000") == bucket_of("10.0.0.1:80-10.0.0.2:40000")
    assert all(bucket_of(f"key-{i}") in _BUCKET_KEYS for i in range(1000))


def _flow_stages():
    """The flow stages halfway through 3,000 events: requests waiting for their responses."""
    stages = {}
    for flow, record in timed_events(3000, T0)[:1500]:
        stage = stages.setdefault(flow, FlowStage(StageConfig()))
        stage.socket_data(record)
    return stages


def test_a_buckets_stages_survive_their_encoding():
    stages = _flow_stages()
    assert len(stages) > 10
    back = decode_bucket(FLOW, encode_bucket(stages), StageConfig())
    assert {key: stage.to_state() for key, stage in back.items()} == {key: stage.to_state() for key, stage in stages.items()}
    rest = timed_events(3000, T0)[1500:]
    first = {key: [] for key in stages}
    again = {key: [] for key in stages}
    for flow, record in rest:
        if flow in stages:
            first[flow] += stages[flow].socket_data(dict(record))
            again[flow] += back[flow].socket_data(dict(record))
    for key in stages:
        first[key] += stages[key].advance(T0 + 3600 * S)
        again[key] += back[key].advance(T0 + 3600 * S)
    assert {k: [s.to_record() for s in v] for k, v in again.items()} == {k: [s.to_record() for s in v] for k, v in first.items()}
    assert sum(len(v) for v in first.values()) > 100


@pytest.mark.parametrize("blob", [
    b"",
    b"not zlib",
    zlib.compress(b"not json"),
    zlib.compress(orjson.dumps([99, {}])),
    zlib.compress(orjson.dumps([1, ["a list"]])),
    zlib.compress(orjson.dumps([1, {"flow": {"sockets": 3}}])),
])
def test_bytes_that_are_not_a_buckets_encoding_are_refused(blob):
    with pytest.raises(UndecodableState):
        decode_bucket(FLOW, blob, StageConfig())


class _Worker(_Buckets):
    kind = FLOW

    def __init__(self, clock, **options):
        self.options = FlinkOptions(**options)
        self.opened, self.last_input = clock[0], None


def test_a_restored_worker_does_not_flush_its_buckets_before_its_sources_had_time_to_read_again(monkeypatch):
    # A restored bucket's ticks fire at once; its input comes when the sources read again (after a restore
    # under load, later than the idle flush): flushing then would time out the restored flows' open requests.
    clock = [500.0]
    monkeypatch.setattr("streams.flink_job.time.monotonic", lambda: clock[0])
    worker, bucket = _Worker(clock, idle_flush_s=4, source_idle_timeout_s=60), _Bucket({})
    clock[0] += 30
    assert not worker.idle(bucket, 4)  # quiet for 30 s, but no input yet since it opened
    clock[0] += 31
    assert worker.idle(bucket, 4)  # the sources' idle timeout passed: a job restored with nothing left to read flushes
    assert not worker.idle(bucket, 4)  # once per quiet spell


def test_after_its_first_input_a_worker_flushes_each_quiet_spell_once(monkeypatch):
    clock = [500.0]
    monkeypatch.setattr("streams.flink_job.time.monotonic", lambda: clock[0])
    worker, bucket = _Worker(clock, idle_flush_s=4, source_idle_timeout_s=60), _Bucket({})
    clock[0] += 1
    worker.last_input = clock[0]
    clock[0] += 3.5
    assert not worker.idle(bucket, 4)
    clock[0] += 1
    assert worker.idle(bucket, 4) and not worker.idle(bucket, 4)
    bucket.idle_flushed = False  # new input (`logged` clears it)
    worker.last_input = clock[0]
    clock[0] += 4
    assert worker.idle(bucket, 4)


class _Value:
    def __init__(self):
        self.blob = None

    def value(self):
        return self.blob

    def update(self, blob):
        self.blob = blob


class _List:
    def __init__(self, clears=True):
        self.entries, self.clears = [], clears

    def get(self):
        return list(self.entries)

    def add(self, entry):
        self.entries.append(entry)

    def clear(self):
        if self.clears:
            self.entries = []


class _Replaying(_Worker):
    """A worker whose items are strings, applied by noting them (the stages themselves are tested elsewhere)."""

    def __init__(self, snapshot, log):
        super().__init__([0.0])
        self.snapshot, self.log, self.buckets, self.applied = snapshot, log, {}, []

    def deadline_ns(self, stage):
        return None

    def apply(self, bucket, key, item, watermark_ns):
        self.applied.append(item)
        return [], None

    def replayed_item(self, body):
        return body.decode()


def _ctx(number=5):
    return type("Ctx", (), {"get_current_key": lambda self: number})()


@pytest.mark.parametrize("clears", [True, False])
def test_a_restored_bucket_replays_exactly_the_log_entries_after_its_snapshot(clears, monkeypatch):
    # A snapshot after "a", "b"; then "c", "d" logged. Restored, only "c" and "d" replay, also when the log
    # still holds what the snapshot has (a clear that did not reach the state).
    monkeypatch.setattr("streams.flink_job._SNAPSHOT_EVERY", 2)
    snapshot, log = _Value(), _List(clears)
    first = _Replaying(snapshot, log)
    bucket, _ = first.bucket(_ctx())
    for item in ("a", "b", "x", "c", "d"):  # the third entry finds the log full: a snapshot instead (it holds "x")
        first.logged(bucket, b"i", 0, "k", item.encode())
    restored = _Replaying(snapshot, log)
    restored.bucket(_ctx())
    assert restored.applied == ["c", "d"]


class _Timers:
    """Flink's timer service as a bucket sees it: pending processing-time timers, a clock."""

    def __init__(self):
        self.now, self.pending, self.registered = 1_000_000, set(), []

    def current_watermark(self):
        return 0

    def current_processing_time(self):
        return self.now

    def register_processing_time_timer(self, at):
        self.pending.add(at)
        self.registered.append(at)

    def register_event_time_timer(self, at):
        pass


class _TimerCtx:
    def __init__(self, timers):
        self.timers = timers

    def timer_service(self):
        return self.timers

    def time_domain(self):
        from pyflink.datastream import TimeDomain
        return TimeDomain.PROCESSING_TIME


def test_a_bucket_keeps_ticks_set_ahead_so_that_a_checkpoint_always_holds_one(monkeypatch):
    # PyFlink registers a timer the Python side set only after the bundle that set it (not before a
    # checkpoint): a checkpoint holds the ticks set before the last tick, never the ones set by it.
    worker, timers = _Worker([0.0], watermark_interval_s=1.0), _Timers()
    ctx, bucket = _TimerCtx(timers), _Bucket({"k": object()})
    worker.schedule(bucket, ctx)  # the bucket's first input
    assert sorted(timers.pending) == [1_001_000, 1_002_000, 1_003_000]
    for _ in range(20):
        due = min(timers.pending)
        timers.now = due + 7  # fires a little late
        timers.pending.discard(due)
        before = set(timers.pending)  # what a checkpoint at the end of this tick's bundle holds
        timers.registered.clear()
        assert worker.timer_kind(bucket, ctx, due) == "tick"
        worker.schedule(bucket, ctx)
        assert before, "a checkpoint here would hold no tick for the bucket"
        assert len(timers.registered) <= 1 and len(timers.pending) == 3  # one tick set per tick, three pending
    bucket.stages.clear()  # the bucket empties: its pending ticks fire, and none is set again
    while timers.pending:
        due = min(timers.pending)
        timers.pending.discard(due)
        worker.timer_kind(bucket, ctx, due)
        worker.schedule(bucket, ctx)
    assert bucket.tick_at is None
    bucket.stages["k"] = object()  # input again: a chain starts again
    worker.schedule(bucket, ctx)
    assert len(timers.pending) == 3


def test_a_restored_bucket_goes_on_ticking_from_a_restored_tick():
    worker, timers = _Worker([0.0], watermark_interval_s=1.0), _Timers()
    ctx, bucket = _TimerCtx(timers), _Bucket({"k": object()})  # restored: no tick known in this worker
    timers.pending = {990_000, 991_000}  # restored ticks, due long ago
    for due in sorted(timers.pending):
        timers.pending.discard(due)
        worker.timer_kind(bucket, ctx, due)
        worker.schedule(bucket, ctx)
    assert timers.pending and min(timers.pending) > timers.now  # on from now, not a catch-up through the past
    assert len(timers.pending) == 3


def test_the_wake_up_rows_reach_every_bucket():
    # after a restart the flow stage sends one row per key here: each bucket of the stages after it gets one
    assert sorted(bucket_of(key) for key in _WAKE_KEYS) == sorted(_BUCKET_KEYS)
