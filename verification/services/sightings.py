"""Sightings: anyone signed in time-stamps the digest of a model file they came across.

A later dispute over a suspect with that digest counts the sighting as a first known time of the
suspect (see verification.precedence): a claimant cannot then pass off evidence crafted on the
suspect after that moment. Only the digest is kept; the file is hashed while it streams in and dropped.
"""

import hashlib
import unicodedata

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.db import transaction
from django.utils import timezone

from ownership import artifacts
from ownership import services as ownership_services
from ownership.exceptions import UploadTooLargeError
from timestamps import services as timestamp_services
from verification.exceptions import DisputeError
from verification.models import Sighting

MAX_NOTE = 300


def _check_note(note: str) -> str:
    note = note.strip()
    if len(note) > MAX_NOTE:
        raise DisputeError(f"the note must be at most {MAX_NOTE} characters", code="note")
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in note):
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
