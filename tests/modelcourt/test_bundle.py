"""Verdict bundles made from real receipts, tokens and checkpoints: they verify offline; one byte off fails."""

import base64
import hashlib
import io
import json
import random
import secrets
import shutil
import struct
import subprocess
import zipfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from modelcourt import bundle, trust
from modelcourt.cli import main as cli_main
from modelcourt.receipts import Check, all_ok
from ownership import commitments, services
from tests.modelcourt.receipt_factory import make_tsa
from tests.modelcourt.test_trust import key_listing, pin_file
from tests.ownership.model_files import torchscript_file
from tests.timestamps.gocheck import go_verify, require_go
from timestamps import dsse, keys, merkle, note, rfc3161, selectors
from timestamps import services as timestamp_services
from timestamps.models import SigningKey, TimestampToken

pytestmark = pytest.mark.django_db

needs_shell_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("bash", "openssl", "unzip", "jq", "base64", "sha256sum", "xxd")),
    reason="needs bash, openssl, unzip, jq, base64, sha256sum and xxd",
)


@dataclass(frozen=True)
class Published:
    """A bundle as the service would publish it, and the trust anchors a verifier gets elsewhere."""

    data: bytes
    ca_pems: list[str]
    log_vkey: str
    verdict_pem: str
    receipts: list[dict[str, Any]]
    predicate: dict[str, Any]

    def verify(self, data: bytes | None = None, **overrides: Any) -> list[Check]:
        anchors: dict[str, Any] = {
            "ca_pems": self.ca_pems,
            "log_vkey": self.log_vkey,
            "verdict_keys": [self.verdict_pem],
            **overrides,
        }
        return bundle.verify_bundle(self.data if data is None else data, **anchors)


def _png(seed: int) -> bytes:
    """A 1x1 grey PNG."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes([0, seed])))
        + chunk(b"IEND", b"")
    )


def _receipt_of(token: TimestampToken, *, commitment: str, model_digest: str) -> dict[str, Any]:
    """A receipt for a commitment time-stamped by hand (receipt_build needs an EvidenceSet)."""
    checkpoint = timestamp_services.checkpoint_publish()
    proof = selectors.log_inclusion_proof(index=token.log_entry_id, size=checkpoint.size)
    return {
        "format": "modelcourt-receipt-v1",
        "commitment": commitment,
        "model_digest": model_digest,
        "kind": "watermark",
        "verifiable": False,
        "created_at": datetime.now(UTC).isoformat(),
        "timestamp": {
            "token_b64": base64.b64encode(bytes(token.token)).decode(),
            "serial": token.serial,
            "gen_time": token.gen_time.isoformat(),
            "tsa_certificates_pem": [r.certificate_pem for r in selectors.signing_key_list() if r.certificate_pem],
        },
        "log": {
            "origin": settings.MODELCOURT_LOG_ORIGIN,
            "index": token.log_entry_id,
            "tree_size": checkpoint.size,
            "inclusion_proof": [base64.b64encode(h).decode() for h in proof],
            "checkpoint": checkpoint.note,
            "verifier_key": keys.log_verifier_key(checkpoint.key),
        },
    }


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


def _forked(receipt: dict[str, Any]) -> dict[str, Any]:
    """The receipt under a checkpoint of another history, signed with the log key: a split view of the log."""
    index = receipt["log"]["index"]
    token = base64.b64decode(receipt["timestamp"]["token_b64"])
    # the same token at the same index, in a history that is not the log's
    entries = [b"a rewritten entry %d" % i for i in range(index)] + [token]
    if index == 0:
        entries.append(b"a rewritten entry after")
    store = merkle.MemoryHashStore()
    store.append_many(entries)
    origin = settings.MODELCOURT_LOG_ORIGIN
    text = note.checkpoint_text(origin, store.size, merkle.tree_hash(store.size, store.read))
    private = keys.key_current(SigningKey.Purpose.LOG).private_key
    log = {
        **receipt["log"],
        "tree_size": store.size,
        "inclusion_proof": _b64(merkle.inclusion_proof(index, store.size, store.read)),
        "checkpoint": note.sign_note(text, name=origin, private_key=private),  # type: ignore[arg-type]
    }
    return {**receipt, "log": log}


def _proofs(receipts: list[dict[str, Any]], size: int) -> dict[str, list[str]]:
    """What the service proves for each receipt: the log's consistency from its tree size to `size`."""
    return {
        r["commitment"]: _b64(selectors.log_consistency_proof(first=r["log"]["tree_size"], second=size))
        for r in receipts
    }


def publish(owner: Any, tmp_path: Path, *, late_claim: bool = False, forked: bool = False) -> Published:
    """Register a model, generate a watermark, and publish a verdict about it the way the service does.

    With `late_claim`, a second claimant commitment is time-stamped only after the verdict (a backdating claimant).
    With `forked`, the claim's receipt sits under a checkpoint of another history than the verdict's log.
    """
    upload = SimpleUploadedFile("mlp.pt", torchscript_file(tmp_path / "mlp.pt").read_bytes())
    model = services.model_register(
        owner=owner, name="claimant", task="digits", input_shape=[1, 8, 8], num_classes=10, artifact=upload
    )
    evidence_set, _ = services.evidence_generate(model=model, count=5)
    receipts = [services.receipt_build(evidence_set=evidence_set)]
    if forked:
        receipts = [_forked(receipts[0])]
    claims = [{"commitment": evidence_set.commitment, "model_digest": model.model_digest, "kind": "watermark"}]
    late_commitment = commitments.commitment(
        model_digest=model.model_digest, evidence_digest="ee" * 32, kind="watermark", salt=secrets.token_hex(32)
    )
    if late_claim:
        claims.append({"commitment": late_commitment, "model_digest": model.model_digest, "kind": "watermark"})

    verdict = keys.key_current(SigningKey.Purpose.VERDICT)
    keys.tsa_signer()
    tsa_pems = [r.certificate_pem for r in selectors.signing_key_list().filter(purpose__in=["tsa", "tsa-ca"])]
    log_vkey = keys.log_verifier_key(keys.key_current(SigningKey.Purpose.LOG).record)
    attachments = {"report.html": b"<!doctype html><h1>Verdict</h1>\n", "plots/p-values.png": _png(1)}

    def parts(receipts: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "verdict_keys": [verdict.record.public_key_pem],
            "tsa_certificates": tsa_pems,
            "log_vkey": log_vkey,
            "receipts": receipts,
            "attachments": attachments,
        }

    # A late claim's receipt cannot exist when the verdict is signed: a placeholder stands in for it, and
    # the real one replaces it in the zip (so the attachments check fails too).
    receipts_for_predicate = [*receipts, {"commitment": late_commitment}] if late_claim else receipts
    files = bundle.bundle_files(**parts(receipts_for_predicate))
    predicate = {
        "verdict_id": "6f1c1c2e-5d0b-4b7e-9d43-1f6a0e6c2b11",
        "outcome": "ownership_confirmed",
        "alpha": 0.001,
        "decision": {
            "outcome": "ownership_confirmed",
            "alpha": 0.001,
            "tests": [{"name": "watermark", "kind": "watermark", "k": 5, "m": 5, "p0": 0.1, "p_value": 1e-5}],
            "screens": [],
            "holm": {"watermark": True},
            "reasons": ["watermark: p = 1e-05 < alpha"],
        },
        "suspect": {"digest": hashlib.sha256(b"suspect model").hexdigest(), "kind": "artifact"},
        "claims": claims,
        "panel": {"hash": "ab" * 32, "size": 8},
        "code_version": "0.1.0+test",
        "decided_at": datetime.now(UTC).isoformat(),
        "attachments": bundle.attachment_digests(files),
    }
    stmt = bundle.verdict_statement(predicate=predicate)
    envelope = dsse.sign_envelope(
        dsse.statement_bytes(stmt),
        payload_type=dsse.INTOTO_PAYLOAD_TYPE,
        private_key=verdict.private_key,  # type: ignore[arg-type]
        keyid=verdict.record.kid,
    )
    envelope_json = dsse.envelope_bytes(envelope)
    token = timestamp_services.timestamp_digest(digest=hashlib.sha256(envelope_json).digest())
    checkpoint = timestamp_services.checkpoint_publish()
    proof = selectors.log_inclusion_proof(index=token.log_entry_id, size=checkpoint.size)
    log = {
        "origin": settings.MODELCOURT_LOG_ORIGIN,
        "index": token.log_entry_id,
        "tree_size": checkpoint.size,
        "inclusion_proof": [base64.b64encode(h).decode() for h in proof],
        "checkpoint": checkpoint.note,
    }
    proofs = _proofs(receipts, checkpoint.size)
    if late_claim or forked:
        # parts the builder refuses to publish: assembled by hand, as a forger (or a forked log) would
        members = {
            **bundle.bundle_files(**parts(receipts_for_predicate)),
            "envelope.json": envelope_json,
            "verdict-token.der": bytes(token.token),
            "log.json": bundle.json_file(log),
            "consistency.json": bundle.json_file(
                {
                    "proofs": {
                        c: {"first": r["log"]["tree_size"], "second": checkpoint.size, "hashes": proofs[c]}
                        for c, r in ((r["commitment"], r) for r in receipts)
                    }
                }
            ),
        }
        if late_claim:
            late_token = timestamp_services.timestamp_digest(digest=bytes.fromhex(late_commitment))
            late_receipt = _receipt_of(late_token, commitment=late_commitment, model_digest=model.model_digest)
            receipts = [*receipts, late_receipt]
            members[f"receipts/{late_commitment}.json"] = bundle.json_file(late_receipt)
        data = _rezip(members)
    else:
        data = bundle.build_bundle(
            envelope_json=envelope_json,
            token_der=bytes(token.token),
            log=log,
            consistency_proofs=proofs,
            **parts(receipts_for_predicate),
        )
    return Published(
        data=data,
        ca_pems=[r.certificate_pem for r in selectors.signing_key_list().filter(purpose="tsa-ca")],
        log_vkey=log_vkey,
        verdict_pem=verdict.record.public_key_pem,
        receipts=receipts,
        predicate=predicate,
    )


@pytest.fixture(scope="module")
def published(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory) -> Published:
    """One bundle for the module: registering a model takes a sandboxed run; the rows are rolled back after."""
    from django.contrib.auth import get_user_model
    from django.db import transaction

    with django_db_blocker.unblock(), transaction.atomic():
        owner = get_user_model().objects.create_user(username="bundle-owner", password="correct horse battery")
        made = publish(owner, tmp_path_factory.mktemp("bundle"))
        transaction.set_rollback(True)
    return made


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rezip(members: dict[str, bytes], *, fix_manifest: bool = True, fmt: str = bundle.BUNDLE_FORMAT) -> bytes:
    """Zip `members` again; with `fix_manifest`, as a forger would, with a manifest (of format `fmt`) that matches."""
    members = dict(members)
    if fix_manifest:
        others = {name: data for name, data in members.items() if name != bundle.MANIFEST}
        members[bundle.MANIFEST] = bundle.json_file({"format": fmt, "files": bundle.attachment_digests(others)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(members):
            archive.writestr(zipfile.ZipInfo(name, date_time=bundle.ZIP_DATE), members[name])
    return buffer.getvalue()


def _failed(checks: list[Check]) -> set[str]:
    return {check.name for check in checks if not check.ok}


def _flipped(data: bytes, position: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= 0x01
    return bytes(changed)


# --- a genuine bundle -----------------------------------------------------------------------


def test_a_genuine_bundle_passes_every_check(published: Published) -> None:
    checks = published.verify()

    assert all_ok(checks), [c for c in checks if not c.ok]
    assert not any(check.warning for check in checks)
    names = [check.name for check in checks]
    assert {
        "bundle archive",
        "manifest",
        "envelope signature",
        "statement",
        "subjects",
        "attachments",
        "verdict token signature",
        "verdict token imprint",
        "checkpoint signature",
        "log inclusion",
        "claims",
        "log consistency",
        "timeline",
    } <= set(names)
    assert f"receipt {published.receipts[0]['commitment'][:16]}" in names
    assert f"log consistency {published.receipts[0]['commitment'][:16]}" in names


def test_without_anchors_it_verifies_against_its_own_keys_with_warnings(published: Published) -> None:
    checks = bundle.verify_bundle(published.data)

    assert all_ok(checks), [c for c in checks if not c.ok]
    assert {check.name for check in checks if check.warning} == {"verdict keys", "trust anchors", "log key"}


def test_a_path_is_read_like_bytes(published: Published, tmp_path: Path) -> None:
    path = tmp_path / "verdict.zip"
    path.write_bytes(published.data)

    assert all_ok(published.verify(path)), published.verify(path)  # type: ignore[arg-type]


def test_the_layout_is_the_documented_one(published: Published) -> None:
    with zipfile.ZipFile(io.BytesIO(published.data)) as archive:
        infos = archive.infolist()

    names = [info.filename for info in infos]
    assert names == sorted(names)
    assert set(names) == {
        "envelope.json",
        "verdict-token.der",
        "log.json",
        "consistency.json",
        "manifest.json",
        "keys/verdict.pem",
        "keys/tsa-chain.pem",
        "keys/log.vkey",
        f"receipts/{published.receipts[0]['commitment']}.json",
        "report.html",
        "plots/p-values.png",
    }
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    members = _members(published.data)
    envelope = json.loads(members["envelope.json"])
    stmt = json.loads(base64.b64decode(envelope["payload"]))
    assert stmt["predicateType"] == "https://modelcourt.dev/verdict/v1"
    assert {s["name"] for s in stmt["subject"]} == {"suspect", "claimant"}
    assert set(stmt["predicate"]["attachments"]) == set(names) - {
        "envelope.json",
        "verdict-token.der",
        "log.json",
        "consistency.json",
        "manifest.json",
    }
    assert json.loads(members["manifest.json"])["format"] == "modelcourt-verdict-bundle-v2"
    consistency = json.loads(members["consistency.json"])
    receipt = published.receipts[0]
    assert consistency["proofs"][receipt["commitment"]]["first"] == receipt["log"]["tree_size"]
    assert consistency["proofs"][receipt["commitment"]]["second"] == json.loads(members["log.json"])["tree_size"]


def _consistency_proofs(members: dict[str, bytes]) -> dict[str, list[str]]:
    return {c: p["hashes"] for c, p in json.loads(members["consistency.json"])["proofs"].items()}


def test_building_is_deterministic(published: Published) -> None:
    members = _members(published.data)
    log = json.loads(members["log.json"])
    again = bundle.build_bundle(
        envelope_json=members["envelope.json"],
        token_der=members["verdict-token.der"],
        log=log,
        verdict_keys=[published.verdict_pem],
        tsa_certificates=[members["keys/tsa-chain.pem"].decode()],
        log_vkey=published.log_vkey,
        receipts=published.receipts,
        attachments={"report.html": members["report.html"], "plots/p-values.png": members["plots/p-values.png"]},
        consistency_proofs=_consistency_proofs(members),
    )

    assert again == published.data


def test_building_refuses_parts_the_predicate_does_not_sign(published: Published) -> None:
    members = _members(published.data)

    with pytest.raises(bundle.BundleError, match="attachments"):
        bundle.build_bundle(
            envelope_json=members["envelope.json"],
            token_der=members["verdict-token.der"],
            log=json.loads(members["log.json"]),
            verdict_keys=[published.verdict_pem],
            tsa_certificates=[members["keys/tsa-chain.pem"].decode()],
            log_vkey=published.log_vkey,
            receipts=published.receipts,
            attachments={"report.html": b"<p>another report</p>", "plots/p-values.png": members["plots/p-values.png"]},
            consistency_proofs=_consistency_proofs(members),
        )


@pytest.mark.parametrize("name", ["../evil.html", "keys/extra.pem", "manifest.json", ".hidden"])
def test_building_refuses_unsafe_or_reserved_attachment_names(published: Published, name: str) -> None:
    with pytest.raises(bundle.BundleError):
        bundle.bundle_files(
            verdict_keys=[published.verdict_pem],
            tsa_certificates=published.ca_pems,
            log_vkey=published.log_vkey,
            receipts=published.receipts,
            attachments={name: b"x"},
        )


# --- tampering ------------------------------------------------------------------------------


def test_one_flipped_byte_in_any_file_fails_even_with_a_matching_manifest(published: Published) -> None:
    members = _members(published.data)
    for name, content in members.items():
        for position in sorted({0, 1, len(content) // 3, len(content) // 2, len(content) - 2, len(content) - 1}):
            tampered = _rezip({**members, name: _flipped(content, position)}, fix_manifest=name != "manifest.json")

            failed = _failed(published.verify(tampered))

            assert failed, f"{name}[{position}] flipped passes"
            if name != "manifest.json":
                assert failed - {"manifest"}, f"{name}[{position}] flipped is caught only by the manifest"


def test_one_flipped_byte_in_a_bundled_key_fails_without_anchors_too(published: Published) -> None:
    members = _members(published.data)
    for name in ("keys/verdict.pem", "keys/tsa-chain.pem", "keys/log.vkey"):
        content = members[name]
        for position in (0, len(content) // 2, len(content) - 1):
            tampered = _rezip({**members, name: _flipped(content, position)})

            assert _failed(bundle.verify_bundle(tampered)) - {"manifest"}, f"{name}[{position}]"


def test_a_flipped_byte_without_a_fixed_manifest_fails_the_manifest(published: Published) -> None:
    members = _members(published.data)
    tampered = _rezip({**members, "report.html": _flipped(members["report.html"], 3)}, fix_manifest=False)

    assert _failed(published.verify(tampered)) == {"manifest", "attachments"}


def test_an_extra_file_is_refused(published: Published) -> None:
    tampered = _rezip({**_members(published.data), "plots/extra.png": _png(2)})

    checks = published.verify(tampered)

    assert _failed(checks) == {"attachments"}
    assert "plots/extra.png is not in the signed attachments" in next(c.detail for c in checks if not c.ok)


def test_a_missing_receipt_is_refused(published: Published) -> None:
    members = {n: d for n, d in _members(published.data).items() if not n.startswith("receipts/")}

    assert _failed(published.verify(_rezip(members))) >= {"attachments", "claims"}


def test_a_missing_token_is_refused(published: Published) -> None:
    members = {n: d for n, d in _members(published.data).items() if n != "verdict-token.der"}

    failed = _failed(published.verify(_rezip(members)))

    assert failed >= {"verdict token signature", "verdict token imprint", "log inclusion", "timeline"}


def test_other_trust_anchors_fail(published: Published, owner: Any, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from tests.modelcourt.receipt_factory import make_tsa
    from timestamps import note

    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    stranger_pem = stranger.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    _, other_ca, _ = make_tsa()
    other_log = note.verifier_key(settings.MODELCOURT_LOG_ORIGIN, ed25519.Ed25519PrivateKey.generate().public_key())

    assert "envelope signature" in _failed(published.verify(verdict_keys=[stranger_pem]))
    assert "verdict token signature" in _failed(published.verify(ca_pems=[other_ca]))
    assert "checkpoint signature" in _failed(published.verify(log_vkey=other_log))


@pytest.mark.parametrize(
    ("anchors", "failing"),
    [
        ({"log_vkey": 5}, "log key"),
        ({"log_vkey": "not a key"}, "log key"),
        ({"ca_pems": [5]}, "trust anchors"),
        ({"ca_pems": ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]}, "trust anchors"),
        ({"ca_pems": []}, "trust anchors"),
        ({"verdict_keys": [None]}, "verdict keys"),
        ({"verdict_keys": []}, "verdict keys"),
        ({"verdict_keys": ["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"]}, "verdict keys"),
    ],
)
def test_unusable_anchors_are_failed_checks(published: Published, anchors: dict[str, Any], failing: str) -> None:
    assert failing in _failed(published.verify(**anchors))


def test_a_claim_stamped_after_the_verdict_fails_the_timeline(owner: Any, tmp_path: Path) -> None:
    late = publish(owner, tmp_path, late_claim=True)

    checks = late.verify()

    failed = _failed(checks)
    assert "timeline" in failed
    timeline = next(check for check in checks if check.name == "timeline")
    assert "not before the verdict's" in timeline.detail or "after the verdict" in timeline.detail


# --- log consistency ------------------------------------------------------------------------


def _consistency_label(published: Published) -> str:
    return f"log consistency {published.receipts[0]['commitment'][:16]}"


def _with_proof(published: Published, **changes: Any) -> bytes:
    """The bundle with its receipt's consistency proof changed, and a manifest to match."""
    members = _members(published.data)
    document = json.loads(members["consistency.json"])
    commitment = published.receipts[0]["commitment"]
    document["proofs"][commitment] = {**document["proofs"][commitment], **changes}
    return _rezip({**members, "consistency.json": bundle.json_file(document)})


def _tampered_hashes(hashes: list[str]) -> list[str]:
    raw = bytearray(base64.b64decode(hashes[-1]))
    raw[0] ^= 1
    return [*hashes[:-1], base64.b64encode(raw).decode()]


def test_a_tampered_consistency_proof_fails(published: Published) -> None:
    hashes = _consistency_proofs(_members(published.data))[published.receipts[0]["commitment"]]

    checks = published.verify(_with_proof(published, hashes=_tampered_hashes(hashes)))

    assert _failed(checks) == {_consistency_label(published)}
    assert "a fork or a rewrite" in next(c.detail for c in checks if not c.ok)


def test_a_proof_between_other_sizes_fails(published: Published) -> None:
    first = published.receipts[0]["log"]["tree_size"]

    checks = published.verify(_with_proof(published, first=first + 1))

    assert _failed(checks) == {_consistency_label(published)}
    assert "the checkpoints are at" in next(c.detail for c in checks if not c.ok)


def test_building_refuses_a_proof_that_does_not_hold(published: Published) -> None:
    members = _members(published.data)
    proofs = _consistency_proofs(members)
    commitment = published.receipts[0]["commitment"]

    with pytest.raises(bundle.BundleError, match="does not extend"):
        bundle.build_bundle(
            envelope_json=members["envelope.json"],
            token_der=members["verdict-token.der"],
            log=json.loads(members["log.json"]),
            verdict_keys=[published.verdict_pem],
            tsa_certificates=[members["keys/tsa-chain.pem"].decode()],
            log_vkey=published.log_vkey,
            receipts=published.receipts,
            attachments={"report.html": members["report.html"], "plots/p-values.png": members["plots/p-values.png"]},
            consistency_proofs={commitment: _tampered_hashes(proofs[commitment])},
        )


def test_a_v2_bundle_without_proofs_fails(published: Published) -> None:
    members = {n: d for n, d in _members(published.data).items() if n != "consistency.json"}

    checks = published.verify(_rezip(members))

    assert _failed(checks) == {"log consistency"}
    assert "has no consistency.json" in next(c.detail for c in checks if not c.ok)


def test_a_bundle_stripped_of_its_proofs_and_relabelled_v1_fails(
    published: Published, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a v2 bundle whose relay deleted consistency.json and relabelled the manifest v1
    members = {n: d for n, d in _members(published.data).items() if n != "consistency.json"}
    v1 = _rezip(members, fmt="modelcourt-verdict-bundle-v1")

    checks = published.verify(v1)

    # then the consistency check fails (not a warning), saying to download the bundle again
    assert _failed(checks) == {"log consistency"}
    assert not any(c.warning for c in checks)
    detail = next(c.detail for c in checks if not c.ok)
    assert "modelcourt-verdict-bundle-v1 bundles carry no consistency proofs" in detail
    assert "download the bundle again" in detail
    (tmp_path / "v1.zip").write_bytes(v1)
    assert cli_main(["verify", str(tmp_path / "v1.zip"), *_anchor_files(published, tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL log consistency: the bundle has no consistency.json" in out
    assert "WARN" not in out


def test_a_v1_bundle_does_not_carry_proofs(published: Published) -> None:
    v1 = _rezip(_members(published.data), fmt="modelcourt-verdict-bundle-v1")

    assert _failed(published.verify(v1)) == {"log consistency"}


def test_a_receipt_under_a_forked_log_fails(owner: Any, tmp_path: Path) -> None:
    # given a verdict whose claim's receipt is valid on its own, under a checkpoint of another history
    forked = publish(owner, tmp_path, forked=True)

    checks = forked.verify()

    # then only the consistency of the two checkpoints gives it away
    assert _failed(checks) == {_consistency_label(forked)}
    assert "a fork or a rewrite" in next(c.detail for c in checks if not c.ok)


def _go_document(published: Published, hashes: list[str] | None = None) -> dict[str, Any]:
    """Both checkpoints, the verdict token's inclusion and the receipt's consistency proof, for tests/gocheck."""
    members = _members(published.data)
    log = json.loads(members["log.json"])
    receipt = published.receipts[0]
    proof = json.loads(members["consistency.json"])["proofs"][receipt["commitment"]]
    leaf = _b64([merkle.leaf_hash(members["verdict-token.der"])])[0]
    return {
        "vkey": published.log_vkey,
        "notes": [receipt["log"]["checkpoint"], log["checkpoint"]],
        "inclusion": [
            {"index": log["index"], "size": log["tree_size"], "leaf_b64": leaf, "hashes_b64": log["inclusion_proof"]}
        ],
        "consistency": [{"first": proof["first"], "second": proof["second"], "hashes_b64": hashes or proof["hashes"]}],
    }


def test_go_accepts_the_bundles_consistency_proof(published: Published) -> None:
    require_go()

    result = go_verify(_go_document(published))

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok consistency") == 1


def test_go_rejects_a_tampered_bundle_consistency_proof(published: Published) -> None:
    require_go()
    hashes = _go_document(published)["consistency"][0]["hashes_b64"]

    result = go_verify(_go_document(published, _tampered_hashes(hashes)))

    assert result.returncode == 1
    assert "FAIL consistency" in result.stdout


# --- hostile archives -----------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"garbage", b"PK\x03\x04", b"PK\x05\x06" + bytes(18), bytes(1000)])
def test_garbage_is_a_failed_check(data: bytes) -> None:
    checks = bundle.verify_bundle(data)

    assert [check.name for check in checks] == ["bundle archive"]
    assert not all_ok(checks)


def test_truncated_bundles_fail_without_raising(published: Published) -> None:
    for size in (10, 100, len(published.data) // 2, len(published.data) - 22, len(published.data) - 1):
        assert not all_ok(published.verify(published.data[:size])), size


def test_random_damage_to_the_archive_never_raises(published: Published) -> None:
    rng = random.Random(7)
    for _ in range(60):
        checks = published.verify(_flipped(published.data, rng.randrange(len(published.data))))
        assert all(isinstance(check, Check) for check in checks)


def test_a_missing_file_path_is_a_failed_check(tmp_path: Path) -> None:
    checks = bundle.verify_bundle(tmp_path / "nowhere.zip")

    assert not checks[0].ok
    assert "cannot read" in checks[0].detail


def _raw_zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16
    return info


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([("../evil.html", b"x")], "unsafe"),
        ([("/etc/passwd", b"x")], "unsafe"),
        ([("plots\\..\\evil", b"x")], "unsafe"),
        ([("plots/../../evil", b"x")], "unsafe"),
        ([("C:/evil", b"x")], "unsafe"),
        ([("plots/", b"")], "unsafe"),
        ([(_symlink("report.html"), b"/etc/passwd")], "not a regular file"),
        ([("report.html", b"a"), ("REPORT.html", b"b")], "appears twice"),
    ],
)
def test_unsafe_entries_are_refused(entries: list[tuple[zipfile.ZipInfo | str, bytes]], reason: str) -> None:
    checks = bundle.verify_bundle(_raw_zip(entries))

    assert not checks[0].ok
    assert reason in checks[0].detail


def test_duplicate_entries_are_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("report.html", b"one")
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("report.html", b"two")

    checks = bundle.verify_bundle(buffer.getvalue())

    assert "appears twice" in checks[0].detail


def test_data_before_the_archive_is_refused(published: Published) -> None:
    assert "not a zip archive" in published.verify(b"#!/bin/sh\n" + published.data)[0].detail


def test_a_zip_bomb_is_refused_before_it_is_inflated() -> None:
    big = io.BytesIO()
    chunk = bytes(1024 * 1024)
    with (
        zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("report.html", "w", force_zip64=True) as handle,
    ):
        for _ in range(bundle.MAX_FILE_BYTES // len(chunk) + 1):
            handle.write(chunk)

    checks = bundle.verify_bundle(big.getvalue())

    assert not checks[0].ok
    assert "at most" in checks[0].detail


# --- the command line -----------------------------------------------------------------------


def _anchor_files(published: Published, tmp_path: Path) -> list[str]:
    (tmp_path / "ca.pem").write_text("".join(published.ca_pems))
    (tmp_path / "log.vkey").write_text(published.log_vkey + "\n")
    (tmp_path / "verdict.pem").write_text(published.verdict_pem)
    return [
        "--ca",
        str(tmp_path / "ca.pem"),
        "--log-key",
        str(tmp_path / "log.vkey"),
        "--verdict-key",
        str(tmp_path / "verdict.pem"),
    ]


def test_the_cli_verifies_a_bundle(published: Published, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "verdict.zip").write_bytes(published.data)

    status = cli_main(["verify", str(tmp_path / "verdict.zip"), *_anchor_files(published, tmp_path)])

    out = capsys.readouterr().out
    assert status == 0, out
    assert "OK   envelope signature: signed by verdict key" in out
    assert "FAIL" not in out
    assert "WARN" not in out


def test_the_cli_fails_a_tampered_bundle(
    published: Published, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    members = _members(published.data)
    (tmp_path / "verdict.zip").write_bytes(_rezip({**members, "report.html": _flipped(members["report.html"], 5)}))

    status = cli_main(["verify", str(tmp_path / "verdict.zip"), *_anchor_files(published, tmp_path)])

    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL attachments: report.html has SHA-256" in out
    assert all(line[:4] in {"OK  ", "FAIL", "WARN"} for line in out.splitlines())


def test_the_cli_warns_when_told_to_trust_the_bundles_keys_and_fails_garbage(
    tmp_path: Path, published: Published, no_pins: Path, capsys: Any
) -> None:
    (tmp_path / "verdict.zip").write_bytes(published.data)
    (tmp_path / "garbage.zip").write_bytes(b"not a zip")

    assert cli_main(["verify", str(tmp_path / "verdict.zip"), "--insecure-trust-embedded-keys"]) == 0
    assert "WARN verdict keys:" in capsys.readouterr().out
    assert cli_main(["verify", str(tmp_path / "garbage.zip"), "--insecure-trust-embedded-keys"]) == 1
    assert capsys.readouterr().out.startswith("FAIL bundle archive: not a zip archive")


# --- pinned trust anchors and forged bundles ------------------------------------------------


@pytest.fixture
def no_pins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No trust file where the command looks by default."""
    monkeypatch.delenv(trust.TRUST_FILE_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config" / "modelcourt" / "trust.json"


def forge() -> bytes:
    """A bundle made wholly with a forger's own keys (CA and TSA, log, verdict): consistent, and lying."""
    signer, ca_pem, tsa_pem = make_tsa()
    origin = settings.MODELCOURT_LOG_ORIGIN
    log_key = ed25519.Ed25519PrivateKey.generate()
    log_vkey = note.verifier_key(origin, log_key.public_key())
    verdict_key = ec.generate_private_key(ec.SECP256R1())
    verdict_pem = verdict_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    store = merkle.MemoryHashStore()
    store.append_many([b"forged entry %d" % i for i in range(3)])

    def stamp(digest: bytes) -> bytes:
        query = rfc3161.build_query(digest, nonce=secrets.randbits(63))
        issued = rfc3161.issue_reply(query, signer=signer, serial=store.size, gen_time=datetime.now(UTC))
        assert issued.token_der is not None
        return issued.token_der

    def checkpoint() -> tuple[int, str]:
        text = note.checkpoint_text(origin, store.size, merkle.tree_hash(store.size, store.read))
        return store.size, note.sign_note(text, name=origin, private_key=log_key)

    model_digest = hashlib.sha256(b"the forger's model").hexdigest()
    commitment = commitments.commitment(
        model_digest=model_digest, evidence_digest="ee" * 32, kind="watermark", salt=secrets.token_hex(32)
    )
    token = stamp(bytes.fromhex(commitment))
    index = store.append(token)
    size, signed = checkpoint()
    info = rfc3161.parse_token(token)
    receipt = {
        "format": "modelcourt-receipt-v1",
        "commitment": commitment,
        "model_digest": model_digest,
        "kind": "watermark",
        "verifiable": False,
        "created_at": datetime.now(UTC).isoformat(),
        "timestamp": {
            "token_b64": base64.b64encode(token).decode(),
            "serial": info.serial,
            "gen_time": info.gen_time.isoformat(),
            "tsa_certificates_pem": [tsa_pem, ca_pem],
        },
        "log": {
            "origin": origin,
            "index": index,
            "tree_size": size,
            "inclusion_proof": _b64(merkle.inclusion_proof(index, size, store.read)),
            "checkpoint": signed,
            "verifier_key": log_vkey,
        },
    }
    parts: dict[str, Any] = {
        "verdict_keys": [verdict_pem],
        "tsa_certificates": [tsa_pem, ca_pem],
        "log_vkey": log_vkey,
        "receipts": [receipt],
        "attachments": {"report.html": b"<!doctype html><h1>Ownership confirmed</h1>\n"},
    }
    predicate = {
        "verdict_id": "0f0f0f0f-0000-4000-8000-000000000000",
        "outcome": "ownership_confirmed",
        "alpha": 0.001,
        "decision": {"outcome": "ownership_confirmed", "alpha": 0.001, "tests": [], "screens": [], "reasons": []},
        "suspect": {"digest": hashlib.sha256(b"the victim's model").hexdigest(), "kind": "artifact"},
        "claims": [{"commitment": commitment, "model_digest": model_digest, "kind": "watermark"}],
        "panel": {"hash": "ab" * 32, "size": 8},
        "code_version": "0.1.0+test",
        "decided_at": datetime.now(UTC).isoformat(),
        "attachments": bundle.attachment_digests(bundle.bundle_files(**parts)),
    }
    envelope = dsse.sign_envelope(
        dsse.statement_bytes(bundle.verdict_statement(predicate=predicate)),
        payload_type=dsse.INTOTO_PAYLOAD_TYPE,
        private_key=verdict_key,
        keyid=dsse.key_id(verdict_key.public_key()),
    )
    envelope_json = dsse.envelope_bytes(envelope)
    verdict_token = stamp(hashlib.sha256(envelope_json).digest())
    verdict_index = store.append(verdict_token)
    verdict_size, verdict_signed = checkpoint()
    log = {
        "origin": origin,
        "index": verdict_index,
        "tree_size": verdict_size,
        "inclusion_proof": _b64(merkle.inclusion_proof(verdict_index, verdict_size, store.read)),
        "checkpoint": verdict_signed,
    }
    return bundle.build_bundle(
        envelope_json=envelope_json,
        token_der=verdict_token,
        log=log,
        consistency_proofs={commitment: _b64(merkle.consistency_proof(size, verdict_size, store.read))},
        **parts,
    )


@pytest.fixture(scope="module")
def forged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("forged") / "verdict.zip"
    path.write_bytes(forge())
    return path


def _pinned(published: Published, tmp_path: Path, verdict_pems: list[str] | None = None) -> Path:
    """A trust file pinning the service's keys, as `modelcourt trust pin` writes it."""
    listing = key_listing(
        ca_pems=published.ca_pems, log_vkeys=[published.log_vkey], verdict_pems=verdict_pems or [published.verdict_pem]
    )
    return pin_file(tmp_path / "trust.json", listing)


def test_the_forged_bundle_holds_together_against_its_own_keys(forged: Path) -> None:
    # what makes the tests below meaningful: only the trust anchors tell it from a genuine one
    checks = bundle.verify_bundle(forged)

    assert all_ok(checks), [c for c in checks if not c.ok]
    assert {c.name for c in checks if c.warning} == {"verdict keys", "trust anchors", "log key"}


def test_without_anchors_and_without_trusting_the_bundle_the_anchor_checks_fail(forged: Path) -> None:
    checks = bundle.verify_bundle(forged, trust_embedded_keys=False)

    failed = _failed(checks)
    assert {"verdict keys", "trust anchors", "log key"} <= failed
    assert {"envelope signature", "verdict token signature", "checkpoint signature"} <= failed
    assert not any(c.warning for c in checks)


def test_the_cli_fails_a_forged_bundle_without_anchors(
    forged: Path, no_pins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli_main(["verify", str(forged)])

    captured = capsys.readouterr()
    assert status == 1
    assert "FAIL verdict keys: no trusted verdict key" in captured.out
    assert "FAIL trust anchors: no trusted TSA CA certificate" in captured.out
    assert "FAIL log key: no trusted log verifier key" in captured.out
    assert "OK   envelope signature" not in captured.out
    assert "WARN" not in captured.out
    missing = "no trusted TSA CA certificate (--ca), log key (--log-key), verdict key (--verdict-key) was given"
    assert missing in captured.err
    assert "modelcourt trust pin URL" in captured.err


def test_the_cli_fails_a_forged_bundle_against_the_pinned_keys_even_with_the_insecure_flag(
    forged: Path, published: Published, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _pinned(published, tmp_path)

    for extra in ([], ["--insecure-trust-embedded-keys"]):
        status = cli_main(["verify", str(forged), "--trust-file", str(path), *extra])

        out = capsys.readouterr().out
        assert status == 1
        assert "OK   pinned keys: TSA CA certificates, log keys, verdict keys of" in out
        for check in ("envelope signature", "verdict token signature", "checkpoint signature"):
            assert f"FAIL {check}: " in out
        assert "WARN" not in out


def test_only_the_insecure_flag_passes_a_forged_bundle_and_it_warns(
    forged: Path, no_pins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli_main(["verify", str(forged), "--insecure-trust-embedded-keys"])

    captured = capsys.readouterr()
    assert status == 0
    assert [line.split(":")[0] for line in captured.out.splitlines() if line.startswith("WARN")] == [
        "WARN verdict keys",
        "WARN trust anchors",
        "WARN log key",
    ]
    assert captured.err.startswith("warning: --insecure-trust-embedded-keys: ")


def test_the_cli_verifies_a_genuine_bundle_with_the_pinned_keys(
    published: Published, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "verdict.zip").write_bytes(published.data)
    # the default trust file: what `modelcourt trust pin URL` writes with no --trust-file
    monkeypatch.delenv(trust.TRUST_FILE_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "config" / "modelcourt").mkdir(parents=True)
    _pinned(published, tmp_path / "config" / "modelcourt")

    status = cli_main(["verify", str(tmp_path / "verdict.zip")])

    out = capsys.readouterr().out
    assert status == 0, out
    assert "OK   pinned keys: TSA CA certificates, log keys, verdict keys of https://modelcourt.example.org" in out
    assert "FAIL" not in out
    assert "WARN" not in out


def test_a_bundle_signed_by_a_retired_pinned_verdict_key_verifies(
    published: Published, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the service rotated: a new current key, and the one that signed this verdict, now retired
    rotated = ec.generate_private_key(ec.SECP256R1()).public_key()
    current = rotated.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    path = _pinned(published, tmp_path, verdict_pems=[current, published.verdict_pem])
    (tmp_path / "verdict.zip").write_bytes(published.data)

    assert cli_main(["verify", str(tmp_path / "verdict.zip"), "--trust-file", str(path)]) == 0
    assert "FAIL" not in capsys.readouterr().out
    assert all_ok(published.verify(log_vkey=[published.log_vkey], verdict_keys=[current, published.verdict_pem]))


# --- standard tools alone -------------------------------------------------------------------

# The commands README.md gives; `set -e` makes any failing step fail the script.
STANDARD_TOOLS_SCRIPT = r"""
set -euo pipefail
unzip -q verdict.zip -d v && cd v

# 1. The verdict token stamps envelope.json and chains to the CA you trust.
openssl ts -verify -data envelope.json -in verdict-token.der -token_in -CAfile ../ca.pem

# 2. The DSSE signature: rebuild the PAE from envelope.json and check it with the verdict key you trust.
jq -j .payload envelope.json | base64 -d > payload.json
jq -j .payloadType envelope.json > type.txt
jq -j '.signatures[0].sig' envelope.json | base64 -d > sig.der
printf 'DSSEv1 %d %s %d ' "$(wc -c < type.txt)" "$(cat type.txt)" "$(wc -c < payload.json)" \
  | cat - payload.json > pae.bin
openssl dgst -sha256 -verify ../verdict.pem -signature sig.der pae.bin

# 3. Every other file is the one the signed statement names.
jq -r '.predicate.attachments | to_entries[] | "\(.value)  \(.key)"' payload.json | sha256sum -c --quiet

# 4. The checkpoint is signed by the log key you trust (Ed25519 over the note text).
jq -j .checkpoint log.json > note.txt
sed -n '1,/^$/p' note.txt | head -c -1 > checkpoint.txt
tail -n 1 note.txt | cut -d' ' -f3 | base64 -d | tail -c +5 > checkpoint.sig
{ printf '302a300506032b6570032100' | xxd -r -p; cut -d+ -f3- ../log.vkey | base64 -d | tail -c +2; } > log.der
openssl pkeyutl -verify -pubin -inkey log.der -keyform DER -rawin -in checkpoint.txt -sigfile checkpoint.sig

# 5. The token is the log entry at the index given, under the checkpoint's root (RFC 9162 inclusion).
python3 - <<'EOF'
import base64, hashlib, json
log = json.load(open("log.json"))
h = lambda b: hashlib.sha256(b).digest()
r = h(b"\0" + open("verdict-token.der", "rb").read())
fn, sn = log["index"], log["tree_size"] - 1
for p in map(base64.b64decode, log["inclusion_proof"]):
    if fn & 1 or fn == sn:
        r = h(b"\1" + p + r)
        while fn and not fn & 1:
            fn, sn = fn >> 1, sn >> 1
    else:
        r = h(b"\1" + r + p)
    fn, sn = fn >> 1, sn >> 1
lines = log["checkpoint"].split("\n")
assert sn == 0 and base64.b64encode(r).decode() == lines[2] and int(lines[1]) == log["tree_size"], "not included"
print("inclusion OK")
EOF

# 6. The checkpointed log extends each receipt's checkpoint (RFC 9162 consistency, section 2.1.4.2).
python3 - <<'EOF'
import base64, hashlib, json
node = lambda l, r: hashlib.sha256(b"\1" + l + r).digest()
head = lambda note: (int(note.split("\n")[1]), base64.b64decode(note.split("\n")[2]))

def consistent(m, n, old_root, new_root, hashes):
    path = [base64.b64decode(x, validate=True) for x in hashes]
    if m & (m - 1) == 0:
        path.insert(0, old_root)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and (fr, sr) == (old_root, new_root)

n, new_root = head(json.load(open("log.json"))["checkpoint"])
for commitment, p in json.load(open("consistency.json"))["proofs"].items():
    m, old_root = head(json.load(open(f"receipts/{commitment}.json"))["log"]["checkpoint"])
    try:
        ok = (p["first"], p["second"]) == (m, n) and consistent(m, n, old_root, new_root, p["hashes"])
    except (ValueError, IndexError):  # unreadable hashes, or too few of them
        ok = False
    assert ok, f"not consistent: {commitment}"
print("consistency OK")
EOF
"""


def _run_standard_tools(published: Published, tmp_path: Path, data: bytes) -> subprocess.CompletedProcess[str]:
    (tmp_path / "verdict.zip").write_bytes(data)
    _anchor_files(published, tmp_path)
    return subprocess.run(
        ["bash", "-c", STANDARD_TOOLS_SCRIPT], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60
    )


@needs_shell_tools
def test_standard_tools_alone_verify_the_bundle(published: Published, tmp_path: Path) -> None:
    result = _run_standard_tools(published, tmp_path, published.data)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Verification: OK") == 1  # openssl ts
    assert result.stdout.count("Verified OK") == 1  # openssl dgst
    assert "Signature Verified Successfully" in result.stdout  # openssl pkeyutl
    assert "inclusion OK" in result.stdout
    assert "consistency OK" in result.stdout


@needs_shell_tools
@pytest.mark.parametrize(
    ("name", "marker", "failure"),
    [
        ("envelope.json", b'"payload": "', "message imprint mismatch"),  # openssl ts
        ("report.html", b"<h1>", "report.html: FAILED"),  # sha256sum -c
        ("log.json", b'"checkpoint": "', "Signature Verification Failure"),  # openssl pkeyutl
        ("consistency.json", b'"hashes": [\n        "', "not consistent"),  # the consistency step
    ],
)
def test_standard_tools_reject_a_flipped_byte(
    published: Published, tmp_path: Path, name: str, marker: bytes, failure: str
) -> None:
    members = _members(published.data)
    # Inside a JSON string, so that jq still reads the file and the cryptographic step is what fails.
    position = members[name].index(marker) + len(marker) + 2
    tampered = _rezip({**members, name: _flipped(members[name], position)})

    result = _run_standard_tools(published, tmp_path, tampered)

    assert result.returncode != 0, result.stdout
    assert failure in result.stdout + result.stderr
