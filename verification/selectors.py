"""Reads of disputes and verdicts. Arbiters see their own disputes; anyone sees published verdicts."""

import uuid

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from ownership.models import RegisteredModel
from verification.exceptions import DisputeNotFoundError
from verification.models import Dispute, Verdict


def dispute_list(*, arbiter: AbstractBaseUser) -> QuerySet[Dispute]:
    """The arbiter's disputes, newest first."""
    return Dispute.objects.filter(arbiter=arbiter).select_related("claimant_model", "verdict")


def dispute_get(*, arbiter: AbstractBaseUser, public_id: uuid.UUID | str) -> Dispute:
    """One of the arbiter's disputes."""
    dispute = dispute_list(arbiter=arbiter).filter(public_id=public_id).first()
    if dispute is None:
        raise DisputeNotFoundError("no such dispute among yours")
    return dispute


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
