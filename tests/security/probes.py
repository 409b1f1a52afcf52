"""Code that stands in for a hostile suspect inside the sandbox child (resolved under `tests.` there).

It takes the call's arguments as the methods runner would, ignores the claimant's path it was handed, and
looks for the claimant's artifact only where a TorchScript suspect can: next to its own private copy, by
the predictable names the sandbox gives the copies (`torch.from_file("../files/1.pt")` from the scratch).
No torch is imported: a cold child runs this in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

CLAIMANT_MARKER = b"zz-redteam-claimant-weights"


def suspect_reads_neighbours(spec: dict[str, Any], **files: str) -> dict[str, Any]:
    """What a suspect in this call could read of the claimant: the names it opened that held the marker."""
    suspect = files.get("suspect_path")
    if suspect is None:
        return {"suspect_here": False, "read": []}
    folder = os.path.dirname(suspect)
    guesses = [os.path.join("..", "files", name) for name in ("0.pt", "1.pt", "2.pt", "1.onnx", "2.onnx")]
    with contextlib.suppress(OSError):
        guesses += [os.path.join(folder, name) for name in os.listdir(folder)]
    read = []
    for path in guesses:
        if os.path.abspath(path) == os.path.abspath(suspect):
            continue
        try:
            with open(path, "rb") as handle:
                if CLAIMANT_MARKER in handle.read(1 << 16):
                    read.append(os.path.basename(path))
        except OSError:
            continue
    return {"suspect_here": True, "read": sorted(set(read))}
