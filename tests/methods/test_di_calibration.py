"""Dataset inference calibrated on the reference panel: a split the claimant chose cannot convict independents."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from scipy import stats  # type: ignore[import-untyped]
from torch import nn

from verification.methods.dataset_inference import (
    SCORE_BOUND,
    blind_walk,
    blind_walk_query_budget,
    claimant_side_features,
    dataset_inference_test,
    fit_scorer,
)
from verification.methods.datasets import TaskData, synthetic_task
from verification.methods.panels import ReferencePanel, train_panel
from verification.methods.runner import claimant_dataset_features, dataset_specs, run_methods
from verification.methods.statistics import (
    empirical_p_value,
    permutation_one_sided,
    prediction_p_value,
)
from verification.methods.suspects import TorchModuleSuspect
from verification.methods.training import Architecture, build_model, train_classifier

torch.set_num_threads(1)

ALPHA = 1e-3


# ---------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(("n_a", "n_b"), [(5, 50), (20, 200), (50, 250)])
def test_the_permutation_p_value_holds_its_level_on_small_unequal_skewed_groups(n_a: int, n_b: int) -> None:
    rng = np.random.default_rng([n_a, n_b])
    trials = 600

    p_values = [
        permutation_one_sided(
            rng.lognormal(0.0, 1.5, n_a), rng.lognormal(0.0, 1.5, n_b), permutations=199, seed=[k, n_a]
        ).p_value
        for k in range(trials)
    ]

    rejected = sum(p <= 0.05 for p in p_values)
    # the central 99.9% of Binomial(600, 0.05): a calibrated test lands here but for a 1-in-1000 draw
    low, high = stats.binom.ppf(0.0005, trials, 0.05), stats.binom.isf(0.0005, trials, 0.05)
    assert low <= rejected <= high, rejected


def test_the_permutation_test_enumerates_small_groups_exactly() -> None:
    result = permutation_one_sided([3.0, 4.0, 5.0], [0.0, 1.0, 2.0], permutations=10_000, seed=0)

    assert result.exact
    assert result.permutations == 20  # C(6, 3)
    assert result.p_value == pytest.approx(1 / 20)
    assert result.floor == pytest.approx(1 / 20)
    assert result.statistic == pytest.approx(3.0)


def test_the_monte_carlo_permutation_p_value_counts_the_observed_split() -> None:
    separated = permutation_one_sided(np.arange(50.0, 100.0), np.arange(0.0, 50.0), permutations=999, seed=1)
    reversed_ = permutation_one_sided(np.arange(0.0, 50.0), np.arange(50.0, 100.0), permutations=999, seed=1)

    assert not separated.exact
    assert separated.p_value == pytest.approx(1 / 1000)
    assert separated.floor == pytest.approx(1 / 1000)
    assert reversed_.p_value == 1.0


def test_the_prediction_p_value_is_the_student_t_tail_and_uniform_under_normality() -> None:
    null = np.array([0.0, 1.0, 2.0, 3.0])
    z = (5.0 - 1.5) / (float(np.std(null, ddof=1)) * np.sqrt(1 + 1 / 4))
    assert prediction_p_value(5.0, null) == pytest.approx(stats.t.sf(z, 3))
    assert empirical_p_value(5.0, null) == pytest.approx(1 / 5)
    assert empirical_p_value(1.0, null) == pytest.approx(4 / 5)

    rng = np.random.default_rng(3)
    draws = rng.normal(2.0, 3.0, size=(4000, 9))
    p_values = np.array([prediction_p_value(row[0], row[1:]) for row in draws])
    assert 0.04 <= float((p_values <= 0.05).mean()) <= 0.06
    with pytest.raises(ValueError, match="at least 2"):
        prediction_p_value(1.0, [0.5])
    with pytest.raises(ValueError, match="all equal"):
        prediction_p_value(1.0, [0.5, 0.5, 0.5])


# ---------------------------------------------------------------------------------------------- scorer and budget


def test_scores_stay_bounded_whatever_the_suspect_answers() -> None:
    rng = np.random.default_rng(4)
    private = np.column_stack([rng.normal(1.0, 0.2, 40), np.zeros(40)])  # the second column is constant
    public = np.column_stack([rng.normal(0.0, 0.2, 40), np.zeros(40)])
    scorer = fit_scorer(private, public, seed=0)

    far = np.array([[1e6, 0.0], [-1e6, 0.0], [0.5, 1e3], [0.5, -1e3], [1.0, 0.0]])
    scores = scorer.score(far)

    assert np.all(np.abs(scores) <= SCORE_BOUND)
    assert scores[0] > scores[1]


def test_the_walk_query_bound_is_what_a_suspect_that_never_flips_costs() -> None:
    constant = nn.Linear(6, 3)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    suspect = TorchModuleSuspect(constant, num_classes=3, input_shape=(6,), device="cpu")
    x = np.random.default_rng(5).uniform(size=(6, 6)).astype(np.float32)

    walked = blind_walk(suspect, x, directions=6, max_steps=9)

    # 7 members and 7 non-members leave 3 + 3 test samples (4 of each train the scorer)
    assert walked.queries == 6 * (1 + 6 * 9)
    assert blind_walk_query_budget(members=7, nonmembers=7, directions=6, max_steps=9) == 6 * (1 + 6 * 9)
    assert blind_walk_query_budget(members=500, nonmembers=500) == 500 * (1 + 30 * 60)


# ---------------------------------------------------------------------------------------------- the calibrated test


PANEL_SIZE = 8
ARCHITECTURES: tuple[Architecture, ...] = ("mlp",)
POOL = 300  # the claimant's pool for the margin split (300 owner + 300 holdout): its surest and least sure quarters
COPY_SAMPLES = 500  # every owner sample: the panel null's heavier tail asks the copy to stand 7 deviations out
STEPS = 50  # MinGD steps: half the default keeps the file fast; the copy still stands far out


@dataclass(frozen=True)
class World:
    """A task, the claimant's model, a panel and independent models made by the panel's recipe."""

    task: TaskData
    owner: nn.Module
    panel: ReferencePanel
    independents: tuple[nn.Module, ...]


@pytest.fixture(scope="module")
def digits_world(digits: TaskData, digits_owner: nn.Module) -> World:
    """Digits generalise well, so a model's margin there says much about the sample and little about training."""
    panel = train_panel(digits, size=PANEL_SIZE, seed=5, epochs=30, architectures=ARCHITECTURES)
    independents = train_panel(digits, size=2, seed=77, epochs=30, architectures=ARCHITECTURES, name_prefix="ind")
    return World(digits, digits_owner, panel, tuple(independents.modules))


@pytest.fixture(scope="module")
def synthetic_world() -> World:
    """The memorising task, where dataset inference has the power to find a copy."""
    task = synthetic_task(0)
    owner = build_model("wide_mlp", input_shape=task.input_shape, num_classes=task.num_classes, seed=1000)
    train_classifier(owner, task.owner_x, task.owner_y, epochs=150, seed=1000)
    panel = train_panel(task, size=PANEL_SIZE, seed=5, epochs=100, architectures=ARCHITECTURES)
    return World(task, owner, panel, ())


def as_suspect(model: nn.Module, task: TaskData) -> TorchModuleSuspect:
    return TorchModuleSuspect(model, num_classes=task.num_classes, input_shape=task.input_shape, device="cpu")


def margin_split(model: nn.Module, pool: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], ...]:
    """The claimant's own choice: members where its model is surest, non-members where it is least sure."""
    with torch.inference_mode():
        top = model(torch.from_numpy(pool)).topk(2, dim=1).values
    order = np.argsort(-(top[:, 0] - top[:, 1]).numpy())
    quarter = len(pool) // 4
    return pool[order[:quarter]], pool[order[-quarter:]]


def test_a_split_chosen_by_the_claimants_margin_does_not_convict_independent_models(digits_world: World) -> None:
    world = digits_world
    task = world.task
    pool = np.concatenate([task.owner_x[:POOL], task.holdout_x[:POOL]])
    members, nonmembers = margin_split(world.owner, pool)
    features = claimant_side_features(
        claimant=world.owner,
        private_x=members,
        public_x=nonmembers,
        input_shape=task.input_shape,
        num_classes=task.num_classes,
        split_seed=3,
        method="mingd",
        mingd_steps=STEPS,
    )

    results = [
        dataset_inference_test(
            claimant=None,
            claimant_features=features,
            suspect=as_suspect(model, task),
            private_x=members,
            public_x=nonmembers,
            num_classes=task.num_classes,
            split_seed=3,
            mingd_steps=STEPS,
            panel=world.panel,
            alpha=ALPHA,
        )
        for model in world.independents
    ]

    for result in results:
        stats_ = result.statistics
        # the split alone separates the scores on a model that never saw the data: the suspect's own comparison rejects
        assert float(stats_["p_value_within"]) <= ALPHA, stats_
        # ... and it does so on every panel model, so the suspect does not stand out
        assert float(stats_["panel_t_mean"]) > 2.0, stats_
        assert result.conclusive
        assert result.p_value == max(float(stats_["p_value_within"]), float(stats_["p_value_panel"]))
        assert result.p_value > ALPHA, stats_
        assert stats_["panel_members"] == PANEL_SIZE
        assert len(str(stats_["panel_t_statistics"]).split(",")) == PANEL_SIZE


def test_an_honest_split_still_convicts_a_copy_against_the_panel(synthetic_world: World) -> None:
    world = synthetic_world
    task = world.task

    result = dataset_inference_test(
        claimant=world.owner,
        suspect=as_suspect(copy.deepcopy(world.owner), task),
        private_x=task.owner_x[:COPY_SAMPLES],
        public_x=task.holdout_x[:COPY_SAMPLES],
        num_classes=task.num_classes,
        split_seed=4,
        mingd_steps=STEPS,
        panel=world.panel,
        alpha=ALPHA,
    )

    stats_ = result.statistics
    assert result.conclusive, result.reason
    assert result.p_value <= ALPHA, stats_
    assert float(stats_["p_value_panel"]) <= ALPHA
    assert float(stats_["p_value_within"]) <= ALPHA
    assert stats_["permutation"] == "monte_carlo"
    assert float(stats_["permutation_floor"]) < ALPHA
    assert abs(float(stats_["mean_score_private"])) <= SCORE_BOUND
    assert abs(float(stats_["mean_score_public"])) <= SCORE_BOUND


def test_too_few_test_samples_for_alpha_make_the_test_inconclusive(digits_world: World) -> None:
    world = digits_world
    task = world.task

    result = dataset_inference_test(
        claimant=world.owner,
        suspect=as_suspect(copy.deepcopy(world.owner), task),
        private_x=task.owner_x[:4],
        public_x=task.holdout_x[:4],
        num_classes=task.num_classes,
        split_seed=0,
        mingd_steps=STEPS,
        panel=world.panel,
        alpha=ALPHA,
    )

    assert not result.conclusive
    assert result.statistics["permutation"] == "exact"
    assert float(result.statistics["permutation_floor"]) == pytest.approx(1 / 6)  # 2 + 2 test samples
    assert "cannot give a p-value below" in result.reason


def test_a_label_only_suspect_with_too_small_a_budget_is_not_queried(digits_world: World) -> None:
    world = digits_world
    task = world.task
    suspect = TorchModuleSuspect(
        world.owner, num_classes=task.num_classes, input_shape=task.input_shape, device="cpu", budget=50_000
    )
    suspect.white_box = False

    result = dataset_inference_test(
        claimant=world.owner,
        suspect=suspect,
        private_x=task.owner_x[:100],
        public_x=task.holdout_x[:100],
        num_classes=task.num_classes,
        split_seed=0,
        method="blind_walk",
        panel=world.panel,
        alpha=ALPHA,
    )

    bound = blind_walk_query_budget(members=100, nonmembers=100)
    assert suspect.queries == 0
    assert not result.conclusive
    assert result.statistics["suspect_query_bound"] == bound == 100 * 1801
    assert f"{bound:,}" in result.reason


# ---------------------------------------------------------------------------------------------- the runner


def test_every_dataset_set_of_a_run_is_tested_and_reported(digits_world: World, tmp_path: Path) -> None:
    world = digits_world
    task = world.task
    panel_dir = tmp_path / "panel"
    copy.deepcopy(world.panel).save(panel_dir)
    suspect_path = tmp_path / "suspect.pt"
    torch.jit.trace(copy.deepcopy(world.owner).eval(), torch.zeros(1, 64)).save(str(suspect_path))  # type: ignore[no-untyped-call]
    sets = [
        {"name": "dataset-first", "members": task.owner_x[:12], "nonmembers": task.holdout_x[:12], "split_seed": 1},
        {
            "name": "dataset-second",
            "members": task.owner_x[12:24],
            "nonmembers": task.holdout_x[12:24],
            "split_seed": 2,
        },
    ]
    spec = {
        "suspect": {"kind": "torchscript", "path": str(suspect_path)},
        "num_classes": task.num_classes,
        "input_shape": list(task.input_shape),
        "alpha": ALPHA,
        "panel_dir": str(panel_dir),
        "claims": [],
        "method": "mingd",
        "datasets": sets,
    }
    measured = claimant_dataset_features(spec, claimant_path=str(suspect_path))
    assert set(measured) == {"dataset-first", "dataset-second"}

    result = run_methods({**spec, "datasets": [{**s, "claimant_features": measured[str(s["name"])]} for s in sets]})

    tests = result["decision"]["tests"]
    assert [t["name"] for t in tests] == ["dataset-first", "dataset-second"]
    assert [t["statistics"]["split_seed"] for t in tests] == [1, 2]
    assert all(t["statistics"]["calibration"] == "panel" for t in tests)
    assert all(t["statistics"]["panel_members"] == PANEL_SIZE for t in tests)
    assert result["timings"]["dataset_inference_panel_s"] > 0


def test_dataset_specs_name_every_set_and_refuse_ambiguity() -> None:
    single = {"members": 1, "nonmembers": 2}

    assert [d["name"] for d in dataset_specs({"dataset": single})] == ["dataset_inference"]
    assert [d["name"] for d in dataset_specs({"datasets": [single, single]})] == [
        "dataset_inference-0",
        "dataset_inference-1",
    ]
    assert dataset_specs({"dataset": None}) == []
    with pytest.raises(ValueError, match="distinct names"):
        dataset_specs({"datasets": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ValueError, match="both"):
        dataset_specs({"datasets": [single], "dataset": single})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_panel_calibrates_on_the_suspects_gpu_as_on_the_cpu(digits_world: World) -> None:
    task = digits_world.task
    arguments = {
        "claimant": digits_world.owner,
        "private_x": task.owner_x[:40],
        "public_x": task.holdout_x[:40],
        "num_classes": task.num_classes,
        "split_seed": 2,
        "mingd_steps": STEPS,
        "panel": digits_world.panel,
    }
    model = copy.deepcopy(digits_world.independents[0])

    on_cpu = dataset_inference_test(suspect=as_suspect(model, task), **arguments)  # type: ignore[arg-type]
    on_gpu = dataset_inference_test(
        suspect=TorchModuleSuspect(model, num_classes=task.num_classes, input_shape=task.input_shape, device="cuda"),
        **arguments,  # type: ignore[arg-type]
    )

    cpu_t = [float(v) for v in str(on_cpu.statistics["panel_t_statistics"]).split(",")]
    gpu_t = [float(v) for v in str(on_gpu.statistics["panel_t_statistics"]).split(",")]
    np.testing.assert_allclose(gpu_t, cpu_t, rtol=1e-3, atol=1e-3)
    assert all(next(m.parameters()).device.type == "cpu" for m in digits_world.panel.modules)


def test_the_panel_p_value_has_heavier_tails_and_a_rank_floor() -> None:
    from verification.methods.dataset_inference import PANEL_TAIL_DF, panel_p_value

    null = list(np.random.default_rng(4).normal(0.0, 1.0, size=20))
    mean, sd = float(np.mean(null)), float(np.std(null, ddof=1))
    z = (6.0 - mean) / (sd * np.sqrt(1 + 1 / 20))
    # beyond every panel model: the Student tail with 4 degrees of freedom, larger than with k - 1 = 19
    assert panel_p_value(6.0, null) == pytest.approx(stats.t.sf(z, PANEL_TAIL_DF))
    assert panel_p_value(6.0, null) > prediction_p_value(6.0, null)
    # a suspect that does not beat the panel's best is never below the rank p-value
    inside = max(null) - 1e-9
    assert panel_p_value(inside, null) >= 2 / 21
    # an independent suspect drawn like the panel: the test is conservative at every level
    rng = np.random.default_rng(5)
    draws = rng.normal(0.0, 1.0, size=(4000, 21))
    p_values = np.array([panel_p_value(row[0], list(row[1:])) for row in draws])
    for level in (0.01, 0.05, 0.2):
        assert (p_values <= level).mean() <= level


def test_the_panel_p_value_tolerates_a_suspect_twice_as_spread_as_the_panel() -> None:
    from verification.methods.dataset_inference import panel_p_value

    rng = np.random.default_rng(6)
    panel = rng.normal(0.0, 1.0, size=(20_000, 20))
    suspect = rng.normal(0.0, 2.0, size=20_000)  # another recipe: twice the spread of the panel's statistics
    p_values = np.array([panel_p_value(s, list(row)) for s, row in zip(suspect, panel, strict=True)])
    # at alpha = 1e-3 the heavier tail covers it (about 2e-4 expected); the normal-theory p-value does not
    assert (p_values <= ALPHA).mean() <= ALPHA
    plain = np.array([prediction_p_value(s, row) for s, row in zip(suspect, panel, strict=True)])
    assert (plain <= ALPHA).mean() > 10 * ALPHA
