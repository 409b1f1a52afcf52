"""Dispute requests: an owner asks the arbiters for a dispute; an arbiter accepts (files it) or declines."""

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.db import transaction
from django.utils import timezone

from ownership.models import EvidenceSet, RegisteredModel
from verification.exceptions import DisputeError, DisputeStateError
from verification.models import Dispute, DisputeRequest
from verification.services.disputes import (
    _check_claim,
    _check_title,
    _describe_suspect,
    _save_described,
    check_api_client,
    dispute_file,
)

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
    api_client: str = "",
) -> DisputeRequest:
    """An owner asks the arbiters to file a dispute for one of their registrations against one suspect."""
    if claimant_model.owner_id != owner.pk:
        raise DisputeError("you can only request disputes for your own registered models", code="claimant_model")
    title = _check_title(title)
    statement = statement.strip()
    if len(statement) > MAX_STATEMENT:
        raise DisputeError(f"the statement is limited to {MAX_STATEMENT} characters", code="statement")
    chosen, sets = _check_claim(claimant_model, methods, evidence_sets)
    api_client = check_api_client(api_client, chosen, sets)
    now = timezone.now()
    request = DisputeRequest(
        owner=owner,
        title=title,
        statement=statement,
        claimant_model=claimant_model,
        methods=chosen,
        api_client=api_client,
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
    suspect_released_at: datetime | None = None,
    suspect_release_source: str = "",
) -> Dispute:
    """An arbiter takes an open request: a dispute is filed from it (suspect and evidence copied) and queued.

    The arbiter may add a release time of the suspect, with its source (see ``dispute_file``).
    """
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
            suspect_released_at=suspect_released_at,
            suspect_release_source=suspect_release_source,
            api_client=request.api_client,
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
