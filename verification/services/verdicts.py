"""Verdicts: recording the signed verdict of a run, publishing it, and building its evidence bundle.

The lowest of the service modules: verification.runs records verdicts through it, so it imports neither the
runs nor the other service modules. It also holds the dispute row's helpers that verification.services.disputes
shares (a state change, the lease check).
"""

import base64
import hashlib
import logging
import uuid
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from timestamps.exceptions import LogIntegrityError
from verification import sweeps
from verification.exceptions import DisputeStateError
from verification.models import Dispute, Verdict, VerificationRun

logger = logging.getLogger(__name__)


def _set_state(dispute: Dispute, state: str, **fields: Any) -> None:
    dispute.state = state
    dispute.updated_at = timezone.now()
    for name, value in fields.items():
        setattr(dispute, name, value)
    dispute.save(update_fields=["state", "updated_at", *fields])


def _holds_lease(dispute_id: int, run_id: int) -> bool:
    """Lock the dispute (inside the caller's transaction) and say whether `run_id` still holds it."""
    Dispute.objects.select_for_update().filter(pk=dispute_id).values_list("pk", flat=True).first()
    return sweeps.dispute_lease(dispute_id, run_id).exists()


@transaction.atomic
def verdict_publish(*, dispute: Dispute) -> Verdict:
    """Make a decided dispute's verdict public."""
    dispute = Dispute.objects.select_for_update().get(pk=dispute.pk)
    if dispute.state != Dispute.State.DECIDED:
        raise DisputeStateError(f"only a decided dispute can be published; this one is {dispute.state}")
    verdict = dispute.verdict
    verdict.published_at = timezone.now()
    verdict.save(update_fields=["published_at"])
    _set_state(dispute, Dispute.State.PUBLISHED, phase="published")
    return verdict


def verdict_record(
    *,
    dispute: Dispute,
    run: VerificationRun,
    outcome: str,
    predicate: dict[str, Any],
    envelope: bytes,
    attachments: dict[str, bytes],
    bundle_parts: dict[str, Any],
    timings: dict[str, float],
    public_id: uuid.UUID,
) -> Verdict | None:
    """Store the signed verdict, time-stamp and log it, and close the run; all or nothing.

    The unique constraint on the dispute refuses a second verdict: the loser's transaction (its
    token and log entry included) rolls back, so a duplicate run leaves no trace in the log.
    """
    from timestamps import services as timestamp_services

    try:
        with transaction.atomic():
            # only the attempt holding the lease records: an abandoned one that finished late gets no
            # token and no log entry (the dispute row is locked before the log head, as everywhere)
            if not _holds_lease(dispute.pk, run.pk):
                logger.info("dispute %s: attempt %s lost its lease; its verdict is dropped", dispute.pk, run.attempt)
                return None
            token = timestamp_services.timestamp_digest(digest=hashlib.sha256(envelope).digest())
            verdict = Verdict.objects.create(
                public_id=public_id,
                dispute=dispute,
                run=run,
                outcome=outcome,
                predicate=predicate,
                envelope=envelope,
                attachments={k: base64.b64encode(v).decode() for k, v in attachments.items()},
                bundle_parts=bundle_parts,
                timestamp_token=token,
                created_at=timezone.now(),
            )
            run.state = VerificationRun.State.SUCCEEDED
            run.timings = timings
            run.finished_at = timezone.now()
            run.save(update_fields=["state", "timings", "finished_at"])
            updated = Dispute.objects.filter(pk=dispute.pk, state=Dispute.State.RUNNING).update(
                state=Dispute.State.DECIDED, progress=100, phase="decided", heartbeat_at=None, updated_at=timezone.now()
            )
            if not updated:
                raise IntegrityError("the dispute left the running state during the run")
    except IntegrityError:
        logger.info("dispute %s already has a verdict; this run's result is dropped", dispute.pk)
        return None
    return verdict


def verdict_bundle(*, verdict: Verdict) -> bytes:
    """The verdict's evidence bundle (zip): envelope, token, keys, receipts, and proofs under the latest checkpoint.

    The checkpoint is the latest one signed by the log key the verdict carries (signed into its predicate),
    current or retired since, that covers the verdict and its receipts. While that key is current, one is
    signed only when none covers them yet (the beat schedule signs them as the log grows); a retired key
    signs nothing more, so if none of its checkpoints covers them the bundle cannot be built (503). The zip
    depends on nothing but the checkpoint, so one cache entry per verdict holds the latest one's zip.
    """
    from django.core.cache import cache

    from modelcourt import bundle
    from timestamps import selectors as timestamp_selectors
    from timestamps import services as timestamp_services

    token = verdict.timestamp_token
    index = token.log_entry_id
    receipts = verdict.bundle_parts.get("receipts", [])
    covered = max([index + 1, *(receipt["log"]["tree_size"] for receipt in receipts)])
    log_key = timestamp_selectors.log_key_of(verifier_key=str(verdict.bundle_parts.get("log_vkey", "")))
    if log_key is None:
        logger.error("verdict %s: its log verifier key is not one of the log's keys", verdict.public_id)
        raise LogIntegrityError("the verdict's log key is not one of the log's published keys")
    checkpoint = timestamp_services.checkpoint_covering(size=covered, key=log_key)
    # One entry per verdict, overwritten when the checkpoint changes: older zips do not pile up in the cache.
    key = f"verdict-bundle:{bundle.BUNDLE_FORMAT}:{verdict.pk}"
    cached = cache.get(key)
    if isinstance(cached, tuple) and len(cached) == 3 and cached[:2] == (checkpoint.pk, checkpoint.size):
        return bytes(cached[2])
    proofs = {
        receipt["commitment"]: [
            base64.b64encode(h).decode()
            for h in timestamp_selectors.log_consistency_proof(
                first=receipt["log"]["tree_size"], second=checkpoint.size
            )
        ]
        for receipt in receipts
    }
    try:
        data = bundle.build_bundle(
            envelope_json=bytes(verdict.envelope),
            token_der=bytes(token.token),
            log=timestamp_selectors.log_proof_get(index=index, checkpoint=checkpoint),
            attachments={k: base64.b64decode(v) for k, v in verdict.attachments.items()},
            consistency_proofs=proofs,
            **verdict.bundle_parts,
        )
    except bundle.BundleError as exc:
        # the stored parts were checked when the verdict was signed: failing now means the log itself is wrong
        logger.error("verdict %s: its bundle no longer builds: %s", verdict.public_id, exc)
        raise LogIntegrityError(f"the verdict's bundle cannot be built against the current log: {exc}") from exc
    cache.set(key, (checkpoint.pk, checkpoint.size, data), timeout=24 * 3600)
    return data
