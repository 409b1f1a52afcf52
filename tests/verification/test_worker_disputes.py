"""Disputes end to end through a real worker process, PostgreSQL and a real broker.

An owner registers a digits model with a generated watermark; an arbiter files disputes against a
fine-tuned copy, an independent model and, for a false claimant's adversarial set, an independent
model; the worker decides each; the bundles verify offline and fail after any one-byte change. Then
the worker is killed with SIGKILL in the middle of a run: a new worker finishes it, with one verdict
and one log entry.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from django.conf import settings
from django.db import connection
from django.test import override_settings

from modelcourt.bundle import all_ok, verify_bundle
from ownership import services as ownership_services
from ownership.evidence import dump_evidence
from timestamps.models import LogEntry
from verification.methods.datasets import digits_task
from verification.methods.panels import train_panel
from verification.methods.thefts import false_claim_set
from verification.models import Dispute, Verdict, VerificationRun
from verification.services import disputes as dispute_services
from verification.services import verdicts as verdict_services

from .conftest import PANEL, Models, register_marked, upload

ROOT = Path(__file__).resolve().parents[2]
BROKER = os.environ.get("CELERY_BROKER_URL", "")
pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


class Workers:
    """Starts and kills worker processes sharing the test's database, keys and data folder."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        db = connection.settings_dict
        self.env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "MODELCOURT_KEY_DIR": str(settings.MODELCOURT_KEY_DIR),
            "MODELCOURT_DATA_DIR": str(data_dir),
            # a killed worker's message comes back after this many seconds, and finds its lease stale
            # (no heartbeat for MODELCOURT_HEARTBEAT_STALE_S): the new worker takes the run over
            "MODELCOURT_VISIBILITY_TIMEOUT": "8",
            "MODELCOURT_HEARTBEAT_S": "0.5",
            "MODELCOURT_HEARTBEAT_STALE_S": "4",
        }
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"worker-{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "-Q", "gpu", "--concurrency=1",
             "--prefetch-multiplier=1", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "-n", f"test-{uuid.uuid4().hex[:8]}@%h", "--loglevel=INFO"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    if not BROKER.startswith(("redis://", "amqp://")):
        if os.environ.get("MODELCOURT_REQUIRE_SERVICES") == "1":
            pytest.fail("CELERY_BROKER_URL must name Redis or RabbitMQ when MODELCOURT_REQUIRE_SERVICES=1")
        pytest.skip("needs a real broker: set CELERY_BROKER_URL=redis://... (CI does)")
    from workers.celery import app

    app.control.purge()
    data = tmp_path / "data"
    train_panel(digits_task(0), size=8, seed=1, epochs=30).save(data / "panels" / "installed" / PANEL)
    (tmp_path / "logs").mkdir()
    crew = Workers(data, tmp_path / "logs")
    with override_settings(DATA_DIR=data, MEDIA_ROOT=data / "media"):
        yield crew
    crew.stop_all()


def _wait(predicate: Callable[[], bool], timeout: float, crew: Workers, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    pytest.fail(f"{what} did not happen in {timeout:.0f} s:\n{crew.logs()}")


def _state(dispute: Dispute) -> str:
    return Dispute.objects.values_list("state", flat=True).get(pk=dispute.pk)


def _registration(owner, digits_models: Models):  # type: ignore[no-untyped-def]
    """The marked (deployed) model with its adopted watermark, and a fine-tuned theft of it."""
    claimant = register_marked(owner, digits_models)
    return claimant.model, claimant.stolen


def _file(arbiter, model, data: bytes, title: str) -> Dispute:  # type: ignore[no-untyped-def]
    return dispute_services.dispute_file(
        arbiter=arbiter, title=title, claimant_model=model, methods=["watermark"],
        suspect_file=upload("suspect.pt", data), panel=PANEL,
    )  # fmt: skip


def _tampered(data: bytes, member: str) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            body = bytearray(source.read(info))
            if info.filename == member:
                body[len(body) // 2] ^= 0x01
            target.writestr(info, bytes(body))
    return out.getvalue()


def test_three_disputes_are_decided_by_the_worker_and_their_bundles_verify(  # type: ignore[no-untyped-def]
    workers: Workers, owner, arbiter, digits_models: Models
) -> None:
    from tests.conftest import _user

    model, stolen = _registration(owner, digits_models)
    # a false claimant registers a model of their own and escrows adversarial examples as a "watermark"
    liar = _user("mallory", "owner")
    liar_model = ownership_services.model_register(
        owner=liar, name="not-digits", task="digits", input_shape=[64], num_classes=10,
        artifact=upload("mine.pt", digits_models.independent),
    )  # fmt: skip
    task = digits_task(0)
    ensemble = train_panel(task, size=3, seed=77, epochs=30, name_prefix="fc").modules
    crafted = false_claim_set(ensemble, task.public_x[:40], eps=0.3, low=0.0, high=1.0, seed=0)
    ownership_services.evidence_upload(model=liar_model, kind="watermark", data=dump_evidence(crafted))

    workers.start()
    disputes = {
        "ownership_confirmed": _file(arbiter, model, stolen, "fine-tuned copy"),
        "not_confirmed": _file(arbiter, model, digits_models.independent, "independent model"),
        "claim_rejected": _file(arbiter, liar_model, digits_models.independent, "false claim"),
    }
    for dispute in disputes.values():
        _wait(lambda d=dispute: _state(d) in ("decided", "failed"), 240, workers, f"a verdict on {dispute.title}")
    for expected, dispute in disputes.items():
        dispute.refresh_from_db()
        assert dispute.state == "decided", dispute.failure_reason
        verdict = Verdict.objects.get(dispute=dispute)
        assert verdict.outcome == expected, verdict.predicate["decision"]["reasons"]
        verdict_services.verdict_publish(dispute=dispute)
        data = verdict_services.verdict_bundle(verdict=verdict)
        checks = verify_bundle(data)
        assert all_ok(checks), [c for c in checks if not c.ok]
        # flipping one byte of any part makes verification fail
        for member in zipfile.ZipFile(io.BytesIO(data)).namelist():
            assert not all_ok(verify_bundle(_tampered(data, member))), f"a flipped byte in {member} went unnoticed"
    runs = VerificationRun.objects.filter(dispute__in=disputes.values())
    timings = runs.get(dispute=disputes["ownership_confirmed"]).timings
    assert {"queue_wait_s", "child_model_load_s", "child_agreement_queries_s", "sign_s"} <= set(timings)


def test_a_worker_killed_mid_run_leaves_one_verdict(  # type: ignore[no-untyped-def]
    workers: Workers, owner, arbiter, digits_models: Models, tmp_path: Path
) -> None:
    model, stolen = _registration(owner, digits_models)
    inner = torch.jit.load(io.BytesIO(stolen))
    slow = torch.jit.script(_Slow(inner))
    buffer = io.BytesIO()
    torch.jit.save(slow, buffer)

    first = workers.start()
    dispute = _file(arbiter, model, buffer.getvalue(), "slow suspect")
    _wait(lambda: _state(dispute) == "running" and dispute.runs.exists(), 120, workers, "the run's start")
    time.sleep(3)  # well inside the sandboxed queries
    workers.kill(first)
    entries_before = LogEntry.objects.count()

    workers.start()
    _wait(lambda: _state(dispute) == "decided", 240, workers, "the retried run's verdict")
    runs = list(dispute.runs.order_by("attempt").values_list("attempt", "state"))
    assert runs == [(1, "abandoned"), (2, "succeeded")], runs
    assert Verdict.objects.filter(dispute=dispute).count() == 1
    assert Verdict.objects.get(dispute=dispute).outcome == "ownership_confirmed"
    assert LogEntry.objects.count() == entries_before + 1  # one token: the verdict's, never two


class _Slow(torch.nn.Module):
    """A stolen model behind a busy loop of a few seconds per batch: time to kill the worker mid-run."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i < 60_000_000:
            i = i + 1
        return self.inner(x)
