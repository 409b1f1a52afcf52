"""Service keys: TSA (+ its CA), log and verdict keys, kept apart.

Private keys live in files under MODELCOURT_KEY_DIR (generated on first use)
or come from the environment (MODELCOURT_<PURPOSE>_KEY_FILE with a path, or
MODELCOURT_<PURPOSE>_KEY with PEM text). The database holds only public
parts and which key is current, so retired keys stay published and old
tokens and checkpoints keep verifying after a rotation.
"""

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from timestamps import note, pki
from timestamps.models import SigningKey
from timestamps.rfc3161 import TsaSigner

logger = logging.getLogger(__name__)

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
Purpose = SigningKey.Purpose

ALGORITHMS = {
    Purpose.TSA: "ecdsa-p256-sha256",
    Purpose.TSA_CA: "ecdsa-p256-sha256",
    Purpose.LOG: "ed25519",
    Purpose.VERDICT: "ecdsa-p256-sha256",
}
TSA_CERT_DAYS = 5 * 365
CA_CERT_DAYS = 20 * 365


class KeyConfigurationError(RuntimeError):
    """A configured private key is missing, unreadable or of the wrong type."""


@dataclass(frozen=True)
class LoadedKey:
    """A current key: its public record and its private half."""

    record: SigningKey
    private_key: PrivateKey


def key_id(public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _env_name(purpose: str) -> str:
    return "MODELCOURT_" + purpose.upper().replace("-", "_") + "_KEY"


def _passphrase() -> bytes | None:
    value = os.environ.get("MODELCOURT_KEY_PASSPHRASE")
    return value.encode() if value else None


def _key_path(purpose: str, kid: str) -> Path:
    return Path(settings.MODELCOURT_KEY_DIR) / f"{purpose}-{kid[:16]}.pem"


def _parse_private(pem: bytes, purpose: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=_passphrase())
    except (ValueError, TypeError) as exc:
        raise KeyConfigurationError(f"the {purpose} private key cannot be read: {exc}") from exc
    wanted = ed25519.Ed25519PrivateKey if purpose == Purpose.LOG else ec.EllipticCurvePrivateKey
    if not isinstance(key, wanted) or (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name != "secp256r1"):
        raise KeyConfigurationError(f"the {purpose} key must be {ALGORITHMS[Purpose(purpose)]}")
    return key


def _configured_private(purpose: str) -> PrivateKey | None:
    """The key the environment pins for this purpose, if any."""
    name = _env_name(purpose)
    if pem := os.environ.get(name):
        return _parse_private(pem.encode(), purpose)
    if path := os.environ.get(name + "_FILE"):
        try:
            return _parse_private(Path(path).read_bytes(), purpose)
        except OSError as exc:
            raise KeyConfigurationError(f"{name}_FILE: cannot read {path}: {exc}") from exc
    return None


def _ec(key: PrivateKey) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyConfigurationError("expected an ECDSA P-256 key")
    return key


def _generate(purpose: str) -> PrivateKey:
    if purpose == Purpose.LOG:
        return ed25519.Ed25519PrivateKey.generate()
    return pki.generate_p256_key()


def _write_private(purpose: str, key: PrivateKey) -> Path:
    kid = key_id(key.public_key())
    path = _key_path(purpose, kid)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    passphrase = _passphrase()
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    # O_EXCL: a key file is written once and never overwritten.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return path


_private_cache: dict[str, PrivateKey] = {}


def _load_private(record: SigningKey) -> PrivateKey:
    if cached := _private_cache.get(record.kid):
        return cached
    configured = _configured_private(record.purpose)
    if configured is not None and key_id(configured.public_key()) == record.kid:
        key = configured
    else:
        path = _key_path(record.purpose, record.kid)
        try:
            key = _parse_private(path.read_bytes(), record.purpose)
        except FileNotFoundError as exc:
            raise KeyConfigurationError(
                f"the private half of the current {record.purpose} key {record.kid[:16]} is not in "
                f"{settings.MODELCOURT_KEY_DIR} nor in {_env_name(record.purpose)}[_FILE]"
            ) from exc
    _private_cache[record.kid] = key
    return key


def _certificate_for(purpose: str, key: PrivateKey) -> str:
    now = timezone.now()
    if purpose == Purpose.TSA_CA:
        cert = pki.make_ca_certificate(
            key=_ec(key), common_name=f"{settings.MODELCOURT_TSA_NAME} Root CA", valid_days=CA_CERT_DAYS, now=now
        )
    elif purpose == Purpose.TSA:
        ca = key_current(Purpose.TSA_CA)
        cert = pki.make_tsa_certificate(
            ca_key=_ec(ca.private_key),
            ca_cert=x509.load_pem_x509_certificate(ca.record.certificate_pem.encode()),
            public_key=key.public_key(),
            common_name=settings.MODELCOURT_TSA_NAME,
            valid_days=TSA_CERT_DAYS,
            now=now,
        )
    else:
        return ""
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _register(purpose: str, key: PrivateKey) -> SigningKey:
    """Make `key` the current key of `purpose`, retiring the one before."""
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    certificate = _certificate_for(purpose, key)
    now = timezone.now()
    kid = key_id(key.public_key())
    with transaction.atomic():
        SigningKey.objects.select_for_update().filter(purpose=purpose, status=SigningKey.Status.CURRENT).exclude(
            kid=kid
        ).update(status=SigningKey.Status.RETIRED, retired_at=now)
        # A key that served before (pinned again after a rotation) comes back with its old record.
        if SigningKey.objects.filter(kid=kid, purpose=purpose).update(
            status=SigningKey.Status.CURRENT, retired_at=None
        ):
            return SigningKey.objects.get(kid=kid)
        return SigningKey.objects.create(
            purpose=purpose,
            kid=kid,
            algorithm=ALGORITHMS[Purpose(purpose)],
            public_key_pem=public_pem.decode(),
            certificate_pem=certificate,
            created_at=now,
        )


def key_current(purpose: str) -> LoadedKey:
    """The current key of `purpose`, created (or imported from the environment) on first use."""
    configured = _configured_private(purpose)
    record = SigningKey.objects.filter(purpose=purpose, status=SigningKey.Status.CURRENT).first()
    if configured is not None and (record is None or record.kid != key_id(configured.public_key())):
        # A key pinned in the environment wins: deploying a new one rotates.
        logger.info("registering the %s key from the environment", purpose)
        record = _register_once(purpose, configured, write=False)
    elif record is None:
        record = _register_once(purpose, _generate(purpose), write=True)
    return LoadedKey(record=record, private_key=_load_private(record))


def _register_once(purpose: str, key: PrivateKey, *, write: bool) -> SigningKey:
    """Register a first key; if another process won the race, use theirs."""
    path = _write_private(purpose, key) if write else None
    try:
        return _register(purpose, key)
    except IntegrityError:
        if path is not None:
            path.unlink(missing_ok=True)
        return SigningKey.objects.get(purpose=purpose, status=SigningKey.Status.CURRENT)


@transaction.atomic
def key_rotate(*, purpose: str, private_key_file: Path | None = None) -> SigningKey:
    """Retire the current key of `purpose` and make a new one current (rotating the CA re-issues the TSA key)."""
    if _configured_private(purpose) is not None:
        raise KeyConfigurationError(
            f"{_env_name(purpose)}[_FILE] pins the {purpose} key: rotate by deploying a new one"
        )
    if private_key_file is not None:
        key = _parse_private(private_key_file.read_bytes(), purpose)
        _write_private(purpose, key)
    else:
        key = _generate(purpose)
        _write_private(purpose, key)
    record = _register(purpose, key)
    if purpose == Purpose.TSA_CA:
        key_rotate(purpose=Purpose.TSA)
    return record


_signers: dict[str, TsaSigner] = {}


def tsa_signer() -> tuple[SigningKey, TsaSigner]:
    """The current TSA key's record and the RFC 3161 signer built from it and the CA that issued it."""
    tsa = key_current(Purpose.TSA)
    key_current(Purpose.TSA_CA)  # the embedded default makes its CA on first use
    # Parsing certificates and checking the key against them costs more than signing: once per key.
    if (signer := _signers.get(tsa.record.kid)) is None:
        certificate = x509.load_pem_x509_certificate(tsa.record.certificate_pem.encode())
        issuers = [
            x509.load_pem_x509_certificate(record.certificate_pem.encode())
            for record in SigningKey.objects.filter(purpose=Purpose.TSA_CA)
        ]
        chain = tuple(ca for ca in issuers if ca.subject == certificate.issuer and _signed_by(certificate, ca))
        if not chain:
            raise KeyConfigurationError("no published CA certificate issued the current TSA certificate")
        signer = _signers[tsa.record.kid] = TsaSigner(
            private_key=_ec(tsa.private_key),
            certificate=certificate,
            chain=chain[:1],
            policy_oid=settings.MODELCOURT_TSA_POLICY_OID,
            accuracy=timedelta(seconds=1),
        )
    return tsa.record, signer


def _signed_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def log_verifier_key(record: SigningKey) -> str:
    """The signed-note verifier key (`name+hash+base64`) of a log key."""
    public = serialization.load_pem_public_key(record.public_key_pem.encode())
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise KeyConfigurationError(f"log key {record.kid[:16]} is not Ed25519")
    return note.verifier_key(settings.MODELCOURT_LOG_ORIGIN, public)
