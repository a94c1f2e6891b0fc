"""streams/host.py: what both engines take from one place (topics, record kinds, output routing, registry waits)."""

import itertools

from streams.host import OUTPUTS, raw_kinds, registry_waits
from tracetap.keyed import ALERTS, NETWORK, PATHS, RED, SPANS


def test_each_raw_topic_names_the_flow_stage_method_for_its_records():
    assert raw_kinds("p.") == {"p.raw.socket-data": "socket_data", "p.raw.packets": "packet", "p.raw.socket-lifecycle": "lifecycle",
                               "p.raw.spans": "span"}


def test_every_output_a_keyed_stage_routes_to_names_a_topic_the_jobs_write():
    assert {spec.name for spec in OUTPUTS} == {SPANS, PATHS, RED, NETWORK, ALERTS, "deadletter"}


def test_a_silent_registry_is_asked_again_after_doubling_waits_up_to_30_s():
    assert list(itertools.islice(registry_waits(), 8)) == [1, 2, 4, 8, 16, 30, 30, 30]
