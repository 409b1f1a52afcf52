"""Writes of the registry: models, evidence commitments, escrow rotation."""

import base64
import json
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from ownership import artifacts, commitments, escrow, evidence, watermarks
from ownership.exceptions import ModelInDisputeError, RegistryError, UploadTooLargeError
from ownership.models import EvidenceSet, RegisteredModel
from timestamps import services as timestamp_services

MAX_NAME = 200


def _validated_shape(input_shape: Sequence[Any]) -> list[int]:
    if not isinstance(input_shape, list | tuple) or not 1 <= len(input_shape) <= 4:
        raise RegistryError("input_shape must list 1 to 4 dimensions, e.g. [1, 8, 8]", code="input_shape")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 4096 for d in input_shape):
        raise RegistryError("input_shape dimensions must be integers between 1 and 4096", code="input_shape")
    return [int(d) for d in input_shape]


def model_register(
    *,
    owner: AbstractBaseUser,
    name: str,
    task: str,
    input_shape: Sequence[Any],
    num_classes: int,
    artifact: UploadedFile,
) -> RegisteredModel:
    """Validate an uploaded artifact in the sandbox, digest it and register it."""
    shape = _validated_shape(input_shape)
    if not 2 <= num_classes <= 100_000:
        raise RegistryError("num_classes must be between 2 and 100000", code="num_classes")
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise RegistryError(f"name must be 1 to {MAX_NAME} characters", code="name")
    if RegisteredModel.objects.filter(owner=owner, name=name).exists():
        raise RegistryError(f"you already have a model named {name!r}", code="duplicate_name")
    if artifact.size is None or artifact.size == 0:
        raise RegistryError("the artifact file is empty", code="artifact")
    if artifact.size > settings.MODELCOURT_MAX_ARTIFACT_BYTES:
        raise UploadTooLargeError(
            f"the artifact is {artifact.size} bytes; the limit is {settings.MODELCOURT_MAX_ARTIFACT_BYTES}"
        )
    filename = Path(artifact.name or "model").name or "model"

    with tempfile.TemporaryDirectory(prefix="modelcourt-upload-") as workdir:
        path = Path(workdir) / filename
        with path.open("wb") as handle:
            for chunk in artifact.chunks():
                handle.write(chunk)
        file_digests = {filename: artifacts.file_digest(path)}
        try:
            report = artifacts.inspect_artifact(str(path), input_shape=shape, num_classes=num_classes)
        except artifacts.ArtifactRejected as exc:
            raise RegistryError(str(exc), code="artifact_rejected") from exc
        model = RegisteredModel(
            owner=owner,
            name=name,
            task=task.strip(),
            input_shape=shape,
            num_classes=num_classes,
            artifact_format=report.format,
            artifact_size=artifact.size,
            file_digests=file_digests,
            model_digest=artifacts.model_digest(file_digests),
            created_at=timezone.now(),
        )
        with path.open("rb") as handle:
            model.artifact.save(filename, File(handle), save=False)
    try:
        model.full_clean(exclude=["artifact"])
        model.save()
    except Exception:
        model.artifact.delete(save=False)
        raise
    return model


@transaction.atomic
def evidence_commit(
    *,
    model: RegisteredModel,
    kind: str,
    arrays: Mapping[str, np.ndarray],
    seed: str | None = None,
    generator: Mapping[str, Any] | None = None,
) -> EvidenceSet:
    """Escrow evidence and publish its salted commitment: time-stamped and appended to the log."""
    salt = secrets.token_bytes(commitments.SALT_BYTES).hex()
    evidence_digest = commitments.evidence_digest(arrays)
    commitment = commitments.commitment(
        model_digest=model.model_digest, evidence_digest=evidence_digest, kind=kind, salt=salt, seed=seed
    )
    sealed = escrow.seal(
        json.dumps(
            {"salt": salt, "seed": seed, "npz_b64": base64.b64encode(evidence.dump_evidence(arrays)).decode()}
        ).encode()
    )
    token = timestamp_services.timestamp_digest(digest=bytes.fromhex(commitment))
    size = len(arrays["members"]) if kind == EvidenceSet.Kind.DATASET else len(arrays["inputs"])
    return EvidenceSet.objects.create(
        model=model,
        kind=kind,
        size=size,
        escrow=sealed,
        evidence_digest=evidence_digest,
        commitment=commitment,
        verifiable=seed is not None,
        generator=dict(generator or {}),
        timestamp_token=token,
        created_at=timezone.now(),
    )


def evidence_upload(*, model: RegisteredModel, kind: str, data: bytes) -> EvidenceSet:
    """Validate an owner's .npz and commit to it."""
    if kind not in EvidenceSet.Kind.values:
        raise RegistryError(f"kind must be one of {', '.join(EvidenceSet.Kind.values)}", code="kind")
    if len(data) > settings.MODELCOURT_MAX_EVIDENCE_BYTES:
        raise UploadTooLargeError(
            f"the evidence is {len(data)} bytes; the limit is {settings.MODELCOURT_MAX_EVIDENCE_BYTES}"
        )
    try:
        arrays = evidence.load_evidence(
            data,
            kind=kind,
            input_shape=model.input_shape,
            num_classes=model.num_classes,
            max_bytes=settings.MODELCOURT_MAX_EVIDENCE_BYTES,
        )
    except evidence.EvidenceRejected as exc:
        raise RegistryError(str(exc), code="evidence_rejected") from exc
    return evidence_commit(model=model, kind=kind, arrays=arrays)


def evidence_generate(
    *, model: RegisteredModel, count: int, low: float = 0.0, high: float = 1.0
) -> tuple[EvidenceSet, dict[str, np.ndarray]]:
    """Draw a fresh seed, derive a watermark set from it and commit to both (a verifiable watermark)."""
    seed = secrets.token_bytes(32)
    try:
        arrays = watermarks.generate_watermark(
            seed=seed, count=count, input_shape=model.input_shape, num_classes=model.num_classes, low=low, high=high
        )
    except ValueError as exc:
        raise RegistryError(str(exc), code="generate") from exc
    generator = {"name": watermarks.GENERATOR, "count": count, "low": repr(float(low)), "high": repr(float(high))}
    evidence_set = evidence_commit(
        model=model, kind=EvidenceSet.Kind.WATERMARK, arrays=arrays, seed=seed.hex(), generator=generator
    )
    return evidence_set, arrays


def evidence_open(*, evidence_set: EvidenceSet) -> dict[str, Any]:
    """The opening of a commitment: evidence, salt and seed, decrypted from escrow."""
    secret = json.loads(escrow.unseal(evidence_set.escrow))
    return {
        "format": "modelcourt-opening-v1",
        "commitment": evidence_set.commitment,
        "model_digest": evidence_set.model.model_digest,
        "evidence_digest": evidence_set.evidence_digest,
        "kind": evidence_set.kind,
        "salt": secret["salt"],
        "seed": secret["seed"],
        "evidence_npz_b64": secret["npz_b64"],
    }


def model_delete(*, model: RegisteredModel) -> None:
    """Delete a model, its artifact and its escrow; refused while a dispute refers to it."""
    artifact = model.artifact
    try:
        with transaction.atomic():
            model.delete()
    except ProtectedError as exc:
        raise ModelInDisputeError("this model is part of a dispute and cannot be deleted") from exc
    transaction.on_commit(lambda: artifact.delete(save=False))


def escrow_rotate() -> int:
    """Put a new escrow key in front and re-seal every evidence set with it; returns how many."""
    escrow.add_escrow_key()
    count = 0
    for pk in EvidenceSet.objects.order_by("pk").values_list("pk", flat=True):
        with transaction.atomic():
            evidence_set = EvidenceSet.objects.select_for_update().get(pk=pk)
            evidence_set.escrow = escrow.reseal(evidence_set.escrow)
            evidence_set.save(update_fields=["escrow"])
            count += 1
    return count


def receipt_build(*, evidence_set: EvidenceSet) -> dict[str, Any]:
    """The public receipt of a commitment: token, log index, inclusion proof and the latest signed checkpoint."""
    from timestamps import keys as timestamp_keys
    from timestamps import selectors as timestamp_selectors

    token = evidence_set.timestamp_token
    index = token.log_entry_id
    checkpoint = timestamp_services.checkpoint_covering(size=index + 1)
    certificates = [token.key.certificate_pem] + [
        record.certificate_pem for record in timestamp_selectors.signing_key_list().filter(purpose="tsa-ca")
    ]
    return {
        "format": "modelcourt-receipt-v1",
        "commitment": evidence_set.commitment,
        "model_digest": evidence_set.model.model_digest,
        "kind": evidence_set.kind,
        "verifiable": evidence_set.verifiable,
        "created_at": evidence_set.created_at.isoformat(),
        "timestamp": {
            "token_b64": base64.b64encode(bytes(token.token)).decode(),
            "serial": token.serial,
            "gen_time": token.gen_time.isoformat(),
            "tsa_certificates_pem": certificates,
        },
        "log": {
            **timestamp_selectors.log_proof_get(index=index, checkpoint=checkpoint),
            "verifier_key": timestamp_keys.log_verifier_key(checkpoint.key),
        },
    }
