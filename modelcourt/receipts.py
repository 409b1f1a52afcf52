"""Offline verification of published receipts and of owners' openings (pure: no Django, no network).

A receipt binds a commitment to an RFC 3161 token and to the Merkle log that holds the token;
an opening (or the evidence file and salt) shows what the commitment commits to.
"""

import base64
import binascii
import io
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from cryptography import x509

from ownership import commitments
from timestamps import merkle, note, rfc3161

RECEIPT_FORMAT = "modelcourt-receipt-v1"
OPENING_FORMAT = "modelcourt-opening-v1"
HOW_TO_PIN = "pin the service's keys once with `modelcourt trust pin URL`"
NO_TRUSTED_CA = (
    "no trusted TSA CA certificate: the certificates in the file itself prove nothing, a forger brings their own; "
    f"{HOW_TO_PIN} or pass --ca"
)
NO_TRUSTED_LOG_KEY = (
    f"no trusted log verifier key: the key in the file itself proves nothing, a forger brings their own; "
    f"{HOW_TO_PIN} or pass --log-key"
)


@dataclass(frozen=True)
class Check:
    """One verification step: passed or not, and why; a warning passes but deserves a reader's attention."""

    name: str
    ok: bool
    detail: str
    warning: bool = False


class _CheckError(Exception):
    """A check that failed, with the sentence to report."""


def all_ok(checks: Sequence[Check]) -> bool:
    """True when there are checks and every one passed."""
    return bool(checks) and all(check.ok for check in checks)


def verify_receipt(
    receipt: Mapping[str, Any],
    *,
    ca_pems: Sequence[str] | None,
    log_vkey: str | Sequence[str] | None,
    opening: Mapping[str, Any] | None = None,
    evidence_npz: bytes | None = None,
    salt: str | None = None,
    seed: str | None = None,
    trust_embedded_keys: bool = True,
) -> list[Check]:
    """Every check of a receipt (and of an opening or evidence + salt, when given); never raises on bad input.

    `ca_pems` are trusted TSA root certificates and `log_vkey` the log's signed-note verifier key(s): a
    checkpoint signed by any of them passes (keys rotate). Without them the receipt's own are used and a
    warning check says so, or, with `trust_embedded_keys=False`, the anchor's check fails: a forger would
    bring their own keys.
    """
    receipt = receipt if isinstance(receipt, Mapping) else {}
    checks = [_attempt("receipt format", lambda: _check_format(receipt))]
    stamp = _mapping(receipt.get("timestamp"))
    log = _mapping(receipt.get("log"))
    token = _token_bytes(stamp)

    roots, anchors = _trust_anchors(ca_pems, stamp, trust_embedded=trust_embedded_keys)
    checks.append(anchors)
    checks.append(_attempt("token signature", lambda: _check_token_signature(token, roots)))
    checks.append(_attempt("token imprint", lambda: _check_token_imprint(token, receipt.get("commitment"))))
    checks.append(_attempt("token metadata", lambda: _check_token_metadata(token, stamp)))

    vkeys, log_key = _log_keys(log_vkey, log, trust_embedded=trust_embedded_keys)
    checks.append(log_key)
    checkpoint: list[note.Checkpoint] = []
    checks.append(_attempt("checkpoint signature", lambda: _check_checkpoint(log, vkeys, checkpoint)))
    checks.append(_attempt("checkpoint size", lambda: _check_checkpoint_size(log, checkpoint)))
    checks.append(_attempt("log inclusion", lambda: _check_inclusion(token, log, checkpoint)))

    if opening is not None or evidence_npz is not None or salt is not None:
        checks.extend(_opening_checks(receipt, opening, evidence_npz=evidence_npz, salt=salt, seed=seed))
    return checks


# --- the receipt ----------------------------------------------------------------------------


def _check_format(receipt: Mapping[str, Any]) -> str:
    problems = []
    if receipt.get("format") != RECEIPT_FORMAT:
        problems.append(f"format is {receipt.get('format')!r}, not {RECEIPT_FORMAT!r}")
    for name in ("commitment", "model_digest"):
        if not _is_hex64(receipt.get(name)):
            problems.append(f"{name} is not 64 lowercase hex digits")
    if receipt.get("kind") not in commitments.KINDS:
        problems.append(f"kind {receipt.get('kind')!r} is not one of {', '.join(commitments.KINDS)}")
    fields: dict[str, dict[str, type]] = {
        "timestamp": {"token_b64": str, "serial": int, "gen_time": str, "tsa_certificates_pem": list},
        "log": {"origin": str, "index": int, "tree_size": int, "inclusion_proof": list, "checkpoint": str},
    }
    for section, expected in fields.items():
        value = receipt.get(section)
        if not isinstance(value, Mapping):
            problems.append(f"{section} is missing")
            continue
        problems.extend(
            f"{section}.{key} is missing or not a {kind.__name__}"
            for key, kind in expected.items()
            if not isinstance(value.get(key), kind) or isinstance(value.get(key), bool)
        )
    if problems:
        raise _CheckError("; ".join(problems))
    return f"{RECEIPT_FORMAT}, {receipt['kind']} commitment {receipt['commitment']}"


def _token_bytes(stamp: Mapping[str, Any]) -> bytes | None:
    try:
        return base64.b64decode(stamp.get("token_b64", ""), validate=True) or None
    except (binascii.Error, ValueError, TypeError):
        return None


def _trust_anchors(
    ca_pems: Sequence[str] | None, stamp: Mapping[str, Any], *, trust_embedded: bool
) -> tuple[list[x509.Certificate], Check]:
    name = "trust anchors"
    if ca_pems is None and not trust_embedded:
        return [], Check(name, False, NO_TRUSTED_CA)
    source = "given" if ca_pems is not None else "from the receipt"
    try:
        certificates = [cert for pem in (ca_pems or stamp.get("tsa_certificates_pem") or []) for cert in _load_pem(pem)]
    except (ValueError, TypeError) as exc:
        return [], Check(name, False, f"unreadable certificate {source}: {exc}")
    if ca_pems is None:
        # The receipt's self-signed certificates are its roots; anything else in it is the TSA leaf or an intermediate.
        roots = [cert for cert in certificates if cert.subject == cert.issuer] or certificates
    else:
        roots = certificates
    if not roots:
        return [], Check(name, False, f"no TSA root certificates {source}")
    subjects = ", ".join(cert.subject.rfc4514_string() for cert in roots)
    if ca_pems is None:
        detail = f"{subjects} taken from the receipt itself: it proves nothing unless you trust this CA (pass --ca)"
        return roots, Check(name, True, detail, warning=True)
    return roots, Check(name, True, subjects)


def _load_pem(pem: Any) -> list[x509.Certificate]:
    if not isinstance(pem, str):
        raise TypeError("a certificate is PEM text")
    return x509.load_pem_x509_certificates(pem.encode())


def _check_token_signature(token: bytes | None, roots: Sequence[x509.Certificate]) -> str:
    if token is None:
        raise _CheckError("the receipt has no readable token")
    if not roots:
        raise _CheckError("no trust anchors to verify against")
    info = rfc3161.verify_token(token, roots=roots)
    return f"signed by a TSA chaining to the trust anchors, genTime {info.gen_time.isoformat()}"


def _check_token_imprint(token: bytes | None, commitment: Any) -> str:
    if token is None:
        raise _CheckError("the receipt has no readable token")
    if not _is_hex64(commitment):
        raise _CheckError("the receipt has no valid commitment")
    info = rfc3161.parse_token(token)
    if info.hash_algorithm != "sha256":
        raise _CheckError(f"the token stamps a {info.hash_algorithm} digest, not sha256")
    if info.message_imprint != bytes.fromhex(commitment):
        raise _CheckError(f"the token stamps {info.message_imprint.hex()}, not the commitment")
    return "the token stamps the commitment (sha256)"


def _check_token_metadata(token: bytes | None, stamp: Mapping[str, Any]) -> str:
    if token is None:
        raise _CheckError("the receipt has no readable token")
    info = rfc3161.parse_token(token)
    problems = []
    if stamp.get("serial") != info.serial:
        problems.append(f"serial {stamp.get('serial')!r} but the token says {info.serial}")
    try:
        matches = datetime.fromisoformat(stamp.get("gen_time", "")) == info.gen_time
    except (TypeError, ValueError):
        matches = False
    if not matches:
        problems.append(f"gen_time {stamp.get('gen_time')!r} but the token says {info.gen_time.isoformat()}")
    if problems:
        raise _CheckError("; ".join(problems))
    return f"serial {info.serial}, genTime {info.gen_time.isoformat()}"


# --- the log --------------------------------------------------------------------------------


def _log_keys(
    log_vkey: str | Sequence[str] | None, log: Mapping[str, Any], *, trust_embedded: bool
) -> tuple[list[str], Check]:
    name = "log key"
    if log_vkey is None and not trust_embedded:
        return [], Check(name, False, NO_TRUSTED_LOG_KEY)
    given: Any = log_vkey if log_vkey is not None else log.get("verifier_key")
    candidates: list[Any] = [given] if isinstance(given, str) else list(given) if isinstance(given, Sequence) else []
    vkeys = [vkey.strip() for vkey in candidates if isinstance(vkey, str)]
    if not vkeys or len(vkeys) != len(candidates):
        source = "given" if log_vkey is not None else "in the receipt"
        return [], Check(name, False, f"no log verifier key {source}, or one that is not text")
    try:
        names = sorted({note.parse_verifier_key(vkey)[0] for vkey in vkeys})
    except note.NoteError as exc:
        return [], Check(name, False, str(exc))
    if log_vkey is None:
        detail = f"{names[0]} taken from the receipt itself: it proves nothing unless you trust it (pass --log-key)"
        return vkeys, Check(name, True, detail, warning=True)
    count = f" ({len(vkeys)} keys)" if len(vkeys) > 1 else ""
    return vkeys, Check(name, True, ", ".join(names) + count)


def _check_checkpoint(log: Mapping[str, Any], vkeys: Sequence[str], out: list[note.Checkpoint]) -> str:
    if not vkeys:
        raise _CheckError("no usable log verifier key")
    signed = log.get("checkpoint")
    if not isinstance(signed, str):
        raise _CheckError("the receipt has no checkpoint")
    checkpoint = note.parse_checkpoint(note.open_note(signed, vkeys))
    if checkpoint.origin != log.get("origin"):
        raise _CheckError(f"the checkpoint is of log {checkpoint.origin!r}, not {log.get('origin')!r}")
    out.append(checkpoint)
    return f"{checkpoint.origin} at size {checkpoint.size}"


def _check_checkpoint_size(log: Mapping[str, Any], checkpoint: Sequence[note.Checkpoint]) -> str:
    if not checkpoint:
        raise _CheckError("no verified checkpoint")
    if checkpoint[0].size != log.get("tree_size"):
        raise _CheckError(f"the checkpoint has size {checkpoint[0].size}, the proof is for {log.get('tree_size')!r}")
    return f"tree size {checkpoint[0].size}"


def _check_inclusion(token: bytes | None, log: Mapping[str, Any], checkpoint: Sequence[note.Checkpoint]) -> str:
    if token is None:
        raise _CheckError("the receipt has no readable token")
    if not checkpoint:
        raise _CheckError("no verified checkpoint")
    index, size, hashes = log.get("index"), checkpoint[0].size, log.get("inclusion_proof")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
        raise _CheckError(f"index {index!r} is not in a log of {size} entries")
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
        raise _CheckError("the inclusion proof is not a list of base64 hashes")
    proof = [base64.b64decode(h, validate=True) for h in hashes]
    if not merkle.verify_inclusion(index, size, merkle.leaf_hash(token), proof, checkpoint[0].root_hash):
        raise _CheckError(f"the token is not entry {index} of the checkpointed log")
    return f"the token is entry {index} of {size}"


# --- the opening ----------------------------------------------------------------------------


def _opening_checks(
    receipt: Mapping[str, Any],
    opening: Mapping[str, Any] | None,
    *,
    evidence_npz: bytes | None,
    salt: str | None,
    seed: str | None,
) -> list[Check]:
    checks = []
    claimed_digest: Any = None
    if opening is not None:
        opening = opening if isinstance(opening, Mapping) else {}
        checks.append(_attempt("opening format", lambda: _check_opening_format(opening, receipt)))
        claimed_digest = opening.get("evidence_digest")
        if evidence_npz is None:
            evidence_npz = _b64_or_none(opening.get("evidence_npz_b64"))
        salt = opening.get("salt") if salt is None else salt
        seed = opening.get("seed") if seed is None else seed
    digest: list[str] = []
    checks.append(_attempt("evidence digest", lambda: _check_evidence(evidence_npz, claimed_digest, digest)))
    checks.append(_attempt("commitment", lambda: _check_commitment(receipt, digest, salt, seed)))
    if opening is not None:
        checks.append(_attempt("model digest", lambda: _check_model_digest(opening, receipt)))
    return checks


def _check_opening_format(opening: Mapping[str, Any], receipt: Mapping[str, Any]) -> str:
    if opening.get("format") != OPENING_FORMAT:
        raise _CheckError(f"format is {opening.get('format')!r}, not {OPENING_FORMAT!r}")
    if opening.get("commitment") != receipt.get("commitment"):
        raise _CheckError("the opening is for another commitment")
    if opening.get("kind") != receipt.get("kind"):
        raise _CheckError(f"the opening is of {opening.get('kind')!r} evidence, the receipt of {receipt.get('kind')!r}")
    return f"{OPENING_FORMAT} for this commitment"


def _check_evidence(npz: bytes | None, claimed: Any, out: list[str]) -> str:
    if npz is None:
        raise _CheckError("no readable evidence (.npz)")
    try:
        loaded = np.load(io.BytesIO(npz), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _CheckError("the evidence is not a readable .npz archive") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise _CheckError("the evidence is not an .npz archive")
    with loaded:
        arrays = {name: loaded[name] for name in loaded.files}
    digest = commitments.evidence_digest(arrays)
    out.append(digest)
    shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in sorted(arrays.items()))
    if claimed is not None and digest != claimed:
        raise _CheckError(f"the evidence hashes to {digest}, the opening claims {claimed!r}")
    return f"{digest} ({shapes})"


def _check_commitment(receipt: Mapping[str, Any], digest: Sequence[str], salt: Any, seed: Any) -> str:
    if not digest:
        raise _CheckError("no evidence digest to commit to")
    if not _is_hex64(salt):
        raise _CheckError("the salt is not 64 lowercase hex digits")
    if seed is not None and not isinstance(seed, str):
        raise _CheckError("the seed is not hex text")
    recomputed = commitments.commitment(
        model_digest=receipt.get("model_digest"),  # type: ignore[arg-type]
        evidence_digest=digest[0],
        kind=receipt.get("kind"),  # type: ignore[arg-type]
        salt=salt,
        seed=seed,
    )
    if recomputed != receipt.get("commitment"):
        raise _CheckError(f"the evidence, salt and seed commit to {recomputed}, not to the receipt's commitment")
    return "the evidence, salt" + (" and seed" if seed is not None else "") + " open the commitment"


def _check_model_digest(opening: Mapping[str, Any], receipt: Mapping[str, Any]) -> str:
    if not _is_hex64(opening.get("model_digest")) or opening.get("model_digest") != receipt.get("model_digest"):
        claimed, published = opening.get("model_digest"), receipt.get("model_digest")
        raise _CheckError(f"the opening names model {claimed!r}, the receipt {published!r}")
    return str(receipt.get("model_digest"))


# --- plumbing -------------------------------------------------------------------------------


def _attempt(name: str, step: Callable[[], str]) -> Check:
    try:
        return Check(name, True, step())
    # Malformed input raises whatever the parser under it raises; each must become a failed check.
    except Exception as exc:
        return Check(name, False, str(exc) or type(exc).__name__)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _b64_or_none(value: Any) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        return None


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in string.hexdigits[:16] for c in value)
