"""Stress tests through the services, the API and the pages: start, run in the sandbox, read the table."""

from __future__ import annotations

import io
import re
import uuid
from typing import Any

import pytest
import torch
from django.core.files.base import ContentFile
from django.test import Client
from rest_framework.test import APIClient

from ownership import services as ownership_services
from ownership.models import EvidenceSet, RegisteredModel
from verification import selectors
from verification.exceptions import StressTestError, StressTestNotFoundError
from verification.models import StressTest
from verification.services import stress as stress_services

from .conftest import PANEL, Models, bare_model, register_marked

pytestmark = pytest.mark.django_db


@pytest.fixture
def registered(owner, digits_models: Models, data_dir) -> tuple[RegisteredModel, EvidenceSet]:  # type: ignore[no-untyped-def]
    """As an owner does it: draw a watermark, embed it, register the marked model and adopt the watermark for it."""
    claimant = register_marked(owner, digits_models)
    return claimant.model, claimant.evidence


def _other_owner():  # type: ignore[no-untyped-def]
    from ..conftest import _user

    return _user("oscar", "owner")


def _signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


class _NaNAnswers(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :10] * float("nan")


def _broken_model(owner: Any) -> RegisteredModel:
    """A registration whose artifact answers NaN (saved directly: registration's own check would refuse it)."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(_NaNAnswers()), buffer)
    model = bare_model(owner, "broken")
    model.artifact.save("nan.pt", ContentFile(buffer.getvalue()), save=True)
    return model


# --- services ----------------------------------------------------------------------------------------


def test_a_stress_test_runs_to_its_table_and_a_redelivery_is_harmless(owner, registered) -> None:  # type: ignore[no-untyped-def]
    model, evidence_set = registered
    started = stress_services.stress_test_start(owner=owner, model=model, thefts=["copy", "fine_tune"], panel=PANEL)
    assert started.state == StressTest.State.QUEUED
    assert list(started.evidence_sets.all()) == [evidence_set]

    done = stress_services.stress_test_execute(stress_test_id=started.pk, task_id="t1")
    assert done is not None
    assert (done.state, done.progress, done.attempts) == (StressTest.State.DONE, 100, 1)
    assert done.finished_at is not None
    results = done.results
    assert [r["theft"] for r in results["rows"]] == ["copy", "fine_tune", "independent"]
    assert [r["cells"][0]["confirmed"] for r in results["rows"]] == [True, True, False]
    [entry] = results["evidence"]
    assert entry["commitment"] == evidence_set.commitment
    assert entry["evidence_set"] == str(evidence_set.public_id)
    assert results["panel"]["size"] == 8
    assert {"prepare_s", "sandbox_s", "child_copy_simulate_s", "total_s"} <= set(done.timings)

    # the message delivered again: nothing runs, nothing changes
    assert stress_services.stress_test_execute(stress_test_id=started.pk, task_id="t1-again") is None
    again = StressTest.objects.get(pk=started.pk)
    assert (again.state, again.attempts, again.results) == (StressTest.State.DONE, 1, results)

    # the page shows the table: survives / lost per cell, p-values in scientific notation, accuracy per theft
    page = _signed_in(owner).get(f"/owner/stress-tests/{started.public_id}")
    text = page.content.decode()
    assert page.status_code == 200
    assert text.count('data-verdict="survives"') == 2
    assert text.count('data-verdict="not confirmed"') == 1
    assert re.search(r"p = \d\.\de-\d\d", text)
    assert "Stolen model&#x27;s accuracy" in text or "Stolen model's accuracy" in text
    assert 'id="dispute-progress"' not in text  # settled: no poller


def test_a_broken_model_fails_the_test_with_a_reason(owner, data_dir) -> None:  # type: ignore[no-untyped-def]
    model = _broken_model(owner)
    ownership_services.evidence_generate(model=model, count=10)
    started = stress_services.stress_test_start(owner=owner, model=model, thefts=["copy"], panel=PANEL)
    # as if a worker had died while running it: the redelivered message runs it again (attempt 2)
    StressTest.objects.filter(pk=started.pk).update(state=StressTest.State.RUNNING, attempts=1)

    assert stress_services.stress_test_execute(stress_test_id=started.pk) is None
    failed = StressTest.objects.get(pk=started.pk)
    assert failed.state == StressTest.State.FAILED
    assert failed.attempts == 2
    assert "does not answer like a 10-class classifier" in failed.failure_reason
    assert "NaN" in failed.failure_reason


def test_a_test_whose_worker_keeps_dying_is_given_up(owner, data_dir) -> None:  # type: ignore[no-untyped-def]
    model = bare_model(owner, "digits")
    ownership_services.evidence_generate(model=model, count=10)
    started = stress_services.stress_test_start(owner=owner, model=model, thefts=["copy"], panel=PANEL)
    StressTest.objects.filter(pk=started.pk).update(
        state=StressTest.State.RUNNING, attempts=stress_services.MAX_STRESS_ATTEMPTS
    )

    assert stress_services.stress_test_execute(stress_test_id=started.pk) is None
    given_up = StressTest.objects.get(pk=started.pk)
    assert given_up.state == StressTest.State.FAILED
    assert f"stopped {stress_services.MAX_STRESS_ATTEMPTS} times" in given_up.failure_reason


@pytest.mark.parametrize(
    ("change", "code", "sentence"),
    [
        ({"thefts": ["photocopy"]}, "thefts", "thefts must be a non-empty list"),
        ({"thefts": []}, "thefts", "thefts must be a non-empty list"),
        ({"alpha": 0.5}, "alpha", "alpha must lie in"),
        ({"seed": -1}, "seed", "seed must lie between"),
        ({"panel": "nope"}, "panel", "no reference panel 'nope'"),
        ({"evidence_sets": []}, "evidence_sets", "choose at least one evidence set"),
    ],
)
def test_bad_requests_are_refused_with_a_code(owner, data_dir, change, code, sentence) -> None:  # type: ignore[no-untyped-def]
    model = bare_model(owner, "digits")
    ownership_services.evidence_generate(model=model, count=10)
    kwargs: dict[str, Any] = {"owner": owner, "model": model, "thefts": ["copy"], "panel": PANEL, **change}
    with pytest.raises(StressTestError, match=sentence) as caught:
        stress_services.stress_test_start(**kwargs)
    assert caught.value.code == code
    assert not StressTest.objects.exists()


def test_only_supported_combinations_are_accepted(owner, data_dir) -> None:  # type: ignore[no-untyped-def]
    onnx = bare_model(owner, "digits-onnx")
    RegisteredModel.objects.filter(pk=onnx.pk).update(artifact_format="onnx")
    onnx.refresh_from_db()
    ownership_services.evidence_generate(model=onnx, count=10)
    with pytest.raises(StressTestError, match="fine_tune and prune train your model's weights") as caught:
        stress_services.stress_test_start(owner=owner, model=onnx, thefts=["copy", "fine_tune", "prune"], panel=PANEL)
    assert caught.value.code == "thefts"
    assert stress_services.stress_test_start(
        owner=owner, model=onnx, thefts=["copy", "distill", "extract"], panel=PANEL
    )

    other = bare_model(owner, "digits-2")
    foreign_set, _ = ownership_services.evidence_generate(model=other, count=10)
    with pytest.raises(StressTestError, match="must belong to the chosen model"):
        stress_services.stress_test_start(
            owner=owner, model=onnx, evidence_sets=[foreign_set], thefts=["copy"], panel=PANEL
        )
    with pytest.raises(StressTestError, match="your own registered models") as caught:
        stress_services.stress_test_start(owner=_other_owner(), model=onnx, thefts=["copy"], panel=PANEL)
    assert caught.value.code == "model"


# --- API -------------------------------------------------------------------------------------------


def test_the_api_starts_lists_and_shows_only_the_owners_own_tests(owner, data_dir) -> None:  # type: ignore[no-untyped-def]
    model = bare_model(owner, "digits")
    evidence_set, _ = ownership_services.evidence_generate(model=model, count=10)
    client = _api(owner)

    created = client.post(
        "/api/v1/stress-tests/",
        {"model": str(model.public_id), "thefts": "copy,distill", "panel": PANEL, "seed": 4},
        format="json",
    )
    assert created.status_code == 202, created.json()
    body = created.json()
    assert (body["state"], body["progress"], body["thefts"], body["seed"]) == ("queued", 0, ["copy", "distill"], 4)
    assert body["evidence_sets"] == [str(evidence_set.public_id)]
    assert body["model"]["id"] == str(model.public_id)

    detail = client.get(f"/api/v1/stress-tests/{body['id']}")
    assert detail.status_code == 200
    assert detail.json()["id"] == body["id"]
    assert [t["id"] for t in client.get("/api/v1/stress-tests/").json()] == [body["id"]]

    stranger = _api(_other_owner())
    assert stranger.get("/api/v1/stress-tests/").json() == []
    hidden = stranger.get(f"/api/v1/stress-tests/{body['id']}")
    assert hidden.status_code == 404
    assert hidden.json()["code"] == "not_found"
    # nor may a stranger start one on this model
    refused = stranger.post("/api/v1/stress-tests/", {"model": str(model.public_id), "thefts": ["copy"]}, format="json")
    assert refused.status_code == 400
    assert "model" in refused.json()["detail"]


def test_the_api_answers_4xx_with_a_code_and_a_sentence(owner, arbiter, data_dir) -> None:  # type: ignore[no-untyped-def]
    onnx = bare_model(owner, "digits")
    RegisteredModel.objects.filter(pk=onnx.pk).update(artifact_format="onnx")
    ownership_services.evidence_generate(model=onnx, count=10)
    client = _api(owner)

    combination = client.post(
        "/api/v1/stress-tests/", {"model": str(onnx.public_id), "thefts": ["prune"], "panel": PANEL}, format="json"
    )
    assert combination.status_code == 400
    assert combination.json()["code"] == "thefts"
    assert "TorchScript" in combination.json()["detail"]
    unknown = client.post("/api/v1/stress-tests/", {"model": str(onnx.public_id), "thefts": ["melt"]}, format="json")
    assert unknown.status_code == 400
    assert unknown.json()["code"] == "invalid"
    assert client.get("/api/v1/stress-tests/not-a-uuid").status_code == 404
    assert client.get(f"/api/v1/stress-tests/{uuid.uuid4()}").json()["code"] == "not_found"
    assert _api(arbiter).get("/api/v1/stress-tests/").status_code == 403


# --- pages -------------------------------------------------------------------------------------------


def test_the_owner_starts_a_test_from_the_form_and_follows_it(owner, data_dir) -> None:  # type: ignore[no-untyped-def]
    model = bare_model(owner, "digits")
    evidence_set, _ = ownership_services.evidence_generate(model=model, count=10)
    client = _signed_in(owner)
    assert "No stress tests yet" in client.get("/owner/stress-tests/").content.decode()
    form = client.get(f"/owner/stress-tests/new?model={model.public_id}").content.decode()
    assert evidence_set.commitment[:12] in form

    response = client.post(
        "/owner/stress-tests/new",
        {
            "model": str(model.public_id),
            "evidence_sets": [str(evidence_set.public_id)],
            "thefts": ["copy", "extract"],
            "panel": PANEL,
            "alpha": "0.001",
            "seed": "0",
        },
    )
    assert response.status_code == 302
    started = StressTest.objects.get()
    assert response["Location"] == f"/owner/stress-tests/{started.public_id}"
    page = client.get(response["Location"]).content.decode()
    assert 'id="dispute-progress"' in page
    assert f"/owner/stress-tests/{started.public_id}/progress.json" in page
    progress = client.get(f"/owner/stress-tests/{started.public_id}/progress.json").json()
    assert (progress["state"], progress["settled"]) == ("queued", False)
    assert "digits" in client.get("/owner/stress-tests/").content.decode()

    stranger = _signed_in(_other_owner())
    assert stranger.get(f"/owner/stress-tests/{started.public_id}").status_code == 404
    assert stranger.get(f"/owner/stress-tests/{started.public_id}/progress.json").status_code == 404


def test_the_form_shows_the_service_refusal(owner, data_dir) -> None:  # type: ignore[no-untyped-def]
    onnx = bare_model(owner, "digits")
    RegisteredModel.objects.filter(pk=onnx.pk).update(artifact_format="onnx")
    ownership_services.evidence_generate(model=onnx, count=10)
    response = _signed_in(owner).post(
        "/owner/stress-tests/new",
        {"model": str(onnx.public_id), "thefts": ["fine_tune"], "panel": PANEL, "alpha": "0.001", "seed": "0"},
    )
    assert response.status_code == 400
    assert "needs a TorchScript artifact" in response.content.decode()
    assert not StressTest.objects.exists()


def test_the_model_page_and_the_navigation_link_to_stress_tests(owner, data_dir) -> None:  # type: ignore[no-untyped-def]
    model = bare_model(owner, "digits")
    page = _signed_in(owner).get(f"/owner/models/{model.public_id}/").content.decode()
    assert f"/owner/stress-tests/new?model={model.public_id}" in page
    assert "Stress-test this model" in page
    assert 'href="/owner/stress-tests/"' in page


def test_a_missing_test_is_not_found(owner) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StressTestNotFoundError):
        selectors.stress_test_get(owner=owner, public_id=uuid.uuid4())


def test_an_owner_cannot_fill_the_queue(owner, data_dir, settings) -> None:  # type: ignore[no-untyped-def]
    settings.MODELCOURT_STRESS_MAX_ACTIVE = 1
    model = bare_model(owner, "digits-busy")
    ownership_services.evidence_generate(model=model, count=10)
    stress_services.stress_test_start(owner=owner, model=model, thefts=["copy"], panel=PANEL)

    with pytest.raises(StressTestError, match="queued or running") as refused:
        stress_services.stress_test_start(owner=owner, model=model, thefts=["copy"], panel=PANEL)

    assert refused.value.code == "busy"
    assert StressTest.objects.count() == 1


def test_malformed_results_from_the_child_fail_the_test_with_a_reason(owner, registered, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    model, _ = registered
    started = stress_services.stress_test_start(owner=owner, model=model, thefts=["copy"], panel=PANEL)
    garbage = {"results": {"rows": [{"cells": ["not a cell"]}], "evidence": []}, "timings": {"x": "a"}}
    monkeypatch.setattr(stress_services, "_stress_in_sandbox", lambda spec, progress: garbage)

    stress_services.stress_test_execute(stress_test_id=started.pk)

    failed = StressTest.objects.get(pk=started.pk)
    assert failed.state == "failed"
    assert "malformed results" in failed.failure_reason
    assert failed.results == {}


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "not json"])
def test_a_hostile_progress_note_is_ignored_without_blocking(tmp_path, kind) -> None:  # type: ignore[no-untyped-def]
    import os

    note = tmp_path / "progress.json"
    if kind == "fifo":
        os.mkfifo(note)
    elif kind == "link to /dev/zero":
        note.symlink_to("/dev/zero")
    else:
        note.write_bytes(b"\xff" * 10_000)

    assert stress_services._read_stress_progress(note) is None


def test_a_progress_note_is_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    note = tmp_path / "progress.json"
    note.write_text('{"percent": 140, "phase": "distilling"}')

    assert stress_services._read_stress_progress(note) == (100, "distilling")
