"""A Kafka-compatible broker behind a real TLS terminator, and the certificates for it.

tansu serves plain TCP only, so TLS comes from Debian's `stunnel4` in front of it: tansu listens
on 127.0.0.1:P1 and advertises 127.0.0.1:P2, where stunnel accepts TLS and forwards to P1. With
`verify = 2` and `CAfile`, stunnel asks every client for a certificate signed by that CA (mutual
TLS). The certificates are made here with `cryptography`: a CA, the broker's certificate (for
127.0.0.1 and localhost), a client certificate from the CA, and an impostor CA with its own client.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from workers.app.embedded import EmbeddedBroker, free_port, wait_for_port


def stunnel_binary() -> str | None:
    return shutil.which("stunnel4") or shutil.which("stunnel")


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    pem = Pem(folder / f"{stem}.pem", folder / f"{stem}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return pem


class Authority:
    """A CA that issues the broker's and the clients' certificates into `folder`."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                      .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                      .not_valid_before(now - datetime.timedelta(minutes=5))
                      .not_valid_after(now + datetime.timedelta(days=1))
                      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                      .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                   content_commitment=False, key_encipherment=False,
                                                   data_encipherment=False, key_agreement=False,
                                                   encipher_only=False, decipher_only=False), critical=True)
                      .sign(self._key, hashes.SHA256()))
        self.pem = _write(folder, name, self._cert, self._key)

    def issue(self, stem: str, *, server: bool) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(self._cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return _write(self.folder, stem, builder.sign(self._key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem  # trusts nothing the broker presents
    impostor: Pem  # a client certificate from the other CA: the broker refuses it

    @classmethod
    def make(cls, folder: Path) -> Pki:
        ca, other = Authority(folder, "keyledger-test-ca"), Authority(folder, "impostor-ca")
        return cls(ca.pem, ca.issue("broker", server=True), ca.issue("client", server=False), other.pem,
                   other.issue("impostor", server=False))


@dataclass(frozen=True)
class TlsBroker:
    bootstrap: str  # the TLS port (stunnel), the only address the broker advertises
    plain: str  # tansu itself, for nothing but the test's own setup
    pki: Pki

    def env(self, *, cert: Pem | None = None, ca: Path | None = None) -> dict[str, str]:
        """KEYLEDGER_* settings of a client over mutual TLS (the test's own client certificate by default)."""
        cert = cert or self.pki.client
        return {"KEYLEDGER_KAFKA_BOOTSTRAP": self.bootstrap, "KEYLEDGER_KAFKA_SECURITY_PROTOCOL": "SSL",
                "KEYLEDGER_KAFKA_SSL_CA_FILE": str(ca or self.pki.ca.cert),
                "KEYLEDGER_KAFKA_SSL_CERT_FILE": str(cert.cert), "KEYLEDGER_KAFKA_SSL_KEY_FILE": str(cert.key)}


@contextmanager
def tls_broker(folder: Path) -> Iterator[TlsBroker]:
    """tansu on a loopback port, stunnel requiring a client certificate in front of it."""
    binary = stunnel_binary()
    assert binary, "stunnel4 is not installed (apt-get install -y stunnel4)"
    pki = Pki.make(folder)
    tls_port = free_port()
    config = folder / "stunnel.conf"
    with EmbeddedBroker(advertised_port=tls_port, log_path=folder / "tansu.log") as broker:
        config.write_text(f"foreground = yes\npid =\noutput = {folder / 'stunnel.log'}\n\n[kafka]\n"
                          f"accept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{broker.port}\n"
                          f"cert = {pki.server.cert}\nkey = {pki.server.key}\n"
                          f"CAfile = {pki.ca.cert}\nverify = 2\n")
        stunnel = subprocess.Popen([binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(tls_port, 20, stunnel)
            yield TlsBroker(f"127.0.0.1:{tls_port}", broker.bootstrap, pki)
        finally:
            stunnel.terminate()
            try:
                stunnel.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stunnel.kill()
                stunnel.wait()


@contextmanager
def keyledger_run(groups: tuple[str, ...], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`keyledger run --group ...` as a subprocess writing `log` (its path on `.log_path`); stopped at exit."""
    import sys

    root = Path(__file__).resolve().parents[2]
    args = [sys.executable, "-m", "workers.app.cli", "run", *(a for g in groups for a in ("--group", g))]
    with open(log, "wb") as out:
        process = subprocess.Popen(args, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT)
    process.log_path = log  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
