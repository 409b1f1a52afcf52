"""Disputes: filing one (the claimant's registration and evidence against one suspect), queueing, withdrawing,
and the verification run (its claim, lease and failure); the filing checks that dispute requests share."""

import hashlib
import logging
import re
import socket
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.db import transaction
from django.utils import timezone

from ownership import artifacts
from ownership import services as ownership_services
from ownership.exceptions import UploadTooLargeError
from ownership.models import EvidenceSet, RegisteredModel
from ownership.text import has_hidden_characters
from verification import reference, sweeps
from verification.exceptions import DisputeError, DisputeStateError, RunFailed
from verification.methods import egress
from verification.models import Dispute, SuspectDescription, Verdict, VerificationRun
from verification.panel_fit import panel_check

# verdicts is the lowest service module (verification.runs imports it): the dispute row's helpers live there
from verification.services.verdicts import _holds_lease, _set_state
from verification.tasks import enqueue_on_commit

logger = logging.getLogger(__name__)

METHOD_EVIDENCE = {
    "watermark": "watermark",
    "fingerprint": "fingerprint",
    "dataset_inference": "dataset",
    "api_watermark": "api_watermark",
}
_CLIENT_TAG = re.compile(r"[0-9a-f]{32}")
MAX_RELEASE_SOURCE = 300
MAX_EVIDENCE_SETS = 800  # below the bundle verifier's bound on claims (900), with room for its other files
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


def check_public_endpoint(url: str, *, field: str = "suspect_url") -> None:
    """Refuse at once an endpoint whose host does not resolve or resolves to a non-public address.

    A courtesy to whoever files: the name may point elsewhere by the time a run queries it, so the worker
    checks the address again at every connection (``verification.methods.egress``). Networks named in
    ``MODELCOURT_ENDPOINT_ALLOW_PRIVATE`` pass here as they do there.
    """
    try:
        egress.check_destination(url)
    except egress.EgressError as exc:
        raise DisputeError(f"{exc.reason}; name a publicly reachable prediction endpoint", code=field) from exc
    except ValueError as exc:  # the operator's list of allowed networks is malformed
        logger.error("endpoint egress settings are invalid: %s", exc)
        raise DisputeError(
            "endpoints cannot be checked right now: the service's settings are invalid (the operators are told)",
            code=field,
        ) from exc


def check_url(url: str, *, field: str = "suspect_url") -> str:
    """The endpoint URL, stripped, or DisputeError: http(s), a host, no user name or password, a valid port."""
    url = url.strip()
    try:
        egress.parse_endpoint(url)
    except egress.EgressError as exc:
        if not url.lower().startswith(("http://", "https://")):
            raise DisputeError("the endpoint must be an http:// or https:// URL", code=field) from exc
        raise DisputeError(exc.reason, code=field) from exc
    return url


def _check_claim(
    claimant_model: RegisteredModel, methods: Sequence[str], evidence_sets: Sequence[EvidenceSet] | None
) -> tuple[list[str], list[EvidenceSet]]:
    """The requested methods and the claimant's evidence sets they open, or a DisputeError saying what is wrong."""
    chosen = _check_methods(methods)
    sets = list(evidence_sets) if evidence_sets is not None else list(claimant_model.evidence_sets.all())
    if any(s.model_id != claimant_model.pk for s in sets):
        raise DisputeError("every evidence set must belong to the claimant's model", code="evidence_sets")
    if "api_watermark" in chosen:
        # the claim opens every batch the guard committed: a claimant who could pick batches after seeing the
        # suspect would pick the ones it happens to match (one client may be named, and that is paid for)
        batches = list(claimant_model.evidence_sets.filter(kind=EvidenceSet.Kind.API_WATERMARK).order_by("id"))
        named = {s.pk for s in sets if s.kind == EvidenceSet.Kind.API_WATERMARK}
        if evidence_sets is not None and named and named != {b.pk for b in batches}:
            raise DisputeError(
                "api_watermark opens every guard batch of the claimant's model, so a claim cannot pick batches: "
                "leave the guard's batches out of evidence_sets (name a client with api_client instead)",
                code="evidence_sets",
            )
        sets = [s for s in sets if s.kind != EvidenceSet.Kind.API_WATERMARK] + batches
    chosen_sets = [s for s in sets if s.kind in {METHOD_EVIDENCE[m] for m in chosen}]
    if len(chosen_sets) > MAX_EVIDENCE_SETS:
        # every set's receipt travels in the verdict's bundle, which verifiers accept up to a bound
        raise DisputeError(
            f"a dispute opens at most {MAX_EVIDENCE_SETS} evidence sets; {len(chosen_sets)} were chosen (name the "
            "sets, e.g. the guard batches that cover the suspected client's period, or commit larger batches)",
            code="evidence_sets",
        )
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
        target.suspect_url = check_url(suspect_url)
        check_public_endpoint(target.suspect_url)  # arbiters' filings and owners' requests alike
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
    if has_hidden_characters(title):
        # others read titles in pages, logs and terminals: no control or invisible formatting characters
        raise DisputeError("the title must not contain control or formatting characters", code="title")
    return title


def check_api_client(api_client: str, methods: Sequence[str], sets: Sequence[EvidenceSet]) -> str:
    """A guard's client tag (32 lowercase hex digits) that narrows api_watermark evidence, or empty for all.

    The tag must appear in one of the chosen guard batches: a claim over a client with no journaled answer
    could only ever be inconclusive.
    """
    api_client = api_client.strip().lower()
    if not api_client:
        return ""
    if not _CLIENT_TAG.fullmatch(api_client):
        raise DisputeError("api_client must be a guard's client tag: 32 hexadecimal digits", code="api_client")
    if "api_watermark" not in methods:
        raise DisputeError("api_client narrows api_watermark evidence: request that method too", code="api_client")
    batches = [s for s in sets if s.kind == EvidenceSet.Kind.API_WATERMARK]
    if not any(api_client in (s.journal or {}).get("clients", []) for s in batches):
        raise DisputeError("none of the chosen guard batches holds an answer served to that client", code="api_client")
    return api_client


def _check_release(released_at: datetime | None, source: str) -> tuple[datetime | None, str]:
    """A release time needs its source, lies in the past and is aware; a source alone means nothing."""
    source = source.strip()
    if released_at is None:
        if source:
            raise DisputeError("a release source was given without a release time", code="suspect_released_at")
        return None, ""
    if timezone.is_naive(released_at):
        raise DisputeError("the release time needs a time zone (e.g. 2026-05-01T12:00:00Z)", code="suspect_released_at")
    if released_at > timezone.now():
        raise DisputeError("the release time lies in the future", code="suspect_released_at")
    if released_at.year < 1990:
        raise DisputeError("the release time lies before 1990; check the date", code="suspect_released_at")
    if not source or len(source) > MAX_RELEASE_SOURCE:
        raise DisputeError(
            f"a release time needs its source (1 to {MAX_RELEASE_SOURCE} characters: a URL or a document)",
            code="suspect_release_source",
        )
    if has_hidden_characters(source):
        raise DisputeError(
            "the release source must not contain control or formatting characters", code="suspect_release_source"
        )
    return released_at, source


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
    suspect_released_at: datetime | None = None,
    suspect_release_source: str = "",
    api_client: str = "",
    start: bool = True,
) -> Dispute:
    """File a dispute: the claimant's registration and evidence against exactly one suspect; queue it.

    ``suspect_released_at`` (with its ``suspect_release_source``) is a release time the arbiter knows of:
    it counts as a first known time of the suspect (verification.precedence) and is signed into the verdict.
    """
    title = _check_title(title)
    released_at, release_source = _check_release(suspect_released_at, suspect_release_source)
    chosen, sets = _check_claim(claimant_model, methods, evidence_sets)
    api_client = check_api_client(api_client, chosen, sets)
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
        suspect_released_at=released_at,
        suspect_release_source=release_source,
        api_client=api_client,
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
    enqueue_on_commit("dispute", dispute.pk)
    return dispute


@transaction.atomic
def dispute_withdraw(*, dispute: Dispute) -> Dispute:
    """Withdraw a dispute that has no verdict yet."""
    dispute = Dispute.objects.select_for_update().get(pk=dispute.pk)
    if dispute.state in (Dispute.State.DECIDED, Dispute.State.PUBLISHED, Dispute.State.WITHDRAWN):
        raise DisputeStateError(f"a {dispute.state} dispute cannot be withdrawn")
    _set_state(dispute, Dispute.State.WITHDRAWN, phase="withdrawn")
    return dispute


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
