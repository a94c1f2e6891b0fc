"""Profile records: what the agent sends (ProcessProfile.to_record) and how a span or a workload selects them."""

import fastavro
import pytest

from producers.ebpf.profiler import ProcessProfile
from schemas.catalog import PROFILES
from tracetap.profiles import OFF_CPU, ON_CPU, Selection, folded, hotspots, where

SLEEP = ("app;main;handle;__GI___clock_nanosleep [libc.so.6];entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];"
         "__x64_sys_clock_nanosleep_[k];hrtimer_nanosleep_[k];schedule_[k];__schedule_[k]")
READ = "app;main;serve;__libc_recv [libc.so.6];entry_SYSCALL_64_after_hwframe_[k];do_syscall_64_[k];__x64_sys_recvfrom_[k];schedule_[k]"


def _record(kind, start, end, stacks, pid=7, host="node-1", workload="oms-app"):
    field = "samples" if kind == ON_CPU else "off_cpu_ns"
    return {"kind": kind, "host": host, "pid": pid, "workload": workload, "window_start": start, "window_end": end,
            "stacks": [{"tid": tid, "stack": stack, "samples": 0, "off_cpu_ns": 0, field: value} for tid, stack, value in stacks]}


def test_a_span_selects_its_thread_in_the_windows_it_overlaps():
    span = {"span_id": "s1", "host": "node-1", "pid": 7, "tid": 12, "start_time": 15_000, "end_time": 18_000, "tap_side": "SERVER_PROCESS"}
    selection = Selection.of_span(span, OFF_CPU)
    records = [
        _record(OFF_CPU, 0, 10_000, [(12, SLEEP, 1_000)]),  # before the span
        _record(OFF_CPU, 10_000, 20_000, [(12, SLEEP, 3_000), (13, READ, 9_000)]),  # its window: its thread only
        _record(OFF_CPU, 20_000, 30_000, [(12, READ, 500)]),  # after
        _record(OFF_CPU, 10_000, 20_000, [(12, SLEEP, 4_000)], pid=8),  # another process, same thread id
        _record(OFF_CPU, 10_000, 20_000, [(12, SLEEP, 5_000)], host="node-2"),  # another node
        _record(ON_CPU, 10_000, 20_000, [(12, READ, 3)]),  # the other kind
    ]
    assert folded(records, selection) == {SLEEP: 3_000}


def test_a_span_overlapping_two_windows_takes_both():
    span = {"host": "node-1", "pid": 7, "tid": 12, "start_time": 8_000, "end_time": 12_000}
    records = [_record(OFF_CPU, 0, 10_000, [(12, SLEEP, 1_000)]), _record(OFF_CPU, 10_000, 20_000, [(12, SLEEP, 2_000)])]
    assert folded(records, Selection.of_span(span, OFF_CPU)) == {SLEEP: 3_000}


def test_a_nic_span_has_no_process_to_select():
    with pytest.raises(ValueError, match="CLIENT_NIC"):
        Selection.of_span({"span_id": "n1", "tap_side": "CLIENT_NIC", "pid": None, "host": "h", "start_time": 0, "end_time": 1}, OFF_CPU)


def test_a_workload_selection_merges_its_processes_and_threads():
    records = [_record(ON_CPU, 0, 10, [(1, "app;main;a", 3), (2, "app;main;a", 2)], pid=1),
               _record(ON_CPU, 0, 10, [(5, "app;main;b", 4)], pid=5), _record(ON_CPU, 0, 10, [(9, "db;main;c", 9)], workload="redis")]
    assert folded(records, Selection(ON_CPU, 0, 10, workload="oms-app")) == {"app;main;a": 5, "app;main;b": 4}


def test_off_cpu_time_is_told_where_the_thread_waited_not_in_the_scheduler():
    assert where(SLEEP, OFF_CPU) == "__x64_sys_clock_nanosleep_[k]"
    assert where(SLEEP, ON_CPU) == "__schedule_[k]"
    assert where("app;main;busy", OFF_CPU) == "busy"  # no kernel frames: the user leaf
    assert hotspots({SLEEP: 3, READ: 1, SLEEP.replace("handle", "other"): 2}, OFF_CPU) == [
        ("__x64_sys_clock_nanosleep_[k]", 5), ("__x64_sys_recvfrom_[k]", 1)]


def test_the_record_keeps_the_largest_stacks_and_sums_the_rest_into_one():
    profile = ProcessProfile(7, "app", ON_CPU, 100, 200, 99, {(1, "app;a"): 5, (1, "app;b"): 9, (2, "app;c"): 1, (2, "app;d"): 1})
    record = profile.to_record("node-1", "oms-app", 4026, 1_000_000, max_stack_bytes=10)
    assert [(s["tid"], s["stack"], s["leaf"], s["samples"], s["off_cpu_ns"]) for s in record["stacks"]] == [
        (1, "app;b", "b", 9, 0), (1, "app;a", "a", 5, 0), (0, "app;[truncated]", "[truncated]", 2, 0)]
    assert (record["truncated_stacks"], record["total_samples"], record["total_off_cpu_ns"]) == (2, 16, 0)
    assert record["profile_id"] == "node-1|7|ON_CPU|100" and (record["workload"], record["netns_inode"]) == ("oms-app", 4026)
    assert fastavro.validation.validate(record, fastavro.parse_schema(PROFILES.schema()))


def test_an_off_cpu_record_counts_nanoseconds():
    profile = ProcessProfile(7, "app", OFF_CPU, 100, 200, 99, {(3, SLEEP): 3_000_000_000})
    record = profile.to_record("node-1", None, None, 1_000_000)
    assert record["stacks"] == [{"tid": 3, "stack": SLEEP, "leaf": "__schedule_[k]", "samples": 0, "off_cpu_ns": 3_000_000_000}]
    assert (record["total_samples"], record["total_off_cpu_ns"], record["truncated_stacks"], record["min_block_ns"]) == (0, 3_000_000_000, 0, 1_000_000)
