"""Packet summaries from tshark's EK lines (lines as tshark 4.0 prints them for `-T ek -e ...`; values by hand)."""

import json

import pytest

from producers.packets.agent import _capture_filter
from producers.packets.capture import _EkLineBatches, parse_drops
from producers.packets.summary import PacketSummaryDecoder, UnreadableLine
from tracetap.config import ConfigError, TapSpec, load_settings

TAPS = [TapSpec("veth-c", "client-nic", "pod-a", "frontend"), TapSpec("veth-s", "server-nic", "pod-b", "backend")]
HTTP_REQUEST = (b'{"timestamp":"1795613964996","layers":{"frame_time_epoch":["1795613964.996348986"],"frame_interface_name":["veth-c"],'
                b'"frame_len":["170"],"frame_cap_len":["170"],"ip_version":["4"],"ip_src":["10.0.0.1"],"ip_dst":["10.0.0.2"],'
                b'"ip_id":["0xe38f"],"ip_ttl":["64"],"tcp_srcport":["48994"],"tcp_dstport":["8080"],"tcp_flags":["0x0018"],'
                b'"tcp_seq_raw":["147123191"],"tcp_ack_raw":["3846158205"],"tcp_window_size_value":["64"],"tcp_len":["104"],'
                b'"http_request_method":["GET"],"http_request_uri":["/"],"http_host":["svc:8080"]}}')
DNS_ANSWER = (b'{"timestamp":"1700000001123","layers":{"frame_time_epoch":["1700000001.000000001"],"frame_interface_name":["veth-s"],'
              b'"frame_len":["87"],"frame_cap_len":["87"],"ip_version":["4"],"ip_src":["10.0.0.2"],"ip_dst":["10.0.0.1"],"ip_ttl":["64"],'
              b'"udp_srcport":["53"],"udp_dstport":["5353"],"udp_length":["53"],"dns_id":["0x4242"],"dns_flags_response":["1"],'
              b'"dns_qry_name":["missing.test"],"dns_qry_type":["28"],"dns_flags_rcode":["3"],"dns_count_answers":["0"]}}')


def test_an_http_request_segment_becomes_a_summary_keyed_by_flow():
    key, r = PacketSummaryDecoder("node-1", TAPS).decode(HTTP_REQUEST)
    assert key == "tcp|10.0.0.1|48994|10.0.0.2|8080"
    assert (r["time"], r["interface"], r["tap_point"], r["workload"], r["netns"]) == (1795613964996348986, "veth-c", "client-nic", "frontend", "pod-a")
    assert (r["ip_id"], r["ttl"], r["tcp_flags"], r["tcp_seq"], r["tcp_ack"], r["payload_bytes"]) == (0xE38F, 64, 0x18, 147123191, 3846158205, 104)
    assert (r["http_method"], r["http_uri"], r["http_host"], r["http_status"]) == ("GET", "/", "svc:8080", None)
    assert (r["truncated"], r["malformed"], r["dns_id"], r["tls_sni"]) == (False, False, None, None)


def test_a_dns_answer_names_its_type_and_rcode():
    key, r = PacketSummaryDecoder("n", TAPS).decode(DNS_ANSWER)
    assert key == "udp|10.0.0.1|5353|10.0.0.2|53"
    assert (r["dns_id"], r["dns_is_response"], r["dns_query_name"], r["dns_query_type"], r["dns_rcode"], r["dns_answer_count"]) == \
        (0x4242, True, "missing.test", "AAAA", "NXDOMAIN", 0)
    assert (r["payload_bytes"], r["tap_point"], r["tcp_seq"]) == (45, "server-nic", None)


def test_truncated_and_malformed_packets_are_flagged_with_what_was_read():
    line = json.dumps({"layers": {"frame_len": ["71"], "frame_cap_len": ["40"], "ip_src": ["10.0.0.1"], "ip_dst": ["10.0.0.2"],
                                  "udp_srcport": ["1"], "udp_dstport": ["53"], "_ws_malformed": ["[Malformed Packet: DNS]", "_ws.malformed"]}})
    _, r = PacketSummaryDecoder("n", TAPS[:1]).decode(line.encode())
    assert (r["truncated"], r["malformed"], r["malformed_reason"], r["frame_bytes"]) == (True, True, "Malformed Packet: DNS", 71)
    assert (r["interface"], r["tap_point"]) == ("veth-c", "client-nic")  # one tap: a file without interface names


def test_a_non_ip_frame_has_no_key_and_null_addresses():
    key, r = PacketSummaryDecoder("n", TAPS).decode(b'{"layers":{"frame_len":["42"],"frame_interface_name":["veth-s"]}}')
    assert key is None and (r["src_ip"], r["l4_protocol"], r["ip_version"], r["time"]) == (None, "OTHER", None, 0)


@pytest.mark.parametrize("line", [b"", b"garbage", b'{"no_layers": 1}', b"[1, 2]"])
def test_lines_that_are_not_packets_are_refused(line):
    with pytest.raises(UnreadableLine):
        PacketSummaryDecoder("n", TAPS).decode(line)


def test_the_parser_hands_on_complete_lines_and_skips_index_lines():
    parser = _EkLineBatches()
    lines, rest = parser._extract_packet_from_data(b'{"index":{}}\n{"layers":{"a":1}}\n{"layers":{"b"')
    assert lines == [b'{"layers":{"a":1}}'] and rest == b'{"layers":{"b"'
    assert parser._extract_packet_from_data(b'{"layers"') == (None, b'{"layers"')


def test_dumpcap_drop_lines_are_read():
    line = "Packets received/dropped on interface 'veth-c': 1234/56 (pcap:56/dumpcap:0/flushed:0/ps_ifdrop:0) (95.6%)"
    assert parse_drops(line) == ("veth-c", 56) and parse_drops("Capturing on 'veth-c'") is None


def test_the_pipeline_ports_are_excluded_from_every_capture():
    assert _capture_filter("tcp", {9092, 8081}) == "(tcp) and not (port 8081 or port 9092)"
    assert _capture_filter("", set()) == ""


def test_tap_specs_parse_and_bad_ones_are_config_errors():
    assert TapSpec.parse("eth0=node-nic") == TapSpec("eth0", "node-nic")
    assert TapSpec.parse("veth1@pod-a=server-nic/db") == TapSpec("veth1", "server-nic", "pod-a", "db")
    for bad in ("eth0", "=node-nic", "eth0@ns="):
        with pytest.raises(ConfigError, match="packets.taps"):
            TapSpec.parse(bad)
    with pytest.raises(ConfigError, match="twice"):
        load_settings({"packets": {"taps": ["eth0=a", "eth0=b"]}})
    settings = load_settings({}, {"TRACETAP_PACKETS__TAPS": "eth0=node-nic,veth1@pod=client-nic/web"})
    assert [t.tap_point for t in settings.packets.tap_specs()] == ["node-nic", "client-nic"]


def test_the_encoded_summary_is_the_avro_of_the_decoded_one():
    import io

    import fastavro

    from schemas.catalog import PACKETS

    decoder = PacketSummaryDecoder("n", TAPS, schema=PACKETS.schema())
    for line in (HTTP_REQUEST, DNS_ANSWER):
        key, body, time_ns = decoder.encode(line)
        read = fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(PACKETS.schema()), return_record_name=False)
        assert (key, read) == decoder.decode(line) and time_ns == read["time"]


def test_a_pod_nic_tap_labels_each_flow_by_whether_the_pod_is_its_client():
    assert TapSpec.parse("v-web@node=pod-nic/web@10.0.0.1") == TapSpec("v-web", "pod-nic", "node", "web", "10.0.0.1")
    with pytest.raises(ConfigError, match="needs the workload's address"):
        TapSpec.parse("v-web=pod-nic/web")
    client_pod = PacketSummaryDecoder("n", [TapSpec("veth-c", "pod-nic", None, "frontend", "10.0.0.1")])
    assert client_pod.decode(HTTP_REQUEST)[1]["tap_point"] == "client-nic"  # the pod sent the request
    ack = json.loads(HTTP_REQUEST)
    ack["layers"] = {k: v for k, v in ack["layers"].items() if not k.startswith("http")}
    ack["layers"].update(ip_src=["10.0.0.2"], ip_dst=["10.0.0.1"], tcp_srcport=["8080"], tcp_dstport=["48994"], tcp_flags=["0x0010"],
                         tcp_len=["0"])
    assert client_pod.decode(json.dumps(ack).encode())[1]["tap_point"] == "client-nic"  # a bare ACK: the flow's side, remembered
    server_pod = PacketSummaryDecoder("n", [TapSpec("veth-c", "pod-nic", None, "backend", "10.0.0.2")])
    assert server_pod.decode(HTTP_REQUEST)[1]["tap_point"] == "server-nic"  # the pod received it: it serves this flow
    answer = json.loads(DNS_ANSWER)
    answer["layers"]["frame_interface_name"] = ["veth-c"]
    assert server_pod.decode(json.dumps(answer).encode())[1]["tap_point"] == "server-nic"  # it sent the DNS answer
    unknown = PacketSummaryDecoder("n", [TapSpec("veth-c", "pod-nic", None, "x", "10.0.0.9")])
    assert unknown.decode(json.dumps(ack).encode())[1]["tap_point"] == "pod-nic"  # mid-flow, nothing known yet
