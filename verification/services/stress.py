"""Stress tests: an owner steals their own model several ways and sees which evidence survives."""

import base64
import concurrent.futures
import json
import logging
import math
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ownership import services as ownership_services
from ownership.evidence import EvidenceRejected, load_evidence
from ownership.models import EvidenceSet, RegisteredModel
from verification import reference, sweeps
from verification.exceptions import StressTestError
from verification.models import StressTest
from verification.panel_fit import panel_check
from verification.tasks import enqueue_on_commit

logger = logging.getLogger(__name__)

# The owner's artifact is untrusted code: it is loaded only in the sandbox's child process
# (verification.methods.stress.run_stress_test_reporting); this process opens the escrow and keeps the record.

# kept in step with verification.methods.thefts.THEFT_KINDS (not imported: torch stays out of web processes)
THEFT_KINDS = ("copy", "fine_tune", "prune", "distill", "extract")
WHITE_BOX_THEFTS = frozenset({"fine_tune", "prune"})
MAX_STRESS_ALPHA = 0.1
MAX_SEED = 2**31 - 1
# the default of MODELCOURT_RUN_MAX_ATTEMPTS (verification.sweeps.max_attempts), which disputes share
MAX_STRESS_ATTEMPTS = 3
PROGRESS_NOTE_BYTES = 2000
MAX_RESULTS_CHARS = 2_000_000  # a table of 6 thefts by tens of evidence sets is a few tens of kB
STRESS_POLL_S = 1.0
# the child's own work is shown between these percentages; opening the escrow and the panel come before
CHILD_FROM, CHILD_TO = 15, 98

StressProgress = Callable[[int, str], None]


class StressTestFailed(Exception):  # noqa: N818 (the test's end state, with the reason shown to the owner)
    """A stress test that cannot finish: the reason is for the owner."""


def _check_thefts(model: RegisteredModel, thefts: Sequence[str]) -> list[str]:
    chosen = list(dict.fromkeys(thefts))
    unknown = [t for t in chosen if t not in THEFT_KINDS]
    if not chosen or unknown:
        raise StressTestError(
            f"thefts must be a non-empty list of {', '.join(THEFT_KINDS)}; got {list(thefts)}", code="thefts"
        )
    needs_weights = [t for t in chosen if t in WHITE_BOX_THEFTS]
    if needs_weights and model.artifact_format != RegisteredModel.Format.TORCHSCRIPT:
        raise StressTestError(
            f"{' and '.join(needs_weights)} train your model's weights, which needs a TorchScript artifact; "
            f"an {model.get_artifact_format_display()} model supports copy, distill and extract",
            code="thefts",
        )
    return chosen


def _check_stress_evidence(model: RegisteredModel, evidence_sets: Sequence[EvidenceSet] | None) -> list[EvidenceSet]:
    # a guard's journal speaks only of models trained on the answers it served, which no simulated theft of the
    # weights is: stress tests leave those batches out by default and refuse them by name
    if evidence_sets is not None and any(s.kind == EvidenceSet.Kind.API_WATERMARK for s in evidence_sets):
        raise StressTestError(
            "a guard's journal batches cannot be stress-tested: they mark the API's answers, not the model's weights",
            code="evidence_sets",
        )
    sets = (
        list(evidence_sets)
        if evidence_sets is not None
        else list(model.evidence_sets.exclude(kind=EvidenceSet.Kind.API_WATERMARK))
    )
    if not sets:
        raise StressTestError("choose at least one evidence set of the model; it has none yet", code="evidence_sets")
    if any(s.model_id != model.pk for s in sets):
        raise StressTestError("every evidence set must belong to the chosen model", code="evidence_sets")
    if (
        any(s.kind == EvidenceSet.Kind.DATASET for s in sets)
        and model.artifact_format != RegisteredModel.Format.TORCHSCRIPT
    ):
        raise StressTestError(
            "dataset inference needs your model's gradients: register it as TorchScript", code="evidence_sets"
        )
    return sets


@transaction.atomic
def stress_test_start(
    *,
    owner: AbstractBaseUser,
    model: RegisteredModel,
    evidence_sets: Sequence[EvidenceSet] | None = None,
    thefts: Sequence[str] = THEFT_KINDS,
    panel: str = "digits",
    alpha: float = 1e-3,
    seed: int = 0,
) -> StressTest:
    """Queue a stress test of one of the owner's models (default: all its evidence) on the gpu queue."""
    if model.owner_id != owner.pk:
        raise StressTestError("you can only stress-test your own registered models", code="model")
    chosen = _check_thefts(model, thefts)
    sets = _check_stress_evidence(model, evidence_sets)
    if not 0.0 < alpha <= MAX_STRESS_ALPHA:
        raise StressTestError(f"alpha must lie in (0, {MAX_STRESS_ALPHA}]; the default is 0.001", code="alpha")
    if not 0 <= seed <= MAX_SEED:
        raise StressTestError(f"seed must lie between 0 and {MAX_SEED}", code="seed")
    if panel not in reference.panel_list():
        raise StressTestError(
            f"no reference panel {panel!r}; available: {', '.join(reference.panel_list())}", code="panel"
        )
    panel_check(panel=panel, model=model, error=StressTestError)
    # stress tests share the gpu queue with disputes: one owner must not fill it
    limit = settings.MODELCOURT_STRESS_MAX_ACTIVE
    active = StressTest.objects.filter(owner=owner, state__in=[StressTest.State.QUEUED, StressTest.State.RUNNING])
    if active.count() >= limit:
        raise StressTestError(
            f"you have {limit} stress test(s) queued or running; start another when one has finished", code="busy"
        )
    now = timezone.now()
    stress_test = StressTest(
        owner=owner,
        model=model,
        thefts=chosen,
        panel=panel,
        alpha=alpha,
        seed=seed,
        phase="waiting for a GPU worker",
        created_at=now,
        updated_at=now,
    )
    stress_test.full_clean()
    stress_test.save()
    stress_test.evidence_sets.set(sets)
    enqueue_on_commit("stress_test", stress_test.pk)
    return stress_test


# --- running -------------------------------------------------------------------------------------


def _stress_claim(stress_test_id: int) -> StressTest | None:
    """Move a queued test (or one whose worker stopped renewing its lease) to running, counting the attempt.

    A second message finds the test settled, or running under a live lease, and does nothing (None).
    """
    now = timezone.now()
    with transaction.atomic():
        test = StressTest.objects.select_for_update().filter(pk=stress_test_id).first()
        if test is None:
            return None
        takeover = test.state == StressTest.State.RUNNING and sweeps.is_stale(test.heartbeat_at, now)
        if test.state != StressTest.State.QUEUED and not takeover:
            return None
        if test.attempts >= sweeps.max_attempts():
            reason = sweeps.STRESS_WORKERS_LOST.format(n=test.attempts)
            logger.error("stress test %s: %s", test.pk, reason)
            StressTest.objects.filter(pk=test.pk).update(
                state=StressTest.State.FAILED,
                phase="failed",
                failure_reason=reason,
                heartbeat_at=None,
                finished_at=now,
                updated_at=now,
            )
            return None
        # the attempt count is the lease: a test re-claimed by another attempt ignores this one's writes
        StressTest.objects.filter(pk=test.pk).update(
            state=StressTest.State.RUNNING,
            attempts=F("attempts") + 1,
            progress=2,
            phase="starting",
            failure_reason="",
            heartbeat_at=now,
            updated_at=now,
        )
        return StressTest.objects.select_related("model").get(pk=stress_test_id)


def _stress_progress_of(stress_test: StressTest) -> StressProgress:
    def update(percent: int, phase: str) -> None:
        sweeps.stress_lease(stress_test.pk, stress_test.attempts).update(
            progress=max(0, min(99, percent)), phase=phase[:200], updated_at=timezone.now()
        )

    return update


def _stress_fail(stress_test: StressTest, reason: str, timings: dict[str, float]) -> None:
    now = timezone.now()
    sweeps.stress_lease(stress_test.pk, stress_test.attempts).update(
        state=StressTest.State.FAILED,
        heartbeat_at=None,
        phase="failed",
        failure_reason=reason[:4000] or "the stress test failed",
        timings=timings,
        finished_at=now,
        updated_at=now,
    )


def _stress_evidence(stress_test: StressTest) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """The owner's evidence revealed from escrow: agreement claims, dataset samples, and each one's record."""
    from verification import runs  # plots and signing stay out of web processes

    model = stress_test.model
    claims: list[dict[str, Any]] = []
    datasets: list[dict[str, Any]] = []
    records: dict[str, Any] = {}
    for evidence_set in stress_test.evidence_sets.order_by("created_at", "id"):
        opening = ownership_services.evidence_open(evidence_set=evidence_set)
        try:
            arrays = load_evidence(
                base64.b64decode(opening["evidence_npz_b64"]),
                kind=evidence_set.kind,
                input_shape=model.input_shape,
                num_classes=model.num_classes,
            )
        except EvidenceRejected as exc:
            raise StressTestFailed(f"evidence {evidence_set.commitment[:16]} is unreadable: {exc}") from exc
        spec = runs.evidence_spec(evidence_set, arrays)
        records[spec["name"]] = {
            "evidence_set": str(evidence_set.public_id),
            "commitment": evidence_set.commitment,
            "kind": evidence_set.kind,
            "verifiable": evidence_set.verifiable,
        }
        (datasets if evidence_set.kind == EvidenceSet.Kind.DATASET else claims).append(spec)
    return claims, datasets, records


def _read_stress_progress(path: Path) -> tuple[int, str] | None:
    """The child's last progress note; the child ran untrusted code, so anything odd is ignored.

    The child can write to the folder: a FIFO, a link to /dev/zero or a huge file must not block or
    flood the worker, hence a non-blocking, no-follow open of a regular file and a bounded read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = json.loads(os.read(fd, PROGRESS_NOTE_BYTES).decode("utf-8"))
        percent, phase = int(raw["percent"]), str(raw["phase"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    return max(0, min(100, percent)), phase[:180]


def _plain_data(value: Any, depth: int = 0) -> bool:
    """Whether `value` is JSON-like data only (str, finite numbers, bools, None, lists, str-keyed dicts)."""
    if depth > 12:
        return False
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_plain_data(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_data(v, depth + 1) for k, v in value.items())
    return False


def _checked_stress_outcome(outcome: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """The child's results and timings, or StressTestFailed: the child ran the owner's (untrusted) model."""
    bad = "the stress test's child returned malformed results"
    if not isinstance(outcome, dict) or not isinstance(outcome.get("results"), dict):
        raise StressTestFailed(bad)
    results, timings = outcome["results"], outcome.get("timings", {})
    if not _plain_data(results) or not isinstance(timings, dict):
        raise StressTestFailed(bad)
    if len(json.dumps(results)) > MAX_RESULTS_CHARS:
        raise StressTestFailed(f"{bad}: larger than {MAX_RESULTS_CHARS} characters")
    rows, evidence = results.get("rows", []), results.get("evidence", [])
    if not isinstance(rows, list) or not isinstance(evidence, list):
        raise StressTestFailed(bad)
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("cells", []), list):
            raise StressTestFailed(bad)
        if not all(isinstance(cell, dict) for cell in row.get("cells", [])):
            raise StressTestFailed(bad)
    if not all(isinstance(entry, dict) for entry in evidence):
        raise StressTestFailed(bad)
    checked: dict[str, float] = {}
    for key, value in list(timings.items())[:100]:
        if isinstance(key, str) and isinstance(value, int | float) and math.isfinite(value):
            checked[key[:100]] = float(value)
    return results, checked


def _stress_in_sandbox(spec: dict[str, Any], progress: StressProgress) -> dict[str, Any]:
    """Run the thefts and tests in the sandbox child, relaying its progress notes while it works."""
    from verification.methods.stress import run_stress_test_reporting
    from workers.sandbox import SandboxError, run_sandboxed

    with tempfile.TemporaryDirectory(prefix="modelcourt-stress-") as workdir:
        notes = Path(workdir) / "progress.json"
        spec = {**spec, "progress_path": str(notes)}
        seen: tuple[int, str] | None = None
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            # everything trains on the CPU (small models, the same table on every host): no GPU in the child
            # the child reads a private copy of the model and the panel, and writes only its progress notes
            future = pool.submit(
                run_sandboxed,
                run_stress_test_reporting,
                spec,
                timeout_s=settings.MODELCOURT_STRESS_TIMEOUT_S,
                memory_bytes=settings.MODELCOURT_RUN_MEMORY_BYTES,
                files={"model_path": str(spec["model"]["path"])},
                readable=[str(spec["panel_dir"])],
                writable=[workdir],
            )
            while True:
                try:
                    result: dict[str, Any] = future.result(timeout=STRESS_POLL_S)
                    break
                except concurrent.futures.TimeoutError:
                    note = _read_stress_progress(notes)
                    if note is not None and note != seen:
                        seen = note
                        progress(CHILD_FROM + (CHILD_TO - CHILD_FROM) * note[0] // 100, note[1])
                except SandboxError as exc:
                    raise StressTestFailed(f"your model could not be stress-tested: {exc.reason}") from exc
    if not isinstance(result, dict) or ("failure" not in result and "results" not in result):
        raise StressTestFailed("the stress test returned no results")
    if "failure" in result:
        raise StressTestFailed(str(result["failure"])[:1000])
    return result


def _label_stress_evidence(results: dict[str, Any], records: dict[str, Any]) -> dict[str, Any]:
    """Say which commitment each evidence row is."""
    for entry in results.get("evidence", []):
        name = entry.get("name")
        entry.update(records.get(name, {}) if isinstance(name, str) else {})
    return results


def stress_test_execute(*, stress_test_id: int, task_id: str = "") -> StressTest | None:
    """Run a queued stress test to its table; a redelivered message finds it done (or re-runs a dead worker's)."""
    stress_test = _stress_claim(stress_test_id)
    if stress_test is None:
        return None
    logger.info("stress test %s: attempt %s (task %s)", stress_test.pk, stress_test.attempts, task_id or "-")
    lease = sweeps.Heartbeat(
        lambda: sweeps.stress_lease(stress_test.pk, stress_test.attempts), name=f"stress-{stress_test.pk}"
    )
    with lease:
        return _stress_run(stress_test)


def _stress_run(stress_test: StressTest) -> StressTest | None:
    """The body of a claimed stress test, while its heartbeat renews the lease."""
    from verification import runs

    progress = _stress_progress_of(stress_test)
    timings: dict[str, float] = {}
    started = timezone.now()
    try:
        progress(5, "opening your escrowed evidence")
        claims, datasets, records = _stress_evidence(stress_test)
        progress(10, f"loading the reference panel {stress_test.panel}")
        try:
            panel_dir = reference.panel_directory(stress_test.panel)
        except reference.PanelUnavailable as exc:
            raise StressTestFailed(str(exc)) from exc
        timings["prepare_s"] = (timezone.now() - started).total_seconds()
        model = stress_test.model
        spec = {
            "model": {"kind": model.artifact_format, "path": model.artifact.path},
            "num_classes": model.num_classes,
            "input_shape": list(model.input_shape),
            "panel_dir": str(panel_dir),
            "panel_name": stress_test.panel,
            "thefts": list(stress_test.thefts),
            "alpha": stress_test.alpha,
            "seed": stress_test.seed,
            "claims": claims,
            "datasets": datasets,
        }
        progress(CHILD_FROM, "starting the sandbox")
        mark = timezone.now()
        outcome = _stress_in_sandbox(spec, progress)
        timings["sandbox_s"] = (timezone.now() - mark).total_seconds()
        results, child_timings = _checked_stress_outcome(outcome)
        results = _label_stress_evidence(results, records)
    except StressTestFailed as exc:
        timings["total_s"] = (timezone.now() - started).total_seconds()
        _stress_fail(stress_test, str(exc), timings)
        return None
    except runs.TRUST_LAYER_ERRORS as exc:
        logger.error("stress test %s: the trust layer failed: %s", stress_test.pk, exc)
        _stress_fail(stress_test, runs.operator_reason(exc, blocked="stress tests can run"), timings)
        return None
    except Exception:
        logger.exception("stress test %s stopped on an internal error", stress_test.pk)
        _stress_fail(stress_test, "an internal error stopped the stress test; the operators have been told", timings)
        return None
    for key, value in child_timings.items():
        timings[f"child_{key}"] = value
    timings["total_s"] = (timezone.now() - started).total_seconds()
    now = timezone.now()
    sweeps.stress_lease(stress_test.pk, stress_test.attempts).update(
        state=StressTest.State.DONE,
        heartbeat_at=None,
        progress=100,
        phase="done",
        results=results,
        timings=timings,
        finished_at=now,
        updated_at=now,
    )
    stress_test.refresh_from_db()
    return stress_test
