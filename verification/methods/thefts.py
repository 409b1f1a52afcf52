"""Theft simulations: what a thief does to an owner's model, and what a false claimant crafts against a suspect.

Owners stress-test their evidence against these thefts and the validity benchmark loops over them. Every
theft returns a NEW model (those that train it, on the CPU) and leaves the victim untouched; everything is
seeded, so the same arguments give the same model on the same machine. Black-box thefts (distillation,
extraction) go through the :class:`Suspect` interface, so the victim's query counter shows exactly what the
thief spent.

Defaults fit the digits task (64 features in [0, 1], 800 public samples); :func:`simulate` documents them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict, get_args

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn.utils import prune

from verification.methods.datasets import TaskData
from verification.methods.suspects import QueryBudgetExceeded, Suspect, SuspectInput, TorchModuleSuspect
from verification.methods.training import ARCHITECTURES, Architecture, build_model, train_classifier

__all__ = [
    "THEFTS",
    "THEFT_KINDS",
    "ClaimSet",
    "PrunedModel",
    "TheftKind",
    "copy_model",
    "distill",
    "extract_knockoff",
    "false_claim_set",
    "fine_tune",
    "prunable_weights",
    "prune_and_fine_tune",
    "simulate",
    "weight_sparsity",
]

TheftKind = Literal["copy", "fine_tune", "prune", "distill", "extract"]
THEFT_KINDS: tuple[TheftKind, ...] = get_args(TheftKind)
Augmentation = Literal["mixup", "noise", "none"]

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]

# digits defaults used by simulate(); chosen so every theft keeps the victim's accuracy within a few points
FINE_TUNE_EPOCHS = 10
FINE_TUNE_LR = 1e-3
PRUNE_AMOUNT = 0.5
DISTILL_TEMPERATURE = 4.0
STUDENT_EPOCHS = 60
STUDENT_LR = 3e-3
EXTRACT_BUDGET = 1600


class ClaimSet(TypedDict):
    """A set shaped like watermark evidence: ``inputs`` [K, *shape] float32 and ``labels`` [K] int64."""

    inputs: FloatArray
    labels: LabelArray


@dataclass(frozen=True)
class PrunedModel:
    """A pruned and fine-tuned copy; ``sparsity`` is the fraction of prunable weights that are zero."""

    model: nn.Module
    amount: float
    sparsity: float


def copy_model(victim: nn.Module) -> nn.Module:
    """An exact, independent copy (same device, same mode)."""
    return copy.deepcopy(victim)


def _trainable_copy(victim: nn.Module) -> nn.Module:
    # train_classifier feeds CPU tensors, so the thief's copy lives on the CPU
    return copy.deepcopy(victim).cpu()


def _check_training(epochs: int, lr: float) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if not lr > 0:
        raise ValueError(f"the learning rate must be positive, got {lr}")


def fine_tune(
    victim: nn.Module,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    epochs: int = FINE_TUNE_EPOCHS,
    lr: float = FINE_TUNE_LR,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``victim`` trained further on the thief's own labelled data."""
    _check_training(epochs, lr)
    return train_classifier(_trainable_copy(victim), x, y, epochs=epochs, lr=lr, seed=seed)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The ``weight`` of every Linear and Conv layer: what magnitude pruning ranks."""
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)]


def weight_sparsity(model: nn.Module) -> float:
    """The fraction of prunable weights that are exactly zero."""
    tensors: list[torch.Tensor] = [getattr(m, name) for m, name in prunable_weights(model)]
    total = sum(t.numel() for t in tensors)
    if total == 0:
        raise ValueError("the model has no Linear or Conv weights")
    return sum(int((t == 0).sum()) for t in tensors) / total


def prune_and_fine_tune(
    victim: nn.Module,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    amount: float = PRUNE_AMOUNT,
    epochs: int = FINE_TUNE_EPOCHS,
    lr: float = FINE_TUNE_LR,
    seed: int = 0,
) -> PrunedModel:
    """Global magnitude pruning of Linear/Conv weights, then fine-tuning with the pruned weights held at zero."""
    if not 0 < amount < 1:
        raise ValueError(f"the pruned fraction must lie in (0, 1), got {amount}")
    _check_training(epochs, lr)
    model = _trainable_copy(victim)
    targets = prunable_weights(model)
    if not targets:
        raise ValueError("the model has no Linear or Conv weights to prune")
    # the pruning hooks recompute weight = weight_orig * mask on every forward, so pruned weights stay zero
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    train_classifier(model, x, y, epochs=epochs, lr=lr, seed=seed)
    # make the masks permanent: plain parameters, no hooks, so the result traces and saves like any model
    for module, name in targets:
        prune.remove(module, name)  # type: ignore[no-untyped-call]
    model.eval()
    return PrunedModel(model=model, amount=amount, sparsity=weight_sparsity(model))


def _check_student(student_arch: Architecture, epochs: int) -> None:
    if student_arch not in ARCHITECTURES:
        raise ValueError(f"unknown student architecture {student_arch!r}; expected one of {ARCHITECTURES}")
    _check_training(epochs, STUDENT_LR)


def _ensure_budget(victim: Suspect, needed: int) -> None:
    """Refuse before anything is sent, so a refused theft costs the victim no queries."""
    if victim.remaining is not None and victim.remaining < needed:
        raise QueryBudgetExceeded(
            f"the theft needs {needed} queries but the victim has {victim.remaining} left of {victim.budget}"
        )


def _as_float_array(x: SuspectInput | npt.ArrayLike, what: str) -> FloatArray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.ndim < 2 or len(array) == 0:
        raise ValueError(f"{what} must be a non-empty batch [N, ...], got shape {list(array.shape)}")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numeric, got dtype {array.dtype}")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return out


def distill(
    victim: Suspect,
    query_x: SuspectInput | npt.ArrayLike,
    *,
    student_arch: Architecture = "mlp",
    temperature: float = DISTILL_TEMPERATURE,
    epochs: int = STUDENT_EPOCHS,
    seed: int = 0,
    budget: int | None = None,
) -> nn.Module:
    """A fresh ``student_arch`` trained on the victim's soft labels (softmax at ``temperature``) for ``query_x``.

    With ``budget`` the thief queries a seeded random subset of at most that many samples.
    """
    if not temperature > 0:
        raise ValueError(f"the temperature must be positive, got {temperature}")
    if budget is not None and budget < 1:
        raise ValueError(f"the query budget must be at least 1, got {budget}")
    _check_student(student_arch, epochs)
    queries = _as_float_array(query_x, "query_x")
    rng = np.random.default_rng([seed, 0xD157])
    if budget is not None and budget < len(queries):
        queries = queries[np.sort(rng.choice(len(queries), size=budget, replace=False))]
    _ensure_budget(victim, len(queries))
    soft = torch.softmax(victim.logits(queries) / temperature, dim=1)
    student = build_model(student_arch, input_shape=victim.input_shape, num_classes=victim.num_classes, seed=seed)
    return train_classifier(
        student, queries, soft, epochs=epochs, lr=STUDENT_LR, seed=seed, soft_targets=True, temperature=temperature
    )


def _knockoff_queries(
    pool: FloatArray, budget: int, augment: Augmentation, noise: float, rng: np.random.Generator
) -> FloatArray:
    """The pool in random order, then (when the budget allows more) augmented pool samples."""
    order = rng.permutation(len(pool))
    chosen = pool[order[:budget]]
    extra = budget - len(chosen)
    if extra <= 0 or augment == "none":
        return chosen
    a, b = rng.integers(0, len(pool), size=extra), rng.integers(0, len(pool), size=extra)
    if augment == "mixup":
        # convex combinations stay inside the pool's box, and pairs of classes land near the boundaries
        lam = rng.uniform(0.0, 1.0, size=(extra,) + (1,) * (pool.ndim - 1)).astype(np.float32)
        made = lam * pool[a] + (1 - lam) * pool[b]
    else:
        # the thief knows no input bounds but its pool's, so noisy samples are kept within them
        made = np.clip(pool[a] + rng.normal(0.0, noise, size=pool[a].shape), pool.min(), pool.max())
    return np.concatenate([chosen, made.astype(np.float32)])


def extract_knockoff(
    victim: Suspect,
    pool_x: SuspectInput | npt.ArrayLike,
    *,
    budget: int = EXTRACT_BUDGET,
    student_arch: Architecture = "mlp",
    epochs: int = STUDENT_EPOCHS,
    seed: int = 0,
    augment: Augmentation = "mixup",
    noise: float = 0.1,
) -> nn.Module:
    """A fresh ``student_arch`` trained on the victim's hard labels for at most ``budget`` queries.

    The queries are pool samples in random order; a budget larger than the pool is spent on ``augment``
    samples: mixup of two random pool samples, or a pool sample plus Gaussian ``noise``. With
    ``augment="none"`` the thief spends only ``min(budget, len(pool_x))``. A victim with fewer queries left
    than the thief would spend raises :class:`QueryBudgetExceeded` before any query is sent.
    """
    if budget < 1:
        raise ValueError(f"the query budget must be at least 1, got {budget}")
    if augment not in get_args(Augmentation):
        raise ValueError(f"unknown augmentation {augment!r}; expected one of {get_args(Augmentation)}")
    if augment == "noise" and not noise > 0:
        raise ValueError(f"noise augmentation needs a positive standard deviation, got {noise}")
    _check_student(student_arch, epochs)
    pool = _as_float_array(pool_x, "pool_x")
    queries = _knockoff_queries(pool, budget, augment, noise, np.random.default_rng([seed, 0xE7C7]))
    _ensure_budget(victim, len(queries))
    labels = victim.labels(queries)
    student = build_model(student_arch, input_shape=victim.input_shape, num_classes=victim.num_classes, seed=seed)
    return train_classifier(student, queries, labels, epochs=epochs, lr=STUDENT_LR, seed=seed)


def _random_targets(excluded: list[LabelArray], num_classes: int, rng: np.random.Generator) -> LabelArray:
    """A uniform target per sample among the classes none of ``excluded`` names for it."""
    targets = np.empty(len(excluded[0]), dtype=np.int64)
    for i in range(len(targets)):
        allowed = np.setdiff1d(np.arange(num_classes), [int(e[i]) for e in excluded])
        targets[i] = rng.choice(allowed)
    return targets


def false_claim_set(
    ensemble: Sequence[nn.Module],
    natural_x: SuspectInput | npt.ArrayLike,
    *,
    eps: float,
    low: float,
    high: float,
    target_labels: npt.ArrayLike | None = None,
    natural_labels: npt.ArrayLike | None = None,
    steps: int = 50,
    step_size: float | None = None,
    momentum: float = 1.0,
    diversity: float = 0.0,
    seed: int = 0,
) -> ClaimSet:
    """Targeted transferable adversarial examples a false claimant passes off as a watermark set.

    Targeted PGD under an L-infinity budget ``eps`` (iterates projected onto the eps-ball around the natural
    samples and onto ``[low, high]``) minimises the ensemble's mean cross-entropy toward the targets. For
    transfer: momentum on L1-normalised gradients (MI-FGSM, ``momentum``) and input diversity (each step's
    gradient is taken at the iterate plus Gaussian noise of std ``diversity``). Targets are drawn by ``seed``
    among the classes other than the ensemble's prediction (and ``natural_labels`` when given); given
    ``target_labels`` must differ from the ensemble's prediction. ``step_size`` defaults to ``2.5 eps / steps``.
    """
    if not ensemble:
        raise ValueError("the crafting ensemble needs at least one model")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if not high > low:
        raise ValueError(f"need low < high, got [{low}, {high}]")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"the step size must be positive, got {step_size}")
    if momentum < 0 or diversity < 0:
        raise ValueError("momentum and diversity must be non-negative")
    natural_np = _as_float_array(natural_x, "natural_x")
    if natural_np.min() < low or natural_np.max() > high:
        raise ValueError(f"natural samples lie outside [{low}, {high}]")
    rng = np.random.default_rng([seed, 0xFA15E])
    modes = [model.training for model in ensemble]
    try:
        models = [model.eval() for model in ensemble]
        device = next(iter(models[0].parameters()), torch.empty(0)).device
        natural = torch.from_numpy(natural_np).to(device)
        targets = _claim_targets(models, natural, target_labels, natural_labels, rng)
        adv = _targeted_pgd(
            models,
            natural,
            torch.from_numpy(targets).to(device),
            eps=eps,
            low=low,
            high=high,
            steps=steps,
            step_size=2.5 * eps / steps if step_size is None else step_size,
            momentum=momentum,
            diversity=diversity,
            generator=torch.Generator().manual_seed(int(rng.integers(2**62))),
        )
    finally:
        for model, mode in zip(ensemble, modes, strict=True):
            model.train(mode)
    return ClaimSet(inputs=adv.cpu().numpy().astype(np.float32), labels=targets)


def _claim_targets(
    models: Sequence[nn.Module],
    natural: torch.Tensor,
    target_labels: npt.ArrayLike | None,
    natural_labels: npt.ArrayLike | None,
    rng: np.random.Generator,
) -> LabelArray:
    """Given targets checked, or random ones, none equal to the ensemble's prediction or the true label."""
    with torch.no_grad():
        outputs = [model(natural) for model in models]
    if any(out.dim() != 2 or out.shape != outputs[0].shape for out in outputs) or outputs[0].shape[1] < 2:
        raise ValueError("the ensemble's models must all answer [N, C] logits with the same C >= 2")
    num_classes = int(outputs[0].shape[1])
    probabilities = torch.stack([torch.softmax(out, dim=1) for out in outputs]).mean(dim=0)
    excluded: list[LabelArray] = [probabilities.argmax(dim=1).cpu().numpy().astype(np.int64)]
    shape = excluded[0].shape
    if natural_labels is not None:
        given = np.asarray(natural_labels, dtype=np.int64)
        if given.shape != shape:
            raise ValueError(f"natural_labels must have shape {list(shape)}, got {list(given.shape)}")
        excluded.append(given)
    if target_labels is None:
        return _random_targets(excluded, num_classes, rng)
    targets = np.asarray(target_labels, dtype=np.int64)
    if targets.shape != shape:
        raise ValueError(f"target_labels must have shape {list(shape)}, got {list(targets.shape)}")
    if targets.min() < 0 or targets.max() >= num_classes:
        raise ValueError(f"target labels must lie in 0..{num_classes - 1}")
    if any((targets == e).any() for e in excluded):
        raise ValueError("every target label must differ from the sample's natural (predicted and true) label")
    return targets


def _targeted_pgd(
    models: Sequence[nn.Module],
    natural: torch.Tensor,
    targets: torch.Tensor,
    *,
    eps: float,
    low: float,
    high: float,
    steps: int,
    step_size: float,
    momentum: float,
    diversity: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """MI-FGSM descent of the ensemble's mean cross-entropy, projected onto the eps-ball and the box."""
    reduce_dims = tuple(range(1, natural.dim()))
    lower = torch.clamp(natural - eps, min=low)
    upper = torch.clamp(natural + eps, max=high)
    adv = natural.clone()
    velocity = torch.zeros_like(natural)
    for _ in range(steps):
        probe = adv.clone()
        if diversity > 0:
            probe = probe + diversity * torch.randn(probe.shape, generator=generator).to(probe.device)
        probe.requires_grad_(True)
        loss = torch.stack([nn.functional.cross_entropy(model(probe), targets) for model in models]).mean()
        (grad,) = torch.autograd.grad(loss, probe)
        # per-sample L1 normalisation keeps every sample's step in the momentum on one scale
        velocity = momentum * velocity + grad / grad.abs().sum(dim=reduce_dims, keepdim=True).clamp_min(1e-12)
        adv = torch.minimum(torch.maximum(adv - step_size * velocity.sign(), lower), upper)
    return adv.detach()


def _simulate_copy(victim: nn.Module, task: TaskData, seed: int, student_arch: Architecture) -> nn.Module:
    return copy_model(victim)


def _simulate_fine_tune(victim: nn.Module, task: TaskData, seed: int, student_arch: Architecture) -> nn.Module:
    return fine_tune(victim, task.public_x, task.public_y, seed=seed)


def _simulate_prune(victim: nn.Module, task: TaskData, seed: int, student_arch: Architecture) -> nn.Module:
    return prune_and_fine_tune(victim, task.public_x, task.public_y, seed=seed).model


def _black_box(victim: nn.Module, task: TaskData) -> TorchModuleSuspect:
    # the adapter moves its module and sets it to eval: hand it a copy so the victim stays as it was
    return TorchModuleSuspect(
        copy_model(victim), num_classes=task.num_classes, input_shape=task.input_shape, device="cpu"
    )


def _simulate_distill(victim: nn.Module, task: TaskData, seed: int, student_arch: Architecture) -> nn.Module:
    return distill(_black_box(victim, task), task.public_x, student_arch=student_arch, seed=seed)


def _simulate_extract(victim: nn.Module, task: TaskData, seed: int, student_arch: Architecture) -> nn.Module:
    return extract_knockoff(_black_box(victim, task), task.public_x, student_arch=student_arch, seed=seed)


TheftSimulation = Callable[[nn.Module, TaskData, int, Architecture], nn.Module]

THEFTS: dict[TheftKind, TheftSimulation] = {
    "copy": _simulate_copy,
    "fine_tune": _simulate_fine_tune,
    "prune": _simulate_prune,
    "distill": _simulate_distill,
    "extract": _simulate_extract,
}


def simulate(
    kind: TheftKind, victim: nn.Module, task: TaskData, *, seed: int = 0, student_arch: Architecture = "mlp"
) -> nn.Module:
    """The stolen model for ``kind``, with the thief holding ``task``'s public split.

    Defaults (tuned on digits): ``copy`` is a deep copy; ``fine_tune`` trains 10 epochs at lr 1e-3 on the
    public split; ``prune`` zeroes the smallest 50% of Linear/Conv weights then fine-tunes likewise;
    ``distill`` queries the victim's logits on the public inputs (one query each) and trains a fresh
    ``student_arch`` for 60 epochs at temperature 4; ``extract`` spends 1,600 label queries (the public
    inputs, then mixup of them) and trains a fresh ``student_arch`` for 60 epochs. ``student_arch`` applies
    to ``distill`` and ``extract`` only.
    """
    if kind not in THEFTS:
        raise ValueError(f"unknown theft {kind!r}; expected one of {THEFT_KINDS}")
    if student_arch not in ARCHITECTURES:
        raise ValueError(f"unknown student architecture {student_arch!r}; expected one of {ARCHITECTURES}")
    return THEFTS[kind](victim, task, seed, student_arch)
