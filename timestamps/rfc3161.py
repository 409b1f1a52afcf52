"""RFC 3161 time-stamping: the built-in TSA's issuer and a verifier for its tokens (and other TSAs').

Tokens are CMS SignedData over a TSTInfo, signed with ECDSA P-256 / SHA-256, carrying the ESS
signingCertificateV2 attribute (RFC 5035, RFC 5816) that `openssl ts -verify` insists on. Queries
are read and tokens built with asn1crypto, save a few fixed shapes encoded by hand where it is slow
or wrong. Verification goes through rfc3161-client, which runs OpenSSL's PKCS7_verify with the chain
checked at the token's genTime, so tokens keep verifying after the TSA certificate expires.
"""

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asn1crypto import algos, cms, core, tsp  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from rfc3161_client import PKIStatus, TimeStampResponse, VerifierBuilder, decode_timestamp_response

# Digest sizes of the imprint algorithms we stamp; SHA-1 is refused (collisions are practical).
DIGEST_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}

_GRANTED_STATUS = b"\x30\x03\x02\x01\x00"  # PKIStatusInfo { status granted }
_OID_SIGNING_CERTIFICATE_V2 = bytes.fromhex("060b2a864886f70d010910022f")  # 1.2.840.113549.1.9.16.2.47


class FailureInfo(enum.StrEnum):
    """PKIFailureInfo bits we answer with, by their RFC 3161 names."""

    BAD_ALG = "badAlg"
    BAD_REQUEST = "badRequest"
    BAD_DATA_FORMAT = "badDataFormat"
    UNACCEPTED_POLICY = "unacceptedPolicy"
    UNACCEPTED_EXTENSION = "unacceptedExtension"


_ASN1CRYPTO_FAILURE_NAMES = {
    FailureInfo.BAD_ALG: "bad_alg",
    FailureInfo.BAD_REQUEST: "bad_request",
    FailureInfo.BAD_DATA_FORMAT: "bad_data_format",
    FailureInfo.UNACCEPTED_POLICY: "unaccepted_policy",
    FailureInfo.UNACCEPTED_EXTENSION: "unaccepted_extensions",
}


class TokenError(ValueError):
    """A time-stamp token that cannot be parsed."""


class TokenVerificationError(TokenError):
    """A time-stamp token that does not verify (malformed, untrusted, or about other data)."""


@dataclass(frozen=True)
class TsaSigner:
    """What the TSA signs with: a P-256 key, its certificate, the CA chain above it, policy and accuracy."""

    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    policy_oid: str
    accuracy: timedelta

    def __post_init__(self) -> None:
        # A mismatched key or certificate would yield tokens no one can verify: refuse it up front.
        if not isinstance(self.private_key.curve, ec.SECP256R1):
            raise ValueError("the TSA key must be ECDSA P-256")
        if self.certificate.public_key() != self.private_key.public_key():
            raise ValueError("the TSA certificate is not for the TSA private key")
        if self.accuracy < timedelta(0):
            raise ValueError("accuracy cannot be negative")


@dataclass(frozen=True)
class IssueResult:
    """A TimeStampResp and, when granted, the token inside it."""

    reply_der: bytes
    token_der: bytes | None
    status: PKIStatus
    fail_info: FailureInfo | None


@dataclass(frozen=True)
class TokenInfo:
    """The TSTInfo of a token."""

    gen_time: datetime
    serial: int
    policy_oid: str
    hash_algorithm: str
    message_imprint: bytes
    nonce: int | None
    accuracy: timedelta | None


class _RejectedQueryError(Exception):
    def __init__(self, failure: FailureInfo, text: str) -> None:
        super().__init__(text)
        self.failure = failure
        self.text = text


def issue_reply(query_der: bytes, *, signer: TsaSigner, serial: int, gen_time: datetime) -> IssueResult:
    """Answer a DER TimeStampReq: a granted token, or a rejection saying why; never raises on a bad query."""
    if serial < 0:
        raise ValueError("serial numbers are non-negative")
    if gen_time.tzinfo is None:
        raise ValueError("gen_time must be timezone-aware")
    try:
        request = _checked_request(query_der, signer.policy_oid)
    except _RejectedQueryError as rejection:
        return _rejection_reply(rejection)
    token_der = _token(request, signer=signer, serial=serial, gen_time=gen_time)
    # Spliced rather than re-encoded: the token inside the reply is byte for byte the one we keep.
    return IssueResult(
        reply_der=_tlv(0x30, _GRANTED_STATUS + token_der),
        token_der=token_der,
        status=PKIStatus.GRANTED,
        fail_info=None,
    )


def build_query(
    digest: bytes,
    *,
    hash_name: str = "sha256",
    nonce: int | None = None,
    cert_req: bool = True,
    policy_oid: str | None = None,
) -> bytes:
    """A DER TimeStampReq for `digest` (made with `hash_name`)."""
    if DIGEST_SIZES.get(hash_name) != len(digest):
        raise ValueError(f"a {hash_name} digest of {len(digest)} bytes cannot be time-stamped")
    if nonce is not None and nonce < 0:
        raise ValueError("the nonce must be non-negative")
    fields: dict[str, Any] = {
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": hash_name}, "hashed_message": digest},
        "cert_req": cert_req,
    }
    if policy_oid is not None:
        fields["req_policy"] = policy_oid
    if nonce is not None:
        fields["nonce"] = nonce
    der: bytes = tsp.TimeStampReq(fields).dump()
    return der


def parse_token(token_der: bytes) -> TokenInfo:
    """The TSTInfo of a token, unverified (for display and bookkeeping)."""
    return _token_info(_decode(token_der))


def verify_token(
    token_der: bytes,
    *,
    roots: Sequence[x509.Certificate],
    digest: bytes | None = None,
    data: bytes | None = None,
    nonce: int | None = None,
    leaf: x509.Certificate | None = None,
) -> TokenInfo:
    """Verify a token's signature and chain (at its genTime) and what it stamps; return its TSTInfo.

    `digest` or `data` (hashed with the token's algorithm) is what the token must stamp; with
    neither, only the signature and the chain are checked. `leaf` is the TSA certificate, needed
    when the token carries none (issued for a query with certReq false).
    """
    if not roots:
        raise TokenVerificationError("no trusted root certificates")
    response = _decode(token_der, error=TokenVerificationError)
    info = _token_info(response)
    expected = info.message_imprint if digest is None else digest
    if data is not None:
        if info.hash_algorithm not in DIGEST_SIZES:
            raise TokenVerificationError(f"cannot hash data with {info.hash_algorithm}")
        if hashlib.new(info.hash_algorithm, data).digest() != expected:
            raise TokenVerificationError("the token stamps other data")
    verifier = VerifierBuilder(roots=list(roots), tsa_certificate=leaf, nonce=nonce).build()
    try:
        verifier.verify(response, expected)
    # rfc3161-client raises VerificationError, ValueError from OpenSSL, and more from odd certificates.
    except Exception as exc:
        raise TokenVerificationError(f"the token does not verify: {exc}") from exc
    _check_signing_certificate(token_der, leaf)
    return info


def _checked_request(query_der: bytes, policy_oid: str) -> Any:
    """The parsed TimeStampReq, or a _RejectedQueryError with the failure OpenSSL's TSA would report."""
    try:
        request = tsp.TimeStampReq.load(query_der, strict=True)
        request.native  # noqa: B018 -- asn1crypto parses lazily: force every field now
    # asn1crypto raises ValueError, TypeError, OverflowError... depending on the damage.
    except Exception as exc:
        raise _RejectedQueryError(FailureInfo.BAD_DATA_FORMAT, "Bad request format.") from exc
    # asn1crypto tolerates BER lengths and unknown trailing fields; the imprint is copied into the
    # token byte for byte, so anything but canonical DER would make an unparsable token.
    if request.dump(force=True) != query_der:
        raise _RejectedQueryError(FailureInfo.BAD_DATA_FORMAT, "Bad request format: not DER.")
    if int(request["version"]) != 1:
        raise _RejectedQueryError(FailureInfo.BAD_REQUEST, "Bad request version.")
    # Parameters other than NULL or absent never get here: asn1crypto refuses them while parsing.
    name = algos.DigestAlgorithmId.map(request["message_imprint"]["hash_algorithm"]["algorithm"].dotted)
    if name not in DIGEST_SIZES:
        raise _RejectedQueryError(FailureInfo.BAD_ALG, "Message digest algorithm is not supported.")
    if len(request["message_imprint"]["hashed_message"].native) != DIGEST_SIZES[name]:
        raise _RejectedQueryError(FailureInfo.BAD_DATA_FORMAT, "Bad message digest.")
    requested_policy = request["req_policy"]
    if not isinstance(requested_policy, core.Void) and requested_policy.dotted != policy_oid:
        raise _RejectedQueryError(FailureInfo.UNACCEPTED_POLICY, "Requested policy is not supported.")
    if request["extensions"].native:
        raise _RejectedQueryError(FailureInfo.UNACCEPTED_EXTENSION, "Unsupported extension.")
    nonce = request["nonce"].native
    if nonce is not None and nonce < 0:
        raise _RejectedQueryError(FailureInfo.BAD_DATA_FORMAT, "Negative nonce.")
    return request


def _rejection_reply(rejection: _RejectedQueryError) -> IssueResult:
    status = tsp.PKIStatusInfo(
        {
            "status": "rejection",
            "status_string": [rejection.text],
            "fail_info": tsp.PKIFailureInfo({_ASN1CRYPTO_FAILURE_NAMES[rejection.failure]}),
        }
    )
    return IssueResult(
        # asn1crypto wrongly makes timeStampToken mandatory in TimeStampResp: encode the SEQUENCE here.
        reply_der=_tlv(0x30, status.dump()),
        token_der=None,
        status=PKIStatus.REJECTION,
        fail_info=rejection.failure,
    )


def _token(request: Any, *, signer: TsaSigner, serial: int, gen_time: datetime) -> bytes:
    """The DER ContentInfo (SignedData over TSTInfo) answering a checked request."""
    # Whole seconds: within the stated accuracy, and the form every verifier parses.
    gen_time = gen_time.astimezone(UTC).replace(microsecond=0)
    fields: dict[str, Any] = {
        "version": "v1",
        "policy": signer.policy_oid,
        # Copied as received: openssl compares it with the query's, parameters included.
        "message_imprint": tsp.MessageImprint.load(request["message_imprint"].dump()),
        "serial_number": serial,
        "gen_time": gen_time,
    }
    if accuracy := _accuracy(signer.accuracy):
        fields["accuracy"] = accuracy
    if request["nonce"].native is not None:
        fields["nonce"] = request["nonce"].native
    tst_info_der = tsp.TSTInfo(fields).dump()

    cert_der = signer.certificate.public_bytes(Encoding.DER)
    cert = asn1_x509.Certificate.load(cert_der)
    signed_attrs = cms.CMSAttributes(
        [
            {"type": "content_type", "values": ["tst_info"]},
            {"type": "signing_time", "values": [_cms_time(gen_time)]},
            {"type": "message_digest", "values": [hashlib.sha256(tst_info_der).digest()]},
            _ess_attribute(signer.certificate),
        ]
    )
    # CMS signs the DER of the attributes as a SET (tag 0x31), not as the [0] they are sent in.
    signature = signer.private_key.sign(signed_attrs.dump(), ec.ECDSA(hashes.SHA256()))
    signer_info = {
        "version": "v1",
        "sid": {"issuer_and_serial_number": {"issuer": cert.issuer, "serial_number": cert.serial_number}},
        "digest_algorithm": {"algorithm": "sha256"},
        "signed_attrs": signed_attrs,
        "signature_algorithm": {"algorithm": "sha256_ecdsa"},
        "signature": signature,
    }
    signed_data: dict[str, Any] = {
        "version": "v3",
        "digest_algorithms": [{"algorithm": "sha256"}],
        "encap_content_info": {"content_type": "tst_info", "content": tsp.TSTInfo.load(tst_info_der)},
        "signer_infos": [signer_info],
    }
    # RFC 3161 §2.4.1: the certificate goes in only when the query asks for it.
    if request["cert_req"].native:
        chain = [asn1_x509.Certificate.load(c.public_bytes(Encoding.DER)) for c in signer.chain]
        signed_data["certificates"] = [cert, *chain]
    token: bytes = cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()
    return token


def _ess_attribute(cert: x509.Certificate) -> Any:
    """The signingCertificateV2 attribute naming `cert` by SHA-256 hash, issuer and serial (RFC 5035).

    Encoded by hand: asn1crypto takes some 10 ms to build this nesting, many times the rest of a token.
    """
    issuer_serial = _tlv(0x30, _tlv(0x30, _tlv(0xA4, cert.issuer.public_bytes())) + _der_integer(cert.serial_number))
    # hashAlgorithm is left out: SHA-256 is its DEFAULT, which DER omits.
    ess_cert_id = _tlv(0x30, _tlv(0x04, hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()) + issuer_serial)
    signing_certificate = _tlv(0x30, _tlv(0x30, ess_cert_id))
    return cms.CMSAttribute.load(_tlv(0x30, _OID_SIGNING_CERTIFICATE_V2 + _tlv(0x31, signing_certificate)))


def _cms_time(moment: datetime) -> Any:
    # RFC 5652 §11.3: UTCTime through 2049, GeneralizedTime after.
    if moment.year < 2050:
        return cms.Time({"utc_time": moment})
    return cms.Time({"generalized_time": moment})


def _accuracy(accuracy: timedelta) -> dict[str, int]:
    micros_total = accuracy // timedelta(microseconds=1)
    seconds, rest = divmod(micros_total, 1_000_000)
    millis, micros = divmod(rest, 1000)
    # Zero fields are left out: millis and micros must lie in 1..999.
    parts = {"seconds": seconds, "millis": millis, "micros": micros}
    return {name: value for name, value in parts.items() if value}


def _tlv(tag: int, body: bytes) -> bytes:
    """A DER tag-length-value."""
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def _der_integer(value: int) -> bytes:
    # One spare bit for the sign, so a set top bit gets its leading zero byte.
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _decode(token_der: bytes, error: type[TokenError] = TokenError) -> TimeStampResponse:
    """rfc3161-client's view of a bare token (it reads only whole TimeStampResp messages)."""
    try:
        response = decode_timestamp_response(_tlv(0x30, _GRANTED_STATUS + token_der))
        response.tst_info  # noqa: B018 -- a token without a parsable TSTInfo fails here, not later
    except Exception as exc:
        raise error(f"not a time-stamp token: {exc}") from exc
    return response


def _token_info(response: TimeStampResponse) -> TokenInfo:
    tst = response.tst_info
    accuracy = tst.accuracy
    return TokenInfo(
        gen_time=tst.gen_time.astimezone(UTC),
        serial=tst.serial_number,
        policy_oid=tst.policy.dotted_string,
        hash_algorithm=algos.DigestAlgorithmId.map(tst.message_imprint.hash_algorithm.dotted_string),
        message_imprint=tst.message_imprint.message,
        nonce=tst.nonce,
        accuracy=None
        if accuracy is None
        else timedelta(
            seconds=accuracy.seconds or 0, milliseconds=accuracy.millis or 0, microseconds=accuracy.micros or 0
        ),
    )


def _check_signing_certificate(token_der: bytes, leaf: x509.Certificate | None) -> None:
    """The ESS signing-certificate attribute must name the certificate that signed (RFC 3161 §2.4.1).

    rfc3161-client does not check it; openssl ts -verify does.
    """
    try:
        signed_data = cms.ContentInfo.load(token_der)["content"]
        signer_info = signed_data["signer_infos"][0]
        sid = signer_info["sid"].chosen
        certificates = signed_data["certificates"]
        signer_der = next(
            (
                c.chosen.dump()
                for c in ([] if isinstance(certificates, core.Void) else certificates)
                if c.name == "certificate"
                and c.chosen.issuer == sid["issuer"]
                and c.chosen.serial_number == sid["serial_number"].native
            ),
            None,
        )
        if signer_der is None and leaf is not None:
            signer_der = leaf.public_bytes(Encoding.DER)
        attrs = {a["type"].native: a["values"][0] for a in signer_info["signed_attrs"]}
        if "signing_certificate_v2" in attrs:
            first = attrs["signing_certificate_v2"]["certs"][0]
            hash_name = first["hash_algorithm"]["algorithm"].native
        elif "signing_certificate" in attrs:
            first = attrs["signing_certificate"]["certs"][0]
            hash_name = "sha1"
        else:
            raise TokenVerificationError("the token has no ESS signing-certificate attribute")
        matches = signer_der is not None and hashlib.new(hash_name, signer_der).digest() == first["cert_hash"].native
    except TokenVerificationError:
        raise
    except Exception as exc:
        raise TokenVerificationError(f"unreadable signed attributes: {exc}") from exc
    if not matches:
        raise TokenVerificationError("the ESS signing-certificate attribute names another certificate")
