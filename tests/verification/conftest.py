"""A registered, watermarked digits model, its thefts and an independent model, a small installed panel, claimants.

A claimant is the owner's deployed model: a watermark is drawn for the base model, embedded, and adopted for the
marked model, so the claimant's own model carries its evidence (binding) and the set is a generated one.
"""

from __future__ import annotations

import copy
import io
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.utils import timezone
from torch import nn

from modelcourt.embed import embed_watermark
from ownership import services as ownership_services
from ownership.models import EvidenceSet, RegisteredModel
from timestamps import rfc3161
from verification.methods.datasets import digits_task
from verification.methods.panels import train_panel
from verification.methods.thefts import fine_tune
from verification.methods.training import build_model, train_classifier

torch.set_num_threads(1)
PANEL = "test-digits"


@dataclass(frozen=True)
class Models:
    """TorchScript bytes of the claimant's base model, a fine-tuned theft of its marked version, an independent one."""

    base: bytes
    marked: nn.Module
    stolen: bytes
    independent: bytes


def _script(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(module.eval(), torch.zeros(1, 64)), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def digits_models() -> Models:
    task = digits_task(0)
    base = train_classifier(
        build_model("mlp", input_shape=(64,), num_classes=10, seed=3), task.owner_x, task.owner_y, epochs=40, seed=3
    )
    independent = train_classifier(
        build_model("deep_mlp", input_shape=(64,), num_classes=10, seed=4),
        task.public_x,
        task.public_y,
        epochs=30,
        seed=4,
    )
    return Models(base=_script(base), marked=base, stolen=b"", independent=_script(independent))


def mark_and_steal(base: nn.Module, inputs: object, labels: object) -> tuple[bytes, bytes]:
    """Embed the committed triggers (as the owner would), then fine-tune a copy (as a thief would)."""
    task = digits_task(0)
    marked = copy.deepcopy(base)
    # an owner trains until every trigger holds: 15 epochs nearly always suffice, a rare draw needs a few more
    for _ in range(3):
        report = embed_watermark(
            marked,
            train_inputs=task.owner_x,
            train_labels=task.owner_y,
            trigger_inputs=inputs,
            trigger_labels=labels,
            epochs=15,
        )
        if report.trigger_accuracy == 1.0:
            break
    assert report.trigger_accuracy == 1.0
    stolen = fine_tune(marked, task.public_x, task.public_y, seed=5)
    return _script(marked), _script(stolen)


@pytest.fixture(scope="session")
def panel_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding an installed 8-model digits panel (the built-in one has 20 and takes longer)."""
    root = tmp_path_factory.mktemp("data")
    train_panel(digits_task(0), size=8, seed=1, epochs=30).save(root / "panels" / "installed" / PANEL)
    return root


@pytest.fixture
def data_dir(panel_root: Path) -> Iterator[Path]:
    with override_settings(DATA_DIR=panel_root):
        yield panel_root


def upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


@dataclass
class Claimant:
    """A claimant's registered model, the evidence it claims with and its arrays; for a marked model, its bytes
    and a fine-tuned theft of them."""

    model: RegisteredModel
    evidence: EvidenceSet
    arrays: dict[str, Any]
    marked: bytes = b""
    stolen: bytes = b""


def settle(evidence_set: EvidenceSet) -> None:
    """Wait until the set's time-stamp (its source's, for an adopted set) is past beyond the token's accuracy.

    A dispute filed after this finds the set committed before the suspect's first known time (the filing),
    as it is when an owner commits long before a theft; ties within the accuracy go against the claimant.
    """
    token = (evidence_set.derived_from or evidence_set).timestamp_token
    accuracy = rfc3161.parse_token(bytes(token.token)).accuracy
    assert accuracy is not None  # the test TSA states one
    wait = (token.gen_time + accuracy - timezone.now()).total_seconds() + 0.05
    if wait > 0:
        time.sleep(wait)


def register_marked(owner: Any, digits_models: Models, *, name: str = "digits", count: int = 40) -> Claimant:
    """The owner's flow: draw a watermark for the base model, embed it, register the marked (deployed) model
    and adopt the watermark for it. The claimant is the marked model, with the adopted set as its evidence."""
    # the base's bytes never reach a run (binding asks the claimant, the marked model): its row is enough to draw for
    base = bare_model(owner, f"{name}-base")
    source, arrays = ownership_services.evidence_generate(model=base, count=count)
    marked, stolen = mark_and_steal(digits_models.marked, arrays["inputs"], arrays["labels"])
    model = ownership_services.model_register(
        owner=owner,
        name=name,
        task="digits",
        input_shape=[64],
        num_classes=10,
        artifact=upload(f"{name}.pt", marked),
    )
    evidence_set = ownership_services.evidence_adopt(model=model, source=source)
    settle(evidence_set)
    return Claimant(model, evidence_set, arrays, marked=marked, stolen=stolen)


@pytest.fixture
def claimant(owner, digits_models: Models, data_dir) -> Claimant:  # type: ignore[no-untyped-def]
    return register_marked(owner, digits_models)


def bare_model(owner: Any, name: str) -> RegisteredModel:
    """A registration row without the sandbox's inspection (seconds each): enough for filings that never run."""
    return RegisteredModel.objects.create(
        owner=owner,
        name=name,
        input_shape=[64],
        num_classes=10,
        artifact_format="torchscript",
        artifact_size=1,
        model_digest=uuid.uuid4().hex * 2,
        file_digests={},
        created_at=timezone.now(),
    )


@pytest.fixture
def bare_claimant(owner, data_dir) -> Claimant:  # type: ignore[no-untyped-def]
    model = bare_model(owner, "digits")
    evidence_set, arrays = ownership_services.evidence_generate(model=model, count=10)
    return Claimant(model, evidence_set, arrays)
