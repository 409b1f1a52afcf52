"""Real receipts and openings built from the pure trust-layer modules, without the Django service."""

import base64
import io
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from ownership import commitments, watermarks
from timestamps import merkle, note, pki, rfc3161

ORIGIN = "modelcourt.local/log"
POLICY = "1.3.6.1.4.1.55555.1.1"


@dataclass(frozen=True)
class ReceiptBundle:
    """A receipt with everything that made it: keys, evidence and the owner's opening."""

    receipt: dict[str, Any]
    opening: dict[str, Any]
    token_der: bytes
    ca_pem: str
    tsa_pem: str
    log_vkey: str
    arrays: dict[str, np.ndarray]
    npz: bytes
    salt: str
    seed: str


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz file's bytes."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def make_tsa() -> tuple[rfc3161.TsaSigner, str, str]:
    """A fresh CA and TSA: the signer, the CA PEM and the TSA leaf PEM."""
    now = datetime.now(UTC)
    ca_key = pki.generate_p256_key()
    ca = pki.make_ca_certificate(key=ca_key, common_name="Receipt Test CA", now=now)
    key = pki.generate_p256_key()
    leaf = pki.make_tsa_certificate(
        ca_key=ca_key, ca_cert=ca, public_key=key.public_key(), common_name="Receipt Test TSA", valid_days=30, now=now
    )
    signer = rfc3161.TsaSigner(
        private_key=key, certificate=leaf, chain=(ca,), policy_oid=POLICY, accuracy=timedelta(seconds=1)
    )
    return signer, ca.public_bytes(Encoding.PEM).decode(), leaf.public_bytes(Encoding.PEM).decode()


def make_receipt(*, entries_before: int = 12, entries_after: int = 27) -> ReceiptBundle:
    """Commit to a generated watermark, time-stamp the commitment, log the token and sign a checkpoint."""
    seed = secrets.token_bytes(32)
    arrays = watermarks.generate_watermark(seed=seed, count=20, input_shape=[1, 8, 8], num_classes=10)
    salt = secrets.token_hex(32)
    model_digest = secrets.token_hex(32)
    evidence_digest = commitments.evidence_digest(arrays)
    commitment = commitments.commitment(
        model_digest=model_digest, evidence_digest=evidence_digest, kind="watermark", salt=salt, seed=seed.hex()
    )

    store = merkle.MemoryHashStore()
    store.append_many([f"earlier entry {i}".encode() for i in range(entries_before)])
    signer, ca_pem, tsa_pem = make_tsa()
    query = rfc3161.build_query(bytes.fromhex(commitment), nonce=secrets.randbits(63))
    issued = rfc3161.issue_reply(query, signer=signer, serial=store.size, gen_time=datetime.now(UTC))
    assert issued.token_der is not None
    token = issued.token_der
    index = store.append(token)
    store.append_many([f"later entry {i}".encode() for i in range(entries_after)])

    size = store.size
    log_key = Ed25519PrivateKey.generate()
    root = merkle.tree_hash(size, store.read)
    checkpoint = note.sign_note(note.checkpoint_text(ORIGIN, size, root), name=ORIGIN, private_key=log_key)
    log_vkey = note.verifier_key(ORIGIN, log_key.public_key())
    info = rfc3161.parse_token(token)
    npz = npz_bytes(arrays)
    receipt = {
        "format": "modelcourt-receipt-v1",
        "commitment": commitment,
        "model_digest": model_digest,
        "kind": "watermark",
        "verifiable": True,
        "created_at": datetime.now(UTC).isoformat(),
        "timestamp": {
            "token_b64": base64.b64encode(token).decode(),
            "serial": info.serial,
            "gen_time": info.gen_time.isoformat(),
            "tsa_certificates_pem": [tsa_pem, ca_pem],
        },
        "log": {
            "origin": ORIGIN,
            "index": index,
            "tree_size": size,
            "inclusion_proof": [base64.b64encode(h).decode() for h in merkle.inclusion_proof(index, size, store.read)],
            "checkpoint": checkpoint,
            "verifier_key": log_vkey,
        },
    }
    opening = {
        "format": "modelcourt-opening-v1",
        "commitment": commitment,
        "model_digest": model_digest,
        "evidence_digest": evidence_digest,
        "kind": "watermark",
        "salt": salt,
        "seed": seed.hex(),
        "evidence_npz_b64": base64.b64encode(npz).decode(),
    }
    return ReceiptBundle(
        receipt=receipt,
        opening=opening,
        token_der=token,
        ca_pem=ca_pem,
        tsa_pem=tsa_pem,
        log_vkey=log_vkey,
        arrays=arrays,
        npz=npz,
        salt=salt,
        seed=seed.hex(),
    )
