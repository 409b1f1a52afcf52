"""Disputes and verdicts over the API: filing, progress, runs, publishing, public verdicts and bundles, access."""

from __future__ import annotations

import base64
import io
import json
import uuid
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from modelcourt.bundle import all_ok, verify_bundle
from ownership import services as ownership_services
from verification.models import Dispute
from verification.services import disputes as dispute_services

from .conftest import PANEL, Claimant, Models, bare_model, upload

pytestmark = pytest.mark.django_db
DISPUTES = "/api/v1/disputes/"


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    """Users are made for almost every test here; the production hasher's million rounds are not under test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _client(user: Any = None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.fixture
def arbiter_client(arbiter) -> APIClient:  # type: ignore[no-untyped-def]
    return _client(arbiter)


def _form(claimant: Claimant, **fields: Any) -> dict[str, Any]:
    return {"title": "digits theft?", "claimant_model": str(claimant.model.public_id), "methods": "watermark",
            "panel": PANEL, **fields}  # fmt: skip


def _file_upload(client: APIClient, claimant: Claimant, data: bytes, **fields: Any) -> Any:
    form = _form(claimant, suspect_file=io.BytesIO(data), **fields)
    form["suspect_file"].name = "suspect.pt"
    return client.post(DISPUTES, form, format="multipart")


def _dispute_pk(body: dict[str, Any]) -> int:
    return Dispute.objects.values_list("pk", flat=True).get(public_id=body["id"])


def _assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body: dict[str, Any] = response.json()
    assert isinstance(body["detail"], str)
    assert len(body["detail"]) > 3
    assert isinstance(body["code"], str)
    if code is not None:
        assert body["code"] == code, body
    return body


# --- the whole flow ---------------------------------------------------------------------------------


def test_an_uploaded_theft_is_filed_run_published_and_its_bundle_verifies(
    arbiter_client: APIClient,
    claimant: Claimant,
    django_user_model: Any,
) -> None:
    filed = _file_upload(arbiter_client, claimant, claimant.stolen)

    assert filed.status_code == 201, filed.content
    body = filed.json()
    assert (body["state"], body["progress"], body["verdict"], body["runs"]) == ("queued", 0, None, [])
    assert body["methods"] == ["watermark"]
    assert body["alpha"] == 0.001
    assert body["claimant_model"] == {
        "id": str(claimant.model.public_id),
        "name": "digits",
        "digest": claimant.model.model_digest,
    }
    assert body["evidence_sets"] == [str(claimant.evidence.public_id)]
    suspect = body["suspect"]
    assert (suspect["kind"], suspect["format"], suspect["registered_model"]) == ("artifact", "torchscript", None)
    assert len(suspect["digest"]) == 64
    url = f"{DISPUTES}{body['id']}"
    assert arbiter_client.get(url).json()["state"] == "queued"

    dispute_services.verification_run_execute(dispute_id=_dispute_pk(body))

    decided = arbiter_client.get(url).json()
    assert (decided["state"], decided["progress"], decided["phase"]) == ("decided", 100, "decided")
    [run] = decided["runs"]
    assert (run["attempt"], run["state"], run["error"]) == (1, "succeeded", "")
    assert {"sandbox_s", "sign_s"} <= set(run["timings"])
    verdict = decided["verdict"]
    assert verdict["outcome"] == "ownership_confirmed"
    assert verdict["published_at"] is None
    assert verdict["url"] == f"/api/v1/verdicts/{verdict['id']}"

    # before publishing: only the dispute's arbiter sees the verdict
    anonymous = _client()
    _assert_error(anonymous.get(verdict["url"]), 404, "not_found")
    _assert_error(anonymous.get(verdict["bundle_url"]), 404, "not_found")
    other_arbiter = django_user_model.objects.create_user(username="ada", password="correct horse battery")
    from ownership.roles import Role, role_grant

    role_grant(user=other_arbiter, role=Role.ARBITER)
    _assert_error(_client(other_arbiter).get(verdict["url"]), 404, "not_found")
    assert arbiter_client.get(verdict["url"]).status_code == 200

    published = arbiter_client.post(f"{url}/publish")
    assert published.status_code == 200, published.content
    assert published.json()["state"] == "published"
    assert published.json()["verdict"]["published_at"] is not None

    public = anonymous.get(verdict["url"])
    assert public.status_code == 200, public.content
    shown = public.json()
    assert shown["outcome"] == "ownership_confirmed"
    assert shown["title"] == "digits theft?"
    [test] = shown["predicate"]["decision"]["tests"]
    assert test["statistics"]["K"] == 40
    assert shown["predicate"]["alpha"] == 0.001
    assert shown["envelope"]["payloadType"] == "application/vnd.in-toto+json"
    assert shown["envelope"]["signatures"]
    assert base64.b64decode(shown["timestamp_token"])[:1] == b"\x30"  # a DER SEQUENCE
    assert isinstance(shown["log_index"], int)
    assert shown["bundle_url"] == verdict["bundle_url"]

    bundle = anonymous.get(shown["bundle_url"])
    assert bundle.status_code == 200
    assert bundle["Content-Type"] == "application/zip"
    assert bundle["Content-Disposition"] == f'attachment; filename="verdict-{verdict["id"]}.zip"'
    checks = verify_bundle(bundle.content)
    assert all_ok(checks), [c for c in checks if not c.ok]

    # a published dispute stays published
    _assert_error(arbiter_client.post(f"{url}/publish"), 409, "wrong_state")
    _assert_error(arbiter_client.post(f"{url}/withdraw"), 409, "wrong_state")
    _assert_error(arbiter_client.post(f"{url}/retry"), 409, "wrong_state")


def test_a_dispute_against_a_registered_model_runs_to_a_verdict(
    arbiter_client: APIClient, claimant: Claimant, owner, digits_models: Models
) -> None:  # type: ignore[no-untyped-def]
    suspect = ownership_services.model_register(
        owner=owner,
        name="independent",
        task="digits",
        input_shape=[64],
        num_classes=10,
        artifact=upload("independent.pt", digits_models.independent),
    )

    filed = arbiter_client.post(
        DISPUTES,
        {**_form(claimant), "methods": ["watermark"], "suspect_model": str(suspect.public_id)},
        format="json",
    )

    assert filed.status_code == 201, filed.content
    body = filed.json()
    assert body["suspect"]["kind"] == "registered"
    assert body["suspect"]["registered_model"] == str(suspect.public_id)
    assert body["suspect"]["digest"] == suspect.model_digest
    dispute_services.verification_run_execute(dispute_id=_dispute_pk(body))
    decided = arbiter_client.get(f"{DISPUTES}{body['id']}").json()
    assert decided["state"] == "decided"
    assert decided["verdict"]["outcome"] == "not_confirmed"
    assert [d["id"] for d in arbiter_client.get(DISPUTES).json()] == [body["id"]]


def test_an_endpoint_suspect_is_described(arbiter_client: APIClient, bare_claimant: Claimant) -> None:
    filed = arbiter_client.post(
        DISPUTES,
        _form(
            bare_claimant,
            suspect_url="https://models.example.org/v2/models/clf/infer",
            suspect_protocol="v2",
            suspect_model_name="clf",
            suspect_output="labels",
            alpha="0.01",
            query_budget="500",
        ),
        format="multipart",
    )

    assert filed.status_code == 201, filed.content
    body = filed.json()
    assert body["suspect"] == {
        "kind": "endpoint",
        "format": "",
        "digest": body["suspect"]["digest"],
        "registered_model": None,
        "url": "https://models.example.org/v2/models/clf/infer",
        "protocol": "v2",
        "model_name": "clf",
        "output": "labels",
    }
    assert (body["alpha"], body["query_budget"], body["panel"]) == (0.01, 500, PANEL)


# --- state rules and progress -----------------------------------------------------------------------------


def test_progress_and_state_rules(arbiter_client: APIClient, bare_claimant: Claimant, digits_models: Models) -> None:
    body = _file_upload(arbiter_client, bare_claimant, digits_models.independent).json()
    url = f"{DISPUTES}{body['id']}"
    dispute = Dispute.objects.filter(public_id=body["id"])

    assert "decided" in _assert_error(arbiter_client.post(f"{url}/publish"), 409, "wrong_state")["detail"]
    assert "queued" in _assert_error(arbiter_client.post(f"{url}/retry"), 409, "wrong_state")["detail"]

    dispute.update(state="running", progress=40, phase="watermark: querying the suspect")
    running = arbiter_client.get(url).json()
    assert (running["state"], running["progress"], running["phase"]) == (
        "running",
        40,
        "watermark: querying the suspect",
    )

    dispute.update(state="failed", phase="failed", failure_reason="the suspect took longer than 15 s")
    failed = arbiter_client.get(url).json()
    assert (failed["state"], failed["failure_reason"]) == ("failed", "the suspect took longer than 15 s")
    retried = arbiter_client.post(f"{url}/retry")
    assert retried.status_code == 200, retried.content
    assert (retried.json()["state"], retried.json()["progress"], retried.json()["failure_reason"]) == ("queued", 0, "")

    withdrawn = arbiter_client.post(f"{url}/withdraw")
    assert withdrawn.status_code == 200
    assert withdrawn.json()["state"] == "withdrawn"
    _assert_error(arbiter_client.post(f"{url}/withdraw"), 409, "wrong_state")
    _assert_error(arbiter_client.post(f"{url}/publish"), 409, "wrong_state")
    _assert_error(arbiter_client.post(f"{url}/retry"), 409, "wrong_state")


# --- access ------------------------------------------------------------------------------------------------


def test_only_the_disputes_arbiter_may_see_or_act_on_it(
    arbiter_client: APIClient, bare_claimant: Claimant, digits_models: Models, owner, staff, django_user_model: Any
) -> None:  # type: ignore[no-untyped-def]
    body = _file_upload(arbiter_client, bare_claimant, digits_models.independent).json()
    url = f"{DISPUTES}{body['id']}"
    reads = ["/api/v1/panels/", DISPUTES, url]
    actions = [DISPUTES, f"{url}/publish", f"{url}/withdraw", f"{url}/retry"]

    for path in reads:
        _assert_error(_client().get(path), 401, "not_authenticated")
        _assert_error(_client(owner).get(path), 403, "permission_denied")
        _assert_error(_client(staff).get(path), 403, "permission_denied")
    for path in actions:
        _assert_error(_client().post(path), 401, "not_authenticated")
        assert "arbiter" in _assert_error(_client(owner).post(path), 403, "permission_denied")["detail"]

    from ownership.roles import Role, role_grant

    other = django_user_model.objects.create_user(username="ada", password="correct horse battery")
    role_grant(user=other, role=Role.ARBITER)
    other_client = _client(other)
    assert other_client.get(DISPUTES).json() == []
    for path in [url]:
        _assert_error(other_client.get(path), 404, "not_found")
    for path in actions[1:]:
        _assert_error(other_client.post(path), 404, "not_found")
    assert Dispute.objects.get(public_id=body["id"]).state == "queued"


def test_malformed_ids_in_paths_are_404s_with_a_sentence(arbiter_client: APIClient) -> None:
    for path in [
        f"{DISPUTES}not-a-uuid",
        f"{DISPUTES}not-a-uuid/publish",
        f"{DISPUTES}{uuid.uuid4()}",
        f"/api/v1/verdicts/{uuid.uuid4()}",
        "/api/v1/verdicts/x/bundle",
    ]:
        method = arbiter_client.post if path.endswith("publish") else arbiter_client.get
        _assert_error(method(path), 404, "not_found")
    _assert_error(_client().get("/api/v1/verdicts/1234/bundle", HTTP_ACCEPT="application/zip"), 404, "not_found")


def test_panels_are_listed(arbiter_client: APIClient, data_dir) -> None:  # type: ignore[no-untyped-def]
    panels = {p["name"]: p["description"] for p in arbiter_client.get("/api/v1/panels/").json()}
    assert {"digits", PANEL} <= set(panels)
    assert "digits" in panels["digits"]


# --- bad input --------------------------------------------------------------------------------------------


BAD_FILINGS: list[tuple[str, dict[str, Any], str]] = [
    ("no title", {"title": ""}, "title"),
    ("a title too long", {"title": "x" * 201}, "title"),
    ("a claimant that is not a UUID", {"claimant_model": "digits"}, "claimant_model"),
    ("an unknown claimant", {"claimant_model": "0b0b0b0b-0000-4000-8000-000000000000"}, "registered model"),
    ("no methods", {"methods": ""}, "methods"),
    ("an unknown method", {"methods": "watermark,telepathy"}, "telepathy"),
    ("a method without evidence", {"methods": "fingerprint"}, "fingerprint evidence"),
    ("dataset inference without evidence", {"methods": "dataset_inference"}, "dataset evidence"),
    ("an evidence id that is not a UUID", {"evidence_sets": "abc"}, "evidence_sets"),
    ("an unknown evidence set", {"evidence_sets": str(uuid.uuid4())}, "claimant model"),
    ("alpha above 0.1", {"alpha": "0.5"}, "alpha"),
    ("alpha zero", {"alpha": "0"}, "alpha"),
    ("alpha not a number", {"alpha": "nan"}, "alpha"),
    ("alpha a word", {"alpha": "small"}, "alpha"),
    ("a zero budget", {"query_budget": "0"}, "query_budget"),
    ("an unknown panel", {"panel": "cifar"}, "reference panel"),
    ("no suspect", {"suspect_url": None}, "exactly one suspect"),
    ("two suspects", {"suspect_model": "SELF"}, "exactly one"),
    ("an ftp endpoint", {"suspect_url": "ftp://example.org/model"}, "http"),
    ("a v2 endpoint without a model name", {"suspect_protocol": "v2"}, "name"),
    ("an unknown protocol", {"suspect_protocol": "grpc"}, "suspect_protocol"),
    ("an unknown output", {"suspect_output": "votes"}, "suspect_output"),
    (
        "endpoint options without an endpoint",
        {"suspect_url": None, "suspect_model": "SELF", "suspect_protocol": "v2"},
        "suspect_url",
    ),
    ("an unknown suspect model", {"suspect_url": None, "suspect_model": str(uuid.uuid4())}, "registered model"),
    ("a suspect model that is not a UUID", {"suspect_url": None, "suspect_model": "12"}, "suspect_model"),
    ("the claimant as its own suspect", {"suspect_url": None, "suspect_model": "SELF"}, "claimant"),
]


@pytest.mark.parametrize(("fields", "says"), [case[1:] for case in BAD_FILINGS], ids=[c[0] for c in BAD_FILINGS])
def test_bad_filings_get_a_400_with_a_code_and_a_sentence(
    arbiter_client: APIClient, bare_claimant: Claimant, fields: dict[str, Any], says: str
) -> None:
    form = _form(bare_claimant, suspect_url="https://models.example.org/predict")
    form.update({k: str(bare_claimant.model.public_id) if v == "SELF" else v for k, v in fields.items()})

    response = arbiter_client.post(DISPUTES, {k: v for k, v in form.items() if v is not None}, format="multipart")

    body = _assert_error(response, 400)
    assert says in body["detail"], body
    assert not Dispute.objects.exists()


def test_evidence_of_another_model_is_refused(arbiter_client: APIClient, bare_claimant: Claimant, owner) -> None:  # type: ignore[no-untyped-def]
    other = bare_model(owner, "other")
    foreign, _ = ownership_services.evidence_generate(model=other, count=5)

    response = arbiter_client.post(
        DISPUTES, _form(bare_claimant, evidence_sets=str(foreign.public_id), suspect_url="https://x.example/")
    )

    assert "claimant model" in _assert_error(response, 400)["detail"]


def test_bad_suspect_files_are_refused(arbiter_client: APIClient, bare_claimant: Claimant) -> None:
    _assert_error(_file_upload(arbiter_client, bare_claimant, b"\x80\x04 not a model"), 400, "suspect_file")
    _assert_error(_file_upload(arbiter_client, bare_claimant, b""), 400)
    assert not Dispute.objects.exists()


def test_an_oversized_suspect_is_refused_before_it_is_read(
    arbiter_client: APIClient, bare_claimant: Claimant, digits_models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "MODELCOURT_MAX_ARTIFACT_BYTES", 1000)

    def must_not_run(**_: Any) -> None:
        raise AssertionError("the body was read")

    with monkeypatch.context() as patch:
        patch.setattr(dispute_services, "dispute_file", must_not_run)
        body = _assert_error(_file_upload(arbiter_client, bare_claimant, b"\0" * (2 << 20)), 413, "too_large")
    assert "limit" in body["detail"]
    # under the Content-Length slack, the service measures the file itself
    _assert_error(_file_upload(arbiter_client, bare_claimant, digits_models.independent), 413, "too_large")
    assert not Dispute.objects.exists()


# --- documentation -----------------------------------------------------------------------------------------


def test_the_openapi_schema_documents_disputes_and_verdicts(api_client: APIClient) -> None:
    schema = api_client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    assert {
        "/api/v1/panels/",
        "/api/v1/disputes/",
        "/api/v1/disputes/{dispute_id}",
        "/api/v1/disputes/{dispute_id}/publish",
        "/api/v1/disputes/{dispute_id}/withdraw",
        "/api/v1/disputes/{dispute_id}/retry",
        "/api/v1/verdicts/{verdict_id}",
        "/api/v1/verdicts/{verdict_id}/bundle",
    } <= set(paths)
    assert "multipart/form-data" in paths["/api/v1/disputes/"]["post"]["requestBody"]["content"]
    assert "application/zip" in paths["/api/v1/verdicts/{verdict_id}/bundle"]["get"]["responses"]["200"]["content"]
