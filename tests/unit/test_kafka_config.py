"""One KafkaSettings, three client libraries: the librdkafka, aiokafka (Faust) and Java (Flink) properties
schemas/kafka.py derives, each checked against values written out by hand."""

import ssl

import pytest
from cryptography.hazmat.primitives import serialization

from schemas.kafka import aiokafka_auth, client_config, faust_credentials, java_properties
from tests.certs import TestCA
from tracetap.config import Secret, load_settings
from tracetap.errors import ConfigError

SCRAM = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "svc"}


def _kafka(file_data=None, environ=None):
    return load_settings({"kafka": file_data or {}}, environ or {}).kafka


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    ca = TestCA(tmp_path_factory.mktemp("tls"))
    return ca, ca.issue("client", key_password="key-pw"), ca.issue("plain-client", key_format="traditional")


def test_a_secret_is_plain_text_only_when_revealed():
    secret = Secret("s3cret")
    assert repr(secret) == "Secret('****')"
    assert secret.reveal() == "s3cret" and type(secret.reveal()) is str


# librdkafka ------------------------------------------------------------------------------------------
def test_librdkafka_gets_the_sasl_and_tls_settings_as_plain_strings():
    kafka = _kafka({**SCRAM, "ssl_ca_location": "/etc/ca.pem", "ssl_certificate_location": "/etc/c.pem",
                    "ssl_key_location": "/etc/k.pem", "client_properties": {"linger.ms": "50"}},
                   {"TRACETAP_KAFKA__SASL_PASSWORD": "pw", "TRACETAP_KAFKA__SSL_KEY_PASSWORD": "kpw"})
    conf = client_config(kafka, **{"client.id": "x"})
    assert conf == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512",
                    "sasl.username": "svc", "sasl.password": "pw", "ssl.ca.location": "/etc/ca.pem",
                    "ssl.certificate.location": "/etc/c.pem", "ssl.key.location": "/etc/k.pem", "ssl.key.password": "kpw",
                    "linger.ms": "50", "client.id": "x"}
    assert type(conf["sasl.password"]) is str and type(conf["ssl.key.password"]) is str


def test_librdkafka_plaintext_has_only_the_servers_and_the_protocol():
    assert client_config(_kafka()) == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "plaintext"}


# aiokafka (Faust) --------------------------------------------------------------------------------------
def test_aiokafka_plaintext_and_sasl_plaintext():
    assert aiokafka_auth(_kafka()) == {"security_protocol": "PLAINTEXT"}
    kafka = _kafka({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "svc"},
                   {"TRACETAP_KAFKA__SASL_PASSWORD": "pw"})
    assert aiokafka_auth(kafka) == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                    "sasl_plain_username": "svc", "sasl_plain_password": "pw"}


def test_aiokafka_sasl_ssl_verifies_the_broker_against_the_ca(tls):
    ca, _, _ = tls
    kafka = _kafka({**SCRAM, "ssl_ca_location": str(ca.ca_file)}, {"TRACETAP_KAFKA__SASL_PASSWORD": "pw"})
    auth = aiokafka_auth(kafka)
    context = auth.pop("ssl_context")
    assert auth == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc",
                    "sasl_plain_password": "pw"}
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [dict(part[0] for part in c["subject"])["commonName"] for c in context.get_ca_certs()] == ["tracetap test CA"]


def test_aiokafka_loads_a_client_certificate_with_an_encrypted_key(tls):
    ca, client, _ = tls
    files = {"security_protocol": "SSL", "ssl_ca_location": str(ca.ca_file), "ssl_certificate_location": str(client.cert_file),
             "ssl_key_location": str(client.key_file)}
    auth = aiokafka_auth(_kafka(files, {"TRACETAP_KAFKA__SSL_KEY_PASSWORD": "key-pw"}))
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)
    with pytest.raises(ConfigError) as wrong:
        aiokafka_auth(_kafka(files, {"TRACETAP_KAFKA__SSL_KEY_PASSWORD": "not-it"}))
    assert wrong.value.field == "kafka.ssl_key_location" and str(client.cert_file) in wrong.value.reason


def test_a_missing_ca_file_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError) as error:
        aiokafka_auth(_kafka({"security_protocol": "SSL", "ssl_ca_location": str(tmp_path / "nope.pem")}))
    assert error.value.field == "kafka.ssl_ca_location" and "nope.pem" in error.value.reason


def test_faust_hands_aiokafka_the_same_arguments(tls):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    ca, client, _ = tls
    assert faust_credentials(_kafka()) is None
    sasl = _kafka({**SCRAM, "ssl_ca_location": str(ca.ca_file)}, {"TRACETAP_KAFKA__SASL_PASSWORD": "pw"})
    through_faust = credentials_to_aiokafka_auth(faust_credentials(sasl))
    assert isinstance(through_faust.pop("ssl_context"), ssl.SSLContext)
    assert through_faust == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc",
                             "sasl_plain_password": "pw"}
    tls_only = _kafka({"security_protocol": "SSL", "ssl_ca_location": str(ca.ca_file), "ssl_certificate_location": str(client.cert_file),
                       "ssl_key_location": str(client.key_file)}, {"TRACETAP_KAFKA__SSL_KEY_PASSWORD": "key-pw"})
    through_faust = credentials_to_aiokafka_auth(faust_credentials(tls_only))
    assert through_faust["security_protocol"] == "SSL" and isinstance(through_faust["ssl_context"], ssl.SSLContext)
    plain_sasl = _kafka({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "svc"},
                        {"TRACETAP_KAFKA__SASL_PASSWORD": "pw"})
    assert credentials_to_aiokafka_auth(faust_credentials(plain_sasl)) == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "svc",
        "sasl_plain_password": "pw", "ssl_context": None}


@pytest.mark.parametrize("mechanism", ["GSSAPI", "OAUTHBEARER"])
def test_mechanisms_without_a_password_are_refused_by_the_stream_job_clients(mechanism):
    kafka = _kafka({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism})
    for derive in (aiokafka_auth, java_properties):
        with pytest.raises(ConfigError) as error:
            derive(kafka)
        assert error.value.field == "kafka.sasl_mechanism" and mechanism in error.value.reason


# Java (Flink) --------------------------------------------------------------------------------------------
def test_java_sasl_ssl_with_scram_and_a_pem_truststore():
    kafka = _kafka({**SCRAM, "bootstrap_servers": "b1:9093,b2:9093", "ssl_ca_location": "/etc/ca.pem",
                    "client_properties": {"linger.ms": "50", "debug": "all"}},
                   {"TRACETAP_KAFKA__SASL_PASSWORD": 'p"w\\x'})
    assert java_properties(kafka) == {
        "bootstrap.servers": "b1:9093,b2:9093", "security.protocol": "SASL_SSL",
        "ssl.truststore.type": "PEM", "ssl.truststore.location": "/etc/ca.pem",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required username="svc" password="p\\"w\\\\x";',
        "linger.ms": "50"}


def test_java_plain_uses_the_plain_login_module():
    kafka = _kafka({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "svc"},
                   {"TRACETAP_KAFKA__SASL_PASSWORD": "pw"})
    assert java_properties(kafka) == {
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
        "sasl.jaas.config": 'org.apache.kafka.common.security.plain.PlainLoginModule required username="svc" password="pw";'}


@pytest.mark.parametrize("which", ["encrypted PKCS#8", "traditional"])
def test_java_gets_the_client_key_inline_as_unencrypted_pkcs8(tls, which):
    ca, encrypted, traditional = tls
    client = encrypted if which == "encrypted PKCS#8" else traditional
    environ = {"TRACETAP_KAFKA__SSL_KEY_PASSWORD": "key-pw"} if client is encrypted else {}
    kafka = _kafka({"security_protocol": "SSL", "ssl_ca_location": str(ca.ca_file), "ssl_certificate_location": str(client.cert_file),
                    "ssl_key_location": str(client.key_file)}, environ)
    props = java_properties(kafka)
    key_pem = props.pop("ssl.keystore.key")
    assert props == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SSL", "ssl.truststore.type": "PEM",
                     "ssl.truststore.location": str(ca.ca_file), "ssl.keystore.type": "PEM",
                     "ssl.keystore.certificate.chain": client.cert_file.read_text()}
    assert key_pem.startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, no password: what the Java client reads
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert key.private_numbers() == client.key.private_numbers()


def test_java_client_key_with_a_wrong_password_is_a_config_error(tls):
    ca, client, _ = tls
    kafka = _kafka({"security_protocol": "SSL", "ssl_certificate_location": str(client.cert_file), "ssl_key_location": str(client.key_file)},
                   {"TRACETAP_KAFKA__SSL_KEY_PASSWORD": "not-it"})
    with pytest.raises(ConfigError) as error:
        java_properties(kafka)
    assert error.value.field == "kafka.ssl_key_location" and str(client.key_file) in error.value.reason


def test_a_client_certificate_needs_its_key():
    with pytest.raises(ConfigError) as error:
        _kafka({"security_protocol": "SSL", "ssl_certificate_location": "/etc/c.pem"})
    assert error.value.field == "kafka.ssl_certificate_location"


def test_flink_sql_options_double_a_quote_inside_a_value():
    from streams.flink_job import _with

    assert _with({"sasl.jaas.config": "x password=\"it's\";"}, topic="t") == (
        "  'properties.sasl.jaas.config' = 'x password=\"it''s\";',\n  'topic' = 't'")
