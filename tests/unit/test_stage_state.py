"""The stages' state as data (streams/edge.py's encoding of the core's `to_state`): a job that stores and
reloads its state at every record gives the same answers as one that never does, and bytes that are not
that encoding (a pickle among them) are refused without being run."""

import pickle
import zlib

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from benchmarks.core_pipeline import timed_events
from streams.edge import (StageItem, decode_data, decode_flow, decode_items, decode_keyed, encode_data, encode_flow, encode_items,
                          encode_keyed)
from streams.faust_keyed import HopPartition
from tracetap.errors import UndecodableState
from tracetap.keyed import conversation_of, network_series
from tracetap.pipeline import KeyedPipeline
from tracetap.stages import FlowStage, StageConfig

S = 1_000_000_000
T0 = 1_800_000_000 * S
CONFIG = StageConfig()


def _packets(n):
    """HTTP request and response packets of one flow at a client-nic tap (as the packet agent emits them)."""
    out = []
    for i in range(n):
        base = {"host": "node", "interface": "eth0", "tap_point": "client-nic", "workload": None, "netns": None, "ip_version": 4,
                "l4_protocol": "TCP", "ip_id": None, "ttl": 64, "tcp_ack": None, "tcp_window": None, "frame_bytes": 200,
                "http_host": None, "http_uri": None, "http_method": None, "http_status": None, "dns_id": None, "dns_is_response": None,
                "dns_query_name": None, "dns_query_type": None, "dns_rcode": None, "dns_answer_count": None, "tls_sni": None,
                "app_command": None, "truncated": False, "malformed": False, "malformed_reason": None}
        out.append(dict(base, time=T0 + i * S, src_ip="10.0.0.1", src_port=40000, dst_ip="10.0.0.2", dst_port=80, tcp_flags=0x18,
                        tcp_seq=1000 + i * 100, payload_bytes=100, http_method="GET", http_uri=f"/items/{i}", http_host="shop"))
        out.append(dict(base, time=T0 + i * S + 5_000_000, src_ip="10.0.0.2", src_port=80, dst_ip="10.0.0.1", dst_port=40000,
                        tcp_flags=0x18, tcp_seq=9000 + i * 100, payload_bytes=100, http_status=200 if i % 3 else 503))
    return out


def _lifecycle(i):
    return {"host": "node", "time": T0 + i * S, "kind": ("CONNECT", "RTT_SAMPLE", "CLOSE")[i % 3], "pid": 7, "tid": 7, "comm": "app",
            "socket_id": 1, "netns_inode": 1, "l4_protocol": "TCP", "local_ip": "10.0.0.1", "local_port": 40000, "remote_ip": "10.0.0.2",
            "remote_port": 80, "role": "CLIENT", "old_state": None, "new_state": None, "error_code": None, "error_name": None,
            "srtt_us": 300, "bytes_sent": 10, "bytes_received": 20, "retransmits": None}


def _inputs():
    records = [("socket_data", key, r) for key, r in timed_events(3000, T0, spacing=1000)]
    records += [("packet", "tcp|10.0.0.1|40000|10.0.0.2|80", p) for p in _packets(40)]
    records += [("lifecycle", "tcp|10.0.0.1|40000|10.0.0.2|80", _lifecycle(i)) for i in range(12)]
    return sorted(records, key=lambda r: FlowStage.event_time_ns(r[0], r[2]))


def _run(reload):
    """The stages on the inputs, advancing every 500 records; with `reload`, every flow's state goes through its
    bytes after every record, what goes to the next stages through the private topics' encoding, and every
    key's keyed stage through its bytes at every advance (as the Faust job stores them)."""
    flows, trace, out = {}, KeyedPipeline(CONFIG), []
    for i, (kind, key, record) in enumerate(_inputs()):
        stage = flows.get(key) or FlowStage(CONFIG)
        items = [StageItem("item", conversation_of(span), ("span", span)) for span in getattr(stage, kind)(record)]
        if kind == "lifecycle":
            items.append(StageItem("item", network_series(record), ("lifecycle", record)))
        if reload:
            _, stage = decode_flow(encode_flow(stage, 3), CONFIG)
            items = decode_items(encode_items(items))
        flows[key] = stage
        for item in items:
            (trace.span if item.value[0] == "span" else trace.lifecycle)(item.value[1])
        if i % 500 == 499:
            watermark = FlowStage.event_time_ns(kind, record) - 2 * S
            for k in sorted(flows):
                for span in flows[k].advance(watermark):
                    trace.span(span)
            trace.engine_watermark(watermark)
            out.append(trace.advance())
            if reload:
                for stage_kind, stages in trace.stages.items():
                    for stage_key, keyed in stages.items():
                        applied, stages[stage_key] = decode_keyed(stage_kind, encode_keyed(keyed, i), CONFIG)
                        assert applied == i
    for k in sorted(flows):
        for span in flows[k].advance(T0 + 3600 * S):
            trace.span(span)
    out.append(trace.advance(final=True))
    return [(e.spans, e.paths, e.red, e.network, e.alerts) for e in out]


def test_stages_stored_and_reloaded_at_every_record_give_the_same_records():
    plain, reloaded = _run(False), _run(True)
    assert sum(len(batch[0]) for batch in plain) > 1500 and any(batch[2] for batch in plain) and any(batch[3] for batch in plain)
    assert reloaded == plain


def test_a_flow_state_keeps_its_partition_and_leaves_out_the_first_payload():
    stage = FlowStage(CONFIG)
    key, record = timed_events(1, T0)[0]
    stage.socket_data(record)
    blob = encode_flow(stage, 4)
    assert record["payload"].decode() not in blob.decode()  # only detection read it
    partition, again = decode_flow(blob, CONFIG)
    assert partition == 4 and again.to_state() == stage.to_state()


class _Marker:
    """Unpickled, it creates the file (as any code would run)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


_DECODERS = (lambda b: decode_flow(b, CONFIG), decode_items, lambda b: HopPartition.from_state(decode_data(b)),
             *(lambda b, kind=kind: decode_keyed(kind, b, CONFIG) for kind in ("conversation", "process", "series")))


def test_a_pickle_is_refused_by_every_decoder_and_never_run(tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Marker(control)))  # the payload does what it says when unpickled
    assert control.exists()
    marker = tmp_path / "ran"
    payload = pickle.dumps(_Marker(marker))
    for decode in _DECODERS:
        for blob in (payload, zlib.compress(payload)):
            with pytest.raises(UndecodableState):
                decode(blob)
    assert not marker.exists()


@pytest.mark.parametrize("blob", [b"[1, 0, {}]", b"[2, 0, {\"sockets\": {}}]", b"[1, 0, {\"sockets\": [], \"nics\": {}}]",
                                  b"[1, \"x\", {\"sockets\": {}, \"nics\": {}, \"applied\": {}, \"last_seen_ns\": {}, \"closing\": {}}]",
                                  b"[1, 0, {\"sockets\": {}, \"nics\": {}, \"applied\": {\"a\": \"1\"}, \"last_seen_ns\": {}, \"closing\": {}}]"])
def test_a_flow_state_of_the_wrong_shape_is_refused(blob):
    with pytest.raises(UndecodableState):
        decode_flow(blob, CONFIG)


def test_items_with_fields_of_the_wrong_type_are_refused():
    good = encode_items([StageItem("item", "net|k", ("lifecycle", _lifecycle(1))), StageItem("watermark", "raw/0", 5),
                         StageItem("watermark", "raw/1", None), StageItem("resource", "r", None)])
    assert decode_items(good)[0].value[1]["srtt_us"] == 300
    assert decode_items(good)[1:] == [StageItem("watermark", "raw/0", 5), StageItem("watermark", "raw/1", None), StageItem("resource", "r", None)]
    for bad in ([1, [["item", "k", ["lifecycle", dict(_lifecycle(1), srtt_us="300")]]]], [1, [["item", "k", ["span", ["HTTP"] * 36]]]],
                [1, [["item", "k", ["span", None, {"segments": {}, "callee_traced": 1}]]]], [1, [["item", "k", "span"]]],
                [1, [["exec", "p", {}]]], [1, [["resource", "r", {"kind": 1}]]], [1, [["item", None, ["lifecycle", _lifecycle(1)]]]],
                [1, [["watermark", "raw/0", "5"]]], [1, [["watermark", None, 5]]], [1, [["watermark", "raw/0", 1.5]]]):
        with pytest.raises(UndecodableState):
            decode_items(orjson.dumps(bad))


def test_a_partition_state_of_the_wrong_shape_is_refused():
    good = HopPartition(applied=4, watermark_ns=9, marks={"raw/0": 9, "raw/1": None})
    again = HopPartition.from_state(decode_data(encode_data(good.to_state())))
    assert (again.applied, again.watermark_ns, again.marks) == (4, 9, {"raw/0": 9, "raw/1": None})
    for bad in ({}, {"applied": 1, "watermark": 0, "marks": [], "workloads": []}, {"applied": "x", "watermark": 0, "marks": {}, "workloads": []},
                {"applied": 1, "watermark": 0, "marks": {"a": "b"}, "workloads": []}):
        with pytest.raises(UndecodableState):
            HopPartition.from_state(bad)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), _JSON)
def test_anything_but_the_encoding_is_refused_as_undecodable_state_and_nothing_else(blob, value):
    candidates = [blob, orjson.dumps(value), orjson.dumps([1, 0, value]), orjson.dumps([1, value]),
                  zlib.compress(orjson.dumps([1, value]))]
    for decode in _DECODERS:
        for data in candidates:
            try:
                decode(data)
            except UndecodableState:
                pass
