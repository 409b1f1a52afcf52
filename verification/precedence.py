"""Precedence: did the claimant's evidence exist before the suspect did?

Evidence the claimant could choose (uploaded watermark or fingerprint inputs, dataset samples) can be
crafted on the suspect itself once the suspect is out: adversarial examples the suspect labels its own
way, natural inputs on which it disagrees with other models. Such evidence proves nothing unless it was
committed before the claimant could have seen the suspect. So each set's commitment time is compared
with the suspect's **first known time**, the earliest of:

- the dispute's filing (the suspect existed when the arbiter filed it);
- a registration of the suspect's digest by anyone other than the claimant's owner, at our time-stamp
  over that digest (or the registration's own time where no time-stamp was taken);
- a sighting of the suspect's digest (anyone may record one: only the digest is time-stamped);
- the release time the arbiter entered, with its source (signed into the verdict as such).

Times are compared as datetimes, widened by each time-stamp's stated accuracy: a set precedes only
when the latest its token allows is strictly before the earliest the suspect's time allows. Ties go
against the claimant. Each set is judged on its own; one early set does not carry a late one.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ownership.models import EvidenceSet, RegisteredModel
from ownership.probes import MIN_AGREEMENT, PROBES, probe_agreement
from timestamps import rfc3161
from timestamps.models import TimestampToken
from verification.models import Dispute, Sighting

__all__ = [
    "FirstKnown",
    "Precedence",
    "endpoint_first_known",
    "endpoint_host",
    "endpoint_sightings",
    "evidence_precedence",
    "suspect_first_known",
]

# the accuracy assumed for a token that states none (our TSA states one second)
DEFAULT_ACCURACY = timedelta(seconds=1)


@dataclass(frozen=True)
class FirstKnown:
    """One moment from which the suspect is known to have existed, with where the fact comes from."""

    when: datetime
    accuracy: timedelta
    source: str
    kind: str  # filing, registration, sighting, release

    def to_dict(self) -> dict[str, Any]:
        return {
            "when": self.when.isoformat(),
            "accuracy_s": self.accuracy.total_seconds(),
            "source": self.source,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class Precedence:
    """One evidence set against the suspect's first known time."""

    commitment: str
    committed_at: datetime
    accuracy: timedelta
    precedes: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "commitment": self.commitment,
            "committed_at": self.committed_at.isoformat(),
            "accuracy_s": self.accuracy.total_seconds(),
            "precedes": self.precedes,
            "detail": self.detail,
        }


def _accuracy(token: TimestampToken) -> timedelta:
    try:
        stated = rfc3161.parse_token(bytes(token.token)).accuracy
    except Exception:
        return DEFAULT_ACCURACY
    return DEFAULT_ACCURACY if stated is None else stated


def _registrations(dispute: Dispute) -> list[FirstKnown]:
    digest = dispute.suspect_digest
    if dispute.suspect_kind == Dispute.SuspectKind.REGISTERED and dispute.suspect_registration is not None:
        digest = dispute.suspect_registration.model_digest
    if not digest:
        return []
    found = []
    owner_id = dispute.claimant_model.owner_id
    # the claimant's own registrations of these bytes show the claimant held them, not that the suspect came first
    for model in (
        RegisteredModel.objects.filter(model_digest=digest).exclude(owner_id=owner_id).select_related("digest_token")
    ):
        token = model.digest_token
        if token is not None:
            found.append(
                FirstKnown(
                    token.gen_time, _accuracy(token), f"registration {model.public_id} (time-stamped)", "registration"
                )
            )
        else:
            found.append(FirstKnown(model.created_at, timedelta(0), f"registration {model.public_id}", "registration"))
    for sighting in Sighting.objects.filter(
        kind=Sighting.Kind.FILE, state=Sighting.State.RECORDED, model_digest=digest
    ).select_related("timestamp_token"):
        token = sighting.timestamp_token
        if token is None:
            continue
        found.append(FirstKnown(token.gen_time, _accuracy(token), f"sighting {sighting.public_id}", "sighting"))
    return found


def endpoint_sightings(*, dispute: Dispute, limit: int = 8) -> list[Sighting]:
    """Recorded sightings of the dispute's endpoint (same URL, protocol and model name), earliest first."""
    if dispute.suspect_kind != Dispute.SuspectKind.ENDPOINT:
        return []
    host = endpoint_host(dispute.suspect_url)
    if not host:
        return []
    # matched by server, not by spelling: the re-check of the probes decides whether it is the same model
    found = Sighting.objects.filter(
        kind=Sighting.Kind.ENDPOINT, state=Sighting.State.RECORDED, endpoint_host=host
    ).select_related("timestamp_token")
    return list(found.order_by("timestamp_token__gen_time", "id")[:limit])


def endpoint_host(url: str) -> str:
    """``scheme://host:port`` of a URL, lower-cased, with the scheme's default port made explicit ("" if none)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host = (parts.hostname or "").rstrip(".").lower()
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower(), 0)
    except ValueError:
        return ""
    if not host or parts.scheme.lower() not in ("http", "https"):
        return ""
    return f"{parts.scheme.lower()}://{host}:{port}"


def endpoint_first_known(sighting: Sighting, agreement: float) -> FirstKnown:
    """A re-checked endpoint sighting as a first known time (the caller checked the agreement)."""
    token = sighting.timestamp_token
    assert token is not None  # noqa: S101 (recorded sightings are stamped: a database constraint)
    source = f"endpoint sighting {sighting.public_id} (its probe answers re-checked: {agreement:.0%} agree)"
    return FirstKnown(token.gen_time, _accuracy(token), source, "sighting")


def behaviour_first_known(*, dispute: Dispute, labels: Any) -> list[FirstKnown]:
    """Earlier registrations by others that the suspect behaves as, from its answers to the registry's probes.

    A renamed archive, a re-export or an endpoint serving a registered model has other bytes (or none) but
    the same behaviour: answering at least ``MIN_AGREEMENT`` of the fixed probes as a registration did
    makes that registration a first known time of the suspect.
    """
    if not isinstance(labels, list) or len(labels) != PROBES or not all(type(v) is int for v in labels):
        return []
    model = dispute.claimant_model
    size = 1
    for dim in model.input_shape:
        size *= int(dim)
    found = []
    candidates = (
        RegisteredModel.objects.filter(num_classes=model.num_classes, state=RegisteredModel.State.ACTIVE)
        .exclude(owner_id=model.owner_id)
        .exclude(probe_labels=[])
        .select_related("digest_token")
    )
    for candidate in candidates.iterator():
        cells = 1
        for dim in candidate.input_shape:
            cells *= int(dim)
        if cells != size:
            continue
        share = probe_agreement(candidate.probe_labels, labels)
        if share < MIN_AGREEMENT:
            continue
        token = candidate.digest_token
        when, accuracy = (token.gen_time, _accuracy(token)) if token else (candidate.created_at, timedelta(0))
        source = f"registration {candidate.public_id} (the suspect answers {share:.0%} of the registry probes alike)"
        found.append(FirstKnown(when, accuracy, source, "registration"))
    return found


def suspect_first_known(*, dispute: Dispute, confirmed_sightings: Sequence[FirstKnown] = ()) -> list[FirstKnown]:
    """Every known moment the suspect existed, earliest first (the filing is always among them).

    ``confirmed_sightings``: endpoint sightings whose probes the endpoint answered the same way again
    during the run (:func:`endpoint_sightings`, :func:`endpoint_first_known`).
    """
    moments = [FirstKnown(dispute.created_at, timedelta(0), "the dispute's filing", "filing")]
    moments += _registrations(dispute)
    moments += list(confirmed_sightings)
    if dispute.suspect_released_at is not None:
        moments.append(
            FirstKnown(
                dispute.suspect_released_at,
                timedelta(0),
                f"release time entered by the arbiter (source: {dispute.suspect_release_source})",
                "release",
            )
        )
    return sorted(moments, key=lambda m: (m.when - m.accuracy, m.kind))


def evidence_precedence(*, evidence_set: EvidenceSet, first_known: list[FirstKnown]) -> Precedence:
    """Whether this set's commitment provably came before every moment the suspect is known to have existed.

    An adopted watermark (committed again for the model it was embedded in) counts from its source's
    time-stamp: the watermark existed from then on.
    """
    if not first_known:
        raise ValueError("the suspect's first known time always includes the filing")
    origin = evidence_set.derived_from if evidence_set.derived_from_id is not None else evidence_set
    assert origin is not None  # noqa: S101 (just checked)
    token = origin.timestamp_token
    accuracy = _accuracy(token)
    latest = token.gen_time + accuracy
    earliest = min(first_known, key=lambda m: m.when - m.accuracy)
    bound = earliest.when - earliest.accuracy
    precedes = latest < bound
    relation = "before" if precedes else "not before"
    detail = (
        f"committed at {token.gen_time.isoformat()} (±{accuracy.total_seconds():g} s), {relation} the suspect's "
        f"first known time {earliest.when.isoformat()} (±{earliest.accuracy.total_seconds():g} s, {earliest.source})"
    )
    return Precedence(evidence_set.commitment, token.gen_time, accuracy, precedes, detail)
