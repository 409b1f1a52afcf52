"""Reads of disputes, dispute requests, stress tests and verdicts.

Arbiters see their own disputes and every open request; owners see their own requests and stress tests;
anyone sees published verdicts.
"""

import uuid
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Case, Q, QuerySet, When

from ownership.models import RegisteredModel
from verification.exceptions import DisputeNotFoundError, StressTestNotFoundError
from verification.models import Dispute, DisputeRequest, StressTest, Verdict


def dispute_list(*, arbiter: AbstractBaseUser) -> QuerySet[Dispute]:
    """The arbiter's disputes, newest first."""
    return Dispute.objects.filter(arbiter=arbiter).select_related("claimant_model", "verdict")


def dispute_get(*, arbiter: AbstractBaseUser, public_id: uuid.UUID | str) -> Dispute:
    """One of the arbiter's disputes."""
    dispute = dispute_list(arbiter=arbiter).filter(public_id=public_id).first()
    if dispute is None:
        raise DisputeNotFoundError("no such dispute among yours")
    return dispute


def registration_list(*, owner: AbstractBaseUser | None = None) -> QuerySet[RegisteredModel]:
    """Active registered models by name (an owner's own when ``owner`` is given): claimants and registered suspects."""
    models = (
        RegisteredModel.objects.filter(state=RegisteredModel.State.ACTIVE)
        .select_related("owner")
        .order_by("name", "created_at", "id")
    )
    return models.filter(owner=owner) if owner is not None else models


def registration_get(*, public_id: uuid.UUID | str) -> RegisteredModel:
    """Any registered model, by public id: arbiters name claimants and registered suspects this way."""
    model = RegisteredModel.objects.filter(public_id=public_id).first()
    if model is None:
        raise DisputeNotFoundError(f"no registered model {public_id}")
    return model


def verdict_get(*, public_id: uuid.UUID | str, user: AbstractBaseUser | AnonymousUser | None = None) -> Verdict:
    """A verdict: published ones for anyone, unpublished ones for the arbiter who holds the dispute."""
    verdict = Verdict.objects.select_related("dispute", "timestamp_token").filter(public_id=public_id).first()
    if verdict is None:
        raise DisputeNotFoundError("no such verdict")
    if verdict.published_at is None and (
        user is None or not user.is_authenticated or verdict.dispute.arbiter_id != user.pk
    ):
        raise DisputeNotFoundError("no such verdict")
    return verdict


def dispute_request_list(*, owner: AbstractBaseUser) -> QuerySet[DisputeRequest]:
    """The owner's dispute requests, newest first."""
    return DisputeRequest.objects.filter(owner=owner).select_related("claimant_model", "dispute", "dispute__verdict")


def dispute_request_get(*, owner: AbstractBaseUser, public_id: uuid.UUID | str) -> DisputeRequest:
    """One of the owner's dispute requests."""
    found = dispute_request_list(owner=owner).filter(public_id=public_id).first()
    if found is None:
        raise DisputeNotFoundError("no such dispute request among yours")
    return found


def dispute_request_inbox(*, arbiter: AbstractBaseUser) -> QuerySet[DisputeRequest]:
    """What arbiters see: every open request (oldest first, the queue), then those this arbiter handled."""
    return (
        DisputeRequest.objects.filter(Q(state=DisputeRequest.State.OPEN) | Q(arbiter=arbiter))
        .exclude(owner=arbiter)
        .select_related("claimant_model", "owner", "dispute")
        .order_by(Case(When(state=DisputeRequest.State.OPEN, then=0), default=1), "created_at", "id")
    )


def dispute_request_for_arbiter(*, arbiter: AbstractBaseUser, public_id: uuid.UUID | str) -> DisputeRequest:
    """A request an arbiter may see: open, or handled by them."""
    found = dispute_request_inbox(arbiter=arbiter).filter(public_id=public_id).first()
    if found is None:
        raise DisputeNotFoundError("no such open dispute request")
    return found


def stress_test_list(*, owner: AbstractBaseUser) -> QuerySet[StressTest]:
    """The owner's stress tests, newest first."""
    return StressTest.objects.filter(owner=owner).select_related("model")


def stress_test_get(*, owner: AbstractBaseUser, public_id: uuid.UUID | str) -> StressTest:
    """One of the owner's stress tests; anyone else's is not found."""
    found = stress_test_list(owner=owner).filter(public_id=public_id).first()
    if found is None:
        raise StressTestNotFoundError("no such stress test among yours")
    return found


def model_cases(*, model: RegisteredModel) -> dict[str, list[Any]]:
    """What concerns one registration, for its owner's page: published verdicts naming it, and their own requests.

    A verdict concerns the model when it is the claimant, the registered suspect, or an uploaded suspect with the
    same digest; only published verdicts are listed (anyone may read those), newest first.
    """
    verdicts = (
        Verdict.objects.filter(published_at__isnull=False)
        .filter(
            Q(dispute__claimant_model=model)
            | Q(dispute__suspect_registration=model)
            | Q(dispute__suspect_digest=model.model_digest)
        )
        .select_related("dispute", "dispute__claimant_model")
        .order_by("-published_at", "-id")[:50]
    )
    rows = [
        {
            "verdict": verdict,
            "role": "claimant" if verdict.dispute.claimant_model_id == model.pk else "suspect",
        }
        for verdict in verdicts
    ]
    requests = list(
        DisputeRequest.objects.filter(claimant_model=model, owner=model.owner).order_by("-created_at", "-id")[:50]
    )
    return {"verdicts": rows, "requests": requests}
