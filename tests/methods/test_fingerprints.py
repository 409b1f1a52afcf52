"""Fingerprints: the owner's model and its derivatives agree, independent models do not."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from torch import nn

from verification.methods.datasets import TaskData
from verification.methods.fingerprints import generate_fingerprints
from verification.methods.panels import ReferencePanel, train_panel
from verification.methods.screen import false_claim_screen
from verification.methods.training import build_model, predict_labels, train_classifier


@pytest.fixture(scope="module")
def owner_references(digits: TaskData) -> list[nn.Module]:
    """The owner's own independent models (other seeds than the judging panel)."""
    return train_panel(digits, size=4, seed=900, epochs=30, name_prefix="own").modules


def test_fingerprints_are_conferrable(
    digits: TaskData, digits_owner: nn.Module, owner_references: list[nn.Module], digits_panel: ReferencePanel
) -> None:
    surrogate = copy.deepcopy(digits_owner)
    train_classifier(surrogate, digits.owner_x, digits.owner_y, epochs=5, lr=1e-3, seed=3)
    fps = generate_fingerprints(
        digits_owner, digits.holdout_x, references=owner_references, surrogates=[surrogate], count=30, seed=0
    )
    assert fps.inputs.shape == (30, 64)
    assert fps.labels.shape == (30,)
    assert fps.inputs.dtype == np.float32
    assert fps.labels.dtype == np.int64
    assert fps.inputs.min() >= 0.0
    assert fps.inputs.max() <= 1.0
    # labels are the owner's answers
    assert np.array_equal(predict_labels(digits_owner, fps.inputs), fps.labels)
    # a thief's fine-tuned copy keeps most of them
    stolen = copy.deepcopy(digits_owner)
    train_classifier(stolen, digits.public_x, digits.public_y, epochs=10, lr=1e-3, seed=11)
    assert (predict_labels(stolen, fps.inputs) == fps.labels).mean() >= 0.7
    # the judging panel (never seen during generation) hardly agrees, and the screen lets the set pass
    panel_labels = digits_panel.labels(fps.inputs)
    assert (panel_labels == fps.labels[None, :]).mean() < 0.15
    assert not false_claim_screen(
        name="fp", claimed_labels=fps.labels, panel_labels=panel_labels, num_classes=10
    ).rejected
    independent = train_classifier(
        build_model("mlp", input_shape=(64,), num_classes=10, seed=77),
        digits.public_x,
        digits.public_y,
        epochs=30,
        seed=77,
    )
    assert (predict_labels(independent, fps.inputs) == fps.labels).mean() < 0.2


def test_fingerprints_are_deterministic(
    digits: TaskData, digits_owner: nn.Module, owner_references: list[nn.Module]
) -> None:
    a = generate_fingerprints(digits_owner, digits.holdout_x, references=owner_references, count=10, steps=20, seed=4)
    b = generate_fingerprints(digits_owner, digits.holdout_x, references=owner_references, count=10, steps=20, seed=4)
    assert np.array_equal(a.inputs, b.inputs)
    assert np.array_equal(a.labels, b.labels)


def test_fingerprint_errors_are_readable(
    digits: TaskData, digits_owner: nn.Module, owner_references: list[nn.Module]
) -> None:
    with pytest.raises(ValueError, match="reference"):
        generate_fingerprints(digits_owner, digits.holdout_x, references=[])
    with pytest.raises(ValueError, match="natural samples"):
        generate_fingerprints(digits_owner, digits.holdout_x[:0], references=owner_references)
    with pytest.raises(ValueError, match="candidates became fingerprints"):
        generate_fingerprints(
            digits_owner, digits.holdout_x[:12], references=owner_references, count=10, eps=0.01, steps=2
        )
