"""Verdict bundles: build them (pure, for the server) and verify them offline (for anyone; no Django, no network).

A bundle (format `modelcourt-verdict-bundle-v2`) is a zip archive. Entries are regular files with plain
ASCII names, sorted, dated 1980-01-01, so the same parts always give the same bytes:

    envelope.json            DSSE envelope (JSON, sorted keys, two-space indent, final newline); payloadType
                             application/vnd.in-toto+json; its payload is an in-toto Statement v1 (canonical
                             JSON) whose predicateType is https://modelcourt.dev/verdict/v1; signed with the
                             service's verdict key (ECDSA P-256, DER signature over the DSSE PAE, keyid = hex
                             SHA-256 of the key's DER SubjectPublicKeyInfo).
    verdict-token.der        RFC 3161 token (a CMS ContentInfo, not a TimeStampResp) whose message imprint is
                             the SHA-256 of the exact bytes of envelope.json.
    log.json                 where the token sits in the Merkle log: {"origin", "index" (the token's entry),
                             "tree_size", "inclusion_proof" (base64 RFC 9162 hashes, nearest the leaf first),
                             "checkpoint" (C2SP signed note)}; the field names of a receipt's "log" object.
                             The log entry is the token's DER bytes: leaf hash SHA-256(0x00 || token).
    consistency.json         {"proofs": {<commitment>: {"first", "second", "hashes"}}}: for each receipt, the
                             RFC 9162 consistency proof (base64 hashes) from the tree size of the receipt's
                             checkpoint (first) to log.json's tree_size (second), as GET /api/v1/log/proof/
                             consistency answers it: the log the verdict sits in extends the log each piece of
                             evidence was committed in (no fork, no rewrite between them).
    keys/verdict.pem         the verdict public keys, each as "# keyid: <hex>" then its PEM SubjectPublicKeyInfo.
    keys/tsa-chain.pem       TSA certificate(s) and CA certificate(s) (PEM), for the verdict token and receipts.
    keys/log.vkey            the log's C2SP/sumdb note verifier key (name+id+base64), one line.
    receipts/<commitment>.json   the public receipt of each claimant commitment (as receipt_build makes it).
    report.html, plots/*.png, ... attachments for people.
    manifest.json            {"format": "modelcourt-verdict-bundle-v2", "files": {name: sha256 hex}} over
                             every other entry; an index for `sha256sum -c`, trusted by nothing.

The statement's subjects are the suspect's digest (name "suspect") and each claimant model's digest (name
"claimant"). Its predicate holds:

    verdict_id    text               outcome   ownership_confirmed | not_confirmed | claim_rejected | inconclusive
    alpha         number in (0, 1)   decision  object: every statistic (verification.methods.decision's record)
    suspect       {"digest": sha256 hex, ...}  (an artifact's model digest, or a digest describing an endpoint)
    claims        [{"commitment", "model_digest", "kind"}, ...]: the claimant commitments judged
    panel         {"hash": text, "size": integer}: the reference panel
    code_version  text               decided_at  RFC 3339 time with an offset
    attachments   {name: sha256 hex} for every entry but envelope.json, verdict-token.der, log.json,
                  consistency.json and manifest.json, which are made after the signature (the checkpoint
                  and proofs follow the log): keys and receipts are signed this way too.

The receipts are built when the verdict is, so their checkpoints are signed by the log key in keys/log.vkey.

Format v1 is v2 without consistency.json. Such bundles fail the check "log consistency", as does any bundle
without consistency.json whatever its manifest says: nothing in them shows the receipts' checkpoints and the
verdict's checkpoint to be of one log, and a relayed bundle could have had its proofs stripped. Bundles are
built at download time, so downloading the bundle again gives a v2 one.
"""

import base64
import binascii
import functools
import hashlib
import io
import json
import os
import re
import string
import struct
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from modelcourt.receipts import HOW_TO_PIN, NO_TRUSTED_CA, NO_TRUSTED_LOG_KEY, Check, all_ok, verify_receipt
from timestamps import dsse, merkle, note, rfc3161

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMATS",
    "BundleError",
    "Check",
    "all_ok",
    "attachment_digests",
    "build_bundle",
    "bundle_files",
    "verdict_statement",
    "verify_bundle",
]

BUNDLE_FORMAT_V1 = "modelcourt-verdict-bundle-v1"
BUNDLE_FORMAT = "modelcourt-verdict-bundle-v2"
BUNDLE_FORMATS = (BUNDLE_FORMAT_V1, BUNDLE_FORMAT)
ENVELOPE = "envelope.json"
STAMP = "verdict-token.der"
LOG = "log.json"
CONSISTENCY = "consistency.json"
MANIFEST = "manifest.json"
VERDICT_KEYS = "keys/verdict.pem"
TSA_CHAIN = "keys/tsa-chain.pem"
LOG_KEY = "keys/log.vkey"
RECEIPTS = "receipts/"
# Made once the envelope is signed, so the predicate cannot list them; every other entry it must.
UNSIGNED = frozenset({ENVELOPE, STAMP, LOG, CONSISTENCY, MANIFEST})
LOG_FIELDS = ("origin", "index", "tree_size", "inclusion_proof", "checkpoint")
PROOF_FIELDS = ("first", "second", "hashes")
MAX_PROOF_HASHES = 64
OUTCOMES = ("ownership_confirmed", "not_confirmed", "claim_rejected", "inconclusive")
CLAIM_KINDS = ("watermark", "fingerprint", "dataset", "api_watermark")

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_TOTAL_BYTES = 128 * 1024 * 1024
MAX_FILES = 1000
MAX_CLAIMS = 900  # a guard commits its journal in many batches; each is a claim with its receipt (a file)
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

_NAME_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}"
# Parts never start with a dot, so no "..": names cannot leave the folder they are unzipped into.
_NAME = re.compile(rf"{_NAME_PART}(?:/{_NAME_PART}){{0,7}}")
_RECEIPT_NAME = re.compile(r"receipts/([0-9a-f]{64})\.json")
_PEM_PUBLIC_KEY = re.compile(r"-----BEGIN PUBLIC KEY-----\r?\n.*?-----END PUBLIC KEY-----", re.DOTALL)
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_END_RECORD = struct.Struct("<4s4H2LH")  # end of central directory: signature ... comment length
_S_IFMT, _S_IFREG = 0o170000, 0o100000


NO_TRUSTED_VERDICT_KEY = (
    f"no trusted verdict key: the bundle's own {VERDICT_KEYS} proves nothing, a forger brings their own; "
    f"{HOW_TO_PIN} or pass --verdict-key"
)


class BundleError(ValueError):
    """Parts that do not make a well-formed bundle."""


class _CheckError(Exception):
    """A check that failed, with the sentence to report."""


# --- building -------------------------------------------------------------------------------


def json_file(value: Any) -> bytes:
    """How the bundle writes JSON files: sorted keys, two-space indent, UTF-8, a final newline."""
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def verdict_keys_pem(public_keys_pem: Sequence[str]) -> bytes:
    """keys/verdict.pem: each P-256 public key, by key id, after a `# keyid:` line (PEM readers skip it)."""
    keys = {dsse.key_id(key): key for pem in public_keys_pem for key in _public_keys(pem)}
    if not keys:
        raise BundleError("a bundle needs at least one verdict public key")
    return "".join(
        f"# keyid: {kid}\n" + keys[kid].public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
        for kid in sorted(keys)
    ).encode()


def certificates_pem(certificates_pem: Sequence[str]) -> bytes:
    """keys/tsa-chain.pem: the certificates in the order given, each once."""
    seen: dict[bytes, x509.Certificate] = {}
    for pem in certificates_pem:
        for certificate in x509.load_pem_x509_certificates(pem.encode()):
            seen.setdefault(certificate.public_bytes(Encoding.DER), certificate)
    if not seen:
        raise BundleError("a bundle needs the TSA certificate chain")
    return b"".join(certificate.public_bytes(Encoding.PEM) for certificate in seen.values())


def bundle_files(
    *,
    verdict_keys: Sequence[str],
    tsa_certificates: Sequence[str],
    log_vkey: str,
    receipts: Sequence[Mapping[str, Any]],
    attachments: Mapping[str, bytes],
) -> dict[str, bytes]:
    """Every entry the predicate signs, by name: keys, receipts and attachments (report, plots)."""
    note.parse_verifier_key(log_vkey)
    files = {
        VERDICT_KEYS: verdict_keys_pem(verdict_keys),
        TSA_CHAIN: certificates_pem(tsa_certificates),
        LOG_KEY: log_vkey.encode() + b"\n",
    }
    for receipt in receipts:
        commitment = receipt.get("commitment")
        if not _is_hex64(commitment):
            raise BundleError(f"a receipt has no valid commitment: {commitment!r}")
        files[f"{RECEIPTS}{commitment}.json"] = json_file(dict(receipt))
    for name, data in attachments.items():
        if name in files or name in UNSIGNED or name.startswith(("keys/", RECEIPTS)):
            raise BundleError(f"{name!r} is a name the bundle keeps for itself")
        files[name] = bytes(data)
    for name in files:
        if not _NAME.fullmatch(name):
            raise BundleError(f"{name!r} is not a bundle file name (ASCII letters, digits, . _ - and /)")
    return files


def attachment_digests(files: Mapping[str, bytes]) -> dict[str, str]:
    """The predicate's `attachments`: hex SHA-256 of every signed entry."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}


def verdict_statement(*, predicate: Mapping[str, Any]) -> dict[str, Any]:
    """The in-toto Statement of a verdict: the suspect and the claimant models as subjects."""
    suspect = predicate.get("suspect")
    claims = predicate.get("claims")
    if not isinstance(suspect, Mapping) or not isinstance(claims, Sequence) or not claims:
        raise BundleError("the predicate needs a suspect and at least one claim")
    claimants = sorted({claim["model_digest"] for claim in claims})
    subjects = [("suspect", suspect.get("digest")), *(("claimant", digest) for digest in claimants)]
    return dsse.statement(subjects=subjects, predicate_type=dsse.VERDICT_PREDICATE_TYPE, predicate=predicate)


def build_bundle(
    *,
    envelope_json: bytes,
    token_der: bytes,
    log: Mapping[str, Any],
    verdict_keys: Sequence[str],
    tsa_certificates: Sequence[str],
    log_vkey: str,
    receipts: Sequence[Mapping[str, Any]],
    attachments: Mapping[str, bytes],
    consistency_proofs: Mapping[str, Sequence[str]],
) -> bytes:
    """The bundle's zip bytes; the same parts give the same bytes.

    The parts are those `bundle_files` took to make the predicate's attachments; `consistency_proofs` holds,
    per receipt's commitment, the base64 hashes of the consistency proof from its checkpoint's tree size to
    `log["tree_size"]`. A mismatch is refused here rather than published as a bundle that fails verification.
    """
    files = bundle_files(
        verdict_keys=verdict_keys,
        tsa_certificates=tsa_certificates,
        log_vkey=log_vkey,
        receipts=receipts,
        attachments=attachments,
    )
    if set(log) != set(LOG_FIELDS):
        raise BundleError(f"the log object has exactly the fields {', '.join(LOG_FIELDS)}")
    try:
        envelope = dsse.parse_envelope(envelope_json)
        stmt = json.loads(base64.b64decode(envelope["payload"], validate=True))
        signed = stmt["predicate"]["attachments"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"the envelope does not carry a verdict statement: {exc}") from exc
    if signed != attachment_digests(files):
        raise BundleError("the predicate's attachments are not these keys, receipts and attachments")
    consistency = consistency_file(log=log, receipts=receipts, proofs=consistency_proofs, log_vkey=log_vkey)
    members = {
        **files,
        ENVELOPE: bytes(envelope_json),
        STAMP: bytes(token_der),
        LOG: json_file(dict(log)),
        CONSISTENCY: json_file(consistency),
    }
    members[MANIFEST] = json_file({"format": BUNDLE_FORMAT, "files": attachment_digests(members)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, whatever builds it: the mode below means the same everywhere
            info.external_attr = (_S_IFREG | 0o644) << 16
            archive.writestr(info, members[name], compresslevel=9)
    return buffer.getvalue()


def consistency_file(
    *,
    log: Mapping[str, Any],
    receipts: Sequence[Mapping[str, Any]],
    proofs: Mapping[str, Sequence[str]],
    log_vkey: str,
) -> dict[str, Any]:
    """consistency.json: each receipt's proof to the bundle's checkpoint, checked before it is published."""
    commitments = [receipt.get("commitment") for receipt in receipts]
    if set(proofs) != set(commitments):
        raise BundleError("the consistency proofs are not one per receipt")
    entries = {}
    try:
        second = _checkpoint_of(log, log_vkey)
        for receipt in receipts:
            commitment = str(receipt["commitment"])
            first = _checkpoint_of(receipt["log"], log_vkey)
            hashes = [str(h) for h in proofs[commitment]]
            proof = [base64.b64decode(h, validate=True) for h in hashes]
            extends = first.origin == second.origin and merkle.verify_consistency(
                first.size, second.size, first.root_hash, second.root_hash, proof
            )
            if not extends:
                raise BundleError(f"the log at {second.size} does not extend the checkpoint of {commitment[:16]}")
            entries[commitment] = {"first": first.size, "second": second.size, "hashes": hashes}
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"the consistency proofs do not fit the checkpoints: {exc}") from exc
    return {"proofs": entries}


def _checkpoint_of(log: Mapping[str, Any], log_vkey: str) -> note.Checkpoint:
    checkpoint = note.parse_checkpoint(note.open_note(log["checkpoint"], [log_vkey]))
    if checkpoint.size != log["tree_size"]:
        raise BundleError(f"a checkpoint of size {checkpoint.size} is given as tree_size {log['tree_size']!r}")
    return checkpoint


# --- verifying ------------------------------------------------------------------------------


@dataclass
class _State:
    """What earlier checks established, for the later ones."""

    files: dict[str, bytes]
    format: str | None = None
    payload: bytes | None = None
    predicate: Mapping[str, Any] | None = None
    roots: list[x509.Certificate] = field(default_factory=list)
    root_pems: list[str] = field(default_factory=list)
    log_vkeys: list[str] = field(default_factory=list)
    log: Mapping[str, Any] | None = None
    checkpoint: note.Checkpoint | None = None
    consistency: Mapping[str, Any] | None = None


def verify_bundle(
    data: bytes | str | os.PathLike[str],
    *,
    ca_pems: Sequence[str] | None = None,
    log_vkey: str | Sequence[str] | None = None,
    verdict_keys: Sequence[str] | None = None,
    trust_embedded_keys: bool = True,
) -> list[Check]:
    """Every check of a verdict bundle (zip bytes or a path); never raises on bad input.

    `ca_pems` are trusted TSA root certificates, `log_vkey` the log's note verifier key(s) and `verdict_keys`
    the service's verdict public keys (PEM); any of them may have signed (keys rotate). Without them the
    bundle's own are used and a warning check says so, or, with `trust_embedded_keys=False`, the anchor's
    check fails: a forger would bring their own keys.
    """
    files: dict[str, bytes] = {}
    archive = _attempt("bundle archive", lambda: _read_archive(data, files))
    if not archive.ok:
        return [archive]
    state = _State(files=files)
    checks = [archive, _attempt("manifest", lambda: _check_manifest(files, state))]

    keys, anchors = _verdict_anchors(verdict_keys, files, trust_embedded=trust_embedded_keys)
    checks.append(anchors)
    checks.append(_attempt("envelope signature", lambda: _check_envelope(files, keys, state)))
    checks.append(_attempt("statement", lambda: _check_statement(state)))
    checks.append(_attempt("subjects", lambda: _check_subjects(state)))
    checks.append(_attempt("attachments", lambda: _check_attachments(state)))

    checks.append(_tsa_anchors(ca_pems, files, state, trust_embedded=trust_embedded_keys))
    token = files.get(STAMP)
    checks.append(_attempt("verdict token signature", lambda: _check_token_signature(token, state)))
    checks.append(_attempt("verdict token imprint", lambda: _check_token_imprint(token, files.get(ENVELOPE))))

    checks.append(_log_anchor(log_vkey, files, state, trust_embedded=trust_embedded_keys))
    checks.append(_attempt("checkpoint signature", lambda: _check_checkpoint(state)))
    checks.append(_attempt("checkpoint size", lambda: _check_checkpoint_size(state)))
    checks.append(_attempt("log inclusion", lambda: _check_inclusion(token, state)))

    receipts: dict[str, Any] = {}
    checks.append(_attempt("claims", lambda: _check_claims(state, receipts)))
    receipt_names = sorted(n for n in files if n.startswith(RECEIPTS))
    for name in receipt_names:
        label = f"receipt {name[len(RECEIPTS) : len(RECEIPTS) + 16]}"
        checks.append(_attempt(label, functools.partial(_check_receipt, name, state)))
    checks.append(_consistency_checks(state))
    if state.consistency is not None:
        for name in receipt_names:
            label = f"log consistency {name[len(RECEIPTS) : len(RECEIPTS) + 16]}"
            checks.append(_attempt(label, functools.partial(_check_consistency, name, state)))
    checks.append(_attempt("timeline", lambda: _check_timeline(token, state, receipts)))
    return checks


# --- the archive ----------------------------------------------------------------------------


def _read_archive(data: bytes | str | os.PathLike[str], out: dict[str, bytes]) -> str:
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        try:
            if path.stat().st_size > MAX_BUNDLE_BYTES:
                raise _CheckError(f"{path} is larger than {MAX_BUNDLE_BYTES} bytes")
            raw = path.read_bytes()
        except OSError as exc:
            raise _CheckError(f"cannot read {path}: {exc.strerror or exc}") from None
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    else:
        raise _CheckError(f"a bundle is zip bytes or a path, not {type(data).__name__}")
    if len(raw) > MAX_BUNDLE_BYTES:
        raise _CheckError(f"the bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    if not raw.startswith(b"PK\x03\x04"):
        raise _CheckError("not a zip archive (or something precedes it)")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            infos = archive.infolist()
            # CPython keeps where the central directory starts; there is no public accessor.
            _check_entries(raw, infos, getattr(archive, "start_dir", -1))
            total = 0
            for info in infos:
                with archive.open(info) as member:
                    content = member.read(MAX_FILE_BYTES + 1)
                if len(content) != info.file_size:
                    raise _CheckError(f"{info.filename} is not the {info.file_size} bytes its entry declares")
                total += len(content)
                out[info.filename] = content
    except zipfile.BadZipFile as exc:
        raise _CheckError(f"not a readable zip archive: {exc}") from None
    return f"{len(out)} files, {total} bytes, names safe"


def _check_entries(raw: bytes, infos: Sequence[zipfile.ZipInfo], central_directory: int) -> None:
    """Names, kinds, sizes and layout of the entries, before anything is decompressed."""
    if not infos:
        raise _CheckError("the archive is empty")
    if len(infos) > MAX_FILES:
        raise _CheckError(f"the archive has {len(infos)} entries; at most {MAX_FILES}")
    folded: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        if not _NAME.fullmatch(name):
            raise _CheckError(f"unsafe or unexpected entry name {name[:80]!r}")
        # Case-insensitive file systems would let one entry overwrite another when unzipped.
        if name.lower() in folded:
            raise _CheckError(f"the entry {name!r} appears twice")
        folded.add(name.lower())
        mode = info.external_attr >> 16
        if mode & _S_IFMT not in (0, _S_IFREG):
            raise _CheckError(f"{name} is not a regular file (mode {mode:o})")
        if info.flag_bits & 0x1:
            raise _CheckError(f"{name} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _CheckError(f"{name} uses compression method {info.compress_type}")
        if info.file_size > MAX_FILE_BYTES:
            raise _CheckError(f"{name} is {info.file_size} bytes; at most {MAX_FILE_BYTES}")
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise _CheckError(f"the entries hold {total} bytes; at most {MAX_TOTAL_BYTES}")
    # Entries back to back from the first byte to the central directory: none overlaps another (a zip
    # bomb's trick) and nothing hides between them.
    end = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset != end:
            raise _CheckError(f"the entry {info.filename} does not start where the one before it ends")
        header = raw[end : end + _LOCAL_HEADER.size]
        if len(header) != _LOCAL_HEADER.size or not header.startswith(b"PK\x03\x04"):
            raise _CheckError(f"the entry {info.filename} has no local header")
        name_length, extra_length = _LOCAL_HEADER.unpack(header)[-2:]
        end += _LOCAL_HEADER.size + name_length + extra_length + info.compress_size
        if info.flag_bits & 0x8:  # a data descriptor follows: CRC and sizes, maybe after a signature
            end += 12 + (4 if raw[end : end + 4] == b"PK\x07\x08" else 0)
        if end > len(raw):
            raise _CheckError(f"the entry {info.filename} runs past the end of the archive")
    if end != central_directory:
        raise _CheckError("something lies between the last entry and the central directory")
    # ... and the central directory runs to the end record, which ends the file: no comment, nothing after
    # it (a verified file must be exactly the bytes that were served, not a polyglot with a tail)
    record = raw[-_END_RECORD.size :]
    signature, _, _, _, entries, size, offset, comment = _END_RECORD.unpack(record)
    if signature != b"PK\x05\x06" or comment != 0 or entries != len(infos):
        raise _CheckError("the archive does not end with its end-of-central-directory record")
    if offset != central_directory or offset + size != len(raw) - _END_RECORD.size:
        raise _CheckError("something lies between the central directory and the end of the archive")


def _check_manifest(files: Mapping[str, bytes], state: _State) -> str:
    if MANIFEST not in files:
        raise _CheckError(f"the bundle has no {MANIFEST}")
    manifest = _strict_json(files[MANIFEST], MANIFEST)
    if not isinstance(manifest, dict) or set(manifest) != {"format", "files"}:
        raise _CheckError(f"{MANIFEST} is an object with exactly format and files")
    if manifest["format"] not in BUNDLE_FORMATS:
        raise _CheckError(f"format is {manifest['format']!r}, not one of {', '.join(BUNDLE_FORMATS)}")
    expected = attachment_digests({name: data for name, data in files.items() if name != MANIFEST})
    if manifest["files"] != expected:
        listed = manifest["files"] if isinstance(manifest["files"], dict) else {}
        wrong = sorted(
            set(listed) ^ set(expected) | {n for n in set(listed) & set(expected) if listed[n] != expected[n]}
        )
        raise _CheckError(f"{MANIFEST} does not match the entries: {', '.join(wrong) or 'files is not an object'}")
    _require_canonical(files[MANIFEST], manifest, MANIFEST)
    state.format = manifest["format"]
    return f"{manifest['format']}, {len(expected)} files listed"


# --- the envelope and the statement ---------------------------------------------------------


def _verdict_anchors(
    given: Sequence[str] | None, files: Mapping[str, bytes], *, trust_embedded: bool
) -> tuple[dict[str, ec.EllipticCurvePublicKey], Check]:
    name = "verdict keys"
    if given is None and not trust_embedded:
        return {}, Check(name, False, NO_TRUSTED_VERDICT_KEY)
    try:
        if given is not None:
            keys = {dsse.key_id(key): key for pem in given for key in _public_keys(pem)}
        else:
            keys = _bundled_verdict_keys(files)
    except (ValueError, TypeError, UnsupportedAlgorithm, _CheckError) as exc:
        source = "given" if given is not None else f"in {VERDICT_KEYS}"
        return {}, Check(name, False, f"unreadable verdict key {source}: {exc}")
    if not keys:
        return {}, Check(name, False, "no verdict keys given" if given is not None else f"no keys in {VERDICT_KEYS}")
    ids = ", ".join(kid[:16] for kid in sorted(keys))
    if given is None:
        detail = f"{ids} taken from the bundle itself: it proves nothing unless you trust this key (pass --verdict-key)"
        return keys, Check(name, True, detail, warning=True)
    return keys, Check(name, True, ids)


def _bundled_verdict_keys(files: Mapping[str, bytes]) -> dict[str, ec.EllipticCurvePublicKey]:
    if VERDICT_KEYS not in files:
        raise _CheckError(f"the bundle has no {VERDICT_KEYS}")
    text = _ascii(files[VERDICT_KEYS], VERDICT_KEYS)
    keys = {dsse.key_id(key): key for key in _public_keys(text)}
    # Written in one form only: anything else (a stray byte, a key id that is not the key's) is refused.
    if not keys or verdict_keys_pem([text]) != files[VERDICT_KEYS]:
        raise _CheckError(f"{VERDICT_KEYS} is not in the form the service writes (# keyid lines, PEM keys)")
    return keys


def _check_envelope(files: Mapping[str, bytes], keys: Mapping[str, ec.EllipticCurvePublicKey], state: _State) -> str:
    if ENVELOPE not in files:
        raise _CheckError(f"the bundle has no {ENVELOPE}")
    if not keys:
        raise _CheckError("no usable verdict key")
    envelope = dsse.parse_envelope(files[ENVELOPE])
    payload, signers = dsse.open_envelope(envelope, keys, payload_type=dsse.INTOTO_PAYLOAD_TYPE)
    state.payload = payload
    return f"signed by verdict key {', '.join(kid[:16] for kid in signers)} (ECDSA P-256, DSSE v1)"


def _check_statement(state: _State) -> str:
    if state.payload is None:
        raise _CheckError("no verified statement")
    stmt = _strict_json(state.payload, "the statement")
    if not isinstance(stmt, dict) or set(stmt) != {"_type", "subject", "predicateType", "predicate"}:
        raise _CheckError("the statement is an object with exactly _type, subject, predicateType and predicate")
    if stmt["_type"] != dsse.STATEMENT_TYPE:
        raise _CheckError(f"_type is {stmt['_type']!r}, not {dsse.STATEMENT_TYPE!r}")
    if stmt["predicateType"] != dsse.VERDICT_PREDICATE_TYPE:
        raise _CheckError(f"predicateType is {stmt['predicateType']!r}, not {dsse.VERDICT_PREDICATE_TYPE!r}")
    predicate = stmt["predicate"]
    if not isinstance(predicate, dict):
        raise _CheckError("the predicate is not an object")
    problems = _predicate_problems(predicate)
    if problems:
        raise _CheckError("; ".join(problems))
    state.predicate = predicate
    return f"verdict {predicate['verdict_id']}: {predicate['outcome']} at alpha {predicate['alpha']}"


def _predicate_problems(predicate: Mapping[str, Any]) -> list[str]:
    problems = []
    if not isinstance(predicate.get("verdict_id"), str) or not 0 < len(predicate["verdict_id"]) <= 200:
        problems.append("verdict_id is not text of 1 to 200 characters")
    if predicate.get("outcome") not in OUTCOMES:
        problems.append(f"outcome {predicate.get('outcome')!r} is not one of {', '.join(OUTCOMES)}")
    alpha = predicate.get("alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not 0 < alpha < 1:
        problems.append(f"alpha {alpha!r} is not a number between 0 and 1")
    decision = predicate.get("decision")
    if not isinstance(decision, dict):
        problems.append("decision is not an object")
    else:
        problems.extend(
            f"decision.{key} is {decision[key]!r} but the predicate says {predicate.get(key)!r}"
            for key in ("outcome", "alpha")
            if key in decision and decision[key] != predicate.get(key)
        )
    suspect = predicate.get("suspect")
    if not isinstance(suspect, dict) or not _is_hex64(suspect.get("digest")):
        problems.append("suspect is not an object with a digest of 64 lowercase hex digits")
    problems.extend(_claims_problems(predicate.get("claims")))
    panel = predicate.get("panel")
    if (
        not isinstance(panel, dict)
        or not isinstance(panel.get("hash"), str)
        or not isinstance(panel.get("size"), int)
        or isinstance(panel.get("size"), bool)
        or panel["size"] < 0
    ):
        problems.append("panel is not an object with a hash and a size")
    if not isinstance(predicate.get("code_version"), str) or not predicate["code_version"]:
        problems.append("code_version is not text")
    if _aware_time(predicate.get("decided_at")) is None:
        problems.append(f"decided_at {predicate.get('decided_at')!r} is not an RFC 3339 time with an offset")
    attachments = predicate.get("attachments")
    if not isinstance(attachments, dict) or not all(
        isinstance(name, str) and _is_hex64(digest) for name, digest in attachments.items()
    ):
        problems.append("attachments is not an object of file names and SHA-256 hex digests")
    return problems


def _claims_problems(claims: Any) -> list[str]:
    if not isinstance(claims, list) or not 0 < len(claims) <= MAX_CLAIMS:
        return [f"claims is not a list of 1 to {MAX_CLAIMS} claims"]
    problems = []
    for number, claim in enumerate(claims, start=1):
        if (
            not isinstance(claim, dict)
            or not _is_hex64(claim.get("commitment"))
            or not _is_hex64(claim.get("model_digest"))
            or claim.get("kind") not in CLAIM_KINDS
        ):
            problems.append(f"claim {number} is not an object with a commitment, a model_digest and a kind")
    commitments = [claim.get("commitment") for claim in claims if isinstance(claim, dict)]
    if len(set(commitments)) != len(commitments):
        problems.append("a commitment is claimed twice")
    return problems


def _check_subjects(state: _State) -> str:
    if state.predicate is None:
        raise _CheckError("no verified statement")
    stmt = _strict_json(state.payload or b"", "the statement")
    subjects = stmt["subject"]
    if not isinstance(subjects, list) or not subjects:
        raise _CheckError("subject is not a non-empty list")
    named: dict[str, list[str]] = {"suspect": [], "claimant": []}
    for number, subject in enumerate(subjects, start=1):
        if (
            not isinstance(subject, dict)
            or set(subject) != {"name", "digest"}
            or subject["name"] not in named
            or not isinstance(subject["digest"], dict)
            or set(subject["digest"]) != {"sha256"}
            or not _is_hex64(subject["digest"]["sha256"])
        ):
            raise _CheckError(f"subject {number} is not a suspect or claimant with only a sha256 digest")
        named[subject["name"]].append(subject["digest"]["sha256"])
    suspect = state.predicate["suspect"]["digest"]
    if named["suspect"] != [suspect]:
        raise _CheckError(f"the subjects name suspect(s) {named['suspect']}, the predicate {suspect}")
    claimed = {claim["model_digest"] for claim in state.predicate["claims"]}
    if len(set(named["claimant"])) != len(named["claimant"]) or set(named["claimant"]) != claimed:
        raise _CheckError("the claimant subjects are not the claims' model digests, each once")
    return f"suspect {suspect[:16]}, claimant model(s) {', '.join(d[:16] for d in sorted(claimed))}"


def _check_attachments(state: _State) -> str:
    if state.predicate is None:
        raise _CheckError("no verified statement")
    signed: Mapping[str, str] = state.predicate["attachments"]
    present = {name for name in state.files if name not in UNSIGNED}
    problems = [f"{name} is not in the signed attachments" for name in sorted(present - set(signed))]
    problems += [f"{name} is missing" for name in sorted(set(signed) - present)]
    problems += [
        f"{name} has SHA-256 {hashlib.sha256(state.files[name]).hexdigest()}, the verdict signs {signed[name]}"
        for name in sorted(present & set(signed))
        if hashlib.sha256(state.files[name]).hexdigest() != signed[name]
    ]
    problems += [f"the bundle has no {name}" for name in (VERDICT_KEYS, TSA_CHAIN, LOG_KEY) if name not in present]
    if problems:
        raise _CheckError("; ".join(problems))
    return f"{len(present)} files match the signed digests"


# --- the verdict token and the log ----------------------------------------------------------


def _tsa_anchors(
    given: Sequence[str] | None, files: Mapping[str, bytes], state: _State, *, trust_embedded: bool
) -> Check:
    name = "trust anchors"
    if given is None and not trust_embedded:
        return Check(name, False, NO_TRUSTED_CA)
    try:
        if given is not None:
            roots = [cert for pem in given for cert in _certificates(pem)]
        else:
            roots = [cert for cert in _bundled_certificates(files) if cert.subject == cert.issuer]
    except (ValueError, TypeError, _CheckError) as exc:
        source = "given" if given is not None else f"in {TSA_CHAIN}"
        return Check(name, False, f"unreadable certificate {source}: {exc}")
    if not roots:
        return Check(name, False, "no TSA root certificates " + ("given" if given is not None else f"in {TSA_CHAIN}"))
    state.roots = roots
    state.root_pems = [cert.public_bytes(Encoding.PEM).decode() for cert in roots]
    subjects = ", ".join(cert.subject.rfc4514_string() for cert in roots)
    if given is None:
        detail = f"{subjects} taken from the bundle itself: it proves nothing unless you trust this CA (pass --ca)"
        return Check(name, True, detail, warning=True)
    return Check(name, True, subjects)


def _bundled_certificates(files: Mapping[str, bytes]) -> list[x509.Certificate]:
    if TSA_CHAIN not in files:
        raise _CheckError(f"the bundle has no {TSA_CHAIN}")
    text = _ascii(files[TSA_CHAIN], TSA_CHAIN)
    certificates = _certificates(text)
    if certificates_pem([text]) != files[TSA_CHAIN]:
        raise _CheckError(f"{TSA_CHAIN} is not in the form the service writes (PEM certificates)")
    return certificates


def _check_token_signature(token: bytes | None, state: _State) -> str:
    if token is None:
        raise _CheckError(f"the bundle has no {STAMP}")
    if not state.roots:
        raise _CheckError("no trust anchors to verify against")
    info = rfc3161.verify_token(token, roots=state.roots)
    return f"signed by a TSA chaining to the trust anchors, genTime {info.gen_time.isoformat()}"


def _check_token_imprint(token: bytes | None, envelope: bytes | None) -> str:
    if token is None or envelope is None:
        raise _CheckError(f"the bundle needs {STAMP} and {ENVELOPE}")
    info = rfc3161.parse_token(token)
    if info.hash_algorithm != "sha256":
        raise _CheckError(f"the token stamps a {info.hash_algorithm} digest, not sha256")
    digest = hashlib.sha256(envelope).digest()
    if info.message_imprint != digest:
        raise _CheckError(f"the token stamps {info.message_imprint.hex()}, {ENVELOPE} hashes to {digest.hex()}")
    return f"the token stamps SHA-256({ENVELOPE}) = {digest.hex()}"


def _log_anchor(
    given: str | Sequence[str] | None, files: Mapping[str, bytes], state: _State, *, trust_embedded: bool
) -> Check:
    name = "log key"
    if given is None and not trust_embedded:
        return Check(name, False, NO_TRUSTED_LOG_KEY)
    if given is not None:
        if isinstance(given, str):
            candidates: list[Any] = [given]
        else:
            candidates = list(given) if isinstance(given, Sequence) else []
        vkeys = [vkey.strip() for vkey in candidates if isinstance(vkey, str)]
        if not vkeys or len(vkeys) != len(candidates):
            return Check(name, False, "the given log verifier key is not text")
    else:
        raw = files.get(LOG_KEY)
        if raw is None:
            return Check(name, False, f"no log verifier key given or in {LOG_KEY}")
        text = raw.decode("ascii", errors="replace")
        vkey = text[:-1] if text.endswith("\n") else ""
        if not vkey or "\n" in vkey:
            return Check(name, False, f"{LOG_KEY} is not one verifier key on one line")
        vkeys = [vkey]
    try:
        names = sorted({note.parse_verifier_key(vkey)[0] for vkey in vkeys})
    except note.NoteError as exc:
        return Check(name, False, str(exc))
    state.log_vkeys = vkeys
    if given is None:
        detail = f"{names[0]} taken from the bundle itself: it proves nothing unless you trust it (pass --log-key)"
        return Check(name, True, detail, warning=True)
    count = f" ({len(vkeys)} keys)" if len(vkeys) > 1 else ""
    return Check(name, True, ", ".join(names) + count)


def _check_checkpoint(state: _State) -> str:
    if LOG not in state.files:
        raise _CheckError(f"the bundle has no {LOG}")
    log = _strict_json(state.files[LOG], LOG)
    if not isinstance(log, dict) or set(log) != set(LOG_FIELDS):
        raise _CheckError(f"{LOG} is an object with exactly {', '.join(LOG_FIELDS)}")
    _require_canonical(state.files[LOG], log, LOG)
    state.log = log
    if not state.log_vkeys:
        raise _CheckError("no usable log verifier key")
    if not isinstance(log["checkpoint"], str):
        raise _CheckError(f"{LOG} has no checkpoint note")
    checkpoint = note.parse_checkpoint(note.open_note(log["checkpoint"], state.log_vkeys))
    if checkpoint.origin != log["origin"]:
        raise _CheckError(f"the checkpoint is of log {checkpoint.origin!r}, not {log['origin']!r}")
    state.checkpoint = checkpoint
    return f"{checkpoint.origin} at size {checkpoint.size}"


def _check_checkpoint_size(state: _State) -> str:
    if state.checkpoint is None or state.log is None:
        raise _CheckError("no verified checkpoint")
    if state.checkpoint.size != state.log["tree_size"]:
        raise _CheckError(f"the checkpoint has size {state.checkpoint.size}, {LOG} {state.log['tree_size']!r}")
    return f"tree size {state.checkpoint.size}"


def _check_inclusion(token: bytes | None, state: _State) -> str:
    if token is None:
        raise _CheckError(f"the bundle has no {STAMP}")
    if state.checkpoint is None or state.log is None:
        raise _CheckError("no verified checkpoint")
    index, size, hashes = state.log["index"], state.checkpoint.size, state.log["inclusion_proof"]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
        raise _CheckError(f"index {index!r} is not in a log of {size} entries")
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes) or len(hashes) > 64:
        raise _CheckError("the inclusion proof is not a list of base64 hashes")
    try:
        proof = [base64.b64decode(h, validate=True) for h in hashes]
    except (binascii.Error, ValueError):
        raise _CheckError("the inclusion proof is not a list of base64 hashes") from None
    if not merkle.verify_inclusion(index, size, merkle.leaf_hash(token), proof, state.checkpoint.root_hash):
        raise _CheckError(f"the verdict token is not entry {index} of the checkpointed log")
    return f"the verdict token is entry {index} of {size}"


# --- log consistency ------------------------------------------------------------------------


def _consistency_checks(state: _State) -> Check:
    """consistency.json as a whole: present, whatever the manifest says, with one proof per receipt."""
    return _attempt("log consistency", lambda: _check_consistency_file(state))


def _check_consistency_file(state: _State) -> str:
    # Stripping the proofs and relabelling the manifest v1 must not pass: without them nothing shows that the
    # receipts' checkpoints and the verdict's are of one log. Bundles are built at download time, so any
    # verdict's bundle can be fetched again as v2.
    if state.format == BUNDLE_FORMAT_V1:
        if CONSISTENCY not in state.files:
            raise _CheckError(
                f"the bundle has no {CONSISTENCY}: {BUNDLE_FORMAT_V1} bundles carry no consistency proofs, so "
                "nothing shows that the receipts' checkpoints and the verdict's are of one log; download the "
                f"bundle again for a {BUNDLE_FORMAT} one"
            )
        raise _CheckError(f"{CONSISTENCY} belongs to {BUNDLE_FORMAT} bundles, this one is {state.format!r}")
    if state.format not in (None, BUNDLE_FORMAT):
        raise _CheckError(f"{CONSISTENCY} belongs to {BUNDLE_FORMAT} bundles, this one is {state.format!r}")
    if CONSISTENCY not in state.files:
        raise _CheckError(f"the bundle has no {CONSISTENCY}")
    document = _strict_json(state.files[CONSISTENCY], CONSISTENCY)
    if not isinstance(document, dict) or set(document) != {"proofs"} or not isinstance(document["proofs"], dict):
        raise _CheckError(f"{CONSISTENCY} is an object with exactly proofs, an object")
    _require_canonical(state.files[CONSISTENCY], document, CONSISTENCY)
    proofs: dict[str, Any] = document["proofs"]
    receipts = {name[len(RECEIPTS) : -len(".json")] for name in state.files if _RECEIPT_NAME.fullmatch(name)}
    problems = [f"no consistency proof for the receipt of {c[:16]}" for c in sorted(receipts - set(proofs))]
    problems += [f"a consistency proof for {c[:16]}, which has no receipt" for c in sorted(set(proofs) - receipts)]
    if problems:
        raise _CheckError("; ".join(problems))
    state.consistency = proofs
    return f"{len(proofs)} proof(s), one per receipt"


def _check_consistency(name: str, state: _State) -> str:
    """The receipt's checkpoint is a prefix of the bundle's checkpoint: same log, nothing rewritten."""
    commitment = name[len(RECEIPTS) : -len(".json")]
    if state.consistency is None or state.checkpoint is None or not state.log_vkeys:
        raise _CheckError("no verified checkpoint")
    entry = state.consistency.get(commitment)
    if not isinstance(entry, dict) or set(entry) != set(PROOF_FIELDS):
        raise _CheckError(f"the proof of {commitment[:16]} is an object with exactly {', '.join(PROOF_FIELDS)}")
    receipt = _strict_json(state.files[name], name)
    log = receipt.get("log") if isinstance(receipt, dict) else None
    if not isinstance(log, dict) or not isinstance(log.get("checkpoint"), str):
        raise _CheckError(f"{name} has no log checkpoint")
    older = note.parse_checkpoint(note.open_note(log["checkpoint"], state.log_vkeys))
    newer = state.checkpoint
    if older.origin != newer.origin:
        raise _CheckError(f"the receipt's checkpoint is of log {older.origin!r}, the verdict's of {newer.origin!r}")
    first, second, hashes = entry["first"], entry["second"], entry["hashes"]
    if first != older.size or second != newer.size:
        raise _CheckError(
            f"the proof runs from {first!r} to {second!r}, the checkpoints are at {older.size} and {newer.size}"
        )
    if not 0 < older.size <= newer.size:
        raise _CheckError(f"no proof runs from a checkpoint at {older.size} to one at {newer.size}")
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes) or len(hashes) > MAX_PROOF_HASHES:
        raise _CheckError("the consistency proof is not a list of base64 hashes")
    try:
        proof = [base64.b64decode(h, validate=True) for h in hashes]
    except (binascii.Error, ValueError):
        raise _CheckError("the consistency proof is not a list of base64 hashes") from None
    if not merkle.verify_consistency(older.size, newer.size, older.root_hash, newer.root_hash, proof):
        raise _CheckError(
            f"the log at size {newer.size} does not extend the receipt's checkpoint at size {older.size}: "
            "a fork or a rewrite"
        )
    return f"the log at size {newer.size} extends the receipt's checkpoint at size {older.size}"


# --- the claims -----------------------------------------------------------------------------


def _check_claims(state: _State, out: dict[str, Any]) -> str:
    if state.predicate is None:
        raise _CheckError("no verified statement")
    claims = {claim["commitment"]: claim for claim in state.predicate["claims"]}
    found: dict[str, str] = {}
    for name in state.files:
        if name.startswith(RECEIPTS):
            match = _RECEIPT_NAME.fullmatch(name)
            if match is None:
                raise _CheckError(f"{name} is not named receipts/<commitment>.json")
            found[match.group(1)] = name
    problems = [f"no receipt for claimed commitment {c[:16]}" for c in sorted(set(claims) - set(found))]
    problems += [f"a receipt for {c[:16]}, which the verdict does not claim" for c in sorted(set(found) - set(claims))]
    for commitment in sorted(set(claims) & set(found)):
        try:
            receipt = _strict_json(state.files[found[commitment]], found[commitment])
        except _CheckError as exc:
            problems.append(str(exc))
            continue
        if not isinstance(receipt, dict):
            problems.append(f"{found[commitment]} is not a JSON object")
            continue
        claim = claims[commitment]
        problems.extend(
            f"{found[commitment]} has {key} {receipt.get(key)!r}, the verdict claims {claim[key]!r}"
            for key in ("commitment", "model_digest", "kind")
            if receipt.get(key) != claim[key]
        )
        out[commitment] = receipt
    if problems:
        raise _CheckError("; ".join(problems))
    return f"{len(claims)} claimed commitment(s), each with its receipt"


def _check_receipt(name: str, state: _State) -> str:
    receipt = _strict_json(state.files[name], name)
    if not isinstance(receipt, dict):
        raise _CheckError(f"{name} is not a JSON object")
    if not state.root_pems or not state.log_vkeys:
        raise _CheckError("no trust anchors or log key to verify it with")
    checks = verify_receipt(receipt, ca_pems=state.root_pems, log_vkey=state.log_vkeys)
    if not all_ok(checks):
        raise _CheckError("; ".join(f"{check.name}: {check.detail}" for check in checks if not check.ok))
    if receipt.get("commitment") != name[len(RECEIPTS) : -len(".json")]:
        raise _CheckError(f"{name} holds the receipt of {receipt.get('commitment')!r}")
    stamp, log = receipt["timestamp"], receipt["log"]
    return f"{receipt['kind']} commitment stamped {stamp['gen_time']}, entry {log['index']} of {log['origin']}"


def _check_timeline(token: bytes | None, state: _State, receipts: Mapping[str, Any]) -> str:
    if token is None:
        raise _CheckError(f"the bundle has no {STAMP}")
    if state.predicate is None:
        raise _CheckError("no verified statement")
    verdict = rfc3161.parse_token(token)
    decided = _aware_time(state.predicate["decided_at"])
    # genTime is whole seconds and good to its accuracy: a decision a moment before it may read as later.
    slack = (verdict.accuracy or timedelta(0)) + timedelta(seconds=1)
    if decided is None or decided > verdict.gen_time + slack:
        raise _CheckError(f"decided at {state.predicate['decided_at']}, after the verdict's genTime {verdict.gen_time}")
    if len(receipts) != len(state.predicate["claims"]):
        raise _CheckError("not every claim has a readable receipt")
    problems = []
    for commitment, receipt in sorted(receipts.items()):
        try:
            claimed = rfc3161.parse_token(base64.b64decode(receipt["timestamp"]["token_b64"], validate=True))
            claim_log = receipt["log"]
            claim_index, claim_origin = claim_log["index"], claim_log["origin"]
        except (rfc3161.TokenError, binascii.Error, ValueError, KeyError, TypeError):
            problems.append(f"the receipt of {commitment[:16]} has no readable token")
            continue
        if claimed.gen_time > verdict.gen_time:
            problems.append(f"{commitment[:16]} was stamped at {claimed.gen_time}, after the verdict")
        # Within one second the clock cannot order them; one append-only log can.
        elif state.log is not None and claim_origin == state.log["origin"] and not claim_index < state.log["index"]:
            problems.append(f"{commitment[:16]} is log entry {claim_index}, not before the verdict's")
    if problems:
        raise _CheckError("; ".join(problems))
    return f"{len(receipts)} claim(s) stamped and logged before the verdict, genTime {verdict.gen_time.isoformat()}"


# --- plumbing -------------------------------------------------------------------------------


def _attempt(name: str, step: Callable[[], str]) -> Check:
    try:
        return Check(name, True, step())
    # Hostile input raises whatever the parser under it raises; each must become a failed check.
    except Exception as exc:
        return Check(name, False, str(exc) or type(exc).__name__)


def _strict_json(data: bytes, what: str) -> Any:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise _CheckError(f"{what} repeats the key {key!r}")
            result[key] = value
        return result

    def constant(name: str) -> Any:
        raise _CheckError(f"{what} holds {name}, which is not JSON")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=unique, parse_constant=constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _CheckError(f"{what} is not JSON: {exc}") from None


def _require_canonical(data: bytes, value: Any, what: str) -> None:
    """Files the signature does not cover are written in one form only, so no byte of them goes unchecked."""
    if json_file(value) != data:
        raise _CheckError(f"{what} is not in the form the service writes (sorted keys, two-space indent)")


def _public_keys(pem: str) -> list[ec.EllipticCurvePublicKey]:
    keys = []
    for block in _PEM_PUBLIC_KEY.findall(pem):
        key = load_pem_public_key(block.encode())
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise BundleError("a verdict key is an ECDSA P-256 public key")
        keys.append(key)
    return keys


def _certificates(pem: str) -> list[x509.Certificate]:
    if not isinstance(pem, str):
        raise TypeError("a certificate is PEM text")
    return x509.load_pem_x509_certificates(pem.encode())


def _ascii(data: bytes, what: str) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise _CheckError(f"{what} is not ASCII text") from None


def _aware_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in string.hexdigits[:16] for c in value)
