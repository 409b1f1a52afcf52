"""A real Celery worker process, against PostgreSQL and a real broker, runs a task end to end."""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

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
