"""An arbiter's dispute, in headless Chromium against a live server: sign in, file a dispute by uploading a stolen
TorchScript model, follow the progress bar, read the outcome and its plot, publish; then, signed out, open the
public verdict page and download the bundle, which verifies offline.

No worker runs here: the filing's task message is caught, and the test thread runs the verification itself
(`dispute_services.verification_run_execute`), as a worker would. Full-page screenshots of each main page go to
$MODELCOURT_SCREENSHOTS (default: the test's tmp_path); their paths are printed.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from modelcourt.bundle import all_ok, verify_bundle
from tests.verification.conftest import PANEL, Models, register_marked
from verification.services import disputes as dispute_services

from .conftest import PASSWORD, UUID, assert_fits

pytestmark = pytest.mark.browser


@pytest.fixture
def stolen_model(owner: Any, digits_models: Models, data_dir: Path, tmp_path: Path) -> tuple[Any, Path]:
    """The owner's marked (deployed) digits model with its adopted watermark, and a fine-tuned theft of it on disk."""
    claimant = register_marked(owner, digits_models, name="digits-mlp")
    path = tmp_path / "acme-classifier.pt"
    path.write_bytes(claimant.stolen)
    return claimant.model, path


def test_an_arbiter_files_follows_and_publishes_a_dispute(
    live_server: Any,
    browser: Any,
    shots: Path,
    arbiter: Any,
    stolen_model: tuple[Any, Path],
    queued: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, stolen_path = stolen_model
    url = live_server.url
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    taken: list[Path] = []

    def shot(name: str, on: Any = None) -> None:
        path = shots / f"arbiter-{name}.png"
        (on or page).screenshot(path=str(path), full_page=True)
        taken.append(path)

    # sign in; the navigation offers the disputes
    page.goto(f"{url}/accounts/login/")
    page.fill("#id_username", arbiter.get_username())
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/disputes/")  # arbiters land on their disputes
    page.click("header nav >> text=Disputes")
    page.wait_for_url(f"{url}/disputes/")
    assert "No disputes yet" in page.content()
    shot("01-disputes-empty")

    # the form: a missing file is reported beside the file field, by the server
    page.click("text=File a dispute")
    page.wait_for_url(f"{url}/disputes/new")
    page.fill("#id_title", "digits-mlp vs. acme-classifier")
    page.select_option("#id_claimant", str(model.public_id))
    page.select_option("#id_panel", PANEL)
    assert page.is_checked("#id_methods_0")  # watermark
    assert page.input_value("#id_alpha") == "0.001"
    assert page.is_visible("#id_suspect_file")
    assert not page.is_visible("#id_suspect_url")  # the script shows one suspect source at a time
    shot("02-file-form")
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/disputes/new")
    error = page.locator('[data-error-for="suspect_file"]')
    assert "Choose the suspect's" in error.inner_text()
    shot("03-file-form-error")

    # file it, uploading the stolen model
    page.set_input_files("#id_suspect_file", str(stolen_path))
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(rf"{re.escape(url)}/disputes/{UUID}$"))
    detail_url = page.url
    assert page.locator(".messages .success").inner_text().startswith("Filed")
    assert page.locator("#dispute-progress").get_attribute("data-state") == "queued"
    assert "waiting for a GPU worker" in page.locator("[data-phase]").inner_text()
    assert len(queued) == 1
    shot("04-queued")

    # The page polls progress.json every 2 s. Routed through Playwright, the polls are answered only while
    # this thread waits on the browser, so the live server never reads the database while the run writes.
    polls: list[str] = []

    def answer(route: Any) -> None:
        polls.append(route.request.url)
        route.continue_()

    page.route(re.compile(r".*/progress\.json$"), answer)
    report_progress = dispute_services._progress

    def progress_shown(dispute_id: int, percent: int, phase: str) -> None:
        report_progress(dispute_id, percent, phase)
        if percent == 30:  # the suspect is about to be queried: the bar must say so without a reload
            page.wait_for_function("() => document.querySelector('[data-percent]').textContent === '30%'")
            assert page.locator("#dispute-progress").get_attribute("data-state") == "running"
            assert "querying the suspect" in page.locator("[data-phase]").inner_text()
            assert page.locator("#dispute-state").inner_text() == "Running"
            shot("05-running")

    monkeypatch.setattr(dispute_services, "_progress", progress_shown)
    verdict = dispute_services.verification_run_execute(dispute_id=queued[0])
    assert verdict is not None
    assert verdict.outcome == "ownership_confirmed"

    # the next poll sees the dispute decided and the page reloads with the verdict
    page.wait_for_selector("#outcome")
    assert polls
    assert page.locator(".outcome-label").inner_text().strip().lower() == "ownership confirmed"
    plot = page.locator("#plots img").first
    plot.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=plot.element_handle())
    assert page.locator("#tests tbody tr").count() == 1
    assert page.locator("#runs tbody tr").count() == 1
    shot("06-decided")

    # publish (a POST with the CSRF token)
    page.click("text=Publish the verdict")
    page.wait_for_url(detail_url)
    assert page.locator(".messages .success").inner_text().startswith("Published the verdict")
    assert page.locator("#dispute-state").inner_text() == "Published"
    shot("07-published")
    public_url = f"{url}/verdicts/{verdict.public_id}"
    assert page.get_attribute("text=Public page >> nth=0", "href") == f"/verdicts/{verdict.public_id}"

    # narrow screens: the dispute page reflows
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(detail_url)
    assert_fits(page, "the dispute page")
    shot("08-dispute-phone")
    page.goto(f"{url}/disputes/new")
    assert_fits(page, "the filing form")
    shot("09-file-form-phone")
    page.goto(f"{url}/disputes/")
    assert page.locator("tbody tr").count() == 1
    page.set_viewport_size({"width": 1280, "height": 860})
    shot("10-disputes")
    context.close()

    # anyone: the public page, its plot, the offline commands and the bundle
    anonymous = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    public = anonymous.new_page()
    public.set_default_timeout(30_000)
    public.goto(public_url)
    assert "Sign in" in public.locator("header").inner_text()
    assert public.locator(".outcome-label").inner_text().strip().lower() == "ownership confirmed"
    assert verdict.dispute.suspect_digest in public.locator("#subjects").inner_text()
    assert model.model_digest in public.locator("#subjects").inner_text()
    assert public.locator("#verify-command").inner_text().startswith("modelcourt verify verdict-")
    assert "openssl ts -verify -data envelope.json" in public.locator("#openssl-command").inner_text()
    image = public.locator("#plots img").first
    image.scroll_into_view_if_needed()
    public.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    shot("11-public", on=public)
    with public.expect_download() as download:
        public.click(".page-actions >> text=Download bundle (.zip)")
    assert download.value.suggested_filename == f"verdict-{str(verdict.public_id)[:8]}.zip"
    data = Path(download.value.path()).read_bytes()
    checks = verify_bundle(data)
    assert all_ok(checks), [c for c in checks if not c.ok]
    assert any(name.startswith("plots/") for name in zipfile.ZipFile(io.BytesIO(data)).namelist())

    public.set_viewport_size({"width": 390, "height": 844})
    public.goto(public_url)
    assert_fits(public, "the public verdict page")
    shot("12-public-phone", on=public)
    anonymous.close()

    print("\nscreenshots:\n" + "\n".join(f"  {path}" for path in taken))
