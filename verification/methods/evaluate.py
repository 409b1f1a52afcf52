"""One claim against one suspect: run the agreement tests and the false-claim screens, then decide.

This is the entry point a verification run (and the validity benchmark) calls. A suspect that fails,
hangs, answers garbage or runs out of query budget makes its test inconclusive with the reason;
it never raises out of here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from verification.methods.decision import (
    DEFAULT_ALPHA,
    ClaimScreen,
    Decision,
    Standing,
    StatValue,
    TestResult,
    agreement_test,
    decide,
)
from verification.methods.panels import ReferencePanel
from verification.methods.screen import DEFAULT_SCREEN_ALPHA, false_claim_screen, perturbation_check
from verification.methods.statistics import binomial_test, null_match_rate
from verification.methods.suspects import QueryBudgetExceeded, Suspect, SuspectError

__all__ = ["AgreementClaim", "agreement_claim_test", "verify_claims"]


@dataclass(frozen=True)
class AgreementClaim:
    """A watermark or fingerprint set as claimed: inputs, the labels the claimant's model gives them."""

    name: str
    kind: Literal["watermark", "fingerprint", "api_watermark"]
    inputs: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    verifiable: bool = False

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels) or len(self.labels) == 0:
            raise ValueError(f"claim {self.name!r} needs as many labels as inputs, and at least one")

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any]) -> AgreementClaim:
        """A claim from plain data, as a sandbox child receives it: ``{name, kind, inputs, labels, verifiable}``."""
        return cls(
            name=str(raw["name"]),
            kind=raw["kind"],
            inputs=np.asarray(raw["inputs"], dtype=np.float32),
            labels=np.asarray(raw["labels"], dtype=np.int64),
            verifiable=bool(raw.get("verifiable", False)),
        )

    @property
    def tie_break(self) -> float:
        """The rank p-value's tie-break, drawn from the claim's name (its commitment): fixed before any query."""
        return int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:8], "big") / 2**64


def agreement_claim_test(
    claim: AgreementClaim,
    suspect: Suspect,
    panel: ReferencePanel,
    *,
    alpha: float = DEFAULT_ALPHA,
    screen_alpha: float = DEFAULT_SCREEN_ALPHA,
    natural_x: npt.NDArray[np.float32] | None = None,
    tie_break: float | None = None,
) -> tuple[TestResult, ClaimScreen]:
    """The agreement test of ``claim`` on ``suspect`` with p0 from ``panel``, and the claim's false-claim screen.

    The test's statistics also record ``naive_p_value``: the binomial test at p0 = 1/C, i.e. what a
    service that trusts the claimed set and ignores the panel would compute.
    """
    k = len(claim.labels)
    num_classes = panel.num_classes
    panel_labels = panel.labels(claim.inputs)
    panel_matches = [int(v) for v in (panel_labels == claim.labels[None, :]).sum(axis=1)]
    p0 = null_match_rate(panel_matches, k, num_classes)
    screen = false_claim_screen(
        name=claim.name,
        claimed_labels=claim.labels,
        panel_labels=panel_labels,
        num_classes=num_classes,
        alpha=screen_alpha,
        verifiable=claim.verifiable,
    )
    if natural_x is not None:
        check = perturbation_check(claim.inputs, natural_x)
        extra: dict[str, StatValue] = {
            "nearest_natural_linf_median": check["linf_median"],
            "nearest_natural_l2_median": check["l2_median"],
            "fraction_near_natural": check["fraction_near"],
        }
        screen = ClaimScreen(screen.name, screen.rejected, screen.p_value, {**screen.statistics, **extra})
    try:
        answers = suspect.labels(claim.inputs)
    except (SuspectError, QueryBudgetExceeded, ValueError) as exc:
        failed = TestResult(
            name=claim.name,
            kind=claim.kind,
            p_value=1.0,
            statistics={"K": k, "p0": p0, "panel_size": len(panel_matches)},
            conclusive=False,
            # SuspectError and QueryBudgetExceeded speak our sentences; anything else is a library's text
            reason=f"the suspect did not answer: {exc}"
            if isinstance(exc, SuspectError | QueryBudgetExceeded)
            else "the suspect did not answer: its answers could not be used",
        )
        return failed, screen
    if claim.kind == "api_watermark":  # served wrong labels: verification.methods.api_watermark tests them
        raise ValueError("api_watermark claims are tested by api_watermark_test, not the agreement test")
    matches = int((answers == claim.labels).sum())
    test = agreement_test(
        name=claim.name,
        kind=claim.kind,
        matches=matches,
        trials=k,
        p0=p0,
        panel_matches=panel_matches,
        alpha=alpha,
        tie_break=tie_break,
        num_classes=num_classes,
        generated=claim.verifiable,
    )
    stats = {**test.statistics, "naive_p_value": binomial_test(matches, k, 1.0 / num_classes)}
    return TestResult(test.name, test.kind, test.p_value, stats, test.conclusive, test.reason), screen


def verify_claims(
    *,
    suspect: Suspect,
    claims: Sequence[AgreementClaim],
    panel: ReferencePanel,
    extra_tests: Sequence[TestResult] = (),
    integrity_ok: bool = True,
    alpha: float = DEFAULT_ALPHA,
    screen_alpha: float = DEFAULT_SCREEN_ALPHA,
    natural_x: npt.NDArray[np.float32] | None = None,
    standings: Sequence[Standing] | None = None,
) -> Decision:
    """Every agreement claim tested and screened, plus ``extra_tests`` (dataset inference), then :func:`decide`.

    Without ``standings``, a generated (verifiable) watermark stands as one draw needing no precedence and
    every other set as claimant-chosen evidence whose precedence is not established (it cannot confirm).
    """
    tests: list[TestResult] = []
    screens: list[ClaimScreen] = []
    for claim in claims:
        test, screen = agreement_claim_test(
            claim, suspect, panel, alpha=alpha, screen_alpha=screen_alpha, natural_x=natural_x
        )
        tests.append(test)
        screens.append(screen)
    tests.extend(extra_tests)
    if standings is None:
        standings = [Standing(c.name, chosen=False) for c in claims if c.verifiable]
    return decide(tests=tests, screens=screens, standings=standings, integrity_ok=integrity_ok, alpha=alpha)
