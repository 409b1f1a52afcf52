"""False-claim screen: exact under random labels, flags transferable sets, passes seeded watermarks."""

from __future__ import annotations

import numpy as np
import pytest

from ownership.watermarks import generate_watermark
from verification.methods.datasets import TaskData
from verification.methods.panels import ReferencePanel
from verification.methods.screen import agreement_null_pmf, false_claim_screen, perturbation_check


def test_null_pmf_is_a_distribution_with_the_right_mean() -> None:
    rng = np.random.default_rng(0)
    panel = rng.integers(0, 4, size=(5, 12))
    pmf = agreement_null_pmf(panel, 4)
    assert pmf.shape == (61,)
    assert pmf.sum() == pytest.approx(1.0)
    # each item adds members/C agreements on average
    assert (np.arange(61) * pmf).sum() == pytest.approx(5 * 12 / 4)


def test_null_pmf_matches_brute_force_enumeration() -> None:
    panel = np.array([[0, 1, 2], [0, 2, 2], [1, 1, 0]])
    pmf = agreement_null_pmf(panel, 3)
    brute = np.zeros(10)
    for labels in np.ndindex(3, 3, 3):
        brute[int((panel == np.array(labels)[None, :]).sum())] += 1 / 27
    assert np.allclose(pmf, brute)


def test_screen_is_valid_under_random_labels() -> None:
    """Labels drawn uniformly at random are flagged at most alpha of the time, whatever the panel does."""
    rng = np.random.default_rng(1)
    # a strongly correlated panel: every member answers almost the same
    base = rng.integers(0, 10, size=30)
    panel = np.where(rng.random((20, 30)) < 0.9, base[None, :], rng.integers(0, 10, size=(20, 30)))
    p_values = [
        false_claim_screen(
            name="w", claimed_labels=rng.integers(0, 10, size=30), panel_labels=panel, num_classes=10
        ).p_value
        for _ in range(2000)
    ]
    rate = float(np.mean(np.array(p_values) <= 0.05))
    assert rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2000)


def test_screen_flags_labels_the_panel_shares() -> None:
    rng = np.random.default_rng(2)
    panel = rng.integers(0, 10, size=(20, 40))
    claimed = panel[0].copy()  # what member 0 says: others agree only by chance
    assert not false_claim_screen(name="a", claimed_labels=claimed, panel_labels=panel[1:], num_classes=10).rejected
    shared = np.tile(claimed, (20, 1))
    shared[:, :10] = rng.integers(0, 10, size=(20, 10))
    screen = false_claim_screen(name="b", claimed_labels=claimed, panel_labels=shared, num_classes=10)
    assert screen.rejected
    assert screen.p_value < 1e-10
    assert screen.statistics["agreement_rate"] > 0.7
    assert screen.statistics["panel_size"] == 20


def test_seeded_watermark_passes_the_screen(digits_panel: ReferencePanel) -> None:
    for seed in range(5):
        mark = generate_watermark(seed=bytes([seed]) * 32, count=40, input_shape=(64,), num_classes=10)
        screen = false_claim_screen(
            name="wm",
            claimed_labels=mark["labels"],
            panel_labels=digits_panel.labels(mark["inputs"]),
            num_classes=10,
            verifiable=True,
        )
        assert not screen.rejected
        assert screen.statistics["verifiable"] == 1


def test_natural_samples_with_true_labels_are_flagged(digits_panel: ReferencePanel, digits: TaskData) -> None:
    """Evidence anyone's model answers correctly (natural samples) proves nothing and is rejected."""
    screen = false_claim_screen(
        name="natural",
        claimed_labels=digits.holdout_y[:40],
        panel_labels=digits_panel.labels(digits.holdout_x[:40]),
        num_classes=10,
    )
    assert screen.rejected


def test_screen_rejects_malformed_input() -> None:
    with pytest.raises(ValueError, match=r"\[members, K\]"):
        false_claim_screen(name="x", claimed_labels=[1, 2], panel_labels=[[1, 2, 3]], num_classes=10)
    with pytest.raises(ValueError, match="claimed labels"):
        false_claim_screen(name="x", claimed_labels=[1, 12], panel_labels=[[1, 2]], num_classes=10)
    with pytest.raises(ValueError, match="alpha"):
        false_claim_screen(name="x", claimed_labels=[1], panel_labels=[[1]], num_classes=10, alpha=0)


def test_perturbation_check_tells_perturbed_samples_from_noise(digits: TaskData) -> None:
    rng = np.random.default_rng(3)
    near = np.clip(digits.public_x[:20] + rng.uniform(-0.1, 0.1, size=(20, 64)), 0, 1).astype(np.float32)
    noise = rng.uniform(size=(20, 64)).astype(np.float32)
    close = perturbation_check(near, digits.public_x)
    far = perturbation_check(noise, digits.public_x)
    assert close["linf_median"] <= 0.1 + 1e-6
    assert close["fraction_near"] == 1.0
    assert far["linf_median"] > 0.5
    assert far["fraction_near"] == 0.0
    assert len(close["linf"]) == 20
    with pytest.raises(ValueError, match="features"):
        perturbation_check(noise[:, :10], digits.public_x)
