"""The null law of the agreement test, with the model (not the query) as the unit.

The suspect answers the same K claimed inputs as the n reference-panel models; ``m`` of its answers
match the claimed labels, and panel model ``i`` matches ``c_i`` of them. Independent models differ:
some agree with the claimed labels more than others, and close models (a "family") agree alike. Pooling
the n*K panel answers as if they were independent draws of one rate ignores that, so this module
treats each model's rate as a draw from a population of models and tests the suspect against that
population.

Construction (``"beta_binomial_and_top_model"``), with delta = alpha / 10:

* **(A) Beta-binomial bound.** Model rates follow a Beta law with mean mu and intra-class correlation
  rho (between-model variance rho * mu * (1 - mu)); a model's count is Binomial(K, its rate). From the
  panel, with the model as the unit: rho_U is the upper confidence bound of the one-way random-effects
  ICC from the F ratio of between- to within-model mean squares, at level 1 - 3*delta/4; mu_U is the
  largest of the one-sided t bound on the mean of the n rates, the Clopper-Pearson bound of the pooled
  rate (both at level 1 - delta/4), the chance rate 1/C and the caller's ``rate_floor``. The tail is
  bounded by ``E[G_m(R)]`` with R ~ Beta(mu_U, rho_U), where G_m is the binomial tail
  ``P[Binomial(K, r) >= m]`` continued beyond its inflection point (m-1)/(K-1) by its tangent: G_m is
  increasing, convex and at least the tail, and a Beta law with smaller mean or smaller rho is smaller
  in the increasing convex order, so ``E[G_m(R)]`` bounds the tail of every beta-binomial with
  mu <= mu_U and rho <= rho_U (the binomial, rho = 0, included). p_A = that bound + delta.
* **(B) Top panel model.** p_B is the one-sided Fisher exact test of the suspect's count against the
  count of the panel's most agreeing model (same K inputs). A member of a family of close models in
  the panel can never outrun that family's best member by chance.
* p = min(1, max(p_A, p_B)).

Guarantee. Let p be computed with the delta fixed by ``alpha`` before the suspect answers. Then
P[p <= u] <= u for every u in [0, 1] whenever (A) or (B) holds:

(A) the n panel counts and the suspect's count are independent draws of one beta-binomial(K, mu, rho)
    law (the suspect is exchangeable with the panel models: its rate is drawn from the same Beta law
    of model rates, and given its rate its K answers match independently), and the bounds cover:
    P[mu <= mu_U and rho <= rho_U] >= 1 - delta. Given coverage the statement is exact (the tail is
    bounded on the whole box, and delta pays for a miss). The coverage itself is the normal-theory
    level of the t and F bounds: exact for normally distributed rates, approximate for Beta rates.
    Simulated with 20 models and K = 40 (tests/methods/test_nulls.py checks the milder cases), it
    holds for rho up to 0.5 at mean 0.1 and for the family panels, and fails for strongly skewed laws
    where rare independent models agree almost perfectly (mean 0.05 and rho 0.4: 2e-3, rho 0.6: 7e-3
    at alpha = 1e-3 with no chance floor), which a panel of 20 cannot tell apart from a tight one;
(B) given the models' rates, the counts are independent Binomial(K, rate), and the suspect's rate is
    no higher than the highest rate among the panel models (exact: the Fisher p-value grows with the
    count it is compared with, and the most agreeing count is at least that of the highest-rate model).

Here p is never below delta, whatever the data. Whenever delta / 4 <= 1e-3 (alpha <= 0.04), mu_U is
at least the old pooled p0 (the Clopper-Pearson bound at 0.999, never below 1/C), and since
``E[G_m(R)] >= G_m(mu_U)`` (Jensen) p is never below the old pooled rule's binomial p-value. A panel
of fewer than two models cannot bound rho (rho_U = 1), and a small panel gives wide bounds: the test
is then inconclusive, as :meth:`AgreementNull.min_achievable_p_value` shows. An empty panel falls
back to ``"chance_binomial"``: p = P[Binomial(K, floor) >= m], valid when the suspect's answers match
independently with a rate at most the floor (1/C, or ``rate_floor``).

Pure NumPy/SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special  # type: ignore[import-untyped]

__all__ = ["AgreementNull", "Construction", "agreement_null"]

Construction = Literal["beta_binomial_and_top_model", "chance_binomial"]

# Share of the total alpha spent on the bounds' coverage, and that share's split between rho and mu.
DELTA_SHARE = 0.1
DELTA_SHARE_RHO = 0.75
POOLED_REFERENCE_CONFIDENCE = 0.999  # the level of the old pooled p0, reported for comparison
_RHO_ONE = 1.0 - 1e-12  # at or above: the Beta law is two point masses at 0 and 1


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}.")
    return int(value)


def _binomial_sf(matches: int, trials: int, rate: float) -> float:
    """P[Binomial(trials, rate) >= matches]."""
    if matches <= 0:
        return 1.0
    if matches > trials:
        return 0.0
    return float(special.bdtrc(matches - 1, trials, rate))


def _clopper_pearson_upper(successes: float, trials: float, confidence: float) -> float:
    if successes >= trials:
        return 1.0
    return float(special.betaincinv(successes + 1.0, trials - successes, confidence))


def _fisher_greater(matches: int, other: int, trials: int) -> float:
    """One-sided Fisher exact p-value of ``matches / trials`` above ``other / trials`` (hypergeometric tail)."""
    if matches == 0:
        return 1.0
    total = matches + other
    top = min(trials, total)
    if matches > top:
        return 0.0
    x = np.arange(matches, top + 1, dtype=np.float64)
    log_terms = (
        _log_comb(float(trials), x) + _log_comb(float(trials), total - x) - _log_comb(2.0 * trials, float(total))
    )
    return float(min(1.0, np.exp(log_terms).sum()))


def _log_comb(n: float, k: float | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(special.gammaln(n + 1.0) - special.gammaln(k + 1.0) - special.gammaln(n - k + 1.0))


def _majorant_expectation(matches: int, trials: int, mean: float, rho: float) -> float:
    """E[G_m(R)] for R ~ Beta(mean, rho): G_m is the binomial tail, continued by its tangent past the inflection."""
    m, k = matches, trials
    if m <= 0:
        return 1.0
    if rho <= 0.0 or mean <= 0.0 or mean >= 1.0:
        # a point mass at the mean (or a degenerate rate): the binomial tail itself, the tightest bound
        return _binomial_sf(m, k, mean)
    t = 1.0 if m == k else (m - 1) / (k - 1)  # G_m = tail on [0, t], the tangent line on [t, 1]
    tail_at_t = _binomial_sf(m, k, t)
    slope = 0.0 if m == k else _binomial_tail_slope(m, k, t)
    if rho >= _RHO_ONE:
        # R is 0 with probability 1 - mean and 1 with probability mean
        g_one = 1.0 if m == k else tail_at_t + slope * (1.0 - t)
        return min(1.0, mean * g_one)
    s = 1.0 / rho - 1.0
    a, b = mean * s, (1.0 - mean) * s
    j = np.arange(m, k + 1, dtype=np.float64)
    # E[R^j (1-R)^(K-j); R <= t] = B(a+j, b+K-j) / B(a, b) * I_t(a+j, b+K-j)
    log_weights = _log_comb(float(k), j) + special.betaln(a + j, b + k - j) - special.betaln(a, b)
    below = float((np.exp(log_weights) * special.betainc(a + j, b + k - j, t)).sum()) if t > 0.0 else 0.0
    if m == k:
        return min(1.0, below)
    beyond = float(special.betaincc(a, b, t))  # P[R > t]
    excess = max(0.0, mean * float(special.betaincc(a + 1.0, b, t)) - t * beyond)  # E[(R - t); R > t]
    return min(1.0, below + tail_at_t * beyond + slope * excess)


def _binomial_tail_slope(matches: int, trials: int, rate: float) -> float:
    """d/dr P[Binomial(K, r) >= m] = K * C(K-1, m-1) r^(m-1) (1-r)^(K-m), for 1 <= m < K."""
    log_slope = math.log(trials) + float(_log_comb(trials - 1.0, matches - 1.0))
    for base, exponent in ((rate, matches - 1), (1.0 - rate, trials - matches)):
        if exponent > 0:
            if base <= 0.0:
                return 0.0
            log_slope += exponent * math.log(base)
    return math.exp(log_slope)


@dataclass(frozen=True)
class AgreementNull:
    """The null law of the suspect's match count, fitted to one panel; build it with :func:`agreement_null`."""

    construction: Construction
    trials: int
    alpha: float
    floor: float
    panel_size: int
    top_matches: int
    delta: float
    mu_hat: float
    rho_hat: float
    mu_upper: float
    rho_upper: float
    pooled_p0: float

    def p_value(self, matches: int) -> float:
        """p-value of ``matches`` out of ``trials`` under this null (module docstring: the guarantee)."""
        m = _count(matches, "matches")
        if m > self.trials:
            raise ValueError(f"matches ({m}) cannot exceed the number of trials ({self.trials}).")
        if m == 0:
            return 1.0
        if self.construction == "chance_binomial":
            return min(1.0, max(0.0, _binomial_sf(m, self.trials, self.floor)))
        population = _majorant_expectation(m, self.trials, self.mu_upper, self.rho_upper) + self.delta
        top_model = _fisher_greater(m, self.top_matches, self.trials)
        return min(1.0, max(population, top_model))

    def min_achievable_p_value(self) -> float:
        """The p-value of a perfect match (m = K): when it exceeds alpha, no answer could confirm."""
        return self.p_value(self.trials)

    def statistics(self) -> dict[str, float | int | str]:
        """Every number the null was built from, for the verdict's record."""
        return {
            "null_construction": self.construction,
            "null_floor": self.floor,
            "null_delta": self.delta,
            "panel_size": self.panel_size,
            "panel_top_matches": self.top_matches,
            "mu_hat": self.mu_hat,
            "rho_hat": self.rho_hat,
            "mu_upper": self.mu_upper,
            "rho_upper": self.rho_upper,
            "pooled_p0": self.pooled_p0,
        }


def agreement_null(
    *,
    panel_matches: Sequence[int],
    trials: int,
    num_classes: int | None,
    alpha: float,
    rate_floor: float = 0.0,
) -> AgreementNull:
    """The null of the suspect's match count out of ``trials``, from the panel models' counts on the same inputs.

    The null mean is never below ``1 / num_classes`` (chance) nor ``rate_floor``; give at least one.
    ``alpha`` sets delta = alpha / 10, the share of the error rate spent on the bounds.
    """
    k = _count(trials, "trials")
    if k == 0:
        raise ValueError("trials must be at least 1: a test with no queries says nothing.")
    counts = [_count(c, "panel_matches entry") for c in panel_matches]
    if any(c > k for c in counts):
        raise ValueError(f"panel_matches entries cannot exceed the number of trials ({k}), got {max(counts)}.")
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}.")
    rate_floor = float(rate_floor)
    if not 0.0 <= rate_floor <= 1.0:  # also rejects NaN
        raise ValueError(f"rate_floor must be a probability in [0, 1], got {rate_floor!r}.")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}.")
    if num_classes is None and rate_floor <= 0.0:
        raise ValueError("the null rate needs a floor: give num_classes (chance is 1/C) or a positive rate_floor.")
    floor = max(rate_floor, 0.0 if num_classes is None else 1.0 / int(num_classes))

    n = len(counts)
    if n == 0:
        return AgreementNull("chance_binomial", k, alpha, floor, 0, 0, 0.0, floor, 0.0, floor, 0.0, floor)

    delta = alpha * DELTA_SHARE
    delta_rho = delta * DELTA_SHARE_RHO
    delta_mu = delta - delta_rho
    arr = np.asarray(counts, dtype=np.float64)
    rates = arr / k
    total = float(arr.sum())
    mu_hat = total / (n * k)
    pooled_p0 = max(floor, _clopper_pearson_upper(total, float(n * k), POOLED_REFERENCE_CONFIDENCE))

    rho_hat, rho_upper = _icc_bounds(arr, k, delta_rho)
    mu_upper = max(floor, _clopper_pearson_upper(total, float(n * k), 1.0 - delta_mu))
    if n >= 2:
        spread = float(rates.std(ddof=1))
        mu_upper = max(mu_upper, mu_hat + float(special.stdtrit(n - 1, 1.0 - delta_mu)) * spread / math.sqrt(n))
    elif k > 1:
        mu_upper = 1.0  # one model says nothing about how models vary
    return AgreementNull(
        construction="beta_binomial_and_top_model",
        trials=k,
        alpha=alpha,
        floor=floor,
        panel_size=n,
        top_matches=int(max(counts)),
        delta=delta,
        mu_hat=mu_hat,
        rho_hat=rho_hat,
        mu_upper=min(1.0, mu_upper),
        rho_upper=rho_upper,
        pooled_p0=pooled_p0,
    )


def _icc_bounds(counts: npt.NDArray[np.float64], trials: int, delta: float) -> tuple[float, float]:
    """The one-way random-effects ICC of the n x K agreement table, and its upper bound at level 1 - delta."""
    n, k = int(counts.size), trials
    if k == 1:
        return 0.0, 0.0  # a beta-binomial with one trial is a Bernoulli whatever rho: rho plays no part
    if n < 2:
        return 0.0, 1.0
    rates = counts / k
    between = k * float(rates.var(ddof=1))
    within = float((counts * (1.0 - rates)).sum()) / (n * (k - 1))
    if within <= 0.0:
        # every count is 0 or K: no variation at all (all equal), or all-or-nothing models
        return (0.0, 0.0) if between <= 0.0 else (1.0, 1.0)
    ratio = between / within
    rho_hat = max(0.0, (ratio - 1.0) / (ratio + k - 1.0))
    ratio_upper = ratio / float(special.fdtri(n - 1, n * (k - 1), delta))
    rho_upper = min(1.0, max(0.0, (ratio_upper - 1.0) / (ratio_upper + k - 1.0)))
    return rho_hat, rho_upper
