"""Celery tasks of the trust layer: thin wrappers over services."""

from celery import shared_task


@shared_task(acks_late=True, ignore_result=True)
def checkpoint_publish_task() -> None:
    """Sign a checkpoint if the log grew (idempotent: one checkpoint per size)."""
    from timestamps.exceptions import LogHaltedError
    from timestamps.services import checkpoint_publish

    try:
        checkpoint_publish()
    except LogHaltedError:
        return  # the service logged the ERROR; a traceback every beat adds nothing


@shared_task(acks_late=True, ignore_result=True)
def log_fsck_task() -> None:
    """Check the whole log; problems halt checkpoint signing and log an ERROR (the alarm)."""
    from timestamps.services import log_fsck

    log_fsck()
