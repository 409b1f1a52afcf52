"""X.509 certificates for the built-in time-stamping authority: a self-signed CA and its TSA leaf.

The TSA key is ECDSA P-256 because OpenSSL's and rfc3161-client's verifiers reject Ed25519 TSA keys.
The leaf's extendedKeyUsage is timeStamping only, and critical, as RFC 3161 §2.3 requires.
"""

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Validity starts a little before `now`: a host whose clock lags the one that made the certificate
# must not stamp a genTime before notBefore (rfc3161-client checks the chain at genTime).
CLOCK_SKEW = timedelta(minutes=5)


def generate_p256_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def make_ca_certificate(
    *, key: ec.EllipticCurvePrivateKey, common_name: str, valid_days: int = 3650, now: datetime
) -> x509.Certificate:
    """A self-signed CA certificate that may sign TSA certificates (and no further CAs)."""
    not_before = _utc(now) - CLOCK_SKEW
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )


def make_tsa_certificate(
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: CertificatePublicKeyTypes,
    common_name: str,
    valid_days: int,
    now: datetime,
    serial: int | None = None,
) -> x509.Certificate:
    """A TSA leaf certificate for a P-256 `public_key`, issued by `ca_cert`; it never outlives its CA."""
    # Typed broadly so callers holding a key union need no cast; anything but P-256 is refused here.
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError("a TSA certificate needs an ECDSA P-256 public key")
    not_before = _utc(now) - CLOCK_SKEW
    not_after = min(not_before + timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, content_commitment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(
    *,
    digital_signature: bool = False,
    content_commitment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC, whole seconds (what X.509 validity can hold)."""
    if moment.tzinfo is None:
        raise ValueError("certificate times must be timezone-aware")
    return moment.astimezone(UTC).replace(microsecond=0)
