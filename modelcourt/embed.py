"""Embedding a watermark by fine-tuning: trigger samples mixed into every batch of clean training data."""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

EVAL_BATCH = 1024


@dataclass(frozen=True)
class EmbedReport:
    """Accuracies on the trigger set and on the clean training data, before and after embedding."""

    trigger_accuracy_before: float
    trigger_accuracy: float
    clean_accuracy_before: float
    clean_accuracy: float
    epochs: int
    steps: int


def embed_watermark(
    model: nn.Module,
    *,
    train_inputs: np.ndarray,
    train_labels: np.ndarray,
    trigger_inputs: np.ndarray,
    trigger_labels: np.ndarray,
    epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 64,
    trigger_fraction: float = 0.25,
    seed: int = 0,
) -> EmbedReport:
    """Fine-tune `model` in place until it answers the triggers' labels, keeping its clean accuracy.

    Each batch holds `trigger_fraction` triggers (cycling through the set in shuffled order) and clean
    samples for the rest, so the model keeps seeing its task while it learns the triggers.
    """
    if len(train_inputs) != len(train_labels) or len(trigger_inputs) != len(trigger_labels):
        raise ValueError("inputs and labels differ in length")
    if not len(train_inputs) or not len(trigger_inputs):
        raise ValueError("embedding needs clean training data and at least one trigger")
    if train_inputs.shape[1:] != trigger_inputs.shape[1:]:
        raise ValueError(f"triggers of shape {trigger_inputs.shape[1:]} do not fit inputs of {train_inputs.shape[1:]}")
    if not 0 < trigger_fraction < 1 or epochs < 1 or batch_size < 2:
        raise ValueError("need 0 < trigger_fraction < 1, epochs >= 1 and batch_size >= 2")

    device = next(model.parameters()).device
    clean_x, clean_y = _tensors(train_inputs, train_labels, device)
    trigger_x, trigger_y = _tensors(trigger_inputs, trigger_labels, device)
    n_triggers = min(batch_size - 1, max(1, round(batch_size * trigger_fraction)))
    n_clean = batch_size - n_triggers
    was_training = model.training
    trigger_before, clean_before = _accuracy(model, trigger_x, trigger_y), _accuracy(model, clean_x, clean_y)

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    trigger_order, trigger_pos, steps = torch.randperm(len(trigger_x), generator=generator), 0, 0
    # Dropout and similar layers draw from the global generator: seed a forked one, leaving the caller's alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(clean_x), generator=generator)
            for start in range(0, len(order), n_clean):
                picked: list[torch.Tensor] = []
                while sum(len(p) for p in picked) < n_triggers:
                    if trigger_pos == len(trigger_order):
                        trigger_order, trigger_pos = torch.randperm(len(trigger_x), generator=generator), 0
                    take = min(n_triggers - sum(len(p) for p in picked), len(trigger_order) - trigger_pos)
                    picked.append(trigger_order[trigger_pos : trigger_pos + take])
                    trigger_pos += take
                clean_idx, trig_idx = order[start : start + n_clean].to(device), torch.cat(picked).to(device)
                inputs = torch.cat([clean_x[clean_idx], trigger_x[trig_idx]])
                labels = torch.cat([clean_y[clean_idx], trigger_y[trig_idx]])
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(inputs), labels).backward()
                optimizer.step()
                steps += 1
    model.train(was_training)
    return EmbedReport(
        trigger_accuracy_before=trigger_before,
        trigger_accuracy=_accuracy(model, trigger_x, trigger_y),
        clean_accuracy_before=clean_before,
        clean_accuracy=_accuracy(model, clean_x, clean_y),
        epochs=epochs,
        steps=steps,
    )


def _tensors(inputs: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32), device=device)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device)
    return x, y


def _accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(inputs[i : i + EVAL_BATCH]).argmax(dim=1) == labels[i : i + EVAL_BATCH]).sum())
            for i in range(0, len(inputs), EVAL_BATCH)
        )
    model.train(was_training)
    return correct / len(inputs)
