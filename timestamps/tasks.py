"""Celery tasks of the trust layer: thin wrappers over services."""

from celery import shared_task


@shared_task(acks_late=True, ignore_result=True)
def checkpoint_publish_task() -> None:
    """Sign a checkpoint if the log grew (idempotent: one checkpoint per size)."""
    from timestamps.services import checkpoint_publish

    checkpoint_publish()
