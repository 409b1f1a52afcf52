"""The verdict: combine the ownership tests, the claimant's standing and the false-claim screens into one outcome.

Rules (docs/decision-rules.md), applied in this order by :func:`decide`:

1. An integrity failure (evidence that does not open its commitment) rejects the claim:
   ``claim_rejected``, worded as integrity.
2. **Binding.** Every set is also put to the claimant's own registered model. A set the claimant's
   model does not carry (its agreement test on the claimant's model does not reject at ``alpha``)
   is rejected; if every set is rejected so: ``claim_rejected``.
3. **Screen.** A set flagged by the false-claim screen (it transfers to independent reference
   models) is removed, a generated watermark too (see :func:`decide`); if every set is removed by
   binding or screen: ``claim_rejected``.
4. **Multiplicity.** A seed-generated (verifiable) watermark's p-value is multiplied by the number of
   verifiable watermarks the service generated before the filing (Bonferroni over the draws); a
   guard's journal narrowed to one client is multiplied by the number of clients it could have named.
5. **Precedence.** A set the claimant could have chosen (uploaded watermark or fingerprint inputs,
   dataset samples) can support ``ownership_confirmed`` only when its commitment was time-stamped
   before the suspect's first known time; otherwise its test is reported and excluded. Seed-generated
   watermarks cannot be crafted on the suspect, so they need no precedence.
6. Holm-Bonferroni at ``alpha`` over the remaining eligible *conclusive* tests. Any rejection of the
   null: ``ownership_confirmed``.
7. Otherwise, if an excluded late set would have rejected independence, or no conclusive test
   remains: ``inconclusive`` with the reason. Otherwise ``not_confirmed``.

Every number goes into the :class:`Decision`; :meth:`Decision.to_dict` gives a JSON-safe record
(non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from verification.methods.nulls import agreement_null
from verification.methods.statistics import (
    binomial_test,
    holm_bonferroni,
    min_achievable_p_value,
    panel_rank_p_value,
)

__all__ = [
    "DEFAULT_ALPHA",
    "ClaimScreen",
    "Decision",
    "Outcome",
    "Standing",
    "StatValue",
    "TestKind",
    "TestResult",
    "agreement_test",
    "decide",
]

DEFAULT_ALPHA = 1e-3

TestKind = Literal["watermark", "fingerprint", "dataset_inference", "api_watermark"]
Outcome = Literal["ownership_confirmed", "not_confirmed", "claim_rejected", "inconclusive"]
StatValue = float | int | str


def _json_number(value: Any) -> Any:
    """Python int/float/str/bool/None for JSON; non-finite floats as strings."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item"):  # NumPy scalar
        return _json_number(value.item())
    if isinstance(value, dict):
        return {str(k): _json_number(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_number(v) for v in value]
    raise TypeError(f"Cannot record {value!r} ({type(value).__name__}) in a verdict.")


def _check_p(p: float, what: str) -> None:
    if not (0.0 <= float(p) <= 1.0):  # also rejects NaN
        raise ValueError(f"The p-value of {what} must lie in [0, 1], got {p!r}.")


@dataclass(frozen=True)
class TestResult:
    """One ownership test run against the suspect.

    ``conclusive`` is False when the test could not have confirmed ownership whatever the suspect
    answered (e.g. ``p0 ** K > alpha``) or could not be run (suspect failed); ``reason`` says why.
    """

    __test__ = False  # not a pytest test class

    name: str
    kind: TestKind
    p_value: float
    statistics: dict[str, StatValue] = field(default_factory=dict)
    conclusive: bool = True
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("A test needs a name.")
        if self.kind not in get_args(TestKind):
            raise ValueError(f"Unknown test kind {self.kind!r}; expected one of {get_args(TestKind)}.")
        _check_p(self.p_value, f"test {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "p_value": _json_number(self.p_value),
            "statistics": _json_number(dict(self.statistics)),
            "conclusive": self.conclusive,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ClaimScreen:
    """False-claim screen of one evidence set (named like the test that uses it).

    ``rejected`` is True when the set's agreement on independent reference models is significantly
    above chance: the evidence transfers like adversarial examples and proves nothing.
    """

    name: str
    rejected: bool
    p_value: float
    statistics: dict[str, StatValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("A screen needs the name of the test whose evidence it screens.")
        _check_p(self.p_value, f"screen {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rejected": self.rejected,
            "p_value": _json_number(self.p_value),
            "statistics": _json_number(dict(self.statistics)),
        }


@dataclass(frozen=True)
class Standing:
    """What is known of one evidence set apart from the suspect's answers (named like its test).

    ``chosen``: the claimant picked the inputs or labels (uploaded sets, dataset samples); False only
    for a watermark the service generated from a committed seed. ``precedes``: the set's commitment
    was time-stamped before the suspect's first known time (None: not established). ``bound``: the
    claimant's own model carries the set (None: not checked, e.g. dataset samples). ``draws``: for a
    generated watermark, how many the claimant has committed (the multiplicity its p-value pays).
    """

    name: str
    chosen: bool = True
    precedes: bool | None = None
    precedence_detail: str = ""
    bound: bool | None = None
    binding_p_value: float | None = None
    draws: int = 1

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("A standing needs the name of the test whose evidence it describes.")
        if int(self.draws) < 1:
            raise ValueError(f"draws counts committed watermarks and is at least 1, got {self.draws!r}.")
        if self.binding_p_value is not None:
            _check_p(self.binding_p_value, f"binding of {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "chosen": self.chosen,
            "precedes": self.precedes,
            "precedence_detail": self.precedence_detail,
            "bound": self.bound,
            "binding_p_value": None if self.binding_p_value is None else _json_number(self.binding_p_value),
            "draws": int(self.draws),
        }


@dataclass(frozen=True)
class Decision:
    """The verdict with every input that led to it."""

    outcome: Outcome
    alpha: float
    tests: tuple[TestResult, ...]
    screens: tuple[ClaimScreen, ...]
    holm: dict[str, bool]
    reasons: tuple[str, ...]
    standings: tuple[Standing, ...] = ()
    excluded: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "alpha": _json_number(self.alpha),
            "tests": [t.to_dict() for t in self.tests],
            "screens": [s.to_dict() for s in self.screens],
            "standings": [s.to_dict() for s in self.standings],
            "excluded": list(self.excluded),
            "holm": {k: bool(v) for k, v in self.holm.items()},
            "reasons": list(self.reasons),
        }


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}.")
    return alpha


def agreement_test(
    *,
    name: str,
    kind: Literal["watermark", "fingerprint"],
    matches: int,
    trials: int,
    p0: float,
    panel_matches: Sequence[int] = (),
    alpha: float = DEFAULT_ALPHA,
    tie_break: float | None = None,
    num_classes: int | None = None,
    generated: bool = False,
) -> TestResult:
    """Watermark / fingerprint test as a :class:`TestResult`, against the panel's models as the unit.

    The p-value comes from :func:`verification.methods.nulls.agreement_null` (a beta-binomial bound
    over the panel's models and a Fisher test against its most agreeing model; its module docstring
    states the guarantee), with the null mean never below ``p0`` nor ``1 / num_classes``. Without a
    panel it is the binomial tail at ``p0``. Records K, m, p0, the null's numbers, the old pooled rule
    for comparison (``pooled_binomial_p_value``: binomial at p0) and, with a panel, the rank p-value of
    the suspect among the panel (reported, not used: it never goes below ``1 / (1 + len(panel))``).
    Inconclusive when even a perfect match (m = K) would not reach ``alpha``.

    ``generated``: the labels were drawn uniformly from a seed the service committed (a verifiable
    watermark). Whatever an independent model answers, it then matches each label with probability
    exactly ``1 / num_classes``, independently: the p-value is that exact binomial tail, and the panel
    is reported only.
    """
    alpha = _check_alpha(alpha)
    if generated:
        test = _generated_test(
            name=name, kind=kind, matches=matches, trials=trials, num_classes=num_classes, alpha=alpha, p0=p0
        )
        if len(panel_matches) > 0:
            test.statistics["panel_size"] = len(panel_matches)
            test.statistics["panel_rank_p_value"] = panel_rank_p_value(matches, panel_matches)
        return test
    pooled_p_value = binomial_test(matches, trials, p0)
    null = agreement_null(
        panel_matches=panel_matches, trials=trials, num_classes=num_classes, alpha=alpha, rate_floor=p0
    )
    p_value = null.p_value(matches)
    floor = null.min_achievable_p_value()
    stats: dict[str, StatValue] = {
        "K": int(trials),
        "m": int(matches),
        "p0": float(p0),
        "match_rate": matches / trials,
        "min_achievable_p_value": floor,
        "pooled_binomial_p_value": pooled_p_value,
        "pooled_min_achievable_p_value": min_achievable_p_value(trials, p0),
        **null.statistics(),
    }
    if len(panel_matches) > 0:
        stats["panel_rank_p_value"] = panel_rank_p_value(matches, panel_matches)
        if tie_break is not None:
            # exact under exchangeability (ties broken by a draw made before the suspect answered)
            stats["panel_rank_p_value_randomised"] = panel_rank_p_value(matches, panel_matches, tie_break=tie_break)
            stats["tie_break"] = float(tie_break)
    conclusive = floor <= alpha
    setting = f"a panel of {len(panel_matches)} model(s)" if len(panel_matches) > 0 else f"no panel (p0={p0:.4g})"
    reason = (
        ""
        if conclusive
        else (
            f"With K={trials} queries and {setting}, even a perfect match gives p={floor:.3g}, "
            f"above alpha={alpha:g}: more queries are needed"
            + (", or a larger reference panel." if len(panel_matches) > 0 else ".")
        )
    )
    return TestResult(name=name, kind=kind, p_value=p_value, statistics=stats, conclusive=conclusive, reason=reason)


def _generated_test(
    *,
    name: str,
    kind: Literal["watermark", "fingerprint"],
    matches: int,
    trials: int,
    num_classes: int | None,
    alpha: float,
    p0: float,
) -> TestResult:
    """The exact test of a seed-generated watermark: Binomial(K, 1/C), whatever the panel says."""
    if num_classes is None or num_classes < 2:
        raise ValueError("a generated watermark's exact test needs the number of classes (at least 2).")
    chance = 1.0 / num_classes
    p_value = binomial_test(matches, trials, chance)
    floor = min_achievable_p_value(trials, chance)
    stats: dict[str, StatValue] = {
        "K": int(trials),
        "m": int(matches),
        "p0": chance,
        "match_rate": matches / trials,
        "min_achievable_p_value": floor,
        "null_construction": "seeded_uniform_labels_exact",
        # what the panel-based null would have used, for the record
        "panel_p0": float(p0),
        "pooled_binomial_p_value": binomial_test(matches, trials, p0),
    }
    conclusive = floor <= alpha
    reason = (
        ""
        if conclusive
        else (
            f"With K={trials} generated triggers even a perfect match gives p={floor:.3g}, above alpha={alpha:g}: "
            "more queries are needed."
        )
    )
    return TestResult(name=name, kind=kind, p_value=p_value, statistics=stats, conclusive=conclusive, reason=reason)


def _corrected(test: TestResult, draws: int, alpha: float) -> TestResult:
    """The test with its p-value multiplied by ``draws``: the claimant's watermark draws, or for a guard's
    journal narrowed to one client, the number of clients it could have picked (Bonferroni either way)."""
    if draws <= 1:
        return test
    p_value = min(1.0, test.p_value * draws)
    stats = {**test.statistics, "p_value_single_draw": test.p_value, "draws": int(draws)}
    floor = test.statistics.get("min_achievable_p_value")
    conclusive = test.conclusive
    reason = test.reason
    if conclusive and isinstance(floor, int | float) and float(floor) * draws > alpha:
        conclusive = False
        what = (
            f"the claim picks one client of the {draws} whose answers the guard committed"
            if test.kind == "api_watermark"
            else f"the claimant has committed {draws} generated watermarks"
        )
        reason = (
            f"{what}; even a perfect match, corrected for all of them, gives "
            f"p={min(1.0, float(floor) * draws):.3g}, above alpha={alpha:g}"
        )
    return TestResult(test.name, test.kind, p_value, stats, conclusive, reason)


def decide(
    *,
    tests: Sequence[TestResult],
    screens: Sequence[ClaimScreen] = (),
    standings: Sequence[Standing] = (),
    integrity_ok: bool = True,
    integrity_detail: str = "",
    alpha: float = DEFAULT_ALPHA,
) -> Decision:
    """Apply the decision rules of the module docstring.

    A test without a :class:`Standing` is treated as claimant-chosen evidence with precedence not
    established: it is reported but cannot confirm. Raises ``ValueError`` for duplicate test names,
    duplicate screens or standings, or a screen or standing that names no test.
    """
    alpha = _check_alpha(alpha)
    tests = tuple(tests)
    screens = tuple(screens)
    names = [t.name for t in tests]
    if len(set(names)) != len(names):
        raise ValueError(f"Test names must be unique, got {names}.")
    screen_names = [s.name for s in screens]
    if len(set(screen_names)) != len(screen_names):
        raise ValueError(f"At most one screen per evidence set, got {screen_names}.")
    unknown = sorted(set(screen_names) - set(names))
    if unknown:
        raise ValueError(f"Screens {unknown} name no test that was run.")
    standing_of = {s.name: s for s in standings}
    if len(standing_of) != len(tuple(standings)):
        raise ValueError("At most one standing per evidence set (each names one test).")
    unknown = sorted(set(standing_of) - set(names))
    if unknown:
        raise ValueError(f"Standings {unknown} name no test that was run.")
    standings = tuple(standing_of.get(n) or Standing(n) for n in names)
    standing_of = {s.name: s for s in standings}
    tests = tuple(_corrected(t, standing_of[t.name].draws, alpha) for t in tests)

    def verdict(
        outcome: Outcome, reasons: list[str], holm: dict[str, bool] | None = None, excluded: Sequence[str] = ()
    ) -> Decision:
        return Decision(outcome, alpha, tests, screens, holm or {}, tuple(reasons), standings, tuple(excluded))

    if not integrity_ok:
        detail = f" ({integrity_detail})" if integrity_detail else ""
        return verdict(
            "claim_rejected",
            [f"The evidence does not open its commitment{detail} (integrity check failed), so the claim is rejected."],
        )

    reasons: list[str] = []
    unbound = {standing.name for standing in standings if standing.bound is False}
    for standing in standings:
        if standing.bound is False:
            p = (
                ""
                if standing.binding_p_value is None
                else f" (p={standing.binding_p_value:.3g} on the claimant's model)"
            )
            reasons.append(
                f"The claimant's own registered model does not carry the evidence of {standing.name!r}{p}: "
                "the set is rejected."
            )
    # a generated watermark's labels are uniform, so the screen flags an honest one only by chance (at most its
    # alpha, 1e-3); but a claimant who drew many and kept the one an independent model happens to match has
    # picked exactly such a coincidence, so a flagged generated set is set aside too (the draw correction alone
    # let 1 of 20 best-of-50,000 claims through in the validity benchmark)
    flagged = {s.name for s in screens if s.rejected}
    for s in screens:
        if s.rejected and not standing_of[s.name].chosen and s.name not in unbound:
            reasons.append(
                f"The generated watermark {s.name!r} agrees with independent reference models beyond chance "
                f"(screen p={s.p_value:.3g}): a draw picked for matching models in general is set aside (an honest "
                "draw is flagged about once in a thousand)."
            )
        elif s.rejected and s.name not in unbound:
            reasons.append(
                f"The evidence of {s.name!r} also agrees with independent reference models beyond chance "
                f"(screen p={s.p_value:.3g}): it transfers like adversarial examples and is set aside."
            )
    if tests and unbound == set(names):
        reasons.append("No piece of evidence is carried by the claimant's own model, so the claim is rejected.")
        return verdict("claim_rejected", reasons)
    if tests and unbound | flagged == set(names):
        reasons.append(
            "Every piece of evidence failed the binding check or the false-claim screen, so the claim is rejected."
        )
        return verdict("claim_rejected", reasons)

    remaining = [t for t in tests if t.name not in flagged and t.name not in unbound]
    for t in remaining:
        if not t.conclusive:
            reasons.append(f"Test {t.name!r} is inconclusive" + (f": {t.reason}" if t.reason else "."))
    conclusive = [t for t in remaining if t.conclusive]
    late = [t for t in conclusive if standing_of[t.name].chosen and standing_of[t.name].precedes is not True]
    eligible = [t for t in conclusive if t not in late]
    for t in late:
        detail = standing_of[t.name].precedence_detail or "the suspect's first known time could not be compared"
        reasons.append(
            f"Test {t.name!r} ({t.kind}, p={t.p_value:.3g}) is reported but cannot support a confirmation: its "
            f"evidence was chosen by the claimant and precedence is not established ({detail})."
        )
    excluded = [t.name for t in late]

    if not eligible:
        if any(t.p_value <= alpha for t in late):
            reasons.append(
                "Precedence not established: evidence committed after the suspect was first known could have "
                "been crafted on the suspect, so no verdict on ownership can be reached."
            )
        elif late:
            reasons.append("No test with established precedence remains, so no verdict can be reached.")
        else:
            reasons.append(
                "No ownership test was run."
                if not tests
                else "No conclusive test remains, so no verdict can be reached."
            )
        return verdict("inconclusive", reasons, excluded=excluded)

    holm = holm_bonferroni({t.name: t.p_value for t in eligible}, alpha)
    confirmed = [t for t in eligible if holm[t.name]]
    for t in eligible:
        if holm[t.name]:
            reasons.append(
                f"Test {t.name!r} ({t.kind}) rejects independence: p={t.p_value:.3g} passes the "
                f"Holm-Bonferroni threshold at alpha={alpha:g} over {len(eligible)} test(s)."
            )
        else:
            reasons.append(
                f"Test {t.name!r} ({t.kind}) does not reject independence: p={t.p_value:.3g} "
                f"at alpha={alpha:g} over {len(eligible)} test(s) (Holm-Bonferroni)."
            )
    if confirmed:
        reasons.append("Ownership is confirmed: the suspect is not independent of the claimant's model.")
        return verdict("ownership_confirmed", reasons, holm, excluded)
    if any(t.p_value <= alpha for t in late):
        reasons.append(
            "Precedence not established for the evidence that matches: it could have been crafted on the suspect, "
            "so the outcome is inconclusive."
        )
        return verdict("inconclusive", reasons, holm, excluded)
    reasons.append("Ownership is not confirmed: no test shows the suspect to depend on the claimant's model.")
    return verdict("not_confirmed", reasons, holm, excluded)
