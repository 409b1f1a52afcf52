"""Runs that never stay stuck: the outbox of queued work, the running attempt's heartbeat, and the sweep.

A queued dispute or stress test is its own outbox entry: `dispatched_at` stays empty until the broker
has taken its message. The message is published after the commit; when the broker cannot be reached
the filing still succeeds, the row says it is waiting to be sent, and the sweep (beat, every
MODELCOURT_SWEEP_SECONDS) sends it again. The sweep also re-sends rows sent long ago but never
claimed (a message lost with a broker), harmless because a worker claims only what is queued.

A running attempt holds a lease that a background thread renews (`heartbeat_at`, every
MODELCOURT_HEARTBEAT_S). When a worker dies (SIGKILL, OOM, host lost), its heartbeat goes stale
after MODELCOURT_HEARTBEAT_STALE_S: the sweep, or the next worker that receives the message, marks
the attempt abandoned and queues the run again, up to MODELCOURT_RUN_MAX_ATTEMPTS attempts; then
the run fails with a reason for the operators. An abandoned attempt that still finishes finds its
lease gone and records nothing.
"""

import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from verification.models import Dispute, StressTest, VerificationRun

logger = logging.getLogger(__name__)

SWEEP_BATCH = 200
WAITING_TO_BE_SENT = "waiting to be sent to a worker: the task queue cannot be reached; the service keeps trying"
DISPUTE_WORKERS_LOST = (
    "the worker running this dispute stopped {n} times without finishing; an operator should check the "
    "workers (memory, GPU, logs) before the dispute is queued again"
)
STRESS_WORKERS_LOST = (
    "the worker running this stress test stopped {n} times without finishing; an operator should check the workers"
)
_DEFAULTS = {
    "MODELCOURT_HEARTBEAT_S": 10.0,
    "MODELCOURT_HEARTBEAT_STALE_S": 60.0,
    "MODELCOURT_RUN_MAX_ATTEMPTS": 3.0,
    "MODELCOURT_DISPATCH_RESEND_S": 600.0,
}


def _setting(name: str) -> float:
    """A setting of this module: Django settings if set there, else the environment, else the default."""
    configured = getattr(settings, name, None)
    if configured is not None:
        return float(configured)
    raw = os.environ.get(name)
    return float(raw) if raw is not None else _DEFAULTS[name]


def heartbeat_interval_s() -> float:
    """How often a running attempt renews its lease."""
    return max(0.05, _setting("MODELCOURT_HEARTBEAT_S"))


def stale_cutoff(now: datetime | None = None) -> datetime:
    """Leases renewed before this moment belong to a worker presumed dead."""
    return (now or timezone.now()) - timedelta(seconds=_setting("MODELCOURT_HEARTBEAT_STALE_S"))


def max_attempts() -> int:
    """Attempts a run may start before a lost worker fails it instead of queueing it again."""
    return max(1, int(_setting("MODELCOURT_RUN_MAX_ATTEMPTS")))


def is_stale(heartbeat_at: datetime | None, now: datetime | None = None) -> bool:
    """Whether a running row's lease has run out (a row without a heartbeat has none)."""
    return heartbeat_at is None or heartbeat_at < stale_cutoff(now)


# --- the outbox ----------------------------------------------------------------------------------

_OUTBOX: dict[str, type[Dispute] | type[StressTest]] = {"dispute": Dispute, "stress_test": StressTest}


def dispatch(kind: str, pk: int) -> bool:
    """Hand one queued row's message to the broker and record it; on failure the row waits for the sweep."""
    from verification.tasks import enqueue

    model = _OUTBOX[kind]
    sent = enqueue(kind, pk)
    rows = model.objects.filter(pk=pk, state="queued")
    if sent:
        rows.update(dispatched_at=timezone.now(), dispatch_attempts=F("dispatch_attempts") + 1)
    else:
        rows.filter(dispatched_at__isnull=True).update(
            dispatch_attempts=F("dispatch_attempts") + 1, phase=WAITING_TO_BE_SENT
        )
    return sent


def dispatch_on_commit(kind: str, pk: int) -> None:
    """Send the row's message once the transaction that queued it has committed."""
    transaction.on_commit(lambda: dispatch(kind, pk))


# --- the lease -----------------------------------------------------------------------------------


class Heartbeat:
    """Renews a running attempt's lease from a background thread while the (blocking) run works.

    `lease` returns the rows that are still this attempt's; when it matches none, the lease is
    lost (the sweep gave the run to another attempt) and `lost` says so.
    """

    def __init__(self, lease: Callable[[], QuerySet[Any]], *, name: str) -> None:
        self._lease = lease
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{name}", daemon=True)

    @property
    def lost(self) -> bool:
        """Whether another attempt holds the run now."""
        return self._lost.is_set()

    def beat(self) -> bool:
        """Renew the lease once; False when it is no longer ours."""
        renewed = self._lease().update(heartbeat_at=timezone.now())
        if not renewed:
            self._lost.set()
        return bool(renewed)

    def _beat(self) -> None:
        interval = heartbeat_interval_s()
        try:
            while not self._stop.wait(interval):
                try:
                    close_old_connections()
                    if not self.beat():
                        logger.warning("%s: the lease passed to another attempt", self._thread.name)
                        return
                except Exception:  # a missed beat must not stop the run; the next one retries
                    logger.warning("%s: the heartbeat could not be written", self._thread.name, exc_info=True)
        finally:
            connection.close()  # this thread's own connection

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def dispute_lease(dispute_id: int, run_id: int) -> QuerySet[Dispute]:
    """The dispute while `run_id` is its running attempt: an abandoned attempt's writes match nothing."""
    # EXISTS, not a join: an UPDATE through a join becomes `id IN (subquery)`, which PostgreSQL does not
    # re-check against a row that a concurrent verdict has just moved on (a beat would land after it)
    attempt = VerificationRun.objects.filter(pk=run_id, dispute=OuterRef("pk"), state=VerificationRun.State.RUNNING)
    return Dispute.objects.filter(Exists(attempt), pk=dispute_id, state=Dispute.State.RUNNING)


def stress_lease(stress_test_id: int, attempt: int) -> QuerySet[StressTest]:
    """The stress test while `attempt` is its running attempt."""
    return StressTest.objects.filter(pk=stress_test_id, state=StressTest.State.RUNNING, attempts=attempt)


# --- recovery ------------------------------------------------------------------------------------


def abandon_runs(dispute: Dispute, now: datetime) -> None:
    """Close the dispute's running attempts: their worker stopped renewing the lease."""
    dispute.runs.filter(state=VerificationRun.State.RUNNING).update(
        state=VerificationRun.State.ABANDONED,
        error="the worker stopped sending heartbeats during the run; another attempt takes over",
        finished_at=now,
    )


def _recover(model: type[Dispute] | type[StressTest], pk: int, now: datetime) -> str:
    """Re-queue (or, past the attempt limit, fail) one running dispute or stress test whose heartbeat is stale."""
    is_dispute = model is Dispute
    label = "dispute" if is_dispute else "stress test"
    with transaction.atomic():
        row = model.objects.select_for_update().filter(pk=pk).first()
        if row is None or row.state != model.State.RUNNING or not is_stale(row.heartbeat_at, now):
            return "live"
        if isinstance(row, Dispute):
            abandon_runs(row, now)
        limit = max_attempts()
        if row.attempts >= limit:
            reason = (DISPUTE_WORKERS_LOST if is_dispute else STRESS_WORKERS_LOST).format(n=row.attempts)
            logger.error("%s %s: %s", label, row.pk, reason)
            finished = {} if is_dispute else {"finished_at": now}
            model.objects.filter(pk=row.pk).update(
                state=model.State.FAILED,
                failure_reason=reason,
                phase="failed",
                heartbeat_at=None,
                updated_at=now,
                **finished,
            )
            return "failed"
        logger.warning("%s %s: its worker stopped (attempt %s of %s); queued again", label, row.pk, row.attempts, limit)
        model.objects.filter(pk=row.pk).update(
            state=model.State.QUEUED,
            progress=0,
            phase=f"the worker stopped; waiting for another (attempt {row.attempts + 1} of {limit})",
            heartbeat_at=None,
            dispatched_at=None,
            updated_at=now,
        )
        # left waiting to be sent: the outbox pass below sends it
        return "requeued"


def runs_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Re-queue (or fail) runs whose worker stopped, and send what is waiting to be sent; counts of each."""
    now = now or timezone.now()
    cutoff = stale_cutoff(now)
    counts = {"requeued": 0, "failed": 0, "sent": 0, "unsent": 0}
    stale = Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=cutoff)
    for pk in (
        Dispute.objects.filter(stale, state=Dispute.State.RUNNING)
        .order_by("pk")
        .values_list("pk", flat=True)[:SWEEP_BATCH]
    ):
        outcome = _recover(Dispute, pk, now)
        counts[outcome] = counts.get(outcome, 0) + 1
    for pk in (
        StressTest.objects.filter(stale, state=StressTest.State.RUNNING)
        .order_by("pk")
        .values_list("pk", flat=True)[:SWEEP_BATCH]
    ):
        outcome = _recover(StressTest, pk, now)
        counts[outcome] = counts.get(outcome, 0) + 1
    # never sent, or sent so long ago that the message was probably lost with a broker
    resend = Q(dispatched_at__isnull=True) | Q(
        dispatched_at__lt=now - timedelta(seconds=_setting("MODELCOURT_DISPATCH_RESEND_S"))
    )
    for kind, model in _OUTBOX.items():
        for pk in (
            model.objects.filter(resend, state="queued").order_by("pk").values_list("pk", flat=True)[:SWEEP_BATCH]
        ):
            counts["sent" if dispatch(kind, pk) else "unsent"] += 1
    counts.pop("live", None)
    if any(counts.values()):
        logger.info("run sweep: %s", counts)
    return counts
