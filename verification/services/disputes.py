"""Disputes (filing, queueing, the verification run, the signed verdict, publishing), dispute requests, stress tests."""

import base64
import concurrent.futures
import hashlib
import json
import logging
import math
import os
import socket
import stat
import tempfile
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from ownership import artifacts
from ownership import services as ownership_services
from ownership.evidence import EvidenceRejected, load_evidence
from ownership.exceptions import UploadTooLargeError
from ownership.models import EvidenceSet, RegisteredModel
from timestamps.exceptions import LogIntegrityError
from verification import reference, sweeps
from verification.exceptions import DisputeError, DisputeStateError, RunFailed, StressTestError
from verification.methods import egress
from verification.models import (
    Dispute,
    DisputeRequest,
    StressTest,
    SuspectDescription,
    Verdict,
    VerificationRun,
)
from verification.panel_fit import panel_check

logger = logging.getLogger(__name__)

METHOD_EVIDENCE = {"watermark": "watermark", "fingerprint": "fingerprint", "dataset_inference": "dataset"}
MAX_TITLE = 200
MAX_BUDGET = 10_000_000


def _check_methods(methods: Sequence[str]) -> list[str]:
    chosen = list(dict.fromkeys(methods))
    unknown = [m for m in chosen if m not in METHOD_EVIDENCE]
    if not chosen or unknown:
        raise DisputeError(
            f"methods must be a non-empty list of {', '.join(METHOD_EVIDENCE)}; got {list(methods)}", code="methods"
        )
    return chosen


def _check_public_endpoint(url: str) -> None:
    """Refuse at once an endpoint whose host does not resolve or resolves to a non-public address.

    A courtesy to whoever files: the name may point elsewhere by the time a run queries it, so the worker
    checks the address again at every connection (``verification.methods.egress``). Networks named in
    ``MODELCOURT_ENDPOINT_ALLOW_PRIVATE`` pass here as they do there.
    """
    try:
        egress.check_destination(url)
    except egress.EgressError as exc:
        raise DisputeError(f"{exc.reason}; name a publicly reachable prediction endpoint", code="suspect_url") from exc
    except ValueError as exc:  # the operator's list of allowed networks is malformed
        logger.error("endpoint egress settings are invalid: %s", exc)
        raise DisputeError(
            "endpoints cannot be checked right now: the service's settings are invalid (the operators are told)",
            code="suspect_url",
        ) from exc


def _check_url(url: str) -> str:
    """The endpoint URL, stripped, or DisputeError: http(s), a host, no user name or password, a valid port."""
    url = url.strip()
    try:
        egress.parse_endpoint(url)
    except egress.EgressError as exc:
        if not url.lower().startswith(("http://", "https://")):
            raise DisputeError("the suspect endpoint must be an http:// or https:// URL", code="suspect_url") from exc
        raise DisputeError(exc.reason, code="suspect_url") from exc
    return url


def _check_claim(
    claimant_model: RegisteredModel, methods: Sequence[str], evidence_sets: Sequence[EvidenceSet] | None
) -> tuple[list[str], list[EvidenceSet]]:
    """The requested methods and the claimant's evidence sets they open, or a DisputeError saying what is wrong."""
    chosen = _check_methods(methods)
    sets = list(evidence_sets) if evidence_sets is not None else list(claimant_model.evidence_sets.all())
    if any(s.model_id != claimant_model.pk for s in sets):
        raise DisputeError("every evidence set must belong to the claimant's model", code="evidence_sets")
    kinds = {s.kind for s in sets}
    missing = [m for m in chosen if METHOD_EVIDENCE[m] not in kinds]
    if missing:
        raise DisputeError(
            f"the claimant's registration has no {', '.join(METHOD_EVIDENCE[m] for m in missing)} evidence "
            f"for the requested method(s) {', '.join(missing)}",
            code="evidence_sets",
        )
    if "dataset_inference" in chosen and claimant_model.artifact_format != RegisteredModel.Format.TORCHSCRIPT:
        raise DisputeError(
            "dataset inference needs the claimant's gradients: register the claimant model as TorchScript",
            code="methods",
        )
    return chosen, [s for s in sets if s.kind in {METHOD_EVIDENCE[m] for m in chosen}]


def _describe_suspect(
    target: SuspectDescription,
    *,
    claimant_model: RegisteredModel,
    suspect_file: File | None,
    suspect_registration: RegisteredModel | None,
    suspect_url: str,
    suspect_protocol: str,
    suspect_model_name: str,
    suspect_output: str,
) -> None:
    """Fill ``target``'s suspect fields from exactly one suspect; an uploaded file is format-checked and stored."""
    given = [suspect_file is not None, suspect_registration is not None, bool(suspect_url)]
    if sum(given) != 1:
        raise DisputeError(
            "give exactly one suspect: an uploaded file, a registered model or an endpoint URL", code="suspect"
        )
    if suspect_registration is not None:
        if suspect_registration.pk == claimant_model.pk:
            raise DisputeError("the suspect cannot be the claimant's own registration", code="suspect")
        if suspect_registration.state != RegisteredModel.State.ACTIVE:
            raise DisputeError("the suspect registration has not passed validation (it is not active)", code="suspect")
        target.suspect_kind = Dispute.SuspectKind.REGISTERED
        target.suspect_registration = suspect_registration
        target.suspect_format = suspect_registration.artifact_format
        target.suspect_digest = suspect_registration.model_digest
    elif suspect_url:
        target.suspect_kind = Dispute.SuspectKind.ENDPOINT
        target.suspect_url = _check_url(suspect_url)
        _check_public_endpoint(target.suspect_url)  # arbiters' filings and owners' requests alike
        if suspect_protocol not in Dispute.Protocol.values:
            raise DisputeError("suspect_protocol must be v2 or json", code="suspect_protocol")
        if suspect_protocol == Dispute.Protocol.V2 and not suspect_model_name.strip():
            raise DisputeError("the v2 protocol needs the model's name on the server", code="suspect_model_name")
        if suspect_output not in Dispute.OutputKind.values:
            raise DisputeError("suspect_output must be logits, probabilities or labels", code="suspect_output")
        target.suspect_protocol = suspect_protocol
        target.suspect_model_name = suspect_model_name.strip()
        target.suspect_output = suspect_output
        # an endpoint has no file: its "digest" names the URL, so that the verdict's subject is stable
        target.suspect_digest = hashlib.sha256(target.suspect_url.encode()).hexdigest()
    else:
        assert suspect_file is not None  # noqa: S101 (exactly one suspect was checked above)
        _attach_suspect_file(target, suspect_file)


def _save_described(target: SuspectDescription) -> None:
    """Validate and save; a stored suspect file is removed again when that fails."""
    try:
        target.full_clean(exclude=["suspect_artifact"])
        target.save()
    except Exception:
        if target.suspect_artifact:
            target.suspect_artifact.delete(save=False)
        raise


def _check_title(title: str) -> str:
    title = title.strip()
    if not title or len(title) > MAX_TITLE:
        raise DisputeError(f"title must be 1 to {MAX_TITLE} characters", code="title")
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in title):
        # others read titles in pages, logs and terminals: no control or invisible formatting characters
        raise DisputeError("the title must not contain control or formatting characters", code="title")
    return title


@transaction.atomic
def dispute_file(
    *,
    arbiter: AbstractBaseUser,
    title: str,
    claimant_model: RegisteredModel,
    methods: Sequence[str],
    evidence_sets: Sequence[EvidenceSet] | None = None,
    suspect_file: File | None = None,
    suspect_registration: RegisteredModel | None = None,
    suspect_url: str = "",
    suspect_protocol: str = "json",
    suspect_model_name: str = "",
    suspect_output: str = "logits",
    alpha: float = 1e-3,
    query_budget: int = 100_000,
    panel: str = "digits",
    start: bool = True,
) -> Dispute:
    """File a dispute: the claimant's registration and evidence against exactly one suspect; queue it."""
    title = _check_title(title)
    chosen, sets = _check_claim(claimant_model, methods, evidence_sets)
    if not 0.0 < alpha <= 0.1:
        raise DisputeError("alpha must lie in (0, 0.1]; the default is 0.001", code="alpha")
    if not 1 <= query_budget <= MAX_BUDGET:
        raise DisputeError(f"query_budget must lie between 1 and {MAX_BUDGET}", code="query_budget")
    if panel not in reference.panel_list():
        raise DisputeError(
            f"no reference panel {panel!r}; available: {', '.join(reference.panel_list())}", code="panel"
        )
    panel_check(panel=panel, model=claimant_model)
    now = timezone.now()
    dispute = Dispute(
        arbiter=arbiter,
        title=title,
        claimant_model=claimant_model,
        methods=chosen,
        alpha=alpha,
        query_budget=query_budget,
        panel=panel,
        created_at=now,
        updated_at=now,
    )
    _describe_suspect(
        dispute,
        claimant_model=claimant_model,
        suspect_file=suspect_file,
        suspect_registration=suspect_registration,
        suspect_url=suspect_url,
        suspect_protocol=suspect_protocol,
        suspect_model_name=suspect_model_name,
        suspect_output=suspect_output,
    )
    _save_described(dispute)
    dispute.evidence_sets.set(sets)
    if start:
        dispute = dispute_queue(dispute=dispute)
    return dispute


MAX_STATEMENT = 5000


@transaction.atomic
def dispute_request_create(
    *,
    owner: AbstractBaseUser,
    title: str,
    claimant_model: RegisteredModel,
    methods: Sequence[str],
    statement: str = "",
    evidence_sets: Sequence[EvidenceSet] | None = None,
    suspect_file: File | None = None,
    suspect_registration: RegisteredModel | None = None,
    suspect_url: str = "",
    suspect_protocol: str = "json",
    suspect_model_name: str = "",
    suspect_output: str = "logits",
) -> DisputeRequest:
    """An owner asks the arbiters to file a dispute for one of their registrations against one suspect."""
    if claimant_model.owner_id != owner.pk:
        raise DisputeError("you can only request disputes for your own registered models", code="claimant_model")
    title = _check_title(title)
    statement = statement.strip()
    if len(statement) > MAX_STATEMENT:
        raise DisputeError(f"the statement is limited to {MAX_STATEMENT} characters", code="statement")
    chosen, sets = _check_claim(claimant_model, methods, evidence_sets)
    now = timezone.now()
    request = DisputeRequest(
        owner=owner,
        title=title,
        statement=statement,
        claimant_model=claimant_model,
        methods=chosen,
        created_at=now,
        updated_at=now,
    )
    _describe_suspect(
        request,
        claimant_model=claimant_model,
        suspect_file=suspect_file,
        suspect_registration=suspect_registration,
        suspect_url=suspect_url,
        suspect_protocol=suspect_protocol,
        suspect_model_name=suspect_model_name,
        suspect_output=suspect_output,
    )
    _save_described(request)
    request.evidence_sets.set(sets)
    return request


def _locked_open_request(request: DisputeRequest, action: str) -> DisputeRequest:
    locked = DisputeRequest.objects.select_for_update().get(pk=request.pk)
    if locked.state != DisputeRequest.State.OPEN:
        raise DisputeStateError(f"a {locked.state} request cannot be {action}")
    return locked


@transaction.atomic
def dispute_request_withdraw(*, request: DisputeRequest) -> DisputeRequest:
    """The owner withdraws an open request."""
    request = _locked_open_request(request, "withdrawn")
    request.state = DisputeRequest.State.WITHDRAWN
    request.updated_at = timezone.now()
    request.save(update_fields=["state", "updated_at"])
    return request


@transaction.atomic
def dispute_request_decline(*, request: DisputeRequest, arbiter: AbstractBaseUser, reason: str) -> DisputeRequest:
    """An arbiter declines an open request, with a reason the owner reads."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_STATEMENT:
        raise DisputeError(f"say why the request is declined (1 to {MAX_STATEMENT} characters)", code="reason")
    request = _locked_open_request(request, "declined")
    request.state = DisputeRequest.State.DECLINED
    request.arbiter = arbiter
    request.decision_note = reason
    request.updated_at = timezone.now()
    request.save(update_fields=["state", "arbiter", "decision_note", "updated_at"])
    return request


@transaction.atomic
def dispute_request_accept(
    *,
    request: DisputeRequest,
    arbiter: AbstractBaseUser,
    title: str = "",
    alpha: float = 1e-3,
    query_budget: int = 100_000,
    panel: str = "digits",
    note: str = "",
) -> Dispute:
    """An arbiter takes an open request: a dispute is filed from it (suspect and evidence copied) and queued."""
    request = _locked_open_request(request, "accepted")
    if request.owner_id == arbiter.pk:
        raise DisputeError("an arbiter cannot accept a request they made as an owner", code="arbiter")
    suspect_file: File | None = None
    if request.suspect_kind == Dispute.SuspectKind.ARTIFACT:
        request.suspect_artifact.open("rb")
        suspect_file = File(request.suspect_artifact.file, name=Path(request.suspect_artifact.name).name)
    try:
        dispute = dispute_file(
            arbiter=arbiter,
            title=title or request.title,
            claimant_model=request.claimant_model,
            methods=request.methods,
            evidence_sets=list(request.evidence_sets.all()),
            suspect_file=suspect_file,
            suspect_registration=request.suspect_registration,
            suspect_url=request.suspect_url,
            suspect_protocol=request.suspect_protocol or "json",
            suspect_model_name=request.suspect_model_name,
            suspect_output=request.suspect_output,
            alpha=alpha,
            query_budget=query_budget,
            panel=panel,
        )
    finally:
        if suspect_file is not None:
            request.suspect_artifact.close()
    request.state = DisputeRequest.State.ACCEPTED
    request.arbiter = arbiter
    request.dispute = dispute
    request.decision_note = note.strip()[:MAX_STATEMENT]
    request.updated_at = timezone.now()
    request.save(update_fields=["state", "arbiter", "dispute", "decision_note", "updated_at"])
    return dispute


def _attach_suspect_file(target: SuspectDescription, upload: File) -> None:
    """Store an uploaded suspect after the cheap checks only (size, first bytes); the run loads it in the sandbox."""
    if not upload.size:
        raise DisputeError("the suspect file is empty", code="suspect_file")
    if upload.size > settings.MODELCOURT_MAX_ARTIFACT_BYTES:
        raise UploadTooLargeError(
            f"the suspect is {upload.size} bytes; the limit is {settings.MODELCOURT_MAX_ARTIFACT_BYTES}"
        )
    filename = Path(upload.name or "suspect").name or "suspect"
    upload.seek(0)
    head = upload.read(8)
    upload.seek(0)
    try:
        # magic bytes only: loading a model may take longer than a web request may live
        form = ownership_services.artifact_sniff(head)
    except artifacts.ArtifactRejected as exc:
        raise DisputeError(f"the suspect file was refused: {exc.reason}", code="suspect_file") from None
    target.suspect_kind = Dispute.SuspectKind.ARTIFACT
    target.suspect_format = form
    target.suspect_artifact.save(filename, upload, save=False)
    try:
        target.suspect_digest = artifacts.model_digest({filename: artifacts.file_digest(target.suspect_artifact.path)})
    except OSError:
        target.suspect_artifact.delete(save=False)
        raise


def _set_state(dispute: Dispute, state: str, **fields: Any) -> None:
    dispute.state = state
    dispute.updated_at = timezone.now()
    for name, value in fields.items():
        setattr(dispute, name, value)
    dispute.save(update_fields=["state", "updated_at", *fields])


@transaction.atomic
def dispute_queue(*, dispute: Dispute) -> Dispute:
    """Queue a filed (or failed) dispute for a verification run on the gpu queue."""
    dispute = Dispute.objects.select_for_update().get(pk=dispute.pk)
    if dispute.state not in (Dispute.State.FILED, Dispute.State.FAILED):
        raise DisputeStateError(f"a {dispute.state} dispute cannot be queued")
    panel_check(panel=dispute.panel, model=dispute.claimant_model)  # a retry that cannot help is refused
    _set_state(
        dispute,
        Dispute.State.QUEUED,
        progress=0,
        phase="waiting for a GPU worker",
        failure_reason="",
        attempts=0,
        heartbeat_at=None,
        dispatched_at=None,
    )
    # the row is the outbox entry: if the broker refuses the message, the sweep sends it later
    sweeps.dispatch_on_commit("dispute", dispute.pk)
    return dispute


@transaction.atomic
def dispute_withdraw(*, dispute: Dispute) -> Dispute:
    """Withdraw a dispute that has no verdict yet."""
    dispute = Dispute.objects.select_for_update().get(pk=dispute.pk)
    if dispute.state in (Dispute.State.DECIDED, Dispute.State.PUBLISHED, Dispute.State.WITHDRAWN):
        raise DisputeStateError(f"a {dispute.state} dispute cannot be withdrawn")
    _set_state(dispute, Dispute.State.WITHDRAWN, phase="withdrawn")
    return dispute


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


def _progress(dispute_id: int, percent: int, phase: str) -> None:
    Dispute.objects.filter(pk=dispute_id, state=Dispute.State.RUNNING).update(
        progress=percent, phase=phase, updated_at=timezone.now()
    )


def _claim_run(dispute_id: int, task_id: str) -> VerificationRun | None:
    """Move a queued dispute to running under a new attempt and lease, or None when there is nothing to do.

    A second message for the same dispute (the outbox re-sends, the broker redelivers) finds it decided,
    or running under a live lease, and does nothing. One running under a stale lease lost its worker:
    that attempt is abandoned and this one takes over, or the run fails once the attempts are spent.
    """
    now = timezone.now()
    with transaction.atomic():
        dispute = Dispute.objects.select_for_update().filter(pk=dispute_id).first()
        if dispute is None:
            return None
        takeover = dispute.state == Dispute.State.RUNNING and sweeps.is_stale(dispute.heartbeat_at, now)
        if dispute.state != Dispute.State.QUEUED and not takeover:
            return None
        sweeps.abandon_runs(dispute, now)
        if dispute.attempts >= sweeps.max_attempts():
            reason = sweeps.DISPUTE_WORKERS_LOST.format(n=dispute.attempts)
            logger.error("dispute %s: %s", dispute.pk, reason)
            _set_state(dispute, Dispute.State.FAILED, failure_reason=reason, phase="failed", heartbeat_at=None)
            return None
        previous = dispute.runs.order_by("-attempt").values_list("attempt", flat=True).first()
        attempts = dispute.attempts + 1
        _set_state(dispute, Dispute.State.RUNNING, progress=2, phase="starting", attempts=attempts, heartbeat_at=now)
        return VerificationRun.objects.create(
            dispute=dispute,
            attempt=(previous or 0) + 1,
            task_id=task_id[:100],
            worker=socket.gethostname()[:200],
            started_at=now,
        )


def verification_run_execute(*, dispute_id: int, task_id: str = "") -> Verdict | None:
    """Run a queued dispute to its verdict. Safe to call twice: the second call finds nothing to do.

    The attempt renews its lease while it works; an attempt whose lease passed to another records
    nothing. A failure of the service's own trust layer fails the run for the operators, unsigned.
    """
    queued_at = Dispute.objects.filter(pk=dispute_id).values_list("updated_at", flat=True).first()
    run = _claim_run(dispute_id, task_id)
    if run is None:
        return None
    dispute = run.dispute
    timings: dict[str, float] = {}
    if queued_at is not None:
        timings["queue_wait_s"] = (run.started_at - queued_at).total_seconds()
    from verification import runs

    with sweeps.Heartbeat(lambda: sweeps.dispute_lease(dispute.pk, run.pk), name=f"dispute-{dispute.pk}") as beat:

        def progress(pk: int, percent: int, phase: str) -> None:
            if not beat.lost:  # an abandoned attempt must not move the new attempt's progress bar
                _progress(pk, percent, phase)

        try:
            return runs.run_to_verdict(dispute=dispute, run=run, timings=timings, progress=progress)
        except runs.TRUST_LAYER_ERRORS as exc:
            logger.error("dispute %s: the trust layer failed during run %s: %s", dispute.pk, run.attempt, exc)
            _fail(dispute, run, runs.operator_reason(exc), timings)
        except RunFailed as exc:
            _fail(dispute, run, str(exc), timings)
        except Exception:
            logger.exception("dispute %s: run %s stopped on an internal error", dispute.pk, run.attempt)
            _fail(dispute, run, "an internal error stopped the run; the operators have been told", timings)
    return None


def _holds_lease(dispute_id: int, run_id: int) -> bool:
    """Lock the dispute (inside the caller's transaction) and say whether `run_id` still holds it."""
    Dispute.objects.select_for_update().filter(pk=dispute_id).values_list("pk", flat=True).first()
    return sweeps.dispute_lease(dispute_id, run_id).exists()


def _fail(dispute: Dispute, run: VerificationRun, reason: str, timings: dict[str, float]) -> None:
    """Close the attempt and fail the dispute, if this attempt still holds it."""
    with transaction.atomic():
        # the dispute row is locked first, as claims and the sweep do
        if not _holds_lease(dispute.pk, run.pk):
            logger.info("dispute %s: attempt %s lost its lease; its failure is not recorded", dispute.pk, run.attempt)
            return
        VerificationRun.objects.filter(pk=run.pk, state=VerificationRun.State.RUNNING).update(
            state=VerificationRun.State.FAILED, error=reason[:4000], timings=timings, finished_at=timezone.now()
        )
        Dispute.objects.filter(pk=dispute.pk, state=Dispute.State.RUNNING).update(
            state=Dispute.State.FAILED,
            failure_reason=reason[:4000],
            phase="failed",
            heartbeat_at=None,
            updated_at=timezone.now(),
        )


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


# --- stress tests: an owner steals their own model several ways and sees which evidence survives ---------
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
    sets = list(evidence_sets) if evidence_sets is not None else list(model.evidence_sets.all())
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
    sweeps.dispatch_on_commit("stress_test", stress_test.pk)
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
