"""Theft simulations: stolen models keep the victim's behaviour, the victim is untouched, queries are counted."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from verification.methods.datasets import TaskData, digits_task
from verification.methods.suspects import QueryBudgetExceeded, TorchModuleSuspect
from verification.methods.thefts import (
    THEFT_KINDS,
    THEFTS,
    copy_model,
    distill,
    extract_knockoff,
    false_claim_set,
    fine_tune,
    prune_and_fine_tune,
    simulate,
    weight_sparsity,
)
from verification.methods.training import Architecture, accuracy, build_model, predict_labels, train_classifier

torch.set_num_threads(1)

NATURAL = 60  # samples a false claimant perturbs
UNKNOWN: Any = "unknown"  # a name no registry holds, typed loosely to reach the runtime checks
CRAFTING_ENSEMBLE: tuple[tuple[Architecture, int], ...] = (("mlp", 1), ("wide_mlp", 2), ("deep_mlp", 3))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def agreement(model: nn.Module, reference: nn.Module, x: np.ndarray) -> float:
    return float((predict_labels(model, x) == predict_labels(reference, x)).mean())


@pytest.fixture(scope="module")
def task() -> TaskData:
    return digits_task(0)


@pytest.fixture(scope="module")
def victim(task: TaskData) -> nn.Module:
    model = build_model("mlp", input_shape=task.input_shape, num_classes=task.num_classes, seed=0)
    return train_classifier(model, task.owner_x, task.owner_y, seed=0)


@pytest.fixture(scope="module")
def stolen(victim: nn.Module, task: TaskData) -> dict[str, Any]:
    """Every default theft of the victim, with the victim's weights before and after."""
    before = snapshot(victim)
    models = {kind: simulate(kind, victim, task, seed=0) for kind in THEFT_KINDS}
    return {"before": before, "after": snapshot(victim), "models": models}


@pytest.fixture(scope="module")
def ensemble(task: TaskData) -> list[nn.Module]:
    """A false claimant's crafting ensemble: independent models trained on the public split."""
    return [
        train_classifier(
            build_model(arch, input_shape=task.input_shape, num_classes=task.num_classes, seed=seed),
            task.public_x,
            task.public_y,
            seed=seed,
        )
        for arch, seed in CRAFTING_ENSEMBLE
    ]


def suspect_of(model: nn.Module, task: TaskData, budget: int | None = None) -> TorchModuleSuspect:
    return TorchModuleSuspect(
        copy_model(model), num_classes=task.num_classes, input_shape=task.input_shape, device="cpu", budget=budget
    )


def test_registry_covers_every_kind() -> None:
    assert set(THEFTS) == set(THEFT_KINDS) == {"copy", "fine_tune", "prune", "distill", "extract"}


def test_copy_is_a_new_object_that_agrees_everywhere(stolen: dict[str, Any], victim: nn.Module, task: TaskData) -> None:
    copied = stolen["models"]["copy"]

    assert copied is not victim
    assert all(p is not q for p, q in zip(copied.parameters(), victim.parameters(), strict=True))
    assert agreement(copied, victim, task.holdout_x) == 1.0


def test_no_theft_changes_the_victim(stolen: dict[str, Any]) -> None:
    assert same_weights(stolen["before"], stolen["after"])


@pytest.mark.parametrize("kind", THEFT_KINDS)
def test_every_theft_returns_a_distinct_model(stolen: dict[str, Any], victim: nn.Module, kind: str) -> None:
    model = stolen["models"][kind]

    assert isinstance(model, nn.Module)
    assert model is not victim
    assert not model.training


@pytest.mark.parametrize("kind", ["fine_tune", "prune"])
def test_fine_tuned_and_pruned_copies_keep_accuracy(
    stolen: dict[str, Any], victim: nn.Module, task: TaskData, kind: str
) -> None:
    victim_acc = accuracy(victim, task.holdout_x, task.holdout_y)

    stolen_acc = accuracy(stolen["models"][kind], task.holdout_x, task.holdout_y)

    assert stolen_acc >= victim_acc - 0.05


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.parametrize("amount", [0.5, 0.8])
def test_pruning_reaches_sparsity_and_traces(victim: nn.Module, task: TaskData, amount: float) -> None:
    result = prune_and_fine_tune(victim, task.public_x, task.public_y, amount=amount, epochs=3, seed=0)

    assert result.sparsity >= amount - 0.01
    assert weight_sparsity(result.model) == result.sparsity
    assert not any(name.endswith("_orig") for name, _ in result.model.named_parameters())
    x = torch.from_numpy(task.holdout_x[:16])
    traced = torch.jit.trace(result.model, x)  # type: ignore[no-untyped-call]
    assert torch.allclose(traced(x), result.model(x))


@pytest.mark.parametrize("kind", ["distill", "extract"])
def test_black_box_thefts_agree_with_the_victim(
    stolen: dict[str, Any], victim: nn.Module, task: TaskData, kind: str
) -> None:
    assert agreement(stolen["models"][kind], victim, task.holdout_x) > 0.9


def test_distillation_charges_one_query_per_sample(victim: nn.Module, task: TaskData) -> None:
    suspect = suspect_of(victim, task)

    distill(suspect, task.public_x[:200], epochs=2, seed=0)

    assert suspect.queries == 200


def test_distillation_budget_caps_the_queries(victim: nn.Module, task: TaskData) -> None:
    suspect = suspect_of(victim, task)

    distill(suspect, task.public_x[:200], epochs=2, seed=0, budget=50)

    assert suspect.queries == 50


@pytest.mark.parametrize(("augment", "spent"), [("mixup", 300), ("noise", 300), ("none", 100)])
def test_extraction_spends_at_most_the_budget(victim: nn.Module, task: TaskData, augment: Any, spent: int) -> None:
    suspect = suspect_of(victim, task)

    extract_knockoff(suspect, task.public_x[:100], budget=300, augment=augment, epochs=2, seed=0)

    assert suspect.queries == spent


def test_extraction_uses_a_victim_budget_exactly(victim: nn.Module, task: TaskData) -> None:
    suspect = suspect_of(victim, task, budget=120)

    extract_knockoff(suspect, task.public_x[:100], budget=120, epochs=2, seed=0)

    assert suspect.queries == 120
    assert suspect.remaining == 0


def test_extraction_refuses_a_victim_with_too_few_queries_before_spending_any(
    victim: nn.Module, task: TaskData
) -> None:
    suspect = suspect_of(victim, task, budget=100)

    with pytest.raises(QueryBudgetExceeded):
        extract_knockoff(suspect, task.public_x[:100], budget=300, epochs=2, seed=0)

    assert suspect.queries == 0


def test_thefts_are_deterministic(victim: nn.Module, task: TaskData) -> None:
    def run(seed: int) -> list[dict[str, torch.Tensor]]:
        return [
            snapshot(fine_tune(victim, task.public_x[:200], task.public_y[:200], epochs=2, seed=seed)),
            snapshot(prune_and_fine_tune(victim, task.public_x[:200], task.public_y[:200], epochs=2, seed=seed).model),
            snapshot(distill(suspect_of(victim, task), task.public_x[:200], epochs=2, seed=seed)),
            snapshot(extract_knockoff(suspect_of(victim, task), task.public_x[:100], budget=200, epochs=2, seed=seed)),
        ]

    first, again, other = run(0), run(0), run(1)

    assert all(same_weights(a, b) for a, b in zip(first, again, strict=True))
    assert not any(same_weights(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("eps", [0.1, 0.2, 0.3])
def test_false_claim_set_stays_in_the_eps_ball_and_the_box(
    ensemble: list[nn.Module], task: TaskData, eps: float
) -> None:
    natural = task.holdout_x[:NATURAL]

    claim = false_claim_set(ensemble, natural, eps=eps, low=task.low, high=task.high, seed=0)

    assert claim["inputs"].dtype == np.float32
    assert claim["inputs"].shape == natural.shape
    assert claim["labels"].dtype == np.int64
    assert claim["labels"].shape == (NATURAL,)
    assert np.abs(claim["inputs"] - natural).max() <= eps + 1e-6
    assert claim["inputs"].min() >= task.low
    assert claim["inputs"].max() <= task.high
    with torch.no_grad():
        probabilities = torch.stack([torch.softmax(m(torch.from_numpy(natural)), dim=1) for m in ensemble]).mean(0)
    assert (claim["labels"] != probabilities.argmax(dim=1).numpy()).all()


def test_false_claim_set_fools_its_crafting_ensemble_at_eps_point_three(
    ensemble: list[nn.Module], task: TaskData
) -> None:
    claim = false_claim_set(ensemble, task.holdout_x[:NATURAL], eps=0.3, low=task.low, high=task.high, seed=0)

    success = [float((predict_labels(m, claim["inputs"]) == claim["labels"]).mean()) for m in ensemble]

    assert min(success) > 0.8


def test_false_claim_set_is_deterministic_for_a_seed(ensemble: list[nn.Module], task: TaskData) -> None:
    natural = task.holdout_x[:NATURAL]

    first = false_claim_set(ensemble, natural, eps=0.2, low=0.0, high=1.0, seed=3, steps=10, diversity=0.05)
    again = false_claim_set(ensemble, natural, eps=0.2, low=0.0, high=1.0, seed=3, steps=10, diversity=0.05)
    other = false_claim_set(ensemble, natural, eps=0.2, low=0.0, high=1.0, seed=4, steps=10, diversity=0.05)

    assert np.array_equal(first["inputs"], again["inputs"])
    assert np.array_equal(first["labels"], again["labels"])
    assert not np.array_equal(first["labels"], other["labels"])


def test_false_claim_set_avoids_the_true_labels_and_keeps_given_targets(
    ensemble: list[nn.Module], task: TaskData
) -> None:
    natural, truth = task.holdout_x[:NATURAL], task.holdout_y[:NATURAL]
    targets = (predict_labels(ensemble[0], natural) + 1) % 10

    random_claim = false_claim_set(ensemble, natural, eps=0.1, low=0.0, high=1.0, natural_labels=truth, steps=2)
    given_claim = false_claim_set(ensemble, natural, eps=0.1, low=0.0, high=1.0, target_labels=targets, steps=2)

    assert (random_claim["labels"] != truth).all()
    assert np.array_equal(given_claim["labels"], targets)


def test_false_claim_set_restores_the_ensemble_modes(ensemble: list[nn.Module], task: TaskData) -> None:
    ensemble[0].train()
    try:
        false_claim_set(ensemble, task.holdout_x[:5], eps=0.1, low=0.0, high=1.0, steps=1)
        assert ensemble[0].training
        assert not ensemble[1].training
    finally:
        ensemble[0].eval()


@pytest.mark.parametrize(
    ("theft", "match"),
    [
        (lambda v, s, t: prune_and_fine_tune(v, t.public_x, t.public_y, amount=0.0), "pruned fraction"),
        (lambda v, s, t: prune_and_fine_tune(v, t.public_x, t.public_y, amount=1.0), "pruned fraction"),
        (lambda v, s, t: prune_and_fine_tune(v, t.public_x, t.public_y, amount=-0.2), "pruned fraction"),
        (lambda v, s, t: fine_tune(v, t.public_x, t.public_y, epochs=0), "epochs"),
        (lambda v, s, t: fine_tune(v, t.public_x, t.public_y, lr=0.0), "learning rate"),
        (lambda v, s, t: distill(s, t.public_x, temperature=0.0), "temperature"),
        (lambda v, s, t: distill(s, t.public_x, budget=0), "budget"),
        (lambda v, s, t: distill(s, t.public_x, student_arch=UNKNOWN), "architecture"),
        (lambda v, s, t: distill(s, t.public_x[:0]), "non-empty"),
        (lambda v, s, t: extract_knockoff(s, t.public_x, budget=0), "budget"),
        (lambda v, s, t: extract_knockoff(s, t.public_x, augment=UNKNOWN), "augmentation"),
        (lambda v, s, t: extract_knockoff(s, t.public_x, augment="noise", noise=0.0), "noise"),
        (lambda v, s, t: simulate(UNKNOWN, v, t), "unknown theft"),
        (lambda v, s, t: simulate("distill", v, t, student_arch=UNKNOWN), "architecture"),
        (lambda v, s, t: false_claim_set([v], t.holdout_x[:5], eps=0.0, low=0.0, high=1.0), "eps"),
        (lambda v, s, t: false_claim_set([v], t.holdout_x[:5], eps=-0.1, low=0.0, high=1.0), "eps"),
        (lambda v, s, t: false_claim_set([], t.holdout_x[:5], eps=0.1, low=0.0, high=1.0), "ensemble"),
        (lambda v, s, t: false_claim_set([v], t.holdout_x[:5], eps=0.1, low=1.0, high=0.0), "low < high"),
        (lambda v, s, t: false_claim_set([v], t.holdout_x[:5], eps=0.1, low=0.0, high=1.0, steps=0), "steps"),
        (lambda v, s, t: false_claim_set([v], t.holdout_x[:5] + 2, eps=0.1, low=0.0, high=1.0), "outside"),
        (
            lambda v, s, t: false_claim_set(
                [v], t.holdout_x[:5], eps=0.1, low=0.0, high=1.0, target_labels=predict_labels(v, t.holdout_x[:5])
            ),
            "differ",
        ),
        (
            lambda v, s, t: false_claim_set([v], t.holdout_x[:5], eps=0.1, low=0.0, high=1.0, target_labels=[1, 2]),
            "shape",
        ),
    ],
)
def test_bad_arguments_are_refused(victim: nn.Module, task: TaskData, theft: Any, match: str) -> None:
    suspect = suspect_of(victim, task)

    with pytest.raises(ValueError, match=match):
        theft(victim, suspect, task)

    assert suspect.queries == 0
