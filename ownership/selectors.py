"""Reads of the registry. Owners only ever see their own models: others get a 404, not a 403."""

import re
import uuid

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet

from ownership.exceptions import RegistryNotFoundError
from ownership.models import EvidenceSet, RegisteredModel

HEX64 = re.compile(r"[0-9a-f]{64}")


def model_list(*, owner: AbstractBaseUser) -> QuerySet[RegisteredModel]:
    """The owner's models, newest first, with their evidence counts."""
    return RegisteredModel.objects.filter(owner=owner).annotate(evidence_count=Count("evidence_sets"))


def model_get(*, owner: AbstractBaseUser, public_id: uuid.UUID | str) -> RegisteredModel:
    """One of the owner's models."""
    model = RegisteredModel.objects.filter(owner=owner, public_id=public_id).first()
    if model is None:
        raise RegistryNotFoundError("no such model among yours")
    return model


def evidence_list(*, model: RegisteredModel) -> QuerySet[EvidenceSet]:
    """A model's evidence sets, newest first."""
    return model.evidence_sets.select_related("timestamp_token").all()


def evidence_get(*, model: RegisteredModel, public_id: uuid.UUID | str) -> EvidenceSet:
    """One evidence set of a model."""
    evidence_set = model.evidence_sets.filter(public_id=public_id).first()
    if evidence_set is None:
        raise RegistryNotFoundError("no such evidence set for this model")
    return evidence_set


def evidence_of_owner(*, owner: AbstractBaseUser, public_id: uuid.UUID | str) -> EvidenceSet:
    """One evidence set of any of the owner's models (another owner's sets do not exist for this caller)."""
    evidence_set = EvidenceSet.objects.select_related("model").filter(model__owner=owner, public_id=public_id).first()
    if evidence_set is None:
        raise RegistryNotFoundError("no such evidence set among your models")
    return evidence_set


def evidence_by_commitment(*, commitment: str) -> EvidenceSet:
    """The evidence set behind a public commitment."""
    if not HEX64.fullmatch(commitment):
        raise RegistryNotFoundError("a commitment is 64 lowercase hex digits")
    evidence_set = (
        EvidenceSet.objects.select_related("model", "timestamp_token", "timestamp_token__key")
        .filter(commitment=commitment)
        .first()
    )
    if evidence_set is None:
        raise RegistryNotFoundError("no receipt for this commitment")
    return evidence_set
