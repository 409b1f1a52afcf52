"""An owner's first visit, in headless Chromium against a live server: sign up, register a model through
the upload form (progress to 100 %), generate a watermark, download its trigger set and receipt.

Full-page screenshots of each main page go to $MODELCOURT_SCREENSHOTS (default: the test's tmp_path).
"""

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.ownership.model_files import fifty_megabyte_torchscript_file

from .conftest import UUID

pytestmark = pytest.mark.browser

PASSWORD = "a long passphrase 42"


@pytest.fixture
def caught_validation(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The validation task the upload queues, caught here: the test thread runs it as a cpu worker would.

    The live server runs in a thread of this process, so patching the task reaches it.
    """
    from ownership import tasks

    queued: list[int] = []
    monkeypatch.setattr(tasks, "model_validate_task", type("Caught", (), {"delay": staticmethod(queued.append)}))
    return queued


def test_an_owner_signs_up_registers_a_model_and_generates_a_watermark(
    live_server: Any, browser: Any, shots: Path, tmp_path: Path, caught_validation: list[int]
) -> None:
    artifact = fifty_megabyte_torchscript_file(tmp_path / "digits-mlp.pt")
    assert artifact.stat().st_size > 50_000_000
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    url = live_server.url

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    # sign up
    page.goto(f"{url}/accounts/signup/")
    shot("01-signup")
    page.fill("#id_username", "olivia")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/owner/models/")
    assert "No models yet" in page.content()
    shot("02-models-empty")

    # register: first a pickle (refused at once, before any sandbox), whose API error shows next to the artifact field
    page.click("text=Register a model")
    page.wait_for_url(f"{url}/owner/models/new/")
    shot("03-register")
    page.fill("#id_name", "digits-mlp")
    page.fill("#id_task", "handwritten digits, 8x8 grey levels")
    page.fill("#id_input_shape", "1,8,8")
    page.fill("#id_num_classes", "10")
    page.set_input_files(
        "#id_artifact", {"name": "model.pt", "mimeType": "application/octet-stream", "buffer": b"\x80\x04" * 500}
    )
    page.click("button[type=submit]")
    error = page.locator('[data-error-for="artifact"]')
    error.wait_for(state="visible")
    assert error.inner_text().strip()
    assert page.url == f"{url}/owner/models/new/"  # the script handled it: no page load
    shot("04-register-error")

    # then the real artifact, watching the progress bar
    seen: list[str] = []
    page.expose_function("mcProgress", lambda value: seen.append(value))
    page.evaluate(
        """() => {
          const box = document.getElementById("upload-progress");
          const bar = box.querySelector("[role=progressbar]");
          new MutationObserver(() => window.mcProgress(box.dataset.state + ":" + bar.getAttribute("aria-valuenow")))
            .observe(box, {attributes: true, subtree: true, attributeFilter: ["data-state", "aria-valuenow"]});
        }"""
    )
    page.set_input_files("#id_artifact", str(artifact))
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(rf"{re.escape(url)}/owner/models/{UUID}/$"))
    assert any(value.startswith("uploading:") for value in seen), seen
    # the upload answers at once (202); the check runs in a worker, and the model page follows it
    assert page.locator(".messages .success").inner_text().startswith("Registered digits-mlp")
    assert page.locator(".field-error:visible").count() == 0
    model_url = page.url
    # the model page follows the sandbox's check, which a worker runs: here, the test thread
    page.wait_for_selector("#model-validation")
    shot("06-model-validating")
    assert len(caught_validation) == 1
    from ownership import services

    services.model_validate(model_id=caught_validation[0])
    page.wait_for_selector("#model-validation", state="detached")
    shot("06-model")

    # generate a watermark, then take its trigger set and receipt
    page.fill("#id_count", "50")
    page.click("text=Generate and commit")
    page.wait_for_url(re.compile(rf"{re.escape(model_url)}evidence/{UUID}/$"))
    assert "modelcourt.embed" in page.content()
    commitment = page.locator("#commitment").inner_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", commitment)
    shot("07-evidence")

    with page.expect_download() as triggers_download:
        page.click("text=Download trigger set (.npz)")
    with np.load(io.BytesIO(Path(triggers_download.value.path()).read_bytes()), allow_pickle=False) as triggers:
        assert triggers["inputs"].shape == (50, 1, 8, 8)
        assert triggers["labels"].shape == (50,)

    with page.expect_download() as receipt_download:
        page.click("text=Download receipt (JSON)")
    assert receipt_download.value.suggested_filename == f"receipt-{commitment}.json"
    receipt = json.loads(Path(receipt_download.value.path()).read_text())
    assert receipt["commitment"] == commitment
    assert receipt["verifiable"] is True
    assert receipt["timestamp"]["token_b64"]

    # the model page now lists the evidence; the list shows the model; deletion asks first
    page.goto(model_url)
    assert page.locator("#evidence tbody tr").count() == 1
    assert page.locator("#evidence .badge.good").inner_text() == "verifiable"
    shot("08-model-with-evidence")
    # a broken .npz through the plain form (no script): the page comes back with the reason beside the file
    page.set_input_files("#id_file", {"name": "broken.npz", "mimeType": "application/octet-stream", "buffer": b"nope"})
    page.click("text=Upload and commit")
    page.locator('[data-error-for="file"]').wait_for(state="visible")
    assert page.locator("#evidence tbody tr").count() == 1
    shot("08b-evidence-upload-error")
    page.goto(f"{url}/owner/models/")
    assert page.locator("tbody tr").count() == 1
    shot("09-models")
    page.goto(model_url)
    page.click("text=Delete…")
    page.wait_for_url(f"{model_url}delete/")
    shot("10-delete-confirm")

    # narrow screens: the page reflows instead of overflowing
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(model_url)
    overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the model page is {overflow}px wider than a phone screen"
    shot("11-model-phone")
    context.close()
