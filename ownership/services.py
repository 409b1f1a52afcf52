"""Writes of the registry: models, evidence commitments, escrow rotation."""

import base64
import json
import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from ownership import artifacts, commitments, escrow, evidence, probes, tasks, watermarks
from ownership.exceptions import (
    AlarmLimitError,
    DrawLimitError,
    ModelInDisputeError,
    RegistryError,
    UploadTooLargeError,
    ValidationBusyError,
)
from ownership.models import EvidenceSet, GuardAlarm, RegisteredModel, WatermarkDraw
from ownership.text import has_hidden_characters
from timestamps import services as timestamp_services
from workers import sandbox

logger = logging.getLogger(__name__)

MAX_NAME = 200


def _validated_shape(input_shape: Sequence[Any]) -> list[int]:
    if not isinstance(input_shape, list | tuple) or not 1 <= len(input_shape) <= 4:
        raise RegistryError("input_shape must list 1 to 4 dimensions, e.g. [1, 8, 8]", code="input_shape")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 4096 for d in input_shape):
        raise RegistryError("input_shape dimensions must be integers between 1 and 4096", code="input_shape")
    return [int(d) for d in input_shape]


ValidationMode = Literal["sync", "async"]

# The first bytes of a Python pickle (protocols 2 to 5) and of a zip archive (TorchScript is a zip).
_PICKLE_HEADS = tuple(bytes([0x80, protocol]) for protocol in (2, 3, 4, 5))
_ZIP_HEADS = (b"PK\x03\x04", b"PK\x05\x06")
_UNCHECKED = "the model could not be checked: "
_PICKLE_SENTENCE = (
    "the file is a Python pickle (as torch.save writes), which can run code when loaded and is never opened here; "
    "upload TorchScript (torch.jit.script(model).save(path)) or ONNX instead"
)


def artifact_sniff(head: bytes) -> str:
    """The format an artifact's first bytes claim, without parsing it; ArtifactRejected for empty files and pickles.

    Only a cheap first look for the web process: the sandbox decides later whether the file really is
    a TorchScript zip or an ONNX graph.
    """
    if not head:
        raise artifacts.ArtifactRejected("the file is empty")
    if head[:2] in _PICKLE_HEADS:
        raise artifacts.ArtifactRejected(_PICKLE_SENTENCE)
    if head[:4] in _ZIP_HEADS:
        return RegisteredModel.Format.TORCHSCRIPT
    return RegisteredModel.Format.ONNX


def model_register(
    *,
    owner: AbstractBaseUser,
    name: str,
    task: str,
    input_shape: Sequence[Any],
    num_classes: int,
    artifact: UploadedFile,
    validate: ValidationMode = "sync",
) -> RegisteredModel:
    """Store and digest an uploaded artifact and register it; the sandbox checks it now or in a worker.

    ``validate="async"`` (the web's path) answers at once with a `validating` registration and queues
    `model_validate_task` after commit; ``"sync"`` (internal callers, fixtures) checks it here and
    raises RegistryError, registering nothing, when the sandbox refuses it.
    """
    shape = _validated_shape(input_shape)
    if not 2 <= num_classes <= 100_000:
        raise RegistryError("num_classes must be between 2 and 100000", code="num_classes")
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise RegistryError(f"name must be 1 to {MAX_NAME} characters", code="name")
    if has_hidden_characters(name):
        raise RegistryError("the name must not contain control or formatting characters", code="name")
    if RegisteredModel.objects.filter(owner=owner, name=name).exists():
        raise RegistryError(f"you already have a model named {name!r}", code="duplicate_name")
    # every check holds the cpu queue for up to its time limit: one owner must not hold it for everyone
    limit = settings.MODELCOURT_MAX_VALIDATING
    if RegisteredModel.objects.filter(owner=owner, state=RegisteredModel.State.VALIDATING).count() >= limit:
        raise ValidationBusyError(
            f"you have {limit} upload(s) waiting for their check; register another when one has finished"
        )
    if artifact.size is None or artifact.size == 0:
        raise RegistryError("the artifact file is empty", code="artifact")
    if artifact.size > settings.MODELCOURT_MAX_ARTIFACT_BYTES:
        raise UploadTooLargeError(
            f"the artifact is {artifact.size} bytes; the limit is {settings.MODELCOURT_MAX_ARTIFACT_BYTES}"
        )
    filename = Path(artifact.name or "model").name or "model"
    artifact.seek(0)
    head = artifact.read(8)
    artifact.seek(0)
    try:
        claimed_format = artifact_sniff(head)
    except artifacts.ArtifactRejected as exc:
        raise RegistryError(exc.reason, code="artifact_rejected") from None

    model = RegisteredModel(
        owner=owner,
        name=name,
        task=task.strip(),
        input_shape=shape,
        num_classes=num_classes,
        artifact_format=claimed_format,
        artifact_size=artifact.size,
        file_digests={},
        model_digest="",
        state=RegisteredModel.State.VALIDATING,
        created_at=timezone.now(),
    )
    # the storage moves a spooled upload into place (no copy); only its bytes are hashed here
    model.artifact.save(filename, artifact, save=False)
    try:
        model.file_digests = {filename: artifacts.file_digest(model.artifact.path)}
        model.model_digest = artifacts.model_digest(model.file_digests)
        model.full_clean(exclude=["artifact"])
        with transaction.atomic():
            # our time-stamp over the digest: whoever registered it, the file provably existed from then on
            model.digest_token = timestamp_services.timestamp_digest(digest=bytes.fromhex(model.model_digest))
            model.save()
            if validate == "async":
                pk = model.pk
                transaction.on_commit(lambda: tasks.model_validation_enqueue(pk))
    except Exception:
        model.artifact.delete(save=False)
        raise
    if validate == "async":
        return model
    checked = model_validate(model_id=model.pk)
    if checked is None or checked.state != RegisteredModel.State.ACTIVE:
        reason = checked.rejection_reason if checked is not None else "the registration was removed during its check"
        model.delete()
        model.artifact.delete(save=False)
        raise RegistryError(reason, code="artifact_rejected")
    return checked


def _rejection_sentence(reason: str, *, input_shape: Sequence[int], num_classes: int) -> str:
    """Our own sentence for a sandbox refusal: nothing the model's runtime said is passed on verbatim.

    The artifact checks quote parsers and the model's own error messages (a TorchScript model can
    raise any text it likes), and name its inputs; a reason is kept only when it is entirely ours
    and its variable parts are numbers, else it is replaced by a fixed sentence of the same meaning.
    """
    shape = list(input_shape)
    kept = (
        r"the file is empty",
        r"the model expects input shape \[[0-9?, ]*\] but the registration says \[[0-9, ]*\]",
        r"the model outputs shape \[[0-9, ]*\] but the registration says [0-9]+ classes",
        r"the model outputs shape \[[0-9, ]*\] for a batch of [0-9]+; expected \[[0-9]+, [0-9]+\] \(batch, classes\)",
        r"the model outputs (torch\.)?[a-z0-9]+ values; it must output floating-point class scores",
        r"the model outputs NaN or infinite scores on a batch of zeros",
        r"the model took longer than [0-9.]+ s to load and run on a test batch",
        r"the model used more than [0-9]+ s of CPU time to load and run on a test batch",
        r"the model needed more than [0-9.e+]+ ([KMG]iB|bytes) of memory to load and run on a test batch",
        r"the model process crashed \(signal [0-9]+: ([A-Z0-9]+|unknown)\) while loading or running the model",
        r"the model process exited unexpectedly \(exit code -?[0-9]+\) while loading or running the model",
    )
    if any(re.fullmatch(pattern, reason) for pattern in kept):
        return reason
    # the sandbox's own sentences for a failed child (never the child's words)
    sandbox_sentences = getattr(sandbox, "CATEGORY_REASONS", {}).values()
    if reason.startswith(_UNCHECKED) and reason.removeprefix(_UNCHECKED) in sandbox_sentences:
        return reason
    replaced = (
        ("the file is a Python pickle", _PICKLE_SENTENCE),
        ("the file is a damaged or truncated zip archive", "the file is a damaged or truncated zip archive"),
        (
            "the file is a zip archive but not a TorchScript model",
            "the file is a zip archive but not a TorchScript model (no code/ and constants.pkl entries)",
        ),
        ("the file is not an ONNX or TorchScript model", "the file is not an ONNX or TorchScript model"),
        (
            "the ONNX model keeps its weights in external data files",
            "the ONNX model keeps its weights in external data files; upload one self-contained .onnx file",
        ),
        ("onnxruntime cannot load the model", "onnxruntime cannot load the model"),
        ("the model takes ", "the model must take exactly one input, a batch of inputs"),
        ("the model's input is ", "the model's input must be float32 (tensor(float))"),
        (
            "the model's batch dimension is fixed",
            "the model's batch dimension is fixed; export it with a dynamic batch axis",
        ),
        (
            "the model failed on a batch",
            f"the model failed on a batch of {artifacts.TEST_BATCH} inputs of shape {shape}",
        ),
        ("the model has ", f"the model must have one output, the class scores [batch, {num_classes}]"),
        ("the file is not a valid TorchScript model", "the file is not a valid TorchScript model"),
        ("the TorchScript model has no forward method", "the TorchScript model has no forward method"),
        ("the model's forward takes", "the model's forward must take exactly one Tensor, a batch of inputs"),
        ("the model returns a ", "the model must return one tensor of class scores"),
    )
    for prefix, sentence in replaced:
        if reason.startswith(prefix):
            return sentence
    return f"the model could not be loaded and run on a batch of {artifacts.TEST_BATCH} inputs of shape {shape}"


def model_validate(*, model_id: int) -> RegisteredModel | None:
    """Check a `validating` registration in the sandbox and make it `active` or `rejected`.

    Idempotent: a redelivered or re-sent task finds the row settled (or gone) and does nothing; of two
    runs at once, the first to finish decides.
    """
    model = RegisteredModel.objects.filter(pk=model_id).first()
    if model is None or model.state != RegisteredModel.State.VALIDATING:
        return model
    fields: dict[str, Any]
    try:
        report = artifacts.inspect_artifact(
            model.artifact.path,
            input_shape=model.input_shape,
            num_classes=model.num_classes,
            timeout_s=settings.MODELCOURT_VALIDATION_TIMEOUT_S,
            memory_bytes=settings.MODELCOURT_VALIDATION_MEMORY_BYTES,
        )
    except sandbox.SandboxUnavailable:
        # the host cannot confine models: the registration stays validating and the sweep re-sends it
        logger.error("registration %s cannot be checked: this host cannot confine models", model.pk)
        return model
    except artifacts.ArtifactRejected as exc:
        sentence = _rejection_sentence(exc.reason, input_shape=model.input_shape, num_classes=model.num_classes)
        fields = {"state": RegisteredModel.State.REJECTED, "rejection_reason": sentence}
    else:
        fields = {
            "state": RegisteredModel.State.ACTIVE,
            "artifact_format": report.format,
            "rejection_reason": "",
            # the child ran the owner's model: its labels are kept only if they are what was asked for
            "probe_labels": _checked_probe_labels(report.probe_labels, model.num_classes),
        }
    # one conditional UPDATE: a second run that finishes later changes nothing
    RegisteredModel.objects.filter(pk=model.pk, state=RegisteredModel.State.VALIDATING).update(
        validated_at=timezone.now(), **fields
    )
    return RegisteredModel.objects.filter(pk=model.pk).first()


def _checked_probe_labels(labels: Any, num_classes: int) -> list[int]:
    values = list(labels) if isinstance(labels, tuple | list) else []
    if len(values) != probes.PROBES or not all(type(v) is int and 0 <= v < num_classes for v in values):
        return []
    return values


def model_require_active(*, model: RegisteredModel) -> None:
    """Refuse work on a registration the sandbox has not accepted (yet): evidence, disputes, stress tests."""
    state = RegisteredModel.objects.filter(pk=model.pk).values_list("state", flat=True).first()
    if state == RegisteredModel.State.ACTIVE:
        return
    if state == RegisteredModel.State.VALIDATING:
        raise RegistryError(
            f"the model {model.name!r} is still being validated; try again when it is active", code="model_validating"
        )
    raise RegistryError(f"the model {model.name!r} was rejected and cannot be used", code="model_rejected")


@transaction.atomic
def evidence_commit(
    *,
    model: RegisteredModel,
    kind: str,
    arrays: Mapping[str, np.ndarray],
    seed: str | None = None,
    generator: Mapping[str, Any] | None = None,
    journal: Mapping[str, Any] | None = None,
) -> EvidenceSet:
    """Escrow evidence and publish its salted commitment: time-stamped and appended to the log."""
    model_require_active(model=model)
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
        journal=dict(journal or {}),
        timestamp_token=token,
        created_at=timezone.now(),
    )


def evidence_upload(*, model: RegisteredModel, kind: str, data: bytes) -> EvidenceSet:
    """Validate an owner's .npz and commit to it."""
    model_require_active(model=model)
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
    journal = _journal_summary(arrays) if kind == EvidenceSet.Kind.API_WATERMARK else None
    return evidence_commit(model=model, kind=kind, arrays=arrays, journal=journal)


MAX_CLOCK_SKEW = timedelta(minutes=5)


def _journal_summary(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A guard batch's client tags and serving times (kept with the set for the owner; never public).

    Answers cannot have been served after they were committed: a serving time beyond the guard's clock
    skew allowance is refused. The commitment's time-stamp, not these times, is what precedence uses.
    """
    served = arrays["served_at"]
    # compared as numbers first: a time far beyond the calendar cannot even be made a datetime
    if float(served.max()) > timezone.now().timestamp() + MAX_CLOCK_SKEW.total_seconds():
        raise RegistryError(
            "the batch holds answers served in the future (served_at beyond the service's clock)",
            code="evidence_rejected",
        )
    latest = datetime.fromtimestamp(float(served.max()), tz=UTC)
    tags = sorted({bytes(row).hex() for row in arrays["clients"]})
    return {
        "clients": tags,
        "served_from": datetime.fromtimestamp(float(served.min()), tz=UTC).isoformat(),
        "served_to": latest.isoformat(),
    }


def api_clients_before(*, model: RegisteredModel, moment: datetime) -> set[str]:
    """Every client tag in the model's guard batches committed before ``moment``: the choices a claim had."""
    tags: set[str] = set()
    for journal in EvidenceSet.objects.filter(
        model=model, kind=EvidenceSet.Kind.API_WATERMARK, created_at__lt=moment
    ).values_list("journal", flat=True):
        tags.update(t for t in (journal or {}).get("clients", []) if isinstance(t, str))
    return tags


def evidence_generate(
    *, model: RegisteredModel, count: int, low: float = 0.0, high: float = 1.0
) -> tuple[EvidenceSet, dict[str, np.ndarray]]:
    """Draw a fresh seed, derive a watermark set from it and commit to both (a verifiable watermark).

    The set holds count x prod(input_shape) values: refused before anything is allocated past
    MODELCOURT_MAX_GENERATED_ELEMENTS.
    """
    model_require_active(model=model)
    _check_draw_rate(owner=model.owner)
    limit = settings.MODELCOURT_MAX_GENERATED_ELEMENTS
    per_input = 1
    for dim in model.input_shape:
        per_input *= max(int(dim), 1)  # Python ints: no overflow however large the shape
    if count * per_input > limit:
        raise RegistryError(
            f"{count} watermark inputs of this model's shape hold {count * per_input} values; at most {limit} are "
            f"generated at once (a count of at most {limit // per_input} for this shape)",
            code="too_many_elements",
        )
    seed = secrets.token_bytes(32)
    try:
        arrays = watermarks.generate_watermark(
            seed=seed, count=count, input_shape=model.input_shape, num_classes=model.num_classes, low=low, high=high
        )
    except ValueError as exc:
        # The API and the form check count and bounds, registration the shape and classes: what is left is
        # NumPy refusing the shape, in NumPy's words, which are not ours to show.
        raise RegistryError(
            "a watermark cannot be generated for this model's input shape and classes with these bounds",
            code="generate",
        ) from exc
    generator = {"name": watermarks.GENERATOR, "count": count, "low": repr(float(low)), "high": repr(float(high))}
    with transaction.atomic():
        evidence_set = evidence_commit(
            model=model, kind=EvidenceSet.Kind.WATERMARK, arrays=arrays, seed=seed.hex(), generator=generator
        )
        # every draw counts against the owner's later disputes, even if the set or model is deleted
        WatermarkDraw.objects.create(owner=model.owner, commitment=evidence_set.commitment, created_at=timezone.now())
    return evidence_set, arrays


def _check_draw_rate(*, owner: Any) -> None:
    """At most MODELCOURT_WATERMARK_DRAWS_PER_DAY generated watermarks per owner in any 24 hours."""
    limit = settings.MODELCOURT_WATERMARK_DRAWS_PER_DAY
    since = timezone.now() - timedelta(days=1)
    if WatermarkDraw.objects.filter(owner=owner, created_at__gte=since).count() >= limit:
        raise DrawLimitError(
            f"at most {limit} watermarks are generated per owner in 24 hours (each draw also weakens the owner's "
            "later claims with generated watermarks: their p-values are multiplied by the number drawn)"
        )


def watermark_draws_before(*, moment: datetime) -> int:
    """How many watermarks the service generated, for anyone, before ``moment`` (at least 1 for a claim).

    A generated watermark's p-value is exact for one draw. A claimant who draws many, under one account
    or many, and files the one that happens to match an independent model, chose among every draw made
    before the filing: the correction counts them all. Its cost is small where it matters (K = 100
    triggers and a copy give p near 1e-100 for one draw).
    """
    return max(1, WatermarkDraw.objects.filter(created_at__lt=moment).count())


def evidence_adopt(*, model: RegisteredModel, source: EvidenceSet) -> EvidenceSet:
    """Commit a generated watermark again for the model it was embedded in (the deployed model).

    The source must be a generated watermark of another model of the same owner. The new set keeps the
    seed (so it stays verifiable) and records where it came from; it is not a new draw.
    """
    model_require_active(model=model)
    if source.model.owner_id != model.owner_id:
        raise RegistryError("only the owner's own generated watermarks can be adopted", code="not_found")
    if not source.verifiable or source.derived_from_id is not None:
        raise RegistryError(
            "only a watermark the service generated (not an adopted copy) can be adopted", code="not_generated"
        )
    if source.model_id == model.pk:
        raise RegistryError("this watermark is already committed for this model", code="already_committed")
    if model.evidence_sets.filter(derived_from=source).exists():
        raise RegistryError("this watermark is already adopted by this model", code="already_committed")
    if (list(model.input_shape), model.num_classes) != (list(source.model.input_shape), source.model.num_classes):
        raise RegistryError(
            "the watermark was generated for another input shape or number of classes than this model's",
            code="shape_mismatch",
        )
    opening = evidence_open(evidence_set=source)
    arrays = evidence.load_evidence(
        base64.b64decode(opening["evidence_npz_b64"]),
        kind=source.kind,
        input_shape=model.input_shape,
        num_classes=model.num_classes,
    )
    with transaction.atomic():
        adopted = evidence_commit(
            model=model,
            kind=source.kind,
            arrays={"inputs": arrays["inputs"], "labels": arrays["labels"]},
            seed=opening["seed"],
            generator={**source.generator, "adopted_from": str(source.public_id)},
        )
        adopted.derived_from = source
        adopted.save(update_fields=["derived_from"])
    return adopted


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


MAX_ALARMS_PER_HOUR = 120  # per model: a guard that reports more is broken or being flooded


def guard_alarm_record(
    *, model: RegisteredModel, client_tag: str, queries: int, statistic: float, threshold: float, raised_at: datetime
) -> GuardAlarm:
    """Record an extraction alarm a guard raised for one client of the model's API.

    The owner's guard reports it; it proves nothing by itself (the dispute does), so it is checked for
    shape only: a client tag, counts and a W statistic in range, a time that is not in the future.
    """
    model_require_active(model=model)
    tag = client_tag.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", tag):
        raise RegistryError("client must be the guard's client tag: 32 hexadecimal digits", code="client")
    if not (0.0 <= statistic <= 1.0) or not (0.0 < threshold <= 1.0):
        raise RegistryError("statistic and threshold are Shapiro-Wilk W values in [0, 1]", code="statistic")
    if timezone.is_naive(raised_at) or raised_at > timezone.now() + MAX_CLOCK_SKEW:
        raise RegistryError("raised_at must be a past time with a time zone", code="raised_at")
    now = timezone.now()
    if GuardAlarm.objects.filter(model=model, received_at__gte=now - timedelta(hours=1)).count() >= MAX_ALARMS_PER_HOUR:
        raise AlarmLimitError(
            f"this model's guard has reported {MAX_ALARMS_PER_HOUR} alarms in the last hour; try again later"
        )
    return GuardAlarm.objects.create(
        model=model,
        client_tag=tag,
        queries=queries,
        statistic=statistic,
        threshold=threshold,
        raised_at=raised_at,
        received_at=now,
    )
