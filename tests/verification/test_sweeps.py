"""The outbox, the heartbeat lease and the sweep: no dispute or stress test stays queued or running forever."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from kombu.exceptions import OperationalError

from ownership import services as ownership_services
from ownership.escrow import EscrowError
from timestamps import dbtriggers
from timestamps import services as timestamp_services
from timestamps.exceptions import LogIntegrityError
from timestamps.keys import KeyConfigurationError
from timestamps.models import LogEntry, LogNode
from verification import runs, sweeps
from verification.models import Dispute, StressTest, Verdict, VerificationRun
from verification.services import disputes as dispute_services
from verification.services import stress as stress_services
from verification.services import verdicts as verdict_services

from .conftest import PANEL, Claimant, bare_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Messages the service hands to the broker (caught here: no broker, no worker)."""
    messages: list[tuple[str, int]] = []
    for kind, name in (("dispute", "verification_run_task"), ("stress_test", "stress_test_task")):
        catch = SimpleNamespace(delay=lambda pk, kind=kind: messages.append((kind, pk)))
        monkeypatch.setattr(f"verification.tasks.{name}", catch)
    return messages


def _file(arbiter, claimant: Claimant) -> Dispute:  # type: ignore[no-untyped-def]
    return dispute_services.dispute_file(
        arbiter=arbiter, title="t", claimant_model=claimant.model, methods=["watermark"],
        suspect_registration=bare_model(claimant.model.owner, "suspect"), panel=PANEL,
    )  # fmt: skip


def _running(dispute: Dispute, *, attempts: int, beat_ago_s: float) -> VerificationRun:
    """As if a worker had claimed the dispute `attempts` times and last renewed its lease `beat_ago_s` ago."""
    now = timezone.now()
    Dispute.objects.filter(pk=dispute.pk).update(
        state="running", attempts=attempts, heartbeat_at=now - timedelta(seconds=beat_ago_s), progress=30
    )
    return VerificationRun.objects.create(dispute=dispute, attempt=attempts, started_at=now - timedelta(minutes=5))


# --- the outbox ----------------------------------------------------------------------------------


def test_a_filing_whose_publish_fails_answers_normally_and_the_sweep_sends_it(  # type: ignore[no-untyped-def]
    arbiter, bare_claimant: Claimant, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks
) -> None:
    from verification.tasks import verification_run_task

    def broker_down(*args: object, **kwargs: object) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    # given a broker that refuses every message
    monkeypatch.setattr(verification_run_task, "apply_async", broker_down)

    # when the arbiter files a dispute
    with django_capture_on_commit_callbacks(execute=True):
        dispute = _file(arbiter, bare_claimant)

    # then the filing succeeds, queued and waiting to be sent
    dispute.refresh_from_db()
    assert (dispute.state, dispute.dispatched_at, dispute.dispatch_attempts) == ("queued", None, 1)
    assert dispute.phase == sweeps.WAITING_TO_BE_SENT

    # and once the broker is back, the sweep sends it, once
    published: list[tuple[object, ...]] = []
    monkeypatch.setattr(
        verification_run_task, "apply_async", lambda args=None, kwargs=None, **_: published.append(args)
    )
    assert sweeps.runs_sweep()["sent"] == 1
    dispute.refresh_from_db()
    assert published == [(dispute.pk,)]
    assert dispute.dispatched_at is not None
    assert dispute.dispatch_attempts == 2
    assert sweeps.runs_sweep()["sent"] == 0
    assert len(published) == 1


def test_a_message_sent_long_ago_and_never_claimed_is_sent_again(  # type: ignore[no-untyped-def]
    arbiter, bare_claimant: Claimant, sent: list[tuple[str, int]]
) -> None:
    dispute = _file(arbiter, bare_claimant)
    Dispute.objects.filter(pk=dispute.pk).update(dispatched_at=timezone.now() - timedelta(hours=1))

    with override_settings(MODELCOURT_DISPATCH_RESEND_S=600):
        sweeps.runs_sweep()

    assert sent == [("dispute", dispute.pk)]


def test_a_stress_test_is_sent_after_commit_and_marked_sent(  # type: ignore[no-untyped-def]
    owner, data_dir, sent: list[tuple[str, int]], django_capture_on_commit_callbacks
) -> None:
    model = bare_model(owner, "digits")
    ownership_services.evidence_generate(model=model, count=10)

    with django_capture_on_commit_callbacks(execute=True):
        test = stress_services.stress_test_start(owner=owner, model=model, thefts=["copy"], panel=PANEL)

    assert sent == [("stress_test", test.pk)]
    test.refresh_from_db()
    assert test.dispatched_at is not None


# --- the lease -----------------------------------------------------------------------------------


def test_a_stale_run_is_queued_again_and_the_next_claim_is_attempt_two(  # type: ignore[no-untyped-def]
    arbiter, bare_claimant: Claimant, sent: list[tuple[str, int]], django_capture_on_commit_callbacks
) -> None:
    dispute = _file(arbiter, bare_claimant)
    first = _running(dispute, attempts=1, beat_ago_s=120)

    with override_settings(MODELCOURT_HEARTBEAT_STALE_S=60), django_capture_on_commit_callbacks(execute=True):
        counts = sweeps.runs_sweep()

    assert counts["requeued"] == 1
    dispute.refresh_from_db()
    assert (dispute.state, dispute.progress, dispute.heartbeat_at) == ("queued", 0, None)
    assert "attempt 2 of 3" in dispute.phase
    assert sent == [("dispute", dispute.pk)]
    first.refresh_from_db()
    assert first.state == "abandoned"
    second = dispute_services._claim_run(dispute.pk, "task-2")
    assert second is not None
    assert second.attempt == 2
    dispute.refresh_from_db()
    assert (dispute.state, dispute.attempts) == ("running", 2)
    assert dispute.heartbeat_at is not None


def test_a_live_run_is_left_alone_by_the_sweep_and_by_a_second_message(  # type: ignore[no-untyped-def]
    arbiter, bare_claimant: Claimant, sent: list[tuple[str, int]]
) -> None:
    dispute = _file(arbiter, bare_claimant)
    run = _running(dispute, attempts=1, beat_ago_s=5)

    with override_settings(MODELCOURT_HEARTBEAT_STALE_S=60):
        assert sweeps.runs_sweep()["requeued"] == 0
        assert dispute_services._claim_run(dispute.pk, "duplicate") is None

    run.refresh_from_db()
    assert run.state == "running"
    assert dispute.runs.count() == 1
    assert Dispute.objects.get(pk=dispute.pk).state == "running"


def test_a_run_whose_worker_stops_too_often_fails_for_the_operators(  # type: ignore[no-untyped-def]
    arbiter, bare_claimant: Claimant, sent: list[tuple[str, int]]
) -> None:
    dispute = _file(arbiter, bare_claimant)
    run = _running(dispute, attempts=3, beat_ago_s=120)

    with override_settings(MODELCOURT_HEARTBEAT_STALE_S=60, MODELCOURT_RUN_MAX_ATTEMPTS=3):
        assert sweeps.runs_sweep()["failed"] == 1

    dispute.refresh_from_db()
    assert dispute.state == "failed"
    assert "stopped 3 times" in dispute.failure_reason
    assert "operator should check the workers" in dispute.failure_reason
    run.refresh_from_db()
    assert run.state == "abandoned"
    assert sent == []
    # the arbiter may queue it again, with fresh attempts
    dispute_services.dispute_queue(dispute=dispute)
    dispute.refresh_from_db()
    assert (dispute.state, dispute.attempts) == ("queued", 0)


def test_an_abandoned_attempt_that_finishes_late_records_nothing(  # type: ignore[no-untyped-def]
    arbiter, bare_claimant: Claimant, sent: list[tuple[str, int]]
) -> None:
    dispute = _file(arbiter, bare_claimant)
    old = dispute_services._claim_run(dispute.pk, "task-1")
    assert old is not None
    Dispute.objects.filter(pk=dispute.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    with override_settings(MODELCOURT_HEARTBEAT_STALE_S=60):
        sweeps.runs_sweep()
    new = dispute_services._claim_run(dispute.pk, "task-2")
    assert new is not None
    entries = LogEntry.objects.count()

    # when the first attempt's process, still alive, tries to record a verdict and then a failure
    verdict = verdict_services.verdict_record(
        dispute=dispute, run=old, outcome="not_confirmed", predicate={}, envelope=b"{}", attachments={},
        bundle_parts={}, timings={}, public_id=uuid.uuid4(),
    )  # fmt: skip
    dispute_services._fail(dispute, old, "late failure", {})

    # then neither lands: no verdict, no log entry, and the new attempt still runs
    assert verdict is None
    assert not Verdict.objects.filter(dispute=dispute).exists()
    assert LogEntry.objects.count() == entries
    dispute.refresh_from_db()
    assert (dispute.state, dispute.failure_reason) == ("running", "")
    assert VerificationRun.objects.get(pk=new.pk).state == "running"
    assert not sweeps.Heartbeat(lambda: sweeps.dispute_lease(dispute.pk, old.pk), name="old").beat()
    assert sweeps.Heartbeat(lambda: sweeps.dispute_lease(dispute.pk, new.pk), name="new").beat()


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_thread_renews_the_lease_while_the_run_blocks(arbiter, bare_claimant: Claimant) -> None:  # type: ignore[no-untyped-def]
    dispute = dispute_services.dispute_file(
        arbiter=arbiter, title="t", claimant_model=bare_claimant.model, methods=["watermark"],
        suspect_registration=bare_model(bare_claimant.model.owner, "suspect"), panel=PANEL, start=False,
    )  # fmt: skip
    Dispute.objects.filter(pk=dispute.pk).update(state="queued")
    run = dispute_services._claim_run(dispute.pk, "task")
    assert run is not None
    claimed_at = Dispute.objects.get(pk=dispute.pk).heartbeat_at
    assert claimed_at is not None

    with (
        override_settings(MODELCOURT_HEARTBEAT_S=0.05),
        sweeps.Heartbeat(lambda: sweeps.dispute_lease(dispute.pk, run.pk), name="test") as beat,
    ):
        time.sleep(0.5)  # the run blocks (as on the sandbox); the thread beats meanwhile

    renewed = Dispute.objects.get(pk=dispute.pk).heartbeat_at
    assert renewed is not None
    assert renewed > claimed_at
    assert not beat.lost


def test_a_stale_stress_test_is_queued_again_then_given_up(  # type: ignore[no-untyped-def]
    owner, data_dir, sent: list[tuple[str, int]], django_capture_on_commit_callbacks
) -> None:
    model = bare_model(owner, "digits")
    ownership_services.evidence_generate(model=model, count=10)
    test = stress_services.stress_test_start(owner=owner, model=model, thefts=["copy"], panel=PANEL)
    stale = timezone.now() - timedelta(minutes=5)
    StressTest.objects.filter(pk=test.pk).update(state="running", attempts=1, heartbeat_at=stale)

    with override_settings(MODELCOURT_HEARTBEAT_STALE_S=60), django_capture_on_commit_callbacks(execute=True):
        assert sweeps.runs_sweep()["requeued"] == 1
    test.refresh_from_db()
    assert (test.state, test.attempts) == ("queued", 1)
    assert sent == [("stress_test", test.pk)]

    StressTest.objects.filter(pk=test.pk).update(state="running", attempts=3, heartbeat_at=stale)
    with override_settings(MODELCOURT_HEARTBEAT_STALE_S=60, MODELCOURT_RUN_MAX_ATTEMPTS=3):
        assert sweeps.runs_sweep()["failed"] == 1
    test.refresh_from_db()
    assert test.state == "failed"
    assert "stopped 3 times" in test.failure_reason


# --- operator faults are not verdicts --------------------------------------------------------------


def _corrupt_the_log() -> None:
    """Replace every stored Merkle node (as a broken disk or a careless operator would); triggers refuse it."""
    dbtriggers.uninstall(connection)
    try:
        with connection.cursor() as cursor:
            for key, digest in LogNode.objects.values_list("key", "hash"):
                flipped = bytes(b ^ 0xFF for b in bytes(digest))
                cursor.execute("UPDATE timestamps_lognode SET hash = %s WHERE key = %s", [flipped, key])
    finally:
        dbtriggers.install(connection)


def test_a_broken_log_fails_the_run_for_the_operators_without_a_verdict(  # type: ignore[no-untyped-def]
    arbiter, bare_claimant: Claimant, sent: list[tuple[str, int]]
) -> None:
    # given a log of several entries under a signed checkpoint, whose stored nodes are then replaced
    dispute = _file(arbiter, bare_claimant)
    timestamp_services.log_append_many(entries=[b"one", b"two", b"three", b"four", b"five"])
    timestamp_services.checkpoint_publish()
    _corrupt_the_log()
    entries = LogEntry.objects.count()

    # when a worker runs the dispute
    assert dispute_services.verification_run_execute(dispute_id=dispute.pk) is None

    # then the run fails with a reason for the operators, and nothing is signed or logged
    dispute.refresh_from_db()
    assert dispute.state == "failed"
    assert dispute.failure_reason == runs.LOG_BROKEN
    assert "commitment" not in dispute.failure_reason
    assert not Verdict.objects.filter(dispute=dispute).exists()
    assert LogEntry.objects.count() == entries
    assert dispute.runs.get().state == "failed"


def test_evidence_that_does_not_open_its_commitment_is_still_the_claimants_fault(  # type: ignore[no-untyped-def]
    arbiter, bare_claimant: Claimant, sent: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    dispute = _file(arbiter, bare_claimant)
    genuine = ownership_services.evidence_open

    def other_salt(*, evidence_set):  # type: ignore[no-untyped-def]
        return {**genuine(evidence_set=evidence_set), "salt": base64.b64encode(b"\0" * 32).decode()}

    monkeypatch.setattr(ownership_services, "evidence_open", other_salt)

    verdict = dispute_services.verification_run_execute(dispute_id=dispute.pk)

    assert verdict is not None
    assert verdict.outcome == "claim_rejected"
    assert "does not open its commitment" in " ".join(verdict.predicate["decision"]["reasons"])
    assert set(verdict.predicate["sandbox_policy"]) == {"name", "sha256"}


def test_the_api_files_a_dispute_normally_while_the_broker_is_down(  # type: ignore[no-untyped-def]
    arbiter, bare_claimant: Claimant, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks, settings
) -> None:
    from rest_framework.test import APIClient

    from verification.tasks import verification_run_task

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

    def broker_down(*args: object, **kwargs: object) -> None:
        raise OperationalError("[Errno 111] Connection refused")

    monkeypatch.setattr(verification_run_task, "apply_async", broker_down)
    client = APIClient()
    client.force_authenticate(arbiter)
    suspect = bare_model(bare_claimant.model.owner, "suspect")

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/disputes/",
            {"title": "t", "claimant_model": str(bare_claimant.model.public_id), "methods": ["watermark"],
             "panel": PANEL, "suspect_model": str(suspect.public_id)},
            format="json",
        )  # fmt: skip

    assert response.status_code == 201, response.content
    assert response.json()["state"] == "queued"
    # the row says it waits to be sent (the page and the API show the phase); the sweep sends it later
    dispute = Dispute.objects.get(public_id=response.json()["id"])
    assert (dispute.state, dispute.phase, dispute.dispatched_at) == ("queued", sweeps.WAITING_TO_BE_SENT, None)


@pytest.mark.parametrize(
    ("target", "error", "reason"),
    [
        ("ownership.services.evidence_open", EscrowError("no key opens it"), "escrow keys"),
        (
            "timestamps.services.timestamp_digest",
            LogIntegrityError("the TSA refused our own query"),
            "transparency log",
        ),
        ("timestamps.keys.key_current", KeyConfigurationError("the verdict key cannot be read"), "signing keys"),
    ],
)
def test_a_trust_layer_failure_fails_the_run_for_the_operators_and_signs_nothing(  # type: ignore[no-untyped-def]
    arbiter, bare_claimant: Claimant, sent, monkeypatch: pytest.MonkeyPatch, target: str, error: Exception, reason: str
) -> None:
    # given a claim that would be rejected (its opening does not match), so the run goes straight to signing
    dispute = _file(arbiter, bare_claimant)
    genuine = ownership_services.evidence_open

    def other_salt(*, evidence_set):  # type: ignore[no-untyped-def]
        return {**genuine(evidence_set=evidence_set), "salt": base64.b64encode(b"\0" * 32).decode()}

    monkeypatch.setattr(ownership_services, "evidence_open", other_salt)
    entries = LogEntry.objects.count()

    def broken(*args: object, **kwargs: object) -> None:
        raise error

    # when one part of the service's own trust layer fails during the run
    monkeypatch.setattr(target, broken)
    assert dispute_services.verification_run_execute(dispute_id=dispute.pk) is None

    # then the run fails for the operators; no verdict, no log entry, and the error's own text stays in the log
    dispute.refresh_from_db()
    assert dispute.state == "failed"
    assert reason in dispute.failure_reason
    assert "operator must" in dispute.failure_reason
    assert str(error) not in dispute.failure_reason
    assert not Verdict.objects.filter(dispute=dispute).exists()
    assert LogEntry.objects.count() == entries
