"""Precedence: the suspect's first known time from every record we hold, and each evidence set judged alone."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from ownership import services as ownership_services
from ownership.models import EvidenceSet, RegisteredModel
from timestamps import dbtriggers
from timestamps import services as timestamp_services
from timestamps.models import TimestampToken
from verification import precedence
from verification.models import Dispute, Sighting

from .conftest import PANEL, bare_model

pytestmark = pytest.mark.django_db

DIGEST = "ab" * 32


def _evidence(model: RegisteredModel) -> EvidenceSet:
    rng = np.random.default_rng(0)
    arrays = {"inputs": rng.random((5, 64), dtype=np.float32), "labels": rng.integers(0, 10, 5)}
    return ownership_services.evidence_commit(model=model, kind="fingerprint", arrays=arrays)


def _dispute(arbiter, claimant: RegisteredModel, **fields) -> Dispute:  # type: ignore[no-untyped-def]
    now = timezone.now()
    values = {
        "suspect_kind": Dispute.SuspectKind.ARTIFACT,
        "suspect_format": "torchscript",
        "suspect_digest": DIGEST,
        **fields,
    }
    return Dispute.objects.create(
        arbiter=arbiter,
        title="t",
        claimant_model=claimant,
        methods=["fingerprint"],
        panel=PANEL,
        created_at=now,
        updated_at=now,
        **values,
    )


def _registration_of(digest: str, owner) -> RegisteredModel:  # type: ignore[no-untyped-def]
    model = bare_model(owner, "someone else's")
    model.model_digest = digest
    model.digest_token = timestamp_services.timestamp_digest(digest=bytes.fromhex(digest))
    model.save()
    return model


def _backdate(token: TimestampToken, seconds: float) -> None:
    """Move a token back in time (the TSA never would: the comparison is what is under test)."""
    dbtriggers.uninstall(connection)
    try:
        token.gen_time = token.gen_time - timedelta(seconds=seconds)
        token.save(update_fields=["gen_time"])
    finally:
        dbtriggers.install(connection)


def _late(token_owner: EvidenceSet, seconds: float) -> None:
    _backdate(token_owner.timestamp_token, seconds)


def test_evidence_committed_before_the_filing_precedes_an_unknown_upload(owner, arbiter) -> None:  # type: ignore[no-untyped-def]
    claimant = bare_model(owner, "claimant")
    evidence = _evidence(claimant)
    _late(evidence, 60)
    dispute = _dispute(arbiter, claimant)
    known = precedence.suspect_first_known(dispute=dispute)
    assert [m.kind for m in known] == ["filing"]
    verdict = precedence.evidence_precedence(evidence_set=evidence, first_known=known)
    assert verdict.precedes is True


def test_a_tie_within_the_tokens_accuracy_goes_against_the_claimant(owner, arbiter) -> None:  # type: ignore[no-untyped-def]
    claimant = bare_model(owner, "claimant")
    evidence = _evidence(claimant)
    dispute = _dispute(arbiter, claimant)  # filed in the same second the evidence was stamped
    result = precedence.evidence_precedence(
        evidence_set=evidence, first_known=precedence.suspect_first_known(dispute=dispute)
    )
    assert result.precedes is False
    assert "not before" in result.detail


def test_an_uploaded_file_registered_earlier_by_someone_else_is_matched_by_digest(owner, arbiter) -> None:  # type: ignore[no-untyped-def]
    other = get_user_model().objects.create_user("mallory-victim", password="x" * 12)  # type: ignore[attr-defined]
    earlier = _registration_of(DIGEST, other)
    assert earlier.digest_token is not None
    _backdate(earlier.digest_token, 2 * 86400)
    claimant = bare_model(owner, "claimant")
    evidence = _evidence(claimant)
    _late(evidence, 3600)  # an hour before filing, but a day after the suspect was registered
    dispute = _dispute(arbiter, claimant)
    known = precedence.suspect_first_known(dispute=dispute)
    assert known[0].kind == "registration"
    result = precedence.evidence_precedence(evidence_set=evidence, first_known=known)
    assert result.precedes is False
    assert str(earlier.public_id) in result.detail


def test_the_claimants_own_registration_of_the_bytes_does_not_count_against_it(owner, arbiter) -> None:  # type: ignore[no-untyped-def]
    _registration_of(DIGEST, owner)
    claimant = bare_model(owner, "claimant")
    dispute = _dispute(arbiter, claimant)
    assert [m.kind for m in precedence.suspect_first_known(dispute=dispute)] == ["filing"]


def test_a_sighting_and_a_release_time_count_as_first_known(owner, arbiter) -> None:  # type: ignore[no-untyped-def]
    token = timestamp_services.timestamp_digest(digest=bytes.fromhex(DIGEST))
    _backdate(token, 5 * 3600)
    Sighting.objects.create(
        recorded_by=owner,
        model_digest=DIGEST,
        file_format="torchscript",
        timestamp_token=token,
        created_at=timezone.now(),
    )
    claimant = bare_model(owner, "claimant")
    evidence = _evidence(claimant)
    _late(evidence, 3600)
    released = timezone.now() - timedelta(days=3)
    dispute = _dispute(arbiter, claimant, suspect_released_at=released, suspect_release_source="press release")
    known = precedence.suspect_first_known(dispute=dispute)
    assert [m.kind for m in known] == ["release", "sighting", "filing"]
    assert "press release" in known[0].source
    assert precedence.evidence_precedence(evidence_set=evidence, first_known=known).precedes is False


def test_each_set_is_judged_alone(owner, arbiter) -> None:  # type: ignore[no-untyped-def]
    claimant = bare_model(owner, "claimant")
    early, late = _evidence(claimant), _evidence(claimant)
    _late(early, 7200)
    dispute = _dispute(
        arbiter, claimant, suspect_released_at=timezone.now() - timedelta(hours=1), suspect_release_source="x"
    )
    known = precedence.suspect_first_known(dispute=dispute)
    assert precedence.evidence_precedence(evidence_set=early, first_known=known).precedes is True
    assert precedence.evidence_precedence(evidence_set=late, first_known=known).precedes is False


def test_an_adopted_watermark_counts_from_its_generation(owner, arbiter, data_dir) -> None:  # type: ignore[no-untyped-def]
    base = bare_model(owner, "base")
    source, _ = ownership_services.evidence_generate(model=base, count=5)
    _late(source, 7200)
    deployed = bare_model(owner, "deployed")
    adopted = ownership_services.evidence_adopt(model=deployed, source=source)
    assert adopted.derived_from == source
    assert adopted.verifiable is True
    dispute = _dispute(
        arbiter, deployed, suspect_released_at=timezone.now() - timedelta(hours=1), suspect_release_source="x"
    )
    result = precedence.evidence_precedence(
        evidence_set=adopted, first_known=precedence.suspect_first_known(dispute=dispute)
    )
    assert result.precedes is True


def test_a_registration_records_its_answers_to_the_registry_probes(owner, digits_models, data_dir) -> None:  # type: ignore[no-untyped-def]
    from .conftest import upload

    model = ownership_services.model_register(
        owner=owner,
        name="digits",
        task="digits",
        input_shape=[64],
        num_classes=10,
        artifact=upload("digits.pt", digits_models.base),
    )
    assert len(model.probe_labels) == 128
    assert all(0 <= v < 10 for v in model.probe_labels)


def test_a_suspect_behaving_as_an_earlier_registration_is_first_known_there(owner, arbiter) -> None:  # type: ignore[no-untyped-def]
    """A renamed archive or a re-export has other bytes: its answers to the registry probes give it away."""
    other = get_user_model().objects.create_user("victim", password="x" * 12)  # type: ignore[attr-defined]
    victim = _registration_of("cd" * 32, other)
    rng = np.random.default_rng(1)
    victim.probe_labels = [int(v) for v in rng.integers(0, 10, 128)]
    victim.save(update_fields=["probe_labels"])
    claimant = bare_model(owner, "claimant")
    dispute = _dispute(arbiter, claimant)  # the uploaded suspect's digest matches nothing
    same = precedence.behaviour_first_known(dispute=dispute, labels=list(victim.probe_labels))
    assert [m.kind for m in same] == ["registration"]
    assert str(victim.public_id) in same[0].source
    # an independent model answers differently on most probes: no match
    different = [int(v) for v in rng.integers(0, 10, 128)]
    assert precedence.behaviour_first_known(dispute=dispute, labels=different) == []
    # the claimant's own registrations never count against it
    mine = _registration_of("ef" * 32, owner)
    mine.probe_labels = different
    mine.save(update_fields=["probe_labels"])
    assert precedence.behaviour_first_known(dispute=dispute, labels=different) == []
    # malformed answers from the sandbox are ignored
    assert precedence.behaviour_first_known(dispute=dispute, labels=["x"] * 128) == []
