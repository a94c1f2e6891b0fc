"""The trace stage's waiting spans (tracetap.stages.PendingTraces), kept grouped as they come: completing
at a horizon gives exactly the groups a from-scratch grouping of everything waiting would give."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tracetap.model import Span, TapSide
from tracetap.stages import PendingTraces, link_keys

MS = 1_000_000
SIDES = [TapSide.CLIENT_PROCESS, TapSide.SERVER_PROCESS, TapSide.CLIENT_NIC, TapSide.SERVER_NIC]


def _span(n, side, end_ms, pid, thread, header, seq, port):
    return Span("HTTP", side, "node", end_ms * MS - MS, end_ms * MS, f"tcp|10.0.0.1|{port}|10.0.0.2|80", "TCP", "10.0.0.1", port,
                "10.0.0.2", 80, req_tcp_seq=seq, syscall_trace_id_request=thread, pid=pid,
                trace_headers={"traceparent": header} if header else {}, identity=str(n))


def _from_scratch(waiting, horizon):
    """Connected components of the waiting spans by shared link keys (a plain search), those whose last end
    is at or before the horizon, in the order of their first span; each in arrival order."""
    keys = {s.span_id: set(link_keys(s)) for s in waiting}
    left, groups = list(waiting), []
    while left:
        group, frontier = [left.pop(0)], None
        frontier = set(keys[group[0].span_id])
        grew = True
        while grew:
            grew = False
            for s in list(left):
                if keys[s.span_id] & frontier:
                    group.append(s)
                    frontier |= keys[s.span_id]
                    left.remove(s)
                    grew = True
        groups.append(sorted(group, key=waiting.index))
    done = [g for g in groups if horizon is None or max(s.end_ns for s in g) <= horizon]
    return sorted(done, key=lambda g: min((s.start_ns, s.span_id) for s in g))


_ADD = st.tuples(st.just("add"), st.sampled_from(SIDES), st.integers(1, 60), st.sampled_from([1, 2]), st.sampled_from([None, 1, 2, 3]),
                 st.sampled_from([None, "a", "b"]), st.sampled_from([None, 7, 8]), st.sampled_from([40000, 40001, 40002]))
_COMPLETE = st.tuples(st.just("complete"), st.one_of(st.none(), st.integers(0, 70)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_ADD, _ADD, _ADD, _COMPLETE), max_size=60))
def test_completing_gives_the_groups_of_a_grouping_from_scratch(ops):
    pending, waiting = PendingTraces(), []
    for n, op in enumerate(ops):
        if op[0] == "add":
            span = _span(n, *op[1:])
            pending.add(span)
            waiting.append(span)
            continue
        horizon = None if op[1] is None else op[1] * MS
        want = _from_scratch(waiting, horizon)
        got = pending.complete(horizon)
        assert [[s.span_id for s in g] for g in got] == [[s.span_id for s in g] for g in want]
        emitted = {s.span_id for g in got for s in g}
        waiting = [s for s in waiting if s.span_id not in emitted]
        assert len(pending) == len(waiting) and all(s.span_id in pending for s in waiting)
        assert pending.earliest_end() == min((s.end_ns for s in waiting), default=None)


def test_a_span_that_links_two_waiting_groups_makes_them_one_trace_that_ends_with_its_last_span():
    pending = PendingTraces()
    a = _span(1, TapSide.SERVER_PROCESS, 10, 1, 5, None, None, 40000)  # thread 5 of pid 1
    b = _span(2, TapSide.CLIENT_PROCESS, 20, 1, None, "x", None, 40001)  # header x of pid 1
    for s in (a, b):
        pending.add(s)
    assert [[s.span_id for s in g] for g in pending.complete(25 * MS)] == [[a.span_id], [b.span_id]]
    pending.add(a), pending.add(b)
    bridge = _span(3, TapSide.CLIENT_PROCESS, 40, 1, 5, "x", None, 40002)  # has both: one trace, ending at 40 ms
    pending.add(bridge)
    assert pending.complete(25 * MS) == []
    assert [[s.span_id for s in g] for g in pending.complete(40 * MS)] == [[a.span_id, b.span_id, bridge.span_id]]
    assert len(pending) == 0 and pending.earliest_end() is None


def test_a_value_every_request_carries_ties_no_more_than_max_group_of_traffic_and_the_groups_complete():
    """A client that sends one traceparent with every request, a request a millisecond: without a bound its
    spans are one group that never completes while the traffic flows."""
    pending, emitted, most = PendingTraces(max_group_ns=100 * MS), [], 0
    for n in range(1, 2001):
        pending.add(_span(n, TapSide.CLIENT_PROCESS, n, 1, None, "constant", None, 40000 + n % 3))
        for group in pending.complete((n - 200) * MS):
            starts = [s.start_ns for s in group]
            assert max(starts) - min(starts) <= 100 * MS
            emitted += group
        most = max(most, len(pending))
    assert most <= 310  # 200 ms of horizon and one open group of up to 100 ms
    emitted += [s for g in pending.complete(None) for s in g]
    assert sorted(int(s.identity) for s in emitted) == list(range(1, 2001)) and len(pending) == 0
    unbounded = PendingTraces()
    for n in range(1, 2001):
        unbounded.add(_span(n, TapSide.CLIENT_PROCESS, n, 1, None, "constant", None, 40000 + n % 3))
        assert unbounded.complete((n - 200) * MS) == []  # the contrast: one group, still growing


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_ADD, _ADD, _ADD, _COMPLETE), max_size=60), st.integers(0, 30))
def test_with_a_bound_every_span_leaves_once_and_only_when_its_group_is_due(ops, bound_ms):
    pending, waiting, left = PendingTraces(max_group_ns=bound_ms * MS), {}, []
    for n, op in enumerate(ops):
        if op[0] == "add":
            span = _span(n, *op[1:])
            if span.span_id in pending:
                continue
            pending.add(span)
            waiting[span.span_id] = span
            continue
        horizon = None if op[1] is None else op[1] * MS
        for group in pending.complete(horizon):
            assert horizon is None or max(s.end_ns for s in group) <= horizon
            for s in group:
                left.append(waiting.pop(s.span_id).span_id)
        assert len(pending) == len(waiting) and pending.earliest_end() == min((s.end_ns for s in waiting.values()), default=None)
    left += [s.span_id for g in pending.complete(None) for s in g]
    assert sorted(left) == sorted(set(left)) and len(pending) == 0
