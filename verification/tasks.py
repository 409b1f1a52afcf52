"""Celery tasks of disputes: an id in, a service called (routed to the gpu queue by workers.celery)."""

from celery import shared_task


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=0)
def verification_run_task(self, dispute_id: int) -> None:  # type: ignore[no-untyped-def]
    """Run a queued dispute to its verdict; a redelivered message finds it decided and does nothing."""
    from verification.services import verification_run_execute  # torch stays out of web processes

    verification_run_execute(dispute_id=dispute_id, task_id=self.request.id or "")


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=0)
def stress_test_task(self, stress_test_id: int) -> None:  # type: ignore[no-untyped-def]
    """Run an owner's stress test; a redelivered message finds it done, or re-runs one a dead worker left running."""
    from verification.services import stress_test_execute  # torch stays out of web processes

    stress_test_execute(stress_test_id=stress_test_id, task_id=self.request.id or "")
