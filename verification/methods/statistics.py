"""Hypothesis tests behind the ownership verdict: exact binomial, panel rank, Welch, Holm-Bonferroni.

Pure NumPy/SciPy. Every function validates its inputs and raises ``ValueError`` with a sentence a
person can read when they make no sense (negative counts, matches above trials, NaN p-values).

The watermark / fingerprint test (DESIGN.md, "Methods and decision rules"): the suspect answers K
queries and matches the claimed labels m times. Under the null hypothesis the suspect is an
independent model, matching each label with probability p0. p0 is estimated from a reference panel
of independent models as a one-sided Clopper-Pearson upper confidence bound of their pooled
agreement rate, never below 1/C, and the p-value is the exact tail P[Binomial(K, p0) >= m].

Dataset inference compares scores on private and public samples with a one-sided Welch t-test. A
degenerate comparison (fewer than two samples on a side, or no variance at all) is not an error:
:func:`welch_one_sided` returns a result with ``p_value = 1.0``, ``conclusive = False`` and the
reason, so that the decision layer can call the test inconclusive. The p-value dataset inference
decides on comes from :func:`permutation_one_sided` (the suspect's own comparison) and
:func:`prediction_p_value` (the suspect's t-statistic against the reference panel's); Welch is reported.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats  # type: ignore[import-untyped]

__all__ = [
    "PermutationResult",
    "WelchResult",
    "binomial_test",
    "clopper_pearson_upper",
    "empirical_p_value",
    "holm_bonferroni",
    "min_achievable_p_value",
    "null_match_rate",
    "panel_rank_p_value",
    "permutation_one_sided",
    "prediction_p_value",
    "welch_one_sided",
]


def _check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}.")
    return int(value)


def _check_trials(trials: int) -> int:
    trials = _check_count(trials, "trials")
    if trials == 0:
        raise ValueError("trials must be at least 1: a test with no queries says nothing.")
    return trials


def _check_matches(matches: int, trials: int, name: str = "matches") -> int:
    matches = _check_count(matches, name)
    if matches > trials:
        raise ValueError(f"{name} ({matches}) cannot exceed the number of trials ({trials}).")
    return matches


def _check_probability(p: float, name: str) -> float:
    p = float(p)
    if not (0.0 <= p <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}.")
    return p


def clopper_pearson_upper(successes: int, trials: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound: P[true rate <= bound] >= ``confidence``.

    Equals the upper end of the two-sided exact interval at level ``2 * confidence - 1``.
    """
    trials = _check_trials(trials)
    successes = _check_matches(successes, trials, "successes")
    confidence = float(confidence)
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}.")
    if successes == trials:
        return 1.0
    return float(stats.beta.ppf(confidence, successes + 1, trials - successes))


def null_match_rate(
    panel_matches: Sequence[int],
    trials: int,
    num_classes: int,
    *,
    confidence: float = 0.999,
) -> float:
    """Null match rate p0 for the agreement test, from a reference panel of independent models.

    ``panel_matches[i]`` is how many of the same ``trials`` queries reference model ``i`` answered
    with the claimed label. p0 is the one-sided Clopper-Pearson upper bound (at ``confidence``) of
    the pooled rate ``sum(panel_matches) / (len(panel_matches) * trials)``, and never below
    ``1 / num_classes`` (the agreement of a model that guesses uniformly).
    """
    trials = _check_trials(trials)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}.")
    if len(panel_matches) == 0:
        raise ValueError("The reference panel is empty: p0 cannot be estimated without independent models.")
    total = sum(_check_matches(m, trials, "panel_matches entry") for m in panel_matches)
    upper = clopper_pearson_upper(total, trials * len(panel_matches), confidence)
    return max(upper, 1.0 / int(num_classes))


def binomial_test(matches: int, trials: int, p0: float) -> float:
    """Exact one-sided p-value P[Binomial(trials, p0) >= matches]."""
    trials = _check_trials(trials)
    matches = _check_matches(matches, trials)
    p0 = _check_probability(p0, "p0")
    if matches == 0:
        return 1.0
    p = float(stats.binom.sf(matches - 1, trials, p0))
    return min(max(p, 0.0), 1.0)


def min_achievable_p_value(trials: int, p0: float) -> float:
    """The smallest p-value :func:`binomial_test` can give with ``trials`` queries: ``p0 ** trials``.

    When it exceeds alpha, not even a perfect match could confirm ownership: the test is inconclusive.
    """
    trials = _check_trials(trials)
    p0 = _check_probability(p0, "p0")
    return float(p0**trials)


def panel_rank_p_value(suspect_matches: int, panel_matches: Sequence[int], *, tie_break: float | None = None) -> float:
    """Rank p-value of the suspect among the panel.

    Without ``tie_break``: ``(1 + #{panel >= suspect}) / (1 + len(panel))``, valid when the suspect is
    exchangeable with the panel models and conservative when match counts tie (they often do: counts
    are small integers). With ``tie_break = u`` in [0, 1), drawn independently of the data, ties are
    broken at random: ``(1 + #{panel > suspect} + floor(u * (ties + 1))) / (1 + len(panel))``, whose
    law under exchangeability is exactly uniform on ``{1, ..., n + 1} / (n + 1)``. Either way it never
    goes below ``1 / (1 + len(panel))``.
    """
    suspect_matches = _check_count(suspect_matches, "suspect_matches")
    panel = [_check_count(m, "panel_matches entry") for m in panel_matches]
    above = sum(1 for m in panel if m > suspect_matches)
    ties = sum(1 for m in panel if m == suspect_matches)
    if tie_break is None:
        return (1 + above + ties) / (1 + len(panel))
    u = float(tie_break)
    if not 0.0 <= u < 1.0:
        raise ValueError(f"tie_break must lie in [0, 1), got {tie_break!r}")
    return (1 + above + math.floor(u * (ties + 1))) / (1 + len(panel))


@dataclass(frozen=True)
class WelchResult:
    """Outcome of :func:`welch_one_sided`.

    ``conclusive`` is False (with ``p_value = 1.0``, NaN statistic and degrees of freedom and a
    ``reason``) when the test cannot be computed: fewer than two samples on a side, or both samples
    constant.
    """

    statistic: float
    p_value: float
    df: float
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    conclusive: bool
    reason: str = ""


def _as_sample(values: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"Sample {name} contains NaN or infinite values.")
    return arr


def welch_one_sided(a: npt.ArrayLike, b: npt.ArrayLike) -> WelchResult:
    """One-sided Welch t-test of mean(a) > mean(b) (unequal variances).

    Degenerate inputs do not raise: the result has ``p_value = 1.0``, ``conclusive = False`` and a
    reason. NaN or infinite values raise ``ValueError``.
    """
    x = _as_sample(a, "a")
    y = _as_sample(b, "b")
    n_a, n_b = int(x.size), int(y.size)
    mean_a = float(x.mean()) if n_a else math.nan
    mean_b = float(y.mean()) if n_b else math.nan

    def degenerate(reason: str) -> WelchResult:
        return WelchResult(math.nan, 1.0, math.nan, n_a, n_b, mean_a, mean_b, conclusive=False, reason=reason)

    if n_a < 2 or n_b < 2:
        return degenerate(f"Welch's t-test needs at least 2 samples on each side, got {n_a} and {n_b}.")
    var_a = float(x.var(ddof=1))
    var_b = float(y.var(ddof=1))
    se2 = var_a / n_a + var_b / n_b
    if se2 <= 0.0:
        return degenerate("Both samples are constant (zero variance): Welch's t-test is undefined.")
    # Same as scipy.stats.ttest_ind(x, y, equal_var=False, alternative="greater"), computed directly so
    # that a constant side (legitimate for Welch) raises no precision warning.
    t = (mean_a - mean_b) / math.sqrt(se2)
    df = se2**2 / ((var_a / n_a) ** 2 / (n_a - 1) + (var_b / n_b) ** 2 / (n_b - 1))
    p = float(stats.t.sf(t, df))
    if not math.isfinite(p):
        return degenerate("Welch's t-test gave no finite p-value.")
    return WelchResult(
        statistic=float(t),
        p_value=min(max(p, 0.0), 1.0),
        df=float(df),
        n_a=n_a,
        n_b=n_b,
        mean_a=mean_a,
        mean_b=mean_b,
        conclusive=True,
    )


def holm_bonferroni(p_values: Mapping[str, float], alpha: float) -> dict[str, bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise error rate ``alpha``.

    Sorted ascending, the i-th smallest p-value (i = 0, 1, ...) of m is rejected while
    ``p <= alpha / (m - i)``; the first failure stops the procedure. Tied p-values always get the
    same decision (the thresholds grow, so a tie that passes first also passes second).
    """
    alpha = float(alpha)
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}.")
    checked = {name: _check_probability(p, f"p-value of {name!r}") for name, p in p_values.items()}
    ordered = sorted(checked.items(), key=lambda item: (item[1], item[0]))
    m = len(ordered)
    rejected = dict.fromkeys(checked, False)
    for i, (name, p) in enumerate(ordered):
        if p > alpha / (m - i):
            break
        rejected[name] = True
    return rejected


@dataclass(frozen=True)
class PermutationResult:
    """Outcome of :func:`permutation_one_sided`.

    ``floor`` is the smallest p-value the test could have given with these group sizes and draws
    (``1 / C(n_a + n_b, n_a)`` when every split is enumerated, else ``1 / (permutations + 1)``): when
    it exceeds alpha, not even the most extreme data could reject, and the test is inconclusive.
    """

    statistic: float
    p_value: float
    floor: float
    permutations: int
    exact: bool
    n_a: int
    n_b: int


def permutation_one_sided(
    a: npt.ArrayLike, b: npt.ArrayLike, *, permutations: int, seed: int | Sequence[int]
) -> PermutationResult:
    """One-sided permutation test of mean(a) > mean(b), the statistic being the difference in means.

    Every relabelling of the pooled values into groups of the same sizes is enumerated when there are
    at most ``permutations + 1`` of them (p = share of relabellings at least as extreme as the one
    observed); otherwise ``permutations`` relabellings are drawn from ``seed`` and
    p = (#{drawn >= observed} + 1) / (permutations + 1). Either way P[p <= u] <= u for every u when
    the pooled values are exchangeable under the null, whatever their distribution or the group sizes.
    Near-ties (within 1e-12 relative) count as at least as extreme, which only makes p larger.
    """
    x = _as_sample(a, "a")
    y = _as_sample(b, "b")
    n_a, n_b = int(x.size), int(y.size)
    if n_a < 1 or n_b < 1:
        raise ValueError(f"a permutation test needs at least one value on each side, got {n_a} and {n_b}.")
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
        raise ValueError(f"permutations must be a positive integer, got {permutations!r}.")
    pooled = np.concatenate([x, y])
    total = float(pooled.sum())
    n = n_a + n_b
    observed_sum = float(x.sum())
    # the difference in means is increasing in the first group's sum (the pooled total is fixed)
    statistic = observed_sum / n_a - (total - observed_sum) / n_b
    tolerance = 1e-12 * max(1.0, float(np.abs(pooled).sum()))
    splits = math.comb(n, n_a)
    if splits <= permutations + 1:
        sums = np.fromiter(
            (pooled[list(chosen)].sum() for chosen in itertools.combinations(range(n), n_a)),
            dtype=np.float64,
            count=splits,
        )
        at_least = int((sums >= observed_sum - tolerance).sum())
        p = at_least / splits
        return PermutationResult(statistic, min(p, 1.0), 1.0 / splits, splits, True, n_a, n_b)
    rng = np.random.default_rng(seed)
    at_least = 0
    chunk = max(1, (1 << 21) // n)  # rows of random keys drawn at once: about 16 MiB of float64
    for start in range(0, permutations, chunk):
        rows = min(chunk, permutations - start)
        chosen = np.argpartition(rng.random((rows, n)), n_a - 1, axis=1)[:, :n_a] if n_a < n else None
        sums = pooled[chosen].sum(axis=1) if chosen is not None else np.full(rows, total)
        at_least += int((sums >= observed_sum - tolerance).sum())
    p = (at_least + 1) / (permutations + 1)
    floor = max(1.0 / (permutations + 1), 1.0 / splits)
    return PermutationResult(statistic, min(p, 1.0), floor, permutations, False, n_a, n_b)


def _finite_values(values: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return arr


def prediction_p_value(statistic: float, null_statistics: npt.ArrayLike, *, max_df: int | None = None) -> float:
    """One-sided p-value of ``statistic`` against k null draws, by the normal prediction interval.

    P[T_{k-1} >= (statistic - mean) / (sd * sqrt(1 + 1/k))] with the null draws' mean and sample
    standard deviation: exactly uniform when the statistic and the k draws are independent draws of
    one normal distribution. ``max_df`` caps the degrees of freedom (heavier tails: a larger p-value
    beyond the centre, so still valid there). Needs k >= 2 and draws that are not all equal.
    """
    null = _finite_values(null_statistics, "the null statistics")
    value = float(statistic)
    if math.isnan(value):
        raise ValueError("the statistic is NaN.")
    k = int(null.size)
    if k < 2:
        raise ValueError(f"a prediction p-value needs at least 2 null statistics, got {k}.")
    sd = float(null.std(ddof=1))
    if not sd > 0.0:
        raise ValueError("the null statistics are all equal: their spread cannot be estimated.")
    z = (value - float(null.mean())) / (sd * math.sqrt(1.0 + 1.0 / k))
    df = k - 1 if max_df is None else max(1, min(k - 1, int(max_df)))
    return min(max(float(stats.t.sf(z, df)), 0.0), 1.0)


def empirical_p_value(statistic: float, null_statistics: npt.ArrayLike) -> float:
    """Rank p-value ``(1 + #{null >= statistic}) / (1 + k)``: valid when the k + 1 values are exchangeable.

    It never goes below ``1 / (k + 1)``; ties count against the statistic.
    """
    null = _finite_values(null_statistics, "the null statistics")
    value = float(statistic)
    if math.isnan(value):
        raise ValueError("the statistic is NaN.")
    return (1 + int((null >= value).sum())) / (1 + int(null.size))
