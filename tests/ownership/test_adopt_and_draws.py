"""The verifiable flow's second half (adopt the generated watermark for the embedded model) and draw accounting."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from ownership import services
from ownership.exceptions import DrawLimitError, RegistryError
from ownership.models import RegisteredModel, WatermarkDraw
from ownership.roles import Role, role_grant

pytestmark = pytest.mark.django_db


def _model(owner: Any, name: str, shape: list[int] | None = None) -> RegisteredModel:
    return RegisteredModel.objects.create(
        owner=owner,
        name=name,
        input_shape=shape or [64],
        num_classes=10,
        artifact_format="torchscript",
        artifact_size=1,
        model_digest=uuid.uuid4().hex * 2,
        file_digests={},
        created_at=timezone.now(),
    )


def test_adopting_commits_the_same_watermark_for_the_deployed_model(owner) -> None:  # type: ignore[no-untyped-def]
    base, deployed = _model(owner, "base"), _model(owner, "deployed")
    source, _ = services.evidence_generate(model=base, count=8)
    adopted = services.evidence_adopt(model=deployed, source=source)
    assert adopted.model == deployed
    assert adopted.derived_from == source
    assert adopted.verifiable is True
    assert adopted.evidence_digest == source.evidence_digest
    assert adopted.commitment != source.commitment  # bound to the deployed model's digest, with a fresh salt
    assert services.evidence_open(evidence_set=adopted)["seed"] == services.evidence_open(evidence_set=source)["seed"]
    # adoption is not a draw
    assert WatermarkDraw.objects.filter(owner=owner).count() == 1


def test_adoption_refuses_uploaded_sets_copies_and_other_shapes(owner) -> None:  # type: ignore[no-untyped-def]
    base, deployed, other = _model(owner, "base"), _model(owner, "deployed"), _model(owner, "o", [1, 8, 8])
    source, _ = services.evidence_generate(model=base, count=4)
    adopted = services.evidence_adopt(model=deployed, source=source)
    with pytest.raises(RegistryError, match="already adopted"):
        services.evidence_adopt(model=deployed, source=source)
    with pytest.raises(RegistryError, match="not an adopted copy"):
        services.evidence_adopt(model=other, source=adopted)
    with pytest.raises(RegistryError, match="input shape"):
        services.evidence_adopt(model=other, source=source)
    with pytest.raises(RegistryError, match="already committed"):
        services.evidence_adopt(model=base, source=source)


def test_draws_are_counted_for_everyone_and_survive_deletion(owner) -> None:  # type: ignore[no-untyped-def]
    base = _model(owner, "base")
    for _ in range(3):
        services.evidence_generate(model=base, count=2)
    # another account's draws count too: a claimant may own many accounts (the red team drew 1,482)
    other = get_user_model().objects.create_user("sybil", password="x" * 12)  # type: ignore[attr-defined]
    role_grant(user=other, role=Role.OWNER)
    services.evidence_generate(model=_model(other, "s"), count=2)
    base.delete()
    assert services.watermark_draws_before(moment=timezone.now()) == 4


@override_settings(MODELCOURT_WATERMARK_DRAWS_PER_DAY=2)
def test_draws_are_limited_per_owner(owner) -> None:  # type: ignore[no-untyped-def]
    base = _model(owner, "base")
    services.evidence_generate(model=base, count=2)
    services.evidence_generate(model=base, count=2)
    with pytest.raises(DrawLimitError, match="at most 2"):
        services.evidence_generate(model=base, count=2)


@override_settings(MODELCOURT_WATERMARK_DRAWS_PER_DAY=1)
def test_the_api_answers_429_at_the_draw_limit_and_adopts_by_id(owner) -> None:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(owner)
    base, deployed = _model(owner, "base"), _model(owner, "deployed")
    first = client.post(f"/api/v1/models/{base.public_id}/evidence/generate", {"count": 4}, format="json")
    assert first.status_code == 201, first.content
    again = client.post(f"/api/v1/models/{base.public_id}/evidence/generate", {"count": 4}, format="json")
    assert again.status_code == 429
    assert again.json()["code"] == "draw_limit"
    adopted = client.post(
        f"/api/v1/models/{deployed.public_id}/evidence/adopt", {"source": first.json()["id"]}, format="json"
    )
    assert adopted.status_code == 201, adopted.content
    assert adopted.json()["derived_from"] == first.json()["id"]


def test_nobody_adopts_another_owners_watermark(owner) -> None:  # type: ignore[no-untyped-def]
    source, _ = services.evidence_generate(model=_model(owner, "base"), count=4)
    mallory = get_user_model().objects.create_user("mallory", password="x" * 12)  # type: ignore[attr-defined]
    role_grant(user=mallory, role=Role.OWNER)
    theirs = _model(mallory, "stolen")
    client = APIClient()
    client.force_authenticate(mallory)
    answer = client.post(
        f"/api/v1/models/{theirs.public_id}/evidence/adopt", {"source": str(source.public_id)}, format="json"
    )
    assert answer.status_code == 404
    assert not theirs.evidence_sets.exists()
