"""Dispute requests: owners ask for a dispute, arbiters accept (filing it) or decline; the owner follows it."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rest_framework.test import APIClient

from ownership.roles import Role, role_grant
from verification.exceptions import DisputeError
from verification.models import Dispute, DisputeRequest
from verification.services import disputes as dispute_services
from verification.services import requests as request_services
from verification.services import verdicts as verdict_services

from .conftest import PANEL, Claimant, bare_model

pytestmark = pytest.mark.django_db
REQUESTS = "/api/v1/dispute-requests/"


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _user(django_user_model: Any, name: str, *roles: Role) -> Any:
    user = django_user_model.objects.create_user(username=name, password="correct horse battery")
    for role in roles:
        role_grant(user=user, role=role)
    return user


def _request_form(claimant: Claimant, **fields: Any) -> dict[str, Any]:
    return {
        "title": "my digits model, resold",
        "statement": "found on a model marketplace",
        "claimant_model": str(claimant.model.public_id),
        "methods": "watermark",
        **fields,
    }


def _upload_request(client: APIClient, claimant: Claimant, data: bytes) -> Any:
    form = _request_form(claimant, suspect_file=io.BytesIO(data))
    form["suspect_file"].name = "suspect.pt"
    return client.post(REQUESTS, form, format="multipart")


def _error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body: dict[str, Any] = response.json()
    assert isinstance(body["detail"], str)
    assert len(body["detail"]) > 3
    if code is not None:
        assert body["code"] == code, body
    return body


def test_a_requested_dispute_is_accepted_run_and_the_owner_sees_the_published_verdict(
    owner: Any, arbiter: Any, claimant: Claimant
) -> None:
    owner_client, arbiter_client = _client(owner), _client(arbiter)

    made = _upload_request(owner_client, claimant, claimant.stolen)

    assert made.status_code == 201, made.content
    body = made.json()
    assert (body["state"], body["dispute"], body["arbiter"], body["owner"]) == ("open", None, None, "olivia")
    assert body["statement"] == "found on a model marketplace"
    assert body["suspect"]["kind"] == "artifact"
    assert body["evidence_sets"] == [str(claimant.evidence.public_id)]
    assert [r["id"] for r in owner_client.get(REQUESTS).json()] == [body["id"]]
    assert [r["id"] for r in arbiter_client.get(f"{REQUESTS}inbox").json()] == [body["id"]]

    accepted = arbiter_client.post(f"{REQUESTS}{body['id']}/accept", {"panel": PANEL}, format="json")

    assert accepted.status_code == 201, accepted.content
    dispute_body = accepted.json()
    assert (dispute_body["state"], dispute_body["title"]) == ("queued", "my digits model, resold")
    assert dispute_body["suspect"]["digest"] == body["suspect"]["digest"]
    assert dispute_body["evidence_sets"] == body["evidence_sets"]
    followed = owner_client.get(f"{REQUESTS}{body['id']}").json()
    assert (followed["state"], followed["arbiter"]) == ("accepted", "arthur")
    assert followed["dispute"] == {
        "id": dispute_body["id"],
        "state": "queued",
        "progress": 0,
        "verdict_url": None,
    }

    dispute = Dispute.objects.get(public_id=dispute_body["id"])
    dispute_services.verification_run_execute(dispute_id=dispute.pk)
    decided = owner_client.get(f"{REQUESTS}{body['id']}").json()["dispute"]
    # decided but unpublished: the owner sees the state, not the outcome
    assert (decided["state"], decided["verdict_url"]) == ("decided", None)

    verdict_services.verdict_publish(dispute=dispute)
    published = owner_client.get(f"{REQUESTS}{body['id']}").json()["dispute"]
    assert published["state"] == "published"
    verdict = owner_client.get(published["verdict_url"])
    assert verdict.status_code == 200
    assert verdict.json()["outcome"] == "ownership_confirmed"


def test_a_request_for_another_owners_model_is_refused(
    owner: Any, bare_claimant: Claimant, django_user_model: Any
) -> None:
    intruder = _user(django_user_model, "mallory", Role.OWNER)

    response = _client(intruder).post(
        REQUESTS, _request_form(bare_claimant, suspect_url="https://models.example.org/predict"), format="json"
    )

    _error(response, 400, "claimant_model")
    assert not DisputeRequest.objects.exists()


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({}, None),  # no suspect at all
        ({"suspect_url": "ftp://models.example.org/x"}, "suspect_url"),
        ({"suspect_url": "https://models.example.org/x", "methods": "fingerprint"}, "evidence_sets"),
        ({"suspect_url": "https://models.example.org/x", "title": " "}, None),
        ({"suspect_url": "https://models.example.org/x", "statement": "x" * 5001}, None),
    ],
)
def test_a_malformed_request_is_a_400_with_a_reason(
    owner: Any, bare_claimant: Claimant, fields: dict[str, Any], code: str | None
) -> None:
    response = _client(owner).post(REQUESTS, _request_form(bare_claimant, **fields), format="json")

    _error(response, 400, code)
    assert not DisputeRequest.objects.exists()


def test_only_owners_request_and_only_arbiters_accept_or_decline(
    owner: Any, arbiter: Any, bare_claimant: Claimant
) -> None:
    _error(_client(arbiter).post(REQUESTS, _request_form(bare_claimant), format="json"), 403)
    made = _client(owner).post(
        REQUESTS, _request_form(bare_claimant, suspect_url="https://models.example.org/x"), format="json"
    )
    request_id = made.json()["id"]

    _error(_client(owner).post(f"{REQUESTS}{request_id}/accept", {}, format="json"), 403)
    _error(_client(owner).post(f"{REQUESTS}{request_id}/decline", {"reason": "no"}, format="json"), 403)
    _error(_client(arbiter).post(f"{REQUESTS}{request_id}/withdraw"), 403)
    _error(_client(owner).get(f"{REQUESTS}inbox"), 403)
    assert DisputeRequest.objects.get().state == "open"


def test_other_owners_do_not_see_a_request(owner: Any, bare_claimant: Claimant, django_user_model: Any) -> None:
    made = _client(owner).post(
        REQUESTS, _request_form(bare_claimant, suspect_url="https://models.example.org/x"), format="json"
    )
    stranger = _client(_user(django_user_model, "mallory", Role.OWNER))

    _error(stranger.get(f"{REQUESTS}{made.json()['id']}"), 404, "not_found")
    _error(stranger.post(f"{REQUESTS}{made.json()['id']}/withdraw"), 404, "not_found")
    _error(stranger.get(f"{REQUESTS}not-a-uuid"), 404, "not_found")
    assert stranger.get(REQUESTS).json() == []


def test_a_declined_request_carries_the_reason_and_cannot_be_accepted(
    owner: Any, arbiter: Any, bare_claimant: Claimant
) -> None:
    made = _client(owner).post(
        REQUESTS, _request_form(bare_claimant, suspect_url="https://models.example.org/x"), format="json"
    )
    url = f"{REQUESTS}{made.json()['id']}"
    arbiter_client = _client(arbiter)

    _error(arbiter_client.post(f"{url}/decline", {"reason": "  "}, format="json"), 400)
    declined = arbiter_client.post(f"{url}/decline", {"reason": "the endpoint is not reachable"}, format="json")

    assert declined.status_code == 200, declined.content
    seen = _client(owner).get(url).json()
    assert (seen["state"], seen["decision_note"], seen["arbiter"]) == (
        "declined",
        "the endpoint is not reachable",
        "arthur",
    )
    _error(arbiter_client.post(f"{url}/accept", {"panel": PANEL}, format="json"), 409, "wrong_state")
    _error(_client(owner).post(f"{url}/withdraw"), 409, "wrong_state")
    assert not Dispute.objects.exists()


def test_a_withdrawn_request_leaves_the_inbox_and_cannot_be_accepted(
    owner: Any, arbiter: Any, bare_claimant: Claimant
) -> None:
    made = _client(owner).post(
        REQUESTS, _request_form(bare_claimant, suspect_url="https://models.example.org/x"), format="json"
    )
    url = f"{REQUESTS}{made.json()['id']}"

    withdrawn = _client(owner).post(f"{url}/withdraw")

    assert withdrawn.json()["state"] == "withdrawn"
    assert _client(arbiter).get(f"{REQUESTS}inbox").json() == []
    # withdrawn before anyone handled it: arbiters no longer see it at all
    _error(_client(arbiter).post(f"{url}/accept", {"panel": PANEL}, format="json"), 404, "not_found")


def test_an_accepted_endpoint_request_files_the_same_suspect_and_evidence(
    owner: Any, arbiter: Any, bare_claimant: Claimant
) -> None:
    made = _client(owner).post(
        REQUESTS,
        _request_form(
            bare_claimant,
            suspect_url="https://models.example.org/v2/models/clf/infer",
            suspect_protocol="v2",
            suspect_model_name="clf",
            suspect_output="labels",
        ),
        format="json",
    )
    assert made.status_code == 201, made.content

    accepted = _client(arbiter).post(
        f"{REQUESTS}{made.json()['id']}/accept",
        {"panel": PANEL, "alpha": 0.01, "query_budget": 500, "title": "clf vs digits", "note": "taken"},
        format="json",
    )

    assert accepted.status_code == 201, accepted.content
    dispute = Dispute.objects.get(public_id=accepted.json()["id"])
    assert (dispute.suspect_kind, dispute.suspect_url, dispute.suspect_protocol) == (
        "endpoint",
        "https://models.example.org/v2/models/clf/infer",
        "v2",
    )
    assert (dispute.suspect_model_name, dispute.suspect_output, dispute.alpha, dispute.query_budget) == (
        "clf",
        "labels",
        0.01,
        500,
    )
    assert dispute.title == "clf vs digits"
    assert list(dispute.evidence_sets.all()) == [bare_claimant.evidence]
    assert dispute.request.decision_note == "taken"
    assert dispute.arbiter == arbiter


def test_a_bad_panel_at_acceptance_leaves_the_request_open(owner: Any, arbiter: Any, bare_claimant: Claimant) -> None:
    made = _client(owner).post(
        REQUESTS, _request_form(bare_claimant, suspect_url="https://models.example.org/x"), format="json"
    )

    response = _client(arbiter).post(f"{REQUESTS}{made.json()['id']}/accept", {"panel": "nope"}, format="json")

    _error(response, 400, "panel")
    assert DisputeRequest.objects.get().state == "open"
    assert not Dispute.objects.exists()


def test_an_arbiter_cannot_accept_their_own_request(bare_claimant: Claimant, django_user_model: Any) -> None:
    both = _user(django_user_model, "janus", Role.OWNER, Role.ARBITER)
    model = bare_model(both, "janus-digits")
    from ownership import services as ownership_services

    ownership_services.evidence_generate(model=model, count=10)
    made = _client(both).post(
        REQUESTS,
        {
            "title": "mine",
            "claimant_model": str(model.public_id),
            "methods": "watermark",
            "suspect_url": "https://models.example.org/x",
        },
        format="json",
    )
    assert made.status_code == 201, made.content

    assert _client(both).get(f"{REQUESTS}inbox").json() == []
    request = DisputeRequest.objects.get(public_id=made.json()["id"])
    with pytest.raises(DisputeError, match="cannot accept a request they made"):
        request_services.dispute_request_accept(request=request, arbiter=both, panel=PANEL)


def test_a_registered_suspect_can_be_requested(owner: Any, arbiter: Any, bare_claimant: Claimant) -> None:
    suspect = bare_model(arbiter, "their-model")

    made = _client(owner).post(
        REQUESTS, _request_form(bare_claimant, suspect_model=str(suspect.public_id)), format="json"
    )

    assert made.status_code == 201, made.content
    assert made.json()["suspect"]["registered_model"] == str(suspect.public_id)
    assert made.json()["suspect"]["digest"] == suspect.model_digest


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/predict",
        "http://localhost:6379/",
        "http://10.1.2.3/v2/models/m/infer",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:5432/",
    ],
)
def test_an_owner_cannot_point_the_worker_at_its_own_network(owner: Any, bare_claimant: Claimant, url: str) -> None:
    response = _client(owner).post(REQUESTS, _request_form(bare_claimant, suspect_url=url), format="json")

    body = _error(response, 400, "suspect_url")
    assert "not a public address" in body["detail"]
    assert not DisputeRequest.objects.exists()
