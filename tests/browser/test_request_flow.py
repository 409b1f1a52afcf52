"""An owner's dispute request, in headless Chromium against a live server: the owner requests a dispute against
an endpoint, an arbiter finds it beside their disputes and accepts it (filing the dispute), and the owner sees it
accepted with the dispute's state. Screenshots go where the arbiter flow's go ($MODELCOURT_SCREENSHOTS).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ownership import services as ownership_services
from tests.verification.conftest import PANEL, bare_model
from verification.models import Dispute, DisputeRequest

from .conftest import PASSWORD, UUID, assert_fits

pytestmark = pytest.mark.browser
ENDPOINT = "https://models.example.org/v2/models/clf/infer"


def _sign_in(context: Any, url: str, user: Any) -> Any:
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{url}/accounts/login/")
    page.fill("#id_username", user.get_username())
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    # owners land on their models, arbiters on their disputes
    page.wait_for_url(re.compile(rf"{re.escape(url)}/(owner/models|disputes)/$"))
    return page


def test_an_owner_requests_a_dispute_and_an_arbiter_accepts_it(
    live_server: Any, browser: Any, shots: Path, owner: Any, arbiter: Any, data_dir: Path, queued: list[int]
) -> None:
    model = bare_model(owner, "digits-mlp")
    ownership_services.evidence_generate(model=model, count=10)
    url = live_server.url
    taken: list[Path] = []

    def shot(page: Any, name: str) -> None:
        path = shots / f"request-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        taken.append(path)

    # the owner: Requests in the navigation, the empty list, the form with an endpoint suspect
    owner_context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = _sign_in(owner_context, url, owner)
    page.click("header nav >> text=Requests")
    page.wait_for_url(f"{url}/owner/requests/")
    assert "No requests yet" in page.content()
    page.click(".page-actions >> text=Request a dispute")
    page.wait_for_url(f"{url}/owner/requests/new")
    page.fill("#id_title", "digits-mlp, resold as clf")
    page.select_option("#id_claimant", str(model.public_id))
    page.check("input[name=suspect_source][value=endpoint]")
    assert page.is_visible("#id_suspect_url")
    page.fill("#id_suspect_url", ENDPOINT)
    page.fill("#id_statement", "It labels our committed triggers exactly as our model does.")
    shot(page, "01-form")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(rf"{re.escape(url)}/owner/requests/{UUID}$"))
    request_url = page.url
    assert page.locator(".messages .success").inner_text().startswith("Requested")
    assert page.locator("#request-state").inner_text() == "Open"
    shot(page, "02-open")

    # the arbiter: the request above the disputes; accept it with a note
    arbiter_context = browser.new_context(viewport={"width": 1280, "height": 860})
    desk = _sign_in(arbiter_context, url, arbiter)
    desk.click("header nav >> text=Disputes")
    desk.wait_for_url(f"{url}/disputes/")
    inbox = desk.locator("#request-inbox")
    assert "digits-mlp, resold as clf" in inbox.inner_text()
    shot(desk, "03-inbox")
    inbox.locator("text=digits-mlp, resold as clf").click()
    desk.wait_for_url(re.compile(rf"{re.escape(url)}/disputes/requests/{UUID}$"))
    assert "It labels our committed triggers" in desk.locator(".statement").inner_text()
    desk.select_option("#accept-form #id_panel", PANEL)
    desk.fill("#accept-form #id_note", "Filed; the endpoint will be queried as a black box.")
    shot(desk, "04-review")
    desk.click("#accept-form button[type=submit]")
    desk.wait_for_url(re.compile(rf"{re.escape(url)}/disputes/{UUID}$"))
    assert desk.locator(".messages .success").inner_text().startswith("Accepted")
    dispute = Dispute.objects.get()
    assert queued == [dispute.pk]
    assert (dispute.suspect_url, DisputeRequest.objects.get().state) == (ENDPOINT, "accepted")
    arbiter_context.close()

    # the owner sees it accepted, the note and the dispute's state; the page fits a phone
    page.goto(request_url)
    assert page.locator("#request-state").inner_text() == "Accepted"
    assert "Filed; the endpoint will be queried" in page.content()
    assert page.locator("#dispute-state").inner_text() == "Queued"
    shot(page, "05-accepted")
    page.set_viewport_size({"width": 390, "height": 844})
    assert_fits(page, "the request page")
    page.goto(f"{url}/owner/requests/new")
    assert_fits(page, "the request form")
    owner_context.close()

    print("\nscreenshots:\n" + "\n".join(f"  {path}" for path in taken))
