"""The Celery app: JSON only, late acks, queues `gpu` and `cpu`.

Run a worker with `celery -A workers.celery worker -Q gpu --concurrency=1
--prefetch-multiplier=1` on a GPU host, `-Q cpu` elsewhere.
"""

import os

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("modelcourt")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Late acks: a worker host that dies mid-task leaves the message to be redelivered. A child
    # process killed under a task is not requeued (that would loop forever on a poison task):
    # untrusted models run in the sandbox, so their crashes fail the run, not the worker.
    task_acks_late=True,
    task_reject_on_worker_lost=False,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    task_default_queue="cpu",
    task_queues=(Queue("gpu"), Queue("cpu")),
    # Model inference goes to GPU hosts; the trust layer's bookkeeping stays on CPU workers.
    task_routes={
        # the sweep re-queues runs whose GPU worker died: it must not wait behind them
        "verification.tasks.run_sweep_task": {"queue": "cpu"},
        "verification.tasks.sighting_probe_task": {"queue": "cpu"},
        "verification.tasks.*": {"queue": "gpu"},
        "timestamps.tasks.*": {"queue": "cpu"},
        "ownership.tasks.*": {"queue": "cpu"},
    },
    broker_connection_retry_on_startup=True,
    # Publishing from a web request must fail fast when the broker is down: the row stays queued
    # with nothing dispatched, and the sweep below sends it once the broker is back.
    broker_connection_timeout=float(os.environ.get("MODELCOURT_PUBLISH_TIMEOUT_S", "2")),
    task_publish_retry=True,
    task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
    worker_hijack_root_logger=False,
    beat_schedule={
        "publish-log-checkpoint": {
            "task": "timestamps.tasks.checkpoint_publish_task",
            "schedule": float(os.environ.get("MODELCOURT_CHECKPOINT_SECONDS", "60")),
            "options": {"queue": "cpu", "expires": 120},
        },
        # sends what was never sent and re-queues runs whose worker stopped beating
        "sweep-runs": {
            "task": "verification.tasks.run_sweep_task",
            "schedule": float(os.environ.get("MODELCOURT_SWEEP_SECONDS", "15")),
            "options": {"queue": "cpu", "expires": 60},
        },
        # re-publishes upload validations that never left or whose worker died; cleans the upload spool
        "sweep-validations": {
            "task": "ownership.tasks.model_validation_sweep_task",
            "schedule": float(os.environ.get("MODELCOURT_SWEEP_SECONDS", "15")),
            "options": {"queue": "cpu", "expires": 60},
        },
        # re-derives the log from its entries; a mismatch halts checkpoint signing and alerts (manage.py log_fsck)
        "check-log-integrity": {
            "task": "timestamps.tasks.log_fsck_task",
            "schedule": float(os.environ.get("MODELCOURT_LOG_FSCK_SECONDS", "3600")),
            "options": {"queue": "cpu", "expires": 3000},
        },
    },
)
app.autodiscover_tasks()


@worker_process_init.connect
def _configure_child(**_: object) -> None:
    """Per child process: one torch thread (2-core hosts thrash with more), lazy device, a warm sandbox spare."""
    from workers.device import configure_torch, sandbox_gpu
    from workers.sandbox import warm_spare

    configure_torch()
    # a sandbox child that has imported torch already, so the first dispute does not wait for it; its
    # GPU flag is the one verification runs ask for, or the first run starts cold
    warm_spare(gpu=sandbox_gpu())


@worker_process_shutdown.connect
def _discard_spares(**_: object) -> None:
    """A pool process may leave without running atexit handlers: its spare goes with it."""
    from workers.sandbox import discard_spares

    discard_spares()
