"""Validation of uploads on the cpu queue: the task's outcome, hostile models, idempotence, resends, temp files."""

import hashlib
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.utils import timezone
from torch import nn

from ownership import artifacts, services, tasks
from ownership.exceptions import RegistryError
from ownership.models import RegisteredModel
from tests.ownership.model_files import torchscript_file

pytestmark = pytest.mark.django_db

SECRET = "SECRET-7f3a9c <script>alert(1)</script>"


class Looping(nn.Module):
    """Never answers: its forward loops on a batch of zeros."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        while bool(y.sum() > -1.0):
            y = y + 1.0
        return y


class Loud(nn.Module):
    """Fails with a message of its own choosing (it must never reach a person verbatim)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() >= 0):
            raise RuntimeError("SECRET-7f3a9c <script>alert(1)</script>")
        return x


def _validating(owner, path: Path, name: str = "digits") -> RegisteredModel:  # type: ignore[no-untyped-def]
    """A registration as the API leaves it: stored, digested, `validating` (its task not published here)."""
    upload = SimpleUploadedFile(path.name, path.read_bytes())
    return services.model_register(
        owner=owner, name=name, task="", input_shape=[1, 8, 8], num_classes=10, artifact=upload, validate="async"
    )


@pytest.fixture
def no_sandbox(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails the test if anything asks the sandbox to inspect an artifact."""
    calls: list[str] = []

    def refuse(path: str, **_: object) -> None:
        calls.append(path)
        raise AssertionError("the sandbox was asked to inspect an artifact")

    monkeypatch.setattr(artifacts, "inspect_artifact", refuse)
    return calls


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records what would go to the broker instead of sending it."""
    sent: list[int] = []
    monkeypatch.setattr(tasks.model_validate_task, "delay", lambda model_id: sent.append(model_id))
    return sent


def test_an_async_registration_is_stored_and_digested_without_the_sandbox(
    owner, tmp_path: Path, no_sandbox: list[str]
) -> None:  # type: ignore[no-untyped-def]
    artifact = torchscript_file(tmp_path / "mlp.pt")

    model = _validating(owner, artifact)

    assert model.state == RegisteredModel.State.VALIDATING
    assert Path(model.artifact.path).read_bytes() == artifact.read_bytes()
    assert model.file_digests == {"mlp.pt": artifacts.file_digest(artifact)}
    assert model.model_digest == artifacts.model_digest(model.file_digests)
    assert no_sandbox == []


def test_the_task_makes_a_good_model_active(owner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _validating(owner, torchscript_file(tmp_path / "mlp.pt"))

    tasks.model_validate_task.run(model.pk)

    model.refresh_from_db()
    assert (model.state, model.artifact_format, model.rejection_reason) == ("active", "torchscript", "")
    assert model.validated_at is not None


@override_settings(MODELCOURT_VALIDATION_TIMEOUT_S=2.0)
def test_a_looping_model_ends_rejected_with_our_sentence(owner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _validating(owner, torchscript_file(tmp_path / "loop.pt", Looping()))

    started = time.monotonic()
    services.model_validate(model_id=model.pk)

    model.refresh_from_db()
    assert model.state == RegisteredModel.State.REJECTED
    assert model.rejection_reason == "the model took longer than 2 s to load and run on a test batch"
    assert time.monotonic() - started < 30


def test_a_models_own_error_text_never_becomes_the_reason(owner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _validating(owner, torchscript_file(tmp_path / "loud.pt", Loud()))

    services.model_validate(model_id=model.pk)

    model.refresh_from_db()
    assert model.state == RegisteredModel.State.REJECTED
    assert "SECRET" not in model.rejection_reason
    assert "<script>" not in model.rejection_reason
    assert model.rejection_reason.startswith("the model")


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (
            f"the model failed on a batch of 2 inputs of shape [1, 8, 8]: {SECRET}",
            "the model failed on a batch of 2 inputs of shape [1, 8, 8]",
        ),
        (
            f"the model's forward takes {SECRET}: Tensor; it must take exactly one Tensor, a batch of inputs",
            "the model's forward must take exactly one Tensor, a batch of inputs",
        ),
        (f"the model takes 2 inputs ({SECRET}, b); it must take exactly one", "the model must take exactly one input"),
        (f"onnxruntime cannot load the model: {SECRET}", "onnxruntime cannot load the model"),
        (f"the model could not be checked: the model process failed: {SECRET}", "the model could not be loaded"),
        (f"the model outputs shape [2, 5] but the registration says 10 classes {SECRET}", "the model could not"),
        (SECRET, "the model could not be loaded and run on a batch of 2 inputs of shape [1, 8, 8]"),
    ],
)
def test_rejection_reasons_keep_only_our_words(reason: str, expected: str) -> None:
    sentence = services._rejection_sentence(reason, input_shape=[1, 8, 8], num_classes=10)

    assert sentence.startswith(expected)
    assert "SECRET" not in sentence
    assert "<script>" not in sentence


def test_our_own_reasons_pass_unchanged() -> None:
    for reason in (
        "the model outputs shape [2, 5] but the registration says 10 classes",
        "the model expects input shape [1, 28, 28] but the registration says [1, 8, 8]",
        "the model took longer than 60 s to load and run on a test batch",
        "the model process crashed (signal 9: SIGKILL) while loading or running the model",
    ):
        assert services._rejection_sentence(reason, input_shape=[1, 8, 8], num_classes=10) == reason


def test_a_redelivered_task_finds_the_model_settled_and_does_nothing(
    owner, tmp_path: Path, no_sandbox: list[str]
) -> None:  # type: ignore[no-untyped-def]
    model = _validating(owner, torchscript_file(tmp_path / "mlp.pt"))
    RegisteredModel.objects.filter(pk=model.pk).update(state=RegisteredModel.State.ACTIVE)

    tasks.model_validate_task.run(model.pk)
    tasks.model_validate_task.run(model.pk + 1000)  # gone: nothing to do, no error

    model.refresh_from_db()
    assert model.state == RegisteredModel.State.ACTIVE
    assert no_sandbox == []


def test_the_sync_path_registers_nothing_when_the_sandbox_refuses(owner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x08\x01" + b"not a model" * 100)

    with pytest.raises(RegistryError) as refused:
        services.model_register(
            owner=owner,
            name="garbage",
            task="",
            input_shape=[1, 8, 8],
            num_classes=10,
            artifact=SimpleUploadedFile("model.onnx", garbage.read_bytes()),
        )

    assert refused.value.code == "artifact_rejected"
    assert "not an ONNX or TorchScript model" in str(refused.value)
    assert not RegisteredModel.objects.exists()


def test_evidence_waits_for_an_active_model(owner, tmp_path: Path, no_sandbox: list[str]) -> None:  # type: ignore[no-untyped-def]
    model = _validating(owner, torchscript_file(tmp_path / "mlp.pt"))

    with pytest.raises(RegistryError) as validating:
        services.evidence_generate(model=model, count=5)
    RegisteredModel.objects.filter(pk=model.pk).update(state="rejected", rejection_reason="the file is empty")
    with pytest.raises(RegistryError) as rejected:
        services.evidence_generate(model=model, count=5)

    assert (validating.value.code, rejected.value.code) == ("model_validating", "model_rejected")
    assert not model.evidence_sets.exists()


def test_publishing_stamps_dispatched_at(
    owner, tmp_path: Path, published: list[int], django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        model = _validating(owner, torchscript_file(tmp_path / "mlp.pt"))

    model.refresh_from_db()
    assert published == [model.pk]
    assert model.dispatched_at is not None


def test_a_failed_publish_leaves_the_row_undispatched_and_the_sweep_resends_it(
    owner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    def broker_down(model_id: int) -> None:
        raise OSError("connection refused")

    monkeypatch.setattr(tasks.model_validate_task, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        model = _validating(owner, torchscript_file(tmp_path / "mlp.pt"))
    model.refresh_from_db()
    assert (model.state, model.dispatched_at) == ("validating", None)

    sent: list[int] = []
    monkeypatch.setattr(tasks.model_validate_task, "delay", lambda model_id: sent.append(model_id))
    assert tasks.model_validation_resend_stale() == 0  # within the publish grace: its on_commit may be on its way
    RegisteredModel.objects.filter(pk=model.pk).update(created_at=timezone.now() - timedelta(minutes=2))
    assert tasks.model_validation_resend_stale() == 1

    model.refresh_from_db()
    assert sent == [model.pk]
    assert model.dispatched_at is not None


@override_settings(MODELCOURT_VALIDATION_RESEND_MINUTES=15)
def test_the_sweep_resends_only_long_unfinished_validations(
    owner, tmp_path: Path, published: list[int], settings
) -> None:  # type: ignore[no-untyped-def]
    settings.MODELCOURT_MAX_VALIDATING = 3
    artifact = torchscript_file(tmp_path / "mlp.pt")
    lost, recent, done = (_validating(owner, artifact, name) for name in ("lost", "recent", "done"))
    now = timezone.now()
    RegisteredModel.objects.filter(pk=lost.pk).update(dispatched_at=now - timedelta(minutes=16))
    RegisteredModel.objects.filter(pk=recent.pk).update(dispatched_at=now - timedelta(minutes=1))
    RegisteredModel.objects.filter(pk=done.pk).update(dispatched_at=now - timedelta(hours=2), state="active")

    resent = tasks.model_validation_resend_stale()

    assert (resent, published) == (1, [lost.pk])


def test_the_sweep_removes_upload_temp_files_older_than_an_hour(tmp_path: Path) -> None:
    spool = tmp_path / "uploads"
    spool.mkdir()
    old, fresh = spool / "old.upload", spool / "fresh.upload"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"in progress")
    keep_dir = spool / "folder"
    keep_dir.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not ours")
    link = spool / "link.upload"
    link.symlink_to(outside)
    two_hours_ago = time.time() - 7200
    for path in (old, keep_dir, outside):
        os.utime(path, (two_hours_ago, two_hours_ago))
    os.utime(link, (two_hours_ago, two_hours_ago), follow_symlinks=False)

    with override_settings(FILE_UPLOAD_TEMP_DIR=spool):
        tasks.model_validation_sweep_task.run()  # what beat calls

    assert not old.exists()
    assert fresh.exists()
    assert keep_dir.is_dir()
    assert outside.read_bytes() == b"not ours"
    assert link.is_symlink()


@pytest.mark.parametrize(
    ("head", "expected"),
    [(b"PK\x03\x04rest", "torchscript"), (b"\x08\x07\x12\x07pytorch", "onnx"), (b"anything else", "onnx")],
)
def test_the_first_look_reads_only_magic_bytes(head: bytes, expected: str) -> None:
    assert services.artifact_sniff(head) == expected


@pytest.mark.parametrize("head", [b"", *(bytes([0x80, protocol]) + b"\x95rest" for protocol in (2, 3, 4, 5))])
def test_the_first_look_refuses_empty_files_and_pickles(head: bytes) -> None:
    with pytest.raises(artifacts.ArtifactRejected):
        services.artifact_sniff(head)


def test_filing_a_dispute_with_an_uploaded_suspect_never_runs_the_sandbox(
    owner, arbiter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from verification.exceptions import DisputeError
    from verification.services import disputes as dispute_services

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sandbox ran while a dispute was filed")

    monkeypatch.setattr(artifacts, "detect_format", refuse)
    monkeypatch.setattr(artifacts, "inspect_artifact", refuse)
    claimant = RegisteredModel.objects.create(
        owner=owner, name="claimant", input_shape=[1, 8, 8], num_classes=10, artifact_format="torchscript",
        artifact_size=1, model_digest="ab" * 32, file_digests={}, created_at=timezone.now(),
    )  # fmt: skip
    services.evidence_generate(model=claimant, count=5)
    suspect = torchscript_file(tmp_path / "suspect.pt").read_bytes()

    def file(data: bytes, name: str):  # type: ignore[no-untyped-def]
        return dispute_services.dispute_file(
            arbiter=arbiter,
            title="x",
            claimant_model=claimant,
            methods=["watermark"],
            suspect_file=SimpleUploadedFile(name, data),
            start=False,
        )

    dispute = file(suspect, "suspect.pt")
    with pytest.raises(DisputeError, match="pickle"):
        file(b"\x80\x04\x95 a pickle", "evil.pkl")

    assert (dispute.suspect_kind, dispute.suspect_format) == ("artifact", "torchscript")
    assert Path(dispute.suspect_artifact.path).read_bytes() == suspect
    assert dispute.suspect_digest == artifacts.model_digest({"suspect.pt": hashlib.sha256(suspect).hexdigest()})


def test_a_host_that_cannot_confine_leaves_the_model_validating(
    owner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from workers import confinement

    model = _validating(owner, torchscript_file(tmp_path / "mlp.pt"))

    def missing() -> tuple[str, ...]:
        raise confinement.ConfinementUnavailable("landlock is not available")

    monkeypatch.setattr(confinement, "ensure_enforceable", missing)
    tasks.model_validate_task.run(model.pk)

    model.refresh_from_db()
    # not the upload's fault: no rejection, and the sweep will send it again once the host is repaired
    assert (model.state, model.rejection_reason) == ("validating", "")


def test_an_owner_may_have_only_a_few_uploads_waiting_for_their_check(
    owner, tmp_path: Path, published: list[int], settings
) -> None:  # type: ignore[no-untyped-def]
    from ownership.exceptions import ValidationBusyError
    from tests.conftest import _user

    settings.MODELCOURT_MAX_VALIDATING = 2
    artifact = torchscript_file(tmp_path / "mlp.pt")
    _validating(owner, artifact, "one")
    _validating(owner, artifact, "two")

    with pytest.raises(ValidationBusyError):
        _validating(owner, artifact, "three")
    # another owner's uploads are not held up by it
    assert _validating(_user("otto", "owner"), artifact, "three").state == RegisteredModel.State.VALIDATING
