"""A receipt downloaded from the API verifies offline: the CLI's checks and openssl; one byte off fails."""

import base64
import io
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rest_framework.test import APIClient

from modelcourt import trust
from modelcourt.cli import main as cli_main
from modelcourt.receipts import all_ok, verify_receipt
from ownership import services
from ownership.models import RegisteredModel
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
    # the API answers while the sandbox check is queued; the worker's part, run here
    services.model_validate(model_id=RegisteredModel.objects.get(public_id=model["id"]).pk)
    evidence = client.post(f"/api/v1/models/{model['id']}/evidence/generate", {"count": 25}, format="json").json()
    opening = client.get(f"/api/v1/models/{model['id']}/evidence/{evidence['id']}/opening").json()
    anonymous = APIClient()
    listing = anonymous.get("/api/v1/keys/")
    keys = listing.json()
    log_key = anonymous.get("/api/v1/log/key")
    return {
        "receipt": anonymous.get(evidence["receipt_url"]).json(),
        "opening": opening,
        "ca_pems": [k["certificate_pem"] for k in keys if k["purpose"] == "tsa-ca"],
        "log_vkey": log_key.content.decode().strip(),
        # the API's answers byte for byte, for a stub HTTP server to give `modelcourt trust pin`
        "answers": {"/api/v1/keys/": listing.content, "/api/v1/log/key": log_key.content},
    }


@pytest.fixture
def serving(published: dict) -> Iterator[str]:  # type: ignore[type-arg]
    """An HTTP server giving the service's key endpoints' real answers (this test's database is not shared)."""
    answers = published["answers"]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = (200, answers[self.path]) if self.path in answers else (404, b"{}")
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


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


def test_the_cli_verifies_the_receipt_with_keys_pinned_from_the_api(
    published: dict,  # type: ignore[type-arg]
    serving: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "receipt.json").write_text(json.dumps(published["receipt"]))
    (tmp_path / "opening.json").write_text(json.dumps(published["opening"]))
    trust_file = str(tmp_path / "trust.json")

    assert cli_main(["trust", "pin", serving, "--trust-file", trust_file]) == 0
    pinned = capsys.readouterr().out
    assert published["log_vkey"] in pinned
    args = ["receipt", "verify", str(tmp_path / "receipt.json"), "--opening", str(tmp_path / "opening.json")]

    assert cli_main([*args, "--trust-file", trust_file]) == 0
    out = capsys.readouterr().out
    assert "OK   pinned keys: " in out
    assert "FAIL" not in out
    assert "WARN" not in out


def test_without_pinned_keys_the_cli_does_not_pass_the_receipt(
    published: dict,  # type: ignore[type-arg]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MODELCOURT_TRUST_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "receipt.json").write_text(json.dumps(published["receipt"]))

    assert cli_main(["receipt", "verify", str(tmp_path / "receipt.json")]) == 1
    assert "modelcourt trust pin URL" in capsys.readouterr().err


@pytest.mark.django_db(transaction=True)
def test_trust_pin_against_the_live_service_pins_its_keys(live_server: Any, tmp_path: Path) -> None:
    from timestamps import keys
    from timestamps.models import SigningKey

    trust_file = tmp_path / "trust.json"

    assert cli_main(["trust", "pin", live_server.url, "--trust-file", str(trust_file)]) == 0

    (service,) = trust.load_trust(trust_file)
    anchors = trust.anchors_of([service])
    assert service.url == live_server.url
    assert anchors.log_vkeys == [keys.log_verifier_key(keys.key_current(SigningKey.Purpose.LOG).record)]
    assert anchors.verdict_pems == [keys.key_current(SigningKey.Purpose.VERDICT).record.public_key_pem]
    assert anchors.ca_pems == [keys.key_current(SigningKey.Purpose.TSA_CA).record.certificate_pem]


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
