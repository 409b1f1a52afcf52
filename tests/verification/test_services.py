"""Disputes through the services: file, run (in the sandbox), sign, publish, bundle; idempotent."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from modelcourt.bundle import all_ok, verify_bundle
from timestamps.selectors import log_size
from verification import selectors
from verification.exceptions import DisputeError, DisputeStateError
from verification.models import Dispute, VerificationRun
from verification.services import disputes as dispute_services
from verification.services import verdicts as verdict_services

from .conftest import PANEL, Models, register_marked, upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def registration(owner, digits_models: Models, data_dir):  # type: ignore[no-untyped-def]
    """The marked (deployed) model with its adopted watermark, its bytes and a fine-tuned theft."""
    claimant = register_marked(owner, digits_models)
    return claimant.model, claimant.evidence, claimant.marked, claimant.stolen


def _file(arbiter, model, data: bytes, name: str = "suspect.pt", **kw):  # type: ignore[no-untyped-def]
    return dispute_services.dispute_file(
        arbiter=arbiter,
        title="digits theft?",
        claimant_model=model,
        methods=["watermark"],
        suspect_file=upload(name, data),
        **{"panel": PANEL, **kw},
    )


def test_a_stolen_copy_is_confirmed_and_the_bundle_verifies(arbiter, registration) -> None:  # type: ignore[no-untyped-def]
    model, evidence_set, _, stolen = registration
    dispute = _file(arbiter, model, stolen)
    assert dispute.state == Dispute.State.QUEUED
    assert dispute.suspect_format == "torchscript"
    size_before = log_size()

    verdict = dispute_services.verification_run_execute(dispute_id=dispute.pk, task_id="t1")
    assert verdict is not None
    dispute.refresh_from_db()
    assert dispute.state == Dispute.State.DECIDED
    assert dispute.progress == 100
    assert verdict.outcome == "ownership_confirmed", verdict.predicate["decision"]["reasons"]
    test = verdict.predicate["decision"]["tests"][0]
    assert test["statistics"]["K"] == 40
    assert test["statistics"]["m"] >= 25  # the triggers are drawn afresh each run; chance would give about 4
    assert verdict.predicate["panel"]["size"] == 8
    assert verdict.predicate["claims"][0]["commitment"] == evidence_set.commitment
    assert verdict.predicate["precedence"]["ok"] is True
    # the claimant's own (marked) model carries the adopted watermark, a generated set
    [standing] = verdict.predicate["decision"]["standings"]
    assert (standing["bound"], standing["chosen"]) == (True, False)
    assert log_size() == size_before + 1  # the verdict's own token
    run = verdict.run
    assert run.state == VerificationRun.State.SUCCEEDED
    assert {"queue_wait_s", "open_evidence_s", "sandbox_s", "sign_s", "child_model_load_s"} <= set(run.timings)

    # a redelivered message finds nothing to do: no second verdict, no second log entry
    assert dispute_services.verification_run_execute(dispute_id=dispute.pk, task_id="t1-again") is None
    assert log_size() == size_before + 1
    assert dispute.runs.count() == 1

    with pytest.raises(Exception, match="no such verdict"):
        selectors.verdict_get(public_id=verdict.public_id)  # not public yet
    verdict_services.verdict_publish(dispute=dispute)
    public = selectors.verdict_get(public_id=verdict.public_id)
    data = verdict_services.verdict_bundle(verdict=public)
    checks = verify_bundle(data)
    assert all_ok(checks), [c for c in checks if not c.ok]
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "report.html" in names
    assert any(n.startswith("plots/") and n.endswith(".png") for n in names)


def test_an_independent_model_is_not_confirmed(arbiter, registration, digits_models: Models) -> None:  # type: ignore[no-untyped-def]
    model, *_ = registration
    dispute = _file(arbiter, model, digits_models.independent)
    verdict = dispute_services.verification_run_execute(dispute_id=dispute.pk)
    assert verdict is not None
    assert verdict.outcome == "not_confirmed"


def test_a_suspect_answering_nan_is_inconclusive(arbiter, registration) -> None:  # type: ignore[no-untyped-def]
    model, *_ = registration

    class Garbage(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :10] * float("nan")

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Garbage()), buffer)
    dispute = _file(arbiter, model, buffer.getvalue(), name="nan.pt")
    verdict = dispute_services.verification_run_execute(dispute_id=dispute.pk)
    assert verdict is not None
    assert verdict.outcome == "inconclusive"
    assert "NaN" in verdict.predicate["decision"]["tests"][0]["reason"]


def test_a_hanging_suspect_fails_the_run_and_the_worker_survives(arbiter, registration, settings) -> None:  # type: ignore[no-untyped-def]
    model, *_ = registration
    settings.MODELCOURT_RUN_TIMEOUT_S = 15

    class Hang(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            i = 0
            while i >= 0:
                i = i + 1
            return x[:, :10]

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Hang()), buffer)
    dispute = _file(arbiter, model, buffer.getvalue(), name="hang.pt")
    assert dispute_services.verification_run_execute(dispute_id=dispute.pk) is None
    dispute.refresh_from_db()
    assert dispute.state == Dispute.State.FAILED
    assert "took longer than 15 s" in dispute.failure_reason
    run = dispute.runs.get()
    assert run.state == VerificationRun.State.FAILED
    # a failed dispute can be queued again
    assert dispute_services.dispute_queue(dispute=dispute).state == Dispute.State.QUEUED


def test_filing_errors_are_readable(arbiter, registration, digits_models: Models) -> None:  # type: ignore[no-untyped-def]
    model, *_ = registration
    with pytest.raises(DisputeError, match="no fingerprint evidence"):
        dispute_services.dispute_file(
            arbiter=arbiter,
            title="x",
            claimant_model=model,
            methods=["fingerprint"],
            suspect_file=upload("s.pt", digits_models.independent),
            panel=PANEL,
        )
    with pytest.raises(DisputeError, match="exactly one suspect"):
        dispute_services.dispute_file(
            arbiter=arbiter, title="x", claimant_model=model, methods=["watermark"], panel=PANEL
        )
    with pytest.raises(DisputeError, match="refused"):
        _file(arbiter, model, b"\x80\x04 not a model", name="evil.pkl")
    with pytest.raises(DisputeError, match="reference panel"):
        _file(arbiter, model, digits_models.independent, panel="cifar")
    with pytest.raises(DisputeError, match="http"):
        dispute_services.dispute_file(
            arbiter=arbiter,
            title="x",
            claimant_model=model,
            methods=["watermark"],
            suspect_url="ftp://example.org/model",
            panel=PANEL,
        )


def test_state_rules(arbiter, registration, digits_models: Models) -> None:  # type: ignore[no-untyped-def]
    model, *_ = registration
    dispute = _file(arbiter, model, digits_models.independent)
    with pytest.raises(DisputeStateError):
        verdict_services.verdict_publish(dispute=dispute)
    dispute_services.dispute_withdraw(dispute=dispute)
    assert dispute_services.verification_run_execute(dispute_id=dispute.pk) is None
    with pytest.raises(DisputeStateError):
        dispute_services.dispute_withdraw(dispute=dispute)


@pytest.mark.django_db
@pytest.mark.parametrize("title", ["evil\x1b]0;pwned\x07", "fake\u202everdict", "nul\x00byte"])
def test_titles_with_control_or_formatting_characters_are_refused(title: str) -> None:
    from verification.exceptions import DisputeError
    from verification.services.disputes import _check_title

    with pytest.raises(DisputeError, match="control or formatting characters"):
        _check_title(title)
