"""A guard's journal batches (api_watermark evidence) and its extraction alarms, through the owner API and page."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.test import APIClient

from ownership.evidence import EvidenceRejected, load_evidence
from ownership.models import GuardAlarm, RegisteredModel
from ownership.roles import Role, role_grant
from ownership.services import MAX_ALARMS_PER_HOUR
from tests.verification.conftest import bare_model

TAG = "ab" * 16
rng = np.random.default_rng(3)


def _model(owner: Any, name: str = "served") -> RegisteredModel:
    return bare_model(owner, name)


def _batch(rows: int = 5, **override: Any) -> dict[str, np.ndarray]:
    arrays = {
        "inputs": rng.random((rows, 64), dtype=np.float32),
        "labels": rng.integers(0, 10, size=rows, dtype=np.int64),
        "clients": np.frombuffer(bytes.fromhex(TAG) * rows, dtype=np.uint8).reshape(rows, 16).copy(),
        "served_at": np.full(rows, time.time() - 10, dtype=np.float64),
    }
    arrays.update(override)
    return arrays


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_a_batch_round_trips() -> None:
    arrays = load_evidence(_npz(_batch()), kind="api_watermark", input_shape=[64], num_classes=10)
    assert arrays["clients"].shape == (5, 16)
    assert arrays["served_at"].dtype == np.float64


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"clients": np.zeros((5, 8), dtype=np.uint8)}, "'clients' has shape"),
        ({"clients": np.zeros((4, 16), dtype=np.uint8)}, "'clients' has shape"),
        ({"clients": np.zeros((5, 16), dtype=np.int64)}, "'clients' has dtype"),
        ({"served_at": np.full(5, np.nan)}, "NaN or infinite"),
        ({"served_at": np.full(5, -1.0)}, "negative time"),
        ({"served_at": np.zeros(5, dtype=np.float32)}, "'served_at' has dtype"),
        ({"labels": np.full(5, 10, dtype=np.int64)}, "labels must be in"),
    ],
)
def test_a_malformed_batch_is_refused_with_the_reason(override: dict[str, Any], reason: str) -> None:
    with pytest.raises(EvidenceRejected, match=reason):
        load_evidence(_npz(_batch(**override)), kind="api_watermark", input_shape=[64], num_classes=10)


def test_an_object_array_in_a_batch_is_refused_unread(tmp_path) -> None:  # type: ignore[no-untyped-def]
    arrays = _batch()
    arrays["clients"] = np.array([object()] * 5, dtype=object)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=True, **arrays)
    with pytest.raises(EvidenceRejected, match="Python objects"):
        load_evidence(buffer.getvalue(), kind="api_watermark", input_shape=[64], num_classes=10)


@pytest.fixture
def client(owner) -> APIClient:  # type: ignore[no-untyped-def]
    api = APIClient()
    api.force_authenticate(owner)
    return api


def _alarm(**override: Any) -> dict[str, Any]:
    return {
        "client": TAG,
        "queries": 180,
        "statistic": 0.71,
        "threshold": 0.9,
        "raised_at": timezone.now().isoformat(),
        **override,
    }


def test_the_guard_commits_a_batch_and_reports_an_alarm(owner, client: APIClient) -> None:  # type: ignore[no-untyped-def]
    model = _model(owner)
    posted = client.post(
        f"/api/v1/models/{model.public_id}/evidence/",
        {"kind": "api_watermark", "file": io.BytesIO(_npz(_batch()))},
        format="multipart",
    )
    assert posted.status_code == 201, posted.content
    assert posted.json()["journal"]["clients"] == [TAG]
    alarm = client.post(f"/api/v1/models/{model.public_id}/guard/alarms/", _alarm(), format="json")
    assert alarm.status_code == 201, alarm.content
    assert alarm.json()["client"] == TAG
    assert f"api_client={TAG}" in alarm.json()["request_url"]
    summary = client.get(f"/api/v1/models/{model.public_id}/guard/").json()
    assert summary["answers"] == 5
    assert summary["clients"] == 1
    assert [a["client"] for a in summary["alarms"]] == [TAG]
    assert len(summary["batches"]) == 1
    assert summary["batches"][0]["receipt_url"].startswith("/api/v1/receipts/")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"client": "10.0.0.7"}, "client"),
        ({"client": "ab" * 15 + "\u202e"}, "client"),
        ({"statistic": "nan"}, "statistic"),
        ({"statistic": 1.5}, "statistic"),
        ({"threshold": 0}, "statistic"),
        ({"queries": 0}, "queries"),
        ({"raised_at": "2999-01-01T00:00:00Z"}, "raised_at"),
        ({"raised_at": "yesterday"}, "raised_at"),
    ],
)
def test_a_malformed_alarm_is_a_400_with_the_field(
    owner, client: APIClient, override: dict[str, Any], field: str
) -> None:  # type: ignore[no-untyped-def]
    model = _model(owner)
    answer = client.post(f"/api/v1/models/{model.public_id}/guard/alarms/", _alarm(**override), format="json")
    assert answer.status_code == 400, answer.content
    assert field in answer.content.decode()
    assert "Traceback" not in answer.content.decode()
    assert not GuardAlarm.objects.exists()


def test_nobody_reports_or_reads_alarms_for_another_owners_model(owner) -> None:  # type: ignore[no-untyped-def]
    model = _model(owner)
    mallory = get_user_model().objects.create_user("mallory", password="x" * 12)  # type: ignore[attr-defined]
    role_grant(user=mallory, role=Role.OWNER)
    api = APIClient()
    api.force_authenticate(mallory)
    assert api.post(f"/api/v1/models/{model.public_id}/guard/alarms/", _alarm(), format="json").status_code == 404
    assert api.get(f"/api/v1/models/{model.public_id}/guard/").status_code == 404
    assert APIClient().get(f"/api/v1/models/{model.public_id}/guard/alarms/").status_code in (401, 403)
    assert not GuardAlarm.objects.exists()


def test_a_flood_of_alarms_is_answered_429(owner, client: APIClient) -> None:  # type: ignore[no-untyped-def]
    model = _model(owner)
    now = timezone.now()
    GuardAlarm.objects.bulk_create(
        GuardAlarm(model=model, client_tag=TAG, queries=1, statistic=0.5, threshold=0.9, raised_at=now, received_at=now)
        for _ in range(MAX_ALARMS_PER_HOUR)
    )
    answer = client.post(f"/api/v1/models/{model.public_id}/guard/alarms/", _alarm(), format="json")
    assert answer.status_code == 429
    assert answer.json()["code"] == "alarm_limit"


def test_the_model_page_lists_alarms_with_a_request_link(owner, client) -> None:  # type: ignore[no-untyped-def]
    from django.test import Client

    model = _model(owner)
    client.post(f"/api/v1/models/{model.public_id}/guard/alarms/", _alarm(), format="json")
    browser = Client()
    browser.force_login(owner)
    page = browser.get(f"/owner/models/{model.public_id}/").content.decode()
    assert "API guard" in page
    assert f"api_client={TAG}" in page
    form = browser.get(f"/owner/requests/new?model={model.public_id}&methods=api_watermark&api_client={TAG}")
    assert form.status_code == 200
    assert f'value="{TAG}"' in form.content.decode()


def test_stress_tests_leave_the_guards_batches_out(owner) -> None:  # type: ignore[no-untyped-def]
    from ownership.services import evidence_upload
    from verification.exceptions import StressTestError
    from verification.services.stress import stress_test_start

    model = _model(owner)
    batch = evidence_upload(model=model, kind="api_watermark", data=_npz(_batch()))
    # the journal marks the API's answers, which no simulated theft of the weights reproduces
    with pytest.raises(StressTestError, match="has none yet"):
        stress_test_start(owner=owner, model=model)
    with pytest.raises(StressTestError, match="cannot be stress-tested"):
        stress_test_start(owner=owner, model=model, evidence_sets=[batch])
