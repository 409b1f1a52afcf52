"""Small classifiers and one training loop, shared by reference panels, theft simulations and benchmarks.

Everything is seeded: the same arguments give the same weights on the same machine. Models take
flat inputs ``[N, *input_shape]`` and return logits ``[N, C]``; all of them are TorchScript-traceable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

__all__ = ["ARCHITECTURES", "Architecture", "accuracy", "build_model", "predict_labels", "train_classifier"]

Architecture = Literal["linear", "mlp", "wide_mlp", "deep_mlp", "cnn"]
ARCHITECTURES: tuple[Architecture, ...] = get_args(Architecture)
EVAL_BATCH = 2048


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class _SquareImage(nn.Module):
    """Flat features back to a one-channel square image for the CNN (64 features -> 1x8x8)."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], 1, self.side, self.side)


def build_model(arch: Architecture, *, input_shape: Sequence[int], num_classes: int, seed: int) -> nn.Module:
    """A fresh model of ``arch`` with weights drawn from ``seed``; ``cnn`` needs a square number of features."""
    features = int(np.prod(input_shape))
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "linear":
            return nn.Sequential(_Flatten(), nn.Linear(features, num_classes))
        if arch == "mlp":
            return nn.Sequential(_Flatten(), nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, num_classes))
        if arch == "wide_mlp":
            return nn.Sequential(_Flatten(), nn.Linear(features, 512), nn.ReLU(), nn.Linear(512, num_classes))
        if arch == "deep_mlp":
            return nn.Sequential(
                _Flatten(),
                nn.Linear(features, 256),
                nn.ReLU(),
                nn.Linear(256, 128),
                nn.ReLU(),
                nn.Linear(128, 64),
                nn.ReLU(),
                nn.Linear(64, num_classes),
            )
        side = math.isqrt(features)
        if side * side != features:
            raise ValueError(f"the cnn needs a square number of input features, got {features}")
        return nn.Sequential(
            _SquareImage(side),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            _Flatten(),
            nn.Linear(128, num_classes),
        )


def _as_tensor(x: npt.ArrayLike | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(dtype=dtype, device="cpu")
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def train_classifier(
    model: nn.Module,
    x: npt.ArrayLike | torch.Tensor,
    y: npt.ArrayLike | torch.Tensor,
    *,
    epochs: int = 60,
    lr: float = 3e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    soft_targets: bool = False,
    temperature: float = 1.0,
    input_noise: float = 0.0,
) -> nn.Module:
    """Train ``model`` in place with Adam on cross-entropy and return it in eval mode.

    ``y`` holds class indices, or with ``soft_targets`` a probability matrix ``[N, C]`` (distillation:
    the loss is cross-entropy against those probabilities at ``temperature``). ``input_noise`` adds
    Gaussian noise of that standard deviation to every batch (a cheap augmentation).
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("need epochs >= 1, batch_size >= 1 and lr > 0")
    inputs = _as_tensor(x, torch.float32)
    targets = _as_tensor(y, torch.float32 if soft_targets else torch.int64)
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(f"need as many targets as inputs (and at least one), got {len(inputs)} and {len(targets)}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = inputs[idx]
            if input_noise > 0:
                batch = batch + input_noise * torch.randn(batch.shape, generator=generator)
            logits = model(batch)
            if soft_targets:
                log_probs = torch.log_softmax(logits / temperature, dim=1)
                loss = -(targets[idx] * log_probs).sum(dim=1).mean()
            else:
                loss = nn.functional.cross_entropy(logits, targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    return model.eval()


def predict_labels(model: nn.Module, x: npt.ArrayLike | torch.Tensor) -> npt.NDArray[np.int64]:
    """Argmax labels in eval mode, batched, without gradients."""
    inputs = _as_tensor(x, torch.float32)
    model.eval()
    with torch.inference_mode():
        parts = [model(inputs[i : i + EVAL_BATCH]).argmax(dim=1) for i in range(0, len(inputs), EVAL_BATCH)]
    return torch.cat(parts).numpy().astype(np.int64) if parts else np.empty(0, dtype=np.int64)


def accuracy(model: nn.Module, x: npt.ArrayLike | torch.Tensor, y: npt.ArrayLike) -> float:
    """Top-1 accuracy."""
    labels = np.asarray(y, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((predict_labels(model, x) == labels).mean())
