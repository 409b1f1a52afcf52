"""Reference panels: independent of the owner's data, cached as checked TorchScript, reproducible; their layouts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelcourt.embed import embed_watermark
from ownership.watermarks import generate_watermark
from verification.methods.datasets import TaskData, digits_task, synthetic_task, task_by_name
from verification.methods.panel_shapes import ACCEPTED_KEY
from verification.methods.panels import (
    PanelError,
    ReferencePanel,
    load_or_train_panel,
    panel_directory,
    train_panel,
)
from verification.methods.runner import PanelMismatchError, run_methods
from verification.methods.stress import StressSpecError, run_stress_test


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


# --- input layouts: a panel serves the layouts it declares, reshaping queries to its native shape -------

DIGITS_LAYOUTS = ((8, 8), (1, 8, 8))


@pytest.fixture(scope="module")
def layout_panel(digits: TaskData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small digits panel that declares the 8x8 layouts, saved as an operator would install it."""
    directory = tmp_path_factory.mktemp("layout-panel")
    train_panel(digits, size=3, seed=2, epochs=8, accepted_shapes=DIGITS_LAYOUTS).save(directory)
    return directory


@pytest.fixture(scope="module")
def marked_owner(digits: TaskData, digits_owner: nn.Module) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """The owner's model with a committed watermark embedded (flat 64 features; its first layer flattens)."""
    model = copy.deepcopy(digits_owner)
    mark = generate_watermark(seed=b"\x02" * 32, count=30, input_shape=(64,), num_classes=10)
    embed_watermark(
        model,
        train_inputs=digits.owner_x,
        train_labels=digits.owner_y,
        trigger_inputs=mark["inputs"],
        trigger_labels=mark["labels"],
        epochs=15,
    )
    return model.eval(), mark


def _script_in_layout(model: nn.Module, layout: tuple[int, ...], path: Path) -> str:
    torch.jit.trace(model, torch.zeros(1, *layout)).save(str(path))  # type: ignore[no-untyped-call]
    return str(path)


def test_a_panel_answers_every_declared_layout_alike(layout_panel: Path, digits: TaskData) -> None:
    panel = ReferencePanel.load(layout_panel)
    assert panel.input_shape == (64,)
    assert panel.accepted_shapes == ((64,), (8, 8), (1, 8, 8))
    flat = panel.labels(digits.holdout_x[:50])
    assert np.array_equal(panel.labels(digits.holdout_x[:50].reshape(-1, 8, 8)), flat)
    assert np.array_equal(panel.labels(torch.as_tensor(digits.holdout_x[:50]).reshape(-1, 1, 8, 8)), flat)
    with pytest.raises(PanelError, match=r"not \[2, 32\]"):
        panel.labels(np.zeros((3, 2, 32), dtype=np.float32))


def test_what_a_panel_serves_and_why_not(layout_panel: Path) -> None:
    served = ReferencePanel.load(layout_panel).interface("digits")
    assert served.accepts([1, 8, 8], 10)
    assert served.accepts((64,), 10)
    assert not served.accepts((3, 32, 32), 10)
    assert not served.accepts((1, 8, 8), 5)
    assert served.refusal((8, 8), 10) == ""
    assert served.refusal((3, 32, 32), 10) == (
        "the reference panel 'digits' serves 10-class models with inputs [64], [8, 8] or [1, 8, 8]; "
        "this model takes [3, 32, 32]"
    )
    assert served.refusal((64,), 5).endswith("; this model has 5 classes and takes [64]")


def test_a_native_only_panel_keeps_its_manifest_and_hash(tmp_path: Path, digits: TaskData) -> None:
    panel = train_panel(digits, size=1, seed=4, epochs=2)
    digest = panel.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert ACCEPTED_KEY not in manifest  # installed panels saved before layouts existed hash the same
    loaded = ReferencePanel.load(tmp_path)
    assert loaded.hash == digest
    assert loaded.accepted_shapes == ((64,),)
    with pytest.raises(PanelError, match="takes inputs"):
        loaded.labels(digits.holdout_x[:5].reshape(-1, 8, 8))


def test_declared_layouts_are_hashed_and_must_hold_the_same_elements(tmp_path: Path, digits: TaskData) -> None:
    panel = train_panel(digits, size=1, seed=4, epochs=2, accepted_shapes=DIGITS_LAYOUTS)
    digest = panel.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest[ACCEPTED_KEY] == [[8, 8], [1, 8, 8]]
    manifest[ACCEPTED_KEY] = [[8, 8]]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert ReferencePanel.load(tmp_path).hash != digest
    manifest[ACCEPTED_KEY] = [[65]]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PanelError, match="does not hold the 64 elements"):
        ReferencePanel.load(tmp_path)


def test_a_cache_from_before_the_layouts_gains_them_without_retraining(tmp_path: Path) -> None:
    task = digits_task(0, owner=300, public=300)
    before = load_or_train_panel(task, tmp_path, size=1, seed=3)
    after = load_or_train_panel(task, tmp_path, size=1, seed=3, accepted_shapes=DIGITS_LAYOUTS)
    assert [m.sha256 for m in after.members] == [m.sha256 for m in before.members]
    directory = panel_directory(task, tmp_path, size=1, seed=3)
    assert ReferencePanel.load(directory).accepted_shapes == ((64,), (8, 8), (1, 8, 8))


@pytest.mark.parametrize("layout", [(64,), (8, 8), (1, 8, 8)])
def test_the_methods_run_in_each_digits_layout(
    layout: tuple[int, ...], layout_panel: Path, marked_owner: tuple[nn.Module, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    model, mark = marked_owner
    suspect = _script_in_layout(model, layout, tmp_path / "suspect.pt")
    spec = {
        "suspect": {"kind": "torchscript", "path": suspect},
        "num_classes": 10,
        "input_shape": list(layout),
        "alpha": 1e-3,
        "panel_dir": str(layout_panel),
        "panel_name": "digits",
        "claims": [
            {"name": "wm", "kind": "watermark", "verifiable": True, "labels": mark["labels"],
             "inputs": mark["inputs"].reshape(-1, *layout)},
        ],
    }  # fmt: skip
    result = run_methods(spec)
    test = result["decision"]["tests"][0]
    assert test["conclusive"], test["reason"]
    assert test["p_value"] < 1e-3
    assert result["decision"]["outcome"] == "ownership_confirmed"
    assert result["queries"] == 30
    assert len(result["plots"]["wm"]["panel_match_rates"]) == 3


def test_a_layout_the_panel_does_not_serve_fails_naming_the_panel_not_the_suspect(layout_panel: Path) -> None:
    spec = {
        "suspect": {"kind": "torchscript", "path": "/nonexistent/suspect.pt"},
        "num_classes": 10,
        "input_shape": [3, 32, 32],
        "panel_dir": str(layout_panel),
        "panel_name": "digits",
        "claims": [],
    }
    with pytest.raises(PanelMismatchError) as caught:
        run_methods(spec)
    message = str(caught.value)
    assert message.startswith(
        "the reference panel 'digits' serves 10-class models with inputs [64], [8, 8] or [1, 8, 8]; "
        "the claimant model takes [3, 32, 32]"
    )
    assert "the suspect was not queried" in message


def test_a_stress_test_of_a_one_channel_image_model_runs(
    layout_panel: Path, marked_owner: tuple[nn.Module, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    model, mark = marked_owner
    path = _script_in_layout(model, (1, 8, 8), tmp_path / "owner.pt")
    spec = {
        "model": {"kind": "torchscript", "path": path},
        "num_classes": 10,
        "input_shape": [1, 8, 8],
        "panel_dir": str(layout_panel),
        "thefts": ["copy", "fine_tune"],
        "settings": {"fine_tune_epochs": 1, "control_epochs": 2},
        "claims": [
            {"name": "wm", "kind": "watermark", "verifiable": True, "labels": mark["labels"],
             "inputs": mark["inputs"].reshape(-1, 1, 8, 8)},
        ],
    }  # fmt: skip
    results = run_stress_test(spec)["results"]
    rows = {row["theft"]: row for row in results["rows"]}
    assert rows["copy"]["cells"][0]["confirmed"]
    assert rows["copy"]["agreement"] == 1.0
    assert rows["fine_tune"]["accuracy"] > 0.8
    assert not rows["independent"]["cells"][0]["confirmed"]


def test_a_stress_test_of_a_model_the_panel_does_not_serve_is_refused(layout_panel: Path) -> None:
    spec = {
        "model": {"kind": "torchscript", "path": "/nonexistent/owner.pt"},
        "num_classes": 10,
        "input_shape": [3, 32, 32],
        "panel_dir": str(layout_panel),
        "thefts": ["copy"],
        "claims": [{"name": "wm", "kind": "watermark", "inputs": np.zeros((1, 3, 32, 32)), "labels": [0]}],
    }
    with pytest.raises(StressSpecError, match=r"serves 10-class models .*; your model takes \[3, 32, 32\]$"):
        run_stress_test(spec)
