"""The sandbox-side runner: plain data in, a decision and plot numbers out, for every suspect kind."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelcourt.embed import embed_watermark
from ownership.watermarks import generate_watermark
from verification.methods.datasets import TaskData
from verification.methods.panels import ReferencePanel
from verification.methods.runner import load_suspect, run_methods


@pytest.fixture(scope="module")
def saved_panel(digits_panel: ReferencePanel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("panel")
    copy.deepcopy(digits_panel).save(directory)
    return directory


@pytest.fixture(scope="module")
def marked(digits: TaskData, digits_owner: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    model = copy.deepcopy(digits_owner)
    mark = generate_watermark(seed=b"\x01" * 32, count=40, input_shape=(64,), num_classes=10)
    embed_watermark(
        model,
        train_inputs=digits.owner_x,
        train_labels=digits.owner_y,
        trigger_inputs=mark["inputs"],
        trigger_labels=mark["labels"],
        epochs=15,
    )
    path = tmp_path_factory.mktemp("suspect") / "stolen.pt"
    torch.jit.trace(model.eval(), torch.zeros(1, 64)).save(str(path))
    return {"path": str(path), "mark": mark}


def _spec(panel: Path, suspect: dict[str, object], mark: dict[str, np.ndarray]) -> dict[str, object]:
    return {
        "suspect": suspect,
        "num_classes": 10,
        "input_shape": [64],
        "alpha": 1e-3,
        "panel_dir": str(panel),
        "claims": [{"name": "wm", "kind": "watermark", "verifiable": True, **mark}],
    }


def test_a_stolen_torchscript_copy_is_confirmed(saved_panel: Path, marked: dict[str, object]) -> None:
    result = run_methods(_spec(saved_panel, {"kind": "torchscript", "path": marked["path"]}, marked["mark"]))  # type: ignore[arg-type]
    assert result["decision"]["outcome"] == "ownership_confirmed"
    assert result["queries"] == 40
    assert result["panel"]["size"] == 8
    assert len(result["panel"]["hash"]) == 64
    plot = result["plots"]["wm"]
    assert plot["suspect_match_rate"] == 1.0
    assert len(plot["panel_match_rates"]) == 8
    assert max(plot["panel_match_rates"]) < 0.5
    assert set(result["timings"]) >= {"model_load_s", "agreement_queries_s", "total_s"}


def test_dataset_inference_runs_with_the_claimant_artifact(
    saved_panel: Path, marked: dict[str, object], digits: TaskData
) -> None:
    spec = _spec(saved_panel, {"kind": "torchscript", "path": marked["path"]}, marked["mark"])  # type: ignore[arg-type]
    spec["dataset"] = {
        "members": digits.owner_x[:40],
        "nonmembers": digits.holdout_x[:40],
        "claimant_path": marked["path"],
        "split_seed": 3,
    }
    result = run_methods(spec)
    names = [t["name"] for t in result["decision"]["tests"]]
    assert names == ["wm", "dataset_inference"]
    di = result["decision"]["tests"][1]
    assert di["statistics"]["method"] == "mingd"
    assert di["statistics"]["split_seed"] == 3


def test_an_unloadable_suspect_is_inconclusive(saved_panel: Path, marked: dict[str, object], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    result = run_methods(_spec(saved_panel, {"kind": "torchscript", "path": str(junk)}, marked["mark"]))  # type: ignore[arg-type]
    assert result["decision"]["outcome"] == "inconclusive"
    assert "could not be loaded" in result["decision"]["tests"][0]["reason"]


def test_a_panel_for_another_task_is_refused(saved_panel: Path, marked: dict[str, object]) -> None:
    spec = _spec(saved_panel, {"kind": "torchscript", "path": marked["path"]}, marked["mark"])  # type: ignore[arg-type]
    spec["num_classes"] = 3
    with pytest.raises(ValueError, match="reference panel"):
        run_methods(spec)


def test_unknown_suspect_kind() -> None:
    with pytest.raises(ValueError, match="unknown suspect kind"):
        load_suspect({"kind": "pickle"}, num_classes=10, input_shape=(64,))
