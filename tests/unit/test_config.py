from pathlib import Path

import pytest

from tracetap.config import Secret, describe, load_settings
from tracetap.errors import ConfigError


def test_defaults_point_at_the_local_stack():
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.registry.url == "http://127.0.0.1:8081/apis/ccompat/v7"
    assert settings.elasticsearch.hosts == ["http://127.0.0.1:9200"]
    assert settings.stack.kafka_port == 9092 and settings.stack.registry_port == 8081 and settings.stack.elasticsearch_port == 9200


def test_environment_overrides_the_file_which_overrides_defaults():
    settings = load_settings(
        {"kafka": {"bootstrap_servers": "file:9092", "client_properties": {"linger.ms": 5}}, "stack": {"kafka_port": 1111}},
        {"TRACETAP_KAFKA__BOOTSTRAP_SERVERS": "env:9092", "UNRELATED": "x", "TRACETAP_CONFIG": "ignored.toml"},
    )
    assert settings.kafka.bootstrap_servers == "env:9092"
    assert settings.kafka.client_properties == {"linger.ms": "5"}
    assert settings.stack.kafka_port == 1111


def test_environment_values_are_parsed_to_the_field_type():
    settings = load_settings({}, {
        "TRACETAP_ELASTICSEARCH__HOSTS": "https://a:9200, https://b:9200",
        "TRACETAP_ELASTICSEARCH__VERIFY_CERTS": "false",
        "TRACETAP_ELASTICSEARCH__REQUEST_TIMEOUT_S": "2.5",
        "TRACETAP_KAFKA__CLIENT_PROPERTIES": '{"socket.timeout.ms": 1000}',
        "TRACETAP_STACK__STATE_DIR": "/srv/tracetap",
    })
    assert settings.elasticsearch.hosts == ["https://a:9200", "https://b:9200"]
    assert settings.elasticsearch.verify_certs is False
    assert settings.elasticsearch.request_timeout_s == 2.5
    assert settings.kafka.client_properties == {"socket.timeout.ms": "1000"}
    assert settings.stack.state_dir == Path("/srv/tracetap")


@pytest.mark.parametrize(("file_data", "environ", "field", "reason"), [
    ({"kafka": {"bootstrap_server": "x:1"}}, {}, "kafka.bootstrap_server", "did you mean bootstrap_servers"),
    ({"kafak": {}}, {}, "kafak", "unknown section"),
    ({}, {"TRACETAP_STACK__KAFKA_PORT": "ninety"}, "stack.kafka_port", "'ninety' is not a whole number"),
    ({"stack": {"kafka_port": 70000}}, {}, "stack.kafka_port", "not a TCP port"),
    ({"stack": {"registry_port": 9092}}, {}, "stack", "must all differ"),
    ({"kafka": {"security_protocol": "TLS"}}, {}, "kafka.security_protocol", "not one of"),
    ({"kafka": {"security_protocol": "SASL_SSL"}}, {}, "kafka.sasl_mechanism", "required"),
    ({"kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u"}}, {},
     "kafka.sasl_username", "TRACETAP_KAFKA__SASL_PASSWORD"),
    ({"elasticsearch": {"api_key": "k", "username": "u", "password": "p"}}, {}, "elasticsearch.api_key", "not both"),
    ({"elasticsearch": {"hosts": ["localhost:9200"]}}, {}, "elasticsearch.hosts", "http://"),
    ({"registry": {"url": "localhost:8081"}}, {}, "registry.url", "http://"),
    ({"elasticsearch": {"verify_certs": "yes"}}, {}, "elasticsearch.verify_certs", "not a boolean"),
    ({"log": {"level": "LOUD"}}, {}, "log.level", "not one of"),
])
def test_invalid_settings_name_the_field_and_the_reason(file_data, environ, field, reason):
    with pytest.raises(ConfigError) as error:
        load_settings(file_data, environ)
    assert error.value.field == field
    assert reason in error.value.reason


def test_sasl_and_tls_settings_are_accepted_as_given():
    settings = load_settings({"kafka": {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "svc",
        "ssl_ca_location": "/etc/ca.pem"}}, {"TRACETAP_KAFKA__SASL_PASSWORD": "s3cret"})
    assert settings.kafka.sasl_password == "s3cret"
    assert settings.kafka.ssl_ca_location == Path("/etc/ca.pem")


def test_secrets_are_masked_when_shown():
    settings = load_settings({"elasticsearch": {"username": "elastic"}},
                             {"TRACETAP_ELASTICSEARCH__PASSWORD": "hunter2", "TRACETAP_REGISTRY__BASIC_AUTH_USER_INFO": "u:pw"})
    assert isinstance(settings.elasticsearch.password, Secret)
    shown = describe(settings)
    assert shown["elasticsearch"]["password"] == "****"
    assert shown["registry"]["basic_auth_user_info"] == "****"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(shown)


def test_redaction_rules_can_be_switched_off_by_name():
    settings = load_settings({}, {"TRACETAP_AGENT__REDACT_DISABLE": "http_cookie,redis_auth"})
    assert settings.agent.redact_disable == ["http_cookie", "redis_auth"]
    with pytest.raises(ConfigError) as error:
        load_settings({"agent": {"redact_disable": ["http_cookies"]}})
    assert error.value.field == "agent.redact_disable" and "http_cookies" in error.value.reason


def test_agent_lists_of_numbers_are_parsed_and_checked():
    assert load_settings({}, {"TRACETAP_AGENT__EXCLUDE_PORTS": "53, 6379"}).agent.exclude_ports == [53, 6379]
    with pytest.raises(ConfigError, match="not a list of whole numbers"):
        load_settings({"agent": {"exclude_ports": ["http"]}})
    with pytest.raises(ConfigError, match="power of two"):
        load_settings({"agent": {"ring_buffer_pages": 1000}})


def test_stream_tunables_come_from_the_streams_section_in_the_core_units():
    from tracetap.stages import StageConfig

    settings = load_settings({"streams": {"window_s": 5, "slow_ms": 250}},
                             {"TRACETAP_STREAMS__TRACE_GAP_S": "1.5", "TRACETAP_STREAMS__REQUEST_TIMEOUT_S": "3",
                              "TRACETAP_STREAMS__FLINK_PARALLELISM": "4", "TRACETAP_STREAMS__FLINK_BUNDLE_SIZE": "5000"})
    config = StageConfig.from_settings(settings.streams)
    assert config.windows.window_ns == 5_000_000_000
    assert config.alerts.slow_request_ns == 250_000_000
    assert config.trace_gap_ns == 1_500_000_000
    assert config.assembly.request_timeout_ns == config.nic.request_timeout_ns == 3_000_000_000
    assert config.max_out_of_order_ns == 2_000_000_000 and config.allowed_lateness_ns == 5_000_000_000
    assert settings.streams.flink_parallelism == 4 and settings.streams.flink_bundle_size == 5000


@pytest.mark.parametrize(("environ", "field"), [
    ({"TRACETAP_STREAMS__WINDOW_S": "0"}, "streams.window_s"),
    ({"TRACETAP_STREAMS__ALLOWED_LATENESS_S": "-1"}, "streams.allowed_lateness_s"),
    ({"TRACETAP_STREAMS__FLINK_PARALLELISM": "0"}, "streams.flink_parallelism"),
    ({"TRACETAP_STREAMS__FLINK_BUNDLE_SIZE": "0"}, "streams.flink_bundle_size"),
    ({"TRACETAP_STREAMS__FLINK_WATERMARK_INTERVAL_S": "0"}, "streams.flink_watermark_interval_s"),
])
def test_stream_tunables_out_of_range_are_refused(environ, field):
    with pytest.raises(ConfigError) as error:
        load_settings({}, environ)
    assert error.value.field == field
