"""streams/host.py: what both engines take from one place (topics, record kinds, output routing, registry waits)."""

import itertools

from streams.host import OUTPUTS, output_records, raw_kinds, registry_waits
from tracetap.stages import Emitted


def test_each_raw_topic_names_the_flow_stage_method_for_its_records():
    assert raw_kinds("p.") == {"p.raw.socket-data": "socket_data", "p.raw.packets": "packet", "p.raw.socket-lifecycle": "lifecycle"}


def test_every_emitted_record_goes_to_its_topic_under_its_own_id():
    out = Emitted(spans=[{"flow_id": "f1", "span_id": "s1"}, {"flow_id": "f2", "span_id": "s2"}], paths=[{"flow_id": "f1", "path_id": "p"}],
                  red=[{"metric_id": "r"}], network=[{"metric_id": "n"}], alerts=[{"alert_id": "a"}])
    routed = [(spec.name, key) for spec, key, _ in output_records(out)]
    assert routed == [("spans", "f1"), ("spans", "f2"), ("paths", "f1"), ("metrics.red", "r"), ("metrics.network", "n"), ("alerts", "a")]
    assert {spec.name for spec in OUTPUTS} == {"spans", "paths", "metrics.red", "metrics.network", "alerts", "deadletter"}


def test_a_silent_registry_is_asked_again_after_doubling_waits_up_to_30_s():
    assert list(itertools.islice(registry_waits(), 8)) == [1, 2, 4, 8, 16, 30, 30, 30]
