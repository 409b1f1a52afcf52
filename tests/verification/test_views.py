"""The arbiter's dispute pages and the public verdict page: access, filing through the form with inline errors,
live progress, the decided verdict with its plots, publishing, the public page and the bundle."""

from __future__ import annotations

import html
import io
import re
import zipfile
from typing import Any

import pytest
from django.test import Client

from modelcourt.bundle import all_ok, verify_bundle
from ownership import services as ownership_services
from ownership.models import RegisteredModel
from tests.conftest import _user
from verification.models import Dispute, Verdict
from verification.services import disputes as dispute_services
from verification.services import verdicts as verdict_services

from .conftest import PANEL, Claimant, Models, upload

pytestmark = pytest.mark.django_db

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _field_error(page: str, field: str) -> str:
    """The text of a field's inline error slot ("" when it is hidden or empty)."""
    match = re.search(
        rf'<div class="field-error" data-error-for="{field}" role="alert"( hidden)?>(.*?)</div>', page, re.S
    )
    assert match, f"no error slot for {field}"
    return "" if match.group(1) else html.unescape(match.group(2).strip())


@pytest.fixture
def arbiter_client(arbiter: Any) -> Client:
    return _signed_in(arbiter)


@pytest.fixture
def dispute(arbiter: Any, claimant: Claimant, digits_models: Models) -> Dispute:
    """A queued dispute against an independent model (no worker runs it in these tests)."""
    return dispute_services.dispute_file(
        arbiter=arbiter,
        title="digits vs. independent",
        claimant_model=claimant.model,
        methods=["watermark"],
        suspect_file=upload("independent.pt", digits_models.independent),
        panel=PANEL,
    )


@pytest.fixture
def decided(arbiter: Any, claimant: Claimant) -> tuple[Dispute, Verdict]:
    """A dispute against a fine-tuned copy of the marked model, run to its verdict (unpublished)."""
    dispute = dispute_services.dispute_file(
        arbiter=arbiter,
        title="digits theft?",
        claimant_model=claimant.model,
        methods=["watermark"],
        suspect_file=upload("stolen.pt", claimant.stolen),
        panel=PANEL,
    )
    verdict = dispute_services.verification_run_execute(dispute_id=dispute.pk)
    assert verdict is not None
    assert verdict.outcome == "ownership_confirmed", verdict.predicate["decision"]["reasons"]
    dispute.refresh_from_db()
    return dispute, verdict


def _form(model: RegisteredModel, **fields: Any) -> dict[str, Any]:
    return {
        "title": "digits theft?",
        "claimant": str(model.public_id),
        "methods": ["watermark"],
        "suspect_source": "upload",
        "alpha": "0.001",
        "query_budget": "100000",
        "panel": PANEL,
        **fields,
    }


# --- who may see what ---------------------------------------------------------------------------


def _arbiter_urls(dispute: Dispute) -> list[tuple[str, str]]:
    base = f"/disputes/{dispute.public_id}"
    return [
        ("get", "/disputes/"),
        ("get", "/disputes/new"),
        ("get", base),
        ("get", f"{base}/progress.json"),
        ("post", f"{base}/publish"),
        ("post", f"{base}/withdraw"),
        ("post", f"{base}/retry"),
    ]


def test_anonymous_visitors_are_sent_to_the_login_page(dispute: Dispute) -> None:
    client = Client()
    for method, url in _arbiter_urls(dispute):
        response = getattr(client, method)(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next="), url


def test_owners_are_refused_the_arbiter_pages(owner: Any, dispute: Dispute) -> None:
    client = _signed_in(owner)
    for method, url in _arbiter_urls(dispute):
        assert getattr(client, method)(url).status_code == 403, url


def test_another_arbiters_dispute_is_not_found(dispute: Dispute) -> None:
    other = _signed_in(_user("ada", "arbiter"))
    assert other.get("/disputes/").status_code == 200
    for method, url in _arbiter_urls(dispute)[2:]:
        assert getattr(other, method)(url).status_code == 404, url
    dispute.refresh_from_db()
    assert dispute.state == Dispute.State.QUEUED  # the POSTs changed nothing


def test_the_list_shows_the_arbiters_disputes(arbiter_client: Client, dispute: Dispute) -> None:
    page = arbiter_client.get("/disputes/").content.decode()
    assert "digits vs. independent" in page
    assert "independent.pt" in page
    assert "Queued" in page
    assert dispute.claimant_model.model_digest[:12] in page
    assert 'href="/disputes/"' in page  # the navigation link


# --- filing --------------------------------------------------------------------------------------


def test_the_form_lists_registrations_methods_and_panels(arbiter_client: Client, claimant: Claimant) -> None:
    model = claimant.model
    page = arbiter_client.get("/disputes/new").content.decode()
    assert f'value="{model.public_id}"' in page
    assert f"digits · olivia · {model.model_digest[:12]}" in page
    assert 'value="dataset_inference"' in page
    assert f'<option value="{PANEL}"' in page
    assert 'value="0.001"' in page


def test_filing_through_the_form_queues_the_dispute(
    arbiter: Any, arbiter_client: Client, claimant: Claimant, digits_models: Models
) -> None:
    model = claimant.model
    response = arbiter_client.post(
        "/disputes/new", _form(model, suspect_file=upload("suspect.pt", digits_models.independent))
    )

    assert response.status_code == 302
    dispute = Dispute.objects.get(arbiter=arbiter)
    assert response["Location"] == f"/disputes/{dispute.public_id}"
    assert dispute.state == Dispute.State.QUEUED
    assert dispute.suspect_kind == Dispute.SuspectKind.ARTIFACT
    assert dispute.suspect_format == "torchscript"
    assert dispute.panel == PANEL
    assert list(dispute.evidence_sets.values_list("kind", flat=True)) == ["watermark"]
    assert "queued for a verification run" in arbiter_client.get(response["Location"]).content.decode()


def test_filing_a_registered_suspect(
    arbiter: Any, arbiter_client: Client, owner: Any, claimant: Claimant, digits_models: Models
) -> None:
    model = claimant.model
    suspect = ownership_services.model_register(
        owner=_user("mallory", "owner"),
        name="acme-classifier",
        task="digits",
        input_shape=[64],
        num_classes=10,
        artifact=upload("acme.pt", digits_models.independent),
    )
    own = arbiter_client.post(
        "/disputes/new", _form(model, suspect_source="registered", suspect_registration=str(model.public_id))
    )
    assert own.status_code == 400
    assert "cannot be the claimant's own registration" in _field_error(own.content.decode(), "suspect_registration")

    response = arbiter_client.post(
        "/disputes/new", _form(model, suspect_source="registered", suspect_registration=str(suspect.public_id))
    )

    assert response.status_code == 302
    dispute = Dispute.objects.get(arbiter=arbiter)
    assert dispute.suspect_kind == Dispute.SuspectKind.REGISTERED
    assert dispute.suspect_digest == suspect.model_digest


@pytest.mark.parametrize(
    ("fields", "slot", "text"),
    [
        ({}, "suspect_file", "Choose the suspect's"),
        ({"methods": ["fingerprint"], "with_file": True}, "methods", "no fingerprint evidence"),
        ({"methods": []}, "methods", "at least one method"),
        ({"alpha": "0.5", "with_file": True}, "alpha", "Alpha must lie in (0, 0.1]"),
        ({"suspect_source": "endpoint", "suspect_url": "ftp://example.org/model"}, "suspect_url", "http://"),
        ({"suspect_source": "endpoint", "suspect_url": ""}, "suspect_url", "Give the endpoint's URL"),
        (
            {"suspect_source": "endpoint", "suspect_url": "https://example.org/infer", "suspect_protocol": "v2"},
            "suspect_model_name",
            "needs the model's name",
        ),
        ({"evil": True}, "suspect_file", "was refused"),
        ({"title": " ", "with_file": True}, "title", "required"),
    ],
)
def test_form_errors_show_inline(
    arbiter: Any,
    arbiter_client: Client,
    claimant: Claimant,
    digits_models: Models,
    fields: dict[str, Any],
    slot: str,
    text: str,
) -> None:
    model = claimant.model
    data = _form(model, **{k: v for k, v in fields.items() if k not in {"with_file", "evil"}})
    if fields.get("with_file"):
        data["suspect_file"] = upload("suspect.pt", digits_models.independent)
    if fields.get("evil"):
        data["suspect_file"] = upload("evil.pkl", b"\x80\x04 not a model")

    response = arbiter_client.post("/disputes/new", data)

    assert response.status_code == 400
    page = response.content.decode()
    assert text in _field_error(page, slot), page
    assert not Dispute.objects.exists()


def test_an_unknown_claimant_is_a_field_error_not_a_crash(arbiter_client: Client, claimant: Claimant) -> None:
    model = claimant.model
    response = arbiter_client.post("/disputes/new", _form(model, claimant="not-a-uuid"))
    assert response.status_code == 400
    assert "No such registered model" in _field_error(response.content.decode(), "claimant")


# --- progress, runs and the verdict -----------------------------------------------------------------


def test_the_detail_page_follows_progress_through_json(arbiter_client: Client, dispute: Dispute) -> None:
    page = arbiter_client.get(f"/disputes/{dispute.public_id}").content.decode()
    assert f'data-url="/disputes/{dispute.public_id}/progress.json"' in page
    assert 'data-settled="0"' in page
    assert 'role="progressbar"' in page
    assert "waiting for a GPU worker" in page
    assert "Withdraw" in page
    assert "Publish the verdict" not in page

    response = arbiter_client.get(f"/disputes/{dispute.public_id}/progress.json")
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    data = response.json()
    assert data["state"] == "queued"
    assert data["progress"] == 0
    assert data["phase"] == "waiting for a GPU worker"
    assert data["settled"] is False


def test_a_decided_dispute_shows_the_outcome_tests_and_plots(
    arbiter_client: Client, decided: tuple[Dispute, Verdict]
) -> None:
    dispute, verdict = decided
    page = arbiter_client.get(f"/disputes/{dispute.public_id}").content.decode()

    assert 'data-outcome="ownership_confirmed"' in page
    assert "Ownership confirmed" in page
    assert "Publish the verdict" in page
    assert "Not published yet" in page
    test = verdict.predicate["decision"]["tests"][0]
    assert test["name"] in page
    assert f'<td class="num">{test["statistics"]["K"]}</td>' in page
    assert "Panel rank p-value" in page
    assert "Naive p-value" in page
    assert "Succeeded" in page  # the runs table
    plot_urls = re.findall(r'<img src="(/verdicts/[0-9a-f-]{36}/plots/[^"]+\.png)"', page)
    assert plot_urls
    for url in plot_urls:
        image = arbiter_client.get(url)
        assert image.status_code == 200
        assert image["Content-Type"] == "image/png"
        assert image.content.startswith(PNG_MAGIC)
    assert arbiter_client.get(f"/disputes/{dispute.public_id}/progress.json").json()["settled"] is True

    report = arbiter_client.get(f"/verdicts/{verdict.public_id}/report")
    assert report.status_code == 200
    assert report["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in report["Content-Security-Policy"]
    assert b"Verdict: ownership confirmed" in report.content


def test_publishing_through_a_post(arbiter_client: Client, decided: tuple[Dispute, Verdict]) -> None:
    dispute, verdict = decided
    assert arbiter_client.get(f"/disputes/{dispute.public_id}/publish").status_code == 405

    response = arbiter_client.post(f"/disputes/{dispute.public_id}/publish", follow=True)

    assert response.status_code == 200
    dispute.refresh_from_db()
    verdict.refresh_from_db()
    assert dispute.state == Dispute.State.PUBLISHED
    assert verdict.published_at is not None
    page = response.content.decode()
    assert f"/verdicts/{verdict.public_id}" in page
    assert "Publish the verdict" not in page
    # a second publish is refused with a message, not an error page
    again = arbiter_client.post(f"/disputes/{dispute.public_id}/publish", follow=True)
    assert "only a decided dispute can be published" in again.content.decode().lower()


def test_the_public_page_appears_only_once_published(arbiter_client: Client, decided: tuple[Dispute, Verdict]) -> None:
    dispute, verdict = decided
    anonymous, other = Client(), _signed_in(_user("ada", "arbiter"))
    urls = [
        f"/verdicts/{verdict.public_id}",
        f"/verdicts/{verdict.public_id}/report",
        f"/verdicts/{verdict.public_id}/bundle.zip",
        *re.findall(
            r'src="(/verdicts/[^"]+\.png)"', arbiter_client.get(f"/disputes/{dispute.public_id}").content.decode()
        ),
    ]
    for url in urls:
        assert anonymous.get(url).status_code == 404, url
        assert other.get(url).status_code == 404, url
    preview = arbiter_client.get(urls[0])
    assert preview.status_code == 200
    assert "Preview: not published" in preview.content.decode()

    verdict_services.verdict_publish(dispute=dispute)

    page = anonymous.get(urls[0])
    assert page.status_code == 200
    text = html.unescape(page.content.decode())
    assert "Ownership confirmed" in text
    assert "Preview" not in text
    assert dispute.suspect_digest in text
    assert dispute.claimant_model.model_digest in text
    assert "modelcourt verify verdict-" in text
    assert "openssl ts -verify -data envelope.json -in verdict-token.der -token_in -CAfile ../ca.pem" in text
    assert f"/verdicts/{verdict.public_id}/bundle.zip" in text
    for url in urls[1:]:
        assert anonymous.get(url).status_code == 200, url
    assert anonymous.get(f"/verdicts/{verdict.public_id}/plots/nothing.png").status_code == 404


def test_the_bundle_downloads_and_verifies(arbiter_client: Client, decided: tuple[Dispute, Verdict]) -> None:
    dispute, verdict = decided
    verdict_services.verdict_publish(dispute=dispute)

    response = Client().get(f"/verdicts/{verdict.public_id}/bundle.zip")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == f'attachment; filename="verdict-{str(verdict.public_id)[:8]}.zip"'
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    assert {"envelope.json", "verdict-token.der", "report.html"} <= set(names)
    checks = verify_bundle(response.content)
    assert all_ok(checks), [c for c in checks if not c.ok]


# --- withdraw and retry -------------------------------------------------------------------------------


def test_withdrawing_a_queued_dispute(arbiter_client: Client, dispute: Dispute) -> None:
    response = arbiter_client.post(f"/disputes/{dispute.public_id}/withdraw", follow=True)
    dispute.refresh_from_db()
    assert dispute.state == Dispute.State.WITHDRAWN
    page = response.content.decode()
    assert "Withdrawn. No verdict will be made" in page
    assert 'data-settled="1"' in page
    assert ">Withdraw</button>" not in page


def test_retrying_a_failed_dispute(arbiter_client: Client, dispute: Dispute) -> None:
    Dispute.objects.filter(pk=dispute.pk).update(state=Dispute.State.FAILED, failure_reason="the suspect hung")
    page = arbiter_client.get(f"/disputes/{dispute.public_id}").content.decode()
    assert "the suspect hung" in page
    assert ">Retry</button>" in page

    arbiter_client.post(f"/disputes/{dispute.public_id}/retry")

    dispute.refresh_from_db()
    assert dispute.state == Dispute.State.QUEUED
    assert dispute.failure_reason == ""


def test_retrying_a_queued_dispute_is_refused_with_a_message(arbiter_client: Client, dispute: Dispute) -> None:
    response = arbiter_client.post(f"/disputes/{dispute.public_id}/retry", follow=True)
    assert response.status_code == 200
    assert "A queued dispute cannot be queued." in response.content.decode()
