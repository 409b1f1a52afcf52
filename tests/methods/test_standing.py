"""The claimant's standing in decide(): binding to its own model, precedence, and the multiplicity of draws."""

from __future__ import annotations

import json

import pytest

from verification.methods.decision import ClaimScreen, Standing, TestResult, decide

ALPHA = 1e-3


def _test(name: str, p: float, *, floor: float = 1e-40, kind: str = "watermark") -> TestResult:
    return TestResult(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        p_value=p,
        statistics={"K": 40, "m": 40, "min_achievable_p_value": floor},
    )


def test_chosen_evidence_without_precedence_cannot_confirm() -> None:
    d = decide(tests=[_test("fp", 1e-20)], standings=[Standing("fp", chosen=True, precedes=False)], alpha=ALPHA)
    assert d.outcome == "inconclusive"
    assert d.excluded == ("fp",)
    assert any("Precedence not established" in r for r in d.reasons)
    assert not any("integrity" in r for r in d.reasons)


def test_a_test_without_standing_is_treated_as_late_chosen_evidence() -> None:
    d = decide(tests=[_test("fp", 1e-20)], alpha=ALPHA)
    assert d.outcome == "inconclusive"
    assert d.standings[0].chosen
    assert d.standings[0].precedes is None


def test_established_precedence_confirms() -> None:
    d = decide(tests=[_test("fp", 1e-20)], standings=[Standing("fp", precedes=True, bound=True)], alpha=ALPHA)
    assert d.outcome == "ownership_confirmed"


def test_one_early_set_does_not_carry_a_late_one() -> None:
    # the old rule took the earliest commitment of all sets; now each set is judged on its own
    tests = [_test("early", 0.4), _test("late", 1e-30)]
    standings = [Standing("early", precedes=True), Standing("late", precedes=False)]
    d = decide(tests=tests, standings=standings, alpha=ALPHA)
    assert d.outcome == "inconclusive"
    assert d.excluded == ("late",)
    assert d.holm == {"early": False}


def test_late_set_that_does_not_match_leaves_not_confirmed() -> None:
    tests = [_test("early", 0.4), _test("late", 0.3)]
    d = decide(tests=tests, standings=[Standing("early", precedes=True), Standing("late", precedes=False)], alpha=ALPHA)
    assert d.outcome == "not_confirmed"


def test_generated_watermark_needs_no_precedence_but_pays_for_its_draws() -> None:
    one = decide(tests=[_test("wm", 2e-5)], standings=[Standing("wm", chosen=False, draws=1)], alpha=ALPHA)
    assert one.outcome == "ownership_confirmed"
    many = decide(tests=[_test("wm", 2e-5)], standings=[Standing("wm", chosen=False, draws=100)], alpha=ALPHA)
    assert many.outcome == "not_confirmed"
    assert many.tests[0].p_value == pytest.approx(2e-3)
    assert many.tests[0].statistics["p_value_single_draw"] == pytest.approx(2e-5)


def test_too_many_draws_make_a_small_set_inconclusive() -> None:
    d = decide(tests=[_test("wm", 1e-6, floor=1e-6)], standings=[Standing("wm", chosen=False, draws=5000)], alpha=ALPHA)
    assert d.outcome == "inconclusive"
    assert "generated watermarks" in d.tests[0].reason


def test_a_set_the_claimant_model_does_not_carry_is_rejected() -> None:
    d = decide(
        tests=[_test("wm", 1e-30)],
        standings=[Standing("wm", precedes=True, bound=False, binding_p_value=0.6)],
        alpha=ALPHA,
    )
    assert d.outcome == "claim_rejected"
    assert any("does not carry" in r for r in d.reasons)


def test_an_unbound_set_is_dropped_and_the_others_decide() -> None:
    tests = [_test("stolen", 1e-30), _test("own", 1e-12)]
    standings = [Standing("stolen", precedes=True, bound=False), Standing("own", precedes=True, bound=True)]
    d = decide(tests=tests, standings=standings, alpha=ALPHA)
    assert d.outcome == "ownership_confirmed"
    assert set(d.holm) == {"own"}


def test_binding_and_screen_together_can_reject_everything() -> None:
    tests = [_test("a", 1e-30), _test("b", 1e-30)]
    screens = [ClaimScreen("b", True, 1e-9)]
    standings = [Standing("a", precedes=True, bound=False), Standing("b", precedes=True, bound=True)]
    assert decide(tests=tests, screens=screens, standings=standings, alpha=ALPHA).outcome == "claim_rejected"


def test_integrity_failure_is_worded_as_integrity_not_precedence() -> None:
    d = decide(tests=[], integrity_ok=False, integrity_detail="evidence digest mismatch", alpha=ALPHA)
    assert d.outcome == "claim_rejected"
    assert "integrity" in d.reasons[0]
    assert "precedence" not in d.reasons[0].lower()


def test_standings_are_recorded() -> None:
    d = decide(
        tests=[_test("fp", 1e-20)], standings=[Standing("fp", precedes=True, precedence_detail="x")], alpha=ALPHA
    )
    record = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert record["standings"][0]["precedence_detail"] == "x"
    assert record["excluded"] == []


@pytest.mark.parametrize(
    "standings",
    [[Standing("nope")], [Standing("fp"), Standing("fp")]],
    ids=["unknown", "twice"],
)
def test_standings_must_name_tests_once(standings: list[Standing]) -> None:
    with pytest.raises(ValueError, match="name"):
        decide(tests=[_test("fp", 0.5)], standings=standings)


def test_draws_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Standing("wm", draws=0)


def test_the_screen_sets_a_flagged_generated_watermark_aside_too() -> None:
    # a best-of-many draw is picked for matching models in general: exactly what the screen sees
    screens = [ClaimScreen("wm", True, 1e-4)]
    d = decide(tests=[_test("wm", 1e-20)], screens=screens, standings=[Standing("wm", chosen=False)], alpha=ALPHA)
    assert d.outcome == "claim_rejected"
    assert any("generated watermark" in r and "set aside" in r for r in d.reasons)
    uploaded = decide(
        tests=[_test("wm", 1e-20)], screens=screens, standings=[Standing("wm", precedes=True)], alpha=ALPHA
    )
    assert uploaded.outcome == "claim_rejected"
    passed = [ClaimScreen("wm", False, 0.4)]
    kept = decide(tests=[_test("wm", 1e-20)], screens=passed, standings=[Standing("wm", chosen=False)], alpha=ALPHA)
    assert kept.outcome == "ownership_confirmed"
