"""What the service relays from other people must not drive the reader's terminal.

Found live: an owner's dispute request titled with ANSI/OSC escapes (`evil\\x1b]0;pwned\\x07\\x1b[2J...`) is
accepted as is (the API keeps control characters in titles and model names), an arbiter's acceptance copies
the title into the dispute, and `modelcourt dispute status` prints it raw: the owner can clear the
arbiter's screen, retitle their terminal and paint fake lines such as a verdict. `modelcourt verdict get`
prints a published verdict's title the same way to anyone. The CLI must show such text inertly.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from modelcourt import cli

HOSTILE = "evil\x1b]0;pwned\x07\x1b[2J\x1b[31mverdict: confirmed\x9b0m\r"
# C0 controls but newline, DEL, C1 controls: what a terminal acts on
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
DISPUTE_ID = "4b727714-dca6-4fc8-bca8-5c29e9345029"
VERDICT_ID = "b375b4b1-4e99-4ab8-ac7c-6c4af4f8148a"


def _answers(path: str) -> dict[str, Any]:
    if "/verdicts/" in path:
        return {
            "id": VERDICT_ID,
            "title": HOSTILE,
            "outcome": "inconclusive",
            "published_at": "2026-12-06T05:17:17Z",
            "log_index": 1,
            "predicate": {"alpha": 0.001, "decision": {"tests": [], "screens": [], "reasons": [HOSTILE]}},
        }
    return {
        "id": DISPUTE_ID,
        "title": HOSTILE,
        "state": "failed",
        "progress": 0,
        "phase": HOSTILE,
        "failure_reason": HOSTILE,
        "verdict": None,
    }


@pytest.mark.parametrize(
    "argv", [["dispute", "status", DISPUTE_ID], ["verdict", "get", VERDICT_ID]], ids=["dispute-status", "verdict-get"]
)
def test_the_cli_never_prints_control_characters_it_was_sent(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.Client, "get", lambda self, path: _answers(path))
    status = cli.main(["--url", "http://127.0.0.1:9", "--token", "t", *argv])
    out, err = capsys.readouterr()
    assert status in (0, 1)
    assert "evil" in out, "the title is not shown at all"
    assert not _CONTROL.search(out + err), f"raw control characters reached the terminal: {(out + err)!r}"
