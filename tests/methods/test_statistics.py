"""Statistics of the verdict: known values, guards and calibration under the null."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from verification.methods.statistics import (
    binomial_test,
    clopper_pearson_upper,
    holm_bonferroni,
    min_achievable_p_value,
    null_match_rate,
    panel_rank_p_value,
    welch_one_sided,
)


@pytest.mark.parametrize(("m", "k", "p0"), [(0, 10, 0.3), (3, 10, 0.1), (10, 10, 0.5), (57, 100, 0.42), (1, 1, 0.9)])
def test_binomial_test_matches_direct_sum(m: int, k: int, p0: float) -> None:
    direct = sum(math.comb(k, j) * p0**j * (1 - p0) ** (k - j) for j in range(m, k + 1))
    assert binomial_test(m, k, p0) == pytest.approx(direct, rel=1e-10, abs=1e-300)


def test_binomial_test_edges() -> None:
    assert binomial_test(0, 20, 0.5) == 1.0
    assert binomial_test(20, 20, 0.1) == pytest.approx(0.1**20, rel=1e-9)
    assert binomial_test(5, 20, 0.0) == 0.0
    assert binomial_test(5, 20, 1.0) == 1.0


@pytest.mark.parametrize(
    ("m", "k", "p0"),
    [(11, 10, 0.1), (-1, 10, 0.1), (3, 0, 0.1), (3, 10, 1.5), (3, 10, math.nan), (3.0, 10, 0.1)],
)
def test_binomial_test_rejects_nonsense(m: int, k: int, p0: float) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the messages vary by input
        binomial_test(m, k, p0)


def test_min_achievable_p_value_is_perfect_match() -> None:
    assert min_achievable_p_value(30, 0.2) == pytest.approx(binomial_test(30, 30, 0.2))
    assert min_achievable_p_value(4, 0.1) == pytest.approx(1e-4)
    # At p0 = 1/2, 9 queries cannot reach alpha = 1e-3 (2**-9 = 0.00195); 10 can (2**-10 = 0.00098).
    assert min_achievable_p_value(9, 0.5) > 1e-3 >= min_achievable_p_value(10, 0.5)


@pytest.mark.parametrize(("x", "n", "conf"), [(0, 50, 0.999), (7, 50, 0.999), (120, 1000, 0.95), (49, 50, 0.99)])
def test_clopper_pearson_matches_scipy(x: int, n: int, conf: float) -> None:
    expected = stats.binomtest(x, n).proportion_ci(confidence_level=2 * conf - 1, method="exact").high
    assert clopper_pearson_upper(x, n, conf) == pytest.approx(expected, rel=1e-9)
    assert clopper_pearson_upper(n, n, conf) == 1.0


def test_null_match_rate_pools_panel_and_has_floor() -> None:
    panel = [12, 15, 9, 14]
    k = 100
    expected = stats.binomtest(sum(panel), k * len(panel)).proportion_ci(confidence_level=0.998).high
    assert null_match_rate(panel, k, 10) == pytest.approx(expected, rel=1e-9)
    assert null_match_rate(panel, k, 10) > sum(panel) / (k * len(panel))
    # A panel that never agrees still gets p0 >= 1/C.
    assert null_match_rate([0] * 20, 100, 2, confidence=0.9) == 0.5
    assert null_match_rate([0] * 20, 1000, 10, confidence=0.5) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("panel", "k", "c", "conf"),
    [([], 10, 10, 0.999), ([11], 10, 10, 0.999), ([1], 10, 1, 0.999), ([1], 10, 10, 1.0), ([-1], 10, 10, 0.9)],
)
def test_null_match_rate_rejects_nonsense(panel: list[int], k: int, c: int, conf: float) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the messages vary by input
        null_match_rate(panel, k, c, confidence=conf)


def test_panel_rank_p_value() -> None:
    assert panel_rank_p_value(50, [10, 20, 30]) == pytest.approx(1 / 4)
    assert panel_rank_p_value(20, [10, 20, 30]) == pytest.approx(3 / 4)
    assert panel_rank_p_value(0, [10, 20, 30]) == 1.0
    assert panel_rank_p_value(5, []) == 1.0


def test_welch_matches_scipy_and_direction() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 1.0, 40)
    b = rng.normal(0.0, 2.0, 25)
    res = welch_one_sided(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    assert res.conclusive
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue)
    assert res.df == pytest.approx(ref.df)
    assert (res.n_a, res.n_b) == (40, 25)
    assert welch_one_sided(b, a).p_value == pytest.approx(1 - ref.pvalue)


def test_welch_degenerate_inputs_are_inconclusive() -> None:
    few = welch_one_sided([1.0], [0.0, 0.5, 0.2])
    assert not few.conclusive
    assert few.p_value == 1.0
    assert "at least 2 samples" in few.reason
    flat = welch_one_sided([1.0, 1.0, 1.0], [0.0, 0.0])
    assert not flat.conclusive
    assert flat.p_value == 1.0
    assert "zero variance" in flat.reason
    # One constant side is fine: Welch uses the other side's variance.
    assert welch_one_sided([1.0, 1.0, 1.0], [0.0, 0.1, -0.1]).conclusive
    with pytest.raises(ValueError, match="NaN"):
        welch_one_sided([1.0, math.nan], [0.0, 1.0])


def test_holm_hand_worked_example() -> None:
    # m = 4, alpha = 0.05: thresholds 0.0125, 0.01667, 0.025, 0.05.
    # sorted: a=0.01 <= 0.0125 reject; b=0.015 <= 0.01667 reject; c=0.03 > 0.025 stop; d not tested.
    p = {"a": 0.01, "b": 0.015, "c": 0.03, "d": 0.04}
    assert holm_bonferroni(p, 0.05) == {"a": True, "b": True, "c": False, "d": False}
    # Plain Bonferroni (0.0125) would have rejected only a.
    assert holm_bonferroni({"x": 0.2}, 0.05) == {"x": False}
    assert holm_bonferroni({}, 0.05) == {}


def test_holm_step_down_stops_at_first_failure() -> None:
    # 0.04 alone would pass its threshold 0.05, but the procedure stopped at 0.03 > 0.025.
    p = {"a": 0.001, "b": 0.03, "c": 0.03, "d": 0.04}
    assert holm_bonferroni(p, 0.05) == {"a": True, "b": False, "c": False, "d": False}


def test_holm_ties_get_the_same_decision() -> None:
    # Two tied smallest p-values of 0.02 with m = 3: thresholds 0.0167, 0.025, 0.05. The first tie fails
    # its threshold, so the procedure stops: the second tie (which would pass 0.025) is not rejected either.
    assert holm_bonferroni({"a": 0.02, "b": 0.02, "c": 0.04}, 0.05) == {"a": False, "b": False, "c": False}
    # With a smaller p-value in front, the ties face 0.025 and 0.05 and both pass.
    assert holm_bonferroni({"a": 0.02, "b": 0.02, "c": 0.001}, 0.05) == {"a": True, "b": True, "c": True}
    # Tied at 0.012 with m = 3: 0.012 <= 0.0167 and <= 0.025, both rejected, then 0.06 > 0.05.
    assert holm_bonferroni({"a": 0.012, "b": 0.012, "c": 0.06}, 0.05) == {"a": True, "b": True, "c": False}
    # Order of the mapping does not matter.
    assert holm_bonferroni({"b": 0.012, "c": 0.06, "a": 0.012}, 0.05) == {"a": True, "b": True, "c": False}


def test_holm_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="alpha"):
        holm_bonferroni({"a": 0.1}, 0.0)
    with pytest.raises(ValueError, match="probability"):
        holm_bonferroni({"a": math.nan}, 0.05)


def _rejection_bound(alpha: float, draws: int) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / draws)


@pytest.mark.parametrize(("p_true", "k", "panel_size", "c"), [(0.1, 200, 20, 10), (0.35, 100, 20, 10), (0.5, 50, 5, 2)])
def test_binomial_test_is_calibrated_under_the_null(p_true: float, k: int, panel_size: int, c: int) -> None:
    """Independent suspect and panel share p_true; p0 comes from the simulated panel."""
    rng = np.random.default_rng(20240401)
    draws, alpha = 2000, 0.05
    panels = rng.binomial(k, p_true, size=(draws, panel_size))
    suspects = rng.binomial(k, p_true, size=draws)
    p_values = np.array(
        [
            binomial_test(int(m), k, null_match_rate([int(x) for x in panel], k, c))
            for m, panel in zip(suspects, panels, strict=True)
        ]
    )
    assert np.all((p_values >= 0) & (p_values <= 1))
    assert np.mean(p_values <= alpha) <= _rejection_bound(alpha, draws)
    # Sanity: the test has power against a copy that matches far more often.
    copy = rng.binomial(k, min(1.0, p_true + 0.4), size=200)
    powered = [binomial_test(int(m), k, null_match_rate([int(x) for x in panels[0]], k, c)) for m in copy]
    assert np.mean(np.array(powered) <= alpha) > 0.9


def test_panel_rank_p_value_is_calibrated_under_the_null() -> None:
    rng = np.random.default_rng(7)
    draws, alpha = 2000, 0.05
    panels = rng.binomial(100, 0.3, size=(draws, 39))
    suspects = rng.binomial(100, 0.3, size=draws)
    p_values = np.array(
        [panel_rank_p_value(int(m), [int(x) for x in p]) for m, p in zip(suspects, panels, strict=True)]
    )
    assert np.mean(p_values <= alpha) <= _rejection_bound(alpha, draws)


def test_welch_is_calibrated_under_the_null() -> None:
    rng = np.random.default_rng(11)
    draws, alpha = 2000, 0.05
    p_values = np.array([welch_one_sided(rng.normal(0, 1, 15), rng.normal(0, 3, 30)).p_value for _ in range(draws)])
    assert np.mean(p_values <= alpha) <= _rejection_bound(alpha, draws)


def test_randomised_rank_p_value_is_exact_with_ties() -> None:
    """Small integer match counts tie often: the plain rank p-value is then conservative, the randomised one exact."""
    rng = np.random.default_rng(7)
    plain, randomised = [], []
    for _ in range(4000):
        counts = rng.binomial(10, 0.1, size=21)  # suspect and 20 panel models, exchangeable, many ties
        suspect, panel = int(counts[0]), [int(c) for c in counts[1:]]
        plain.append(panel_rank_p_value(suspect, panel))
        randomised.append(panel_rank_p_value(suspect, panel, tie_break=float(rng.random())))
    alpha = 1 / 21
    assert np.mean(np.array(plain) <= alpha + 1e-12) < 0.6 * alpha  # conservative
    exact = np.mean(np.array(randomised) <= alpha + 1e-12)
    assert abs(exact - alpha) < 3 * np.sqrt(alpha * (1 - alpha) / 4000)
    with pytest.raises(ValueError, match="tie_break"):
        panel_rank_p_value(1, [1, 2], tie_break=1.0)
