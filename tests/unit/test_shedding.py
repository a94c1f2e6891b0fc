"""The agent's shedding controller and the sampling arithmetic shared with the kernel (values by hand)."""

import json

from producers.ebpf.budget import Shedding
from producers.ebpf.events import SAMPLE_ALL, sample_ratio, sample_threshold
from tracetap.metrics import RedAccumulator, RedKey
from tracetap.model import Span, TapSide, span_from_state, span_to_state


def test_the_threshold_and_the_ratio_are_inverse_and_all_means_every_flow():
    assert sample_threshold(1.0) == SAMPLE_ALL and sample_ratio(SAMPLE_ALL) == 1.0
    assert sample_threshold(0.5) == 0x8000_0000 and sample_ratio(0x8000_0000) == 0.5
    assert sample_ratio(0) > 0  # a record never claims a ratio of 0 (counts are scaled by its inverse)


def test_losses_halve_the_ratio_and_room_brings_it_back_slowly():
    s = Shedding(budget_cores=0.5)
    assert s.update(cpu_cores=0.2, lost=10, backlog=0.0) == 0.5
    assert s.update(cpu_cores=0.2, lost=3, backlog=0.0) == 0.25
    assert abs(s.update(cpu_cores=0.2, lost=0, backlog=0.0) - 0.285) < 1e-9  # x1.1 + 0.01
    for _ in range(100):
        s.update(cpu_cores=0.1, lost=0, backlog=0.0)
    assert s.ratio == 1.0


def test_cpu_near_the_budget_or_a_filling_buffer_sheds_and_in_between_holds():
    s = Shedding(budget_cores=0.5)
    assert s.update(cpu_cores=0.48, lost=0, backlog=0.0) == 0.8
    assert s.update(cpu_cores=0.40, lost=0, backlog=0.0) == 0.8  # between 70% and 90% of the budget: hold
    assert abs(s.update(cpu_cores=0.1, lost=0, backlog=0.6) - 0.64) < 1e-9
    unbounded = Shedding(budget_cores=None)
    assert unbounded.update(cpu_cores=1.9, lost=0, backlog=0.0) == 1.0  # no budget: only losses and the buffer shed
    for _ in range(20):
        unbounded.update(cpu_cores=1.0, lost=1, backlog=0.0)
    assert unbounded.ratio == unbounded.min_ratio


def _span(ratio, error=None):
    return Span("HTTP", TapSide.SERVER_PROCESS, "n", 0, 1_000, "f", "TCP", "10.0.0.1", 1, "10.0.0.2", 80,
                error_class=error, sample_ratio=ratio)


def test_red_windows_scale_each_span_back_by_its_sample_ratio():
    acc = RedAccumulator()
    for span in (_span(0.5), _span(0.5, "SERVER_ERROR"), _span(1.0), _span(0.25)):
        acc.add(span)
    other = RedAccumulator()
    other.add(_span(0.1))
    acc.merge(other)
    out = acc.result(RedKey("s-p", None, None, "HTTP", "GET /"), 0, 10_000_000_000)
    assert (out["request_count"], out["estimated_request_count"]) == (5, 2 + 2 + 1 + 4 + 10)
    assert (out["error_count"], out["estimated_error_count"]) == (1, 2)
    old = RedAccumulator.from_state(acc.to_state()[:5])  # state from before sampling: every span counted once
    assert (old.estimated_requests, old.estimated_errors) == (5.0, 1.0)


def test_span_state_from_before_sampling_still_decodes_with_every_flow_captured():
    state = json.loads(json.dumps(span_to_state(_span(0.5))))  # as it is kept
    assert span_from_state(state).sample_ratio == 0.5
    del state[-1]  # tls came later
    assert span_from_state(state).tls is False and span_from_state(state).sample_ratio == 0.5
    del state[-1]  # and given_id before it
    del state[state.index(0.5)]
    assert span_from_state(state).sample_ratio == 1.0
