"""DSSE envelopes (github.com/secure-systems-lab/dsse, protocol v1) over in-toto Statements, signed with ECDSA P-256.

A signature is the DER ECDSA-SHA256 signature of the pre-authentication encoding (PAE) of the payload type
and the payload, so `openssl dgst -sha256 -verify key.pem -signature sig.der pae.bin` checks it. Key ids are
the hex SHA-256 of the DER SubjectPublicKeyInfo, as `timestamps.keys.key_id` makes them.
"""

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
VERDICT_PREDICATE_TYPE = "https://modelcourt.dev/verdict/v1"

MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
MAX_ENVELOPE_BYTES = 6 * 1024 * 1024  # the base64 payload and the signatures around it
MAX_SIGNATURES = 16
MAX_SIGNATURE_BYTES = 512  # a DER P-256 signature has at most 72
MAX_PAYLOAD_TYPE_CHARS = 256
MAX_KEYID_CHARS = 256
MAX_SUBJECTS = 64

_ENVELOPE_FIELDS = {"payload", "payloadType", "signatures"}
_SIGNATURE_FIELDS = {"keyid", "sig"}
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BASE64_URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_HEX64 = re.compile(r"[0-9a-f]{64}")

PublicKeys = Mapping[str, ec.EllipticCurvePublicKey]


class DsseError(ValueError):
    """An envelope or statement that is malformed, or whose signature does not verify."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: `DSSEv1 SP LEN(type) SP type SP LEN(body) SP body`."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo (the service's key ids)."""
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def statement(
    *, subjects: Sequence[tuple[str, str]], predicate_type: str, predicate: Mapping[str, Any]
) -> dict[str, Any]:
    """An in-toto Statement v1 about `subjects` (name, lowercase hex SHA-256)."""
    if not subjects or len(subjects) > MAX_SUBJECTS:
        raise DsseError(f"a statement has 1 to {MAX_SUBJECTS} subjects, not {len(subjects)}")
    for name, digest in subjects:
        if not isinstance(name, str) or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise DsseError(f"subject {name!r} needs a digest of 64 lowercase hex digits, not {digest!r}")
    if not isinstance(predicate_type, str) or not predicate_type:
        raise DsseError("the predicate type is a non-empty string")
    if not isinstance(predicate, Mapping):
        raise DsseError("the predicate is a JSON object")
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in subjects],
        "predicateType": predicate_type,
        "predicate": dict(predicate),
    }


def statement_bytes(stmt: Mapping[str, Any]) -> bytes:
    """Canonical JSON of a statement: sorted keys, no spaces, UTF-8; NaN and infinities are refused."""
    try:
        return json.dumps(stmt, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    # ValueError: NaN or infinity; UnicodeEncodeError (a ValueError too): lone surrogates; TypeError: not JSON.
    except (ValueError, TypeError) as exc:
        raise DsseError(f"the statement is not canonical JSON: {exc}") from None


def sign_envelope(
    payload: bytes, *, payload_type: str, private_key: ec.EllipticCurvePrivateKey, keyid: str
) -> dict[str, Any]:
    """A DSSE JSON envelope carrying one ECDSA P-256 / SHA-256 signature over PAE(payload_type, payload)."""
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(private_key.curve, ec.SECP256R1):
        raise DsseError("envelopes are signed with ECDSA P-256 keys")
    _check_payload_type(payload_type)
    _check_keyid(keyid)
    if not isinstance(payload, bytes) or len(payload) > MAX_PAYLOAD_BYTES:
        raise DsseError(f"the payload is at most {MAX_PAYLOAD_BYTES} bytes")
    signature = private_key.sign(pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    return {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": payload_type,
        "signatures": [{"keyid": keyid, "sig": base64.b64encode(signature).decode()}],
    }


def envelope_bytes(envelope: Mapping[str, Any]) -> bytes:
    """An envelope as JSON text (sorted keys, two-space indent, a final newline): what gets time-stamped."""
    return (json.dumps(envelope, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def parse_envelope(data: bytes) -> dict[str, Any]:
    """Read an envelope's JSON, refusing oversized input, duplicate keys and non-finite numbers."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise DsseError(f"the envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DsseError(f"the envelope is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DsseError("the envelope is not a JSON object")
    return value


def open_envelope(
    envelope: Mapping[str, Any], public_keys: PublicKeys, *, payload_type: str | None = None
) -> tuple[bytes, tuple[str, ...]]:
    """The payload and the ids of the keys whose signatures verify.

    Signatures by keys not in `public_keys` are ignored; a signature by a known key that does not verify
    rejects the envelope, as does an envelope with no verified signature at all.
    """
    if not isinstance(envelope, Mapping):
        raise DsseError("the envelope is not a JSON object")
    if set(envelope) != _ENVELOPE_FIELDS:
        raise DsseError(f"an envelope has exactly the fields {', '.join(sorted(_ENVELOPE_FIELDS))}")
    kind = envelope["payloadType"]
    _check_payload_type(kind)
    if payload_type is not None and kind != payload_type:
        raise DsseError(f"the payload type is {kind!r}, expected {payload_type!r}")
    payload = _b64decode(envelope["payload"], "the payload", MAX_PAYLOAD_BYTES)
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or not 1 <= len(signatures) <= MAX_SIGNATURES:
        raise DsseError(f"an envelope has a list of 1 to {MAX_SIGNATURES} signatures")
    keys = _checked_keys(public_keys)
    message = pae(kind, payload)
    verified: list[str] = []
    unknown: list[str] = []
    for number, entry in enumerate(signatures, start=1):
        if not isinstance(entry, Mapping) or "sig" not in entry or not set(entry) <= _SIGNATURE_FIELDS:
            raise DsseError(f"signature {number} is not an object with a sig and an optional keyid")
        keyid = entry.get("keyid", "")
        _check_keyid(keyid)
        signature = _b64decode(entry["sig"], f"signature {number}", MAX_SIGNATURE_BYTES)
        # DSSE key ids are unauthenticated hints: without one, any trusted key may have signed.
        candidates = [keyid] if keyid else list(keys)
        known = [kid for kid in candidates if kid in keys]
        if not known:
            unknown.append(keyid or "(no keyid)")
            continue
        matching = [kid for kid in known if _verifies(keys[kid], signature, message)]
        if not matching:
            if keyid:
                raise DsseError(f"the signature by key {_short(keyid)} does not verify")
            unknown.append("(no keyid)")
            continue
        verified.extend(kid for kid in matching if kid not in verified)
    if not verified:
        trusted = ", ".join(_short(kid) for kid in keys) or "none"
        signers = ", ".join(map(_short, unknown))
        raise DsseError(f"no signature by a trusted key: signed by {signers}; trusted {trusted}")
    return payload, tuple(verified)


def verify_envelope(envelope: Mapping[str, Any], public_keys: PublicKeys, *, payload_type: str | None = None) -> bytes:
    """The payload of an envelope signed by one of `public_keys`; raises DsseError with the reason otherwise."""
    return open_envelope(envelope, public_keys, payload_type=payload_type)[0]


def _verifies(public_key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _checked_keys(public_keys: PublicKeys) -> dict[str, ec.EllipticCurvePublicKey]:
    if not isinstance(public_keys, Mapping):
        raise DsseError("the trusted keys are a mapping of key id to public key")
    for kid, key in public_keys.items():
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise DsseError(f"trusted key {_short(str(kid))} is not an ECDSA P-256 public key")
    return dict(public_keys)


def _check_payload_type(payload_type: Any) -> None:
    if not isinstance(payload_type, str) or not 0 < len(payload_type) <= MAX_PAYLOAD_TYPE_CHARS:
        raise DsseError(f"the payload type is a string of 1 to {MAX_PAYLOAD_TYPE_CHARS} characters")
    if any(not c.isprintable() for c in payload_type):
        raise DsseError("the payload type has unprintable characters")
    try:
        payload_type.encode("utf-8")
    except UnicodeEncodeError:
        raise DsseError("the payload type is not valid UTF-8") from None


def _check_keyid(keyid: Any) -> None:
    if not isinstance(keyid, str) or len(keyid) > MAX_KEYID_CHARS or any(not c.isprintable() for c in keyid):
        raise DsseError(f"a keyid is printable text of at most {MAX_KEYID_CHARS} characters")


def _b64decode(value: Any, what: str, max_bytes: int) -> bytes:
    """Standard or URL-safe base64, padded or not (DSSE allows each), in its one canonical form."""
    if not isinstance(value, str):
        raise DsseError(f"{what} is not a base64 string")
    if len(value) > 4 * (max_bytes // 3 + 1):
        raise DsseError(f"{what} is larger than {max_bytes} bytes")
    if _BASE64.fullmatch(value):
        standard = value
    elif _BASE64_URL.fullmatch(value):
        standard = value.replace("-", "+").replace("_", "/")
    else:
        raise DsseError(f"{what} is not base64")
    bare = standard.rstrip("=")
    padded = bare + "=" * (-len(bare) % 4)
    if len(bare) % 4 == 1 or standard not in (bare, padded):
        raise DsseError(f"{what} is not base64 (bad length or padding)")
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise DsseError(f"{what} is not base64") from None
    if base64.b64encode(raw).decode() != padded:
        raise DsseError(f"{what} is not canonical base64")
    if len(raw) > max_bytes:
        raise DsseError(f"{what} is larger than {max_bytes} bytes")
    return raw


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DsseError(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> float:
    raise DsseError(f"{name} is not JSON")


def _short(kid: str) -> str:
    return kid[:16] + ("…" if len(kid) > 16 else "")
