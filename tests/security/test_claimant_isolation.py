"""A suspect's code must not read the claimant's artifact (another owner's upload) during a dispute.

Found live: in a dispute with `dataset_inference`, `verification.runs._run_methods` hands the sandbox child
private copies of both the suspect (`files/0.pt`) and the claimant's model (`files/1.pt`) in one call, so a
TorchScript suspect doing `torch.from_file("../files/1.pt", size=...)` from its scratch folder reads the
claimant's weights; its answers (and so the published statistics) can depend on them. docs/sandbox.md lists
"other owners' uploads" among what the model must never read.

Here the real sandbox runs a stand-in for the suspect's code (`tests.security.probes`) in place of the
methods runner, with exactly the files and folders `_run_methods` grants; it must find none of the claimant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.security import probes


def test_the_suspects_code_cannot_read_the_claimants_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from verification import runs
    from workers import sandbox

    suspect = tmp_path / "suspect.pt"
    suspect.write_bytes(b"suspect bytes, not a model")
    claimant = tmp_path / "claimant.pt"
    claimant.write_bytes(probes.CLAIMANT_MARKER * 4)
    panel = tmp_path / "panel"
    panel.mkdir()
    real = sandbox.run_sandboxed
    seen: list[dict[str, Any]] = []

    def probe_instead(fn: Any, *args: Any, **kwargs: Any) -> Any:
        # the same grants the run asked for, with the suspect's stand-in as the code that runs
        found = real(probes.suspect_reads_neighbours, *args, **{**kwargs, "timeout_s": 30.0})
        seen.append(found)
        return {"plots": {}}

    monkeypatch.setattr(sandbox, "run_sandboxed", probe_instead)
    spec = {
        "suspect": {"kind": "torchscript", "path": str(suspect), "budget": 100},
        "dataset": {"claimant_path": str(claimant)},
        "panel_dir": str(panel),
    }
    runs._run_methods(spec)

    with_suspect = [found for found in seen if found["suspect_here"]]
    assert with_suspect, "no sandboxed call ran the suspect"
    assert all(found["read"] == [] for found in with_suspect), (
        f"the suspect's code read the claimant's artifact copy: {with_suspect}"
    )
