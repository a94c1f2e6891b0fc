"""The Faust job's keyed stages (streams/faust_keyed.py) as pure logic, with a dict for the Faust table: a
partition's time is the lowest of all its upstreams', a key is advanced only once its deadline has passed,
a record delivered again after a restart changes nothing, and state that is not this job's encoding is
reported, never run. The real topics, tables and a killed worker are in tests/e2e/test_stream_jobs.py."""

import asyncio
import pickle
from contextlib import contextmanager
from types import SimpleNamespace

from streams.edge import StageItem, encode_items
from streams.faust_keyed import _PARTITION_KEY, KeyedHop, Outbox, partition_of
from tests.unit.test_stages_alerts import MS, S, T0, config, http_span
from tracetap.keyed import CONVERSATION, PATHS, PROCESS, SERIES, SPANS, conversation_of
from tracetap.model import TapSide

UPSTREAMS = ["raw/0", "raw/1"]


class _Table(dict):
    @property
    def data(self):
        return self

    changelog_topic = SimpleNamespace(get_topic_name=lambda: "app-conversation-stages-changelog")


class _Events:
    @contextmanager
    def of(self, partition):
        yield True


def _hop(letters=None, upstreams=UPSTREAMS):
    async def dead_letter(event, reason, detail, failure=None, value=None, **where):
        letters.append((reason, where.get("key"), value))

    return KeyedHop(CONVERSATION, config(), 6, _Table(), _Events(), lambda: upstreams, dead_letter)


def _record(partition, offset, items):
    return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset, value=encode_items(items), topic="t", key=None))


def _request(seq, start):
    """One HTTP request seen at the client process and the client NIC: a conversation's two points."""
    return [http_span(side, start + d, start + 20 * MS - d, seq=seq) for side, d in ((TapSide.CLIENT_PROCESS, 0), (TapSide.CLIENT_NIC, MS))]


def _items(spans):
    return [StageItem("item", conversation_of(span), ("span", span)) for span in spans]


def _run(hop, *records):
    outbox = Outbox(6)
    routed = asyncio.run(hop.batch(list(records), outbox))
    hop.save()
    return routed, outbox


def test_time_waits_for_every_upstream_and_is_the_lowest_of_theirs():
    hop = _hop()
    spans = _request(100, T0)
    key = conversation_of(spans[0])
    part = partition_of(key, 6)
    late = T0 + 10 * S  # far past the request's trace gap
    routed, _ = _run(hop, _record(part, 0, _items(spans) + [StageItem("watermark", "raw/0", late)]))
    assert routed == [] and hop.part(part).watermark_ns == 0  # raw/1 has not reported: no time yet
    routed, _ = _run(hop, _record(part, 1, [StageItem("watermark", "raw/1", T0)]))
    assert routed == [] and hop.part(part).watermark_ns == T0  # the lowest: the request is not due
    routed, outbox = _run(hop, _record(part, 2, [StageItem("watermark", "raw/1", late)]))
    assert hop.part(part).watermark_ns == late
    assert sorted(r.to for r in routed) == [PATHS, SPANS]  # the path, and the NIC span; the process span goes on
    sent = {(stage, p): items for (stage, p), items in outbox.items.items()}
    process_items = [i for (stage, _), items in sent.items() if stage == PROCESS for i in items if i.kind == "item"]
    assert [i.value[1].tap_side for i in process_items] == [TapSide.CLIENT_PROCESS]
    # this partition's new time goes to every partition of both later stages, after the items
    for stage in (PROCESS, SERIES):
        for p in range(6):
            assert sent[(stage, p)][-1] == StageItem("watermark", f"conversation/{part}", late)


def test_a_record_delivered_again_after_its_state_was_saved_changes_nothing():
    hop = _hop()
    first, second = _request(100, T0), _request(200, T0 + 5 * MS)
    key = conversation_of(first[0])
    assert conversation_of(second[0]) == key  # one conversation: a key with several items in one record
    part = partition_of(key, 6)
    record = _record(part, 7, _items(first + second))
    _run(hop, record)
    assert sum(map(len, hop.held[key].stage.requests.values())) == 4  # every item of the record, not just the first
    saved = dict(hop.table)
    _run(hop, record)  # delivered again: Faust resumes from the last committed offset
    assert hop.replayed == 4 and dict(hop.table) == saved
    restarted = _hop()
    restarted.table.update(saved)
    asyncio.run(restarted.recover())  # a new worker, from the table
    _run(restarted, record)
    assert restarted.replayed == 4 and sum(map(len, restarted.held[key].stage.requests.values())) == 4
    assert _PARTITION_KEY + str(part).encode() in saved


def test_a_restored_key_is_advanced_when_its_deadline_passes_without_new_input():
    hop = _hop()
    spans = _request(100, T0)
    key = conversation_of(spans[0])
    part = partition_of(key, 6)
    _run(hop, _record(part, 0, _items(spans) + [StageItem("watermark", "raw/0", T0), StageItem("watermark", "raw/1", T0)]))
    restarted = _hop()
    restarted.table.update(hop.table)
    asyncio.run(restarted.recover())
    routed, _ = _run(restarted, _record(part, 1, [StageItem("watermark", s, T0 + 10 * S) for s in UPSTREAMS]))
    assert sorted(r.to for r in routed) == [PATHS, SPANS]


class _Marker:
    """Unpickled, it creates the file (as any code would run)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_state_that_is_not_the_encoding_is_dead_lettered_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps(_Marker(marker))
    letters = []
    hop = _hop(letters)
    hop.table[b"client|10.0.0.1|4000"] = payload
    hop.table[_PARTITION_KEY + b"3"] = b"[1, {\"applied\": \"x\"}]"
    asyncio.run(hop.recover())
    assert sorted((reason, key) for reason, key, _ in letters) == [("UNDECODABLE_STATE", _PARTITION_KEY + b"3"),
                                                                   ("UNDECODABLE_STATE", b"client|10.0.0.1|4000")]
    assert hop.held == {} and not marker.exists()
