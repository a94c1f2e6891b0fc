"""Certificates made by the tests: a CA, and certificates it signs for 127.0.0.1, written as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert_file: Path  # the certificate, then the CA's (a chain)
    key_file: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


class TestCA:
    """A CA whose certificate is `ca_file`; issue() signs a certificate for 127.0.0.1 and localhost."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, directory: Path, name: str = "tracetap test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name).public_key(self._key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                                  key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self._key, hashes.SHA256()))
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, key_password: str | None = None, key_format: str = "pkcs8", key_first: bool = False) -> Issued:
        """A certificate for `name` (its files are <name>.pem and <name>-key.pem); the key is encrypted with
        key_password if given (PKCS#8, or the traditional format with key_format="traditional"). key_first: one file
        with the key and then the chain (a Kafka broker's PEM keystore)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                               critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self._key, hashes.SHA256()))
        encryption = serialization.BestAvailableEncryption(key_password.encode()) if key_password else serialization.NoEncryption()
        private_format = serialization.PrivateFormat.PKCS8 if key_format == "pkcs8" else serialization.PrivateFormat.TraditionalOpenSSL
        key_pem = key.private_bytes(serialization.Encoding.PEM, private_format, encryption)
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM)
        key_file = self.directory / f"{name}-key.pem"
        cert_file = self.directory / f"{name}.pem"
        if key_first:
            key_file = cert_file
            cert_file.write_bytes(key_pem + chain)
        else:
            cert_file.write_bytes(chain)
            key_file.write_bytes(key_pem)
        os.chmod(key_file, 0o600)
        return Issued(cert_file, key_file, key, cert)
