"""A JSON body nested too deeply is the caller's mistake: a 4xx JSON error, never a 500.

Found live: `POST /api/v1/auth/token` (no account needed) with `Content-Type: application/json` and a
body of 2,000 `[` then 2,000 `]` (4 kB) answers 500 `server_error`, and the server logs an ERROR with a
RecursionError traceback for each such request; the same holds for every API view that parses JSON
(dispute requests, stress tests, evidence generation).
"""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

DEEP = "[" * 2000 + "]" * 2000


def test_a_deeply_nested_body_is_a_client_error() -> None:
    answer = Client(raise_request_exception=False).post(
        "/api/v1/auth/token", data=DEEP, content_type="application/json"
    )

    assert 400 <= answer.status_code < 500, (answer.status_code, answer.content[:200])
    assert answer["Content-Type"].startswith("application/json")
    assert answer.json()["code"] != "server_error"
