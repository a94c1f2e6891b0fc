"""Decoding the kernel's event structs: layouts hand-computed from socket_trace.c, values by hand."""

import io
import socket
import struct

import fastavro
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.ebpf.events import (DATA_HEADER_SIZE, LC_ACCEPT, LC_RTT, LC_STATE, Clock, DataEventEncoder, DataEventHeader,
                                   LifecycleEvent, decode_lifecycle)
from schemas.catalog import SOCKET_DATA

CLOCK = Clock(offset_ns=1_000_000_000_000)


def decode_data(header, payload, host, clock, trace_prefix, payload_filter=None):
    raw = bytes(header)[:DATA_HEADER_SIZE] + payload
    return DataEventEncoder(SOCKET_DATA.schema(), host, clock, trace_prefix, payload_filter).record(raw)


def test_payload_offset_matches_the_c_struct():
    # 6 u64 (48) + 6 u32 (24) + 3 u16 (6) + 6 u8 (6) + 3 u32 (12, from 84: aligned) + laddr 16 + raddr 16 + comm 16 = 144;
    # the payload follows (8-byte aligned, as each event in a batch starts).
    assert DATA_HEADER_SIZE == 144
    assert DataEventHeader.sample_threshold.offset == 84
    assert DataEventHeader.socket_seq.offset == 88


def test_lifecycle_struct_size_matches_the_c_struct():
    # 5 u64 (40) + 4 u32 (16) + s32 (4) + 3 u16 (6) + 6 u8 (6) + 16 + 16 + 16 = 120.
    import ctypes

    assert ctypes.sizeof(LifecycleEvent) == 120


def _data(**fields):
    h = DataEventHeader()
    h.enter_ns, h.exit_ns, h.pid, h.tid, h.fd, h.bytes = 5, 9, 100, 101, 7, 3
    h.family, h.lport, h.rport, h.protocol, h.direction, h.syscall, h.role = socket.AF_INET, 8080, 43210, 6, 0, 4, 2
    h.laddr[:4] = [10, 0, 0, 2]
    h.raddr[:4] = [10, 0, 0, 1]
    h.comm = b"server"
    for k, v in fields.items():
        setattr(h, k, v)
    return h


def test_a_server_read_becomes_a_socket_data_record_keyed_by_flow():
    key, r = decode_data(_data(has_seq=1, seq=4_000_000_000, trace_id=3, payload_len=3), b"GET", "node-1", CLOCK, trace_prefix=2)
    assert key == "tcp|10.0.0.1|43210|10.0.0.2|8080"
    assert (r["start_time"], r["end_time"]) == (1_000_000_000_005, 1_000_000_000_009)
    assert (r["direction"], r["syscall"], r["role"], r["l4_protocol"]) == ("INGRESS", "RECVFROM", "SERVER", "TCP")
    assert (r["local_ip"], r["local_port"], r["remote_ip"], r["remote_port"]) == ("10.0.0.2", 8080, "10.0.0.1", 43210)
    assert r["tcp_seq"] == 4_000_000_000
    assert r["syscall_trace_id"] == (2 << 40) | 3
    assert r["comm"] == "server" and r["payload"] == b"GET"


def test_the_sampling_threshold_and_loss_generation_reach_the_record():
    half = decode_data(_data(sample_threshold=0x8000_0000, loss_generation=3), b"", "n", CLOCK, 1)[1]
    assert (half["sample_ratio"], half["loss_generation"]) == (0.5, 3)
    every = decode_data(_data(sample_threshold=0xFFFF_FFFF), b"", "n", CLOCK, 1)[1]
    assert (every["sample_ratio"], every["loss_generation"]) == (1.0, 0)
    header = _data(sample_threshold=0x4000_0000, loss_generation=200, payload_len=0)
    read = fastavro.schemaless_reader(io.BytesIO(DataEventEncoder(SOCKET_DATA.schema(), "n", CLOCK, 1).encode(bytes(header)[:DATA_HEADER_SIZE])[1]),
                                      fastavro.parse_schema(SOCKET_DATA.schema()), return_record_name=False)
    assert (read["sample_ratio"], read["loss_generation"]) == (0.25, 200)


def test_the_encoded_record_is_the_avro_fastavro_reads_back():
    header = _data(has_seq=1, seq=77, trace_id=9, payload_len=5, cgroup_id=12)
    raw = bytes(header)[:DATA_HEADER_SIZE] + b"hello" + b"junk past payload_len"
    encoder = DataEventEncoder(SOCKET_DATA.schema(), "node-1", CLOCK, 4)
    key, body, time_ns = encoder.encode(raw)
    schema = fastavro.parse_schema(SOCKET_DATA.schema())
    read = fastavro.schemaless_reader(io.BytesIO(body), schema, return_record_name=False)
    assert read["payload"] == b"hello" and read["cgroup_id"] == 12 and read["syscall_trace_id"] == (4 << 40) | 9
    assert (key, read) == encoder.record(raw)
    assert time_ns == read["end_time"]  # the Kafka timestamp is the syscall's exit


@given(st.lists(st.integers(min_value=0, max_value=(1 << 62) - 1), min_size=6, max_size=6),
       st.binary(min_size=DATA_HEADER_SIZE - 48, max_size=DATA_HEADER_SIZE - 48 + 64))
@settings(max_examples=300)
def test_any_header_encodes_to_the_record_it_decodes_to(u64s, rest):
    # The kernel's u64s (times, inodes, ids) stay far below 2**62; the other fields take any bytes,
    # but for direction, which the kernel only sets to 0 or 1.
    encoder = DataEventEncoder(SOCKET_DATA.schema(), "n", CLOCK, 3)
    raw = bytearray(struct.pack("<6Q", *u64s) + rest)
    raw[DataEventHeader.direction.offset] &= 1
    raw = bytes(raw)
    key, body, time_ns = encoder.encode(raw)
    read = fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(SOCKET_DATA.schema()), return_record_name=False)
    assert (key, read) == encoder.record(raw) and time_ns == read["end_time"]


def test_the_payload_filter_sees_the_payload_its_socket_direction_and_the_bytes_moved():
    seen = []
    _, r = decode_data(_data(payload_len=3, bytes=10, socket_ino=555, direction=1), b"abc", "n", CLOCK, 1,
                       payload_filter=lambda *args: seen.append(args) or b"***")
    assert seen == [((555, 1), b"abc", 10)] and r["payload"] == b"***"


def test_a_socket_without_an_inode_is_a_stream_by_pid_and_fd():
    seen = []
    decode_data(_data(payload_len=3, socket_ino=0, direction=0), b"abc", "n", CLOCK, 1,
                payload_filter=lambda *args: seen.append(args) or b"abc")
    assert seen[0][0] == (100, 7, 0)


def test_udp_has_no_sequence_number_and_no_trace_without_one():
    _, r = decode_data(_data(protocol=17, has_seq=0, seq=77), b"", "n", CLOCK, 1)
    assert r["payload"] == b""
    assert (r["l4_protocol"], r["tcp_seq"], r["syscall_trace_id"]) == ("UDP", None, None)


def test_ipv4_mapped_ipv6_addresses_are_reported_as_ipv4():
    mapped = [0] * 10 + [0xFF, 0xFF, 127, 0, 0, 1]
    h = _data(family=socket.AF_INET6)
    h.laddr[:] = mapped
    h.raddr[:] = [0] * 15 + [1]
    _, r = decode_data(h, b"", "n", CLOCK, 1)
    assert (r["local_ip"], r["remote_ip"]) == ("127.0.0.1", "::1")


def _life(kind, old=0, new=0, **fields):
    e = LifecycleEvent()
    e.kind, e.oldstate, e.newstate, e.protocol, e.family = kind, old, new, 6, socket.AF_INET
    e.lport, e.rport, e.ts_ns = 43210, 8080, 1
    for k, v in fields.items():
        setattr(e, k, v)
    return e


def test_tcp_transitions_are_classified():
    kinds = {(old, new): decode_lifecycle(_life(LC_STATE, old, new), "n", CLOCK)[1]["kind"]
             for old, new in [(2, 1), (2, 7), (1, 4), (4, 7), (10, 12)]}
    assert kinds == {(2, 1): "CONNECT", (2, 7): "CONNECT_FAILED", (1, 4): "STATE_CHANGE", (4, 7): "CLOSE", (10, 12): "STATE_CHANGE"}


def test_a_refused_connect_carries_its_errno_and_a_close_its_byte_counts():
    _, failed = decode_lifecycle(_life(LC_STATE, 2, 7, error=111), "n", CLOCK)
    assert (failed["error_code"], failed["error_name"], failed["old_state"], failed["new_state"]) == (111, "ECONNREFUSED", "SYN_SENT", "CLOSE")
    _, closed = decode_lifecycle(_life(LC_STATE, 4, 7, bytes_acked=10, bytes_received=20, total_retrans=1), "n", CLOCK)
    assert (closed["bytes_sent"], closed["bytes_received"], closed["retransmits"], closed["error_code"]) == (10, 20, 1, None)


def test_events_outside_process_context_have_no_pid():
    _, rtt = decode_lifecycle(_life(LC_RTT, srtt_us=250), "n", CLOCK)
    assert (rtt["kind"], rtt["srtt_us"], rtt["pid"], rtt["comm"]) == ("RTT_SAMPLE", 250, None, None)
    _, accept = decode_lifecycle(_life(LC_ACCEPT, pid=9, comm=b"nginx", role=2), "n", CLOCK)
    assert (accept["kind"], accept["pid"], accept["comm"], accept["role"]) == ("ACCEPT", 9, "nginx", "SERVER")
