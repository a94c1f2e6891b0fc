"""The Flink job's buckets of keys (streams/flink_job.py): each bucket lands in its own key group, as Flink
itself assigns them, so the buckets spread over the subtasks exactly as the key groups do; and a bucket's
stages survive their encoding (streams/edge.py) and refuse bytes that are not one."""

import zlib
from collections import Counter

import orjson
import pytest

from benchmarks.core_pipeline import timed_events
from streams.edge import FLOW, decode_bucket, encode_bucket
from streams.flink_job import _BUCKET_KEYS, MAX_PARALLELISM, _bucket_keys, bucket_of, key_group
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
