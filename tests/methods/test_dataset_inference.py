"""Dataset inference: MinGD and Blind Walk distances, query accounting, power on a copy, calibration, bad input."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from verification.methods.dataset_inference import (
    NORMS,
    blind_walk,
    blind_walk_distances,
    boundary_features,
    dataset_inference_test,
    mingd_distances,
    mingd_distances_naive,
)
from verification.methods.datasets import TaskData, synthetic_task
from verification.methods.suspects import QueryBudgetExceeded, Suspect, TorchModuleSuspect
from verification.methods.training import build_model, train_classifier

torch.set_num_threads(1)

FEATURES = 8
CLASSES = 4


class RangeSpy(nn.Module):
    """Records how many rows it was asked about and the extreme input values it saw."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0
        self.lowest = float("inf")
        self.highest = float("-inf")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        self.lowest = min(self.lowest, float(x.detach().min()))
        self.highest = max(self.highest, float(x.detach().max()))
        out: torch.Tensor = self.inner(x)
        return out


class BlackBox(Suspect):
    """A suspect that answers logits and labels but gives no gradients."""

    def __init__(self, module: nn.Module, *, num_classes: int, features: int, budget: int | None = None) -> None:
        super().__init__(num_classes=num_classes, input_shape=(features,), batch_size=512, budget=budget)
        self._inner = module.eval()

    def _logits_batch(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = self._inner(x)
        return out


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, CLASSES)).eval()


def tiny_inputs(n: int, *, low: float = 0.0, high: float = 1.0, seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).uniform(low, high, size=(n, FEATURES)).astype(np.float32)


def predicted(model: nn.Module, x: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    with torch.inference_mode():
        labels: npt.NDArray[np.int64] = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return labels


# ---------------------------------------------------------------------------------------------- MinGD


def test_vectorised_mingd_equals_the_naive_loop() -> None:
    model = tiny_model()
    x = tiny_inputs(3)
    settings = {"num_classes": CLASSES, "steps": 40, "step_linf": 0.01, "step_l2": 0.05, "step_l1": 0.2}

    fast = mingd_distances(model, x, chunk_rows=7, **settings)  # type: ignore[arg-type]
    slow = mingd_distances_naive(model, x, **settings)  # type: ignore[arg-type]

    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (-1.0, 0.5)])
def test_mingd_distances_are_zero_for_the_prediction_and_stay_in_range(low: float, high: float) -> None:
    spy = RangeSpy(tiny_model(1))
    x = tiny_inputs(6, low=low, high=high, seed=1)
    steps = 60

    distances = mingd_distances(spy, x, num_classes=CLASSES, steps=steps, low=low, high=high)

    assert distances.shape == (6, len(NORMS) * CLASSES)
    assert np.all(np.isfinite(distances))
    assert np.all(distances >= 0)
    per_norm = distances.reshape(6, len(NORMS), CLASSES)
    own = predicted(spy.inner, x)
    np.testing.assert_array_equal(per_norm[np.arange(6), :, own], 0.0)
    others = np.ones((6, CLASSES), dtype=bool)
    others[np.arange(6), own] = False
    assert np.all(per_norm.transpose(0, 2, 1)[others] > 0)
    caps = np.array([0.005, 0.02, 0.1]) * steps * (high - low)
    assert np.all(per_norm <= caps[None, :, None] + 1e-6)
    assert low <= spy.lowest
    assert spy.highest <= high


def test_unreached_targets_get_the_cap_and_the_model_keeps_its_mode() -> None:
    model = tiny_model(2).train()
    x = tiny_inputs(4, seed=2)
    threads = torch.get_num_threads()

    distances = mingd_distances(model, x, num_classes=CLASSES, steps=1, step_linf=1e-6, step_l2=1e-6, step_l1=1e-6)

    per_norm = distances.reshape(4, len(NORMS), CLASSES)
    own = predicted(model.eval(), x)
    mask = np.ones((4, CLASSES), dtype=bool)
    mask[np.arange(4), own] = False
    np.testing.assert_allclose(per_norm.transpose(0, 2, 1)[mask], 1e-6, rtol=1e-4)
    assert torch.get_num_threads() == threads


def test_mingd_keeps_the_training_flag() -> None:
    model = tiny_model(3).train()

    mingd_distances(model, tiny_inputs(2), num_classes=CLASSES, steps=3)

    assert model.training


# ---------------------------------------------------------------------------------------------- Blind Walk


def test_blind_walk_charges_exactly_the_queries_it_reports() -> None:
    suspect = TorchModuleSuspect(tiny_model(4), num_classes=CLASSES, input_shape=(FEATURES,), device="cpu")
    suspect.label_only = True  # logits() now refuses: the walk must get by on labels
    x = tiny_inputs(5, seed=4)

    result = blind_walk(suspect, x, directions=9, step=0.05, max_steps=30, seed=7)

    assert result.queries == suspect.queries == 5 + int(result.steps.sum())
    assert result.distances.shape == (5, 9)
    assert result.steps.shape == (5, 9)
    assert np.all(result.distances > 0)
    assert np.all(result.distances <= result.cap + 1e-9)
    assert result.cap == pytest.approx(30 * 0.05)
    again = TorchModuleSuspect(tiny_model(4), num_classes=CLASSES, input_shape=(FEATURES,), device="cpu")
    np.testing.assert_array_equal(
        blind_walk_distances(again, x, directions=9, step=0.05, max_steps=30, seed=7), result.distances
    )


def test_blind_walk_stops_at_the_budget_without_sending_more() -> None:
    spy = RangeSpy(tiny_model(5))
    suspect = BlackBox(spy, num_classes=CLASSES, features=FEATURES, budget=40)

    with pytest.raises(QueryBudgetExceeded):
        blind_walk(suspect, tiny_inputs(4, seed=5), directions=6, step=0.01, max_steps=50)

    assert suspect.queries <= 40
    assert spy.rows == suspect.queries


def test_a_walk_that_never_flips_gets_the_cap() -> None:
    constant = nn.Linear(FEATURES, CLASSES)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    suspect = BlackBox(constant, num_classes=CLASSES, features=FEATURES)

    result = blind_walk(suspect, tiny_inputs(3), directions=3, step=0.1, max_steps=5)

    np.testing.assert_allclose(result.distances, 0.5)
    assert result.queries == 3 + 3 * 3 * 5


# ---------------------------------------------------------------------------------------------- features


def test_features_sort_within_each_group_and_compress() -> None:
    distances = np.array([[0.3, 0.0, 0.1, 2.0, 1.0, 3.0]])

    features = boundary_features(distances, 2)

    np.testing.assert_allclose(features, np.log1p([[0.0, 0.1, 0.3, 1.0, 2.0, 3.0]]))
    with pytest.raises(ValueError, match="do not split into 4 equal groups"):
        boundary_features(distances, 4)


# ---------------------------------------------------------------------------------------------- the test


@dataclass(frozen=True)
class Trained:
    task: TaskData
    claimant: nn.Module
    independent: tuple[nn.Module, ...]


@pytest.fixture(scope="module")
def trained() -> Trained:
    task = synthetic_task(0)
    claimant = build_model("mlp", input_shape=task.input_shape, num_classes=task.num_classes, seed=0)
    train_classifier(claimant, task.owner_x, task.owner_y, epochs=150, seed=0)
    independent = []
    for k in range(3):
        # disjoint public slices: three models that never saw the owner's data nor the holdout
        model = build_model("mlp", input_shape=task.input_shape, num_classes=task.num_classes, seed=10 + k)
        rows = slice(500 * k, 500 * (k + 1))
        independent.append(train_classifier(model, task.public_x[rows], task.public_y[rows], epochs=150, seed=10 + k))
    return Trained(task, claimant, tuple(independent))


def as_suspect(model: nn.Module, task: TaskData) -> TorchModuleSuspect:
    return TorchModuleSuspect(model, num_classes=task.num_classes, input_shape=task.input_shape, device="cpu")


def test_mingd_finds_the_private_data_in_a_copy(trained: Trained) -> None:
    task = trained.task
    suspect = as_suspect(copy.deepcopy(trained.claimant), task)

    result = dataset_inference_test(
        claimant=trained.claimant,
        suspect=suspect,
        private_x=task.owner_x,
        public_x=task.holdout_x[:500],
        num_classes=task.num_classes,
        split_seed=0,
    )

    assert result.kind == "dataset_inference"
    assert result.conclusive
    assert result.p_value < 1e-3
    stats = result.statistics
    assert stats["method"] == "mingd"
    assert stats["split_seed"] == 0
    assert stats["n_private_test"] == 250
    assert stats["n_public_test"] == 250
    assert stats["suspect_queries"] == 0
    assert stats["queries_per_sample"] == 0
    assert float(stats["mean_score_private"]) > float(stats["mean_score_public"])
    assert stats["p_value"] == result.p_value
    for key in ("t_statistic", "df", "seconds", "split_digest"):
        assert key in stats


def test_mingd_finds_nothing_in_independent_models(trained: Trained) -> None:
    task = trained.task
    p_values = [
        dataset_inference_test(
            claimant=trained.claimant,
            suspect=as_suspect(model, task),
            private_x=task.owner_x,
            public_x=task.holdout_x[:500],
            num_classes=task.num_classes,
            split_seed=k,
        ).p_value
        for k, model in enumerate(trained.independent)
    ]

    # under the null each p-value is uniform: a majority vote keeps a 1-in-100 draw from failing the test
    assert sum(p > 0.01 for p in p_values) >= 2, p_values


def test_blind_walk_finds_the_private_data_through_labels_only(trained: Trained) -> None:
    task = trained.task
    suspect = BlackBox(copy.deepcopy(trained.claimant), num_classes=task.num_classes, features=task.input_shape[0])

    result = dataset_inference_test(
        claimant=trained.claimant,
        suspect=suspect,
        private_x=task.owner_x,
        public_x=task.holdout_x[:500],
        num_classes=task.num_classes,
        split_seed=1,
        method="blind_walk",
    )

    assert result.conclusive
    assert result.p_value < 0.05
    assert result.statistics["method"] == "blind_walk"
    assert result.statistics["suspect_queries"] == suspect.queries > 0
    assert result.statistics["queries_per_sample"] == pytest.approx(suspect.queries / 500)


def test_the_split_is_fixed_by_its_seed() -> None:
    model = tiny_model(6)
    private, public = tiny_inputs(12, seed=6), tiny_inputs(12, seed=7)

    def run(seed: int, *, wrapped: bool = False) -> dict[str, object]:
        suspect = TorchModuleSuspect(model, num_classes=CLASSES, input_shape=(FEATURES,), device="cpu")
        result = dataset_inference_test(
            claimant=suspect if wrapped else model,
            suspect=suspect,
            private_x=private,
            public_x=public,
            num_classes=CLASSES,
            split_seed=seed,
            mingd_steps=20,
        )
        return {k: v for k, v in result.statistics.items() if k != "seconds"}

    first, second, other = run(3), run(3, wrapped=True), run(4)

    assert first == second  # a white-box Suspect as claimant gives the same as its module
    assert first["split_digest"] != other["split_digest"]


def test_a_constant_suspect_is_inconclusive() -> None:
    constant = nn.Linear(FEATURES, CLASSES)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    suspect = TorchModuleSuspect(constant, num_classes=CLASSES, input_shape=(FEATURES,), device="cpu")

    result = dataset_inference_test(
        claimant=tiny_model(7),
        suspect=suspect,
        private_x=tiny_inputs(10, seed=8),
        public_x=tiny_inputs(10, seed=9),
        num_classes=CLASSES,
        split_seed=0,
        mingd_steps=10,
    )

    assert not result.conclusive
    assert result.p_value == 1.0
    assert "zero variance" in result.reason


def test_a_black_box_suspect_falls_back_to_blind_walk_only_when_asked() -> None:
    model = tiny_model(8)
    suspect = BlackBox(model, num_classes=CLASSES, features=FEATURES)
    private, public = tiny_inputs(8, seed=10), tiny_inputs(8, seed=11)

    with pytest.raises(ValueError, match="black-box"):
        dataset_inference_test(
            claimant=model, suspect=suspect, private_x=private, public_x=public, num_classes=CLASSES, split_seed=0
        )
    result = dataset_inference_test(
        claimant=model,
        suspect=suspect,
        private_x=private,
        public_x=public,
        num_classes=CLASSES,
        split_seed=0,
        fallback_to_blind_walk=True,
        walk_directions=6,
        walk_max_steps=10,
    )

    assert result.statistics["method"] == "blind_walk"
    assert result.statistics["requested_method"] == "mingd"
    assert "Blind Walk replaced MinGD" in result.reason


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"private_x": np.zeros((8, FEATURES + 1), dtype=np.float32)}, r"private_x must have shape \[N, 8\]"),
        ({"public_x": np.zeros(FEATURES, dtype=np.float32)}, r"public_x must be a batch"),
        ({"private_x": np.full((8, FEATURES), 2.0, dtype=np.float32)}, r"outside the input range"),
        ({"private_x": np.full((8, FEATURES), np.nan, dtype=np.float32)}, r"NaN"),
        ({"public_x": np.zeros((3, FEATURES), dtype=np.float32)}, r"each half needs at least 2 samples"),
        ({"num_classes": CLASSES + 1}, r"has 4 classes"),
        ({"method": "gradients"}, r"unknown method"),
        ({"train_fraction": 1.0}, r"strictly between 0 and 1"),
        ({"low": 1.0, "high": 0.0}, r"low < high"),
        ({"split_seed": -1}, r"split_seed must be an integer of at least 0"),
        ({"method": "blind_walk", "walk_directions": 4}, r"multiple of 3"),
        ({"claimant": BlackBox(tiny_model(9), num_classes=CLASSES, features=FEATURES)}, r"claimant's gradients"),
    ],
)
def test_bad_input_is_refused_with_a_readable_message(change: dict[str, object], message: str) -> None:
    model = tiny_model(9)
    arguments: dict[str, object] = {
        "claimant": model,
        "suspect": TorchModuleSuspect(model, num_classes=CLASSES, input_shape=(FEATURES,), device="cpu"),
        "private_x": tiny_inputs(8, seed=12),
        "public_x": tiny_inputs(8, seed=13),
        "num_classes": CLASSES,
        "split_seed": 0,
        **change,
    }

    with pytest.raises(ValueError, match=message):
        dataset_inference_test(**arguments)  # type: ignore[arg-type]


def test_distance_functions_refuse_bad_input() -> None:
    model = tiny_model(10)
    suspect = TorchModuleSuspect(model, num_classes=CLASSES, input_shape=(FEATURES,), device="cpu")

    with pytest.raises(ValueError, match=r"expected logits \[\d+, num_classes=5\]"):
        mingd_distances(model, tiny_inputs(2), num_classes=CLASSES + 1)
    with pytest.raises(ValueError, match="norms must be distinct"):
        mingd_distances(model, tiny_inputs(2), num_classes=CLASSES, norms=("l2", "l2"))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 8\]"):
        blind_walk(suspect, np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="step must be a positive number"):
        blind_walk(suspect, tiny_inputs(2), step=0.0)
    assert suspect.queries == 0
