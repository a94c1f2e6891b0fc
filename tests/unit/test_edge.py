"""The guard both engines put around the core (streams/edge.py): whatever a record makes a stage method
raise becomes a dead-letter description (reason, exception type, the core's frame), and the flow's stage is
left as it was before the record, so the records after it give what they give without it."""

from benchmarks.core_pipeline import timed_events
from streams.edge import call_core, failure_of, flow_record
from tracetap.errors import InvalidEvent
from tracetap.keyed import SeriesStage
from tracetap.stages import FlowStage, StageConfig
from tracetap.workloads import WorkloadIndex

S = 1_000_000_000
T0 = 1_800_000_000 * S
CONFIG = StageConfig()


def _one_socket(n):
    """n events of one keep-alive HTTP socket (requests and responses alternate)."""
    events = [r for _, r in timed_events(n * 200, T0, spacing=1000) if r["socket_id"] == 10_000]
    return events[:n]


def _spans_after(stage, records):
    spans = []
    for record in records:
        spans += stage.socket_data(record)
    return [s.to_record() for s in spans + stage.advance(T0 + 3600 * S)]


def test_a_record_that_makes_the_assembler_raise_midway_is_undone_and_the_socket_goes_on():
    events = _one_socket(10)
    # A str payload (Avro would give bytes): the assembler has noted the event's direction when the parser chokes on it.
    bad = dict(events[4], payload=events[4]["payload"].decode())
    stage = FlowStage(CONFIG)
    for record in events[:4]:
        stage.socket_data(record)
    before = stage.to_state()

    stage, spans, failure = flow_record(stage, "socket_data", bad, CONFIG)

    assert spans == [] and failure is not None
    assert failure.reason == "CORE_ERROR" and failure.exception_type == "TypeError"
    assert failure.frame.startswith("tracetap/protocols/http1.py:") and failure.frame.endswith(" in _head")
    assert "TypeError: " in failure.detail and failure.frame in failure.detail
    assert stage.to_state() == before
    reference = FlowStage(CONFIG)
    for record in events[:4]:
        reference.socket_data(record)
    assert _spans_after(stage, events[4:]) == _spans_after(reference, events[4:])


def test_without_the_guard_the_same_record_would_have_changed_the_stage():
    """What the snapshot is for: the raise leaves the assembler half-way through the record."""
    events = _one_socket(6)
    stage = FlowStage(CONFIG)
    for record in events[:4]:
        stage.socket_data(record)
    before = stage.to_state()
    bad = dict(events[5], payload=events[5]["payload"].decode())  # a response where a request was due
    _, failure = call_core(stage.socket_data, bad)
    assert failure is not None and stage.to_state() != before


def test_a_record_the_core_refuses_is_an_invalid_record_with_the_frame_that_refused_it():
    events = _one_socket(2)
    stage = FlowStage(CONFIG)
    stage.socket_data(events[0])
    longer = dict(events[1], bytes=10)  # 133 payload bytes for a 10-byte read
    before = stage.to_state()
    stage, spans, failure = flow_record(stage, "socket_data", longer, CONFIG)
    assert (failure.reason, failure.exception_type) == ("INVALID_RECORD", "InvalidEvent")
    assert failure.frame.startswith("tracetap/model.py:") and failure.frame.endswith(" in from_record")
    assert "longer than the 10 bytes" in failure.message
    assert stage.to_state() == before


def test_a_packet_refused_after_its_tap_was_created_leaves_no_tap_behind():
    packet = {"host": "node", "interface": "eth0", "tap_point": "client-nic", "time": T0, "http_method": "GET", "http_status": None,
              "dns_id": None, "dns_is_response": None, "src_ip": None, "src_port": None, "dst_ip": "10.0.0.2", "dst_port": 80}
    stage, spans, failure = flow_record(FlowStage(CONFIG), "packet", packet, CONFIG)
    assert failure.frame.startswith("tracetap/nic.py:") and failure.exception_type == "InvalidEvent"
    assert stage.empty and stage.last_seen_ns == {}


def test_an_event_time_outside_what_a_long_holds_with_a_timeout_is_refused():
    _, failure = call_core(FlowStage.event_time_ns, "packet", {"time": 2**63 - 1})
    assert failure.reason == "INVALID_RECORD" and failure.frame.endswith(" in event_time_ns")
    _, failure = call_core(FlowStage.event_time_ns, "lifecycle", {"time": -1})
    assert failure is not None


def test_a_failure_outside_the_core_names_the_last_frame_it_has():
    def broken():
        raise ValueError("no")

    failure = failure_of(_raised(broken))
    assert failure.reason == "CORE_ERROR" and failure.frame.endswith(" in broken") and "test_edge.py" in failure.frame
    assert failure_of(_raised(lambda: _invalid())).reason == "INVALID_RECORD"


def _invalid():
    raise InvalidEvent("refused")


def _raised(fn):
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def test_a_lifecycle_event_the_series_stage_raises_on_changes_nothing():
    stage, workloads = SeriesStage(CONFIG), WorkloadIndex()
    good = {"host": "node", "time": T0, "kind": "RTT_SAMPLE", "pid": 7, "socket_id": 1, "local_ip": "10.0.0.1", "local_port": 40000,
            "remote_ip": "10.0.0.2", "remote_port": 80, "role": "CLIENT", "l4_protocol": "TCP", "srtt_us": 300, "bytes_sent": None,
            "bytes_received": None, "error_code": None, "error_name": None}
    assert call_core(stage.lifecycle, good, 0, workloads) == (True, None)
    before = stage.to_state()
    broken = dict(good, time=T0 + S, srtt_us="300")  # the same window and key: the accumulator exists
    on_time, failure = call_core(stage.lifecycle, broken, 0, workloads)
    assert failure is not None and failure.exception_type == "TypeError"
    assert stage.to_state() == before
