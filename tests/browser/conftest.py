"""Browser tests' shared setup: Debian's headless Chromium through Playwright, screenshots, a phone-width check,
and the dispute fixtures of tests/verification (a trained digits model, the installed test panel)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.verification import conftest as verification_fixtures

digits_models = verification_fixtures.digits_models
panel_root = verification_fixtures.panel_root
data_dir = verification_fixtures.data_dir

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery"  # tests/conftest.py gives every user this one
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _browser_required() -> bool:
    return os.environ.get("MODELCOURT_REQUIRE_BROWSER", "") not in ("", "0")


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Debian's headless Chromium through Playwright; skipped without it unless MODELCOURT_REQUIRE_BROWSER is set.

    Playwright's sync API keeps an event loop on this thread, which Django takes for an async context. This test
    thread also writes to the database (the setup, the run) while no coroutine of ours runs: allow it.
    """
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = missing or "the playwright package is not installed (pip install playwright; no browser download)"
    if missing:
        if _browser_required():
            pytest.fail(f"MODELCOURT_REQUIRE_BROWSER is set but {missing}")
        pytest.skip(f"browser test: {missing}; set MODELCOURT_REQUIRE_BROWSER=1 to make this a failure")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MODELCOURT_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Catch the filing's task message (no broker, no worker here): the ids of the disputes it would run."""
    from verification import tasks

    ids: list[int] = []

    class CaughtTask:
        @staticmethod
        def delay(dispute_id: int) -> None:
            ids.append(dispute_id)

    monkeypatch.setattr(tasks, "verification_run_task", CaughtTask)
    return ids


OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const clipped = e => {
    for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      if (["auto", "scroll", "hidden"].includes(getComputedStyle(a).overflowX)) return true;
    }
    return false;
  };
  const wide = [...document.querySelectorAll("body *")]
    .filter(e => e.getBoundingClientRect().right > width + 0.5 && !clipped(e));
  const leaves = wide.filter(e => !wide.some(other => other !== e && e.contains(other)));
  return {
    overflow: document.documentElement.scrollWidth - width,
    culprits: leaves.slice(0, 5).map(e => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") +
      (e.className && typeof e.className === "string" ? "." + e.className.trim().replace(/ +/g, ".") : "")),
  };
}"""


def assert_fits(page: Any, what: str) -> None:
    """Nothing sticks out sideways on a phone; the message names the widest offenders."""
    found = page.evaluate(OVERFLOW_JS)
    assert found["overflow"] <= 0, f"{what} is {found['overflow']}px wider than a phone screen: {found['culprits']}"
