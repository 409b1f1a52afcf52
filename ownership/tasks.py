"""Celery tasks of the registry: an id in, a service called (routed to the cpu queue by workers.celery).

Services queue work through `model_validation_enqueue`; the periodic sweep calls
`model_validation_resend_stale`, which re-publishes what a failed publish or a lost worker left behind.
"""

import logging
import stat
import time
from datetime import timedelta
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from ownership.models import RegisteredModel

logger = logging.getLogger(__name__)

# a registration whose first publish is still on its way (on_commit) is not stale yet
_PUBLISH_GRACE = timedelta(minutes=1)
_UPLOAD_TEMP_MAX_AGE_S = 3600


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=0)
def model_validate_task(self, model_id: int) -> None:  # type: ignore[no-untyped-def]
    """Check an uploaded artifact in the sandbox; a redelivered message finds the registration settled."""
    from ownership.services import model_validate  # torch stays out of the task module's importers

    model_validate(model_id=model_id)


@shared_task(ignore_result=True, max_retries=0)
def model_validation_sweep_task() -> None:
    """Beat: re-publish stale validations and clean the upload spool (see model_validation_resend_stale)."""
    model_validation_resend_stale()


def model_validation_enqueue(model_id: int) -> bool:
    """Publish the validation of one registration and stamp `dispatched_at`; False if the broker refused it.

    A refused publish leaves `dispatched_at` unset: `model_validation_resend_stale` tries again.
    """
    try:
        model_validate_task.delay(model_id)
    except Exception:  # the broker's errors vary by transport; the sweep retries whatever they were
        logger.warning("could not publish the validation of registration %s; the sweep will retry", model_id)
        return False
    RegisteredModel.objects.filter(pk=model_id, state=RegisteredModel.State.VALIDATING).update(
        dispatched_at=timezone.now()
    )
    return True


def model_validation_resend_stale() -> int:
    """Re-publish validations that never left or that a lost worker dropped; clean old upload temp files.

    Stale: `validating` and either never published (after a short grace) or published longer ago than
    MODELCOURT_VALIDATION_RESEND_MINUTES. Validation is idempotent, so a duplicate costs only a check.
    Returns how many were re-published.
    """
    now = timezone.now()
    stale_before = now - timedelta(minutes=settings.MODELCOURT_VALIDATION_RESEND_MINUTES)
    stale = RegisteredModel.objects.filter(state=RegisteredModel.State.VALIDATING).filter(
        Q(dispatched_at__isnull=True, created_at__lt=now - _PUBLISH_GRACE) | Q(dispatched_at__lt=stale_before)
    )
    resent = sum(model_validation_enqueue(pk) for pk in stale.order_by("pk").values_list("pk", flat=True))
    if resent:
        logger.info("re-published the validation of %d registrations", resent)
    upload_temp_clean()
    return resent


def upload_temp_clean(max_age_s: float = _UPLOAD_TEMP_MAX_AGE_S) -> int:
    """Remove upload temp files older than `max_age_s` (left by a web worker killed mid-upload); how many."""
    folder = Path(settings.FILE_UPLOAD_TEMP_DIR) if settings.FILE_UPLOAD_TEMP_DIR else None
    if folder is None or not folder.is_dir():
        return 0
    cutoff = time.time() - max_age_s
    removed = 0
    for entry in folder.iterdir():
        try:
            info = entry.lstat()
            # plain files only: a link or folder there is not ours to follow
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                entry.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # finished and removed by its request meanwhile
    return removed
