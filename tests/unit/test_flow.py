from hypothesis import given
from hypothesis import strategies as st

from tracetap.flow import Endpoint, flow_id

ips = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
endpoints = st.builds(Endpoint, ips, st.integers(0, 65535))


def test_flow_id_lists_the_lower_endpoint_first():
    assert flow_id("TCP", Endpoint("10.0.0.2", 80), Endpoint("10.0.0.1", 43210)) == "tcp|10.0.0.1|43210|10.0.0.2|80"


def test_ipv6_addresses_stay_unambiguous():
    assert flow_id("udp", Endpoint("fd00::1", 53), Endpoint("fd00::2", 5353)) == "udp|fd00::1|53|fd00::2|5353"


@given(endpoints, endpoints)
def test_both_directions_of_a_flow_share_one_id(a, b):
    assert flow_id("tcp", a, b) == flow_id("tcp", b, a)


@given(endpoints, endpoints)
def test_tcp_and_udp_flows_never_share_an_id(a, b):
    assert flow_id("tcp", a, b) != flow_id("udp", a, b)
