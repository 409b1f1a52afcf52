"""Worker process setup: torch threads and device selection.

Imported only in worker child processes, so the web server never loads torch
and a GPU worker's parent never initialises CUDA before forking.
"""

import os
from functools import cache


def configure_torch() -> None:
    """Limit torch to MODELCOURT_TORCH_THREADS threads (default 1)."""
    threads = int(os.environ.get("MODELCOURT_TORCH_THREADS", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)


@cache
def select_device() -> str:
    """`MODELCOURT_DEVICE` if set, else CUDA when available, else CPU."""
    import torch

    wanted = os.environ.get("MODELCOURT_DEVICE", "").strip()
    if wanted:
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"MODELCOURT_DEVICE={wanted} but CUDA is not available on this host")
        return wanted
    return "cuda" if torch.cuda.is_available() else "cpu"


def sandbox_gpu() -> bool:
    """Whether sandbox children may use GPUs: MODELCOURT_DEVICE=cpu says no; else when the host has any.

    Looks for the NVIDIA device files rather than asking torch, so the calling process never touches CUDA.
    """
    if os.environ.get("MODELCOURT_DEVICE", "").strip().lower() == "cpu":
        return False
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")
