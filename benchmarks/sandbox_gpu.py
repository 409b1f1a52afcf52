"""The sandboxed methods run with and without the GPU, on the same dispute, in the same run.

    python -m benchmarks.sandbox_gpu     # on a CUDA host: child device, limits, timings

Checks that a sandbox child given the GPU (RLIMIT_DATA instead of RLIMIT_AS) loads the suspect on
CUDA, reaches the same decision as the CPU child, and is still stopped by its host-memory limit.
"""

import sys
import tempfile
import time
from pathlib import Path

import torch

from ownership.watermarks import generate_watermark
from verification.methods.datasets import digits_task
from verification.methods.panels import train_panel
from verification.methods.runner import run_methods
from verification.methods.training import build_model, train_classifier
from workers.sandbox import SandboxError, run_sandboxed


class _Hog(torch.nn.Module):
    """A suspect that allocates 12 GiB of host memory when asked anything."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        waste = torch.ones(3 * 1024 * 1024 * 1024, dtype=torch.float32)
        return x[:, :10] + waste[0]


def main() -> int:
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="sandbox-gpu-"))
    task = digits_task(0)
    train_panel(task, size=20, seed=0).save(work / "panel")
    model = train_classifier(build_model("mlp", input_shape=(64,), num_classes=10, seed=1), task.owner_x, task.owner_y)
    torch.jit.save(torch.jit.trace(model.eval(), torch.zeros(1, 64)), str(work / "suspect.pt"))
    torch.jit.save(torch.jit.script(_Hog()), str(work / "hog.pt"))
    mark = generate_watermark(seed=b"\x05" * 32, count=40, input_shape=(64,), num_classes=10)
    spec = {
        "suspect": {"kind": "torchscript", "path": str(work / "suspect.pt")},
        "num_classes": 10,
        "input_shape": [64],
        "panel_dir": str(work / "panel"),
        "claims": [{"name": "wm", "kind": "watermark", **mark}],
        "dataset": {
            "members": task.owner_x[:200],
            "nonmembers": task.holdout_x[:200],
            "claimant_path": str(work / "suspect.pt"),
            "split_seed": 1,
        },
    }
    for gpu in (False, True):
        start = time.perf_counter()
        result = run_sandboxed(run_methods, spec, timeout_s=300, memory_bytes=8 << 30, gpu=gpu)
        wall = time.perf_counter() - start
        tests = {t["name"]: t["p_value"] for t in result["decision"]["tests"]}
        print(
            f"gpu={gpu!s:<5} device={result['device']:<7} wall {wall:6.2f} s  outcome {result['decision']['outcome']}"
            f"  p-values {tests}"
        )
        print("           child timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in result["timings"].items()))
    hog = {**spec, "suspect": {"kind": "torchscript", "path": str(work / "hog.pt")}, "dataset": None}
    for gpu in (False, True):
        try:
            result = run_sandboxed(run_methods, hog, timeout_s=120, memory_bytes=8 << 30, gpu=gpu)
            print(f"hog gpu={gpu}: {result['decision']['outcome']}: {result['decision']['tests'][0]['reason'][:120]}")
        except SandboxError as exc:
            print(f"hog gpu={gpu}: stopped ({exc.kind}): {exc.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
