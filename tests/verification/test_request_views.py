"""The owner's dispute-request pages and the arbiter's side of them: request, accept, decline, follow."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from django.test import Client

from tests.conftest import _user
from verification.models import Dispute, DisputeRequest
from verification.services import requests as request_services

from .conftest import PANEL, Claimant

pytestmark = pytest.mark.django_db
ENDPOINT = "https://models.example.org/predict"


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _text(page: bytes) -> str:
    """The page's visible text, tags dropped and whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.decode())).split())


def _request_form(claimant: Claimant, **fields: Any) -> dict[str, Any]:
    return {
        "title": "digits, resold",
        "claimant": str(claimant.model.public_id),
        "methods": ["watermark"],
        "suspect_source": "endpoint",
        "suspect_url": ENDPOINT,
        "suspect_protocol": "json",
        "suspect_output": "logits",
        "statement": "It answers our triggers.",
        **fields,
    }


def _open_request(owner: Any, claimant: Claimant) -> DisputeRequest:
    return request_services.dispute_request_create(
        owner=owner,
        title="digits, resold",
        statement="It answers our triggers.",
        claimant_model=claimant.model,
        methods=["watermark"],
        suspect_url=ENDPOINT,
    )


def test_the_owner_requests_a_dispute_through_the_form(owner: Any, bare_claimant: Claimant) -> None:
    client = _signed_in(owner)
    assert "No requests yet" in _text(client.get("/owner/requests/").content)
    form_page = client.get(f"/owner/requests/new?model={bare_claimant.model.public_id}")
    assert form_page.status_code == 200
    assert f'value="{bare_claimant.model.public_id}" selected' in form_page.content.decode()

    response = client.post("/owner/requests/new", _request_form(bare_claimant))

    made = DisputeRequest.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/owner/requests/{made.public_id}"
    detail = _text(client.get(response["Location"]).content)
    assert "Waiting for an arbiter" in detail
    assert "It answers our triggers." in detail
    assert ENDPOINT in detail
    assert "digits, resold" in _text(client.get("/owner/requests/").content)


def test_the_form_shows_the_service_refusal_next_to_the_field(owner: Any, bare_claimant: Claimant) -> None:
    response = _signed_in(owner).post("/owner/requests/new", _request_form(bare_claimant, methods=["fingerprint"]))

    assert response.status_code == 400
    assert "has no fingerprint evidence" in _text(response.content)
    assert not DisputeRequest.objects.exists()


def test_the_form_offers_only_the_owners_own_models(
    owner: Any, bare_claimant: Claimant, django_user_model: Any
) -> None:
    stranger = _user("mallory", "owner")

    response = _signed_in(stranger).post("/owner/requests/new", _request_form(bare_claimant))

    assert response.status_code == 400
    assert "No such registered model" in _text(response.content)
    assert not DisputeRequest.objects.exists()


def test_arbiters_see_open_requests_and_accept_one_into_a_dispute(
    owner: Any, arbiter: Any, bare_claimant: Claimant
) -> None:
    made = _open_request(owner, bare_claimant)
    client = _signed_in(arbiter)
    listing = _text(client.get("/disputes/").content)
    assert "Requests from owners" in listing
    assert "digits, resold" in listing
    page = client.get(f"/disputes/requests/{made.public_id}")
    assert page.status_code == 200
    assert "Accept and file" in _text(page.content)

    response = client.post(
        f"/disputes/requests/{made.public_id}",
        {"action": "accept", "alpha": "0.001", "query_budget": "1000", "panel": PANEL, "note": "taken up"},
    )

    dispute = Dispute.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/disputes/{dispute.public_id}"
    assert (dispute.suspect_url, dispute.query_budget, dispute.state) == (ENDPOINT, 1000, "queued")
    owner_view = _text(_signed_in(owner).get(f"/owner/requests/{made.public_id}").content)
    assert "Accepted" in owner_view
    assert "taken up" in owner_view
    assert "Queued" in owner_view
    assert "Requests from owners" not in _text(client.get("/disputes/").content)


def test_declining_needs_a_reason_and_the_owner_reads_it(owner: Any, arbiter: Any, bare_claimant: Claimant) -> None:
    made = _open_request(owner, bare_claimant)
    client = _signed_in(arbiter)

    empty = client.post(f"/disputes/requests/{made.public_id}", {"action": "decline", "reason": ""})
    assert empty.status_code == 400
    assert DisputeRequest.objects.get().state == "open"
    declined = client.post(f"/disputes/requests/{made.public_id}", {"action": "decline", "reason": "out of scope"})

    assert declined.status_code == 302
    owner_view = _text(_signed_in(owner).get(f"/owner/requests/{made.public_id}").content)
    assert "Declined: out of scope" in owner_view


def test_an_accept_with_an_unknown_panel_is_refused_and_the_request_stays_open(
    owner: Any, arbiter: Any, bare_claimant: Claimant
) -> None:
    made = _open_request(owner, bare_claimant)

    response = _signed_in(arbiter).post(
        f"/disputes/requests/{made.public_id}",
        {"action": "accept", "alpha": "0.001", "query_budget": "1000", "panel": "nope"},
    )

    assert response.status_code == 400
    assert DisputeRequest.objects.get().state == "open"
    assert not Dispute.objects.exists()


def test_the_owner_withdraws_an_open_request(owner: Any, arbiter: Any, bare_claimant: Claimant) -> None:
    made = _open_request(owner, bare_claimant)
    client = _signed_in(owner)

    response = client.post(f"/owner/requests/{made.public_id}/withdraw")

    assert response.status_code == 302
    assert DisputeRequest.objects.get().state == "withdrawn"
    again = client.post(f"/owner/requests/{made.public_id}/withdraw", follow=True)
    assert "A withdrawn request cannot be withdrawn." in _text(again.content)
    assert _signed_in(arbiter).get(f"/disputes/requests/{made.public_id}").status_code == 404


def test_request_pages_need_their_role_and_hide_others_requests(
    owner: Any, arbiter: Any, bare_claimant: Claimant
) -> None:
    made = _open_request(owner, bare_claimant)
    stranger = _user("mallory", "owner")

    assert _signed_in(arbiter).get("/owner/requests/").status_code == 403
    assert _signed_in(owner).get(f"/disputes/requests/{made.public_id}").status_code == 403
    assert _signed_in(stranger).get(f"/owner/requests/{made.public_id}").status_code == 404
    assert _signed_in(stranger).post(f"/owner/requests/{made.public_id}/withdraw").status_code == 404
    assert Client().get("/owner/requests/").status_code == 302
    assert DisputeRequest.objects.get().state == "open"


def test_the_owner_names_a_registered_suspect_by_id_without_browsing_the_registry(
    owner: Any, bare_claimant: Claimant
) -> None:
    from .conftest import bare_model

    stranger = _user("mallory", "owner")
    theirs = bare_model(stranger, "mallorys-secret-model")
    client = _signed_in(owner)

    page = client.get("/owner/requests/new").content.decode()
    response = client.post(
        "/owner/requests/new",
        _request_form(bare_claimant, suspect_source="registered", suspect_registration=str(theirs.public_id)),
    )

    assert "mallorys-secret-model" not in page
    assert str(theirs.public_id) not in page
    assert response.status_code == 302
    assert DisputeRequest.objects.get().suspect_registration == theirs


def test_requests_do_not_keep_models_from_being_deleted(owner: Any, bare_claimant: Claimant) -> None:
    from ownership import services as ownership_services

    from .conftest import bare_model

    suspect = bare_model(_user("mallory", "owner"), "theirs")
    named = request_services.dispute_request_create(
        owner=owner, title="t", claimant_model=bare_claimant.model, methods=["watermark"],
        suspect_registration=suspect,
    )  # fmt: skip
    request_services.dispute_request_withdraw(request=named)

    ownership_services.model_delete(model=suspect)
    named.refresh_from_db()
    assert named.suspect_registration is None
    assert named.suspect_digest == suspect.model_digest
    ownership_services.model_delete(model=bare_claimant.model)
    assert not DisputeRequest.objects.exists()


def test_the_model_page_lists_the_owners_requests_and_published_verdicts(
    owner: Any, arbiter: Any, bare_claimant: Claimant
) -> None:
    client = _signed_in(owner)
    page = f"/owner/models/{bare_claimant.model.public_id}/"
    assert "No published verdict names this model" in _text(client.get(page).content)

    request = _open_request(owner, bare_claimant)
    text = _text(client.get(page).content)
    assert "Your dispute requests for this model" in text
    assert f"/owner/requests/{request.public_id}" in client.get(page).content.decode()
    assert "digits, resold Open" in text

    # another owner's page of another model says nothing of it
    stranger = _user("sasha", "owner")
    assert str(request.public_id) not in _signed_in(stranger).get("/owner/models/").content.decode()
