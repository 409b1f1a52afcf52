"""A receipt downloaded from the API verifies offline: the CLI's checks and openssl; one byte off fails."""

import base64
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rest_framework.test import APIClient

from modelcourt.cli import main as cli_main
from modelcourt.receipts import all_ok, verify_receipt
from tests.ownership.model_files import torchscript_file

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(owner, tmp_path: Path) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """A registered model with a generated watermark: its receipt, opening and the public trust anchors."""
    client = APIClient()
    client.force_authenticate(owner)
    with torchscript_file(tmp_path / "mlp.pt").open("rb") as handle:
        model = client.post(
            "/api/v1/models/",
            {"name": "m", "input_shape": "1,8,8", "num_classes": 10, "artifact": handle},
            format="multipart",
        ).json()
    evidence = client.post(f"/api/v1/models/{model['id']}/evidence/generate", {"count": 25}, format="json").json()
    opening = client.get(f"/api/v1/models/{model['id']}/evidence/{evidence['id']}/opening").json()
    anonymous = APIClient()
    keys = anonymous.get("/api/v1/keys/").json()
    return {
        "receipt": anonymous.get(evidence["receipt_url"]).json(),
        "opening": opening,
        "ca_pems": [k["certificate_pem"] for k in keys if k["purpose"] == "tsa-ca"],
        "log_vkey": anonymous.get("/api/v1/log/key").content.decode().strip(),
    }


def test_the_receipt_and_its_opening_verify_offline(published: dict) -> None:  # type: ignore[type-arg]
    checks = verify_receipt(
        published["receipt"],
        ca_pems=published["ca_pems"],
        log_vkey=published["log_vkey"],
        opening=published["opening"],
    )
    assert all_ok(checks), [c for c in checks if not c.ok]
    assert {"commitment", "evidence digest", "log inclusion", "token signature"} <= {c.name for c in checks}


def test_one_byte_of_evidence_changed_breaks_the_commitment(published: dict) -> None:  # type: ignore[type-arg]
    opening = dict(published["opening"])
    with np.load(io.BytesIO(base64.b64decode(opening["evidence_npz_b64"])), allow_pickle=False) as data:
        arrays = {name: data[name].copy() for name in data.files}
    raw = bytearray(arrays["inputs"].tobytes())
    raw[0] ^= 0x01
    arrays["inputs"] = np.frombuffer(bytes(raw), dtype=np.float32).reshape(arrays["inputs"].shape)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)

    checks = verify_receipt(
        published["receipt"],
        ca_pems=published["ca_pems"],
        log_vkey=published["log_vkey"],
        evidence_npz=buffer.getvalue(),
        salt=opening["salt"],
        seed=opening["seed"],
    )

    failed = {c.name for c in checks if not c.ok}
    assert "commitment" in failed


def test_the_cli_verifies_the_downloaded_receipt(published: dict, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def, type-arg]
    (tmp_path / "receipt.json").write_text(json.dumps(published["receipt"]))
    (tmp_path / "opening.json").write_text(json.dumps(published["opening"]))
    (tmp_path / "ca.pem").write_text("".join(published["ca_pems"]))
    args = ["receipt", "verify", str(tmp_path / "receipt.json"), "--ca", str(tmp_path / "ca.pem")]
    args += ["--log-key", published["log_vkey"], "--opening", str(tmp_path / "opening.json")]

    assert cli_main(args) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_openssl_verifies_the_receipts_token(published: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    stamp = published["receipt"]["timestamp"]
    (tmp_path / "token.der").write_bytes(base64.b64decode(stamp["token_b64"]))
    (tmp_path / "ca.pem").write_text("".join(published["ca_pems"]))
    commitment = published["receipt"]["commitment"]

    ok = subprocess.run(
        ["openssl", "ts", "-verify", "-digest", commitment, "-token_in", "-in", "token.der", "-CAfile", "ca.pem"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    forged = subprocess.run(
        ["openssl", "ts", "-verify", "-digest", "ab" * 32, "-token_in", "-in", "token.der", "-CAfile", "ca.pem"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert "Verification: OK" in ok.stdout, ok.stderr
    assert forged.returncode != 0
