"""Shared, session-scoped digits fixtures for the methods tests: the task, an owner model, a small panel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from verification.methods.datasets import TaskData, digits_task
from verification.methods.panels import ReferencePanel, train_panel
from verification.methods.training import build_model, train_classifier

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> TaskData:
    return digits_task(0)


@pytest.fixture(scope="session")
def digits_owner(digits: TaskData) -> nn.Module:
    """The claimant's MLP, trained on the owner split only."""
    model = build_model("mlp", input_shape=digits.input_shape, num_classes=digits.num_classes, seed=7)
    return train_classifier(model, digits.owner_x, digits.owner_y, epochs=40, seed=7)


@pytest.fixture(scope="session")
def digits_panel(digits: TaskData) -> ReferencePanel:
    """Eight independent reference models (small, for speed; the benchmark uses twenty)."""
    return train_panel(digits, size=8, seed=1, epochs=30)
