"""Sightings: anyone signed in time-stamps the digest of a model file they came across.

A later dispute over a suspect with that digest counts the sighting as a first known time of the
suspect (see verification.precedence): a claimant cannot then pass off evidence crafted on the
suspect after that moment. Only the digest is kept; the file is hashed while it streams in and dropped.
"""

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.db import transaction
from django.utils import timezone

from ownership import artifacts
from ownership import services as ownership_services
from ownership.exceptions import UploadTooLargeError
from ownership.text import has_hidden_characters
from timestamps import services as timestamp_services
from verification import tasks
from verification.exceptions import DisputeError
from verification.models import Sighting, SuspectDescription
from verification.precedence import endpoint_host
from verification.services.disputes import check_public_endpoint, check_url

MAX_NOTE = 300


def _check_note(note: str) -> str:
    note = note.strip()
    if len(note) > MAX_NOTE:
        raise DisputeError(f"the note must be at most {MAX_NOTE} characters", code="note")
    if has_hidden_characters(note):
        # notes are read in pages, logs and terminals: no control or invisible formatting characters
        raise DisputeError("the note must not contain control or formatting characters", code="note")
    return note


@transaction.atomic
def sighting_record(*, user: AbstractBaseUser, upload: File, note: str = "") -> Sighting:
    """Digest a model file (ONNX or TorchScript, by its first bytes), time-stamp the digest, keep the record."""
    note = _check_note(note)
    if not upload.size:
        raise DisputeError("the file is empty", code="sighting_file")
    if upload.size > settings.MODELCOURT_MAX_ARTIFACT_BYTES:
        raise UploadTooLargeError(
            f"the file is {upload.size} bytes; the limit is {settings.MODELCOURT_MAX_ARTIFACT_BYTES}"
        )
    upload.seek(0)
    try:
        form = ownership_services.artifact_sniff(upload.read(8))
    except artifacts.ArtifactRejected as exc:
        raise DisputeError(f"the file was refused: {exc.reason}", code="sighting_file") from None
    upload.seek(0)
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    # a single file: its model digest does not depend on its name (as for registrations and suspects)
    model_digest = artifacts.model_digest({"model": digest.hexdigest()})
    token = timestamp_services.timestamp_digest(digest=bytes.fromhex(model_digest))
    return Sighting.objects.create(
        recorded_by=user,
        model_digest=model_digest,
        file_format=form,
        note=note,
        timestamp_token=token,
        created_at=timezone.now(),
    )


MAX_PROBED_FEATURES = 1 << 20  # values per probe input: the set is drawn and sent by the worker


@transaction.atomic
def sighting_record_endpoint(
    *,
    user: AbstractBaseUser,
    url: str,
    protocol: str = "json",
    model_name: str = "",
    output_kind: str = "logits",
    input_shape: Sequence[int],
    num_classes: int,
    note: str = "",
) -> Sighting:
    """Queue the probing of an endpoint: a worker sends a fresh probe set and time-stamps the transcript's digest."""
    note = _check_note(note)
    url = check_url(url, field="url")
    check_public_endpoint(url, field="url")
    if protocol not in SuspectDescription.Protocol.values:
        raise DisputeError("protocol must be v2 or json", code="protocol")
    if protocol == "v2" and not model_name.strip():
        raise DisputeError("the v2 protocol needs the model's name on the server", code="model_name")
    if output_kind not in ("logits", "probabilities", "labels"):
        raise DisputeError("output must be logits, probabilities or labels", code="output")
    shape = [int(d) for d in input_shape]
    features = 1
    for dim in shape:
        features *= max(dim, 0)
    if not shape or len(shape) > 4 or any(d < 1 for d in shape) or features > MAX_PROBED_FEATURES:
        raise DisputeError(
            f"input_shape lists 1 to 4 positive dimensions of at most {MAX_PROBED_FEATURES} values", code="input_shape"
        )
    if not 2 <= int(num_classes) <= 10_000:
        raise DisputeError("num_classes must lie between 2 and 10000", code="num_classes")
    sighting = Sighting.objects.create(
        recorded_by=user,
        kind=Sighting.Kind.ENDPOINT,
        state=Sighting.State.PROBING,
        url=url,
        endpoint_host=endpoint_host(url),
        protocol=protocol,
        model_name=model_name.strip(),
        output_kind=output_kind,
        input_shape=shape,
        num_classes=int(num_classes),
        probe_seed=secrets.token_bytes(32).hex(),
        note=note,
        created_at=timezone.now(),
    )
    pk = sighting.pk
    transaction.on_commit(lambda: tasks.sighting_probe_enqueue(pk))
    return sighting


def sighting_probe(*, sighting_id: int) -> Sighting | None:
    """Send the sighting's probe set to its endpoint (in the sandbox, through the relay) and stamp the transcript."""
    from verification.egress import probe_relayed
    from verification.methods import egress as methods_egress
    from verification.methods.probes import PROBES, probe_spec, transcript_digest
    from workers.sandbox import SandboxError, run_sandboxed

    with transaction.atomic():
        sighting = Sighting.objects.select_for_update().filter(pk=sighting_id).first()
        if sighting is None or sighting.state != Sighting.State.PROBING:
            return sighting
    labels: list[int] | None = None
    reason = ""
    try:
        url = methods_egress.endpoint_url(
            sighting.url, protocol=sighting.protocol, model_name=sighting.model_name or None
        )
        relay = methods_egress.relay_for(url, timeout_s=10.0)
        answers = run_sandboxed(
            probe_relayed,
            probe_spec(
                url=sighting.url,
                protocol=sighting.protocol,
                model_name=sighting.model_name,
                output_kind=sighting.output_kind,
                input_shape=sighting.input_shape,
                num_classes=sighting.num_classes,
                seeds={"sighting": sighting.probe_seed},
            ),
            timeout_s=120.0,
            memory_bytes=settings.MODELCOURT_RUN_MEMORY_BYTES,
            relay=relay,
        )
        labels = _checked_labels(answers, "sighting", PROBES, sighting.num_classes)
        if labels is None:
            reason = "the endpoint did not answer the probe set with usable labels"
    except (methods_egress.EgressError, ValueError):
        reason = "the endpoint cannot be queried (its address is not public, or the URL is not usable)"
    except SandboxError as exc:
        reason = f"the endpoint could not be probed ({exc.reason})"
    with transaction.atomic():
        sighting = Sighting.objects.select_for_update().get(pk=sighting_id)
        if sighting.state != Sighting.State.PROBING:
            return sighting
        if labels is None:
            sighting.state, sighting.failure_reason = Sighting.State.FAILED, reason[:300]
            sighting.save(update_fields=["state", "failure_reason"])
            return sighting
        digest = transcript_digest(url=sighting.url, seed=bytes.fromhex(sighting.probe_seed), labels=labels)
        sighting.probe_labels = labels
        sighting.transcript_digest = digest
        sighting.timestamp_token = timestamp_services.timestamp_digest(digest=bytes.fromhex(digest))
        sighting.state = Sighting.State.RECORDED
        sighting.save(update_fields=["probe_labels", "transcript_digest", "timestamp_token", "state"])
    return sighting


def _checked_labels(answers: Any, key: str, count: int, num_classes: int) -> list[int] | None:
    """The child's labels for one probe set, if they are what was asked for (the child's output is untrusted)."""
    if not isinstance(answers, dict):
        return None
    values = answers.get(key)
    if not isinstance(values, list) or len(values) != count:
        return None
    if not all(type(v) is int and 0 <= v < num_classes for v in values):
        return None
    return values
