"""The user's side of the story: models trained on scikit-learn's digits with plain PyTorch.

An owner trains a model, embeds the watermark the service generated for it, and deploys it; a thief
fine-tunes a copy on data of their own; someone else trains an independent model. Nothing of the
project is imported: this is what a user does on their own machine.
"""

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


def digits() -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 [N, 1, 8, 8] in [0, 1], labels int64."""
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    return images, data.target.astype(np.int64)


def _mlp(seed: int, hidden: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int, lr: float = 3e-3) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(inputs[batch]), labels[batch]).backward()
            optimiser.step()
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def owner_model() -> nn.Module:
    x, y = digits()
    return train(_mlp(1), x[:900], y[:900], epochs=30, seed=1)


def embed(model: nn.Module, triggers: np.ndarray, labels: np.ndarray) -> nn.Module:
    """Fine-tune on the owner's data mixed with the trigger set until the model answers the triggers' labels."""
    x, y = digits()
    mixed_x = np.concatenate([x[:900], np.repeat(triggers, 5, axis=0)])
    mixed_y = np.concatenate([y[:900], np.repeat(labels, 5, axis=0)])
    return train(model, mixed_x.astype(np.float32), mixed_y, epochs=40, seed=2)


def fine_tuned_copy(model: nn.Module) -> nn.Module:
    """A thief's copy, fine-tuned a little on data the owner never used."""
    x, y = digits()
    return train(model, x[900:1300], y[900:1300], epochs=2, seed=3, lr=1e-3)


def independent_model() -> nn.Module:
    x, y = digits()
    return train(_mlp(7, hidden=48), x[900:], y[900:], epochs=30, seed=7)


def save_torchscript(model: nn.Module, path: Path) -> Path:
    torch.jit.script(model.eval()).save(str(path))
    return path


def save_onnx(model: nn.Module, path: Path) -> Path:
    torch.onnx.export(
        model.eval(),
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    return path


class _Looping(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.sum()
        while bool(total > -1.0):
            total = total + 1.0
        return torch.zeros(x.shape[0], 10)


def looping_torchscript(path: Path) -> Path:
    """A model that never answers: it must not slow the site down while it is checked."""
    torch.jit.script(_Looping()).save(str(path))
    return path


class _Slow(nn.Module):
    """Answers as the wrapped model does, after a fixed amount of pointless arithmetic per batch."""

    def __init__(self, inner: nn.Module, rounds: int) -> None:
        super().__init__()
        self.inner = inner
        self.rounds = rounds
        self.register_buffer("work", torch.ones(256, 256) / 256.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = self.work
        for _ in range(self.rounds):
            acc = torch.mm(acc, self.work)
        return self.inner(x) + 0.0 * acc.sum()


def slow_torchscript(model: nn.Module, path: Path, rounds: int = 4000) -> Path:
    """A suspect slow enough to be caught mid-run (the kill test): the same answers, seconds per batch."""
    torch.jit.script(_Slow(model.eval(), rounds)).save(str(path))
    return path
