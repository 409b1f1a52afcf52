"""Real Celery workers, PostgreSQL and a real broker: tasks run end to end; a killed worker's dispute is finished."""

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from django.conf import settings
from django.db import connection
from django.test import override_settings

from timestamps import services
from timestamps.models import Checkpoint

ROOT = Path(__file__).resolve().parents[2]
BROKER = os.environ.get("CELERY_BROKER_URL", "")
pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker on queues gpu and cpu, pointed at the test database."""
    if not BROKER.startswith(("redis://", "amqp://")):
        if os.environ.get("MODELCOURT_REQUIRE_SERVICES") == "1":
            pytest.fail("CELERY_BROKER_URL must name Redis or RabbitMQ when MODELCOURT_REQUIRE_SERVICES=1")
        pytest.skip("needs a real broker: set CELERY_BROKER_URL=redis://... (CI does)")
    from workers.celery import app

    app.control.purge()
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "MODELCOURT_KEY_DIR": str(settings.MODELCOURT_KEY_DIR),
    }
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "-Q", "gpu,cpu", "--concurrency=1",
         "--prefetch-multiplier=1", "--without-gossip", "--without-mingle", "-n", f"test-{uuid.uuid4().hex[:8]}@%h",
         "--loglevel=INFO"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield process
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def _wait_for(predicate, timeout: float, worker: subprocess.Popen[bytes], log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert worker.poll() is None, "the worker died:\n" + log.read_text(errors="replace")[-4000:]
        time.sleep(0.25)
    pytest.fail("the worker did not run the task in time:\n" + log.read_text(errors="replace")[-4000:])


def test_worker_runs_tasks_from_both_queues(worker: subprocess.Popen[bytes], tmp_path: Path) -> None:
    from timestamps.tasks import checkpoint_publish_task

    # given a log of three entries
    services.log_append_many(entries=[b"a", b"b", b"c"])

    # when the checkpoint task is queued on the cpu queue
    checkpoint_publish_task.delay()

    # then the worker process signs a checkpoint in the database
    _wait_for(lambda: Checkpoint.objects.filter(size=3).exists(), 90, worker, tmp_path / "worker.log")

    # and a task routed to the gpu queue runs as well
    services.log_append(data=b"d")
    checkpoint_publish_task.apply_async(queue="gpu")
    _wait_for(lambda: Checkpoint.objects.filter(size=4).exists(), 60, worker, tmp_path / "worker.log")


# --- a worker killed mid-run -----------------------------------------------------------------------
# The worker is killed with its whole process group (pool child and sandbox included), as the OOM
# killer or a lost host would. Its message is never acknowledged, but nothing redelivers it within the
# test (the broker's visibility timeout stays at its default of hours): the new worker's beat sweep
# sees the stale heartbeat, queues the dispute again and the new worker decides it.

LEASE_ENV = {"MODELCOURT_HEARTBEAT_S": "0.5", "MODELCOURT_HEARTBEAT_STALE_S": "5", "MODELCOURT_SWEEP_SECONDS": "1"}


class _Slow(torch.nn.Module):
    """A suspect behind a busy loop of a few seconds per batch: time to kill the worker mid-run."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i < 30_000_000:
            i = i + 1
        return self.inner(x)


@pytest.fixture
def crew(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts workers (queues gpu and cpu, with the beat sweep) in their own process groups; stops them after."""
    if not BROKER.startswith(("redis://", "amqp://")):
        if os.environ.get("MODELCOURT_REQUIRE_SERVICES") == "1":
            pytest.fail("CELERY_BROKER_URL must name Redis or RabbitMQ when MODELCOURT_REQUIRE_SERVICES=1")
        pytest.skip("needs a real broker: set CELERY_BROKER_URL=redis://... (CI does)")
    from verification.methods.datasets import digits_task
    from verification.methods.panels import train_panel
    from workers.celery import app

    app.control.purge()
    data = tmp_path / "data"
    train_panel(digits_task(0), size=4, seed=1, epochs=3).save(data / "panels" / "installed" / "tiny")
    db = connection.settings_dict
    env = {
        **os.environ,
        **LEASE_ENV,
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "MODELCOURT_KEY_DIR": str(settings.MODELCOURT_KEY_DIR),
        "MODELCOURT_DATA_DIR": str(data),
    }
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "--beat", "-Q", "gpu,cpu",
             "--concurrency=1", "--prefetch-multiplier=1", "--without-gossip", "--without-mingle",
             "--schedule", str(tmp_path / f"beat-{len(started)}"), "-n", f"test-{uuid.uuid4().hex[:8]}@%h",
             "--loglevel=INFO"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        started.append(process)
        return process

    with override_settings(DATA_DIR=data, MEDIA_ROOT=data / "media"):
        yield start
    for process in started:
        if process.poll() is None:
            process.terminate()  # a warm shutdown of the main process; it stops its pool and sandboxes
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("worker-*.log")))


def _until(predicate: Callable[[], bool], timeout: float, tmp_path: Path, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    pytest.fail(f"{what} did not happen in {timeout:.0f} s:\n{_logs(tmp_path)}")


def _slow_dispute(owner, arbiter):  # type: ignore[no-untyped-def]
    """A claimant with a committed watermark, filed against a suspect slow enough to be caught mid-run."""
    from django.core.files.base import ContentFile
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.utils import timezone

    from ownership import services as ownership_services
    from ownership.models import RegisteredModel
    from verification.services import disputes as dispute_services

    # every run asks the claimant's own model for its labels (binding): the claimant needs a file; the
    # outcome is not under test here, only that the dispute gets exactly one verdict
    own = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(64, 10)), own)
    claimant = RegisteredModel.objects.create(
        owner=owner, name="digits", input_shape=[64], num_classes=10, artifact_format="torchscript",
        artifact_size=len(own.getvalue()), model_digest=uuid.uuid4().hex * 2, file_digests={},
        created_at=timezone.now(),
    )  # fmt: skip
    claimant.artifact.save("digits.pt", ContentFile(own.getvalue()), save=True)
    ownership_services.evidence_generate(model=claimant, count=10)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(_Slow()), buffer)
    suspect = SimpleUploadedFile("slow.pt", buffer.getvalue(), content_type="application/octet-stream")
    return dispute_services.dispute_file(
        arbiter=arbiter, title="slow suspect", claimant_model=claimant, methods=["watermark"],
        suspect_file=suspect, panel="tiny",
    )  # fmt: skip


def _in_the_sandbox(dispute, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    """Wait until the run queries the suspect; the log's size then."""
    from timestamps.models import LogEntry
    from verification.models import Dispute

    def querying() -> bool:
        row = Dispute.objects.get(pk=dispute.pk)
        return row.state == "running" and row.progress >= 30

    _until(querying, 180, tmp_path, "the run's sandbox phase")
    time.sleep(1.5)
    return LogEntry.objects.count()


def _decided_once(dispute, entries_before: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The second attempt decided the dispute: one verdict, one log entry, nothing left running."""
    from timestamps.models import LogEntry
    from verification.models import Dispute, Verdict, VerificationRun

    _until(
        lambda: Dispute.objects.get(pk=dispute.pk).state in ("decided", "failed"),
        240,
        tmp_path,
        "the second attempt's verdict",
    )
    decided = Dispute.objects.get(pk=dispute.pk)
    assert decided.state == "decided", decided.failure_reason
    runs = list(VerificationRun.objects.filter(dispute=dispute).order_by("attempt").values_list("attempt", "state"))
    assert runs == [(1, "abandoned"), (2, "succeeded")], runs
    assert decided.attempts == 2
    assert decided.heartbeat_at is None
    assert Verdict.objects.filter(dispute=dispute).count() == 1
    assert LogEntry.objects.count() == entries_before + 1  # the verdict's token, never two
    assert not VerificationRun.objects.filter(state="running").exists()


def test_a_worker_killed_mid_run_is_replaced_and_the_dispute_gets_one_verdict(  # type: ignore[no-untyped-def]
    crew, owner, arbiter, tmp_path: Path
) -> None:
    # given a worker running a slow dispute
    first = crew()
    dispute = _slow_dispute(owner, arbiter)
    entries_before = _in_the_sandbox(dispute, tmp_path)

    # when the worker is killed with its whole process group, and another one is started
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    crew()

    # then the new worker's sweep queues the dispute again and the new worker decides it, once
    _decided_once(dispute, entries_before, tmp_path)


def _pool_child(main: int) -> int:
    """The worker's pool process: the child of the main process that has children of its own (sandboxes)."""

    def children(pid: int) -> list[int]:
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
        return [int(line) for line in found.split()]

    pool = [pid for pid in children(main) if children(pid)]
    assert len(pool) == 1, f"expected one pool process with sandbox children under {main}, found {pool}"
    return pool[0]


def test_a_pool_process_killed_mid_run_is_replaced_by_the_same_worker(  # type: ignore[no-untyped-def]
    crew, owner, arbiter, tmp_path: Path
) -> None:
    # given a worker running a slow dispute
    worker = crew()
    dispute = _slow_dispute(owner, arbiter)
    entries_before = _in_the_sandbox(dispute, tmp_path)

    # when only its pool process dies (the main process acknowledges the message: WorkerLostError)
    os.kill(_pool_child(worker.pid), signal.SIGKILL)

    # then the worker's own sweep queues the dispute again and its new pool process decides it, once
    _decided_once(dispute, entries_before, tmp_path)
    assert worker.poll() is None
