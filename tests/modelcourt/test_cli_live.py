"""The `modelcourt` client against the real service (a live server in this process)."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rest_framework.authtoken.models import Token

from modelcourt.cli import main
from tests.ownership.model_files import torchscript_file


@pytest.fixture(autouse=True)
def inline_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cpu worker here: the upload's check runs when its task is published, as a worker would run it."""
    from ownership import services, tasks

    monkeypatch.setattr(
        tasks,
        "model_validate_task",
        type("Inline", (), {"delay": staticmethod(lambda model_id: services.model_validate(model_id=model_id))}),
    )


@pytest.mark.django_db(transaction=True)
def test_register_generate_fetch_and_verify_through_the_cli(
    live_server: Any,
    owner,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    token = Token.objects.create(user=owner).key
    common = ["--url", live_server.url, "--token", token]

    # register
    assert main([*common, "register", str(torchscript_file(tmp_path / "mlp.pt")), "--name", "cli-mlp",
                 "--input-shape", "1,8,8", "--classes", "10"]) == 0  # fmt: skip
    model = json.loads(capsys.readouterr().out)
    assert model["format"] == "torchscript"

    # generate a watermark and keep its triggers
    out = tmp_path / "triggers.npz"
    assert main([*common, "evidence", "generate", model["id"], "--count", "30", "--out", str(out)]) == 0
    generated = json.loads(capsys.readouterr().out)
    with np.load(out, allow_pickle=False) as triggers:
        assert triggers["inputs"].shape == (30, 1, 8, 8)

    # add an own evidence file too
    np.savez(tmp_path / "fp.npz", inputs=np.zeros((5, 1, 8, 8), np.float32), labels=np.arange(5, dtype=np.int64))
    assert main([*common, "evidence", "add", model["id"], str(tmp_path / "fp.npz"), "--kind", "fingerprint"]) == 0
    capsys.readouterr()

    # fetch the receipt and verify it offline against the published trust anchors
    receipt = tmp_path / "receipt.json"
    assert main([*common, "receipt", "get", generated["commitment"], "-o", str(receipt)]) == 0
    from rest_framework.test import APIClient

    public = APIClient()
    ca = "".join(k["certificate_pem"] for k in public.get("/api/v1/keys/").json() if k["purpose"] == "tsa-ca")
    (tmp_path / "ca.pem").write_text(ca)
    log_key = public.get("/api/v1/log/key").content.decode().strip()
    capsys.readouterr()
    assert main(["receipt", "verify", str(receipt), "--ca", str(tmp_path / "ca.pem"), "--log-key", log_key]) == 0
    report = capsys.readouterr().out
    assert "FAIL" not in report
    assert "log inclusion" in report


@pytest.mark.django_db(transaction=True)
def test_the_cli_reports_service_errors_in_one_line(
    live_server: Any,
    owner,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    token = Token.objects.create(user=owner).key
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not a model")

    status = main(["--url", live_server.url, "--token", token, "register", str(garbage), "--name", "x",
                   "--input-shape", "1,8,8", "--classes", "10"])  # fmt: skip

    assert status == 1
    err = capsys.readouterr().err
    # progress lines, then one line with the reason
    assert err.splitlines()[-1] == "error: the model was rejected: the file is not an ONNX or TorchScript model"
    assert "Traceback" not in err
