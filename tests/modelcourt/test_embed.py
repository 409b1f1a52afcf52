"""Embedding a verifiable watermark into a small digits classifier by fine-tuning."""

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from modelcourt.embed import embed_watermark
from ownership.watermarks import generate_watermark


def _accuracy(model: nn.Module, inputs: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(torch.as_tensor(inputs)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    inputs, labels = load_digits(return_X_y=True)
    return train_test_split(
        (inputs / 16).astype(np.float32), labels.astype(np.int64), test_size=0.3, random_state=0, stratify=labels
    )


def _trained_mlp(inputs: np.ndarray, labels: np.ndarray) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y, generator = torch.as_tensor(inputs), torch.as_tensor(labels), torch.Generator().manual_seed(0)
    for _ in range(20):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model


def test_embedding_learns_the_triggers_and_keeps_test_accuracy(
    digits: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    train_x, test_x, train_y, test_y = digits
    model = _trained_mlp(train_x, train_y)
    test_before = _accuracy(model, test_x, test_y)
    triggers = generate_watermark(seed=b"digits watermark", count=100, input_shape=[64], num_classes=10)

    report = embed_watermark(
        model,
        train_inputs=train_x,
        train_labels=train_y,
        trigger_inputs=triggers["inputs"],
        trigger_labels=triggers["labels"],
        seed=0,
    )

    assert test_before > 0.95
    assert report.trigger_accuracy_before < 0.3
    assert report.trigger_accuracy >= 0.95
    assert _accuracy(model, triggers["inputs"], triggers["labels"]) == report.trigger_accuracy
    assert abs(_accuracy(model, test_x, test_y) - test_before) <= 0.02


def test_embedding_is_deterministic_for_a_seed(digits: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
    train_x, _, train_y, _ = digits
    triggers = generate_watermark(seed=b"again", count=20, input_shape=[64], num_classes=10)
    models = [_trained_mlp(train_x[:300], train_y[:300]) for _ in range(2)]

    for model in models:
        embed_watermark(
            model,
            train_inputs=train_x[:300],
            train_labels=train_y[:300],
            trigger_inputs=triggers["inputs"],
            trigger_labels=triggers["labels"],
            epochs=3,
            seed=7,
        )

    first, second = (torch.cat([p.flatten() for p in m.parameters()]) for m in models)
    assert torch.equal(first, second)


def test_triggers_of_another_shape_are_refused(digits: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
    train_x, _, train_y, _ = digits
    triggers = generate_watermark(seed=b"x", count=5, input_shape=[1, 8, 8], num_classes=10)

    with pytest.raises(ValueError, match="do not fit"):
        embed_watermark(
            _trained_mlp(train_x[:10], train_y[:10]),
            train_inputs=train_x,
            train_labels=train_y,
            trigger_inputs=triggers["inputs"],
            trigger_labels=triggers["labels"],
        )
