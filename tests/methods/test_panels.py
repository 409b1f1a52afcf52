"""Reference panels: independent of the owner's data, cached as checked TorchScript, reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from verification.methods.datasets import TaskData, digits_task, synthetic_task, task_by_name
from verification.methods.panels import PanelError, ReferencePanel, load_or_train_panel, train_panel


def test_splits_are_disjoint_and_cover_digits(digits: TaskData) -> None:
    rows = [tuple(r) for part in (digits.owner_x, digits.public_x, digits.holdout_x) for r in part]
    assert len(digits.owner_x) + len(digits.public_x) + len(digits.holdout_x) == 1797
    # digits has a few duplicate images; nearly all rows are distinct across the three parts
    assert len(set(rows)) > 1780
    assert digits.owner_x.min() >= 0.0
    assert digits.owner_x.max() <= 1.0
    assert set(np.unique(digits.owner_y)) == set(range(10))


def test_task_digest_changes_with_the_split() -> None:
    assert digits_task(0).digest == digits_task(0).digest
    assert digits_task(0).digest != digits_task(1).digest
    assert task_by_name("synthetic").digest == synthetic_task(0).digest
    with pytest.raises(ValueError, match="unknown task"):
        task_by_name("cifar")


def test_panel_members_differ_and_learn_the_task(digits_panel: ReferencePanel, digits: TaskData) -> None:
    assert len(digits_panel) == 8
    archs = {m.arch for m in digits_panel.members}
    assert len(archs) >= 4
    assert len({m.seed for m in digits_panel.members}) == 8
    assert all(m.holdout_accuracy > 0.85 for m in digits_panel.members)
    labels = digits_panel.labels(digits.holdout_x)
    assert labels.shape == (8, len(digits.holdout_x))
    # independent, yet not identical: some disagreement on uniform noise
    noise = np.random.default_rng(0).uniform(size=(50, 64)).astype(np.float32)
    assert len({tuple(row) for row in digits_panel.labels(noise)}) > 1


def test_save_load_round_trip_and_tamper_detection(tmp_path: Path, digits: TaskData) -> None:
    panel = train_panel(digits, size=3, seed=5, epochs=5)
    digest = panel.save(tmp_path)
    loaded = ReferencePanel.load(tmp_path)
    assert loaded.hash == digest
    assert np.array_equal(loaded.labels(digits.holdout_x), panel.labels(digits.holdout_x))
    member = tmp_path / f"{panel.members[0].name}.pt"
    data = bytearray(member.read_bytes())
    data[len(data) // 2] ^= 0xFF
    member.write_bytes(bytes(data))
    with pytest.raises(PanelError, match="missing or altered"):
        ReferencePanel.load(tmp_path)


def test_manifest_edit_changes_the_hash(tmp_path: Path, digits: TaskData) -> None:
    panel = train_panel(digits, size=2, seed=6, epochs=3)
    digest = panel.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["members"][0]["holdout_accuracy"] = 0.999
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert ReferencePanel.load(tmp_path).hash != digest


def test_load_or_train_reuses_only_a_matching_cache(tmp_path: Path) -> None:
    task = digits_task(0, owner=300, public=300)
    first = load_or_train_panel(task, tmp_path, size=2, seed=3)
    again = load_or_train_panel(task, tmp_path, size=2, seed=3)
    assert again.hash == first.hash
    other_split = digits_task(1, owner=300, public=300)
    assert load_or_train_panel(other_split, tmp_path, size=2, seed=3).params["task_digest"] == other_split.digest
    with pytest.raises(PanelError):
        ReferencePanel.load(tmp_path / "nothing-here")


def test_bad_panel_arguments(digits: TaskData) -> None:
    with pytest.raises(ValueError, match="at least one member"):
        train_panel(digits, size=0)
    with pytest.raises(ValueError, match="subset_fraction"):
        train_panel(digits, size=1, subset_fraction=0.0)
    with pytest.raises(ValueError, match="architectures"):
        train_panel(digits, size=1, architectures=["transformer"])  # type: ignore[list-item]
