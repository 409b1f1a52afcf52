"""An owner's stress test, in headless Chromium against a live server: start it from the model's page, watch it
run, read which evidence survives which theft. The test thread runs the queued stress test as a worker would.
Screenshots go where the arbiter flow's go ($MODELCOURT_SCREENSHOTS).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.verification.conftest import PANEL, Models, register_marked
from verification import tasks
from verification.services import stress as stress_services

from .conftest import PASSWORD, UUID, assert_fits

pytestmark = pytest.mark.browser


def test_an_owner_stress_tests_a_watermark_and_reads_the_table(
    live_server: Any,
    browser: Any,
    shots: Path,
    owner: Any,
    digits_models: Models,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the owner draws a watermark, embeds it, registers the marked model and adopts the watermark for it
    model = register_marked(owner, digits_models, name="digits-mlp").model
    queued: list[int] = []
    monkeypatch.setattr(tasks, "stress_test_task", type("Caught", (), {"delay": staticmethod(queued.append)}))
    url = live_server.url
    taken: list[Path] = []

    def shot(page: Any, name: str) -> None:
        path = shots / f"stress-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        taken.append(path)

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{url}/accounts/login/")
    page.fill("#id_username", owner.get_username())
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/owner/models/")  # owners land on their models
    page.goto(f"{url}/owner/models/{model.public_id}")
    page.click("text=Stress-test this model's evidence")
    page.wait_for_url(re.compile(rf"{re.escape(url)}/owner/stress-tests/new\?model={UUID}$"))
    page.select_option("#id_panel", PANEL)
    for theft in ("distill", "extract"):  # the quick ones stay: copy, fine-tuning, pruning
        page.uncheck(f"input[name=thefts][value={theft}]")
    shot(page, "01-form")
    page.click("#stress-form button[type=submit]")
    page.wait_for_url(re.compile(rf"{re.escape(url)}/owner/stress-tests/{UUID}$"))
    assert page.locator("#dispute-state").inner_text() == "Queued"
    assert len(queued) == 1

    done = stress_services.stress_test_execute(stress_test_id=queued[0])
    assert done is not None
    assert done.state == "done", done.failure_reason

    page.wait_for_selector("#stress-table")
    table = page.locator("#stress-table").inner_text()
    assert "survives" in table
    assert "not confirmed" in table  # the independent control
    shot(page, "02-results")
    page.set_viewport_size({"width": 390, "height": 844})
    assert_fits(page, "the stress-test page")
    shot(page, "03-results-phone")
    context.close()
    print("\nscreenshots:\n" + "\n".join(f"  {path}" for path in taken))
