"""TSA certificates: what RFC 3161, OpenSSL and rfc3161-client demand of the CA and the leaf."""

import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from timestamps import pki

NOW = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


class Issued(NamedTuple):
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    tsa_key: ec.EllipticCurvePrivateKey
    tsa: x509.Certificate


def _issue(now: datetime = NOW, *, ca_days: int = 3650, tsa_days: int = 365) -> Issued:
    ca_key = pki.generate_p256_key()
    ca = pki.make_ca_certificate(key=ca_key, common_name="Test Root CA", valid_days=ca_days, now=now)
    tsa_key = pki.generate_p256_key()
    tsa = pki.make_tsa_certificate(
        ca_key=ca_key, ca_cert=ca, public_key=tsa_key.public_key(), common_name="Test TSA", valid_days=tsa_days, now=now
    )
    return Issued(ca_key, ca, tsa_key, tsa)


@pytest.fixture(scope="module")
def issued() -> Issued:
    return _issue()


def test_generated_keys_are_p256() -> None:
    assert isinstance(pki.generate_p256_key().curve, ec.SECP256R1)


def test_tsa_extended_key_usage_is_critical_and_timestamping_only(issued: Issued) -> None:
    eku = issued.tsa.extensions.get_extension_for_class(x509.ExtendedKeyUsage)

    assert eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]


def test_tsa_key_usage_is_critical_signing_only(issued: Issued) -> None:
    usage = issued.tsa.extensions.get_extension_for_class(x509.KeyUsage)

    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.content_commitment
    assert not usage.value.key_cert_sign
    assert not usage.value.crl_sign


def test_tsa_certificate_is_not_a_ca(issued: Issued) -> None:
    constraints = issued.tsa.extensions.get_extension_for_class(x509.BasicConstraints)

    assert constraints.critical
    assert constraints.value.ca is False


def test_tsa_certificate_is_issued_by_the_ca(issued: Issued) -> None:
    issued.tsa.verify_directly_issued_by(issued.ca)
    aki = issued.tsa.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = issued.ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    tsa_ski = issued.tsa.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    assert aki.key_identifier == ca_ski.digest
    assert tsa_ski == x509.SubjectKeyIdentifier.from_public_key(issued.tsa_key.public_key())
    assert issued.tsa.public_key() == issued.tsa_key.public_key()
    assert issued.tsa.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test TSA"


def test_ca_is_a_critical_ca_that_signs_only_certificates_and_crls(issued: Issued) -> None:
    constraints = issued.ca.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = issued.ca.extensions.get_extension_for_class(x509.KeyUsage)

    assert constraints.critical
    assert constraints.value.ca is True
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    issued.ca.verify_directly_issued_by(issued.ca)
    assert issued.ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)


def test_validity_starts_a_little_before_now_in_whole_seconds(issued: Issued) -> None:
    start = NOW.replace(microsecond=0) - pki.CLOCK_SKEW

    assert issued.ca.not_valid_before_utc == issued.tsa.not_valid_before_utc == start
    assert issued.ca.not_valid_after_utc == start + timedelta(days=3650)
    assert issued.tsa.not_valid_after_utc == start + timedelta(days=365)


def test_tsa_certificate_never_outlives_its_ca() -> None:
    issued = _issue(ca_days=30, tsa_days=365)

    assert issued.tsa.not_valid_after_utc == issued.ca.not_valid_after_utc


def test_times_in_other_zones_are_taken_as_the_same_instant() -> None:
    in_paris = NOW.astimezone(timezone(timedelta(hours=2)))

    assert _issue(in_paris).tsa.not_valid_before_utc == NOW.replace(microsecond=0) - pki.CLOCK_SKEW


def test_explicit_serial_is_used(issued: Issued) -> None:
    tsa = pki.make_tsa_certificate(
        ca_key=issued.ca_key,
        ca_cert=issued.ca,
        public_key=issued.tsa_key.public_key(),
        common_name="Test TSA",
        valid_days=1,
        now=NOW,
        serial=4242,
    )

    assert tsa.serial_number == 4242


@pytest.mark.parametrize(
    "public_key",
    [ed25519.Ed25519PrivateKey.generate().public_key(), ec.generate_private_key(ec.SECP384R1()).public_key()],
    ids=["ed25519", "p384"],
)
def test_tsa_certificates_are_only_for_p256_keys(issued: Issued, public_key: ec.EllipticCurvePublicKey) -> None:
    with pytest.raises(ValueError, match="P-256"):
        pki.make_tsa_certificate(
            ca_key=issued.ca_key, ca_cert=issued.ca, public_key=public_key, common_name="x", valid_days=1, now=NOW
        )


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        pki.make_ca_certificate(key=pki.generate_p256_key(), common_name="x", now=datetime(2026, 1, 1))  # noqa: DTZ001


@needs_openssl
def test_openssl_accepts_the_leaf_for_timestamp_signing(tmp_path: Path) -> None:
    # given certificates valid now (openssl verify checks the current time)
    issued = _issue(datetime.now(UTC))
    (tmp_path / "ca.pem").write_bytes(issued.ca.public_bytes(Encoding.PEM))
    (tmp_path / "tsa.pem").write_bytes(issued.tsa.public_bytes(Encoding.PEM))

    # when openssl checks the chain for the timestampsign purpose (critical EKU, key usage, CA flags)
    result = subprocess.run(
        ["openssl", "verify", "-purpose", "timestampsign", "-CAfile", "ca.pem", "tsa.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )

    # then it passes
    assert result.returncode == 0, result.stderr
    assert "tsa.pem: OK" in result.stdout
