"""Celery tasks of disputes and stress tests: an id in, a service called; and how services queue them.

Services queue work with `enqueue_on_commit`, imported from here at module level; the tasks import the
services inside their bodies (torch stays out of web processes), so this module loads no service when imported.

workers.celery routes run tasks to the gpu queue and the sweep to the cpu queue (a GPU worker busy
with a long run must not hold the sweep up).
"""

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=0)
def verification_run_task(self, dispute_id: int) -> None:  # type: ignore[no-untyped-def]
    """Run a queued dispute to its verdict; a redelivered message finds it decided (or running) and does nothing."""
    from verification.services.disputes import verification_run_execute  # torch stays out of web processes

    verification_run_execute(dispute_id=dispute_id, task_id=self.request.id or "")


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=0)
def stress_test_task(self, stress_test_id: int) -> None:  # type: ignore[no-untyped-def]
    """Run an owner's stress test; a redelivered message finds it done, or running under a live worker."""
    from verification.services.stress import stress_test_execute  # torch stays out of web processes

    stress_test_execute(stress_test_id=stress_test_id, task_id=self.request.id or "")


@shared_task(ignore_result=True, max_retries=0)
def run_sweep_task() -> None:
    """Beat, every MODELCOURT_SWEEP_SECONDS: re-queue runs whose worker stopped, send what waits to be sent."""
    from verification.sweeps import runs_sweep

    runs_sweep()


def enqueue(kind: str, pk: int) -> bool:
    """Publish the message that runs one queued dispute or stress test; False (logged) if the broker refused.

    Publishing fails fast (workers.celery's publish retry policy): a web request never waits long on a
    broker that is down, and the row, still waiting to be sent, is sent by the sweep.
    """
    task = {"dispute": verification_run_task, "stress_test": stress_test_task}[kind]
    try:
        task.delay(pk)
    except Exception:  # kombu, redis and socket errors alike: the row is safe in the outbox
        logger.warning("%s %s: the task queue refused the message; the sweep sends it again", kind, pk, exc_info=True)
        return False
    return True


def enqueue_on_commit(kind: str, pk: int) -> None:
    """Queue one dispute or stress test: its message is published once the transaction that queued it commits.

    The queued row is its own outbox entry (verification.sweeps): if the broker refuses the message, the sweep
    sends it later.
    """
    from verification.sweeps import dispatch_on_commit  # as in run_sweep_task: importing this module loads no models

    dispatch_on_commit(kind, pk)


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=0)
def sighting_probe_task(self, sighting_id: int) -> None:  # type: ignore[no-untyped-def]
    """Probe a sighted endpoint and time-stamp the transcript; a redelivered message finds it recorded."""
    from verification.services.sightings import sighting_probe

    sighting_probe(sighting_id=sighting_id)


def sighting_probe_enqueue(pk: int) -> None:
    """Publish the probing of one endpoint sighting; a refused message leaves it `probing` (logged)."""
    try:
        sighting_probe_task.delay(pk)
    except Exception:  # kombu, redis and socket errors alike
        logger.warning("sighting %s: the task queue refused the message; record the sighting again", pk, exc_info=True)
