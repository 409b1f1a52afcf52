"""The registry over the API: registration, evidence, escrow, receipts, access control."""

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from rest_framework.test import APIClient

from ownership import artifacts, commitments, services, tasks
from ownership.models import EvidenceSet, RegisteredModel
from tests.ownership.model_files import fifty_megabyte_torchscript_file, onnx_file, torchscript_file

pytestmark = pytest.mark.django_db


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _watermark(n: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "inputs": rng.random((n, 1, 8, 8), dtype=np.float32),
        "labels": rng.integers(0, 10, n).astype(np.int64),
    }


def _register(client: APIClient, artifact: Path, name: str = "digits-mlp", shape: str = "[1, 8, 8]"):  # type: ignore[no-untyped-def]
    with artifact.open("rb") as handle:
        return client.post(
            "/api/v1/models/",
            {"name": name, "task": "8x8 digits", "input_shape": shape, "num_classes": 10, "artifact": handle},
            format="multipart",
        )


def _validated(client: APIClient, accepted: dict) -> dict:  # type: ignore[type-arg]
    """What a worker on the cpu queue does with an accepted registration, then the API's view of it."""
    services.model_validate(model_id=RegisteredModel.objects.get(public_id=accepted["id"]).pk)
    return client.get(accepted["status_url"]).json()


@pytest.fixture
def owner_client(owner) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(owner)
    return client


@pytest.fixture
def registered(owner_client: APIClient, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    response = _register(owner_client, torchscript_file(tmp_path / "mlp.pt"))
    assert response.status_code == 202, response.content
    model = _validated(owner_client, response.json())
    assert model["state"] == "active", model
    return model


def test_registration_answers_202_at_once_and_queues_the_sandbox_check(
    owner_client: APIClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sandbox ran inside the web request")

    monkeypatch.setattr(artifacts, "inspect_artifact", refuse)
    published: list[int] = []
    monkeypatch.setattr(tasks.model_validate_task, "delay", lambda model_id: published.append(model_id))
    artifact = torchscript_file(tmp_path / "mlp.pt")

    with django_capture_on_commit_callbacks(execute=True):
        response = _register(owner_client, artifact)

    assert response.status_code == 202, response.content
    body = response.json()
    model = RegisteredModel.objects.get(public_id=body["id"])
    assert (body["state"], body["format"], body["rejection_reason"]) == ("validating", None, "")
    assert body["status_url"] == f"/api/v1/models/{body['id']}" == response["Location"]
    assert body["digest"]["files"] == [{"name": "mlp.pt", "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest()}]
    assert published == [model.pk]
    assert model.dispatched_at is not None
    assert owner_client.get(body["status_url"]).json()["state"] == "validating"


def test_evidence_is_refused_until_the_model_is_active(
    owner_client: APIClient,
    tmp_path: Path,
) -> None:
    accepted = _register(owner_client, torchscript_file(tmp_path / "mlp.pt")).json()
    base = f"/api/v1/models/{accepted['id']}/evidence/"

    generated = owner_client.post(base + "generate", {"count": 5}, format="json")
    uploaded = owner_client.post(
        base, {"kind": "watermark", "file": SimpleUploadedFile("wm.npz", _npz(**_watermark()))}, format="multipart"
    )

    for response in (generated, uploaded):
        assert response.status_code == 400
        assert response.json()["code"] == "model_validating"
        assert "still being validated" in response.json()["detail"]
    assert not EvidenceSet.objects.exists()


def test_registering_torchscript_and_onnx_records_openssf_digests(owner_client: APIClient, tmp_path: Path) -> None:
    script = torchscript_file(tmp_path / "mlp.pt")
    onnx = onnx_file(tmp_path / "mlp.onnx")

    first = _validated(owner_client, _register(owner_client, script, name="scripted").json())
    second = _validated(owner_client, _register(owner_client, onnx, name="exported").json())

    assert (first["state"], second["state"]) == ("active", "active")
    assert (first["format"], second["format"]) == ("torchscript", "onnx")
    file_sha = hashlib.sha256(script.read_bytes()).hexdigest()
    assert first["digest"]["files"] == [{"name": "mlp.pt", "sha256": file_sha}]
    assert first["input_shape"] == [1, 8, 8]
    assert len(first["digest"]["model_digest"]) == 64
    assert RegisteredModel.objects.count() == 2


@pytest.mark.parametrize(
    ("shape", "classes", "reason"), [("[1, 28, 28]", 10, "[1, 28, 28]"), ("[1, 8, 8]", 5, "classes")]
)
def test_a_mismatched_artifact_ends_rejected_with_a_reason(
    owner_client: APIClient, tmp_path: Path, shape: str, classes: int, reason: str
) -> None:
    with torchscript_file(tmp_path / "mlp.pt").open("rb") as handle:
        response = owner_client.post(
            "/api/v1/models/",
            {"name": "m", "input_shape": shape, "num_classes": classes, "artifact": handle},
            format="multipart",
        )
    assert response.status_code == 202

    model = _validated(owner_client, response.json())

    assert model["state"] == "rejected"
    assert reason in model["rejection_reason"]
    assert model["format"] is None


def test_a_bad_shape_gets_a_400_at_once(owner_client: APIClient, tmp_path: Path) -> None:
    response = _register(owner_client, torchscript_file(tmp_path / "mlp.pt"), shape="one,two")

    assert response.status_code == 400
    assert "input shape" in response.json()["detail"]
    assert not RegisteredModel.objects.exists()


def test_pickles_are_refused_at_once_and_garbage_after_the_check(owner_client: APIClient, tmp_path: Path) -> None:
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x08\x01" + b"not a model" * 100)
    import torch

    pickled = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, pickled)
    raw_pickle = tmp_path / "weights.pkl"
    raw_pickle.write_bytes(b"\x80\x04\x95 a protocol 4 pickle")

    refused = _register(owner_client, raw_pickle, name="raw-pickle")
    assert refused.status_code == 400
    assert refused.json()["code"] == "artifact_rejected"
    assert "pickle" in refused.json()["detail"]
    for path in (garbage, pickled):  # a torch.save zip looks like TorchScript until the sandbox opens it
        accepted = _register(owner_client, path, name=path.name)
        assert accepted.status_code == 202, path
        model = _validated(owner_client, accepted.json())
        assert model["state"] == "rejected", path
    assert "not an ONNX or TorchScript model" in RegisteredModel.objects.get(name="model.onnx").rejection_reason
    assert "pickle" in RegisteredModel.objects.get(name="weights.pt").rejection_reason


def test_an_upload_over_the_limit_is_refused_cleanly(
    owner_client: APIClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "MODELCOURT_MAX_ARTIFACT_BYTES", 1000)
    response = _register(owner_client, torchscript_file(tmp_path / "mlp.pt"))
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    assert not RegisteredModel.objects.exists()


def test_evidence_upload_commits_and_escrows_without_plaintext(
    owner_client: APIClient,
    registered: dict,  # type: ignore[type-arg]
) -> None:
    arrays = _watermark()
    upload = SimpleUploadedFile("wm.npz", _npz(**arrays))

    response = owner_client.post(
        f"/api/v1/models/{registered['id']}/evidence/", {"kind": "watermark", "file": upload}, format="multipart"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["verifiable"] is False
    stored = EvidenceSet.objects.get(commitment=body["commitment"])
    # no plaintext in the database: neither the trigger bytes nor the salt
    opening = owner_client.get(f"/api/v1/models/{registered['id']}/evidence/{body['id']}/opening").json()
    needle_inputs = arrays["inputs"].tobytes()[:48]
    with connection.cursor() as cursor:
        cursor.execute("SELECT escrow FROM ownership_evidenceset WHERE id = %s", [stored.pk])
        raw = bytes(cursor.fetchone()[0])
    assert needle_inputs not in raw
    assert opening["salt"].encode() not in raw
    assert bytes.fromhex(opening["salt"]) not in raw
    # nor on disk
    for path in Path(settings.MEDIA_ROOT).rglob("*"):
        if path.is_file():
            assert needle_inputs not in path.read_bytes()
    # and the opening reproduces the public commitment
    recomputed = commitments.commitment(
        model_digest=registered["digest"]["model_digest"],
        evidence_digest=commitments.evidence_digest(arrays),
        kind="watermark",
        salt=opening["salt"],
    )
    assert recomputed == body["commitment"]


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        ({"inputs": np.zeros((3, 1, 8, 8), np.float64), "labels": np.zeros(3, np.int64)}, "float32"),
        ({"inputs": np.zeros((3, 1, 8, 8), np.float32), "labels": np.full(3, 10, np.int64)}, "label"),
        ({"inputs": np.zeros((3, 64), np.float32), "labels": np.zeros(3, np.int64)}, "shape"),
    ],
)
def test_invalid_evidence_gets_a_400_with_a_reason(
    owner_client: APIClient,
    registered: dict,  # type: ignore[type-arg]
    arrays: dict[str, np.ndarray],
    reason: str,
) -> None:
    upload = SimpleUploadedFile("wm.npz", _npz(**arrays))
    response = owner_client.post(
        f"/api/v1/models/{registered['id']}/evidence/", {"kind": "watermark", "file": upload}, format="multipart"
    )
    assert response.status_code == 400
    assert reason in response.json()["detail"]


def test_generated_watermark_is_verifiable_and_returned(
    owner_client: APIClient,
    registered: dict,  # type: ignore[type-arg]
) -> None:
    response = owner_client.post(
        f"/api/v1/models/{registered['id']}/evidence/generate", {"count": 40, "low": 0, "high": 1}, format="json"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["verifiable"] is True
    with np.load(io.BytesIO(base64.b64decode(body["evidence_npz_b64"])), allow_pickle=False) as triggers:
        assert triggers["inputs"].shape == (40, 1, 8, 8)
        assert triggers["labels"].max() < 10
        opening = owner_client.get(f"/api/v1/models/{registered['id']}/evidence/{body['id']}/opening").json()
        from ownership.watermarks import generate_watermark

        regenerated = generate_watermark(
            seed=bytes.fromhex(opening["seed"]), count=40, input_shape=[1, 8, 8], num_classes=10
        )
        np.testing.assert_array_equal(regenerated["inputs"], triggers["inputs"])


def test_receipts_are_public_and_carry_no_evidence(
    owner_client: APIClient,
    registered: dict,  # type: ignore[type-arg]
) -> None:
    generated = owner_client.post(
        f"/api/v1/models/{registered['id']}/evidence/generate", {"count": 10}, format="json"
    ).json()

    receipt = APIClient().get(generated["receipt_url"])

    assert receipt.status_code == 200
    body = receipt.json()
    assert body["commitment"] == generated["commitment"]
    assert body["log"]["index"] == generated["serial"]
    assert "salt" not in str(body)
    assert "seed" not in body
    assert "evidence_npz_b64" not in body
    assert APIClient().get("/api/v1/receipts/" + "0" * 64).status_code == 404
    assert APIClient().get("/api/v1/receipts/not-hex").status_code == 404


def test_bad_generation_parameters_get_400s(owner_client: APIClient, registered: dict) -> None:  # type: ignore[type-arg]
    url = f"/api/v1/models/{registered['id']}/evidence/generate"
    assert owner_client.post(url, {"count": 0}, format="json").status_code == 400
    assert owner_client.post(url, {"count": 5, "low": 1, "high": 0}, format="json").status_code == 400


def test_delete_removes_the_model_and_its_artifact(
    owner_client: APIClient,
    registered: dict,  # type: ignore[type-arg]
    django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
) -> None:
    model = RegisteredModel.objects.get(public_id=registered["id"])
    artifact_path = Path(model.artifact.path)

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.delete(f"/api/v1/models/{registered['id']}")

    assert response.status_code == 204
    assert not RegisteredModel.objects.exists()
    assert not artifact_path.exists()


OWNER_ENDPOINTS = [
    ("get", "/api/v1/models/{model}"),
    ("delete", "/api/v1/models/{model}"),
    ("get", "/api/v1/models/{model}/artifact"),
    ("get", "/api/v1/models/{model}/evidence/"),
    ("post", "/api/v1/models/{model}/evidence/"),
    ("post", "/api/v1/models/{model}/evidence/generate"),
    ("get", "/api/v1/models/{model}/evidence/{evidence}/opening"),
]


def test_nobody_else_reaches_an_owners_models_or_evidence(
    owner_client: APIClient,
    registered: dict,  # type: ignore[type-arg]
    arbiter,  # type: ignore[no-untyped-def]
) -> None:
    # One registration for the whole matrix: each one costs a sandboxed model load.
    from tests.conftest import _user

    evidence = owner_client.post(
        f"/api/v1/models/{registered['id']}/evidence/generate", {"count": 5}, format="json"
    ).json()
    other_owner = APIClient()
    other_owner.force_authenticate(_user("mallory", "owner"))
    an_arbiter = APIClient()
    an_arbiter.force_authenticate(arbiter)
    actors = {"other owner": (other_owner, 404), "arbiter": (an_arbiter, 403), "anonymous": (APIClient(), 401)}

    seen = {}
    for method, template in OWNER_ENDPOINTS:
        url = template.format(model=registered["id"], evidence=evidence["id"])
        for actor, (client, _) in actors.items():
            response = getattr(client, method)(url, {}, format="json")
            seen[(method, template, actor)] = response.status_code
            assert "salt" not in response.content.decode()

    expected = {(m, t, actor): code for m, t in OWNER_ENDPOINTS for actor, (_, code) in actors.items()}
    assert seen == expected
    assert RegisteredModel.objects.filter(public_id=registered["id"]).exists()
    assert owner_client.get(f"/api/v1/models/{registered['id']}").status_code == 200


def test_other_owners_see_an_empty_list(registered: dict) -> None:  # type: ignore[type-arg]
    from tests.conftest import _user

    client = APIClient()
    client.force_authenticate(_user("mallory", "owner"))
    assert client.get("/api/v1/models/").json() == []


@pytest.mark.slow
def test_a_50_mb_artifact_registers(owner_client: APIClient, tmp_path: Path) -> None:
    artifact = fifty_megabyte_torchscript_file(tmp_path / "big.pt")
    assert artifact.stat().st_size > 50_000_000

    response = _register(owner_client, artifact, name="big")

    assert response.status_code == 202, response.content
    assert response.json()["size"] == artifact.stat().st_size
    assert _validated(owner_client, response.json())["state"] == "active"


def test_large_evidence_uploads_never_touch_the_disk(
    owner_client: APIClient,
    registered: dict,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import django.core.files.uploadhandler as handlers

    # given an evidence file above Django's in-memory threshold (it would spill to /tmp)
    monkeypatch.setattr(settings, "FILE_UPLOAD_MAX_MEMORY_SIZE", 64 * 1024)
    arrays = _watermark(n=1000)
    data = _npz(**arrays)
    assert len(data) > settings.FILE_UPLOAD_MAX_MEMORY_SIZE
    spilled = []
    original = handlers.TemporaryFileUploadHandler.new_file

    def spy(self, field_name, *args, **kwargs):  # type: ignore[no-untyped-def]
        spilled.append(field_name)
        return original(self, field_name, *args, **kwargs)

    monkeypatch.setattr(handlers.TemporaryFileUploadHandler, "new_file", spy)

    # when it is uploaded
    response = owner_client.post(
        f"/api/v1/models/{registered['id']}/evidence/",
        {"kind": "watermark", "file": SimpleUploadedFile("wm.npz", data)},
        format="multipart",
    )

    # then it was committed without a temporary file
    assert response.status_code == 201, response.content
    assert "file" not in spilled
