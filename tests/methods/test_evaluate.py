"""One claim against one suspect: the four outcomes, end to end on digits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from modelcourt.embed import embed_watermark
from ownership.watermarks import generate_watermark
from verification.methods.datasets import TaskData
from verification.methods.evaluate import AgreementClaim, agreement_claim_test, verify_claims
from verification.methods.panels import ReferencePanel
from verification.methods.suspects import TorchModuleSuspect
from verification.methods.training import build_model, train_classifier


@pytest.fixture(scope="module")
def marked_owner(digits: TaskData, digits_owner: nn.Module) -> tuple[nn.Module, AgreementClaim]:
    model = copy.deepcopy(digits_owner)
    mark = generate_watermark(seed=b"\x07" * 32, count=40, input_shape=(64,), num_classes=10)
    report = embed_watermark(
        model,
        train_inputs=digits.owner_x,
        train_labels=digits.owner_y,
        trigger_inputs=mark["inputs"],
        trigger_labels=mark["labels"],
        epochs=15,
    )
    assert report.trigger_accuracy == 1.0
    claim = AgreementClaim("watermark", "watermark", mark["inputs"], mark["labels"], verifiable=True)
    return model, claim


def _suspect(module: nn.Module, budget: int | None = None) -> TorchModuleSuspect:
    return TorchModuleSuspect(module, num_classes=10, input_shape=(64,), budget=budget)


def test_copy_is_confirmed(marked_owner: tuple[nn.Module, AgreementClaim], digits_panel: ReferencePanel) -> None:
    model, claim = marked_owner
    decision = verify_claims(suspect=_suspect(copy.deepcopy(model)), claims=[claim], panel=digits_panel)
    assert decision.outcome == "ownership_confirmed"
    stats = decision.tests[0].statistics
    assert stats["K"] == 40
    assert stats["m"] == 40
    # a generated watermark's labels are uniform and independent of any model: the null is exactly 1/C
    assert stats["p0"] == pytest.approx(0.1)
    assert stats["null_construction"] == "seeded_uniform_labels_exact"
    assert decision.tests[0].p_value == pytest.approx(0.1**40)
    assert stats["pooled_binomial_p_value"] < 1e-20  # the old pooled rule, still recorded
    assert stats["panel_size"] == 8
    assert not decision.screens[0].rejected
    record = decision.to_dict()
    assert record["outcome"] == "ownership_confirmed"
    assert record["screens"][0]["statistics"]["verifiable"] == 1


def test_independent_model_is_not_confirmed(
    digits: TaskData, marked_owner: tuple[nn.Module, AgreementClaim], digits_panel: ReferencePanel
) -> None:
    _, claim = marked_owner
    independent = build_model("deep_mlp", input_shape=(64,), num_classes=10, seed=123)
    train_classifier(independent, digits.public_x, digits.public_y, epochs=30, seed=123)
    decision = verify_claims(suspect=_suspect(independent), claims=[claim], panel=digits_panel)
    assert decision.outcome == "not_confirmed"
    assert decision.tests[0].p_value > 1e-3


def test_natural_samples_claimed_as_a_watermark_are_rejected(
    digits: TaskData, digits_owner: nn.Module, digits_panel: ReferencePanel
) -> None:
    """A claimant who passes off natural samples with their true labels: every model 'matches', proving nothing."""
    claim = AgreementClaim("natural", "watermark", digits.holdout_x[:40], digits.holdout_y[:40])
    test, screen = agreement_claim_test(claim, _suspect(digits_owner), digits_panel, natural_x=digits.public_x)
    assert test.statistics["naive_p_value"] < 1e-20  # a naive service would confirm
    assert screen.rejected
    assert "fraction_near_natural" in screen.statistics
    decision = verify_claims(suspect=_suspect(digits_owner), claims=[claim], panel=digits_panel)
    assert decision.outcome == "claim_rejected"


def test_failing_suspect_and_exhausted_budget_are_inconclusive(
    marked_owner: tuple[nn.Module, AgreementClaim], digits_panel: ReferencePanel
) -> None:
    model, claim = marked_owner

    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("CUDA error: device-side assert triggered")

    broken = verify_claims(suspect=_suspect(Broken()), claims=[claim], panel=digits_panel)
    assert broken.outcome == "inconclusive"
    assert "did not answer" in broken.tests[0].reason
    poor = _suspect(copy.deepcopy(model), budget=10)
    starved = verify_claims(suspect=poor, claims=[claim], panel=digits_panel)
    assert starved.outcome == "inconclusive"
    assert poor.queries == 0  # the over-budget query was never sent


def test_too_few_triggers_is_inconclusive(
    marked_owner: tuple[nn.Module, AgreementClaim], digits_panel: ReferencePanel
) -> None:
    model, claim = marked_owner
    small = AgreementClaim("tiny", "watermark", claim.inputs[:2], claim.labels[:2], verifiable=True)
    decision = verify_claims(suspect=_suspect(copy.deepcopy(model)), claims=[small], panel=digits_panel)
    assert decision.outcome == "inconclusive"
    assert decision.tests[0].statistics["m"] == 2
    assert "more queries are needed" in decision.tests[0].reason


def test_claim_needs_matching_lengths() -> None:
    with pytest.raises(ValueError, match="as many labels"):
        AgreementClaim("x", "watermark", np.zeros((3, 64), np.float32), np.zeros(2, np.int64))
