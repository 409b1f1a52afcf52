"""Binding: is a claimed evidence set carried by the claimant's own registered model?

A claimant may upload any inputs and labels as "its" watermark or fingerprints: for instance the
suspect's own answers on inputs of its choice. The set says something about the claimant's model only
if that model gives the claimed labels itself. So every run also asks the claimant's model, with the
same agreement test and the same reference panel as the suspect: the set is bound when that test
rejects independence at ``alpha``; a set the claimant's model does not carry is rejected.

Pure NumPy: the claimant's answers are measured elsewhere (in a sandbox call of their own) and
arrive here as labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from verification.methods.decision import DEFAULT_ALPHA, agreement_test
from verification.methods.evaluate import AgreementClaim
from verification.methods.panels import ReferencePanel
from verification.methods.statistics import null_match_rate

__all__ = ["Binding", "claim_binding"]


@dataclass(frozen=True)
class Binding:
    """The claimant's model on one set: how many claimed labels it gives, and whether that binds the set."""

    name: str
    bound: bool
    p_value: float
    matches: int
    trials: int


def claim_binding(
    claim: AgreementClaim,
    claimant_labels: npt.ArrayLike,
    panel: ReferencePanel,
    *,
    alpha: float = DEFAULT_ALPHA,
    panel_labels: npt.NDArray[np.int64] | None = None,
) -> Binding:
    """Whether the claimant's model, answering ``claimant_labels`` on the claim's inputs, carries the claim."""
    answers = np.asarray(claimant_labels, dtype=np.int64).reshape(-1)
    if answers.shape != claim.labels.shape:
        raise ValueError(f"the claimant's model gave {answers.size} labels for {claim.labels.size} inputs")
    labels = panel.labels(claim.inputs) if panel_labels is None else panel_labels
    panel_matches = [int(v) for v in (labels == claim.labels[None, :]).sum(axis=1)]
    if claim.kind == "api_watermark":  # served wrong labels: verification.methods.api_watermark tests them
        raise ValueError("api_watermark claims are tested by api_watermark_test, not the agreement test")
    matches = int((answers == claim.labels).sum())
    test = agreement_test(
        name=claim.name,
        kind=claim.kind,
        matches=matches,
        trials=len(claim.labels),
        p0=null_match_rate(panel_matches, len(claim.labels), panel.num_classes),
        panel_matches=panel_matches,
        alpha=alpha,
        num_classes=panel.num_classes,
        generated=claim.verifiable,
    )
    return Binding(claim.name, bool(test.p_value <= alpha), float(test.p_value), matches, len(claim.labels))
