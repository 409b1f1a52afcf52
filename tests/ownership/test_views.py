"""The owner's web pages: sign-up, access control, the script-free forms with inline errors, downloads."""

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from ownership import services
from ownership.exceptions import ModelInDisputeError
from ownership.models import EvidenceSet, RegisteredModel
from tests.conftest import _user
from tests.ownership.model_files import onnx_file, torchscript_file

pytestmark = pytest.mark.django_db


def _signed_in(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _field_error(html: str, field: str) -> str:
    """The text of a field's inline error slot ("" when it is hidden or empty)."""
    match = re.search(
        rf'<div class="field-error" data-error-for="{field}" role="alert"( hidden)?>(.*?)</div>', html, re.S
    )
    assert match, f"no error slot for {field}"
    return "" if match.group(1) else match.group(2).strip()


def _form_error(html: str) -> str:
    """The texts of the visible form-level error boxes."""
    return " ".join(m.strip() for m in re.findall(r'<div class="error"[^>]*role="alert">(.*?)</div>', html, re.S))


@pytest.fixture
def owner_client(owner) -> Client:  # type: ignore[no-untyped-def]
    return _signed_in(owner)


@pytest.fixture
def model(owner, tmp_path: Path) -> RegisteredModel:  # type: ignore[no-untyped-def]
    artifact = torchscript_file(tmp_path / "mlp.pt")
    return services.model_register(
        owner=owner,
        name="digits-mlp",
        task="8x8 digits",
        input_shape=[1, 8, 8],
        num_classes=10,
        artifact=SimpleUploadedFile("mlp.pt", artifact.read_bytes()),
    )


@pytest.fixture
def watermark(model: RegisteredModel) -> EvidenceSet:
    evidence_set, _ = services.evidence_generate(model=model, count=20)
    return evidence_set


def _owner_urls(model: RegisteredModel, evidence: EvidenceSet) -> list[str]:
    base = f"/owner/models/{model.public_id}"
    return [
        "/owner/models/",
        "/owner/models/new/",
        f"{base}/",
        f"{base}/delete/",
        f"{base}/evidence/{evidence.public_id}/",
        f"{base}/evidence/{evidence.public_id}/triggers.npz",
        f"/owner/receipts/{evidence.commitment}.json",
    ]


# --- sign-up ------------------------------------------------------------------------------------


def test_sign_up_makes_an_owner_and_signs_them_in() -> None:
    client = Client()
    assert client.get("/accounts/signup/").status_code == 200

    response = client.post(
        "/accounts/signup/",
        {"username": "nadia", "password1": "a long passphrase 42", "password2": "a long passphrase 42"},
    )

    assert response.status_code == 302
    assert response["Location"] == "/owner/models/"
    user = get_user_model().objects.get(username="nadia")
    assert list(user.groups.values_list("name", flat=True)) == ["owner"]
    landing = client.get("/owner/models/")
    assert landing.status_code == 200
    assert b"Welcome, nadia" in landing.content
    assert b"No models yet" in landing.content


def test_sign_up_shows_its_errors_next_to_the_fields() -> None:
    response = Client().post(
        "/accounts/signup/", {"username": "nadia", "password1": "a long passphrase 42", "password2": "something else"}
    )

    assert response.status_code == 400
    assert "match" in _field_error(response.content.decode(), "password2")
    assert not get_user_model().objects.filter(username="nadia").exists()


# --- pages and who may see them -------------------------------------------------------------------


def test_every_page_renders_for_its_owner(owner_client: Client, model: RegisteredModel, watermark: EvidenceSet) -> None:
    listing = owner_client.get("/owner/models/").content.decode()
    assert "digits-mlp" in listing
    assert model.model_digest[:12] in listing
    assert "TorchScript" in listing

    register = owner_client.get("/owner/models/new/").content.decode()
    assert 'data-api-url="/api/v1/models/"' in register
    assert "ownership/owner.js" in register

    detail = owner_client.get(f"/owner/models/{model.public_id}/").content.decode()
    assert model.model_digest in detail  # in full, to copy
    assert watermark.commitment[:12] in detail
    assert "verifiable" in detail
    assert f"/owner/receipts/{watermark.commitment}.json" in detail

    evidence = owner_client.get(f"/owner/models/{model.public_id}/evidence/{watermark.public_id}/").content.decode()
    assert watermark.commitment in evidence
    assert "modelcourt.embed" in evidence
    assert f"/evidence/{watermark.public_id}/triggers.npz" in evidence

    confirm = owner_client.get(f"/owner/models/{model.public_id}/delete/")
    assert confirm.status_code == 200
    assert b"Delete digits-mlp?" in confirm.content


def test_empty_states_say_what_to_do_next(owner_client: Client, model: RegisteredModel) -> None:
    assert b"No evidence yet" in owner_client.get(f"/owner/models/{model.public_id}/").content
    RegisteredModel.objects.all().delete()
    assert b"No models yet" in owner_client.get("/owner/models/").content


def test_anonymous_visitors_are_sent_to_sign_in(model: RegisteredModel, watermark: EvidenceSet) -> None:
    for url in _owner_urls(model, watermark):
        response = Client().get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next="), url


def test_users_without_the_owner_role_are_refused(arbiter, model: RegisteredModel, watermark: EvidenceSet) -> None:  # type: ignore[no-untyped-def]
    client = _signed_in(arbiter)
    for url in _owner_urls(model, watermark):
        assert client.get(url).status_code == 403, url
    assert client.post(f"/owner/models/{model.public_id}/delete/").status_code == 403
    assert RegisteredModel.objects.filter(pk=model.pk).exists()


def test_another_owner_finds_nothing(model: RegisteredModel, watermark: EvidenceSet) -> None:
    client = _signed_in(_user("mallory", "owner"))
    for url in _owner_urls(model, watermark)[2:]:
        assert client.get(url).status_code == 404, url
    base = f"/owner/models/{model.public_id}"
    assert client.post(f"{base}/delete/").status_code == 404
    assert client.post(f"{base}/evidence/generate/", {"count": 5, "low": 0, "high": 1}).status_code == 404
    assert RegisteredModel.objects.filter(pk=model.pk).exists()
    assert model.evidence_sets.count() == 1
    assert "digits-mlp" not in client.get("/owner/models/").content.decode()


# --- registration without a script -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "filename", "label"), [(torchscript_file, "mlp.pt", "TorchScript"), (onnx_file, "mlp.onnx", "ONNX")]
)
def test_registering_without_a_script(owner_client: Client, tmp_path: Path, make, filename: str, label: str) -> None:  # type: ignore[no-untyped-def]
    artifact = make(tmp_path / filename)

    with artifact.open("rb") as handle:
        response = owner_client.post(
            "/owner/models/new/",
            {"name": "digits", "task": "8x8 digits", "input_shape": "1,8,8", "num_classes": "10", "artifact": handle},
        )

    model = RegisteredModel.objects.get(name="digits")
    assert response.status_code == 302
    assert response["Location"] == f"/owner/models/{model.public_id}/"
    page = owner_client.get(response["Location"]).content.decode()
    assert "being checked in the sandbox" in page
    assert 'id="model-validation"' in page
    services.model_validate(model_id=model.pk)  # the worker's part
    page = owner_client.get(response["Location"]).content.decode()
    assert 'id="model-validation"' not in page
    assert label in page
    assert 'id="generate-watermark"' in page


def test_the_registration_request_never_runs_the_sandbox(
    owner_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ownership import artifacts

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sandbox ran inside the web request")

    monkeypatch.setattr(artifacts, "inspect_artifact", refuse)
    artifact = SimpleUploadedFile("mlp.pt", torchscript_file(tmp_path / "mlp.pt").read_bytes())

    response = owner_client.post(
        "/owner/models/new/", {"name": "digits", "input_shape": "1,8,8", "num_classes": "10", "artifact": artifact}
    )

    assert response.status_code == 302
    assert RegisteredModel.objects.get(name="digits").state == "validating"


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"input_shape": "1,8,8", "artifact": b"\x80\x04 a pickle"}, "artifact", "pickle"),
        ({"input_shape": "one,two"}, "input_shape", "comma"),
        ({"input_shape": "1,8,8", "num_classes": "1"}, "num_classes", "2"),
        ({"input_shape": "1,8,8", "name": ""}, "name", "required"),
    ],
)
def test_registration_errors_show_next_to_their_field(
    owner_client: Client,
    tmp_path: Path,
    data: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    artifact = data.pop("artifact", None) or torchscript_file(tmp_path / "mlp.pt").read_bytes()
    form = {"name": "digits", "task": "", "num_classes": "10", **data}

    response = owner_client.post("/owner/models/new/", {**form, "artifact": SimpleUploadedFile("model.pt", artifact)})

    assert response.status_code == 400
    assert reason in _field_error(response.content.decode(), field)
    assert not RegisteredModel.objects.exists()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"input_shape": "1,8,8", "artifact": b"\x08\x01" + b"not a model" * 100}, "Not an ONNX or TorchScript"),
        ({"input_shape": "1,28,28"}, "shape"),
    ],
)
def test_a_model_the_sandbox_refuses_shows_the_reason_and_no_evidence_forms(
    owner_client: Client, tmp_path: Path, data: dict[str, Any], reason: str
) -> None:
    artifact = data.pop("artifact", None) or torchscript_file(tmp_path / "mlp.pt").read_bytes()
    form = {"name": "digits", "task": "", "num_classes": "10", **data}
    response = owner_client.post("/owner/models/new/", {**form, "artifact": SimpleUploadedFile("model.pt", artifact)})
    model = RegisteredModel.objects.get(name="digits")

    services.model_validate(model_id=model.pk)
    page = owner_client.get(response["Location"]).content.decode()

    assert "The sandbox refused this model." in page
    assert reason.lower() in _form_error(page).lower()
    assert 'id="add-evidence"' not in page
    assert 'id="generate-watermark"' not in page


def test_evidence_forms_refuse_a_model_still_validating(owner_client: Client, owner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = services.model_register(
        owner=owner,
        name="pending",
        task="",
        input_shape=[1, 8, 8],
        num_classes=10,
        artifact=SimpleUploadedFile("mlp.pt", torchscript_file(tmp_path / "mlp.pt").read_bytes()),
        validate="async",
    )

    response = owner_client.post(
        f"/owner/models/{model.public_id}/evidence/generate/", {"count": "10", "low": "0", "high": "1"}
    )

    assert response.status_code == 409
    assert "is still being validated; try again when it is active." in response.content.decode()
    assert not model.evidence_sets.exists()


def test_a_duplicate_name_is_an_error_on_the_name(owner_client: Client, model: RegisteredModel, tmp_path: Path) -> None:
    artifact = SimpleUploadedFile("mlp.pt", torchscript_file(tmp_path / "mlp.pt").read_bytes())

    response = owner_client.post(
        "/owner/models/new/", {"name": "digits-mlp", "input_shape": "1,8,8", "num_classes": "10", "artifact": artifact}
    )

    assert response.status_code == 400
    assert "already have a model named" in _field_error(response.content.decode(), "name")


def test_the_upload_script_reaches_the_api_with_the_session_and_csrf_header(owner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    client.get("/owner/models/new/")  # sets the csrftoken cookie the script reads
    token = client.cookies["csrftoken"].value
    artifact = torchscript_file(tmp_path / "mlp.pt")

    def post(**headers: str):  # type: ignore[no-untyped-def]
        with artifact.open("rb") as handle:
            form = {"name": "digits", "input_shape": "1,8,8", "num_classes": "10", "artifact": handle}
            return client.post("/api/v1/models/", form, **headers)

    assert post().status_code == 403
    created = post(HTTP_X_CSRFTOKEN=token)
    assert created.status_code == 202, created.content
    assert client.get(f"/owner/models/{created.json()['id']}/").status_code == 200


def test_the_script_is_served_by_the_app(owner_client: Client) -> None:
    response = owner_client.get("/static/ownership/owner.js")
    assert response.status_code == 200
    assert b"XMLHttpRequest" in b"".join(response.streaming_content)


# --- evidence ------------------------------------------------------------------------------------


def test_uploading_evidence_without_a_script(owner_client: Client, model: RegisteredModel) -> None:
    rng = np.random.default_rng(0)
    arrays = {"inputs": rng.random((12, 1, 8, 8), dtype=np.float32), "labels": rng.integers(0, 10, 12).astype(np.int64)}

    response = owner_client.post(
        f"/owner/models/{model.public_id}/evidence/",
        {"kind": "fingerprint", "file": SimpleUploadedFile("fp.npz", _npz(**arrays))},
    )

    evidence_set = model.evidence_sets.get()
    assert (evidence_set.kind, evidence_set.size, evidence_set.verifiable) == ("fingerprint", 12, False)
    assert response.status_code == 302
    assert response["Location"] == f"/owner/models/{model.public_id}/evidence/{evidence_set.public_id}/"
    assert b"Committed 12" in owner_client.get(response["Location"]).content


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"garbage, not a zip archive", "npz"),
        (_npz(inputs=np.zeros((3, 1, 8, 8), np.float32), labels=np.full(3, 10, np.int64)), "label"),
    ],
)
def test_bad_evidence_shows_its_error_next_to_the_file(
    owner_client: Client, model: RegisteredModel, payload: bytes, reason: str
) -> None:
    response = owner_client.post(
        f"/owner/models/{model.public_id}/evidence/",
        {"kind": "watermark", "file": SimpleUploadedFile("wm.npz", payload)},
    )

    assert response.status_code == 400
    assert reason in _field_error(response.content.decode(), "file").lower()
    assert not model.evidence_sets.exists()


def test_generating_a_watermark_offers_its_trigger_set(owner_client: Client, model: RegisteredModel) -> None:
    response = owner_client.post(
        f"/owner/models/{model.public_id}/evidence/generate/", {"count": "25", "low": "-1", "high": "1"}
    )

    evidence_set = model.evidence_sets.get()
    assert evidence_set.verifiable
    assert response.status_code == 302
    page = owner_client.get(response["Location"]).content.decode()
    assert "Generated and committed a watermark of 25 triggers" in page
    assert "modelcourt.embed" in page
    assert f"/owner/models/{model.public_id}/evidence/{evidence_set.public_id}/triggers.npz" in page


def test_bad_watermark_parameters_show_inline(owner_client: Client, model: RegisteredModel) -> None:
    response = owner_client.post(
        f"/owner/models/{model.public_id}/evidence/generate/", {"count": "0", "low": "1", "high": "0"}
    )

    html = response.content.decode()
    assert response.status_code == 400
    assert _field_error(html, "count")
    assert "greater than the lower bound" in _field_error(html, "high")
    assert not model.evidence_sets.exists()


# --- downloads ----------------------------------------------------------------------------------


def test_a_receipt_downloads_as_a_json_attachment(owner_client: Client, watermark: EvidenceSet) -> None:
    response = owner_client.get(f"/owner/receipts/{watermark.commitment}.json")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == f'attachment; filename="receipt-{watermark.commitment}.json"'
    receipt = json.loads(response.content)
    public = Client().get(f"/api/v1/receipts/{watermark.commitment}").json()
    assert receipt["format"] == "modelcourt-receipt-v1"
    assert receipt["commitment"] == watermark.commitment
    assert receipt["timestamp"]["token_b64"] == public["timestamp"]["token_b64"]
    assert receipt["log"]["index"] == watermark.timestamp_token.serial
    assert "salt" not in response.content.decode()
    assert owner_client.get(f"/owner/receipts/{'0' * 64}.json").status_code == 404


def test_the_trigger_set_downloads_for_its_owner_only(
    owner_client: Client,
    arbiter: Any,
    model: RegisteredModel,
    watermark: EvidenceSet,
) -> None:
    url = f"/owner/models/{model.public_id}/evidence/{watermark.public_id}/triggers.npz"

    response = owner_client.get(url)

    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["Content-Disposition"].endswith('.npz"')
    assert "no-store" in response["Cache-Control"]
    with np.load(io.BytesIO(b"".join(response.streaming_content)), allow_pickle=False) as triggers:
        assert triggers["inputs"].shape == (20, 1, 8, 8)
        assert triggers["inputs"].dtype == np.float32
        assert triggers["labels"].dtype == np.int64
    assert _signed_in(_user("mallory", "owner")).get(url).status_code == 404
    assert _signed_in(arbiter).get(url).status_code == 403
    assert Client().get(url).status_code == 302


# --- deletion ------------------------------------------------------------------------------------


def test_deleting_a_model_after_confirmation(
    owner_client: Client,
    model: RegisteredModel,
    watermark: EvidenceSet,
    django_capture_on_commit_callbacks: Any,
) -> None:
    artifact_path = Path(model.artifact.path)

    with django_capture_on_commit_callbacks(execute=True):  # the artifact goes once the deletion commits
        response = owner_client.post(f"/owner/models/{model.public_id}/delete/")

    assert response.status_code == 302
    assert response["Location"] == "/owner/models/"
    assert not RegisteredModel.objects.exists()
    assert not EvidenceSet.objects.exists()
    assert not artifact_path.exists()
    assert b"Deleted digits-mlp" in owner_client.get("/owner/models/").content


def test_a_model_in_a_dispute_is_not_deleted_and_the_page_says_why(
    owner_client: Client, model: RegisteredModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*, model: RegisteredModel) -> None:
        raise ModelInDisputeError("this model is part of a dispute and cannot be deleted")

    monkeypatch.setattr(services, "model_delete", refuse)

    response = owner_client.post(f"/owner/models/{model.public_id}/delete/")

    assert response.status_code == 409
    assert "part of a dispute" in _form_error(response.content.decode())
    assert RegisteredModel.objects.filter(pk=model.pk).exists()


def test_the_generate_form_shares_the_apis_per_owner_budget(
    owner_client: Client, model: RegisteredModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rest_framework.throttling import SimpleRateThrottle

    monkeypatch.setattr(
        SimpleRateThrottle, "THROTTLE_RATES", {**SimpleRateThrottle.THROTTLE_RATES, "evidence-generate": "2/min"}
    )
    url = f"/owner/models/{model.public_id}/evidence/generate/"
    codes = [owner_client.post(url, {"count": "5", "low": "0", "high": "1"}).status_code for _ in range(3)]

    assert codes == [302, 302, 429]
    assert model.evidence_sets.count() == 2
    # the API sees the same budget spent
    api = owner_client.post(f"/api/v1/models/{model.public_id}/evidence/generate", {"count": 5}, "application/json")
    assert api.status_code == 429
