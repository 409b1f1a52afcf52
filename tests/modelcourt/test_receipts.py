"""Offline receipt verification on real tokens, logs and checkpoints built without the service."""

import base64
import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelcourt.receipts import Check, all_ok, verify_receipt
from tests.modelcourt.receipt_factory import ORIGIN, ReceiptBundle, make_receipt, make_tsa, npz_bytes
from timestamps import note

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def bundle() -> ReceiptBundle:
    return make_receipt()


def _failed(checks: list[Check]) -> set[str]:
    return {check.name for check in checks if not check.ok}


def _verify(bundle: ReceiptBundle, receipt: dict[str, Any] | None = None, **kwargs: Any) -> list[Check]:
    options: dict[str, Any] = {"ca_pems": [bundle.ca_pem], "log_vkey": bundle.log_vkey, **kwargs}
    return verify_receipt(bundle.receipt if receipt is None else receipt, **options)


def test_a_genuine_receipt_and_its_opening_pass_every_check(bundle: ReceiptBundle) -> None:
    checks = _verify(bundle, opening=bundle.opening)

    assert all_ok(checks), checks
    assert not any(check.warning for check in checks)
    assert {"token signature", "token imprint", "checkpoint signature", "log inclusion", "commitment"} <= {
        check.name for check in checks
    }


def test_evidence_and_salt_open_the_commitment_without_an_opening(bundle: ReceiptBundle) -> None:
    checks = _verify(bundle, evidence_npz=bundle.npz, salt=bundle.salt, seed=bundle.seed)

    assert all_ok(checks), checks


def test_trust_taken_from_the_receipt_passes_with_warnings(bundle: ReceiptBundle) -> None:
    checks = verify_receipt(bundle.receipt, ca_pems=None, log_vkey=None)

    assert all_ok(checks), checks
    assert {check.name for check in checks if check.warning} == {"trust anchors", "log key"}


def test_without_anchors_and_without_trusting_the_receipt_the_anchor_checks_fail(bundle: ReceiptBundle) -> None:
    checks = verify_receipt(bundle.receipt, ca_pems=None, log_vkey=None, trust_embedded_keys=False)

    assert {"trust anchors", "token signature", "log key", "checkpoint signature", "log inclusion"} <= _failed(checks)
    assert not any(check.warning for check in checks)
    assert "modelcourt trust pin URL" in next(c.detail for c in checks if c.name == "trust anchors")


def test_given_anchors_need_no_trust_in_the_receipt(bundle: ReceiptBundle) -> None:
    assert all_ok(_verify(bundle, trust_embedded_keys=False))


def test_a_checkpoint_signed_by_any_of_several_log_keys_passes(bundle: ReceiptBundle) -> None:
    # keys rotate: the pinned keys are the log's current and retired ones
    retired = note.verifier_key(ORIGIN, Ed25519PrivateKey.generate().public_key())

    checks = _verify(bundle, log_vkey=[retired, bundle.log_vkey])

    assert all_ok(checks), checks
    assert "(2 keys)" in next(c.detail for c in checks if c.name == "log key")
    assert "checkpoint signature" in _failed(_verify(bundle, log_vkey=[retired]))
    assert "log key" in _failed(_verify(bundle, log_vkey=[]))
    assert "log key" in _failed(_verify(bundle, log_vkey=[bundle.log_vkey, 5]))


def test_one_flipped_evidence_byte_breaks_the_commitment(bundle: ReceiptBundle) -> None:
    inputs = bundle.arrays["inputs"].copy()
    inputs.view("u1")[0, 0, 0, 0] ^= 1
    tampered = npz_bytes({**bundle.arrays, "inputs": inputs})

    checks = _verify(bundle, evidence_npz=tampered, salt=bundle.salt, seed=bundle.seed)

    assert _failed(checks) == {"commitment"}


def test_an_opening_with_other_evidence_fails_its_digest_and_the_commitment(bundle: ReceiptBundle) -> None:
    other = npz_bytes({**bundle.arrays, "labels": (bundle.arrays["labels"] + 1) % 10})
    opening = {**bundle.opening, "evidence_npz_b64": base64.b64encode(other).decode()}

    assert _failed(_verify(bundle, opening=opening)) == {"evidence digest", "commitment"}


def test_a_wrong_salt_breaks_the_commitment(bundle: ReceiptBundle) -> None:
    checks = _verify(bundle, evidence_npz=bundle.npz, salt="0" * 64, seed=bundle.seed)

    assert _failed(checks) == {"commitment"}


def test_a_missing_seed_breaks_the_commitment_of_a_generated_watermark(bundle: ReceiptBundle) -> None:
    checks = _verify(bundle, evidence_npz=bundle.npz, salt=bundle.salt)

    assert _failed(checks) == {"commitment"}


def _flip_last_token_byte(receipt: dict[str, Any], bundle: ReceiptBundle) -> None:
    # The token ends in the ECDSA signature: the token still parses, but no longer verifies.
    token = bytearray(bundle.token_der)
    token[-1] ^= 1
    receipt["timestamp"]["token_b64"] = base64.b64encode(bytes(token)).decode()


def _alter_proof_hash(receipt: dict[str, Any], bundle: ReceiptBundle) -> None:
    first = bytearray(base64.b64decode(receipt["log"]["inclusion_proof"][0]))
    first[0] ^= 1
    receipt["log"]["inclusion_proof"][0] = base64.b64encode(bytes(first)).decode()


def _other_commitment(receipt: dict[str, Any], bundle: ReceiptBundle) -> None:
    receipt["commitment"] = "ab" * 32


@pytest.mark.parametrize(
    ("tamper", "failing"),
    [
        pytest.param(_flip_last_token_byte, {"token signature", "log inclusion"}, id="tampered token"),
        pytest.param(_alter_proof_hash, {"log inclusion"}, id="altered proof hash"),
        pytest.param(lambda r, b: r["log"].update(index=r["log"]["index"] + 1), {"log inclusion"}, id="wrong index"),
        pytest.param(lambda r, b: r["log"].update(index=10**6), {"log inclusion"}, id="index beyond the tree"),
        pytest.param(lambda r, b: r["log"].update(tree_size=r["log"]["tree_size"] + 1), {"checkpoint size"}, id="size"),
        pytest.param(
            lambda r, b: r["log"].update(origin="other.example/log"),
            {"checkpoint signature", "checkpoint size", "log inclusion"},
            id="origin",
        ),
        pytest.param(lambda r, b: r["timestamp"].update(serial=99), {"token metadata"}, id="wrong serial"),
        pytest.param(_other_commitment, {"token imprint"}, id="other commitment"),
    ],
)
def test_tampering_fails_the_right_check(
    bundle: ReceiptBundle, tamper: Callable[[dict[str, Any], ReceiptBundle], None], failing: set[str]
) -> None:
    receipt = copy.deepcopy(bundle.receipt)
    tamper(receipt, bundle)

    assert _failed(_verify(bundle, receipt)) == failing


def test_a_token_under_another_ca_fails_its_signature(bundle: ReceiptBundle) -> None:
    _, other_ca, _ = make_tsa()

    assert _failed(_verify(bundle, ca_pems=[other_ca])) == {"token signature"}


def test_a_checkpoint_under_another_log_key_fails_its_signature(bundle: ReceiptBundle) -> None:
    other_key = note.verifier_key(ORIGIN, Ed25519PrivateKey.generate().public_key())

    checks = _verify(bundle, log_vkey=other_key)

    assert _failed(checks) == {"checkpoint signature", "checkpoint size", "log inclusion"}


def test_an_unreadable_ca_or_log_key_fails_without_raising(bundle: ReceiptBundle) -> None:
    checks = _verify(bundle, ca_pems=["not a certificate"], log_vkey="not a key")

    assert {"trust anchors", "token signature", "log key", "checkpoint signature"} <= _failed(checks)


@pytest.mark.parametrize(
    "receipt",
    [{}, [], {"format": "modelcourt-receipt-v1", "timestamp": {"token_b64": "%%%"}, "log": {"inclusion_proof": 3}}],
    ids=["empty", "not an object", "garbled"],
)
def test_malformed_receipts_give_failed_checks(bundle: ReceiptBundle, receipt: Any) -> None:
    checks = verify_receipt(receipt, ca_pems=[bundle.ca_pem], log_vkey=bundle.log_vkey, evidence_npz=b"junk", salt="x")

    assert "receipt format" in _failed(checks)
    assert not all_ok(checks)


def test_a_garbled_opening_gives_failed_checks(bundle: ReceiptBundle) -> None:
    checks = _verify(bundle, opening={"format": "modelcourt-opening-v1", "evidence_npz_b64": "bm90IGFuIG5weg=="})

    assert {"opening format", "evidence digest", "commitment", "model digest"} <= _failed(checks)


@needs_openssl
def test_openssl_verifies_the_receipts_token_against_the_commitment(bundle: ReceiptBundle, tmp_path: Path) -> None:
    (tmp_path / "token.der").write_bytes(base64.b64decode(bundle.receipt["timestamp"]["token_b64"]))
    (tmp_path / "ca.pem").write_text(bundle.ca_pem)
    (tmp_path / "tsa.pem").write_text(bundle.tsa_pem)
    command = ["openssl", "ts", "-verify", "-digest", bundle.receipt["commitment"], "-token_in", "-in", "token.der"]

    verified = subprocess.run(
        [*command, "-CAfile", "ca.pem", "-untrusted", "tsa.pem"], cwd=tmp_path, capture_output=True, text=True
    )
    refused = subprocess.run(
        ["openssl", "ts", "-verify", "-digest", "00" * 32, "-token_in", "-in", "token.der", "-CAfile", "ca.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )

    assert "Verification: OK" in verified.stdout, verified.stderr
    assert "Verification: FAILED" in refused.stdout + refused.stderr
