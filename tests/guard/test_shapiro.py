"""The Shapiro-Wilk W in NumPy agrees with scipy.stats.shapiro."""

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from modelcourt.guard import shapiro_w


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 11, 20, 50, 100, 101, 999, 5000])
@pytest.mark.parametrize("distribution", ["normal", "exponential", "uniform", "lognormal"])
def test_w_matches_scipy(n: int, distribution: str) -> None:
    rng = np.random.default_rng(n)
    sample = getattr(rng, distribution)(size=n)
    assert shapiro_w(sample) == pytest.approx(stats.shapiro(sample).statistic, abs=1e-6)


def test_w_matches_scipy_on_many_random_samples() -> None:
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(200):
        n = int(rng.integers(3, 400))
        sample = rng.gamma(shape=float(rng.uniform(0.3, 5)), size=n) * rng.uniform(1e-3, 1e3)
        worst = max(worst, abs(shapiro_w(sample) - stats.shapiro(sample).statistic))
    assert worst < 1e-6


def test_w_is_near_one_for_normal_data_and_low_for_skewed_data() -> None:
    rng = np.random.default_rng(1)
    assert shapiro_w(rng.normal(size=500)) > 0.99
    assert shapiro_w(rng.exponential(size=500) ** 3) < 0.6


def test_w_does_not_depend_on_order_location_or_scale() -> None:
    sample = np.random.default_rng(2).normal(size=60)
    assert shapiro_w(sample[::-1] * 1000 + 5) == pytest.approx(shapiro_w(sample), abs=1e-12)


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        ([1.0, 2.0], "3 to 5000"),
        (np.zeros(5001), "3 to 5000"),
        ([1.0, 1.0, 1.0], "all values are equal"),
        ([1.0, np.nan, 2.0], "finite"),
    ],
)
def test_w_refuses_samples_it_is_undefined_for(sample: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shapiro_w(sample)  # type: ignore[arg-type]
