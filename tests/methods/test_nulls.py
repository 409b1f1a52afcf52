"""The agreement test's null with the model as the unit: validity under model heterogeneity, power, edges."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from verification.methods.decision import agreement_test
from verification.methods.nulls import AgreementNull, agreement_null
from verification.methods.statistics import binomial_test, null_match_rate

Draw = Callable[[np.random.Generator], tuple[np.ndarray, float]]
PANEL = 20
CLASSES = 10


def _beta_rates(rng: np.random.Generator, mean: float, icc: float, size: int) -> np.ndarray:
    """Per-model agreement rates with the given mean and intra-class correlation (Beta, a + b = 1/icc - 1)."""
    s = 1.0 / icc - 1.0
    return rng.beta(mean * s, (1.0 - mean) * s, size=size)


def _heterogeneous(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    rates = _beta_rates(rng, 0.1, 0.2, PANEL + 1)
    return rates[:PANEL], float(rates[PANEL])


def _family(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """4 of 20 panel models from one family at 0.30, the rest at 0.05; the suspect is another of the family."""
    return np.r_[np.full(4, 0.30), np.full(PANEL - 4, 0.05)], 0.30


def _false_confirmations(
    draw: Draw, trials: int, alphas: tuple[float, ...], runs: int, seed: int
) -> dict[str, list[int]]:
    """How often an independent suspect is confirmed, by the new null and by the old pooled rule."""
    rng = np.random.default_rng(seed)
    new = [0] * len(alphas)
    pooled = [0] * len(alphas)
    for _ in range(runs):
        panel_rates, suspect_rate = draw(rng)
        panel = [int(c) for c in rng.binomial(trials, panel_rates)]
        m = int(rng.binomial(trials, suspect_rate))
        old = binomial_test(m, trials, null_match_rate(panel, trials, CLASSES))
        for i, alpha in enumerate(alphas):
            null = agreement_null(panel_matches=panel, trials=trials, num_classes=CLASSES, alpha=alpha)
            new[i] += null.p_value(m) <= alpha
            pooled[i] += old <= alpha
    return {"new": new, "pooled": pooled}


def _acceptance_limit(runs: int, alpha: float) -> int:
    """The largest count of rejections a valid level-alpha test shows in ``runs`` draws, but for 1 run in 1000."""
    return int(stats.binom.ppf(0.999, runs, alpha))


@pytest.mark.parametrize("trials", [40, 100])
def test_heterogeneous_models_keep_the_error_rate(trials: int) -> None:
    # given: per-model rates with mean 0.1 and intra-model correlation 0.2; the suspect drawn from the same law
    alphas = (0.05, 1e-2, 1e-3)
    runs = 2000
    # when
    counts = _false_confirmations(_heterogeneous, trials, alphas, runs, seed=trials)
    # then: no more false confirmations than a valid test allows, where the pooled rule shows too many
    for alpha, hits in zip(alphas, counts["new"], strict=True):
        assert hits <= _acceptance_limit(runs, alpha), (alpha, hits)
    assert counts["pooled"][2] > _acceptance_limit(runs, 1e-3)


@pytest.mark.parametrize("trials", [40, 100])
def test_a_family_in_the_panel_cannot_be_outrun_by_its_member(trials: int) -> None:
    alphas = (0.05, 1e-3)
    runs = 2000
    counts = _false_confirmations(_family, trials, alphas, runs, seed=7 + trials)
    assert counts["new"][1] == 0
    assert counts["new"][0] <= _acceptance_limit(runs, 0.05)
    assert counts["pooled"][1] > 100  # the pooled rule confirms this family's members


def test_a_small_family_in_a_large_panel_meets_the_top_model_test() -> None:
    # given: one of a close pair of models in a 100-model panel, the other is the suspect
    rng = np.random.default_rng(3)
    runs = 200
    confirmed = without_top_model = 0
    for _ in range(runs):
        panel = [int(c) for c in rng.binomial(40, np.r_[0.9, np.full(99, 0.1)])]
        m = int(rng.binomial(40, 0.9))
        null = agreement_null(panel_matches=panel, trials=40, num_classes=CLASSES, alpha=1e-3)
        confirmed += null.p_value(m) <= 1e-3
        without_top_model += dataclasses.replace(null, top_matches=0).p_value(m) <= 1e-3
    # then: the Fisher test against the panel's best model holds the line the beta-binomial fit alone does not
    assert confirmed <= _acceptance_limit(runs, 1e-3)
    assert without_top_model > runs // 2


@pytest.mark.parametrize("trials", [40, 100])
def test_copies_and_fine_tunes_are_still_confirmed(trials: int) -> None:
    # given: 200 panels of twenty models near chance (rates 0.1, ten classes)
    rng = np.random.default_rng(11)
    copies, fine_tunes = [], []
    for _ in range(200):
        panel = [int(c) for c in rng.binomial(trials, 0.1, size=PANEL)]
        null = agreement_null(panel_matches=panel, trials=trials, num_classes=CLASSES, alpha=1e-3)
        copies.append(null.p_value(trials))
        fine_tunes.append(null.p_value(int(0.8 * trials)))
    # then: a copy always, a fine-tune keeping 80% of the labels nearly always (K=40 costs some power)
    assert max(copies) <= 3e-4
    assert min(copies) >= 1e-4  # delta = alpha / 10 is the floor of every p-value
    assert float(np.median(fine_tunes)) <= 3e-4
    assert np.mean(np.asarray(fine_tunes) <= 1e-3) >= (0.85 if trials == 40 else 1.0)


@pytest.mark.parametrize("alpha", [1e-3, 1e-2])
def test_never_below_the_pooled_binomial(alpha: float) -> None:
    rng = np.random.default_rng(5)
    for trials in (1, 7, 40, 100):
        for icc in (0.0, 0.2):
            rates = np.full(PANEL, 0.15) if icc == 0.0 else _beta_rates(rng, 0.15, icc, PANEL)
            panel = [int(c) for c in rng.binomial(trials, rates)]
            null = agreement_null(panel_matches=panel, trials=trials, num_classes=CLASSES, alpha=alpha)
            p0 = null_match_rate(panel, trials, CLASSES)
            assert null.statistics()["pooled_p0"] == pytest.approx(p0)
            for m in range(trials + 1):
                assert null.p_value(m) >= binomial_test(m, trials, p0) * (1 - 1e-9)


def _beta_binomial_tail(m: int, trials: int, mean: float, icc: float) -> float:
    j = np.arange(m, trials + 1)
    if icc == 0.0:
        return float(stats.binom.pmf(j, trials, mean).sum())
    s = 1.0 / icc - 1.0
    return float(stats.betabinom.pmf(j, trials, mean * s, (1.0 - mean) * s).sum())


def test_the_bound_covers_every_beta_binomial_below_it() -> None:
    rng = np.random.default_rng(2)
    for _ in range(300):
        trials = int(rng.integers(1, 120))
        mean, icc = float(rng.uniform(0.01, 0.9)), float(rng.uniform(0.001, 0.95))
        null = AgreementNull("beta_binomial_and_top_model", trials, 1e-3, 0.0, 20, 0, 0.0, mean, 0.0, mean, icc, mean)
        m = int(rng.integers(1, trials + 1))
        for shrink_mean in (0.5, 1.0):
            for shrink_icc in (0.0, 0.4, 1.0):
                tail = _beta_binomial_tail(m, trials, mean * shrink_mean, icc * shrink_icc)
                assert null.p_value(m) >= tail * (1 - 1e-9)


def test_the_record_names_the_construction_and_its_numbers() -> None:
    null = agreement_null(panel_matches=[3, 5, 4, 6] * 5, trials=40, num_classes=CLASSES, alpha=1e-3)
    record = null.statistics()
    assert record["null_construction"] == "beta_binomial_and_top_model"
    assert record["null_delta"] == pytest.approx(1e-4)
    assert record["panel_size"] == 20
    assert record["panel_top_matches"] == 6
    assert record["mu_hat"] == pytest.approx(4.5 / 40)
    assert record["mu_upper"] >= record["pooled_p0"] >= 0.1
    assert 0.0 <= record["rho_hat"] <= record["rho_upper"] <= 1.0
    assert null.min_achievable_p_value() == null.p_value(40)
    assert null.p_value(0) == 1.0


def test_an_empty_panel_falls_back_to_chance() -> None:
    null = agreement_null(panel_matches=(), trials=30, num_classes=4, alpha=1e-3)
    assert null.statistics()["null_construction"] == "chance_binomial"
    for m in (0, 10, 30):
        assert null.p_value(m) == pytest.approx(binomial_test(m, 30, 0.25))
    test = agreement_test(name="wm", kind="watermark", matches=25, trials=30, p0=0.3)
    assert test.p_value == pytest.approx(binomial_test(25, 30, 0.3))
    assert test.statistics["null_construction"] == "chance_binomial"


@pytest.mark.parametrize("panel", [[12], [20, 25, 18]])
def test_a_panel_too_small_to_bound_the_spread_is_inconclusive(panel: list[int]) -> None:
    test = agreement_test(name="wm", kind="watermark", matches=100, trials=100, p0=0.3, panel_matches=panel)
    assert not test.conclusive
    assert "larger reference panel" in test.reason
    assert test.statistics["pooled_binomial_p_value"] < 1e-40  # what the pooled rule would have claimed


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"trials": 0}, "trials"),
        ({"trials": -3}, "trials"),
        ({"trials": 4.0}, "trials"),
        ({"panel_matches": [1, 41]}, "exceed"),
        ({"panel_matches": [1, -1]}, "negative"),
        ({"panel_matches": [True, 2]}, "integer"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": None}, "floor"),
        ({"rate_floor": 1.5}, "rate_floor"),
        ({"rate_floor": math.nan}, "rate_floor"),
    ],
)
def test_nonsense_is_refused(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"panel_matches": [3, 4, 5], "trials": 40, "num_classes": 10, "alpha": 1e-3}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        agreement_null(**arguments)  # type: ignore[arg-type]


def test_p_value_refuses_impossible_counts() -> None:
    null = agreement_null(panel_matches=[3, 4, 5], trials=40, num_classes=10, alpha=1e-3)
    with pytest.raises(ValueError, match="exceed"):
        null.p_value(41)
    with pytest.raises(ValueError, match="negative"):
        null.p_value(-1)
    with pytest.raises(ValueError, match="integer"):
        null.p_value(3.0)  # type: ignore[arg-type]
